//! The real node leaves the host as it found it: after a normal stop, and after the process
//! that started it is killed (its watchdog stops everything and runs the undo script). Each
//! test compares a fingerprint of the host (interfaces, routes, iptables rules, mounts,
//! network namespaces, sysctls, fixed paths, cgroups) before and after, with a pod running in
//! between. One real node per machine: the tests take turns.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use ests_testenv::control_plane::{PlaneOptions, client_from_kubeconfig};
use ests_testenv::real_node::host::{Fingerprint, lock_file};
use ests_testenv::real_node::images::{ANSWER_IMAGE, ANSWER_PORT};
use ests_testenv::real_node::{NodeNetwork, RealNode, wait_answer};
use ests_testenv::{ControlPlane, cluster_lock, wait_for};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(120);

fn answer_pod(name: &str) -> anyhow::Result<Pod> {
    let mut spec = json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "answer",
            "image": ANSWER_IMAGE,
            "imagePullPolicy": "Never",
            "readinessProbe": {"tcpSocket": {"port": ANSWER_PORT}, "periodSeconds": 1},
        }],
    });
    if let (Some(spec), Value::Object(placement)) = (spec.as_object_mut(), RealNode::placement()) {
        spec.extend(placement);
    }
    Ok(serde_json::from_value(
        json!({"metadata": {"name": name}, "spec": spec}),
    )?)
}

/// Runs a pod on the real node and waits until it answers at its address.
async fn run_a_pod(client: &Client, name: &str) -> anyhow::Result<()> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    wait_for("the default service account", TIMEOUT, || async {
        Ok(accounts.get_opt("default").await?.map(|_| ()))
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &answer_pod(name)?)
        .await?;
    let ip = ests_testenv::wait::ready_pod_ip(&pods, name, TIMEOUT).await?;
    let answer = wait_answer(ip.parse()?, ANSWER_PORT, TIMEOUT).await?;
    assert_eq!(answer, format!("{name} v1"));
    Ok(())
}

/// Waits until the machine's real-node lock is free: the last node's clean-up is done.
async fn wait_lock_free() -> anyhow::Result<()> {
    wait_for("the real node's lock is free", TIMEOUT, || async {
        let status = Command::new("flock")
            .args(["-n"])
            .arg(lock_file())
            .arg("true")
            .status()?;
        Ok(status.success().then_some(()))
    })
    .await
}

/// The demo, killed (SIGKILL, as a crash would) however the test ends.
struct Demo(std::process::Child);

impl Demo {
    fn kill(&mut self) -> anyhow::Result<()> {
        self.0.kill()?;
        self.0.wait()?;
        Ok(())
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

fn assert_same(before: &Fingerprint, after: &Fingerprint) {
    let diff = before.diff(after);
    assert!(diff.is_empty(), "the host changed:\n{}", diff.join("\n"));
}

#[tokio::test]
async fn a_stopped_node_leaves_the_host_as_it_was() -> anyhow::Result<()> {
    if ests_testenv::real_node::turned_off() {
        return Ok(());
    }
    let _turn = cluster_lock().await;
    wait_lock_free().await?;
    let before = Fingerprint::take()?;
    let plane =
        ControlPlane::start_with(PlaneOptions::for_real_node(NodeNetwork::standard())).await?;
    let node = RealNode::start(&plane).await?;
    let during = Fingerprint::take()?;
    assert!(
        during.links.iter().any(|l| l == &node.network.bridge),
        "the node's bridge is up: {:?}",
        during.links
    );
    run_a_pod(&plane.client().await?, "stopped").await?;
    tokio::task::spawn_blocking(move || drop(node)).await?;
    assert_same(&before, &Fingerprint::take()?);
    plane.stop();
    Ok(())
}

#[tokio::test]
async fn a_killed_demo_leaves_the_host_as_it_was() -> anyhow::Result<()> {
    if ests_testenv::real_node::turned_off() {
        return Ok(());
    }
    let _turn = cluster_lock().await;
    wait_lock_free().await?;
    let before = Fingerprint::take()?;
    let mut demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_ests-dev"))
            .args(["--no-ests", "--nodes=0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    let stdout = demo.0.stdout.take().expect("piped");
    // Read to the end in the background: the demo keeps its standard output open.
    let (found, kubeconfig) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut found = Some(found);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(path) = line.strip_prefix("KUBECONFIG=")
                && let Some(tx) = found.take()
            {
                let _ = tx.send(path.to_string());
            }
        }
    });
    let kubeconfig = kubeconfig.await.ok();
    let Some(kubeconfig) = kubeconfig else {
        anyhow::bail!("ests-dev closed its output without printing its KUBECONFIG");
    };
    let client = client_from_kubeconfig(std::path::Path::new(&kubeconfig)).await?;
    run_a_pod(&client, "killed").await?;
    // As a crash would: no chance to stop anything itself.
    demo.kill()?;
    wait_lock_free().await?;
    assert_same(&before, &Fingerprint::take()?);
    Ok(())
}
