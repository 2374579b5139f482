use super::*;

fn res(cpu_milli: i128, memory_mi: i128) -> Resources {
    Resources::from([
        ("cpu".to_string(), cpu_milli),
        ("memory".to_string(), memory_mi * 1024 * 1024 * 1000),
    ])
}

fn node(
    name: &str,
    cpu: i128,
    memory_mi: i128,
    used_cpu: i128,
    used_mem: i128,
    pods: i128,
) -> NodeView {
    let mut allocatable = res(cpu, memory_mi);
    allocatable.insert("pods".into(), 110_000);
    let mut requested = res(used_cpu, used_mem);
    requested.insert("pods".into(), pods * 1000);
    NodeView {
        name: name.into(),
        allocatable,
        requested,
        reserved: Reserved::default(),
        static_ip_room: BTreeMap::new(),
        headroom: Headroom::default(),
    }
}

fn record(
    identity: &str,
    node: &str,
    bound: bool,
    in_range: bool,
    on_node: bool,
    current: Resources,
    update: Resources,
) -> RecordView {
    RecordView {
        identity: identity.into(),
        node: node.into(),
        bound,
        in_range,
        pod_on_node: on_node,
        current_requests: current,
        update_requests: update,
    }
}

#[test]
fn reservations_follow_the_rule() {
    let records = vec![
        // Bound, in range, pod away (being re-created): reserved, the larger revision.
        record(
            "ns/web-0",
            "n1",
            true,
            true,
            false,
            res(500, 256),
            res(1000, 128),
        ),
        // Pod running there: its requests are already counted as used.
        record(
            "ns/web-1",
            "n1",
            true,
            true,
            true,
            res(500, 256),
            res(500, 256),
        ),
        // Kept after scale-in: holds only its IP.
        record(
            "ns/web-5",
            "n1",
            true,
            false,
            false,
            res(500, 256),
            res(500, 256),
        ),
        // Not Bound yet (new identity): nothing to hold.
        record(
            "ns/web-6",
            "n2",
            false,
            true,
            false,
            res(500, 256),
            res(500, 256),
        ),
        record(
            "ns/db-0",
            "n2",
            true,
            true,
            false,
            res(200, 64),
            res(200, 64),
        ),
    ];
    let r = reservations(&records);
    assert_eq!(r.len(), 2);
    assert_eq!(
        r["n1"].by_identity,
        BTreeMap::from([("ns/web-0".to_string(), res(1000, 256))])
    );
    assert_eq!(r["n2"].total_except(None), res(200, 64));
    assert_eq!(r["n2"].total_except(Some("ns/db-0")), Resources::new());
}

#[test]
fn pods_let_through_are_charged_only_where_room_is_kept_for_others() {
    let mut keeps = node("keeps", 4000, 8192, 0, 0, 0);
    keeps
        .reserved
        .by_identity
        .insert("ns/db-0".into(), res(1000, 0));
    let plain = node("plain", 4000, 8192, 0, 0, 0);
    let ordinary = PodView {
        key: "ns/web".into(),
        requests: res(100, 0),
        ..PodView::default()
    };
    let own = PodView {
        key: "ns/db-0".into(),
        static_ip: true,
        ..ordinary.clone()
    };
    let other_static = PodView {
        key: "ns/db-1".into(),
        static_ip: true,
        ..ordinary.clone()
    };
    for (pod, node, want) in [
        (&ordinary, &keeps, true),
        (&ordinary, &plain, false),
        (&own, &keeps, false),
        (&other_static, &keeps, true),
        (&other_static, &plain, false),
    ] {
        assert_eq!(
            charges_until_bound(pod, node),
            want,
            "{} on {}",
            pod.key,
            node.name
        );
    }
}

#[test]
fn a_pinned_pod_fits_only_its_node() {
    let pod = PodView {
        key: "ns/web-0".into(),
        requests: res(100, 64),
        pinned: Some(("n1".into(), "ns/web-0".into())),
        static_ip: true,
        ..PodView::default()
    };
    assert_eq!(filter(&pod, &node("n1", 4000, 8192, 0, 0, 0)), Fit::Fits);
    assert_eq!(
        filter(&pod, &node("n2", 4000, 8192, 0, 0, 0)),
        Fit::Never("pinned to n1 by StaticIP ns/web-0".into())
    );
}

