//! One reconcile of one set: observe, plan (ests_core::rollout), record, act.
//!
//! A watch event on a set or one of its pods or revisions brings the set here. Everything
//! that decides lives in `ests_core`; this file only gathers its inputs and carries out its
//! answer, in an order that is safe if the process dies at any point: the identities about
//! to be taken down are written to the set's status before any pod is deleted, and every
//! delete names the UID of the pod it means.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ests_api::{EnhancedStatefulSet, EnhancedStatefulSetStatus};
use ests_core::identity::pod_name;
use ests_core::pods::build_pod;
use ests_core::rollout::{self, Action as Step, DeleteReason, ObservedPod, Plan};
use ests_core::set_view::{self, SetSpec};
use ests_core::static_ip::{IpSettings, holds_pod, request_static_ip, stamp};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams, Preconditions};
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

/// One pass: observe the cluster, plan (in `ests_core`), record the plan in the status,
/// act on it. A spec that cannot be carried out stops at the first step and says why.
async fn reconcile_set(set: &EnhancedStatefulSet, ctx: &Context) -> Result<Action, Error> {
    if set.metadata.deletion_timestamp.is_some() {
        // Garbage collection removes the pods and the records the policy does not keep;
        // PVCs follow the retention policy's owners. The records finalizer, if the set
        // carries it, comes off once the records that outlive the set are orphaned.
        return records::finalizer(ctx, set).await;
    }
    let spec = match set_view::read(set) {
        Ok(spec) => spec,
        Err(why) => return invalid(ctx, set, why).await,
    };
    if let Some(next) = sync_finalizer(ctx, set, &spec).await? {
        return Ok(next);
    }
    let observed = observe_set(ctx, set, &spec).await?;
    let decided = plan_set(set, &spec, &observed);
    if !record(ctx, set, &decided).await? {
        tracing::debug!("the cached set is stale; waiting for the newer one");
        return Ok(Action::requeue(STALE));
    }
    let done = act(ctx, set, &spec, &observed, &decided.plan).await?;
    let expiry = ctx.expectations.next_expiry(&observed.key);
    Ok(Action::requeue(next_look(
        decided.plan.requeue_after,
        done,
        expiry,
    )))
}

/// The records finalizer goes on before the first record is created, so that no record the
/// policy keeps can be taken by garbage collection with the set; it comes off once static
/// IPs are off. Some(next) when putting it on ends this reconcile (its write brings the set
/// back).
async fn sync_finalizer(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    spec: &SetSpec,
) -> Result<Option<Action>, Error> {
    match (&spec.ip, records::has_finalizer(set)) {
        (Some(_), false) => return records::finalizer(ctx, set).await.map(Some),
        (None, true) => records::drop_finalizer(ctx, set).await?,
        _ => {}
    }
    Ok(None)
}

/// What one reconcile saw of the set's world.
struct Observed {
    /// `namespace/name`, the expectations' key.
    key: String,
    revisions: revisions::Revisions,
    /// The pods the set controls, as the planner sees them, with what this controller did
    /// that the cache may not show yet.
    pods: Vec<ObservedPod>,
    /// Each owned pod's UID by name: every delete names the incarnation it means.
    uids: HashMap<String, String>,
    /// When, in seconds: the pods' times are measured against it.
    now: i64,
}

/// Observes the set's revisions and pods. The writes here are the ones the planner's inputs
/// depend on: adoption (which pods and revisions are the set's), the update revision (a
/// pod names it before it can be created) and the claims of pods already there (a Pending
/// pod's deleted claim is made again).
async fn observe_set(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    spec: &SetSpec,
) -> Result<Observed, Error> {
    let ns = set.namespace().unwrap_or_default();
    let name = set.name_any();
    let key = format!("{ns}/{name}");
    let revisions = revisions::sync(ctx, set, &spec.selector).await?;
    let owned = adopt::claim_pods(ctx, set, &spec.selector).await?;
    claims::sync(ctx, set, &owned, &spec.identities).await?;
    let uids: HashMap<String, String> = owned
        .iter()
        .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
        .collect();
    let mut pods: Vec<_> = owned
        .iter()
        .filter_map(|p| {
            let held = spec.ip.is_some() && {
                let record = ctx.records.get(&ObjectRef::new(&p.name_any()).within(&ns));
                holds_pod(p, record.as_deref())
            };
            observe(&name, p, held)
        })
        .collect();
    let now = now();
    ctx.expectations.adjust(&key, &mut pods, &uids, now);
    Ok(Observed {
        key,
        now,
        revisions,
        pods,
        uids,
    })
}

