//! Node migration on the real control plane: a dead node's static-IP pods (record mode and
//! IP range mode) come back on its replacement with their addresses, only after the node was
//! fenced; a fencing hook that says no releases nothing; a target without room is refused;
//! a manager killed mid-migration resumes; a Ready node's move respects a
//! PodDisruptionBudget, and moves its IP blocks only once the pods using them are gone; a
//! rollout and a maintenance migration of one set together stay within its maxUnavailable;
//! a node that goes NotReady during its maintenance move is fenced before anything of it is
//! released.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use ests_api::{IPBlock, MigrationPhase, NodeMigration, StaticIP, StaticIPPhase, keys};
use ests_testenv::nodes::{NodeSpec, create_nodes, kill_node, not_ready_timeout};
use ests_testenv::{InvariantChecker, LogsOnFailure, PodMonitor, wait_for};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use support::*;
use tokio::sync::OnceCell;

const T: Duration = Duration::from_secs(180);

/// The directory the fencing hook looks in: a file `fence-yes-<node>` makes it say yes.
fn fence_dir(env: &Env) -> std::path::PathBuf {
    env.plane.dir.join("fence")
}

/// The controller with automatic migration (after 1 s NotReady) and a fencing hook, the
/// webhook, and the extender (binding range-mode pods) — once per binary.
async fn migration_env() -> anyhow::Result<Env> {
    static STARTED: OnceCell<()> = OnceCell::const_new();
    let env = bare_env().await?;
    STARTED
        .get_or_try_init(|| async {
            start_stack(&env).await?;
            start_webhook(&env).await?;
            start_extender(env.plane, true).await.map(|_| ())
        })
        .await?;
    Ok(env)
}

async fn start_stack(env: &Env) -> anyhow::Result<()> {
    let dir = fence_dir(env);
    std::fs::create_dir_all(&dir)?;
    let hook = dir.join("fence.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\n# fence SOURCE TARGET\ntest -e \"{}/fence-yes-$2\"\n",
            dir.display()
        ),
    )?;
    let fence = format!("--fence-command=sh {}", hook.display());
    start_controller(
        env.plane,
        "ests-controller",
        &[
            "--leader-election=false",
            "--extender-binds",
            "--auto-migrate-after-seconds=1",
            "--max-migrations=5",
            &fence,
        ],
    )
    .await
}

fn node(name: &str, pool: &str, pods: &str) -> NodeSpec {
    NodeSpec::new(name)
        .capacity("64", "256Gi", pods)
        .label("ests.test/pool", pool)
        .label("ests.test/owner", "migration")
        .owned_by("migration")
}

fn static_set(name: &str, replicas: i32, pool_label: &str, ip_pool: Option<&str>) -> Value {
    let mut set = simple_set(name, replicas, "Parallel", replicas);
    let mut annotations = json!({keys::STATIC_IP_ENABLE: "true"});
    if let Some(pool) = ip_pool {
        annotations[keys::STATIC_IP_POOL] = json!(pool);
    }
    set["metadata"]["annotations"] = annotations;
    let spec = &mut set["spec"]["template"]["spec"];
    spec["nodeSelector"] = json!({"ests.test/pool": pool_label});
    spec["tolerations"] = json!([
        {"key": "ests.test/owner", "operator": "Equal", "value": "migration", "effect": "NoSchedule"}
    ]);
    set
}

