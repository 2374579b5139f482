//! EnhancedStatefulSets on the harness's real node: kubelet, containerd and the reference CNI
//! plugins give every pod a real address on a veth of the node's bridge. The tests reach each
//! pod over TCP from the host (the test image answers with its pod's name), use `kubectl logs`
//! and `kubectl exec`, and reach the `kubernetes` Service from a pod. The invariant checker
//! runs throughout and asks every Ready pod at its address whether it is who it should be.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use ests_testenv::invariants::ANSWER_ANNOTATION;
use ests_testenv::nodes::{NodeSpec, create_nodes};
use ests_testenv::real_node::images::ANSWER_PORT;
use ests_testenv::real_node::{ask, wait_answer};
use ests_testenv::{InvariantChecker, LogsOnFailure, cluster_lock, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use support::real_node::{
    TIMEOUT, answer_container, answer_set, on_real_node, ready_pod, real_namespace, recreated,
};
use support::{apply, real_node_env, wait_status};

#[tokio::test]
async fn set_pods_run_on_the_real_node_and_answer_at_their_addresses() -> anyhow::Result<()> {
    let Some((env, node)) = real_node_env().await? else {
        return Ok(());
    };
    let _logs = LogsOnFailure(env.plane);
    // The checker sees every pod: not while the impostor below runs.
    let _checking = cluster_lock().await;
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let ns = "rn-set";
    let sets = real_namespace(&env, ns).await?;
    apply(&env, ns, &answer_set("web", 3)).await?;
    wait_status(&sets, "web", "3 ready", TIMEOUT, |s| s.ready_replicas == 3)
        .await
        .map_err(|e| e.context(node.log_tails(30)))?;

    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    for i in 0..3 {
        let name = format!("web-{i}");
        let pod = pods.get(&name).await?;
        assert_eq!(
            pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some(node.name.as_str())
        );
        let (_, ip) = ready_pod(&pods, &name).await?.expect("Ready");
        assert!(
            node.network
                .pod_cidr
                .contains(&ip.to_string().parse::<std::net::Ipv4Addr>()?),
            "{name} has {ip}, outside the node's pod range"
        );
        // The address is configured inside the pod's network namespace...
        let addresses = env
            .plane
            .kubectl(&[
                "exec", "-n", ns, &name, "--", "ip", "-o", "-4", "addr", "show", "dev", "eth0",
            ])
            .await?;
        assert!(
            addresses.contains(&format!("inet {ip}/")),
            "{name}: {addresses}"
        );
        // ...and the pod answers there, from the host, as itself.
        let answer = wait_answer(ip, ANSWER_PORT, TIMEOUT).await?;
        assert_eq!(answer, format!("{name} v1"));
        let logs = env.plane.kubectl(&["logs", "-n", ns, &name]).await?;
        assert!(
            logs.contains(&format!("serving {name} v1")),
            "{name} logs: {logs}"
        );
    }

    // A deleted pod comes back, as a new pod, reachable at its (new) address.
    let (_, ip) = recreated(&pods, "web-1", TIMEOUT).await?;
    assert_eq!(wait_answer(ip, ANSWER_PORT, TIMEOUT).await?, "web-1 v1");
    checker.finish()
}

#[tokio::test]
async fn the_invariant_checker_catches_a_pod_answering_as_another() -> anyhow::Result<()> {
    let Some((env, node)) = real_node_env().await? else {
        return Ok(());
    };
    let _logs = LogsOnFailure(env.plane);
    let _checking = cluster_lock().await;
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let ns = "rn-impostor";
    real_namespace(&env, ns).await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    // Its hostname is another pod's name, so it answers as that pod: what the checker sees
    // when one address reaches two pods.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "impostor", "annotations": {ANSWER_ANNOTATION: ANSWER_PORT.to_string()}},
        "spec": on_real_node(json!({
            "hostname": "web-0",
            "terminationGracePeriodSeconds": 1,
            "containers": [answer_container()],
        })),
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let violation = wait_for("the checker's violation", TIMEOUT, || async {
        Ok(checker
            .violations()
            .into_iter()
            .find(|v| v.contains("rn-impostor/impostor")))
    })
    .await
    .map_err(|e| e.context(node.log_tails(30)))?;
    assert!(violation.contains("answered \"web-0 v1\""), "{violation}");
    pods.delete("impostor", &DeleteParams::default().grace_period(0))
        .await?;
    wait_for("impostor gone", TIMEOUT, || async {
        Ok(pods.get_opt("impostor").await?.is_none().then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_pod_on_the_real_node_reaches_the_kubernetes_service() -> anyhow::Result<()> {
    let Some((env, node)) = real_node_env().await? else {
        return Ok(());
    };
    let _logs = LogsOnFailure(env.plane);
    let ns = "rn-service";
    real_namespace(&env, ns).await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "client", "annotations": {ANSWER_ANNOTATION: ANSWER_PORT.to_string()}},
        "spec": on_real_node(json!({
            "terminationGracePeriodSeconds": 1,
            "containers": [answer_container()],
        })),
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    wait_for("client Ready", TIMEOUT, || async {
        ready_pod(&pods, "client").await
    })
    .await
    .map_err(|e| e.context(node.log_tails(30)))?;
    let service_ip = node.network.kubernetes_service_ip().to_string();
    // kube-proxy's rules for the Service may come a moment after the pod.
    let script = format!("echo | nc -w 3 {service_ip} 443 && echo reached");
    wait_for("the kubernetes Service from the pod", TIMEOUT, || async {
        let out = env
            .plane
            .kubectl(&["exec", "-n", ns, "client", "--", "sh", "-c", &script])
            .await?;
        Ok(out.contains("reached").then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_ests_image_runs_on_the_real_node() -> anyhow::Result<()> {
    let Some((env, node)) = real_node_env().await? else {
        return Ok(());
    };
    let _logs = LogsOnFailure(env.plane);
    let image = support::real_node::import_ests_image(node).await?;
    let ns = "rn-image";
    real_namespace(&env, ns).await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    // As the chart runs it: non-root, read-only root filesystem, no capabilities.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "ests-version"},
        "spec": on_real_node(json!({
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "ests",
                "image": image,
                "imagePullPolicy": "Never",
                "args": ["--version"],
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]},
                },
            }],
        })),
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let phase = wait_for("ests-version finished", TIMEOUT, || async {
        let pod = pods.get("ests-version").await?;
        let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
        Ok(matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase))
    })
    .await
    .map_err(|e| e.context(node.log_tails(30)))?;
    let logs = env
        .plane
        .kubectl(&["logs", "-n", ns, "ests-version"])
        .await?;
    assert_eq!(phase, "Succeeded", "logs: {logs}");
    assert!(
        logs.starts_with(&format!("ests {}", env!("CARGO_PKG_VERSION"))),
        "logs: {logs}"
    );
    Ok(())
}

#[tokio::test]
async fn kwok_nodes_work_beside_the_real_node() -> anyhow::Result<()> {
    let Some((env, node)) = real_node_env().await? else {
        return Ok(());
    };
    let _logs = LogsOnFailure(env.plane);
    create_nodes(
        &env.client,
        &[NodeSpec::new("kwok-beside").owned_by("rn-kwok")],
    )
    .await?;
    let ns = "rn-kwok";
    let sets = real_namespace(&env, ns).await?;
    let mut set = support::simple_set("sim", 2, "Parallel", 1);
    set["spec"]["template"]["spec"]["tolerations"] = json!([{"key": "ests.test/owner", "operator": "Equal", "value": "rn-kwok", "effect": "NoSchedule"}]);
    set["spec"]["template"]["spec"]["nodeSelector"] =
        json!({"kubernetes.io/hostname": "kwok-beside"});
    apply(&env, ns, &set).await?;
    wait_status(&sets, "sim", "2 ready", TIMEOUT, |s| s.ready_replicas == 2).await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    for pod in pods.list(&Default::default()).await? {
        let on = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        assert_eq!(
            on.as_deref(),
            Some("kwok-beside"),
            "{} ran on {on:?}",
            pod.name_any()
        );
        assert_ne!(on.as_deref(), Some(node.name.as_str()));
    }
    // KWOK's addresses are not on this machine: the harness never sends anything there.
    let pod = pods.get("sim-0").await?;
    let ip: IpAddr = pod
        .status
        .and_then(|s| s.pod_ip)
        .expect("an address")
        .parse()?;
    let refused = ask(ip, ANSWER_PORT, Duration::from_millis(500)).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| format!("{e:#}").contains("not on this machine")),
        "{refused:?}"
    );
    Ok(())
}
