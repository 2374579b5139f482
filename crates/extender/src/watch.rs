//! Feeds the [`Index`] from one watch per kind; the only I/O on the read path.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::{Arc, RwLock};

use ests_api::{IPBlock, StaticIP, StaticIPPool};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher::watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::Metrics;
use crate::index::{Index, Kind, key};

/// The index, shared by the watches (writers) and the requests (readers).
pub type SharedIndex = Arc<RwLock<Index>>;

/// Runs `f` on the index under its write lock. A panic elsewhere cannot leave the index
/// half-updated in a way that matters more than stopping would, so a poisoned lock is used.
pub fn write<T>(index: &SharedIndex, f: impl FnOnce(&mut Index) -> T) -> T {
    let mut guard = index
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut guard)
}

/// Runs `f` on the index under its read lock.
pub fn read<T>(index: &SharedIndex, f: impl FnOnce(&Index) -> T) -> T {
    let guard = index
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&guard)
}

/// Starts one watch per kind; the answer resolves once every kind has been listed.
pub fn follow(
    client: &Client,
    index: &SharedIndex,
    metrics: &Metrics,
) -> ests_runtime::watch::Listed {
    let all = watcher::Config::default;
    // Terminated pods use nothing; the API server leaves them out (and sends a deletion
    // when a pod terminates).
    let live_pods =
        watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed");
    let ctx = (client, index, metrics);
    let waits = vec![
        spawn(ctx, Kind::Node, all(), Index::apply_node, |n: &Node| {
            name(n)
        }),
        spawn(ctx, Kind::Pod, live_pods, Index::apply_pod, |p: &Pod| {
            key(p)
        }),
        spawn(
            ctx,
            Kind::StaticIP,
            all(),
            Index::apply_record,
            |r: &StaticIP| key(r),
        ),
        spawn(ctx, Kind::Set, all(), Index::apply_set, Index::key_of_set),
        spawn(
            ctx,
            Kind::Revision,
            all(),
            Index::apply_revision,
            |r: &ControllerRevision| key(r),
        ),
        spawn(
            ctx,
            Kind::Block,
            all(),
            Index::apply_block,
            |b: &IPBlock| name(b),
        ),
        spawn(
            ctx,
            Kind::Pool,
            all(),
            Index::apply_pool,
            |p: &StaticIPPool| name(p),
        ),
    ];
    ests_runtime::watch::Listed::spawn("extender", waits)
}

/// Starts the watch of one kind; the answer resolves once it has listed.
fn spawn<K>(
    (client, index, metrics): (&Client, &SharedIndex, &Metrics),
    kind: Kind,
    config: watcher::Config,
    apply: fn(&mut Index, &K),
    key_of: fn(&K) -> String,
) -> ests_runtime::watch::Wait
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + 'static,
{
    let (tx, mut rx) = watch::channel(false);
    tokio::spawn(run(
        Api::<K>::all(client.clone()),
        config,
        index.clone(),
        metrics.clone(),
        kind,
        apply,
        key_of,
        tx,
    ));
    Box::pin(async move {
        let _ = rx.wait_for(|listed| *listed).await;
    })
}

fn name(o: &impl kube::ResourceExt) -> String {
    o.name_any()
}

/// One watch: objects into the index; after a (re)list, what the list no longer holds out.
#[allow(clippy::too_many_arguments)]
async fn run<K>(
    api: Api<K>,
    config: watcher::Config,
    index: SharedIndex,
    metrics: Metrics,
    kind: Kind,
    apply: fn(&mut Index, &K),
    key_of: fn(&K) -> String,
    listed: watch::Sender<bool>,
) where
    K: Resource + Clone + Debug + DeserializeOwned + Send + 'static,
{
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut seen: Option<HashSet<String>> = None;
    let size = metrics.cached.with_label_values(&[kind.label()]);
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(kind = kind.label(), error = %e, "watch failed; retrying");
                continue;
            }
        };
        let held = write(&index, |index| {
            match event {
                Event::Init => seen = Some(HashSet::new()),
                Event::InitApply(object) => {
                    seen.get_or_insert_with(HashSet::new)
                        .insert(key_of(&object));
                    apply(index, &object);
                }
                Event::InitDone => {
                    let seen = seen.take().unwrap_or_default();
                    for gone in index.keys(kind).into_iter().filter(|k| !seen.contains(k)) {
                        index.remove(kind, &gone);
                    }
                }
                Event::Apply(object) => apply(index, &object),
                Event::Delete(object) => index.remove(kind, &key_of(&object)),
            }
            index
                .sizes()
                .iter()
                .find(|(k, _)| *k == kind)
                .map_or(0, |(_, n)| *n)
        });
        if seen.is_none() {
            listed.send_if_modified(|l| !std::mem::replace(l, true));
        }
        size.set(i64::try_from(held).unwrap_or(i64::MAX));
    }
}