/// What a failed wait shows: pods not Running, and the migration's status.
async fn diagnose(env: &Env, ns: &str, name: &str) -> anyhow::Result<String> {
    let pods: Vec<Pod> = Api::<Pod>::namespaced(env.client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items;
    let mut out = String::new();
    for p in pods.iter().filter(|p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running")
            || p.metadata.deletion_timestamp.is_some()
    }) {
        out.push_str(&format!(
            "pod {}: node {:?}, deleting {}, status {:?}\n",
            p.name_any(),
            p.spec.as_ref().and_then(|s| s.node_name.clone()),
            p.metadata.deletion_timestamp.is_some(),
            p.status.as_ref().map(|s| (&s.phase, &s.conditions))
        ));
    }
    let records: Vec<StaticIP> = Api::<StaticIP>::namespaced(env.client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items;
    for r in records.iter().filter(|r| {
        r.status
            .as_ref()
            .is_none_or(|s| s.phase != StaticIPPhase::Bound)
    }) {
        out.push_str(&format!(
            "record {}: node {:?}, status {:?}\n",
            r.name_any(),
            r.spec.node,
            r.status
        ));
    }
    out.push_str(&format!(
        "migration: {:?}\n{}",
        migration(env, name).await?.and_then(|m| m.status),
        env.plane.log_tails(20)
    ));
    Ok(out)
}

/// The names of the IP blocks on `node`, sorted.
async fn blocks_of(env: &Env, node: &str) -> anyhow::Result<Vec<String>> {
    let blocks: Vec<IPBlock> = Api::<IPBlock>::all(env.client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let mut names: Vec<String> = blocks
        .into_iter()
        .filter(|b| b.spec.node.as_deref() == Some(node))
        .map(|b| b.name_any())
        .collect();
    names.sort();
    Ok(names)
}

async fn migration(env: &Env, name: &str) -> anyhow::Result<Option<NodeMigration>> {
    Ok(Api::<NodeMigration>::all(env.client.clone())
        .get_opt(name)
        .await?)
}

/// Waits until migration `name` completes; a wait that fails shows what it was stuck on.
async fn wait_completed(env: &Env, ns: &str, name: &str) -> anyhow::Result<NodeMigration> {
    let done = wait_for("the migration completes", T, || async {
        Ok(migration(env, name).await?.filter(|m| {
            m.status
                .as_ref()
                .is_some_and(|s| s.phase == MigrationPhase::Completed)
        }))
    })
    .await;
    match done {
        Ok(m) => Ok(m),
        Err(e) => anyhow::bail!("{e}\n{}", diagnose(env, ns, name).await?),
    }
}

/// Every pod of `before` (as [`running_pods`] gave them) runs on `target` now, with the
/// address it had.
async fn assert_moved_with_addresses(
    env: &Env,
    ns: &str,
    before: &BTreeMap<String, (String, String, String)>,
    target: &str,
) -> anyhow::Result<()> {
    let after = running_pods(env, ns, "").await?;
    for (name, (_, _, ip)) in before {
        let (_, node, now_ip) = after
            .get(name)
            .with_context(|| format!("{name} is not running: {after:?}"))?;
        assert_eq!(
            (node.as_str(), now_ip),
            (target, ip),
            "{name} moved with its address"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_dead_nodes_static_ip_pods_move_to_its_replacement_after_fencing() -> anyhow::Result<()> {
    let env = migration_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let ns = "mig-move";
    create_nodes(
        &env.client,
        &[node("mig-a", "move", "250"), node("mig-c", "move-c", "250")],
    )
    .await?;
    namespace(&env, ns).await?;
    apply(
        &env,
        ns,
        &json!({
            "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "StaticIPPool",
            "metadata": {"name": "mig-pool"},
            "spec": {"cidrs": ["10.43.0.0/24"], "ipv4BlockPrefixLength": 28}
        }),
    )
    .await?;
    // 110 record-mode pods on mig-a only; range-mode pods on mig-a and mig-c.
    apply(&env, ns, &static_set("many", 110, "move", None)).await?;
    let mut ranged = static_set("ranged", 4, "move", Some("mig-pool"));
    ranged["spec"]["template"]["spec"]["nodeSelector"] = json!({"ests.test/owner": "migration"});
    ranged["spec"]["template"]["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["mig-a", "mig-b", "mig-c"]}]}]}}});
    ranged["spec"]["template"]["spec"]["topologySpreadConstraints"] = json!([{
        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": {"matchLabels": {"app": "ranged"}}
    }]);
    apply(&env, ns, &ranged).await?;
    let (before, records) = wait_for("114 pods Running with Bound records", T, || async {
        let (pods, records) = (
            running_pods(&env, ns, "").await?,
            bound_records(&env, ns).await?,
        );
        Ok((pods.len() == 114 && records.len() == 114).then_some((pods, records)))
    })
    .await?;
    let on_a: Vec<String> = records
        .iter()
        .filter(|(_, (_, node, _))| node == "mig-a")
        .map(|(name, _)| name.clone())
        .collect();
    let on_c: BTreeMap<String, (String, String, String)> = before
        .iter()
        .filter(|(_, (_, node, _))| node == "mig-c")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert!(
        on_a.iter().any(|n| n.starts_with("ranged-")),
        "a range-mode pod on mig-a: {on_a:?}"
    );
    assert!(!on_c.is_empty(), "range-mode pods on mig-c too");
    let a_blocks = blocks_of(&env, "mig-a").await?;
    assert!(!a_blocks.is_empty());

    // mig-a dies; its replacement joins. The hook will say yes.
    kill_node(&env.client, "mig-a").await?;
    create_nodes(
        &env.client,
        &[node("mig-b", "move", "250").label(keys::REPLACEMENT_FOR_LABEL, "mig-a")],
    )
    .await?;
    // The migration starts and waits for fencing; the manager dies there and comes back
    // once the node can be fenced.
    wait_for(
        "the automatic migration waits for fencing",
        not_ready_timeout() + T,
        || async {
            Ok(migration(&env, "auto-mig-a").await?.filter(|m| {
                m.status
                    .as_ref()
                    .is_some_and(|s| s.phase == MigrationPhase::Fencing)
            }))
        },
    )
    .await?;
    env.plane.kill_process("ests-controller")?;
    std::fs::write(fence_dir(&env).join("fence-yes-mig-a"), "")?;
    start_stack(&env).await?;
    let m = wait_for(
        "the automatic migration is fenced",
        not_ready_timeout() + T,
        || async {
            Ok(migration(&env, "auto-mig-a")
                .await?
                .filter(|m| m.status.as_ref().is_some_and(|s| s.fenced_at.is_some())))
        },
    )
    .await?;
    let fenced_at = m
        .status
        .as_ref()
        .and_then(|s| s.fenced_at.clone())
        .expect("fenced");
    let fenced = Instant::now();

    let after = wait_for("every pod of mig-a Running on mig-b", T, || async {
        let now = running_pods(&env, ns, "").await?;
        let moved = on_a
            .iter()
            .all(|n| now.get(n).is_some_and(|(_, node, _)| node == "mig-b"));
        Ok((moved && now.len() == 114).then_some(now))
    })
    .await;
    let after = match after {
        Ok(after) => after,
        Err(e) => anyhow::bail!("{e}\n{}", diagnose(&env, ns, "auto-mig-a").await?),
    };
    // fencedAt has a resolution of a second; the test's own clock bounds it from below.
    let since_fenced = k8s_openapi::jiff::Timestamp::now().duration_since(fenced_at.0);
    println!(
        "fencing to all {} static-IP pods of mig-a Running on mig-b: {:.1} s by fencedAt, {:.1} s since the test saw it (target <= 30 s)",
        on_a.len(),
        since_fenced.as_secs_f64(),
        fenced.elapsed().as_secs_f64()
    );
    for name in &on_a {
        let (_, _, ip) = &before[name];
        let (_, node, now_ip) = &after[name];
        assert_eq!(
            (node.as_str(), now_ip),
            ("mig-b", ip),
            "{name} kept its address on mig-b"
        );
    }
    for (name, was) in &on_c {
        assert_eq!(after.get(name), Some(was), "{name} on mig-c untouched");
    }
    // No pod of a moved identity was created before the node was fenced.
    let api: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    for name in &on_a {
        let pod = api.get(name).await?;
        let created = pod.metadata.creation_timestamp.clone().expect("created");
        assert!(
            created.0 >= fenced_at.0,
            "{name} created at {created:?}, before fencing at {fenced_at:?}"
        );
    }
    let done = wait_completed(&env, ns, "auto-mig-a").await?;
    let status = done.status.expect("status");
    assert_eq!(status.target_node.as_deref(), Some("mig-b"));
    assert_eq!(status.pods.len(), on_a.len());
    assert!(
        Api::<Node>::all(env.client.clone())
            .get_opt("mig-a")
            .await?
            .is_none(),
        "mig-a removed"
    );
    let moved = blocks_of(&env, "mig-b").await?;
    let was = a_blocks.clone();
    assert_eq!(moved, was, "mig-a's blocks now belong to mig-b");
    let records = wait_for("records Bound on mig-b", T, || async {
        let records = bound_records(&env, ns).await?;
        Ok(on_a
            .iter()
            .all(|n| records.get(n).is_some_and(|(_, node, _)| node == "mig-b"))
            .then_some(records))
    })
    .await?;
    assert_eq!(records.len(), 114);
    checker.finish()
}

#[tokio::test]
async fn a_fencing_hook_that_says_no_releases_nothing() -> anyhow::Result<()> {
    let env = migration_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "mig-unfenced";
    create_nodes(&env.client, &[node("mig-d", "unfenced", "50")]).await?;
    create_nodes(
        &env.client,
        &[node("mig-e", "unfenced-spare", "50").label(keys::REPLACEMENT_FOR_LABEL, "mig-d")],
    )
    .await?;
    namespace(&env, ns).await?;
    apply(&env, ns, &static_set("kept", 3, "unfenced", None)).await?;
    let before = wait_for("3 pods Running", T, || async {
        let pods = running_pods(&env, ns, "").await?;
        Ok((pods.len() == 3 && bound_records(&env, ns).await?.len() == 3).then_some(pods))
    })
    .await?;
    kill_node(&env.client, "mig-d").await?;
    let m = wait_for(
        "the hook was asked and said no",
        not_ready_timeout() + T,
        || async {
            Ok(migration(&env, "auto-mig-d").await?.filter(|m| {
                m.status.as_ref().is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == "Fenced"
                            && c.status == "False"
                            && c.message.contains("answered no")
                    })
                })
            }))
        },
    )
    .await?;
    let status = m.status.expect("status");
    assert_eq!(status.phase, MigrationPhase::Fencing);
    assert!(status.fenced_at.is_none());
    let api: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    for (name, (uid, node, _)) in &before {
        let pod = api.get(name).await?;
        assert_eq!(pod.uid().as_ref(), Some(uid), "{name} not re-created");
        assert!(
            pod.metadata.deletion_timestamp.is_none(),
            "{name} not deleted"
        );
        assert_eq!(node, "mig-d");
    }
    let node: Node = Api::<Node>::all(env.client.clone()).get("mig-d").await?;
    let tainted = node
        .spec
        .and_then(|s| s.taints)
        .is_some_and(|ts| ts.iter().any(|t| t.key == keys::OUT_OF_SERVICE_TAINT));
    assert!(!tainted, "no out-of-service taint on an unfenced node");
    let records = bound_records(&env, ns).await?;
    assert!(
        records.values().all(|(_, node, _)| node == "mig-d"),
        "records stay: {records:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_target_without_room_is_refused() -> anyhow::Result<()> {
    let env = migration_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "mig-refused";
    create_nodes(
        &env.client,
        &[
            node("mig-f", "refused", "50"),
            NodeSpec::new("mig-tiny")
                .capacity("1", "1Gi", "5")
                .owned_by("migration"),
        ],
    )
    .await?;
    namespace(&env, ns).await?;
    let mut set = static_set("big", 2, "refused", None);
    set["spec"]["template"]["spec"]["containers"][0]["resources"] =
        json!({"requests": {"cpu": "1"}});
    apply(&env, ns, &set).await?;
    let before = wait_for("2 pods Running", T, || async {
        let pods = running_pods(&env, ns, "").await?;
        Ok((pods.len() == 2 && bound_records(&env, ns).await?.len() == 2).then_some(pods))
    })
    .await?;
    // Through the CLI, following it: it says why and exits non-zero.
    let (kubeconfig, _) = env
        .plane
        .client_as("migration-operator", &["system:masters"])
        .await?;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ests"))
        .args([
            "migrate-node",
            "mig-f",
            "--to",
            "mig-tiny",
            "--reason",
            "maintenance",
            "--wait",
            "--timeout-seconds",
            "150",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "refused is a failure: {stdout}");
    assert!(
        stdout.contains("nodemigration/migrate-mig-f created") && stderr.contains("refused"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let refused = migration(&env, "migrate-mig-f")
        .await?
        .filter(|m| {
            m.status
                .as_ref()
                .is_some_and(|s| s.phase == MigrationPhase::Refused)
        })
        .context("the migration is refused")?;
    let why = refused
        .status
        .iter()
        .flat_map(|s| s.conditions.iter())
        .find(|c| c.type_ == "Completed")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(why.contains("cpu free"), "says why: {why}");
    assert_eq!(running_pods(&env, ns, "").await?, before, "nothing moved");
    let records = bound_records(&env, ns).await?;
    assert!(records.values().all(|(_, node, _)| node == "mig-f"));
    Ok(())
}

#[tokio::test]
async fn a_ready_nodes_move_respects_its_pod_disruption_budget() -> anyhow::Result<()> {
    let env = migration_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let ns = "mig-maint";
    create_nodes(&env.client, &[node("mig-g", "maint", "50")]).await?;
    namespace(&env, ns).await?;
    apply(&env, ns, &static_set("kept", 2, "maint", None)).await?;
    let before = wait_for("2 pods Running", T, || async {
        let pods = running_pods(&env, ns, "").await?;
        Ok((pods.len() == 2 && bound_records(&env, ns).await?.len() == 2).then_some(pods))
    })
    .await?;
    // No voluntary disruption allowed for now.
    apply(
        &env,
        ns,
        &json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "kept"},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "kept"}}}
        }),
    )
    .await?;
    create_nodes(&env.client, &[node("mig-h", "maint", "50")]).await?;
    let api: Api<NodeMigration> = Api::all(env.client.clone());
    let m: NodeMigration = serde_json::from_value(json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "NodeMigration",
        "metadata": {"name": "move-mig-g"},
        "spec": {"sourceNode": "mig-g", "targetNode": "mig-h", "reason": "kernel upgrade"}
    }))?;
    api.create(&PostParams::default(), &m).await?;
    // The records move and the node is cordoned, but the budget keeps both pods.
    let refused = wait_for("records moved, evictions refused", T, || async {
        let m = migration(&env, "move-mig-g").await?;
        let status = m.and_then(|m| m.status);
        Ok(status
            .filter(|s| {
                s.mode == Some(ests_api::MigrationMode::Maintenance)
                    && s.pods.len() == 2
                    && s.conditions
                        .iter()
                        .any(|c| c.type_ == "Completed" && c.message.starts_with("0 of 2"))
            })
            .map(|_| ()))
    })
    .await;
    if let Err(e) = refused {
        anyhow::bail!(
            "{e}\nmigration: {:?}",
            migration(&env, "move-mig-g").await?.and_then(|m| m.status)
        );
    }
    let node: Node = Api::<Node>::all(env.client.clone()).get("mig-g").await?;
    assert_eq!(
        node.spec.as_ref().and_then(|s| s.unschedulable),
        Some(true),
        "cordoned"
    );
    assert!(
        node.spec
            .and_then(|s| s.taints)
            .is_none_or(|ts| ts.iter().all(|t| t.key != keys::OUT_OF_SERVICE_TAINT)),
        "a Ready node is never tainted out-of-service"
    );
    assert_eq!(
        running_pods(&env, ns, "").await?,
        before,
        "the budget kept both pods"
    );
    // The budget allows one at a time: both move, one after the other, keeping their IPs.
    let budgets: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(env.client.clone(), ns);
    budgets
        .patch(
            "kept",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"minAvailable": 1}})),
        )
        .await?;
    wait_completed(&env, ns, "move-mig-g").await?;
    assert_moved_with_addresses(&env, ns, &before, "mig-h").await?;
    assert!(
        Api::<Node>::all(env.client.clone())
            .get_opt("mig-g")
            .await?
            .is_some(),
        "a node in maintenance stays (cordoned) for the operator"
    );
    checker.finish()
}

