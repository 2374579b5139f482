//! Static-IP decisions: a set's static-IP settings, the record each identity gets, whether
//! the controller may take a pod down, and what the StaticIP manager does with a record
//! given its pod and its set.
//!
//! A record is the identity's claim on its addresses. It is created by the set controller
//! before the identity's first pod, learns its addresses (record mode: from the pod the CNI
//! addressed; IP range mode: from the allocator), is Bound to the pod that runs with them,
//! and is released — deleted — only by its release policy, and only once no pod of the
//! identity is left.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ests_api::keys;
use ests_api::policy::ip_mode;
use ests_api::{
    EnhancedStatefulSet, NodeDeletionPolicy, ReleasePolicy, StaticIP, StaticIPPhase, StaticIPSpec,
    WorkloadReference,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

/// Condition type: the record is bound to a running pod that holds its addresses.
pub const CONDITION_BOUND: &str = "Bound";
/// Condition type: a pod of the identity exists.
pub const CONDITION_POD_PRESENT: &str = "PodPresent";

/// Seconds after which a pod whose address another record held is looked at again.
pub const ADDRESS_TAKEN_RECHECK: i64 = 10;

/// Seconds for which the controller's claim on a record (see [`claim`]) keeps the manager
/// from releasing it: longer than a pod creation takes (the API server gives up on a request
/// after 60 s; admission webhooks have at most 30 s), so that the pod exists — and the
/// release's live look-up finds it — before the claim runs out.
pub const CLAIM_SECONDS: i64 = 90;

/// A set's static-IP settings, from its annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSettings {
    /// IP range mode's pool; None in record mode.
    pub pool: Option<String>,
    pub release_policy: ReleasePolicy,
    pub release_ttl_seconds: Option<i64>,
}

/// The set's static-IP settings; None when static IPs are off. A set breaking a rule of
/// [`ip_mode::RULES`] (which the admission policy enforces with the same rules, so only a
/// set admitted without the policy does) is an error naming the annotation.
pub fn settings(set: &EnhancedStatefulSet) -> Result<Option<IpSettings>, String> {
    settings_of(set.annotations())
}

/// [`settings`] over an annotation map.
pub fn settings_of(annotations: &BTreeMap<String, String>) -> Result<Option<IpSettings>, String> {
    if let Some(problem) = ip_mode::problems(annotations, None).into_iter().next() {
        return Err(problem);
    }
    if ip_mode::value(annotations, keys::STATIC_IP_ENABLE) != "true" {
        return Ok(None);
    }
    let pool = Some(ip_mode::value(annotations, keys::STATIC_IP_POOL))
        .filter(|p| !p.is_empty())
        .map(str::to_string);
    // The rules allowed only these names and a TTL of at most nine digits, set exactly with
    // policy TTL; the arms below are what those names mean.
    let release_policy = match ip_mode::value(annotations, keys::STATIC_IP_RELEASE_POLICY) {
        "WhenDeleted" => ReleasePolicy::WhenDeleted,
        "TTL" => ReleasePolicy::Ttl,
        "Never" => ReleasePolicy::Never,
        _ => ReleasePolicy::WhenScaled,
    };
    let release_ttl_seconds = Some(ip_mode::value(
        annotations,
        keys::STATIC_IP_RELEASE_TTL_SECONDS,
    ))
    .filter(|t| !t.is_empty())
    .map(|t| {
        t.parse::<i64>().map_err(|e| {
            format!(
                "metadata.annotations[{}]: {t:?}: {e}",
                keys::STATIC_IP_RELEASE_TTL_SECONDS
            )
        })
    })
    .transpose()?;
    Ok(Some(IpSettings {
        pool,
        release_policy,
        release_ttl_seconds,
    }))
}

