//! One reconcile of one StaticIP record: gather the record's pod and set from the caches,
//! ask `ests_core::static_ip::decide`, carry the decision out.
//!
//! Every write is conditional on what was read: spec changes carry the record's
//! resourceVersion, deletes carry its UID and resourceVersion. A release first looks the pod
//! up in the API server itself — never only in the cache — so an address is never freed
//! under a pod that has just come back.

use std::sync::Arc;
use std::time::Duration;

use ests_api::NodeDeletionPolicy;
use ests_api::{EnhancedStatefulSet, StaticIP, StaticIPAddress, StaticIPPhase, keys};
use ests_core::identity::{ordinal_of, spec_ordinals};
use ests_core::static_ip::{
    CONDITION_BOUND, CONDITION_POD_PRESENT, Decision, Identity, PodFacts, Surroundings, decide,
    record_ips,
};
use ests_runtime::conditions::set_condition;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::ipam::Assignment;
use crate::{Context, Error};

/// Look again at least this often (TTLs, a pod that comes back).
const RESYNC: Duration = Duration::from_secs(300);
/// Look again this soon when a release waits for a pod to go.
const RETRY: Duration = Duration::from_secs(2);

/// One reconcile, in a span naming its object: every log line of it says which record.
#[tracing::instrument(name = "reconcile", skip_all, fields(controller = "record", namespace = %record.namespace().unwrap_or_default(), record = %record.name_any()))]
pub async fn reconcile(record: Arc<StaticIP>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = record.namespace().unwrap_or_default();
    if record.metadata.deletion_timestamp.is_some() {
        return finalize(&ctx, &record).await;
    }
    // Decisions read the pod, set, pool and block caches: not before they are filled.
    ctx.caches_listed().await;
    let pod = ctx
        .pod(&ns, &record.spec.pod_name)
        .map(|p| PodFacts::of(&p));
    let identity = identity(&ctx, &record);
    let now = Timestamp::now().as_second();
    let decision = decide_among_caches(&ctx, &record, pod.as_ref(), identity, now);
    let label = match &decision {
        Decision::Learn { .. } => "learn",
        Decision::Bind { .. } => "bind",
        Decision::Allocate { .. } => "allocate",
        Decision::Mismatch { .. } => "mismatch",
        Decision::AddressTaken { .. } => "address-taken",
        Decision::PodGone => "pod-gone",
        Decision::Release { .. } => "release",
        Decision::Unpin { .. } => "unpin",
        Decision::Reallocate { .. } => "reallocate",
        Decision::Wait { .. } => "wait",
    };
    tracing::trace!(?decision, pod = ?pod, ?identity, "decision");
    if label != "wait" {
        ctx.metrics
            .record_decisions
            .with_label_values(&[label])
            .inc();
        tracing::debug!(?decision, "decided");
    }
    let api: Api<StaticIP> = Api::namespaced(ctx.ipam.client.clone(), &ns);
    match decision {
        Decision::Learn { pod_uid, ips, node } => {
            let addresses: Vec<StaticIPAddress> = ips
                .iter()
                .map(|ip| StaticIPAddress {
                    ip: ip.to_string(),
                    block: None,
                })
                .collect();
            if write_spec(&ctx, &api, &record, Some(&addresses), &node).await? {
                let message = format!(
                    "learnt {} from pod {pod_uid} on node {node}",
                    show(&addresses)
                );
                bind(&api, &record, &pod_uid, "Learnt", message).await?;
            }
        }
        Decision::Bind { pod_uid, node } => {
            if record.spec.node.as_deref() == Some(node.as_str())
                || write_spec(&ctx, &api, &record, None, &node).await?
            {
                let message = format!(
                    "bound to pod {pod_uid} on node {node} with {}",
                    show(&record.spec.ips)
                );
                bind(&api, &record, &pod_uid, "Bound", message).await?;
            }
        }
        Decision::Allocate { node } => allocate(&ctx, &api, &record, &node).await?,
        Decision::Mismatch { pod_uid, pod_ips } => {
            let ips: Vec<String> = pod_ips.iter().map(ToString::to_string).collect();
            let message = format!(
                "pod {pod_uid} runs with {} but the record holds {}: it must be re-created with the record's address",
                ips.join(", "),
                show(&record.spec.ips)
            );
            tracing::warn!(%message, "address mismatch");
            refuse_binding(&api, &record, &pod_uid, "IPMismatch", message).await?;
        }
        Decision::AddressTaken {
            pod_uid,
            ip,
            holder,
        } => {
            let message = format!(
                "pod {pod_uid} runs with {ip}, which StaticIP {holder} keeps: the CNI reused a kept address; \
                 this identity gets no static address from that pod (re-create it for a new one)"
            );
            tracing::warn!(%message, "address taken");
            refuse_binding(&api, &record, &pod_uid, "AddressTaken", message).await?;
        }
        Decision::PodGone => {
            let mut conditions = conditions_of(&record);
            set_condition(
                &mut conditions,
                CONDITION_BOUND,
                false,
                "PodGone",
                "the identity has no pod; its address is kept".into(),
            );
            set_condition(
                &mut conditions,
                CONDITION_POD_PRESENT,
                false,
                "PodGone",
                String::new(),
            );
            write_status(
                &api,
                &record,
                json!({"conditions": conditions, "lastSeen": Time(Timestamp::now())}),
            )
            .await?;
        }
        Decision::Release { why } => return release(&ctx, &api, &record, why).await,
        Decision::Unpin { node, stranded_pod } => {
            if !ctx.node_deleted(&node).await? {
                return Ok(Action::requeue(RETRY));
            }
            if let Some(uid) = stranded_pod {
                delete_stranded_pod(&ctx, &ns, &record.spec.pod_name, &uid, &node).await?;
            }
            if forget_node(&ctx, &api, &record).await? {
                let message = format!(
                    "node {node} was deleted: the identity's next pod is scheduled afresh, with {}",
                    show(&record.spec.ips)
                );
                tracing::info!(%message, "unpinned");
                let mut conditions = conditions_of(&record);
                set_condition(
                    &mut conditions,
                    CONDITION_BOUND,
                    false,
                    "NodeDeleted",
                    message,
                );
                write_status(&api, &record, json!({"conditions": conditions})).await?;
            }
        }
        Decision::Reallocate { node } => {
            if !ctx.node_deleted(&node).await? {
                return Ok(Action::requeue(RETRY));
            }
            let why = format!("node {node} was deleted; its pool re-allocates");
            return delete_record(&ctx, &api, &record, &why).await;
        }
        Decision::Wait {
            after: Some(seconds),
        } => {
            let seconds = u64::try_from(seconds.max(1)).unwrap_or(1);
            return Ok(Action::requeue(Duration::from_secs(seconds).min(RESYNC)));
        }
        Decision::Wait { after: None } => {}
    }
    Ok(Action::requeue(RESYNC))
}

