//! `EnhancedStatefulSet`: a superset of `apps/v1 StatefulSet` that rolls out in parallel
//! (`maxUnavailable`), in batches (`partition`, `paused`) and skips reserved ordinals.
//!
//! Defaults sit on leaf fields only. `updateStrategy.rollingUpdate` in particular is never
//! defaulted as a whole, so `type: OnDelete` manifests stay valid; an absent `rollingUpdate`
//! means all of its defaults.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Spec of an EnhancedStatefulSet: everything an apps/v1 StatefulSet has, plus
/// `reserveOrdinals` and the rolling-update knobs `maxUnavailable`, `paused` and
/// `podUpdatePolicy`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "jke.jdcloud.com",
    version = "v1alpha1",
    kind = "EnhancedStatefulSet",
    plural = "enhancedstatefulsets",
    singular = "enhancedstatefulset",
    shortname = "ests",
    namespaced,
    status = "EnhancedStatefulSetStatus",
    derive = "PartialEq",
    scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.replicas","labelSelectorPath":".status.labelSelector"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","description":"Desired number of pods","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","description":"Pods that are Ready","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Updated","type":"integer","description":"Pods on the update revision","jsonPath":".status.updatedReplicas"}"#,
    printcolumn = r#"{"name":"Partition","type":"integer","description":"Pods with a lower index keep the current revision","jsonPath":".spec.updateStrategy.rollingUpdate.partition"}"#,
    printcolumn = r#"{"name":"Paused","type":"boolean","description":"No new updates are started","jsonPath":".spec.updateStrategy.rollingUpdate.paused"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    validation = Rule::new("has(self.serviceName) == has(oldSelf.serviceName) && (!has(self.serviceName) || self.serviceName == oldSelf.serviceName)")
        .message("spec.serviceName is immutable")
        .field_path(".serviceName")
        .reason(Reason::FieldValueForbidden),
    validation = Rule::new("has(self.volumeClaimTemplates) == has(oldSelf.volumeClaimTemplates) && (!has(self.volumeClaimTemplates) || self.volumeClaimTemplates == oldSelf.volumeClaimTemplates)")
        .message("spec.volumeClaimTemplates is immutable")
        .field_path(".volumeClaimTemplates")
        .reason(Reason::FieldValueForbidden)
)]
#[serde(rename_all = "camelCase")]
pub struct EnhancedStatefulSetSpec {
    /// Desired number of pods (identities). Defaults to 1; at most 150,000, Kubernetes'
    /// documented limit of pods per cluster (the controller's cost per set grows with it).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 150000))]
    pub replicas: i32,

    /// Label query over the pods the set owns. Must match the template's labels. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.selector is immutable").reason(Reason::FieldValueForbidden))]
    pub selector: LabelSelector,

    /// Template of the pods. A container without a name is named after its image
    /// (`nginx:v1` becomes `nginx`): an ests extension to the StatefulSet schema.
    #[schemars(schema_with = "crate::crd::pod_template_schema")]
    pub template: PodTemplateSpec,

    /// Name of the headless Service that governs the set: pods get `hostname` = pod name and
    /// `subdomain` = serviceName, so `<pod>.<serviceName>` resolves. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,

    /// Claims every pod gets: one PVC `<claim>-<set>-<ordinal>` per template, created before
    /// the pod and kept when the pod goes (see persistentVolumeClaimRetentionPolicy). Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub volume_claim_templates: Option<Vec<PersistentVolumeClaim>>,

    /// How pods are first created and scaled in: `OrderedReady` (one at a time, in order,
    /// each waiting for the previous one to be Ready) or `Parallel`. It does not hold back
    /// rolling updates, which only maxUnavailable bounds. Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.podManagementPolicy is immutable").reason(Reason::FieldValueForbidden))]
    pub pod_management_policy: PodManagementPolicy,

    /// How pods are replaced when the template changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<UpdateStrategy>,

    /// Where ordinals start counting, so one logical set can be split across clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordinals: Option<Ordinals>,

