use super::*;
use proptest::prelude::*;
use serde_json::json;

use crate::static_ip::tests::record;

const NODE: &str = "node-a";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("cidr")
}

fn key(container: &str) -> AttachmentKey {
    AttachmentKey {
        container_id: container.into(),
        ifname: "eth0".into(),
    }
}

fn bound() -> serde_json::Value {
    json!({"phase": "Bound", "podUID": "pod-1"})
}

/// The static-IP pod `ns/web-0` of set `web`, stamped with record rec-1.
fn static_pod(annotated: &[&str]) -> CniPod {
    CniPod {
        namespace: "ns".into(),
        name: "web-0".into(),
        uid: "pod-2".into(),
        static_ip: true,
        stamped_record: Some("rec-1".into()),
        owner_uid: Some("set-1".into()),
        annotated_ips: annotated.iter().map(|s| ip(s)).collect(),
        pinned_node: Some(NODE.into()),
    }
}

fn ordinary_pod(name: &str) -> CniPod {
    CniPod {
        namespace: "ns".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        ..CniPod::default()
    }
}

struct World {
    record: Option<StaticIP>,
    blocks: Vec<IpNet>,
    ranges: Vec<IpNet>,
    kept: BTreeMap<IpAddr, String>,
    attachments: BTreeMap<AttachmentKey, Attachment>,
}

impl World {
    fn new() -> Self {
        Self {
            record: None,
            blocks: vec![net("10.20.0.0/26")],
            ranges: vec![net("10.244.1.0/24")],
            kept: BTreeMap::new(),
            attachments: BTreeMap::new(),
        }
    }

    fn add(&self, key: &AttachmentKey, pod: &CniPod) -> Add {
        let kept = |ip: &IpAddr| self.kept.get(ip).cloned();
        add(
            key,
            pod,
            &NodeView {
                node: NODE,
                record: self.record.as_ref(),
                owned_blocks: &self.blocks,
                pod_ranges: &self.ranges,
                kept_by: &kept,
                attachments: &self.attachments,
            },
        )
    }

    /// Carries an ADD out as the agent does: records the new attachment.
    fn apply(&mut self, key: &AttachmentKey, pod: &CniPod) -> Add {
        let decision = self.add(key, pod);
        if let Some(attachment) = decision.attachment(pod) {
            self.attachments.insert(key.clone(), attachment);
        }
        decision
    }

    fn del(&mut self, key: &AttachmentKey) -> Del {
        let kept = |ip: &IpAddr| self.kept.get(ip).cloned();
        let decision = del(key, &self.attachments, &kept);
        if decision.forget {
            self.attachments.remove(key);
        }
        decision
    }
}

/// A new attachment of the one address `ip` in `network`, from `source`.
fn one(ip_: &str, network: &str, source: Source) -> Add {
    Add::New {
        addresses: vec![Address {
            ip: ip(ip_),
            network: net(network),
        }],
        source,
    }
}

fn addresses(decision: &Add) -> Vec<IpAddr> {
    match decision {
        Add::New { addresses, .. } | Add::Existing(addresses) => {
            addresses.iter().map(|a| a.ip).collect()
        }
        Add::Refused(r) => panic!("refused: {r}"),
    }
}

