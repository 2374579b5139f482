//! `ests controller`: runs the EnhancedStatefulSet controller and (unless turned off) the
//! StaticIP manager, with leader election, metrics and health endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use ests_controller::{Metrics, Settings};
use kube::Client;

use crate::leader::{self, LeaderArgs};
use crate::serve;
use crate::static_ip;

#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    /// Address of the plain-HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080", env = "ESTS_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,

    #[command(flatten)]
    pub leader: LeaderArgs,

    /// Sets (and StaticIP records) reconciled at once.
    #[arg(long, default_value_t = 16, env = "ESTS_CONCURRENCY")]
    pub concurrency: u16,

    /// Also run the StaticIP manager in this process (under the same lease). Turn off to
    /// run it separately with `ests static-ip`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "ESTS_STATIC_IP_MANAGER")]
    pub static_ip_manager: bool,

    /// The scheduler extender binds IP-range-mode pods (`ests extender --bind`, with the
    /// bind entry in the scheduler's configuration): such pods request the managed resource
    /// jke.jdcloud.com/static-ip so the scheduler sends them to it. Leave off otherwise: a
    /// scheduler that does not manage the resource could not place them.
    #[arg(long, env = "ESTS_EXTENDER_BINDS")]
    pub extender_binds: bool,

    #[command(flatten)]
    pub migration: crate::migration::MigrationArgs,
}

pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let metrics = Metrics::new().context("registering metrics")?;
    let ip_metrics = ests_staticip::Metrics::register(&metrics.registry)
        .context("registering StaticIP metrics")?;
    let ready = Arc::new(AtomicBool::new(false));
    let server = serve::spawn(args.metrics_addr, metrics.registry.clone(), ready.clone()).await?;
    tracing::info!(addr = %server, "serving metrics and health");

    let settings = Settings {
        concurrency: args.concurrency,
        extender_binds: args.extender_binds,
    };
    let with_manager = args.static_ip_manager;
    let concurrency = args.concurrency;
    let migration = args
        .migration
        .node_migration
        .then(|| args.migration.settings());
    let migration_metrics = ests_migration::Metrics::register(&metrics.registry)
        .context("registering migration metrics")?;
    leader::run_leading(
        client.clone(),
        &args.leader,
        "ests-controller",
        ready,
        |shutdown| async move {
            // One watch per kind for everything this process runs.
            let reflectors = ests_runtime::Reflectors::new(client.clone());
            let reflectors = &reflectors;
            let shared = futures::FutureExt::shared(shutdown);
            let manager = async {
                if with_manager {
                    static_ip::run_manager(
                        reflectors,
                        client.clone(),
                        concurrency,
                        ip_metrics,
                        shared.clone(),
                    )
                    .await
                } else {
                    Ok(())
                }
            };
            let migrations = async {
                match migration {
                    Some(settings) => {
                        ests_migration::run(
                            reflectors,
                            client.clone(),
                            settings,
                            migration_metrics,
                            shared.clone(),
                        )
                        .await
                    }
                    None => Ok(()),
                }
            };
            let (a, b, c) = tokio::join!(
                ests_controller::run(
                    reflectors,
                    client.clone(),
                    settings,
                    metrics,
                    shared.clone()
                ),
                manager,
                migrations,
            );
            a.and(b).and(c)
        },
    )
    .await
}
