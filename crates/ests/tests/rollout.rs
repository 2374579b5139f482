//! Rolling updates on the real control plane: the source document's scenario step by step,
//! stuck-pod recovery, pause and rollback. The invariant checker and a pod monitor run
//! throughout.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use ests_testenv::{InvariantChecker, LogsOnFailure, PodMonitor, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;
use support::*;

const T: Duration = Duration::from_secs(120);

/// name -> (controller-revision-hash, Ready)
async fn pods(
    env: &Env,
    ns: &str,
    app_label: &str,
) -> anyhow::Result<BTreeMap<String, (String, bool)>> {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let list = api.list(&ListParams::default().labels(app_label)).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let revision = p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("controller-revision-hash").cloned())
                .unwrap_or_default();
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            (p.metadata.name.unwrap_or_default(), (revision, ready))
        })
        .collect())
}

#[tokio::test]
async fn source_document_scenario() -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "source-doc";
    let sets = namespace(&env, ns).await?;
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let name = "staticip-example";
    apply(&env, ns, &sample("staticip-example.yaml")).await?;
    let first = wait_status(&sets, name, "6 pods ready", T, |s| {
        s.ready_replicas == 6 && s.updated_replicas == 6
    })
    .await?;
    let v1 = first.update_revision.clone().expect("update revision");
    let selector = "apps=staticip-example";
    let monitor = PodMonitor::start(env.client.clone(), ns, selector, names(name, 0..6)).await?;

    // nginx:v1 -> nginx:v2; pod 4's new incarnation never becomes Ready.
    patch(
        &sets,
        name,
        new_template(None, "nginx:v2", json!({"ests.test/never-ready": "4"})),
    )
    .await?;
    let after = wait_status(&sets, name, "5, 4, 3 updated", T, |s| {
        s.updated_replicas == 3 && s.ready_replicas == 5
    })
    .await?;
    let v2 = after.update_revision.clone().expect("update revision");
    assert_ne!(v1, v2);
    let now = pods(&env, ns, selector).await?;
    for o in 0..3 {
        assert_eq!(
            now[&format!("{name}-{o}")].0,
            v1,
            "pod {o} keeps the old revision"
        );
    }
    for o in 3..6 {
        assert_eq!(now[&format!("{name}-{o}")].0, v2, "pod {o} is updated");
    }
    assert!(!now[&format!("{name}-4")].1, "pod 4 is kept unready");
    assert_eq!(
        monitor.max_unavailable(),
        2,
        "at most maxUnavailable (2) pods unavailable at once"
    );
    let rollout_complete = after
        .conditions
        .iter()
        .any(|c| c.type_ == "RolloutComplete" && c.status == "True");
    assert!(
        !rollout_complete,
        "pod 4 is not available, so the partitioned rollout is not complete"
    );

    // Partition 0: 2, 1, 0 follow, one at a time, as pod 4 uses one unit of the budget.
    patch(
        &sets,
        name,
        json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}}),
    )
    .await?;
    wait_status(&sets, name, "all updated", T, |s| {
        s.updated_replicas == 6 && s.ready_replicas == 5
    })
    .await?;
    assert!(
        monitor.max_unavailable() <= 2,
        "max unavailable {}",
        monitor.max_unavailable()
    );
    let order: Vec<String> = monitor
        .created()
        .into_iter()
        .filter(|n| n != &format!("{name}-4"))
        .collect();
    assert_eq!(
        order,
        names(name, [5, 3, 2, 1, 0]),
        "updated from the highest ordinal down"
    );
    checker.finish()
}

