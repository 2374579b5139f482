use super::*;
use serde_json::{Value, json};

const CONTROLLER: &str = "system:serviceaccount:ests-system:ests-controller";

fn settings() -> PinSettings {
    PinSettings {
        controller_users: vec![CONTROLLER.into()],
        cni: vec![CniAnnotation::calico()],
    }
}

fn pod(affinity: Value) -> Pod {
    let mut spec = json!({"containers": [{"name": "app", "image": "app:v1"}]});
    if !affinity.is_null() {
        spec["affinity"] = affinity;
    }
    serde_json::from_value(json!({
        "metadata": {
            "name": "web-1", "namespace": "ns",
            "labels": {"staticip.jke.jdcloud.com/enabled": "true"},
            "annotations": {"staticip.jke.jdcloud.com/record-uid": "rec-1",
                            "staticip.jke.jdcloud.com/record-resource-version": "41"},
            "ownerReferences": [{"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet",
                                 "name": "web", "uid": "set-1", "controller": true}]
        },
        "spec": spec
    }))
    .expect("pod")
}

fn record(ips: &[&str], phase: &str, version: &str) -> StaticIP {
    let ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    serde_json::from_value(json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "StaticIP",
        "metadata": {"name": "web-1", "namespace": "ns", "uid": "rec-1", "resourceVersion": version},
        "spec": {"workload": {"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet", "name": "web", "uid": "set-1"},
                 "podName": "web-1", "ips": ips, "node": "node-2"},
        "status": {"phase": phase}
    }))
    .expect("record")
}

/// The pod after the verdict's patch.
fn applied(pod: &Pod, verdict: &PinVerdict) -> Value {
    let mut value = serde_json::to_value(pod).expect("json");
    match verdict {
        PinVerdict::Pin(patch) => json_patch::patch(&mut value, patch).expect("patch applies"),
        other => panic!("expected a pin, got {other:?}"),
    }
    value
}

fn terms(pod: &Value) -> Value {
    pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .clone()
}

fn pin_req() -> Value {
    json!({"key": "metadata.name", "operator": "In", "values": ["node-2"]})
}

#[test]
fn a_bound_record_pins_address_and_node_onto_a_pod_without_affinity() {
    let p = pod(Value::Null);
    let v = pin(
        &p,
        Some(&record(&["10.40.0.7"], "Bound", "41")),
        CONTROLLER,
        &settings(),
    );
    let after = applied(&p, &v);
    let a = &after["metadata"]["annotations"];
    assert_eq!(a["staticip.jke.jdcloud.com/ip"], "10.40.0.7");
    assert_eq!(a["staticip.jke.jdcloud.com/node"], "node-2");
    assert_eq!(a["cni.projectcalico.org/ipAddrs"], r#"["10.40.0.7"]"#);
    assert_eq!(terms(&after), json!([{"matchFields": [pin_req()]}]));
}

#[test]
fn the_pin_is_anded_into_every_required_term_and_preferred_terms_are_untouched() {
    let preferred = json!([{"weight": 10, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}}]);
    let one = json!({"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}
        ]},
        "preferredDuringSchedulingIgnoredDuringExecution": preferred
    }});
    let p = pod(one);
    let after = applied(
        &p,
        &pin(
            &p,
            Some(&record(&["10.40.0.7"], "Bound", "41")),
            CONTROLLER,
            &settings(),
        ),
    );
    assert_eq!(
        terms(&after),
        json!([{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}], "matchFields": [pin_req()]}])
    );
    assert_eq!(
        after["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"],
        preferred
    );

    let several = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]},
        {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["node-9"]}]}
    ]}}});
    let p = pod(several);
    let after = applied(
        &p,
        &pin(
            &p,
            Some(&record(&["10.40.0.7"], "Bound", "41")),
            CONTROLLER,
            &settings(),
        ),
    );
    let t = terms(&after);
    assert_eq!(
        t.as_array().map(Vec::len),
        Some(2),
        "no term added: ORed terms would un-pin"
    );
    for term in t.as_array().into_iter().flatten() {
        assert!(
            term["matchFields"]
                .as_array()
                .is_some_and(|f| f.contains(&pin_req())),
            "{term}"
        );
    }
    // Only the preferred part present: a required part is created.
    let p = pod(
        json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": preferred}}),
    );
    let after = applied(
        &p,
        &pin(
            &p,
            Some(&record(&["10.40.0.7"], "Bound", "41")),
            CONTROLLER,
            &settings(),
        ),
    );
    assert_eq!(terms(&after), json!([{"matchFields": [pin_req()]}]));
}

#[test]
fn dual_stack_records_pin_both_addresses() {
    let p = pod(Value::Null);
    let mut s = settings();
    s.cni
        .push(CniAnnotation::parse("example.com/v6={ipv6}").expect("valid"));
    let after = applied(
        &p,
        &pin(
            &p,
            Some(&record(&["10.40.0.7", "fd00:40::7"], "Bound", "41")),
            CONTROLLER,
            &s,
        ),
    );
    let a = &after["metadata"]["annotations"];
    assert_eq!(a["staticip.jke.jdcloud.com/ip"], "10.40.0.7,fd00:40::7");
    assert_eq!(
        a["cni.projectcalico.org/ipAddrs"],
        r#"["10.40.0.7","fd00:40::7"]"#
    );
    assert_eq!(a["example.com/v6"], "fd00:40::7");
}

