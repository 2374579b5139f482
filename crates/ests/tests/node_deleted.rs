//! A Node object deleted under static-IP pods (an autoscaler, auto-repair, an administrator):
//! Kubernetes' pod garbage collection deletes its pods, and ests places their identities
//! afresh. Record mode keeps each address and forgets the node; IP range mode, by its
//! pool's `nodeDeletionPolicy`, either re-allocates on the new node's blocks (Reallocate,
//! the default: the deleted node's blocks go back to the pool) or keeps addresses and pins
//! for a NodeMigration (Migrate). Nothing is held twice meanwhile (the invariant checker).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use ests_api::{IPBlock, StaticIP, keys};
use ests_testenv::nodes::{NodeSpec, create_nodes, delete_nodes};
use ests_testenv::{InvariantChecker, LogsOnFailure, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use support::*;
use tokio::sync::OnceCell;

/// Pod garbage collection deletes the pods of a deleted node after a 40 s quarantine,
/// checked every 20 s; then the pods are re-created and scheduled.
const T: Duration = Duration::from_secs(240);
const OWNER: &str = "node-deleted";

/// The controller (with the StaticIP manager), the webhook and the extender binding
/// range-mode pods — once per binary.
async fn stack() -> anyhow::Result<Env> {
    static STARTED: OnceCell<()> = OnceCell::const_new();
    let env = bare_env().await?;
    STARTED
        .get_or_try_init(|| async {
            start_controller(
                env.plane,
                "ests-controller",
                &["--leader-election=false", "--extender-binds"],
            )
            .await?;
            start_webhook(&env).await?;
            start_extender(env.plane, true).await.map(|_| ())
        })
        .await?;
    Ok(env)
}

/// A node only the pods of group `group` go to.
fn node(name: &str, group: &str) -> NodeSpec {
    NodeSpec::new(name)
        .capacity("64", "256Gi", "110")
        .label("ests.test/group", group)
        .label("ests.test/owner", OWNER)
        .owned_by(OWNER)
}

fn static_set(name: &str, replicas: i32, group: &str, ip_pool: Option<&str>) -> Value {
    let mut set = simple_set(name, replicas, "Parallel", replicas);
    let mut annotations =
        json!({keys::STATIC_IP_ENABLE: "true", keys::STATIC_IP_RELEASE_POLICY: "Never"});
    if let Some(pool) = ip_pool {
        annotations[keys::STATIC_IP_POOL] = json!(pool);
    }
    set["metadata"]["annotations"] = annotations;
    let spec = &mut set["spec"]["template"]["spec"];
    spec["nodeSelector"] = json!({"ests.test/group": group});
    spec["tolerations"] = json!([
        {"key": "ests.test/owner", "operator": "Equal", "value": OWNER, "effect": "NoSchedule"}
    ]);
    set
}

fn pool(name: &str, cidr: &str, policy: Option<&str>) -> Value {
    let mut pool = json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "StaticIPPool",
        "metadata": {"name": name},
        "spec": {"cidrs": [cidr], "ipv4BlockPrefixLength": 28}
    });
    if let Some(policy) = policy {
        pool["spec"]["nodeDeletionPolicy"] = json!(policy);
    }
    pool
}

/// Records of `ns` by name: (UID, addresses comma-separated, node).
async fn records(
    env: &Env,
    ns: &str,
) -> anyhow::Result<BTreeMap<String, (String, String, Option<String>)>> {
    Ok(Api::<StaticIP>::namespaced(env.client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|r| {
            let ips: Vec<&str> = r.spec.ips.iter().map(|a| a.ip.as_str()).collect();
            let seen = (
                r.uid().unwrap_or_default(),
                ips.join(","),
                r.spec.node.clone(),
            );
            (r.name_any(), seen)
        })
        .collect())
}

/// The blocks of `node`: name -> addresses allocated.
async fn blocks_of(env: &Env, node: &str) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    Ok(Api::<IPBlock>::all(env.client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|b| b.spec.node.as_deref() == Some(node))
        .map(|b| (b.name_any(), b.spec.allocations.keys().cloned().collect()))
        .collect())
}

/// Waits until `count` pods of `ns` run on `node` with records Bound to them there.
async fn settled_on(
    env: &Env,
    ns: &str,
    node: &str,
    count: usize,
) -> anyhow::Result<BTreeMap<String, (String, String, String)>> {
    wait_for(
        format!("{ns}: {count} pods Running on {node} with Bound records"),
        T,
        || async {
            let pods = running_pods(env, ns, "").await?;
            let bound = bound_records(env, ns).await?;
            let settled = pods.len() == count
                && pods.iter().all(|(name, (uid, on, ip))| {
                    on == node
                        && bound.get(name).is_some_and(|(pod, held_on, ips)| {
                            pod == uid && held_on == node && ips == ip
                        })
                });
            Ok(settled.then_some(pods))
        },
    )
    .await
}