#[tokio::test]
async fn two_broken_updated_pods_stop_the_rollout_even_after_partition_zero() -> anyhow::Result<()>
{
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "broken-pair";
    let sets = namespace(&env, ns).await?;
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let name = "staticip-example";
    apply(&env, ns, &sample("staticip-example.yaml")).await?;
    wait_status(&sets, name, "6 pods ready", T, |s| s.ready_replicas == 6).await?;
    let monitor = PodMonitor::start(
        env.client.clone(),
        ns,
        "apps=staticip-example",
        names(name, 0..6),
    )
    .await?;
    patch(
        &sets,
        name,
        new_template(None, "nginx:v2", json!({"ests.test/never-ready": "4,5"})),
    )
    .await?;
    wait_status(&sets, name, "5 and 4 updated and unready", T, |s| {
        s.updated_replicas == 2 && s.ready_replicas == 4
    })
    .await?;
    patch(
        &sets,
        name,
        json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}}),
    )
    .await?;
    // Nothing more may happen: the two broken pods hold the whole budget.
    let moved = wait_for(
        "any further update (must not happen)",
        Duration::from_secs(8),
        || async {
            let s = sets.get(name).await?.status.unwrap_or_default();
            Ok((s.updated_replicas > 2).then_some(()))
        },
    )
    .await;
    assert!(moved.is_err(), "the rollout went on past two broken pods");
    assert_eq!(monitor.max_unavailable(), 2);
    checker.finish()
}

#[tokio::test]
async fn a_crash_looping_rollout_is_repaired_by_a_fixed_template() -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "crash-repair";
    let sets = namespace(&env, ns).await?;
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let name = "repair";
    apply(&env, ns, &simple_set(name, 4, "Parallel", 1)).await?;
    wait_status(&sets, name, "4 ready", T, |s| s.ready_replicas == 4).await?;
    let monitor =
        PodMonitor::start(env.client.clone(), ns, "app=repair", names(name, 0..4)).await?;

    // A bad image: the first replaced pod crash-loops and the budget (1) is spent.
    patch(
        &sets,
        name,
        new_template(
            Some("app"),
            "app:bad",
            json!({"ests.test/crashloop": "true"}),
        ),
    )
    .await?;
    wait_status(&sets, name, "one crash-looping update", T, |s| {
        s.updated_replicas == 1 && s.ready_replicas == 3
    })
    .await?;

    // The fix: a good template. The stuck pod is replaced without anyone deleting it.
    patch(
        &sets,
        name,
        new_template(Some("app"), "app:v3", json!({"ests.test/crashloop": null})),
    )
    .await?;
    wait_status(&sets, name, "all on the fixed revision", T, |s| {
        s.updated_replicas == 4 && s.ready_replicas == 4
    })
    .await?;
    assert!(
        monitor.max_unavailable() <= 1,
        "max unavailable {}",
        monitor.max_unavailable()
    );
    checker.finish()
}

#[tokio::test]
async fn paused_holds_an_update_and_resuming_finishes_it() -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "pause";
    let sets = namespace(&env, ns).await?;
    let name = "paused";
    let mut set = simple_set(name, 3, "Parallel", 3);
    set["spec"]["updateStrategy"]["rollingUpdate"]["paused"] = json!(true);
    apply(&env, ns, &set).await?;
    wait_status(&sets, name, "3 ready", T, |s| s.ready_replicas == 3).await?;
    patch(&sets, name, new_template(Some("app"), "app:v2", json!({}))).await?;
    wait_status(&sets, name, "new revision seen, nothing updated", T, |s| {
        s.updated_replicas == 0
    })
    .await?;
    // Scaling still works while paused.
    patch(&sets, name, json!({"spec": {"replicas": 4}})).await?;
    let s = wait_status(&sets, name, "scaled to 4", T, |s| {
        s.replicas == 4 && s.ready_replicas == 4
    })
    .await?;
    assert_eq!(
        s.updated_replicas, 1,
        "the new identity starts at the update revision"
    );
    patch(
        &sets,
        name,
        json!({"spec": {"updateStrategy": {"rollingUpdate": {"paused": false}}}}),
    )
    .await?;
    wait_status(&sets, name, "all updated after resume", T, |s| {
        s.updated_replicas == 4 && s.ready_replicas == 4
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn rollback_reuses_the_previous_revision() -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "rollback";
    let sets = namespace(&env, ns).await?;
    let name = "rollback";
    apply(&env, ns, &simple_set(name, 3, "OrderedReady", 2)).await?;
    let s1 = wait_status(&sets, name, "3 ready", T, |s| {
        s.ready_replicas == 3 && s.updated_replicas == 3
    })
    .await?;
    let v1 = s1.update_revision.clone().expect("revision");
    patch(&sets, name, new_template(Some("app"), "app:v2", json!({}))).await?;
    let s2 = wait_status(&sets, name, "v2 everywhere", T, |s| {
        s.updated_replicas == 3
            && s.ready_replicas == 3
            && s.update_revision.as_deref() != Some(v1.as_str())
    })
    .await?;
    assert_eq!(s2.current_revision, s2.update_revision);
    // Roll back: the old template again.
    patch(&sets, name, new_template(Some("app"), "app:v1", json!({}))).await?;
    let s3 = wait_status(&sets, name, "back on v1", T, |s| {
        s.update_revision.as_deref() == Some(v1.as_str())
            && s.updated_replicas == 3
            && s.ready_replicas == 3
    })
    .await?;
    assert_eq!(s3.current_revision.as_deref(), Some(v1.as_str()));
    let revisions: Api<k8s_openapi::api::apps::v1::ControllerRevision> =
        Api::namespaced(env.client.clone(), ns);
    let list = revisions.list(&ListParams::default()).await?;
    assert_eq!(
        list.items.len(),
        2,
        "the old revision was reused, not copied"
    );
    let newest = list
        .items
        .iter()
        .max_by_key(|r| r.revision)
        .expect("revisions");
    assert!(
        newest
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| n.ends_with(&v1)),
        "v1 was renumbered as the newest"
    );
    Ok(())
}

