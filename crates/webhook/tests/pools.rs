//! The StaticIPPool webhook's answers, from its pool cache: overlaps refused naming both
//! pools, an unlisted cache refuses everything, updates are not judged against themselves.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ests_api::StaticIPPool;
use ests_core::pin::PinSettings;
use ests_runtime::Answer;
use ests_webhook::{AppState, Metrics, review_pool};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;
use serde_json::{Value, json};

fn pool(name: &str, cidrs: &[&str]) -> Value {
    json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "StaticIPPool",
        "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"cidrs": cidrs},
    })
}

fn review(operation: &str, object: &Value, old: Option<&Value>) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "jke.jdcloud.com", "version": "v1alpha1", "kind": "StaticIPPool"},
            "resource": {"group": "jke.jdcloud.com", "version": "v1alpha1", "resource": "staticippools"},
            "name": object["metadata"]["name"],
            "operation": operation,
            "userInfo": {"username": "admin"},
            "object": object,
            "oldObject": old,
        }
    })
    .to_string()
    .into_bytes()
}

/// (allowed, message)
fn answer(state: &AppState, body: &[u8]) -> (bool, String) {
    let Answer {
        status: code, body, ..
    } = review_pool(state, body);
    assert_eq!(code, 200);
    let v: Value = serde_json::from_slice(&body).expect("json");
    (
        v["response"]["allowed"].as_bool().expect("allowed"),
        v["response"]["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn state() -> (AppState, Writer<StaticIPPool>) {
    let (pools, writer) = reflector::store();
    let state = AppState {
        records: reflector::store().0,
        kept: Default::default(),
        pools,
        pools_listed: Arc::new(AtomicBool::new(false)),
        pin: Arc::new(PinSettings {
            controller_users: vec![],
            cni: vec![],
        }),
        metrics: Metrics::register(&prometheus::Registry::new()).expect("metrics"),
    };
    (state, writer)
}

#[test]
fn overlapping_pools_are_refused_naming_both() {
    let (state, mut writer) = state();
    let blue = pool("blue", &["172.30.0.0/24"]);
    let green = pool("green", &["172.30.0.128/25"]);
    // Not listed yet: nothing is admitted that adds a CIDR; an update adding none (a
    // finalizer's removal) is.
    let (allowed, message) = answer(&state, &review("CREATE", &green, None));
    assert!(!allowed && message.contains("spec.cidrs"), "{message}");
    let mut finalized = blue.clone();
    finalized["metadata"]["finalizers"] = json!(["jke.jdcloud.com/pool-protection"]);
    assert!(answer(&state, &review("UPDATE", &finalized, Some(&blue))).0);
    let grown = pool("blue", &["172.30.0.0/24", "10.1.0.0/24"]);
    assert!(!answer(&state, &review("UPDATE", &grown, Some(&blue))).0);

    writer.apply_watcher_event(&Event::Apply(
        serde_json::from_value(blue.clone()).expect("pool"),
    ));
    state.pools_listed.store(true, Ordering::SeqCst);
    let (allowed, message) = answer(&state, &review("CREATE", &green, None));
    assert!(!allowed);
    assert_eq!(
        message,
        "spec.cidrs: StaticIPPool green: 172.30.0.128/25 overlaps 172.30.0.0/24 of StaticIPPool blue; two pools would hand out the same addresses"
    );
    assert!(
        answer(
            &state,
            &review("CREATE", &pool("red", &["172.30.1.0/24"]), None)
        )
        .0
    );
    // An update of blue is not judged against blue.
    assert!(answer(&state, &review("UPDATE", &grown, Some(&blue))).0);
}
