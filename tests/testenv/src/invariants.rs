//! An invariant checker that e2e tests run in the background. It watches pods, nodes,
//! StaticIP records and IP blocks, and records a violation when:
//!
//! - two non-terminated pods hold the same IP;
//! - one address is in two StaticIP records, or allocated in two IP blocks, or lies in the
//!   blocks of two pools (overlapping pools);
//! - a pod leaves the API (so that its identity can be re-created) while it sits on a node
//!   that is NotReady and not fenced (no `node.kubernetes.io/out-of-service` taint): the
//!   old pod may still be running there;
//! - a Running static-IP pod in IP range mode (its record names a pool) has one of its record's
//!   addresses outside the blocks of its node: its routes lead elsewhere (the block moved, or
//!   was never its node's). Held for [`OUTSIDE_BLOCKS_GRACE`] before it counts, because the checker's
//!   watches of pods and of blocks are separate streams: a pod removed just before its block
//!   moved may be seen after the move;
//! - on the real node, a Ready pod that serves the test image's answer (annotation
//!   [`ANSWER_ANNOTATION`]) does not answer at its IP as itself: another pod answers there
//!   (two pods behind one address), or nothing does.
//!
//! The rules live in [`InvariantState`], a plain state machine with unit tests; the watch
//! loop only feeds it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use ests_api::{IPBlock, StaticIP};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// A pod annotation naming the TCP port where the pod answers with its own name (the real
/// node's test image); the checker asks every such pod once it is Ready.
pub const ANSWER_ANNOTATION: &str = "ests.test/answers-on";

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
    /// Phase Running (a pod being deleted still runs until its node stops it).
    pub running: bool,
    /// Ready condition True.
    pub ready: bool,
    /// Has a deletionTimestamp.
    pub deleting: bool,
    /// Where the pod answers with its name ([`ANSWER_ANNOTATION`]).
    pub answer_port: Option<u16>,
}

/// A question to put to a pod: does `ip:port` answer as pod `key` (uid `uid`)?
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub key: String,
    pub uid: String,
    pub ip: String,
    pub port: u16,
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
            running: phase == "Running",
            ready: crate::wait::pod_ready(pod),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            answer_port: pod
                .annotations()
                .get(ANSWER_ANNOTATION)
                .and_then(|p| p.parse().ok()),
        }
    }
}

/// What the checker knows about a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeFacts {
    pub ready: bool,
    pub fenced: bool,
    /// A KWOK node (annotation `kwok.x-k8s.io/node: fake`): its pods have no network, so
    /// they are never asked who they are.
    pub simulated: bool,
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
        let simulated = node
            .annotations()
            .get("kwok.x-k8s.io/node")
            .is_some_and(|v| v == "fake");
        Self {
            ready,
            fenced,
            simulated,
        }
    }
}

/// How long a range-mode pod may be seen outside its node's blocks before it counts: longer
/// than the skew between two watch streams of one API server, far shorter than any real
/// misplacement lasts.
pub const OUTSIDE_BLOCKS_GRACE: Duration = Duration::from_secs(2);

/// What the checker knows about an IP block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockFacts {
    pub pool: String,
    pub range: ipnet::IpNet,
    pub node: Option<String>,
}

/// The rule over one range-mode pod: which of its addresses that are its record's
/// (`record_ips`) lie outside the blocks of its node, and in whose block they lie instead.
/// None when it is not Running or they are all in its node's blocks. An address that is not
/// its record's is not ests's placing (a pod made without the webhook gets the CNI's own).
pub fn outside_node_blocks<'a>(
    pod: &PodFacts,
    record_ips: &[String],
    blocks: impl IntoIterator<Item = (&'a String, &'a BlockFacts)> + Clone,
) -> Option<String> {
    if !pod.running || pod.terminated {
        return None;
    }
    let node = pod.node.as_deref()?;
    let mut outside = Vec::new();
    for ip in pod.ips.iter().filter(|ip| record_ips.contains(ip)) {
        let Ok(address) = ip.parse::<std::net::IpAddr>() else {
            continue;
        };
        let holders: Vec<(&String, &BlockFacts)> = blocks
            .clone()
            .into_iter()
            .filter(|(_, b)| b.range.contains(&address))
            .collect();
        if holders.iter().any(|(_, b)| b.node.as_deref() == Some(node)) {
            continue;
        }
        let found: Vec<String> = holders
            .iter()
            .map(|(name, b)| {
                format!(
                    "block {name} ({}) of node {}",
                    b.range,
                    b.node.as_deref().unwrap_or("none")
                )
            })
            .collect();
        outside.push(if found.is_empty() {
            format!("{ip} (in no block)")
        } else {
            format!("{ip} (in {})", found.join(", "))
        });
    }
    (!outside.is_empty()).then(|| {
        format!(
            "range-mode pod {} (uid {}) runs on {node} with {}, outside {node}'s blocks",
            pod.key,
            pod.uid,
            outside.join(", ")
        )
    })
}

