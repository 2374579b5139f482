//! The controller under failure: killed mid-rollout and restarted, the bound still holds and
//! the rollout finishes; with two replicas, leadership moves when the leader dies.

mod support;

use std::time::Duration;

use ests_testenv::{InvariantChecker, LogsOnFailure, PodMonitor, cluster_lock, wait_for};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;
use support::*;

const T: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_controller_killed_mid_rollout_resumes_within_the_budget() -> anyhow::Result<()> {
    let _exclusive = cluster_lock().await;
    let env = bare_env().await?;
    let _logs = LogsOnFailure(env.plane);
    start_controller(env.plane, "ests-controller", &["--leader-election=false"]).await?;
    let ns = "crash-mid-rollout";
    let sets = namespace(&env, ns).await?;
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let name = "steady";
    let mut set = simple_set(name, 8, "Parallel", 2);
    // Each batch waits 3 s to count as available, so the rollout is slow enough to interrupt.
    set["spec"]["minReadySeconds"] = json!(3);
    apply(&env, ns, &set).await?;
    wait_status(&sets, name, "8 available", T, |s| s.available_replicas == 8).await?;
    let monitor =
        PodMonitor::start(env.client.clone(), ns, "app=steady", names(name, 0..8)).await?;
    patch(&sets, name, new_template(Some("app"), "app:v2", json!({}))).await?;
    wait_status(&sets, name, "a first batch under way", T, |s| {
        s.updated_replicas >= 2
    })
    .await?;
    env.plane.kill_process("ests-controller")?;
    // While no controller runs, nothing may change beyond what was under way.
    let stuck_at = sets
        .get(name)
        .await?
        .status
        .unwrap_or_default()
        .updated_replicas;
    start_controller(env.plane, "ests-controller", &["--leader-election=false"]).await?;
    wait_status(&sets, name, "all updated and available", T, |s| {
        s.updated_available_replicas == 8
    })
    .await?;
    assert!(
        stuck_at < 8,
        "the controller was killed before the rollout ended"
    );
    assert!(
        monitor.max_unavailable() <= 2,
        "max unavailable {}",
        monitor.max_unavailable()
    );
    env.plane.stop_process("ests-controller")?;
    checker.finish()
}

#[tokio::test]
async fn leadership_moves_to_the_second_replica_when_the_leader_dies() -> anyhow::Result<()> {
    let _exclusive = cluster_lock().await;
    let env = bare_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let flags = [
        "--leader-election=true",
        "--lease-seconds=4",
        "--lease-namespace=ests-system",
    ];
    start_controller(env.plane, "controller-a", &flags).await?;
    start_controller(env.plane, "controller-b", &flags).await?;
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), "ests-system");
    let holder = || async {
        let lease = leases.get("ests-controller").await?;
        anyhow::Ok(lease.spec.and_then(|s| s.holder_identity))
    };
    let first = wait_for("a leader", T, &holder).await?;
    let ns = "leader-election";
    let sets = namespace(&env, ns).await?;
    apply(&env, ns, &simple_set("led", 2, "Parallel", 1)).await?;
    wait_status(&sets, "led", "2 ready", T, |s| s.ready_replicas == 2).await?;

    env.plane.kill_process(&first)?;
    let second = wait_for("another leader", T, || async {
        Ok(holder().await?.filter(|h| h != &first))
    })
    .await?;
    assert!(["controller-a", "controller-b"].contains(&second.as_str()));
    patch(&sets, "led", json!({"spec": {"replicas": 3}})).await?;
    wait_status(&sets, "led", "3 ready under the new leader", T, |s| {
        s.ready_replicas == 3
    })
    .await?;
    env.plane.stop_process(&second)?;
    Ok(())
}