/// [`decide`] for `record`, with what the caches say around it.
fn decide_among_caches(
    ctx: &Context,
    record: &StaticIP,
    pod: Option<&PodFacts>,
    identity: Identity,
    now: i64,
) -> Decision {
    // Which other record holds an address (record mode never learns one that is kept).
    let others = ctx.records.state();
    let held_by = |ip: &std::net::IpAddr| {
        others
            .iter()
            .filter(|r| r.uid() != record.uid())
            .find(|r| record_ips(r).contains(ip))
            .map(|r| format!("{}/{}", r.namespace().unwrap_or_default(), r.name_any()))
    };
    let node_gone = |node: &str| ctx.node_gone(node);
    let on_node_deletion = record
        .spec
        .pool
        .as_ref()
        .and_then(|pool| ctx.ipam.pools.get(&ObjectRef::new(pool)))
        .map_or(NodeDeletionPolicy::default(), |p| {
            p.spec.node_deletion_policy
        });
    let around = Surroundings {
        held_by: &held_by,
        node_gone: &node_gone,
        on_node_deletion,
    };
    decide(record, pod, identity, &around, now)
}

pub fn error_policy(record: Arc<StaticIP>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&["record", error.label()])
        .inc();
    tracing::warn!(namespace = record.namespace().unwrap_or_default(), record = %record.name_any(), %error, "reconcile failed");
    Action::requeue(RETRY)
}

/// Where the record's identity stands in its owning set.
fn identity(ctx: &Context, record: &StaticIP) -> Identity {
    let Some(owner) = record
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
    else {
        return Identity::Orphaned;
    };
    let ns = record.namespace().unwrap_or_default();
    let Some(set) = ctx
        .sets
        .get(&ObjectRef::<EnhancedStatefulSet>::new(&owner.name).within(&ns))
        .filter(|s| s.uid().as_deref() == Some(owner.uid.as_str()))
    else {
        return Identity::Unknown;
    };
    if set.metadata.deletion_timestamp.is_some() {
        return Identity::Unknown;
    }
    let Ok(ordinals) = spec_ordinals(&set.spec) else {
        return Identity::Unknown;
    };
    match ordinal_of(&set.name_any(), &record.spec.pod_name) {
        Some(ordinal) if ordinals.contains(&ordinal) => Identity::InSet,
        _ => Identity::ScaledIn,
    }
}

fn show(addresses: &[StaticIPAddress]) -> String {
    let ips: Vec<&str> = addresses.iter().map(|a| a.ip.as_str()).collect();
    ips.join(", ")
}

