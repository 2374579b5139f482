//! IP range mode: a cluster-scoped `StaticIPPool` holds CIDRs, split into `IPBlock`s of a
//! configured size. A node owns blocks (`IPBlock.spec.node`), one owner per block, and a block
//! moves to another node whole.
//!
//! Which addresses of a block are taken is recorded on the block object itself, like Calico's
//! IPAMBlock, so that every allocation and release is one compare-and-swap (an update carrying
//! the resourceVersion that was read) on one object. Uniqueness never depends on leader
//! election, which cannot stop a deposed leader from writing.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Spec of a StaticIPPool.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "jke.jdcloud.com",
    version = "v1alpha1",
    kind = "StaticIPPool",
    plural = "staticippools",
    singular = "staticippool",
    shortname = "sippool",
    derive = "PartialEq",
    printcolumn = r#"{"name":"CIDRs","type":"string","jsonPath":".spec.cidrs"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct StaticIPPoolSpec {
    /// CIDRs the pool hands out, IPv4 and/or IPv6. A pool with both families gives every
    /// pod one address of each (dual-stack), or none. Must not overlap the cluster's other
    /// pod ranges.
    #[schemars(length(min = 1, max = 16), inner(length(max = 49)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("spec.cidrs entries must be CIDRs such as 10.10.0.0/16"))]
    pub cidrs: Vec<String>,

    /// Prefix length of the IPv4 blocks the CIDRs are split into. Defaults to 26 (64 addresses).
    #[serde(default = "default_ipv4_block_prefix")]
    #[schemars(range(min = 16, max = 30))]
    pub ipv4_block_prefix_length: u8,

    /// Prefix length of the IPv6 blocks the CIDRs are split into. Defaults to 122 (64 addresses).
    #[serde(default = "default_ipv6_block_prefix")]
    #[schemars(range(min = 104, max = 126))]
    pub ipv6_block_prefix_length: u8,

    /// Addresses never handed out, such as gateways. Each block's network and broadcast
    /// addresses are never handed out either.
    #[serde(default, rename = "reservedIPs", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 45)))]
    #[x_kube(validation = Rule::new("self.all(a, isIP(a))").message("spec.reservedIPs entries must be IP addresses"))]
    pub reserved_ips: Vec<String>,
}

fn default_ipv4_block_prefix() -> u8 {
    26
}

fn default_ipv6_block_prefix() -> u8 {
    122
}

/// Spec of an IPBlock: one block of a pool, its owner node and its allocations.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "jke.jdcloud.com",
    version = "v1alpha1",
    kind = "IPBlock",
    plural = "ipblocks",
    singular = "ipblock",
    shortname = "ipb",
    status = "IPBlockStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Pool","type":"string","jsonPath":".spec.pool"}"#,
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IPBlockSpec {
    /// The pool the block belongs to. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.pool is immutable").reason(Reason::FieldValueForbidden))]
    pub pool: String,

    /// The block's CIDR. Immutable.
    #[schemars(length(max = 49))]
    #[x_kube(validation = Rule::new("isCIDR(self)").message("spec.cidr must be a CIDR"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.cidr is immutable").reason(Reason::FieldValueForbidden))]
    pub cidr: String,

    /// The node that owns the block; absent while the block is free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,

    /// Taken addresses, keyed by address: which StaticIP record holds each one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub allocations: BTreeMap<String, IPAllocation>,
}

/// Who holds an address of a block.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IPAllocation {
    /// Namespace of the StaticIP record.
    pub namespace: String,
    /// Name of the StaticIP record.
    pub name: String,
    /// UID of the StaticIP record, so a record re-created with the same name never inherits
    /// an address by accident.
    pub uid: String,
}

/// Observed state of a block.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IPBlockStatus {
    /// Addresses that can be handed out in total.
    #[serde(default)]
    pub capacity: i64,
    /// Addresses taken.
    #[serde(default)]
    pub allocated: i64,
}
