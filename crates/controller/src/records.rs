//! The set controller's side of static IPs: the StaticIP record of an identity exists
//! before its pod (created, or adopted from an earlier set of the same name), and before a
//! static-IP set goes, the records its release policy keeps are orphaned.
//!
//! What a record holds and when it is released is the StaticIP manager's job
//! (`ests-staticip`); the decisions both use are in `ests_core::static_ip`.

use std::sync::Arc;

use ests_api::{EnhancedStatefulSet, StaticIP, keys};
use ests_core::static_ip::{
    IpSettings, Ownership, claim, claim_is_fresh, claim_value, new_record, outlives_set, ownership,
    workload_of,
};
use ests_runtime::finalizers;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, Event as FinalizerEvent};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::{Context, Error};

/// Whether the record of an identity is ready for its pod.
pub enum RecordState {
    /// Stamp the pod with this record.
    Ready(Box<StaticIP>),
    /// No pod yet, for this reason (an earlier record is still going, or belongs to
    /// someone else).
    Wait(String),
}

/// The record of identity `pod_name`, created or adopted if need be, and claimed for the pod
/// about to be created (`ests_core::static_ip::claim`): the claim is written with the
/// record's resourceVersion, so it and a release judged on an earlier version of the record
/// meet on one compare-and-swap — one of them gets a Conflict. A record being deleted is
/// never claimed. The pod is stamped with the record as claimed.
pub async fn ensure(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    settings: &IpSettings,
    pod_name: &str,
) -> Result<RecordState, Error> {
    let ns = set.namespace().unwrap_or_default();
    let api: Api<StaticIP> = Api::namespaced(ctx.client.clone(), &ns);
    let now = Timestamp::now().as_second();
    let mut record = match ctx.records.get(&ObjectRef::new(pod_name).within(&ns)) {
        Some(record) => (*record).clone(),
        None => {
            // Created claimed: nobody can have judged a record that did not exist.
            let mut fresh = new_record(set, pod_name, settings);
            claim(&mut fresh, now);
            match api.create(&PostParams::default(), &fresh).await {
                Ok(created) => {
                    tracing::info!(record = pod_name, "created StaticIP record");
                    return Ok(RecordState::Ready(Box::new(created)));
                }
                // The cache is behind: judge the record that is there.
                Err(kube::Error::Api(s)) if s.is_already_exists() => api
                    .get(pod_name)
                    .await
                    .map_err(|e| Error::kube(format!("reading StaticIP {pod_name}"), e))?,
                Err(e) => return Err(Error::kube(format!("creating StaticIP {pod_name}"), e)),
            }
        }
    };
    // A cached record that changed since is read again once, then judged afresh.
    for _ in 0..2 {
        match ownership(&record, set) {
            Ownership::Ours => {}
            Ownership::Adoptable => return adopt(&api, set, record, now).await,
            Ownership::Deleting => {
                return Ok(RecordState::Wait(format!(
                    "StaticIP {pod_name} is being released; the pod waits for it to go"
                )));
            }
            Ownership::Foreign(owner) => {
                return Ok(RecordState::Wait(format!(
                    "StaticIP {pod_name} belongs to {owner}; the pod waits until it is released or orphaned"
                )));
            }
        }
        if claim_is_fresh(&record, now) {
            // A pod refused on this claim (the webhook had not seen it yet) comes again on it.
            return Ok(RecordState::Ready(Box::new(record)));
        }
        let patch = json!({"metadata": {
            "resourceVersion": record.resource_version(),
            "annotations": {keys::STATIC_IP_RECORD_CLAIMED_AT: claim_value(now)},
        }});
        match api
            .patch(pod_name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(claimed) => {
                tracing::debug!(record = pod_name, "claimed StaticIP record");
                return Ok(RecordState::Ready(Box::new(claimed)));
            }
            Err(kube::Error::Api(s)) if s.is_conflict() => {
                match api
                    .get_opt(pod_name)
                    .await
                    .map_err(|e| Error::kube(format!("reading StaticIP {pod_name}"), e))?
                {
                    Some(live) => record = live,
                    None => break,
                }
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => break,
            Err(e) => return Err(Error::kube(format!("claiming StaticIP {pod_name}"), e)),
        }
    }
    Ok(RecordState::Wait(format!(
        "StaticIP {pod_name} changed or went while being claimed; trying again"
    )))
}

/// Takes over a record kept after an earlier set of the same name went: this set becomes
/// its owner and its workload UID, and the record is claimed for the pod. The write carries
/// the resourceVersion read, so a record released meanwhile is not resurrected.
async fn adopt(
    api: &Api<StaticIP>,
    set: &EnhancedStatefulSet,
    record: StaticIP,
    now: i64,
) -> Result<RecordState, Error> {
    let name = record.name_any();
    let patch = json!({
        "metadata": {
            "resourceVersion": record.resource_version(),
            "ownerReferences": set.controller_owner_ref(&()).map(|o| vec![o]),
            "annotations": {keys::STATIC_IP_RECORD_CLAIMED_AT: claim_value(now)},
        },
        "spec": {"workload": workload_of(set)},
    });
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(adopted) => {
            tracing::info!(record = %name, "adopted StaticIP record");
            Ok(RecordState::Ready(Box::new(adopted)))
        }
        Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => Ok(RecordState::Wait(
            format!("StaticIP {name} changed while being adopted; trying again"),
        )),
        Err(e) => Err(Error::kube(format!("adopting StaticIP {name}"), e)),
    }
}

