use super::*;
use serde_json::json;

const NOW: i64 = 1_800_000_000;

fn set(annotations: serde_json::Value) -> EnhancedStatefulSet {
    serde_json::from_value(json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1",
        "kind": "EnhancedStatefulSet",
        "metadata": {"name": "web", "namespace": "ns", "uid": "set-1", "annotations": annotations},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"image": "nginx"}]}}}
    }))
    .expect("set")
}

/// The record `ns/web-0` of set `web` (UID set-1) with extra spec fields and a status;
/// also the CNI decision's tests' record.
pub(crate) fn record(spec: serde_json::Value, status: serde_json::Value) -> StaticIP {
    let mut base = json!({
        "workload": {"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet", "name": "web", "uid": "set-1"},
        "podName": "web-0"
    });
    if let (Some(base), Some(extra)) = (base.as_object_mut(), spec.as_object()) {
        base.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1",
        "kind": "StaticIP",
        "metadata": {"name": "web-0", "namespace": "ns", "uid": "rec-1", "resourceVersion": "7",
                     "creationTimestamp": "2027-01-15T08:00:00Z",
                     "ownerReferences": [{"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet",
                                          "name": "web", "uid": "set-1", "controller": true}]},
        "spec": base,
        "status": status
    }))
    .expect("record")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn pod(uid: &str, ips: &[&str], node: Option<&str>) -> PodFacts {
    PodFacts {
        uid: uid.into(),
        stamped_record: Some("rec-1".into()),
        ips: ips.iter().map(|s| ip(s)).collect(),
        node: node.map(Into::into),
        pinned_to: None,
        terminating: false,
    }
}

fn no_holder(_: &IpAddr) -> Option<String> {
    None
}

fn no_node_gone(_: &str) -> bool {
    false
}

/// Nothing held by another record, every node present.
const FREE: Surroundings<'static> = Surroundings {
    held_by: &no_holder,
    node_gone: &no_node_gone,
    on_node_deletion: NodeDeletionPolicy::Reallocate,
};

fn bound(pod_uid: &str, present: bool) -> serde_json::Value {
    json!({"phase": "Bound", "podUID": pod_uid, "lastSeen": "2027-01-15T08:00:00Z", "conditions": [
        {"type": "Bound", "status": "True", "reason": "Bound", "message": "", "lastTransitionTime": "2027-01-15T08:00:00Z"},
        {"type": "PodPresent", "status": if present {"True"} else {"False"}, "reason": "", "message": "", "lastTransitionTime": "2027-01-15T08:00:00Z"}
    ]})
}

#[test]
fn settings_follow_the_annotations() {
    assert_eq!(settings(&set(json!({}))), Ok(None));
    assert_eq!(
        settings(&set(json!({"staticip.jke.jdcloud.com/enable": "false"}))),
        Ok(None)
    );
    let s = settings(&set(json!({"staticip.jke.jdcloud.com/enable": "true"})))
        .expect("valid")
        .expect("on");
    assert_eq!(
        (s.pool, s.release_policy),
        (None, ReleasePolicy::WhenScaled)
    );
    let s = settings(&set(json!({"staticip.jke.jdcloud.com/enable": "true",
        "staticip.jke.jdcloud.com/pool": "blue",
        "staticip.jke.jdcloud.com/release-policy": "TTL",
        "staticip.jke.jdcloud.com/release-ttl-seconds": "30"})))
    .expect("valid")
    .expect("on");
    assert_eq!(
        (s.pool.as_deref(), s.release_policy, s.release_ttl_seconds),
        (Some("blue"), ReleasePolicy::Ttl, Some(30))
    );
    for bad in [
        json!({"staticip.jke.jdcloud.com/enable": "true", "staticip.jke.jdcloud.com/release-policy": "Sometimes"}),
        json!({"staticip.jke.jdcloud.com/enable": "true", "staticip.jke.jdcloud.com/release-policy": "TTL"}),
        json!({"staticip.jke.jdcloud.com/enable": "true", "staticip.jke.jdcloud.com/release-ttl-seconds": "-1"}),
    ] {
        let e = settings(&set(bad)).expect_err("invalid");
        assert!(
            e.contains("metadata.annotations[staticip.jke.jdcloud.com/release-"),
            "{e}"
        );
    }
}