/// The record a new identity `pod_name` of `set` gets: named like the pod, owned by the set.
pub fn new_record(set: &EnhancedStatefulSet, pod_name: &str, settings: &IpSettings) -> StaticIP {
    // Range-mode records hold addresses on blocks: they go only after those are freed.
    let finalizers = settings
        .pool
        .as_ref()
        .map(|_| vec![keys::RECORD_RELEASE_FINALIZER.to_string()]);
    StaticIP {
        metadata: ObjectMeta {
            name: Some(pod_name.to_string()),
            namespace: set.namespace(),
            owner_references: set.controller_owner_ref(&()).map(|o| vec![o]),
            finalizers,
            ..ObjectMeta::default()
        },
        spec: StaticIPSpec {
            workload: workload_of(set),
            pod_name: pod_name.to_string(),
            pool: settings.pool.clone(),
            ips: Vec::new(),
            node: None,
            release_policy: settings.release_policy,
            release_ttl_seconds: settings.release_ttl_seconds,
        },
        status: None,
    }
}

/// The workload reference of `set`.
pub fn workload_of(set: &EnhancedStatefulSet) -> WorkloadReference {
    WorkloadReference {
        api_version: EnhancedStatefulSet::api_version(&()).into_owned(),
        kind: EnhancedStatefulSet::kind(&()).into_owned(),
        name: set.name_any(),
        uid: set.uid().unwrap_or_default(),
    }
}

/// How an existing record named like one of `set`'s identities relates to the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Owned by this set: stamp pods with it.
    Ours,
    /// Kept after an earlier set of the same name went: adopt it (new owner, new UID).
    Adoptable,
    /// Being deleted (released): wait until it is gone, then create a fresh one.
    Deleting,
    /// Owned by something else (an earlier set still being deleted, another workload):
    /// leave it alone and create no pod for the identity.
    Foreign(String),
}

/// See [`Ownership`].
pub fn ownership(record: &StaticIP, set: &EnhancedStatefulSet) -> Ownership {
    if going(record) {
        return Ownership::Deleting;
    }
    let uid = set.uid().unwrap_or_default();
    let controller = record
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true));
    match controller {
        Some(owner) if owner.uid == uid => Ownership::Ours,
        Some(owner) => Ownership::Foreign(format!("{} {} ({})", owner.kind, owner.name, owner.uid)),
        None if record.spec.workload.kind == EnhancedStatefulSet::kind(&())
            && record.spec.workload.name == set.name_any() =>
        {
            Ownership::Adoptable
        }
        None => Ownership::Foreign(format!(
            "{} {} (not owned)",
            record.spec.workload.kind, record.spec.workload.name
        )),
    }
}

/// Seconds for which the controller creates pods on a claim it wrote earlier instead of
/// claiming again: a pod the webhook refused because its cache had not yet seen the claim is
/// created again on the same claim (another claim would move the record on again). A third
/// of [`CLAIM_SECONDS`], leaving the rest for the creation itself.
pub const CLAIM_REUSE_SECONDS: i64 = CLAIM_SECONDS / 3;
// A claim reused at its last moment still leaves the API server's 60 s for the creation.
const _: () = assert!(CLAIM_REUSE_SECONDS + 60 <= CLAIM_SECONDS);

/// Whether the controller may create a pod on the claim `record` carries at `now`, without
/// claiming it again.
pub fn claim_is_fresh(record: &StaticIP, now: i64) -> bool {
    claimed_at(record).is_some_and(|claimed| (now - claimed).abs() < CLAIM_REUSE_SECONDS)
}

/// The value of the claim annotation for `now` (seconds since the epoch): RFC 3339.
pub fn claim_value(now: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(now)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
        .to_string()
}

/// Claims `record` for a pod about to be created at `now`: the controller writes this, with
/// the record's resourceVersion, before it creates the pod, and stamps the pod with the
/// record as written. A release judged on the record before the claim then fails on the
/// resourceVersion, and one judged after it sees the claim and waits ([`CLAIM_SECONDS`])
/// until the pod exists; a claim written after the release deleted the record fails (not
/// found, or a Conflict on the deletionTimestamp's write) and no pod is created.
pub fn claim(record: &mut StaticIP, now: i64) {
    record
        .annotations_mut()
        .insert(keys::STATIC_IP_RECORD_CLAIMED_AT.into(), claim_value(now));
}

