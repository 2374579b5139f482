//! Watches, their caches, and knowing when the caches have listed.
//!
//! One process runs one watch per kind, whatever number of controllers and indexes in it
//! read that kind: [`Reflectors`] owns a cache and a watch per kind and fans every change
//! out to each subscriber (the set controller, the StaticIP manager and node migration all
//! run in `ests controller`, and each needs pods, records and sets). Every cached object
//! is stored without its `metadata.managedFields`, which nothing decides from and which is
//! often most of a pod's size.
//!
//! A component that decides from caches must not decide from half-filled ones (a controller
//! would count no pods after a restart; a webhook would refuse pods whose records it has not
//! read yet). kube-runtime's `Store::wait_until_ready` keeps a single waker, so of several
//! tasks waiting on one store only the last to poll is woken. [`Listed`] waits for every
//! store once, in one task, and lets any number of waiters through a watch channel.

use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::time::Duration;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use futures::channel::mpsc;
use kube::runtime::reflector::Store;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};
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

/// The changes of one kind a subscriber hears of: every object added, changed or deleted
/// (a deleted one as it was last seen), after the cache holds the change. Watch errors are
/// the watch's own to retry; they are logged, not passed on.
pub type Changes<K> = futures::stream::BoxStream<'static, Arc<K>>;

/// The watches of one process, one per kind, each with its cache: every controller and
/// index of the process reads its caches and hears of its changes from here.
///
/// A kind's watch starts when it is first asked for and runs until the process ends. A
/// subscriber that comes after its watch has started is first told of every object already
/// cached, as a watch of its own would have listed them, so that the order in which the
/// components of a process start does not matter.
#[derive(Clone)]
pub struct Reflectors {
    client: kube::Client,
    kinds: Arc<Mutex<HashMap<TypeId, Box<dyn Any + Send>>>>,
    /// For each kind started, the waiting for its cache to list (see [`Reflectors::listed`]).
    waits: Arc<Mutex<Vec<WaitFor>>>,
    configs: Arc<HashMap<TypeId, watcher::Config>>,
}

type WaitFor = Box<dyn Fn() -> Wait + Send>;

/// One kind's cache and the subscribers its watch tells of changes.
struct Kind<K: Watched> {
    store: Store<K>,
    fanout: Arc<Mutex<Fanout<K>>>,
}

impl<K: Watched> Clone for Kind<K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            fanout: self.fanout.clone(),
        }
    }
}

