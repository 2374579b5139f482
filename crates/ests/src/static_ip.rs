//! `ests static-ip`: runs the StaticIP manager on its own (when `ests controller` runs with
//! `--static-ip-manager=false`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;

use crate::leader::{self, LeaderArgs};
use crate::serve;

#[derive(clap::Args, Debug)]
pub struct StaticIpArgs {
    /// Address of the plain-HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8081", env = "ESTS_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,

    #[command(flatten)]
    pub leader: LeaderArgs,

    /// StaticIP records (and IP blocks) reconciled at once.
    #[arg(long, default_value_t = 16, env = "ESTS_CONCURRENCY")]
    pub concurrency: u16,
}

pub async fn run(args: StaticIpArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let registry = prometheus::Registry::new();
    let metrics =
        ests_staticip::Metrics::register(&registry).context("registering StaticIP metrics")?;
    let ready = Arc::new(AtomicBool::new(false));
    let server = serve::spawn(args.metrics_addr, registry, ready.clone()).await?;
    tracing::info!(addr = %server, "serving metrics and health");
    let concurrency = args.concurrency;
    leader::run_leading(
        client.clone(),
        &args.leader,
        "ests-static-ip",
        ready,
        |shutdown| async move {
            // Alone in its process the manager needs only static-IP pods.
            let reflectors = ests_runtime::Reflectors::new(client.clone()).configure::<Pod>(
                kube::runtime::watcher::Config::default()
                    .labels(&format!("{}=true", ests_api::keys::STATIC_IP_POD_LABEL)),
            );
            run_manager(&reflectors, client, concurrency, metrics, shutdown).await
        },
    )
    .await
}

/// Runs the manager until `shutdown`.
pub async fn run_manager(
    reflectors: &ests_runtime::Reflectors,
    client: Client,
    concurrency: u16,
    metrics: ests_staticip::Metrics,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    ests_staticip::run(
        reflectors,
        client,
        ests_staticip::Settings { concurrency },
        metrics,
        shutdown,
    )
    .await
}
