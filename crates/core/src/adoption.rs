//! Which pods a set controls, as upstream's ClaimPods decides (kube-controller-manager's
//! `ControllerRefManager`): a pod named like one of the set's identities whose labels match
//! the selector and that no controller owns is adopted; a pod the set controls whose labels
//! stop matching is released — its owner reference removed, the pod left running — never
//! deleted and replaced. A pod another controller owns is never touched.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use crate::identity::ordinal_of;

/// What a set does about a pod of its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// The set controls the pod.
    Owned,
    /// An orphan the set takes over (after a live re-check that the set is still there and
    /// not being deleted).
    Adopt,
    /// The set controls the pod, but its labels no longer match: let it go.
    Release,
    /// Not the set's business.
    NotOurs,
}

/// What the set (UID `set_uid`, selecting `selector`, being deleted if `set_deleting`) does
/// about an object of its namespace with metadata `meta`; `named_as_ours`: its name is one
/// the set gives (`<set>-<ordinal>` for a pod, `<set>-<hash>` for a ControllerRevision).
pub fn membership(
    set_uid: &str,
    set_deleting: bool,
    selector: &Selector,
    meta: &ObjectMeta,
    named_as_ours: bool,
) -> Membership {
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let selected = selector.matches(meta.labels.as_ref().unwrap_or(&BTreeMap::new()));
    match controller {
        Some(owner) if owner.uid != set_uid => Membership::NotOurs,
        // A set being deleted lets nothing go: garbage collection follows its references.
        Some(_) if selected || set_deleting || !named_as_ours => Membership::Owned,
        Some(_) => Membership::Release,
        None if set_deleting || meta.deletion_timestamp.is_some() => Membership::NotOurs,
        None if selected && named_as_ours => Membership::Adopt,
        None => Membership::NotOurs,
    }
}

/// [`membership`] of a pod of the set named `set_name`.
pub fn pod_membership(set_name: &str, set_uid: &str, selector: &Selector, pod: &Pod) -> Membership {
    let named = ordinal_of(set_name, &pod.name_any()).is_some();
    membership(set_uid, false, selector, &pod.metadata, named)
}

/// [`membership`] of a ControllerRevision of the set named `set_name`.
pub fn revision_membership(
    set_name: &str,
    set_uid: &str,
    selector: &Selector,
    revision: &ControllerRevision,
) -> Membership {
    let named = revision
        .name_any()
        .strip_prefix(set_name)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|hash| !hash.is_empty() && !hash.contains('-'));
    membership(set_uid, false, selector, &revision.metadata, named)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn pod(name: &str, labels: Value, owner: Option<&str>, deleting: bool) -> Pod {
        let mut meta = json!({"name": name, "namespace": "ns", "labels": labels});
        if let Some(uid) = owner {
            meta["ownerReferences"] = json!([{"apiVersion": "jke.jdcloud.com/v1alpha1",
                "kind": "EnhancedStatefulSet", "name": "web", "uid": uid, "controller": true}]);
        }
        if deleting {
            meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        serde_json::from_value(json!({"metadata": meta})).expect("pod")
    }

    #[test]
    fn claims_as_upstream() {
        use Membership::*;
        let selector: Selector =
            Selector::try_from(
                serde_json::from_value::<
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
                >(json!({"matchLabels": {"app": "web"}}))
                .expect("selector"),
            )
            .expect("selector");
        let matching = json!({"app": "web"});
        let other = json!({"app": "db"});
        // (pod name, labels, controller UID, pod deleting, set deleting) -> membership
        let table = [
            ("web-0", &matching, Some("set-1"), false, false, Owned),
            ("web-0", &other, Some("set-1"), false, false, Release),
            ("web-0", &other, Some("set-1"), false, true, Owned),
            ("web-0", &matching, Some("set-2"), false, false, NotOurs),
            ("web-0", &other, Some("set-2"), false, false, NotOurs),
            ("web-0", &matching, None, false, false, Adopt),
            ("web-0", &matching, None, true, false, NotOurs),
            ("web-0", &matching, None, false, true, NotOurs),
            ("web-0", &other, None, false, false, NotOurs),
            // Not named like an identity of the set: never adopted.
            ("web-x", &matching, None, false, false, NotOurs),
            ("webby-0", &matching, None, false, false, NotOurs),
            ("web-01", &matching, None, false, false, NotOurs),
        ];
        for (name, labels, owner, pod_deleting, set_deleting, want) in table {
            let p = pod(name, labels.clone(), owner, pod_deleting);
            let named = ordinal_of("web", name).is_some();
            assert_eq!(
                membership("set-1", set_deleting, &selector, &p.metadata, named),
                want,
                "{name} {labels} owner {owner:?} pod deleting {pod_deleting} set deleting {set_deleting}"
            );
        }
    }

    #[test]
    fn revisions_are_adopted_by_name_and_labels() {
        let selector: Selector =
            Selector::try_from(
                serde_json::from_value::<
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
                >(json!({"matchLabels": {"app": "web"}}))
                .expect("selector"),
            )
            .expect("selector");
        let revision = |name: &str| -> ControllerRevision {
            serde_json::from_value(
                json!({"metadata": {"name": name, "labels": {"app": "web"}}, "revision": 1}),
            )
            .expect("revision")
        };
        assert_eq!(
            revision_membership("web", "set-1", &selector, &revision("web-5d8f7c9b4")),
            Membership::Adopt
        );
        for other in ["webby-5d8f7c9b4", "web-", "web-x-5d8f7c9b4"] {
            assert_eq!(
                revision_membership("web", "set-1", &selector, &revision(other)),
                Membership::NotOurs,
                "{other}"
            );
        }
    }
}
