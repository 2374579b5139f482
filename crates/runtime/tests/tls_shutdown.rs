//! `tls::serve` at shutdown: a request in flight is answered before `serve` returns, and
//! idle keep-alive connections are closed by the server (HTTP/1.1: a clean close; HTTP/2:
//! GOAWAY), so a process that exits when `serve` returns resets no connection a client is
//! about to use (kube-apiserver keeps its connections to a webhook open and reuses them).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use ests_runtime::tls::{CertFiles, reloading_config, serve};
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;

async fn connect(port: u16, ca: &str) -> anyhow::Result<TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    Ok(connector
        .connect(rustls::pki_types::ServerName::try_from("localhost")?, tcp)
        .await?)
}

/// Reads one HTTP/1.1 response (headers and a body of its Content-Length).
async fn response(stream: &mut TlsStream<tokio::net::TcpStream>) -> anyhow::Result<String> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&buffer).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return Ok(text);
            }
        }
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "the connection closed mid-response: {text:?}");
        buffer.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn shutdown_answers_the_request_in_flight_and_closes_idle_connections() -> anyhow::Result<()>
{
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!("ests-tls-shutdown-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])?.self_signed(&key)?;
    let files = CertFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    };
    std::fs::write(&files.cert, cert.pem())?;
    std::fs::write(&files.key, key.serialize_pem())?;
    let config = reloading_config(files, Duration::from_secs(60), |_| {}).await?;

    let finished = Arc::new(AtomicBool::new(false));
    let (slow_started, slow_started_rx) = tokio::sync::oneshot::channel::<()>();
    let slow_started = Arc::new(std::sync::Mutex::new(Some(slow_started)));
    let app = Router::new()
        .route("/fast", get(|| async { "fast" }))
        .route(
            "/slow",
            get({
                let finished = finished.clone();
                move || async move {
                    if let Some(started) = slow_started.lock().ok().and_then(|mut s| s.take()) {
                        let _ = started.send(());
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    finished.store(true, Ordering::SeqCst);
                    "slow"
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, config, app, async {
        let _ = stopped.await;
    }));

    // An idle keep-alive connection, used once.
    let ca = cert.pem();
    let mut idle = connect(port, &ca).await?;
    idle.write_all(b"GET /fast HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    assert!(response(&mut idle).await?.ends_with("fast"));
    // A request in flight when the shutdown begins.
    let mut busy = connect(port, &ca).await?;
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    slow_started_rx.await?;
    let _ = stop.send(());

    tokio::time::timeout(Duration::from_secs(5), server).await??;
    assert!(
        finished.load(Ordering::SeqCst),
        "serve returned before the request in flight was answered"
    );
    let answer = tokio::time::timeout(Duration::from_secs(5), response(&mut busy)).await??;
    assert!(answer.ends_with("slow"), "{answer}");
    // The idle connection was closed by the server, cleanly, by the time serve returned.
    let mut rest = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_millis(200), idle.read(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0)))
            || matches!(&closed, Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof),
        "the idle connection is still open after serve returned: {closed:?}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// Reads one HTTP/1.1 response from a plain connection.
async fn plain_response(stream: &mut tokio::net::TcpStream) -> anyhow::Result<String> {
    let mut text = String::new();
    let mut chunk = [0u8; 1024];
    while !text.contains("\r\n\r\n") || !text.ends_with("ok") {
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "the connection closed mid-response: {text:?}");
        text.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
    Ok(text)
}

#[tokio::test]
async fn while_draining_the_server_answers_and_each_answer_closes_its_connection()
-> anyhow::Result<()> {
    let app = Router::new().route("/", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let drain = Duration::from_millis(600);
    let server = tokio::spawn(ests_runtime::server::serve(
        listener,
        None,
        app,
        async {
            let _ = stopped.await;
        },
        drain,
    ));
    let request = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut kept = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    kept.write_all(request).await?;
    let before = plain_response(&mut kept).await?;
    assert!(
        !before.to_ascii_lowercase().contains("connection: close"),
        "{before}"
    );

    let began = std::time::Instant::now();
    let _ = stop.send(());
    // The kept connection, used again while draining: answered, told to close, closed.
    kept.write_all(request).await?;
    let during = plain_response(&mut kept).await?;
    assert!(
        during.to_ascii_lowercase().contains("connection: close"),
        "{during}"
    );
    let mut rest = [0u8; 16];
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(1), kept.read(&mut rest)).await??,
        0,
        "the connection stayed open after an answer that closes it"
    );
    // A new connection while draining is still answered (the endpoints may not have
    // dropped this replica yet).
    let mut late = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    late.write_all(request).await?;
    assert!(plain_response(&mut late).await?.ends_with("ok"));
    tokio::time::timeout(Duration::from_secs(5), server).await??;
    assert!(
        began.elapsed() >= drain,
        "serve returned {:?} after the signal, before the drain of {drain:?}",
        began.elapsed()
    );
    Ok(())
}
