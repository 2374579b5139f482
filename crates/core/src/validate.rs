//! What the set webhook refuses that the CRD's schema and CEL rules cannot say (they cannot
//! evaluate a label selector, and CEL over the embedded pod template exceeds the API
//! server's cost budget). Every message names its field.

use ests_api::{EnhancedStatefulSet, keys};
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

/// The reasons to refuse creating `new` (or updating `old` to `new`); empty if none.
pub fn set_admission(new: &EnhancedStatefulSet, old: Option<&EnhancedStatefulSet>) -> Vec<String> {
    let mut problems = Vec::new();
    let labels = new
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    match Selector::try_from(new.spec.selector.clone()) {
        Ok(selector) if selector.selects_all() => problems.push(
            "spec.selector: must not be empty (it would select every pod in the namespace)".into(),
        ),
        Ok(selector) if !selector.matches(&labels) => problems.push(format!(
            "spec.selector: {selector} does not select the pods of spec.template.metadata.labels ({})",
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Ok(_) => {}
        Err(e) => problems.push(format!("spec.selector: {e}")),
    }
    if let Some(policy) = new
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .filter(|p| *p != "Always")
    {
        problems.push(format!(
            "spec.template.spec.restartPolicy: must be Always for a stateful set's pods, not {policy}"
        ));
    }
    if let Some(old) = old {
        for key in [keys::STATIC_IP_ENABLE, keys::STATIC_IP_POOL] {
            let before = old.annotations().get(key);
            let after = new.annotations().get(key);
            if before != after {
                problems.push(format!(
                    "metadata.annotations[{key}]: the IP mode cannot change while the set exists ({} -> {}); delete and re-create the set",
                    before.map_or("unset", String::as_str),
                    after.map_or("unset", String::as_str)
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(
        selector: serde_json::Value,
        labels: serde_json::Value,
        annotations: serde_json::Value,
    ) -> EnhancedStatefulSet {
        serde_json::from_value(json!({
            "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet",
            "metadata": {"name": "web", "annotations": annotations},
            "spec": {"selector": selector,
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"image": "nginx"}]}}}
        }))
        .expect("set")
    }

    #[test]
    fn selectors_must_select_the_template() {
        let ok = set(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "web", "tier": "x"}),
            json!({}),
        );
        assert!(set_admission(&ok, None).is_empty());
        let expressions = set(
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}]}),
            json!({"app": "db"}),
            json!({}),
        );
        let problems = set_admission(&expressions, None);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("spec.selector: "), "{problems:?}");
        assert!(problems[0].contains("app=db"), "{problems:?}");
        let empty = set(json!({}), json!({"app": "web"}), json!({}));
        assert!(set_admission(&empty, None)[0].contains("must not be empty"));
    }

    #[test]
    fn restart_policy_must_be_always() {
        let mut s = set(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "web"}),
            json!({}),
        );
        if let Some(spec) = s.spec.template.spec.as_mut() {
            spec.restart_policy = Some("OnFailure".into());
        }
        assert_eq!(
            set_admission(&s, None),
            [
                "spec.template.spec.restartPolicy: must be Always for a stateful set's pods, not OnFailure"
            ]
        );
    }

    #[test]
    fn the_ip_mode_never_changes() {
        let before = set(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "web"}),
            json!({"staticip.jke.jdcloud.com/enable": "true"}),
        );
        let to_range = set(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "web"}),
            json!({"staticip.jke.jdcloud.com/enable": "true", "staticip.jke.jdcloud.com/pool": "blue"}),
        );
        let problems = set_admission(&to_range, Some(&before));
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("metadata.annotations[staticip.jke.jdcloud.com/pool]"),
            "{problems:?}"
        );
        assert!(set_admission(&before, Some(&before)).is_empty());
    }
}