/// A rule breach seen but not yet held for its grace.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Suspect {
    message: String,
    /// The first tick that saw it.
    since: Option<Instant>,
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
    probes: Vec<Probe>,
    /// Every block's pool, range and node, by block name.
    blocks: HashMap<String, BlockFacts>,
    /// Identities (`namespace/name`) whose record is in IP range mode.
    range_mode: HashSet<String>,
    /// Range-mode pods seen outside their node's blocks, by pod key.
    suspects: HashMap<String, Suspect>,
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
        if let Some(probe) = self.probe_due(&pod) {
            self.probes.push(probe);
        }
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
        let key = pod.key.clone();
        self.pods.insert(key.clone(), pod);
        self.check_blocks_of(&key);
    }

    /// Re-checks the range-mode rule for the pod `key` (after it, its record or a block
    /// changed).
    fn check_blocks_of(&mut self, key: &str) {
        let record_ips = self
            .record_ips
            .owned
            .get(key)
            .map_or(&[][..], Vec::as_slice);
        let breach = self
            .pods
            .get(key)
            .filter(|_| self.range_mode.contains(key))
            .and_then(|pod| outside_node_blocks(pod, record_ips, &self.blocks));
        match breach {
            Some(message) => {
                let suspect = self.suspects.entry(key.to_string()).or_insert(Suspect {
                    message: message.clone(),
                    since: None,
                });
                suspect.message = message;
            }
            None => {
                self.suspects.remove(key);
            }
        }
    }

    fn check_all_blocks(&mut self) {
        let keys: Vec<String> = self.range_mode.iter().cloned().collect();
        for key in keys {
            self.check_blocks_of(&key);
        }
    }

    /// Time passes: a breach of the range-mode rule held for [`OUTSIDE_BLOCKS_GRACE`] since
    /// the first tick that saw it becomes a violation.
    pub fn tick(&mut self, now: Instant) {
        let mut held = Vec::new();
        for suspect in self.suspects.values_mut() {
            let since = *suspect.since.get_or_insert(now);
            if now.duration_since(since) >= OUTSIDE_BLOCKS_GRACE {
                held.push(suspect.message.clone());
            }
        }
        for message in held {
            self.violate(message);
        }
    }

    /// The probe to run for `pod`, if it has just become askable: Ready, not going, on a
    /// node that is not simulated, with an answer port and an address it did not have Ready
    /// before.
    fn probe_due(&self, pod: &PodFacts) -> Option<Probe> {
        let port = pod.answer_port?;
        let ip = pod.ips.first()?;
        let simulated = pod
            .node
            .as_ref()
            .and_then(|n| self.nodes.get(n))
            .is_some_and(|n| n.simulated);
        if !Self::askable(pod) || simulated {
            return None;
        }
        let before = self.pods.get(&pod.key);
        let asked_before = before
            .is_some_and(|b| b.uid == pod.uid && Self::askable(b) && b.ips.first() == Some(ip));
        (!asked_before).then(|| Probe {
            key: pod.key.clone(),
            uid: pod.uid.clone(),
            ip: ip.clone(),
            port,
        })
    }

    fn askable(pod: &PodFacts) -> bool {
        pod.ready && !pod.deleting && !pod.terminated
    }

    /// The probes due since the last call.
    pub fn take_probes(&mut self) -> Vec<Probe> {
        std::mem::take(&mut self.probes)
    }

    /// What `probe` got: the answer, or why there was none. A violation only when the pod it
    /// asked about is still Ready, not going, at that address: a pod that went meanwhile says
    /// nothing about the address.
    pub fn pod_answered(&mut self, probe: &Probe, answer: Result<String, String>) {
        let Some(pod) = self.pods.get(&probe.key) else {
            return;
        };
        if pod.uid != probe.uid || !Self::askable(pod) || pod.ips.first() != Some(&probe.ip) {
            return;
        }
        let name = probe.key.rsplit('/').next().unwrap_or_default();
        match answer {
            Ok(answer) if answer.split_whitespace().next() == Some(name) => {}
            Ok(answer) => self.violate(format!(
                "IP {}:{} answered {answer:?}, but pod {} (uid {}) holds it",
                probe.ip, probe.port, probe.key, probe.uid
            )),
            Err(e) => self.violate(format!(
                "Ready pod {} (uid {}) does not answer at {}:{}: {e}",
                probe.key, probe.uid, probe.ip, probe.port
            )),
        }
    }

    pub fn pod_deleted(&mut self, pod: PodFacts) {
        self.pod_ips.remove(&pod.key);
        self.pods.remove(&pod.key);
        self.suspects.remove(&pod.key);
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

    /// A record: its addresses, and whether it is in IP range mode (names a pool).
    pub fn record_applied(&mut self, key: &str, ips: Vec<String>, range_mode: bool) {
        for (ip, owners) in self.record_ips.set(key, ips) {
            self.violate(format!(
                "IP {ip} is in more than one StaticIP record: {owners:?}"
            ));
        }
        if range_mode {
            self.range_mode.insert(key.to_string());
        } else {
            self.range_mode.remove(key);
        }
        self.check_blocks_of(key);
    }

    pub fn record_deleted(&mut self, key: &str) {
        self.record_ips.remove(key);
        self.range_mode.remove(key);
        self.suspects.remove(key);
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
        if self.blocks.remove(name).is_some() {
            self.check_all_blocks();
        }
    }

    /// A block's pool, range and node: a block whose range overlaps a block of another pool
    /// puts addresses in two pools at once; its node is where its addresses are routed.
    pub fn block_range_applied(&mut self, name: &str, pool: &str, cidr: &str, node: Option<&str>) {
        let Ok(range) = cidr.parse::<ipnet::IpNet>() else {
            return;
        };
        let overlapping: Vec<String> = self
            .blocks
            .iter()
            .filter(|(other, b)| {
                other.as_str() != name
                    && b.pool != pool
                    && (b.range.contains(&range.network()) || range.contains(&b.range.network()))
            })
            .map(|(other, b)| {
                format!(
                    "block {name} ({range}, pool {pool}) overlaps block {other} ({}, pool {})",
                    b.range, b.pool
                )
            })
            .collect();
        for message in overlapping {
            self.violate(message);
        }
        let facts = BlockFacts {
            pool: pool.to_string(),
            range,
            node: node.map(String::from),
        };
        if self.blocks.insert(name.to_string(), facts.clone()) != Some(facts) {
            self.check_all_blocks();
        }
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
        let (probes, probes_rx) = mpsc::unbounded_channel();
        let tasks = vec![
            spawn_watch(
                Api::<Pod>::all(client.clone()),
                state.clone(),
                Some(pods_ready),
                |s, o| s.pod_applied(PodFacts::of(o)),
                |s, o| s.pod_deleted(PodFacts::of(o)),
            ),
            tokio::spawn(ask_pods(state.clone(), probes_rx)),
            tokio::spawn(forward_probes(state.clone(), probes)),
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
                        o.spec.pool.is_some(),
                    )
                },
                |s, o| s.record_deleted(&key_of(o)),
            ),
            spawn_watch(
                Api::<IPBlock>::all(client),
                state.clone(),
                None,
                |s, o| {
                    s.block_range_applied(
                        &o.name_any(),
                        &o.spec.pool,
                        &o.spec.cidr,
                        o.spec.node.as_deref(),
                    );
                    s.block_applied(&o.name_any(), o.spec.allocations.keys().cloned().collect())
                },
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
        lock(&self.state).tick(Instant::now());
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

/// How long a Ready pod has to answer before it counts as not answering.
const ANSWER_WINDOW: Duration = Duration::from_secs(10);

/// Hands the probes the watch made due to [`ask_pods`], and lets the rules that wait for a
/// grace see time pass.
async fn forward_probes(state: Arc<Mutex<InvariantState>>, to: mpsc::UnboundedSender<Probe>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let due = {
            let mut state = lock(&state);
            state.tick(Instant::now());
            state.take_probes()
        };
        for probe in due {
            if to.send(probe).is_err() {
                return;
            }
        }
    }
}

