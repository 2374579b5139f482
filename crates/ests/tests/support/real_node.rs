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