#[test]
fn capacity_table() {
    // n1: 4 CPUs, 3.5 used, 0.4 reserved for ns/web-0 whose pod is being re-created.
    let mut n1 = node("n1", 4000, 8192, 3500, 1024, 10);
    n1.reserved
        .by_identity
        .insert("ns/web-0".into(), res(400, 512));
    let ordinary = |cpu| PodView {
        key: "ns/other".into(),
        requests: res(cpu, 64),
        ..PodView::default()
    };
    let returning = PodView {
        key: "ns/web-0".into(),
        requests: res(400, 512),
        pinned: Some(("n1".into(), "ns/web-0".into())),
        static_ip: true,
        ..PodView::default()
    };
    let cases: Vec<(&str, PodView, Fit)> = vec![
        (
            "small pod fits beside the reservation",
            ordinary(100),
            Fit::Fits,
        ),
        (
            "a pod that would take the reserved room does not fit",
            ordinary(200),
            Fit::No("400m cpu reserved for static-IP pods".into()),
        ),
        (
            "a pod larger than what is left at all",
            ordinary(600),
            Fit::No("insufficient cpu: 3500m of 4000m requested".into()),
        ),
        (
            "the returning identity uses its own reservation",
            returning,
            Fit::Fits,
        ),
    ];
    for (what, pod, want) in cases {
        assert_eq!(filter(&pod, &n1), want, "{what}");
    }
    // Pod count.
    let full = node("n3", 4000, 8192, 0, 0, 110);
    assert!(matches!(filter(&ordinary(1), &full), Fit::No(m) if m.contains("insufficient pods")));
    // Static-IP room in range mode: a node without blocks of the pool, or with its blocks
    // full, fits only while the pool has a block to claim.
    let mut no_ips = node("n4", 4000, 8192, 0, 0, 0);
    let mut first = PodView {
        key: "ns/web-9".into(),
        requests: res(1, 1),
        needs_ip: Some(IpNeed {
            pool: "blue".into(),
            claimable: false,
        }),
        static_ip: true,
        ..PodView::default()
    };
    let short = Fit::No(
        "no address of StaticIPPool blue left in the node's blocks, and no free block to claim"
            .into(),
    );
    assert_eq!(filter(&first, &no_ips), short);
    no_ips.static_ip_room.insert("blue".into(), 0);
    assert_eq!(filter(&first, &no_ips), short);
    no_ips.static_ip_room.insert("blue".into(), 3);
    assert_eq!(filter(&first, &no_ips), Fit::Fits);
    no_ips.static_ip_room.insert("blue".into(), 0);
    first.needs_ip = Some(IpNeed {
        pool: "blue".into(),
        claimable: true,
    });
    assert_eq!(filter(&first, &no_ips), Fit::Fits);
    // Another pool's room does not count.
    first.needs_ip = Some(IpNeed {
        pool: "green".into(),
        claimable: false,
    });
    no_ips.static_ip_room.insert("blue".into(), 3);
    assert!(matches!(filter(&first, &no_ips), Fit::No(_)));
    // A cluster-level resource the node does not advertise is not checked here.
    let mut marked = ordinary(1);
    marked
        .requests
        .insert("jke.jdcloud.com/static-ip".into(), 1000);
    assert_eq!(filter(&marked, &node("n5", 4000, 8192, 0, 0, 0)), Fit::Fits);
}

#[test]
fn scores_prefer_room_left_after_reservations() {
    let pod = PodView {
        key: "ns/p".into(),
        requests: res(1000, 1024),
        ..PodView::default()
    };
    let empty = node("a", 4000, 8192, 0, 0, 0);
    let half = node("b", 4000, 8192, 2000, 0, 0);
    let mut reserved = node("c", 4000, 8192, 0, 0, 0);
    reserved
        .reserved
        .by_identity
        .insert("ns/x".into(), res(2000, 0));
    let full = node("d", 4000, 8192, 3500, 0, 0);
    let s: Vec<i64> = [&empty, &half, &reserved, &full]
        .iter()
        .map(|n| score(&pod, n))
        .collect();
    assert_eq!(s, vec![7, 2, 2, 0]);
    assert!(s.iter().all(|s| (0..=MAX_SCORE).contains(s)));
}