    /// Ordinals that are skipped: integers, or ranges "a-b" (inclusive). The set's identities
    /// are the first `replicas` ordinals from ordinals.start that are not reserved, so
    /// reserving the ordinal of a chosen pod while lowering replicas scales in that pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::crd::reserve_ordinals_schema")]
    pub reserve_ordinals: Option<Vec<IntOrString>>,

    /// Seconds a new pod must be Ready, without any container crashing, to count as Available.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub min_ready_seconds: i32,

    /// How many old revisions to keep for rollback. Defaults to 10.
    #[serde(default = "default_revision_history_limit")]
    #[schemars(range(min = 0))]
    pub revision_history_limit: i32,

    /// What happens to the PVCs of pods that are scaled in or whose set is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_retention_policy: Option<PersistentVolumeClaimRetentionPolicy>,
}

fn default_replicas() -> i32 {
    1
}

fn default_revision_history_limit() -> i32 {
    10
}

/// Order in which pods are first created and scaled in.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PodManagementPolicy {
    /// Create in ascending order, each pod after the previous one is Running and Ready;
    /// scale in from the highest ordinal, one at a time.
    #[default]
    OrderedReady,
    /// Create and delete pods all at once.
    Parallel,
}

/// How pods are replaced when the template changes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("self.type != 'OnDelete' || !has(self.rollingUpdate)")
    .message("spec.updateStrategy.rollingUpdate may not be set when spec.updateStrategy.type is OnDelete")
    .field_path(".rollingUpdate")
    .reason(Reason::FieldValueForbidden))]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategy {
    /// `RollingUpdate` (default): the controller replaces outdated pods itself.
    /// `OnDelete`: a pod moves to the update revision only when someone deletes it.
    #[serde(default, rename = "type")]
    pub type_: UpdateStrategyType,

    /// Parameters of a RollingUpdate. Absent means every default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

/// Update strategy type.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpdateStrategyType {
    /// Replace outdated pods automatically, within maxUnavailable and above the partition.
    #[default]
    RollingUpdate,
    /// Replace a pod only when it is deleted.
    OnDelete,
}

/// Parameters of a rolling update.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdate {
    /// Pods whose index (ordinal - ordinals.start) is at least the partition are updated;
    /// lower ones keep the current revision. Lower it step by step to roll out in batches.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub partition: i32,

    /// Most pods that may be unavailable at once during an update: an integer >= 1 or a
    /// percentage of replicas ("1%".."100%", rounded down, never less than 1). Unavailable
    /// pods anywhere in the set count, whatever their revision; while that count is at the
    /// limit no available pod is taken down.
    #[serde(default = "default_max_unavailable")]
    #[schemars(schema_with = "crate::crd::max_unavailable_schema")]
    pub max_unavailable: IntOrString,

    /// When true no new updates are started; scaling, replacing failed pods and finishing
    /// pods already being re-created go on.
    #[serde(default)]
    pub paused: bool,

    /// How a pod moves to the update revision.
    #[serde(default)]
    pub pod_update_policy: PodUpdatePolicy,

    /// Seconds an outdated pod may be unready (or wait with a container error such as
    /// CrashLoopBackOff) before it counts as stuck. Stuck pods are replaced even when the
    /// maxUnavailable budget is spent, at most maxUnavailable of them at once, so applying a
    /// fixed template repairs a bad rollout without deleting pods by hand. Defaults to 300.
    #[serde(default = "default_stuck_pod_seconds")]
    #[schemars(range(min = 10))]
    pub stuck_pod_seconds: i32,
}

impl Default for RollingUpdate {
    fn default() -> Self {
        Self {
            partition: 0,
            max_unavailable: default_max_unavailable(),
            paused: false,
            pod_update_policy: PodUpdatePolicy::default(),
            stuck_pod_seconds: default_stuck_pod_seconds(),
        }
    }
}

fn default_max_unavailable() -> IntOrString {
    IntOrString::Int(1)
}

fn default_stuck_pod_seconds() -> i32 {
    300
}

