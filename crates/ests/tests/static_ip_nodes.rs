//! IP range mode allocates on the pod's node only: an address a record got earlier on
//! another node's block (an allocation whose record write was lost, then the pod came back
//! elsewhere) is never written to the record of a pod on this node; the record gets an
//! address of this node's blocks, and the sweeper frees the stray one.

mod support;

use std::time::Duration;

use ests_api::{IPBlock, StaticIP, keys};
use ests_core::allocator::block_name;
use ests_testenv::{InvariantChecker, LogsOnFailure, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::*;

const T: Duration = Duration::from_secs(120);
const NS: &str = "sip-nodes";
const POOL: &str = "nodes-pool";

#[tokio::test]
async fn an_address_on_another_nodes_block_is_never_written_to_the_record() -> anyhow::Result<()> {
    let env = bare_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let checker = InvariantChecker::start(env.client.clone()).await?;
    ests_testenv::resources::create_namespace(&env.client, NS).await?;
    let pool = json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1",
        "kind": "StaticIPPool",
        "metadata": {"name": POOL},
        "spec": {"cidrs": ["10.61.0.0/24"], "ipv4BlockPrefixLength": 28}
    });
    ests_testenv::resources::apply_value(&env.client, &pool, None, false).await?;
    let (_, as_controller) = env
        .plane
        .client_as(CONTROLLER_USER, CONTROLLER_GROUPS)
        .await?;
    let records: Api<StaticIP> = Api::namespaced(as_controller.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(as_controller, NS);
    let blocks: Api<IPBlock> = Api::all(env.client.clone());

    let record: StaticIP = serde_json::from_value(json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "StaticIP",
        "metadata": {"name": "mover-0", "finalizers": [keys::RECORD_RELEASE_FINALIZER]},
        "spec": {
            "workload": {"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet", "name": "mover", "uid": "mover-uid"},
            "podName": "mover-0", "pool": POOL, "releasePolicy": "Never"
        }
    }))?;
    let record = records.create(&PostParams::default(), &record).await?;
    // An earlier allocation for the record on node-1's block, never written to the record.
    let stray_block = block_name(POOL, &"10.61.0.16/28".parse()?);
    let block: IPBlock = serde_json::from_value(json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "IPBlock",
        "metadata": {"name": stray_block},
        "spec": {"pool": POOL, "cidr": "10.61.0.16/28", "node": "node-1",
                 "allocations": {"10.61.0.17": {"namespace": NS, "name": "mover-0", "uid": record.uid()}}}
    }))?;
    blocks.create(&PostParams::default(), &block).await?;
    start_ests(
        env.plane,
        "ests-static-ip",
        "static-ip",
        &["--leader-election=false"],
    )
    .await?;

    // The pod comes back on node-0.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": "mover-0",
            "labels": {keys::STATIC_IP_POD_LABEL: "true", "app": "mover"},
            "annotations": {keys::STATIC_IP_RECORD_UID: record.uid(), keys::STATIC_IP_RECORD_VERSION: record.resource_version()}
        },
        "spec": {"nodeName": "node-0", "containers": [{"name": "app", "image": "app:v1"}]}
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let written = wait_for("mover-0's record has an address", T, || async {
        let r = records.get("mover-0").await?;
        Ok((!r.spec.ips.is_empty()).then_some(r))
    })
    .await?;
    assert_eq!(written.spec.node.as_deref(), Some("node-0"));
    for a in &written.spec.ips {
        let block = blocks.get(a.block.as_deref().unwrap_or_default()).await?;
        assert_eq!(
            block.spec.node.as_deref(),
            Some("node-0"),
            "{} is on block {} of {:?}",
            a.ip,
            block.name_any(),
            block.spec.node
        );
    }
    wait_for("the stray address on node-1 freed", T, || async {
        let b = blocks.get(&stray_block).await?;
        Ok((!b.spec.allocations.contains_key("10.61.0.17")).then_some(()))
    })
    .await?;
    env.plane.stop_process("ests-static-ip")?;
    checker.finish()
}