/// When the record was last claimed for a pod, in seconds since the epoch. A value that does
/// not parse (only a user's edit writes one) is no claim.
pub fn claimed_at(record: &StaticIP) -> Option<i64> {
    record
        .annotations()
        .get(keys::STATIC_IP_RECORD_CLAIMED_AT)?
        .parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .map(|t| t.as_second())
}

/// Marks `pod` as the static-IP pod of `record`: the label the webhook is scoped to and the
/// record's UID and resourceVersion, which the webhook checks against its cache.
pub fn stamp(pod: &mut Pod, record: &StaticIP) {
    pod.labels_mut()
        .insert(keys::STATIC_IP_POD_LABEL.into(), "true".into());
    let annotations = pod.annotations_mut();
    annotations.insert(
        keys::STATIC_IP_RECORD_UID.into(),
        record.uid().unwrap_or_default(),
    );
    annotations.insert(
        keys::STATIC_IP_RECORD_VERSION.into(),
        record.resource_version().unwrap_or_default(),
    );
}

/// Makes an IP-range-mode pod request one `jke.jdcloud.com/static-ip` (on its first
/// container, requests and limits alike, as extended resources must be): the managed
/// resource that sends the pod to the extender's bind verb, where it gets its addresses from
/// the chosen node's blocks. The scheduler ignores the resource itself (ignoredByScheduler).
pub fn request_static_ip(pod: &mut Pod) {
    let Some(container) = pod.spec.as_mut().and_then(|s| s.containers.first_mut()) else {
        return;
    };
    let one = Quantity("1".into());
    let resources = container.resources.get_or_insert_with(Default::default);
    for list in [&mut resources.requests, &mut resources.limits] {
        list.get_or_insert_with(Default::default)
            .insert(keys::STATIC_IP_RESOURCE.into(), one.clone());
    }
}

/// The addresses a pod runs with (status.podIPs, else status.podIP).
pub fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = pod.status.as_ref() else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty()
        && let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok())
    {
        ips.push(ip);
    }
    // At most one per family, the first of each (the primary).
    let mut seen_v4 = false;
    let mut seen_v6 = false;
    ips.retain(|ip| {
        let seen = if ip.is_ipv4() {
            &mut seen_v4
        } else {
            &mut seen_v6
        };
        !std::mem::replace(seen, true)
    });
    ips
}

/// The record's addresses, parsed.
pub fn record_ips(record: &StaticIP) -> Vec<IpAddr> {
    record
        .spec
        .ips
        .iter()
        .filter_map(|a| a.ip.parse().ok())
        .collect()
}

fn same_addresses(a: &[IpAddr], b: &[IpAddr]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort();
    b.sort();
    a == b
}

/// Whether `record` is being deleted: it never pins, allocates, learns or binds again.
pub fn going(record: &StaticIP) -> bool {
    record.metadata.deletion_timestamp.is_some()
}

/// Whether `record` is Bound to the pod with `pod_uid`.
pub fn bound_to(record: &StaticIP, pod_uid: &str) -> bool {
    record
        .status
        .as_ref()
        .is_some_and(|s| s.phase == StaticIPPhase::Bound && s.pod_uid.as_deref() == Some(pod_uid))
}