/// How a pod moves to the update revision.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PodUpdatePolicy {
    /// Delete the pod, then create it again (same name, PVCs and static IP) at the update
    /// revision.
    #[default]
    ReCreate,
    /// Update in place when only container images changed, which keeps the pod's IP and
    /// node; otherwise fall back to ReCreate. In-place updates are not implemented yet, so
    /// today this behaves as ReCreate.
    InPlaceIfPossible,
}

/// Where the set's ordinals start.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Ordinals {
    /// The first ordinal. Defaults to 0.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub start: i32,
}

/// What happens to PVCs created from volumeClaimTemplates.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeClaimRetentionPolicy {
    /// When the set is deleted: `Retain` (default) keeps the PVCs, `Delete` removes them.
    #[serde(default)]
    pub when_deleted: PvcRetentionPolicyType,
    /// When a pod is scaled in: `Retain` (default) keeps its PVCs, `Delete` removes them.
    #[serde(default)]
    pub when_scaled: PvcRetentionPolicyType,
}

/// Retain or delete a PVC.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PvcRetentionPolicyType {
    /// Keep the PVC.
    #[default]
    Retain,
    /// Delete the PVC.
    Delete,
}

/// Observed state of an EnhancedStatefulSet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnhancedStatefulSetStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods that exist.
    #[serde(default)]
    pub replicas: i32,
    /// Pods that are Running and Ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Pods that have been Ready for at least minReadySeconds.
    #[serde(default)]
    pub available_replicas: i32,
    /// Pods on the current revision.
    #[serde(default)]
    pub current_replicas: i32,
    /// Pods on the update revision.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Pods on the update revision that are Ready.
    #[serde(default)]
    pub updated_ready_replicas: i32,
    /// Pods on the update revision that are Available.
    #[serde(default)]
    pub updated_available_replicas: i32,
    /// The revision the pods below the partition run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    /// The revision of the current template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    /// Bumped on a revision-name hash collision, to make names unique.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collision_count: Option<i32>,
    /// The selector as a string, for the scale subresource (HPA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    /// Identities the controller took down (for an update, to replace a stuck pod, or for a
    /// node migration) and has not re-created yet. They count as unavailable until they are
    /// back, also across controller restarts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replacing: Vec<Replacement>,
    /// Conditions: `RolloutComplete` (every pod at or above the partition is updated and
    /// Available), `Updated` (every pod is on the update revision and Available),
    /// `InvalidSpec`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// An identity being replaced.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Replacement {
    /// The identity's ordinal.
    pub ordinal: i32,
    /// Why it was taken down.
    pub reason: ReplacementReason,
    /// The UID of the pod taken down. While a pod with this UID is seen the identity is not
    /// back, however Ready that pod looks (a cache that lags behind the delete).
    #[serde(default, rename = "podUID", skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

/// Why an identity was taken down.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplacementReason {
    /// An outdated pod, within the maxUnavailable budget.
    Update,
    /// A stuck outdated pod, outside the budget.
    Stuck,
    /// Asked to leave its node by a NodeMigration, within the budget.
    Maintenance,
}

impl EnhancedStatefulSetSpec {
    /// The update strategy, with the defaults an absent one means.
    pub fn update_strategy_type(&self) -> UpdateStrategyType {
        self.update_strategy
            .as_ref()
            .map_or(UpdateStrategyType::RollingUpdate, |s| s.type_)
    }

    /// The rolling-update parameters, with the defaults an absent `rollingUpdate` means.
    /// `None` for `OnDelete`.
    pub fn rolling_update(&self) -> Option<RollingUpdate> {
        match &self.update_strategy {
            None => Some(RollingUpdate::default()),
            Some(s) if s.type_ == UpdateStrategyType::OnDelete => None,
            Some(s) => Some(s.rolling_update.clone().unwrap_or_default()),
        }
    }

    /// The first ordinal.
    pub fn ordinals_start(&self) -> i32 {
        self.ordinals.as_ref().map_or(0, |o| o.start)
    }
}
