//! What tests on the real node share: pods of the test image placed on the node, and the
//! waits for them.

use std::net::IpAddr;
use std::time::Duration;

use ests_testenv::invariants::ANSWER_ANNOTATION;
use ests_testenv::real_node::RealNode;
use ests_testenv::real_node::images::{ANSWER_IMAGE, ANSWER_PORT};
use ests_testenv::wait_for;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::ResourceExt;
use kube::api::Api;
use serde_json::{Value, json};

use super::{Env, namespace};

pub const TIMEOUT: Duration = Duration::from_secs(120);

/// Merges the real node's placement into a pod spec.
pub fn on_real_node(mut spec: Value) -> Value {
    if let (Some(spec), Value::Object(placement)) = (spec.as_object_mut(), RealNode::placement()) {
        spec.extend(placement);
    }
    spec
}

/// The test image's container: answers on [`ANSWER_PORT`], Ready once it listens.
pub fn answer_container() -> Value {
    json!({
        "name": "answer",
        "image": ANSWER_IMAGE,
        "imagePullPolicy": "Never",
        "readinessProbe": {"tcpSocket": {"port": ANSWER_PORT}, "periodSeconds": 1},
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
    })
}

pub fn answer_set(name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1",
        "kind": "EnhancedStatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": name}},
            "updateStrategy": {"rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {
                    "labels": {"app": name},
                    "annotations": {ANSWER_ANNOTATION: ANSWER_PORT.to_string()},
                },
                "spec": on_real_node(json!({
                    "terminationGracePeriodSeconds": 1,
                    "securityContext": {"runAsUser": 65532, "runAsNonRoot": true},
                    "containers": [answer_container()],
                })),
            }
        }
    })
}

/// A namespace whose `default` service account exists (pods are refused before it does).
pub async fn real_namespace(
    env: &Env,
    name: &str,
) -> anyhow::Result<Api<ests_api::EnhancedStatefulSet>> {
    let sets = namespace(env, name).await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(env.client.clone(), name);
    wait_for(
        format!("{name}/default service account"),
        TIMEOUT,
        || async { Ok(accounts.get_opt("default").await?.map(|_| ())) },
    )
    .await?;
    Ok(sets)
}

/// The Ready, not going pod `name`: (uid, IP).
pub async fn ready_pod(pods: &Api<Pod>, name: &str) -> anyhow::Result<Option<(String, IpAddr)>> {
    let Some(pod) = pods.get_opt(name).await? else {
        return Ok(None);
    };
    let ready = ests_testenv::wait::pod_ready(&pod);
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref());
    Ok(
        match (ready, pod.metadata.deletion_timestamp.is_none(), ip) {
            (true, true, Some(ip)) => Some((pod.uid().unwrap_or_default(), ip.parse()?)),
            _ => None,
        },
    )
}

/// `GET path` over plain HTTP/1.0 from `ip:port` (loopback or the real node's network only):
/// the status code and the body.
pub async fn http_get(ip: IpAddr, port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    use anyhow::Context;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    anyhow::ensure!(
        ests_testenv::real_node::on_this_machine(ip),
        "{ip} is not on this machine; not asking it"
    );
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((ip, port)).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .with_context(|| format!("GET {ip}:{port}{path}: no answer"))??;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("GET {ip}:{port}{path}: no status line"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The sum of a Prometheus counter's samples whose labels include every `key="value"` of
/// `labels`, in a /metrics text.
pub fn counter_sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