#[tokio::test]
async fn a_ready_nodes_blocks_move_only_once_their_pods_are_gone() -> anyhow::Result<()> {
    let env = migration_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let ns = "mig-maint-ranged";
    create_nodes(&env.client, &[node("mig-i", "maint-ranged", "50")]).await?;
    namespace(&env, ns).await?;
    apply(
        &env,
        ns,
        &json!({
            "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "StaticIPPool",
            "metadata": {"name": "mig-pool-maint"},
            "spec": {"cidrs": ["10.44.0.0/24"], "ipv4BlockPrefixLength": 28}
        }),
    )
    .await?;
    // Two range-mode pods on mig-i (their set allows both down at once), held by a budget.
    apply(
        &env,
        ns,
        &static_set("ranged", 2, "maint-ranged", Some("mig-pool-maint")),
    )
    .await?;
    let before = wait_for("2 range-mode pods Running", T, || async {
        let pods = running_pods(&env, ns, "").await?;
        Ok((pods.len() == 2 && bound_records(&env, ns).await?.len() == 2).then_some(pods))
    })
    .await?;
    let blocks = blocks_of(&env, "mig-i").await?;
    assert!(!blocks.is_empty(), "mig-i holds the pool's blocks");
    apply(
        &env,
        ns,
        &json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "ranged"},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "ranged"}}}
        }),
    )
    .await?;
    create_nodes(&env.client, &[node("mig-j", "maint-ranged", "50")]).await?;
    let api: Api<NodeMigration> = Api::all(env.client.clone());
    let m: NodeMigration = serde_json::from_value(json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "NodeMigration",
        "metadata": {"name": "move-mig-i"},
        "spec": {"sourceNode": "mig-i", "targetNode": "mig-j", "reason": "kernel upgrade"}
    }))?;
    api.create(&PostParams::default(), &m).await?;
    // The budget refuses the evictions: the pods keep running on mig-i, and so the routes
    // and blocks they use stay there.
    let held = wait_for(
        "the migration waits for the pods using mig-i's blocks",
        T,
        || async {
            let status = migration(&env, "move-mig-i").await?.and_then(|m| m.status);
            let waiting = status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Completed" && c.message.contains("still use its IP blocks")
                })
            });
            let moved = blocks_of(&env, "mig-i").await? != blocks;
            Ok((waiting || moved).then_some(status))
        },
    )
    .await?;
    assert_eq!(
        blocks_of(&env, "mig-i").await?,
        blocks,
        "the blocks stay while their pods run; migration: {held:?}; checker: {:?}",
        checker.violations()
    );
    assert!(
        held.iter()
            .flat_map(|s| s.conditions.iter())
            .all(|c| c.type_ != "NetworkMoved" || c.status != "True"),
        "the routes stay while their pods run: {held:?}"
    );
    let node: Node = Api::<Node>::all(env.client.clone()).get("mig-i").await?;
    assert_eq!(
        node.spec.as_ref().and_then(|s| s.unschedulable),
        Some(true),
        "cordoned before anything moves"
    );
    assert_eq!(
        running_pods(&env, ns, "").await?,
        before,
        "the budget kept both"
    );
    // The budget lets go: both stop, then the routes and blocks move and the pods come back
    // on mig-j with their addresses.
    let budgets: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        Api::namespaced(env.client.clone(), ns);
    budgets
        .patch(
            "ranged",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"minAvailable": 0}})),
        )
        .await?;
    wait_completed(&env, ns, "move-mig-i").await?;
    assert_moved_with_addresses(&env, ns, &before, "mig-j").await?;
    assert_eq!(
        blocks_of(&env, "mig-j").await?,
        blocks,
        "mig-i's blocks moved"
    );
    checker.finish()
}

