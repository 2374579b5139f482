//! `move`: carries out the steps [`crate::moving::plan_move`] decides, against two clusters.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ests_api::EnhancedStatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::moving::{MoveOptions, SetFacts, Step, plan_move};

const POLL: Duration = Duration::from_secs(1);

/// What `move` was asked.
pub struct MoveRequest<'a> {
    pub name: &'a str,
    pub options: MoveOptions,
    /// Also copy the Secrets the pod template names.
    pub template_secrets: bool,
    pub timeout: Duration,
    pub dry_run: bool,
}

async fn get_opt<K>(api: &Api<K>, name: &str) -> anyhow::Result<Option<K>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name)
        .await
        .with_context(|| format!("reading {name}"))
}

/// A copy of an object for another cluster: no identity, history, status or owners of the
/// source cluster.
fn portable<K: Serialize>(object: &K, strip_spec: &[&str]) -> anyhow::Result<Value> {
    let mut v = serde_json::to_value(object).context("serializing the object")?;
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "managedFields",
            "annotations",
            "finalizers",
            "ownerReferences",
            "selfLink",
        ] {
            meta.remove(key);
        }
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
        for key in strip_spec {
            spec.remove(*key);
        }
    }
    Ok(v)
}

async fn create_copy<K>(api: &Api<K>, name: &str, copy: Value, what: &str) -> anyhow::Result<bool>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let object: K =
        serde_json::from_value(copy).with_context(|| format!("copying {what} {name}"))?;
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(false),
        Err(e) => Err(e).with_context(|| format!("creating {what} {name} in the destination")),
    }
}

async fn wait<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Moves the boundary ordinal of `request.name` from `source` to `destination`.
pub async fn run_move(
    source: &Cluster,
    destination: &Cluster,
    request: MoveRequest<'_>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let name = request.name;
    let src_sets: Api<EnhancedStatefulSet> =
        Api::namespaced(source.client.clone(), &source.namespace);
    let dst_sets: Api<EnhancedStatefulSet> =
        Api::namespaced(destination.client.clone(), &destination.namespace);
    let set = get_opt(&src_sets, name).await?.with_context(|| {
        format!(
            "enhancedstatefulset {name} not found in the source ({})",
            source.name
        )
    })?;
    let existing = get_opt(&dst_sets, name).await?;
    let source_facts = SetFacts::of(&set)?;
    let destination_facts = existing.as_ref().map(SetFacts::of).transpose()?;
    let mut options = request.options.clone();
    if request.template_secrets {
        let deps = ests_core::karmada::get_dependencies(
            &serde_json::to_value(&set).context("serializing the set")?,
        );
        for d in deps.iter().filter(|d| d["kind"] == "Secret") {
            if let Some(n) = d["name"].as_str()
                && !options.secrets.iter().any(|s| s == n)
            {
                options.secrets.push(n.to_string());
            }
        }
    }
    let plan = plan_move(name, &source_facts, destination_facts.as_ref(), &options)
        .with_context(|| format!("moving an ordinal of {name}"))?;
    writeln!(
        out,
        "moving {} (ordinal {}) from {} to {}",
        plan.pod, plan.ordinal, source.name, destination.name
    )?;
    let total = plan.steps.len();
    for (i, step) in plan.steps.iter().enumerate() {
        writeln!(out, "[{}/{total}] {step}", i + 1)?;
        out.flush()?;
        if request.dry_run {
            continue;
        }
        execute(source, destination, &set, step, request.timeout)
            .await
            .with_context(|| format!("step {}/{total}: {step}", i + 1))?;
    }
    if request.dry_run {
        writeln!(out, "dry run: nothing changed")?;
    } else {
        writeln!(out, "{} now runs in {} only", plan.pod, destination.name)?;
    }
    Ok(())
}