#[test]
fn new_records_are_owned_and_range_mode_ones_hold_a_finalizer() {
    let s = set(
        json!({"staticip.jke.jdcloud.com/enable": "true", "staticip.jke.jdcloud.com/pool": "blue"}),
    );
    let r = new_record(&s, "web-3", &settings(&s).expect("valid").expect("on"));
    assert_eq!(r.metadata.name.as_deref(), Some("web-3"));
    assert_eq!(r.spec.workload.uid, "set-1");
    assert_eq!(r.spec.pool.as_deref(), Some("blue"));
    assert_eq!(r.owner_references()[0].controller, Some(true));
    assert_eq!(r.finalizers(), [keys::RECORD_RELEASE_FINALIZER]);
    let s = set(json!({"staticip.jke.jdcloud.com/enable": "true"}));
    let r = new_record(&s, "web-3", &settings(&s).expect("valid").expect("on"));
    assert!(
        r.finalizers().is_empty(),
        "record mode frees nothing itself"
    );
}

#[test]
fn ownership_adopts_only_orphans_of_the_same_name() {
    let s = set(json!({}));
    let mut r = record(json!({}), json!(null));
    assert_eq!(ownership(&r, &s), Ownership::Ours);
    r.metadata.owner_references = None;
    assert_eq!(ownership(&r, &s), Ownership::Adoptable);
    r.spec.workload.name = "other".into();
    assert!(matches!(ownership(&r, &s), Ownership::Foreign(_)));
    let mut r = record(json!({}), json!(null));
    if let Some(o) = r.metadata.owner_references.as_mut() {
        o[0].uid = "set-0".into();
    }
    assert!(matches!(ownership(&r, &s), Ownership::Foreign(m) if m.contains("set-0")));
    r.metadata.deletion_timestamp = r.metadata.creation_timestamp.clone();
    assert_eq!(ownership(&r, &s), Ownership::Deleting);
}

#[test]
fn a_pod_is_held_until_its_record_is_bound_to_it() {
    let mut p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-0", "uid": "pod-1", "labels": {"staticip.jke.jdcloud.com/enabled": "true"}},
        "status": {}
    }))
    .expect("pod");
    let unbound = record(json!({}), json!(null));
    assert!(!holds_pod(&p, Some(&unbound)), "no IP yet: nothing to lose");
    p.status = serde_json::from_value(json!({"podIP": "10.0.0.5"})).expect("status");
    assert!(holds_pod(&p, Some(&unbound)));
    let other = record(json!({"ips": [{"ip": "10.0.0.5"}]}), bound("pod-0", true));
    assert!(
        holds_pod(&p, Some(&other)),
        "bound to an earlier pod, about to be bound to this one"
    );
    let elsewhere = record(json!({"ips": [{"ip": "10.0.0.9"}]}), bound("pod-0", true));
    assert!(
        !holds_pod(&p, Some(&elsewhere)),
        "runs with another address: nothing to lose"
    );
    let range = record(json!({"pool": "blue"}), json!(null));
    assert!(
        !holds_pod(&p, Some(&range)),
        "range mode never learns the CNI's address"
    );
    let ours = record(json!({"ips": [{"ip": "10.0.0.5"}]}), bound("pod-1", true));
    assert!(!holds_pod(&p, Some(&ours)));
    // A node migration moves the record (phase Migrating): it still holds this pod's address,
    // and the pod must be free to go (or the migration and the rollout wait for each other).
    let mut migrating_status = bound("pod-1", true);
    migrating_status["phase"] = json!("Migrating");
    let migrating = record(
        json!({"ips": [{"ip": "10.0.0.5"}], "node": "node-b"}),
        migrating_status,
    );
    assert!(
        !holds_pod(&p, Some(&migrating)),
        "migrating with its address"
    );
    p.metadata.labels = None;
    assert!(!holds_pod(&p, Some(&unbound)), "not a static-IP pod");
}

