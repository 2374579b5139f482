//! The extender's memory: every node as the predicates read it (`NodeView`), kept current
//! from watch events, so a request costs one lookup per candidate node — never a pass over
//! every pod. The only place that interprets nodes, pods, records, sets, revisions, blocks
//! and pools for the extender.
//!
//! What is kept per object is only what the predicates need: for a bound pod its node and
//! requests, for a record its node, state and owner, for a set its ordinals and the requests
//! of its two revisions, for a block its node and free addresses.
//!
//! Reservations (`ests_core::extender::reservations`, the design's rule) are recomputed for
//! the nodes an event concerns: a record's old and new node, the node of the record of a pod
//! that moved, the nodes of a set's records when the set or one of its revisions changes.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ests_api::{EnhancedStatefulSet, IPBlock, StaticIP, StaticIPPhase, StaticIPPool, keys};
use ests_core::allocator::Block;
use ests_core::extender::{
    IpNeed, NodeView, PodView, RecordView, charges_until_bound, pod_requests, reservations,
};
use ests_core::identity::{ordinal_of, spec_ordinals};
use ests_core::quantity::{Resources, parse_milli};
use ests_core::revision::template_of;
use ipnet::IpNet;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use rustc_hash::{FxHashMap, FxHashSet};

/// `namespace/name`.
pub fn key(o: &impl ResourceExt) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

fn terminated(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// A bound, non-terminated pod: where it is and what it asks for. Resource names are
/// interned, so a pod costs a few dozen bytes beyond its key.
struct PodEntry {
    node: Arc<str>,
    requests: Box<[(u16, i128)]>,
}

/// A pod this extender let through onto nodes that keep room for static-IP pods, not yet
/// seen bound: charged to those nodes, as kube-scheduler charges the pods it assumed, until
/// the watch shows where it went, it goes, or [`ASSUMED_FOR`] passes (a pod the scheduler
/// finally placed elsewhere, or not at all).
struct Assumed {
    nodes: Box<[Arc<str>]>,
    requests: Box<[(u16, i128)]>,
    until: Instant,
}

/// How long a let-through pod stays charged without being seen bound.
pub const ASSUMED_FOR: Duration = Duration::from_secs(30);

struct RecordEntry {
    node: Option<Arc<str>>,
    bound: bool,
    /// Range mode: the record's pool.
    pool: Option<Box<str>>,
    has_ips: bool,
    owner_uid: Option<Box<str>>,
    ordinal: Option<i32>,
}

struct SetEntry {
    ordinals: BTreeSet<i32>,
    update_requests: Resources,
    /// `namespace/name` of the current revision's ControllerRevision.
    current_revision: Option<Box<str>>,
}

struct BlockEntry {
    pool: Box<str>,
    node: Option<Arc<str>>,
    v6: bool,
    free: u64,
}

struct PoolEntry {
    /// Per family (false = IPv4): how many blocks the pool's CIDRs split into.
    possible: HashMap<bool, u128>,
    reserved: Vec<IpAddr>,
}

/// The kinds of object the index follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Node,
    Pod,
    StaticIP,
    Set,
    Revision,
    Block,
    Pool,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Node,
        Kind::Pod,
        Kind::StaticIP,
        Kind::Set,
        Kind::Revision,
        Kind::Block,
        Kind::Pool,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Node => "nodes",
            Kind::Pod => "pods",
            Kind::StaticIP => "staticips",
            Kind::Set => "enhancedstatefulsets",
            Kind::Revision => "controllerrevisions",
            Kind::Block => "ipblocks",
            Kind::Pool => "staticippools",
        }
    }
}

/// Everything the predicates read, by node.
#[derive(Default)]
pub struct Index {
    /// Looked up once per candidate node per request: a fast hash (node names are not
    /// attacker-chosen keys here; the API server vets them).
    nodes: FxHashMap<Arc<str>, NodeView>,
    /// Nodes whose Node object is cached (others only carry pods or records).
    present: BTreeSet<Arc<str>>,
    /// Nodes that keep room for static-IP pods (few, and usually none).
    reserving: FxHashSet<Arc<str>>,
    pods: HashMap<Box<str>, PodEntry>,
    records: HashMap<Box<str>, RecordEntry>,
    records_on: HashMap<Arc<str>, BTreeSet<Box<str>>>,
    sets: HashMap<Box<str>, SetEntry>,
    revisions: HashMap<Box<str>, Resources>,
    blocks: HashMap<Box<str>, BlockEntry>,
    /// Free addresses by (node, pool, IPv6).
    free: HashMap<(Arc<str>, Box<str>, bool), u64>,
    /// Blocks owned by some node, by (pool, IPv6).
    claimed: HashMap<(Box<str>, bool), u128>,
    pools: HashMap<Box<str>, PoolEntry>,
    resource_names: Vec<Arc<str>>,
    assumed: HashMap<Box<str>, Assumed>,
}

