//! The pod-address webhook's answers, from its index of kept addresses: an ordinary pod
//! naming a kept address in Calico's annotation is refused, a free one admitted; until the
//! record watch has listed, a pod naming any address is refused (retry) and others pass.

use std::sync::{Arc, RwLock};

use ests_api::StaticIP;
use ests_core::pin::{CniAnnotation, PinSettings};
use ests_runtime::Answer;
use ests_webhook::{AppState, KeptAddresses, Metrics, review_pod_addresses};
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};

fn pod(labelled: bool, calico: Option<&str>) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "mine", "namespace": "ns"},
        "spec": {"containers": [{"name": "app", "image": "app:v1"}]}
    });
    if labelled {
        pod["metadata"]["labels"] = json!({"staticip.jke.jdcloud.com/enabled": "true"});
    }
    if let Some(ips) = calico {
        pod["metadata"]["annotations"] = json!({"cni.projectcalico.org/ipAddrs": ips});
    }
    pod
}

fn review(operation: &str, object: &Value, old: Option<&Value>) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "mine", "namespace": "ns",
            "operation": operation,
            "userInfo": {"username": "alice"},
            "object": object,
            "oldObject": old,
        }
    })
    .to_string()
    .into_bytes()
}

/// (allowed, message, metrics result)
fn answer(state: &AppState, body: &[u8]) -> (bool, String, &'static str) {
    let Answer {
        status: code,
        body,
        result,
    } = review_pod_addresses(state, body);
    assert_eq!(code, 200);
    let v: Value = serde_json::from_slice(&body).expect("json");
    (
        v["response"]["allowed"].as_bool().expect("allowed"),
        v["response"]["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        result,
    )
}

fn state(listed: bool) -> AppState {
    let mut kept = KeptAddresses::default();
    let record: StaticIP = serde_json::from_value(json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "StaticIP",
        "metadata": {"name": "db-0", "namespace": "ns", "uid": "rec-1"},
        "spec": {"workload": {"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet", "name": "db", "uid": "set-1"},
                 "podName": "db-0", "ips": [{"ip": "10.0.0.5"}], "node": "node-2"}
    }))
    .expect("record");
    kept.event(&Event::Init);
    kept.event(&Event::InitApply(record));
    if listed {
        kept.event(&Event::InitDone);
    }
    AppState {
        records: reflector::store().0,
        kept: Arc::new(RwLock::new(kept)),
        pools: reflector::store().0,
        pools_listed: Arc::new(Default::default()),
        pin: Arc::new(PinSettings {
            controller_users: vec![],
            cni: vec![CniAnnotation::calico()],
        }),
        metrics: Metrics::register(&prometheus::Registry::new()).expect("metrics"),
    }
}

#[test]
fn an_ordinary_pod_naming_a_kept_address_is_refused() {
    let state = state(true);
    let (allowed, message, result) = answer(
        &state,
        &review("CREATE", &pod(false, Some(r#"["10.0.0.5"]"#)), None),
    );
    assert!(!allowed);
    assert_eq!(result, "denied");
    assert_eq!(
        message,
        "annotation cni.projectcalico.org/ipAddrs names 10.0.0.5, an address kept for a static-IP identity; only pods created by the ests controller may use it"
    );
    for (what, body) in [
        (
            "a free address",
            review("CREATE", &pod(false, Some(r#"["10.0.0.6"]"#)), None),
        ),
        ("no annotation", review("CREATE", &pod(false, None), None)),
        (
            "a static-IP pod (the pin's to judge)",
            review("CREATE", &pod(true, Some(r#"["10.0.0.5"]"#)), None),
        ),
        (
            "an update that leaves the annotation as it was",
            review(
                "UPDATE",
                &pod(false, Some(r#"["10.0.0.5"]"#)),
                Some(&pod(true, Some(r#"["10.0.0.5"]"#))),
            ),
        ),
        (
            "a delete",
            review(
                "DELETE",
                &Value::Null,
                Some(&pod(false, Some(r#"["10.0.0.5"]"#))),
            ),
        ),
    ] {
        let (allowed, message, _) = answer(&state, &body);
        assert!(allowed, "{what}: {message}");
    }
    let (allowed, _, _) = answer(
        &state,
        &review(
            "UPDATE",
            &pod(false, Some(r#"["10.0.0.5"]"#)),
            Some(&pod(false, Some(r#"["10.0.0.6"]"#))),
        ),
    );
    assert!(!allowed, "an update to a kept address");
}

#[test]
fn before_the_records_are_listed_only_pods_naming_addresses_wait() {
    let state = state(false);
    let (allowed, message, _) = answer(
        &state,
        &review("CREATE", &pod(false, Some(r#"["10.0.0.6"]"#)), None),
    );
    assert!(!allowed);
    assert!(message.contains("retry in a moment"), "{message}");
    let (allowed, _, _) = answer(&state, &review("CREATE", &pod(false, None), None));
    assert!(allowed);
}

#[test]
fn malformed_requests_get_a_400() {
    let Answer {
        status: code,
        result,
        ..
    } = review_pod_addresses(&state(true), b"{\"kind\": 1}");
    assert_eq!((code.as_u16(), result), (400, "malformed"));
}
