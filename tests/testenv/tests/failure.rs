//! Failure scenarios the harness makes deterministic: pods kept never Ready or crash-looping
//! from creation, a node killed and seen NotReady by the node lifecycle controller, and the
//! invariant checker catching a pod removed from an unfenced dead node.

use std::time::Duration;

use ests_testenv::nodes::{
    NodeSpec, create_nodes, kill_node, not_ready_timeout, revive_node, wait_node_ready,
};
use ests_testenv::resources::create_namespace;
use ests_testenv::{InvariantChecker, LogsOnFailure, cluster_lock, shared, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

fn pod(
    name: &str,
    node_owner: &str,
    annotations: serde_json::Value,
    index: &str,
) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations, "labels": {"apps.kubernetes.io/pod-index": index}},
        "spec": {
            "containers": [{"name": "app", "image": "app:v1"}],
            "tolerations": [{"key": "ests.test/owner", "operator": "Equal", "value": node_owner, "effect": "NoSchedule"}],
            "nodeSelector": {"ests.test/group": node_owner}
        }
    }))?)
}

async fn running(pods: &Api<Pod>, name: &str) -> anyhow::Result<Pod> {
    wait_for(
        format!("pod {name} Running"),
        Duration::from_secs(60),
        || async {
            let p = pods.get(name).await?;
            let phase = p.status.as_ref().and_then(|s| s.phase.clone());
            Ok((phase.as_deref() == Some("Running")).then_some(p))
        },
    )
    .await
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn waiting_reason(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

#[tokio::test]
async fn faults_chosen_at_creation_keep_pods_unready() -> anyhow::Result<()> {
    let plane = shared().await?;
    let _logs = LogsOnFailure(plane);
    let client = plane.client().await?;
    create_nodes(
        &client,
        &[NodeSpec::new("faults-0")
            .owned_by("faults")
            .label("ests.test/group", "faults")],
    )
    .await?;
    create_namespace(&client, "faults").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "faults");
    let pp = PostParams::default();
    pods.create(&pp, &pod("healthy", "faults", json!({}), "0")?)
        .await?;
    pods.create(
        &pp,
        &pod(
            "never-ready",
            "faults",
            json!({"ests.test/never-ready": "true"}),
            "1",
        )?,
    )
    .await?;
    pods.create(
        &pp,
        &pod(
            "crashing",
            "faults",
            json!({"ests.test/crashloop": "true"}),
            "2",
        )?,
    )
    .await?;
    // Index lists pick single pods: index 4 is listed, index 3 is not.
    pods.create(
        &pp,
        &pod(
            "listed",
            "faults",
            json!({"ests.test/never-ready": "4,5"}),
            "4",
        )?,
    )
    .await?;
    pods.create(
        &pp,
        &pod(
            "unlisted",
            "faults",
            json!({"ests.test/never-ready": "4,5"}),
            "3",
        )?,
    )
    .await?;

    let healthy = running(&pods, "healthy").await?;
    assert!(ready(&healthy));
    let unlisted = running(&pods, "unlisted").await?;
    assert!(ready(&unlisted), "index 3 is not in the list");
    for name in ["never-ready", "listed", "crashing"] {
        let p = running(&pods, name).await?;
        assert!(!ready(&p), "{name} must not be Ready");
        assert!(
            p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some(),
            "{name} has an IP"
        );
    }
    let crashing = pods.get("crashing").await?;
    assert_eq!(
        waiting_reason(&crashing).as_deref(),
        Some("CrashLoopBackOff")
    );

    // A pinned IP annotation decides the pod's IP.
    let pinned = pod(
        "pinned",
        "faults",
        json!({"staticip.jke.jdcloud.com/ip": "172.30.9.9"}),
        "7",
    )?;
    pods.create(&pp, &pinned).await?;
    let pinned = running(&pods, "pinned").await?;
    assert_eq!(
        pinned.status.as_ref().and_then(|s| s.pod_ip.as_deref()),
        Some("172.30.9.9")
    );
    Ok(())
}

async fn dead_node_scenario(client: &Client) -> anyhow::Result<Vec<String>> {
    create_nodes(
        client,
        &[NodeSpec::new("doomed-0")
            .owned_by("doomed")
            .label("ests.test/group", "doomed")],
    )
    .await?;
    create_namespace(client, "doomed").await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "doomed");
    pods.create(
        &PostParams::default(),
        &pod("victim", "doomed", json!({}), "0")?,
    )
    .await?;
    running(&pods, "victim").await?;

    let checker = InvariantChecker::start(client.clone()).await?;
    kill_node(client, "doomed-0").await?;
    wait_node_ready(client, "doomed-0", false, not_ready_timeout()).await?;

    // Nothing runs a dead node's pods down: a graceful delete leaves the pod in place ...
    pods.delete("victim", &DeleteParams::default()).await?;
    let still_there = pods.get("victim").await?;
    assert!(still_there.metadata.deletion_timestamp.is_some());
    // ... and forcing it out while the node is not fenced is what the checker must catch.
    pods.delete("victim", &DeleteParams::default().grace_period(0))
        .await?;
    wait_for(
        "the checker to see the forced delete",
        Duration::from_secs(30),
        || async {
            let v = checker.violations();
            Ok((!v.is_empty()).then_some(v))
        },
    )
    .await?;
    let violations = checker.violations();
    revive_node(client, "doomed-0").await?;
    wait_node_ready(client, "doomed-0", true, Duration::from_secs(60)).await?;
    Ok(violations)
}

#[tokio::test]
async fn killed_node_goes_not_ready_and_forced_deletes_there_are_caught() -> anyhow::Result<()> {
    let _cluster = cluster_lock().await;
    let plane = shared().await?;
    let _logs = LogsOnFailure(plane);
    let client = plane.client().await?;
    let violations = dead_node_scenario(&client).await?;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(
        violations[0].contains("doomed/victim") && violations[0].contains("not fenced"),
        "{violations:?}"
    );
    Ok(())
}
