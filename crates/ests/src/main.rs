//! `ests`: one binary whose subcommands run the ests components and tools.
#![forbid(unsafe_code)]

mod controller;
mod extender;
mod leader;
mod manifests;
mod migration;
mod node;
mod serve;
mod static_ip;
mod webhook;

use clap::{Parser, Subcommand, ValueEnum};

/// Enhanced StatefulSet for Kubernetes: parallel and batched rollouts, static pod IPs and
/// node migration. Components read the cluster from KUBECONFIG or the in-cluster service
/// account.
#[derive(Parser)]
#[command(name = "ests", version)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "ESTS_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the EnhancedStatefulSet controller (and, unless turned off, the StaticIP manager).
    // Boxed: its flags (with the migration hooks) are far larger than the other commands'.
    Controller(Box<controller::ControllerArgs>),
    /// Run the StaticIP manager on its own: records learn, keep and release their pods'
    /// addresses; IP range mode allocates from per-node blocks.
    StaticIp(static_ip::StaticIpArgs),
    /// Run the scheduler extender: pinned static-IP pods fit only their node, and nodes keep
    /// room for the static-IP pods that belong there.
    Extender(extender::ExtenderArgs),
    /// Run the admission webhook: pins re-created static-IP pods to their address and node,
    /// and refuses EnhancedStatefulSets the CRD cannot check.
    Webhook(webhook::WebhookArgs),
    /// Move a node's static-IP pods, records and IP blocks to a replacement node: creates a
    /// NodeMigration (and with --wait follows it to the end).
    MigrateNode(migration::MigrateNodeArgs),
    /// Run the node agent: gives the ests-cni plugin its node's pod addresses (a static-IP
    /// pod's from its record, others' from the pod range, never an address a record keeps).
    /// `ests node install-cni` puts the plugin and its network config on the node.
    // Boxed: with install-cni's flags it is the largest command.
    Node(Box<node::NodeCommand>),
    /// Print the CustomResourceDefinitions generated from the API types, or write them and
    /// the ValidatingAdmissionPolicies to a config directory.
    Crd(manifests::CrdArgs),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ESTS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Exactly one rustls crypto provider for every TLS client and server in the process.
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        anyhow::bail!("a rustls crypto provider was already installed");
    }
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Controller(args) => controller::run(*args).await,
        Command::StaticIp(args) => static_ip::run(args).await,
        Command::Webhook(args) => webhook::run(args).await,
        Command::Extender(args) => extender::run(args).await,
        Command::MigrateNode(args) => migration::migrate_node(args).await,
        Command::Node(command) => node::main(*command).await,
        Command::Crd(args) => manifests::run(&args),
    }
}
