//! The agent's process: its caches, its socket, its table.
//!
//! Watches (one per kind, through [`ests_runtime::Reflectors`]): the pods bound to this node
//! (field selector `spec.nodeName`), this Node (for its pod ranges), every StaticIP (a record
//! keeps its addresses wherever its pod runs, so no node may hand them out) and every
//! IPBlock (which blocks this node owns). An ADD reads only these caches.
//!
//! Each connection on the socket carries one request ([`ests_cni::protocol`]). Requests are
//! decided one at a time under the table's lock; an ADD that may pass once the caches catch
//! up (the pod's watch event has not arrived yet, an old sandbox's DEL is still to come) is
//! decided again until `add_wait` runs out, each time with the lock released in between,
//! and only then answered `tryAgainLater` (the kubelet retries the sandbox).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use ests_api::{IPBlock, StaticIP};
use ests_cni::protocol::{Failure, FailureKind, MAX_MESSAGE_BYTES, Request, Response, WireError};
use ests_core::cni::{CniPod, owned_blocks};
use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;

use crate::handler::{self, Attachments, Facts, Outcome};
use crate::metrics::Metrics;
use crate::table::TableFile;

/// How long an ADD that may pass soon waits at most before it is decided again; it is
/// decided again sooner, at once, when a cache or the table changes.
const RETRY_EVERY: Duration = Duration::from_millis(20);
/// How long one connection may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The node this agent serves.
    pub node: String,
    /// The unix socket the plugin connects to.
    pub socket: PathBuf,
    /// Where the attachment table is kept (must survive the agent's restarts: a host
    /// directory, not the container's).
    pub state_dir: PathBuf,
    /// Pod ranges to hand ordinary pods addresses from; empty: the Node's `spec.podCIDRs`.
    pub pod_ranges: Vec<IpNet>,
    /// How long an ADD may wait for the caches to catch up before it is answered
    /// `tryAgainLater`.
    pub add_wait: Duration,
}

/// The caches an answer reads.
struct Caches {
    node: String,
    pods: Store<Pod>,
    records: Store<StaticIP>,
    blocks: Store<IPBlock>,
    nodes: Store<Node>,
    listed: ests_runtime::watch::Listed,
    pod_ranges: Vec<IpNet>,
}

impl Caches {
    fn pod_ranges(&self) -> Vec<IpNet> {
        if !self.pod_ranges.is_empty() {
            return self.pod_ranges.clone();
        }
        self.nodes
            .get(&ObjectRef::new(&self.node))
            .and_then(|n| n.spec.as_ref().and_then(|s| s.pod_cidrs.clone()))
            .unwrap_or_default()
            .iter()
            .filter_map(|c| c.parse::<IpNet>().ok())
            .collect()
    }

    /// Decides `request` against the caches as they are now.
    fn decide(&self, table: &mut Attachments, request: Request) -> Outcome {
        let pod_ranges = self.pod_ranges();
        let blocks = self.blocks.state();
        let owned = owned_blocks(blocks.iter().map(Arc::as_ref), &self.node);
        let kept = handler::kept_addresses(self.records.state().iter().map(Arc::as_ref));
        let pod = |ns: &str, name: &str| {
            self.pods
                .get(&ObjectRef::new(name).within(ns))
                .map(|p| CniPod::of(&p))
        };
        let record = |ns: &str, name: &str| {
            self.records
                .get(&ObjectRef::new(name).within(ns))
                .map(|r| (*r).clone())
        };
        let kept_by = |ip: &IpAddr| kept.get(ip).cloned();
        let facts = Facts {
            node: &self.node,
            pod: &pod,
            record: &record,
            owned_blocks: &owned,
            pod_ranges: &pod_ranges,
            kept_by: &kept_by,
            ready: self.listed.done() && !pod_ranges.is_empty(),
        };
        handler::handle(table, &facts, request)
    }
}

/// The agent's shared state.
struct Agent {
    caches: Caches,
    table: Mutex<Table>,
    file: Arc<TableFile>,
    /// Held by the one task writing the table (see [`Agent::save_up_to`]).
    writing: Mutex<()>,
    metrics: Metrics,
    add_wait: Duration,
    /// Counts changes of the caches and the table: a waiting ADD is decided again as soon
    /// as what it waits for may have come (a pod's watch event arrives within milliseconds
    /// of the kubelet's ADD; polling alone would make every such ADD wait a whole period).
    changes: tokio::sync::watch::Sender<u64>,
}

/// The attachments, with how far their changes have reached the disk.
struct Table {
    attachments: Attachments,
    /// Changes decided so far, numbered from 1.
    version: u64,
    /// The last change on disk.
    saved: u64,
    /// Changes undone because the table could not be written.
    lost: Vec<std::ops::RangeInclusive<u64>>,
}