#[test]
fn a_pod_whose_record_is_gone_going_or_another_is_not_held() {
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-0", "uid": "pod-1",
                     "labels": {"staticip.jke.jdcloud.com/enabled": "true"},
                     "annotations": {"staticip.jke.jdcloud.com/record-uid": "rec-1"}},
        "status": {"podIP": "10.0.0.5"}
    }))
    .expect("pod");
    let learning = record(json!({}), json!(null));
    let mut going = learning.clone();
    going.metadata.deletion_timestamp =
        Some(serde_json::from_value(json!("2027-01-15T09:00:00Z")).expect("time"));
    let mut recreated = learning.clone();
    recreated.metadata.uid = Some("rec-2".into());
    let cases: Vec<(&str, Option<&StaticIP>, bool)> = vec![
        (
            "a record about to learn the address holds the pod",
            Some(&learning),
            true,
        ),
        (
            "no record: nothing will ever learn or bind the address",
            None,
            false,
        ),
        (
            "a record being deleted never learns or binds",
            Some(&going),
            false,
        ),
        (
            "a record re-created since the pod was stamped never learns from it",
            Some(&recreated),
            false,
        ),
    ];
    for (what, record, want) in cases {
        assert_eq!(holds_pod(&p, record), want, "{what}");
    }
}

#[test]
fn pod_ips_take_one_address_per_family() {
    let p: Pod = serde_json::from_value(json!({"status": {"podIP": "10.0.0.5",
        "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}, {"ip": "10.0.0.6"}]}}))
    .expect("pod");
    assert_eq!(pod_ips(&p), vec![ip("10.0.0.5"), ip("fd00::5")]);
}

#[test]
fn record_mode_learns_then_binds_then_notices_the_pod_gone() {
    let r = record(json!({}), json!(null));
    let p = pod("pod-1", &["10.0.0.5", "fd00::5"], Some("n1"));
    assert_eq!(
        decide(&r, Some(&p), Identity::InSet, &FREE, NOW),
        Decision::Learn {
            pod_uid: "pod-1".into(),
            ips: vec![ip("10.0.0.5"), ip("fd00::5")],
            node: "n1".into()
        }
    );
    let no_ip = pod("pod-1", &[], Some("n1"));
    assert_eq!(
        decide(&r, Some(&no_ip), Identity::InSet, &FREE, NOW),
        Decision::Wait { after: None }
    );
    let unscheduled = pod("pod-1", &[], None);
    assert_eq!(
        decide(&r, Some(&unscheduled), Identity::InSet, &FREE, NOW),
        Decision::Wait { after: None }
    );

    let learnt = record(
        json!({"ips": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}], "node": "n1"}),
        json!(null),
    );
    assert_eq!(
        decide(&learnt, Some(&p), Identity::InSet, &FREE, NOW),
        Decision::Bind {
            pod_uid: "pod-1".into(),
            node: "n1".into()
        }
    );
    let settled = record(
        json!({"ips": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}], "node": "n1"}),
        bound("pod-1", true),
    );
    assert_eq!(
        decide(&settled, Some(&p), Identity::InSet, &FREE, NOW),
        Decision::Wait { after: None }
    );
    // Re-created with the same address: bound to the new pod.
    let again = pod("pod-2", &["fd00::5", "10.0.0.5"], Some("n1"));
    assert_eq!(
        decide(&settled, Some(&again), Identity::InSet, &FREE, NOW),
        Decision::Bind {
            pod_uid: "pod-2".into(),
            node: "n1".into()
        }
    );
    // Moved with its address (node migration): bound, following the node.
    let moved = pod("pod-1", &["10.0.0.5", "fd00::5"], Some("n2"));
    assert_eq!(
        decide(&settled, Some(&moved), Identity::InSet, &FREE, NOW),
        Decision::Bind {
            pod_uid: "pod-1".into(),
            node: "n2".into()
        }
    );
    assert_eq!(
        decide(&settled, None, Identity::InSet, &FREE, NOW),
        Decision::PodGone
    );
}

