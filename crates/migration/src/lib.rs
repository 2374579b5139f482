//! The node-migration manager: carries out `NodeMigration` objects.
//!
//! One reconcile observes the migration, its source and target nodes, the source's IP blocks
//! and the records and pods on it ([`observe`]), asks `ests_core::migration::plan` what to do,
//! and does it ([`act`]). Every action is idempotent and leaves its trace in the cluster or
//! the status, so a manager killed at any moment resumes where it was. Automatic mode
//! ([`auto`]) creates migrations for nodes NotReady for longer than a window.
#![forbid(unsafe_code)]

pub mod auto;
pub mod hooks;
mod observe;
mod record;

use std::sync::Arc;
use std::time::Duration;

use ests_api::{
    EnhancedStatefulSet, IPBlock, MigrationPhase, NodeMigration, StaticIP, StaticIPPhase, keys,
};
use ests_core::migration::{Action as Step, plan};
use ests_core::rollout::Leave;
use ests_runtime::Reflectors;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use serde_json::json;

use crate::hooks::{Hook, HookFacts};

/// Why a reconcile failed (it is retried).
pub type Error = ests_runtime::ReconcileError;

fn kube_err(context: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let context = context.into();
    move |source| Error::kube(context, source)
}

/// How the manager is configured.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Fences a NotReady source (power-off, BMC, …). Without it only an operator's
    /// `spec.confirmFenced` fences.
    pub fence: Option<Hook>,
    /// Moves the source's CIDRs' routes to the target. Without it there is nothing to move
    /// (a CNI that follows the IPBlock objects).
    pub network: Option<Hook>,
    /// Names (and may create) a replacement node when none is named or labelled.
    pub provision: Option<Hook>,
    /// Automatic mode; off when None.
    pub auto: Option<auto::AutoSettings>,
}

/// The manager's metrics.
#[derive(Clone)]
pub struct Metrics {
    pub migrations: IntGaugeVec,
    pub actions: IntCounterVec,
    pub fence_to_done: HistogramVec,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            migrations: IntGaugeVec::new(
                Opts::new("ests_migrations", "NodeMigrations by phase"),
                &["phase"],
            )?,
            actions: IntCounterVec::new(
                Opts::new(
                    "ests_migration_actions_total",
                    "Migration actions carried out, by action and result (ok, or what went wrong)",
                ),
                &["action", "result"],
            )?,
            fence_to_done: HistogramVec::new(
                HistogramOpts::new(
                    "ests_migration_seconds",
                    "From fencing (or start, in maintenance) to completion",
                )
                .buckets(vec![5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0]),
                &["mode"],
            )?,
        };
        registry.register(Box::new(m.migrations.clone()))?;
        registry.register(Box::new(m.actions.clone()))?;
        registry.register(Box::new(m.fence_to_done.clone()))?;
        Ok(m)
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    /// For the Eviction API (see [`ests_runtime::watch::eviction_client`]): the next pass retries.
    pub evictions: Client,
    pub settings: Settings,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub nodes: Store<Node>,
    pub pods: Store<Pod>,
    pub records: Store<StaticIP>,
    pub blocks: Store<IPBlock>,
    pub sets: Store<EnhancedStatefulSet>,
    pub migrations: Store<NodeMigration>,
    listed: ests_runtime::watch::Listed,
    /// When each hook last ran: one that said no (or failed) runs again after
    /// [`HOOK_RETRY`], not on every event of the source's pods.
    hooks_run: std::sync::Mutex<hooks::Pacer>,
}

/// How soon a hook that said no, or failed, is run again for one migration.
const HOOK_RETRY: Duration = Duration::from_secs(5);

