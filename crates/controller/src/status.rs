//! The set's status: counts, revisions, identities being replaced and conditions, written
//! with server-side apply only when something changed.

use ests_api::{EnhancedStatefulSet, EnhancedStatefulSetStatus};
use ests_core::rollout::Plan;
use ests_core::set_view::replacements;
use ests_runtime::conditions::condition;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::{Context, Error, FIELD_MANAGER};

pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
pub const UPDATED: &str = "Updated";
pub const INVALID_SPEC: &str = "InvalidSpec";

/// The status a plan describes (its current revision among it).
pub fn from_plan(
    set: &EnhancedStatefulSet,
    plan: &Plan,
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
        current_revision: Some(plan.current_revision.clone()),
        update_revision: Some(update_revision.to_string()),
        collision_count: (collision_count > 0).then_some(collision_count),
        label_selector: Some(label_selector),
        replacing: replacements(&plan.replacing),
        conditions,
    }
}

/// Writes `status` unless the set already has it. False if the set was stale: the status
/// on the server is newer than the one `set` holds, and nothing was written.
pub async fn apply(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    status: &EnhancedStatefulSetStatus,
) -> Result<bool, Error> {
    if set.status.as_ref() == Some(status) {
        return Ok(true);
    }
    let api: Api<EnhancedStatefulSet> =
        Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    write(&api, set, status).await
}

/// Writes `status` as the status of `set`, only if the set on the server is still the one
/// read (its resourceVersion). The status is computed from what was read, `replacing`
/// included: written over a newer status, it could drop identities an earlier reconcile
/// took down, and the budget would forget them. False if the set has changed since (the
/// watch brings the newer set, and a reconcile of it, soon). Server-side apply, forced, so
/// that the fields ests no longer sets (an emptied `replacing`) are removed.
pub async fn write(
    api: &Api<EnhancedStatefulSet>,
    set: &EnhancedStatefulSet,
    status: &EnhancedStatefulSetStatus,
) -> Result<bool, Error> {
    let name = set.name_any();
    let Some(version) = set.resource_version() else {
        return Err(Error::other(
            crate::INVALID,
            format!("the set {name} as read has no resourceVersion; its status is not written"),
        ));
    };
    let patch = json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1",
        "kind": "EnhancedStatefulSet",
        "metadata": {"resourceVersion": version},
        "status": status,
    });
    match api
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.is_conflict() => Ok(false),
        Err(e) => Err(Error::kube(format!("writing the status of {name}"), e)),
    }
}