#[test]
fn a_pod_with_other_addresses_is_never_bound() {
    let settled = record(
        json!({"ips": [{"ip": "10.0.0.5"}], "node": "n1"}),
        bound("pod-1", true),
    );
    let p = pod("pod-2", &["10.0.0.9"], Some("n1"));
    assert_eq!(
        decide(&settled, Some(&p), Identity::InSet, &FREE, NOW),
        Decision::Mismatch {
            pod_uid: "pod-2".into(),
            pod_ips: vec![ip("10.0.0.9")]
        }
    );
    let mut reported = settled.clone();
    if let Some(s) = reported.status.as_mut() {
        s.conditions[0].status = "False".into();
        s.conditions[0].reason = "IPMismatch".into();
        s.conditions[0].message = "pod pod-2 runs with 10.0.0.9".into();
        s.refused_pod_uid = Some("pod-2".into());
    }
    assert_eq!(
        decide(&reported, Some(&p), Identity::InSet, &FREE, NOW),
        Decision::Wait { after: None }
    );
    // Which pod was reported is the typed field, not the message's text: a message naming
    // the pod says nothing (an older manager's, a user's edit), nor does one naming another
    // pod whose UID contains this one's.
    let mut only_text = reported.clone();
    if let Some(s) = only_text.status.as_mut() {
        s.refused_pod_uid = None;
    }
    assert!(matches!(
        decide(&only_text, Some(&p), Identity::InSet, &FREE, NOW),
        Decision::Mismatch { .. }
    ));
    let mut other_pod = reported.clone();
    if let Some(s) = other_pod.status.as_mut() {
        s.conditions[0].message = "pod pod-2x runs with 10.0.0.9".into();
        s.refused_pod_uid = Some("pod-2x".into());
    }
    assert!(matches!(
        decide(&other_pod, Some(&p), Identity::InSet, &FREE, NOW),
        Decision::Mismatch { .. }
    ));
    // A pod stamped with another record (the one before this) is not this record's.
    let mut foreign = pod("pod-3", &["10.0.0.5"], Some("n1"));
    foreign.stamped_record = Some("rec-0".into());
    assert_eq!(
        decide(&settled, Some(&foreign), Identity::ScaledIn, &FREE, NOW),
        Decision::Wait { after: None }
    );
}

#[test]
fn range_mode_allocates_on_the_pods_node() {
    let r = record(json!({"pool": "blue"}), json!(null));
    let p = pod("pod-1", &["10.128.0.7"], Some("n1"));
    assert_eq!(
        decide(&r, Some(&p), Identity::InSet, &FREE, NOW),
        Decision::Allocate { node: "n1".into() }
    );
    let unscheduled = pod("pod-1", &[], None);
    assert_eq!(
        decide(&r, Some(&unscheduled), Identity::InSet, &FREE, NOW),
        Decision::Wait { after: None }
    );
}