/// Whether the set carries the records finalizer.
pub fn has_finalizer(set: &EnhancedStatefulSet) -> bool {
    finalizers::has(set, keys::SET_RECORDS_FINALIZER)
}

/// The records finalizer by kube-runtime's helper: on a live set it is added (the set is
/// reconciled again on the write's event); on a deleted set that carries it the records
/// that outlive the set are orphaned ([`release_set`]) and then it comes off.
pub async fn finalizer(ctx: &Context, set: &EnhancedStatefulSet) -> Result<Action, Error> {
    let name = set.name_any();
    let api: Api<EnhancedStatefulSet> =
        Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    kube::runtime::finalizer(
        &api,
        keys::SET_RECORDS_FINALIZER,
        Arc::new(set.clone()),
        |event| async move {
            match event {
                // Only reached with the finalizer on a live set, which the caller never
                // asks for: the reconcile goes on without the helper.
                FinalizerEvent::Apply(_) => Ok(Action::await_change()),
                FinalizerEvent::Cleanup(set) => {
                    release_set(ctx, &set).await?;
                    Ok(Action::await_change())
                }
            }
        },
    )
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
        finalizer::Error::AddFinalizer(e) => Error::kube(
            format!(
                "adding the finalizer {} of {name}",
                keys::SET_RECORDS_FINALIZER
            ),
            e,
        ),
        finalizer::Error::RemoveFinalizer(e) => Error::kube(
            format!(
                "removing the finalizer {} of {name}",
                keys::SET_RECORDS_FINALIZER
            ),
            e,
        ),
        other => Error::other(crate::INVALID, format!("the finalizer of {name}: {other}")),
    })
}

/// Takes the records finalizer off a live set without static IPs (kube-runtime's helper
/// only removes it from deleted objects).
pub async fn drop_finalizer(ctx: &Context, set: &EnhancedStatefulSet) -> Result<(), Error> {
    let api: Api<EnhancedStatefulSet> =
        Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    // Someone wrote the set in between: the next reconcile sees it and tries again.
    finalizers::set(&api, set, keys::SET_RECORDS_FINALIZER, false).await?;
    Ok(())
}

/// Before the set goes: orphans every record its policy keeps (the rest go with the set,
/// through garbage collection); [`finalizer`] then lets the set go. Reads records from the API, not the
/// cache, so a record created just before the delete is not missed.
pub async fn release_set(ctx: &Context, set: &EnhancedStatefulSet) -> Result<(), Error> {
    let ns = set.namespace().unwrap_or_default();
    let uid = set.uid().unwrap_or_default();
    let api: Api<StaticIP> = Api::namespaced(ctx.client.clone(), &ns);
    let records = api
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::kube(format!("listing StaticIPs in {ns}"), e))?;
    for record in records
        .items
        .iter()
        .filter(|r| r.owner_references().iter().any(|o| o.uid == uid))
        .filter(|r| outlives_set(r.spec.release_policy))
    {
        let name = record.name_any();
        let owners: Vec<_> = record
            .owner_references()
            .iter()
            .filter(|o| o.uid != uid)
            .cloned()
            .collect();
        let patch = json!({"metadata": {
            "resourceVersion": record.resource_version(),
            "ownerReferences": owners,
        }});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(|e| Error::kube(format!("orphaning StaticIP {name}"), e))?;
        tracing::info!(record = %name, policy = ?record.spec.release_policy, "orphaned StaticIP record: it outlives its set");
    }
    Ok(())
}
