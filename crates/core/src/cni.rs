//! The CNI's address decision: which addresses a pod's sandbox gets on ADD, what DEL and GC
//! free, and what CHECK expects — as pure functions of what the node agent (`ests node`)
//! knows from its caches and its own attachment table.
//!
//! The rules (issue 20):
//!
//! - A pod whose record (the StaticIP named like the pod) is Bound — or Migrating, with its
//!   node already this one — gets the record's addresses, after checking that the record is
//!   the one stamped on the pod and belongs to the pod's workload, that it is pinned to this
//!   node, and, in IP range mode, that every address lies in a block this node owns (an
//!   address on another node's block would be blackholed).
//! - A first-time IP-range-mode pod gets the addresses the extender's bind wrote on it (its
//!   `staticip.jke.jdcloud.com/ip` annotation); without them it waits (the bind comes first).
//! - Any other pod (a record-mode identity's first start, ordinary pods) gets, per family of
//!   the node's pod range, the lowest address that no record keeps and no attachment holds:
//!   a kept record-mode address is never handed to another pod.
//! - Both families or neither: a decision hands out all of a pod's addresses or none.
//!
//! Attachments are keyed by container ID and interface name, as the CNI keys them. ADD
//! for a key that already has an attachment answers with what it holds (ADD is
//! idempotent); DEL forgets only that attachment, never frees an address a record keeps,
//! and succeeds when there is nothing to forget; GC forgets the attachments the runtime no
//! longer lists.
//!
//! Nothing is written here: the agent carries the decision out (records its attachment
//! table, answers the plugin) and serialises decisions per node, so two ADDs never race for
//! one address.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ests_api::{StaticIP, StaticIPPhase, keys};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::pin::{pinned_node, static_ip_pod};
use crate::static_ip::{going, record_ips};

/// What the CNI keys an attachment by.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct AttachmentKey {
    pub container_id: String,
    pub ifname: String,
}

/// Which pod a sandbox belongs to, as the runtime says (`K8S_POD_*` in `CNI_ARGS`).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// An address handed out, with the network it is configured in (its prefix length, and
/// where the plugin's result takes a gateway from).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Address {
    pub ip: IpAddr,
    /// The node's pod range, or the IP range mode block, the address lies in.
    pub network: IpNet,
}

/// What the agent holds for one sandbox interface.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub pod: PodRef,
    pub addresses: Vec<Address>,
}

/// What the agent knows about the pod a sandbox is for (from its pod cache).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Labelled a static-IP pod (`staticip.jke.jdcloud.com/enabled=true`), which only the
    /// ests controller may create.
    pub static_ip: bool,
    /// The record UID the controller stamped on the pod.
    pub stamped_record: Option<String>,
    /// UID of the pod's controlling owner (its workload).
    pub owner_uid: Option<String>,
    /// The addresses the pod is annotated with (`staticip.jke.jdcloud.com/ip`): the
    /// webhook's pin from the record, or the extender's bind.
    pub annotated_ips: Vec<IpAddr>,
    /// The node the pod was pinned to by the webhook or the bind, if any.
    pub pinned_node: Option<String>,
}

impl CniPod {
    /// The facts of `pod` the decision weighs.
    pub fn of(pod: &Pod) -> Self {
        Self {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
            static_ip: static_ip_pod(pod),
            stamped_record: pod.annotations().get(keys::STATIC_IP_RECORD_UID).cloned(),
            owner_uid: pod
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.clone()),
            annotated_ips: pod
                .annotations()
                .get(keys::STATIC_IP_POD_IP)
                .map(|v| {
                    v.split(',')
                        .filter_map(|ip| ip.trim().parse().ok())
                        .collect()
                })
                .unwrap_or_default(),
            pinned_node: pinned_node(pod).map(str::to_string),
        }
    }

    fn pod_ref(&self) -> PodRef {
        PodRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
        }
    }
}

