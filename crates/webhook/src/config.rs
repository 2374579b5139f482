//! The webhook configurations that register `ests webhook` with the API server.

use std::collections::BTreeMap;

use ests_api::keys;
use ests_core::pin::CniAnnotation;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations,
    ServiceReference, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};

/// Name of both configurations (and prefix of their webhooks).
pub const NAME: &str = "ests-webhook";
/// Path of the Pod webhook.
pub const PODS_PATH: &str = "/mutate-pods";
/// Path of the webhook that keeps kept addresses out of ordinary pods' CNI annotations.
pub const POD_ADDRESSES_PATH: &str = "/validate-pod-addresses";
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

/// `s` as a CEL string literal.
fn cel_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Which pods the pod-address webhook is sent: those without the static-IP label (the pin
/// judges those) that set one of the `cni` annotation keys (on a create) or change one (on
/// an update). The API server decides this itself, so an ordinary pod costs no call.
pub fn pod_address_conditions(cni: &[CniAnnotation]) -> Vec<MatchCondition> {
    let mut keys: Vec<String> = Vec::new();
    for c in cni {
        let key = cel_string(&c.key);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let keys = format!("[{}]", keys.join(", "));
    let annotation = |object: &str| format!("{object}.metadata.?annotations[?k].orValue('')");
    vec![
        MatchCondition {
            name: "not-a-static-ip-pod".into(),
            expression: format!(
                "object.metadata.?labels[?{}].orValue('') != 'true'",
                cel_string(keys::STATIC_IP_POD_LABEL)
            ),
        },
        MatchCondition {
            name: "sets-a-cni-address-annotation".into(),
            expression: format!(
                "request.operation == 'CREATE' ? {keys}.exists(k, {} != '') : {keys}.exists(k, {} != {})",
                annotation("object"),
                annotation("object"),
                annotation("oldObject")
            ),
        },
    ]
}

/// The Pod webhook (mutating, only pods with the static-IP label), the pod-address webhook
/// (validating, only pods without it that set one of the `cni` annotations; none when `cni`
/// is empty), the set webhook
/// and the pool webhook (validating). All fail closed: a static-IP pod must never start
/// without its pin, a pod naming an address the webhook could not check is not admitted, and
/// neither is a set or pool the webhook could not check.
pub fn configurations(
    endpoint: &Endpoint,
    ca_bundle: Option<&[u8]>,
    ests_namespace: &str,
    cni: &[CniAnnotation],
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
    // Validating, so that it sees the pod as it will be stored: after every mutating webhook
    // (any of which might add a CNI annotation). Pods are core/v1, not ests's API.
    let pod_addresses = ValidatingWebhook {
        name: "pod-addresses.staticip.jke.jdcloud.com".into(),
        rules: Some(vec![RuleWithOperations {
            operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
            api_groups: Some(vec!["".into()]),
            api_versions: Some(vec!["v1".into()]),
            resources: Some(vec!["pods".into()]),
            scope: Some("Namespaced".into()),
        }]),
        match_conditions: Some(pod_address_conditions(cni)),
        ..validating(
            "pods",
            POD_ADDRESSES_PATH,
            "Namespaced",
            Some(namespace_selector(ests_namespace)),
        )
    };
    let sets = validating(
        "enhancedstatefulsets",
        SETS_PATH,
        "Namespaced",
        Some(namespace_selector(ests_namespace)),
    );
    // Pools are cluster-scoped: no namespace selector applies.
    let pools = validating("staticippools", POOLS_PATH, "Cluster", None);
    // Without a CNI annotation (`--cni-annotation none`: ests-cni is the IPAM) no pod can ask
    // the CNI for an address through one: ests-cni reads only ests's own annotation, which
    // the `ests-pod-addresses` policy keeps to static-IP pods, and hands ordinary pods only
    // addresses no record keeps. Nothing is left for the pod-address webhook to guard.
    let validating_hooks = if cni.is_empty() {
        vec![sets, pools]
    } else {
        vec![pod_addresses, sets, pools]
    };
    (
        MutatingWebhookConfiguration {
            metadata: metadata.clone(),
            webhooks: Some(vec![pods]),
        },
        ValidatingWebhookConfiguration {
            metadata,
            webhooks: Some(validating_hooks),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_address_conditions_name_each_configured_key_once() {
        let cni = [
            CniAnnotation::calico(),
            CniAnnotation::parse("example.com/ip={ipv4}").expect("valid"),
            CniAnnotation::parse("example.com/ip={ipv6}").expect("valid"),
        ];
        let conditions = pod_address_conditions(&cni);
        let names: Vec<&str> = conditions.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["not-a-static-ip-pod", "sets-a-cni-address-annotation"]
        );
        assert_eq!(
            conditions[1]
                .expression
                .matches("['cni.projectcalico.org/ipAddrs', 'example.com/ip']")
                .count(),
            2,
            "{}",
            conditions[1].expression
        );
    }

    #[test]
    fn with_no_cni_annotation_there_is_no_pod_address_webhook() {
        let names = |cni: &[CniAnnotation]| -> Vec<String> {
            let (_, validating) = configurations(
                &Endpoint::Url("https://127.0.0.1:9443".into()),
                None,
                "ests-system",
                cni,
            );
            validating
                .webhooks
                .unwrap_or_default()
                .into_iter()
                .map(|w| w.name)
                .collect()
        };
        assert_eq!(
            names(&[]),
            [
                "enhancedstatefulsets.jke.jdcloud.com",
                "staticippools.jke.jdcloud.com"
            ]
        );
        assert_eq!(
            names(&[CniAnnotation::calico()]),
            [
                "pod-addresses.staticip.jke.jdcloud.com",
                "enhancedstatefulsets.jke.jdcloud.com",
                "staticippools.jke.jdcloud.com"
            ]
        );
    }

    #[test]
    fn cel_strings_are_quoted() {
        assert_eq!(cel_string("a/b"), "'a/b'");
        assert_eq!(cel_string(r"it's\"), r"'it\'s\\'");
    }

    #[test]
    fn only_the_pod_address_webhook_sees_pods_without_the_label() {
        let (mutating, validating) = configurations(
            &Endpoint::Url("https://127.0.0.1:9443".into()),
            None,
            "ests-system",
            &[CniAnnotation::calico()],
        );
        let pods = &mutating.webhooks.as_deref().unwrap_or_default()[0];
        assert!(
            pods.object_selector.is_some(),
            "the pin sees labelled pods only"
        );
        let hooks = validating.webhooks.unwrap_or_default();
        let addresses = hooks
            .iter()
            .find(|w| w.name == "pod-addresses.staticip.jke.jdcloud.com")
            .expect("the pod-address webhook");
        assert_eq!(addresses.object_selector, None);
        assert!(
            addresses
                .match_conditions
                .as_ref()
                .is_some_and(|c| c.len() == 2)
        );
        assert_eq!(
            addresses.client_config.url.as_deref(),
            Some("https://127.0.0.1:9443/validate-pod-addresses")
        );
        let rule = &addresses.rules.as_deref().unwrap_or_default()[0];
        assert_eq!(rule.resources.as_deref(), Some(&["pods".to_string()][..]));
        assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]));
    }
}
