//! `ests extender`: the scheduler extender, answering kube-scheduler from watch caches.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use ests_extender::{AppState, Caches, Metrics, router};
use futures::StreamExt;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};

use crate::serve;

#[derive(clap::Args, Debug)]
pub struct ExtenderArgs {
    /// Address of the HTTP server kube-scheduler calls (urlPrefix in its configuration).
    #[arg(long, default_value = "0.0.0.0:8888", env = "ESTS_EXTENDER_ADDR")]
    pub listen: SocketAddr,

    /// Address of the plain-HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8083", env = "ESTS_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,
}

/// A store fed by a watch of every object of `K`, running until the process ends.
fn cache<K>(client: &Client) -> reflector::Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher::watcher(Api::<K>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    tokio::spawn(stream.for_each(|_| async {}));
    store
}

pub async fn run(args: ExtenderArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry).context("registering extender metrics")?;
    let ready = Arc::new(AtomicBool::new(false));
    let health = serve::spawn(args.metrics_addr, registry, ready.clone()).await?;
    tracing::info!(addr = %health, "serving metrics and health");

    let caches = Caches {
        nodes: cache(&client),
        pods: cache(&client),
        records: cache(&client),
        sets: cache(&client),
    };
    let listed = ests_cache::Listed::spawn(
        "extender",
        vec![
            ests_cache::wait_for(&caches.nodes),
            ests_cache::wait_for(&caches.pods),
            ests_cache::wait_for(&caches.records),
            ests_cache::wait_for(&caches.sets),
        ],
    );
    {
        let (listed, ready) = (listed.clone(), ready.clone());
        tokio::spawn(async move {
            listed.wait().await;
            tracing::info!("caches listed; ready");
            ready.store(true, Ordering::SeqCst);
        });
    }
    let app = router(AppState { caches, metrics });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "serving the scheduler extender");
    axum::serve(listener, app)
        .with_graceful_shutdown(serve::shutdown_signal())
        .await
        .context("serving the extender")
}
