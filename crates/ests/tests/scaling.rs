//! Identities and scaling on the real control plane: both pod management policies, start
//! ordinals, reserved ordinals, PVCs per ordinal, garbage collection, and the scale
//! subresource under kubectl and a HorizontalPodAutoscaler.

mod support;

use std::time::Duration;

use ests_testenv::{InvariantChecker, LogsOnFailure, PodMonitor, wait_for};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;
use support::*;

const T: Duration = Duration::from_secs(120);

async fn pod_names(env: &Env, ns: &str, selector: &str) -> anyhow::Result<Vec<String>> {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let mut names: Vec<String> = api
        .list(&ListParams::default().labels(selector))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name)
        .collect();
    names.sort_by_key(|n| n.rsplit('-').next().and_then(|o| o.parse::<i32>().ok()));
    Ok(names)
}

async fn scale_up_and_down(policy: &str, ns: &str) -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let sets = namespace(&env, ns).await?;
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let name = "scaled";
    let monitor = PodMonitor::start(env.client.clone(), ns, "app=scaled", vec![]).await?;
    apply(&env, ns, &simple_set(name, 6, policy, 1)).await?;
    wait_status(&sets, name, "6 ready", T, |s| s.ready_replicas == 6).await?;
    patch(&sets, name, json!({"spec": {"replicas": 10}})).await?;
    wait_status(&sets, name, "10 ready", T, |s| {
        s.ready_replicas == 10 && s.replicas == 10
    })
    .await?;
    if policy == "OrderedReady" {
        assert_eq!(
            monitor.created(),
            names(name, 0..10),
            "created one at a time, in order"
        );
    }
    monitor.reset(vec![]);
    patch(&sets, name, json!({"spec": {"replicas": 3}})).await?;
    wait_status(&sets, name, "3 left", T, |s| {
        s.replicas == 3 && s.ready_replicas == 3
    })
    .await?;
    wait_for("pods 3..9 gone", T, || async {
        Ok((pod_names(&env, ns, "app=scaled").await? == names(name, 0..3)).then_some(()))
    })
    .await?;
    if policy == "OrderedReady" {
        assert_eq!(
            monitor.deleted(),
            names(name, (3..10).rev()),
            "scaled in from the top"
        );
    }
    checker.finish()
}

#[tokio::test]
async fn ordered_ready_scales_in_order() -> anyhow::Result<()> {
    scale_up_and_down("OrderedReady", "scale-ordered").await
}

#[tokio::test]
async fn parallel_scales_all_at_once() -> anyhow::Result<()> {
    scale_up_and_down("Parallel", "scale-parallel").await
}

