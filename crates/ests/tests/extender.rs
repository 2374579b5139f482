//! The scheduler extender wired into the real kube-scheduler: re-created static-IP pods land
//! back on their record's node even without the webhook's affinity pin, and ordinary pods
//! are scheduled (and bound by the default binder) as before.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use ests_api::{StaticIP, StaticIPPhase, keys};
use ests_testenv::nodes::{NodeSpec, create_nodes};
use ests_testenv::{InvariantChecker, LogsOnFailure, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use support::*;

const T: Duration = Duration::from_secs(120);

/// Taken by the burst test and the gap test: the burst floods the scheduler and the
/// extender, and the gap test deletes its static-IP pod right after the API shows the record
/// Bound — the extender's record watch, lagging its pod watch under that load, can see the
/// pod go before the record is Bound and keep no room (an ordering race between two watches
/// that this does not fix; see the closing note of this change).
static SCHEDULER_LOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts `ests extender` and restarts kube-scheduler with it configured (once per binary).
async fn with_extender(env: &Env) -> anyhow::Result<()> {
    static STARTED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    STARTED
        .get_or_try_init(|| async { start_extender(env.plane, false).await.map(|_| ()) })
        .await
        .map(|_| ())
}

async fn record_nodes(env: &Env, ns: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let api: Api<StaticIP> = Api::namespaced(env.client.clone(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|r| {
            r.status
                .as_ref()
                .is_some_and(|s| s.phase == StaticIPPhase::Bound)
        })
        .filter_map(|r| Some((r.name_any(), r.spec.node.clone()?)))
        .collect())
}

async fn pod_nodes(
    env: &Env,
    ns: &str,
    selector: &str,
) -> anyhow::Result<BTreeMap<String, (String, String)>> {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    Ok(api
        .list(&ListParams::default().labels(selector))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let node = p.spec.as_ref()?.node_name.clone()?;
            Some((p.name_any(), (p.uid()?, node)))
        })
        .collect())
}

#[tokio::test]
async fn pinned_pods_land_on_their_node_and_ordinary_pods_still_schedule() -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    with_extender(&env).await?;
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let ns = "ext-pin";
    let sets = namespace(&env, ns).await?;
    let mut set = simple_set("pinned", 9, "Parallel", 3);
    set["metadata"]["annotations"] = json!({keys::STATIC_IP_ENABLE: "true"});
    apply(&env, ns, &set).await?;
    wait_status(&sets, "pinned", "9 ready", T, |s| s.ready_replicas == 9).await?;
    let homes = wait_for("9 records Bound", T, || async {
        let homes = record_nodes(&env, ns).await?;
        Ok((homes.len() == 9).then_some(homes))
    })
    .await?;
    let spread: std::collections::BTreeSet<_> = homes.values().collect();
    assert!(spread.len() > 1, "records on several nodes: {homes:?}");

    // Re-created without the webhook's affinity pin: only the extender sends them home.
    let before = pod_nodes(&env, ns, "app=pinned").await?;
    Api::<Pod>::namespaced(env.client.clone(), ns)
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("app=pinned"),
        )
        .await?;
    let after = wait_for("9 pods re-created and scheduled", T, || async {
        let now = pod_nodes(&env, ns, "app=pinned").await?;
        let fresh = now.len() == 9
            && now
                .iter()
                .all(|(n, (uid, _))| before.get(n).is_none_or(|(old, _)| old != uid));
        Ok(fresh.then_some(now))
    })
    .await?;
    for (name, (_, node)) in &after {
        assert_eq!(
            Some(node),
            homes.get(name),
            "{name} back on its record's node"
        );
    }

    // An ordinary pod is scheduled and bound by the default binder.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    ordinary_pod_is_bound(&pods, json!({})).await?;
    checker.finish()
}

