//! The chart as a cluster admin installs it, running as real pods on the harness's real node:
//!
//! - `helm install --wait` of charts/ests with the image the harness builds from this
//!   workspace's `ests` binary (`localhost/ests/ests:dev`, never pulled) and placement onto the
//!   real node; every Deployment becomes Available, its probes pass (pods Ready, no restart
//!   over the whole test) and its pods run as admitted: non-root, read-only root filesystem,
//!   no capabilities (checked on the pods and on the running processes);
//! - the controller's two replicas elect one leader;
//! - kube-apiserver calls the webhook through its Service: a static-IP set's re-created pod is
//!   pinned (the mutating webhook's annotations) and a bad set is refused (the validating
//!   webhook). The chart's webhook configurations name the Service (`service:`, port 443);
//!   the harness's kube-apiserver runs with `--enable-aggregator-routing=true`, so it dials
//!   the Service's endpoints (the first way of the real-node README; kube-proxy's ClusterIP
//!   rules are the other);
//! - the host's kube-scheduler, configured with the chart's scheduler configuration, calls the
//!   extender through its Service's fixed ClusterIP (kube-proxy's rules on the host) over HTTPS
//!   with the chart-made client certificate: pods wait for it (`ignorable: false`), and its
//!   filter counter grows;
//! - a user with only the built-in `edit` role in a namespace applies a static-IP set whose
//!   pods run on the real node with their records' addresses.
//!
//! It prints how long `helm install --wait` took and each component's resident memory as a
//! pod, read from the node (`/proc/<pid>/status` of the container's process).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ests_api::{EnhancedStatefulSet, keys};
use ests_testenv::helm::{Helm, Values};
use ests_testenv::real_node::RealNode;
use ests_testenv::resources::apply_value;
use ests_testenv::{ControlPlane, LogsOnFailure, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::Env;
use support::chart::{
    COMPONENTS, NAMESPACE, ProcessFacts, RELEASE, chart_dir, component_pods, controller_leader,
    edit_user, http_get, liveness_endpoint, named_port, pod_ip, process_facts, ready, restarts,
};
use support::real_node::{answer_container, on_real_node};

const T: Duration = Duration::from_secs(180);
/// The extender Service's fixed ClusterIP: the host's kube-scheduler resolves no cluster DNS
/// names, so its configuration names the extender by address (`extender.service.clusterIP`).
const EXTENDER_IP: &str = "10.96.0.88";
/// The extender's port (the chart's default `extender.port`; its Service's port too).
const EXTENDER_PORT: u16 = 8888;

/// Values placing every component on the real node and running the harness's image.
fn values(image: &str, scheduler_cert_dir: &Path) -> anyhow::Result<String> {
    let (repository, tag) = image
        .rsplit_once(':')
        .with_context(|| format!("{image} has no tag"))?;
    let placement = RealNode::placement();
    let mut values = json!({
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "logFormat": "text",
        "extender": {
            "service": {"clusterIP": EXTENDER_IP},
            "tls": {"clientAuth": {"schedulerCertDir": scheduler_cert_dir.display().to_string()}},
        },
    });
    for component in COMPONENTS {
        values[component]["nodeSelector"] = placement["nodeSelector"].clone();
        values[component]["tolerations"] = placement["tolerations"].clone();
    }
    Ok(serde_saphyr::to_string(&values)?)
}

/// A static-IP set of the test image, on the real node (as in real_node.rs).
fn answer_set(name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1",
        "kind": "EnhancedStatefulSet",
        "metadata": {"name": name, "annotations": {keys::STATIC_IP_ENABLE: "true"}},
        "spec": {
            "replicas": replicas,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": name}},
            "updateStrategy": {"rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": on_real_node(json!({
                    "terminationGracePeriodSeconds": 1,
                    "securityContext": {"runAsUser": 65532, "runAsNonRoot": true},
                    "containers": [answer_container()],
                })),
            }
        }
    })
}

