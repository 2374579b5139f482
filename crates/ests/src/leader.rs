//! Leader election shared by the components that must run once per cluster: the work runs
//! while this process holds the Lease and stops as soon as it loses it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;

use crate::serve;

/// Leader-election flags.
#[derive(clap::Args, Debug, Clone)]
pub struct LeaderArgs {
    /// Take part in leader election, so that of several replicas only one works.
    /// Turn off only when exactly one replica runs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "ESTS_LEADER_ELECTION")]
    pub leader_election: bool,

    /// Name of the Lease used for leader election [default: the subcommand's, e.g.
    /// ests-controller or ests-static-ip].
    #[arg(long, env = "ESTS_LEASE_NAME")]
    pub lease_name: Option<String>,

    /// Namespace of that Lease (the namespace ests runs in).
    #[arg(long, default_value = "ests-system", env = "POD_NAMESPACE")]
    pub lease_namespace: String,

    /// Seconds a leader's lease is valid without renewal; a new leader takes over after it.
    #[arg(long, default_value_t = 15, env = "ESTS_LEASE_SECONDS")]
    pub lease_seconds: u64,
}

/// A future that resolves when the work must stop.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// Runs `work` while leading (at once without leader election) until a shutdown signal;
/// `ready` turns true while it runs.
pub async fn run_leading<F, Fut>(
    client: Client,
    args: &LeaderArgs,
    default_lease: &str,
    ready: Arc<AtomicBool>,
    work: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    if !args.leader_election {
        ready.store(true, Ordering::SeqCst);
        return work(Box::pin(serve::shutdown_signal())).await;
    }
    let lease = args.lease_name.as_deref().unwrap_or(default_lease);
    let identity = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("{default_lease}-{}", std::process::id()));
    let grace = (args.lease_seconds / 3).max(1);
    let manager = LeaseManagerBuilder::new(client, lease)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .with_duration(args.lease_seconds)
        .with_grace(grace)
        .build()
        .await
        .context("setting up leader election")?;
    let (mut leading, lease_task) = manager.watch().await;
    tracing::info!(%identity, %lease, "waiting to lead");
    tokio::select! {
        changed = leading.wait_for(|l| *l) => { changed.context("leader election stopped")?; }
        () = serve::shutdown_signal() => return Ok(()),
    }
    tracing::info!(%identity, %lease, "leading");
    ready.store(true, Ordering::SeqCst);
    // Stop as soon as leadership is lost: a deposed leader must not write. (Uniqueness of
    // addresses does not rest on this — block writes are compare-and-swap — but needless
    // work by two leaders is avoided.)
    let lost = async move {
        let _ = leading.wait_for(|l| !*l).await;
        tracing::warn!("lost leadership; stopping");
    };
    let shutdown: Shutdown = Box::pin(async {
        tokio::select! {
            () = lost => {},
            () = serve::shutdown_signal() => {},
        }
    });
    let result = work(shutdown).await;
    lease_task.abort();
    result
}