#[tokio::test]
async fn a_pod_created_in_the_gap_does_not_take_a_static_ip_pods_room() -> anyhow::Result<()> {
    let _alone = SCHEDULER_LOAD.lock().await;
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    with_extender(&env).await?;
    let ns = "ext-reserve";
    // A node with room for one 600m pod, kept for this test's pods.
    create_nodes(
        &env.client,
        &[NodeSpec::new("ext-tiny")
            .capacity("1", "2Gi", "10")
            .owned_by(ns)],
    )
    .await?;
    let sets = namespace(&env, ns).await?;
    let placement = json!({
        "nodeSelector": {"kubernetes.io/hostname": "ext-tiny"},
        "tolerations": [{"key": "ests.test/owner", "operator": "Equal", "value": ns, "effect": "NoSchedule"}]
    });
    let mut set = simple_set("db", 1, "Parallel", 1);
    set["metadata"]["annotations"] = json!({keys::STATIC_IP_ENABLE: "true"});
    set["spec"]["template"]["spec"]["containers"][0]["resources"] =
        json!({"requests": {"cpu": "600m"}});
    if let (Some(spec), Some(extra)) = (
        set["spec"]["template"]["spec"].as_object_mut(),
        placement.as_object(),
    ) {
        spec.extend(extra.clone());
    }
    apply(&env, ns, &set).await?;
    wait_status(&sets, "db", "1 ready", T, |s| s.ready_replicas == 1).await?;
    wait_for("db-0's record Bound on ext-tiny", T, || async {
        Ok((record_nodes(&env, ns)
            .await?
            .get("db-0")
            .map(String::as_str)
            == Some("ext-tiny"))
        .then_some(()))
    })
    .await?;

    // A competitor that needs the same room waits for it, first in line.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let mut competitor = json!({
        "metadata": {"name": "competitor"},
        "spec": {"containers": [{"name": "app", "image": "app:v1", "resources": {"requests": {"cpu": "600m"}}}]}
    });
    if let (Some(spec), Some(extra)) = (competitor["spec"].as_object_mut(), placement.as_object()) {
        spec.extend(extra.clone());
    }
    pods.create(&PostParams::default(), &serde_json::from_value(competitor)?)
        .await?;
    let old = pods.get("db-0").await?.uid();
    // The static-IP pod is re-created: its room is kept for it.
    pods.delete("db-0", &DeleteParams::default()).await?;
    let back = wait_for("db-0 back on ext-tiny", T, || async {
        let pod = pods.get_opt("db-0").await?;
        let back = pod
            .filter(|p| p.uid() != old)
            .and_then(|p| p.spec?.node_name);
        Ok((back.as_deref() == Some("ext-tiny")).then_some(()))
    })
    .await;
    if let Err(e) = back {
        let show = |p: Option<Pod>| {
            p.map(|p| {
                format!(
                    "node {:?}, conditions {:?}",
                    p.spec.and_then(|s| s.node_name),
                    p.status.and_then(|s| s.conditions)
                )
            })
        };
        anyhow::bail!(
            "{e}\ndb-0: {:?}\ncompetitor: {:?}",
            show(pods.get_opt("db-0").await?),
            show(pods.get_opt("competitor").await?)
        );
    }
    let competitor = pods.get("competitor").await?;
    assert_eq!(
        competitor.spec.and_then(|s| s.node_name),
        None,
        "the competitor did not take the static-IP pod's room"
    );
    pods.delete("competitor", &DeleteParams::default()).await?;
    Ok(())
}

#[tokio::test]
async fn a_burst_of_ordinary_pods_leaves_a_static_ip_pods_room() -> anyhow::Result<()> {
    let _alone = SCHEDULER_LOAD.lock().await;
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    with_extender(&env).await?;
    let ns = "ext-burst";
    // 4 CPUs: the static-IP pod keeps 1, so 30 ordinary 100m pods fit beside its room.
    create_nodes(
        &env.client,
        &[NodeSpec::new("ext-burst")
            .capacity("4", "64Gi", "110")
            .owned_by(ns)],
    )
    .await?;
    let sets = namespace(&env, ns).await?;
    let tolerations = json!([{"key": "ests.test/owner", "operator": "Equal", "value": ns, "effect": "NoSchedule"}]);
    let mut set = simple_set("db", 1, "Parallel", 1);
    set["metadata"]["annotations"] = json!({keys::STATIC_IP_ENABLE: "true"});
    let spec = &mut set["spec"]["template"]["spec"];
    spec["containers"][0]["resources"] = json!({"requests": {"cpu": "1"}});
    spec["nodeSelector"] = json!({"kubernetes.io/hostname": "ext-burst"});
    spec["tolerations"] = tolerations.clone();
    apply(&env, ns, &set).await?;
    wait_status(&sets, "db", "1 ready", T, |s| s.ready_replicas == 1).await?;
    wait_for("db-0's record Bound on ext-burst", T, || async {
        Ok((record_nodes(&env, ns)
            .await?
            .get("db-0")
            .map(String::as_str)
            == Some("ext-burst"))
        .then_some(()))
    })
    .await?;

    // A template db-0 cannot be scheduled with: it is re-created and stays Pending, and its
    // record keeps its room on ext-burst for as long as the burst lasts.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let old = pods.get("db-0").await?.uid();
    patch(
        &sets,
        "db",
        json!({"spec": {"template": {"spec": {"nodeSelector": {"ests.test/nowhere": "true"}}}}}),
    )
    .await?;
    wait_for("db-0 re-created and Pending", T, || async {
        let pod = pods.get_opt("db-0").await?;
        Ok(pod
            .filter(|p| p.uid() != old)
            .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_none()))
            .map(|_| ()))
    })
    .await?;

    let burst = (0..40).map(|i| {
        let pods = pods.clone();
        let tolerations = tolerations.clone();
        async move {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": format!("burst-{i}"), "labels": {"app": "burst"}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": "ext-burst"},
                    "tolerations": tolerations,
                    "containers": [{"name": "app", "image": "app:v1", "resources": {"requests": {"cpu": "100m"}}}]
                }
            }))?;
            pods.create(&PostParams::default(), &pod).await?;
            anyhow::Ok(())
        }
    });
    for created in futures::future::join_all(burst).await {
        created?;
    }
    // Settled: every burst pod bound, or refused by a scheduling attempt.
    let bound = wait_for("the burst settled", T, || async {
        let list = pods
            .list(&ListParams::default().labels("app=burst"))
            .await?;
        let settled = list.items.iter().all(|p| {
            p.spec.as_ref().is_some_and(|s| s.node_name.is_some())
                || p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "PodScheduled" && c.status == "False")
                    })
        });
        let bound = list
            .items
            .iter()
            .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
            .count();
        Ok((list.items.len() == 40 && settled).then_some(bound))
    })
    .await?;
    assert!(
        bound <= 30,
        "{bound} ordinary pods of 100m bound to a 4-CPU node that keeps 1 CPU for db-0"
    );
    Ok(())
}
