//! The webhook configurations that register `ests webhook` with the API server.

use std::collections::BTreeMap;

use ests_api::keys;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};

/// Name of both configurations (and prefix of their webhooks).
pub const NAME: &str = "ests-webhook";
/// Path of the Pod webhook.
pub const PODS_PATH: &str = "/mutate-pods";
/// Path of the EnhancedStatefulSet webhook.
pub const SETS_PATH: &str = "/validate-sets";
/// Path of the StaticIPPool webhook.
pub const POOLS_PATH: &str = "/validate-pools";

/// Where the API server reaches the webhook.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A Service in the cluster (the chart's way).
    Service {
        namespace: String,
        name: String,
        port: i32,
    },
    /// A URL such as `https://127.0.0.1:9443` (tests, out-of-cluster webhooks).
    Url(String),
}

fn client_config(endpoint: &Endpoint, path: &str, ca_bundle: Option<&[u8]>) -> WebhookClientConfig {
    let (service, url) = match endpoint {
        Endpoint::Service {
            namespace,
            name,
            port,
        } => (
            Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                path: Some(path.into()),
                port: Some(*port),
            }),
            None,
        ),
        Endpoint::Url(base) => (None, Some(format!("{}{path}", base.trim_end_matches('/')))),
    };
    WebhookClientConfig {
        ca_bundle: ca_bundle.map(|b| ByteString(b.to_vec())),
        service,
        url,
    }
}

/// Keeps the webhooks off the namespaces that must work when ests does not: the control
/// plane's and ests's own.
fn namespace_selector(ests_namespace: &str) -> LabelSelector {
    LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "kubernetes.io/metadata.name".into(),
            operator: "NotIn".into(),
            values: Some(vec!["kube-system".into(), ests_namespace.into()]),
        }]),
        match_labels: None,
    }
}

/// The Pod webhook (mutating, only pods with the static-IP label), the set webhook and the
/// pool webhook (validating). All fail closed: a static-IP pod must never start without its
/// pin, and a set or pool the webhook could not check is not admitted.
pub fn configurations(
    endpoint: &Endpoint,
    ca_bundle: Option<&[u8]>,
    ests_namespace: &str,
) -> (MutatingWebhookConfiguration, ValidatingWebhookConfiguration) {
    let metadata = ObjectMeta {
        name: Some(NAME.into()),
        ..ObjectMeta::default()
    };
    let pods = MutatingWebhook {
        name: "pods.staticip.jke.jdcloud.com".into(),
        admission_review_versions: vec!["v1".into()],
        client_config: client_config(endpoint, PODS_PATH, ca_bundle),
        rules: Some(vec![RuleWithOperations {
            operations: Some(vec!["CREATE".into()]),
            api_groups: Some(vec!["".into()]),
            api_versions: Some(vec!["v1".into()]),
            resources: Some(vec!["pods".into()]),
            scope: Some("Namespaced".into()),
        }]),
        object_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                keys::STATIC_IP_POD_LABEL.to_string(),
                "true".to_string(),
            )])),
            match_expressions: None,
        }),
        namespace_selector: Some(namespace_selector(ests_namespace)),
        failure_policy: Some("Fail".into()),
        match_policy: Some("Equivalent".into()),
        side_effects: "None".into(),
        timeout_seconds: Some(5),
        // The patch is idempotent; if a later webhook changes the pod, the pin is re-checked.
        reinvocation_policy: Some("IfNeeded".into()),
        match_conditions: None,
    };
    // A validating webhook of ests's own API, CREATE and UPDATE, failing closed.
    let validating = |resource: &str, path: &str, scope: &str, namespaces| ValidatingWebhook {
        name: format!("{resource}.{}", ests_api::GROUP),
        admission_review_versions: vec!["v1".into()],
        client_config: client_config(endpoint, path, ca_bundle),
        rules: Some(vec![RuleWithOperations {
            operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
            api_groups: Some(vec![ests_api::GROUP.into()]),
            api_versions: Some(vec!["v1alpha1".into()]),
            resources: Some(vec![resource.into()]),
            scope: Some(scope.into()),
        }]),
        namespace_selector: namespaces,
        object_selector: None,
        failure_policy: Some("Fail".into()),
        match_policy: Some("Equivalent".into()),
        side_effects: "None".into(),
        timeout_seconds: Some(5),
        match_conditions: None,
    };
    let sets = validating(
        "enhancedstatefulsets",
        SETS_PATH,
        "Namespaced",
        Some(namespace_selector(ests_namespace)),
    );
    // Pools are cluster-scoped: no namespace selector applies.
    let pools = validating("staticippools", POOLS_PATH, "Cluster", None);
    (
        MutatingWebhookConfiguration {
            metadata: metadata.clone(),
            webhooks: Some(vec![pods]),
        },
        ValidatingWebhookConfiguration {
            metadata,
            webhooks: Some(vec![sets, pools]),
        },
    )
}
