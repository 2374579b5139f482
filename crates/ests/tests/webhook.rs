//! The admission webhook registered with the real kube-apiserver (URL on 127.0.0.1, caBundle
//! from the harness CA): re-created static-IP pods come back with their address on their
//! node; nobody but the controller creates static-IP pods; users cannot edit a record's
//! address or node; an ordinary pod cannot name a kept address in Calico's annotation; bad
//! sets are refused with field-named messages; a certificate rotated on disk is served
//! without a restart.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ests_api::{StaticIP, StaticIPPhase, keys};
use ests_testenv::resources::{api_error_message, apply_value, create_refusal};
use ests_testenv::{InvariantChecker, LogsOnFailure, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use support::*;
use tokio::sync::OnceCell;

const T: Duration = Duration::from_secs(120);

/// Record-mode pods of one test must not come and go while another test's do: KWOK, the
/// CNI here, hands a released address to the next pod at once, which in record mode belongs
/// to the identity being re-created (see the README's note on record mode).
static RECORD_MODE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The certificate the server at `addr` presents, after verifying it against `ca_pem`.
async fn served_certificate(addr: SocketAddr, ca_pem: &str) -> anyhow::Result<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = connector
        .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
        .await?;
    let (_, connection) = tls.get_ref();
    let chain = connection
        .peer_certificates()
        .ok_or_else(|| anyhow::anyhow!("no certificate served"))?;
    Ok(chain[0].to_vec())
}

/// Installs certificate `name` of the harness CA as the served one, the way the kubelet
/// updates a mounted Secret: a new directory, then an atomic swap of the `..data` symlink.
fn install_certificate(env: &Env, dir: &Path, name: &str) -> anyhow::Result<()> {
    let files = env.plane.pki.serving(name, &[])?;
    let data = dir.join(name);
    std::fs::create_dir_all(&data)?;
    std::fs::copy(&files.cert, data.join("tls.crt"))?;
    std::fs::copy(&files.key, data.join("tls.key"))?;
    let next = dir.join("..data_next");
    let _ = std::fs::remove_file(&next);
    std::os::unix::fs::symlink(name, &next)?;
    std::fs::rename(&next, dir.join("..data"))?;
    for file in ["tls.crt", "tls.key"] {
        let link = dir.join(file);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(file), &link)?;
        }
    }
    Ok(())
}

struct Webhook {
    addr: SocketAddr,
    cert_dir: std::path::PathBuf,
}

/// The controller (with the StaticIP manager) and the webhook, registered.
async fn webhook_env() -> anyhow::Result<(Env, &'static Webhook)> {
    static WEBHOOK: OnceCell<Webhook> = OnceCell::const_new();
    let env = env().await?;
    let webhook = WEBHOOK
        .get_or_try_init(|| async {
            let cert_dir = env.plane.dir.join("webhook-tls");
            std::fs::create_dir_all(&cert_dir)?;
            install_certificate(&env, &cert_dir, "webhook-1")?;
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
            let listen = format!("--listen={addr}");
            let cert = format!("--tls-cert-file={}", cert_dir.join("tls.crt").display());
            let key = format!("--tls-key-file={}", cert_dir.join("tls.key").display());
            start_ests(
                env.plane,
                "ests-webhook",
                "webhook",
                &[&listen, &cert, &key, "--cert-reload-seconds=1"],
            )
            .await?;
            wait_for("the webhook serves TLS", T, || async {
                Ok(served_certificate(addr, &env.plane.pki.ca_pem).await.ok())
            })
            .await?;
            let (mutating, validating) = ests_webhook::config::configurations(
                &ests_webhook::config::Endpoint::Url(format!("https://{addr}")),
                Some(env.plane.pki.ca_pem.as_bytes()),
                "ests-system",
                &[ests_core::pin::CniAnnotation::calico()],
            );
            apply_value(&env.client, &serde_json::to_value(&mutating)?, None, false).await?;
            apply_value(
                &env.client,
                &serde_json::to_value(&validating)?,
                None,
                false,
            )
            .await?;
            anyhow::Ok(Webhook { addr, cert_dir })
        })
        .await?;
    Ok((env, webhook))
}

