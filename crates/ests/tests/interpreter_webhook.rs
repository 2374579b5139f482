//! `ests webhook` serves Karmada's Resource Interpreter at `POST /interpret` over TLS: for
//! every operation on the fixtures of config/karmada/testdata, the running process answers
//! exactly what the pure interpreter answers (which `ests-webhook`'s karmada_parity test holds
//! equal to the Lua customization under `karmadactl interpret`); a body that is not a
//! ResourceInterpreterContext gets a 400 with a JSON error.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ests_testenv::{LogsOnFailure, wait_for};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(120);

fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../config/karmada/testdata")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("fixture parses");
    if docs.len() == 1 {
        docs.remove(0)
    } else {
        Value::Array(docs)
    }
}

/// POSTs `body` to `path` over HTTPS (verifying the harness CA); the status and the body.
async fn post(
    addr: SocketAddr,
    ca_pem: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = connector
        .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
        .await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await?;
    tls.write_all(body).await?;
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            anyhow::anyhow!("no HTTP header in {:?}", String::from_utf8_lossy(&response))
        })?;
    let header = String::from_utf8_lossy(&response[..split]).into_owned();
    let status: u16 = header
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {header}"))?;
    let mut body = response[split + 4..].to_vec();
    if header
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..line_end]).trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
    out
}

fn context(operation: &str, object: &Value, extra: Value) -> Value {
    let mut request = json!({
        "uid": format!("uid-{operation}"),
        "kind": {"group": "jke.jdcloud.com", "version": "v1alpha1", "kind": "EnhancedStatefulSet"},
        "name": object["metadata"]["name"],
        "namespace": object["metadata"]["namespace"],
        "operation": operation,
        "object": object,
        "replicas": 0,
    });
    if let (Some(r), Some(e)) = (request.as_object_mut(), extra.as_object()) {
        r.extend(e.clone());
    }
    json!({"apiVersion": "config.karmada.io/v1alpha1", "kind": "ResourceInterpreterContext", "request": request})
}

#[tokio::test]
async fn the_running_webhook_answers_every_interpreter_operation() -> anyhow::Result<()> {
    let env = bare_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let files = env.plane.pki.serving("interpreter-webhook", &[])?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let listen = format!("--listen={addr}");
    let cert = format!("--tls-cert-file={}", files.cert.display());
    let key = format!("--tls-key-file={}", files.key.display());
    start_ests(
        env.plane,
        "ests-interpreter-webhook",
        "webhook",
        &[&listen, &cert, &key],
    )
    .await?;
    let ca = env.plane.pki.ca_pem.clone();
    wait_for("the webhook serves /interpret", T, || async {
        Ok(post(addr, &ca, "/interpret", b"{}").await.ok().map(|_| ()))
    })
    .await?;

    let desired = fixture("desired-web.yaml");
    let observed = fixture("observed-web-member2.yaml");
    let cases = [
        context("InterpretReplica", &desired, json!({})),
        context("ReviseReplica", &desired, json!({"replicas": 2})),
        context("Retain", &desired, json!({"observedObject": observed})),
        context(
            "AggregateStatus",
            &desired,
            json!({"aggregatedStatus": fixture("status-items.yaml")}),
        ),
        context("InterpretStatus", &observed, json!({})),
        context("InterpretHealth", &observed, json!({})),
        context("InterpretDependency", &desired, json!({})),
    ];
    for case in &cases {
        let body = serde_json::to_vec(case)?;
        let (status, reply) = post(addr, &ca, "/interpret", &body).await?;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
        let expected = ests_webhook::review_interpretation(&body).body;
        let reply: Value = serde_json::from_slice(&reply)?;
        let expected: Value = serde_json::from_slice(&expected)?;
        assert_eq!(reply, expected, "{}", case["request"]["operation"]);
        assert_eq!(reply["response"]["successful"], true, "{reply}");
        assert_eq!(reply["response"]["uid"], case["request"]["uid"]);
    }
    let (status, reply) = post(addr, &ca, "/interpret", b"not json").await?;
    assert_eq!(status, 400);
    assert!(serde_json::from_slice::<Value>(&reply)?["error"].is_string());
    env.plane.stop_process("ests-interpreter-webhook")?;
    Ok(())
}