/// What the node knows besides the pod: its own name, the record of the pod's identity,
/// its blocks and pod ranges, the kept addresses and its attachments.
pub struct NodeView<'a> {
    pub node: &'a str,
    /// The StaticIP named like the pod, in its namespace, if the cache holds one.
    pub record: Option<&'a StaticIP>,
    /// CIDRs of the IPBlocks whose `spec.node` is this node (see [`owned_blocks`]).
    pub owned_blocks: &'a [IpNet],
    /// The node's pod CIDRs (`spec.podCIDRs`), at most one per family is used.
    pub pod_ranges: &'a [IpNet],
    /// Which record (`namespace/name`) keeps an address, if one does.
    pub kept_by: &'a dyn Fn(&IpAddr) -> Option<String>,
    /// The agent's attachments.
    pub attachments: &'a BTreeMap<AttachmentKey, Attachment>,
}

/// The CIDRs of the blocks `node` owns, out of IPBlock objects (a block whose CIDR does
/// not parse is left out: nothing is handed out of it).
pub fn owned_blocks<'a>(
    blocks: impl IntoIterator<Item = &'a ests_api::IPBlock>,
    node: &str,
) -> Vec<IpNet> {
    blocks
        .into_iter()
        .filter(|b| b.spec.node.as_deref() == Some(node))
        .filter_map(|b| b.spec.cidr.parse::<IpNet>().ok())
        .map(|c| c.trunc())
        .collect()
}

/// Where a new attachment's addresses come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The pod's StaticIP record.
    Record,
    /// IP range mode, first start: the extender's bind.
    Bind,
    /// The node's pod range.
    PodRange,
}

/// The answer to an ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Add {
    /// The attachment exists already (a repeated ADD): answer with what it holds.
    Existing(Vec<Address>),
    /// Record a new attachment with these addresses, and answer with them.
    New {
        addresses: Vec<Address>,
        source: Source,
    },
    /// Hand out nothing.
    Refused(Refusal),
}

/// Why an ADD hands out nothing. [`Refusal::retryable`] says whether waiting can help; the
/// plugin reports it with the CNI's "try again later" code then.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("container {container_id} interface {ifname} is attached for pod {holder}, not {pod}")]
    AttachedToAnotherPod {
        container_id: String,
        ifname: String,
        holder: String,
        pod: String,
    },
    #[error("static-IP pod {pod}: its StaticIP is not in the node agent's cache yet")]
    RecordNotSeen { pod: String },
    #[error("static-IP pod {pod} was stamped with StaticIP {stamped}, but the record is {found}")]
    StaleRecord {
        pod: String,
        stamped: String,
        found: String,
    },
    #[error("pod {pod} is not owned by the workload of its StaticIP ({workload})")]
    NotTheWorkload { pod: String, workload: String },
    #[error("the StaticIP of pod {pod} is being released")]
    RecordGoing { pod: String },
    #[error("the StaticIP of pod {pod} keeps its addresses on node {record_node}, not on {node}")]
    OtherNode {
        pod: String,
        record_node: String,
        node: String,
    },
    #[error(
        "{ip} of pod {pod} is not in an IP block owned by node {node} (it would be unreachable here)"
    )]
    OutsideOwnedBlocks {
        pod: String,
        ip: IpAddr,
        node: String,
    },
    #[error("IP range mode pod {pod} has no address from the scheduler extender's bind yet")]
    AwaitingBind { pod: String },
    #[error("pod {pod} is annotated with {annotated:?}, but its StaticIP holds {record:?}")]
    AnnotationMismatch {
        pod: String,
        annotated: Vec<IpAddr>,
        record: Vec<IpAddr>,
    },
    #[error(
        "{ip} of pod {pod} is still attached to container {container_id} ({holder}); waiting for its DEL"
    )]
    StillAttached {
        pod: String,
        ip: IpAddr,
        container_id: String,
        holder: String,
    },
    #[error("{ip} for pod {pod} is kept by StaticIP {holder}")]
    KeptByAnother {
        pod: String,
        ip: IpAddr,
        holder: String,
    },
    #[error("node {node} has no pod range to give pod {pod} an address from")]
    NoPodRange { pod: String, node: String },
    #[error("pod range {range} of node {node} has no free address for pod {pod}")]
    Exhausted {
        pod: String,
        range: IpNet,
        node: String,
    },
}

