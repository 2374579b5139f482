//! `ests webhook`: the admission webhook over HTTPS, with metrics and health on a plain port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context;
use ests_api::{StaticIP, StaticIPPool};
use ests_core::pin::{CniAnnotationFlag, PinSettings, cni_annotations};
use ests_runtime::tls::{CertFiles, reloading_config};
use ests_webhook::{AppState, KeptAddresses, Metrics, router};
use futures::StreamExt;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};

use crate::serve;

#[derive(clap::Args, Debug)]
pub struct WebhookArgs {
    /// Address of the HTTPS server the API server calls.
    #[arg(long, default_value = "0.0.0.0:9443", env = "ESTS_WEBHOOK_ADDR")]
    pub listen: SocketAddr,

    /// PEM certificate (chain) served to the API server; re-read when it changes on disk.
    #[arg(
        long,
        default_value = "/etc/ests/tls/tls.crt",
        env = "ESTS_TLS_CERT_FILE"
    )]
    pub tls_cert_file: PathBuf,

    /// PEM private key of that certificate.
    #[arg(
        long,
        default_value = "/etc/ests/tls/tls.key",
        env = "ESTS_TLS_KEY_FILE"
    )]
    pub tls_key_file: PathBuf,

    /// Seconds between checks of the certificate files for a new certificate.
    #[arg(long, default_value_t = 10, env = "ESTS_CERT_RELOAD_SECONDS")]
    pub cert_reload_seconds: u64,

    /// Seconds to go on serving after SIGTERM, not ready, before closing connections: time
    /// for the Service's endpoints to drop this replica, so that no caller is sent to a
    /// closed port (the chart sets 5; keep it below terminationGracePeriodSeconds). 0
    /// closes at once, for a process no Service fronts.
    #[arg(long, default_value_t = 0, env = "ESTS_SHUTDOWN_DELAY_SECONDS")]
    pub shutdown_delay_seconds: u64,

    /// Address of the plain-HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8082", env = "ESTS_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,

    /// Username of the ests controller, the only creator of static-IP pods (repeatable).
    #[arg(
        long = "controller-user",
        default_value = "system:serviceaccount:ests-system:ests-controller",
        env = "ESTS_CONTROLLER_USERS",
        value_delimiter = ','
    )]
    pub controller_users: Vec<String>,

    /// A pod annotation the CNI reads the pinned addresses from, as key=format, where the
    /// format may use {ips-json} (["10.0.0.5"]), {ips} (10.0.0.5,fd00::5), {ipv4} and {ipv6}
    /// (repeatable); or `none` for no annotation besides ests's own (ests-cni is the IPAM,
    /// also under Calico, which refuses ipAddrs with a foreign IPAM). Ordinary pods naming a
    /// kept address in one of these are refused [default:
    /// cni.projectcalico.org/ipAddrs={ips-json}].
    #[arg(long = "cni-annotation", env = "ESTS_CNI_ANNOTATIONS", value_delimiter = ';', value_parser = CniAnnotationFlag::parse)]
    pub cni_annotations: Vec<CniAnnotationFlag>,
}

pub async fn run(args: WebhookArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry).context("registering webhook metrics")?;
    let ready = Arc::new(AtomicBool::new(false));
    let health = serve::spawn(args.metrics_addr, registry, ready.clone()).await?;
    tracing::info!(addr = %health, "serving metrics and health");

    let reload_metrics = metrics.clone();
    let tls = reloading_config(
        CertFiles {
            cert: args.tls_cert_file.clone(),
            key: args.tls_key_file.clone(),
        },
        Duration::from_secs(args.cert_reload_seconds.max(1)),
        move |result| {
            let label = if result.is_ok() { "success" } else { "error" };
            reload_metrics
                .cert_reloads
                .with_label_values(&[label])
                .inc();
            if result.is_ok() {
                reload_metrics.certs_loaded.inc();
            }
        },
    )
    .await
    .context("loading the serving certificate")?;
    metrics.certs_loaded.inc();

    // Records and pools, from watches: the request path never calls the API server. The
    // record watch feeds the store (the pin looks records up by name) and the index of kept
    // addresses (CNI annotations are judged by address).
    let (records, writer) = reflector::store();
    let kept = Arc::new(RwLock::new(KeptAddresses::default()));
    let stream = reflector::reflector(
        writer,
        watcher::watcher(
            Api::<StaticIP>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff();
    let index = kept.clone();
    tokio::spawn(stream.for_each(move |event| {
        // Errors are the watch's to retry (with backoff); the index keeps what it had.
        if let Ok(event) = event {
            index
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .event(&event);
        }
        std::future::ready(())
    }));
    let (pools, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher::watcher(Api::<StaticIPPool>::all(client), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    tokio::spawn(stream.for_each(|_| async {}));
    let pools_listed = Arc::new(AtomicBool::new(false));
    {
        let (listed, ready, pools_listed) = (
            ests_runtime::watch::Listed::spawn(
                "webhook",
                vec![
                    ests_runtime::watch::wait_for(&records),
                    ests_runtime::watch::wait_for(&pools),
                ],
            ),
            ready.clone(),
            pools_listed.clone(),
        );
        tokio::spawn(async move {
            listed.wait().await;
            tracing::info!("StaticIP and StaticIPPool caches listed; ready");
            pools_listed.store(true, Ordering::SeqCst);
            ready.store(true, Ordering::SeqCst);
        });
    }

    let cni = cni_annotations(&args.cni_annotations)
        .map_err(anyhow::Error::msg)
        .context("--cni-annotation")?;
    let app = router(AppState {
        records,
        kept,
        pools,
        pools_listed,
        pin: Arc::new(PinSettings {
            controller_users: args.controller_users,
            cni,
        }),
        metrics,
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "serving admission webhooks over HTTPS");
    ests_runtime::server::serve(
        listener,
        Some(tls),
        app,
        serve::unready_on_shutdown(ready),
        Duration::from_secs(args.shutdown_delay_seconds),
    )
    .await;
    Ok(())
}