/// Whether the controller must keep `pod` for now: it is a static-IP pod running with an
/// address its record is about to learn or bind. Taking it down before the record is Bound
/// to it could lose the address. A pod that runs with other addresses than its record's
/// (IP range mode before the extender's bind, a CNI that ignored the pin) or with one that
/// another record keeps has no static address to lose.
///
/// Nor does a pod whose record is gone, going (deletionTimestamp) or another than the one
/// stamped on it: no record will ever learn or bind its address, so holding it would only
/// keep it forever (no update, no scale-in). Holding a pod never stops an address from being
/// held twice — only a record holds an address — so letting it go is safe; at worst (a
/// record cache that lags the pod cache) a record-mode identity's first address is lost and
/// its next pod gets another one.
pub fn holds_pod(pod: &Pod, record: Option<&StaticIP>) -> bool {
    let static_ip = pod
        .labels()
        .get(keys::STATIC_IP_POD_LABEL)
        .map(String::as_str)
        == Some("true");
    let ips = pod_ips(pod);
    if !static_ip || ips.is_empty() {
        return false;
    }
    let uid = pod.uid().unwrap_or_default();
    let Some(record) = record.filter(|r| !going(r)) else {
        return false;
    };
    let stamped = pod.annotations().get(keys::STATIC_IP_RECORD_UID);
    if stamped.is_some_and(|s| record.uid().as_deref() != Some(s.as_str())) {
        return false;
    }
    // A Migrating record holds the address its pod runs with as firmly as a Bound one.
    let holds_address_of_pod = record.status.as_ref().is_some_and(|s| {
        matches!(s.phase, StaticIPPhase::Bound | StaticIPPhase::Migrating)
            && s.pod_uid.as_deref() == Some(uid.as_str())
    });
    if holds_address_of_pod || reported(record, "AddressTaken", &uid) {
        return false;
    }
    let held = record_ips(record);
    if held.is_empty() {
        // Record mode learns the pod's address; range mode never does.
        record.spec.pool.is_none()
    } else {
        same_addresses(&held, &ips)
    }
}

/// What the manager knows about the pod of a record's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    pub uid: String,
    /// The record UID the controller stamped on the pod.
    pub stamped_record: Option<String>,
    pub ips: Vec<IpAddr>,
    pub node: Option<String>,
    /// The node the webhook pinned the pod to (see [`crate::pin::pinned_node`]).
    pub pinned_to: Option<String>,
    pub terminating: bool,
}

impl PodFacts {
    pub fn of(pod: &Pod) -> Self {
        Self {
            uid: pod.uid().unwrap_or_default(),
            stamped_record: pod.annotations().get(keys::STATIC_IP_RECORD_UID).cloned(),
            ips: pod_ips(pod),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            pinned_to: crate::pin::pinned_node(pod).map(str::to_string),
            terminating: pod.metadata.deletion_timestamp.is_some(),
        }
    }

    /// Whether the pod waits to be scheduled to a node that is gone: it can never run, so
    /// deleting it loses nothing (its controller re-creates it with a pin that can hold).
    pub fn stranded(&self, node_gone: &dyn Fn(&str) -> bool) -> bool {
        self.node.is_none() && !self.terminating && self.pinned_to.as_deref().is_some_and(node_gone)
    }
}

/// What the manager's caches say around a record: the facts [`decide`] weighs besides the
/// record, its pod and its set.
pub struct Surroundings<'a> {
    /// Which other record (`namespace/name`) holds an address, if one does.
    pub held_by: &'a dyn Fn(&IpAddr) -> Option<String>,
    /// Whether the Node object of this name is gone (absent from a cache that has listed).
    /// A decision taken on it is confirmed with the API server before it is carried out.
    pub node_gone: &'a dyn Fn(&str) -> bool,
    /// IP range mode: what the record's pool does with the records of a deleted node.
    pub on_node_deletion: NodeDeletionPolicy,
}

/// Where the record's identity stands in its set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// The owning set wants the identity.
    InSet,
    /// The owning set exists but the identity is outside its ordinals (scaled in).
    ScaledIn,
    /// No owner: the set went and the policy kept the record.
    Orphaned,
    /// The owner is not in the cache (yet): decide nothing.
    Unknown,
}

