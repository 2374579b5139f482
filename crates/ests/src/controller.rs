//! `ests controller`: runs the EnhancedStatefulSet controller, with leader election, metrics
//! and health endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use ests_controller::{Metrics, Settings};
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;

use crate::serve;

#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    /// Address of the plain-HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080", env = "ESTS_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,

    /// Take part in leader election, so that of several replicas only one reconciles.
    /// Turn off only when exactly one replica runs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "ESTS_LEADER_ELECTION")]
    pub leader_election: bool,

    /// Name of the Lease used for leader election.
    #[arg(long, default_value = "ests-controller", env = "ESTS_LEASE_NAME")]
    pub lease_name: String,

    /// Namespace of that Lease (the namespace ests runs in).
    #[arg(long, default_value = "ests-system", env = "POD_NAMESPACE")]
    pub lease_namespace: String,

    /// Seconds a leader's lease is valid without renewal; a new leader takes over after it.
    #[arg(long, default_value_t = 15, env = "ESTS_LEASE_SECONDS")]
    pub lease_seconds: u64,

    /// Sets reconciled at once.
    #[arg(long, default_value_t = 16, env = "ESTS_CONCURRENCY")]
    pub concurrency: u16,
}

pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let metrics = Metrics::new().context("registering metrics")?;
    let ready = Arc::new(AtomicBool::new(false));
    let server = serve::spawn(args.metrics_addr, metrics.registry.clone(), ready.clone()).await?;
    tracing::info!(addr = %server, "serving metrics and health");

    let settings = Settings {
        concurrency: args.concurrency,
    };
    if !args.leader_election {
        ready.store(true, Ordering::SeqCst);
        return ests_controller::run(client, settings, metrics, serve::shutdown_signal()).await;
    }

    let identity = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("ests-controller-{}", std::process::id()));
    let grace = (args.lease_seconds / 3).max(1);
    let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .with_duration(args.lease_seconds)
        .with_grace(grace)
        .build()
        .await
        .context("setting up leader election")?;
    let (mut leading, lease_task) = manager.watch().await;
    tracing::info!(%identity, lease = %args.lease_name, "waiting to lead");
    tokio::select! {
        changed = leading.wait_for(|l| *l) => { changed.context("leader election stopped")?; }
        () = serve::shutdown_signal() => return Ok(()),
    }
    tracing::info!(%identity, "leading");
    ready.store(true, Ordering::SeqCst);
    // Stop reconciling as soon as leadership is lost: a deposed leader must not write.
    let lost = async move {
        let _ = leading.wait_for(|l| !*l).await;
        tracing::warn!("lost leadership; stopping");
    };
    let shutdown = async {
        tokio::select! {
            () = lost => {},
            () = serve::shutdown_signal() => {},
        }
    };
    ests_controller::run(client, settings, metrics, shutdown).await?;
    lease_task.abort();
    Ok(())
}
