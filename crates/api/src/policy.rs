//! ValidatingAdmissionPolicies for what a CRD schema cannot say, because CRD rules see neither
//! `metadata.annotations` nor who sends the request:
//!
//! - a set's IP mode (its static-IP annotations) never changes while the set exists, and
//!   the annotations hold valid values;
//! - a set's `spec.selector.matchLabels` match its template's labels (a CRD rule over two
//!   unbounded maps exceeds the API server's CEL cost budget; a policy is checked per request);
//! - only ests's own service accounts create StaticIP records with addresses or change a
//!   record's addresses or node;
//! - only static-IP pods (label `staticip.jke.jdcloud.com/enabled=true`, which only the ests
//!   controller may set, as the webhook checks) carry ests's address annotations: an ordinary
//!   pod cannot ask a CNI or the harness for an address ests keeps for an identity.
//!
//! The kube-apiserver evaluates these in process, so they hold even while the ests webhook
//! is down. `ests crd` writes them to `config/policy/`.

use k8s_openapi::api::admissionregistration::v1::{
    MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation, Variable,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::keys;

pub mod ip_mode;

/// Name of the policy that checks EnhancedStatefulSets.
pub const SET_POLICY: &str = "ests-enhanced-stateful-set";
/// Name of the policy that guards StaticIP records.
pub const STATIC_IP_GUARD_POLICY: &str = "ests-static-ip-guard";
/// Name of the policy that keeps ests's address annotations to static-IP pods.
pub const POD_ADDRESSES_POLICY: &str = "ests-pod-addresses";
/// The namespace ests runs in unless configured otherwise.
pub const DEFAULT_NAMESPACE: &str = "ests-system";

/// The policies and their bindings, for ests running in `ests_namespace`: every service
/// account of that namespace counts as ests.
pub fn all(
    ests_namespace: &str,
) -> (
    Vec<ValidatingAdmissionPolicy>,
    Vec<ValidatingAdmissionPolicyBinding>,
) {
    let policies = vec![
        set_policy(),
        static_ip_guard_policy(ests_namespace),
        pod_addresses_policy(),
    ];
    let bindings = policies
        .iter()
        .map(|p| binding(p.metadata.name.as_deref().unwrap_or_default()))
        .collect();
    (policies, bindings)
}

fn rule(resource: &str, operations: &[&str]) -> NamedRuleWithOperations {
    NamedRuleWithOperations {
        api_groups: Some(vec![crate::GROUP.into()]),
        api_versions: Some(vec![crate::VERSION.into()]),
        operations: Some(operations.iter().map(|o| o.to_string()).collect()),
        resources: Some(vec![resource.into()]),
        ..Default::default()
    }
}

fn validation(expression: String, message: String) -> Validation {
    Validation {
        expression,
        message: Some(message),
        reason: Some("Invalid".into()),
        ..Default::default()
    }
}

fn set_policy() -> ValidatingAdmissionPolicy {
    let mut validations = vec![validation(
        "object.spec.selector.?matchLabels.orValue({}).all(k, k in variables.templateLabels && variables.templateLabels[k] == object.spec.selector.matchLabels[k])".into(),
        "spec.selector.matchLabels must match spec.template.metadata.labels".into(),
    )];
    // The IP-mode annotations: the rules the webhook and the controller check in Rust.
    validations.extend(
        ip_mode::RULES
            .iter()
            .map(|rule| validation(rule.expression(), rule.message())),
    );
    ValidatingAdmissionPolicy {
        metadata: ObjectMeta {
            name: Some(SET_POLICY.into()),
            ..Default::default()
        },
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![rule("enhancedstatefulsets", &["CREATE", "UPDATE"])]),
                ..Default::default()
            }),
            variables: Some(vec![Variable {
                name: "templateLabels".into(),
                expression: "object.spec.template.?metadata.?labels.orValue({})".into(),
            }]),
            validations: Some(validations),
            ..Default::default()
        }),
        status: None,
    }
}

