//! What one ADD costs inside the agent, without the socket: the agent's per-request work
//! (the kept-address index built from the StaticIP cache, the decision, the table insert)
//! for an ordinary pod, with 0, 1,000 and 10,000 StaticIP records in the cache and 100
//! attachments on the node; the 0-record case is the baseline in the same run.
//! `cargo bench -p ests-node --bench add`.

use std::time::{Duration, Instant};

use ests_api::StaticIP;
use ests_cni::protocol::{Attach, AttachmentId, Command, PROTOCOL_VERSION, Pod, Request};
use ests_core::cni::CniPod;
use ests_node::handler::{Attachments, Facts, handle, kept_addresses};
use ipnet::IpNet;
use serde_json::json;

const ROUNDS: usize = 2_000;

fn record(i: usize) -> StaticIP {
    serde_json::from_value(json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1",
        "kind": "StaticIP",
        "metadata": {"name": format!("web-{i}"), "namespace": "bench"},
        "spec": {
            "workload": {"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet",
                         "name": "web", "uid": "set-uid"},
            "podName": format!("web-{i}"),
            "ips": [{"ip": format!("10.{}.{}.{}", 100 + i / 65_536, (i / 256) % 256, i % 256)}],
        }
    }))
    .expect("a StaticIP")
}

fn request(verb: &str, i: usize) -> Request {
    let attach = Attach {
        network: "bench".into(),
        id: AttachmentId {
            container_id: format!("c{i}"),
            ifname: "eth0".into(),
        },
        netns: Some("/run/netns/x".into()),
        pod: Some(Pod {
            namespace: "bench".into(),
            name: format!("pod-{i}"),
            uid: format!("u{i}"),
        }),
    };
    Request {
        version: PROTOCOL_VERSION,
        command: if verb == "ADD" {
            Command::Add(attach)
        } else {
            Command::Del(attach)
        },
    }
}

/// p50 and p99 of one ADD (index, decision, insert) with `records` in the cache.
fn add_latency(records: usize) -> (Duration, Duration) {
    let cache: Vec<StaticIP> = (0..records).map(record).collect();
    let ranges: Vec<IpNet> = vec!["10.88.0.0/16".parse().expect("cidr")];
    let mut table = Attachments::new();
    let pod_of = |_: &str, name: &str| {
        let i: usize = name.trim_start_matches("pod-").parse().ok()?;
        Some(CniPod {
            namespace: "bench".into(),
            name: name.into(),
            uid: format!("u{i}"),
            ..CniPod::default()
        })
    };
    let no_record = |_: &str, _: &str| None;
    // One ADD (or DEL) as the agent makes it: the index from the cache, then the decision.
    let answer = |table: &mut Attachments, verb: &str, i: usize| {
        let kept = kept_addresses(&cache);
        let kept_by = |ip: &std::net::IpAddr| kept.get(ip).cloned();
        let facts = Facts {
            node: "n1",
            pod: &pod_of,
            record: &no_record,
            owned_blocks: &[],
            pod_ranges: &ranges,
            kept_by: &kept_by,
            ready: true,
        };
        handle(table, &facts, request(verb, i))
    };
    // 100 pods already attached, as on a busy node.
    for i in 0..100 {
        answer(&mut table, "ADD", 1_000_000 + i);
    }
    let mut times = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        let start = Instant::now();
        let out = answer(&mut table, "ADD", i);
        times.push(start.elapsed());
        assert_eq!(out.result(), "ok", "{:?}", out.response);
        answer(&mut table, "DEL", i);
    }
    times.sort();
    (times[ROUNDS / 2], times[ROUNDS * 99 / 100])
}

fn main() {
    let (base50, base99) = add_latency(0);
    println!("ADD in the agent (no socket), 100 attachments on the node, {ROUNDS} ADDs each:");
    println!("  0 records (baseline): p50 {base50:?}, p99 {base99:?}");
    for records in [1_000, 10_000] {
        let (p50, p99) = add_latency(records);
        println!(
            "  {records} records: p50 {p50:?}, p99 {p99:?} ({:.1}x the baseline's p99; target p99 <= 5 ms)",
            p99.as_secs_f64() / base99.as_secs_f64().max(1e-9)
        );
    }
}
