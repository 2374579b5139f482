//! An invariant checker that e2e tests run in the background. It watches pods, nodes,
//! StaticIP records and IP blocks, and records a violation when:
//!
//! - two non-terminated pods hold the same IP;
//! - one address is in two StaticIP records, or allocated in two IP blocks;
//! - a pod leaves the API (so that its identity can be re-created) while it sits on a node
//!   that is NotReady and not fenced (no `node.kubernetes.io/out-of-service` taint): the
//!   old pod may still be running there.
//!
//! The rules live in [`InvariantState`], a plain state machine with unit tests; the watch
//! loop only feeds it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use ests_api::{IPBlock, StaticIP};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The taint that says a node is fenced (known not to run anything).
pub const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";

/// `namespace/name`, how the checker names namespaced objects.
fn key_of(o: &impl ResourceExt) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

/// What the checker knows about a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    pub key: String,
    pub uid: String,
    pub node: Option<String>,
    pub ips: Vec<String>,
    pub terminated: bool,
}

impl PodFacts {
    pub fn of(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or_default();
        let mut ips: Vec<String> = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| ips.iter().map(|i| i.ip.clone()).collect())
            .unwrap_or_default();
        if ips.is_empty() {
            ips.extend(status.and_then(|s| s.pod_ip.clone()));
        }
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        Self {
            key: key_of(pod),
            uid: pod.uid().unwrap_or_default(),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            // Host-network pods share their node's IP by design.
            ips: if host_network { Vec::new() } else { ips },
            terminated: matches!(phase, "Succeeded" | "Failed"),
        }
    }
}

/// What the checker knows about a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeFacts {
    pub ready: bool,
    pub fenced: bool,
}

impl NodeFacts {
    pub fn of(node: &Node) -> Self {
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let fenced = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|ts| ts.iter().any(|t| t.key == OUT_OF_SERVICE_TAINT));
        Self { ready, fenced }
    }
}

/// Owners of addresses, kept incrementally.
#[derive(Default, Debug)]
struct AddressIndex {
    owned: HashMap<String, Vec<String>>,
    owners: HashMap<String, BTreeSet<String>>,
}

impl AddressIndex {
    /// Sets the addresses `owner` holds; returns the addresses now held by more than one.
    fn set(&mut self, owner: &str, addresses: Vec<String>) -> Vec<(String, BTreeSet<String>)> {
        self.remove(owner);
        let mut shared = Vec::new();
        for address in &addresses {
            let owners = self.owners.entry(address.clone()).or_default();
            owners.insert(owner.to_string());
            if owners.len() > 1 {
                shared.push((address.clone(), owners.clone()));
            }
        }
        if !addresses.is_empty() {
            self.owned.insert(owner.to_string(), addresses);
        }
        shared
    }

    fn remove(&mut self, owner: &str) {
        for address in self.owned.remove(owner).unwrap_or_default() {
            if let Some(owners) = self.owners.get_mut(&address) {
                owners.remove(owner);
                if owners.is_empty() {
                    self.owners.remove(&address);
                }
            }
        }
    }
}

/// The invariant rules over what was observed.
#[derive(Default, Debug)]
pub struct InvariantState {
    pods: HashMap<String, PodFacts>,
    nodes: HashMap<String, NodeFacts>,
    pod_ips: AddressIndex,
    record_ips: AddressIndex,
    block_ips: AddressIndex,
    violations: Vec<String>,
}

impl InvariantState {
    fn violate(&mut self, message: String) {
        if !self.violations.contains(&message) {
            self.violations.push(message);
        }
    }

    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    pub fn pod_applied(&mut self, pod: PodFacts) {
        let ips = if pod.terminated {
            Vec::new()
        } else {
            pod.ips.clone()
        };
        for (ip, owners) in self.pod_ips.set(&pod.key, ips) {
            self.violate(format!(
                "IP {ip} is held by more than one running pod: {owners:?}"
            ));
        }
        self.pods.insert(pod.key.clone(), pod);
    }

