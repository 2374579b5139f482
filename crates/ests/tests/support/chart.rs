//! What the tests of the chart as real pods share (`chart_pods.rs`, `chart_node.rs`): the
//! release's pods, plain-HTTP calls to them on the node's network, and what their processes
//! run as, read from the node's `/proc`.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use ests_testenv::real_node::RealNode;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The release the tests install; with this namespace it gives the names `config/` uses.
pub const RELEASE: &str = "ests";
pub const NAMESPACE: &str = "ests-system";

pub fn chart_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/ests")
}

/// The release's pods of `component`.
pub async fn component_pods(client: &Client, component: &str) -> anyhow::Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let selector =
        format!("app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component={component}");
    Ok(pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items)
}

pub fn pod_ip(pod: &Pod) -> anyhow::Result<IpAddr> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .with_context(|| format!("{} has no address", pod.name_any()))?
        .parse()
        .with_context(|| format!("{}'s address", pod.name_any()))
}

/// A plain-HTTP GET of `path` at `ip:port` (a pod's metrics port, on this machine's bridge):
/// the status code and the body.
pub async fn http_get(ip: IpAddr, port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    if !ests_testenv::real_node::on_this_machine(ip) {
        bail!("{ip} is not on this machine; not asking it");
    }
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((ip, port)).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .with_context(|| format!("GET {ip}:{port}{path}: no answer"))??;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("GET {ip}:{port}{path}: no status line"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// Fields of `/proc/<pid>/status` of a container's process on the node.
pub struct ProcessFacts {
    pub rss_kib: u64,
    pub uid: String,
    pub cap_eff: String,
    pub root_read_only: bool,
}

pub async fn process_facts(node: &RealNode, container_id: &str) -> anyhow::Result<ProcessFacts> {
    let pid = node.container_pid(container_id).await?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    // mountinfo: the root mount's options are the sixth field.
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let root_read_only = mounts.lines().any(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        fields.get(4) == Some(&"/")
            && fields
                .get(5)
                .is_some_and(|o| o.split(',').any(|o| o == "ro"))
    });
    Ok(ProcessFacts {
        rss_kib: field("VmRSS:")
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("VmRSS of pid {pid}"))?,
        uid: field("Uid:"),
        cap_eff: field("CapEff:"),
        root_read_only,
    })
}

pub fn ready(pod: &Pod) -> bool {
    ests_testenv::wait::pod_ready(pod)
}

/// The number of the pod's container port called `name`.
pub fn named_port(pod: &Pod, name: &str) -> anyhow::Result<u16> {
    let port = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name))
        .with_context(|| format!("{} has no port {name}", pod.name_any()))?;
    Ok(u16::try_from(port.container_port)?)
}

/// The port and path of the pod's liveness probe (an HTTP GET, its port named or numbered).
pub fn liveness_endpoint(pod: &Pod) -> anyhow::Result<(u16, String)> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let container = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .context("no container")?;
    let get = container
        .liveness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .with_context(|| format!("{} has no HTTP liveness probe", pod.name_any()))?;
    let port = match &get.port {
        IntOrString::Int(port) => u16::try_from(*port)?,
        IntOrString::String(name) => named_port(pod, name)?,
    };
    Ok((port, get.path.clone().unwrap_or_else(|| "/".into())))
}

/// The restart count of each container of the pod.
pub fn restarts(pod: &Pod) -> Vec<(String, i32)> {
    pod.status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .map(|c| (c.name.clone(), c.restart_count))
        .collect()
}
