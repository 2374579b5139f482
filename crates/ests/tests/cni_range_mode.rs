//! IP range mode on the real node with ests's own network: the reference `ptp` plugin with
//! `ests-cni` as its IPAM, the node agent as a process, the extender binding range-mode
//! pods (an address of the chosen node's blocks, written on the pod before it runs).
//!
//! - A first-time range-mode pod starts on its static address (the bind's), answers there,
//!   and keeps it when re-created; a re-created pod whose address lies in a block another
//!   node owns is refused by the agent — it stays ContainerCreating with the reason in its
//!   events and holds nothing — and starts on its address once the block is back.
//! - A KWOK node holding range-mode pods dies and is fenced; its blocks move to the real
//!   node, and every pod comes up there with its address and answers on it. The time from
//!   fencing to all reachable is printed (target <= 15 s).
//!
//! `ests-cni` is the binary `cargo test --workspace` builds beside `ests`; a test run of this
//! package alone needs `cargo build -p ests-cni` first (the test says so).

mod support;

use std::net::IpAddr;
use std::time::Instant;

use anyhow::Context;
use ests_api::{IPBlock, MigrationPhase, NodeMigration, keys};
use ests_testenv::nodes::{NodeSpec, create_nodes, kill_node, not_ready_timeout};
use ests_testenv::real_node::images::ANSWER_PORT;
use ests_testenv::real_node::{NODE_KEY, RealNode, wait_answer};
use ests_testenv::{InvariantChecker, LogsOnFailure, cluster_lock, wait_for};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::cni::{MainPlugin, install_network, table_entries};
use support::real_node::{TIMEOUT, answer_set, ready_pod, ready_pods, real_namespace, recreated};
use support::{
    Env, apply, bound_records, names, real_node_env, start_controller, start_extender,
    start_webhook, wait_status,
};

/// The real node with the controller leaving range-mode addresses to the extender's bind,
/// the webhook, the binding extender, the agent and the ests network (ptp), once per binary.
async fn range_env() -> anyhow::Result<Option<(Env, &'static RealNode)>> {
    static READY: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let Some((env, node)) = real_node_env().await? else {
        return Ok(None);
    };
    READY
        .get_or_try_init(|| async {
            env.plane.kill_process("ests-controller")?;
            start_controller(
                env.plane,
                "ests-controller",
                &["--leader-election=false", "--extender-binds"],
            )
            .await?;
            start_webhook(&env).await?;
            start_extender(env.plane, true).await?;
            install_network(&env, node, MainPlugin::Ptp).await
        })
        .await?;
    Ok(Some((env, node)))
}

/// An IP pool of /28 blocks.
async fn pool(env: &Env, name: &str, cidr: &str) -> anyhow::Result<()> {
    apply(
        env,
        "default",
        &json!({
            "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "StaticIPPool",
            "metadata": {"name": name},
            "spec": {"cidrs": [cidr], "ipv4BlockPrefixLength": 28}
        }),
    )
    .await
}

/// A range-mode set of the test image on the real node, addresses kept for ever.
fn ranged_set(name: &str, replicas: i32, pool: &str) -> Value {
    let mut set = answer_set(name, replicas);
    set["metadata"]["annotations"] = json!({
        keys::STATIC_IP_ENABLE: "true",
        keys::STATIC_IP_POOL: pool,
        keys::STATIC_IP_RELEASE_POLICY: "Never",
    });
    set
}

/// Every IP block: (name, CIDR, owning node).
async fn blocks(env: &Env) -> anyhow::Result<Vec<(String, IpNet, Option<String>)>> {
    Api::<IPBlock>::all(env.client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|b| {
            let cidr = b
                .spec
                .cidr
                .parse()
                .with_context(|| format!("block {} CIDR", b.name_any()))?;
            Ok((b.name_any(), cidr, b.spec.node.clone()))
        })
        .collect()
}

/// The block `ip` lies in.
fn block_of(
    blocks: &[(String, IpNet, Option<String>)],
    ip: IpAddr,
) -> Option<&(String, IpNet, Option<String>)> {
    blocks.iter().find(|(_, cidr, _)| cidr.contains(&ip))
}

async fn set_block_node(env: &Env, block: &str, node: &str) -> anyhow::Result<()> {
    Api::<IPBlock>::all(env.client.clone())
        .patch(
            block,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"node": node}})),
        )
        .await
        .with_context(|| format!("moving block {block} to {node}"))?;
    Ok(())
}