/// What the manager does with a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Record mode, first address: write the pod's addresses and node to the record and bind.
    Learn {
        pod_uid: String,
        ips: Vec<IpAddr>,
        node: String,
    },
    /// The pod runs with the record's addresses: bind to it (and follow its node).
    Bind { pod_uid: String, node: String },
    /// IP range mode, no address yet, the pod's node is known: allocate on that node.
    Allocate { node: String },
    /// The pod runs with other addresses than the record's: say so, do not bind.
    Mismatch {
        pod_uid: String,
        pod_ips: Vec<IpAddr>,
    },
    /// Record mode: the CNI gave the pod an address another record keeps (its pod is gone,
    /// the CNI reused the address). Never learnt: one address, one record.
    AddressTaken {
        pod_uid: String,
        ip: IpAddr,
        holder: String,
    },
    /// The identity's pod has gone: record when it was last seen.
    PodGone,
    /// The release policy frees the record's addresses now (after a live re-check that no
    /// pod of the identity is back).
    Release { why: &'static str },
    /// The record's node is gone (its Node object was deleted) and the record keeps its
    /// addresses, which do not depend on the node (record mode): forget the node, so the
    /// identity's next pod is scheduled afresh with the same addresses. A pod of the
    /// identity that waits for the gone node (`stranded_pod`) is deleted to be re-created.
    Unpin {
        node: String,
        stranded_pod: Option<String>,
    },
    /// IP range mode, the record's node is gone and its pool's policy is Reallocate: delete
    /// the record (its finalizer frees the addresses once no pod of the identity is left);
    /// the set controller creates a new one, whose pod gets an address on its new node.
    Reallocate { node: String },
    /// Nothing to do; look again after this many seconds if given.
    Wait { after: Option<i64> },
}

fn condition_true(record: &StaticIP, type_: &str) -> Option<bool> {
    record
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status == "True")
}

/// Whether the record's Bound condition already says `reason` about the pod `pod_uid`
/// (`status.refusedPodUID`; the message is for people and decides nothing).
fn reported(record: &StaticIP, reason: &str, pod_uid: &str) -> bool {
    record.status.as_ref().is_some_and(|s| {
        s.refused_pod_uid.as_deref() == Some(pod_uid)
            && s.conditions
                .iter()
                .any(|c| c.type_ == CONDITION_BOUND && c.status == "False" && c.reason == reason)
    })
}

/// The decision for `record`, whose identity's pod (if any, by name) is `pod`, among
/// `around`. `now` and the record's timestamps are seconds since the epoch.
pub fn decide(
    record: &StaticIP,
    pod: Option<&PodFacts>,
    identity: Identity,
    around: &Surroundings<'_>,
    now: i64,
) -> Decision {
    if going(record) {
        return Decision::Wait { after: None };
    }
    let uid = record.uid().unwrap_or_default();
    let held = record_ips(record);
    let range_mode = record.spec.pool.is_some();
    if let Some(node) = record
        .spec
        .node
        .as_deref()
        .filter(|n| (around.node_gone)(n))
    {
        return node_gone(node, range_mode, pod, around);
    }
    match pod {
        Some(pod) if pod.stamped_record.as_deref() == Some(uid.as_str()) && !pod.terminating => {
            let Some(node) = pod.node.clone() else {
                return Decision::Wait { after: None };
            };
            // A pod left on a deleted node is pod garbage collection's to delete; it is
            // followed nowhere and gets nothing allocated there.
            if (around.node_gone)(&node) {
                return Decision::Wait { after: None };
            }
            if held.is_empty() {
                if range_mode {
                    return Decision::Allocate { node };
                }
                if pod.ips.is_empty() {
                    return Decision::Wait { after: None };
                }
                if let Some((ip, holder)) = pod
                    .ips
                    .iter()
                    .find_map(|ip| Some((*ip, (around.held_by)(ip)?)))
                {
                    return if reported(record, "AddressTaken", &pod.uid) {
                        // The holder may be on its way out: look again.
                        Decision::Wait {
                            after: Some(ADDRESS_TAKEN_RECHECK),
                        }
                    } else {
                        Decision::AddressTaken {
                            pod_uid: pod.uid.clone(),
                            ip,
                            holder,
                        }
                    };
                }
                return Decision::Learn {
                    pod_uid: pod.uid.clone(),
                    ips: pod.ips.clone(),
                    node,
                };
            }
            if pod.ips.is_empty() {
                return Decision::Wait { after: None };
            }
            // Node migration moved the record ahead of its pod: the pod still on the old node
            // is about to be evicted, not followed.
            let migrating = record
                .status
                .as_ref()
                .is_some_and(|s| s.phase == StaticIPPhase::Migrating);
            if migrating && record.spec.node.as_deref() != Some(node.as_str()) {
                return Decision::Wait { after: None };
            }
            if same_addresses(&held, &pod.ips) {
                let settled = bound_to(record, &pod.uid)
                    && record.spec.node.as_deref() == Some(node.as_str())
                    && condition_true(record, CONDITION_POD_PRESENT) == Some(true);
                return if settled {
                    Decision::Wait { after: None }
                } else {
                    Decision::Bind {
                        pod_uid: pod.uid.clone(),
                        node,
                    }
                };
            }
            if reported(record, "IPMismatch", &pod.uid) {
                Decision::Wait { after: None }
            } else {
                Decision::Mismatch {
                    pod_uid: pod.uid.clone(),
                    pod_ips: pod.ips.clone(),
                }
            }
        }
        // A pod of the identity that is going, or one that is not this record's: it still
        // holds the name (and maybe the address), so nothing is released under it.
        Some(_) => Decision::Wait { after: None },
        None => {
            if condition_true(record, CONDITION_POD_PRESENT) == Some(true) {
                return Decision::PodGone;
            }
            release(record, identity, now)
        }
    }
}

