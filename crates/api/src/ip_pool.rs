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

/// Shortest IPv4 block prefix length a pool may have: the longest allocation map of a block
/// must fit in one IPBlock object. etcd refuses a write larger than its `--max-request-bytes`
/// (1.5 MiB = 1,572,864 bytes, the default); CRs are stored as JSON. One allocation costs, in
/// the worst case (a 253-character record name, a 63-character namespace, a 36-character
/// UID, the address `255.255.255.255`):
///
/// - in `spec.allocations`: `"255.255.255.255":{"name":"…","namespace":"…","uid":"…"},`
///   = 18 + 9 + 253 + 15 + 63 + 9 + 36 + 2 + 1 = 406 bytes;
/// - in `metadata.managedFields` (every update records the fields its manager set):
///   `"f:255.255.255.255":{".":{},"f:name":{},"f:namespace":{},"f:uid":{}},` = 69 bytes.
///
/// 475 bytes an allocation, with [`OBJECT_OVERHEAD_BYTES`] kept for the rest of the object:
/// (1,572,864 − 65,536) / 475 = 3,173 allocations at most, so a block may hold 2^11 = 2,048
/// addresses: prefix 32 − 11 = 21. (A /20, 4,096 addresses, would reach 1.9 MiB; a /16 passes
/// 1.5 MiB near 15,000 allocations even with short names.) `tests::a_full_block_fits_in_one_object`
/// checks the sum and serializes a full block of each family.
pub const MIN_IPV4_BLOCK_PREFIX: u8 = 21;
/// Longest IPv4 block prefix length: a block holds at least 4 addresses (its first and last
/// are never handed out).
pub const MAX_IPV4_BLOCK_PREFIX: u8 = 30;
/// Shortest IPv6 block prefix length, by the arithmetic of [`MIN_IPV4_BLOCK_PREFIX`] with the
/// longest IPv6 address (39 characters, 24 more than IPv4's, twice: 523 bytes an
/// allocation): (1,572,864 − 65,536) / 523 = 2,882 allocations, so 2^11 addresses: prefix
/// 128 − 11 = 117. (The allocator itself handles blocks of up to 2^20 addresses, a /108; the
/// object size is the tighter bound.)
pub const MIN_IPV6_BLOCK_PREFIX: u8 = 117;
/// Longest IPv6 block prefix length: at least 4 addresses.
pub const MAX_IPV6_BLOCK_PREFIX: u8 = 126;
/// etcd's default limit on one write (`--max-request-bytes`), which bounds one object.
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;
/// Room kept in an IPBlock for everything but its allocations: metadata, the rest of the
/// spec, status, the managedFields entries' own headers.
pub const OBJECT_OVERHEAD_BYTES: usize = 64 * 1024;

/// Spec of a StaticIPPool.
///
/// A live pool never changes in a way that could hand one address to two records: CIDRs
/// can be appended, but an existing entry is never removed or changed, and the block prefix
/// lengths never change.
///
/// Deleting a pool whose addresses records still hold leaves it Terminating (finalizer
/// `jke.jdcloud.com/pool-protection`, added by the StaticIP manager) until the last of them
/// is released, as a PersistentVolumeClaim in use waits for its pods; no address is handed
/// out of it meanwhile. Then its IPBlocks are deleted and the pool goes.
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
    /// pod one address of each (dual-stack), or none. Must not overlap each other or another
    /// StaticIPPool's CIDRs (the ests admission webhook, which sees every pool, refuses such
    /// a pool), nor the cluster's other pod ranges. New CIDRs can be added to a live pool; an
    /// existing entry can never be removed or changed (records may hold its addresses), only
    /// the whole pool deleted.
    #[schemars(length(min = 1, max = 16), inner(length(max = 49)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("spec.cidrs entries must be CIDRs such as 10.10.0.0/16"))]
    #[x_kube(validation = Rule::new("oldSelf.all(c, c in self)").message("spec.cidrs: an existing entry cannot be removed or changed (records may hold its addresses); only new CIDRs can be added").reason(Reason::FieldValueForbidden))]
    pub cidrs: Vec<String>,

    /// Prefix length of the IPv4 blocks the CIDRs are split into. Defaults to 26 (64
    /// addresses); 21 (2,048 addresses, so that a full block's allocations fit in one
    /// object) to 30. Immutable.
    #[serde(default = "default_ipv4_block_prefix")]
    #[schemars(range(min = MIN_IPV4_BLOCK_PREFIX, max = MAX_IPV4_BLOCK_PREFIX))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.ipv4BlockPrefixLength is immutable: the pool's blocks have this size").reason(Reason::FieldValueForbidden))]
    pub ipv4_block_prefix_length: u8,

    /// Prefix length of the IPv6 blocks the CIDRs are split into. Defaults to 122 (64
    /// addresses); 117 (2,048 addresses, so that a full block's allocations fit in one
    /// object) to 126. Immutable.
    #[serde(default = "default_ipv6_block_prefix")]
    #[schemars(range(min = MIN_IPV6_BLOCK_PREFIX, max = MAX_IPV6_BLOCK_PREFIX))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.ipv6BlockPrefixLength is immutable: the pool's blocks have this size").reason(Reason::FieldValueForbidden))]
    pub ipv6_block_prefix_length: u8,

    /// Addresses never handed out, such as gateways. Each block's network and broadcast
    /// addresses are never handed out either.
    #[serde(default, rename = "reservedIPs", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 45)))]
    #[x_kube(validation = Rule::new("self.all(a, isIP(a))").message("spec.reservedIPs entries must be IP addresses"))]
    pub reserved_ips: Vec<String>,

    /// What happens to the records of a node whose Node object is deleted (an autoscaler
    /// scaling down, auto-repair, an administrator). Kubernetes takes a deleted Node for a
    /// node that is gone: pod garbage collection deletes its pods. Defaults to Reallocate.
    #[serde(default)]
    pub node_deletion_policy: NodeDeletionPolicy,
}

