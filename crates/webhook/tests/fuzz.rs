//! A million hostile requests against both admission endpoints' whole request path (parse,
//! decide, answer): random bytes, and valid reviews with random fields deleted, retyped or
//! cut short. None may panic; every answer is a 400 with a JSON error or a 200 with an
//! AdmissionReview that echoes the request's UID when it had one.
//!
//! `ESTS_FUZZ_INPUTS` and `ESTS_FUZZ_SEED` change the count and the seed.

use std::sync::Arc;

use ests_api::StaticIP;
use ests_core::pin::{CniAnnotation, PinSettings};
use ests_runtime::Answer;
use ests_webhook::{AppState, Metrics, review_pod, review_pod_addresses, review_set};
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use serde_json::{Value, json};

const CONTROLLER: &str = "system:serviceaccount:ests-system:ests-controller";

/// xorshift64*: reproducible, dependency-free randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn pod_review() -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "0df28fbd-5f5f-11e8-bc74-36e6bb280816",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "web-1", "namespace": "ns", "operation": "CREATE",
            "userInfo": {"username": CONTROLLER, "groups": ["system:serviceaccounts"]},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web-1", "namespace": "ns",
                    "labels": {"staticip.jke.jdcloud.com/enabled": "true"},
                    "annotations": {"staticip.jke.jdcloud.com/record-uid": "rec-1",
                                    "staticip.jke.jdcloud.com/record-resource-version": "41",
                                    "cni.projectcalico.org/ipAddrs": "[\"10.40.0.7\",\"fd00:40::7\"]"},
                    "ownerReferences": [{"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet",
                                         "name": "web", "uid": "set-1", "controller": true}]},
                "spec": {"containers": [{"name": "app", "image": "app:v1"}],
                         "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                            {"nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}]}}}}
            },
            "dryRun": false
        }
    })
}

fn set_review() -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "5c6f3c1e-0000-4000-8000-000000000001",
            "kind": {"group": "jke.jdcloud.com", "version": "v1alpha1", "kind": "EnhancedStatefulSet"},
            "resource": {"group": "jke.jdcloud.com", "version": "v1alpha1", "resource": "enhancedstatefulsets"},
            "name": "web", "namespace": "ns", "operation": "UPDATE",
            "userInfo": {"username": "alice"},
            "object": {"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet",
                "metadata": {"name": "web", "namespace": "ns", "annotations": {"staticip.jke.jdcloud.com/enable": "true"}},
                "spec": {"replicas": 3, "selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]},
                         "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"image": "nginx"}]}}}},
            "oldObject": {"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet",
                "metadata": {"name": "web", "namespace": "ns"},
                "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"image": "nginx"}]}}}}
        }
    })
}

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 2 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.next().is_multiple_of(2)),
        2 => json!(rng.next() as i64),
        3 => json!(-(rng.below(1000) as f64) / 7.0),
        4 => {
            let samples = [
                "",
                "CREATE",
                "true",
                "metadata.name",
                "10.0.0.1",
                "fd00::1",
                "~1",
                "/",
                "\u{0}",
                "é",
            ];
            json!(samples[rng.below(samples.len())])
        }
        5 => Value::Array(
            (0..rng.below(3))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut map = serde_json::Map::new();
            for i in 0..rng.below(3) {
                map.insert(format!("k{i}"), random_value(rng, depth + 1));
            }
            Value::Object(map)
        }
    }
}

/// Deletes, replaces or retypes one random node of `value`.
fn mutate(value: &mut Value, rng: &mut Rng) {
    let descend = rng.below(4) != 0;
    match value {
        Value::Object(map) if !map.is_empty() && descend => {
            let key = map
                .keys()
                .nth(rng.below(map.len()))
                .cloned()
                .unwrap_or_default();
            if rng.below(5) == 0 {
                map.remove(&key);
            } else if let Some(child) = map.get_mut(&key) {
                mutate(child, rng);
            }
        }
        Value::Array(items) if !items.is_empty() && descend => {
            let i = rng.below(items.len());
            if let Some(child) = items.get_mut(i) {
                mutate(child, rng);
            }
        }
        // Mostly a value of the same type, so that the review still parses and the
        // decision is reached; sometimes anything at all.
        Value::String(_) if rng.below(3) != 0 => {
            let samples = [
                "", "true", "Bound", "41", "40", "rec-0", "set-0", "node-2", CONTROLLER, "alice",
                "UPDATE", "DELETE",
            ];
            *value = json!(samples[rng.below(samples.len())]);
        }
        _ => *value = random_value(rng, 0),
    }
}