impl Refusal {
    /// Whether the same ADD may succeed later without anyone changing the pod: caches
    /// catching up, a bind or a DEL still to come, addresses being freed. A record or block
    /// on another node counts: a node migration moves both here just before it re-creates
    /// the pods, and the agent's watches may be a moment behind the webhook's pin — refused
    /// outright, the pod would wait out the kubelet's back-off (10 s) instead.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::RecordNotSeen { .. }
                | Self::StaleRecord { .. }
                | Self::RecordGoing { .. }
                | Self::OtherNode { .. }
                | Self::OutsideOwnedBlocks { .. }
                | Self::AwaitingBind { .. }
                | Self::StillAttached { .. }
                | Self::Exhausted { .. }
        )
    }
}

fn pod_name(pod: &CniPod) -> String {
    format!("{}/{}", pod.namespace, pod.name)
}

/// The decision for ADD of `key` for `pod` on `view`'s node.
pub fn add(key: &AttachmentKey, pod: &CniPod, view: &NodeView<'_>) -> Add {
    let name = pod_name(pod);
    if let Some(existing) = view.attachments.get(key) {
        if existing.pod.uid == pod.uid
            && existing.pod.namespace == pod.namespace
            && existing.pod.name == pod.name
        {
            return Add::Existing(existing.addresses.clone());
        }
        return Add::Refused(Refusal::AttachedToAnotherPod {
            container_id: key.container_id.clone(),
            ifname: key.ifname.clone(),
            holder: format!("{}/{}", existing.pod.namespace, existing.pod.name),
            pod: name,
        });
    }
    match static_address(pod, view) {
        Ok(Some((ips, source))) => match place(&ips, pod, key, view) {
            Ok(addresses) => Add::New { addresses, source },
            Err(refusal) => Add::Refused(refusal),
        },
        Ok(None) => match from_pod_range(pod, view) {
            Ok(addresses) => Add::New {
                addresses,
                source: Source::PodRange,
            },
            Err(refusal) => Add::Refused(refusal),
        },
        Err(refusal) => Add::Refused(refusal),
    }
}

/// The addresses a static-IP pod must run with (and where they come from); None when the
/// pod takes any address of the pod range (an ordinary pod, or a record-mode identity's
/// first start).
fn static_address(
    pod: &CniPod,
    view: &NodeView<'_>,
) -> Result<Option<(Vec<IpAddr>, Source)>, Refusal> {
    let name = pod_name(pod);
    // Only the ests controller creates static-IP pods (the webhook refuses anyone else), so
    // an unlabelled pod named like a record never gets the record's address: it is an
    // ordinary pod, and the record's addresses are kept from it.
    if !pod.static_ip {
        return Ok(None);
    }
    let Some(record) = view.record else {
        return Err(Refusal::RecordNotSeen { pod: name });
    };
    let record_uid = record.uid().unwrap_or_default();
    if pod.stamped_record.as_deref() != Some(record_uid.as_str()) {
        return Err(Refusal::StaleRecord {
            pod: name,
            stamped: pod.stamped_record.clone().unwrap_or_default(),
            found: record_uid,
        });
    }
    if pod.owner_uid.as_deref() != Some(record.spec.workload.uid.as_str()) {
        return Err(Refusal::NotTheWorkload {
            pod: name,
            workload: format!(
                "{} {} ({})",
                record.spec.workload.kind, record.spec.workload.name, record.spec.workload.uid
            ),
        });
    }
    let phase = record.status.as_ref().map(|s| s.phase).unwrap_or_default();
    if going(record) || phase == StaticIPPhase::Released {
        return Err(Refusal::RecordGoing { pod: name });
    }
    let held = record_ips(record);
    let range_mode = record.spec.pool.is_some();
    if !held.is_empty() {
        // Bound, Migrating (moved here with its block), or learnt/allocated and not yet
        // bound: the record keeps these addresses for this identity only.
        if let Some(record_node) = record.spec.node.as_deref()
            && record_node != view.node
        {
            return Err(Refusal::OtherNode {
                pod: name,
                record_node: record_node.to_string(),
                node: view.node.to_string(),
            });
        }
        if !pod.annotated_ips.is_empty() && !same_set(&pod.annotated_ips, &held) {
            return Err(Refusal::AnnotationMismatch {
                pod: name,
                annotated: pod.annotated_ips.clone(),
                record: held,
            });
        }
        return Ok(Some((held, Source::Record)));
    }
    if range_mode {
        // The bind writes the pod's annotation before binding it: a pod without it has not
        // been through the bind yet (the scheduler retries), or its record write is not in
        // the cache yet.
        if pod.annotated_ips.is_empty() {
            return Err(Refusal::AwaitingBind { pod: name });
        }
        return Ok(Some((pod.annotated_ips.clone(), Source::Bind)));
    }
    Ok(None)
}

