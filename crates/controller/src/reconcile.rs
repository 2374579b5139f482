//! One reconcile of one set: observe, plan (ests_core::rollout), record, act.
//!
//! A watch event on a set or one of its pods or revisions brings the set here. Everything
//! that decides lives in `ests_core`; this file only gathers its inputs and carries out its
//! answer, in an order that is safe if the process dies at any point: the identities about
//! to be taken down are written to the set's status before any pod is deleted, and every
//! delete names the UID of the pod it means.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ests_api::{EnhancedStatefulSet, ReplacementReason};
use ests_core::identity::{max_unavailable, pod_name, spec_ordinals};
use ests_core::pods::build_pod;
use ests_core::rollout::{
    self, Action as Step, DeleteReason, ReplaceReason, Replacing, SetView, Strategy,
};
use ests_core::static_ip::{self, IpSettings, holds_pod, request_static_ip, stamp};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, EvictParams, PostParams, Preconditions};
use kube::core::Selector;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};

use crate::claims::{self, Claims};
use crate::observe::observe;
use crate::records::{self, RecordState};
use crate::{Context, Error, adopt, revisions, status};

/// Re-plan at least this often, whatever happens.
const RESYNC: Duration = Duration::from_secs(300);
/// Look again this soon when a pod waits for an earlier StaticIP record to go.
const WAIT_FOR_RECORD: Duration = Duration::from_secs(2);
/// Look again this soon when the cached set was older than the server's (its watch event
/// normally comes first).
const STALE: Duration = Duration::from_secs(1);
/// How soon an eviction a PodDisruptionBudget refused is tried again (nothing the set watches
/// changes when the budget does).
const EVICTION_RETRY: Duration = Duration::from_secs(5);

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// One reconcile, in a span naming its object: every log line of it says which set.
#[tracing::instrument(name = "reconcile", skip_all, fields(controller = "set", namespace = %set.namespace().unwrap_or_default(), set = %set.name_any()))]
pub async fn reconcile(set: Arc<EnhancedStatefulSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.caches_listed().await;
    let started = Instant::now();
    let result = reconcile_set(&set, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .with_label_values::<&str>(&[])
        .observe(started.elapsed().as_secs_f64());
    ctx.metrics
        .reconciles
        .with_label_values(&[result.as_ref().map_or_else(Error::label, |_| "success")])
        .inc();
    result
}

pub fn error_policy(set: Arc<EnhancedStatefulSet>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(namespace = set.namespace().unwrap_or_default(), name = %set.name_any(), %error, "reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

async fn reconcile_set(set: &EnhancedStatefulSet, ctx: &Context) -> Result<Action, Error> {
    if set.metadata.deletion_timestamp.is_some() {
        // Garbage collection removes the pods and the records the policy does not keep;
        // PVCs follow the retention policy's owners. The records finalizer, if the set
        // carries it, comes off once the records that outlive the set are orphaned.
        return records::finalizer(ctx, set).await;
    }
    let ns = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let key = format!("{ns}/{name}");
    let now = now();

    let identities = match spec_ordinals(&set.spec) {
        Ok(identities) => identities,
        Err(e) => return invalid(ctx, set, e.to_string()).await,
    };
    let strategy = match set.spec.rolling_update() {
        None => Strategy::OnDelete,
        Some(r) => match max_unavailable(&r.max_unavailable, set.spec.replicas) {
            Ok(max) => Strategy::RollingUpdate {
                partition: r.partition,
                max_unavailable: max,
                paused: r.paused,
                stuck_after: i64::from(r.stuck_pod_seconds),
            },
            Err(e) => return invalid(ctx, set, e.to_string()).await,
        },
    };

    // The selector as a string, for the scale subresource (and so for autoscalers).
    let selector = match Selector::try_from(set.spec.selector.clone()) {
        Ok(selector) => selector,
        Err(e) => return invalid(ctx, set, format!("spec.selector: {e}")).await,
    };
    let label_selector = selector.to_string();

    let ip_settings = match static_ip::settings(set) {
        Ok(settings) => settings,
        Err(e) => return invalid(ctx, set, e).await,
    };
    // The finalizer goes on before the first record is created, so that no record the
    // policy keeps can be taken by garbage collection with the set.
    match (&ip_settings, records::has_finalizer(set)) {
        (Some(_), false) => return records::finalizer(ctx, set).await,
        (None, true) => records::drop_finalizer(ctx, set).await?,
        _ => {}
    }

    let revisions = revisions::sync(ctx, set, &selector).await?;

    // The pods this set controls, as the planner sees them, with what we did that the cache
    // may not show yet.
    let owned = adopt::claim_pods(ctx, set, &selector).await?;
    claims::sync(ctx, set, &owned, &identities).await?;
    let uids: HashMap<String, String> = owned
        .iter()
        .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
        .collect();
    let mut observed: Vec<_> = owned
        .iter()
        .filter_map(|p| {
            let held = ip_settings.is_some() && {
                let record = ctx.records.get(&ObjectRef::new(&p.name_any()).within(&ns));
                holds_pod(p, record.as_deref())
            };
            observe(&name, p, held)
        })
        .collect();
    ctx.expectations.adjust(&key, &mut observed, &uids, now);

    let replacing: BTreeMap<i32, Replacing> = set
        .status
        .iter()
        .flat_map(|s| s.replacing.iter())
        .map(|r| {
            let reason = match r.reason {
                ReplacementReason::Update => ReplaceReason::Update,
                ReplacementReason::Stuck => ReplaceReason::Stuck,
                ReplacementReason::Maintenance => ReplaceReason::Maintenance,
            };
            (
                r.ordinal,
                Replacing {
                    reason,
                    uid: r.pod_uid.clone(),
                },
            )
        })
        .collect();
    let view = SetView {
        identities,
        start: set.spec.ordinals_start(),
        policy: set.spec.pod_management_policy,
        strategy,
        min_ready_seconds: i64::from(set.spec.min_ready_seconds),
        current_revision: revisions.current.clone(),
        update_revision: revisions.update.clone(),
        replacing,
    };
    let plan = rollout::plan(&view, &observed, now);

    // The current revision moves on once every pod runs the update revision.
    let current = if plan.counts.all_updated {
        &revisions.update
    } else {
        &revisions.current
    };
    let new_status = status::from_plan(
        set,
        &plan,
        current,
        &revisions.update,
        revisions.collision_count,
        label_selector,
    );
    // Nothing is done on a stale set: its `replacing` may lack identities taken down by an
    // earlier reconcile, and the plan made from it could exceed the budget.
    if !status::apply(ctx, set, &new_status).await? {
        tracing::debug!("the cached set is stale; waiting for the newer one");
        return Ok(Action::requeue(STALE));
    }
    let labels = [ns.as_str(), name.as_str()];
    ctx.metrics
        .replicas
        .with_label_values(&labels)
        .set(i64::from(plan.counts.replicas));
    ctx.metrics
        .updated_replicas
        .with_label_values(&labels)
        .set(i64::from(plan.counts.updated));
    ctx.metrics
        .unavailable_replicas
        .with_label_values(&labels)
        .set(i64::from(plan.counts.unavailable));

    if !plan.held.is_empty() {
        let pods: Vec<String> = plan.held.iter().map(|o| pod_name(&name, *o)).collect();
        publish(
            ctx,
            set,
            EventType::Normal,
            "WaitingForStaticIP",
            "Hold",
            format!(
                "{} kept until its StaticIP record holds the address it runs with",
                pods.join(", ")
            ),
        )
        .await;
    }

    let mut waiting = false;
    let mut refused = false;
    for step in &plan.actions {
        match step {
            Step::Create { ordinal, revision } => {
                waiting |= !create_pod(
                    ctx,
                    set,
                    &revisions,
                    ip_settings.as_ref(),
                    &key,
                    *ordinal,
                    revision,
                )
                .await?;
            }
            Step::Delete {
                name: pod, reason, ..
            } => {
                if let Some(pod_uid) = uids.get(pod) {
                    refused |= !delete_pod(ctx, set, &key, pod, pod_uid, *reason).await?;
                }
            }
        }
    }

    let in_use: BTreeSet<String> = observed.iter().map(|o| o.revision.clone()).collect();
    revisions::trim(ctx, set, &revisions, &in_use).await?;

    let mut requeue = plan
        .requeue_after
        .and_then(|s| u64::try_from(s).ok())
        .map_or(RESYNC, |s| Duration::from_secs(s).min(RESYNC));
    if waiting {
        requeue = requeue.min(WAIT_FOR_RECORD);
    }
    if refused {
        requeue = requeue.min(EVICTION_RETRY);
    }
    if let Some(expiry) = ctx.expectations.next_expiry(&key) {
        requeue = requeue.min(expiry + Duration::from_millis(100));
    }
    Ok(Action::requeue(requeue))
}

/// Records an invalid spec in the status and as an event; nothing else happens until the
/// spec changes.
async fn invalid(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    message: String,
) -> Result<Action, Error> {
    let mut new_status = set.status.clone().unwrap_or_default();
    let previous = new_status.conditions.clone();
    new_status
        .conditions
        .retain(|c| c.type_ != status::INVALID_SPEC);
    new_status
        .conditions
        .push(ests_runtime::conditions::condition(
            &previous,
            status::INVALID_SPEC,
            true,
            "InvalidSpec",
            message.clone(),
            set.metadata.generation,
        ));
    if !status::apply(ctx, set, &new_status).await? {
        return Ok(Action::requeue(STALE));
    }
    publish(
        ctx,
        set,
        EventType::Warning,
        "InvalidSpec",
        "Validate",
        message,
    )
    .await;
    Ok(Action::await_change())
}

pub(crate) async fn publish(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &set.object_ref(&())).await {
        tracing::debug!(error = %e, "publishing an event");
    }
}

/// An event about what the set did to one pod, naming the pod as its related object: the
/// event recorder aggregates events by regarding and related object, reason and action (not
/// by message), so without it six creates of six pods would read as one event "×6".
async fn publish_about_pod(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    (pod, uid): (&str, Option<&str>),
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let related = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(pod.into()),
        namespace: set.namespace(),
        uid: uid.map(Into::into),
        ..Default::default()
    };
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: Some(related),
    };
    if let Err(e) = ctx.recorder.publish(&event, &set.object_ref(&())).await {
        tracing::debug!(error = %e, "publishing an event");
    }
}

