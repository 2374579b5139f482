//! Watches a set's pods during a test and remembers what no single snapshot shows: the most
//! identities ever unavailable at once, and the order in which pods came and went.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// name -> (uid, available)
    pods: BTreeMap<String, (String, bool)>,
    identities: Vec<String>,
    max_unavailable: usize,
    /// Pod names in the order their incarnations appeared / disappeared.
    created: Vec<String>,
    deleted: Vec<String>,
    /// A (re)list is in progress: counts would be of a half-known world.
    listing: bool,
}

impl State {
    fn unavailable(&self) -> usize {
        self.identities
            .iter()
            .filter(|name| {
                !self
                    .pods
                    .get(*name)
                    .is_some_and(|(_, available)| *available)
            })
            .count()
    }

    fn record(&mut self) {
        if !self.listing {
            self.max_unavailable = self.max_unavailable.max(self.unavailable());
        }
    }
}

fn available(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().is_some_and(|s| {
            s.phase.as_deref() == Some("Running")
                && s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
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
        let state = Arc::new(Mutex::new(State {
            identities,
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
                        s.pods.insert(name, (uid, available(&pod)));
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
