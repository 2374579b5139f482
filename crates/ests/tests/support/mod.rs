//! Shared set-up of the e2e tests: one control plane per test binary with the ests CRDs and
//! policies, three nodes, and `ests controller` running as a process under the controller's
//! service-account identity.

#![allow(dead_code)]

pub mod chart;
pub mod cni;
pub mod real_node;

use std::time::Duration;

use ests_api::EnhancedStatefulSet;
use ests_testenv::nodes::{NodeSpec, create_nodes};
use ests_testenv::resources::{
    apply_value, bind_cluster_role, create_namespace, install_crds, install_policies,
};
use ests_testenv::{ControlPlane, shared, wait_for};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::sync::OnceCell;

pub const CONTROLLER_USER: &str = "system:serviceaccount:ests-system:ests-controller";
pub const CONTROLLER_GROUPS: &[&str] = &[
    "system:serviceaccounts",
    "system:serviceaccounts:ests-system",
];

pub struct Env {
    pub plane: &'static ControlPlane,
    pub client: Client,
}

/// The control plane with ests installed (CRDs, policies, RBAC for the controller's
/// identity) and three nodes, but no controller running.
pub async fn bare_env() -> anyhow::Result<Env> {
    static READY: OnceCell<()> = OnceCell::const_new();
    let plane = shared().await?;
    READY
        .get_or_try_init(|| async {
            let client = plane.client().await?;
            install_crds(&client).await?;
            install_policies(&client, ests_api::policy::DEFAULT_NAMESPACE).await?;
            let nodes: Vec<_> = (0..3).map(|i| NodeSpec::new(format!("node-{i}"))).collect();
            create_nodes(&client, &nodes).await?;
            create_namespace(&client, "ests-system").await?;
            bind_cluster_role(
                &client,
                "ests-controller-e2e",
                "cluster-admin",
                CONTROLLER_USER,
            )
            .await
        })
        .await?;
    Ok(Env {
        plane,
        client: plane.client().await?,
    })
}

/// A control plane with the machine's real node, ests installed (CRDs, policies, RBAC for
/// the controller's identity) and one controller running; no KWOK nodes. `None` when the
/// real node is turned off for this run (`ESTS_REAL_NODE=off`).
pub async fn real_node_env() -> anyhow::Result<Option<(Env, &'static ests_testenv::RealNode)>> {
    static READY: OnceCell<()> = OnceCell::const_new();
    if ests_testenv::real_node::turned_off() {
        return Ok(None);
    }
    let (plane, node) = ests_testenv::shared_real_node().await?;
    READY
        .get_or_try_init(|| async {
            let client = plane.client().await?;
            install_crds(&client).await?;
            install_policies(&client, ests_api::policy::DEFAULT_NAMESPACE).await?;
            create_namespace(&client, "ests-system").await?;
            bind_cluster_role(
                &client,
                "ests-controller-e2e",
                "cluster-admin",
                CONTROLLER_USER,
            )
            .await?;
            start_controller(plane, "ests-controller", &["--leader-election=false"]).await
        })
        .await?;
    let env = Env {
        plane,
        client: plane.client().await?,
    };
    Ok(Some((env, node)))
}

/// The control plane with ests installed and one controller running.
pub async fn env() -> anyhow::Result<Env> {
    static STARTED: OnceCell<()> = OnceCell::const_new();
    let env = bare_env().await?;
    STARTED
        .get_or_try_init(|| {
            start_controller(env.plane, "ests-controller", &["--leader-election=false"])
        })
        .await?;
    Ok(env)
}

/// Starts `ests controller` as process `name` with `extra` flags, authenticated as the
/// controller's service account.
pub async fn start_controller(
    plane: &ControlPlane,
    name: &str,
    extra: &[&str],
) -> anyhow::Result<()> {
    start_ests(plane, name, "controller", extra).await
}

