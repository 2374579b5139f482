//! The EnhancedStatefulSet controller.
//!
//! Watches sets, their pods and their ControllerRevisions; on each event it reconciles the
//! set ([`reconcile`]): the rollout planner in `ests_core::rollout` decides, this crate
//! carries the decision out.
#![forbid(unsafe_code)]

mod adopt;
mod claims;
pub mod expectations;
pub mod metrics;
mod observe;
mod reconcile;
mod records;
mod revisions;
pub mod status;

use std::sync::Arc;

use ests_api::{EnhancedStatefulSet, StaticIP};
use ests_runtime::Reflectors;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, controller};
use kube::{Client, ResourceExt};

pub use expectations::Expectations;
pub use metrics::Metrics;

/// Field manager of everything the controller writes.
pub const FIELD_MANAGER: &str = "ests-controller";

/// Why a reconcile failed (the runtime's one reconcile error).
pub type Error = ests_runtime::ReconcileError;

/// The label of a set whose spec cannot be carried out.
pub const INVALID: &str = "invalid-set";

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub pods: Store<Pod>,
    pub revisions: Store<ControllerRevision>,
    pub claims: Store<PersistentVolumeClaim>,
    pub records: Store<StaticIP>,
    pub expectations: Expectations,
    /// For evictions asked by node migrations (see [`ests_runtime::watch::eviction_client`]).
    pub evictions: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    /// See [`Settings::extender_binds`].
    pub extender_binds: bool,
    /// Turns true once every cache above has listed.
    listed: ests_runtime::watch::Listed,
}

impl Context {
    /// Resolves once every cache has listed: a reconcile never plans from a half-filled
    /// cache (which would, for one, write a status counting no pods after a restart).
    pub async fn caches_listed(&self) {
        self.listed.wait().await;
    }
}

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Sets reconciled at once.
    pub concurrency: u16,
    /// The scheduler extender binds range-mode static-IP pods: they request the managed
    /// resource `jke.jdcloud.com/static-ip`, which routes them to its bind verb.
    pub extender_binds: bool,
}

/// Runs the controller until `shutdown` resolves, with the watches of `reflectors` (shared
/// with whatever else runs in the process).
pub async fn run(
    reflectors: &Reflectors,
    client: Client,
    settings: Settings,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let (sets, set_events) = reflectors.subscribe::<EnhancedStatefulSet>();
    let (pods, pod_events) = reflectors.subscribe::<Pod>();
    let (revisions, revision_events) = reflectors.subscribe::<ControllerRevision>();
    let (claims, claim_events) = reflectors.subscribe::<PersistentVolumeClaim>();
    // A record's changes (Bound at last) matter to its set: a held pod may go now.
    let (records, record_events) = reflectors.subscribe::<StaticIP>();

    let listed = reflectors.listed("controller");
    let evictions = ests_runtime::watch::eviction_client()
        .await
        .map_err(|e| anyhow::anyhow!("building the eviction client: {e}"))?;
    let ctx = Arc::new(Context {
        listed,
        evictions,
        recorder: Recorder::new(client.clone(), Reporter::from(FIELD_MANAGER)),
        client: client.clone(),
        pods,
        revisions,
        claims,
        records,
        expectations: Expectations::default(),
        metrics,
        extender_binds: settings.extender_binds,
    });
    Controller::for_shared_stream(set_events, sets)
        .watches_shared_stream(pod_events, |pod: Arc<Pod>| set_of(&pod))
        // A claim deleted under a Pending pod is made again; one deleted while its pod
        // waits lets the pod go on.
        .watches_shared_stream(claim_events, |claim: Arc<PersistentVolumeClaim>| {
            sets_of_claim(&claim)
        })
        .owns_shared_stream(revision_events)
        .owns_shared_stream(record_events)
        .with_config(controller::Config::default().concurrency(settings.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
    Ok(())
}

/// The set a pod's change concerns: its controller if that is a set; for an orphan, the set
/// it is named after (`web-3` → `web`), which may adopt it. A set that does not exist is
/// reconciled as a no-op.
fn set_of(pod: &Pod) -> Option<ObjectRef<EnhancedStatefulSet>> {
    let ns = pod.namespace()?;
    match pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
    {
        Some(owner) => (owner.kind == "EnhancedStatefulSet"
            && owner.api_version.split('/').next() == Some(ests_api::GROUP))
        .then(|| ObjectRef::new(&owner.name).within(&ns)),
        None => {
            let name = pod.name_any();
            let (set, _) = name.rsplit_once('-')?;
            ests_core::identity::ordinal_of(set, &name).map(|_| ObjectRef::new(set).within(&ns))
        }
    }
}

/// The sets a claim may belong to, by its name `<template>-<set>-<ordinal>` (template and
/// set names may both hold dashes, so every split is a candidate; a set that does not exist
/// is reconciled as a no-op).
fn sets_of_claim(claim: &PersistentVolumeClaim) -> Vec<ObjectRef<EnhancedStatefulSet>> {
    let (Some(ns), name) = (claim.namespace(), claim.name_any()) else {
        return Vec::new();
    };
    let Some((rest, ordinal)) = name.rsplit_once('-') else {
        return Vec::new();
    };
    if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return Vec::new();
    }
    rest.match_indices('-')
        .map(|(i, _)| &rest[i + 1..])
        .filter(|set| !set.is_empty())
        .map(|set| ObjectRef::new(set).within(&ns))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_maps_to_every_set_its_name_may_come_from() {
        let claim = |name: &str| -> PersistentVolumeClaim {
            serde_json::from_value(
                serde_json::json!({"metadata": {"name": name, "namespace": "ns"}}),
            )
            .expect("claim")
        };
        let names = |name: &str| -> Vec<String> {
            sets_of_claim(&claim(name))
                .into_iter()
                .map(|r| r.name)
                .collect()
        };
        assert_eq!(names("data-web-0"), ["web"]);
        assert_eq!(names("my-data-my-web-12"), ["data-my-web", "my-web", "web"]);
        assert!(names("data-web").is_empty());
        assert!(names("data-web-x").is_empty());
        assert!(names("web-0").is_empty(), "no template part");
    }
}
