//! `ests node`: the node agent the `ests-cni` plugin asks for pod addresses (one per node,
//! from the chart's DaemonSet), and `ests node install-cni`, which puts the plugin and its
//! network config on the node (the DaemonSet's init container).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use ipnet::IpNet;

use crate::leader::rules;
use crate::serve;

/// `ests node [FLAGS]` runs the agent; `ests node install-cni [FLAGS]` installs the plugin.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct NodeCommand {
    #[command(subcommand)]
    pub command: Option<NodeSubcommand>,
    #[command(flatten)]
    pub agent: NodeArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum NodeSubcommand {
    /// Copy the ests-cni binary into the host's CNI binary directory and write the network
    /// config list chaining it as the main plugin's ipam into the host's CNI config
    /// directory; each atomically, and only when it differs from what is there. Run before
    /// the agent (the chart's init container), with the host's directories mounted at the
    /// same paths.
    InstallCni(InstallCniArgs),
}

pub async fn main(command: NodeCommand) -> anyhow::Result<()> {
    match command.command {
        Some(NodeSubcommand::InstallCni(args)) => install_cni(&args),
        None => run(command.agent).await,
    }
}

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// The node this agent serves (the DaemonSet passes `spec.nodeName`).
    #[arg(long, env = "NODE_NAME", required = true)]
    pub node_name: Option<String>,

    /// The unix socket the ests-cni plugin connects to (the network config's
    /// `ipam.agentSocket` must name the same path). Made 0600: only the agent's user (root, as the
    /// chart runs it) may connect.
    #[arg(long, default_value = ests_cni::protocol::DEFAULT_AGENT_SOCKET, env = "ESTS_AGENT_SOCKET")]
    pub socket: PathBuf,

    /// Directory of the attachment table: a host directory, so that what the agent handed
    /// out survives its restarts. Best a tmpfs that lasts as long as the host's boot, as the
    /// default does: the table describes sandboxes, which no reboot keeps, and an ADD's
    /// fsync on a disk the runtime is writing to waits tens of milliseconds.
    #[arg(long, default_value = "/run/ests/node", env = "ESTS_STATE_DIR")]
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

/// The main plugin unless told otherwise: a bridge whose address is the pods' gateway,
/// masquerading what pods send off the node, and letting a pod reach itself through a
/// Service (hairpin).
const DEFAULT_MAIN_PLUGIN: &str =
    r#"{"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":true,"hairpinMode":true}"#;

#[derive(clap::Args, Debug)]
pub struct InstallCniArgs {
    /// The plugin binary to copy (the image ships it here).
    #[arg(
        long,
        default_value = "/usr/local/bin/ests-cni",
        env = "ESTS_CNI_PLUGIN"
    )]
    pub plugin: PathBuf,

    /// The host's CNI binary directory (the runtime's `bin_dirs`); the copy is named
    /// `ests-cni`.
    #[arg(long, default_value = "/opt/cni/bin", env = "ESTS_CNI_BIN_DIR")]
    pub bin_dir: PathBuf,

    /// The host's CNI config directory (the runtime's `conf_dir`).
    #[arg(long, default_value = "/etc/cni/net.d", env = "ESTS_CNI_CONF_DIR")]
    pub conf_dir: PathBuf,

    /// The list's file name there. The runtime uses the first list by name, so the default
    /// sorts before other CNIs' usual `10-…` names.
    #[arg(long, default_value = "00-ests.conflist", env = "ESTS_CNI_CONF_FILE")]
    pub conf_file: String,

    /// The network's name (the list's `name`).
    #[arg(long, default_value = "ests", env = "ESTS_CNI_NETWORK")]
    pub network_name: String,

    /// The list's `cniVersion`: one that ests-cni and the main plugin both speak.
    #[arg(long, default_value = ests_cni::conflist::DEFAULT_CNI_VERSION, env = "ESTS_CNI_VERSION")]
    pub cni_version: String,

    /// The main plugin's config, as a JSON object without `ipam` (ests-cni becomes its
    /// ipam): a bridge, ptp, macvlan or ipvlan, or Calico's.
    #[arg(long, default_value = DEFAULT_MAIN_PLUGIN, env = "ESTS_CNI_MAIN_PLUGIN", value_parser = json_value)]
    pub main_plugin: serde_json::Value,

    /// A plugin chained after the main one, as a JSON object (repeatable), such as
    /// `{"type":"portmap","capabilities":{"portMappings":true}}`.
    #[arg(long = "extra-plugin", value_parser = json_value)]
    pub extra_plugins: Vec<serde_json::Value>,

    /// The agent's socket as the host sees it (`ipam.agentSocket`): the agent's `--socket`.
    #[arg(long, default_value = ests_cni::protocol::DEFAULT_AGENT_SOCKET, env = "ESTS_AGENT_SOCKET")]
    pub agent_socket: String,

    /// Seconds the plugin waits for one answer of the agent (`ipam.timeoutSeconds`, 1-300).
    #[arg(long, default_value_t = ests_cni::config::DEFAULT_TIMEOUT_SECONDS, env = "ESTS_CNI_TIMEOUT_SECONDS")]
    pub timeout_seconds: u64,

    /// A route the pods get through their gateway (`ipam.routes`), as a CIDR; repeat or
    /// separate with ','.
    #[arg(
        long = "route",
        default_value = "0.0.0.0/0",
        env = "ESTS_CNI_ROUTES",
        value_delimiter = ','
    )]
    pub routes: Vec<IpNet>,
}

fn json_value(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))
}

/// `ests node install-cni`.
pub fn install_cni(args: &InstallCniArgs) -> anyhow::Result<()> {
    let routes = args
        .routes
        .iter()
        .map(|dst| serde_json::from_value(serde_json::json!({ "dst": dst.to_string() })))
        .collect::<Result<Vec<_>, _>>()
        .context("making the routes")?;
    let ipam =
        ests_cni::config::IpamConfig::new(&args.agent_socket, Some(args.timeout_seconds), routes)
            .context("the ipam section")?;
    let conflist = ests_cni::conflist::conflist(&ests_cni::conflist::ConflistSpec {
        cni_version: args.cni_version.clone(),
        network: args.network_name.clone(),
        main_plugin: args.main_plugin.clone(),
        ipam,
        extra_plugins: args.extra_plugins.clone(),
    })
    .context("making the network config list")?;
    let installed = ests_node::install::install(&ests_node::install::Install {
        plugin: args.plugin.clone(),
        bin_dir: args.bin_dir.clone(),
        conf_dir: args.conf_dir.clone(),
        conf_file: args.conf_file.clone(),
        conflist,
    })?;
    for (path, change) in [&installed.binary, &installed.conflist] {
        tracing::info!(path = %path.display(), ?change, "installed");
    }
    Ok(())
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let node = args
        .node_name
        .context("--node-name (or NODE_NAME) is required")?;
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
            node,
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