#[test]
fn release_policies_table() {
    use Decision::{Release, Wait};
    let gone = |policy: &str, ttl: Option<i64>| {
        record(
            json!({"ips": [{"ip": "10.0.0.5"}], "node": "n1", "releasePolicy": policy, "releaseTtlSeconds": ttl}),
            bound("pod-1", false),
        )
    };
    let last_seen = seconds("2027-01-15T08:00:00Z");
    let cases: Vec<(&str, Option<i64>, Identity, i64, Decision)> = vec![
        ("WhenScaled", None, Identity::InSet, 0, Wait { after: None }),
        (
            "WhenScaled",
            None,
            Identity::Unknown,
            0,
            Wait { after: None },
        ),
        (
            "WhenScaled",
            None,
            Identity::ScaledIn,
            0,
            Release { why: "scaled in" },
        ),
        (
            "WhenScaled",
            None,
            Identity::Orphaned,
            0,
            Release {
                why: "workload deleted",
            },
        ),
        (
            "WhenDeleted",
            None,
            Identity::ScaledIn,
            0,
            Wait { after: None },
        ),
        (
            "WhenDeleted",
            None,
            Identity::Orphaned,
            0,
            Release {
                why: "workload deleted",
            },
        ),
        ("Never", None, Identity::ScaledIn, 0, Wait { after: None }),
        (
            "Never",
            None,
            Identity::Orphaned,
            10_000_000,
            Wait { after: None },
        ),
        (
            "TTL",
            Some(60),
            Identity::InSet,
            1_000,
            Wait { after: None },
        ),
        (
            "TTL",
            Some(60),
            Identity::ScaledIn,
            20,
            Wait { after: Some(40) },
        ),
        (
            "TTL",
            Some(60),
            Identity::ScaledIn,
            60,
            Release {
                why: "scaled in, TTL expired",
            },
        ),
        (
            "TTL",
            Some(60),
            Identity::Orphaned,
            59,
            Wait { after: Some(1) },
        ),
        (
            "TTL",
            Some(60),
            Identity::Orphaned,
            61,
            Release {
                why: "workload deleted, TTL expired",
            },
        ),
    ];
    for (policy, ttl, identity, since_seen, want) in cases {
        let r = gone(policy, ttl);
        let got = decide(&r, None, identity, &FREE, last_seen + since_seen);
        assert_eq!(
            got, want,
            "{policy} {identity:?} {since_seen}s after last seen"
        );
    }
    // Nothing is released under a pod, whatever the policy says.
    let r = gone("WhenScaled", None);
    let mut p = pod("pod-2", &["10.0.0.5"], Some("n1"));
    p.terminating = true;
    assert_eq!(
        decide(&r, Some(&p), Identity::ScaledIn, &FREE, last_seen),
        Wait { after: None }
    );
    // A pod that was present is first recorded as gone (lastSeen), then released.
    let present = record(json!({"ips": [{"ip": "10.0.0.5"}]}), bound("pod-1", true));
    assert_eq!(
        decide(&present, None, Identity::ScaledIn, &FREE, last_seen),
        Decision::PodGone
    );
}

fn seconds(s: &str) -> i64 {
    let t: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time =
        serde_json::from_value(json!(s)).expect("time");
    t.0.as_second()
}

#[test]
fn record_mode_never_learns_an_address_another_record_keeps() {
    let r = record(json!({}), json!(null));
    let p = pod("pod-1", &["10.0.0.5"], Some("n1"));
    let held_by = |a: &IpAddr| (*a == ip("10.0.0.5")).then(|| "ns/db-3".to_string());
    let kept = Surroundings {
        held_by: &held_by,
        ..FREE
    };
    assert_eq!(
        decide(&r, Some(&p), Identity::InSet, &kept, NOW),
        Decision::AddressTaken {
            pod_uid: "pod-1".into(),
            ip: ip("10.0.0.5"),
            holder: "ns/db-3".into()
        }
    );
    let reported = record(
        json!({}),
        json!({"refusedPodUID": "pod-1", "conditions": [{"type": "Bound", "status": "False", "reason": "AddressTaken",
            "message": "pod pod-1 runs with 10.0.0.5, which ns/db-3 keeps", "lastTransitionTime": "2027-01-15T08:00:00Z"}]}),
    );
    assert_eq!(
        decide(&reported, Some(&p), Identity::InSet, &kept, NOW),
        Decision::Wait {
            after: Some(ADDRESS_TAKEN_RECHECK)
        }
    );
    // Once the holder has gone, the address is learnt.
    assert!(matches!(
        decide(&reported, Some(&p), Identity::InSet, &FREE, NOW),
        Decision::Learn { .. }
    ));
    // Nothing to lose: the controller need not hold that pod.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web-0", "uid": "pod-1", "labels": {"staticip.jke.jdcloud.com/enabled": "true"}},
        "status": {"podIP": "10.0.0.5"}
    }))
    .expect("pod");
    assert!(!holds_pod(&pod, Some(&reported)));
}