/// Runs the manager (and automatic mode if configured) until `shutdown` resolves, with the
/// watches of `reflectors` (shared with whatever else runs in the process).
pub async fn run(
    reflectors: &Reflectors,
    client: Client,
    settings: Settings,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let (nodes, node_events) = reflectors.subscribe::<Node>();
    let (pods, pod_events) = reflectors.subscribe::<Pod>();
    let (records, record_events) = reflectors.subscribe::<StaticIP>();
    let (migrations, migration_events) = reflectors.subscribe::<NodeMigration>();
    let blocks = reflectors.store::<IPBlock>();
    let sets = reflectors.store::<EnhancedStatefulSet>();
    let listed = reflectors.listed("migration");
    let evictions = ests_runtime::watch::eviction_client()
        .await
        .map_err(|e| anyhow::anyhow!("building the eviction client: {e}"))?;
    let ctx = Arc::new(Context {
        evictions,
        recorder: Recorder::new(client.clone(), Reporter::from("ests-migration")),
        client: client.clone(),
        settings: settings.clone(),
        metrics,
        nodes,
        pods,
        records,
        blocks,
        sets,
        migrations: migrations.clone(),
        listed,
        hooks_run: Default::default(),
    });
    if let Some(auto) = settings.auto.clone() {
        tokio::spawn(auto::run(ctx.clone(), auto));
    }
    // Any change of a node, pod or record looks at every unfinished migration (there are
    // few); each also looks again every second while it waits.
    let all = {
        let migrations = migrations.clone();
        move || {
            migrations
                .state()
                .into_iter()
                .filter(|m| {
                    m.status
                        .as_ref()
                        .is_none_or(|s| s.phase != MigrationPhase::Completed)
                })
                .map(|m| ObjectRef::from_obj(m.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let (a1, a2, a3) = (all.clone(), all.clone(), all);
    Controller::for_shared_stream(migration_events, migrations)
        .watches_shared_stream(node_events, move |_| a1())
        .watches_shared_stream(pod_events, move |_| a2())
        .watches_shared_stream(record_events, move |_| a3())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile");
            }
        })
        .await;
    Ok(())
}

fn error_policy(m: Arc<NodeMigration>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(migration = %m.name_any(), %error, "migration step failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

async fn publish(ctx: &Context, m: &NodeMigration, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Migrate".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &m.object_ref(&())).await {
        tracing::debug!(error = %e, "publishing an event");
    }
}

/// One reconcile, in a span naming its object: every log line of it says which cached.
#[tracing::instrument(name = "reconcile", skip_all, fields(controller = "migration", migration = %cached.name_any()))]
async fn reconcile(cached: Arc<NodeMigration>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.listed.wait().await;
    let name = cached.name_any();
    // The status is this manager's memory (fencedAt, the identities it moved): read it from
    // the API server, not from a cache that may not have seen the last write yet — planning
    // from an older status would forget progress and write it back.
    let Some(m) = Api::<NodeMigration>::all(ctx.client.clone())
        .get_opt(&name)
        .await
        .map_err(kube_err(format!("reading NodeMigration {name}")))?
    else {
        return Ok(Action::await_change());
    };
    let observed = observe::observe(&ctx, &m).await?;
    let plan = plan(&observed.facts);
    tracing::debug!(?plan, "plan");
    let mut status = m.status.clone().unwrap_or_default();
    if let Some(node) = &observed.provisioned {
        status.target_node = Some(node.clone());
        publish(
            ctx.as_ref(),
            &m,
            EventType::Normal,
            "Provisioned",
            format!("the provisioning hook named {node} as the target"),
        )
        .await;
    }
    for step in &plan.actions {
        let label = step_label(step);
        let result = act(&ctx, &m, &observed, step, &mut status).await;
        ctx.metrics
            .actions
            .with_label_values(&[label, result.as_ref().map_or_else(Error::label, |_| "ok")])
            .inc();
        if let Err(e) = result {
            // Keep what was done so far in the status; the next reconcile plans again.
            write_status(
                &ctx,
                &m,
                &mut status,
                &plan.phase,
                Some(e.to_string()),
                &observed,
            )
            .await?;
            return Err(e);
        }
    }
    write_status(
        &ctx,
        &m,
        &mut status,
        &plan.phase,
        plan.waiting.clone(),
        &observed,
    )
    .await?;
    Ok(match plan.phase {
        MigrationPhase::Completed => Action::await_change(),
        MigrationPhase::Refused => Action::requeue(Duration::from_secs(30)),
        MigrationPhase::Fencing => Action::requeue(Duration::from_secs(5)),
        _ => Action::requeue(Duration::from_secs(1)),
    })
}

fn step_label(step: &Step) -> &'static str {
    match step {
        Step::Start { .. } => "start",
        Step::Escalate => "escalate",
        Step::Fence => "fence",
        Step::MoveNetwork => "network",
        Step::MoveBlock(_) => "move-block",
        Step::MoveRecord(_) => "move-record",
        Step::Cordon => "cordon",
        Step::Taint => "taint",
        Step::ForceDelete(_) => "force-delete",
        Step::Evict(_) => "evict",
        Step::AskToLeave(..) => "ask-to-leave",
        Step::Recreate(_) => "recreate",
        Step::DeleteSource => "delete-source",
    }
}

/// Whether hook `verb` may run for migration `name` now (and notes that it does).
fn hook_due(ctx: &Context, name: &str, verb: &'static str) -> bool {
    ctx.hooks_run
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .due(name, verb, std::time::Instant::now(), HOOK_RETRY)
}

fn now() -> Time {
    Time(Timestamp::now())
}

fn split(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

/// Carries out one step, each by a function of its own; what it changes in the status
/// ([`record`]) is written with the plan's phase.
async fn act(
    ctx: &Context,
    m: &NodeMigration,
    observed: &observe::Observation,
    step: &Step,
    status: &mut ests_api::NodeMigrationStatus,
) -> Result<(), Error> {
    let source = &m.spec.source_node;
    let target = observed.facts.target.clone().unwrap_or_default();
    match step {
        Step::Start { target, mode } => {
            record::started(status, target, *mode, now());
            let note =
                format!("moving {source}'s static-IP pods and IP blocks to {target} ({mode:?})");
            publish(ctx, m, EventType::Normal, "Started", note).await;
        }
        Step::Escalate => {
            record::escalated(status);
            let note = format!(
                "{source} went NotReady during its maintenance move: moving as after a failure, nothing of it is released until it is fenced"
            );
            publish(ctx, m, EventType::Warning, "SourceNotReady", note).await;
        }
        Step::Fence => fence(ctx, m, observed, status).await,
        Step::MoveNetwork => move_network(ctx, m, observed, status).await,
        Step::MoveBlock(name) => {
            move_block(ctx, name, source, &target).await?;
            record::block_moved(status, name);
        }
        Step::MoveRecord(key) => {
            let ips = move_record(ctx, key, source, &target).await?;
            record::record_moved(status, key, ips);
        }
        Step::Cordon => cordon(ctx, source).await?,
        Step::AskToLeave(key, how) => ask_to_leave(ctx, m, key, how).await?,
        Step::Taint => taint(ctx, source).await?,
        Step::ForceDelete(key) | Step::Recreate(key) | Step::Evict(key) => {
            remove_pod(ctx, step, key).await?;
        }
        Step::DeleteSource => delete_source(ctx, m, source).await?,
    }
    Ok(())
}

/// What a hook is told of the migration.
fn hook_facts(m: &NodeMigration, observed: &observe::Observation) -> HookFacts {
    HookFacts {
        migration: m.name_any(),
        source: m.spec.source_node.clone(),
        target: Some(observed.facts.target.clone().unwrap_or_default()),
        cidrs: observed.source_cidrs.clone(),
    }
}

/// Takes the operator's confirmation or asks the fencing hook; its answer goes into the
/// status (fencedAt, the Fenced condition).
async fn fence(
    ctx: &Context,
    m: &NodeMigration,
    observed: &observe::Observation,
    status: &mut ests_api::NodeMigrationStatus,
) {
    let source = &m.spec.source_node;
    let answer = if m.spec.confirm_fenced {
        Ok("operator (spec.confirmFenced)".to_string())
    } else {
        match record::hook_turn(ctx.settings.fence.as_ref(), || {
            hook_due(ctx, &m.name_any(), "fence")
        }) {
            record::HookTurn::Run(hook) => hooks::run(hook, "fence", &hook_facts(m, observed))
                .await
                .map(|_| "fencing hook".to_string()),
            record::HookTurn::NotYet => return,
            record::HookTurn::None => Err(format!(
                "no fencing hook is configured: set spec.confirmFenced once {source} is powered off"
            )),
        }
    };
    record::fenced(status, &answer, now());
    match answer {
        Ok(by) => {
            let note = format!("{source} fenced by the {by}");
            publish(ctx, m, EventType::Normal, "Fenced", note).await;
        }
        Err(why) => publish(ctx, m, EventType::Warning, "NotFenced", why).await,
    }
}

/// Runs the network hook for the source's blocks (none configured: routes follow the
/// IPBlock objects); its answer goes into the NetworkMoved condition.
async fn move_network(
    ctx: &Context,
    m: &NodeMigration,
    observed: &observe::Observation,
    status: &mut ests_api::NodeMigrationStatus,
) {
    let answer = match record::hook_turn(ctx.settings.network.as_ref(), || {
        hook_due(ctx, &m.name_any(), "network")
    }) {
        record::HookTurn::Run(hook) => hooks::run(hook, "network", &hook_facts(m, observed))
            .await
            .map(|_| "network hook succeeded".to_string()),
        record::HookTurn::NotYet => return,
        record::HookTurn::None => {
            Ok("no network hook configured: routes follow the IPBlock objects".to_string())
        }
    };
    record::network_moved(status, &answer);
    if let Err(why) = answer {
        publish(ctx, m, EventType::Warning, "NetworkHookFailed", why).await;
    }
}

/// Moves block `name` from the source to the target, if it is still on the source.
async fn move_block(ctx: &Context, name: &str, source: &str, target: &str) -> Result<(), Error> {
    let api: Api<IPBlock> = Api::all(ctx.client.clone());
    let mut block = api
        .get(name)
        .await
        .map_err(kube_err(format!("reading IPBlock {name}")))?;
    if block.spec.node.as_deref() == Some(source) {
        block.spec.node = Some(target.to_string());
        // The update carries the resourceVersion read: a block changed meanwhile (an
        // allocation) fails here and is moved on the next pass.
        api.replace(name, &PostParams::default(), &block)
            .await
            .map_err(kube_err(format!("moving IPBlock {name} to {target}")))?;
    }
    Ok(())
}

/// Points the record `namespace/name` at the target (phase Migrating), if it is still on
/// the source; its addresses.
async fn move_record(
    ctx: &Context,
    key: &str,
    source: &str,
    target: &str,
) -> Result<Vec<String>, Error> {
    let (ns, name) = split(key);
    let api: Api<StaticIP> = Api::namespaced(ctx.client.clone(), ns);
    let record = api
        .get(name)
        .await
        .map_err(kube_err(format!("reading StaticIP {key}")))?;
    if record.spec.node.as_deref() == Some(source) {
        let patch = json!({
            "metadata": {"resourceVersion": record.resource_version()},
            "spec": {"node": target},
        });
        api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(kube_err(format!("moving StaticIP {key} to {target}")))?;
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": StaticIPPhase::Migrating}})),
        )
        .await
        .map_err(kube_err(format!("marking StaticIP {key} Migrating")))?;
    }
    Ok(record.spec.ips.iter().map(|a| a.ip.clone()).collect())
}

async fn cordon(ctx: &Context, source: &str) -> Result<(), Error> {
    Api::<Node>::all(ctx.client.clone())
        .patch(
            source,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .map_err(kube_err(format!("cordoning {source}")))?;
    Ok(())
}

/// Asks the pod `namespace/name` to leave its node, for its set's controller to evict it
/// within the set's budget.
async fn ask_to_leave(
    ctx: &Context,
    m: &NodeMigration,
    key: &str,
    how: &Leave,
) -> Result<(), Error> {
    let (ns, name) = split(key);
    let Some(pod) = ctx.pods.get(&ObjectRef::new(name).within(ns)) else {
        return Ok(());
    };
    let together = match how {
        Leave::Together(group) => Some(group.as_str()),
        Leave::Alone => None,
    };
    // The UID in the patch makes it fail (as an immutable field) on another incarnation of
    // the pod, which was never asked.
    let patch = json!({"metadata": {
        "uid": pod.uid(),
        "annotations": {keys::EVICT_FOR: m.name_any(), keys::EVICT_TOGETHER: together},
    }});
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() || s.code == 422 => Ok(()),
        Err(e) => Err(kube_err(format!("asking pod {key} to leave"))(e)),
    }
}

/// Puts the out-of-service taint on the (fenced) source, once.
async fn taint(ctx: &Context, source: &str) -> Result<(), Error> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    let mut node = api
        .get(source)
        .await
        .map_err(kube_err(format!("reading node {source}")))?;
    let spec = node.spec.get_or_insert_with(Default::default);
    let taints = spec.taints.get_or_insert_with(Vec::new);
    if taints.iter().any(|t| t.key == keys::OUT_OF_SERVICE_TAINT) {
        return Ok(());
    }
    taints.push(Taint {
        key: keys::OUT_OF_SERVICE_TAINT.into(),
        value: Some("nodeshutdown".into()),
        effect: "NoExecute".into(),
        time_added: None,
    });
    api.replace(source, &PostParams::default(), &node)
        .await
        .map_err(kube_err(format!("tainting {source} out-of-service")))?;
    Ok(())
}

