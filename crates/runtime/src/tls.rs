//! HTTPS for the webhook and the scheduler extender: rustls (TLS 1.2 and 1.3 only, the
//! process's one crypto provider) with a certificate that is reloaded from disk without a
//! restart.
//!
//! A mounted Secret is updated by swapping a symlink (`..data`), which file watches miss, so
//! the files are polled: every interval both are read, and when their bytes changed and
//! they form a valid pair the new certificate is served to the next handshake. A bad pair
//! keeps the old one (and is logged and counted).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

/// Where the certificate and its key are read from.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    async fn read(&self) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let cert = tokio::fs::read(&self.cert)
            .await
            .with_context(|| format!("reading {}", self.cert.display()))?;
        let key = tokio::fs::read(&self.key)
            .await
            .with_context(|| format!("reading {}", self.key.display()))?;
        Ok((cert, key))
    }
}

/// A certificate and key in PEM, checked to belong together.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("parsing the certificate PEM")?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in the certificate file");
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("parsing the private key PEM")?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .context("no rustls crypto provider installed")?;
    let certified = CertifiedKey::from_der(chain, key, provider)
        .context("certificate and key do not belong together")?;
    Ok(certified)
}

/// Serves whichever certificate was loaded last.
#[derive(Debug)]
pub struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

impl ReloadingCert {
    fn set(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
    }
}

/// A verifier that admits only clients presenting a certificate signed by a CA of `ca_file`
/// (PEM): any other caller fails the handshake.
pub fn client_verifier(ca_file: &Path) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let pem = std::fs::read(ca_file).with_context(|| format!("reading {}", ca_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.with_context(|| format!("parsing {}", ca_file.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("a CA certificate of {}", ca_file.display()))?;
    }
    if roots.is_empty() {
        anyhow::bail!("{} holds no CA certificate", ca_file.display());
    }
    WebPkiClientVerifier::builder(Arc::new(roots))
        .build()
        .with_context(|| format!("client verification with {}", ca_file.display()))
}

/// A TLS configuration over `files`, and the task that reloads them every `interval` (it
/// runs until the process ends). Fails if the files cannot be loaded now.
pub async fn reloading_config(
    files: CertFiles,
    interval: Duration,
    on_reload: impl Fn(Result<(), String>) + Send + 'static,
) -> anyhow::Result<Arc<ServerConfig>> {
    reloading_config_with(files, interval, None, on_reload).await
}

/// [`reloading_config`], with clients authenticated by `client_auth` when given.
pub async fn reloading_config_with(
    files: CertFiles,
    interval: Duration,
    client_auth: Option<Arc<dyn ClientCertVerifier>>,
    on_reload: impl Fn(Result<(), String>) + Send + 'static,
) -> anyhow::Result<Arc<ServerConfig>> {
    let (cert, key) = files.read().await?;
    let resolver = Arc::new(ReloadingCert {
        current: RwLock::new(Arc::new(certified_key(&cert, &key)?)),
    });
    let builder = ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ]);
    let builder = match client_auth {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio::spawn(async move {
        let mut last = (cert, key);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let read = match files.read().await {
                Ok(read) => read,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "certificate reload: keeping the current certificate");
                    on_reload(Err(format!("{e:#}")));
                    continue;
                }
            };
            if read == last {
                continue;
            }
            match certified_key(&read.0, &read.1) {
                Ok(key) => {
                    resolver.set(key);
                    tracing::info!(cert = %files.cert.display(), "serving a new certificate");
                    on_reload(Ok(()));
                    last = read;
                }
                // Half-written or mismatched (cert and key swapped one at a time): keep the
                // old one and look again next tick.
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "certificate reload: keeping the current certificate");
                    on_reload(Err(format!("{e:#}")));
                }
            }
        }
    });
    Ok(Arc::new(config))
}

/// Serves `app` over TLS on `listener` until `shutdown` resolves, then ends every
/// connection gracefully ([`crate::server::serve`] with no drain: for servers no Service
/// fronts).
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Arc<ServerConfig>,
    app: axum::Router,
    shutdown: impl Future<Output = ()>,
) {
    crate::server::serve(listener, Some(config), app, shutdown, Duration::ZERO).await;
}