fn check(endpoint: &str, input: &[u8], answer: Answer) {
    let Answer {
        status: code, body, ..
    } = answer;
    let parsed: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{endpoint}: the answer is not JSON ({e}) for {:?}",
            String::from_utf8_lossy(input)
        )
    });
    match code.as_u16() {
        400 => assert!(
            parsed["error"].is_string(),
            "{endpoint}: 400 without a message"
        ),
        200 => {
            assert_eq!(parsed["kind"], "AdmissionReview", "{endpoint}");
            let sent: Value = serde_json::from_slice(input).unwrap_or(Value::Null);
            if let Some(uid) = sent["request"]["uid"].as_str() {
                assert_eq!(
                    parsed["response"]["uid"], uid,
                    "{endpoint}: the UID is echoed"
                );
            }
        }
        other => panic!(
            "{endpoint}: status {other} for {:?}",
            String::from_utf8_lossy(input)
        ),
    }
}

fn hostile_input(rng: &mut Rng, templates: &[Vec<u8>; 2], i: usize) -> Vec<u8> {
    match rng.below(10) {
        // Random bytes.
        0..=1 => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
        // A valid review cut short or with a flipped byte.
        2 => {
            let mut bytes = templates[usize::from(i % 3 == 1)].clone();
            let at = rng.below(bytes.len());
            if rng.below(2) == 0 {
                bytes.truncate(at);
            } else {
                bytes[at] ^= 1 << rng.below(8);
            }
            bytes
        }
        // A valid review with random fields deleted or changed.
        _ => {
            // Pod reviews for both pod endpoints (see the test's loop).
            let mut value = if i % 3 != 1 {
                pod_review()
            } else {
                set_review()
            };
            for _ in 0..=rng.below(2) {
                mutate(&mut value, rng);
            }
            value.to_string().into_bytes()
        }
    }
}

#[test]
fn a_million_hostile_requests_never_panic() {
    let inputs: usize = std::env::var("ESTS_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let seed: u64 = std::env::var("ESTS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x005e_ed0f_e575);
    let (records, mut writer) = reflector::store::<StaticIP>();
    let record: StaticIP = serde_json::from_value(json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "StaticIP",
        "metadata": {"name": "web-1", "namespace": "ns", "uid": "rec-1", "resourceVersion": "41"},
        "spec": {"workload": {"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet", "name": "web", "uid": "set-1"},
                 "podName": "web-1", "ips": [{"ip": "10.40.0.7"}, {"ip": "fd00:40::7"}], "node": "node-2"},
        "status": {"phase": "Bound"}
    }))
    .expect("record");
    writer.apply_watcher_event(&Event::Apply(record.clone()));
    let mut kept = ests_webhook::KeptAddresses::default();
    kept.event(&Event::InitApply(record));
    kept.event(&Event::InitDone);
    let state = AppState {
        records,
        kept: Arc::new(std::sync::RwLock::new(kept)),
        pools: kube::runtime::reflector::store().0,
        pools_listed: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        pin: Arc::new(PinSettings {
            controller_users: vec![CONTROLLER.into()],
            cni: vec![CniAnnotation::calico()],
        }),
        metrics: Metrics::register(&prometheus::Registry::new()).expect("metrics"),
    };
    // The unmutated reviews are answered as expected: a pin and a refusal.
    let pinned = review_pod(&state, pod_review().to_string().as_bytes());
    assert_eq!(pinned.result, "pinned");
    // Without the label, the pod names its record's addresses: refused.
    let mut ordinary = pod_review();
    if let Some(labels) = ordinary["request"]["object"]["metadata"].as_object_mut() {
        labels.remove("labels");
    }
    assert_eq!(
        review_pod_addresses(&state, ordinary.to_string().as_bytes()).result,
        "denied"
    );
    assert_eq!(
        review_set(set_review().to_string().as_bytes()).result,
        "denied"
    );

    let templates = [
        pod_review().to_string().into_bytes(),
        set_review().to_string().into_bytes(),
    ];
    // Two threads, each with its own share and seed: the whole request path is synchronous.
    let threads = 2;
    let shares: Vec<std::collections::BTreeMap<&'static str, usize>> =
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (state, templates) = (&state, &templates);
                    scope.spawn(move || {
                        let mut rng =
                            Rng((seed ^ (t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
                        let mut results: std::collections::BTreeMap<&'static str, usize> =
                            Default::default();
                        for i in (t..inputs).step_by(threads) {
                            let input = hostile_input(&mut rng, templates, i);
                            let answer = match i % 3 {
                                0 => ("mutate-pods", review_pod(state, &input)),
                                1 => ("validate-sets", review_set(&input)),
                                _ => (
                                    "validate-pod-addresses",
                                    review_pod_addresses(state, &input),
                                ),
                            };
                            *results.entry(answer.1.result).or_default() += 1;
                            check(answer.0, &input, answer.1);
                        }
                        results
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("fuzz thread"))
                .collect()
        });
    let mut results: std::collections::BTreeMap<&str, usize> = Default::default();
    for share in shares {
        for (k, v) in share {
            *results.entry(k).or_default() += v;
        }
    }
    println!("{inputs} inputs, seed {seed}: {results:?}");
    assert!(
        results.len() >= 3,
        "the inputs reach several outcomes: {results:?}"
    );
}
