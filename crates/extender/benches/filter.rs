//! Micro-benchmark: `answer_filter` and `answer_prioritize` on an index of 5,000 nodes and
//! 20,000 bound pods (the server-side cost without HTTP): every node a candidate, then 500
//! candidates (the scheduler's default share of 5,000 nodes) with the caches cold, as they
//! are when the API server, etcd and the scheduler run between two calls.
//!
//! Run with `cargo bench -p ests-extender --bench filter`.

use std::time::{Duration, Instant};

use ests_extender::index::Index;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Times filter and prioritize answers to `body`, `before` running ahead of each round.
fn time_answers(index: &Index, body: &[u8], what: &str, rounds: u64, mut before: impl FnMut(u64)) {
    for (verb, answer) in [
        (
            "filter",
            ests_extender::answer_filter as fn(&Index, &[u8]) -> _,
        ),
        ("prioritize", ests_extender::answer_prioritize),
    ] {
        let mut times = Vec::new();
        for round in 0..rounds {
            before(round);
            let started = Instant::now();
            let status = answer(index, body).status;
            times.push(started.elapsed());
            assert_eq!(status.as_u16(), 200);
        }
        times.sort();
        println!(
            "{verb} {what}: p50 {:.3} ms, p99 {:.3} ms",
            percentile(&times, 0.5).as_secs_f64() * 1e3,
            percentile(&times, 0.99).as_secs_f64() * 1e3
        );
    }
}

fn main() {
    let nodes = 5_000;
    let mut index = Index::default();
    let names: Vec<String> = (0..nodes).map(|i| format!("node-{i:05}")).collect();
    for name in &names {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"}}
        }))
        .expect("node");
        index.apply_node(&node);
    }
    for i in 0..20_000 {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("p-{i}"), "namespace": "bench"},
            "spec": {"nodeName": names[i % nodes],
                     "containers": [{"name": "app", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}
        }))
        .expect("pod");
        index.apply_pod(&pod);
    }
    let request = |names: &[String]| {
        serde_json::to_vec(&json!({
            "Pod": {"metadata": {"name": "probe", "namespace": "bench", "uid": "u"},
                    "spec": {"containers": [{"name": "app", "image": "app:v1",
                                             "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}},
            "NodeNames": names,
        }))
        .expect("body")
    };
    let body = request(&names);
    time_answers(&index, &body, &format!("over {nodes} nodes"), 2_000, |_| {});
    // As the scheduler calls it: 500 candidates (its default share of 5,000 nodes), with
    // the caches cold — between two calls the API server, etcd and the scheduler run.
    let mut other = vec![0u64; 4 << 20];
    time_answers(
        &index,
        &request(&names[1_000..1_500]),
        &format!("over 500 of {nodes} nodes, caches cold"),
        500,
        |round| {
            // 32 MiB of other work's data through the caches.
            for (i, x) in other.iter_mut().enumerate() {
                *x = x.wrapping_add(i as u64 ^ round);
            }
            std::hint::black_box(&other);
        },
    );
    // Where the time goes: parsing the request alone.
    let mut parse = Vec::new();
    for _ in 0..2_000 {
        let started = Instant::now();
        let args: ests_extender::wire::ExtenderArgs = serde_json::from_slice(&body).expect("args");
        parse.push(started.elapsed());
        std::hint::black_box(args);
    }
    parse.sort();
    println!(
        "parsing the request alone: p50 {:.3} ms",
        percentile(&parse, 0.5).as_secs_f64() * 1e3
    );
}