/// What a deleted node's range-mode identities do.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum NodeDeletionPolicy {
    /// Each identity's record is released (its addresses go back to the node's blocks) and
    /// re-created: its pod is scheduled afresh and gets a new address on its new node's
    /// blocks. The deleted node's blocks go back to the pool once empty.
    #[default]
    Reallocate,
    /// Records keep their addresses and stay pinned to the deleted node until a
    /// NodeMigration (with `spec.confirmFenced`, or automatic mode) moves its blocks and
    /// records, addresses unchanged, to another node.
    Migrate,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest entry of `spec.allocations` and of its managedFields, serialized as the
    /// API server stores them.
    fn worst_case_bytes(blocks_bits: u32, address: &str) -> usize {
        let holder = IPAllocation {
            namespace: "n".repeat(63),
            name: "r".repeat(253),
            uid: "00000000-0000-0000-0000-000000000000".into(),
        };
        let entry = serde_json::to_string(&BTreeMap::from([(address.to_string(), holder)]))
            .expect("serializes");
        // `{` and `}` of the map; a `,` between entries instead.
        let allocation = entry.len() - 2 + 1;
        let managed =
            format!(r#""f:{address}":{{".":{{}},"f:name":{{}},"f:namespace":{{}},"f:uid":{{}}}},"#)
                .len();
        (allocation + managed) << blocks_bits
    }

    #[test]
    fn a_full_block_fits_in_one_object() {
        let budget = MAX_OBJECT_BYTES - OBJECT_OVERHEAD_BYTES;
        let v4 = "255.255.255.255";
        let v6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        assert_eq!(worst_case_bytes(0, v4), 475);
        assert_eq!(worst_case_bytes(0, v6), 523);
        let v4_bits = u32::from(32 - MIN_IPV4_BLOCK_PREFIX);
        let v6_bits = u32::from(128 - MIN_IPV6_BLOCK_PREFIX);
        assert!(worst_case_bytes(v4_bits, v4) <= budget);
        assert!(worst_case_bytes(v6_bits, v6) <= budget);
        // One bit shorter would not fit: the bound is as loose as it can be.
        assert!(worst_case_bytes(v4_bits + 1, v4) > budget);
        assert!(worst_case_bytes(v6_bits + 1, v6) > budget);

        // A full block of each family, every address taken by a worst-case record, as
        // stored: its JSON, plus one managedFields entry per address.
        for (cidr, bits, address_of) in [
            (
                "10.255.248.0/21",
                v4_bits,
                Box::new(|i: u32| std::net::Ipv4Addr::from(0x0aff_f800 + i).to_string())
                    as Box<dyn Fn(u32) -> String>,
            ),
            (
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:f800/117",
                v6_bits,
                Box::new(|i: u32| {
                    std::net::Ipv6Addr::from(u128::MAX - 0x7ff + u128::from(i)).to_string()
                }),
            ),
        ] {
            let allocations: BTreeMap<String, IPAllocation> = (1..(1u32 << bits) - 1)
                .map(|i| {
                    (
                        address_of(i),
                        IPAllocation {
                            namespace: "n".repeat(63),
                            name: format!("{:r<253}", i),
                            uid: "00000000-0000-0000-0000-000000000000".into(),
                        },
                    )
                })
                .collect();
            let managed: usize = allocations
                .keys()
                .map(|a| {
                    format!(
                        r#""f:{a}":{{".":{{}},"f:name":{{}},"f:namespace":{{}},"f:uid":{{}}}},"#
                    )
                    .len()
                })
                .sum();
            let block = IPBlock::new(
                &"b".repeat(253),
                IPBlockSpec {
                    pool: "p".repeat(253),
                    cidr: cidr.into(),
                    node: Some("n".repeat(253)),
                    allocations,
                },
            );
            let stored = serde_json::to_vec(&block).expect("serializes").len() + managed;
            assert!(stored <= budget, "{cidr}: {stored} bytes");
        }
    }

    #[test]
    fn the_crd_bounds_are_the_constants() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(StaticIPPool::crd()).expect("serializes");
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        for (field, min, max) in [
            (
                "ipv4BlockPrefixLength",
                MIN_IPV4_BLOCK_PREFIX,
                MAX_IPV4_BLOCK_PREFIX,
            ),
            (
                "ipv6BlockPrefixLength",
                MIN_IPV6_BLOCK_PREFIX,
                MAX_IPV6_BLOCK_PREFIX,
            ),
        ] {
            assert_eq!(
                spec[field]["minimum"].as_f64(),
                Some(f64::from(min)),
                "{field}"
            );
            assert_eq!(
                spec[field]["maximum"].as_f64(),
                Some(f64::from(max)),
                "{field}"
            );
        }
    }
}
