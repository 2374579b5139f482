//! The scheduler extender's decisions, as pure functions of what its caches hold:
//!
//! - [`reservations`]: room each node keeps for static-IP pods that belong there but are not
//!   running there now (the design's rule);
//! - [`filter`]: the source document's two predicates — a pinned pod fits only its node
//!   (CheckPodAnnotationWithStaticIPPred), and a node fits a pod only with room left after
//!   the reservations of *other* identities (PodFitsResourcesWithStaticIPPodPred) — plus a
//!   node's static-IP room in IP range mode;
//! - [`score`]: prefer nodes with more room left after the pod and the reservations.

use std::collections::BTreeMap;

use crate::quantity::{Resources, add, max, show};

/// A Bound record, as the reservation rule reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView {
    /// `namespace/name` of the record (= of the pod identity).
    pub identity: String,
    /// The node the record pins its identity to.
    pub node: String,
    /// The record is Bound (its address and node are known).
    pub bound: bool,
    /// The identity is within its set's range (records kept after scale-in hold only their IP).
    pub in_range: bool,
    /// The identity's pod is bound to the record's node now (its requests count as used).
    pub pod_on_node: bool,
    /// The requests of the set's current revision's pod template.
    pub current_requests: Resources,
    /// The requests of the update revision's pod template.
    pub update_requests: Resources,
}

/// What one node keeps for static-IP pods that are not running there now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reserved {
    /// Per identity: the larger of its revisions' requests.
    pub by_identity: BTreeMap<String, Resources>,
}

impl Reserved {
    /// The total, leaving out `identity` (a pod never competes with its own reservation).
    pub fn total_except(&self, identity: Option<&str>) -> Resources {
        let mut total = Resources::new();
        for (id, r) in &self.by_identity {
            if Some(id.as_str()) != identity {
                add(&mut total, r);
            }
        }
        total
    }
}

/// The reservation rule: for every Bound record of an identity in its set's range whose pod
/// is not bound to the record's node now, the record's node keeps the larger of the current
/// and update revisions' requests.
pub fn reservations(records: &[RecordView]) -> BTreeMap<String, Reserved> {
    let mut by_node: BTreeMap<String, Reserved> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.bound && r.in_range && !r.pod_on_node)
    {
        by_node
            .entry(r.node.clone())
            .or_default()
            .by_identity
            .insert(
                r.identity.clone(),
                max(&r.current_requests, &r.update_requests),
            );
    }
    by_node
}

/// A node as the predicates read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    /// Allocatable resources, including `pods` (the pod count, in milli-units like the rest).
    pub allocatable: Resources,
    /// Requests of the non-terminated pods bound to the node (and `pods`: their number).
    pub requested: Resources,
    pub reserved: Reserved,
    /// IP range mode, per pool: addresses the node's blocks can still hand out (for a
    /// dual-stack pool, the scarcer family). A pool absent here has no block on the node.
    pub static_ip_room: BTreeMap<String, u64>,
    /// CPU, memory and pod slots left after requests and every reservation: the fast path
    /// of [`filter`]. Kept current with [`NodeView::refresh`]; a stale one only sends the
    /// check down the exact path.
    pub headroom: Headroom,
}

/// What is left of a node's CPU, memory and pod slots (milli-units) after its pods'
/// requests and all its reservations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Headroom {
    pub cpu: i128,
    pub memory: i128,
    pub pods: i128,
    /// Allocatable CPU and memory, for the score.
    pub allocatable_cpu: i128,
    pub allocatable_memory: i128,
    /// False until computed: the fast path is not taken.
    pub known: bool,
}

impl NodeView {
    /// Recomputes the headroom after allocatable, requested or reserved changed.
    pub fn refresh(&mut self) {
        let reserved = self.reserved.total_except(None);
        let left = |name: &str| {
            self.allocatable.get(name).copied().unwrap_or(0)
                - self.requested.get(name).copied().unwrap_or(0)
                - reserved.get(name).copied().unwrap_or(0)
        };
        self.headroom = Headroom {
            cpu: left("cpu"),
            memory: left("memory"),
            pods: left("pods"),
            allocatable_cpu: self.allocatable.get("cpu").copied().unwrap_or(0),
            allocatable_memory: self.allocatable.get("memory").copied().unwrap_or(0),
            known: true,
        };
    }
}