#[tokio::test]
async fn briefly_unready_pods_wait_for_the_budget_until_their_grace_runs_out() -> anyhow::Result<()>
{
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "unready-grace";
    let sets = namespace(&env, ns).await?;
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let name = "grace";
    let mut set = simple_set(name, 3, "Parallel", 1);
    set["spec"]["updateStrategy"]["rollingUpdate"]["stuckPodSeconds"] = json!(15);
    apply(&env, ns, &set).await?;
    wait_status(&sets, name, "3 ready", T, |s| s.ready_replicas == 3).await?;
    let monitor = PodMonitor::start(env.client.clone(), ns, "app=grace", names(name, 0..3)).await?;
    // v2 pods run but never become Ready (no container error): the first one spends the budget.
    patch(
        &sets,
        name,
        new_template(
            Some("app"),
            "app:v2",
            json!({"ests.test/never-ready": "true"}),
        ),
    )
    .await?;
    wait_status(&sets, name, "one unready update", T, |s| {
        s.updated_replicas == 1 && s.ready_replicas == 2
    })
    .await?;
    let v3 = new_template(
        Some("app"),
        "app:v3",
        json!({"ests.test/never-ready": null}),
    );
    patch(&sets, name, v3).await?;
    // Merely unready, not yet stuck: it is not replaced while the budget is spent.
    // First the controller sees v3 (nothing on it yet) ...
    wait_status(&sets, name, "v3 seen", T, |s| s.updated_replicas == 0).await?;
    // ... then nothing may move onto it for a while.
    let early = wait_for(
        "a replacement before the grace ran out (must not happen)",
        Duration::from_secs(6),
        || async {
            let set = sets.get(name).await?;
            let s = set.status.unwrap_or_default();
            let current = s.observed_generation == set.metadata.generation;
            Ok((current && s.updated_replicas > 0).then_some(()))
        },
    )
    .await;
    assert!(
        early.is_err(),
        "an unready pod was replaced past the budget before its grace"
    );
    // Once unready longer than stuckPodSeconds, it is replaced and the rollout finishes.
    wait_status(&sets, name, "all on v3", T, |s| {
        s.updated_replicas == 3 && s.ready_replicas == 3
    })
    .await?;
    assert!(
        monitor.max_unavailable() <= 1,
        "max unavailable {}",
        monitor.max_unavailable()
    );
    checker.finish()
}

/// The status write is conditional on what was read: a set read before a newer status was
/// written does not overwrite it (its `replacing` may lack identities taken down since).
#[tokio::test]
async fn a_status_computed_from_a_stale_set_is_not_written() -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "stale-status";
    let sets = namespace(&env, ns).await?;
    let name = "stale";
    apply(&env, ns, &simple_set(name, 1, "Parallel", 1)).await?;
    wait_status(&sets, name, "1 ready", T, |s| s.ready_replicas == 1).await?;
    let old = sets.get(name).await?;
    patch(&sets, name, json!({"spec": {"replicas": 2}})).await?;
    wait_status(&sets, name, "2 ready", T, |s| s.ready_replicas == 2).await?;

    let stale_status = old.status.clone().expect("status");
    let written = ests_controller::status::write(&sets, &old, &stale_status).await?;
    assert!(!written, "a status was written over a newer one");
    let now = sets.get(name).await?;
    assert_eq!(now.status.as_ref().map(|s| s.replicas), Some(2));

    // From the set as it is now, the write goes through.
    let current = now.status.clone().expect("status");
    assert!(ests_controller::status::write(&sets, &now, &current).await?);
    Ok(())
}

