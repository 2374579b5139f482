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
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, controller, watcher};
use kube::{Api, Client, ResourceExt};

pub use ipam::Ipam;
pub use metrics::Metrics;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
    #[error("{0}")]
    Allocation(String),
}

impl Error {
    fn kube(context: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            context: context.into(),
            source,
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub ipam: Ipam,
    pub records: Store<StaticIP>,
    pub pods: Store<Pod>,
    pub sets: Store<EnhancedStatefulSet>,
    /// Which Node objects exist (names only): a record or block whose node is gone is
    /// placed afresh or given back.
    pub nodes: Store<PartialObjectMeta<Node>>,
    pub metrics: Metrics,
    /// Turns true once every cache above has listed.
    listed: ests_cache::Listed,
}

impl Context {
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

/// Settings of the manager.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Records (and blocks) reconciled at once.
    pub concurrency: u16,
}

/// Runs the manager until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let config = watcher::Config::default();
    let (records, record_writer) = reflector::store();
    let record_stream = reflector::reflector(
        record_writer,
        watcher::watcher(Api::<StaticIP>::all(client.clone()), config.clone()),
    )
    .default_backoff()
    .touched_objects();
    // Only static-IP pods: the others are none of the manager's business.
    let (pods, pod_writer) = reflector::store();
    let pod_stream = reflector::reflector(
        pod_writer,
        watcher::watcher(
            Api::<Pod>::all(client.clone()),
            config
                .clone()
                .labels(&format!("{}=true", keys::STATIC_IP_POD_LABEL)),
        ),
    )
    .default_backoff()
    .touched_objects();
    let (sets, set_writer) = reflector::store();
    let set_stream = reflector::reflector(
        set_writer,
        watcher::watcher(
            Api::<EnhancedStatefulSet>::all(client.clone()),
            config.clone(),
        ),
    )
    .default_backoff()
    .touched_objects();
    let (blocks, block_writer) = reflector::store();
    let block_stream = reflector::reflector(
        block_writer,
        watcher::watcher(Api::<IPBlock>::all(client.clone()), config.clone()),
    )
    .default_backoff()
    .touched_objects();
    let (pools, pool_writer) = reflector::store();
    let pool_stream = reflector::reflector(
        pool_writer,
        watcher::watcher(Api::<StaticIPPool>::all(client.clone()), config.clone()),
    )
    .default_backoff()
    .touched_objects();

    // Node deletions move records and give blocks back: names are all that is needed.
    let (nodes, node_writer) = reflector::store();
    let node_stream = reflector::reflector(
        node_writer,
        watcher(
            Api::<PartialObjectMeta<Node>>::all(client.clone()),
            config.clone(),
        ),
    )
    .default_backoff()
    .touched_objects();
    // The block sweeper hears of node deletions on a watch of its own (a node list is
    // small, and one stream cannot feed two controllers).
    let node_stream_for_blocks = watcher(
        Api::<PartialObjectMeta<Node>>::all(client.clone()),
        config.clone(),
    )
    .default_backoff()
    .touched_objects();

    let listed = ests_cache::Listed::spawn(
        "static-ip manager",
        vec![
            ests_cache::wait_for(&records),
            ests_cache::wait_for(&pods),
            ests_cache::wait_for(&sets),
            ests_cache::wait_for(&pools),
            ests_cache::wait_for(&blocks),
            ests_cache::wait_for(&nodes),
        ],
    );
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

    let by_set = records.clone();
    let by_node = records.clone();
    let blocks_by_node = blocks.clone();
    let (shutdown_records, shutdown_blocks, shutdown_pools) = {
        let shared = futures::FutureExt::shared(Box::pin(shutdown));
        (shared.clone(), shared.clone(), shared)
    };
    let record_controller = Controller::for_stream(record_stream, records)
        // A pod's changes concern the record named like it.
        .watches_stream(pod_stream, |pod: Pod| {
            Some(ObjectRef::new(&pod.name_any()).within(&pod.namespace()?))
        })
        // A set's changes (scale-in, deletion) concern every record it owns.
        .watches_stream(set_stream, move |set: EnhancedStatefulSet| {
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
        .watches_stream(node_stream, move |node| {
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
    let block_controller = Controller::for_stream(block_stream, blocks)
        // A deleted node's empty blocks go back to the pool.
        .watches_stream(node_stream_for_blocks, move |node| {
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
    let pool_controller = Controller::for_stream(pool_stream, pools)
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