#[test]
fn reinvocation_changes_nothing() {
    let p = pod(Value::Null);
    let r = record(&["10.40.0.7"], "Bound", "41");
    let once: Pod =
        serde_json::from_value(applied(&p, &pin(&p, Some(&r), CONTROLLER, &settings())))
            .expect("pod");
    assert_eq!(
        pin(&once, Some(&r), CONTROLLER, &settings()),
        PinVerdict::Pin(json_patch::Patch(vec![]))
    );
}

#[test]
fn new_identities_pass_unchanged() {
    let p = pod(Value::Null);
    assert_eq!(
        pin(
            &p,
            Some(&record(&[], "Pending", "41")),
            CONTROLLER,
            &settings()
        ),
        PinVerdict::Unchanged
    );
    // Allocated but never bound (range mode before its first pod ran).
    assert_eq!(
        pin(
            &p,
            Some(&record(&["10.40.0.7"], "Pending", "41")),
            CONTROLLER,
            &settings()
        ),
        PinVerdict::Unchanged
    );
    let mut plain = p.clone();
    plain.metadata.labels = None;
    assert_eq!(
        pin(&plain, None, "alice", &settings()),
        PinVerdict::Unchanged,
        "not a static-IP pod"
    );
}

#[test]
fn refusals_name_the_reason() {
    let p = pod(Value::Null);
    let r = record(&["10.40.0.7"], "Bound", "41");
    let deny = |v: PinVerdict| match v {
        PinVerdict::Deny(d) => d.message,
        other => panic!("expected a denial, got {other:?}"),
    };
    assert!(
        deny(pin(&p, Some(&r), "alice", &settings()))
            .contains("alice may not create static-IP pods")
    );
    assert!(deny(pin(&p, None, CONTROLLER, &settings())).contains("not in the webhook's cache"));
    let stale = record(&["10.40.0.7"], "Bound", "40");
    assert!(
        deny(pin(&p, Some(&stale), CONTROLLER, &settings())).contains("older than the stamped 41")
    );
    // Newer than the stamp is fine (the record moved on: bound meanwhile).
    assert!(matches!(
        pin(
            &p,
            Some(&record(&["10.40.0.7"], "Bound", "97")),
            CONTROLLER,
            &settings()
        ),
        PinVerdict::Pin(_)
    ));
    let mut other_owner = p.clone();
    if let Some(o) = other_owner.metadata.owner_references.as_mut() {
        o[0].uid = "set-0".into();
    }
    assert!(
        deny(pin(&other_owner, Some(&r), CONTROLLER, &settings()))
            .contains("not owned by the workload")
    );
    let mut other_record = r.clone();
    other_record.metadata.uid = Some("rec-0".into());
    assert!(
        deny(pin(&p, Some(&other_record), CONTROLLER, &settings()))
            .contains("not the stamped rec-1")
    );
    let mut unstamped = p.clone();
    unstamped.metadata.annotations = None;
    assert!(
        deny(pin(&unstamped, Some(&r), CONTROLLER, &settings())).contains("lacks the annotation")
    );
}

#[test]
fn refusals_tell_the_caller_nothing_it_did_not_send() {
    let p = pod(Value::Null);
    let message = |v: PinVerdict| match v {
        PinVerdict::Deny(d) => d.message,
        other => panic!("expected a denial, got {other:?}"),
    };
    let mut other_record = record(&["10.40.0.7"], "Bound", "41");
    other_record.metadata.uid = Some("rec-0".into());
    other_record.spec.workload.uid = "set-9".into();
    let stale = record(&["10.40.0.7"], "Bound", "40");
    let mut other_owner = p.clone();
    if let Some(o) = other_owner.metadata.owner_references.as_mut() {
        o[0].uid = "set-0".into();
    }
    for (what, said) in [
        (
            "another record",
            message(pin(&p, Some(&other_record), CONTROLLER, &settings())),
        ),
        (
            "a stale cache",
            message(pin(&p, Some(&stale), CONTROLLER, &settings())),
        ),
        (
            "another owner",
            message(pin(
                &other_owner,
                Some(&record(&["10.40.0.7"], "Bound", "41")),
                CONTROLLER,
                &settings(),
            )),
        ),
    ] {
        // The record's UID, resourceVersion, workload and addresses are the webhook's to log,
        // not the caller's to learn.
        for secret in [
            "rec-0",
            "set-9",
            "set-1",
            "resourceVersion 40",
            "10.40.0.7",
            "node-2",
            "EnhancedStatefulSet web",
        ] {
            assert!(!said.contains(secret), "{what}: {said:?} tells {secret:?}");
        }
    }
}

