//! Knowing when watch caches have listed.
//!
//! A component that decides from caches must not decide from half-filled ones (a controller
//! would count no pods after a restart; a webhook would refuse pods whose records it has not
//! read yet). kube-runtime's `Store::wait_until_ready` keeps a single waker, so of several
//! tasks waiting on one store only the last to poll is woken. [`Listed`] waits for every
//! store once, in one task, and lets any number of waiters through a watch channel.
#![forbid(unsafe_code)]

use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::time::Duration;

use kube::runtime::reflector::Store;
use tokio::sync::watch;

/// Resolves once `store` has listed, polling its readiness every 100 ms so that a lost
/// wake-up costs at most that.
pub async fn listed<K>(store: &Store<K>)
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    while tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready())
        .await
        .is_err()
    {}
}

/// A future that resolves once one store has listed.
pub type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The waiting for one store, to hand to [`Listed::spawn`].
pub fn wait_for<K>(store: &Store<K>) -> Wait
where
    K: kube::Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let store = store.clone();
    Box::pin(async move { listed(&store).await })
}

/// Turns true once every store given to [`Listed::spawn`] has listed.
#[derive(Clone)]
pub struct Listed(watch::Receiver<bool>);

impl Listed {
    /// Waits for `stores` (see [`wait_for`]) in a task of its own.
    pub fn spawn(what: &'static str, stores: Vec<Wait>) -> Self {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            for store in stores {
                store.await;
            }
            tracing::debug!(what, "caches listed");
            let _ = tx.send(true);
        });
        Self(rx)
    }

    /// Resolves once every store has listed (at once after that).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|l| *l).await;
    }

    /// Whether every store has listed.
    pub fn done(&self) -> bool {
        *self.0.borrow()
    }
}

/// A cluster-wide kind a watch can cache.
pub trait Watched:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Watched for K where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// The changes a [`reflect`]ed watch reports (objects touched, or watch errors).
pub type Changes<K> = futures::stream::BoxStream<'static, Result<K, kube::runtime::watcher::Error>>;

/// A store of every object of `K`, and the stream that fills it: the store stays current
/// only while the stream is polled (hand it to a Controller, or see [`store`]).
pub fn reflect<K: Watched>(client: &kube::Client) -> (Store<K>, Changes<K>) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let (store, writer) = reflector::store();
    let changes = reflector::reflector(
        writer,
        watcher::watcher(
            kube::Api::<K>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects()
    .boxed();
    (store, changes)
}

/// A store of every object of `K`, kept current by a task of its own until the process
/// ends (for caches whose changes trigger nothing).
pub fn store<K: Watched>(client: &kube::Client) -> Store<K> {
    use futures::StreamExt;
    let (store, changes) = reflect(client);
    tokio::spawn(changes.for_each(|_| async {}));
    store
}

/// A client for the Eviction API, from the same configuration as the default one: kube's
/// default client retries 429 (up to 15 times, backing off to minutes), and a
/// PodDisruptionBudget answers 429 for as long as it refuses, so one refused eviction would
/// stall its caller. This client does not retry; the caller tries again on a later pass.
pub async fn eviction_client() -> kube::Result<kube::Client> {
    let mut config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    config.default_retry = false;
    kube::Client::try_from(config)
}
