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

/// The PVCs of `ordinal`. With `whenDeleted: Delete` they are owned by the set, so that
/// garbage collection removes them with it.
pub fn build_claims(set: &EnhancedStatefulSet, ordinal: i32) -> Vec<PersistentVolumeClaim> {
    let set_name = set.name_any();
    let owned_by_set = set
        .spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .is_some_and(|p| p.when_deleted == PvcRetentionPolicyType::Delete);
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
            Some(PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(claim_name(&claim_template_name, &set_name, ordinal)),
                    namespace: set.namespace(),
                    labels: Some(labels),
                    annotations: claim.metadata.annotations.clone(),
                    owner_references: if owned_by_set {
                        owner_reference(set).map(|mut o| {
                            // The set owns the claim for deletion only; it is not its controller.
                            o.controller = None;
                            vec![o]
                        })
                    } else {
                        None
                    },
                    ..Default::default()
                },
                spec: claim.spec.clone(),
                status: None,
            })
        })
        .collect()
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
}
