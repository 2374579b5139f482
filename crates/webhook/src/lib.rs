//! The ests admission webhook (`ests webhook`).
//!
//! - `POST /mutate-pods` (Pod CREATE, scoped by an objectSelector to the static-IP pod
//!   label): a re-created static-IP pod gets its record's addresses and node
//!   ([`ests_core::pin`]); other pods claiming to be static-IP pods are refused.
//! - `POST /validate-pod-addresses` (Pod CREATE/UPDATE, scoped by matchConditions to pods
//!   without that label whose configured CNI annotation is set or changed): a pod that is not
//!   a static-IP pod may not name, in a CNI annotation, an address a StaticIP record keeps
//!   ([`ests_core::address_claims`]), judged from an index of the record watch
//!   ([`kept_addresses`]); until that watch has listed, such pods are refused (retry).
//! - `POST /validate-sets` (EnhancedStatefulSet CREATE/UPDATE): what the CRD cannot check
//!   ([`ests_core::validate`]).
//! - `POST /validate-pools` (StaticIPPool CREATE/UPDATE): no CIDR may overlap another
//!   pool's ([`ests_core::validate::pool_admission`]), judged against a watch-fed cache of
//!   every pool; until that cache has listed, pools are refused (retry).
//! - `POST /interpret` (Karmada's Resource Interpreter webhook, `ResourceInterpreterContext`
//!   for EnhancedStatefulSet): the same answers as the Lua customization in
//!   `config/karmada` ([`ests_core::karmada`]).
//!
//! Records and pools are read from watch-fed caches: nothing on the request path calls the API
//! server. Every answer is an [`ests_runtime::Answer`]: a malformed request gets a 400 with a
//! JSON message, never a panic; bodies are size-limited.
#![forbid(unsafe_code)]

pub mod config;
pub mod kept_addresses;
pub mod metrics;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{MethodRouter, post};
use ests_api::{EnhancedStatefulSet, StaticIP, StaticIPPool};
use ests_core::address_claims::{claims, kept_address_claims};
use ests_core::pin::{Denial, PinSettings, PinVerdict, pin};
use ests_core::validate::{pool_admission, set_admission};
use ests_runtime::Answer;
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;

pub use kept_addresses::KeptAddresses;
pub use metrics::Metrics;

/// Largest request body accepted. The API server's own limit on an object is 3 MiB; an
/// AdmissionReview of an UPDATE carries two.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// What the handlers read.
#[derive(Clone)]
pub struct AppState {
    pub records: Store<StaticIP>,
    /// Which record keeps each address, from the same watch as `records`.
    pub kept: Arc<RwLock<KeptAddresses>>,
    /// Every StaticIPPool, and whether that cache has listed (a pool is judged against all
    /// others, so never against a half-filled cache).
    pub pools: Store<StaticIPPool>,
    pub pools_listed: Arc<AtomicBool>,
    pub pin: Arc<PinSettings>,
    pub metrics: Metrics,
}