/// Filter calls the extender replicas have answered, summed over their /metrics.
async fn filter_calls(client: &Client) -> anyhow::Result<u64> {
    let mut total = 0;
    for pod in component_pods(client, "extender").await? {
        let (_, body) = http_get(pod_ip(&pod)?, named_port(&pod, "metrics")?, "/metrics").await?;
        total += body
            .lines()
            .filter(|l| {
                l.starts_with("ests_extender_requests_total{") && l.contains("verb=\"filter\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64;
    }
    Ok(total)
}

/// The pod and container security settings as admitted, and as they run.
async fn check_locked_down(node: &RealNode, pod: &Pod) -> anyhow::Result<ProcessFacts> {
    let name = pod.name_any();
    let spec = pod.spec.as_ref().context("no spec")?;
    let pod_context = spec.security_context.clone().unwrap_or_default();
    assert_eq!(pod_context.run_as_non_root, Some(true), "{name}");
    assert_eq!(pod_context.run_as_user, Some(65532), "{name}");
    assert_eq!(
        pod_context.seccomp_profile.map(|p| p.type_),
        Some("RuntimeDefault".into()),
        "{name}"
    );
    assert_eq!(
        spec.node_name.as_deref(),
        Some(node.name.as_str()),
        "{name}"
    );
    let [container] = spec.containers.as_slice() else {
        bail!("{name} has {} containers", spec.containers.len());
    };
    let context = container.security_context.clone().unwrap_or_default();
    assert_eq!(context.read_only_root_filesystem, Some(true), "{name}");
    assert_eq!(context.allow_privilege_escalation, Some(false), "{name}");
    let capabilities = context.capabilities.unwrap_or_default();
    assert_eq!(capabilities.drop, Some(vec!["ALL".to_string()]), "{name}");
    assert!(capabilities.add.unwrap_or_default().is_empty(), "{name}");
    let id = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref()?.first()?.container_id.clone())
        .with_context(|| format!("{name} has no running container"))?;
    let facts = process_facts(node, &id).await?;
    // Real, effective, saved and filesystem uid all 65532; no effective capability; the
    // root filesystem mounted read-only.
    assert_eq!(
        facts.uid.split_whitespace().collect::<Vec<_>>(),
        ["65532"; 4],
        "{name}"
    );
    assert_eq!(facts.cap_eff, "0000000000000000", "{name}");
    assert!(facts.root_read_only, "{name}: root filesystem writable");
    Ok(facts)
}

/// Writes kube-scheduler's client certificate from the chart's Secret where the chart's
/// scheduler configuration says it is (`extender.tls.clientAuth.schedulerCertDir`), and
/// restarts the harness's kube-scheduler with the chart's extenders.
async fn wire_scheduler(plane: &ControlPlane, admin: &Client, dir: &Path) -> anyhow::Result<()> {
    let client = Api::<Secret>::namespaced(admin.clone(), NAMESPACE)
        .get("ests-scheduler-client")
        .await?;
    std::fs::create_dir_all(dir)?;
    for (key, file) in [
        ("tls.crt", "scheduler-client.crt"),
        ("tls.key", "scheduler-client.key"),
    ] {
        let data = client
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .with_context(|| format!("the scheduler's client Secret has no {key}"))?;
        std::fs::write(dir.join(file), &data.0)?;
    }
    let config_map = Api::<ConfigMap>::namespaced(admin.clone(), NAMESPACE)
        .get("ests-scheduler-config")
        .await?;
    let config: Value = serde_saphyr::from_str(
        config_map
            .data
            .as_ref()
            .and_then(|d| d.get("kube-scheduler-config.yaml"))
            .context("the scheduler ConfigMap has no kube-scheduler-config.yaml")?,
    )?;
    let entry = &config["extenders"][0];
    assert_eq!(
        entry["urlPrefix"],
        json!(format!("https://{EXTENDER_IP}:{EXTENDER_PORT}"))
    );
    assert_eq!(entry["enableHTTPS"], json!(true));
    assert!(entry["tlsConfig"]["caData"].is_string(), "{entry}");
    assert!(entry["tlsConfig"]["certFile"].is_string(), "{entry}");
    let extenders = serde_saphyr::to_string(&json!({"extenders": config["extenders"]}))?;
    plane.restart_scheduler(Some(&extenders)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_as_pods_on_the_real_node() -> anyhow::Result<()> {
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
    let image = support::real_node::import_ests_image(node).await?;

    // Installed as a cluster admin would: the chart's defaults but for the image, the
    // placement and the extender's address.
    let cert_dir = plane.dir.join("scheduler-client");
    let values_file = plane.dir.join("chart-pods-values.yaml");
    std::fs::write(&values_file, values(&image, &cert_dir)?)?;
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
    let install_time = begun.elapsed();
    if let Err(e) = installed {
        let pods = plane
            .kubectl(&["get", "pods", "-n", NAMESPACE, "-o", "wide"])
            .await
            .unwrap_or_default();
        let events = plane
            .kubectl(&["get", "events", "-n", NAMESPACE])
            .await
            .unwrap_or_default();
        return Err(e.context(format!("{pods}\n{events}\n{}", node.log_tails(20))));
    }

    // Every Deployment Available with all its replicas, from the image.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NAMESPACE);
    for (component, replicas) in [("controller", 2), ("webhook", 2), ("extender", 2)] {
        let name = format!("{RELEASE}-{component}");
        let deployment = deployments.get(&name).await?;
        let status = deployment.status.clone().unwrap_or_default();
        assert_eq!(
            status.available_replicas,
            Some(replicas),
            "{name}: {status:?}"
        );
        assert!(
            status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_.as_deref() == Some("Available")
                    && c.status.as_deref() == Some("True")),
            "{name}: {status:?}"
        );
    }

    // Pods Ready on the real node, locked down as admitted and as they run.
    let mut started: BTreeMap<String, (String, Vec<(String, i32)>)> = BTreeMap::new();
    let mut rss: Vec<(String, String, u64)> = Vec::new();
    for component in COMPONENTS {
        let pods = component_pods(&admin, component).await?;
        assert_eq!(
            pods.len(),
            2,
            "{component} pods: {:?}",
            pods.iter().map(|p| p.name_any()).collect::<Vec<_>>()
        );
        for pod in pods {
            assert!(ready(&pod), "{} is not Ready", pod.name_any());
            let image_ran = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone());
            assert_eq!(image_ran.as_deref(), Some(image.as_str()));
            let facts = check_locked_down(node, &pod).await?;
            rss.push((component.into(), pod.name_any(), facts.rss_kib));
            started.insert(
                pod.name_any(),
                (pod.uid().unwrap_or_default(), restarts(&pod)),
            );
        }
    }

    // Two controller replicas, one leader: the Lease names one of them, and only that one
    // says it is ready to work (/readyz is the leader's).
    let controllers = component_pods(&admin, "controller").await?;
    let names: Vec<String> = controllers.iter().map(|p| p.name_any()).collect();
    let holder = controller_leader(&admin, T).await?;
    assert!(
        names.contains(&holder),
        "{holder} leads, not one of {names:?}"
    );
    let mut leaders = Vec::new();
    for pod in &controllers {
        if http_get(pod_ip(pod)?, named_port(pod, "metrics")?, "/readyz")
            .await?
            .0
            == 200
        {
            leaders.push(pod.name_any());
        }
    }
    assert_eq!(leaders, vec![holder.clone()], "ready to work: {leaders:?}");

    // The validating webhook, through its Service, refuses a bad set.
    let ns = "cp-webhook";
    let sets = support::namespace(&env, ns).await?;
    let mut bad = support::simple_set("bad", 1, "Parallel", 1);
    bad["spec"]["template"]["spec"]["restartPolicy"] = json!("OnFailure");
    let refused = sets
        .create(&PostParams::default(), &serde_json::from_value(bad)?)
        .await;
    let message = format!("{refused:?}");
    assert!(
        refused.is_err()
            && message.contains("admission webhook")
            && message.contains("spec.template.spec.restartPolicy"),
        "{message}"
    );

    // The mutating webhook pins a re-created static-IP pod to its record.
    wait_for(format!("{ns}/default service account"), T, || async {
        Ok(
            Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(admin.clone(), ns)
                .get_opt("default")
                .await?
                .map(|_| ()),
        )
    })
    .await?;
    support::apply(&env, ns, &answer_set("pin", 1)).await?;
    support::wait_status(&sets, "pin", "1 ready", T, |s| s.ready_replicas == 1)
        .await
        .map_err(|e| e.context(node.log_tails(20)))?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let first = pods.get("pin-0").await?;
    let (record_node, record_ip) = wait_for("pin-0's record Bound", T, || async {
        let uid = first.uid().unwrap_or_default();
        Ok(support::bound_records(&env, ns)
            .await?
            .into_values()
            .find(|(pod_uid, _, _)| *pod_uid == uid)
            .map(|(_, node, ips)| (node, ips)))
    })
    .await?;
    assert_eq!(
        Some(record_ip.clone()),
        first.status.as_ref().and_then(|s| s.pod_ip.clone())
    );
    pods.delete("pin-0", &DeleteParams::default()).await?;
    let pinned = wait_for("pin-0 re-created", T, || async {
        Ok(pods
            .get_opt("pin-0")
            .await?
            .filter(|p| p.uid() != first.uid()))
    })
    .await?;
    let annotations = pinned.annotations();
    assert_eq!(
        annotations.get(keys::STATIC_IP_POD_NODE),
        Some(&record_node),
        "{annotations:?}"
    );
    assert!(
        annotations
            .get(keys::STATIC_IP_POD_IP)
            .is_some_and(|ip| ip.contains(&record_ip)),
        "{annotations:?}"
    );
    assert!(
        annotations
            .get("cni.projectcalico.org/ipAddrs")
            .is_some_and(|ip| ip.contains(&record_ip)),
        "{annotations:?}"
    );

    // The host's kube-scheduler with the chart's extender entry: the extender, through its
    // Service, over HTTPS with the scheduler's client certificate.
    wire_scheduler(plane, &admin, &cert_dir).await?;
    // Through the same Service, a caller without the scheduler's certificate gets no answer
    // (while the certificate it is shown does name the Service's address).
    let serving = Api::<Secret>::namespaced(admin.clone(), NAMESPACE)
        .get("ests-webhook-tls")
        .await?;
    let ca = serving
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .context("the webhook Secret has no ca.crt")?;
    let answer = support::call_without_client_certificate_at(
        EXTENDER_IP.parse()?,
        EXTENDER_PORT,
        &String::from_utf8_lossy(&ca.0),
    )
    .await;
    // Refused for want of a client certificate: not unreachable, not for a server
    // certificate that fails to name the address.
    assert!(
        !answer.contains("HTTP/1.1")
            && !answer.contains("invalid peer certificate")
            && !answer.contains("Connection refused")
            && !answer.contains("no answer"),
        "the extender's Service, called without a client certificate: {answer}"
    );
    eprintln!("chart_pods: the extender's Service without a client certificate: {answer:?}");
    let filtered_before = filter_calls(&admin).await?;

    // A user with only `edit` in their namespace.
    let ns = "cp-edit";
    let carol = edit_user(plane, ns, "carol", T).await?;
    apply_value(&carol, &answer_set("app", 2), Some(ns), false).await?;
    let carol_sets: Api<EnhancedStatefulSet> = Api::namespaced(admin.clone(), ns);
    support::wait_status(&carol_sets, "app", "2 ready", T, |s| s.ready_replicas == 2)
        .await
        .map_err(|e| e.context(plane.log_tail("kube-scheduler", 20)))?;
    let placed = wait_for("carol's pods Bound to their records", T, || async {
        let pods = support::running_pods(&env, ns, "app=app").await?;
        let records = support::bound_records(&env, ns).await?;
        let by_uid: BTreeMap<&String, (&String, &String)> = records
            .values()
            .map(|(uid, node, ips)| (uid, (node, ips)))
            .collect();
        let matched = pods
            .iter()
            .filter(|(_, (uid, node, ip))| by_uid.get(uid) == Some(&(node, ip)))
            .count();
        Ok((pods.len() == 2 && matched == 2).then_some(pods))
    })
    .await?;
    for (name, (_, on, _)) in &placed {
        assert_eq!(on, &node.name, "{name}");
    }
    let filtered_after = filter_calls(&admin).await?;
    assert!(
        filtered_after > filtered_before,
        "the extender filtered nothing ({filtered_before} -> {filtered_after} calls)"
    );

    // Probes passed the whole test: the same pods, Ready, never restarted, and no liveness
    // probe ever failed (the kubelet's events). The liveness probe first runs 5 s after a
    // start and restarts only after three failures 20 s apart, longer than this test, so
    // its endpoint is also asked here, as the kubelet asks it.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(admin.clone(), NAMESPACE);
    let liveness_failures: Vec<String> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|e| e.message)
        .filter(|m| m.contains("Liveness probe failed"))
        .collect();
    assert!(liveness_failures.is_empty(), "{liveness_failures:?}");
    for component in COMPONENTS {
        for pod in component_pods(&admin, component).await? {
            let name = pod.name_any();
            let (uid, counts) = started
                .get(&name)
                .with_context(|| format!("{name} is a new pod"))?;
            assert_eq!(&pod.uid().unwrap_or_default(), uid, "{name} replaced");
            assert!(ready(&pod), "{name} is no longer Ready");
            assert_eq!(&restarts(&pod), counts, "{name} restarted");
            assert!(counts.iter().all(|(_, n)| *n == 0), "{name}: {counts:?}");
            let (port, path) = liveness_endpoint(&pod)?;
            let (code, _) = http_get(pod_ip(&pod)?, port, &path).await?;
            assert_eq!(code, 200, "{name}: liveness {path} on {port}");
        }
    }

    eprintln!(
        "chart_pods: helm install --wait took {:.1}s",
        install_time.as_secs_f64()
    );
    for (component, pod, kib) in &rss {
        eprintln!(
            "chart_pods: RSS {component} {pod}: {:.1} MiB",
            *kib as f64 / 1024.0
        );
    }

    // Clean up: the sets first (their records' finalizers need the controller), then the
    // release, then the scheduler without the extender.
    for (ns, name) in [("cp-webhook", "pin"), ("cp-edit", "app")] {
        let api: Api<EnhancedStatefulSet> = Api::namespaced(admin.clone(), ns);
        api.delete(name, &DeleteParams::default()).await?;
        wait_for(format!("{ns}/{name} gone"), T, || async {
            Ok(api.get_opt(name).await?.is_none().then_some(()))
        })
        .await?;
    }
    plane.restart_scheduler(None).await?;
    helm.uninstall(&plane.kubeconfig, RELEASE, NAMESPACE, T)
        .await?;
    Ok(())
}