#[derive(Debug, Clone, PartialEq)]
struct Placement {
    uid: String,
    ip: String,
    node: String,
}

/// Running pods of `selector` whose records are Bound to them with their IP and node.
async fn bound_pods(
    env: &Env,
    ns: &str,
    selector: &str,
    n: usize,
) -> anyhow::Result<BTreeMap<String, Placement>> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let records: Api<StaticIP> = Api::namespaced(env.client.clone(), ns);
    wait_for(
        format!("{ns}: {n} pods bound to their records"),
        T,
        || async {
            let records: BTreeMap<String, StaticIP> = records
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .map(|r| (r.name_any(), r))
                .collect();
            let mut placed = BTreeMap::new();
            for pod in pods
                .list(&ListParams::default().labels(selector))
                .await?
                .items
            {
                if pod.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let name = pod.name_any();
                let uid = pod.uid().unwrap_or_default();
                let ip = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.clone())
                    .unwrap_or_default();
                let node = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default();
                let bound = records.get(&name).is_some_and(|r| {
                    r.status.as_ref().is_some_and(|s| {
                        s.phase == StaticIPPhase::Bound
                            && s.pod_uid.as_deref() == Some(uid.as_str())
                    }) && r.spec.ips.iter().any(|a| a.ip == ip)
                        && r.spec.node.as_deref() == Some(node.as_str())
                });
                if bound {
                    placed.insert(name, Placement { uid, ip, node });
                }
            }
            Ok((placed.len() == n).then_some(placed))
        },
    )
    .await
}

fn assert_pinned(pod: &Pod, placement: &Placement) {
    let a = pod.annotations();
    assert_eq!(
        a.get(keys::STATIC_IP_POD_IP),
        Some(&placement.ip),
        "{}",
        pod.name_any()
    );
    assert_eq!(a.get(keys::STATIC_IP_POD_NODE), Some(&placement.node));
    assert_eq!(
        a.get("cni.projectcalico.org/ipAddrs"),
        Some(&format!("[\"{}\"]", placement.ip))
    );
    let terms =
        serde_json::to_value(pod.spec.as_ref().and_then(|s| s.affinity.clone()))
            .unwrap_or_default()["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"]
            .clone();
    let pin = json!({"key": "metadata.name", "operator": "In", "values": [placement.node]});
    assert!(
        terms.as_array().is_some_and(|t| !t.is_empty()
            && t.iter().all(|term| term["matchFields"]
                .as_array()
                .is_some_and(|f| f.contains(&pin)))),
        "{} pinned to {}: {terms}",
        pod.name_any(),
        placement.node
    );
}

#[tokio::test]
async fn recreated_pods_come_back_with_their_address_on_their_node() -> anyhow::Result<()> {
    let _serial = RECORD_MODE.lock().await;
    let (env, _) = webhook_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let ns = "wh-source";
    let sets = namespace(&env, ns).await?;
    apply(&env, ns, &sample("staticip-example.yaml")).await?;
    let selector = "apps=staticip-example";
    let first = bound_pods(&env, ns, selector, 6).await?;
    wait_status(&sets, "staticip-example", "6 ready", T, |s| {
        s.ready_replicas == 6
    })
    .await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);

    // One pod, then all six.
    pods.delete("staticip-example-2", &DeleteParams::default())
        .await?;
    let after_one = wait_for("staticip-example-2 re-created and bound", T, || async {
        let now = bound_pods(&env, ns, selector, 6).await?;
        Ok((now["staticip-example-2"].uid != first["staticip-example-2"].uid).then_some(now))
    })
    .await?;
    pods.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels(selector),
    )
    .await?;
    let after_all = wait_for("all six re-created and bound", T, || async {
        let now = bound_pods(&env, ns, selector, 6).await?;
        Ok(now
            .iter()
            .all(|(n, p)| p.uid != after_one[n].uid)
            .then_some(now))
    })
    .await?;
    for (name, placement) in &after_all {
        assert_eq!(
            (&placement.ip, &placement.node),
            (&first[name].ip, &first[name].node),
            "{name} kept its address and node"
        );
        assert_pinned(&pods.get(name).await?, placement);
    }
    checker.finish()
}

