//! The chart's node agent as real pods: `helm install` of charts/ests with `node.enabled` on
//! the harness's real node, its CNI directories as `node.cni.binDir`/`confDir`, the image the
//! harness builds from this workspace (`ests` and `ests-cni`):
//!
//! - the DaemonSet's init container puts `ests-cni` and the network config list on the host
//!   (bytes of the built plugin; a list the plugin's own parser reads, naming the socket the
//!   agent listens on), and the agent's pod becomes Ready, on the host's network, running
//!   as root with no capability and a read-only root filesystem (as admitted, and as the
//!   process runs), serving its health and metrics on the node's address;
//! - from then on every pod of the node gets its address from the agent running as that
//!   pod: an ordinary pod, the chart's own controller, webhook and extender (installed with
//!   no replica first, then scaled up), and a static-IP set's pods, which answer on their
//!   records' addresses, come back with them when re-created (pinned by the webhook with
//!   ests's own annotations only: no Calico `ipAddrs` under ests's own IPAM) and keep them
//!   across a restart of the agent's pod;
//! - a restarted agent pod rewrites nothing on the host (install-cni only writes what
//!   differs), and the agent's log shows no refused call (its read-only RBAC suffices).
//!
//! `ests-cni` is the binary `cargo test --workspace` builds beside `ests`; a run of this test
//! alone needs `cargo build -p ests-cni` first (the test says so).

mod support;

use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use anyhow::Context;
use ests_api::keys;
use ests_testenv::helm::{Helm, Values};
use ests_testenv::real_node::images::ANSWER_PORT;
use ests_testenv::real_node::{RealNode, wait_answer};
use ests_testenv::{InvariantChecker, LogsOnFailure, wait_for};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};
use serde_json::{Value, json};
use support::Env;
use support::chart::{
    COMPONENTS, NAMESPACE, RELEASE, agent_dirs, agent_pod, agent_values, chart_dir, component_pods,
    diagnosis, http_get, pod_ip, process_facts, restarts,
};
use support::cni::canary;
use support::real_node::{
    ests_cni_binary, from_agent, import_ests_image, ready_pods, real_namespace, recreated,
    static_ip_set,
};

const T: Duration = Duration::from_secs(180);
/// The agent's metrics port (the chart's default `node.metricsPort`), on the node's address.
const METRICS_PORT: u16 = 8084;

/// The agent's pod as admitted and as its process runs: on the host's network, root with no
/// capability, read-only root filesystem, no privilege escalation; its init container done.
async fn check_agent_pod(node: &RealNode, pod: &Pod) -> anyhow::Result<()> {
    let name = pod.name_any();
    let spec = pod.spec.as_ref().context("no spec")?;
    assert_eq!(spec.host_network, Some(true), "{name}");
    assert_eq!(
        spec.node_name.as_deref(),
        Some(node.name.as_str()),
        "{name}"
    );
    assert_eq!(
        pod_ip(pod)?,
        IpAddr::V4(node.network.node_ip),
        "{name} shares the host's network"
    );
    for container in spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
    {
        let context = container.security_context.clone().unwrap_or_default();
        let what = format!("{name}/{}", container.name);
        assert_eq!(context.run_as_user, Some(0), "{what}");
        assert_eq!(context.read_only_root_filesystem, Some(true), "{what}");
        assert_eq!(context.allow_privilege_escalation, Some(false), "{what}");
        let capabilities = context.capabilities.unwrap_or_default();
        assert_eq!(capabilities.drop, Some(vec!["ALL".to_string()]), "{what}");
        assert!(capabilities.add.unwrap_or_default().is_empty(), "{what}");
    }
    let status = pod.status.as_ref().context("no status")?;
    let init = status
        .init_container_statuses
        .as_ref()
        .and_then(|s| s.first())
        .context("no init container status")?;
    let exit = init
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .map(|t| t.exit_code);
    assert_eq!(exit, Some(0), "{name}: install-cni {init:?}");
    let id = status
        .container_statuses
        .as_ref()
        .and_then(|s| s.first()?.container_id.clone())
        .with_context(|| format!("{name} has no running container"))?;
    let facts = process_facts(node, &id).await?;
    assert_eq!(
        facts.uid.split_whitespace().collect::<Vec<_>>(),
        ["0"; 4],
        "{name}"
    );
    assert_eq!(facts.cap_eff, "0000000000000000", "{name}");
    assert!(facts.root_read_only, "{name}: root filesystem writable");
    eprintln!(
        "chart_node: RSS of the agent {name}: {:.1} MiB",
        facts.rss_kib as f64 / 1024.0
    );
    Ok(())
}

