//! Benchmark: ests's CNI on the real node against the reference IPAM, in one run.
//!
//! Run with `cargo bench -p ests --bench cni` (optionally `-- --pods 50 --rounds 2`); it
//! needs the real node (root, the harness's prerequisites) and `ests-cni` built beside the
//! benchmark's `ests` (`cargo build --release -p ests-cni`). It prints:
//!
//! 1. time for N ordinary pods to become Ready with the reference bridge + host-local and
//!    with bridge + ests-cni (the node agent answering), alternating rounds, and the ratio;
//! 2. ADD latency in the agent (p50/p99 from its histogram, bucket upper bounds);
//! 3. for static-IP pods re-created one at a time: the agent's API requests (reads, writes)
//!    per re-created pod, and the time from the pod being seen Ready to its first answer on
//!    its address.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ests_testenv::real_node::images::ANSWER_PORT;
use ests_testenv::real_node::{RealNode, wait_answer};
use ests_testenv::wait_for;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use support::cni::{
    MainPlugin, agent_api_requests, agent_metrics, conflist, install_network, wait_network,
};
use support::real_node::{
    TIMEOUT, answer_set, counter_sum, ests_cni_binary, ordinary_pod, ready_pod, real_namespace,
    recreated,
};
use support::{apply, real_node_env, start_webhook, wait_status};

const NAMESPACE: &str = "bench-cni";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Creates `count` ordinary pods and returns how long until all are Ready; then deletes
/// them and waits until they are gone, their sandboxes too.
async fn burst(
    node: &RealNode,
    pods: &Api<Pod>,
    round: usize,
    count: usize,
) -> anyhow::Result<Duration> {
    let idle = node.task_count().await?;
    let names: Vec<String> = (0..count).map(|i| format!("r{round}-{i}")).collect();
    let started = Instant::now();
    for name in &names {
        pods.create(&PostParams::default(), &ordinary_pod(name))
            .await?;
    }
    wait_for(
        format!("{count} pods Ready"),
        Duration::from_secs(600),
        || async {
            let listed = pods.list(&ListParams::default()).await?;
            let ready = listed
                .items
                .iter()
                .filter(|p| ests_testenv::wait::pod_ready(p))
                .count();
            Ok((ready >= count).then_some(()))
        },
    )
    .await?;
    let took = started.elapsed();
    for name in &names {
        pods.delete(name, &DeleteParams::default().grace_period(0))
            .await?;
    }
    wait_for("the burst gone", Duration::from_secs(300), || async {
        Ok(pods
            .list(&ListParams::default())
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await?;
    wait_for(
        "the burst's sandboxes gone",
        Duration::from_secs(300),
        || async { Ok((node.task_count().await? <= idle).then_some(())) },
    )
    .await?;
    Ok(took)
}

/// The `q` quantile of a Prometheus histogram as the upper bound of its bucket.
fn quantile(metrics: &str, name: &str, labels: &str, q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")) && l.contains(labels))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, l.rsplit_once(' ')?.1.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    buckets
        .into_iter()
        .find(|(_, count)| *count >= q * total)
        .map(|(bound, _)| bound)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count = arg("--pods", 50);
    let rounds = arg("--rounds", 2);
    let Some((env, node)) = real_node_env().await? else {
        println!("cni bench: the real node is turned off (ESTS_REAL_NODE=off); nothing measured");
        return Ok(());
    };
    start_webhook(&env).await?;
    real_namespace(&env, NAMESPACE).await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), NAMESPACE);

    // 1. Alternating rounds: host-local, then ests-cni, `rounds` times.
    let (mut host_local, mut ests) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        node.uninstall_cni()?;
        wait_network(&env, false).await?;
        host_local.push(burst(node, &pods, round * 2, count).await?);
        if round == 0 {
            install_network(&env, node, MainPlugin::Bridge).await?;
        } else {
            node.install_cni(&ests_cni_binary()?, &conflist(node, MainPlugin::Bridge))?;
            wait_network(&env, true).await?;
        }
        ests.push(burst(node, &pods, round * 2 + 1, count).await?);
    }
    let total = |d: &[Duration]| d.iter().map(Duration::as_secs_f64).sum::<f64>();
    for (i, (h, e)) in host_local.iter().zip(&ests).enumerate() {
        println!(
            "round {i}: {count} pods Ready: bridge + host-local {:.1} s, bridge + ests-cni {:.1} s",
            h.as_secs_f64(),
            e.as_secs_f64()
        );
    }
    println!(
        "{count} pods Ready, ests-cni / host-local over {rounds} rounds: {:.2}x (target <= 1.1x)",
        total(&ests) / total(&host_local)
    );

    // 2. ADD latency in the agent over every ADD so far.
    let metrics = agent_metrics().await?;
    let name = "ests_node_cni_request_duration_seconds";
    let labels = "command=\"ADD\"";
    let ms = |q| quantile(&metrics, name, labels, q).map(|s| s * 1000.0);
    let adds = counter_sum(
        &metrics,
        "ests_node_cni_request_duration_seconds_count",
        &[labels],
    );
    let retries = counter_sum(&metrics, "ests_node_cni_add_retries_total", &[]);
    println!(
        "ADD latency in the agent: p50 <= {:?} ms, p99 <= {:?} ms (bucket bounds; target p99 <= 5 ms); {adds} ADDs, {retries} decisions taken again while the caches caught up",
        ms(0.5),
        ms(0.99)
    );

    // 3. Static-IP pods re-created one at a time.
    let mut set = answer_set("keep", 5);
    set["metadata"]["annotations"] = json!({
        ests_api::keys::STATIC_IP_ENABLE: "true",
        ests_api::keys::STATIC_IP_RELEASE_POLICY: "WhenDeleted",
    });
    apply(&env, NAMESPACE, &set).await?;
    let sets = real_namespace(&env, NAMESPACE).await?;
    wait_status(&sets, "keep", "5 ready", TIMEOUT, |s| s.ready_replicas == 5).await?;
    let (reads_before, writes_before) = agent_api_requests().await?;
    let mut reachable = Vec::new();
    let recreations = 10;
    for i in 0..recreations {
        let name = format!("keep-{}", i % 5);
        let (old_uid, ip): (String, IpAddr) =
            wait_for("the pod Ready", TIMEOUT, || ready_pod(&pods, &name)).await?;
        let (uid, _) = recreated(&pods, &name, TIMEOUT).await?;
        anyhow::ensure!(uid != old_uid, "{name} was not re-created");
        let ready = Instant::now();
        let answer = wait_answer(ip, ANSWER_PORT, TIMEOUT).await?;
        reachable.push(ready.elapsed());
        anyhow::ensure!(answer == format!("{name} v1"), "{ip} answered {answer}");
    }
    let (reads, writes) = agent_api_requests().await?;
    reachable.sort();
    println!(
        "static-IP pod re-created ({recreations} times): agent API reads {:.1} / writes {:.1} per pod (target 0 writes); Ready to reachable p50 {:?}, max {:?} (target <= 1 s)",
        (reads - reads_before) / recreations as f64,
        (writes - writes_before) / recreations as f64,
        reachable[reachable.len() / 2],
        reachable[reachable.len() - 1]
    );
    Ok(())
}