impl Index {
    /// The node as the predicates read it; None if its Node object is not cached.
    pub fn node(&self, name: &str) -> Option<&NodeView> {
        // Only cached nodes have a headroom: one lookup instead of two.
        self.nodes.get(name).filter(|n| n.headroom.known)
    }

    /// Whether some node keeps room for static-IP pods.
    pub fn any_reservation(&self) -> bool {
        !self.reserving.is_empty()
    }

    /// Whether `node` keeps room for static-IP pods.
    pub fn reserves(&self, node: &str) -> bool {
        self.reserving.contains(node)
    }

    /// How many objects of each kind the index holds (pods: bound, non-terminated ones).
    pub fn sizes(&self) -> [(Kind, usize); 7] {
        [
            (Kind::Node, self.present.len()),
            (Kind::Pod, self.pods.len()),
            (Kind::StaticIP, self.records.len()),
            (Kind::Set, self.sets.len()),
            (Kind::Revision, self.revisions.len()),
            (Kind::Block, self.blocks.len()),
            (Kind::Pool, self.pools.len()),
        ]
    }

    /// Keys of the objects of `kind` the index holds (to drop those a relist no longer has).
    pub fn keys(&self, kind: Kind) -> Vec<String> {
        match kind {
            Kind::Node => self.present.iter().map(|k| k.to_string()).collect(),
            Kind::Pod => self.pods.keys().map(|k| k.to_string()).collect(),
            Kind::StaticIP => self.records.keys().map(|k| k.to_string()).collect(),
            Kind::Set => self.sets.keys().map(|k| k.to_string()).collect(),
            Kind::Revision => self.revisions.keys().map(|k| k.to_string()).collect(),
            Kind::Block => self.blocks.keys().map(|k| k.to_string()).collect(),
            Kind::Pool => self.pools.keys().map(|k| k.to_string()).collect(),
        }
    }

    /// Forgets the object of `kind` with `key` (its index key: a name, `namespace/name`, or
    /// for sets the UID).
    pub fn remove(&mut self, kind: Kind, key: &str) {
        match kind {
            Kind::Node => self.remove_node(key),
            Kind::Pod => {
                self.unassume(key);
                self.set_pod(key, None)
            }
            Kind::StaticIP => self.set_record(key, None),
            Kind::Set => self.set_set(key, None),
            Kind::Revision => self.set_revision(key, None),
            Kind::Block => self.set_block(key, None),
            Kind::Pool => self.set_pool(key, None),
        }
    }

    /// The key `remove` takes for this object.
    pub fn key_of_set(set: &EnhancedStatefulSet) -> String {
        set.uid().unwrap_or_else(|| key(set))
    }

    /// The node's interned name, creating its (empty) view if needed.
    fn intern_node(&mut self, name: &str) -> Arc<str> {
        if let Some((k, _)) = self.nodes.get_key_value(name) {
            return k.clone();
        }
        let interned: Arc<str> = Arc::from(name);
        self.nodes.insert(
            interned.clone(),
            NodeView {
                name: name.to_string(),
                ..NodeView::default()
            },
        );
        interned
    }

    fn view_mut(&mut self, name: &str) -> &mut NodeView {
        let interned = self.intern_node(name);
        self.nodes
            .get_mut(&*interned)
            .unwrap_or_else(|| unreachable!("interned above"))
    }

    fn intern_resource(&mut self, name: &str) -> u16 {
        if let Some(i) = self.resource_names.iter().position(|n| &**n == name) {
            return u16::try_from(i).unwrap_or(u16::MAX);
        }
        self.resource_names.push(Arc::from(name));
        u16::try_from(self.resource_names.len() - 1).unwrap_or(u16::MAX)
    }

    // ---- nodes ----

