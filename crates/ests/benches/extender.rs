//! Benchmark: the scheduler extender's cost to the cluster's scheduling, on the real
//! control plane, in one run.
//!
//! 1. 5,000 nodes (ESTS_BENCH_NODES); 10,000 pods (ESTS_BENCH_PODS) are created while
//!    kube-scheduler is stopped, then it starts without the extender; again with a fresh
//!    10,000 and the extender configured (filter + prioritize for every pod). Throughput is
//!    pods bound per second between the first and the last binding (scheduler start-up left
//!    out); the ratio with/without is the figure (target >= 0.8).
//! 2. The extender's CPU-seconds per scheduled pod (its process's user+system time over the
//!    second run, watch handling included).
//! 3. Filter latency with every node a candidate: the extender's own histogram over 2,000
//!    direct requests naming all 5,000 nodes, the round trip the client saw, and
//!    `answer_filter` timed in-process on an index of the same objects (target p99 <= 1 ms).
//! 4. Resident memory with 10,000 and 50,000 bound pods cached (bytes per pod).
//!
//! Each run also prints where the machine's CPU went per pod (kube-scheduler, kube-apiserver,
//! etcd), the API requests answered, and the scheduler's own split of its scheduling
//! algorithm time between its in-tree plugins and the extender calls — on two cores every
//! process competes with every other, and these say which one a change of ratio came from.
//!
//! The nodes are not KWOK-managed (no heartbeats: 5,000 node leases would load the two
//! cores more than scheduling does), so the pods tolerate every taint and stay Pending
//! once bound: binding is what is measured. Each run starts once the API server has seen
//! no write for three seconds, so neither pays for what came before it.
//!
//! Run with `cargo bench -p ests --bench extender` (ESTS_BENCH_FILTER_ONLY=1: the extender
//! entry without prioritize, one call per pod instead of two).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ests_extender::index::Index;
use ests_testenv::resources::{create_namespace, install_crds};
use ests_testenv::{ControlPlane, wait_for};
use futures::{StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::Mutex;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn node(name: &str) -> Value {
    let resources = json!({"cpu": "32", "memory": "256Gi", "pods": "110"});
    // Created as the node lifecycle controller leaves a node without heartbeats when every
    // node is: Ready Unknown and the unreachable NoSchedule taint. With all nodes not ready
    // it enters "master disruption mode" and strips NoExecute taints node by node (a GET and
    // a PATCH each, at its own QPS), which would load the runs unevenly; so there is none.
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
        "spec": {"taints": [
            {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"}
        ]},
        "status": {"allocatable": resources, "capacity": resources,
                   "conditions": [{"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown"}]}
    })
}

fn pod(name: &str, node: Option<&str>) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"nodeName": node,
                 "containers": [{"name": "app", "image": "app:v1",
                                 "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}],
                 "tolerations": [{"operator": "Exists"}]}
    })
}

/// Creates `count` objects, 64 at a time; how long it took.
async fn create_all<F, Fut>(what: &str, count: usize, create: F) -> anyhow::Result<Duration>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    futures::stream::iter(0..count)
        .map(create)
        .buffer_unordered(64)
        .try_collect::<()>()
        .await
        .with_context(|| format!("creating {what}"))?;
    Ok(started.elapsed())
}

/// User + system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11)
        .zip(fields.get(12))
        .and_then(|(u, s)| Some(u.parse::<f64>().ok()? + s.parse::<f64>().ok()?))
        .context("reading utime and stime")?;
    Ok(ticks / clock_ticks())
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Resident set size of a process, in bytes.
fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .context("no VmRSS")
}

/// A plain HTTP/1.1 connection to the extender's servers.
struct Http(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl Http {
    async fn connect(port: u16) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let (send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Self(send))
    }

    async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(u16, Bytes)> {
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .body(Full::new(body))?;
        self.0.ready().await?;
        let response = self.0.send_request(request).await?;
        let status = response.status().as_u16();
        Ok((status, response.into_body().collect().await?.to_bytes()))
    }
}

