use super::*;
use serde_json::{Value, json};

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("object")
}

fn node(name: &str) -> Node {
    obj(json!({
        "metadata": {"name": name},
        "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"}}
    }))
}

fn set(cpu: &str, replicas: i32, current_revision: Option<&str>) -> EnhancedStatefulSet {
    obj(json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet",
        "metadata": {"name": "db", "namespace": "ns", "uid": "set-1"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "db"}},
                 "template": {"metadata": {"labels": {"app": "db"}},
                              "spec": {"containers": [{"name": "db", "image": "db", "resources": {"requests": {"cpu": cpu}}}]}}},
        "status": {"replicas": replicas, "currentRevision": current_revision}
    }))
}

fn record(name: &str, node: &str, phase: &str, pool: Option<&str>, ips: &[&str]) -> StaticIP {
    let ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    obj(json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "StaticIP",
        "metadata": {"name": name, "namespace": "ns",
                     "ownerReferences": [{"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet",
                                          "name": "db", "uid": "set-1", "controller": true}]},
        "spec": {"workload": {"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet", "name": "db", "uid": "set-1"},
                 "podName": name, "ips": ips, "node": node, "pool": pool},
        "status": {"phase": phase}
    }))
}

fn pod(name: &str, node: Option<&str>, cpu: &str) -> Pod {
    obj(json!({
        "metadata": {"name": name, "namespace": "ns", "labels": {"staticip.jke.jdcloud.com/enabled": "true"}},
        "spec": {"nodeName": node, "containers": [{"name": "db", "resources": {"requests": {"cpu": cpu}}}]}
    }))
}

fn reserved_on(index: &Index, node: &str) -> Vec<String> {
    index
        .node(node)
        .expect("node")
        .reserved
        .by_identity
        .keys()
        .cloned()
        .collect()
}

#[test]
fn counts_bound_pods_and_reserves_for_absent_static_ip_pods() {
    let mut index = Index::default();
    index.apply_node(&node("n1"));
    index.apply_set(&set("500m", 2, None));
    // db-0 runs on n1; db-1's pod is gone; db-5 was scaled in.
    index.apply_pod(&pod("db-0", Some("n1"), "500m"));
    for name in ["db-0", "db-1", "db-5"] {
        index.apply_record(&record(name, "n1", "Bound", None, &["10.0.0.1"]));
    }
    let n1 = index.node("n1").expect("n1");
    assert_eq!(n1.requested.get("cpu"), Some(&500));
    assert_eq!(n1.requested.get("pods"), Some(&1000));
    assert_eq!(n1.allocatable.get("cpu"), Some(&2000));
    assert_eq!(reserved_on(&index, "n1"), ["ns/db-1"]);

    // db-1's new pod is pinned to n1 by its record.
    let view = index.pod_view(&pod("db-1", None, "500m"));
    assert_eq!(view.pinned, Some(("n1".into(), "ns/db-1".into())));
    assert!(view.static_ip);
    assert_eq!(view.needs_ip, None);

    // It lands: its reservation becomes its requests.
    index.apply_pod(&pod("db-1", Some("n1"), "500m"));
    assert!(reserved_on(&index, "n1").is_empty());
    assert_eq!(
        index.node("n1").expect("n1").requested.get("cpu"),
        Some(&1000)
    );
    // It goes again (deleted): reserved again, requests back.
    index.remove(Kind::Pod, "ns/db-1");
    assert_eq!(reserved_on(&index, "n1"), ["ns/db-1"]);
    assert_eq!(
        index.node("n1").expect("n1").requested.get("cpu"),
        Some(&500)
    );
    // Scaling out to 6 puts db-5 back in range; scaling to 1 takes db-1 out.
    index.apply_set(&set("500m", 6, None));
    assert_eq!(reserved_on(&index, "n1"), ["ns/db-1", "ns/db-5"]);
    index.apply_set(&set("500m", 1, None));
    assert!(reserved_on(&index, "n1").is_empty());
    // The set goes: nothing is reserved for its records.
    index.apply_set(&set("500m", 6, None));
    index.remove(Kind::Set, "set-1");
    assert!(reserved_on(&index, "n1").is_empty());
}

