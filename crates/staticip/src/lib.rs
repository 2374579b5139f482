//! The StaticIP manager.
//!
//! Records are created by the set controller before their pods; from then on this crate
//! looks after them: a record learns its pod's addresses (record mode) or gets them from its
//! node's blocks (IP range mode, [`ipam`]), is Bound to the pod that runs with them, and is
//! released when its release policy says so and no pod of the identity is left
//! ([`records`]). The sweeper ([`sweep`]) frees block addresses no record holds and keeps
//! block counts and metrics. A deleted pool waits until no address of it is held
//! ([`pools`]). What to do is decided in `ests_core::static_ip` and
//! `ests_core::allocator`; this crate reads caches and writes conditionally.
//!
//! State lives only in the API server — records and blocks — and is read from there on
//! start, never rebuilt from pods.
#![forbid(unsafe_code)]

pub mod blocks;
pub mod ipam;
pub mod metrics;
pub mod pools;
pub mod records;
pub mod sweep;

use std::sync::Arc;

use ests_api::{EnhancedStatefulSet, IPBlock, StaticIP, StaticIPPool, keys};
use ests_runtime::Reflectors;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, controller};
use kube::{Api, Client, ResourceExt};

pub use ipam::Ipam;
pub use metrics::Metrics;

/// Why a reconcile failed (the runtime's one reconcile error).
pub type Error = ests_runtime::ReconcileError;

/// The label of addresses that could not be allocated or freed.
pub const ALLOCATION: &str = "allocation";

/// What every reconcile shares.
pub struct Context {
    pub ipam: Ipam,
    pub records: Store<StaticIP>,
    pub pods: Store<Pod>,
    pub sets: Store<EnhancedStatefulSet>,
    /// Which Node objects exist: a record or block whose node is gone is placed afresh or
    /// given back.
    pub nodes: Store<Node>,
    pub metrics: Metrics,
    /// Turns true once every cache above has listed.
    listed: ests_runtime::watch::Listed,
}

impl Context {
    /// The static-IP pod `ns/name` from the cache (a pod without the static-IP label is
    /// none of the manager's business, as if it did not exist).
    pub fn pod(&self, ns: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods
            .get(&ObjectRef::new(name).within(ns))
            .filter(|pod| is_static_ip_pod(pod))
    }

    /// Resolves once every cache has listed (at once after that).
    pub async fn caches_listed(&self) {
        self.listed.wait().await;
    }

    /// Whether the node cache lacks `name`. Decisions taken on it are confirmed with
    /// [`Context::node_deleted`] before they are carried out.
    pub fn node_gone(&self, name: &str) -> bool {
        self.nodes.get(&ObjectRef::new(name)).is_none()
    }

    /// Whether the API server itself says Node `name` does not exist (a cache that has not
    /// yet seen a new node must not make its blocks or records move).
    pub async fn node_deleted(&self, name: &str) -> Result<bool, Error> {
        let nodes: Api<Node> = Api::all(self.ipam.client.clone());
        nodes
            .get_metadata_opt(name)
            .await
            .map(|n| n.is_none())
            .map_err(|e| Error::kube(format!("checking for node {name}"), e))
    }
}

/// Whether `pod` carries the label of static-IP pods.
fn is_static_ip_pod(pod: &Pod) -> bool {
    pod.labels()
        .get(keys::STATIC_IP_POD_LABEL)
        .is_some_and(|v| v == "true")
}

/// Settings of the manager.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Records (and blocks) reconciled at once.
    pub concurrency: u16,
}

/// Runs the manager until `shutdown` resolves, with the watches of `reflectors` (shared
/// with whatever else runs in the process).
pub async fn run(
    reflectors: &Reflectors,
    client: Client,
    settings: Settings,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let (records, record_stream) = reflectors.subscribe::<StaticIP>();
    // Only static-IP pods are the manager's business; the process's pod watch may hold
    // every pod (the set controller's needs), so the others are passed over in
    // [`Context::pod`].
    let (pods, pod_stream) = reflectors.subscribe::<Pod>();
    let (sets, set_stream) = reflectors.subscribe::<EnhancedStatefulSet>();
    let (blocks, block_stream) = reflectors.subscribe::<IPBlock>();
    let (pools, pool_stream) = reflectors.subscribe::<StaticIPPool>();
    // Node deletions move records and give blocks back (the record controller and the block
    // sweeper each hear of them).
    let (nodes, node_stream) = reflectors.subscribe::<Node>();
    let (_, node_stream_for_blocks) = reflectors.subscribe::<Node>();

    let listed = reflectors.listed("static-ip manager");
    let ctx = Arc::new(Context {
        listed,
        ipam: Ipam {
            client: client.clone(),
            pools: pools.clone(),
            blocks: blocks.clone(),
            metrics: metrics.clone(),
        },
        records: records.clone(),
        pods,
        sets,
        nodes,
        metrics,
    });

    let by_pod = records.clone();
    let by_set = records.clone();
    let by_node = records.clone();
    let blocks_by_node = blocks.clone();
    let (shutdown_records, shutdown_blocks, shutdown_pools) = {
        let shared = futures::FutureExt::shared(Box::pin(shutdown));
        (shared.clone(), shared.clone(), shared)
    };
    let record_controller = Controller::for_shared_stream(record_stream, records)
        // A pod's changes concern the record named like it, if there is one (any pod's: one
        // that loses the static-IP label matters to its record too).
        .watches_shared_stream(pod_stream, move |pod: Arc<Pod>| {
            let record = ObjectRef::new(&pod.name_any()).within(&pod.namespace()?);
            by_pod.get(&record).is_some().then_some(record)
        })
        // A set's changes (scale-in, deletion) concern every record it owns.
        .watches_shared_stream(set_stream, move |set: Arc<EnhancedStatefulSet>| {
            let uid = set.uid();
            by_set
                .state()
                .into_iter()
                .filter(|r| {
                    r.owner_references()
                        .iter()
                        .any(|o| Some(&o.uid) == uid.as_ref())
                })
                .map(|r| ObjectRef::from(r.as_ref()))
                .collect::<Vec<_>>()
        })
        // A node's deletion concerns every record on it.
        .watches_shared_stream(node_stream, move |node: Arc<Node>| {
            let name = node.name_any();
            by_node
                .state()
                .into_iter()
                .filter(|r| r.spec.node.as_deref() == Some(name.as_str()))
                .map(|r| ObjectRef::from(r.as_ref()))
                .collect::<Vec<_>>()
        })
        .with_config(controller::Config::default().concurrency(settings.concurrency))
        .graceful_shutdown_on(shutdown_records)
        .run(records::reconcile, records::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "record controller event");
            }
        });
    let block_controller = Controller::for_shared_stream(block_stream, blocks)
        // A deleted node's empty blocks go back to the pool.
        .watches_shared_stream(node_stream_for_blocks, move |node: Arc<Node>| {
            let name = node.name_any();
            blocks_by_node
                .state()
                .into_iter()
                .filter(|b| b.spec.node.as_deref() == Some(name.as_str()))
                .map(|b| ObjectRef::from(b.as_ref()))
                .collect::<Vec<_>>()
        })
        .with_config(controller::Config::default().concurrency(settings.concurrency))
        .graceful_shutdown_on(shutdown_blocks)
        .run(sweep::reconcile, sweep::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "block sweeper event");
            }
        });
    let pool_controller = Controller::for_shared_stream(pool_stream, pools)
        .graceful_shutdown_on(shutdown_pools)
        .run(pools::reconcile, pools::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "pool protection event");
            }
        });
    futures::join!(record_controller, block_controller, pool_controller);
    Ok(())
}