impl Table {
    fn new(attachments: Attachments) -> Self {
        Self {
            attachments,
            version: 0,
            saved: 0,
            lost: Vec::new(),
        }
    }

    /// Whether change `version` is on disk (`Ok`), was undone (`Err`), or neither yet.
    fn fate(&self, version: u64) -> Option<anyhow::Result<()>> {
        if self.lost.iter().any(|lost| lost.contains(&version)) {
            return Some(Err(anyhow::anyhow!(
                "the attachment table could not be saved; the change was undone"
            )));
        }
        (self.saved >= version).then_some(Ok(()))
    }

    fn held(&self) -> i64 {
        self.attachments
            .values()
            .map(|a| a.addresses.len())
            .sum::<usize>() as i64
    }
}

impl Agent {
    async fn answer(&self, request: Request) -> Outcome {
        let deadline = Instant::now() + self.add_wait;
        let mut changes = self.changes.subscribe();
        loop {
            // Marked seen before deciding, so a change during the decision wakes the wait.
            changes.borrow_and_update();
            let mut table = self.table.lock().await;
            let mut outcome = self.caches.decide(&mut table.attachments, request.clone());
            if outcome.retryable && Instant::now() < deadline {
                drop(table);
                self.metrics.add_retries.inc();
                if let Response::Error(f) = &outcome.response {
                    tracing::debug!(message = %f.message, "waiting to decide again");
                }
                let _ = tokio::time::timeout(RETRY_EVERY, changes.changed()).await;
                continue;
            }
            if outcome.changed {
                table.version += 1;
                let version = table.version;
                self.metrics.attached.set(table.held());
                drop(table);
                self.changes.send_modify(|n| *n += 1);
                // Saved before the plugin hears of it: an address is handed out only once
                // it cannot be forgotten.
                if let Err(e) = self.save_up_to(version).await {
                    tracing::error!(error = %e, "saving the attachment table");
                    outcome.response = Response::Error(Failure {
                        kind: FailureKind::Internal,
                        message: e.to_string(),
                    });
                }
            }
            return outcome;
        }
    }

    /// Returns once change `version` is on disk. Writes are grouped: one task at a time
    /// writes the whole table (off the runtime's threads), and every change decided while
    /// a write ran is on disk with the next one — a burst of ADDs costs a few fsyncs, not
    /// one each in a queue. A write that fails undoes, as the disk has it, every change
    /// since the last write, and each of their requests is answered with the error.
    async fn save_up_to(&self, version: u64) -> anyhow::Result<()> {
        let _writer = self.writing.lock().await;
        let (bytes, upto) = {
            let table = self.table.lock().await;
            if let Some(fate) = table.fate(version) {
                return fate;
            }
            (self.file.encode(&table.attachments)?, table.version)
        };
        let file = self.file.clone();
        let written = match tokio::task::spawn_blocking(move || file.write(&bytes)).await {
            Ok(result) => result.map_err(anyhow::Error::from),
            Err(e) => Err(anyhow::Error::from(e).context("the table's writer thread")),
        };
        let mut table = self.table.lock().await;
        match written {
            Ok(()) => {
                table.saved = table.saved.max(upto);
                Ok(())
            }
            Err(e) => {
                let lost = table.saved + 1..=table.version;
                table.lost.push(lost);
                if let Ok(saved) = self.file.load() {
                    table.attachments = saved;
                }
                self.metrics.attached.set(table.held());
                Err(e)
            }
        }
    }

    async fn serve(&self, mut stream: UnixStream) {
        let request = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await {
            Ok(r) => r,
            Err(_) => Err(WireError::Read(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no complete request in 10 s",
            ))),
        };
        // The agent's time: from the request read (a plugin process the host is slow to
        // schedule is not the agent's) to its answer.
        let started = Instant::now();
        let (response, verb, result) = match request {
            Ok(request) => {
                let outcome = self.answer(request).await;
                let result = outcome.result();
                match &outcome.response {
                    Response::Error(f) => {
                        tracing::info!(verb = outcome.verb, kind = result, message = %f.message, "refused")
                    }
                    Response::Ok(s) if outcome.changed => {
                        tracing::info!(verb = outcome.verb, ips = ?s.ips, "changed")
                    }
                    Response::Ok(_) => {}
                }
                (outcome.response, outcome.verb, result)
            }
            Err(e) => (
                Response::Error(Failure {
                    kind: FailureKind::BadRequest,
                    message: e.to_string(),
                }),
                "unreadable",
                "bad_request",
            ),
        };
        self.metrics
            .requests
            .with_label_values(&[verb, result])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[verb])
            .observe(started.elapsed().as_secs_f64());
        match serde_json::to_vec(&response) {
            Ok(bytes) => {
                if let Err(e) = stream.write_all(&bytes).await {
                    tracing::warn!(error = %e, verb, "the plugin left before its answer");
                }
                let _ = stream.shutdown().await;
            }
            Err(e) => tracing::error!(error = %e, "encoding an answer"),
        }
    }
}

