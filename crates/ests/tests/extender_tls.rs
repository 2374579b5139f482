//! The scheduler extender with client certificates: kube-scheduler, presenting the
//! certificate its extender entry's tlsConfig names, schedules through it; a caller without
//! one never gets an answer.

mod support;

use std::sync::Arc;
use std::time::Duration;

use ests_testenv::{LogsOnFailure, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(120);

/// What a TLS client trusting `ca_pem` and presenting no certificate reads back for a
/// filter call: the extender must not answer.
async fn unauthenticated_call(port: u16, ca_pem: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()).flatten() {
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name = ServerName::try_from("127.0.0.1")?.to_owned();
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(
            b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        )
        .await?;
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await?;
        anyhow::Ok(answer)
    };
    match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => format!("refused: {e:#}"),
        Err(_) => "no answer within 10 s".into(),
    }
}

#[tokio::test]
async fn only_a_caller_with_a_client_certificate_reaches_the_extender() -> anyhow::Result<()> {
    let env = bare_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let pki = &env.plane.pki;
    let serving = pki.serving("extender-tls", &[])?;
    let scheduler = pki.client("scheduler-extender-client", "system:kube-scheduler", &[])?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let (listen, cert, key, ca) = (
        format!("--listen=127.0.0.1:{port}"),
        format!("--tls-cert-file={}", serving.cert.display()),
        format!("--tls-key-file={}", serving.key.display()),
        format!("--client-ca-file={}", pki.ca_cert.display()),
    );
    start_ests(
        env.plane,
        "ests-extender",
        "extender",
        &[&listen, &cert, &key, &ca],
    )
    .await?;
    wait_for("the extender listens", T, || async {
        Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ()))
    })
    .await?;

    let answer = unauthenticated_call(port, &pki.ca_pem).await;
    assert!(
        !answer.contains("HTTP/1.1"),
        "a caller without a certificate was answered: {answer}"
    );

    // kube-scheduler with the certificate in its extender entry; not ignorable, so a pod is
    // placed only through the extender.
    let extenders = format!(
        "extenders:\n- urlPrefix: https://127.0.0.1:{port}\n  filterVerb: filter\n  prioritizeVerb: prioritize\n  weight: 1\n  nodeCacheCapable: true\n  httpTimeout: 2s\n  ignorable: false\n  enableHTTPS: true\n  tlsConfig:\n    caFile: {}\n    certFile: {}\n    keyFile: {}\n",
        pki.ca_cert.display(),
        scheduler.cert.display(),
        scheduler.key.display()
    );
    env.plane.restart_scheduler(Some(&extenders)).await?;
    let ns = "ext-tls";
    namespace(&env, ns).await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "plain"},
        "spec": {"containers": [{"name": "app", "image": "app:v1"}]}
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    wait_for("the pod is scheduled through the extender", T, || async {
        Ok(pods
            .get("plain")
            .await?
            .spec
            .and_then(|s| s.node_name)
            .map(|_| ()))
    })
    .await?;
    let log = std::fs::read_to_string(env.plane.log_path("ests-extender"))?;
    assert!(log.contains("client_certificates=true"), "{log}");
    Ok(())
}