/// Starts `ests <subcommand>` as process `name` with `extra` flags, authenticated as the
/// controller's service account.
pub async fn start_ests(
    plane: &ControlPlane,
    name: &str,
    subcommand: &str,
    extra: &[&str],
) -> anyhow::Result<()> {
    let (kubeconfig, _) = plane.client_as(CONTROLLER_USER, CONTROLLER_GROUPS).await?;
    start_ests_with(plane, name, subcommand, &kubeconfig, extra)
}

/// Starts `ests <subcommand>` as process `name` with `extra` flags, reaching the API server
/// as `kubeconfig` says (for example through an [`ests_testenv::ApiProxy`]).
pub fn start_ests_with(
    plane: &ControlPlane,
    name: &str,
    subcommand: &str,
    kubeconfig: &std::path::Path,
    extra: &[&str],
) -> anyhow::Result<()> {
    let kubeconfig = kubeconfig.display().to_string();
    let mut args: Vec<String> = vec![subcommand.into()];
    // A free port unless the caller wants to scrape a known one.
    if !extra.iter().any(|a| a.starts_with("--metrics-addr")) {
        args.push("--metrics-addr=127.0.0.1:0".into());
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    plane.run_process(
        name,
        std::path::Path::new(env!("CARGO_BIN_EXE_ests")),
        &args,
        &[
            ("KUBECONFIG", kubeconfig.as_str()),
            (
                "ESTS_LOG",
                "info,ests_controller=debug,ests_staticip=trace,ests_migration=debug",
            ),
            ("POD_NAME", name),
        ],
    )
}

/// A sample manifest from config/samples.
pub fn sample(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../config/samples")
        .join(name);
    let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ests_testenv::resources::parse_documents(&yaml)
        .expect("sample parses")
        .remove(0)
}

/// A simple set: `replicas` pods, Parallel or OrderedReady, maxUnavailable `max`.
pub fn simple_set(name: &str, replicas: i32, policy: &str, max: i32) -> Value {
    json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1",
        "kind": "EnhancedStatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "podManagementPolicy": policy,
            "selector": {"matchLabels": {"app": name}},
            "updateStrategy": {"rollingUpdate": {"maxUnavailable": max}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "app:v1"}]}
            }
        }
    })
}

pub async fn namespace(env: &Env, name: &str) -> anyhow::Result<Api<EnhancedStatefulSet>> {
    create_namespace(&env.client, name).await?;
    Ok(Api::namespaced(env.client.clone(), name))
}

pub async fn apply(env: &Env, ns: &str, set: &Value) -> anyhow::Result<()> {
    apply_value(&env.client, set, Some(ns), false).await?;
    Ok(())
}

/// Merge-patches a set.
pub async fn patch(api: &Api<EnhancedStatefulSet>, name: &str, patch: Value) -> anyhow::Result<()> {
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

/// Waits until the set's status, for its current generation, satisfies `check`.
pub async fn wait_status(
    api: &Api<EnhancedStatefulSet>,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&ests_api::EnhancedStatefulSetStatus) -> bool,
) -> anyhow::Result<ests_api::EnhancedStatefulSetStatus> {
    wait_for(format!("{name}: {what}"), timeout, || async {
        let set = api.get(name).await?;
        let generation = set.metadata.generation;
        Ok(set
            .status
            .filter(|s| s.observed_generation == generation && check(s)))
    })
    .await
}

/// A merge patch for a new template: one container (named `container`, or unnamed as in the
/// source document) running `image`, and template annotations (`null` removes one).
pub fn new_template(container: Option<&str>, image: &str, annotations: Value) -> Value {
    let mut c = json!({"image": image});
    if let Some(name) = container {
        c["name"] = json!(name);
    }
    let mut template = json!({"spec": {"containers": [c]}});
    if annotations.as_object().is_some_and(|a| !a.is_empty()) {
        template["metadata"] = json!({"annotations": annotations});
    }
    json!({"spec": {"template": template}})
}

pub fn names(set: &str, ordinals: impl IntoIterator<Item = i32>) -> Vec<String> {
    ordinals.into_iter().map(|o| format!("{set}-{o}")).collect()
}

