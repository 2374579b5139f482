//! Which pods a set controls, as upstream's StatefulSet: orphans it adopts (after
//! `kubectl delete --cascade=orphan` and the same set applied again), pods it releases (their
//! labels stop matching the selector) — never deleted and replaced.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use ests_api::EnhancedStatefulSet;
use ests_testenv::{InvariantChecker, LogsOnFailure, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};
use serde_json::json;
use support::*;

const T: Duration = Duration::from_secs(120);

/// The pods of `selector` in `ns`: name -> (UID, the UID of their controller if any).
async fn pods(
    env: &Env,
    ns: &str,
    selector: &str,
) -> anyhow::Result<BTreeMap<String, (String, Option<String>)>> {
    Ok(Api::<Pod>::namespaced(env.client.clone(), ns)
        .list(&ListParams::default().labels(selector))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let controller = p
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.clone());
            (p.name_any(), (p.uid().unwrap_or_default(), controller))
        })
        .collect())
}

#[tokio::test]
async fn orphans_left_by_a_cascade_orphan_delete_are_adopted_by_the_same_set_applied_again()
-> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let ns = "adopt";
    let sets = namespace(&env, ns).await?;
    let set = simple_set("orph", 3, "Parallel", 1);
    apply(&env, ns, &set).await?;
    wait_status(&sets, "orph", "3 ready", T, |s| s.ready_replicas == 3).await?;

    // kubectl delete ests orph --cascade=orphan
    sets.delete(
        "orph",
        &DeleteParams {
            propagation_policy: Some(PropagationPolicy::Orphan),
            ..DeleteParams::default()
        },
    )
    .await?;
    let orphans = wait_for("the three pods orphaned", T, || async {
        let now = pods(&env, ns, "app=orph").await?;
        let gone = sets.get_opt("orph").await?.is_none();
        Ok((gone && now.len() == 3 && now.values().all(|(_, c)| c.is_none())).then_some(now))
    })
    .await?;

    apply(&env, ns, &set).await?;
    let new_uid = sets.get("orph").await?.uid().unwrap_or_default();
    let adopted = wait_for("the same three pods adopted", T, || async {
        let now = pods(&env, ns, "app=orph").await?;
        let adopted = now.len() == 3
            && now.iter().all(|(name, (uid, controller))| {
                orphans.get(name).is_some_and(|(before, _)| before == uid)
                    && controller.as_deref() == Some(new_uid.as_str())
            });
        Ok(adopted.then_some(()))
    })
    .await;
    if adopted.is_err() {
        eprintln!(
            "pods: {:?}\n{}",
            pods(&env, ns, "app=orph").await?,
            env.plane.log_tails(80)
        );
    }
    adopted?;
    // Their revision is adopted too: they are up to date, not rolled for nothing.
    wait_status(&sets, "orph", "3 ready and updated, reported", T, |s| {
        s.replicas == 3 && s.ready_replicas == 3 && s.updated_replicas == 3
    })
    .await?;
    let still = pods(&env, ns, "app=orph").await?;
    assert!(
        still
            .iter()
            .all(|(name, (uid, _))| orphans.get(name).is_some_and(|(before, _)| before == uid)),
        "adopted, not replaced: {still:?}"
    );
    // Managed for real: a new template replaces them.
    patch(
        &sets,
        "orph",
        new_template(Some("app"), "app:v2", json!({})),
    )
    .await?;
    wait_status(&sets, "orph", "3 updated and ready", T, |s| {
        s.updated_replicas == 3 && s.ready_replicas == 3
    })
    .await?;
    let after = pods(&env, ns, "app=orph").await?;
    assert!(
        after
            .iter()
            .all(|(name, (uid, _))| orphans.get(name).is_some_and(|(before, _)| before != uid)),
        "every pod was replaced by the rollout: {after:?}"
    );
    checker.finish()
}

#[tokio::test]
async fn a_pod_whose_labels_stop_matching_is_released_not_replaced() -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let ns = "release";
    let sets: Api<EnhancedStatefulSet> = namespace(&env, ns).await?;
    apply(&env, ns, &simple_set("rel", 2, "Parallel", 1)).await?;
    wait_status(&sets, "rel", "2 ready", T, |s| s.ready_replicas == 2).await?;
    let before = pods(&env, ns, "app=rel").await?;
    let set_uid = sets.get("rel").await?.uid();

    let api: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    api.patch(
        "rel-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "someone-else"}}})),
    )
    .await?;
    wait_for("rel-1 released", T, || async {
        let pod = api.get("rel-1").await?;
        let controlled = pod
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true));
        Ok((!controlled).then_some(()))
    })
    .await?;
    let pod = api.get("rel-1").await?;
    assert_eq!(pod.uid(), Some(before["rel-1"].0.clone()), "the same pod");
    assert!(pod.metadata.deletion_timestamp.is_none(), "not deleted");
    // rel-0 is still the set's.
    let now = pods(&env, ns, "app=rel").await?;
    assert_eq!(now["rel-0"], (before["rel-0"].0.clone(), set_uid));
    checker.finish()
}
