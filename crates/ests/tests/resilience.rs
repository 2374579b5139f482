//! The controller under failure: killed mid-rollout and restarted, the bound still holds and
//! the rollout finishes; with two replicas, leadership moves when the leader dies, and a
//! leader that cannot renew its Lease stops (its process exits) before the other takes over,
//! and no migration hook of the old leader runs once the new one leads.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ests_api::NodeMigration;
use ests_testenv::nodes::{NodeSpec, create_nodes, delete_nodes, kill_node, not_ready_timeout};
use ests_testenv::{ApiProxy, InvariantChecker, LogsOnFailure, PodMonitor, cluster_lock, wait_for};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, PostParams};
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

/// The holder of Lease `name` in ests-system and when it says it took it (acquireTime, the
/// taker's clock, set before its write).
async fn lease_holder(
    leases: &Api<Lease>,
    name: &str,
) -> anyhow::Result<Option<(String, Option<SystemTime>)>> {
    let Some(spec) = leases.get_opt(name).await?.and_then(|l| l.spec) else {
        return Ok(None);
    };
    let acquired = spec.acquire_time.map(|t| SystemTime::from(t.0));
    Ok(spec
        .holder_identity
        .filter(|h| !h.is_empty())
        .map(|h| (h, acquired)))
}

#[tokio::test]
async fn a_leader_that_cannot_renew_its_lease_exits_before_another_takes_over() -> anyhow::Result<()>
{
    let _exclusive = cluster_lock().await;
    let env = bare_env().await?;
    let _logs = LogsOnFailure(env.plane);
    // Its own Lease: the other tests' leaders may have left theirs held.
    let lease = "ests-controller-step-down";
    let lease_flag = format!("--lease-name={lease}");
    // A fencing hook that notes who ran it and when, and says no: the leader's migration
    // manager asks it again every few seconds, so a second runner would show.
    let hooks = env.plane.dir.join("lease-hooks");
    std::fs::create_dir_all(&hooks)?;
    let hook = hooks.join("fence.sh");
    let hook_log = hooks.join("invocations");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\n# fence.sh REPLICA fence SOURCE TARGET\necho \"$1 $(date +%s.%N)\" >> \"{}\"\nexit 1\n",
            hook_log.display()
        ),
    )?;
    let fence = |replica: &str| format!("--fence-command=sh {} {replica}", hook.display());
    let flags = |replica: &str| {
        vec![
            "--leader-election=true".to_string(),
            "--lease-duration=4s".into(),
            "--renew-deadline=2s".into(),
            "--retry-period=500ms".into(),
            "--lease-namespace=ests-system".into(),
            lease_flag.clone(),
            fence(replica),
        ]
    };
    let proxy = ApiProxy::start(env.plane, CONTROLLER_USER, CONTROLLER_GROUPS).await?;
    let (proxied, direct) = ("proxied-leader", "direct-follower");
    let proxied_flags = flags(proxied);
    let proxied_flags: Vec<&str> = proxied_flags.iter().map(String::as_str).collect();
    start_ests_with(
        env.plane,
        proxied,
        "controller",
        &proxy.kubeconfig,
        &proxied_flags,
    )?;
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), "ests-system");
    wait_for(format!("{proxied} leads"), T, || async {
        Ok(lease_holder(&leases, lease)
            .await?
            .filter(|(h, _)| h == proxied)
            .map(|_| ()))
    })
    .await?;
    let direct_flags = flags(direct);
    let direct_flags: Vec<&str> = direct_flags.iter().map(String::as_str).collect();
    start_controller(env.plane, direct, &direct_flags).await?;

    // A dead node whose migration waits for fencing: the leader runs the hook over and over.
    let (dead, spare) = ("lease-dead", "lease-spare");
    let node = |name: &str| NodeSpec::new(name).capacity("8", "32Gi", "20");
    create_nodes(&env.client, &[node(dead), node(spare)]).await?;
    kill_node(&env.client, dead).await?;
    let nodes: Api<Node> = Api::all(env.client.clone());
    wait_for(
        format!("{dead} NotReady"),
        not_ready_timeout() + T,
        || async {
            let node = nodes.get(dead).await?;
            let ready = node
                .status
                .and_then(|s| s.conditions)
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            Ok((!ready).then_some(()))
        },
    )
    .await?;
    let migrations: Api<NodeMigration> = Api::all(env.client.clone());
    let migration: NodeMigration = serde_json::from_value(json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "NodeMigration",
        "metadata": {"name": "lease-dead-move"},
        "spec": {"sourceNode": dead, "targetNode": spare}
    }))?;
    migrations
        .create(&PostParams::default(), &migration)
        .await?;
    let invocations = || -> anyhow::Result<Vec<(String, SystemTime)>> {
        let text = std::fs::read_to_string(&hook_log).unwrap_or_default();
        text.lines()
            .map(|line| {
                let (who, at) = line
                    .split_once(' ')
                    .ok_or_else(|| anyhow::anyhow!("bad hook log line {line:?}"))?;
                let at: f64 = at.parse()?;
                Ok((who.to_string(), UNIX_EPOCH + Duration::from_secs_f64(at)))
            })
            .collect()
    };
    wait_for(format!("{proxied} runs the fencing hook"), T, || async {
        Ok(invocations()?
            .iter()
            .any(|(who, _)| who == proxied)
            .then_some(()))
    })
    .await?;

    let ns = "lease-step-down";
    let sets = namespace(&env, ns).await?;
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let name = "one-at-a-time";
    let mut set = simple_set(name, 8, "Parallel", 1);
    // Each pod waits 2 s to count as available, so the rollout outlasts the hand-over.
    set["spec"]["minReadySeconds"] = json!(2);
    apply(&env, ns, &set).await?;
    wait_status(&sets, name, "8 available", T, |s| s.available_replicas == 8).await?;
    let monitor = PodMonitor::start_with_min_ready(
        env.client.clone(),
        ns,
        &format!("app={name}"),
        names(name, 0..8),
        2,
    )
    .await?;
    patch(&sets, name, new_template(Some("app"), "app:v2", json!({}))).await?;
    wait_status(&sets, name, "the rollout under way", T, |s| {
        s.updated_replicas >= 2
    })
    .await?;

    // When the proxied leader's process is first seen gone (by its pid, polled often): an
    // upper bound of when it exited.
    let exited_by = {
        let plane = env.plane;
        let name = proxied.to_string();
        tokio::spawn(async move {
            while plane.is_running(&name) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            SystemTime::now()
        })
    };
    proxy.block_lease_writes(true);
    let (_, acquired) = wait_for(format!("{direct} takes the lease"), T, || async {
        Ok(lease_holder(&leases, lease)
            .await?
            .filter(|(h, _)| h == direct))
    })
    .await?;
    let acquired = acquired.expect("the new holder names when it took the lease");
    let exit = if exited_by.is_finished() {
        Some(exited_by.await?)
    } else {
        exited_by.abort();
        None
    };
    assert!(
        exit.is_some_and(|exit| exit < acquired),
        "{proxied} must have exited before {direct} took the lease at {acquired:?}; it exited \
         by {exit:?} ({} lease writes swallowed)",
        proxy.swallowed()
    );
    let (status, _) = env
        .plane
        .exited(proxied)
        .expect("the old leader has exited");
    assert!(
        !status.success(),
        "a leader that lost its lease exits non-zero (so its Deployment restarts it): {status}"
    );

    wait_status(
        &sets,
        name,
        "all updated and available under the new leader",
        T,
        |s| s.updated_available_replicas == 8,
    )
    .await?;
    assert!(
        monitor.max_unavailable() <= 1,
        "maxUnavailable 1 held across the hand-over: max unavailable {}",
        monitor.max_unavailable()
    );
    // One hook runner at a time: the old leader ran none once the new one led, and the new
    // one none before.
    wait_for(format!("{direct} runs the fencing hook"), T, || async {
        Ok(invocations()?
            .iter()
            .any(|(who, _)| who == direct)
            .then_some(()))
    })
    .await?;
    let runs = invocations()?;
    for (who, at) in &runs {
        match who.as_str() {
            w if w == proxied => assert!(
                *at < acquired,
                "{proxied} ran the fencing hook at {at:?}, after {direct} took the lease at {acquired:?}: {runs:?}"
            ),
            w if w == direct => assert!(
                *at >= acquired,
                "{direct} ran the fencing hook at {at:?}, before it took the lease at {acquired:?}: {runs:?}"
            ),
            other => anyhow::bail!("unknown hook runner {other}"),
        }
    }
    migrations
        .delete("lease-dead-move", &DeleteParams::default())
        .await?;
    delete_nodes(&env.client, &[dead, spare]).await?;
    // Stopped in good order (SIGTERM), a leader hands the Lease over at once.
    env.plane.stop_process(direct)?;
    assert_eq!(
        lease_holder(&leases, lease).await?,
        None,
        "released on SIGTERM"
    );
    env.plane.stop_process(proxied)?;
    checker.finish()
}