#[tokio::test]
async fn a_rollout_and_a_maintenance_migration_together_stay_within_max_unavailable()
-> anyhow::Result<()> {
    let env = migration_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let ns = "mig-budget";
    let min_ready = 6;
    create_nodes(&env.client, &[node("mig-k", "budget", "50")]).await?;
    let sets = namespace(&env, ns).await?;
    let mut set = static_set("both", 3, "budget", None);
    set["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] = json!(1);
    set["spec"]["minReadySeconds"] = json!(min_ready);
    apply(&env, ns, &set).await?;
    let before = wait_for("3 pods Running with their records", T, || async {
        let pods = running_pods(&env, ns, "").await?;
        Ok((pods.len() == 3 && bound_records(&env, ns).await?.len() == 3).then_some(pods))
    })
    .await?;
    wait_status(&sets, "both", "3 available", T, |s| {
        s.available_replicas == 3
    })
    .await?;
    // A pod is available only once Ready for minReadySeconds: a pod just moved, Ready but not
    // yet available, still counts against the budget the rollout spends too.
    let monitor = PodMonitor::start_with_min_ready(
        env.client.clone(),
        ns,
        "app=both",
        names("both", 0..3),
        min_ready,
    )
    .await?;
    create_nodes(&env.client, &[node("mig-l", "budget", "50")]).await?;
    // The rollout and the migration start together.
    patch(
        &sets,
        "both",
        new_template(Some("app"), "app:v2", json!({})),
    )
    .await?;
    let m: NodeMigration = serde_json::from_value(json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "NodeMigration",
        "metadata": {"name": "move-mig-k"},
        "spec": {"sourceNode": "mig-k", "targetNode": "mig-l", "reason": "kernel upgrade"}
    }))?;
    Api::<NodeMigration>::all(env.client.clone())
        .create(&PostParams::default(), &m)
        .await?;
    let done = wait_for("the migration and the rollout finish", T, || async {
        let completed = migration(&env, "move-mig-k").await?.is_some_and(|m| {
            m.status
                .is_some_and(|s| s.phase == MigrationPhase::Completed)
        });
        let set = sets.get("both").await?;
        let rolled = set.status.as_ref().is_some_and(|s| {
            s.observed_generation == set.metadata.generation
                && s.updated_replicas == 3
                && s.available_replicas == 3
                && s.updated_available_replicas == 3
        });
        Ok((completed && rolled).then_some(()))
    })
    .await;
    if let Err(e) = done {
        anyhow::bail!(
            "{e}\nset: {:?}\n{}",
            sets.get("both").await?.status,
            diagnose(&env, ns, "move-mig-k").await?
        );
    }
    assert!(
        monitor.max_unavailable() <= 1,
        "{} pods of the set were unavailable at once (maxUnavailable 1); deleted in order {:?}",
        monitor.max_unavailable(),
        monitor.deleted()
    );
    assert_moved_with_addresses(&env, ns, &before, "mig-l").await?;
    checker.finish()
}