/// Creates the pod of `ordinal` (its claims and static-IP record first). False if the pod
/// has to wait for its record.
async fn create_pod(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    revisions: &revisions::Revisions,
    ip_settings: Option<&IpSettings>,
    key: &str,
    ordinal: i32,
    revision: &str,
) -> Result<bool, Error> {
    let ns = set.namespace().unwrap_or_default();
    let set_name = set.name_any();
    let name = pod_name(&set_name, ordinal);
    // The pod runs what its revision holds; without that revision it is not created (a pod
    // labelled with one revision and running another template would never be updated).
    let Some(template) = revisions.template(&set.spec.template, revision) else {
        return Err(Error::other(
            crate::INVALID,
            format!("revision {revision} of {ns}/{set_name} not found; pod {name} not created"),
        ));
    };

    // Claims first, so the pod never starts without its storage.
    if let Claims::Wait(why) = claims::ensure(ctx, set, ordinal).await? {
        publish(
            ctx,
            set,
            EventType::Normal,
            "WaitingForClaim",
            "Create",
            why,
        )
        .await;
        return Ok(false);
    }

    let mut pod = build_pod(set, template, revision, ordinal);
    // The record exists before the pod, and the pod names the record it was created with.
    if let Some(settings) = ip_settings {
        match records::ensure(ctx, set, settings, &name).await? {
            RecordState::Ready(record) => {
                stamp(&mut pod, &record);
                if ctx.extender_binds && settings.pool.is_some() {
                    request_static_ip(&mut pod);
                }
            }
            RecordState::Wait(why) => {
                publish(
                    ctx,
                    set,
                    EventType::Normal,
                    "WaitingForStaticIP",
                    "Create",
                    why,
                )
                .await;
                return Ok(false);
            }
        }
    }
    ctx.expectations
        .expect_create(key, &name, ordinal, revision);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    match pods.create(&PostParams::default(), &pod).await {
        Ok(created) => {
            ctx.metrics
                .pods_created
                .with_label_values(&["success"])
                .inc();
            publish_about_pod(
                ctx,
                set,
                (&name, created.uid().as_deref()),
                EventType::Normal,
                "SuccessfulCreate",
                "Create",
                format!("create Pod {name} at revision {revision}"),
            )
            .await;
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(true),
        Err(e) => {
            ctx.expectations.forget_create(key, &name);
            ctx.metrics.pods_created.with_label_values(&["error"]).inc();
            publish_about_pod(
                ctx,
                set,
                (&name, None),
                EventType::Warning,
                "FailedCreate",
                "Create",
                format!("create Pod {name}: {e}"),
            )
            .await;
            Err(Error::kube(format!("creating pod {name}"), e))
        }
    }
}

/// Deletes the pod `name` if it is still the incarnation `uid`; a node migration's pod is
/// evicted instead. False if a PodDisruptionBudget refused the eviction for now (the identity
/// stays in `replacing`, so the eviction is sent again within the same budget).
async fn delete_pod(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    key: &str,
    name: &str,
    uid: &str,
    reason: DeleteReason,
) -> Result<bool, Error> {
    let ns = set.namespace().unwrap_or_default();
    if reason == DeleteReason::ScaleIn
        && let Some(pod) = ctx.pods.get(&ObjectRef::new(name).within(&ns))
        && pod.uid().as_deref() == Some(uid)
    {
        // Under whenScaled: Delete the pod owns its claims from now on, so they go with it.
        claims::hand_over(ctx, set, &pod, true).await?;
    }
    ctx.expectations.expect_delete(key, uid);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let why = match reason {
        DeleteReason::ScaleIn => "scale-in",
        DeleteReason::Update => "update",
        DeleteReason::Stuck => "stuck",
        DeleteReason::Terminal => "terminated",
        DeleteReason::Maintenance => "node migration",
    };
    let result = if reason == DeleteReason::Maintenance {
        Api::<Pod>::namespaced(ctx.evictions.clone(), &ns)
            .evict(
                name,
                &EvictParams {
                    delete_options: Some(params),
                    post_options: PostParams::default(),
                },
            )
            .await
            .map(|_| ())
    } else {
        pods.delete(name, &params).await.map(|_| ())
    };
    match result {
        Ok(()) => {
            ctx.metrics.pods_deleted.with_label_values(&[why]).inc();
            publish_about_pod(
                ctx,
                set,
                (name, Some(uid)),
                EventType::Normal,
                "SuccessfulDelete",
                "Delete",
                format!("delete Pod {name} ({why})"),
            )
            .await;
            Ok(true)
        }
        // Gone already, or another incarnation: nothing to do.
        Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => Ok(true),
        // A PodDisruptionBudget refuses for now.
        Err(kube::Error::Api(s)) if s.code == 429 => {
            ctx.expectations.forget_delete(key, uid);
            tracing::info!(pod = %name, reason = %s.message, "eviction refused for now");
            Ok(false)
        }
        Err(e) => {
            ctx.expectations.forget_delete(key, uid);
            publish_about_pod(
                ctx,
                set,
                (name, Some(uid)),
                EventType::Warning,
                "FailedDelete",
                "Delete",
                format!("delete Pod {name}: {e}"),
            )
            .await;
            Err(Error::kube(format!("deleting pod {name}"), e))
        }
    }
}