/// Writes the record's addresses (if given) and node, only if the record is unchanged
/// since it was read. False if it changed (the next reconcile sees the new state).
async fn write_spec(
    ctx: &Context,
    api: &Api<StaticIP>,
    record: &StaticIP,
    ips: Option<&[StaticIPAddress]>,
    node: &str,
) -> Result<bool, Error> {
    let name = record.name_any();
    let mut spec = json!({"node": node});
    if let Some(ips) = ips {
        spec["ips"] = json!(ips);
    }
    let patch = json!({
        "metadata": {"resourceVersion": record.resource_version()},
        "spec": spec,
    });
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => {
            ctx.metrics.conflicts.with_label_values(&["StaticIP"]).inc();
            Ok(false)
        }
        Err(e) => Err(Error::kube(
            format!("writing the spec of StaticIP {name}"),
            e,
        )),
    }
}

async fn bind(
    api: &Api<StaticIP>,
    record: &StaticIP,
    pod_uid: &str,
    reason: &str,
    message: String,
) -> Result<(), Error> {
    tracing::info!(%message, "bound");
    let conditions = with_pod_present(record, true, reason, message);
    write_status(
        api,
        record,
        json!({
            "phase": StaticIPPhase::Bound,
            "podUID": pod_uid,
            // Bound: no refusal stands (null removes the field in a merge patch).
            "refusedPodUID": null,
            "lastSeen": Time(Timestamp::now()),
            "conditions": conditions,
        }),
    )
    .await
}

/// Reports why the record is not bound to its (present) pod `pod_uid`, naming that pod in
/// `status.refusedPodUID` so that it is reported once.
async fn refuse_binding(
    api: &Api<StaticIP>,
    record: &StaticIP,
    pod_uid: &str,
    reason: &str,
    message: String,
) -> Result<(), Error> {
    let conditions = with_pod_present(record, false, reason, message);
    write_status(
        api,
        record,
        json!({"refusedPodUID": pod_uid, "conditions": conditions}),
    )
    .await
}

/// The record's conditions with its pod present and Bound set to `bound` for `reason`.
fn with_pod_present(
    record: &StaticIP,
    bound: bool,
    reason: &str,
    message: String,
) -> Vec<Condition> {
    let mut conditions = conditions_of(record);
    set_condition(&mut conditions, CONDITION_BOUND, bound, reason, message);
    set_condition(
        &mut conditions,
        CONDITION_POD_PRESENT,
        true,
        "PodPresent",
        String::new(),
    );
    conditions
}

/// IP range mode: addresses on `node`'s blocks, then the record (see
/// [`crate::Ipam::assign_to_record`]); a record changed in between is looked at again.
async fn allocate(
    ctx: &Context,
    api: &Api<StaticIP>,
    record: &StaticIP,
    node: &str,
) -> Result<(), Error> {
    let name = record.name_any();
    match ctx.ipam.assign_to_record(record, node).await {
        Ok(Assignment::Written(written)) => {
            let addresses = &written.spec.ips;
            tracing::info!(ips = %show(addresses), %node, "allocated");
            let mut conditions = conditions_of(&written);
            set_condition(
                &mut conditions,
                CONDITION_BOUND,
                false,
                "Allocated",
                format!(
                    "{} allocated on node {node}; waiting for a pod that runs with it",
                    show(addresses)
                ),
            );
            write_status(api, &written, json!({"conditions": conditions})).await
        }
        Ok(Assignment::Changed(_)) => Ok(()),
        Err(e) => {
            let mut conditions = conditions_of(record);
            set_condition(
                &mut conditions,
                CONDITION_BOUND,
                false,
                "AllocationFailed",
                e.to_string(),
            );
            write_status(api, record, json!({"conditions": conditions})).await?;
            Err(Error::other(
                crate::ALLOCATION,
                format!("StaticIP {name} on node {node}: {e}"),
            ))
        }
    }
}

/// Deletes the record, which frees its addresses, once the API server confirms that no pod
/// of the identity exists. The delete names the record's UID and resourceVersion, so a
/// record re-bound in between is not deleted.
async fn release(
    ctx: &Context,
    api: &Api<StaticIP>,
    record: &StaticIP,
    why: &str,
) -> Result<Action, Error> {
    let ns = record.namespace().unwrap_or_default();
    if let Some(pod) = live_pod(ctx, &ns, &record.spec.pod_name).await? {
        tracing::info!(pod = %pod.uid().unwrap_or_default(), "release postponed: a pod of the identity exists");
        return Ok(Action::requeue(RETRY));
    }
    delete_record(ctx, api, record, why).await
}