fn refusal(decision: Add) -> Refusal {
    match decision {
        Add::Refused(r) => r,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn bound_record_mode_pod_gets_its_records_address() {
    let mut w = World::new();
    w.record = Some(record(
        json!({"ips": [{"ip": "10.244.1.7"}], "node": NODE}),
        bound(),
    ));
    w.kept.insert(ip("10.244.1.7"), "ns/web-0".into());
    let decision = w.add(&key("c1"), &static_pod(&["10.244.1.7"]));
    assert_eq!(decision, one("10.244.1.7", "10.244.1.0/24", Source::Record));
}

#[test]
fn bound_range_mode_pod_gets_its_address_in_its_block() {
    let mut w = World::new();
    w.record = Some(record(
        json!({"pool": "blue", "ips": [{"ip": "10.20.0.5", "block": "blue-10-20-0-0-26"}], "node": NODE}),
        bound(),
    ));
    let decision = w.add(&key("c1"), &static_pod(&[]));
    assert_eq!(decision, one("10.20.0.5", "10.20.0.0/26", Source::Record));
}

#[test]
fn migrating_record_moved_here_gives_its_address() {
    let mut w = World::new();
    w.record = Some(record(
        json!({"pool": "blue", "ips": [{"ip": "10.20.0.5"}], "node": NODE}),
        json!({"phase": "Migrating", "podUID": "pod-1"}),
    ));
    assert_eq!(
        addresses(&w.add(&key("c1"), &static_pod(&[]))),
        vec![ip("10.20.0.5")]
    );
}

/// One refusal case: what it is, the record, the pod, the refusal expected, retryable.
type RefusalCase = (
    &'static str,
    Option<StaticIP>,
    CniPod,
    fn(&Refusal) -> bool,
    bool,
);

/// Each case: the record (spec extras, status), the pod, and the refusal expected.
#[test]
fn refusals() {
    let range_bound = |node: &str, address: &str| {
        record(
            json!({"pool": "blue", "ips": [{"ip": address}], "node": node}),
            bound(),
        )
    };
    let mut stale = static_pod(&[]);
    stale.stamped_record = Some("rec-0".into());
    let mut foreign = static_pod(&[]);
    foreign.owner_uid = Some("other-set".into());
    let mut going = range_bound(NODE, "10.20.0.5");
    going.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    let cases: Vec<RefusalCase> = vec![
        (
            "record not in cache",
            None,
            static_pod(&[]),
            |r| matches!(r, Refusal::RecordNotSeen { .. }),
            true,
        ),
        (
            "stamped with an older record",
            Some(range_bound(NODE, "10.20.0.5")),
            stale,
            |r| matches!(r, Refusal::StaleRecord { .. }),
            true,
        ),
        (
            "another workload's pod",
            Some(range_bound(NODE, "10.20.0.5")),
            foreign,
            |r| matches!(r, Refusal::NotTheWorkload { .. }),
            false,
        ),
        (
            "record being deleted",
            Some(going),
            static_pod(&[]),
            |r| matches!(r, Refusal::RecordGoing { .. }),
            true,
        ),
        (
            "record pinned to another node",
            Some(range_bound("node-b", "10.20.0.5")),
            static_pod(&[]),
            |r| matches!(r, Refusal::OtherNode { .. }),
            // A migration moving it here may be ahead of the agent's caches.
            true,
        ),
        (
            "address outside this node's blocks",
            Some(range_bound(NODE, "10.30.0.5")),
            static_pod(&[]),
            |r| matches!(r, Refusal::OutsideOwnedBlocks { .. }),
            // A migration moving it here may be ahead of the agent's caches.
            true,
        ),
        (
            "range mode before the bind",
            Some(record(json!({"pool": "blue"}), json!({"phase": "Pending"}))),
            static_pod(&[]),
            |r| matches!(r, Refusal::AwaitingBind { .. }),
            true,
        ),
        (
            "annotation disagrees with the record",
            Some(range_bound(NODE, "10.20.0.5")),
            static_pod(&["10.20.0.6"]),
            |r| matches!(r, Refusal::AnnotationMismatch { .. }),
            false,
        ),
        (
            "bind wrote an address outside this node's blocks",
            Some(record(json!({"pool": "blue"}), json!({"phase": "Pending"}))),
            static_pod(&["10.30.0.9"]),
            |r| matches!(r, Refusal::OutsideOwnedBlocks { .. }),
            // A migration moving it here may be ahead of the agent's caches.
            true,
        ),
    ];
    for (name, record, pod, expected, retryable) in cases {
        let mut w = World::new();
        w.record = record;
        let r = refusal(w.add(&key("c1"), &pod));
        assert!(expected(&r), "{name}: {r:?}");
        assert_eq!(r.retryable(), retryable, "{name}: {r}");
    }
}

#[test]
fn first_range_mode_start_takes_the_binds_address() {
    let mut w = World::new();
    w.record = Some(record(json!({"pool": "blue"}), json!({"phase": "Pending"})));
    let decision = w.add(&key("c1"), &static_pod(&["10.20.0.9"]));
    assert_eq!(decision, one("10.20.0.9", "10.20.0.0/26", Source::Bind));
}

#[test]
fn record_mode_first_start_takes_a_free_pod_range_address() {
    let mut w = World::new();
    w.record = Some(record(json!({}), json!({"phase": "Pending"})));
    // .2 is kept by another record, .3 attached to another sandbox.
    w.kept.insert(ip("10.244.1.2"), "ns/web-1".into());
    w.apply(&key("other"), &ordinary_pod("x"));
    assert_eq!(
        w.attachments[&key("other")].addresses[0].ip,
        ip("10.244.1.3")
    );
    let decision = w.add(&key("c1"), &static_pod(&[]));
    assert_eq!(
        decision,
        one("10.244.1.4", "10.244.1.0/24", Source::PodRange)
    );
}

#[test]
fn an_unlabelled_pod_named_like_a_record_never_gets_its_address() {
    let mut w = World::new();
    w.record = Some(record(
        json!({"ips": [{"ip": "10.244.1.2"}], "node": NODE}),
        bound(),
    ));
    w.kept.insert(ip("10.244.1.2"), "ns/web-0".into());
    let mut pod = static_pod(&["10.244.1.2"]);
    pod.static_ip = false;
    assert_eq!(addresses(&w.add(&key("c1"), &pod)), vec![ip("10.244.1.3")]);
}

#[test]
fn repeated_add_answers_with_the_same_addresses() {
    let mut w = World::new();
    let pod = ordinary_pod("a");
    let first = addresses(&w.apply(&key("c1"), &pod));
    let again = w.apply(&key("c1"), &pod);
    assert!(matches!(again, Add::Existing(_)));
    assert_eq!(addresses(&again), first);
    assert_eq!(w.attachments.len(), 1);
    // The same container and interface claimed for another pod: refused.
    assert!(matches!(
        refusal(w.add(&key("c1"), &ordinary_pod("b"))),
        Refusal::AttachedToAnotherPod { .. }
    ));
}

#[test]
fn a_records_address_still_attached_to_the_old_sandbox_waits_for_its_del() {
    let mut w = World::new();
    w.record = Some(record(
        json!({"ips": [{"ip": "10.244.1.7"}], "node": NODE}),
        bound(),
    ));
    w.kept.insert(ip("10.244.1.7"), "ns/web-0".into());
    let mut old = static_pod(&[]);
    old.uid = "pod-1".into();
    w.apply(&key("old"), &old);
    let r = refusal(w.add(&key("new"), &static_pod(&[])));
    assert!(matches!(r, Refusal::StillAttached { .. }), "{r:?}");
    assert!(r.retryable());
    // The old sandbox's DEL keeps the address for the record; then the new one gets it.
    let del = w.del(&key("old"));
    assert_eq!(del.kept, vec![ip("10.244.1.7")]);
    assert!(del.freed.is_empty());
    assert_eq!(
        addresses(&w.apply(&key("new"), &static_pod(&[]))),
        vec![ip("10.244.1.7")]
    );
}

#[test]
fn dual_stack_gets_both_families_or_neither() {
    let mut w = World::new();
    w.ranges = vec![net("10.244.1.0/30"), net("fd00:1::/120")];
    let both = addresses(&w.apply(&key("c1"), &ordinary_pod("a")));
    assert_eq!(both, vec![ip("10.244.1.2"), ip("fd00:1::2")]);
    // The /30 has one pod address: the next pod gets neither family.
    let r = refusal(w.add(&key("c2"), &ordinary_pod("b")));
    assert!(matches!(r, Refusal::Exhausted { .. }), "{r:?}");
    // A dual-stack record gives both, each in its own network.
    let mut w = World::new();
    w.ranges = vec![net("10.244.1.0/24"), net("fd00:1::/120")];
    w.record = Some(record(
        json!({"ips": [{"ip": "10.244.1.9"}, {"ip": "fd00:1::9"}], "node": NODE}),
        bound(),
    ));
    let decision = w.add(&key("c1"), &static_pod(&[]));
    let Add::New { addresses, .. } = decision else {
        panic!("{decision:?}");
    };
    assert_eq!(
        addresses.iter().map(|a| a.network).collect::<Vec<_>>(),
        vec![net("10.244.1.0/24"), net("fd00:1::/120")]
    );
    // Range mode: one address outside this node's blocks refuses both.
    let mut w = World::new();
    w.blocks = vec![net("10.20.0.0/26")];
    w.record = Some(record(
        json!({"pool": "blue", "ips": [{"ip": "10.20.0.5"}, {"ip": "fd00:20::5"}], "node": NODE}),
        bound(),
    ));
    assert!(matches!(
        refusal(w.add(&key("c1"), &static_pod(&[]))),
        Refusal::OutsideOwnedBlocks { .. }
    ));
}

#[test]
fn no_pod_range_is_a_refusal() {
    let mut w = World::new();
    w.ranges.clear();
    assert!(matches!(
        refusal(w.add(&key("c1"), &ordinary_pod("a"))),
        Refusal::NoPodRange { .. }
    ));
}

#[test]
fn del_frees_only_its_own_unkept_addresses_and_repeats() {
    let mut w = World::new();
    let a = addresses(&w.apply(&key("c1"), &ordinary_pod("a")));
    let b = addresses(&w.apply(&key("c2"), &ordinary_pod("b")));
    let del = w.del(&key("c1"));
    assert_eq!(
        del,
        Del {
            forget: true,
            freed: a.clone(),
            kept: vec![]
        }
    );
    assert_eq!(w.del(&key("c1")), Del::default(), "repeated DEL");
    assert_eq!(w.del(&key("never")), Del::default());
    // c2 still holds its address; the freed one is handed out again.
    assert_eq!(addresses(&w.apply(&key("c3"), &ordinary_pod("c"))), a);
    assert_ne!(a, b);
}

#[test]
fn gc_forgets_what_the_runtime_no_longer_lists() {
    let mut w = World::new();
    for c in ["c1", "c2", "c3"] {
        w.apply(&key(c), &ordinary_pod(c));
    }
    assert_eq!(gc(None, &w.attachments), Vec::<AttachmentKey>::new());
    assert_eq!(
        gc(Some(&[key("c2")]), &w.attachments),
        vec![key("c1"), key("c3")]
    );
    // Same container, other interface: not valid.
    let other_if = AttachmentKey {
        container_id: "c2".into(),
        ifname: "net1".into(),
    };
    assert_eq!(gc(Some(&[other_if]), &w.attachments).len(), 3);
}

#[test]
fn check_needs_the_reservation_and_the_records_addresses() {
    let mut w = World::new();
    w.record = Some(record(
        json!({"ips": [{"ip": "10.244.1.7"}], "node": NODE}),
        json!({"phase": "Bound", "podUID": "pod-2"}),
    ));
    assert!(matches!(
        check(&key("c1"), &w.attachments, w.record.as_ref()),
        Err(CheckFailure::Missing { .. })
    ));
    w.apply(&key("c1"), &static_pod(&[]));
    assert_eq!(check(&key("c1"), &w.attachments, w.record.as_ref()), Ok(()));
    // The record now keeps another address for this pod: CHECK says so.
    let moved = record(
        json!({"ips": [{"ip": "10.244.1.8"}], "node": NODE}),
        json!({"phase": "Bound", "podUID": "pod-2"}),
    );
    assert!(matches!(
        check(&key("c1"), &w.attachments, Some(&moved)),
        Err(CheckFailure::NotTheRecords { .. })
    ));
}

#[test]
fn pod_facts_come_from_labels_owner_and_annotations() {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-0", "namespace": "ns", "uid": "pod-2",
            "labels": {"staticip.jke.jdcloud.com/enabled": "true"},
            "annotations": {"staticip.jke.jdcloud.com/record-uid": "rec-1",
                            "staticip.jke.jdcloud.com/ip": "10.20.0.9, fd00::9",
                            "staticip.jke.jdcloud.com/node": NODE},
            "ownerReferences": [{"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet",
                                 "name": "web", "uid": "set-1", "controller": true}]}
    }))
    .expect("pod");
    assert_eq!(
        CniPod::of(&pod),
        CniPod {
            annotated_ips: vec![ip("10.20.0.9"), ip("fd00::9")],
            ..static_pod(&[])
        }
    );
}

