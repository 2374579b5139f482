//! A failed Kubernetes API call: what was being done, the error, and a bounded label for
//! metrics — one type for every component, so that each reconcile failure is counted by
//! what went wrong and not just as "error".

use std::borrow::Cow;

/// A Kubernetes API call that failed, with what it was for ("creating pod ns/web-0").
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct KubeError {
    context: Cow<'static, str>,
    #[source]
    source: kube::Error,
}

impl KubeError {
    pub fn new(context: impl Into<Cow<'static, str>>, source: kube::Error) -> Self {
        Self {
            context: context.into(),
            source,
        }
    }

    /// For `map_err`: `api.get(name).await.map_err(KubeError::doing(format!("reading {name}")))`.
    pub fn doing(context: impl Into<Cow<'static, str>>) -> impl FnOnce(kube::Error) -> KubeError {
        let context = context.into();
        move |source| KubeError { context, source }
    }

    /// The error the API call returned.
    pub fn kube(&self) -> &kube::Error {
        &self.source
    }

    /// What went wrong, as a metric label (a small fixed set).
    pub fn label(&self) -> &'static str {
        label(&self.source)
    }
}

/// Why a reconcile failed: an API call, or something else the controller names (the label
/// it is counted under, and what to tell). The set controller, the StaticIP manager and node
/// migration all fail with it.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error("{message}")]
    Other {
        label: &'static str,
        message: String,
    },
}

impl ReconcileError {
    /// The API call for `context` failed with `source`.
    pub fn kube(context: impl Into<Cow<'static, str>>, source: kube::Error) -> Self {
        Self::Kube(KubeError::new(context, source))
    }

    /// A failure other than an API call's, counted as `label` (a fixed string).
    pub fn other(label: &'static str, message: impl Into<String>) -> Self {
        Self::Other {
            label,
            message: message.into(),
        }
    }

    /// What went wrong, as a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Kube(e) => e.label(),
            Self::Other { label, .. } => label,
        }
    }
}

/// What went wrong in a Kubernetes API call, as a metric label: the API server's refusal
/// by its status (`conflict`, `not-found`, …), or why no answer came.
pub fn label(error: &kube::Error) -> &'static str {
    match error {
        // The reason first (AlreadyExists and Conflict share 409), then the code.
        kube::Error::Api(status) => match (status.reason.as_str(), status.code) {
            ("AlreadyExists", _) => "already-exists",
            ("Conflict", _) | (_, 409) => "conflict",
            ("NotFound", _) | (_, 404) => "not-found",
            ("Gone" | "Expired", _) | (_, 410) => "gone",
            ("Forbidden", _) | (_, 403) => "forbidden",
            ("Unauthorized", _) | (_, 401) => "unauthorized",
            ("Invalid", _) | (_, 422) => "invalid",
            ("TooManyRequests", _) | (_, 429) => "throttled",
            (_, 400..=499) => "refused",
            (_, 500..) => "server-error",
            _ => "api-error",
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::HttpError(_) => {
            "unreachable"
        }
        kube::Error::SerdeError(_) | kube::Error::FromUtf8(_) => "undecodable",
        _ => "client-error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            reason: reason.into(),
            ..Default::default()
        }))
    }

    #[test]
    fn labels_name_the_refusal() {
        assert_eq!(label(&api(409, "Conflict")), "conflict");
        assert_eq!(label(&api(409, "AlreadyExists")), "already-exists");
        assert_eq!(label(&api(404, "NotFound")), "not-found");
        assert_eq!(label(&api(403, "")), "forbidden");
        assert_eq!(label(&api(400, "BadRequest")), "refused");
        assert_eq!(label(&api(503, "ServiceUnavailable")), "server-error");
        let e = KubeError::new("creating pod ns/web-0", api(422, "Invalid"));
        assert_eq!(e.label(), "invalid");
        assert!(e.to_string().starts_with("creating pod ns/web-0: "));
        let e = ReconcileError::from(e);
        assert_eq!(e.label(), "invalid");
        assert_eq!(
            ReconcileError::other("allocation", "full").label(),
            "allocation"
        );
    }
}
