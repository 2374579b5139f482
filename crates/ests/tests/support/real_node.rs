//! What tests on the real node share: pods of the test image placed on the node, and the
//! waits for them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
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

/// The pod range the node agent hands out of on the real node: the node's, whose second
/// address (the node's, on the bridge) is the gateway.
pub const POD_RANGE: &str = "10.88.0.0/16";

/// The `ests-cni` binary built beside the `ests` under test; refused when its sources
/// changed after it was built (a test would run an old plugin).
pub fn ests_cni_binary() -> anyhow::Result<PathBuf> {
    let ests = PathBuf::from(env!("CARGO_BIN_EXE_ests"));
    let plugin = ests.with_file_name("ests-cni");
    anyhow::ensure!(
        plugin.is_file(),
        "{} is missing: build it with `cargo build -p ests-cni` (cargo test --workspace does; add --release for a benchmark)",
        plugin.display()
    );
    let built = std::fs::metadata(&plugin)?.modified()?;
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cni/src");
    for entry in std::fs::read_dir(&sources)? {
        let changed = entry?.metadata()?.modified()?;
        anyhow::ensure!(
            changed <= built,
            "{} is older than its sources: `cargo build -p ests-cni`",
            plugin.display()
        );
    }
    Ok(plugin)
}

/// The ests image built from the `ests` under test and its `ests-cni`, imported into the
/// node: its reference.
pub async fn import_ests_image(node: &RealNode) -> anyhow::Result<String> {
    node.import_ests_image(Path::new(env!("CARGO_BIN_EXE_ests")), &ests_cni_binary()?)
        .await
}

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

/// A static-IP set of the test image with static IPs on and release policy `release`.
pub fn static_ip_set(name: &str, replicas: i32, release: &str) -> Value {
    let mut set = answer_set(name, replicas);
    set["metadata"]["annotations"] = json!({
        ests_api::keys::STATIC_IP_ENABLE: "true",
        ests_api::keys::STATIC_IP_RELEASE_POLICY: release,
    });
    set
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

/// Each Ready pod of `names` with its (uid, address), once all are Ready.
pub async fn ready_pods(
    pods: &Api<Pod>,
    names: &[String],
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, (String, IpAddr)>> {
    wait_for(format!("{names:?} Ready"), timeout, || async {
        let mut found = BTreeMap::new();
        for name in names {
            match ready_pod(pods, name).await? {
                Some(p) => found.insert(name.clone(), p),
                None => return Ok(None),
            };
        }
        Ok(Some(found))
    })
    .await
}

/// Deletes pod `name` (Ready now) and waits until it is back as a new pod, Ready: its
/// (uid, address).
pub async fn recreated(
    pods: &Api<Pod>,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<(String, IpAddr)> {
    use anyhow::Context;
    let (old_uid, _) = ready_pod(pods, name)
        .await?
        .with_context(|| format!("{name} is not Ready"))?;
    pods.delete(name, &kube::api::DeleteParams::default())
        .await?;
    wait_for(format!("{name} back and Ready"), timeout, || async {
        Ok(ready_pod(pods, name)
            .await?
            .filter(|(uid, _)| *uid != old_uid))
    })
    .await
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

/// Whether the agent (handing out of [`POD_RANGE`], lowest free address first) handed `ip`
/// out: host-local, the node's own IPAM, gives .10 and above of the first /17, so a test that
/// holds fewer than eight agent addresses at once tells them apart.
pub fn from_agent(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[2] == 0 && (2..10).contains(&v4.octets()[3]))
}

/// An ordinary pod of the test image on the real node.
pub fn ordinary_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "ordinary"},
                     "annotations": {ANSWER_ANNOTATION: ANSWER_PORT.to_string()}},
        "spec": on_real_node(json!({
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsUser": 65532, "runAsNonRoot": true},
            "containers": [answer_container()],
        })),
    }))
    .expect("a valid pod")
}