#[tokio::test]
async fn only_the_controller_creates_static_ip_pods_and_only_ests_edits_records()
-> anyhow::Result<()> {
    let _serial = RECORD_MODE.lock().await;
    let (env, _) = webhook_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "wh-guard";
    let _sets = namespace(&env, ns).await?;
    let mut set = simple_set("db", 2, "Parallel", 1);
    set["metadata"]["annotations"] = json!({keys::STATIC_IP_ENABLE: "true"});
    apply(&env, ns, &set).await?;
    bound_pods(&env, ns, "app=db", 2).await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let record = Api::<StaticIP>::namespaced(env.client.clone(), ns)
        .get("db-1")
        .await?;

    // Scale in so that db-1's name is free, then claim it as an ordinary user.
    Api::<ests_api::EnhancedStatefulSet>::namespaced(env.client.clone(), ns)
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await?;
    wait_for("db-1 gone", T, || async {
        Ok(pods.get_opt("db-1").await?.is_none().then_some(()))
    })
    .await?;
    let impostor: Pod = serde_json::from_value(json!({
        "metadata": {"name": "db-1", "labels": {keys::STATIC_IP_POD_LABEL: "true"},
                     "annotations": {keys::STATIC_IP_RECORD_UID: record.uid(), keys::STATIC_IP_RECORD_VERSION: record.resource_version()}},
        "spec": {"containers": [{"name": "app", "image": "app:v1"}]}
    }))?;
    let refused = pods.create(&PostParams::default(), &impostor).await;
    let message = format!("{refused:?}");
    assert!(
        message.contains("may not create static-IP pods"),
        "{message}"
    );

    // A user may not move a record's address or node.
    let records: Api<StaticIP> = Api::namespaced(env.client.clone(), ns);
    for patch in [
        json!({"spec": {"node": "node-0-elsewhere"}}),
        json!({"spec": {"ips": [{"ip": "10.99.0.1"}]}}),
    ] {
        let edited = records
            .patch(
                "db-0",
                &PatchParams::default(),
                &Patch::Merge(patch.clone()),
            )
            .await;
        let message = format!("{edited:?}");
        assert!(
            edited.is_err() && (message.contains("spec.ips") || message.contains("spec.node")),
            "{patch}: {message}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn bad_sets_are_refused_with_field_named_messages() -> anyhow::Result<()> {
    let _serial = RECORD_MODE.lock().await;
    let (env, _) = webhook_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "wh-bad-sets";
    let sets = namespace(&env, ns).await?;
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"spec": {"selector": {"matchLabels": null, "matchExpressions": [{"key": "app", "operator": "In", "values": ["other"]}]}}}),
            "spec.selector",
        ),
        (
            json!({"spec": {"template": {"spec": {"restartPolicy": "OnFailure"}}}}),
            "spec.template.spec.restartPolicy",
        ),
    ];
    for (i, (change, field)) in cases.into_iter().enumerate() {
        let mut set = simple_set(&format!("bad-{i}"), 1, "Parallel", 1);
        merge(&mut set, &change);
        let created = sets
            .create(&PostParams::default(), &serde_json::from_value(set)?)
            .await;
        let message = format!("{created:?}");
        assert!(
            created.is_err() && message.contains(field),
            "{field}: {message}"
        );
    }
    // The IP mode cannot change on a running set.
    let mut set = simple_set("mode", 1, "Parallel", 1);
    set["metadata"]["annotations"] = json!({keys::STATIC_IP_ENABLE: "true"});
    apply(&env, ns, &set).await?;
    let changed = sets
        .patch(
            "mode",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {keys::STATIC_IP_POOL: "static-pool"}}}),
            ),
        )
        .await;
    let message = format!("{changed:?}");
    assert!(
        changed.is_err() && message.contains(keys::STATIC_IP_POOL),
        "{message}"
    );
    Ok(())
}