    pub fn pod_deleted(&mut self, pod: PodFacts) {
        self.pod_ips.remove(&pod.key);
        self.pods.remove(&pod.key);
        if pod.terminated {
            return;
        }
        let Some(node) = pod.node.as_deref() else {
            return;
        };
        if let Some(facts) = self.nodes.get(node)
            && !facts.ready
            && !facts.fenced
        {
            self.violate(format!(
                "pod {} (uid {}) was removed while its node {node} is NotReady and not fenced: it may still run there",
                pod.key, pod.uid
            ));
        }
    }

    pub fn node_applied(&mut self, name: &str, facts: NodeFacts) {
        self.nodes.insert(name.to_string(), facts);
    }

    pub fn node_deleted(&mut self, name: &str) {
        self.nodes.remove(name);
    }

    pub fn record_applied(&mut self, key: &str, ips: Vec<String>) {
        for (ip, owners) in self.record_ips.set(key, ips) {
            self.violate(format!(
                "IP {ip} is in more than one StaticIP record: {owners:?}"
            ));
        }
    }

    pub fn record_deleted(&mut self, key: &str) {
        self.record_ips.remove(key);
    }

    pub fn block_applied(&mut self, name: &str, allocated: Vec<String>) {
        for (ip, owners) in self.block_ips.set(name, allocated) {
            self.violate(format!(
                "IP {ip} is allocated in more than one IP block: {owners:?}"
            ));
        }
    }

    pub fn block_deleted(&mut self, name: &str) {
        self.block_ips.remove(name);
    }
}

/// Runs [`InvariantState`] over live watches in the background.
pub struct InvariantChecker {
    state: Arc<Mutex<InvariantState>>,
    tasks: Vec<JoinHandle<()>>,
}

fn lock(state: &Mutex<InvariantState>) -> std::sync::MutexGuard<'_, InvariantState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl InvariantChecker {
    /// Starts watching, and returns once pods and nodes have been listed.
    pub async fn start(client: Client) -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(InvariantState::default()));
        let (pods_ready, mut pods_ready_rx) = watch::channel(false);
        let (nodes_ready, mut nodes_ready_rx) = watch::channel(false);
        let tasks = vec![
            spawn_watch(
                Api::<Pod>::all(client.clone()),
                state.clone(),
                Some(pods_ready),
                |s, o| s.pod_applied(PodFacts::of(o)),
                |s, o| s.pod_deleted(PodFacts::of(o)),
            ),
            spawn_watch(
                Api::<Node>::all(client.clone()),
                state.clone(),
                Some(nodes_ready),
                |s, o| s.node_applied(&o.name_any(), NodeFacts::of(o)),
                |s, o| s.node_deleted(&o.name_any()),
            ),
            spawn_watch(
                Api::<StaticIP>::all(client.clone()),
                state.clone(),
                None,
                |s, o| {
                    s.record_applied(
                        &key_of(o),
                        o.spec.ips.iter().map(|a| a.ip.clone()).collect(),
                    )
                },
                |s, o| s.record_deleted(&key_of(o)),
            ),
            spawn_watch(
                Api::<IPBlock>::all(client),
                state.clone(),
                None,
                |s, o| s.block_applied(&o.name_any(), o.spec.allocations.keys().cloned().collect()),
                |s, o| s.block_deleted(&o.name_any()),
            ),
        ];
        let listed = async {
            pods_ready_rx.wait_for(|r| *r).await?;
            nodes_ready_rx.wait_for(|r| *r).await?;
            anyhow::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(60), listed).await {
            Ok(Ok(())) => Ok(Self { state, tasks }),
            _ => bail!("the invariant checker could not list pods and nodes"),
        }
    }

    /// The violations seen so far.
    pub fn violations(&self) -> Vec<String> {
        lock(&self.state).violations().to_vec()
    }

    /// Stops watching; fails if any invariant was violated.
    pub fn finish(self) -> anyhow::Result<()> {
        for task in &self.tasks {
            task.abort();
        }
        let violations = self.violations();
        if violations.is_empty() {
            Ok(())
        } else {
            bail!("invariants violated:\n- {}", violations.join("\n- "))
        }
    }
}