/// The extender's filter histogram: (upper bound, cumulative count) per bucket.
async fn filter_buckets(metrics_port: u16) -> anyhow::Result<Vec<(f64, u64)>> {
    let mut http = Http::connect(metrics_port).await?;
    let (_, body) = http.call("GET", "/metrics", Bytes::new()).await?;
    let text = String::from_utf8_lossy(&body).to_string();
    let mut buckets: Vec<(f64, u64)> = text
        .lines()
        .filter(|l| {
            l.starts_with("ests_extender_request_duration_seconds_bucket")
                && l.contains("verb=\"filter\"")
        })
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(buckets)
}

/// The extender's time answering, summed over its filter and prioritize calls: (seconds,
/// calls).
async fn answer_time(metrics_port: u16) -> anyhow::Result<(f64, f64)> {
    let mut http = Http::connect(metrics_port).await?;
    let (_, body) = http.call("GET", "/metrics", Bytes::new()).await?;
    let text = String::from_utf8_lossy(&body).to_string();
    let sum = |suffix: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with(&format!("ests_extender_request_duration_seconds_{suffix}"))
                    && (l.contains("verb=\"filter\"") || l.contains("verb=\"prioritize\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Ok((sum("sum"), sum("count")))
}

/// The bucket bound under which 99% of the requests between two readings fall.
fn p99_bucket(before: &[(f64, u64)], after: &[(f64, u64)]) -> f64 {
    let delta: Vec<(f64, u64)> = after
        .iter()
        .map(|(le, n)| {
            let was = before.iter().find(|(b, _)| b == le).map_or(0, |(_, c)| *c);
            (*le, n - was)
        })
        .collect();
    let total = delta.last().map_or(0, |(_, n)| *n);
    delta
        .iter()
        .find(|(_, n)| *n as f64 >= 0.99 * total as f64)
        .map_or(f64::INFINITY, |(le, _)| *le)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// The API server's request counters, by `verb resource/subresource`.
async fn api_requests(client: &Client) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    let mut counts = std::collections::BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let label = |name: &str| {
            line.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default()
                .to_string()
        };
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let sub = label("subresource");
        let key = format!(
            "{} {}{}",
            label("verb"),
            label("resource"),
            if sub.is_empty() {
                String::new()
            } else {
                format!("/{sub}")
            }
        );
        *counts.entry(key).or_insert(0.0) += value;
    }
    Ok(counts)
}

/// Prints the requests the API server answered between two readings, most frequent first.
fn print_api_requests(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) {
    let mut delta: Vec<(&String, f64)> = after
        .iter()
        .map(|(k, v)| (k, v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d >= 100.0)
        .collect();
    delta.sort_by(|a, b| b.1.total_cmp(&a.1));
    let shown: Vec<String> = delta.iter().map(|(k, d)| format!("{k} {d:.0}")).collect();
    println!("  API requests: {}", shown.join(", "));
}

/// Where the scheduler's time per pod went, from its own metrics: the whole scheduling
/// algorithm, and the in-tree plugins' part of it; the rest is the extender calls (encoding,
/// the round trip, decoding).
async fn scheduler_time(plane: &ControlPlane) -> anyhow::Result<String> {
    let text = plane
        .scheduler_client()
        .await?
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    let sum = |prefix: &str, filter: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let pods = sum("scheduler_scheduling_algorithm_duration_seconds_count", "");
    anyhow::ensure!(pods > 0.0, "the scheduler reports no scheduling");
    let algorithm = sum("scheduler_scheduling_algorithm_duration_seconds_sum", "");
    let in_tree: f64 = ["PreFilter", "Filter", "PreScore", "Score"]
        .iter()
        .map(|point| {
            sum(
                "scheduler_framework_extension_point_duration_seconds_sum",
                &format!("extension_point=\"{point}\""),
            )
        })
        .sum();
    let per_pod = |s: f64| s * 1e3 / pods;
    Ok(format!(
        "scheduling algorithm {:.2} ms per pod, of which in-tree plugins {:.2} ms, the rest (extender calls) {:.2} ms",
        per_pod(algorithm),
        per_pod(in_tree),
        per_pod(algorithm - in_tree)
    ))
}

/// Waits until the API server has answered no write for three seconds, so a run does not
/// pay for the tail of what came before it (node creation, the previous run's events).
async fn wait_quiet(client: &Client) -> anyhow::Result<()> {
    let writes = |counts: &std::collections::BTreeMap<String, f64>| -> f64 {
        counts
            .iter()
            .filter(|(k, _)| {
                !k.starts_with("GET ") && !k.starts_with("LIST ") && !k.starts_with("WATCH ")
            })
            .map(|(_, v)| v)
            .sum()
    };
    let mut last = writes(&api_requests(client).await?);
    let mut quiet_since = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(600);
    while quiet_since.elapsed() < Duration::from_secs(3) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the API server kept writing for 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = writes(&api_requests(client).await?);
        if now - last > 2.0 {
            quiet_since = Instant::now();
        }
        last = now;
    }
    Ok(())
}

/// Pods of `ns` created while the scheduler is stopped, then scheduled: pods bound per
/// second between the first and the last binding, and the extender's CPU seconds meanwhile.
async fn schedule_run(
    plane: &ControlPlane,
    client: &Client,
    ns: &str,
    pods: usize,
    extenders: Option<&str>,
    extender_pid: u32,
) -> anyhow::Result<(f64, f64)> {
    plane.stop_process("kube-scheduler")?;
    create_namespace(client, ns).await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let took = create_all("pods", pods, |i| {
        let api = api.clone();
        async move {
            let pod: Pod = serde_json::from_value(pod(&format!("p-{i}"), None))?;
            api.create(&PostParams::default(), &pod).await?;
            Ok(())
        }
    })
    .await?;
    println!(
        "  created {pods} pending pods in {:.1} s",
        took.as_secs_f64()
    );
    wait_quiet(client).await?;

    // Count bindings from a watch started before the scheduler.
    let bound = Arc::new(AtomicUsize::new(0));
    let times: Arc<Mutex<(Option<Instant>, Option<Instant>)>> = Arc::new(Mutex::new((None, None)));
    let watch = {
        let (api, bound, times) = (api.clone(), bound.clone(), times.clone());
        tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            let mut stream = watcher::watcher(api, watcher::Config::default()).boxed();
            while let Some(Ok(event)) = stream.next().await {
                let pods = match event {
                    Event::Apply(p) | Event::InitApply(p) => vec![p],
                    _ => vec![],
                };
                for p in pods {
                    if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
                        && seen.insert(p.name_any())
                    {
                        let now = Instant::now();
                        let mut t = times.lock().await;
                        t.0.get_or_insert(now);
                        t.1 = Some(now);
                        bound.store(seen.len(), Ordering::SeqCst);
                    }
                }
            }
        })
    };
    let cpu_before = cpu_seconds(extender_pid)?;
    plane.start_scheduler_with(extenders).await?;
    // Where the rest of the machine's CPU goes, so a change of ratio can be traced to a process.
    let others: Vec<(&str, u32, f64)> = ["kube-scheduler", "kube-apiserver", "etcd"]
        .into_iter()
        .filter_map(|name| {
            let pid = plane.pid(name)?;
            Some((name, pid, cpu_seconds(pid).ok()?))
        })
        .collect();
    let requests_before = api_requests(client).await?;
    wait_for(
        format!("{pods} pods bound in {ns}"),
        Duration::from_secs(3600),
        || async { Ok((bound.load(Ordering::SeqCst) >= pods).then_some(())) },
    )
    .await?;
    let cpu = cpu_seconds(extender_pid)? - cpu_before;
    print_api_requests(&requests_before, &api_requests(client).await?);
    println!("  kube-scheduler: {}", scheduler_time(plane).await?);
    for (name, pid, before) in others {
        let used = cpu_seconds(pid)? - before;
        println!(
            "  {name}: {:.2} ms CPU per pod ({used:.1} s)",
            used * 1e3 / pods as f64
        );
    }
    watch.abort();
    let (first, last) = *times.lock().await;
    let span = last
        .zip(first)
        .map(|(l, f)| l - f)
        .context("no binding seen")?;
    Ok(((pods - 1) as f64 / span.as_secs_f64(), cpu))
}