#[test]
fn range_mode_pods_request_the_managed_resource_on_their_first_container() {
    let mut pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "db-0"},
        "spec": {"containers": [
            {"name": "db", "resources": {"requests": {"cpu": "1"}}},
            {"name": "sidecar"}
        ]}
    }))
    .expect("pod");
    request_static_ip(&mut pod);
    request_static_ip(&mut pod);
    let spec = pod.spec.expect("spec");
    let resources = spec.containers[0].resources.as_ref().expect("resources");
    let one = Some(&Quantity("1".into()));
    for list in [&resources.requests, &resources.limits] {
        assert_eq!(
            list.as_ref()
                .and_then(|l| l.get("jke.jdcloud.com/static-ip")),
            one
        );
    }
    assert_eq!(
        resources.requests.as_ref().and_then(|r| r.get("cpu")),
        Some(&Quantity("1".into()))
    );
    assert!(spec.containers[1].resources.is_none());
}

#[test]
fn a_migrating_record_waits_for_its_pod_on_the_new_node() {
    let moved = record(
        json!({"ips": [{"ip": "10.0.0.5"}], "node": "n2"}),
        json!({"phase": "Migrating", "podUID": "pod-1"}),
    );
    // The pod still runs on the old node (maintenance, not evicted yet): not followed back.
    let old = pod("pod-1", &["10.0.0.5"], Some("n1"));
    assert_eq!(
        decide(&moved, Some(&old), Identity::InSet, &FREE, NOW),
        Decision::Wait { after: None }
    );
    // Re-created on the new node with the address: Bound again.
    let new = pod("pod-2", &["10.0.0.5"], Some("n2"));
    assert_eq!(
        decide(&moved, Some(&new), Identity::InSet, &FREE, NOW),
        Decision::Bind {
            pod_uid: "pod-2".into(),
            node: "n2".into()
        }
    );
}

#[test]
fn a_claim_by_the_controller_postpones_the_release() {
    use Decision::{Release, Wait};
    let claimed = seconds("2027-01-15T09:00:00Z");
    let mut r = record(
        json!({"ips": [{"ip": "10.0.0.5"}], "node": "n1", "releasePolicy": "WhenScaled"}),
        bound("pod-1", false),
    );
    r.annotations_mut().insert(
        keys::STATIC_IP_RECORD_CLAIMED_AT.into(),
        "2027-01-15T09:00:00Z".into(),
    );
    let cases: Vec<(&str, i64, Decision)> = vec![
        (
            "just claimed: a pod is being created",
            claimed + 1,
            Wait {
                after: Some(CLAIM_SECONDS - 1),
            },
        ),
        (
            "claimed by a clock ahead of ours",
            claimed - 5,
            Wait {
                after: Some(CLAIM_SECONDS + 5),
            },
        ),
        (
            "the claim has run out",
            claimed + CLAIM_SECONDS,
            Release { why: "scaled in" },
        ),
    ];
    for (what, now, want) in cases {
        assert_eq!(
            decide(&r, None, Identity::ScaledIn, &FREE, now),
            want,
            "{what}"
        );
    }
    // A claim only postpones a release: it keeps nothing a policy keeps anyway, and does not
    // hide that the pod has gone.
    assert_eq!(
        decide(&r, None, Identity::InSet, &FREE, claimed + 1),
        Wait { after: None }
    );
    let mut present = record(json!({"ips": [{"ip": "10.0.0.5"}]}), bound("pod-1", true));
    present.annotations_mut().insert(
        keys::STATIC_IP_RECORD_CLAIMED_AT.into(),
        "2027-01-15T09:00:00Z".into(),
    );
    assert_eq!(
        decide(&present, None, Identity::ScaledIn, &FREE, claimed + 1),
        Decision::PodGone
    );
    // What the controller writes is what the manager reads.
    let mut fresh = record(json!({}), json!(null));
    assert!(!claim_is_fresh(&fresh, claimed), "never claimed");
    claim(&mut fresh, claimed);
    assert_eq!(claimed_at(&fresh), Some(claimed));
    // The controller creates again on its own recent claim, and claims again once it ages.
    let reuse: Vec<(i64, bool)> = vec![
        (0, true),
        (CLAIM_REUSE_SECONDS - 1, true),
        (CLAIM_REUSE_SECONDS, false),
        (-CLAIM_REUSE_SECONDS, false),
    ];
    for (since, want) in reuse {
        assert_eq!(
            claim_is_fresh(&fresh, claimed + since),
            want,
            "{since}s after the claim"
        );
    }
    fresh
        .annotations_mut()
        .insert(keys::STATIC_IP_RECORD_CLAIMED_AT.into(), "yesterday".into());
    assert_eq!(
        claimed_at(&fresh),
        None,
        "a value that does not parse is no claim"
    );
}

