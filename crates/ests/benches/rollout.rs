//! Benchmark: a 1,000-replica rollout by ests and by an apps/v1 StatefulSet under
//! kube-controller-manager, on the same control plane and KWOK nodes, in one run.
//!
//! Run with `cargo bench -p ests --bench rollout` (optionally `-- --replicas 1000`). It prints
//! each rollout's time, the ratios, the API writes per replaced pod, and the watches and
//! memory (RSS) of the ests controller (set controller, StaticIP manager and node migration
//! in one process, as `ests controller` runs by default).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use ests_testenv::nodes::{NodeSpec, create_nodes};
use ests_testenv::resources::{
    apply_value, bind_cluster_role, create_namespace, install_crds, install_policies,
};
use ests_testenv::{ControlPlane, wait_for};
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

const CONTROLLER_USER: &str = "system:serviceaccount:ests-system:ests-controller";

#[derive(Clone, Copy, Debug)]
enum Kind {
    Ests,
    StatefulSet,
}

fn manifest(kind: Kind, name: &str, replicas: i32, max_unavailable: i32) -> Value {
    let (api_version, kind_name) = match kind {
        Kind::Ests => ("jke.jdcloud.com/v1alpha1", "EnhancedStatefulSet"),
        Kind::StatefulSet => ("apps/v1", "StatefulSet"),
    };
    json!({
        "apiVersion": api_version,
        "kind": kind_name,
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": name}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": max_unavailable, "partition": 0}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "app:v1", "resources": {"requests": {"cpu": "1m"}}}]}
            }
        }
    })
}

fn resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Ests => ApiResource::erase::<ests_api::EnhancedStatefulSet>(&()),
        Kind::StatefulSet => ApiResource::erase::<k8s_openapi::api::apps::v1::StatefulSet>(&()),
    }
}

fn status_i64(o: &DynamicObject, field: &str) -> i64 {
    o.data["status"][field].as_i64().unwrap_or(0)
}

/// Mutating API requests by resource (and subresource), from kube-apiserver's metrics.
async fn writes(client: &Client) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let get = |key: &str| {
            labels
                .split(&format!("{key}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("")
                .to_string()
        };
        let verb = get("verb");
        if !matches!(verb.as_str(), "POST" | "PUT" | "PATCH" | "DELETE" | "APPLY") {
            continue;
        }
        let sub = get("subresource");
        let key = if sub.is_empty() {
            get("resource")
        } else {
            format!("{}/{sub}", get("resource"))
        };
        *out.entry(key).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    Ok(out)
}

/// Watches open on kube-apiserver, by resource, from its `apiserver_longrunning_requests`
/// gauge (every client's; the difference across starting one process is that process's).
async fn open_watches(client: &Client) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| {
        l.starts_with("apiserver_longrunning_requests{") && l.contains("verb=\"WATCH\"")
    }) {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let resource = labels
            .split("resource=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("")
            .to_string();
        *out.entry(resource).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    Ok(out)
}

/// A process's resident memory now and at its peak, in MiB, from `/proc/<pid>/status`.
fn memory_mib(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?
            .parse()
            .with_context(|| format!("{name} of pid {pid}"))?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

struct Outcome {
    seconds: f64,
    finished: bool,
    writes: BTreeMap<String, f64>,
}

async fn rollout(
    client: &Client,
    kind: Kind,
    name: &str,
    replicas: i32,
    max_unavailable: i32,
) -> anyhow::Result<Outcome> {
    let ns = "bench";
    let set = manifest(kind, name, replicas, max_unavailable);
    apply_value(client, &set, Some(ns), false).await?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource(kind));
    let long = Duration::from_secs(900);
    let settled = |want_image_revision: Option<String>| {
        let api = api.clone();
        async move {
            let o = api.get(name).await?;
            let ready = status_i64(&o, "readyReplicas") == i64::from(replicas);
            let updated = status_i64(&o, "updatedReplicas") == i64::from(replicas);
            let revision = o.data["status"]["updateRevision"]
                .as_str()
                .map(str::to_string);
            let moved = want_image_revision
                .as_ref()
                .is_none_or(|old| revision.as_ref() != Some(old));
            anyhow::Ok(
                (ready && updated && moved && status_i64(&o, "replicas") == i64::from(replicas))
                    .then_some(revision),
            )
        }
    };
    let first = wait_for(format!("{name} ready"), long, || settled(None)).await?;
    let before = writes(client).await?;
    let started = Instant::now();
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "app:v2"}]}}}})),
    )
    .await?;
    // Upstream can churn for a long time (it re-deletes pods it just created); give up after
    // `long` and report it rather than hang the run.
    let finished = wait_for(format!("{name} rolled out"), long, || {
        settled(first.clone())
    })
    .await;
    let seconds = started.elapsed().as_secs_f64();
    if let Err(e) = &finished {
        println!("{name}: {e}");
    }
    let after = writes(client).await?;
    let writes = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    api.delete(name, &Default::default()).await?;
    Ok(Outcome {
        seconds,
        finished: finished.is_ok(),
        writes,
    })
}