/// What install-cni put on the host: the built plugin at `<binDir>/ests-cni` and the list
/// at `<confDir>/00-ests.conflist`, which the plugin reads as naming the agent's socket;
/// and the socket itself, root's alone. Returns the inodes of the two files.
fn check_host_files(node: &RealNode) -> anyhow::Result<(u64, u64)> {
    let binary = node.dir.join("cni/bin/ests-cni");
    let installed =
        std::fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    assert!(
        installed == std::fs::read(ests_cni_binary()?)?,
        "{} is not the built plugin",
        binary.display()
    );
    let binary_meta = std::fs::symlink_metadata(&binary)?;
    assert!(binary_meta.is_file(), "{} is not a file", binary.display());
    assert_eq!(binary_meta.permissions().mode() & 0o7777, 0o755);
    let list = node.dir.join("cni/net.d/00-ests.conflist");
    let text =
        std::fs::read_to_string(&list).with_context(|| format!("reading {}", list.display()))?;
    let ipam = ests_cni::conflist::ipam_as_plugin_reads(&text)
        .with_context(|| format!("the plugin reading {}", list.display()))?;
    let socket = agent_dirs(node).0.join("cni.sock");
    assert_eq!(ipam.agent_socket, socket);
    let parsed: Value = serde_json::from_str(&text)?;
    assert_eq!(parsed["plugins"][0]["bridge"], json!(node.network.bridge));
    let socket_meta = std::fs::metadata(&socket)
        .with_context(|| format!("the agent's socket {}", socket.display()))?;
    assert!(socket_meta.file_type().is_socket());
    assert_eq!(socket_meta.uid(), 0, "the socket is root's");
    assert_eq!(socket_meta.permissions().mode() & 0o777, 0o600);
    Ok((binary_meta.ino(), std::fs::metadata(&list)?.ino()))
}

