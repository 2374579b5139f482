//! From cached objects to what the predicates read (`ests_core::extender`): the only place
//! that interprets nodes, pods, records and sets for the extender.

use std::collections::BTreeMap;
use std::sync::Arc;

use ests_api::{EnhancedStatefulSet, StaticIP, StaticIPPhase, keys};
use ests_core::extender::{NodeView, PodView, RecordView, Reserved, pod_requests, reservations};
use ests_core::identity::{ordinal_of, spec_ordinals};
use ests_core::quantity::{Resources, add, parse_milli};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;

fn key(o: &impl ResourceExt) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

fn terminated(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Everything the predicates need, computed once per request from the caches.
pub struct Snapshot {
    pub nodes: BTreeMap<String, NodeView>,
}

/// Node views: allocatable, requests of the pods bound there, reservations.
pub fn snapshot(
    nodes: &[Arc<Node>],
    pods: &[Arc<Pod>],
    records: &[Arc<StaticIP>],
    sets: &[Arc<EnhancedStatefulSet>],
) -> Snapshot {
    let mut requested: BTreeMap<String, Resources> = BTreeMap::new();
    let mut placed: BTreeMap<String, String> = BTreeMap::new();
    for pod in pods.iter().filter(|p| !terminated(p)) {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let mut r = pod
            .spec
            .as_ref()
            .and_then(|s| pod_requests(s).ok())
            .unwrap_or_default();
        r.insert("pods".into(), 1000);
        add(requested.entry(node.clone()).or_default(), &r);
        placed.insert(key(pod.as_ref()), node);
    }
    let sets_by_uid: BTreeMap<String, &EnhancedStatefulSet> = sets
        .iter()
        .filter_map(|s| Some((s.uid()?, s.as_ref())))
        .collect();
    let views: Vec<RecordView> = records
        .iter()
        .filter_map(|r| record_view(r, &sets_by_uid, &placed))
        .collect();
    let reserved = reservations(&views);
    let nodes = nodes
        .iter()
        .map(|n| {
            let name = n.name_any();
            let allocatable = n
                .status
                .as_ref()
                .and_then(|s| s.allocatable.as_ref())
                .map(|a| {
                    a.iter()
                        .filter_map(|(k, q)| Some((k.clone(), parse_milli(&q.0).ok()?)))
                        .collect()
                })
                .unwrap_or_default();
            let view = NodeView {
                name: name.clone(),
                allocatable,
                requested: requested.get(&name).cloned().unwrap_or_default(),
                reserved: reserved
                    .get(&name)
                    .cloned()
                    .unwrap_or_else(Reserved::default),
                static_ip_room: None,
            };
            (name, view)
        })
        .collect();
    Snapshot { nodes }
}

/// A record as the reservation rule reads it; None for records without a node.
fn record_view(
    record: &StaticIP,
    sets: &BTreeMap<String, &EnhancedStatefulSet>,
    placed: &BTreeMap<String, String>,
) -> Option<RecordView> {
    let node = record.spec.node.clone()?;
    let identity = key(record);
    let owner = record
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .and_then(|o| sets.get(&o.uid));
    let in_range = owner.is_some_and(|set| {
        let ordinals = spec_ordinals(&set.spec).unwrap_or_default();
        ordinal_of(&set.name_any(), &record.spec.pod_name).is_some_and(|o| ordinals.contains(&o))
    });
    let requests = owner
        .and_then(|set| set.spec.template.spec.as_ref())
        .and_then(|spec| pod_requests(spec).ok())
        .unwrap_or_default();
    Some(RecordView {
        identity: identity.clone(),
        pod_on_node: placed.get(&identity) == Some(&node),
        node,
        bound: record
            .status
            .as_ref()
            .is_some_and(|s| s.phase == StaticIPPhase::Bound),
        in_range,
        // The set's template is the update revision; the current revision's template,
        // when it differs, is not cached yet (noted on issue 7).
        current_requests: requests.clone(),
        update_requests: requests,
    })
}

/// The pod as the predicates read it: its requests, and its pin if its record is Bound.
pub fn pod_view(pod: &Pod, records: &[Arc<StaticIP>]) -> PodView {
    let key = key(pod);
    let static_ip = pod
        .labels()
        .get(keys::STATIC_IP_POD_LABEL)
        .map(String::as_str)
        == Some("true");
    let pinned = static_ip
        .then(|| {
            records
                .iter()
                .find(|r| key == self::key(r.as_ref()))
                .and_then(|r| {
                    let bound = r
                        .status
                        .as_ref()
                        .is_some_and(|s| s.phase == StaticIPPhase::Bound);
                    bound
                        .then(|| r.spec.node.clone())
                        .flatten()
                        .map(|n| (n, key.clone()))
                })
        })
        .flatten()
        // The webhook's pin annotation, for a record this cache has not seen yet.
        .or_else(|| {
            pod.annotations()
                .get(keys::STATIC_IP_POD_NODE)
                .filter(|_| static_ip)
                .map(|n| (n.clone(), key.clone()))
        });
    PodView {
        requests: pod
            .spec
            .as_ref()
            .and_then(|s| pod_requests(s).ok())
            .unwrap_or_default(),
        key,
        pinned,
        needs_static_ip: false,
        static_ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn arc<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).expect("object"))
    }

    #[test]
    fn snapshots_count_bound_pods_and_reserve_for_absent_static_ip_pods() {
        let nodes: Vec<Arc<Node>> = vec![arc(json!({
            "metadata": {"name": "n1"},
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"}}
        }))];
        let set: Arc<EnhancedStatefulSet> = arc(json!({
            "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet",
            "metadata": {"name": "db", "namespace": "ns", "uid": "set-1"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "db"}},
                     "template": {"metadata": {"labels": {"app": "db"}},
                                  "spec": {"containers": [{"image": "db", "resources": {"requests": {"cpu": "500m"}}}]}}}
        }));
        let record = |name: &str| -> Arc<StaticIP> {
            arc(json!({
                "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "StaticIP",
                "metadata": {"name": name, "namespace": "ns",
                             "ownerReferences": [{"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet",
                                                  "name": "db", "uid": "set-1", "controller": true}]},
                "spec": {"workload": {"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet", "name": "db", "uid": "set-1"},
                         "podName": name, "ips": [{"ip": "10.0.0.1"}], "node": "n1"},
                "status": {"phase": "Bound"}
            }))
        };
        // db-0 runs on n1; db-1's pod is gone; db-5 was scaled in.
        let pods: Vec<Arc<Pod>> = vec![arc(json!({
            "metadata": {"name": "db-0", "namespace": "ns", "labels": {"staticip.jke.jdcloud.com/enabled": "true"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "db", "resources": {"requests": {"cpu": "500m"}}}]}
        }))];
        let records = vec![record("db-0"), record("db-1"), record("db-5")];
        let snap = snapshot(&nodes, &pods, &records, &[set]);
        let n1 = &snap.nodes["n1"];
        assert_eq!(n1.requested.get("cpu"), Some(&500));
        assert_eq!(n1.requested.get("pods"), Some(&1000));
        assert_eq!(
            n1.reserved.by_identity.keys().collect::<Vec<_>>(),
            ["ns/db-1"]
        );
        assert_eq!(n1.allocatable.get("cpu"), Some(&2000));

        // db-1's new pod is pinned to n1 by its record.
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "db-1", "namespace": "ns", "labels": {"staticip.jke.jdcloud.com/enabled": "true"}},
            "spec": {"containers": [{"name": "db", "resources": {"requests": {"cpu": "500m"}}}]}
        }))
        .expect("pod");
        let view = pod_view(&pod, &records);
        assert_eq!(view.pinned, Some(("n1".into(), "ns/db-1".into())));
        assert!(view.static_ip);
        assert_eq!(view.requests.get("cpu"), Some(&500));
    }
}