/// The decision for a record whose node is gone. Nothing runs there any more (Kubernetes'
/// pod garbage collection deletes the pods of a deleted Node), so the identity is placed
/// afresh — unless its pool keeps its addresses for a migration.
fn node_gone(
    node: &str,
    range_mode: bool,
    pod: Option<&PodFacts>,
    around: &Surroundings<'_>,
) -> Decision {
    if !range_mode {
        return Decision::Unpin {
            node: node.to_string(),
            stranded_pod: pod
                .filter(|p| p.stranded(around.node_gone))
                .map(|p| p.uid.clone()),
        };
    }
    match around.on_node_deletion {
        NodeDeletionPolicy::Reallocate => Decision::Reallocate {
            node: node.to_string(),
        },
        // The block moves whole with a NodeMigration, which re-pins the record.
        NodeDeletionPolicy::Migrate => Decision::Wait { after: None },
    }
}

/// Whether the release policy frees an identity that has no pod.
fn release(record: &StaticIP, identity: Identity, now: i64) -> Decision {
    use ReleasePolicy::*;
    let keep = Decision::Wait { after: None };
    let ttl = |why| {
        let last_seen = record
            .status
            .as_ref()
            .and_then(|s| s.last_seen.as_ref())
            .or(record.metadata.creation_timestamp.as_ref())
            .map_or(now, |t| t.0.as_second());
        let due = last_seen + record.spec.release_ttl_seconds.unwrap_or(0);
        if now >= due {
            Decision::Release { why }
        } else {
            Decision::Wait {
                after: Some(due - now),
            }
        }
    };
    let decision = match (identity, record.spec.release_policy) {
        (Identity::InSet | Identity::Unknown, _) => keep,
        (Identity::ScaledIn, WhenScaled) => Decision::Release { why: "scaled in" },
        (Identity::ScaledIn, Ttl) => ttl("scaled in, TTL expired"),
        (Identity::ScaledIn, WhenDeleted | Never) => keep,
        (Identity::Orphaned, WhenScaled | WhenDeleted) => Decision::Release {
            why: "workload deleted",
        },
        (Identity::Orphaned, Ttl) => ttl("workload deleted, TTL expired"),
        (Identity::Orphaned, Never) => keep,
    };
    // The controller claimed the record for a pod it is creating: the pod may not exist
    // yet, so the release's look-up would not find it. Wait until it would.
    match (decision, claimed_at(record)) {
        (Decision::Release { .. }, Some(claimed)) if now < claimed + CLAIM_SECONDS => {
            Decision::Wait {
                after: Some(claimed + CLAIM_SECONDS - now),
            }
        }
        (decision, _) => decision,
    }
}

/// Whether the set's deletion keeps a record with this policy (it is orphaned, not deleted).
pub fn outlives_set(policy: ReleasePolicy) -> bool {
    matches!(policy, ReleasePolicy::Ttl | ReleasePolicy::Never)
}

#[cfg(test)]
pub(crate) mod tests;