/// Starts `ests extender` (with `extra` flags) on a free loopback port and restarts
/// kube-scheduler with it configured: one entry filtering and prioritizing every pod, and
/// with `bind`, a second that binds the pods requesting jke.jdcloud.com/static-ip — the
/// shape of config/scheduler/kube-scheduler-config.yaml.
pub async fn start_extender(plane: &ControlPlane, bind: bool) -> anyhow::Result<u16> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("--listen=127.0.0.1:{port}");
    let mut args = vec![listen.as_str()];
    if bind {
        args.push("--bind");
    }
    start_ests(plane, "ests-extender", "extender", &args).await?;
    ests_testenv::wait_for(
        "the extender listens",
        std::time::Duration::from_secs(120),
        || async {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ()))
        },
    )
    .await?;
    let mut extenders = format!(
        "extenders:\n- urlPrefix: http://127.0.0.1:{port}\n  filterVerb: filter\n  prioritizeVerb: prioritize\n  weight: 1\n  nodeCacheCapable: true\n  httpTimeout: 2s\n  ignorable: false\n"
    );
    if bind {
        extenders.push_str(&format!(
            "- urlPrefix: http://127.0.0.1:{port}\n  bindVerb: bind\n  nodeCacheCapable: true\n  httpTimeout: 10s\n  ignorable: false\n  managedResources:\n  - name: {}\n    ignoredByScheduler: true\n",
            ests_api::keys::STATIC_IP_RESOURCE
        ));
    }
    plane.restart_scheduler(Some(&extenders)).await?;
    Ok(port)
}

/// Starts `ests webhook` with a serving certificate of the harness CA on a free loopback
/// port and registers it with the API server (URL mode), writing Calico's CNI annotation.
pub async fn start_webhook(env: &Env) -> anyhow::Result<()> {
    start_webhook_with(env, &[], &[ests_core::pin::CniAnnotation::calico()]).await
}

/// [`start_webhook`] with `flags` (such as `--cni-annotation=none`) and the webhook
/// configurations made for the CNI annotations `cni` those flags give.
pub async fn start_webhook_with(
    env: &Env,
    flags: &[&str],
    cni: &[ests_core::pin::CniAnnotation],
) -> anyhow::Result<()> {
    let files = env.plane.pki.serving("webhook", &[])?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("--listen=127.0.0.1:{port}");
    let cert = format!("--tls-cert-file={}", files.cert.display());
    let key = format!("--tls-key-file={}", files.key.display());
    let mut args = vec![listen.as_str(), cert.as_str(), key.as_str()];
    args.extend(flags);
    start_ests(env.plane, "ests-webhook", "webhook", &args).await?;
    wait_for(
        "the webhook listens",
        std::time::Duration::from_secs(120),
        || async {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ()))
        },
    )
    .await?;
    let (mutating, validating) = ests_webhook::config::configurations(
        &ests_webhook::config::Endpoint::Url(format!("https://127.0.0.1:{port}")),
        Some(env.plane.pki.ca_pem.as_bytes()),
        "ests-system",
        cni,
    );
    for config in [
        serde_json::to_value(&mutating)?,
        serde_json::to_value(&validating)?,
    ] {
        ests_testenv::resources::apply_value(&env.client, &config, None, false).await?;
    }
    Ok(())
}

/// Running pods of `ns` (matching `labels`, a label selector; "" for all), not being
/// deleted: name -> (UID, node, pod IP).
pub async fn running_pods(
    env: &Env,
    ns: &str,
    labels: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, (String, String, String)>> {
    use kube::ResourceExt;
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(env.client.clone(), ns);
    Ok(api
        .list(&kube::api::ListParams::default().labels(labels))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            (status.phase.as_deref() == Some("Running")).then_some(())?;
            Some((
                p.name_any(),
                (
                    p.uid()?,
                    p.spec.as_ref()?.node_name.clone()?,
                    status.pod_ip.clone()?,
                ),
            ))
        })
        .collect())
}