#[test]
fn reservations_take_the_larger_revision_and_follow_the_record() {
    let mut index = Index::default();
    index.apply_node(&node("n1"));
    index.apply_node(&node("n2"));
    index.apply_set(&set("500m", 2, Some("db-old")));
    index.apply_record(&record("db-1", "n1", "Bound", None, &["10.0.0.2"]));
    let cpu = |index: &Index, node: &str| {
        index.node(node).expect("node").reserved.by_identity["ns/db-1"]
            .get("cpu")
            .copied()
    };
    assert_eq!(cpu(&index, "n1"), Some(500));
    // The current revision asks for more than the template (an update to smaller pods).
    let revision: ControllerRevision = obj(json!({
        "metadata": {"name": "db-old", "namespace": "ns",
                     "ownerReferences": [{"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet",
                                          "name": "db", "uid": "set-1", "controller": true}]},
        "revision": 1,
        "data": ests_core::revision::revision_data(&obj(json!({
            "metadata": {"labels": {"app": "db"}},
            "spec": {"containers": [{"name": "db", "image": "db", "resources": {"requests": {"cpu": "1500m"}}}]}
        })))
    }));
    index.apply_revision(&revision);
    assert_eq!(cpu(&index, "n1"), Some(1500));
    // Revisions of other kinds are not kept.
    let mut foreign = revision.clone();
    foreign.metadata.name = Some("other".into());
    foreign.metadata.owner_references = None;
    index.apply_revision(&foreign);
    assert_eq!(index.sizes()[4], (Kind::Revision, 1));
    // The record moves to n2 (node migration): the reservation moves with it.
    index.apply_record(&record("db-1", "n2", "Bound", None, &["10.0.0.2"]));
    assert!(reserved_on(&index, "n1").is_empty());
    assert_eq!(cpu(&index, "n2"), Some(1500));
    // Not Bound yet: no reservation.
    index.apply_record(&record("db-1", "n2", "Pending", None, &[]));
    assert!(reserved_on(&index, "n2").is_empty());
    // Terminated pods and unbound pods use nothing.
    let mut done = pod("db-0", Some("n1"), "500m");
    done.status = Some(obj(json!({"phase": "Succeeded"})));
    index.apply_pod(&done);
    index.apply_pod(&pod("db-3", None, "500m"));
    assert_eq!(index.node("n1").expect("n1").requested.get("cpu"), None);
}

fn block(name: &str, cidr: &str, node: Option<&str>, taken: usize) -> IPBlock {
    let base: IpNet = cidr.parse().expect("cidr");
    let allocations: serde_json::Map<String, Value> = base
        .hosts()
        .take(taken)
        .map(|ip| {
            (
                ip.to_string(),
                json!({"namespace": "ns", "name": "x", "uid": "u"}),
            )
        })
        .collect();
    obj(json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "IPBlock",
        "metadata": {"name": name},
        "spec": {"pool": "blue", "cidr": cidr, "node": node, "allocations": allocations}
    }))
}

#[test]
fn static_ip_room_comes_from_the_nodes_blocks_and_the_pools_spare_blocks() {
    let mut index = Index::default();
    index.apply_node(&node("n1"));
    index.apply_node(&node("n2"));
    // A /29 pool of /30 blocks: two blocks of two usable addresses.
    index.apply_pool(&obj(json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "StaticIPPool",
        "metadata": {"name": "blue"},
        "spec": {"cidrs": ["10.40.0.0/29"], "ipv4BlockPrefixLength": 30}
    })));
    index.apply_record(&record("db-0", "", "Pending", Some("blue"), &[]));
    let need = |index: &Index| index.pod_view(&pod("db-0", None, "1")).needs_ip;
    assert_eq!(
        need(&index),
        Some(IpNeed {
            pool: "blue".into(),
            claimable: true
        })
    );
    index.apply_block(&block("b0", "10.40.0.0/30", Some("n1"), 1));
    index.apply_block(&block("b1", "10.40.0.4/30", Some("n2"), 2));
    assert_eq!(need(&index).map(|n| n.claimable), Some(false));
    assert_eq!(
        index.node("n1").expect("n1").static_ip_room.get("blue"),
        Some(&1)
    );
    assert_eq!(
        index.node("n2").expect("n2").static_ip_room.get("blue"),
        Some(&0)
    );
    // An address goes back on n2.
    index.apply_block(&block("b1", "10.40.0.4/30", Some("n2"), 1));
    assert_eq!(
        index.node("n2").expect("n2").static_ip_room.get("blue"),
        Some(&1)
    );
    // A block is freed (its node gone): the pool can hand it out again.
    index.apply_block(&block("b1", "10.40.0.4/30", None, 0));
    assert_eq!(
        index.node("n2").expect("n2").static_ip_room.get("blue"),
        Some(&0)
    );
    assert_eq!(need(&index).map(|n| n.claimable), Some(true));
    // With addresses, the record pins its pod and needs none.
    index.apply_record(&record(
        "db-0",
        "n1",
        "Pending",
        Some("blue"),
        &["10.40.0.2"],
    ));
    let view = index.pod_view(&pod("db-0", None, "1"));
    assert_eq!(view.needs_ip, None);
    assert_eq!(view.pinned, Some(("n1".into(), "ns/db-0".into())));
}

#[test]
fn forgetting_objects_undoes_them() {
    let mut index = Index::default();
    index.apply_node(&node("n1"));
    index.apply_pod(&pod("db-0", Some("n1"), "250m"));
    index.apply_pod(&pod("db-0", Some("n1"), "250m"));
    assert_eq!(
        index.node("n1").expect("n1").requested.get("cpu"),
        Some(&250)
    );
    assert_eq!(index.keys(Kind::Pod), ["ns/db-0"]);
    index.remove(Kind::Pod, "ns/db-0");
    assert!(index.node("n1").expect("n1").requested.is_empty());
    index.remove(Kind::Node, "n1");
    assert!(index.node("n1").is_none());
    index.remove(Kind::Pod, "ns/never-seen");
    index.remove(Kind::Block, "never-seen");
}