/// How a step takes a pod away: evicted (a PodDisruptionBudget has its say), deleted at
/// once (its node is off), or deleted gracefully; always naming the incarnation `uid`.
fn removal(step: &Step, uid: Option<String>) -> (bool, DeleteParams) {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        grace_period_seconds: matches!(step, Step::ForceDelete(_)).then_some(0),
        ..DeleteParams::default()
    };
    (matches!(step, Step::Evict(_)), params)
}

/// Evicts, force-deletes or deletes (to re-create) the pod `namespace/name`, as `step` says.
async fn remove_pod(ctx: &Context, step: &Step, key: &str) -> Result<(), Error> {
    let (ns, name) = split(key);
    let Some(pod) = ctx.pods.get(&ObjectRef::new(name).within(ns)) else {
        return Ok(());
    };
    let (evict, params) = removal(step, pod.uid());
    let result =
        ests_runtime::watch::take_down_pod(&ctx.client, &ctx.evictions, (ns, name), evict, params)
            .await;
    match result {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => Ok(()),
        // A PodDisruptionBudget refuses the eviction for now: next pass.
        Err(kube::Error::Api(s)) if s.code == 429 => {
            tracing::info!(pod = %key, reason = %s.message, "eviction refused for now");
            Ok(())
        }
        Err(e) => Err(kube_err(format!("{} pod {key}", step_label(step)))(e)),
    }
}