#[tokio::test]
async fn a_deleted_nodes_identities_come_back_elsewhere_and_its_blocks_go_back()
-> anyhow::Result<()> {
    let env = stack().await?;
    let _logs = LogsOnFailure(env.plane);
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let ns = "node-deleted";
    create_nodes(&env.client, &[node("del-a", "realloc")]).await?;
    namespace(&env, ns).await?;
    apply(&env, ns, &pool("del-pool", "10.44.0.0/24", None)).await?;
    apply(&env, ns, &static_set("kept", 2, "realloc", None)).await?;
    apply(
        &env,
        ns,
        &static_set("moved", 2, "realloc", Some("del-pool")),
    )
    .await?;
    settled_on(&env, ns, "del-a", 4).await?;
    let before = records(&env, ns).await?;
    assert!(!blocks_of(&env, "del-a").await?.is_empty());

    // del-a goes; del-b is where the pods can go now.
    create_nodes(&env.client, &[node("del-b", "realloc")]).await?;
    delete_nodes(&env.client, &["del-a"]).await?;
    let pods = settled_on(&env, ns, "del-b", 4).await?;
    let after = records(&env, ns).await?;
    let b_blocks = blocks_of(&env, "del-b").await?;
    for name in ["kept-0", "kept-1"] {
        // Record mode: the same record, the same address, on the new node.
        let (uid, ips, _) = &before[name];
        assert_eq!(&after[name].0, uid, "{name} kept its record");
        assert_eq!(&after[name].1, ips, "{name} kept its address");
        assert_eq!(&pods[name].2, ips);
    }
    for name in ["moved-0", "moved-1"] {
        // Range mode, Reallocate: a new record, an address of the new node's blocks.
        assert_ne!(after[name].0, before[name].0, "{name} got a new record");
        let ip = &after[name].1;
        assert!(
            b_blocks.values().any(|held| held.contains(ip)),
            "{name}'s {ip} is on a block of del-b: {b_blocks:?}"
        );
    }
    wait_for("no block left on del-a", T, || async {
        Ok(blocks_of(&env, "del-a").await?.is_empty().then_some(()))
    })
    .await?;
    checker.finish()
}

#[tokio::test]
async fn a_migrate_pool_keeps_a_deleted_nodes_addresses_for_a_node_migration() -> anyhow::Result<()>
{
    let env = stack().await?;
    let _logs = LogsOnFailure(env.plane);
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let ns = "node-deleted-migrate";
    create_nodes(&env.client, &[node("keep-a", "migrate")]).await?;
    namespace(&env, ns).await?;
    apply(
        &env,
        ns,
        &pool("keep-pool", "10.45.0.0/24", Some("Migrate")),
    )
    .await?;
    apply(
        &env,
        ns,
        &static_set("held", 2, "migrate", Some("keep-pool")),
    )
    .await?;
    settled_on(&env, ns, "keep-a", 2).await?;
    let before = records(&env, ns).await?;

    create_nodes(&env.client, &[node("keep-b", "migrate")]).await?;
    delete_nodes(&env.client, &["keep-a"]).await?;
    // The pods come back pinned to the deleted node and wait; the records keep everything.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    wait_for("re-created pods wait, pinned to keep-a", T, || async {
        let waiting = pods
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|p| {
                p.spec.as_ref().is_some_and(|s| s.node_name.is_none())
                    && p.annotations()
                        .get(keys::STATIC_IP_POD_NODE)
                        .map(String::as_str)
                        == Some("keep-a")
            })
            .count();
        Ok((waiting == 2).then_some(()))
    })
    .await?;
    assert_eq!(records(&env, ns).await?, before, "records untouched");

    // The operator moves the deleted node's blocks to keep-b.
    let migration: ests_api::NodeMigration = serde_json::from_value(json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "NodeMigration",
        "metadata": {"name": "keep-a-gone"},
        "spec": {"sourceNode": "keep-a", "targetNode": "keep-b", "confirmFenced": true}
    }))?;
    Api::<ests_api::NodeMigration>::all(env.client.clone())
        .create(&Default::default(), &migration)
        .await?;
    let pods = settled_on(&env, ns, "keep-b", 2).await?;
    let after = records(&env, ns).await?;
    for (name, (uid, ips, _)) in &before {
        assert_eq!(&after[name].0, uid, "{name} kept its record");
        assert_eq!(&after[name].1, ips, "{name} kept its address");
        assert_eq!(&pods[name].2, ips);
    }
    checker.finish()
}
