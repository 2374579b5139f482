//! The objects the controller creates for an identity: its pod and its PVCs.

use std::collections::BTreeMap;

use ests_api::{EnhancedStatefulSet, PvcRetentionPolicyType, keys};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::identity::{container_name_from_image, pod_name};

/// The owner reference that makes the set the controller of what it creates.
pub fn owner_reference(set: &EnhancedStatefulSet) -> Option<OwnerReference> {
    set.controller_owner_ref(&())
}

/// Names containers that have none after their image, keeping names unique.
pub fn name_containers(template: &mut PodTemplateSpec) {
    let Some(spec) = template.spec.as_mut() else {
        return;
    };
    let mut taken: Vec<String> = spec
        .containers
        .iter()
        .map(|c| c.name.clone())
        .filter(|n| !n.is_empty())
        .collect();
    for container in spec.containers.iter_mut().filter(|c| c.name.is_empty()) {
        let base = container_name_from_image(container.image.as_deref().unwrap_or_default());
        let mut name = base.clone();
        let mut n = 2;
        while taken.contains(&name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        taken.push(name.clone());
        container.name = name;
    }
}

/// The name of the PVC of claim template `claim` for `ordinal`.
pub fn claim_name(claim: &str, set: &str, ordinal: i32) -> String {
    format!("{claim}-{set}-{ordinal}")
}

/// The pod of `ordinal`, from the template of revision `revision_hash`.
pub fn build_pod(
    set: &EnhancedStatefulSet,
    template: &PodTemplateSpec,
    revision_hash: &str,
    ordinal: i32,
) -> Pod {
    let set_name = set.name_any();
    let name = pod_name(&set_name, ordinal);
    let mut template = template.clone();
    name_containers(&mut template);
    let meta = template.metadata.unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(keys::CONTROLLER_REVISION_HASH.into(), revision_hash.into());
    labels.insert(keys::POD_NAME_LABEL.into(), name.clone());
    labels.insert(keys::POD_INDEX_LABEL.into(), ordinal.to_string());
    let mut spec = template.spec.unwrap_or_default();
    spec.hostname = Some(name.clone());
    spec.subdomain = set.spec.service_name.clone().filter(|s| !s.is_empty());
    // Each claim template becomes a volume backed by this identity's PVC, replacing any
    // template volume of the same name (as upstream).
    let claims: Vec<String> = set
        .spec
        .volume_claim_templates
        .iter()
        .flatten()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    let mut volumes: Vec<Volume> = spec
        .volumes
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|v| !claims.contains(&v.name))
        .collect();
    for claim in &claims {
        volumes.push(Volume {
            name: claim.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(claim, &set_name, ordinal),
                read_only: None,
            }),
            ..Default::default()
        });
    }
    spec.volumes = (!volumes.is_empty()).then_some(volumes);
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: set.namespace(),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: owner_reference(set).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// The PVCs of `ordinal`, owned as [`claim_owners`] says (with `whenDeleted: Delete` by the
/// set, so that garbage collection removes them with it).
pub fn build_claims(set: &EnhancedStatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let set_name = set.name_any();
    let selector_labels: BTreeMap<String, String> =
        set.spec.selector.match_labels.clone().unwrap_or_default();
    let template_labels = set
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    set.spec
        .volume_claim_templates
        .iter()
        .flatten()
        .filter_map(|claim| {
            let claim_template_name = claim.metadata.name.clone()?;
            let mut labels = template_labels.clone();
            labels.extend(claim.metadata.labels.clone().unwrap_or_default());
            labels.extend(selector_labels.clone());
            let mut built = PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim_name(&claim_template_name, &set_name, ordinal)),
                    namespace: set.namespace(),
                    labels: Some(labels),
                    annotations: claim.metadata.annotations.clone(),
                    ..Default::default()
                },
                spec: claim.spec.clone(),
                status: None,
            };
            built.metadata.owner_references = claim_owners(&built, set, None, false);
            Some(built)
        })
        .collect()
}

