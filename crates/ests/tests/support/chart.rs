//! What the tests of the chart as real pods share (`chart_pods.rs`, `chart_node.rs`,
//! `chart_lifecycle.rs`): the release's pods, plain-HTTP calls to them on the node's network,
//! what their processes run as, read from the node's `/proc`, and the values and diagnosis
//! of a release with the node agent.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use ests_testenv::ControlPlane;
use ests_testenv::real_node::RealNode;
use ests_testenv::resources::{apply_value, create_namespace};
use ests_testenv::wait_for;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::real_node::POD_RANGE;

/// The release the tests install; with this namespace it gives the names `config/` uses.
pub const RELEASE: &str = "ests";
pub const NAMESPACE: &str = "ests-system";

/// The chart's Deployments, named by their pods' component label.
pub const COMPONENTS: [&str; 3] = ["controller", "webhook", "extender"];

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

/// Where the agent keeps its socket and table on the host: inside the node's directory, so
/// the node's clean-up removes them.
pub fn agent_dirs(node: &RealNode) -> (PathBuf, PathBuf) {
    (
        node.dir.join("ests-node/run"),
        node.dir.join("ests-node/state"),
    )
}

/// The chart's values with the node agent: the harness's image; the agent on, installing
/// into the node's CNI directories a bridge on the node's own bridge (whose address, the pod
/// range's second, is the pods' gateway), routes to the Services only (pods get no default
/// route), the node's pod range; each of [`COMPONENTS`] on the real node with the replicas
/// `replicas` gives it (in that order).
pub fn agent_values(image: &str, node: &RealNode, replicas: [i32; 3]) -> anyhow::Result<Value> {
    let (repository, tag) = image
        .rsplit_once(':')
        .with_context(|| format!("{image} has no tag"))?;
    let placement = RealNode::placement();
    let (socket_dir, state_dir) = agent_dirs(node);
    let mut values = json!({
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "logFormat": "text",
        "node": {
            "enabled": true,
            "cni": {
                "binDir": node.dir.join("cni/bin").display().to_string(),
                "confDir": node.dir.join("cni/net.d").display().to_string(),
                "mainPlugin": {
                    "type": "bridge",
                    "bridge": node.network.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                },
                "routes": [node.network.service_cidr.to_string()],
                "timeoutSeconds": 10,
            },
            "socketDir": socket_dir.display().to_string(),
            "stateDir": state_dir.display().to_string(),
            "podRanges": [POD_RANGE],
            "nodeSelector": placement["nodeSelector"],
        },
    });
    for (component, replicas) in COMPONENTS.into_iter().zip(replicas) {
        values[component]["replicas"] = json!(replicas);
        values[component]["nodeSelector"] = placement["nodeSelector"].clone();
        values[component]["tolerations"] = placement["tolerations"].clone();
    }
    Ok(values)
}

/// What a failing test prints: the release's pods, its events, the agent's logs, the node's.
pub async fn diagnosis(plane: &ests_testenv::ControlPlane, node: &RealNode) -> String {
    let mut out = String::new();
    for args in [
        &["get", "pods", "-A", "-o", "wide"][..],
        &["get", "events", "-n", NAMESPACE],
        &[
            "logs",
            "-n",
            NAMESPACE,
            "daemonset/ests-node",
            "-c",
            "install-cni",
        ],
        &[
            "logs",
            "-n",
            NAMESPACE,
            "daemonset/ests-node",
            "-c",
            "agent",
            "--tail=40",
        ],
    ] {
        let text = plane
            .kubectl(args)
            .await
            .unwrap_or_else(|e| format!("{e:#}"));
        out.push_str(&format!("\n$ kubectl {}\n{text}", args.join(" ")));
    }
    out + "\n" + &node.log_tails(20)
}

/// The agent's one pod (the DaemonSet's, on the real node), once Ready.
pub async fn agent_pod(client: &Client, timeout: Duration) -> anyhow::Result<Pod> {
    wait_for("the agent's pod Ready", timeout, || async {
        let pods = component_pods(client, "node").await?;
        Ok(match pods.as_slice() {
            [pod] if ready(pod) && pod.metadata.deletion_timestamp.is_none() => Some(pod.clone()),
            _ => None,
        })
    })
    .await
}

/// The controller replica holding the release's Lease (its pod's name), once one does.
pub async fn controller_leader(client: &Client, timeout: Duration) -> anyhow::Result<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    wait_for("the controller's Lease held", timeout, || async {
        Ok(leases
            .get_opt(&format!("{RELEASE}-controller"))
            .await?
            .and_then(|l| l.spec?.holder_identity))
    })
    .await
}

/// A client of `user`, who has only the built-in `edit` role, in the namespace `ns` (made
/// here, with its `default` service account, so the user's pods are admitted).
pub async fn edit_user(
    plane: &ControlPlane,
    ns: &str,
    user: &str,
    timeout: Duration,
) -> anyhow::Result<Client> {
    let admin = plane.client().await?;
    create_namespace(&admin, ns).await?;
    apply_value(
        &admin,
        &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": format!("{user}-edit"), "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
        }),
        Some(ns),
        false,
    )
    .await?;
    let (_, client) = plane.client_as(user, &[]).await?;
    wait_for(format!("edit lets {user} write sets"), timeout, || async {
        Ok(super::may(&client, "create", "enhancedstatefulsets", ns)
            .await?
            .then_some(()))
    })
    .await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    wait_for(format!("{ns}/default service account"), timeout, || async {
        Ok(accounts.get_opt("default").await?.map(|_| ()))
    })
    .await?;
    Ok(client)
}