fn static_ip_guard_policy(ests_namespace: &str) -> ValidatingAdmissionPolicy {
    ValidatingAdmissionPolicy {
        metadata: ObjectMeta {
            name: Some(STATIC_IP_GUARD_POLICY.into()),
            ..Default::default()
        },
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![rule("staticips", &["CREATE", "UPDATE"])]),
                ..Default::default()
            }),
            variables: Some(vec![Variable {
                name: "isEsts".into(),
                expression: format!(
                    "request.userInfo.groups.exists(g, g == 'system:serviceaccounts:{ests_namespace}')"
                ),
            }]),
            validations: Some(vec![
                validation(
                    "variables.isEsts || request.operation != 'CREATE' || (!has(object.spec.ips) && !has(object.spec.node))".into(),
                    format!("spec.ips and spec.node are set only by ests's service accounts (namespace {ests_namespace})"),
                ),
                validation(
                    "variables.isEsts || request.operation != 'UPDATE' || (object.spec.?ips.orValue([]) == oldObject.spec.?ips.orValue([]) && object.spec.?node.orValue('') == oldObject.spec.?node.orValue(''))".into(),
                    format!("spec.ips and spec.node are changed only by ests's service accounts (namespace {ests_namespace})"),
                ),
            ]),
            ..Default::default()
        }),
        status: None,
    }
}

fn pod_addresses_policy() -> ValidatingAdmissionPolicy {
    let label = keys::STATIC_IP_POD_LABEL;
    let validations = [keys::STATIC_IP_POD_IP, keys::STATIC_IP_POD_NODE]
        .into_iter()
        .map(|key| {
            let (now, before) = (
                ip_mode::cel_value("object", key),
                ip_mode::cel_value("oldObject", key),
            );
            validation(
                // Kept as it was on an update: a pod released from its set keeps what it had.
                format!(
                    "variables.isStaticIP || {now} == '' || (request.operation == 'UPDATE' && {now} == {before})"
                ),
                format!(
                    "metadata.annotations[{key}] is set only on static-IP pods (label {label}=true, set by the ests controller)"
                ),
            )
        })
        .collect();
    ValidatingAdmissionPolicy {
        metadata: ObjectMeta {
            name: Some(POD_ADDRESSES_POLICY.into()),
            ..Default::default()
        },
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![NamedRuleWithOperations {
                    api_groups: Some(vec![String::new()]),
                    api_versions: Some(vec!["v1".into()]),
                    operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                    resources: Some(vec!["pods".into()]),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            variables: Some(vec![Variable {
                name: "isStaticIP".into(),
                expression: format!("object.metadata.?labels[?'{label}'].orValue('') == 'true'"),
            }]),
            validations: Some(validations),
            ..Default::default()
        }),
        status: None,
    }
}

fn binding(policy: &str) -> ValidatingAdmissionPolicyBinding {
    ValidatingAdmissionPolicyBinding {
        metadata: ObjectMeta {
            name: Some(policy.into()),
            ..Default::default()
        },
        spec: ValidatingAdmissionPolicyBindingSpec {
            policy_name: policy.into(),
            validation_actions: vec!["Deny".into()],
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_validation_message_names_a_field() {
        let (policies, bindings) = all(DEFAULT_NAMESPACE);
        assert_eq!(policies.len(), bindings.len());
        for policy in &policies {
            let spec = policy.spec.as_ref().expect("policy has a spec");
            for v in spec.validations.iter().flatten() {
                let message = v.message.as_deref().unwrap_or_default();
                assert!(
                    message.starts_with("metadata.annotations[") || message.starts_with("spec."),
                    "message {message:?} does not name a field"
                );
            }
        }
        for (policy, binding) in policies.iter().zip(&bindings) {
            assert_eq!(
                Some(&binding.spec.policy_name),
                policy.metadata.name.as_ref()
            );
        }
    }

    #[test]
    fn guard_names_the_configured_namespace() {
        let (policies, _) = all("team-a");
        let guard = serde_json::to_string(&policies[1]).expect("serializes");
        assert!(guard.contains("system:serviceaccounts:team-a"));
    }
}