/// The owner references a claim of the set should carry, as upstream's
/// `updateClaimOwnerRefForSetAndPod` decides them from the retention policy: the set owns it
/// (for deletion, not as its controller) under `whenDeleted: Delete`; the pod owns it under
/// `whenScaled: Delete` once the pod's identity is scaled in (`scaled_in`), so the claim goes
/// with the pod — and the hand-off is undone when the identity comes back, so garbage
/// collection never takes a claim that is in use again. Other owners are kept. None when
/// nothing changes, or when another controller controls the claim (never taken over).
pub fn claim_owners(
    claim: &PersistentVolumeClaim,
    set: &EnhancedStatefulSet,
    pod: Option<&Pod>,
    scaled_in: bool,
) -> Option<Vec<OwnerReference>> {
    let set_uid = set.uid().unwrap_or_default();
    let pod_uid = pod.and_then(ResourceExt::uid);
    let current = claim.owner_references();
    let foreign_controller = current.iter().any(|o| {
        o.controller == Some(true) && o.uid != set_uid && Some(&o.uid) != pod_uid.as_ref()
    });
    if foreign_controller {
        return None;
    }
    let policy = set
        .spec
        .persistent_volume_claim_retention_policy
        .clone()
        .unwrap_or_default();
    let delete = PvcRetentionPolicyType::Delete;
    let (by_set, by_pod) = match (policy.when_scaled == delete, policy.when_deleted == delete) {
        (false, false) => (false, false),
        (false, true) => (true, false),
        (true, false) => (false, scaled_in),
        (true, true) => (!scaled_in, scaled_in),
    };
    // Every reference to the pod's identity goes: an earlier incarnation's (another UID)
    // would have garbage collection delete the claim under the pod that reuses it.
    let pod_name = pod.map(ResourceExt::name_any);
    let mut wanted: Vec<OwnerReference> = current
        .iter()
        .filter(|o| o.uid != set_uid)
        .filter(|o| {
            !(o.kind == "Pod" && o.api_version == "v1" && Some(&o.name) == pod_name.as_ref())
        })
        .cloned()
        .collect();
    if by_set && let Some(mut reference) = owner_reference(set) {
        reference.controller = None;
        reference.block_owner_deletion = None;
        wanted.push(reference);
    }
    if by_pod && let (Some(pod), Some(uid)) = (pod, pod_uid) {
        wanted.push(OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: pod.name_any(),
            uid,
            ..OwnerReference::default()
        });
    }
    let same = |a: &[OwnerReference], b: &[OwnerReference]| {
        let key = |o: &OwnerReference| (o.uid.clone(), o.controller, o.kind.clone());
        let mut a: Vec<_> = a.iter().map(key).collect();
        let mut b: Vec<_> = b.iter().map(key).collect();
        a.sort();
        b.sort();
        a == b
    };
    (!same(current, &wanted)).then_some(wanted)
}

/// A claim whose owner references change: the owners it gets, decided from the claim as
/// read at `resource_version` (the write carries it, so a claim changed since is left for
/// the next reconcile).
#[derive(Debug, Clone, PartialEq)]
pub struct OwnerChange {
    pub claim: String,
    pub resource_version: Option<String>,
    pub owners: Vec<OwnerReference>,
}

/// The owner changes the claims of `pod` (one of the set's, by name) need so that the
/// retention policy holds, `scaled_in` saying whether its identity is outside the set now
/// ([`claim_owners`] for each); `cached` is the claim of that name as last seen, if any. A
/// claim not seen yet, or already owned as the policy wants, needs none.
pub fn owner_changes(
    set: &EnhancedStatefulSet,
    pod: &Pod,
    scaled_in: bool,
    cached: impl Fn(&str) -> Option<std::sync::Arc<PersistentVolumeClaim>>,
) -> Vec<OwnerChange> {
    let Some(ordinal) = crate::identity::ordinal_of(&set.name_any(), &pod.name_any()) else {
        return Vec::new();
    };
    build_claims(set, ordinal)
        .iter()
        .filter_map(|built| {
            let name = built.name_any();
            let claim = cached(&name)?;
            let owners = claim_owners(&claim, set, Some(pod), scaled_in)?;
            Some(OwnerChange {
                claim: name,
                resource_version: claim.resource_version(),
                owners,
            })
        })
        .collect()
}

