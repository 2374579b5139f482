//! The plain-HTTP side of every component: /metrics, /healthz and /readyz.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

#[derive(Clone)]
struct Health {
    registry: prometheus::Registry,
    ready: Arc<AtomicBool>,
}

/// Starts the server on `addr`; returns the address it listens on.
pub async fn spawn(
    addr: SocketAddr,
    registry: prometheus::Registry,
    ready: Arc<AtomicBool>,
) -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(Health { registry, ready });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "health server stopped");
        }
    });
    Ok(local)
}

async fn metrics(State(h): State<Health>) -> (StatusCode, String) {
    let mut out = String::new();
    match prometheus::TextEncoder::new().encode_utf8(&h.registry.gather(), &mut out) {
        Ok(()) => (StatusCode::OK, out),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn readyz(State(h): State<Health>) -> (StatusCode, &'static str) {
    if h.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}

/// Resolves on SIGTERM or Ctrl-C, with `ready` false from then on: a replica being
/// stopped says so on /readyz while it drains (ests_runtime::server::serve).
pub async fn unready_on_shutdown(ready: Arc<AtomicBool>) {
    shutdown_signal().await;
    ready.store(false, Ordering::SeqCst);
    tracing::info!("shutting down: not ready; draining connections");
}