/// The writer of a kind's cache and its subscribers, under one lock: a subscriber added
/// while the watch applies a change either is told of it or finds it in the cache.
struct Fanout<K: Watched> {
    writer: Writer<K>,
    subscribers: Vec<mpsc::UnboundedSender<Arc<K>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves at worst one change half told; stopping every
    // watch of the process for it would be worse.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Reflectors {
    /// The watches of a process whose client is `client`; each kind is watched cluster-wide
    /// with the default configuration unless [`Reflectors::configure`] says otherwise.
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            kinds: Default::default(),
            waits: Default::default(),
            configs: Default::default(),
        }
    }

    /// Watches `K` with `config` (a label selector, say, in a process where nothing needs
    /// the rest). Only before any watch starts: every reader of a kind shares one watch, so
    /// every reader must be able to work with what `config` leaves out.
    #[must_use]
    pub fn configure<K: Watched>(mut self, config: watcher::Config) -> Self {
        Arc::make_mut(&mut self.configs).insert(TypeId::of::<K>(), config);
        self
    }

    /// The cache of `K` (for readers whose decisions no change of `K` triggers).
    pub fn store<K: Watched>(&self) -> Store<K> {
        self.kind::<K>().store
    }

    /// The cache of `K`, and a stream of its changes for one subscriber (hand both to a
    /// kube-runtime `Controller`: `for_shared_stream`, `watches_shared_stream`,
    /// `owns_shared_stream`). The stream must be polled: what it has not taken yet is
    /// buffered for it.
    pub fn subscribe<K: Watched>(&self) -> (Store<K>, Changes<K>) {
        let kind = self.kind::<K>();
        let (tx, rx) = mpsc::unbounded();
        {
            let mut fanout = lock(&kind.fanout);
            for object in kind.store.state() {
                // The receiver is in hand, so the channel is open.
                let _ = tx.unbounded_send(object);
            }
            fanout.subscribers.push(tx);
        }
        (kind.store, rx.boxed())
    }

    /// Turns true once every kind asked for so far has listed: a component asks once it
    /// has taken all its caches (it may then also wait for another component's kinds, which
    /// list at the same time).
    pub fn listed(&self, what: &'static str) -> Listed {
        let waits = lock(&self.waits).iter().map(|wait| wait()).collect();
        Listed::spawn(what, waits)
    }

    /// The watch of `K`, started now if it was not yet.
    fn kind<K: Watched>(&self) -> Kind<K> {
        let mut kinds = lock(&self.kinds);
        if let Some(kind) = kinds
            .get(&TypeId::of::<K>())
            .and_then(|k| k.downcast_ref::<Kind<K>>())
        {
            return kind.clone();
        }
        let writer = Writer::<K>::default();
        let kind = Kind {
            store: writer.as_reader(),
            fanout: Arc::new(Mutex::new(Fanout {
                writer,
                subscribers: Vec::new(),
            })),
        };
        let config = self
            .configs
            .get(&TypeId::of::<K>())
            .cloned()
            .unwrap_or_default();
        tokio::spawn(follow(
            kube::Api::<K>::all(self.client.clone()),
            config,
            kind.fanout.clone(),
        ));
        let store = kind.store.clone();
        lock(&self.waits).push(Box::new(move || wait_for(&store)));
        kinds.insert(TypeId::of::<K>(), Box::new(kind.clone()));
        kind
    }
}

/// Runs the watch of one kind: each change into the cache, then to every subscriber.
async fn follow<K: Watched>(
    api: kube::Api<K>,
    config: watcher::Config,
    fanout: Arc<Mutex<Fanout<K>>>,
) {
    let kind = K::kind(&());
    let mut events = watcher::watcher(api, config)
        .default_backoff()
        .modify(|object| object.meta_mut().managed_fields = None)
        .boxed();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(%kind, error = %e, "watch failed; retrying");
                continue;
            }
        };
        let mut fanout = lock(&fanout);
        fanout.writer.apply_watcher_event(&event);
        let touched = match event {
            watcher::Event::Apply(o) | watcher::Event::InitApply(o) | watcher::Event::Delete(o) => {
                Arc::new(o)
            }
            watcher::Event::Init | watcher::Event::InitDone => continue,
        };
        // A subscriber whose stream is gone has stopped (its controller shut down).
        fanout
            .subscribers
            .retain(|s| s.unbounded_send(touched.clone()).is_ok());
    }
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

/// Takes pod `namespace/name` down with `delete` as its delete options (a UID
/// precondition names the incarnation meant): evicted through the Eviction API on
/// `evictions`, a client from [`eviction_client`], when `evict` (a PodDisruptionBudget has
/// its say, and its refusal comes back as a 429 at once); deleted on `client` otherwise.
pub async fn take_down_pod(
    client: &kube::Client,
    evictions: &kube::Client,
    (namespace, name): (&str, &str),
    evict: bool,
    delete: kube::api::DeleteParams,
) -> kube::Result<()> {
    type Pods = kube::Api<k8s_openapi::api::core::v1::Pod>;
    if !evict {
        return Pods::namespaced(client.clone(), namespace)
            .delete(name, &delete)
            .await
            .map(|_| ());
    }
    let params = kube::api::EvictParams {
        delete_options: Some(delete),
        post_options: kube::api::PostParams::default(),
    };
    Pods::namespaced(evictions.clone(), namespace)
        .evict(name, &params)
        .await
        .map(|_| ())
}
