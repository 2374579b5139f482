//! More than one cluster: a second (third, ...) control plane started beside the shared one,
//! ests installed on each, one kubeconfig with a context per plane (for tools that switch
//! contexts, such as `kubectl ests move --to-context`), and a check across clusters that no
//! pod name (identity) ever exists in two of them at once.
//!
//! Control planes are independent: each has its own directory, ports, PKI, etcd and KWOK,
//! so several run at once in one test process.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ControlPlane;
use crate::nodes::{NodeSpec, create_nodes};
use crate::resources::{bind_cluster_role, create_namespace, install_crds, install_policies};

/// Starts another control plane. Ports are picked free and bound by the components a little
/// later, so another process on the machine may take one in between ("address already in
/// use"); that start is retried, up to three times.
pub async fn start_plane() -> anyhow::Result<ControlPlane> {
    let mut attempt = 1;
    loop {
        match ControlPlane::start().await {
            Ok(plane) => return Ok(plane),
            Err(e) if attempt < 3 && format!("{e:#}").contains("address already in use") => {
                eprintln!(
                    "ests-testenv: a port was taken while the control plane started; starting again"
                );
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Installs the ests CRDs and policies, `nodes` KWOK nodes named `<prefix>-<i>`, the
/// `ests-system` namespace, and cluster-admin for `controller_user` (the identity the ests
/// controller process runs as).
pub async fn prepare(
    plane: &ControlPlane,
    node_prefix: &str,
    nodes: usize,
    controller_user: &str,
) -> anyhow::Result<Client> {
    let client = plane.client().await?;
    install_crds(&client).await?;
    install_policies(&client, ests_api::policy::DEFAULT_NAMESPACE).await?;
    let specs: Vec<_> = (0..nodes)
        .map(|i| NodeSpec::new(format!("{node_prefix}-{i}")))
        .collect();
    create_nodes(&client, &specs).await?;
    create_namespace(&client, "ests-system").await?;
    bind_cluster_role(
        &client,
        "ests-controller-e2e",
        "cluster-admin",
        controller_user,
    )
    .await?;
    Ok(client)
}

/// Writes one kubeconfig holding an admin context per plane, named as given; the first is
/// the current context.
pub fn write_contexts_kubeconfig(
    path: &Path,
    contexts: &[(&str, &ControlPlane)],
) -> anyhow::Result<PathBuf> {
    let mut clusters = String::new();
    let mut users = String::new();
    let mut entries = String::new();
    for (name, plane) in contexts {
        let cert = plane
            .pki
            .client(&format!("admin-{name}"), "ests-admin", &["system:masters"])?;
        clusters.push_str(&format!(
            "- name: {name}\n  cluster:\n    server: {}\n    certificate-authority: {}\n",
            plane.server,
            plane.pki.ca_cert.display()
        ));
        users.push_str(&format!(
            "- name: {name}\n  user:\n    client-certificate: {}\n    client-key: {}\n",
            cert.cert.display(),
            cert.key.display()
        ));
        entries.push_str(&format!(
            "- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\n"
        ));
    }
    let current = contexts.first().map(|(n, _)| *n).unwrap_or_default();
    let body = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n{clusters}users:\n{users}contexts:\n{entries}current-context: {current}\n"
    );
    std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_path_buf())
}

#[derive(Default)]
struct State {
    /// Live pod names per cluster.
    pods: BTreeMap<String, BTreeSet<String>>,
    violations: Vec<String>,
}

impl State {
    fn check(&mut self, name: &str) {
        let holders: Vec<&String> = self
            .pods
            .iter()
            .filter(|(_, pods)| pods.contains(name))
            .map(|(cluster, _)| cluster)
            .collect();
        if holders.len() > 1 {
            let message = format!("pod {name} exists in {holders:?} at once");
            if !self.violations.contains(&message) {
                self.violations.push(message);
            }
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A pod that has not finished counts, terminating or not: its containers may still run.
fn live(pod: &Pod) -> bool {
    !matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Watches the pods matching a label selector in one namespace of several clusters and
/// records every moment one pod name exists in two clusters.
pub struct CrossClusterChecker {
    state: Arc<Mutex<State>>,
    tasks: Vec<JoinHandle<()>>,
}

impl CrossClusterChecker {
    /// Starts watching; returns once every cluster has been listed.
    pub async fn start(
        clusters: Vec<(String, Client)>,
        namespace: &str,
        selector: &str,
    ) -> anyhow::Result<Self> {
        let state = Arc::new(Mutex::new(State::default()));
        let mut tasks = Vec::new();
        let mut listed = Vec::new();
        for (cluster, client) in clusters {
            let (tx, rx) = watch::channel(false);
            listed.push(rx);
            let api: Api<Pod> = Api::namespaced(client, namespace);
            let config = watcher::Config::default().labels(selector);
            let state = state.clone();
            tasks.push(tokio::spawn(async move {
                let mut events = watcher::watcher(api, config).default_backoff().boxed();
                let mut relist = BTreeSet::new();
                while let Some(event) = events.next().await {
                    let Ok(event) = event else { continue };
                    let mut s = lock(&state);
                    match event {
                        Event::Init => relist.clear(),
                        Event::InitApply(p) => {
                            if live(&p) {
                                relist.insert(p.name_any());
                            }
                        }
                        Event::InitDone => {
                            s.pods.insert(cluster.clone(), std::mem::take(&mut relist));
                            let names: Vec<String> = s
                                .pods
                                .get(&cluster)
                                .cloned()
                                .unwrap_or_default()
                                .into_iter()
                                .collect();
                            names.iter().for_each(|n| s.check(n));
                            let _ = tx.send(true);
                        }
                        Event::Apply(p) => {
                            let name = p.name_any();
                            let pods = s.pods.entry(cluster.clone()).or_default();
                            if live(&p) {
                                pods.insert(name.clone());
                            } else {
                                pods.remove(&name);
                            }
                            s.check(&name);
                        }
                        Event::Delete(p) => {
                            s.pods
                                .entry(cluster.clone())
                                .or_default()
                                .remove(&p.name_any());
                        }
                    }
                }
            }));
        }
        let all_listed = async {
            for mut rx in listed {
                rx.wait_for(|l| *l).await?;
            }
            anyhow::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(60), all_listed).await {
            Ok(Ok(())) => Ok(Self { state, tasks }),
            _ => {
                tasks.iter().for_each(|t| t.abort());
                bail!("the cross-cluster checker could not list pods in every cluster")
            }
        }
    }

    /// Live pod names per cluster, as last seen.
    pub fn pods(&self) -> BTreeMap<String, BTreeSet<String>> {
        lock(&self.state).pods.clone()
    }

    /// Stops watching; fails if a pod name was ever seen in two clusters at once.
    pub fn finish(self) -> anyhow::Result<()> {
        self.tasks.iter().for_each(|t| t.abort());
        let violations = lock(&self.state).violations.clone();
        if violations.is_empty() {
            Ok(())
        } else {
            bail!(
                "identities ran in two clusters:\n- {}",
                violations.join("\n- ")
            )
        }
    }
}

impl Drop for CrossClusterChecker {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_name_in_two_clusters_is_a_violation_once() {
        let mut s = State::default();
        s.pods.insert(
            "east".into(),
            ["db-0".to_string(), "db-1".to_string()].into(),
        );
        s.pods.insert("west".into(), ["db-2".to_string()].into());
        for name in ["db-0", "db-1", "db-2"] {
            s.check(name);
        }
        assert!(s.violations.is_empty());
        s.pods
            .entry("west".into())
            .or_default()
            .insert("db-1".into());
        s.check("db-1");
        s.check("db-1");
        assert_eq!(
            s.violations,
            vec![r#"pod db-1 exists in ["east", "west"] at once"#.to_string()]
        );
    }

    #[test]
    fn finished_pods_do_not_count() {
        let pod = |phase: Option<&str>| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "db-0"},
                "status": {"phase": phase}
            }))
            .expect("pod")
        };
        assert!(live(&pod(None)));
        assert!(live(&pod(Some("Running"))));
        assert!(live(&pod(Some("Pending"))));
        assert!(!live(&pod(Some("Succeeded"))));
        assert!(!live(&pod(Some("Failed"))));
    }
}