/// A pod as the predicates read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodView {
    /// `namespace/name`; for a static-IP pod also its identity.
    pub key: String,
    /// Requests (the larger of the sum of containers and each init container, plus
    /// overhead), without `pods`.
    pub requests: Resources,
    /// The node the pod is pinned to by its record, and the record.
    pub pinned: Option<(String, String)>,
    /// IP range mode, first placement: the pod needs a new address from the node's blocks.
    pub needs_ip: Option<IpNeed>,
    /// The pod is a static-IP pod (its own reservation does not count against it).
    pub static_ip: bool,
    /// Its CPU and memory requests when it requests nothing else (see
    /// [`PodView::summarize`]): the fast path then reads no map per node.
    pub cpu_memory: Option<(i128, i128)>,
}

impl PodView {
    /// Fills in [`PodView::cpu_memory`] from the requests; call once per request, before
    /// checking many nodes.
    pub fn summarize(&mut self) {
        let only_cpu_memory = self
            .requests
            .iter()
            .all(|(name, want)| matches!(name.as_str(), "cpu" | "memory") || *want <= 0);
        self.cpu_memory = only_cpu_memory.then(|| {
            (
                self.requests.get("cpu").copied().unwrap_or(0),
                self.requests.get("memory").copied().unwrap_or(0),
            )
        });
    }
}

/// A range-mode pod's need for an address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpNeed {
    /// The record's pool.
    pub pool: String,
    /// The pool still has blocks a node could claim, so no node is short of addresses.
    pub claimable: bool,
}

/// Whether a node fits a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fit {
    Fits,
    /// Not now; preemption or time may help.
    No(String),
    /// Never, whatever is evicted (the pin).
    Never(String),
}

/// Whether the pod surely fits by the headroom alone: only CPU, memory and a pod slot
/// requested, no reservation of its own on the node. False means "look closer", not "no".
fn fits_headroom(pod: &PodView, node: &NodeView) -> bool {
    let h = &node.headroom;
    if !h.known || h.pods < 1000 {
        return false;
    }
    if pod.static_ip
        && !node.reserved.by_identity.is_empty()
        && node.reserved.by_identity.contains_key(&pod.key)
    {
        return false;
    }
    if let Some((cpu, memory)) = pod.cpu_memory {
        return cpu <= h.cpu && memory <= h.memory;
    }
    pod.requests.iter().all(|(name, want)| match name.as_str() {
        "cpu" => *want <= h.cpu,
        "memory" => *want <= h.memory,
        _ => *want <= 0,
    })
}

/// The two predicates, and the static-IP room.
pub fn filter(pod: &PodView, node: &NodeView) -> Fit {
    if let Some((pinned, record)) = &pod.pinned
        && *pinned != node.name
    {
        return Fit::Never(format!("pinned to {pinned} by StaticIP {record}"));
    }
    if fits_headroom(pod, node) && pod.needs_ip.is_none() {
        return Fit::Fits;
    }
    filter_exactly(pod, node)
}

/// [`filter`] without the fast path: every requested resource, with the reason it fails.
pub fn filter_exactly(pod: &PodView, node: &NodeView) -> Fit {
    if let Some((pinned, record)) = &pod.pinned
        && *pinned != node.name
    {
        return Fit::Never(format!("pinned to {pinned} by StaticIP {record}"));
    }
    let own = pod.static_ip.then_some(pod.key.as_str());
    let reserved = node.reserved.total_except(own);
    // The pod's requests and one pod slot, without building a map per node (this runs for
    // every candidate node of every pod).
    let wanted = pod
        .requests
        .iter()
        .filter(|(name, _)| name.as_str() != "pods")
        .map(|(name, want)| (name.as_str(), *want))
        .chain(std::iter::once(("pods", 1000)));
    for (name, want) in wanted {
        if want <= 0 {
            continue;
        }
        let allocatable = node.allocatable.get(name).copied().unwrap_or(0);
        // Resources the node does not advertise (cluster-level ones such as the static-IP
        // marker) are not the node's to check.
        if !node.allocatable.contains_key(name)
            && name != "cpu"
            && name != "memory"
            && name != "pods"
        {
            continue;
        }
        let used = node.requested.get(name).copied().unwrap_or(0);
        let held = reserved.get(name).copied().unwrap_or(0);
        if used + want > allocatable {
            return Fit::No(format!(
                "insufficient {name}: {} of {} requested",
                show(name, used),
                show(name, allocatable)
            ));
        }
        if used + held + want > allocatable {
            return Fit::No(format!(
                "{} {name} reserved for static-IP pods",
                show(name, held)
            ));
        }
    }
    if let Some(need) = &pod.needs_ip
        && !need.claimable
        && node.static_ip_room.get(&need.pool).copied().unwrap_or(0) == 0
    {
        return Fit::No(format!(
            "no address of StaticIPPool {} left in the node's blocks, and no free block to claim",
            need.pool
        ));
    }
    Fit::Fits
}