#[test]
fn cni_annotation_specs_parse() {
    assert_eq!(
        CniAnnotation::parse("a/b={ips}").map(|c| c.render(&["10.0.0.1".parse().expect("ip")])),
        Ok("10.0.0.1".into())
    );
    assert!(CniAnnotation::parse("novalue").is_err());
    assert!(CniAnnotation::parse("=x").is_err());
}

#[test]
fn cni_annotation_flags_default_to_calico_and_none_means_only_ests_own() {
    let flags = |specs: &[&str]| -> Result<Vec<CniAnnotation>, String> {
        let flags = specs
            .iter()
            .map(|s| CniAnnotationFlag::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        cni_annotations(&flags)
    };
    assert_eq!(flags(&[]), Ok(vec![CniAnnotation::calico()]));
    assert_eq!(flags(&["none"]), Ok(vec![]));
    let custom = CniAnnotation::parse("example.com/ip={ips}").expect("valid");
    assert_eq!(flags(&["example.com/ip={ips}"]), Ok(vec![custom]));
    let mixed = flags(&["none", "example.com/ip={ips}"]).expect_err("refused");
    assert!(mixed.contains("none means no CNI annotation"), "{mixed}");
    let bad = flags(&["nonsense"]).expect_err("refused");
    assert!(bad.contains("or none"), "{bad}");
}

/// Under ests's own IPAM (`--cni-annotation none`) a re-created pod is pinned with ests's
/// annotations and node only: no Calico `ipAddrs`, which Calico refuses with a foreign IPAM.
#[test]
fn with_no_cni_annotation_only_ests_own_are_written() {
    let p = pod(Value::Null);
    let settings = PinSettings {
        cni: cni_annotations(&[CniAnnotationFlag::None]).expect("none"),
        ..settings()
    };
    let v = pin(
        &p,
        Some(&record(&["10.40.0.7"], "Bound", "41")),
        CONTROLLER,
        &settings,
    );
    let after = applied(&p, &v);
    let annotations = after["metadata"]["annotations"]
        .as_object()
        .expect("annotations");
    assert_eq!(
        annotations.get("staticip.jke.jdcloud.com/ip"),
        Some(&json!("10.40.0.7"))
    );
    assert_eq!(
        annotations.get("staticip.jke.jdcloud.com/node"),
        Some(&json!("node-2"))
    );
    assert!(
        !annotations.contains_key("cni.projectcalico.org/ipAddrs"),
        "{annotations:?}"
    );
    // Only ests's own besides those the controller stamped.
    let keys: Vec<&str> = annotations.keys().map(String::as_str).collect();
    assert!(
        keys.iter()
            .all(|k| k.starts_with("staticip.jke.jdcloud.com/")),
        "{keys:?}"
    );
    assert_eq!(terms(&after), json!([{"matchFields": [pin_req()]}]));
    assert_eq!(
        address_annotations(&["10.40.0.7".parse().expect("ip")], Some("node-2"), &[]).len(),
        2
    );
}

#[test]
fn a_migrating_record_pins_to_its_new_node() {
    // Node migration moved the record to node-2 with its address; its pod is re-created.
    let verdict = pin(
        &pod(Value::Null),
        Some(&record(&["10.0.0.7"], "Migrating", "41")),
        CONTROLLER,
        &settings(),
    );
    let after = applied(&pod(Value::Null), &verdict);
    assert_eq!(
        after["metadata"]["annotations"]["staticip.jke.jdcloud.com/node"],
        "node-2"
    );
    assert_eq!(terms(&after), json!([{"matchFields": [pin_req()]}]));
}

#[test]
fn a_record_being_deleted_pins_nothing() {
    let p = pod(Value::Null);
    let mut going = record(&["10.40.0.7"], "Bound", "41");
    going.metadata.deletion_timestamp =
        Some(serde_json::from_value(json!("2027-01-15T09:00:00Z")).expect("time"));
    for phase in ["Bound", "Migrating", "Pending"] {
        if let Some(status) = going.status.as_mut() {
            status.phase = serde_json::from_value(json!(phase)).expect("phase");
        }
        match pin(&p, Some(&going), CONTROLLER, &settings()) {
            PinVerdict::Deny(denial) => assert!(
                denial.message.contains("StaticIP web-1 is being deleted"),
                "{phase}: {}",
                denial.message
            ),
            other => panic!("{phase}: a record being deleted gave {other:?}"),
        }
    }
}

#[test]
fn a_record_whose_node_was_deleted_pins_its_addresses_but_no_node() {
    let p = pod(Value::Null);
    let mut unpinned = record(&["10.40.0.7"], "Bound", "41");
    unpinned.spec.node = None;
    let after = applied(&p, &pin(&p, Some(&unpinned), CONTROLLER, &settings()));
    let a = &after["metadata"]["annotations"];
    assert_eq!(a["staticip.jke.jdcloud.com/ip"], "10.40.0.7");
    assert_eq!(a["cni.projectcalico.org/ipAddrs"], r#"["10.40.0.7"]"#);
    assert!(a.get("staticip.jke.jdcloud.com/node").is_none());
    assert_eq!(after["spec"].get("affinity"), None, "scheduled anywhere");
}