/// What the planner decided, and the status that records it.
struct Decided {
    plan: Plan,
    status: EnhancedStatefulSetStatus,
}

/// The plan for what was observed (`ests_core::rollout::plan`) and the status it describes.
fn plan_set(set: &EnhancedStatefulSet, spec: &SetSpec, observed: &Observed) -> Decided {
    let revisions = &observed.revisions;
    let view = set_view::view(set, spec, &revisions.current, &revisions.update);
    let plan = rollout::plan(&view, &observed.pods, observed.now);
    let status = status::from_plan(
        set,
        &plan,
        &revisions.update,
        revisions.collision_count,
        spec.selector.to_string(),
    );
    Decided { plan, status }
}

/// Writes the plan's status (the identities about to be taken down among it) before any pod
/// is touched, then its counts and why pods are held. False if the set was stale: nothing
/// is done on a stale set, whose `replacing` may lack identities taken down by an earlier
/// reconcile, so a plan made from it could exceed the budget.
async fn record(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    decided: &Decided,
) -> Result<bool, Error> {
    if !status::apply(ctx, set, &decided.status).await? {
        return Ok(false);
    }
    let plan = &decided.plan;
    ctx.metrics.set_counts(
        &set.namespace().unwrap_or_default(),
        &set.name_any(),
        &plan.counts,
    );
    if !plan.held.is_empty() {
        let pods: Vec<String> = plan
            .held
            .iter()
            .map(|o| pod_name(&set.name_any(), *o))
            .collect();
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
    Ok(true)
}

/// What acting on a plan left to wait for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Done {
    /// A pod waits for its claims or its static-IP record.
    waiting: bool,
    /// A PodDisruptionBudget refused an eviction for now.
    refused: bool,
}

/// Carries out the plan's steps in order, then trims revision history.
async fn act(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    spec: &SetSpec,
    observed: &Observed,
    plan: &Plan,
) -> Result<Done, Error> {
    let mut done = Done::default();
    for step in &plan.actions {
        match step {
            Step::Create { ordinal, revision } => {
                done.waiting |= !create_pod(ctx, set, spec, observed, *ordinal, revision).await?;
            }
            Step::Delete {
                name: pod, reason, ..
            } => {
                if let Some(pod_uid) = observed.uids.get(pod) {
                    done.refused |=
                        !delete_pod(ctx, set, &observed.key, pod, pod_uid, *reason).await?;
                }
            }
        }
    }
    let in_use: BTreeSet<String> = observed.pods.iter().map(|o| o.revision.clone()).collect();
    revisions::trim(ctx, set, &observed.revisions, &in_use).await?;
    Ok(done)
}