#[test]
fn owned_blocks_are_the_nodes() {
    let block = |name: &str, cidr: &str, node: Option<&str>| {
        ests_api::IPBlock::new(
            name,
            ests_api::IPBlockSpec {
                pool: "blue".into(),
                cidr: cidr.into(),
                node: node.map(Into::into),
                allocations: BTreeMap::new(),
            },
        )
    };
    let blocks = [
        block("a", "10.20.0.0/26", Some(NODE)),
        block("b", "10.20.0.64/26", Some("node-b")),
        block("c", "10.20.0.128/26", None),
        block("d", "not-a-cidr", Some(NODE)),
    ];
    assert_eq!(owned_blocks(&blocks, NODE), vec![net("10.20.0.0/26")]);
}

#[test]
fn the_gateway_is_the_second_address_and_never_handed_out() {
    assert_eq!(
        pod_range_gateway(net("10.244.1.0/24")),
        Some(ip("10.244.1.1"))
    );
    assert_eq!(pod_range_gateway(net("fd00:1::/64")), Some(ip("fd00:1::1")));
    assert_eq!(pod_range_gateway(net("10.244.1.0/31")), None);
    let mut w = World::new();
    let first = addresses(&w.apply(&key("c1"), &ordinary_pod("a")));
    assert!(!first.contains(&ip("10.244.1.1")));
    // A block's address is routed through the node's gateway of its family.
    let ranges = [net("10.244.1.0/24"), net("fd00:1::/64")];
    let of = |a: &str, n: &str| {
        gateway(
            &Address {
                ip: ip(a),
                network: net(n),
            },
            &ranges,
        )
    };
    assert_eq!(of("10.244.1.9", "10.244.1.0/24"), Some(ip("10.244.1.1")));
    assert_eq!(of("10.20.0.5", "10.20.0.0/26"), Some(ip("10.244.1.1")));
    assert_eq!(of("fd00:20::5", "fd00:20::/122"), Some(ip("fd00:1::1")));
    assert_eq!(
        gateway(
            &Address {
                ip: ip("10.20.0.5"),
                network: net("10.20.0.0/26")
            },
            &[]
        ),
        None
    );
}

