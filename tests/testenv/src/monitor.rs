//! Watches a set's pods during a test and remembers what no single snapshot shows: the most
//! identities ever unavailable at once, and the order in which pods came and went.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Default, Debug)]
struct State {
    /// name -> (uid, since when it has been Running and Ready, in seconds)
    pods: BTreeMap<String, (String, Option<i64>)>,
    identities: Vec<String>,
    /// A pod is available once Ready this long (the set's minReadySeconds).
    min_ready_seconds: i64,
    max_unavailable: usize,
    /// Pod names in the order their incarnations appeared / disappeared.
    created: Vec<String>,
    deleted: Vec<String>,
    /// A (re)list is in progress: counts would be of a half-known world.
    listing: bool,
}

impl State {
    fn unavailable(&self) -> usize {
        // In whole seconds, as the Ready condition's lastTransitionTime and the controller.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.identities
            .iter()
            .filter(|name| {
                !self.pods.get(*name).is_some_and(|(_, ready_since)| {
                    ready_since.is_some_and(|since| now - since >= self.min_ready_seconds)
                })
            })
            .count()
    }

    fn record(&mut self) {
        if !self.listing {
            self.max_unavailable = self.max_unavailable.max(self.unavailable());
        }
    }
}

/// Since when the pod has been Running and Ready (seconds), if it is and is not going.
fn ready_since(pod: &Pod) -> Option<i64> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    // No transition time: Ready since before anyone looked.
    Some(
        ready
            .last_transition_time
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
    )
}

/// A background watch over pods matching a label selector in one namespace.
pub struct PodMonitor {
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl PodMonitor {
    /// Starts watching; returns once the pods have been listed. `identities` are the pod
    /// names whose availability counts.
    pub async fn start(
        client: Client,
        namespace: &str,
        selector: &str,
        identities: Vec<String>,
    ) -> anyhow::Result<Self> {
        Self::start_with_min_ready(client, namespace, selector, identities, 0).await
    }

    /// As [`PodMonitor::start`], for a set whose pods are available only once Ready for
    /// `min_ready_seconds`.
    pub async fn start_with_min_ready(
        client: Client,
        namespace: &str,
        selector: &str,
        identities: Vec<String>,
        min_ready_seconds: i64,
    ) -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(State {
            identities,
            min_ready_seconds,
            ..State::default()
        }));
        let (listed_tx, mut listed) = watch::channel(false);
        let api: Api<Pod> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().labels(selector);
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher::watcher(api, config).default_backoff().boxed();
            while let Some(event) = events.next().await {
                let Ok(event) = event else { continue };
                let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
                match event {
                    Event::Apply(pod) | Event::InitApply(pod) => {
                        let name = pod.name_any();
                        let uid = pod.uid().unwrap_or_default();
                        if s.pods.get(&name).is_none_or(|(known, _)| known != &uid) {
                            s.created.push(name.clone());
                        }
                        s.pods.insert(name, (uid, ready_since(&pod)));
                    }
                    Event::Delete(pod) => {
                        let name = pod.name_any();
                        s.pods.remove(&name);
                        s.deleted.push(name);
                    }
                    Event::Init => s.listing = true,
                    Event::InitDone => {
                        if !*listed_tx.borrow() {
                            s.created.clear();
                        }
                        s.listing = false;
                        let _ = listed_tx.send(true);
                    }
                }
                s.record();
            }
        });
        match tokio::time::timeout(Duration::from_secs(30), listed.wait_for(|l| *l)).await {
            Ok(Ok(_)) => Ok(Self { state, task }),
            _ => bail!("the pod monitor could not list pods"),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The most identities unavailable at once so far.
    pub fn max_unavailable(&self) -> usize {
        self.with(|s| s.max_unavailable)
    }

    /// Identities unavailable now.
    pub fn unavailable(&self) -> usize {
        self.with(|s| s.unavailable())
    }

    /// Starts counting afresh, for a new phase of a test, with new identities.
    pub fn reset(&self, identities: Vec<String>) {
        self.with(|s| {
            s.identities = identities;
            s.max_unavailable = 0;
            s.created.clear();
            s.deleted.clear();
            s.record();
        });
    }

    /// Pod names in the order new incarnations appeared since the last reset.
    pub fn created(&self) -> Vec<String> {
        self.with(|s| s.created.clone())
    }

    /// Pod names in the order they disappeared since the last reset.
    pub fn deleted(&self) -> Vec<String> {
        self.with(|s| s.deleted.clone())
    }
}

impl Drop for PodMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}
