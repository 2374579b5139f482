//! `ests extender`: the scheduler extender, answering kube-scheduler from watch caches.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use ests_core::pin::{CniAnnotationFlag, cni_annotations};
use ests_extender::bind::Binder;
use ests_extender::watch::SharedIndex;
use ests_extender::{AppState, Metrics, router};
use ests_runtime::tls::{CertFiles, client_verifier, reloading_config_with};
use ests_staticip::Ipam;
use kube::Client;

use crate::serve;

#[derive(clap::Args, Debug)]
pub struct ExtenderArgs {
    /// Address of the server kube-scheduler calls (urlPrefix in its configuration).
    #[arg(long, default_value = "0.0.0.0:8888", env = "ESTS_EXTENDER_ADDR")]
    pub listen: SocketAddr,

    /// Seconds to go on serving after SIGTERM, not ready, before closing connections: time
    /// for the Service's endpoints to drop this replica, so that no caller is sent to a
    /// closed port (the chart sets 5; keep it below terminationGracePeriodSeconds). 0
    /// closes at once, for a process no Service fronts.
    #[arg(long, default_value_t = 0, env = "ESTS_SHUTDOWN_DELAY_SECONDS")]
    pub shutdown_delay_seconds: u64,

    /// Address of the plain-HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8083", env = "ESTS_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,

    /// Answer the bind verb: range-mode static-IP pods (those requesting the managed
    /// resource jke.jdcloud.com/static-ip) get their addresses from the chosen node's blocks
    /// before they are bound. Requires the bind extender entry in the scheduler's
    /// configuration and `ests controller --extender-binds`.
    #[arg(long, env = "ESTS_EXTENDER_BIND")]
    pub bind: bool,

    /// Annotation a CNI reads a pod's addresses from, as key=format, written at bind
    /// (`{ips-json}`, `{ips}`, `{ipv4}`, `{ipv6}` are replaced); repeat or separate with ';';
    /// `none` for no annotation besides ests's own (ests-cni is the IPAM). Default: Calico's
    /// cni.projectcalico.org/ipAddrs={ips-json}. Use the webhook's setting.
    #[arg(long = "cni-annotation", env = "ESTS_CNI_ANNOTATIONS", value_delimiter = ';', value_parser = CniAnnotationFlag::parse)]
    pub cni_annotations: Vec<CniAnnotationFlag>,

    /// Serve HTTPS with this certificate (PEM; reloaded when the file changes). Without it
    /// the extender serves plain HTTP, for a scheduler on the same host or network policy.
    #[arg(long, env = "ESTS_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,

    /// The private key of --tls-cert-file (PEM).
    #[arg(long, env = "ESTS_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// Admit only callers presenting a client certificate signed by a CA in this file (PEM):
    /// kube-scheduler, with the extender entry's tlsConfig.certFile and keyFile. Others fail
    /// the TLS handshake, so no one else can filter, prioritize or bind. Requires
    /// --tls-cert-file. Read at start.
    #[arg(long, env = "ESTS_CLIENT_CA_FILE", requires = "tls_cert_file")]
    pub client_ca_file: Option<PathBuf>,

    /// How often the certificate files are checked for a new certificate, in seconds.
    #[arg(long, default_value_t = 10, env = "ESTS_CERT_RELOAD_SECONDS")]
    pub cert_reload_seconds: u64,
}

pub async fn run(args: ExtenderArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry).context("registering extender metrics")?;
    let ready = Arc::new(AtomicBool::new(false));
    let health = serve::spawn(args.metrics_addr, registry.clone(), ready.clone()).await?;
    tracing::info!(addr = %health, "serving metrics and health");

    let index = SharedIndex::default();
    let mut waits = vec![];
    let binder = if args.bind {
        // Allocation reads pools and blocks from caches of its own and writes by
        // compare-and-swap; the index's copies only serve the predicates.
        let reflectors = ests_runtime::Reflectors::new(client.clone());
        let ipam = Ipam {
            client: client.clone(),
            pools: reflectors.store(),
            blocks: reflectors.store(),
            metrics: ests_staticip::Metrics::register(&registry)
                .context("registering allocation metrics")?,
        };
        waits.push(ests_runtime::watch::wait_for(&ipam.pools));
        waits.push(ests_runtime::watch::wait_for(&ipam.blocks));
        let cni = cni_annotations(&args.cni_annotations)
            .map_err(anyhow::Error::msg)
            .context("--cni-annotation")?;
        Some(Arc::new(Binder {
            client: client.clone(),
            ipam,
            cni,
        }))
    } else {
        None
    };
    let indexed = ests_extender::watch::follow(&client, &index, &metrics);
    waits.push(Box::pin(async move { indexed.wait().await }));
    let listed = ests_runtime::watch::Listed::spawn("extender", waits);
    {
        let (listed, ready) = (listed.clone(), ready.clone());
        tokio::spawn(async move {
            listed.wait().await;
            tracing::info!("caches listed; ready");
            ready.store(true, Ordering::SeqCst);
        });
    }
    let app = router(AppState {
        index,
        metrics,
        binder,
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let (shutdown, drain) = (
        serve::unready_on_shutdown(ready),
        Duration::from_secs(args.shutdown_delay_seconds),
    );
    match (args.tls_cert_file, args.tls_key_file) {
        (Some(cert), Some(key)) => {
            let client_auth = match &args.client_ca_file {
                Some(ca) => Some(client_verifier(ca).context("loading the client CA")?),
                None => None,
            };
            let authenticated = client_auth.is_some();
            let tls = reloading_config_with(
                CertFiles { cert, key },
                Duration::from_secs(args.cert_reload_seconds.max(1)),
                client_auth,
                |result| {
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "reloading the serving certificate");
                    }
                },
            )
            .await
            .context("loading the serving certificate")?;
            tracing::info!(%addr, bind = args.bind, client_certificates = authenticated, "serving the scheduler extender over HTTPS");
            ests_runtime::server::serve(listener, Some(tls), app, shutdown, drain).await;
            Ok(())
        }
        _ => {
            tracing::info!(%addr, bind = args.bind, "serving the scheduler extender over HTTP");
            ests_runtime::server::serve(listener, None, app, shutdown, drain).await;
            Ok(())
        }
    }
}
