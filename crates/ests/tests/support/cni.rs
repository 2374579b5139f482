//! ests's own network on the real node: the node agent (`ests node`) as a process beside
//! the kubelet, and a conflist chaining `ests-cni` as the IPAM of a reference main plugin.
//!
//! `ests-cni` is the binary `cargo test --workspace` builds beside `ests`; a test run of
//! this package alone needs `cargo build -p ests-cni` first (the tests say so).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ests_testenv::real_node::RealNode;
use ests_testenv::wait_for;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

use super::chart::http_get;
use super::real_node::{
    POD_RANGE, TIMEOUT, counter_sum, ests_cni_binary, from_agent, ordinary_pod, ready_pod,
    real_namespace,
};
use super::{Env, start_ests};

/// The reference plugin `ests-cni` is chained under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MainPlugin {
    /// Every pod on the node's bridge, the bridge holding the gateway.
    Bridge,
    /// A veth per pod with a host route to each of its addresses: what IP range mode
    /// needs, since a block's addresses lie outside the node's pod range (the bridge plugin
    /// would put the gateway on the bridge with the block's prefix, which the bridge's
    /// own address forbids).
    Ptp,
}

pub fn agent_socket(node: &RealNode) -> PathBuf {
    node.dir.join("ests/cni.sock")
}

/// The agent's state directory: on the plane's tmpfs (gone with the plane), as `/run` is
/// on a host — the table lives as long as the sandboxes it describes, and the agent's
/// fsyncs do not queue behind the runtime's disk writes.
pub fn agent_state_dir(env: &Env) -> PathBuf {
    env.plane.dir.join("ests-node-state")
}

/// The agent's attachment table file.
pub fn agent_table(env: &Env) -> PathBuf {
    agent_state_dir(env).join("attachments.json")
}

/// The loopback port of the running agent's /metrics (a new one at each start: a killed
/// agent's port may still be in use).
static METRICS_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// Starts `ests node` for the real node (again, after a kill: same socket, same table),
/// under the controller's identity.
pub async fn start_agent(env: &Env, node: &RealNode) -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    METRICS_PORT.store(port, std::sync::atomic::Ordering::SeqCst);
    start_ests(
        env.plane,
        "ests-node",
        "node",
        &[
            &format!("--node-name={}", node.name),
            &format!("--socket={}", agent_socket(node).display()),
            &format!("--state-dir={}", agent_state_dir(env).display()),
            &format!("--pod-range={POD_RANGE}"),
            &format!("--metrics-addr=127.0.0.1:{port}"),
        ],
    )
    .await
}

/// The running agent's /metrics text.
pub async fn agent_metrics() -> anyhow::Result<String> {
    let port = METRICS_PORT.load(std::sync::atomic::Ordering::SeqCst);
    let (code, body) = http_get(IpAddr::from([127, 0, 0, 1]), port, "/metrics").await?;
    anyhow::ensure!(code == 200, "agent /metrics answered {code}");
    Ok(body)
}

/// The agent's own API requests so far: (reads, writes), watches not counted.
pub async fn agent_api_requests() -> anyhow::Result<(f64, f64)> {
    let metrics = agent_metrics().await?;
    let kind = |k: &str| {
        counter_sum(
            &metrics,
            "ests_node_api_requests_total",
            &[&format!("kind=\"{k}\"")],
        )
    };
    Ok((kind("read"), kind("write")))
}

/// The attachments the agent's table holds, as (pod uid, address) pairs.
pub fn table_entries(env: &Env) -> anyhow::Result<Vec<(String, String)>> {
    let table: Value = serde_json::from_slice(&std::fs::read(agent_table(env))?)?;
    Ok(table["attachments"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| {
            let uid = a["pod"]["uid"].as_str().unwrap_or_default().to_string();
            a["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |addr| {
                    (
                        uid.clone(),
                        addr["ip"].as_str().unwrap_or_default().to_string(),
                    )
                })
        })
        .collect())
}

/// Starts the agent and makes ests's network the node's: `ests-cni` under `main`. Returns
/// once a new pod has an address from the agent (the runtime picks the network up from
/// its directory a moment after it is written).
pub async fn install_network(env: &Env, node: &RealNode, main: MainPlugin) -> anyhow::Result<()> {
    start_agent(env, node).await?;
    node.install_cni(&ests_cni_binary()?, &conflist(node, main))?;
    wait_network(env, true).await
}

/// ests's network: `ests-cni` as the IPAM of `main`, asking the agent of [`start_agent`].
pub fn conflist(node: &RealNode, main: MainPlugin) -> Value {
    let mut ipam = json!({
        "type": "ests-cni",
        "agentSocket": agent_socket(node),
        "timeoutSeconds": 10,
    });
    let plugin = match main {
        MainPlugin::Bridge => {
            ipam["routes"] = json!([{"dst": node.network.service_cidr.to_string()}]);
            json!({
                "type": "bridge",
                "bridge": node.network.bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": ipam,
            })
        }
        // No extra routes: ptp adds them before it makes the gateway on-link, which fails
        // for a block's address (its gateway, the node's, lies outside the block). Its own
        // routes (the gateway, the address's network through it) are what the tests use.
        MainPlugin::Ptp => json!({"type": "ptp", "ipMasq": false, "ipam": ipam}),
    };
    json!({"cniVersion": "1.0.0", "name": "ests", "plugins": [plugin]})
}

/// Waits until a new pod gets its address from the agent (`agent`) or from the node's own
/// host-local: the runtime reloads its network directory a moment after a change.
pub async fn wait_network(env: &Env, agent: bool) -> anyhow::Result<()> {
    real_namespace(env, "cni-canary").await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "cni-canary");
    canary(&pods, agent, TIMEOUT).await?;
    pods.delete("canary", &DeleteParams::default().grace_period(0))
        .await?;
    Ok(())
}

/// An ordinary pod `canary` in `pods`' namespace, Ready with an address from the agent
/// (`agent`) or from host-local, made again until it has one: its address. The pod is left
/// running.
pub async fn canary(pods: &Api<Pod>, agent: bool, timeout: Duration) -> anyhow::Result<IpAddr> {
    let which = if agent {
        "the node agent"
    } else {
        "host-local"
    };
    wait_for(
        format!("an ordinary pod with an address from {which}"),
        timeout,
        || async {
            let _ = pods
                .create(&PostParams::default(), &ordinary_pod("canary"))
                .await;
            let Some((_, ip)) = ready_pod(pods, "canary").await? else {
                return Ok(None);
            };
            if from_agent(ip) == agent {
                return Ok(Some(ip));
            }
            pods.delete("canary", &DeleteParams::default().grace_period(0))
                .await?;
            Ok(None)
        },
    )
    .await
}