fn same_set(a: &[IpAddr], b: &[IpAddr]) -> bool {
    a.iter().collect::<BTreeSet<_>>() == b.iter().collect::<BTreeSet<_>>()
}

/// Checks a static pod's addresses against the node: each lies in a block this node owns
/// (range mode) or, in record mode, is placed in the pod range holding it; none is held by
/// another attachment. All of them, or a refusal.
fn place(
    ips: &[IpAddr],
    pod: &CniPod,
    key: &AttachmentKey,
    view: &NodeView<'_>,
) -> Result<Vec<Address>, Refusal> {
    let name = pod_name(pod);
    let range_mode = view.record.is_some_and(|r| r.spec.pool.is_some());
    let mut addresses = Vec::with_capacity(ips.len());
    for ip in ips {
        let network = if range_mode {
            view.owned_blocks.iter().find(|b| b.contains(ip)).copied()
        } else {
            // A record-mode address came from this node's pod range when it was learnt;
            // should the node's range have changed, it is still configured as a host route.
            Some(
                view.pod_ranges
                    .iter()
                    .find(|r| r.contains(ip))
                    .copied()
                    .unwrap_or_else(|| IpNet::from(*ip)),
            )
        };
        let Some(network) = network else {
            return Err(Refusal::OutsideOwnedBlocks {
                pod: name,
                ip: *ip,
                node: view.node.to_string(),
            });
        };
        if let Some((other, holder)) = attached(ip, view.attachments).filter(|(k, _)| *k != key) {
            return Err(Refusal::StillAttached {
                pod: name,
                ip: *ip,
                container_id: other.container_id.clone(),
                holder: format!("{}/{}", holder.pod.namespace, holder.pod.name),
            });
        }
        addresses.push(Address { ip: *ip, network });
    }
    Ok(addresses)
}

fn attached<'a>(
    ip: &IpAddr,
    attachments: &'a BTreeMap<AttachmentKey, Attachment>,
) -> Option<(&'a AttachmentKey, &'a Attachment)> {
    attachments
        .iter()
        .find(|(_, a)| a.addresses.iter().any(|addr| addr.ip == *ip))
}