async fn wait_cached_pods(metrics_port: u16, want: usize) -> anyhow::Result<()> {
    wait_for(
        format!("the extender caches {want} pods"),
        Duration::from_secs(1800),
        || async {
            let mut http = Http::connect(metrics_port).await?;
            let (_, body) = http.call("GET", "/metrics", Bytes::new()).await?;
            let text = String::from_utf8_lossy(&body).to_string();
            let cached = text
                .lines()
                .find(|l| l.starts_with("ests_extender_cached_objects{kind=\"pods\"}"))
                .and_then(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
                .unwrap_or(0);
            Ok((cached >= want).then_some(()))
        },
    )
    .await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ests_testenv::install_crypto_provider();
    let nodes = env_or("ESTS_BENCH_NODES", 5_000);
    let pods = env_or("ESTS_BENCH_PODS", 10_000);
    let memory_pods = env_or("ESTS_BENCH_MEMORY_PODS", 50_000);
    let plane = ControlPlane::start()
        .await
        .context("starting the control plane")?;
    let client = plane.client().await?;
    install_crds(&client).await?;

    let node_api: Api<Node> = Api::all(client.clone());
    let names: Vec<String> = (0..nodes).map(|i| format!("node-{i:05}")).collect();
    let took = create_all("nodes", nodes, |i| {
        let (api, name) = (node_api.clone(), names[i].clone());
        async move {
            let node: Node = serde_json::from_value(node(&name))?;
            api.create(&PostParams::default(), &node).await?;
            Ok(())
        }
    })
    .await?;
    println!("{nodes} nodes created in {:.1} s", took.as_secs_f64());

    // The extender, as a process, authenticated as an admin.
    let free = || -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let (port, metrics_port) = (free()?, free()?);
    let (kubeconfig, _) = plane
        .client_as("bench-extender", &["system:masters"])
        .await?;
    let kubeconfig = kubeconfig.display().to_string();
    plane.run_process(
        "ests-extender",
        Path::new(env!("CARGO_BIN_EXE_ests")),
        &[
            "extender".into(),
            format!("--listen=127.0.0.1:{port}"),
            format!("--metrics-addr=127.0.0.1:{metrics_port}"),
        ],
        &[("KUBECONFIG", kubeconfig.as_str()), ("ESTS_LOG", "warn")],
    )?;
    wait_for(
        "the extender is ready",
        Duration::from_secs(300),
        || async {
            let Ok(mut http) = Http::connect(metrics_port).await else {
                return Ok(None);
            };
            let (status, _) = http.call("GET", "/readyz", Bytes::new()).await?;
            Ok((status == 200).then_some(()))
        },
    )
    .await?;
    let pid = plane.pid("ests-extender").context("the extender's pid")?;
    let rss_nodes = rss(pid)?;

    // What the machine spends with nothing to schedule: the floor under both runs.
    wait_quiet(&client).await?;
    let idle: Vec<(&str, u32, f64)> = [
        "kube-apiserver",
        "etcd",
        "kube-controller-manager",
        "kube-scheduler",
        "ests-extender",
    ]
    .into_iter()
    .filter_map(|name| {
        let pid = plane.pid(name)?;
        Some((name, pid, cpu_seconds(pid).ok()?))
    })
    .collect();
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await;
    let shown: Vec<String> = idle
        .iter()
        .filter_map(|(name, pid, before)| {
            let used = cpu_seconds(*pid).ok()? - before;
            Some(format!("{name} {:.2}", used / window.as_secs_f64()))
        })
        .collect();
    println!("idle load (cores): {}", shown.join(", "));

    // 1. Scheduling without and with the extender.
    println!("scheduling {pods} pods on {nodes} nodes without the extender");
    let (plain_rate, plain_cpu) =
        schedule_run(&plane, &client, "bench-plain", pods, None, pid).await?;
    wait_cached_pods(metrics_port, pods).await?;
    let rss_first = rss(pid)?;
    // ESTS_BENCH_FILTER_ONLY=1 leaves prioritize out of the entry: one call per pod, not two.
    let prioritize = if std::env::var("ESTS_BENCH_FILTER_ONLY").is_ok_and(|v| v == "1") {
        println!("(filter only: the extender entry has no prioritizeVerb)");
        ""
    } else {
        "  prioritizeVerb: prioritize\n  weight: 1\n"
    };
    let extenders = format!(
        "extenders:\n- urlPrefix: http://127.0.0.1:{port}\n  filterVerb: filter\n{prioritize}  nodeCacheCapable: true\n  httpTimeout: 2s\n  ignorable: false\n"
    );
    println!("scheduling {pods} pods on {nodes} nodes with the extender");
    let answering = answer_time(metrics_port).await?;
    let (ext_rate, ext_cpu) = schedule_run(
        &plane,
        &client,
        "bench-extender",
        pods,
        Some(&extenders),
        pid,
    )
    .await?;
    let answered = answer_time(metrics_port).await?;
    let calls = (answered.1 - answering.1).max(1.0);
    println!(
        "  the extender's own time per call: {:.3} ms over {calls:.0} filter and prioritize calls",
        (answered.0 - answering.0) * 1e3 / calls
    );

    // 3. Filter with every node a candidate.
    let body = Bytes::from(serde_json::to_vec(&json!({
        "Pod": pod("probe", None),
        "NodeNames": names,
    }))?);
    let before = filter_buckets(metrics_port).await?;
    let mut http = Http::connect(port).await?;
    let mut round_trips = Vec::new();
    for _ in 0..2_000 {
        let started = Instant::now();
        let (status, answer) = http.call("POST", "/filter", body.clone()).await?;
        round_trips.push(started.elapsed());
        anyhow::ensure!(status == 200, "filter answered {status}: {answer:?}");
    }
    let after = filter_buckets(metrics_port).await?;
    round_trips.sort();
    let server_p99 = p99_bucket(&before, &after);

    // The same computation in-process, on an index of the same objects.
    let mut index = Index::default();
    for n in node_api.list(&ListParams::default()).await?.items {
        index.apply_node(&n);
    }
    for p in Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
    {
        index.apply_pod(&p);
    }
    let mut in_process = Vec::new();
    for _ in 0..2_000 {
        let started = Instant::now();
        let status = ests_extender::answer_filter(&index, &body).status;
        in_process.push(started.elapsed());
        anyhow::ensure!(status.as_u16() == 200);
    }
    in_process.sort();

    // 4. Memory with more pods cached (bound directly, spread over the nodes).
    let extra = memory_pods.saturating_sub(2 * pods);
    create_namespace(&client, "bench-memory").await?;
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "bench-memory");
    let took = create_all("bound pods", extra, |i| {
        let (api, node) = (pod_api.clone(), names[i % names.len()].clone());
        async move {
            let pod: Pod = serde_json::from_value(pod(&format!("m-{i}"), Some(&node)))?;
            api.create(&PostParams::default(), &pod).await?;
            Ok(())
        }
    })
    .await?;
    println!("created {extra} bound pods in {:.1} s", took.as_secs_f64());
    wait_cached_pods(metrics_port, memory_pods).await?;
    let rss_all = rss(pid)?;

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!();
    println!("scheduling throughput ({pods} pods, {nodes} nodes):");
    println!("  without the extender: {plain_rate:.1} pods/s");
    println!("  with the extender:    {ext_rate:.1} pods/s");
    println!(
        "  ratio:                {:.2} (target >= 0.8)",
        ext_rate / plain_rate
    );
    println!(
        "extender CPU: {:.3} ms per scheduled pod with it configured ({ext_cpu:.2} s for {pods} pods); {:.3} ms per pod when only watching",
        ext_cpu * 1e3 / pods as f64,
        plain_cpu * 1e3 / pods as f64
    );
    println!("filter with all {nodes} nodes as candidates (2,000 requests):");
    println!(
        "  server-side p99 (histogram bucket): <= {:.3} ms (target <= 1 ms)",
        server_p99 * 1e3
    );
    println!(
        "  in-process answer_filter: p50 {:.3} ms, p99 {:.3} ms",
        ms(percentile(&in_process, 0.5)),
        ms(percentile(&in_process, 0.99))
    );
    println!(
        "  client round trip: p50 {:.3} ms, p99 {:.3} ms",
        ms(percentile(&round_trips, 0.5)),
        ms(percentile(&round_trips, 0.99))
    );
    println!("extender resident memory:");
    println!("  {nodes} nodes, no pods:   {:.1} MiB", mib(rss_nodes));
    println!("  {pods} pods cached:      {:.1} MiB", mib(rss_first));
    println!("  {memory_pods} pods cached:      {:.1} MiB", mib(rss_all));
    println!(
        "  per pod: {:.0} bytes (between {pods} and {memory_pods} pods)",
        rss_all.saturating_sub(rss_first) as f64 / (memory_pods - pods) as f64
    );
    plane.stop();
    Ok(())
}