fn per_pod(outcome: &Outcome, replicas: i32) -> String {
    let total: f64 = outcome.writes.values().sum();
    let detail: Vec<String> = outcome
        .writes
        .iter()
        .map(|(k, v)| format!("{k}={:.2}", v / f64::from(replicas)))
        .collect();
    format!("{:.2} ({})", total / f64::from(replicas), detail.join(", "))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ests_testenv::install_crypto_provider();
    let args: Vec<String> = std::env::args().collect();
    let replicas: i32 = args
        .iter()
        .position(|a| a == "--replicas")
        .and_then(|i| args.get(i + 1))
        .map_or(Ok(1000), |v| v.parse())
        .context("--replicas takes a number")?;

    let plane = ControlPlane::start().await?;
    println!(
        "control plane started in {:.1}s",
        plane.start_duration.as_secs_f64()
    );
    let client = plane.client().await?;
    install_crds(&client).await?;
    install_policies(&client, ests_api::policy::DEFAULT_NAMESPACE).await?;
    let pods_per_node = 600;
    let nodes_needed = (replicas * 2 / pods_per_node + 1).max(2);
    let nodes: Vec<_> = (0..nodes_needed)
        .map(|i| {
            NodeSpec::new(format!("bench-{i}")).capacity("1000", "4Ti", &pods_per_node.to_string())
        })
        .collect();
    create_nodes(&client, &nodes).await?;
    create_namespace(&client, "bench").await?;
    bind_cluster_role(
        &client,
        "ests-controller-bench",
        "cluster-admin",
        CONTROLLER_USER,
    )
    .await?;
    let (kubeconfig, _) = plane
        .client_as(
            CONTROLLER_USER,
            &[
                "system:serviceaccounts",
                "system:serviceaccounts:ests-system",
            ],
        )
        .await?;
    let kubeconfig = kubeconfig.display().to_string();
    let watches_before = open_watches(&client).await?;
    plane.run_process(
        "ests-controller",
        std::path::Path::new(env!("CARGO_BIN_EXE_ests")),
        &[
            "controller".into(),
            "--leader-election=false".into(),
            "--metrics-addr=127.0.0.1:0".into(),
        ],
        &[("KUBECONFIG", kubeconfig.as_str()), ("ESTS_LOG", "warn")],
    )?;

    let pid = plane
        .pid("ests-controller")
        .context("the ests controller is not running")?;
    // The controller's watches are open once it has listed; give it time to start them all
    // (the StaticIP manager and migration start theirs beside the set controller's).
    let mut controller_watches = BTreeMap::new();
    let mut unchanged = 0;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now: BTreeMap<String, f64> = open_watches(&client)
            .await?
            .iter()
            .map(|(k, v)| (k.clone(), v - watches_before.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, v)| *v > 0.0)
            .collect();
        unchanged = if now == controller_watches {
            unchanged + 1
        } else {
            0
        };
        controller_watches = now;
        if unchanged >= 5 && !controller_watches.is_empty() {
            break;
        }
    }
    let (rss, _) = memory_mib(pid)?;
    println!(
        "ests controller: {} watches open ({}); RSS {rss:.1} MiB before any set",
        controller_watches.values().sum::<f64>(),
        controller_watches
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut results = BTreeMap::new();
    for (kind, max_unavailable, label) in [
        (Kind::Ests, 100, "ests maxUnavailable=100"),
        (Kind::StatefulSet, 100, "StatefulSet maxUnavailable=100"),
        (Kind::Ests, 1, "ests maxUnavailable=1"),
        (Kind::StatefulSet, 1, "StatefulSet maxUnavailable=1"),
    ] {
        let name = format!(
            "{}-{max_unavailable}",
            if matches!(kind, Kind::Ests) {
                "ests"
            } else {
                "sts"
            }
        );
        let outcome = rollout(&client, kind, &name, replicas, max_unavailable).await?;
        let verdict = if outcome.finished {
            "rolled out in"
        } else {
            "had NOT rolled out after"
        };
        println!(
            "{label}: {replicas} pods {verdict} {:.1}s; API writes per replaced pod {}",
            outcome.seconds,
            per_pod(&outcome, replicas)
        );
        results.insert(label, outcome.seconds);
        if matches!(kind, Kind::Ests) {
            let (rss, peak) = memory_mib(pid)?;
            println!("  ests controller RSS {rss:.1} MiB, peak so far {peak:.1} MiB");
        }
    }
    let ratio = |a: &str, b: &str| results[b] / results[a];
    println!(
        "speed-up, StatefulSet time / ests time (higher is better for ests; a rollout that did not finish counts its timeout, so the ratio is a lower bound):"
    );
    println!(
        "  maxUnavailable=1:   {:.2}",
        ratio("ests maxUnavailable=1", "StatefulSet maxUnavailable=1")
    );
    println!(
        "  maxUnavailable=100: {:.2}",
        ratio("ests maxUnavailable=100", "StatefulSet maxUnavailable=100")
    );
    println!(
        "  ests at 100 vs StatefulSet at 1: {:.2}",
        ratio("ests maxUnavailable=100", "StatefulSet maxUnavailable=1")
    );
    plane.stop();
    Ok(())
}