/// `ADD` requests the agent has answered `ok`, from its /metrics on the node's address.
async fn adds_answered(node: &RealNode) -> anyhow::Result<u64> {
    let (code, body) = http_get(IpAddr::V4(node.network.node_ip), METRICS_PORT, "/metrics").await?;
    anyhow::ensure!(code == 200, "the agent's /metrics answered {code}");
    Ok(body
        .lines()
        .filter(|l| {
            l.starts_with("ests_node_cni_requests_total{")
                && l.contains("command=\"ADD\"")
                && l.contains("result=\"ok\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_ests_cni_on_the_real_node() -> anyhow::Result<()> {
    if ests_testenv::real_node::turned_off() {
        return Ok(());
    }
    let (plane, node) = ests_testenv::shared_real_node().await?;
    let _logs = LogsOnFailure(plane);
    let admin = plane.client().await?;
    let env = Env {
        plane,
        client: admin.clone(),
    };
    let image = import_ests_image(node).await?;
    let checker = InvariantChecker::start(admin.clone()).await?;

    // Installed with the agent and no replica of the Deployments: every pod after this one
    // gets its address from the agent (none from the node's own host-local, whose addresses
    // the agent does not know).
    let values_file = plane.dir.join("chart-node-values.yaml");
    std::fs::write(
        &values_file,
        serde_saphyr::to_string(&agent_values(&image, node, [0; 3])?)?,
    )?;
    let helm = Helm::locate()?;
    let begun = Instant::now();
    let installed = helm
        .install(
            &plane.kubeconfig,
            &chart_dir(),
            RELEASE,
            NAMESPACE,
            &Values::file(&values_file),
            T,
        )
        .await;
    if let Err(e) = installed {
        return Err(e.context(diagnosis(plane, node).await));
    }
    let installed_in = begun.elapsed();

    // The DaemonSet: one pod on the one node it selects, Ready, locked down. (`helm install
    // --wait` counts a DaemonSet ready with `maxUnavailable` pods not ready: here, all of
    // its one pod; so this waits for the pod itself.)
    let daemonsets: Api<DaemonSet> = Api::namespaced(admin.clone(), NAMESPACE);
    wait_for("the DaemonSet's one pod Ready", T, || async {
        let status = daemonsets
            .get(&format!("{RELEASE}-node"))
            .await?
            .status
            .unwrap_or_default();
        Ok((status.desired_number_scheduled == 1 && status.number_ready == 1).then_some(()))
    })
    .await
    .map_err(|e| e.context(node.log_tails(20)))?;
    let agent = agent_pod(&admin, T).await?;
    eprintln!(
        "chart_node: helm install --wait took {:.1}s, the agent's pod Ready {:.1}s after it began",
        installed_in.as_secs_f64(),
        begun.elapsed().as_secs_f64()
    );
    check_agent_pod(node, &agent).await?;
    let (binary_inode, list_inode) = check_host_files(node)?;
    let (code, _) = http_get(IpAddr::V4(node.network.node_ip), METRICS_PORT, "/readyz").await?;
    assert_eq!(code, 200, "the agent's /readyz");

    // An ordinary pod: an address from the agent, answering there. (The runtime loads the
    // new list from its directory a moment after it appears: a pod created before that has
    // an address of host-local's, and is made again.)
    let ns = "cn-pods";
    real_namespace(&env, ns).await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let canary_ip = canary(&pods, true, T)
        .await
        .map_err(|e| e.context(node.log_tails(20)))?;
    assert_eq!(wait_answer(canary_ip, ANSWER_PORT, T).await?, "canary v1");

    // The Deployments scaled up: their pods too get the agent's addresses; the agent's pod
    // is left alone (its values did not change).
    let scaled = agent_values(&image, node, [1; 3])?;
    let scaled_file = plane.dir.join("chart-node-scaled.yaml");
    std::fs::write(&scaled_file, serde_saphyr::to_string(&scaled)?)?;
    helm.upgrade(
        &plane.kubeconfig,
        &chart_dir(),
        RELEASE,
        NAMESPACE,
        &Values::file(&scaled_file),
        T,
    )
    .await
    .map_err(|e| e.context(node.log_tails(20)))?;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NAMESPACE);
    for component in COMPONENTS {
        let name = format!("{RELEASE}-{component}");
        let available = deployments
            .get(&name)
            .await?
            .status
            .and_then(|s| s.available_replicas);
        assert_eq!(available, Some(1), "{name}");
        for pod in component_pods(&admin, component).await? {
            let ip = pod_ip(&pod)?;
            assert!(
                from_agent(ip),
                "{} has {ip}, not the agent's",
                pod.name_any()
            );
        }
    }
    let still = agent_pod(&admin, T).await?;
    assert_eq!(
        still.uid(),
        agent.uid(),
        "the upgrade replaced the agent's pod"
    );

    // A static-IP set (record mode): its pods answer on their records' addresses, the
    // agent's; one re-created comes back with its address, pinned with ests's own
    // annotations only.
    let set = static_ip_set("web", 3, "WhenDeleted");
    support::apply(&env, ns, &set).await?;
    let sets = support::namespace(&env, ns).await?;
    support::wait_status(&sets, "web", "3 ready", T, |s| s.ready_replicas == 3)
        .await
        .map_err(|e| e.context(node.log_tails(20)))?;
    let all = support::names("web", 0..3);
    let first = ready_pods(&pods, &all, T).await?;
    let records = wait_for("3 records Bound", T, || async {
        let r = support::bound_records(&env, ns).await?;
        Ok((r.len() == 3).then_some(r))
    })
    .await?;
    for (name, (_, ip)) in &first {
        assert!(from_agent(*ip), "{name} has {ip}, not the agent's");
        assert_eq!(records[name].2, ip.to_string(), "{name}'s record");
        assert_eq!(
            wait_answer(*ip, ANSWER_PORT, T).await?,
            format!("{name} v1")
        );
    }
    let (_, ip) = recreated(&pods, "web-1", T).await?;
    assert_eq!(ip, first["web-1"].1, "web-1 came back with its address");
    assert_eq!(wait_answer(ip, ANSWER_PORT, T).await?, "web-1 v1");
    let pinned = pods.get("web-1").await?;
    let annotations = pinned.annotations();
    assert_eq!(
        annotations.get(keys::STATIC_IP_POD_IP),
        Some(&ip.to_string()),
        "{annotations:?}"
    );
    assert!(
        !annotations.contains_key("cni.projectcalico.org/ipAddrs"),
        "a Calico annotation under ests's own IPAM: {annotations:?}"
    );

    // The agent's pod replaced: install-cni finds both files as they are and writes
    // nothing; the new agent keeps what the old one handed out (its table is on the host).
    let adds_before = adds_answered(node).await?;
    assert!(adds_before >= 5, "the agent answered {adds_before} ADDs");
    Api::<Pod>::namespaced(admin.clone(), NAMESPACE)
        .delete(&agent.name_any(), &DeleteParams::default())
        .await?;
    let replaced = wait_for("a new agent pod Ready", T, || async {
        let pod = agent_pod(&admin, T).await?;
        Ok((pod.uid() != agent.uid()).then_some(pod))
    })
    .await?;
    check_agent_pod(node, &replaced).await?;
    assert_eq!(
        check_host_files(node)?,
        (binary_inode, list_inode),
        "install-cni rewrote an unchanged file"
    );
    let (_, ip) = recreated(&pods, "web-2", T).await?;
    assert_eq!(ip, first["web-2"].1, "web-2 came back with its address");
    assert_eq!(wait_answer(ip, ANSWER_PORT, T).await?, "web-2 v1");
    assert_eq!(wait_answer(canary_ip, ANSWER_PORT, T).await?, "canary v1");

    // The agent's read-only RBAC sufficed, before and after its restart; it restarted only
    // when told to.
    let logs = plane
        .kubectl(&["logs", "-n", NAMESPACE, &replaced.name_any(), "-c", "agent"])
        .await?;
    let refused: Vec<&str> = logs
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("forbidden"))
        .collect();
    assert!(refused.is_empty(), "the agent was refused: {refused:?}");
    assert!(logs.contains("caches listed"), "{logs}");
    assert!(
        restarts(&replaced).iter().all(|(_, n)| *n == 0),
        "{:?}",
        restarts(&replaced)
    );

    // Clean up: the set and the pod while the agent runs (their DELs reach it), then the
    // release. The chart leaves the CNI's files on the node, as CNI DaemonSets do (pods
    // still running need the plugin for their DEL); the test removes them so the node's
    // own network is back for what runs after.
    sets.delete("web", &DeleteParams::default()).await?;
    pods.delete("canary", &DeleteParams::default()).await?;
    wait_for("the set and its pods gone", T, || async {
        let left = pods.list(&Default::default()).await?.items.len();
        Ok((left == 0 && sets.get_opt("web").await?.is_none()).then_some(()))
    })
    .await?;
    helm.uninstall(&plane.kubeconfig, RELEASE, NAMESPACE, T)
        .await?;
    std::fs::remove_file(node.dir.join("cni/net.d/00-ests.conflist"))?;
    checker.finish()
}