#[test]
fn pod_requests_count_like_the_scheduler() {
    let spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(serde_json::json!({
        "containers": [
            {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
            {"name": "b", "resources": {"requests": {"cpu": "250m"}}}
        ],
        "initContainers": [{"name": "init", "resources": {"requests": {"cpu": "1", "memory": "32Mi"}}}],
        "overhead": {"cpu": "10m"}
    }))
    .expect("spec");
    assert_eq!(pod_requests(&spec), Ok(res(1010, 64)));
    let bad: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(serde_json::json!({
        "containers": [{"name": "a", "resources": {"requests": {"cpu": "lots"}}}]
    }))
    .expect("spec");
    assert!(pod_requests(&bad).is_err_and(|e| e.contains("container a: cpu")));
}

#[test]
fn bind_allocates_then_annotates_and_refuses_broken_promises() {
    use ests_api::StaticIP;
    use k8s_openapi::api::core::v1::Pod;
    let pod_requesting = |labelled: bool, stamp: Option<&str>, managed: bool| -> Pod {
        let mut labels = serde_json::Map::new();
        if labelled {
            labels.insert("staticip.jke.jdcloud.com/enabled".into(), "true".into());
        }
        let mut annotations = serde_json::Map::new();
        if let Some(stamp) = stamp {
            annotations.insert("staticip.jke.jdcloud.com/record-uid".into(), stamp.into());
        }
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db-0", "namespace": "ns", "labels": labels, "annotations": annotations},
            "spec": {"containers": [{"name": "db"}]}
        }))
        .expect("pod");
        if managed {
            crate::static_ip::request_static_ip(&mut pod);
        }
        pod
    };
    let pod = |labelled: bool, stamp: Option<&str>| pod_requesting(labelled, stamp, true);
    let record = |pool: Option<&str>, ips: &[&str], node: Option<&str>| -> StaticIP {
        let ips: Vec<serde_json::Value> =
            ips.iter().map(|ip| serde_json::json!({"ip": ip})).collect();
        serde_json::from_value(serde_json::json!({
            "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "StaticIP",
            "metadata": {"name": "db-0", "namespace": "ns", "uid": "r-1"},
            "spec": {"workload": {"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet", "name": "db", "uid": "s-1"},
                     "podName": "db-0", "ips": ips, "node": node, "pool": pool}
        }))
        .expect("record")
    };
    let ip = |s: &str| -> std::net::IpAddr { s.parse().expect("ip") };
    let fresh = record(Some("blue"), &[], None);
    let held = record(Some("blue"), &["10.40.0.5", "fd00::5"], Some("n1"));
    let record_mode = record(None, &[], None);
    let going = |mut r: StaticIP| {
        r.metadata.deletion_timestamp =
            Some(serde_json::from_value(serde_json::json!("2027-01-15T09:00:00Z")).expect("time"));
        r
    };
    let fresh_going = going(fresh.clone());
    let held_going = going(held.clone());
    let record_mode_going = going(record_mode.clone());
    let being_deleted = BindStep::Refuse(
        "StaticIP ns/db-0 is being deleted: its addresses are being freed; the pod waits for a new record"
            .into(),
    );
    let cases: Vec<(&str, Pod, Option<&StaticIP>, BindStep)> =
        vec![
        ("unlabelled pod with the managed resource", pod(false, None), None, BindStep::Bind),
        (
            "a pod the scheduler's bind entry does not manage",
            pod_requesting(false, None, false),
            None,
            BindStep::Refuse(
                "pod ns/db-0 does not request jke.jdcloud.com/static-ip: only the pods the scheduler's bind entry manages are bound here"
                    .into(),
            ),
        ),
        (
            "a static-IP pod without the managed resource",
            pod_requesting(true, Some("r-1"), false),
            Some(&fresh),
            BindStep::Refuse(
                "pod ns/db-0 does not request jke.jdcloud.com/static-ip: only the pods the scheduler's bind entry manages are bound here"
                    .into(),
            ),
        ),
        ("record mode", pod(true, Some("r-1")), Some(&record_mode), BindStep::Bind),
        ("first placement", pod(true, Some("r-1")), Some(&fresh), BindStep::Allocate),
        (
            "addresses on this node",
            pod(true, Some("r-1")),
            Some(&held),
            BindStep::Annotate(vec![ip("10.40.0.5"), ip("fd00::5")]),
        ),
        (
            "no stamp",
            pod(true, None),
            Some(&fresh),
            BindStep::Refuse(
                "static-IP pod ns/db-0 lacks the annotation staticip.jke.jdcloud.com/record-uid"
                    .into(),
            ),
        ),
        (
            "record gone",
            pod(true, Some("r-1")),
            None,
            BindStep::Refuse("StaticIP ns/db-0 does not exist".into()),
        ),
        (
            "another record",
            pod(true, Some("r-0")),
            Some(&fresh),
            BindStep::Refuse("StaticIP ns/db-0 has UID r-1, not the r-0 stamped on the pod".into()),
        ),
        (
            "going, no address yet: never allocates",
            pod(true, Some("r-1")),
            Some(&fresh_going),
            being_deleted.clone(),
        ),
        (
            "going, addresses here: never annotates",
            pod(true, Some("r-1")),
            Some(&held_going),
            being_deleted.clone(),
        ),
        (
            "going, record mode",
            pod(true, Some("r-1")),
            Some(&record_mode_going),
            being_deleted.clone(),
        ),
    ];
    for (what, pod, record, want) in cases {
        assert_eq!(bind_step(&pod, record, "n1"), want, "{what}");
    }
    assert_eq!(
        bind_step(&pod(true, Some("r-1")), Some(&held), "n2"),
        BindStep::Refuse("StaticIP ns/db-0 holds its addresses on node n1, not n2".into())
    );
}