#[tokio::test]
async fn start_ordinal_and_reserved_ordinals_choose_the_identities() -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "ordinals";
    let sets = namespace(&env, ns).await?;
    let mut set = simple_set("late", 1, "Parallel", 1);
    set["spec"]["ordinals"] = json!({"start": 5});
    apply(&env, ns, &set).await?;
    wait_status(&sets, "late", "1 ready", T, |s| s.ready_replicas == 1).await?;
    assert_eq!(pod_names(&env, ns, "app=late").await?, ["late-5"]);

    // Scale in a chosen pod: reserve ordinal 2 and lower replicas by one.
    apply(&env, ns, &simple_set("chosen", 5, "Parallel", 1)).await?;
    wait_status(&sets, "chosen", "5 ready", T, |s| s.ready_replicas == 5).await?;
    patch(
        &sets,
        "chosen",
        json!({"spec": {"replicas": 4, "reserveOrdinals": [2]}}),
    )
    .await?;
    wait_for("chosen-2 gone, others kept", T, || async {
        let names = pod_names(&env, ns, "app=chosen").await?;
        Ok((names == ["chosen-0", "chosen-1", "chosen-3", "chosen-4"]).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn claims_are_created_per_ordinal_and_kept_on_scale_in() -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "claims";
    let sets = namespace(&env, ns).await?;
    let mut set = sample("storage-ordinals.yaml");
    set["spec"]["persistentVolumeClaimRetentionPolicy"] =
        json!({"whenScaled": "Retain", "whenDeleted": "Retain"});
    set["spec"]["minReadySeconds"] = json!(0);
    apply(&env, ns, &set).await?;
    let name = "storage-ordinals";
    wait_status(&sets, name, "3 ready", T, |s| s.ready_replicas == 3).await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), ns);
    let bound = |want: Vec<&'static str>| {
        let claims = claims.clone();
        async move {
            let list = claims.list(&ListParams::default()).await?;
            let mut bound: Vec<String> = list
                .items
                .into_iter()
                .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
                .filter_map(|c| c.metadata.name)
                .collect();
            bound.sort();
            anyhow::Ok((bound == want).then_some(()))
        }
    };
    let all = vec![
        "data-storage-ordinals-10",
        "data-storage-ordinals-11",
        "data-storage-ordinals-13",
    ];
    wait_for("one bound claim per identity", T, || bound(all.clone())).await?;
    patch(&sets, name, json!({"spec": {"replicas": 1}})).await?;
    wait_status(&sets, name, "1 left", T, |s| s.replicas == 1).await?;
    wait_for(
        "claims kept after scale-in",
        Duration::from_secs(10),
        || bound(all.clone()),
    )
    .await?;

    // whenScaled: Delete hands the claims of scaled-in pods to the pods, which take them along.
    patch(&sets, name, json!({"spec": {"replicas": 3, "persistentVolumeClaimRetentionPolicy": {"whenScaled": "Delete"}}})).await?;
    wait_status(&sets, name, "3 again", T, |s| s.ready_replicas == 3).await?;
    patch(&sets, name, json!({"spec": {"replicas": 1}})).await?;
    wait_for("claims of scaled-in pods deleted", T, || {
        bound(vec!["data-storage-ordinals-10"])
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn deleting_the_set_collects_its_pods() -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "collect";
    let sets = namespace(&env, ns).await?;
    apply(&env, ns, &simple_set("gone", 3, "Parallel", 1)).await?;
    wait_status(&sets, "gone", "3 ready", T, |s| s.ready_replicas == 3).await?;
    sets.delete("gone", &DeleteParams::background()).await?;
    wait_for("pods garbage-collected", T, || async {
        Ok(pod_names(&env, ns, "app=gone")
            .await?
            .is_empty()
            .then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn kubectl_scale_and_an_autoscaler_use_the_scale_subresource() -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "scale-sub";
    let sets = namespace(&env, ns).await?;
    apply(&env, ns, &simple_set("elastic", 1, "Parallel", 1)).await?;
    wait_status(&sets, "elastic", "1 ready", T, |s| s.ready_replicas == 1).await?;
    let s = sets.get("elastic").await?.status.unwrap_or_default();
    assert_eq!(s.label_selector.as_deref(), Some("app=elastic"));

    let kubectl = env.plane.bin.join("kubectl");
    let out = std::process::Command::new(&kubectl)
        .args(["scale", "ests/elastic", "--replicas=2", "-n", ns])
        .env("KUBECONFIG", &env.plane.kubeconfig)
        .output()?;
    assert!(
        out.status.success(),
        "kubectl scale: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_status(&sets, "elastic", "2 ready", T, |s| s.ready_replicas == 2).await?;

    // An autoscaler whose minimum is above the current count raises it through /scale.
    let hpa = json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "elastic"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet", "name": "elastic"},
            "minReplicas": 4,
            "maxReplicas": 5,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]
        }
    });
    apply(&env, ns, &hpa).await?;
    wait_for(
        "the autoscaler to raise replicas to its minimum",
        Duration::from_secs(90),
        || async { Ok((sets.get("elastic").await?.spec.replicas == 4).then_some(())) },
    )
    .await?;
    wait_status(&sets, "elastic", "4 ready", T, |s| s.ready_replicas == 4).await?;
    Ok(())
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

#[tokio::test]
async fn wide_reserved_ranges_cost_the_controller_no_memory() -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "scale-reserved-cost";
    let sets = namespace(&env, ns).await?;
    apply(&env, ns, &simple_set("warm", 1, "Parallel", 1)).await?;
    wait_status(&sets, "warm", "1 ready", T, |s| s.ready_replicas == 1).await?;
    let pid = env
        .plane
        .pid("ests-controller")
        .ok_or_else(|| anyhow::anyhow!("the controller is not running"))?;
    let before = rss(pid)?;
    // What any user who may edit sets in one namespace can write: 100 ranges of 100,000
    // ordinals each (ten million reserved ordinals) beside three identities.
    let mut set = simple_set("wide", 3, "Parallel", 1);
    let ranges: Vec<String> = (0..100)
        .map(|i| {
            let low = 1_000_000 + i * 200_000;
            format!("{low}-{}", low + 99_999)
        })
        .collect();
    set["spec"]["reserveOrdinals"] = json!(ranges);
    apply(&env, ns, &set).await?;
    wait_status(&sets, "wide", "3 ready", T, |s| s.ready_replicas == 3).await?;
    let names = pod_names(&env, ns, "app=wide").await?;
    assert_eq!(names, ["wide-0", "wide-1", "wide-2"]);
    let after = rss(pid)?;
    let grown = after.saturating_sub(before);
    assert!(
        grown < 40 << 20,
        "the controller grew by {} MiB ({} -> {} MiB) for one set's reserved ranges",
        grown >> 20,
        before >> 20,
        after >> 20
    );
    Ok(())
}

#[tokio::test]
async fn every_pod_created_or_deleted_is_one_event_naming_that_pod() -> anyhow::Result<()> {
    use k8s_openapi::api::events::v1::Event;
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "pod-events";
    let sets = namespace(&env, ns).await?;
    apply(&env, ns, &simple_set("told", 4, "Parallel", 1)).await?;
    wait_status(&sets, "told", "4 ready", T, |s| s.ready_replicas == 4).await?;
    patch(&sets, "told", json!({"spec": {"replicas": 2}})).await?;
    wait_status(&sets, "told", "2 left", T, |s| s.replicas == 2).await?;
    let events: Api<Event> = Api::namespaced(env.client.clone(), ns);
    // reason -> (pod the event names as related, its note, how often it happened)
    let seen = |reason: &'static str| {
        let events = events.clone();
        async move {
            let mut about: Vec<(String, String, i32)> = events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some(reason))
                .map(|e| {
                    let pod = e.related.and_then(|r| r.name).unwrap_or_default();
                    let count = e.series.map_or(1, |s| s.count);
                    (pod, e.note.unwrap_or_default(), count)
                })
                .collect();
            about.sort();
            anyhow::Ok(about)
        }
    };
    let created = wait_for("one SuccessfulCreate event per pod", T, || async {
        let about = seen("SuccessfulCreate").await?;
        Ok((about.len() == 4).then_some(about))
    })
    .await?;
    for ((pod, note, count), want) in created.iter().zip(names("told", 0..4)) {
        assert_eq!(pod, &want, "{created:?}");
        assert!(note.contains(&want), "{note}");
        assert_eq!(*count, 1, "{pod} created once: {created:?}");
    }
    let deleted = wait_for(
        "one SuccessfulDelete event per scaled-in pod",
        T,
        || async {
            let about = seen("SuccessfulDelete").await?;
            Ok((about.len() == 2).then_some(about))
        },
    )
    .await?;
    let pods: Vec<&str> = deleted.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(pods, ["told-2", "told-3"], "{deleted:?}");
    Ok(())
}