impl Drop for InvariantChecker {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn spawn_watch<K>(
    api: Api<K>,
    state: Arc<Mutex<InvariantState>>,
    listed: Option<watch::Sender<bool>>,
    applied: fn(&mut InvariantState, &K),
    deleted: fn(&mut InvariantState, &K),
) -> JoinHandle<()>
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    tokio::spawn(async move {
        // A kind whose CRD is not installed errors until it is; the watcher retries.
        let mut events = watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            let Ok(event) = event else { continue };
            let mut state = lock(&state);
            match &event {
                Event::Apply(o) | Event::InitApply(o) => applied(&mut state, o),
                Event::Delete(o) => deleted(&mut state, o),
                Event::Init => {}
                Event::InitDone => {
                    if let Some(tx) = &listed {
                        let _ = tx.send(true);
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(key: &str, uid: &str, node: &str, ip: &str) -> PodFacts {
        PodFacts {
            key: key.into(),
            uid: uid.into(),
            node: Some(node.into()),
            ips: vec![ip.into()],
            terminated: false,
        }
    }

    #[test]
    fn two_running_pods_with_one_ip_are_a_violation() {
        let mut s = InvariantState::default();
        s.pod_applied(pod("ns/a-0", "1", "n1", "10.0.0.1"));
        s.pod_applied(pod("ns/a-1", "2", "n1", "10.0.0.2"));
        assert!(s.violations().is_empty());
        s.pod_applied(pod("ns/b-0", "3", "n2", "10.0.0.1"));
        assert_eq!(s.violations().len(), 1, "{:?}", s.violations());
    }

    #[test]
    fn an_ip_reused_after_its_pod_is_gone_or_terminated_is_fine() {
        let mut s = InvariantState::default();
        s.node_applied(
            "n1",
            NodeFacts {
                ready: true,
                fenced: false,
            },
        );
        s.pod_applied(pod("ns/a-0", "1", "n1", "10.0.0.1"));
        s.pod_deleted(pod("ns/a-0", "1", "n1", "10.0.0.1"));
        s.pod_applied(pod("ns/a-0", "2", "n1", "10.0.0.1"));
        let mut done = pod("ns/job", "3", "n1", "10.0.0.9");
        s.pod_applied(done.clone());
        done.terminated = true;
        s.pod_applied(done);
        s.pod_applied(pod("ns/b", "4", "n1", "10.0.0.9"));
        assert!(s.violations().is_empty(), "{:?}", s.violations());
    }

    #[test]
    fn removing_a_pod_from_an_unfenced_not_ready_node_is_a_violation() {
        let mut s = InvariantState::default();
        s.node_applied(
            "dead",
            NodeFacts {
                ready: false,
                fenced: false,
            },
        );
        s.pod_applied(pod("ns/a-0", "1", "dead", "10.0.0.1"));
        s.pod_deleted(pod("ns/a-0", "1", "dead", "10.0.0.1"));
        assert_eq!(s.violations().len(), 1);

        let mut fenced = InvariantState::default();
        fenced.node_applied(
            "dead",
            NodeFacts {
                ready: false,
                fenced: true,
            },
        );
        fenced.pod_applied(pod("ns/a-0", "1", "dead", "10.0.0.1"));
        fenced.pod_deleted(pod("ns/a-0", "1", "dead", "10.0.0.1"));
        assert!(fenced.violations().is_empty());
    }

    #[test]
    fn addresses_in_two_records_or_two_blocks_are_violations() {
        let mut s = InvariantState::default();
        s.record_applied("ns/a-0", vec!["172.30.0.5".into()]);
        s.record_applied("ns/a-0", vec!["172.30.0.5".into()]);
        assert!(s.violations().is_empty(), "re-applying one record is fine");
        s.record_applied("ns/b-0", vec!["172.30.0.5".into()]);
        assert_eq!(s.violations().len(), 1);
        s.block_applied("blk-1", vec!["172.30.0.5".into()]);
        s.block_applied("blk-2", vec!["172.30.0.5".into()]);
        assert_eq!(s.violations().len(), 2);
        s.record_deleted("ns/a-0");
        s.record_applied("ns/c-0", vec!["172.30.0.6".into()]);
        assert_eq!(s.violations().len(), 2);
    }
}