/// One address of each family of the node's pod ranges (the first range of a family that
/// has one free): the lowest that no record keeps and no attachment holds. The range's
/// first address (network; the gateway the main plugin puts on the bridge is its second)
/// and, for IPv4, its last are never handed out.
fn from_pod_range(pod: &CniPod, view: &NodeView<'_>) -> Result<Vec<Address>, Refusal> {
    let name = pod_name(pod);
    if view.pod_ranges.is_empty() {
        return Err(Refusal::NoPodRange {
            pod: name,
            node: view.node.to_string(),
        });
    }
    let held: BTreeSet<IpAddr> = view
        .attachments
        .values()
        .flat_map(|a| a.addresses.iter().map(|addr| addr.ip))
        .collect();
    let mut addresses = Vec::new();
    for v4 in [true, false] {
        let ranges: Vec<IpNet> = view
            .pod_ranges
            .iter()
            .filter(|r| r.addr().is_ipv4() == v4)
            .map(IpNet::trunc)
            .collect();
        let Some(first) = ranges.first().copied() else {
            continue;
        };
        let found = ranges.iter().find_map(|range| {
            candidates(*range)
                .find(|ip| {
                    !held.contains(ip)
                        && (view.kept_by)(ip).is_none()
                        && !view.owned_blocks.iter().any(|b| b.contains(ip))
                })
                .map(|ip| Address {
                    ip,
                    network: *range,
                })
        });
        match found {
            Some(address) => addresses.push(address),
            // Both families or neither: nothing of the other family is handed out either.
            None => {
                return Err(Refusal::Exhausted {
                    pod: name,
                    range: first,
                    node: view.node.to_string(),
                });
            }
        }
    }
    Ok(addresses)
}

/// The gateway of a pod range: its second address, which the main plugin puts on the
/// bridge (`isGateway`) and [`add`] never hands out. None for a range too small to have one.
pub fn pod_range_gateway(range: IpNet) -> Option<IpAddr> {
    let range = range.trunc();
    if range.max_prefix_len() - range.prefix_len() < 2 {
        return None;
    }
    match range.network() {
        IpAddr::V4(net) => Some(IpAddr::V4(std::net::Ipv4Addr::from(u32::from(net) + 1))),
        IpAddr::V6(net) => Some(IpAddr::V6(std::net::Ipv6Addr::from(u128::from(net) + 1))),
    }
}

/// The gateway an ADD result names for `address`: its pod range's ([`pod_range_gateway`]),
/// or for an address of an IP range mode block, the node's pod-range gateway of the same
/// family. A block has no gateway of its own — every address of it may be a pod's, and
/// blocks move between nodes whole — so the node's gateway (on the bridge, or the host end
/// of a ptp veth, both of which route to it on-link) is every pod's next hop.
pub fn gateway(address: &Address, pod_ranges: &[IpNet]) -> Option<IpAddr> {
    let own = pod_ranges
        .iter()
        .find(|r| r.trunc() == address.network.trunc());
    own.or_else(|| {
        pod_ranges
            .iter()
            .find(|r| r.addr().is_ipv4() == address.ip.is_ipv4())
    })
    .and_then(|r| pod_range_gateway(*r))
}

/// The addresses of `range` that may be handed out, lowest first: not the network address,
/// not the gateway (the second), not IPv4's broadcast. Lazy: an IPv6 range is never
/// enumerated past the first free address.
fn candidates(range: IpNet) -> Box<dyn Iterator<Item = IpAddr>> {
    match range {
        IpNet::V4(net) => {
            let base = u32::from(net.network());
            let size = 1u64 << (32 - u32::from(net.prefix_len()));
            // At least network, gateway, one pod address and broadcast.
            if size < 4 {
                return Box::new(std::iter::empty());
            }
            Box::new(
                (2..size - 1).map(move |i| {
                    IpAddr::V4(std::net::Ipv4Addr::from(base.wrapping_add(i as u32)))
                }),
            )
        }
        IpNet::V6(net) => {
            let base = u128::from(net.network());
            let bits = 128 - u32::from(net.prefix_len());
            if bits < 2 {
                return Box::new(std::iter::empty());
            }
            let last = if bits >= 128 {
                u128::MAX
            } else {
                (1u128 << bits) - 1
            };
            Box::new(
                (2..=last).map(move |i| IpAddr::V6(std::net::Ipv6Addr::from(base.wrapping_add(i)))),
            )
        }
    }
}