fn merge(base: &mut Value, change: &Value) {
    match (base, change) {
        (Value::Object(b), Value::Object(c)) => {
            for (k, v) in c {
                if v.is_null() {
                    b.remove(k);
                } else {
                    merge(b.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (b, c) => *b = c.clone(),
    }
}

#[tokio::test]
async fn a_certificate_rotated_on_disk_is_served_without_a_restart() -> anyhow::Result<()> {
    let (env, webhook) = webhook_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let before = served_certificate(webhook.addr, &env.plane.pki.ca_pem).await?;
    install_certificate(&env, &webhook.cert_dir, "webhook-2")?;
    let want =
        CertificateDer::from_pem_file(webhook.cert_dir.join("webhook-2").join("tls.crt"))?.to_vec();
    assert_ne!(before, want);
    wait_for("the new certificate is served", T, || async {
        Ok((served_certificate(webhook.addr, &env.plane.pki.ca_pem).await? == want).then_some(()))
    })
    .await?;
    assert!(env.plane.is_running("ests-webhook"), "no restart");
    Ok(())
}

/// A record being deleted (held back by a finalizer) pins no pod: its address is on its way
/// to being freed, and a pod pinned to it would share it with the next holder.
#[tokio::test]
async fn a_record_being_deleted_pins_no_pod() -> anyhow::Result<()> {
    let _serial = RECORD_MODE.lock().await;
    let (env, _) = webhook_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "wh-going";
    let _sets = namespace(&env, ns).await?;
    let (_, as_controller) = env
        .plane
        .client_as(CONTROLLER_USER, CONTROLLER_GROUPS)
        .await?;
    let records: Api<StaticIP> = Api::namespaced(as_controller.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(as_controller, ns);
    const HOLD: &str = "e2e.ests/hold";
    let record: StaticIP = serde_json::from_value(json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "StaticIP",
        "metadata": {"name": "going-0", "finalizers": [HOLD]},
        "spec": {
            "workload": {"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet", "name": "going", "uid": "going-uid"},
            "podName": "going-0", "ips": [{"ip": "10.251.0.9"}], "node": "node-1", "releasePolicy": "Never"
        }
    }))?;
    records.create(&PostParams::default(), &record).await?;
    records
        .patch_status(
            "going-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Bound", "podUID": "gone-pod"}})),
        )
        .await?;
    records.delete("going-0", &DeleteParams::default()).await?;
    let going = records.get("going-0").await?;
    assert!(going.metadata.deletion_timestamp.is_some());

    let pod: Pod = serde_json::from_value(json!({
        "metadata": {
            "name": "going-0",
            "labels": {keys::STATIC_IP_POD_LABEL: "true"},
            "annotations": {keys::STATIC_IP_RECORD_UID: going.uid(), keys::STATIC_IP_RECORD_VERSION: going.resource_version()},
            "ownerReferences": [{"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet",
                                 "name": "going", "uid": "going-uid", "controller": true}]
        },
        "spec": {"containers": [{"name": "app", "image": "app:v1"}]}
    }))?;
    // The webhook's cache may be behind the delete for a moment: it refuses until it is not.
    let verdict = wait_for(
        "a verdict from a cache that has seen the delete",
        T,
        || async {
            match pods.create(&PostParams::default(), &pod).await {
                Ok(created) => Ok(Some(Ok(created))),
                Err(kube::Error::Api(s)) if s.message.contains("older than the stamped") => {
                    Ok(None)
                }
                Err(e) => Ok(Some(Err(e.to_string()))),
            }
        },
    )
    .await?;
    if let Ok(created) = &verdict {
        pods.delete("going-0", &DeleteParams::default()).await?;
        panic!(
            "the pod was admitted with annotations {:?}",
            created.annotations()
        );
    }
    let message = verdict.err().unwrap_or_default();
    assert!(message.contains("being deleted"), "{message}");
    records
        .patch(
            "going-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await?;
    Ok(())
}