/// Two templates whose revision names collide at collision count 0, found by search (the
/// hash is 32 bits, so a few hundred thousand variants hold a pair).
fn colliding_variants() -> (String, String) {
    let mut seen: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for n in 0..5_000_000u32 {
        let variant = n.to_string();
        let hash = ests_core::revision::template_hash(&collide_template(&variant), 0);
        if let Some(earlier) = seen.insert(hash, variant.clone()) {
            return (earlier, variant);
        }
    }
    panic!("no collision among 5,000,000 templates");
}

fn collide_template_json(variant: &str) -> serde_json::Value {
    json!({
        "metadata": {"labels": {"app": "collide"}, "annotations": {"ests.test/variant": variant}},
        "spec": {"containers": [{"name": "app", "image": "app:v1"}]}
    })
}

fn collide_template(variant: &str) -> k8s_openapi::api::core::v1::PodTemplateSpec {
    serde_json::from_value(collide_template_json(variant)).expect("template")
}

/// A real revision-name collision: the new template's name at collision count 0 is taken by
/// the current revision, which holds the old template. The new revision gets collision count
/// 1, and a pod re-created below the partition runs the old template, not the set's.
#[tokio::test]
async fn a_revision_name_collision_keeps_each_revision_its_template() -> anyhow::Result<()> {
    use ests_core::revision::template_hash;
    use kube::ResourceExt;
    let (a, b) = colliding_variants();
    let (hash_a, hash_b) = (
        template_hash(&collide_template(&a), 0),
        template_hash(&collide_template(&b), 0),
    );
    assert_eq!(hash_a, hash_b, "variants {a} and {b} collide");

    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "collision";
    let sets = namespace(&env, ns).await?;
    let name = "collide";
    let mut set = simple_set(name, 2, "Parallel", 1);
    set["spec"]["template"] = collide_template_json(&a);
    apply(&env, ns, &set).await?;
    let first = wait_status(&sets, name, "2 ready", T, |s| {
        s.ready_replicas == 2 && s.updated_replicas == 2
    })
    .await?;
    assert_eq!(
        first.update_revision.as_deref(),
        Some(hash_a.as_str()),
        "the controller hashes the template as the test does"
    );

    // Template b, with the partition above every pod: nothing is updated.
    patch(
        &sets,
        name,
        json!({"spec": {
            "template": {"metadata": {"annotations": {"ests.test/variant": b}}},
            "updateStrategy": {"rollingUpdate": {"partition": 2}}
        }}),
    )
    .await?;
    let hash_b1 = template_hash(&collide_template(&b), 1);
    wait_status(&sets, name, "b's revision at collision count 1", T, |s| {
        s.collision_count == Some(1)
            && s.update_revision.as_deref() == Some(hash_b1.as_str())
            && s.current_revision.as_deref() == Some(hash_a.as_str())
    })
    .await?;

    // Pod 0 is re-created at the current revision, which holds template a.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let old_uid = pods.get("collide-0").await?.uid();
    pods.delete("collide-0", &kube::api::DeleteParams::default())
        .await?;
    let pod = wait_for("pod 0 re-created", T, || async {
        Ok(pods
            .get_opt("collide-0")
            .await?
            .filter(|p| p.uid() != old_uid && p.metadata.deletion_timestamp.is_none()))
    })
    .await?;
    assert_eq!(
        pod.labels().get("controller-revision-hash"),
        Some(&hash_a),
        "re-created at the current revision"
    );
    assert_eq!(
        pod.annotations().get("ests.test/variant"),
        Some(&a),
        "the pod runs the template its revision holds, not the set's"
    );
    Ok(())
}
