//! `ests node`: the node agent the `ests-cni` plugin asks for pod addresses (one per node,
//! from the chart's DaemonSet).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use ipnet::IpNet;

use crate::leader::rules;
use crate::serve;

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// The node this agent serves (the DaemonSet passes `spec.nodeName`).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// The unix socket the ests-cni plugin connects to (the network config's
    /// `ipam.agentSocket` must name the same path). Only root may connect.
    #[arg(long, default_value = ests_cni::protocol::DEFAULT_AGENT_SOCKET, env = "ESTS_AGENT_SOCKET")]
    pub socket: PathBuf,

    /// Directory of the attachment table: a host directory, so that what the agent handed
    /// out survives its restarts.
    #[arg(long, default_value = "/var/lib/ests/node", env = "ESTS_STATE_DIR")]
    pub state_dir: PathBuf,

    /// A pod range (CIDR) to give ordinary pods and first-time record-mode pods addresses
    /// from, at most one per family; repeat for dual stack. Without it: the Node's
    /// `spec.podCIDRs`.
    #[arg(long = "pod-range", env = "ESTS_POD_RANGES", value_delimiter = ',')]
    pub pod_ranges: Vec<IpNet>,

    /// How long (a duration: `5s`, `500ms`) an ADD may wait for the agent's caches to catch
    /// up with a pod or record before it is answered "try again later".
    #[arg(long, default_value = "5s", env = "ESTS_ADD_WAIT", value_parser = rules::parse_duration)]
    pub add_wait: Duration,

    /// Address of the plain-HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8084", env = "ESTS_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let registry = prometheus::Registry::new();
    let metrics = ests_node::Metrics::register(&registry).context("registering agent metrics")?;
    let client = ests_runtime::api_requests::counted_client(metrics.api_requests.clone())
        .await
        .context("connecting to the Kubernetes API")?;
    let ready = Arc::new(AtomicBool::new(false));
    let server = serve::spawn(args.metrics_addr, registry, ready.clone()).await?;
    tracing::info!(addr = %server, "serving metrics and health");
    ests_node::run(
        client,
        ests_node::Settings {
            node: args.node_name,
            socket: args.socket,
            state_dir: args.state_dir,
            pod_ranges: args.pod_ranges,
            add_wait: args.add_wait,
        },
        metrics,
        ready,
        serve::shutdown_signal(),
    )
    .await
}