#[test]
fn ipv6_ranges_are_searched_lazily() {
    let mut w = World::new();
    w.ranges = vec![net("fd00:1::/64")];
    assert_eq!(
        addresses(&w.apply(&key("c1"), &ordinary_pod("a"))),
        vec![ip("fd00:1::2")]
    );
}

/// One step of a run against one node's agent.
#[derive(Debug, Clone)]
enum Step {
    /// ADD for container `c` (of pod `p`).
    Add {
        c: u8,
        p: u8,
    },
    Del {
        c: u8,
    },
    /// GC keeping the containers in the mask.
    Gc {
        keep: u8,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..8, 0u8..6).prop_map(|(c, p)| Step::Add { c, p }),
        (0u8..8).prop_map(|c| Step::Del { c }),
        any::<u8>().prop_map(|keep| Step::Gc { keep }),
    ]
}

proptest! {
    /// Over any sequence of ADD, DEL and GC on a small dual-stack range with kept
    /// addresses: no address is ever held by two attachments, none a record keeps is
    /// handed to an ordinary pod, every attachment has both families or is refused,
    /// repeated ADDs answer the same, and DEL never frees a kept address.
    #[test]
    fn attachments_never_share_or_take_kept_addresses(
        steps in proptest::collection::vec(step(), 1..60),
        kept_mask in any::<u8>(),
    ) {
        let mut w = World::new();
        w.ranges = vec![net("10.244.1.0/28"), net("fd00:1::/124")];
        for i in 0..8u8 {
            if kept_mask & (1 << i) != 0 {
                w.kept.insert(ip(&format!("10.244.1.{}", i + 2)), format!("ns/kept-{i}"));
            }
        }
        for step in steps {
            match step {
                Step::Add { c, p } => {
                    let k = key(&format!("c{c}"));
                    let pod = ordinary_pod(&format!("p{p}"));
                    let before = w.attachments.get(&k).cloned();
                    let decision = w.apply(&k, &pod);
                    match (&decision, before) {
                        (Add::Existing(a), Some(b)) => prop_assert_eq!(a, &b.addresses),
                        (Add::New { addresses, .. }, None) => {
                            prop_assert_eq!(addresses.len(), 2);
                            prop_assert!(addresses[0].ip.is_ipv4() && addresses[1].ip.is_ipv6());
                        }
                        (Add::Refused(Refusal::AttachedToAnotherPod { .. }), Some(_)) => {}
                        (Add::Refused(Refusal::Exhausted { .. }), None) => {}
                        (d, b) => prop_assert!(false, "{d:?} with {b:?}"),
                    }
                }
                Step::Del { c } => {
                    let d = w.del(&key(&format!("c{c}")));
                    for ip in &d.freed {
                        prop_assert!(!w.kept.contains_key(ip));
                    }
                }
                Step::Gc { keep } => {
                    let valid: Vec<AttachmentKey> = (0..8u8)
                        .filter(|i| keep & (1 << i) != 0)
                        .map(|i| key(&format!("c{i}")))
                        .collect();
                    for k in gc(Some(&valid), &w.attachments) {
                        w.del(&k);
                    }
                    prop_assert!(w.attachments.keys().all(|k| valid.contains(k)));
                }
            }
            let mut seen = BTreeSet::new();
            for a in w.attachments.values() {
                for addr in &a.addresses {
                    prop_assert!(seen.insert(addr.ip), "{} held twice", addr.ip);
                    prop_assert!(!w.kept.contains_key(&addr.ip), "{} is kept", addr.ip);
                    prop_assert!(addr.network.contains(&addr.ip));
                }
            }
        }
    }

    /// A static-IP pod is handed exactly its record's addresses or refused: never another
    /// address, whatever the record, the pod and the node say.
    #[test]
    fn a_static_pod_gets_its_records_addresses_or_nothing(
        range_mode in any::<bool>(),
        phase in prop_oneof![Just("Pending"), Just("Bound"), Just("Migrating"), Just("Released")],
        on_node in any::<bool>(),
        last in 1u8..80,
        annotate in any::<bool>(),
        stamped_ok in any::<bool>(),
        owner_ok in any::<bool>(),
    ) {
        let address = format!("10.{}.0.{last}", if range_mode { 20 } else { 244 });
        let mut spec = json!({"ips": [{"ip": address}], "node": if on_node { NODE } else { "node-b" }});
        if range_mode {
            spec["pool"] = json!("blue");
        }
        let mut w = World::new();
        w.record = Some(record(spec, json!({"phase": phase, "podUID": "pod-1"})));
        let mut pod = static_pod(&[]);
        if annotate {
            pod.annotated_ips = vec![ip(&address)];
        }
        if !stamped_ok {
            pod.stamped_record = Some("rec-0".into());
        }
        if !owner_ok {
            pod.owner_uid = None;
        }
        match w.add(&key("c1"), &pod) {
            Add::New { addresses, source } => {
                prop_assert_eq!(source, Source::Record);
                prop_assert_eq!(addresses.iter().map(|a| a.ip).collect::<Vec<_>>(), vec![ip(&address)]);
                prop_assert!(on_node && stamped_ok && owner_ok && phase != "Released");
                if range_mode {
                    prop_assert!(net("10.20.0.0/26").contains(&ip(&address)));
                }
            }
            Add::Refused(_) => {}
            Add::Existing(_) => prop_assert!(false, "no attachment existed"),
        }
    }
}
