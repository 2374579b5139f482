//! The set's status: counts, revisions, identities being replaced and conditions, written
//! with server-side apply only when something changed.

use ests_api::{EnhancedStatefulSet, EnhancedStatefulSetStatus, Replacement, ReplacementReason};
use ests_core::rollout::{Plan, ReplaceReason};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::{Context, Error, FIELD_MANAGER};

pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
pub const UPDATED: &str = "Updated";
pub const INVALID_SPEC: &str = "InvalidSpec";

/// A condition, keeping the previous transition time when its status did not change.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// The status a plan describes.
pub fn from_plan(
    set: &EnhancedStatefulSet,
    plan: &Plan,
    current_revision: &str,
    update_revision: &str,
    collision_count: i32,
    label_selector: String,
) -> EnhancedStatefulSetStatus {
    let previous = set
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = set.metadata.generation;
    let c = plan.counts;
    let partition = set.spec.rolling_update().map_or(0, |r| r.partition);
    let conditions = vec![
        condition(
            previous,
            ROLLOUT_COMPLETE,
            c.rollout_complete,
            if c.rollout_complete {
                "PartitionUpdated"
            } else {
                "RollingOut"
            },
            format!(
                "{} of {} pods updated and available; pods with index >= {partition} are updated",
                c.updated_available, set.spec.replicas
            ),
            generation,
        ),
        condition(
            previous,
            UPDATED,
            c.all_updated,
            if c.all_updated {
                "AllUpdated"
            } else {
                "Partial"
            },
            format!(
                "{} of {} pods on revision {update_revision}",
                c.updated, set.spec.replicas
            ),
            generation,
        ),
    ];
    EnhancedStatefulSetStatus {
        observed_generation: generation,
        replicas: c.replicas,
        ready_replicas: c.ready,
        available_replicas: c.available,
        current_replicas: c.current,
        updated_replicas: c.updated,
        updated_ready_replicas: c.updated_ready,
        updated_available_replicas: c.updated_available,
        current_revision: Some(current_revision.to_string()),
        update_revision: Some(update_revision.to_string()),
        collision_count: (collision_count > 0).then_some(collision_count),
        label_selector: Some(label_selector),
        replacing: plan
            .replacing
            .iter()
            .map(|(ordinal, reason)| Replacement {
                ordinal: *ordinal,
                reason: match reason {
                    ReplaceReason::Update => ReplacementReason::Update,
                    ReplaceReason::Stuck => ReplacementReason::Stuck,
                },
            })
            .collect(),
        conditions,
    }
}

/// Writes `status` unless the set already has it.
pub async fn apply(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    status: &EnhancedStatefulSetStatus,
) -> Result<(), Error> {
    if set.status.as_ref() == Some(status) {
        return Ok(());
    }
    let name = set.name_any();
    let api: Api<EnhancedStatefulSet> =
        Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1",
        "kind": "EnhancedStatefulSet",
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await
    .map_err(|e| Error::kube(format!("writing the status of {name}"), e))?;
    Ok(())
}