/// Highest score the extender API allows.
pub const MAX_SCORE: i64 = 10;

/// 0..=10: the share of the node's CPU and memory (the scarcer of the two) still free after
/// the pod and the reservations of other identities; 0 for a node that does not fit.
pub fn score(pod: &PodView, node: &NodeView) -> i64 {
    if filter(pod, node) != Fit::Fits {
        return 0;
    }
    let own = pod.static_ip.then_some(pod.key.as_str());
    // The headroom counts every reservation; it serves unless one of them is the pod's own.
    let headroom = (node.headroom.known
        && own.is_none_or(|own| !node.reserved.by_identity.contains_key(own)))
    .then_some(node.headroom);
    let reserved = if headroom.is_some() {
        Resources::new()
    } else {
        node.reserved.total_except(own)
    };
    // The common case reads no map: headroom and the pod's summary.
    if let (Some(h), Some((cpu, memory))) = (headroom, pod.cpu_memory) {
        let share = |allocatable: i128, free: i128, want: i128| {
            if allocatable <= 0 {
                return MAX_SCORE;
            }
            let left = (free - want).max(0);
            i64::try_from((left * i128::from(MAX_SCORE)) / allocatable).unwrap_or(0)
        };
        return share(h.allocatable_cpu, h.cpu, cpu)
            .min(share(h.allocatable_memory, h.memory, memory))
            .clamp(0, MAX_SCORE);
    }
    let mut worst = MAX_SCORE;
    for name in ["cpu", "memory"] {
        let allocatable = node.allocatable.get(name).copied().unwrap_or(0);
        if allocatable <= 0 {
            continue;
        }
        let free = match (headroom, name) {
            (Some(h), "cpu") => h.cpu,
            (Some(h), _) => h.memory,
            (None, _) => {
                allocatable
                    - node.requested.get(name).copied().unwrap_or(0)
                    - reserved.get(name).copied().unwrap_or(0)
            }
        };
        let left = free - pod.requests.get(name).copied().unwrap_or(0);
        let share = (left.max(0) * i128::from(MAX_SCORE)) / allocatable;
        worst = worst.min(i64::try_from(share).unwrap_or(0));
    }
    worst.clamp(0, MAX_SCORE)
}

/// Whether a pod this extender let through onto `node` must be charged to it until the
/// watch shows where the pod went: kube-scheduler binds asynchronously, so a burst of pods
/// is filtered before the earlier ones' bindings arrive, and each would see room reserved
/// for static-IP pods as still free once the scheduler's own (assumed) accounting is the
/// only guard. Only nodes that keep room are charged (elsewhere the scheduler's own check is
/// the whole rule), and never with a pod's own reservation (it already counts there).
pub fn charges_until_bound(pod: &PodView, node: &NodeView) -> bool {
    let own_reservation = pod.static_ip && node.reserved.by_identity.contains_key(&pod.key);
    !node.reserved.by_identity.is_empty() && !own_reservation
}

