//! What a set controls, as upstream's ClaimPods and ClaimControllerRevisions: objects it
//! owns, orphans it adopts now, less those it releases now (the decision is
//! `ests_core::adoption`). Adoption first re-reads the set from the API server, as upstream
//! does, so that a set deleted or re-created meanwhile adopts nothing; every ownership
//! write carries the object's resourceVersion.

use std::fmt::Debug;
use std::sync::Arc;

use ests_api::EnhancedStatefulSet;
use ests_core::adoption::{Membership, pod_membership, revision_membership};
use ests_core::pods::owner_reference;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Patch, PatchParams};
use kube::core::Selector;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::{Context, Error};

/// The set's pods: owned ones, and orphans adopted now; pods released now are left out.
pub async fn claim_pods(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    selector: &Selector,
) -> Result<Vec<Arc<Pod>>, Error> {
    let name = set.name_any();
    let uid = set.uid().unwrap_or_default();
    let candidates = in_namespace(ctx.pods.state(), set);
    let claimed = claim(ctx, set, candidates, |p| {
        pod_membership(&name, &uid, selector, p)
    })
    .await?;
    for pod in &claimed.released {
        crate::reconcile::publish(
            ctx,
            set,
            EventType::Normal,
            "Released",
            "Release",
            format!(
                "released Pod {}: its labels no longer match the selector",
                pod.name_any()
            ),
        )
        .await;
    }
    Ok(claimed.owned)
}

/// The set's ControllerRevisions: owned ones, and orphans (a set deleted with
/// `--cascade=orphan`, then applied again) adopted now, so that the same template maps to
/// the same revision and its pods are not rolled for nothing.
pub async fn claim_revisions(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    selector: &Selector,
) -> Result<Vec<Arc<ControllerRevision>>, Error> {
    let name = set.name_any();
    let uid = set.uid().unwrap_or_default();
    let candidates = in_namespace(ctx.revisions.state(), set);
    let claimed = claim(ctx, set, candidates, |r| {
        revision_membership(&name, &uid, selector, r)
    })
    .await?;
    Ok(claimed.owned)
}

fn in_namespace<K: ResourceExt>(objects: Vec<Arc<K>>, set: &EnhancedStatefulSet) -> Vec<Arc<K>> {
    let ns = set.namespace();
    objects
        .into_iter()
        .filter(|o| o.namespace() == ns)
        .collect()
}

struct Claimed<K> {
    owned: Vec<Arc<K>>,
    released: Vec<Arc<K>>,
}

async fn claim<K>(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    candidates: Vec<Arc<K>>,
    membership: impl Fn(&K) -> Membership,
) -> Result<Claimed<K>, Error>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let (mut owned, mut adopt, mut release) = (Vec::new(), Vec::new(), Vec::new());
    for object in candidates {
        match membership(&object) {
            Membership::Owned => owned.push(object),
            Membership::Adopt => adopt.push(object),
            Membership::Release => release.push(object),
            Membership::NotOurs => {}
        }
    }
    let mut released = Vec::new();
    if (adopt.is_empty() && release.is_empty()) || !still_current(ctx, set).await? {
        return Ok(Claimed { owned, released });
    }
    let ns = set.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = set.uid().unwrap_or_default();
    for object in adopt {
        let mut references = object.owner_references().to_vec();
        references.extend(owner_reference(set));
        if let Some(adopted) = set_owners(&api, &*object, references).await? {
            tracing::info!(kind = %K::kind(&()), name = %object.name_any(), "adopted an orphan");
            owned.push(Arc::new(adopted));
        }
    }
    for object in release {
        let references: Vec<OwnerReference> = object
            .owner_references()
            .iter()
            .filter(|o| o.uid != uid)
            .cloned()
            .collect();
        if set_owners(&api, &*object, references).await?.is_some() {
            tracing::info!(kind = %K::kind(&()), name = %object.name_any(), "released: its labels no longer match the selector");
            released.push(object);
        }
    }
    Ok(Claimed { owned, released })
}

/// Whether the API server still holds this set (same UID), not being deleted.
async fn still_current(ctx: &Context, set: &EnhancedStatefulSet) -> Result<bool, Error> {
    let name = set.name_any();
    let sets: Api<EnhancedStatefulSet> =
        Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    let live = sets
        .get_opt(&name)
        .await
        .map_err(|e| Error::kube(format!("re-reading set {name} before adopting"), e))?;
    Ok(live.is_some_and(|l| l.uid() == set.uid() && l.metadata.deletion_timestamp.is_none()))
}

/// Writes the object's owner references, only if it is unchanged since read. None if it
/// changed or went (the next reconcile judges it afresh).
async fn set_owners<K>(
    api: &Api<K>,
    object: &K,
    references: Vec<OwnerReference>,
) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    let name = object.name_any();
    let patch = json!({"metadata": {
        "resourceVersion": object.resource_version(),
        "ownerReferences": references,
    }});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(written) => Ok(Some(written)),
        Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => Ok(None),
        Err(e) => Err(Error::kube(
            format!("writing the owner references of {} {name}", K::kind(&())),
            e,
        )),
    }
}