async fn read_request(stream: &mut UnixStream) -> Result<Request, WireError> {
    let mut buf = Vec::new();
    stream
        .take(MAX_MESSAGE_BYTES + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(WireError::Read)?;
    if buf.len() as u64 > MAX_MESSAGE_BYTES {
        return Err(WireError::TooLong);
    }
    serde_json::from_slice(&buf).map_err(WireError::Parse)
}

/// Binds `socket`, replacing a file left by an agent that is gone (one that still answers
/// is another agent: refused, never stolen from).
async fn bind(socket: &std::path::Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if socket.exists() {
        if UnixStream::connect(socket).await.is_ok() {
            anyhow::bail!(
                "another node agent is listening on {}; refusing to take its socket",
                socket.display()
            );
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("removing the stale socket {}", socket.display()))?;
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    // Only root (the runtime calling the plugin) may ask for addresses.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", socket.display()))?;
    Ok(listener)
}

/// Runs the agent until `shutdown`; `ready` turns true once its caches have listed.
pub async fn run(
    client: kube::Client,
    settings: Settings,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let file = TableFile::in_dir(&settings.state_dir)?;
    let table = file.load()?;
    tracing::info!(
        attachments = table.len(),
        path = %file.path().display(),
        "loaded the attachment table"
    );
    metrics
        .attached
        .set(table.values().map(|a| a.addresses.len()).sum::<usize>() as i64);
    let node = settings.node.clone();
    let reflectors = ests_runtime::Reflectors::new(client)
        .configure::<Pod>(watcher::Config::default().fields(&format!("spec.nodeName={node}")))
        .configure::<Node>(watcher::Config::default().fields(&format!("metadata.name={node}")));
    let (pods, pod_changes) = reflectors.subscribe::<Pod>();
    let (records, record_changes) = reflectors.subscribe::<StaticIP>();
    let (blocks, block_changes) = reflectors.subscribe::<IPBlock>();
    let (nodes, node_changes) = reflectors.subscribe::<Node>();
    let caches = Caches {
        pods,
        records,
        blocks,
        nodes,
        listed: reflectors.listed("node agent caches"),
        node,
        pod_ranges: settings.pod_ranges.clone(),
    };
    let (changes, _) = tokio::sync::watch::channel(0u64);
    {
        let changes = changes.clone();
        let mut any = futures::stream::select_all([
            pod_changes.map(|_| ()).boxed(),
            record_changes.map(|_| ()).boxed(),
            block_changes.map(|_| ()).boxed(),
            node_changes.map(|_| ()).boxed(),
        ]);
        tokio::spawn(async move {
            while any.next().await.is_some() {
                changes.send_modify(|n| *n += 1);
            }
        });
    }
    let agent = Arc::new(Agent {
        caches,
        table: Mutex::new(Table::new(table)),
        file: Arc::new(file),
        writing: Mutex::new(()),
        metrics,
        add_wait: settings.add_wait,
        changes,
    });
    let listener = bind(&settings.socket).await?;
    tracing::info!(socket = %settings.socket.display(), node = %settings.node, "serving the CNI plugin");
    {
        let agent = agent.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            agent.caches.listed.wait().await;
            if agent.caches.pod_ranges().is_empty() {
                tracing::warn!(
                    node = %agent.caches.node,
                    "the node has no spec.podCIDRs and no --pod-range was given: ordinary pods get no address"
                );
            }
            ready.store(true, Ordering::SeqCst);
            tracing::info!("caches listed");
        });
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let agent = agent.clone();
                    tokio::spawn(async move { agent.serve(stream).await });
                }
                Err(e) => tracing::warn!(error = %e, "accepting a connection"),
            },
        }
    }
    let _ = std::fs::remove_file(&settings.socket);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_answered_once_on_disk_or_undone() {
        let mut table = Table::new(Attachments::default());
        table.version = 7;
        table.saved = 3;
        table.lost.push(4..=5);
        assert!(matches!(table.fate(2), Some(Ok(()))), "written before");
        assert!(matches!(table.fate(3), Some(Ok(()))));
        assert!(
            matches!(table.fate(4), Some(Err(_))),
            "undone by a failed write"
        );
        assert!(matches!(table.fate(5), Some(Err(_))));
        assert!(table.fate(6).is_none(), "still to be written");
        // A later write covers what came after the loss, never the loss itself.
        table.saved = 7;
        assert!(matches!(table.fate(5), Some(Err(_))));
        assert!(matches!(table.fate(6), Some(Ok(()))));
    }
}