/// Whether a container of `pod` requests (or is limited to) the managed resource
/// `jke.jdcloud.com/static-ip` ([`crate::static_ip::request_static_ip`]).
fn requests_static_ip(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.spec.iter().flat_map(|s| &s.containers).any(|c| {
        c.resources.as_ref().is_some_and(|r| {
            [&r.requests, &r.limits]
                .into_iter()
                .flatten()
                .any(|list| list.contains_key(ests_api::keys::STATIC_IP_RESOURCE))
        })
    })
}

/// What the extender's bind does for a pod before the Binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindStep {
    /// Not a range-mode static-IP pod (or a record-mode one): just the Binding.
    Bind,
    /// The pod's range-mode record has no address yet: allocate on the chosen node first.
    Allocate,
    /// The record holds these addresses on the chosen node: the pod must carry them
    /// (annotations) before it is bound.
    Annotate(Vec<std::net::IpAddr>),
    /// Binding here would break the record's promise.
    Refuse(String),
}

/// The bind decision for `pod` on `node`, from the live pod and its live record.
pub fn bind_step(
    pod: &k8s_openapi::api::core::v1::Pod,
    record: Option<&ests_api::StaticIP>,
    node: &str,
) -> BindStep {
    use ests_api::keys;
    use kube::ResourceExt;
    let name = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    // The scheduler sends only the pods requesting the managed resource to bind; anything
    // else is a caller placing a pod of its choosing, past taints and affinity.
    if !requests_static_ip(pod) {
        return BindStep::Refuse(format!(
            "pod {name} does not request {}: only the pods the scheduler's bind entry manages are bound here",
            keys::STATIC_IP_RESOURCE
        ));
    }
    if pod
        .labels()
        .get(keys::STATIC_IP_POD_LABEL)
        .map(String::as_str)
        != Some("true")
    {
        return BindStep::Bind;
    }
    let Some(stamp) = pod.annotations().get(keys::STATIC_IP_RECORD_UID) else {
        return BindStep::Refuse(format!(
            "static-IP pod {name} lacks the annotation {}",
            keys::STATIC_IP_RECORD_UID
        ));
    };
    let Some(record) = record else {
        return BindStep::Refuse(format!("StaticIP {name} does not exist"));
    };
    if record.uid().as_deref() != Some(stamp.as_str()) {
        return BindStep::Refuse(format!(
            "StaticIP {name} has UID {}, not the {stamp} stamped on the pod",
            record.uid().unwrap_or_default()
        ));
    }
    if crate::static_ip::going(record) {
        return BindStep::Refuse(format!(
            "StaticIP {name} is being deleted: its addresses are being freed; the pod waits for a new record"
        ));
    }
    if record.spec.pool.is_none() {
        return BindStep::Bind;
    }
    let ips = crate::static_ip::record_ips(record);
    if ips.is_empty() {
        return BindStep::Allocate;
    }
    match record.spec.node.as_deref() {
        Some(held_on) if held_on == node => BindStep::Annotate(ips),
        held_on => BindStep::Refuse(format!(
            "StaticIP {name} holds its addresses on node {}, not {node}",
            held_on.unwrap_or("(none)")
        )),
    }
}

#[cfg(test)]
mod tests;

/// A pod spec's requests, as the scheduler counts them: the larger of the sum over its
/// containers and each init container alone, plus the pod overhead. Quantities that do not
/// parse are reported, never guessed.
pub fn pod_requests(spec: &k8s_openapi::api::core::v1::PodSpec) -> Result<Resources, String> {
    let of = |c: &k8s_openapi::api::core::v1::Container| -> Result<Resources, String> {
        let mut r = Resources::new();
        for (name, q) in c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .into_iter()
            .flatten()
        {
            r.insert(
                name.clone(),
                crate::quantity::parse_milli(&q.0)
                    .map_err(|e| format!("container {}: {name}: {e}", c.name))?,
            );
        }
        Ok(r)
    };
    let mut total = Resources::new();
    for c in &spec.containers {
        add(&mut total, &of(c)?);
    }
    for c in spec.init_containers.iter().flatten() {
        total = max(&total, &of(c)?);
    }
    for (name, q) in spec.overhead.iter().flatten() {
        let overhead = Resources::from([(name.clone(), crate::quantity::parse_milli(&q.0)?)]);
        add(&mut total, &overhead);
    }
    Ok(total)
}