/// Bound StaticIP records of `ns`: name -> (pod UID, node, addresses comma-separated).
pub async fn bound_records(
    env: &Env,
    ns: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, (String, String, String)>> {
    use kube::ResourceExt;
    let api: Api<ests_api::StaticIP> = Api::namespaced(env.client.clone(), ns);
    Ok(api
        .list(&kube::api::ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|r| {
            let status = r.status.as_ref()?;
            (status.phase == ests_api::StaticIPPhase::Bound).then_some(())?;
            let ips: Vec<&str> = r.spec.ips.iter().map(|a| a.ip.as_str()).collect();
            Some((
                r.name_any(),
                (status.pod_uid.clone()?, r.spec.node.clone()?, ips.join(",")),
            ))
        })
        .collect())
}

/// What a TLS client trusting `ca_pem` and presenting no certificate reads back for a
/// filter call: the extender must not answer.
pub async fn call_without_client_certificate(port: u16, ca_pem: &str) -> String {
    call_without_client_certificate_at(std::net::Ipv4Addr::LOCALHOST.into(), port, ca_pem).await
}

/// [`call_without_client_certificate`] at `ip:port` (a Service's ClusterIP, say), checking
/// that the server's certificate names `ip`.
pub async fn call_without_client_certificate_at(
    ip: std::net::IpAddr,
    port: u16,
    ca_pem: &str,
) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::pem_slice_iter(
            ca_pem.as_bytes(),
        )
        .flatten()
    {
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((ip, port)).await?;
        let name = rustls::pki_types::ServerName::IpAddress(ip.into());
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(
            b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        )
        .await?;
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await?;
        anyhow::Ok(answer)
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => format!("refused: {e:#}"),
        Err(_) => "no answer within 10 s".into(),
    }
}

/// Creates the ordinary pod `plain` (one container; `spec_extra` merged into its spec, e.g.
/// tolerations) and waits until the scheduler has bound it.
pub async fn ordinary_pod_is_bound(
    pods: &Api<k8s_openapi::api::core::v1::Pod>,
    spec_extra: Value,
) -> anyhow::Result<()> {
    let mut spec = json!({"containers": [{"name": "app", "image": "app:v1"}]});
    if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), spec_extra) {
        spec.extend(extra);
    }
    let pod = serde_json::from_value(json!({"metadata": {"name": "plain"}, "spec": spec}))?;
    pods.create(&kube::api::PostParams::default(), &pod).await?;
    wait_for(
        "the ordinary pod is bound",
        Duration::from_secs(120),
        || async {
            Ok(pods
                .get("plain")
                .await?
                .spec
                .and_then(|s| s.node_name)
                .map(|_| ()))
        },
    )
    .await
}

/// Whether the client's user may `verb` `resource` of jke.jdcloud.com in `namespace`.
pub async fn may(
    client: &Client,
    verb: &str,
    resource: &str,
    namespace: &str,
) -> anyhow::Result<bool> {
    may_in(client, ests_api::GROUP, verb, resource, namespace).await
}

/// Whether the client's user may `verb` `resource` of API group `group` in `namespace`
/// (everywhere when empty).
pub async fn may_in(
    client: &Client,
    group: &str,
    verb: &str,
    resource: &str,
    namespace: &str,
) -> anyhow::Result<bool> {
    let review = k8s_openapi::api::authorization::v1::SelfSubjectAccessReview {
        spec: k8s_openapi::api::authorization::v1::SelfSubjectAccessReviewSpec {
            resource_attributes: Some(k8s_openapi::api::authorization::v1::ResourceAttributes {
                group: Some(group.into()),
                namespace: Some(namespace.into()),
                resource: Some(resource.into()),
                verb: Some(verb.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer =
        Api::<k8s_openapi::api::authorization::v1::SelfSubjectAccessReview>::all(client.clone())
            .create(&kube::api::PostParams::default(), &review)
            .await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}
