//! The scheduler extender with client certificates: kube-scheduler, presenting the
//! certificate its extender entry's tlsConfig names, schedules through it; a caller without
//! one never gets an answer.

mod support;

use std::time::Duration;

use ests_testenv::{LogsOnFailure, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde_json::json;
use support::*;

const T: Duration = Duration::from_secs(120);

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

    let answer = call_without_client_certificate(port, &pki.ca_pem).await;
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
    // Not ignorable: bound only if the scheduler got through to the extender.
    ordinary_pod_is_bound(&pods, json!({})).await?;
    let log = std::fs::read_to_string(env.plane.log_path("ests-extender"))?;
    assert!(log.contains("client_certificates=true"), "{log}");
    Ok(())
}
