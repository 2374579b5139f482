//! Serving an axum app over HTTPS (rustls) or plain HTTP, and stopping without failing a
//! caller.
//!
//! kube-apiserver calls webhooks over HTTP/1.1 and keeps its connections open, one pool
//! per Service name whichever replica a connection reaches; kube-scheduler does the same
//! with the extender. A replica that stops by closing its sockets resets a connection the
//! caller is writing its next request on (`connection reset by peer`, `broken pipe`: the
//! request fails, and a POST is not retried). So a stop has two phases: for `drain`
//! after the signal the server goes on answering, each HTTP/1.1 response with
//! `Connection: close`, so every caller drops its connections itself after a last answer
//! (and dials the replicas the endpoints still list); then it stops accepting, and ends
//! each connection gracefully (HTTP/2 GOAWAY, HTTP/1.1 after the response in flight,
//! idle ones at once), waiting at most [`SHUTDOWN_GRACE`] for them.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::{HeaderValue, header};
use axum::response::Response;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};

/// How long [`serve`] waits, once draining is over, for requests in flight to be answered.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` (over TLS with `tls`, else plain HTTP) until `shutdown`
/// resolves and `drain` has passed since, then ends every connection gracefully; returns
/// once all have ended or [`SHUTDOWN_GRACE`] passed. The process may exit then.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<ServerConfig>>,
    app: axum::Router,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let draining = Arc::new(AtomicBool::new(false));
    let app = app.layer(tower::util::MapResponseLayer::new({
        let draining = draining.clone();
        move |mut response: Response| {
            if draining.load(Ordering::Relaxed) {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    }));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut drained = std::pin::pin!(futures::future::Either::Left(std::future::pending()));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection");
                    continue;
                }
            },
            () = &mut shutdown, if !draining.load(Ordering::Relaxed) => {
                draining.store(true, Ordering::Relaxed);
                drained.set(futures::future::Either::Right(tokio::time::sleep(drain)));
                continue;
            }
            () = &mut drained => break,
        };
        // Answers are small: without this, Nagle's algorithm and the peer's delayed ACK add
        // tens of milliseconds to a response.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "setting TCP_NODELAY");
        }
        let (acceptor, app) = (acceptor.clone(), app.clone());
        // Watched from before the handshake: a shutdown during it still waits for (and
        // ends) the connection.
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let Some(acceptor) = acceptor else {
                return connection(stream, app, watcher, peer).await;
            };
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => connection(tls, app, watcher, peer).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
    drop(listener);
    let open = graceful.count();
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open,
            "connections still open {SHUTDOWN_GRACE:?} after the shutdown began"
        );
    }
}

/// Serves one connection (HTTP/1.1 or HTTP/2, as the client speaks) until it ends or the
/// server's graceful shutdown ends it.
async fn connection<I>(io: I, app: axum::Router, watcher: Watcher, peer: SocketAddr)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let connection = builder
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
