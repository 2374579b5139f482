//! `NodeMigration`: moving a node's static-IP pods, records and whole IP blocks to one
//! replacement node. Cluster-scoped and declarative: the object says what to move and where,
//! its status says how far the move has got, and every step is idempotent, so a manager that
//! dies at any moment resumes from the status and the cluster's objects.
//!
//! A NotReady node may still be running its pods, so nothing of it is force-deleted until it
//! is fenced: the fencing hook answered yes, or an operator set `spec.confirmFenced`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Spec of a NodeMigration.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "jke.jdcloud.com",
    version = "v1alpha1",
    kind = "NodeMigration",
    plural = "nodemigrations",
    singular = "nodemigration",
    shortname = "nm",
    status = "NodeMigrationStatus",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"Source","type":"string","jsonPath":".spec.sourceNode"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".status.targetNode"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeMigrationSpec {
    /// The node whose static-IP pods, records and IP blocks move. Immutable.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.sourceNode is immutable").reason(Reason::FieldValueForbidden))]
    pub source_node: String,

    /// The node they move to. When absent, a node labelled
    /// `jke.jdcloud.com/replacement-for=<sourceNode>` (or the one the provisioning hook
    /// names). Immutable once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub target_node: Option<String>,

    /// Why the node is moved (free text, shown in events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,

    /// The operator confirms the source node is powered off or cut off (fenced): its pods are
    /// then released without asking the fencing hook. Never set this for a node that may
    /// still run its pods: two copies of a pod would run with one address.
    #[serde(default)]
    pub confirm_fenced: bool,
}

/// How far a migration has got.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MigrationPhase {
    /// Choosing the target and checking it can hold the source's static-IP pods.
    #[default]
    Pending,
    /// A NotReady source: waiting for the fencing hook or the operator's confirmation.
    Fencing,
    /// Moving blocks and records, releasing or evicting the source's pods, and waiting for
    /// them to run on the target.
    Moving,
    /// Everything runs on the target; the source Node object is gone.
    Completed,
    /// The target cannot hold the source's static-IP pods (see the conditions).
    Refused,
}

/// Why the node is moved, as the manager found it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrationMode {
    /// The source is not Ready: fence it, then release its pods (out-of-service taint).
    Failure,
    /// The source is Ready: evict its pods (PodDisruptionBudgets and maxUnavailable apply),
    /// no fencing, no taint.
    Maintenance,
}

/// One static-IP identity being moved.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MigratingPod {
    pub namespace: String,
    pub name: String,
    /// The identity's addresses (unchanged by the move).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// The identity's pod runs on the target.
    #[serde(default)]
    pub running_on_target: bool,
}

/// Observed state of a NodeMigration.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeMigrationStatus {
    #[serde(default)]
    pub phase: MigrationPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MigrationMode>,
    /// The node chosen as target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
    /// When the source was fenced (Failure mode): nothing of it was released before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_at: Option<Time>,
    /// How it was fenced: the hook, or the operator's confirmation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// IP blocks moved from the source to the target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved_blocks: Vec<String>,
    /// The static-IP identities being moved and how far each has got.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<MigratingPod>,
    /// Fenced, TargetChosen, TargetFits, NetworkMoved, Completed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