#[tokio::test]
async fn a_node_that_goes_not_ready_during_maintenance_is_fenced_before_anything_is_released()
-> anyhow::Result<()> {
    let env = migration_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "mig-down";
    create_nodes(&env.client, &[node("mig-m", "down", "50")]).await?;
    namespace(&env, ns).await?;
    apply(&env, ns, &static_set("held", 2, "down", None)).await?;
    let before = wait_for("2 pods Running", T, || async {
        let pods = running_pods(&env, ns, "").await?;
        Ok((pods.len() == 2 && bound_records(&env, ns).await?.len() == 2).then_some(pods))
    })
    .await?;
    // The budget refuses every eviction: the maintenance move cannot finish by itself.
    apply(
        &env,
        ns,
        &json!({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": "held"},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "held"}}}
        }),
    )
    .await?;
    create_nodes(&env.client, &[node("mig-n", "down", "50")]).await?;
    let m: NodeMigration = serde_json::from_value(json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "NodeMigration",
        "metadata": {"name": "move-mig-m"},
        "spec": {"sourceNode": "mig-m", "targetNode": "mig-n", "reason": "kernel upgrade"}
    }))?;
    Api::<NodeMigration>::all(env.client.clone())
        .create(&PostParams::default(), &m)
        .await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    wait_for("both pods asked to leave, in maintenance", T, || async {
        let maintenance = migration(&env, "move-mig-m").await?.is_some_and(|m| {
            m.status
                .is_some_and(|s| s.mode == Some(ests_api::MigrationMode::Maintenance))
        });
        let asked = pods
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|p| p.annotations().contains_key(keys::EVICT_FOR))
            .count();
        Ok((maintenance && asked == 2).then_some(()))
    })
    .await?;
    // The node dies in the middle of its move.
    kill_node(&env.client, "mig-m").await?;
    let fencing = wait_for(
        "the move turned into a failure move, waiting for fencing",
        not_ready_timeout() + T,
        || async {
            Ok(migration(&env, "move-mig-m").await?.filter(|m| {
                m.status.as_ref().is_some_and(|s| {
                    s.mode == Some(ests_api::MigrationMode::Failure)
                        && s.phase == MigrationPhase::Fencing
                })
            }))
        },
    )
    .await;
    if let Err(e) = fencing {
        anyhow::bail!("{e}\n{}", diagnose(&env, ns, "move-mig-m").await?);
    }
    // Nothing of it is released: its pods stay (they may still run, with their addresses),
    // no out-of-service taint, nothing started on the target.
    for (name, (uid, _, _)) in &before {
        let pod = pods.get(name).await?;
        assert_eq!(pod.uid().as_ref(), Some(uid), "{name} not re-created");
        assert!(
            pod.metadata.deletion_timestamp.is_none(),
            "{name} not deleted"
        );
    }
    let node: Node = Api::<Node>::all(env.client.clone()).get("mig-m").await?;
    assert!(
        node.spec
            .and_then(|s| s.taints)
            .is_none_or(|ts| ts.iter().all(|t| t.key != keys::OUT_OF_SERVICE_TAINT)),
        "no out-of-service taint before fencing"
    );
    // Fenced: the pods come back on the target with their addresses.
    std::fs::write(fence_dir(&env).join("fence-yes-mig-m"), "")?;
    wait_completed(&env, ns, "move-mig-m").await?;
    assert_moved_with_addresses(&env, ns, &before, "mig-n").await?;
    Ok(())
}