/// Asks each probed pod, at once, retrying within [`ANSWER_WINDOW`], and reports the answer.
async fn ask_pods(state: Arc<Mutex<InvariantState>>, mut probes: mpsc::UnboundedReceiver<Probe>) {
    while let Some(probe) = probes.recv().await {
        let state = state.clone();
        tokio::spawn(async move {
            let answer = match probe.ip.parse::<std::net::IpAddr>() {
                Ok(ip) => crate::real_node::wait_answer(ip, probe.port, ANSWER_WINDOW)
                    .await
                    .map_err(|e| format!("{e:#}")),
                Err(e) => Err(format!("not an address: {e}")),
            };
            lock(&state).pod_answered(&probe, answer);
        });
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
            running: true,
            ready: true,
            deleting: false,
            answer_port: None,
        }
    }

    fn answering(key: &str, uid: &str, ip: &str) -> PodFacts {
        PodFacts {
            answer_port: Some(8080),
            ..pod(key, uid, "real", ip)
        }
    }

    #[test]
    fn a_ready_pod_is_asked_once_per_address() {
        let mut s = InvariantState::default();
        let mut p = answering("ns/a-0", "1", "10.88.0.10");
        p.ready = false;
        s.pod_applied(p.clone());
        assert!(s.take_probes().is_empty(), "not Ready yet");
        p.ready = true;
        s.pod_applied(p.clone());
        assert_eq!(s.take_probes().len(), 1);
        s.pod_applied(p.clone());
        assert!(s.take_probes().is_empty(), "asked already");
        s.pod_applied(answering("ns/a-0", "2", "10.88.0.11"));
        assert_eq!(
            s.take_probes().len(),
            1,
            "a new pod of the identity is asked again"
        );
        s.pod_applied(pod("ns/plain", "3", "real", "10.88.0.12"));
        assert!(
            s.take_probes().is_empty(),
            "pods without an answer port are not asked"
        );
    }

    #[test]
    fn pods_on_a_simulated_node_are_not_asked() {
        let mut s = InvariantState::default();
        s.node_applied(
            "kwok-a",
            NodeFacts {
                ready: true,
                fenced: false,
                simulated: true,
            },
        );
        s.pod_applied(PodFacts {
            node: Some("kwok-a".into()),
            ..answering("ns/a-0", "1", "10.90.0.2")
        });
        assert!(s.take_probes().is_empty(), "a KWOK pod has no network");
        // The same identity re-created on the real node is asked.
        s.pod_applied(answering("ns/a-0", "2", "10.90.0.2"));
        assert_eq!(s.take_probes().len(), 1);
    }

    #[test]
    fn another_pod_answering_or_none_is_a_violation() {
        let mut s = InvariantState::default();
        s.pod_applied(answering("ns/a-0", "1", "10.88.0.10"));
        let probe = s.take_probes().remove(0);
        s.pod_answered(&probe, Ok("a-0 v1".into()));
        assert!(s.violations().is_empty(), "{:?}", s.violations());
        s.pod_answered(&probe, Ok("b-3 v1".into()));
        assert_eq!(s.violations().len(), 1, "{:?}", s.violations());
        s.pod_answered(&probe, Err("connection refused".into()));
        assert_eq!(s.violations().len(), 2, "{:?}", s.violations());
    }

    #[test]
    fn an_answer_about_a_pod_that_went_meanwhile_says_nothing() {
        let mut s = InvariantState::default();
        s.pod_applied(answering("ns/a-0", "1", "10.88.0.10"));
        let probe = s.take_probes().remove(0);
        let mut going = answering("ns/a-0", "1", "10.88.0.10");
        going.deleting = true;
        s.pod_applied(going);
        s.pod_answered(&probe, Err("connection refused".into()));
        s.pod_applied(answering("ns/a-0", "2", "10.88.0.11"));
        s.pod_answered(&probe, Ok("x".into()));
        assert!(s.violations().is_empty(), "{:?}", s.violations());
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
                simulated: false,
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
                simulated: false,
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
                simulated: false,
            },
        );
        fenced.pod_applied(pod("ns/a-0", "1", "dead", "10.0.0.1"));
        fenced.pod_deleted(pod("ns/a-0", "1", "dead", "10.0.0.1"));
        assert!(fenced.violations().is_empty());
    }

    #[test]
    fn addresses_in_two_records_or_two_blocks_are_violations() {
        let mut s = InvariantState::default();
        s.record_applied("ns/a-0", vec!["172.30.0.5".into()], false);
        s.record_applied("ns/a-0", vec!["172.30.0.5".into()], false);
        assert!(s.violations().is_empty(), "re-applying one record is fine");
        s.record_applied("ns/b-0", vec!["172.30.0.5".into()], false);
        assert_eq!(s.violations().len(), 1);
        s.block_applied("blk-1", vec!["172.30.0.5".into()]);
        s.block_applied("blk-2", vec!["172.30.0.5".into()]);
        assert_eq!(s.violations().len(), 2);
        s.record_deleted("ns/a-0");
        s.record_applied("ns/c-0", vec!["172.30.0.6".into()], false);
        assert_eq!(s.violations().len(), 2);
    }

    fn block(range: &str, node: Option<&str>) -> BlockFacts {
        BlockFacts {
            pool: "p".into(),
            range: range.parse().expect("a CIDR"),
            node: node.map(String::from),
        }
    }

    #[test]
    fn a_range_mode_address_must_lie_in_a_block_of_the_pods_node() {
        let blocks = HashMap::from([
            ("p-1".to_string(), block("10.40.0.0/28", Some("n1"))),
            ("p-2".to_string(), block("10.40.0.16/28", Some("n2"))),
            ("p-3".to_string(), block("10.40.0.32/28", None)),
        ]);
        let on = |node: &str, ip: &str| pod("ns/r-0", "1", node, ip);
        let check = |p: &PodFacts| outside_node_blocks(p, &p.ips, &blocks);
        assert_eq!(check(&on("n1", "10.40.0.5")), None);
        assert_eq!(check(&on("n2", "10.40.0.20")), None);
        let moved = check(&on("n1", "10.40.0.20"));
        assert!(
            moved.as_deref().is_some_and(|m| m.contains("block p-2")
                && m.contains("of node n2")
                && m.contains("outside n1's blocks")),
            "{moved:?}"
        );
        assert!(check(&on("n1", "10.40.0.40")).is_some_and(|m| m.contains("of node none")));
        assert!(check(&on("n1", "10.99.0.1")).is_some_and(|m| m.contains("in no block")));
        // The CNI's own address, not the record's: not ests's placing.
        let other = on("n1", "10.99.0.1");
        assert_eq!(
            outside_node_blocks(&other, &["10.40.0.5".into()], &blocks),
            None
        );
        let mut pending = on("n1", "10.40.0.20");
        pending.running = false;
        assert_eq!(check(&pending), None, "not Running");
        let mut done = on("n1", "10.40.0.20");
        done.terminated = true;
        assert_eq!(check(&done), None, "terminated");
        // Being deleted, it still runs (and serves) until its node stops it.
        let mut going = on("n1", "10.40.0.20");
        going.deleting = true;
        assert!(check(&going).is_some());
    }

    #[test]
    fn a_range_mode_pod_outside_its_nodes_blocks_past_the_grace_is_a_violation() {
        let t0 = Instant::now();
        let mut s = InvariantState::default();
        s.block_range_applied("p-1", "p", "10.40.0.0/28", Some("n1"));
        s.record_applied("ns/r-0", vec!["10.40.0.5".into()], true);
        s.pod_applied(pod("ns/r-0", "1", "n1", "10.40.0.5"));
        s.tick(t0);
        // The block moves while the pod still runs on n1.
        s.block_range_applied("p-1", "p", "10.40.0.0/28", Some("n2"));
        s.tick(t0 + Duration::from_millis(100));
        s.tick(t0 + Duration::from_millis(1500));
        assert!(s.violations().is_empty(), "within the grace");
        s.tick(t0 + Duration::from_millis(100) + OUTSIDE_BLOCKS_GRACE);
        assert_eq!(s.violations().len(), 1, "{:?}", s.violations());
        assert!(s.violations()[0].contains("ns/r-0"), "{:?}", s.violations());
    }

    #[test]
    fn a_pod_seen_gone_within_the_grace_of_its_block_moving_is_fine() {
        let t0 = Instant::now();
        let mut s = InvariantState::default();
        s.block_range_applied("p-1", "p", "10.40.0.0/28", Some("n1"));
        s.record_applied("ns/r-0", vec!["10.40.0.5".into()], true);
        s.pod_applied(pod("ns/r-0", "1", "n1", "10.40.0.5"));
        // The pod watch lags the block watch: the move is seen first, the deletion after.
        s.block_range_applied("p-1", "p", "10.40.0.0/28", Some("n2"));
        s.tick(t0);
        s.pod_deleted(pod("ns/r-0", "1", "n1", "10.40.0.5"));
        // Its successor runs on n2, inside the moved block.
        s.pod_applied(pod("ns/r-0", "2", "n2", "10.40.0.5"));
        s.tick(t0 + OUTSIDE_BLOCKS_GRACE * 2);
        assert!(s.violations().is_empty(), "{:?}", s.violations());
        // A block seen after its first pod (claimed for a node just before the bind).
        let mut t = InvariantState::default();
        t.record_applied("ns/r-1", vec!["10.40.0.17".into()], true);
        t.pod_applied(pod("ns/r-1", "1", "n1", "10.40.0.17"));
        t.tick(t0);
        t.block_range_applied("p-2", "p", "10.40.0.16/28", Some("n1"));
        t.tick(t0 + OUTSIDE_BLOCKS_GRACE * 2);
        assert!(t.violations().is_empty(), "{:?}", t.violations());
    }

    #[test]
    fn record_mode_pods_have_no_blocks_to_lie_in() {
        let t0 = Instant::now();
        let mut s = InvariantState::default();
        s.block_range_applied("p-1", "p", "10.40.0.0/28", Some("n2"));
        s.record_applied("ns/a-0", vec!["10.40.0.5".into()], false);
        s.pod_applied(pod("ns/a-0", "1", "n1", "10.40.0.5"));
        s.pod_applied(pod("ns/plain", "2", "n1", "10.40.0.6"));
        s.tick(t0);
        s.tick(t0 + OUTSIDE_BLOCKS_GRACE * 2);
        assert!(s.violations().is_empty(), "{:?}", s.violations());
    }

    #[test]
    fn blocks_of_two_pools_over_one_range_are_a_violation() {
        let mut s = InvariantState::default();
        s.block_range_applied("blue-172.30.0.0-26", "blue", "172.30.0.0/26", None);
        s.block_range_applied("blue-172.30.0.64-26", "blue", "172.30.0.64/26", None);
        s.block_range_applied("blue-172.30.0.0-26", "blue", "172.30.0.0/26", None);
        assert!(s.violations().is_empty(), "{:?}", s.violations());
        s.block_range_applied("green-172.30.0.96-27", "green", "172.30.0.96/27", None);
        assert_eq!(s.violations().len(), 1, "{:?}", s.violations());
        // Gone, then the range is another pool's: fine.
        let mut t = InvariantState::default();
        t.block_range_applied("blue-172.30.1.0-26", "blue", "172.30.1.0/26", None);
        t.block_deleted("blue-172.30.1.0-26");
        t.block_range_applied("green-172.30.1.0-26", "green", "172.30.1.0/26", None);
        assert!(t.violations().is_empty(), "{:?}", t.violations());
    }
}