/// The answer to a DEL: what to forget, and which of its addresses stay reserved.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Del {
    /// Whether the attachment exists and is to be forgotten. False for a repeated DEL (or
    /// one for a sandbox never attached): it succeeds with nothing to do.
    pub forget: bool,
    /// Its addresses that go back to the pod range: held by nothing once it is forgotten.
    pub freed: Vec<IpAddr>,
    /// Its addresses that a record keeps: never freed by a DEL, whoever sends it (a stale
    /// DEL arriving after the identity's next ADD, a deleted pod).
    pub kept: Vec<IpAddr>,
}

/// The decision for DEL of `key`.
pub fn del(
    key: &AttachmentKey,
    attachments: &BTreeMap<AttachmentKey, Attachment>,
    kept_by: &dyn Fn(&IpAddr) -> Option<String>,
) -> Del {
    let Some(attachment) = attachments.get(key) else {
        return Del::default();
    };
    let (kept, freed): (Vec<IpAddr>, Vec<IpAddr>) = attachment
        .addresses
        .iter()
        .map(|a| a.ip)
        .partition(|ip| kept_by(ip).is_some());
    Del {
        forget: true,
        freed,
        kept,
    }
}

/// The attachments GC forgets: those not in the runtime's list of valid attachments. No
/// list at all (`cnitool gc` sends none) forgets nothing.
pub fn gc(
    valid: Option<&[AttachmentKey]>,
    attachments: &BTreeMap<AttachmentKey, Attachment>,
) -> Vec<AttachmentKey> {
    let Some(valid) = valid else {
        return Vec::new();
    };
    let valid: BTreeSet<&AttachmentKey> = valid.iter().collect();
    attachments
        .keys()
        .filter(|k| !valid.contains(k))
        .cloned()
        .collect()
}

/// Why CHECK fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckFailure {
    #[error("container {container_id} interface {ifname} holds no address reservation")]
    Missing {
        container_id: String,
        ifname: String,
    },
    #[error(
        "container {container_id} interface {ifname} holds {held:?}, but its StaticIP keeps {record:?}"
    )]
    NotTheRecords {
        container_id: String,
        ifname: String,
        held: Vec<IpAddr>,
        record: Vec<IpAddr>,
    },
}

/// The decision for CHECK of `key`: its reservation exists and, if the record of its pod's
/// identity keeps addresses, they are the ones it holds.
pub fn check(
    key: &AttachmentKey,
    attachments: &BTreeMap<AttachmentKey, Attachment>,
    record: Option<&StaticIP>,
) -> Result<(), CheckFailure> {
    let Some(attachment) = attachments.get(key) else {
        return Err(CheckFailure::Missing {
            container_id: key.container_id.clone(),
            ifname: key.ifname.clone(),
        });
    };
    let held: Vec<IpAddr> = attachment.addresses.iter().map(|a| a.ip).collect();
    let bound_to_pod = record.is_some_and(|r| {
        r.status.as_ref().is_some_and(|s| {
            matches!(s.phase, StaticIPPhase::Bound | StaticIPPhase::Migrating)
                && s.pod_uid.as_deref() == Some(attachment.pod.uid.as_str())
        })
    });
    if let Some(record) = record.filter(|_| bound_to_pod) {
        let ips = record_ips(record);
        if !ips.is_empty() && !same_set(&ips, &held) {
            return Err(CheckFailure::NotTheRecords {
                container_id: key.container_id.clone(),
                ifname: key.ifname.clone(),
                held,
                record: ips,
            });
        }
    }
    Ok(())
}

impl Add {
    /// The attachment to record for a new ADD, if any.
    pub fn attachment(&self, pod: &CniPod) -> Option<Attachment> {
        match self {
            Add::New { addresses, .. } => Some(Attachment {
                pod: pod.pod_ref(),
                addresses: addresses.clone(),
            }),
            Add::Existing(_) | Add::Refused(_) => None,
        }
    }
}

#[cfg(test)]
mod tests;
