//! Two StaticIP managers with leader election switched off — as a deposed leader and its
//! successor would be — race on one dual-stack pool, and one of them is killed and
//! restarted mid-way. No address is ever handed out twice (the invariant checker watches
//! throughout), every record ends up with one address per family on its pod's node's
//! blocks, the blocks hold exactly the records' addresses (nothing leaked by the loser of a
//! race or by the crash), and releasing the records empties the blocks.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ests_api::{IPBlock, StaticIP, keys};
use ests_testenv::{InvariantChecker, LogsOnFailure, wait_for};
use futures::future::try_join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use support::*;

const T: Duration = Duration::from_secs(180);
const NS: &str = "sip-race";
const POOL: &str = "race-pool";
const RECORDS: usize = 60;

async fn create_identity(records: &Api<StaticIP>, pods: &Api<Pod>, n: usize) -> anyhow::Result<()> {
    let name = format!("racer-{n}");
    let record: StaticIP = serde_json::from_value(json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1",
        "kind": "StaticIP",
        "metadata": {"name": name, "finalizers": [keys::RECORD_RELEASE_FINALIZER]},
        "spec": {
            "workload": {"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet", "name": "racer", "uid": "racer-uid"},
            "podName": name,
            "pool": POOL,
            "releasePolicy": "Never"
        }
    }))?;
    let record = records.create(&PostParams::default(), &record).await?;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": {keys::STATIC_IP_POD_LABEL: "true", "app": "racer"},
            "annotations": {keys::STATIC_IP_RECORD_UID: record.uid(), keys::STATIC_IP_RECORD_VERSION: record.resource_version()}
        },
        "spec": {
            "nodeName": format!("node-{}", n % 3),
            "containers": [{"name": "app", "image": "app:v1"}]
        }
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    Ok(())
}

/// Addresses on the pool's blocks: address -> (record name, block's node).
async fn on_blocks(blocks: &Api<IPBlock>) -> anyhow::Result<BTreeMap<String, (String, String)>> {
    Ok(blocks
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|b| b.spec.pool == POOL)
        .flat_map(|b| {
            let node = b.spec.node.clone().unwrap_or_default();
            b.spec
                .allocations
                .into_iter()
                .map(move |(ip, a)| (ip, (a.name, node.clone())))
        })
        .collect())
}

#[tokio::test]
async fn two_managers_racing_on_one_pool_never_hand_out_an_address_twice() -> anyhow::Result<()> {
    let env = bare_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let checker = InvariantChecker::start(env.client.clone()).await?;
    ests_testenv::resources::create_namespace(&env.client, NS).await?;
    let pool = json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1",
        "kind": "StaticIPPool",
        "metadata": {"name": POOL},
        "spec": {
            "cidrs": ["10.60.0.0/24", "fd00:60::/120"],
            "ipv4BlockPrefixLength": 28,
            "ipv6BlockPrefixLength": 124
        }
    });
    ests_testenv::resources::apply_value(&env.client, &pool, None, false).await?;
    for manager in ["sip-manager-a", "sip-manager-b"] {
        start_ests(
            env.plane,
            manager,
            "static-ip",
            &["--leader-election=false"],
        )
        .await?;
    }

    // Records are the controller's to create: use its identity.
    let (_, as_controller) = env
        .plane
        .client_as(CONTROLLER_USER, CONTROLLER_GROUPS)
        .await?;
    let records: Api<StaticIP> = Api::namespaced(as_controller.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(as_controller, NS);
    let blocks: Api<IPBlock> = Api::all(env.client.clone());

    // Identities arrive in bursts; one manager crashes half-way and comes back.
    try_join_all((0..RECORDS / 2).map(|n| create_identity(&records, &pods, n))).await?;
    env.plane.kill_process("sip-manager-a")?;
    try_join_all((RECORDS / 2..RECORDS).map(|n| create_identity(&records, &pods, n))).await?;
    start_ests(
        env.plane,
        "sip-manager-a",
        "static-ip",
        &["--leader-election=false"],
    )
    .await?;

    let all = wait_for("every record has one address per family", T, || async {
        let list = records.list(&ListParams::default()).await?.items;
        let done = list.len() == RECORDS
            && list.iter().all(|r| {
                r.spec.ips.len() == 2
                    && r.spec.ips.iter().any(|a| a.ip.contains('.'))
                    && r.spec.ips.iter().any(|a| a.ip.contains(':'))
            });
        Ok(done.then_some(list))
    })
    .await?;

    let mut seen: BTreeSet<String> = BTreeSet::new();
    for r in &all {
        for a in &r.spec.ips {
            assert!(seen.insert(a.ip.clone()), "{} handed out twice", a.ip);
        }
    }
    // The blocks hold exactly the records' addresses, each on a block of the pod's node.
    let wanted: BTreeMap<String, (String, String)> = all
        .iter()
        .flat_map(|r| {
            let node = r.spec.node.clone().unwrap_or_default();
            let name = r.name_any();
            r.spec
                .ips
                .iter()
                .map(move |a| (a.ip.clone(), (name.clone(), node.clone())))
        })
        .collect();
    for r in &all {
        let n: usize = r.name_any().trim_start_matches("racer-").parse()?;
        assert_eq!(
            r.spec.node.as_deref(),
            Some(format!("node-{}", n % 3).as_str())
        );
    }
    let settled = wait_for("blocks hold exactly the records' addresses", T, || async {
        Ok((on_blocks(&blocks).await? == wanted).then_some(()))
    })
    .await;
    if let Err(e) = settled {
        let now = on_blocks(&blocks).await?;
        let extra: Vec<_> = now
            .iter()
            .filter(|(ip, h)| wanted.get(*ip) != Some(h))
            .collect();
        let missing: Vec<_> = wanted
            .iter()
            .filter(|(ip, h)| now.get(*ip) != Some(h))
            .collect();
        anyhow::bail!(
            "{e}\non blocks, not in records: {extra:?}\nin records, not on blocks: {missing:?}"
        );
    }
    // Both managers took part: each wrote records, and races were lost and given back.
    let count = |manager: &str, what: &str| {
        std::fs::read_to_string(env.plane.log_path(manager))
            .unwrap_or_default()
            .matches(what)
            .count()
    };
    let written = [
        count("sip-manager-a", "allocated"),
        count("sip-manager-b", "allocated"),
    ];
    let lost = [
        count("sip-manager-a", "lost the race"),
        count("sip-manager-b", "lost the race"),
    ];
    println!("records written per manager: {written:?}; races lost and given back: {lost:?}");

    // Release everything at once: the records' finalizers free the blocks once the pods
    // have gone.
    pods.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    records
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await?;
    wait_for("records gone and blocks empty", T, || async {
        let left = records.list(&ListParams::default()).await?.items.len();
        Ok((left == 0 && on_blocks(&blocks).await?.is_empty()).then_some(()))
    })
    .await?;

    for manager in ["sip-manager-a", "sip-manager-b"] {
        env.plane.stop_process(manager)?;
    }
    checker.finish()
}