/// An ordinary pod (no static-IP label) may not name, in the CNI's address annotation, an
/// address a StaticIP record keeps: Calico would hand it that address, and the identity's
/// pod would share it when it comes back. A free address, or no annotation, is admitted.
#[tokio::test]
async fn ordinary_pods_may_not_claim_a_kept_address_through_the_cni_annotation()
-> anyhow::Result<()> {
    // The admitted pods run and take addresses from KWOK, as record-mode pods do.
    let _serial = RECORD_MODE.lock().await;
    let (env, _) = webhook_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "wh-cni-claims";
    let _sets = namespace(&env, ns).await?;
    apply_value(
        &env.client,
        &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "alice-edit", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]
        }),
        Some(ns),
        false,
    )
    .await?;
    let (_, alice) = env.plane.client_as("alice", &[]).await?;
    let (_, as_controller) = env
        .plane
        .client_as(CONTROLLER_USER, CONTROLLER_GROUPS)
        .await?;
    const KEPT: &str = "10.252.0.9";
    const FREE: &str = "10.252.0.10";
    let record: StaticIP = serde_json::from_value(json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "StaticIP",
        "metadata": {"name": "keeper-0"},
        "spec": {
            "workload": {"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet", "name": "keeper", "uid": "keeper-uid"},
            "podName": "keeper-0", "ips": [{"ip": KEPT}], "node": "node-1", "releasePolicy": "Never"
        }
    }))?;
    let record = Api::<StaticIP>::namespaced(as_controller, ns)
        .create(&PostParams::default(), &record)
        .await?;

    let pod = |name: &str, annotations: Value| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "app:v1"}]}
        })
    };
    let calico = |ip: &str| json!({"cni.projectcalico.org/ipAddrs": format!("[\"{ip}\"]")});
    let claiming = pod("claims-kept", calico(KEPT));
    // The webhook learns of the record from its watch: probe (without creating) until it has.
    let message = wait_for("the webhook refuses the kept address", T, || async {
        create_refusal(&alice, &claiming, Some(ns), true).await
    })
    .await?;
    // Now for real.
    let message = create_refusal(&alice, &claiming, Some(ns), false)
        .await?
        .ok_or_else(|| anyhow::anyhow!("admitted after a dry run was refused: {message}"))?;
    assert!(
        message.contains(&format!(
            "annotation cni.projectcalico.org/ipAddrs names {KEPT}, an address kept for a static-IP identity"
        )),
        "{message}"
    );
    // Nothing about the record but what the caller sent.
    for secret in [
        "keeper",
        record.uid().unwrap_or_default().as_str(),
        "node-1",
    ] {
        assert!(!message.contains(secret), "{message:?} tells {secret:?}");
    }

    // A free address, and no annotation at all, are admitted; the API server does not even
    // call the webhook for the pod without one (its matchConditions decide).
    let before = pod_address_calls(&env.client).await?;
    let free = pod("claims-free", calico(FREE));
    assert_eq!(create_refusal(&alice, &free, Some(ns), false).await?, None);
    let after_free = pod_address_calls(&env.client).await?;
    assert!(after_free > before, "the webhook judged the annotated pod");
    assert_eq!(
        create_refusal(&alice, &pod("plain", json!({})), Some(ns), false).await?,
        None
    );
    assert_eq!(
        pod_address_calls(&env.client).await?,
        after_free,
        "the ordinary pod cost no call"
    );

    // Nor may an admitted pod be changed to name the kept address (the CNI reads the
    // annotation when the pod's sandbox is made, which may be long after it was created).
    let pods: Api<Pod> = Api::namespaced(alice, ns);
    let changed = pods
        .patch(
            "claims-free",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": calico(KEPT)}})),
        )
        .await;
    let message = api_error_message(changed)?;
    assert!(
        message.contains(&format!("names {KEPT}, an address kept")),
        "{message}"
    );
    Ok(())
}

/// How many times the API server has called the pod-address webhook (its own metric). Only
/// pods without the static-IP label that set a CNI annotation are sent, so no other test's
/// pods count here.
async fn pod_address_calls(client: &kube::Client) -> anyhow::Result<u64> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    let series = "apiserver_admission_webhook_request_total{";
    let name = "name=\"pod-addresses.staticip.jke.jdcloud.com\"";
    Ok(text
        .lines()
        .filter(|l| l.starts_with(series) && l.contains(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}
