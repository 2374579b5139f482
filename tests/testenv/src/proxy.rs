//! An HTTPS reverse proxy on loopback in front of the API server, for one client identity,
//! that a test can tell to swallow Lease writes: the process behind it then cannot renew
//! its leader Lease while everything else it does still works (a partition of one path, as
//! a flaky network or an overloaded API server gives).
//!
//! TLS ends at the proxy (with a serving certificate of the harness CA) so it can see each
//! request's method and path; it sends the request on with its own client for the identity,
//! so the API server authenticates the proxied process as that user. Responses, watches
//! included, stream back as they come. It counts the watches the process opens, by path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kube::client::Body;
use kube::config::{KubeConfigOptions, Kubeconfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::task::JoinHandle;

use crate::ControlPlane;
use crate::control_plane::write_kubeconfig;

/// A running proxy. Dropping it stops it (and every connection through it).
pub struct ApiProxy {
    /// A kubeconfig that reaches the API server through the proxy.
    pub kubeconfig: PathBuf,
    pub addr: SocketAddr,
    block_lease_writes: Arc<AtomicBool>,
    swallowed: Arc<AtomicU64>,
    watches: Watches,
    task: JoinHandle<()>,
}

/// Watches by path (`/api/v1/pods`), selectors aside.
type Watches = Arc<Mutex<WatchCounts>>;

#[derive(Debug, Default)]
struct WatchCounts {
    /// Watch requests made.
    requested: BTreeMap<String, u64>,
    /// Watches whose answer is still streaming.
    open: BTreeMap<String, u64>,
    /// The most open at once. A watch the API server ended and the client opened again
    /// counts once here, where two watchers of one kind count twice.
    most_open: BTreeMap<String, u64>,
}

/// One open watch: counted while its answer streams, uncounted when hyper drops the body.
struct OpenWatch {
    watches: Watches,
    path: String,
}

impl OpenWatch {
    fn new(watches: Watches, path: String) -> Self {
        {
            let mut w = watches.lock().unwrap_or_else(PoisonError::into_inner);
            *w.requested.entry(path.clone()).or_default() += 1;
            let open = {
                let open = w.open.entry(path.clone()).or_default();
                *open += 1;
                *open
            };
            let most = w.most_open.entry(path.clone()).or_default();
            *most = (*most).max(open);
        }
        Self { watches, path }
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        let mut w = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = w.open.get_mut(&self.path) {
            *open = open.saturating_sub(1);
        }
    }
}

impl ApiProxy {
    /// Starts a proxy that forwards to `plane`'s API server as `user` in `groups` (a client
    /// certificate, as [`ControlPlane::client_as`]).
    pub async fn start(plane: &ControlPlane, user: &str, groups: &[&str]) -> anyhow::Result<Self> {
        crate::install_crypto_provider();
        let (direct, _) = plane.client_as(user, groups).await?;
        let kubeconfig = Kubeconfig::read_from(&direct)
            .with_context(|| format!("reading {}", direct.display()))?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        // A proxy passes on what the API server answers; retrying is its client's business.
        config.default_retry = false;
        let upstream = kube::Client::try_from(config).context("building the proxy's client")?;

        let serving = plane.pki.serving("api-proxy", &[])?;
        let certs = CertificateDer::pem_file_iter(&serving.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("reading {}", serving.cert.display()))?;
        let key = PrivateKeyDer::from_pem_file(&serving.key)
            .with_context(|| format!("reading {}", serving.key.display()))?;
        let mut tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("the proxy's serving certificate")?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy")?;
        let addr = listener.local_addr()?;
        let stem: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        // Not checked by the proxy (it asks for none); its own file names, so the certificate
        // files of a direct kubeconfig for the same user are left alone.
        let client_cert = plane.pki.client(&format!("proxy-{stem}"), user, groups)?;
        let path = plane
            .dir
            .join(format!("kubeconfig-proxy-{}-{stem}", addr.port()));
        write_kubeconfig(
            &path,
            &format!("https://{addr}"),
            &plane.pki.ca_cert,
            &client_cert,
        )?;

        let block_lease_writes = Arc::new(AtomicBool::new(false));
        let swallowed = Arc::new(AtomicU64::new(0));
        let watches = Watches::default();
        let (block, count, watched) = (
            block_lease_writes.clone(),
            swallowed.clone(),
            watches.clone(),
        );
        let task = tokio::spawn(async move {
            // Each connection's task ends with the accept loop: aborting this task drops
            // the set, which aborts them.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                let (block, count, watched) = (block.clone(), count.clone(), watched.clone());
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |request: http::Request<Incoming>| {
                        let open = is_watch(request.uri()).then(|| {
                            OpenWatch::new(watched.clone(), request.uri().path().to_string())
                        });
                        let answer =
                            forward(upstream.clone(), block.clone(), count.clone(), request);
                        async move {
                            let response = answer.await?;
                            // The watch stays counted as open until its body is dropped.
                            Ok::<_, std::convert::Infallible>(response.map(move |body| {
                                body.map_frame(move |frame| {
                                    let _open = &open;
                                    frame
                                })
                                .boxed_unsync()
                            }))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
                // Reap finished connections so the set does not grow without bound.
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            kubeconfig: path,
            addr,
            block_lease_writes,
            swallowed,
            watches,
            task,
        })
    }

    /// From now on (`true`), Lease writes get no answer; `false` lets them through again.
    pub fn block_lease_writes(&self, block: bool) {
        self.block_lease_writes.store(block, Ordering::SeqCst);
    }

    /// Lease writes swallowed so far.
    pub fn swallowed(&self) -> u64 {
        self.swallowed.load(Ordering::SeqCst)
    }

    /// The watch requests made through the proxy so far, by path.
    pub fn watches(&self) -> BTreeMap<String, u64> {
        self.watches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .requested
            .clone()
    }

    /// The most watches of each path open at once so far (a watch the API server ended and
    /// the client opened again counts once).
    pub fn most_open_watches(&self) -> BTreeMap<String, u64> {
        self.watches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .most_open
            .clone()
    }
}

impl Drop for ApiProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether a request writes a Lease (`coordination.k8s.io` leases: create, update, patch,
/// delete).
fn is_lease_write(method: &http::Method, path: &str) -> bool {
    method != http::Method::GET && path.contains("/leases")
}

/// Whether a request opens a watch (`?watch=true`, as every client-go and kube-rs watch
/// asks).
fn is_watch(uri: &http::Uri) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"))
}

async fn forward(
    upstream: kube::Client,
    block: Arc<AtomicBool>,
    swallowed: Arc<AtomicU64>,
    request: http::Request<Incoming>,
) -> Result<http::Response<Body>, std::convert::Infallible> {
    if block.load(Ordering::SeqCst) && is_lease_write(request.method(), request.uri().path()) {
        swallowed.fetch_add(1, Ordering::SeqCst);
        // Swallowed: no answer at all, as a partition gives; the client must time out.
        std::future::pending::<()>().await;
    }
    let (mut parts, body) = request.into_parts();
    // The upstream client names the API server itself.
    parts.headers.remove(http::header::HOST);
    if let Some(path) = parts.uri.path_and_query().cloned() {
        parts.uri = http::Uri::from(path);
    }
    let answer = match body.collect().await {
        Ok(body) => {
            let request = http::Request::from_parts(parts, Body::from(body.to_bytes()));
            upstream.send(request).await.map_err(|e| e.to_string())
        }
        Err(e) => Err(format!("reading the request: {e}")),
    };
    Ok(answer.unwrap_or_else(|e| {
        let mut response = http::Response::new(Body::from(format!("proxy: {e}").into_bytes()));
        *response.status_mut() = http::StatusCode::BAD_GATEWAY;
        response
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_are_told_by_their_query() {
        let uri = |s: &str| s.parse::<http::Uri>().expect("uri");
        assert!(is_watch(&uri(
            "/api/v1/pods?labelSelector=a%3Db&watch=true&timeoutSeconds=290"
        )));
        assert!(!is_watch(&uri("/api/v1/pods?limit=500")));
        assert!(!is_watch(&uri("/api/v1/pods")));
    }

    #[test]
    fn only_lease_writes_are_swallowed() {
        let lease = "/apis/coordination.k8s.io/v1/namespaces/ests-system/leases/ests-controller";
        assert!(is_lease_write(&http::Method::PUT, lease));
        assert!(is_lease_write(&http::Method::PATCH, lease));
        assert!(is_lease_write(
            &http::Method::POST,
            "/apis/coordination.k8s.io/v1/namespaces/ests-system/leases"
        ));
        assert!(!is_lease_write(&http::Method::GET, lease));
        assert!(!is_lease_write(
            &http::Method::PUT,
            "/api/v1/namespaces/a/pods/web-0"
        ));
    }
}