#[test]
fn prioritize_answers_only_where_a_candidate_keeps_room() {
    let scores = |index: &Index| -> Value {
        let body = json!({
            "Pod": {"metadata": {"name": "web-0", "namespace": "other"},
                    "spec": {"containers": [{"name": "web", "resources": {"requests": {"cpu": "100m"}}}]}},
            "NodeNames": ["n1", "n2"]
        });
        let ests_runtime::Answer {
            status,
            body: answer,
            ..
        } = crate::answer_prioritize(index, &serde_json::to_vec(&body).expect("body"));
        assert_eq!(status.as_u16(), 200);
        serde_json::from_slice(&answer).expect("json")
    };
    let mut index = Index::default();
    index.apply_node(&node("n1"));
    index.apply_node(&node("n2"));
    index.apply_set(&set("1500m", 2, None));
    // No reservation anywhere: the scheduler's own scoring ranks the nodes.
    assert!(!index.any_reservation());
    assert_eq!(scores(&index), json!([]));
    // db-1 belongs on n1 and is not running: n1 keeps 1500m of its 2 CPUs.
    index.apply_record(&record("db-1", "n1", "Bound", None, &["10.0.0.1"]));
    assert!(index.any_reservation() && index.reserves("n1") && !index.reserves("n2"));
    assert_eq!(
        scores(&index),
        json!([{"Host": "n1", "Score": 2}, {"Host": "n2", "Score": 9}])
    );
    // It lands: nothing is kept any more.
    index.apply_pod(&pod("db-1", Some("n1"), "1500m"));
    assert!(!index.any_reservation());
    assert_eq!(scores(&index), json!([]));
}

#[test]
fn a_pod_let_through_is_charged_where_room_is_kept_until_seen_bound() {
    let mut index = Index::default();
    index.apply_node(&node("n1"));
    index.apply_node(&node("n2"));
    index.apply_set(&set("1", 2, None));
    // db-1's pod is gone: n1 keeps 1 CPU for it; n2 keeps nothing.
    index.apply_record(&record("db-1", "n1", "Bound", None, &["10.0.0.2"]));
    let cpu = |index: &Index, node: &str| {
        index
            .node(node)
            .expect("node")
            .requested
            .get("cpu")
            .copied()
            .unwrap_or(0)
    };
    let web = |n: u32| {
        let pod: Pod = obj(json!({
            "metadata": {"name": format!("web-{n}"), "namespace": "ns"},
            "spec": {"containers": [{"name": "web", "resources": {"requests": {"cpu": "400m"}}}]}
        }));
        pod
    };
    let now = Instant::now();
    let view = index.pod_view(&web(0));
    let charge = index.nodes_to_charge(&view, ["n1", "n2"]);
    assert_eq!(
        charge,
        vec![Arc::<str>::from("n1")],
        "only where room is kept"
    );
    index.assume(&view, charge, now);
    assert_eq!((cpu(&index, "n1"), cpu(&index, "n2")), (400, 0));
    // Filtered again (a retry): the charge is replaced, not doubled.
    let charge = index.nodes_to_charge(&view, ["n1"]);
    index.assume(&view, charge, now);
    assert_eq!(cpu(&index, "n1"), 400);
    // The next pod of a burst sees the first one's charge: 1 CPU kept + 400m + 400m is
    // 1.8 of 2, so a third 400m pod no longer fits beside the room kept for db-1.
    let second = index.pod_view(&web(1));
    let charge = index.nodes_to_charge(&second, ["n1"]);
    index.assume(&second, charge, now);
    let third = index.pod_view(&web(2));
    assert!(matches!(
        ests_core::extender::filter(&third, index.node("n1").expect("n1")),
        ests_core::extender::Fit::No(_)
    ));
    // An update of the pod still waiting to be bound keeps the charge.
    index.apply_pod(&web(0));
    assert_eq!(cpu(&index, "n1"), 800);
    // Seen bound on n2 after all: n1's charge goes, n2 carries the real requests.
    let mut bound = web(0);
    bound.spec.as_mut().expect("spec").node_name = Some("n2".into());
    index.apply_pod(&bound);
    assert_eq!((cpu(&index, "n1"), cpu(&index, "n2")), (400, 400));
    // Deleted before it was bound: its charge goes.
    index.remove(Kind::Pod, "ns/web-1");
    assert_eq!(cpu(&index, "n1"), 0);
    index.assume(&second, vec![Arc::from("n1")], now);
    // A charge never seen bound expires.
    index.expire_assumed(now + ASSUMED_FOR);
    assert_eq!(cpu(&index, "n1"), 0);
    assert_eq!(index.assumed_pods(), 0);
    // db-1's own pod is not charged on its own node: its reservation counts already.
    let own = index.pod_view(&pod("db-1", None, "1"));
    assert!(index.nodes_to_charge(&own, ["n1"]).is_empty());
}