    pub fn apply_node(&mut self, node: &Node) {
        let name = node.name_any();
        let allocatable: Resources = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .map(|a| {
                a.iter()
                    .filter_map(|(k, q)| Some((k.clone(), parse_milli(&q.0).ok()?)))
                    .collect()
            })
            .unwrap_or_default();
        let interned = self.intern_node(&name);
        self.present.insert(interned);
        let view = self.view_mut(&name);
        view.allocatable = allocatable;
        view.refresh();
    }

    fn remove_node(&mut self, name: &str) {
        self.present.remove(name);
        if let Some(view) = self.nodes.get_mut(name) {
            view.allocatable.clear();
            view.headroom = Default::default();
        }
    }

    /// Recomputes a cached node's headroom (nodes only carrying pods or records have none).
    fn refresh_headroom(&mut self, name: &str) {
        if self.present.contains(name)
            && let Some(view) = self.nodes.get_mut(name)
        {
            view.refresh();
        }
    }

    // ---- pods ----

    /// A pod as the index keeps it: only bound, non-terminated pods count.
    pub fn apply_pod(&mut self, pod: &Pod) {
        if terminated(pod) || pod.metadata.deletion_timestamp.is_some() {
            self.unassume(&key(pod));
        }
        let entry = pod
            .spec
            .as_ref()
            .filter(|_| !terminated(pod))
            .and_then(|spec| {
                let node = spec.node_name.as_deref()?;
                let mut requests = pod_requests(spec).unwrap_or_default();
                requests.insert("pods".into(), 1000);
                Some((node.to_string(), requests))
            });
        let entry = entry.map(|(node, requests)| PodEntry {
            node: self.intern_node(&node),
            requests: requests
                .iter()
                .map(|(name, v)| (self.intern_resource(name), *v))
                .collect(),
        });
        self.set_pod(&key(pod), entry);
    }

    fn add_requests(&mut self, node: &str, requests: &[(u16, i128)], sign: i128) {
        let names: Vec<Arc<str>> = requests
            .iter()
            .map(|(i, _)| self.resource_names[usize::from(*i)].clone())
            .collect();
        let view = self.view_mut(node);
        for (name, (_, v)) in names.iter().zip(requests) {
            let total = view.requested.entry(name.to_string()).or_insert(0);
            *total += sign * v;
            if *total == 0 {
                view.requested.remove(&**name);
            }
        }
        self.refresh_headroom(node);
    }

    fn set_pod(&mut self, key: &str, entry: Option<PodEntry>) {
        // Seen bound: its real requests replace the charge. (An update of a pod still
        // waiting to be bound keeps it.)
        if entry.is_some() {
            self.unassume(key);
        }
        let old = self.pods.remove(key);
        let old_node = old.as_ref().map(|o| o.node.clone());
        if let Some(old) = &old {
            self.add_requests(&old.node.clone(), &old.requests, -1);
        }
        let new_node = entry.as_ref().map(|e| e.node.clone());
        if let Some(entry) = entry {
            self.add_requests(&entry.node.clone(), &entry.requests, 1);
            self.pods.insert(key.into(), entry);
        }
        // A static-IP pod arriving at or leaving its record's node changes that node's
        // reservations.
        if old_node != new_node
            && let Some(node) = self.records.get(key).and_then(|r| r.node.clone())
        {
            self.refresh(&node);
        }
    }

    // ---- pods let through, not yet seen bound ----