/// The webhook's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/mutate-pods", endpoint("mutate-pods", review_pod))
        .route(
            "/validate-pod-addresses",
            endpoint("validate-pod-addresses", review_pod_addresses),
        )
        .route(
            "/validate-sets",
            endpoint("validate-sets", |_, body| review_set(body)),
        )
        .route("/validate-pools", endpoint("validate-pools", review_pool))
        .route(
            "/interpret",
            endpoint("interpret", |_, body| review_interpretation(body)),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The AdmissionReview answering a request, counted as `result`.
fn review_body(response: AdmissionResponse, result: &'static str) -> Answer {
    Answer::ok(&response.into_review(), result)
}

/// Parses an AdmissionReview whose object is a `K`.
fn parse<K>(body: &[u8]) -> Result<AdmissionRequest<K>, String>
where
    K: kube::Resource + serde::de::DeserializeOwned,
{
    let review: AdmissionReview<K> =
        serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
    // The answer must carry the request's version; only v1 is spoken.
    if review.types.api_version != "admission.k8s.io/v1" || review.types.kind != "AdmissionReview" {
        return Err(format!(
            "expected apiVersion admission.k8s.io/v1 and kind AdmissionReview, got {:?} {:?}",
            review.types.api_version, review.types.kind
        ));
    }
    review
        .try_into()
        .map_err(|e| format!("not an AdmissionReview request: {e}"))
}

/// Answers a Pod admission review: the whole request path, without I/O.
pub fn review_pod(state: &AppState, body: &[u8]) -> Answer {
    let request: AdmissionRequest<Pod> = match parse(body) {
        Ok(request) => request,
        Err(e) => return Answer::bad_request(e),
    };
    let response = AdmissionResponse::from(&request);
    if request.operation != Operation::Create {
        return review_body(response, "allowed");
    }
    let Some(pod) = request.object.as_ref() else {
        return review_body(response.deny("the request carries no pod"), "denied");
    };
    // The API server names the pod in the request even when the object omits it.
    let mut pod = pod.clone();
    if pod.metadata.name.is_none() && !request.name.is_empty() {
        pod.metadata.name = Some(request.name.clone());
    }
    let namespace = request
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let record = state.records.get(&ObjectRef::new(&name).within(&namespace));
    match pin(
        &pod,
        record.as_deref(),
        &request.user_info.username.clone().unwrap_or_default(),
        &state.pin,
    ) {
        PinVerdict::Unchanged => review_body(response, "allowed"),
        PinVerdict::Pin(patch) => {
            let empty = patch.0.is_empty();
            match response.with_patch(patch) {
                Ok(response) => review_body(response, if empty { "allowed" } else { "pinned" }),
                Err(e) => review_body(
                    AdmissionResponse::from(&request).deny(format!("building the patch: {e}")),
                    "error",
                ),
            }
        }
        PinVerdict::Deny(denial) => {
            tracing::info!(namespace, pod = %name, message = %denial.message, detail = %denial.detail, "refused a pod");
            review_body(response.deny(denial.message), "denied")
        }
    }
}

/// Answers a Pod admission review for the addresses its CNI annotations name, from the
/// kept-address index: the whole request path, without I/O.
pub fn review_pod_addresses(state: &AppState, body: &[u8]) -> Answer {
    let request: AdmissionRequest<Pod> = match parse(body) {
        Ok(request) => request,
        Err(e) => return Answer::bad_request(e),
    };
    let response = AdmissionResponse::from(&request);
    if !matches!(request.operation, Operation::Create | Operation::Update) {
        return review_body(response, "allowed");
    }
    let Some(pod) = request.object.as_ref() else {
        return review_body(response.deny("the request carries no pod"), "denied");
    };
    let old = request.old_object.as_ref();
    let cni = &state.pin.cni;
    // The watch holds the lock only for map updates, which do not panic: a poisoned lock
    // still guards a whole index.
    let kept = state.kept.read().unwrap_or_else(PoisonError::into_inner);
    let denial = if !kept.listed() && !claims(pod, old, cni).is_empty() {
        Some(Denial {
            message: "the ests webhook has not yet read every StaticIP record to check the pod's CNI address annotation; retry in a moment".into(),
            detail: String::new(),
        })
    } else {
        kept_address_claims(pod, old, cni, |ip| kept.holder(ip))
    };
    drop(kept);
    match denial {
        None => review_body(response, "allowed"),
        Some(denial) => {
            let namespace = request.namespace.clone().unwrap_or_default();
            tracing::info!(namespace, pod = %request.name, message = %denial.message, detail = %denial.detail, "refused a pod's CNI address annotation");
            review_body(response.deny(denial.message), "denied")
        }
    }
}

/// The request's object and old object as `K` (either absent where the request has none).
/// Objects are parsed loosely first: one the CRD schema admits but our types cannot read is
/// refused with the reason rather than with a 400.
fn typed_objects<K: serde::de::DeserializeOwned>(
    request: &AdmissionRequest<DynamicObject>,
    kind: &str,
) -> Result<(Option<K>, Option<K>), String> {
    let typed = |object: &Option<DynamicObject>| -> Result<Option<K>, String> {
        object
            .as_ref()
            .map(|o| {
                serde_json::to_value(o)
                    .and_then(serde_json::from_value::<K>)
                    .map_err(|e| format!("not a {kind}: {e}"))
            })
            .transpose()
    };
    Ok((typed(&request.object)?, typed(&request.old_object)?))
}

/// Admits with no problems, else denies with them all.
fn verdict(response: AdmissionResponse, problems: Vec<String>) -> Answer {
    if problems.is_empty() {
        review_body(response, "allowed")
    } else {
        review_body(response.deny(problems.join("; ")), "denied")
    }
}

/// Answers a review of kind `K` with `judge` over its new and old objects; a request without
/// a new object (a delete) is admitted.
fn review_typed<K: serde::de::DeserializeOwned>(
    body: &[u8],
    kind: &str,
    judge: impl FnOnce(&AdmissionRequest<DynamicObject>, K, Option<K>) -> Vec<String>,
) -> Answer {
    let request: AdmissionRequest<DynamicObject> = match parse(body) {
        Ok(request) => request,
        Err(e) => return Answer::bad_request(e),
    };
    let response = AdmissionResponse::from(&request);
    match typed_objects::<K>(&request, kind) {
        Err(e) => verdict(response, vec![e]),
        Ok((None, _)) => verdict(response, Vec::new()),
        Ok((Some(new), old)) => {
            let problems = judge(&request, new, old);
            verdict(response, problems)
        }
    }
}

/// Answers an EnhancedStatefulSet admission review, without I/O.
pub fn review_set(body: &[u8]) -> Answer {
    review_typed::<EnhancedStatefulSet>(body, "EnhancedStatefulSet", |_, new, old| {
        set_admission(&new, old.as_ref())
    })
}

/// Answers a StaticIPPool admission review from the pool cache, without I/O.
pub fn review_pool(state: &AppState, body: &[u8]) -> Answer {
    review_typed::<StaticIPPool>(body, "StaticIPPool", |request, mut new, old| {
        if new.metadata.name.is_none() && !request.name.is_empty() {
            new.metadata.name = Some(request.name.clone());
        }
        // An update adding no CIDR (a finalizer, reservedIPs) has nothing to judge: it must
        // not wait for the cache (the StaticIP manager's finalizer removal goes through here).
        if old
            .as_ref()
            .is_some_and(|old| new.spec.cidrs.iter().all(|c| old.spec.cidrs.contains(c)))
        {
            return Vec::new();
        }
        if !state.pools_listed.load(Ordering::SeqCst) {
            return vec![
                "spec.cidrs: the ests webhook has not yet read every StaticIPPool to check for overlaps; retry in a moment"
                    .to_string(),
            ];
        }
        let pools = state.pools.state();
        pool_admission(&new, old.as_ref(), pools.iter().map(AsRef::as_ref))
    })
}

/// The route answering POSTs with `review`, timed and counted under `endpoint`. Every
/// endpoint is a pure function of the state and the body, so one handler serves them all.
fn endpoint(
    endpoint: &'static str,
    review: fn(&AppState, &[u8]) -> Answer,
) -> MethodRouter<AppState> {
    post(
        move |State(state): State<AppState>, body: Result<Bytes, BytesRejection>| async move {
            let started = Instant::now();
            let answer = match body {
                Ok(body) => review(&state, &body),
                Err(rejection) => Answer::unreadable(rejection),
            };
            ests_runtime::http::respond(
                &state.metrics.requests,
                &state.metrics.duration,
                endpoint,
                started,
                answer,
            )
        },
    )
}

/// Answers a Karmada `ResourceInterpreterContext`, without I/O.
pub fn review_interpretation(body: &[u8]) -> Answer {
    let context: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Answer::bad_request(format!("not a ResourceInterpreterContext: {e}")),
    };
    match ests_core::karmada::answer(&context) {
        Ok(reply) => {
            let result = if reply["response"]["successful"] == json!(true) {
                "answered"
            } else {
                "refused"
            };
            Answer::ok(&reply, result)
        }
        Err(e) => Answer::bad_request(e),
    }
}