/// A node migration's request that the pod leave its node (annotations
/// [`keys::EVICT_FOR`] and [`keys::EVICT_TOGETHER`]), as the set's planner and the migration
/// read it.
pub fn leave_request(pod: &Pod) -> Option<crate::rollout::Leave> {
    let annotations = pod.metadata.annotations.as_ref()?;
    annotations.get(keys::EVICT_FOR)?;
    Some(match annotations.get(keys::EVICT_TOGETHER) {
        Some(group) => crate::rollout::Leave::Together(group.clone()),
        None => crate::rollout::Leave::Alone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set() -> EnhancedStatefulSet {
        let mut set: EnhancedStatefulSet = serde_json::from_value(json!({
            "apiVersion": "jke.jdcloud.com/v1alpha1",
            "kind": "EnhancedStatefulSet",
            "metadata": {"name": "web", "namespace": "ns", "uid": "set-uid"},
            "spec": {
                "serviceName": "web-svc",
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [{"image": "nginx:v1"}, {"name": "nginx", "image": "sidecar:1"}, {"image": "nginx:v2"}],
                        "volumes": [{"name": "data", "emptyDir": {}}, {"name": "cache", "emptyDir": {}}]
                    }
                },
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
                "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"}
            }
        }))
        .expect("set");
        set.metadata.uid = Some("set-uid".into());
        set
    }

    #[test]
    fn pods_carry_identity_labels_names_and_claims() {
        let s = set();
        let pod = build_pod(&s, &s.spec.template, "abc", 3);
        assert_eq!(pod.metadata.name.as_deref(), Some("web-3"));
        let labels = pod.metadata.labels.clone().expect("labels");
        assert_eq!(labels[keys::CONTROLLER_REVISION_HASH], "abc");
        assert_eq!(labels[keys::POD_NAME_LABEL], "web-3");
        assert_eq!(labels[keys::POD_INDEX_LABEL], "3");
        assert_eq!(labels["app"], "web");
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.hostname.as_deref(), Some("web-3"));
        assert_eq!(spec.subdomain.as_deref(), Some("web-svc"));
        let names: Vec<_> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["nginx-2", "nginx", "nginx-3"]);
        let volumes = spec.volumes.expect("volumes");
        assert_eq!(volumes.len(), 2);
        let data = volumes
            .iter()
            .find(|v| v.name == "data")
            .expect("data volume");
        assert_eq!(
            data.persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("data-web-3")
        );
        let owner = &pod.metadata.owner_references.expect("owner")[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            ("set-uid", Some(true))
        );
    }

    #[test]
    fn claims_follow_the_retention_policy() {
        let mut s = set();
        let claims = build_claims(&s, 2);
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].metadata.name.as_deref(), Some("data-web-2"));
        assert_eq!(
            claims[0].metadata.owner_references.as_ref().map(Vec::len),
            Some(1)
        );
        s.spec.persistent_volume_claim_retention_policy = None;
        assert_eq!(build_claims(&s, 2)[0].metadata.owner_references, None);
    }

    #[test]
    fn source_document_container_is_named_after_its_image() {
        let mut t: PodTemplateSpec =
            serde_json::from_value(json!({"spec": {"containers": [{"image": "nginx:v1"}]}}))
                .expect("template");
        name_containers(&mut t);
        assert_eq!(t.spec.expect("spec").containers[0].name, "nginx");
    }

    #[test]
    fn owner_changes_cover_the_pods_seen_claims_that_need_one() {
        let mut s = set();
        s.spec.persistent_volume_claim_retention_policy = Some(
            serde_json::from_value(json!({"whenScaled": "Delete", "whenDeleted": "Retain"}))
                .expect("policy"),
        );
        let pod = |name: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": name, "uid": "pod-uid"}}))
                .expect("pod")
        };
        let seen = |version: &str| {
            let claim: PersistentVolumeClaim = serde_json::from_value(
                json!({"metadata": {"name": "data-web-3", "resourceVersion": version}}),
            )
            .expect("claim");
            move |name: &str| (name == "data-web-3").then(|| std::sync::Arc::new(claim.clone()))
        };
        let owner_uids = |changes: &[OwnerChange]| -> Vec<(String, Vec<String>)> {
            changes
                .iter()
                .map(|c| {
                    (
                        c.claim.clone(),
                        c.owners.iter().map(|o| o.uid.clone()).collect(),
                    )
                })
                .collect()
        };
        for (case, name, scaled_in, cached, want) in [
            (
                "a scaled-in pod gets its claim",
                "web-3",
                true,
                true,
                vec![("data-web-3".to_string(), vec!["pod-uid".to_string()])],
            ),
            (
                "a pod still in the set needs nothing",
                "web-3",
                false,
                true,
                vec![],
            ),
            (
                "a claim not seen yet is left alone",
                "web-3",
                true,
                false,
                vec![],
            ),
            (
                "a pod not of the set has no claims",
                "other-3",
                true,
                true,
                vec![],
            ),
        ] {
            let lookup = seen("41");
            let changes = if cached {
                owner_changes(&s, &pod(name), scaled_in, lookup)
            } else {
                owner_changes(&s, &pod(name), scaled_in, |_: &str| None)
            };
            assert_eq!(owner_uids(&changes), want, "{case}");
            assert!(
                changes
                    .iter()
                    .all(|c| c.resource_version.as_deref() == Some("41")),
                "{case}: the write carries the version read"
            );
        }
    }

    #[test]
    fn claim_owners_follow_the_retention_policy_as_upstream() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-3", "namespace": "ns", "uid": "pod-uid"}
        }))
        .expect("pod");
        let claim = |owners: serde_json::Value| -> PersistentVolumeClaim {
            serde_json::from_value(
                json!({"metadata": {"name": "data-web-3", "ownerReferences": owners}}),
            )
            .expect("claim")
        };
        let set_ref = json!({"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet", "name": "web", "uid": "set-uid"});
        let pod_ref = json!({"apiVersion": "v1", "kind": "Pod", "name": "web-3", "uid": "pod-uid"});
        let old_pod_ref =
            json!({"apiVersion": "v1", "kind": "Pod", "name": "web-3", "uid": "earlier-pod"});
        let uids = |owners: Option<Vec<OwnerReference>>| -> Option<Vec<String>> {
            owners.map(|o| {
                let mut u: Vec<String> = o.into_iter().map(|o| o.uid).collect();
                u.sort();
                u
            })
        };
        let some = |u: &[&str]| Some(u.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        // (whenScaled, whenDeleted, current owners, scaled in) -> wanted owner UIDs (None: no change)
        let table = [
            ("Retain", "Retain", json!([]), false, None),
            ("Retain", "Retain", json!([set_ref]), false, some(&[])),
            ("Retain", "Delete", json!([]), false, some(&["set-uid"])),
            ("Retain", "Delete", json!([set_ref]), true, None),
            ("Delete", "Retain", json!([]), false, None),
            ("Delete", "Retain", json!([]), true, some(&["pod-uid"])),
            // The identity came back: the hand-off to the earlier pod is undone.
            ("Delete", "Retain", json!([old_pod_ref]), false, some(&[])),
            ("Delete", "Retain", json!([pod_ref]), false, some(&[])),
            ("Delete", "Delete", json!([set_ref]), false, None),
            (
                "Delete",
                "Delete",
                json!([set_ref]),
                true,
                some(&["pod-uid"]),
            ),
            (
                "Delete",
                "Delete",
                json!([pod_ref]),
                false,
                some(&["set-uid"]),
            ),
        ];
        for (when_scaled, when_deleted, owners, scaled_in, wanted) in table {
            let mut s = set();
            s.spec.persistent_volume_claim_retention_policy = Some(
                serde_json::from_value(
                    json!({"whenScaled": when_scaled, "whenDeleted": when_deleted}),
                )
                .expect("policy"),
            );
            assert_eq!(
                uids(claim_owners(
                    &claim(owners.clone()),
                    &s,
                    Some(&pod),
                    scaled_in
                )),
                wanted,
                "{when_scaled}/{when_deleted} owners {owners} scaled in {scaled_in}"
            );
        }
        // Another controller's claim is never taken over.
        let foreign = claim(
            json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "x", "uid": "other", "controller": true}]),
        );
        assert_eq!(claim_owners(&foreign, &set(), Some(&pod), true), None);
        // Owners that are none of ests's business stay.
        let shared =
            claim(json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "keep", "uid": "cm"}]));
        assert_eq!(
            uids(claim_owners(&shared, &set(), Some(&pod), false)),
            some(&["cm", "set-uid"])
        );
    }
}