    /// The kept nodes (of a filter answer for `pod`) that the pod must be charged to until
    /// it is seen bound ([`charges_until_bound`]); empty, without a lookup, where no node
    /// keeps room for static-IP pods.
    pub fn nodes_to_charge<'a>(
        &self,
        pod: &PodView,
        kept: impl IntoIterator<Item = &'a str>,
    ) -> Vec<Arc<str>> {
        if self.reserving.is_empty() {
            return Vec::new();
        }
        kept.into_iter()
            .filter_map(|name| self.reserving.get(name))
            .filter(|name| {
                self.nodes
                    .get(&**name)
                    .is_some_and(|node| charges_until_bound(pod, node))
            })
            .cloned()
            .collect()
    }

    /// Charges `pod` to `nodes` until it is seen bound (or [`ASSUMED_FOR`] passes); a pod
    /// filtered again replaces its earlier charge.
    pub fn assume(&mut self, pod: &PodView, nodes: Vec<Arc<str>>, now: Instant) {
        self.expire_assumed(now);
        self.unassume(&pod.key);
        if nodes.is_empty() || self.pods.contains_key(pod.key.as_str()) {
            return;
        }
        let requests: Box<[(u16, i128)]> = pod
            .requests
            .iter()
            .filter(|(name, _)| name.as_str() != "pods")
            .map(|(name, v)| (name.clone(), *v))
            .chain(std::iter::once(("pods".to_string(), 1000)))
            .map(|(name, v)| (self.intern_resource(&name), v))
            .collect();
        for node in nodes.iter() {
            self.add_requests(&node.clone(), &requests, 1);
        }
        self.assumed.insert(
            pod.key.as_str().into(),
            Assumed {
                nodes: nodes.into(),
                requests,
                until: now + ASSUMED_FOR,
            },
        );
    }

    fn unassume(&mut self, key: &str) {
        if let Some(assumed) = self.assumed.remove(key) {
            for node in assumed.nodes.iter() {
                self.add_requests(&node.clone(), &assumed.requests, -1);
            }
        }
    }

    /// Drops the charges older than [`ASSUMED_FOR`].
    pub fn expire_assumed(&mut self, now: Instant) {
        if self.assumed.is_empty() {
            return;
        }
        let expired: Vec<Box<str>> = self
            .assumed
            .iter()
            .filter(|(_, a)| a.until <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for key in expired {
            self.unassume(&key);
        }
    }

    /// How many pods are charged without being seen bound.
    pub fn assumed_pods(&self) -> usize {
        self.assumed.len()
    }

    // ---- records ----

    pub fn apply_record(&mut self, record: &StaticIP) {
        let entry = RecordEntry {
            node: record.spec.node.as_deref().map(|n| self.intern_node(n)),
            // A record moving with its node (node migration) already belongs to its new node.
            bound: record.status.as_ref().is_some_and(|s| {
                matches!(s.phase, StaticIPPhase::Bound | StaticIPPhase::Migrating)
            }),
            pool: record.spec.pool.as_deref().map(Box::from),
            has_ips: !record.spec.ips.is_empty(),
            owner_uid: record
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
                .map(|o| Box::from(o.uid.as_str())),
            ordinal: ordinal_of(&record.spec.workload.name, &record.spec.pod_name),
        };
        self.set_record(&key(record), Some(entry));
    }

    fn set_record(&mut self, key: &str, entry: Option<RecordEntry>) {
        let old_node = self.records.remove(key).and_then(|r| r.node);
        let new_node = entry.as_ref().and_then(|r| r.node.clone());
        if let Some(entry) = entry {
            self.records.insert(key.into(), entry);
        }
        if old_node != new_node {
            if let Some(old) = &old_node
                && let Some(on) = self.records_on.get_mut(old)
            {
                on.remove(key);
                if on.is_empty() {
                    self.records_on.remove(old);
                }
            }
            if let Some(new) = &new_node {
                self.records_on
                    .entry(new.clone())
                    .or_default()
                    .insert(key.into());
            }
        }
        for node in [old_node, new_node].into_iter().flatten() {
            self.refresh(&node);
        }
    }

    // ---- sets and revisions ----

    pub fn apply_set(&mut self, set: &EnhancedStatefulSet) {
        let namespace = set.namespace().unwrap_or_default();
        let entry = SetEntry {
            ordinals: spec_ordinals(&set.spec)
                .unwrap_or_default()
                .into_iter()
                .collect(),
            update_requests: set
                .spec
                .template
                .spec
                .as_ref()
                .and_then(|s| pod_requests(s).ok())
                .unwrap_or_default(),
            current_revision: set
                .status
                .as_ref()
                .and_then(|s| s.current_revision.as_deref())
                .map(|r| format!("{namespace}/{r}").into()),
        };
        self.set_set(&Self::key_of_set(set), Some(entry));
    }

    fn set_set(&mut self, uid: &str, entry: Option<SetEntry>) {
        match entry {
            Some(entry) => {
                self.sets.insert(uid.into(), entry);
            }
            None => {
                self.sets.remove(uid);
            }
        }
        self.refresh_owned_by(|owner| owner == uid);
    }

    /// A ControllerRevision; only those of EnhancedStatefulSets are kept.
    pub fn apply_revision(&mut self, revision: &ControllerRevision) {
        let ours = revision
            .owner_references()
            .iter()
            .any(|o| o.kind == "EnhancedStatefulSet");
        if !ours {
            return;
        }
        let requests = template_of(&revision.data.0)
            .and_then(|t| t.spec)
            .and_then(|s| pod_requests(&s).ok())
            .unwrap_or_default();
        self.set_revision(&key(revision), Some(requests));
    }

    fn set_revision(&mut self, key: &str, requests: Option<Resources>) {
        let changed = match requests {
            Some(r) => self.revisions.insert(key.into(), r.clone()) != Some(r),
            None => self.revisions.remove(key).is_some(),
        };
        if !changed {
            return;
        }
        let owners: BTreeSet<Box<str>> = self
            .sets
            .iter()
            .filter(|(_, s)| s.current_revision.as_deref() == Some(key))
            .map(|(uid, _)| uid.clone())
            .collect();
        if !owners.is_empty() {
            self.refresh_owned_by(|owner| owners.contains(owner));
        }
    }

    fn refresh_owned_by(&mut self, owned: impl Fn(&str) -> bool) {
        let nodes: BTreeSet<Arc<str>> = self
            .records
            .values()
            .filter(|r| r.owner_uid.as_deref().is_some_and(&owned))
            .filter_map(|r| r.node.clone())
            .collect();
        for node in nodes {
            self.refresh(&node);
        }
    }

    /// Recomputes the node's reservations from its records.
    fn refresh(&mut self, node: &str) {
        let views: Vec<RecordView> = self
            .records_on
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|identity| {
                let record = self.records.get(identity)?;
                let set = record
                    .owner_uid
                    .as_deref()
                    .and_then(|uid| self.sets.get(uid));
                let in_range = set
                    .zip(record.ordinal)
                    .is_some_and(|(set, ordinal)| set.ordinals.contains(&ordinal));
                let update_requests = set.map(|s| s.update_requests.clone()).unwrap_or_default();
                let current_requests = set
                    .and_then(|s| s.current_revision.as_deref())
                    .and_then(|r| self.revisions.get(r))
                    .cloned()
                    .unwrap_or_else(|| update_requests.clone());
                Some(RecordView {
                    identity: identity.to_string(),
                    node: node.to_string(),
                    bound: record.bound,
                    in_range,
                    pod_on_node: self.pods.get(identity).is_some_and(|p| &*p.node == node),
                    current_requests,
                    update_requests,
                })
            })
            .collect();
        let reserved = reservations(&views).remove(node).unwrap_or_default();
        let interned = self.intern_node(node);
        if reserved.by_identity.is_empty() {
            self.reserving.remove(node);
        } else {
            self.reserving.insert(interned);
        }
        self.view_mut(node).reserved = reserved;
        self.refresh_headroom(node);
    }

    // ---- blocks and pools ----

    pub fn apply_block(&mut self, block: &IPBlock) {
        let Ok(cidr) = block.spec.cidr.parse::<IpNet>() else {
            self.set_block(&block.name_any(), None);
            return;
        };
        let reserved = self
            .pools
            .get(block.spec.pool.as_str())
            .map(|p| p.reserved.clone())
            .unwrap_or_default();
        let capacity = Block::new(cidr, &reserved).map_or(0, |b| b.capacity());
        let entry = BlockEntry {
            pool: block.spec.pool.as_str().into(),
            node: block.spec.node.as_deref().map(|n| self.intern_node(n)),
            v6: matches!(cidr, IpNet::V6(_)),
            free: capacity.saturating_sub(block.spec.allocations.len() as u64),
        };
        self.set_block(&block.name_any(), Some(entry));
    }

    fn set_block(&mut self, name: &str, entry: Option<BlockEntry>) {
        let mut touched = Vec::new();
        if let Some(old) = self.blocks.remove(name)
            && let Some(node) = old.node
        {
            let free = self
                .free
                .entry((node.clone(), old.pool.clone(), old.v6))
                .or_insert(0);
            *free = free.saturating_sub(old.free);
            let claimed = self.claimed.entry((old.pool.clone(), old.v6)).or_insert(0);
            *claimed = claimed.saturating_sub(1);
            touched.push((node, old.pool));
        }
        if let Some(new) = entry {
            if let Some(node) = &new.node {
                *self
                    .free
                    .entry((node.clone(), new.pool.clone(), new.v6))
                    .or_insert(0) += new.free;
                *self.claimed.entry((new.pool.clone(), new.v6)).or_insert(0) += 1;
                touched.push((node.clone(), new.pool.clone()));
            }
            self.blocks.insert(name.into(), new);
        }
        for (node, pool) in touched {
            self.refresh_room(&node, &pool);
        }
    }

    /// The families a pool hands out: from its CIDRs, or from its blocks if it is unknown.
    fn families(&self, pool: &str) -> Vec<bool> {
        match self.pools.get(pool) {
            Some(p) => p.possible.keys().copied().collect(),
            None => {
                let mut f: Vec<bool> = self
                    .blocks
                    .values()
                    .filter(|b| &*b.pool == pool)
                    .map(|b| b.v6)
                    .collect();
                f.sort_unstable();
                f.dedup();
                f
            }
        }
    }

    fn refresh_room(&mut self, node: &Arc<str>, pool: &str) {
        let room = self
            .families(pool)
            .into_iter()
            .map(|v6| {
                self.free
                    .get(&(node.clone(), Box::from(pool), v6))
                    .copied()
                    .unwrap_or(0)
            })
            .min()
            .unwrap_or(0);
        self.view_mut(node).static_ip_room.insert(pool.into(), room);
    }

    pub fn apply_pool(&mut self, pool: &StaticIPPool) {
        let mut possible: HashMap<bool, u128> = HashMap::new();
        for cidr in pool
            .spec
            .cidrs
            .iter()
            .filter_map(|c| c.parse::<IpNet>().ok())
        {
            let (v6, block_prefix) = match cidr {
                IpNet::V4(_) => (false, pool.spec.ipv4_block_prefix_length),
                IpNet::V6(_) => (true, pool.spec.ipv6_block_prefix_length),
            };
            let bits = u32::from(block_prefix.saturating_sub(cidr.prefix_len()));
            let count = 1u128.checked_shl(bits).unwrap_or(u128::MAX);
            let total = possible.entry(v6).or_insert(0);
            *total = total.saturating_add(count);
        }
        let entry = PoolEntry {
            possible,
            reserved: pool
                .spec
                .reserved_ips
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
        };
        self.set_pool(&pool.name_any(), Some(entry));
    }

    fn set_pool(&mut self, name: &str, entry: Option<PoolEntry>) {
        match entry {
            Some(entry) => {
                self.pools.insert(name.into(), entry);
            }
            None => {
                self.pools.remove(name);
            }
        }
        let nodes: BTreeSet<Arc<str>> = self
            .blocks
            .values()
            .filter(|b| &*b.pool == name)
            .filter_map(|b| b.node.clone())
            .collect();
        for node in nodes {
            self.refresh_room(&node, name);
        }
    }

    /// Whether the pool still has a block some node could claim, in every family.
    fn claimable(&self, pool: &str) -> bool {
        self.pools.get(pool).is_some_and(|p| {
            p.possible.iter().all(|(v6, possible)| {
                self.claimed
                    .get(&(Box::from(pool), *v6))
                    .copied()
                    .unwrap_or(0)
                    < *possible
            })
        })
    }

    // ---- the pod of a request ----

    /// The pod as the predicates read it: its requests, its pin, and its need for an address.
    pub fn pod_view(&self, pod: &Pod) -> PodView {
        let key = key(pod);
        let static_ip = pod
            .labels()
            .get(keys::STATIC_IP_POD_LABEL)
            .map(String::as_str)
            == Some("true");
        let record = static_ip.then(|| self.records.get(key.as_str())).flatten();
        // A record pins its identity once Bound, or once it holds range-mode addresses (they
        // live in its node's blocks).
        let pinned = record
            .filter(|r| r.bound || (r.pool.is_some() && r.has_ips))
            .and_then(|r| r.node.as_deref())
            .map(|n| (n.to_string(), key.clone()))
            // The webhook's pin annotation, for a record this cache has not seen yet.
            .or_else(|| {
                pod.annotations()
                    .get(keys::STATIC_IP_POD_NODE)
                    .filter(|_| static_ip)
                    .map(|n| (n.clone(), key.clone()))
            });
        let needs_ip = record
            .filter(|r| !r.has_ips)
            .and_then(|r| r.pool.as_deref())
            .map(|pool| IpNeed {
                pool: pool.to_string(),
                claimable: self.claimable(pool),
            });
        let mut view = PodView {
            requests: pod
                .spec
                .as_ref()
                .and_then(|s| pod_requests(s).ok())
                .unwrap_or_default(),
            key,
            pinned,
            needs_ip,
            static_ip,
            cpu_memory: None,
        };
        view.summarize();
        view
    }
}

#[cfg(test)]
mod tests;
