//! `StaticIP`: one record per static-IP pod identity, named like the pod.
//!
//! The record holds the identity's IP (one per family) and node. Only ests's own service
//! accounts may change them (`config/policy`); users may read records.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Spec of a StaticIP record: whose IP it is, and where that IP lives.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "jke.jdcloud.com",
    version = "v1alpha1",
    kind = "StaticIP",
    plural = "staticips",
    singular = "staticip",
    shortname = "sip",
    namespaced,
    status = "StaticIPStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Workload","type":"string","jsonPath":".spec.workload.name"}"#,
    printcolumn = r#"{"name":"IPs","type":"string","jsonPath":".spec.ips[*].ip"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    validation = Rule::new("!has(oldSelf.ips) || (has(self.ips) && self.ips == oldSelf.ips)")
        .message("spec.ips cannot change once set; delete the record to release its IPs")
        .field_path(".ips")
        .reason(Reason::FieldValueForbidden)
)]
#[serde(rename_all = "camelCase")]
pub struct StaticIPSpec {
    /// The workload that owns the identity.
    pub workload: WorkloadReference,

    /// Name of the pod identity this record belongs to (the record is named the same).
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.podName is immutable").reason(Reason::FieldValueForbidden))]
    pub pod_name: String,

    /// In IP range mode, the StaticIPPool the IPs come from; empty in record mode, where the
    /// CNI picked the pod's first IP and ests keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,

    /// The identity's addresses, at most one per IP family. Empty until first learnt or
    /// allocated. Dual-stack records hold both families or neither.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    #[x_kube(validation = Rule::new("self.size() < 2 || ip(self[0].ip).family() != ip(self[1].ip).family()")
        .message("spec.ips holds at most one address per IP family"))]
    pub ips: Vec<StaticIPAddress>,

    /// The node the identity's pod is pinned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,

    /// When the IP is released. Defaults to WhenScaled.
    #[serde(default)]
    pub release_policy: ReleasePolicy,

    /// With release policy TTL: seconds the identity may be without a pod before release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub release_ttl_seconds: Option<i64>,
}

/// The workload that owns an identity.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadReference {
    /// API version of the workload, e.g. jke.jdcloud.com/v1alpha1.
    pub api_version: String,
    /// Kind of the workload, e.g. EnhancedStatefulSet.
    pub kind: String,
    /// Name of the workload, in the record's namespace.
    pub name: String,
    /// UID of the workload. A set re-created with the same name adopts the record and
    /// records its new UID here.
    pub uid: String,
}

/// One address of an identity.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StaticIPAddress {
    /// The address, IPv4 or IPv6.
    #[schemars(length(max = 45))]
    #[x_kube(validation = Rule::new("isIP(self)").message("spec.ips[].ip must be an IP address"))]
    pub ip: String,
    /// In IP range mode, the IPBlock the address is allocated from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<String>,
}

/// When a record releases its IP.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReleasePolicy {
    /// Release when the identity is scaled in or the set is deleted.
    #[default]
    WhenScaled,
    /// Keep across scale-in; release when the set is deleted.
    WhenDeleted,
    /// Release once the identity has had no pod for releaseTtlSeconds.
    #[serde(rename = "TTL")]
    Ttl,
    /// Never release; the record outlives the set and a re-created set adopts it.
    Never,
}

/// Lifecycle phase of a record.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StaticIPPhase {
    /// The identity has no address yet.
    #[default]
    Pending,
    /// The address and node are known and bound to the pod in status.podUID.
    Bound,
    /// The address is moving to another node with its block (node migration).
    Migrating,
    /// The address was released; the record is about to go.
    Released,
}

/// Observed state of a record.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StaticIPStatus {
    /// Lifecycle phase.
    #[serde(default)]
    pub phase: StaticIPPhase,
    /// UID of the pod the record is bound to.
    #[serde(default, rename = "podUID", skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// UID of the pod the record refused to bind, which the Bound condition (False, reason
    /// IPMismatch or AddressTaken) is about: each such pod is reported once, and looked at
    /// again only as the reason allows.
    #[serde(
        default,
        rename = "refusedPodUID",
        skip_serializing_if = "Option::is_none"
    )]
    pub refused_pod_uid: Option<String>,
    /// When a pod of this identity was last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
    /// Conditions of the record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