#[tokio::test]
async fn range_mode_pods_start_on_their_block_address_and_a_foreign_one_is_refused()
-> anyhow::Result<()> {
    let Some((env, node)) = range_env().await? else {
        return Ok(());
    };
    let _logs = LogsOnFailure(env.plane);
    let _serial = cluster_lock().await;
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let ns = "range-real";
    let sets = real_namespace(&env, ns).await?;
    pool(&env, "real-pool", "10.89.0.0/24").await?;
    apply(&env, ns, &ranged_set("ranged", 4, "real-pool")).await?;
    wait_status(&sets, "ranged", "4 ready", TIMEOUT, |s| {
        s.ready_replicas == 4
    })
    .await
    .map_err(|e| e.context(node.log_tails(30)))?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let all = names("ranged", 0..4);
    let first = ready_pods(&pods, &all, TIMEOUT).await?;
    let records = bound_records(&env, ns).await?;
    let owned = blocks(&env).await?;
    for (name, (uid, ip)) in &first {
        let pod = pods.get(name).await?;
        // First start already on the static address: the bind wrote it before the pod ran,
        // and the pod's one and only sandbox has it.
        assert_eq!(
            pod.annotations().get(keys::STATIC_IP_POD_IP),
            Some(&ip.to_string()),
            "{name} runs on the address its bind wrote"
        );
        assert_eq!(records[name].2, ip.to_string(), "{name}'s record");
        let block = block_of(&owned, *ip).with_context(|| format!("{name}'s {ip} in no block"))?;
        assert_eq!(
            block.2.as_deref(),
            Some(node.name.as_str()),
            "{name}'s block {} belongs to the real node",
            block.0
        );
        let held: Vec<String> = table_entries(&env)?
            .into_iter()
            .filter(|(u, _)| u == uid)
            .map(|(_, a)| a)
            .collect();
        assert_eq!(held, vec![ip.to_string()], "{name}'s one attachment");
        assert_eq!(
            wait_answer(*ip, ANSWER_PORT, TIMEOUT).await?,
            format!("{name} v1")
        );
    }

    // Re-created, a pod starts on its address again.
    let (_, ip) = first["ranged-1"].clone();
    let back = recreated(&pods, "ranged-1", TIMEOUT).await?;
    assert_eq!(back.1, ip, "ranged-1 came back with its address");
    assert_eq!(wait_answer(ip, ANSWER_PORT, TIMEOUT).await?, "ranged-1 v1");
    // Moving a block from under running pods is exactly what the checker forbids; it has
    // seen everything up to here.
    checker.finish()?;

    // The block of ranged-3 now belongs to another node (a migration's move that this
    // pod's re-creation raced): the agent refuses the address rather than blackhole it.
    let (old_uid, ip) = first["ranged-3"].clone();
    let (block, _, _) = block_of(&owned, ip).context("ranged-3's block")?.clone();
    create_nodes(&env.client, &[NodeSpec::new("range-other").owned_by(ns)]).await?;
    set_block_node(&env, &block, "range-other").await?;
    pods.delete("ranged-3", &DeleteParams::default()).await?;
    let reason = format!("not in an IP block owned by node {}", node.name);
    let events: Api<Event> = Api::namespaced(env.client.clone(), ns);
    let refused = wait_for(
        "ranged-3's sandbox refused with the reason",
        TIMEOUT,
        || async {
            let Some(pod) = pods.get_opt("ranged-3").await? else {
                return Ok(None);
            };
            let uid = pod.uid().unwrap_or_default();
            if uid == old_uid {
                return Ok(None);
            }
            let listed = events
                .list(&ListParams::default().fields(&format!(
                    "involvedObject.name=ranged-3,involvedObject.uid={uid}"
                )))
                .await?;
            Ok(listed
                .items
                .into_iter()
                .find(|e| e.message.as_deref().is_some_and(|m| m.contains(&reason)))
                .map(|e| (uid, pod, e)))
        },
    )
    .await?;
    let (new_uid, pod, event) = refused;
    assert_eq!(event.reason.as_deref(), Some("FailedCreatePodSandBox"));
    assert!(
        pod.status
            .as_ref()
            .and_then(|s| s.pod_ip.as_ref())
            .is_none(),
        "ranged-3 has no address while refused"
    );
    assert!(
        !table_entries(&env)?.iter().any(|(u, _)| *u == new_uid),
        "nothing is held for the refused pod"
    );
    // The block back on this node: the kubelet's next try gets the address.
    set_block_node(&env, &block, &node.name).await?;
    let back = wait_for("ranged-3 Ready on its address", TIMEOUT, || {
        ready_pod(&pods, "ranged-3")
    })
    .await?;
    assert_eq!(back, (new_uid, ip), "ranged-3 on its address at last");
    assert_eq!(wait_answer(ip, ANSWER_PORT, TIMEOUT).await?, "ranged-3 v1");
    Api::<Node>::all(env.client.clone())
        .delete("range-other", &DeleteParams::default())
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_dead_nodes_range_mode_pods_move_to_the_real_node_with_their_addresses()
-> anyhow::Result<()> {
    let Some((env, node)) = range_env().await? else {
        return Ok(());
    };
    let _logs = LogsOnFailure(env.plane);
    let _serial = cluster_lock().await;
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let ns = "range-move";
    let sets = real_namespace(&env, ns).await?;
    pool(&env, "move-pool", "10.89.1.0/24").await?;
    // The source: a KWOK node the set's pods fit on as well as on the real node. The real
    // node is cordoned while they are placed, so they all land on the source.
    let source = "move-src";
    create_nodes(
        &env.client,
        &[NodeSpec::new(source).label(NODE_KEY, "true").owned_by(ns)],
    )
    .await?;
    let cordon = |on: bool| {
        let nodes: Api<Node> = Api::all(env.client.clone());
        let name = node.name.clone();
        async move {
            nodes
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"unschedulable": on}})),
                )
                .await
                .context("cordoning the real node")
        }
    };
    cordon(true).await?;
    let mut set = ranged_set("moved", 4, "move-pool");
    let spec = &mut set["spec"]["template"]["spec"];
    spec["tolerations"]
        .as_array_mut()
        .context("the placement's tolerations")?
        .push(json!({"key": "ests.test/owner", "operator": "Equal", "value": ns, "effect": "NoSchedule"}));
    apply(&env, ns, &set).await?;
    let placed = wait_status(&sets, "moved", "4 ready on the source", TIMEOUT, |s| {
        s.ready_replicas == 4
    })
    .await;
    cordon(false).await?;
    placed?;
    let before = wait_for("4 records Bound on the source", TIMEOUT, || async {
        let records = bound_records(&env, ns).await?;
        Ok(
            (records.len() == 4 && records.values().all(|(_, n, _)| n == source))
                .then_some(records),
        )
    })
    .await?;
    let source_blocks: Vec<String> = blocks(&env)
        .await?
        .into_iter()
        .filter(|(_, _, n)| n.as_deref() == Some(source))
        .map(|(name, _, _)| name)
        .collect();
    assert!(!source_blocks.is_empty(), "the source owns blocks");

    // The source dies; once NotReady, the operator confirms it is fenced and names the
    // real node as the target.
    kill_node(&env.client, source).await?;
    let nodes: Api<Node> = Api::all(env.client.clone());
    wait_for(
        "the source NotReady",
        not_ready_timeout() + TIMEOUT,
        || async {
            let n = nodes.get(source).await?;
            let ready = n
                .status
                .and_then(|s| s.conditions)
                .into_iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            Ok((!ready).then_some(()))
        },
    )
    .await?;
    let migrations: Api<NodeMigration> = Api::all(env.client.clone());
    migrations
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "NodeMigration",
                "metadata": {"name": "move-to-real"},
                "spec": {"sourceNode": source, "targetNode": node.name, "confirmFenced": true,
                         "reason": "e2e: the source is gone"}
            }))?,
        )
        .await?;
    wait_for("the migration is fenced", TIMEOUT, || async {
        Ok(migrations
            .get("move-to-real")
            .await?
            .status
            .and_then(|s| s.fenced_at))
    })
    .await?;
    let fenced = Instant::now();

    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let all = names("moved", 0..4);
    let after = ready_pods(&pods, &all, TIMEOUT).await?;
    for name in &all {
        let (_, _, ip) = &before[name];
        let ip: IpAddr = ip.parse()?;
        assert_eq!(after[name].1, ip, "{name} kept its address");
        assert_eq!(
            wait_answer(ip, ANSWER_PORT, TIMEOUT).await?,
            format!("{name} v1")
        );
    }
    let reachable = fenced.elapsed();
    for name in &all {
        let pod = pods.get(name).await?;
        assert_eq!(
            pod.spec.and_then(|s| s.node_name).as_deref(),
            Some(node.name.as_str()),
            "{name} runs on the real node"
        );
    }
    println!(
        "cni_range_mode: fencing to all {} pods answering on their addresses on the real node: {:.1} s (target <= 15 s)",
        all.len(),
        reachable.as_secs_f64()
    );
    let done = wait_for("the migration completes", TIMEOUT, || async {
        Ok(migrations
            .get("move-to-real")
            .await?
            .status
            .filter(|s| s.phase == MigrationPhase::Completed))
    })
    .await?;
    assert_eq!(done.target_node.as_deref(), Some(node.name.as_str()));
    let moved: Vec<String> = blocks(&env)
        .await?
        .into_iter()
        .filter(|(name, _, n)| source_blocks.contains(name) && n.as_deref() == Some(&node.name))
        .map(|(name, _, _)| name)
        .collect();
    assert_eq!(
        moved, source_blocks,
        "the source's blocks belong to the real node"
    );
    checker.finish()
}
