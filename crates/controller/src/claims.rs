//! The PVCs of a set's identities, as upstream's StatefulSet keeps them: created before
//! their pod, re-created for a Pending pod whose claim was deleted, never used while
//! Terminating, and owned as the retention policy says (`ests_core::pods::claim_owners`),
//! re-synced on every reconcile so that a policy changed on a live set, a set re-created
//! after `--cascade=orphan`, or an identity that comes back after scale-in all end with the
//! right owners. Every owner write carries the claim's resourceVersion.

use std::sync::Arc;

use ests_api::EnhancedStatefulSet;
use ests_core::identity::ordinal_of;
use ests_core::pods::{build_claims, owner_changes};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::{Context, Error};

/// Whether the claims of an identity are there for its pod.
pub enum Claims {
    Ready,
    /// The pod waits, for this reason.
    Wait(String),
}

/// Creates the missing claims of `ordinal`; a claim being deleted makes the pod wait (as
/// upstream's "pvc is being deleted"): a pod started on it would lose its storage.
pub async fn ensure(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    ordinal: i32,
) -> Result<Claims, Error> {
    let ns = set.namespace().unwrap_or_default();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    for claim in build_claims(set, ordinal) {
        let name = claim.name_any();
        if let Some(cached) = ctx.claims.get(&ObjectRef::new(&name).within(&ns)) {
            if cached.metadata.deletion_timestamp.is_some() {
                return Ok(Claims::Wait(format!(
                    "claim {name} is being deleted; the pod waits for it to go"
                )));
            }
            continue;
        }
        match api.create(&PostParams::default(), &claim).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(e) => {
                crate::reconcile::publish(
                    ctx,
                    set,
                    EventType::Warning,
                    "FailedCreate",
                    "CreateClaim",
                    format!("create Claim {name}: {e}"),
                )
                .await;
                return Err(Error::kube(format!("creating claim {name}"), e));
            }
        }
    }
    Ok(Claims::Ready)
}

/// Re-creates the claims of the set's Pending pods (a claim deleted under a pod that has
/// not started yet) and brings every claim of its pods to the owners the policy wants;
/// `identities` are the ordinals the set wants.
pub async fn sync(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    pods: &[Arc<Pod>],
    identities: &[i32],
) -> Result<(), Error> {
    if set
        .spec
        .volume_claim_templates
        .as_ref()
        .is_none_or(Vec::is_empty)
    {
        return Ok(());
    }
    let set_name = set.name_any();
    for pod in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let Some(ordinal) = ordinal_of(&set_name, &pod.name_any()) else {
            continue;
        };
        let pending = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending")
            || pod.status.is_none();
        if pending {
            ensure(ctx, set, ordinal).await?;
        }
        hand_over(ctx, set, pod, !identities.contains(&ordinal)).await?;
    }
    Ok(())
}

/// Gives the claims of `pod` the owners the retention policy wants, `scaled_in` saying
/// whether its identity is outside the set now (`ests_core::pods::owner_changes` decides).
pub async fn hand_over(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    pod: &Pod,
    scaled_in: bool,
) -> Result<(), Error> {
    let ns = set.namespace().unwrap_or_default();
    let changes = owner_changes(set, pod, scaled_in, |name| {
        ctx.claims.get(&ObjectRef::new(name).within(&ns))
    });
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    for change in changes {
        let name = &change.claim;
        let patch = json!({"metadata": {
            "resourceVersion": change.resource_version,
            "ownerReferences": change.owners,
        }});
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {
                tracing::info!(claim = %name, pod = %pod.name_any(), scaled_in, "claim owners follow the retention policy");
            }
            // Changed since the cache saw it, or gone: the next reconcile looks again.
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => {}
            Err(e) => {
                return Err(Error::kube(
                    format!("writing the owner references of claim {name}"),
                    e,
                ));
            }
        }
    }
    Ok(())
}
