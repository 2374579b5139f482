//! The rollout and scale-in commands: read the set, ask the pure modules, write one patch.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ests_api::{EnhancedStatefulSet, UpdateStrategyType};
use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::history::{self, CHANGE_CAUSE};
use crate::progress::rollout_progress;
use crate::scale_in::scale_in;

/// The pod-template annotation `rollout restart` sets, as kubectl does.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// How often `rollout status` reads the set.
const POLL: Duration = Duration::from_secs(1);
/// How long a command waits for the controller to name the new revision, to record the
/// change cause on it.
const STAMP_WAIT: Duration = Duration::from_secs(30);

fn sets(cluster: &Cluster) -> Api<EnhancedStatefulSet> {
    Api::namespaced(cluster.client.clone(), &cluster.namespace)
}

async fn get(cluster: &Cluster, name: &str) -> anyhow::Result<EnhancedStatefulSet> {
    sets(cluster).get(name).await.with_context(|| {
        format!(
            "reading enhancedstatefulset {name} in namespace {} ({})",
            cluster.namespace, cluster.name
        )
    })
}

/// JSON-pointer escaping of one path segment.
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// A JSON-patch operation that sets annotation `key` of the object at `base` (which has
/// `existing` annotations, or none).
fn annotation_op(base: &str, existing: bool, key: &str, value: &str) -> Value {
    if existing {
        json!({"op": "add", "path": format!("{base}/annotations/{}", escape(key)), "value": value})
    } else {
        json!({"op": "add", "path": format!("{base}/annotations"), "value": {key: value}})
    }
}

async fn json_patch(
    cluster: &Cluster,
    name: &str,
    ops: Vec<Value>,
    what: &str,
) -> anyhow::Result<EnhancedStatefulSet> {
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))
        .with_context(|| format!("building the patch to {what}"))?;
    sets(cluster)
        .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
        .with_context(|| format!("patching {name} to {what}"))
}

