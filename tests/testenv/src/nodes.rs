//! Simulated nodes: created with chosen capacity, Ready through KWOK, killed by taking the
//! KWOK label away.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::{Node, Taint};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::control_plane::{MANAGED_LABEL, NODE_MONITOR_GRACE};
use crate::wait::wait_for;

/// A node to create.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub cpu: String,
    pub memory: String,
    pub pods: String,
    pub pod_cidr: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

impl NodeSpec {
    /// A node with 32 CPUs, 256Gi of memory and room for 110 pods.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            cpu: "32".into(),
            memory: "256Gi".into(),
            pods: "110".into(),
            pod_cidr: None,
            labels: BTreeMap::new(),
            taints: Vec::new(),
        }
    }

    pub fn capacity(mut self, cpu: &str, memory: &str, pods: &str) -> Self {
        (self.cpu, self.memory, self.pods) = (cpu.into(), memory.into(), pods.into());
        self
    }

    pub fn pod_cidr(mut self, cidr: &str) -> Self {
        self.pod_cidr = Some(cidr.into());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// A NoSchedule taint `ests.test/owner=<owner>`, so only pods tolerating it land here
    /// and a test can own the node.
    pub fn owned_by(mut self, owner: &str) -> Self {
        self.taints.push(Taint {
            key: "ests.test/owner".into(),
            value: Some(owner.into()),
            effect: "NoSchedule".into(),
            time_added: None,
        });
        self
    }

    fn to_node(&self) -> anyhow::Result<Node> {
        // KWOK hands out pod IPs from a node's podCIDR; nodes without one would each draw
        // from the same global range and give two pods one IP (the invariant checker caught
        // exactly that). So every node gets a range of its own.
        let pod_cidr = self.pod_cidr.clone().unwrap_or_else(next_pod_cidr);
        let mut labels = self.labels.clone();
        labels.insert(MANAGED_LABEL.0.into(), MANAGED_LABEL.1.into());
        labels.insert("kubernetes.io/hostname".into(), self.name.clone());
        labels.insert("kubernetes.io/os".into(), "linux".into());
        labels.insert("kubernetes.io/arch".into(), "amd64".into());
        let resources = json!({"cpu": self.cpu, "memory": self.memory, "pods": self.pods});
        Ok(serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": labels,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"}
            },
            "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr], "taints": self.taints},
            "status": {"allocatable": resources, "capacity": resources}
        }))?)
    }
}

/// The next /22 of [`crate::control_plane::KWOK_POD_CIDR`] (1,022 pods per node, 8,192 nodes).
fn next_pod_cidr() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let base = u32::from(Ipv4Addr::new(10, 128, 0, 0));
    format!("{}/22", Ipv4Addr::from(base + (n % 8192) * 1024))
}

/// Whether the node's Ready condition is True.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Creates the nodes and waits until each is Ready.
pub async fn create_nodes(client: &Client, specs: &[NodeSpec]) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    for spec in specs {
        api.create(&PostParams::default(), &spec.to_node()?)
            .await
            .with_context(|| format!("creating node {}", spec.name))?;
    }
    for spec in specs {
        wait_node_ready(client, &spec.name, true, Duration::from_secs(60)).await?;
    }
    warm_ip_pools(client, specs).await
}

/// Runs one pod on each node until it has an IP, then deletes it. KWOK creates a node's IP
/// pool when the node's first pod needs an address, and two first pods at once can each
/// create one (check-then-store in `PodController.ipPool`): both then get the pool's first
/// address. After this, every node's pool exists before any test's pods arrive.
async fn warm_ip_pools(client: &Client, specs: &[NodeSpec]) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Pod;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let name = |node: &str| format!("kwok-ip-pool-warmup-{node}");
    for spec in specs {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name(&spec.name)},
            "spec": {"nodeName": spec.name, "containers": [{"name": "warmup", "image": "warmup"}]}
        }))?;
        pods.create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating the IP pool warm-up pod of {}", spec.name))?;
    }
    for spec in specs {
        let pod_name = name(&spec.name);
        wait_for(
            format!("{pod_name} has an IP"),
            Duration::from_secs(60),
            || async {
                let pod = pods.get(&pod_name).await?;
                Ok(pod.status.and_then(|s| s.pod_ip).map(|_| ()))
            },
        )
        .await?;
    }
    for spec in specs {
        pods.delete(&name(&spec.name), &DeleteParams::default().grace_period(0))
            .await
            .with_context(|| format!("deleting the IP pool warm-up pod of {}", spec.name))?;
    }
    Ok(())
}

/// Waits until the node's Ready condition is True (`ready`) or anything else (`!ready`).
pub async fn wait_node_ready(
    client: &Client,
    name: &str,
    ready: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    wait_for(format!("node {name} Ready={ready}"), timeout, || async {
        let node = api.get(name).await?;
        Ok((is_ready(&node) == ready).then_some(()))
    })
    .await
}

/// "Kills" a node: KWOK stops managing it, so its Lease is no longer renewed and its pods
/// stay as a dead node leaves them.
pub async fn kill_node(client: &Client, name: &str) -> anyhow::Result<()> {
    set_managed(client, name, false).await
}

/// Brings a killed node back.
pub async fn revive_node(client: &Client, name: &str) -> anyhow::Result<()> {
    set_managed(client, name, true).await
}

async fn set_managed(client: &Client, name: &str, managed: bool) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let value = managed.then_some(MANAGED_LABEL.1);
    let patch = json!({"metadata": {"labels": {MANAGED_LABEL.0: value}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("setting node {name} managed={managed}"))?;
    Ok(())
}

/// How long after a kill the node lifecycle controller should have marked the node, with
/// room for a busy machine.
pub fn not_ready_timeout() -> Duration {
    NODE_MONITOR_GRACE * 4
}

/// Deletes nodes (for tests that clean up after themselves).
pub async fn delete_nodes(client: &Client, names: &[&str]) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    for name in names {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(e) => return Err(e).with_context(|| format!("deleting node {name}")),
        }
    }
    Ok(())
}