#[test]
fn a_record_on_a_deleted_node_is_placed_afresh_or_kept_for_a_migration() {
    let gone = |n: &str| n == "n1";
    let around = Surroundings {
        node_gone: &gone,
        ..FREE
    };
    let unpin = |stranded: Option<&str>| Decision::Unpin {
        node: "n1".into(),
        stranded_pod: stranded.map(Into::into),
    };
    // Record mode: the address does not live on the node; only the node is forgotten.
    let kept = record(
        json!({"ips": [{"ip": "10.0.0.5"}], "node": "n1"}),
        bound("pod-1", true),
    );
    assert_eq!(
        decide(&kept, None, Identity::InSet, &around, NOW),
        unpin(None)
    );
    // Its pod still on the deleted node, not yet collected.
    let left = pod("pod-1", &["10.0.0.5"], Some("n1"));
    assert_eq!(
        decide(&kept, Some(&left), Identity::InSet, &around, NOW),
        unpin(None)
    );
    // A pod re-created before the node went waits for it forever: it is deleted.
    let stranded = PodFacts {
        pinned_to: Some("n1".into()),
        ..pod("pod-2", &[], None)
    };
    assert_eq!(
        decide(&kept, Some(&stranded), Identity::InSet, &around, NOW),
        unpin(Some("pod-2"))
    );
    let elsewhere = PodFacts {
        pinned_to: Some("n2".into()),
        ..pod("pod-2", &[], None)
    };
    assert_eq!(
        decide(&kept, Some(&elsewhere), Identity::InSet, &around, NOW),
        unpin(None),
        "a pod pinned to a live node can run"
    );
    // Unpinned, the record never follows a pod back onto the deleted node, and binds the
    // identity's next pod wherever it runs with the address.
    let unpinned = record(json!({"ips": [{"ip": "10.0.0.5"}]}), bound("pod-1", true));
    assert_eq!(
        decide(&unpinned, Some(&left), Identity::InSet, &around, NOW),
        Decision::Wait { after: None }
    );
    let next = pod("pod-3", &["10.0.0.5"], Some("n2"));
    assert_eq!(
        decide(&unpinned, Some(&next), Identity::InSet, &around, NOW),
        Decision::Bind {
            pod_uid: "pod-3".into(),
            node: "n2".into()
        }
    );

    // IP range mode: the address lives in the gone node's block.
    let ranged = record(
        json!({"pool": "p", "ips": [{"ip": "10.0.0.5", "block": "p-10-0-0-0-26"}], "node": "n1"}),
        bound("pod-1", true),
    );
    for p in [None, Some(&left), Some(&stranded)] {
        assert_eq!(
            decide(&ranged, p, Identity::InSet, &around, NOW),
            Decision::Reallocate { node: "n1".into() }
        );
    }
    let migrate = Surroundings {
        on_node_deletion: NodeDeletionPolicy::Migrate,
        ..around
    };
    assert_eq!(
        decide(&ranged, None, Identity::InSet, &migrate, NOW),
        Decision::Wait { after: None },
        "kept, pinned, for a NodeMigration"
    );
    // A new identity whose pod sits on the deleted node gets nothing allocated there.
    let fresh = record(json!({"pool": "p"}), json!(null));
    assert_eq!(
        decide(
            &fresh,
            Some(&pod("pod-1", &[], Some("n1"))),
            Identity::InSet,
            &around,
            NOW
        ),
        Decision::Wait { after: None }
    );
    // Nodes that exist change nothing.
    assert_eq!(
        decide(
            &fresh,
            Some(&pod("pod-1", &[], Some("n1"))),
            Identity::InSet,
            &FREE,
            NOW
        ),
        Decision::Allocate { node: "n1".into() }
    );
}