/// Removes the source Node object, which holds nothing any more.
async fn delete_source(ctx: &Context, m: &NodeMigration, source: &str) -> Result<(), Error> {
    match Api::<Node>::all(ctx.client.clone())
        .delete(source, &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_not_found() => {}
        Err(e) => return Err(kube_err(format!("removing node {source}"))(e)),
    }
    let note = format!("{source} held nothing more and was removed");
    publish(ctx, m, EventType::Normal, "SourceRemoved", note).await;
    Ok(())
}

/// Records the pass in the status (phase, pods on the target, Completed), says so when the
/// migration completes or is refused, counts migrations by phase, and writes the status
/// if it changed.
async fn write_status(
    ctx: &Context,
    m: &NodeMigration,
    status: &mut ests_api::NodeMigrationStatus,
    phase: &MigrationPhase,
    waiting: Option<String>,
    observed: &observe::Observation,
) -> Result<(), Error> {
    let was = m.status.as_ref().map(|s| s.phase);
    if record::settle(
        status,
        *phase,
        waiting.as_deref(),
        &observed.facts.records,
        now(),
    ) {
        completed(ctx, m, status).await;
    }
    if *phase == MigrationPhase::Refused && was != Some(MigrationPhase::Refused) {
        publish(
            ctx,
            m,
            EventType::Warning,
            "Refused",
            waiting.clone().unwrap_or_default(),
        )
        .await;
    }
    count_phases(ctx, m, status);
    if m.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<NodeMigration> = Api::all(ctx.client.clone());
    api.patch_status(
        &m.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .map_err(kube_err(format!(
        "writing the status of NodeMigration {}",
        m.name_any()
    )))?;
    Ok(())
}

/// The migration completed with this pass: its duration and an event.
async fn completed(ctx: &Context, m: &NodeMigration, status: &ests_api::NodeMigrationStatus) {
    if let Some(from) = record::clock_start(status) {
        let seconds = (Timestamp::now().as_millisecond() - from.0.as_millisecond()) as f64 / 1e3;
        ctx.metrics
            .fence_to_done
            .with_label_values(&[record::mode_label(status)])
            .observe(seconds);
    }
    let note = format!(
        "{} static-IP pods run on {}",
        status.pods.len(),
        status.target_node.clone().unwrap_or_default()
    );
    publish(ctx, m, EventType::Normal, "Completed", note).await;
}

/// Migrations by phase, from the cache (this one as it is about to be written).
fn count_phases(ctx: &Context, m: &NodeMigration, status: &ests_api::NodeMigrationStatus) {
    for phase in [
        MigrationPhase::Pending,
        MigrationPhase::Fencing,
        MigrationPhase::Moving,
        MigrationPhase::Completed,
        MigrationPhase::Refused,
    ] {
        let count = ctx
            .migrations
            .state()
            .iter()
            .filter(|o| {
                let current = if o.name_any() == m.name_any() {
                    Some(status.phase)
                } else {
                    o.status.as_ref().map(|s| s.phase)
                };
                current.unwrap_or_default() == phase
            })
            .count();
        ctx.metrics
            .migrations
            .with_label_values(&[&format!("{phase:?}")])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_removal_names_the_incarnation_and_only_a_force_delete_skips_the_grace() {
        let key = || "ns/web-0".to_string();
        for (step, evict, grace) in [
            (Step::Evict(key()), true, None),
            (Step::ForceDelete(key()), false, Some(0)),
            (Step::Recreate(key()), false, None),
        ] {
            let (evicts, params) = removal(&step, Some("uid-0".into()));
            assert_eq!(evicts, evict, "{step:?}");
            assert_eq!(params.grace_period_seconds, grace, "{step:?}");
            assert_eq!(
                params.preconditions.and_then(|p| p.uid).as_deref(),
                Some("uid-0"),
                "{step:?}"
            );
        }
    }
}
