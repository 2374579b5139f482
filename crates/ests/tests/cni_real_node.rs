//! ests's own CNI on the real node: the reference `bridge` plugin with `ests-cni` as its
//! IPAM, and the node agent (`ests node`) running beside the kubelet as a process. Every pod
//! of the node gets its address from the agent: a static-IP pod its record's, any other pod
//! one that no record keeps. The pods answer over TCP at their addresses (the test image
//! says who it is), and the invariant checker watches that no two pods answer one address.
//!
//! `ests-cni` is the binary `cargo test --workspace` builds beside `ests`; a test run of this
//! package alone needs `cargo build -p ests-cni` first (the test says so).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Instant;

use ests_testenv::real_node::images::ANSWER_PORT;
use ests_testenv::real_node::{RealNode, wait_answer};
use ests_testenv::{InvariantChecker, LogsOnFailure, cluster_lock, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use support::cni::{MainPlugin, agent_api_requests, install_network, start_agent, table_entries};
use support::real_node::{
    TIMEOUT, ordinary_pod, ready_pods, real_namespace, recreated, static_ip_set,
};
use support::{Env, apply, bound_records, names, patch, real_node_env, start_webhook, wait_status};

/// The real node with the webhook, the agent and the ests network (bridge) installed, once
/// per test binary: the agent runs as a process under the controller's identity.
async fn cni_env() -> anyhow::Result<Option<(Env, &'static RealNode)>> {
    static READY: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let Some((env, node)) = real_node_env().await? else {
        return Ok(None);
    };
    READY
        .get_or_try_init(|| async {
            start_webhook(&env).await?;
            install_network(&env, node, MainPlugin::Bridge).await
        })
        .await?;
    Ok(Some((env, node)))
}

#[tokio::test]
async fn static_ip_pods_come_back_with_their_addresses_and_answer_there() -> anyhow::Result<()> {
    let Some((env, node)) = cni_env().await? else {
        return Ok(());
    };
    let _logs = LogsOnFailure(env.plane);
    let _checking = cluster_lock().await;
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let ns = "cni-keep";
    let sets = real_namespace(&env, ns).await?;
    apply(&env, ns, &static_ip_set("web", 6, "WhenDeleted")).await?;
    wait_status(&sets, "web", "6 ready", TIMEOUT, |s| s.ready_replicas == 6)
        .await
        .map_err(|e| e.context(node.log_tails(30)))?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let all = names("web", 0..6);
    let first = ready_pods(&pods, &all, TIMEOUT).await?;
    let records = wait_for("6 records Bound", TIMEOUT, || async {
        let r = bound_records(&env, ns).await?;
        Ok((r.len() == 6).then_some(r))
    })
    .await?;
    for (name, (_, ip)) in &first {
        assert_eq!(
            records[name].2,
            ip.to_string(),
            "{name}'s record keeps its address"
        );
        assert_eq!(
            wait_answer(*ip, ANSWER_PORT, TIMEOUT).await?,
            format!("{name} v1")
        );
    }

    // One pod deleted: it comes back, a new pod, with the same address, and answers there.
    // The CNI path asks the API nothing (the agent's caches are watch-fed).
    let (reads_before, writes_before) = agent_api_requests().await?;
    let (_, ip) = first["web-1"].clone();
    let back = recreated(&pods, "web-1", TIMEOUT).await?;
    assert_eq!(back.1, ip, "web-1 came back with its address");
    let ready_at = Instant::now();
    assert_eq!(wait_answer(ip, ANSWER_PORT, TIMEOUT).await?, "web-1 v1");
    let reachable = ready_at.elapsed();

    // All six deleted at once: each comes back with its own address.
    let before = ready_pods(&pods, &all, TIMEOUT).await?;
    for name in &all {
        pods.delete(name, &DeleteParams::default()).await?;
    }
    let after = wait_for("all six back", TIMEOUT, || async {
        let now = ready_pods(&pods, &all, TIMEOUT).await?;
        Ok(now
            .iter()
            .all(|(n, (uid, _))| *uid != before[n].0)
            .then_some(now))
    })
    .await?;
    for name in &all {
        assert_eq!(after[name].1, first[name].1, "{name} kept its address");
        assert_eq!(
            wait_answer(after[name].1, ANSWER_PORT, TIMEOUT).await?,
            format!("{name} v1")
        );
    }
    let (reads, writes) = agent_api_requests().await?;
    assert_eq!(
        (reads - reads_before, writes - writes_before),
        (0.0, 0.0),
        "API reads and writes of the agent while 7 pods were re-created"
    );
    eprintln!("cni_real_node: a re-created pod answered {reachable:?} after it was seen Ready");
    checker.finish()
}

#[tokio::test]
async fn ordinary_pods_never_get_an_address_a_scaled_in_identity_keeps() -> anyhow::Result<()> {
    let Some((env, _node)) = cni_env().await? else {
        return Ok(());
    };
    let _logs = LogsOnFailure(env.plane);
    let _checking = cluster_lock().await;
    let checker = InvariantChecker::start(env.client.clone()).await?;
    for (ns, release) in [
        ("cni-scale-wd", "WhenDeleted"),
        ("cni-scale-never", "Never"),
    ] {
        let sets = real_namespace(&env, ns).await?;
        apply(&env, ns, &static_ip_set("db", 6, release)).await?;
        wait_status(&sets, "db", "6 ready", TIMEOUT, |s| s.ready_replicas == 6).await?;
        let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
        let first = ready_pods(&pods, &names("db", 0..6), TIMEOUT).await?;
        wait_for("6 records Bound", TIMEOUT, || async {
            Ok((bound_records(&env, ns).await?.len() == 6).then_some(()))
        })
        .await?;

        patch(&sets, "db", json!({"spec": {"replicas": 2}})).await?;
        wait_for("db scaled to 2", TIMEOUT, || async {
            let left = pods.list(&Default::default()).await?.items.len();
            Ok((left == 2).then_some(()))
        })
        .await?;
        // A burst of ordinary pods while identities 2..5 are away: the lowest free
        // addresses of the range are the kept ones, and none of them may be handed out.
        let kept: BTreeSet<IpAddr> = names("db", 2..6).iter().map(|n| first[n].1).collect();
        let burst: Vec<String> = (0..6).map(|i| format!("burst-{i}")).collect();
        for name in &burst {
            pods.create(&PostParams::default(), &ordinary_pod(name))
                .await?;
        }
        let ordinary = ready_pods(&pods, &burst, TIMEOUT).await?;
        for (name, (_, ip)) in &ordinary {
            assert!(
                !kept.contains(ip),
                "{name} got {ip}, kept for a scaled-in identity"
            );
        }
        patch(&sets, "db", json!({"spec": {"replicas": 6}})).await?;
        let again = ready_pods(&pods, &names("db", 0..6), TIMEOUT).await?;
        for name in names("db", 0..6) {
            assert_eq!(
                again[&name].1, first[&name].1,
                "{name} ({release}) came back with its address"
            );
            assert_eq!(
                wait_answer(again[&name].1, ANSWER_PORT, TIMEOUT).await?,
                format!("{name} v1")
            );
        }
        for name in &burst {
            pods.delete(name, &DeleteParams::default()).await?;
        }
    }
    checker.finish()
}

#[tokio::test]
async fn an_agent_killed_during_a_burst_hands_out_nothing_twice_and_forgets_nothing()
-> anyhow::Result<()> {
    let Some((env, node)) = cni_env().await? else {
        return Ok(());
    };
    let _logs = LogsOnFailure(env.plane);
    let _checking = cluster_lock().await;
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let ns = "cni-crash";
    real_namespace(&env, ns).await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let burst: Vec<String> = (0..30).map(|i| format!("burst-{i}")).collect();
    for name in &burst {
        pods.create(&PostParams::default(), &ordinary_pod(name))
            .await?;
    }
    // Killed while the burst's ADDs are under way: some pods have addresses, most not yet.
    wait_for("a few of the burst with addresses", TIMEOUT, || async {
        let with_ip = pods
            .list(&Default::default())
            .await?
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())
            .count();
        Ok((with_ip >= 3).then_some(()))
    })
    .await?;
    env.plane.kill_process("ests-node")?;
    start_agent(&env, node).await?;
    let running = wait_for(
        "all 30 Ready",
        std::time::Duration::from_secs(300),
        || async {
            let now = ready_pods(&pods, &burst, TIMEOUT).await;
            Ok(now.ok())
        },
    )
    .await?;
    let mut seen = BTreeMap::new();
    for (name, (_, ip)) in &running {
        if let Some(other) = seen.insert(*ip, name) {
            panic!("{name} and {other} both have {ip}");
        }
    }
    // The table holds exactly one attachment per pod, with the pod's address: nothing doubled.
    let entries = table_entries(&env)?;
    for (name, (uid, ip)) in &running {
        let held: Vec<&String> = entries
            .iter()
            .filter(|(u, _)| u == uid)
            .map(|(_, a)| a)
            .collect();
        assert_eq!(
            held,
            vec![&ip.to_string()],
            "{name}'s attachments: {entries:?}"
        );
    }
    // Deleted, every pod's DEL reaches the agent: nothing leaked.
    for name in &burst {
        pods.delete(name, &DeleteParams::default()).await?;
    }
    let uids: BTreeSet<String> = running.values().map(|(u, _)| u.clone()).collect();
    wait_for("the burst's attachments gone", TIMEOUT, || async {
        let left: Vec<(String, String)> = table_entries(&env)?
            .into_iter()
            .filter(|(u, _)| uids.contains(u))
            .collect();
        Ok(left.is_empty().then_some(()))
    })
    .await?;
    checker.finish()
}