/// `rollout status`: waits until every pod at or above the partition is updated and
/// Available. Fails when `timeout` (zero: never) passes first.
pub async fn status(
    cluster: &Cluster,
    name: &str,
    watch: bool,
    timeout: Duration,
    out: &mut dyn Write,
    tty: bool,
) -> anyhow::Result<()> {
    let deadline = (!timeout.is_zero()).then(|| Instant::now() + timeout);
    let mut last = String::new();
    loop {
        let set = get(cluster, name).await?;
        let progress = rollout_progress(&set).with_context(|| format!("set {name}"))?;
        let message = progress.message(name);
        if tty {
            write!(out, "\r\x1b[2K{} {}", progress.bar(30), message)?;
            if progress.done || !watch {
                writeln!(out)?;
            }
        } else if message != last {
            writeln!(out, "{message}")?;
        }
        out.flush()?;
        last = message;
        if progress.done || !watch {
            return Ok(());
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            if tty {
                writeln!(out)?;
            }
            bail!(
                "timed out after {timeout:?} waiting for the rollout of {name}: {}",
                last
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn revisions(
    cluster: &Cluster,
    set: &EnhancedStatefulSet,
) -> anyhow::Result<Vec<history::Revision>> {
    let api: Api<ControllerRevision> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let list = api
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing controllerrevisions in {}", cluster.namespace))?;
    Ok(history::owned_revisions(
        &set.uid().unwrap_or_default(),
        &list.items,
    ))
}

/// `rollout history`: the revisions with their change causes, or one revision's template.
pub async fn history(
    cluster: &Cluster,
    name: &str,
    revision: Option<i64>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let set = get(cluster, name).await?;
    let history = revisions(cluster, &set).await?;
    let status = set.status.clone().unwrap_or_default();
    let set_cause = set.annotations().get(CHANGE_CAUSE).cloned();
    if let Some(n) = revision {
        let r = history
            .iter()
            .find(|r| r.number == n)
            .with_context(|| format!("unable to find revision {n} of {name}"))?;
        writeln!(out, "enhancedstatefulset/{name} with revision #{n}")?;
        writeln!(
            out,
            "Change-Cause: {}",
            history::change_cause(r, status.update_revision.as_deref(), set_cause.as_deref())
        )?;
        let template =
            serde_json::to_string_pretty(&r.template).context("printing the template")?;
        writeln!(out, "Pod Template:\n{template}")?;
        return Ok(());
    }
    writeln!(out, "enhancedstatefulset/{name}")?;
    writeln!(
        out,
        "{:<10} {:<14} {:<15} CHANGE-CAUSE",
        "REVISION", "HASH", "STATE"
    )?;
    for r in &history {
        let mut state = Vec::new();
        if status.update_revision.as_deref() == Some(r.hash.as_str()) {
            state.push("update");
        }
        if status.current_revision.as_deref() == Some(r.hash.as_str()) {
            state.push("current");
        }
        let state = if state.is_empty() {
            "-".to_string()
        } else {
            state.join(",")
        };
        writeln!(
            out,
            "{:<10} {:<14} {:<15} {}",
            r.number,
            r.hash,
            state,
            history::change_cause(r, status.update_revision.as_deref(), set_cause.as_deref())
        )?;
    }
    Ok(())
}

/// Records `cause` on the revision the controller makes for `generation`: the controller
/// does not copy annotations onto revisions. Best effort, bounded.
async fn stamp_revision(cluster: &Cluster, name: &str, generation: Option<i64>, cause: &str) {
    let started = Instant::now();
    while started.elapsed() < STAMP_WAIT {
        if let Ok(set) = get(cluster, name).await
            && let Some(status) = set.status.as_ref()
            && status.observed_generation >= generation
            && let Some(hash) = status.update_revision.as_deref()
        {
            let api: Api<ControllerRevision> =
                Api::namespaced(cluster.client.clone(), &cluster.namespace);
            let revision = ests_core::revision::revision_name(name, hash);
            let patch = json!({"metadata": {"annotations": {CHANGE_CAUSE: cause}}});
            if let Err(e) = api
                .patch(&revision, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                eprintln!("warning: could not record the change cause on {revision}: {e}");
            }
            return;
        }
        tokio::time::sleep(POLL).await;
    }
    eprintln!(
        "warning: the controller named no new revision of {name} within {STAMP_WAIT:?}; the change cause is on the set only"
    );
}

/// `rollout undo`: puts the template of revision `to_revision` (0: the previous one) back.
pub async fn undo(
    cluster: &Cluster,
    name: &str,
    to_revision: i64,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let set = get(cluster, name).await?;
    let history = revisions(cluster, &set).await?;
    let target = history::undo_target(&history, &set.spec.template, to_revision)
        .with_context(|| format!("undoing the rollout of {name}"))?;
    let cause = format!("kubectl ests rollout undo --to-revision {}", target.number);
    let ops = vec![
        json!({"op": "test", "path": "/metadata/resourceVersion", "value": set.resource_version()}),
        json!({"op": "replace", "path": "/spec/template", "value": target.template}),
        annotation_op(
            "/metadata",
            set.metadata.annotations.is_some(),
            CHANGE_CAUSE,
            &cause,
        ),
    ];
    let updated = json_patch(cluster, name, ops, "roll back").await?;
    writeln!(
        out,
        "enhancedstatefulset/{name} rolled back to revision {}",
        target.number
    )?;
    stamp_revision(cluster, name, updated.metadata.generation, &cause).await;
    Ok(())
}

/// `rollout pause` and `rollout resume`.
pub async fn set_paused(
    cluster: &Cluster,
    name: &str,
    paused: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let set = get(cluster, name).await?;
    if set.spec.update_strategy_type() == UpdateStrategyType::OnDelete {
        bail!("{name} uses the OnDelete strategy: there is no rollout to pause or resume");
    }
    let now = set.spec.rolling_update().unwrap_or_default().paused;
    let verb = if paused { "paused" } else { "resumed" };
    if now == paused {
        bail!(
            "enhancedstatefulset/{name} is already {}",
            if paused { "paused" } else { "not paused" }
        );
    }
    let patch = json!({"spec": {"updateStrategy": {"rollingUpdate": {"paused": paused}}}});
    sets(cluster)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("patching {name} to set paused={paused}"))?;
    writeln!(out, "enhancedstatefulset/{name} {verb}")?;
    Ok(())
}

/// `rollout restart`: a new template annotation, so every pod is replaced by a rolling update.
pub async fn restart(cluster: &Cluster, name: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let set = get(cluster, name).await?;
    if set.spec.rolling_update().is_some_and(|r| r.paused) {
        bail!("can't restart paused enhancedstatefulset/{name} (run rollout resume first)");
    }
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let cause = "kubectl ests rollout restart";
    let patch = json!({
        "metadata": {"annotations": {CHANGE_CAUSE: cause}},
        "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}
    });
    let updated = sets(cluster)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("patching {name} to restart it"))?;
    writeln!(out, "enhancedstatefulset/{name} restarted")?;
    stamp_revision(cluster, name, updated.metadata.generation, cause).await;
    Ok(())
}

/// `scale-in`: reserves the pods' ordinals and lowers replicas, in one patch that fails if
/// the set changed since it was read.
pub async fn scale_in_pods(
    cluster: &Cluster,
    name: &str,
    pods: &[String],
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let set = get(cluster, name).await?;
    let change = scale_in(name, &set.spec, pods).with_context(|| format!("scaling in {name}"))?;
    let ops = vec![
        json!({"op": "test", "path": "/metadata/resourceVersion", "value": set.resource_version()}),
        json!({"op": "replace", "path": "/spec/replicas", "value": change.replicas}),
        json!({"op": "add", "path": "/spec/reserveOrdinals", "value": change.reserve_ordinals}),
    ];
    json_patch(cluster, name, ops, "scale in").await?;
    writeln!(
        out,
        "enhancedstatefulset/{name} scaled in: removed ordinals {:?}, {} replicas remain ({:?})",
        change.removed, change.replicas, change.remaining
    )?;
    Ok(())
}