async fn execute(
    source: &Cluster,
    destination: &Cluster,
    set: &EnhancedStatefulSet,
    step: &Step,
    timeout: Duration,
) -> anyhow::Result<()> {
    let name = set.name_any();
    let src_sets: Api<EnhancedStatefulSet> =
        Api::namespaced(source.client.clone(), &source.namespace);
    let dst_sets: Api<EnhancedStatefulSet> =
        Api::namespaced(destination.client.clone(), &destination.namespace);
    let src_claims: Api<PersistentVolumeClaim> =
        Api::namespaced(source.client.clone(), &source.namespace);
    let src_volumes: Api<PersistentVolume> = Api::all(source.client.clone());
    match step {
        Step::RetainClaims => {
            let patch = json!({"spec": {"persistentVolumeClaimRetentionPolicy": {"whenScaled": "Retain", "whenDeleted": "Retain"}}});
            src_sets
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .context("patching the source set")?;
        }
        Step::RetainVolumes(claims) => {
            for claim in claims {
                let Some(pvc) = get_opt(&src_claims, claim).await? else {
                    continue;
                };
                let Some(volume) = pvc.spec.as_ref().and_then(|s| s.volume_name.clone()) else {
                    bail!("PVC {claim} is not bound to a PV yet");
                };
                let patch = json!({"spec": {"persistentVolumeReclaimPolicy": "Retain"}});
                src_volumes
                    .patch(&volume, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .with_context(|| format!("patching PV {volume}"))?;
            }
        }
        Step::ScaleDownSource { replicas } => {
            // Only from the replicas the plan saw: a concurrent change fails the move.
            let patch: json_patch::Patch = serde_json::from_value(json!([
                {"op": "test", "path": "/spec/replicas", "value": replicas + 1},
                {"op": "replace", "path": "/spec/replicas", "value": replicas},
            ]))
            .context("building the scale patch")?;
            src_sets
                .patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
                .await
                .context("scaling the source down")?;
        }
        Step::WaitSourcePodGone(pod) => {
            let pods: Api<Pod> = Api::namespaced(source.client.clone(), &source.namespace);
            wait(
                &format!("pod {pod} is gone from the source"),
                timeout,
                || async { Ok(get_opt(&pods, pod).await?.is_none()) },
            )
            .await?;
        }
        Step::CopyVolumes(claims) => {
            let dst_claims: Api<PersistentVolumeClaim> =
                Api::namespaced(destination.client.clone(), &destination.namespace);
            let dst_volumes: Api<PersistentVolume> = Api::all(destination.client.clone());
            for claim in claims {
                let pvc = get_opt(&src_claims, claim)
                    .await?
                    .with_context(|| format!("PVC {claim} not found in the source"))?;
                let volume = pvc
                    .spec
                    .as_ref()
                    .and_then(|s| s.volume_name.clone())
                    .with_context(|| format!("PVC {claim} is not bound to a PV"))?;
                let pv = get_opt(&src_volumes, &volume)
                    .await?
                    .with_context(|| format!("PV {volume} not found in the source"))?;
                // The PV loses its claimRef (the claim's uid differs there) and the PVC keeps
                // volumeName, so the destination binds exactly this pair.
                create_copy(&dst_volumes, &volume, portable(&pv, &["claimRef"])?, "PV").await?;
                let mut copy = portable(&pvc, &[])?;
                copy["metadata"]["namespace"] = json!(destination.namespace);
                create_copy(&dst_claims, claim, copy, "PVC").await?;
            }
        }
        Step::CopySecrets(names) => {
            let src: Api<Secret> = Api::namespaced(source.client.clone(), &source.namespace);
            let dst: Api<Secret> =
                Api::namespaced(destination.client.clone(), &destination.namespace);
            for secret in names {
                let s = get_opt(&src, secret)
                    .await?
                    .with_context(|| format!("Secret {secret} not found in the source"))?;
                let mut copy = portable(&s, &[])?;
                copy["metadata"]["namespace"] = json!(destination.namespace);
                create_copy(&dst, secret, copy, "Secret").await?;
            }
        }
        Step::CreateDestination { start } => {
            let mut copy = portable(set, &[])?;
            copy["metadata"]["namespace"] = json!(destination.namespace);
            copy["spec"]["replicas"] = json!(0);
            copy["spec"]["ordinals"] = json!({"start": start});
            if let Some(a) = set.metadata.annotations.as_ref() {
                // Keep the set's own annotations (static IPs and the like), not kubectl's.
                let kept: serde_json::Map<String, Value> = a
                    .iter()
                    .filter(|(k, _)| !k.starts_with("kubectl.kubernetes.io/"))
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect();
                copy["metadata"]["annotations"] = Value::Object(kept);
            }
            create_copy(&dst_sets, &name, copy, "EnhancedStatefulSet").await?;
        }
        Step::ExtendDestination { start, replicas } => {
            let patch: json_patch::Patch = serde_json::from_value(json!([
                {"op": "test", "path": "/spec/replicas", "value": replicas - 1},
                {"op": "add", "path": "/spec/ordinals", "value": {"start": start}},
                {"op": "replace", "path": "/spec/replicas", "value": replicas},
            ]))
            .context("building the destination patch")?;
            dst_sets
                .patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
                .await
                .context("extending the destination")?;
        }
        Step::WaitDestinationPodReady(pod) => {
            let pods: Api<Pod> =
                Api::namespaced(destination.client.clone(), &destination.namespace);
            wait(
                &format!("pod {pod} is Ready in the destination"),
                timeout,
                || async { Ok(get_opt(&pods, pod).await?.as_ref().is_some_and(pod_ready)) },
            )
            .await?;
        }
    }
    Ok(())
}