/// When to reconcile again if nothing happens: as the plan asks (minReadySeconds, the
/// stuck grace), sooner while a pod waits or an eviction was refused, just after the first
/// expectation runs out, and at least every [`RESYNC`].
fn next_look(requeue_after: Option<i64>, done: Done, expiry: Option<Duration>) -> Duration {
    let mut next = requeue_after
        .and_then(|s| u64::try_from(s).ok())
        .map_or(RESYNC, |s| Duration::from_secs(s).min(RESYNC));
    if done.waiting {
        next = next.min(WAIT_FOR_RECORD);
    }
    if done.refused {
        next = next.min(EVICTION_RETRY);
    }
    if let Some(expiry) = expiry {
        next = next.min(expiry + Duration::from_millis(100));
    }
    next
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

/// Creates the pod of `ordinal` at `revision` (its claims and static-IP record first).
/// False if the pod has to wait for them.
async fn create_pod(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    spec: &SetSpec,
    observed: &Observed,
    ordinal: i32,
    revision: &str,
) -> Result<bool, Error> {
    let name = pod_name(&set.name_any(), ordinal);
    let Some(template) = observed.revisions.template(&set.spec.template, revision) else {
        return Err(Error::other(
            crate::INVALID,
            format!(
                "revision {revision} of {} not found; pod {name} not created",
                observed.key
            ),
        ));
    };
    let mut pod = build_pod(set, template, revision, ordinal);
    if let Err(why) = prepare(ctx, set, spec.ip.as_ref(), ordinal, &mut pod).await? {
        publish(ctx, set, EventType::Normal, why.reason, "Create", why.note).await;
        return Ok(false);
    }
    ctx.expectations
        .expect_create(&observed.key, &name, ordinal, revision);
    post_pod(ctx, set, &observed.key, &pod, revision).await?;
    Ok(true)
}

/// Why a pod waits to be created: an event's reason and note.
struct Wait {
    reason: &'static str,
    note: String,
}

/// Makes what the pod of `ordinal` needs before it exists: its claims first, so that it
/// never starts without its storage; then its static-IP record, which the pod names (it is
/// stamped with the record it was created with).
async fn prepare(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    ip: Option<&IpSettings>,
    ordinal: i32,
    pod: &mut Pod,
) -> Result<Result<(), Wait>, Error> {
    if let Claims::Wait(note) = claims::ensure(ctx, set, ordinal).await? {
        return Ok(Err(Wait {
            reason: "WaitingForClaim",
            note,
        }));
    }
    let Some(settings) = ip else {
        return Ok(Ok(()));
    };
    match records::ensure(ctx, set, settings, &pod.name_any()).await? {
        RecordState::Ready(record) => {
            stamp(pod, &record);
            if ctx.extender_binds && settings.pool.is_some() {
                request_static_ip(pod);
            }
            Ok(Ok(()))
        }
        RecordState::Wait(note) => Ok(Err(Wait {
            reason: "WaitingForStaticIP",
            note,
        })),
    }
}

/// Sends the create of `pod`; one that exists already counts as made.
async fn post_pod(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    key: &str,
    pod: &Pod,
    revision: &str,
) -> Result<(), Error> {
    let name = pod.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    match pods.create(&PostParams::default(), pod).await {
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
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
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
    if reason.hands_over_claims()
        && let Some(pod) = ctx.pods.get(&ObjectRef::new(name).within(&ns))
        && pod.uid().as_deref() == Some(uid)
    {
        claims::hand_over(ctx, set, &pod, true).await?;
    }
    ctx.expectations.expect_delete(key, uid);
    let why = reason.label();
    match send_delete(ctx, &ns, name, uid, reason).await {
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

/// The delete (an eviction, for a node migration) of the incarnation `uid` of pod `name`.
async fn send_delete(
    ctx: &Context,
    ns: &str,
    name: &str,
    uid: &str,
    reason: DeleteReason,
) -> Result<(), kube::Error> {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let evict = reason == DeleteReason::Maintenance;
    ests_runtime::watch::take_down_pod(&ctx.client, &ctx.evictions, (ns, name), evict, params).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_look_is_the_soonest_of_what_waits() {
        let none = Done::default();
        let waiting = Done {
            waiting: true,
            refused: false,
        };
        let refused = Done {
            waiting: false,
            refused: true,
        };
        let both = Done {
            waiting: true,
            refused: true,
        };
        let secs = Duration::from_secs;
        for (case, after, done, expiry, want) in [
            ("nothing to wait for: the resync", None, none, None, RESYNC),
            ("the plan's time", Some(30), none, None, secs(30)),
            (
                "never later than the resync",
                Some(10_000),
                none,
                None,
                RESYNC,
            ),
            ("a negative time is no time", Some(-5), none, None, RESYNC),
            (
                "a pod waiting for its record",
                Some(30),
                waiting,
                None,
                WAIT_FOR_RECORD,
            ),
            (
                "a refused eviction",
                Some(30),
                refused,
                None,
                EVICTION_RETRY,
            ),
            ("both: the sooner", None, both, None, WAIT_FOR_RECORD),
            (
                "just after an expectation runs out",
                Some(30),
                refused,
                Some(Duration::from_millis(400)),
                Duration::from_millis(500),
            ),
            (
                "a late expectation changes nothing",
                Some(1),
                none,
                Some(secs(60)),
                secs(1),
            ),
        ] {
            assert_eq!(next_look(after, done, expiry), want, "{case}");
        }
    }
}