mod fast_path {
    use super::*;
    use proptest::prelude::*;

    fn resources() -> impl Strategy<Value = Resources> {
        proptest::collection::btree_map(
            prop_oneof![
                Just("cpu".to_string()),
                Just("memory".to_string()),
                Just("pods".to_string()),
                Just("nvidia.com/gpu".to_string()),
                Just("jke.jdcloud.com/static-ip".to_string()),
            ],
            0i128..5000,
            0..4,
        )
    }

    proptest! {
        /// The headroom's fast path answers exactly as the full check, and scores agree
        /// with a view whose headroom is unknown.
        #[test]
        fn the_fast_path_agrees_with_the_exact_check(
            allocatable in resources(),
            requested in resources(),
            reserved in proptest::collection::btree_map(
                prop_oneof![Just("ns/a".to_string()), Just("ns/b".to_string())],
                resources(),
                0..3,
            ),
            requests in resources(),
            static_ip in any::<bool>(),
            own in prop_oneof![Just("ns/a".to_string()), Just("ns/c".to_string())],
        ) {
            let mut node = NodeView {
                name: "n1".into(),
                allocatable,
                requested,
                reserved: Reserved { by_identity: reserved },
                ..NodeView::default()
            };
            let pod = PodView {
                key: own,
                requests: requests.into_iter().filter(|(k, _)| k != "pods").collect(),
                static_ip,
                ..PodView::default()
            };
            let slow_score = score(&pod, &node);
            node.refresh();
            prop_assert_eq!(filter(&pod, &node), filter_exactly(&pod, &node));
            prop_assert_eq!(score(&pod, &node), slow_score);
            // And with the pod summarised once, as the extender does.
            let mut summarized = pod.clone();
            summarized.summarize();
            prop_assert_eq!(filter(&summarized, &node), filter_exactly(&pod, &node));
            prop_assert_eq!(score(&summarized, &node), slow_score);
        }
    }
}