#[tokio::test]
async fn kubectl_ests_migrate_node_moves_a_ready_node_and_follows_it_to_the_end()
-> anyhow::Result<()> {
    use clap::Parser;
    let env = migration_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let ns = "mig-plugin";
    create_nodes(&env.client, &[node("mig-p", "plugin", "50")]).await?;
    namespace(&env, ns).await?;
    apply(&env, ns, &static_set("app", 2, "plugin", None)).await?;
    let before = wait_for("2 pods Running", T, || async {
        let pods = running_pods(&env, ns, "").await?;
        Ok((pods.len() == 2 && bound_records(&env, ns).await?.len() == 2).then_some(pods))
    })
    .await?;
    create_nodes(&env.client, &[node("mig-q", "plugin", "50")]).await?;
    let kubeconfig = env.plane.kubeconfig.display().to_string();
    let cli = kubectl_ests::Cli::try_parse_from([
        "kubectl-ests",
        "--kubeconfig",
        &kubeconfig,
        "migrate-node",
        "mig-p",
        "--to",
        "mig-q",
        "--reason",
        "kernel upgrade",
        "--wait",
        "--timeout",
        "150s",
    ])?;
    let mut out = Vec::new();
    let result = kubectl_ests::cli::run_with(cli, &mut out, false).await;
    let printed = String::from_utf8_lossy(&out).into_owned();
    result.map_err(|e| e.context(format!("kubectl ests migrate-node printed:\n{printed}")))?;
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("nodemigration/migrate-mig-p created"),
        "{printed}"
    );
    assert!(
        lines.last().is_some_and(
            |l| l.starts_with("Completed: mig-p -> mig-q, 2/2 static-IP pods on the target")
        ),
        "progress ends with the completion: {printed}"
    );
    assert_moved_with_addresses(&env, ns, &before, "mig-q").await?;
    checker.finish()
}