/// Deletes the record as read (its UID and resourceVersion), which starts freeing its
/// addresses (see [`finalize`]).
async fn delete_record(
    ctx: &Context,
    api: &Api<StaticIP>,
    record: &StaticIP,
    why: &str,
) -> Result<Action, Error> {
    let name = record.name_any();
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: record.uid(),
            resource_version: record.resource_version(),
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => {
            tracing::info!(ips = %show(&record.spec.ips), %why, "released StaticIP record");
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => {
            ctx.metrics.conflicts.with_label_values(&["StaticIP"]).inc();
            Ok(Action::requeue(RETRY))
        }
        Err(e) => Err(Error::kube(format!("releasing StaticIP {name}"), e)),
    }
}

/// A record being deleted: once no pod of the identity exists (asked of the API server),
/// free its block addresses, then let it go.
async fn finalize(ctx: &Context, record: &StaticIP) -> Result<Action, Error> {
    if !record
        .finalizers()
        .iter()
        .any(|f| f == keys::RECORD_RELEASE_FINALIZER)
    {
        return Ok(Action::await_change());
    }
    let ns = record.namespace().unwrap_or_default();
    let name = record.name_any();
    if let Some(pod) = live_pod(ctx, &ns, &record.spec.pod_name).await? {
        // A pod waiting for a deleted node never runs: it must not keep the record forever.
        let facts = PodFacts::of(&pod);
        if let Some(node) = facts
            .pinned_to
            .as_deref()
            .filter(|_| facts.stranded(&|n| ctx.node_gone(n)))
            && ctx.node_deleted(node).await?
        {
            delete_stranded_pod(ctx, &ns, &record.spec.pod_name, &facts.uid, node).await?;
        }
        return Ok(Action::requeue(RETRY));
    }
    if record.spec.pool.is_some() {
        let freed = ctx
            .ipam
            .release(record, "record-released")
            .await
            .map_err(|e| {
                Error::other(
                    crate::ALLOCATION,
                    format!("freeing the addresses of StaticIP {name}: {e}"),
                )
            })?;
        tracing::info!(freed, "freed block addresses");
    }
    let finalizers: Vec<String> = record
        .finalizers()
        .iter()
        .filter(|f| *f != keys::RECORD_RELEASE_FINALIZER)
        .cloned()
        .collect();
    let api: Api<StaticIP> = Api::namespaced(ctx.ipam.client.clone(), &ns);
    let patch = json!({"metadata": {"resourceVersion": record.resource_version(), "finalizers": finalizers}});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => {
            Ok(Action::requeue(RETRY))
        }
        Err(e) => Err(Error::kube(
            format!("removing the finalizer of StaticIP {name}"),
            e,
        )),
    }
}

/// Deletes pod `name` if it still has UID `uid`: a pod pinned to deleted node `node`, which
/// can never be scheduled (its controller re-creates it with a pin that can hold).
async fn delete_stranded_pod(
    ctx: &Context,
    ns: &str,
    name: &str,
    uid: &str,
    node: &str,
) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.ipam.client.clone(), ns);
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match pods.delete(name, &params).await {
        Ok(_) => {
            tracing::info!(pod = %name, %uid, %node, "deleted a pod pinned to a deleted node");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => Ok(()),
        Err(e) => Err(Error::kube(
            format!("deleting pod {ns}/{name}, pinned to deleted node {node}"),
            e,
        )),
    }
}

/// Clears the record's node, only if the record is unchanged since it was read. False if
/// it changed (the next reconcile sees the new state).
async fn forget_node(ctx: &Context, api: &Api<StaticIP>, record: &StaticIP) -> Result<bool, Error> {
    let name = record.name_any();
    let patch = json!({
        "metadata": {"resourceVersion": record.resource_version()},
        "spec": {"node": null},
    });
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => {
            ctx.metrics.conflicts.with_label_values(&["StaticIP"]).inc();
            Ok(false)
        }
        Err(e) => Err(Error::kube(
            format!("clearing the node of StaticIP {name}"),
            e,
        )),
    }
}

/// The pod named `name`, from the API server.
async fn live_pod(ctx: &Context, ns: &str, name: &str) -> Result<Option<Pod>, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.ipam.client.clone(), ns);
    pods.get_opt(name)
        .await
        .map_err(|e| Error::kube(format!("checking for pod {ns}/{name}"), e))
}

fn conditions_of(record: &StaticIP) -> Vec<Condition> {
    record
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default()
}

async fn write_status(
    api: &Api<StaticIP>,
    record: &StaticIP,
    status: serde_json::Value,
) -> Result<(), Error> {
    let name = record.name_any();
    let patch = json!({"status": status});
    match api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(Error::kube(
            format!("writing the status of StaticIP {name}"),
            e,
        )),
    }
}