/// Upstream's OrderedReady scale-in halts while any pod of the set is unhealthy; it goes on,
/// from the top, once the pod is Ready again.
#[tokio::test]
async fn ordered_ready_scale_in_halts_while_a_pod_is_unready() -> anyhow::Result<()> {
    use kube::api::{Patch, PatchParams};
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "scale-halt";
    let sets = namespace(&env, ns).await?;
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let name = "halt";
    apply(&env, ns, &simple_set(name, 3, "OrderedReady", 1)).await?;
    wait_status(&sets, name, "3 ready", T, |s| s.ready_replicas == 3).await?;
    let monitor = PodMonitor::start(env.client.clone(), ns, "app=halt", names(name, 0..3)).await?;

    // Pod 1 goes unready (KWOK leaves a Running pod's status alone).
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let readiness = |ready: bool| {
        let status = if ready { "True" } else { "False" };
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        Patch::Strategic(json!({"status": {"conditions": [
            {"type": "Ready", "status": status, "lastTransitionTime": now},
            {"type": "ContainersReady", "status": status, "lastTransitionTime": now},
        ]}}))
    };
    pods.patch_status("halt-1", &PatchParams::default(), &readiness(false))
        .await?;
    wait_status(&sets, name, "pod 1 seen unready", T, |s| {
        s.ready_replicas == 2
    })
    .await?;

    patch(&sets, name, json!({"spec": {"replicas": 1}})).await?;
    wait_status(&sets, name, "the scale-in seen", T, |_| true).await?;
    let early = wait_for(
        "a pod scaled in while pod 1 is unready (must not happen)",
        Duration::from_secs(8),
        || async {
            let left = pod_names(&env, ns, "app=halt").await?;
            Ok((left.len() < 3).then_some(()))
        },
    )
    .await;
    assert!(early.is_err(), "scale-in went on past an unready pod");
    assert!(monitor.deleted().is_empty(), "{:?}", monitor.deleted());

    pods.patch_status("halt-1", &PatchParams::default(), &readiness(true))
        .await?;
    wait_for("pods 1 and 2 gone", T, || async {
        Ok((pod_names(&env, ns, "app=halt").await? == names(name, 0..1)).then_some(()))
    })
    .await?;
    assert_eq!(
        monitor.deleted(),
        names(name, [2, 1]),
        "scaled in from the top"
    );
    checker.finish()
}
