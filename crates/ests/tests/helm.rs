//! The Helm chart, `charts/ests`:
//!
//! - `helm lint --strict` and `helm template` pass with the default values and with
//!   `ci/all-options-values.yaml` (every option on);
//! - every rendered object survives a round trip through its k8s-openapi type (an unknown or
//!   misplaced field would be dropped), and the pods are locked down;
//! - no RBAC rule uses a wildcard or reads Secrets, and only the chart's ServiceAccounts are
//!   bound;
//! - `config/` (CRDs, policies, webhook configurations, scheduler configuration, RBAC) says
//!   what the chart installs (no drift);
//! - e2e: `helm install` into the real control plane; the controller, the webhook and the
//!   extender run as local processes with the chart's arguments, authenticated as the chart's
//!   ServiceAccounts by TokenRequest tokens, so exactly the chart's RBAC applies; the source
//!   document's example rolls out with static IPs and a re-created pod keeps its address;
//!   `helm uninstall` leaves no webhook configuration behind.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use ests_api::{EnhancedStatefulSet, StaticIP, StaticIPPhase, keys};
use ests_core::pin::CniAnnotation;
use ests_testenv::helm::{Helm, Values, service_account_kubeconfig};
use ests_testenv::nodes::{NodeSpec, create_nodes};
use ests_testenv::resources::{apply_value, create_namespace, parse_documents};
use ests_testenv::{ControlPlane, LogsOnFailure, wait_for};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The release the tests install; with namespace `ests-system` it gives the names `config/`
/// uses.
const RELEASE: &str = "ests";
const NAMESPACE: &str = "ests-system";
const T: Duration = Duration::from_secs(180);
/// Set to regenerate `config/rbac` and copy `config/crd` into the chart instead of failing.
const UPDATE_ENV: &str = "ESTS_UPDATE_CONFIG";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn chart_dir() -> PathBuf {
    repo().join("charts/ests")
}

fn all_options() -> Values {
    Values::file(chart_dir().join("ci/all-options-values.yaml"))
}

async fn render(values: &Values) -> anyhow::Result<Vec<Value>> {
    let yaml = Helm::locate()?
        .template(&chart_dir(), RELEASE, NAMESPACE, values)
        .await?;
    parse_documents(&yaml)
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn of_kind<'a>(docs: &'a [Value], wanted: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| kind(d) == wanted).collect()
}

fn one<'a>(docs: &'a [Value], wanted_kind: &str, wanted_name: &str) -> &'a Value {
    docs.iter()
        .find(|d| kind(d) == wanted_kind && name(d) == wanted_name)
        .unwrap_or_else(|| panic!("no {wanted_kind} {wanted_name} rendered"))
}

// ---------------------------------------------------------------------------------------
// lint and template

#[tokio::test]
async fn chart_lints_strictly_with_default_values_and_every_option_on() -> anyhow::Result<()> {
    let helm = Helm::locate()?;
    for values in [Values::none(), all_options()] {
        let report = helm.lint(&chart_dir(), &values).await?;
        assert!(
            report.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{values:?}: {report}"
        );
        let docs = render(&values).await?;
        assert!(!docs.is_empty(), "{values:?} renders nothing");
    }
    // values.schema.json refuses a misspelt or out-of-range value rather than ignoring it.
    for (key, value) in [("webhook.replica", "3"), ("webhook.antiAffinity", "maybe")] {
        let values = Values {
            files: Vec::new(),
            set: vec![(key.into(), value.into())],
        };
        let refused = helm
            .template(&chart_dir(), RELEASE, NAMESPACE, &values)
            .await;
        assert!(refused.is_err(), "{key}={value} accepted");
    }
    Ok(())
}

/// The first path at which `a` and `b` differ.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let (l, r) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                first_difference(l, r, &format!("{path}.{k}"))
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (l, r))| first_difference(l, r, &format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(format!("{path}: {a} != {b}")),
    }
}

/// `doc` deserializes into `K` and serializes back unchanged: no field is unknown to the
/// type, misplaced or of the wrong shape.
fn round_trip<K: Serialize + DeserializeOwned>(doc: &Value) -> anyhow::Result<()> {
    let what = format!("{} {}", kind(doc), name(doc));
    let typed: K = serde_json::from_value(doc.clone())
        .with_context(|| format!("{what} does not deserialize"))?;
    let back = serde_json::to_value(&typed).with_context(|| format!("serializing {what}"))?;
    if let Some(difference) = first_difference(doc, &back, "") {
        bail!("{what} changes in a round trip through k8s-openapi at {difference}");
    }
    Ok(())
}

fn check_object(doc: &Value) -> anyhow::Result<()> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    match (api_version, kind(doc)) {
        ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(doc),
        ("v1", "Secret") => round_trip::<Secret>(doc),
        ("v1", "ConfigMap") => round_trip::<ConfigMap>(doc),
        ("v1", "Service") => round_trip::<Service>(doc),
        ("apps/v1", "Deployment") => round_trip::<Deployment>(doc),
        ("apps/v1", "DaemonSet") => round_trip::<DaemonSet>(doc),
        ("policy/v1", "PodDisruptionBudget") => round_trip::<PodDisruptionBudget>(doc),
        ("networking.k8s.io/v1", "NetworkPolicy") => round_trip::<NetworkPolicy>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<ClusterRole>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            round_trip::<ClusterRoleBinding>(doc)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<Role>(doc),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<RoleBinding>(doc),
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            round_trip::<MutatingWebhookConfiguration>(doc)
        }
        ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration") => {
            round_trip::<ValidatingWebhookConfiguration>(doc)
        }
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy") => {
            round_trip::<ValidatingAdmissionPolicy>(doc)
        }
        ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding") => {
            round_trip::<ValidatingAdmissionPolicyBinding>(doc)
        }
        // Kinds of other projects' CRDs (no k8s-openapi type): the shape every object has.
        ("monitoring.coreos.com/v1", "ServiceMonitor")
        | ("cert-manager.io/v1", "Certificate")
        | ("cert-manager.io/v1", "Issuer") => {
            if name(doc).is_empty() || !doc["spec"].is_object() {
                bail!("{} has no name or no spec", kind(doc));
            }
            Ok(())
        }
        (api_version, kind) => bail!("unexpected {api_version} {kind} {}", name(doc)),
    }
}

/// Requests and limits, no privilege escalation, all capabilities dropped, a read-only root
/// filesystem, and a non-root user.
fn check_locked_down(deployment: &Value) {
    let what = name(deployment);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"]["runAsNonRoot"],
        json!(true),
        "{what}"
    );
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        json!("RuntimeDefault"),
        "{what}"
    );
    let containers = pod["containers"].as_array().expect("containers");
    assert!(!containers.is_empty(), "{what}");
    for c in containers {
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], json!(false), "{what}");
        assert_eq!(sc["readOnlyRootFilesystem"], json!(true), "{what}");
        assert_eq!(sc["runAsNonRoot"], json!(true), "{what}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{what}");
        for bound in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    c["resources"][bound][resource].is_string(),
                    "{what}: no {bound}.{resource}"
                );
            }
        }
    }
}

#[tokio::test]
async fn rendered_objects_are_valid_kubernetes_objects() -> anyhow::Result<()> {
    for (label, values) in [("defaults", Values::none()), ("all options", all_options())] {
        let docs = render(&values).await?;
        let mut failures = Vec::new();
        for doc in &docs {
            if let Err(e) = check_object(doc) {
                failures.push(format!("{label}: {e:#}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        let deployments = of_kind(&docs, "Deployment");
        assert!(deployments.len() >= 3, "{label}");
        deployments.iter().for_each(|d| check_locked_down(d));

        // Fail-closed webhooks, answered quickly, with no side effects; the Pod webhook
        // only for static-IP pods, the set webhook for every set; kube-system skipped (by
        // the namespaced ones: no namespace selector applies to the cluster-scoped pools).
        let mutating = one(&docs, "MutatingWebhookConfiguration", "ests-webhook");
        let validating = one(&docs, "ValidatingWebhookConfiguration", "ests-webhook");
        for config in [mutating, validating] {
            for hook in config["webhooks"].as_array().expect("webhooks") {
                assert_eq!(hook["failurePolicy"], json!("Fail"));
                assert_eq!(hook["sideEffects"], json!("None"));
                assert!(hook["timeoutSeconds"].as_i64().is_some_and(|t| t <= 10));
                if hook["rules"][0]["scope"] == json!("Cluster") {
                    assert!(hook["namespaceSelector"].is_null(), "{label}: {hook}");
                    continue;
                }
                let excluded = &hook["namespaceSelector"]["matchExpressions"][0]["values"];
                assert!(
                    excluded
                        .as_array()
                        .is_some_and(|v| v.contains(&json!("kube-system"))),
                    "{label}: {excluded}"
                );
            }
        }
        assert_eq!(
            mutating["webhooks"][0]["objectSelector"]["matchLabels"][keys::STATIC_IP_POD_LABEL],
            json!("true")
        );
        assert!(validating["webhooks"][0]["objectSelector"].is_null());
        for component in ["controller", "webhook", "extender"] {
            one(&docs, "PodDisruptionBudget", &format!("ests-{component}"));
        }
        // Either way kube-scheduler calls the extender over HTTPS with a client certificate
        // that only the extender's CA signed.
        let extender = one(&docs, "Deployment", "ests-extender");
        let args = strings(&extender["spec"]["template"]["spec"]["containers"][0]["args"]);
        assert!(
            args.contains(&"--client-ca-file=/etc/ests/client-ca/ca.crt"),
            "{label}: {args:?}"
        );
        let client = one(&docs, "Secret", "ests-scheduler-client");
        let config = one(&docs, "ConfigMap", "ests-scheduler-config");
        let scheduler: Value = serde_saphyr::from_str(
            config["data"]["kube-scheduler-config.yaml"]
                .as_str()
                .unwrap_or_default(),
        )?;
        for entry in scheduler["extenders"].as_array().into_iter().flatten() {
            assert_eq!(entry["enableHTTPS"], json!(true), "{label}: {entry}");
            assert_eq!(
                entry["tlsConfig"]["certFile"],
                json!("/etc/kubernetes/ests/scheduler-client.crt"),
                "{label}: {entry}"
            );
        }
        assert!(client["data"]["tls.key"].is_string());
        let webhook = one(&docs, "Deployment", "ests-webhook");
        let anti = &webhook["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"];
        if label == "defaults" {
            // The chart's own CA in the caBundle; the Service, not a URL.
            let bundle = mutating["webhooks"][0]["clientConfig"]["caBundle"]
                .as_str()
                .unwrap_or_default();
            assert!(!bundle.is_empty());
            let secret = one(&docs, "Secret", "ests-webhook-tls");
            assert_eq!(secret["data"]["ca.crt"].as_str(), Some(bundle));
            assert!(mutating["webhooks"][0]["clientConfig"]["service"].is_object());
            assert!(anti["preferredDuringSchedulingIgnoredDuringExecution"].is_array());
            assert!(of_kind(&docs, "ServiceMonitor").is_empty());
        } else {
            // cert-manager injects the caBundle; the URL replaces the Service.
            assert_eq!(
                mutating["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
                json!("ests-system/ests-webhook")
            );
            assert!(mutating["webhooks"][0]["clientConfig"]["caBundle"].is_null());
            assert_eq!(
                mutating["webhooks"][0]["clientConfig"]["url"],
                json!("https://127.0.0.1:9443/mutate-pods")
            );
            // cert-manager makes the serving certificate; the chart only kube-scheduler's
            // client certificate for the extender.
            let secrets: Vec<&str> = of_kind(&docs, "Secret").into_iter().map(name).collect();
            assert_eq!(secrets, ["ests-scheduler-client"]);
            one(&docs, "Certificate", "ests-webhook");
            assert!(anti["requiredDuringSchedulingIgnoredDuringExecution"].is_array());
            one(&docs, "ServiceMonitor", "ests");
            assert_eq!(of_kind(&docs, "NetworkPolicy").len(), 4);
            one(&docs, "Deployment", "ests-scheduler");
            // The StaticIP manager on its own: its permissions leave the controller's role.
            one(&docs, "Deployment", "ests-static-ip");
            // (Pools and block status are the manager's alone; node migration also moves
            // blocks.)
            let manages = |role: &Value| {
                rules(role).iter().any(|r| {
                    let resources = strings(&r["resources"]);
                    resources.contains(&"staticippools") || resources.contains(&"ipblocks/status")
                })
            };
            assert!(!manages(one(&docs, "ClusterRole", "ests-controller")));
            assert!(manages(one(&docs, "ClusterRole", "ests-static-ip")));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// RBAC

/// Roles of Kubernetes itself the second scheduler is bound to.
const BUILT_IN_ROLES: &[&str] = &[
    "system:kube-scheduler",
    "system:volume-scheduler",
    "extension-apiserver-authentication-reader",
];

fn rules(doc: &Value) -> Vec<&Value> {
    doc["rules"]
        .as_array()
        .map(|r| r.iter().collect())
        .unwrap_or_default()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn rbac_has_no_wildcard_no_secret_access_and_binds_only_the_charts_accounts()
-> anyhow::Result<()> {
    for (label, values) in [("defaults", Values::none()), ("all options", all_options())] {
        let docs = render(&values).await?;
        let roles: BTreeSet<&str> = docs
            .iter()
            .filter(|d| matches!(kind(d), "Role" | "ClusterRole"))
            .map(name)
            .collect();
        let accounts: BTreeSet<&str> = of_kind(&docs, "ServiceAccount")
            .into_iter()
            .map(name)
            .collect();
        assert!(!roles.is_empty() && !accounts.is_empty());
        for doc in docs
            .iter()
            .filter(|d| matches!(kind(d), "Role" | "ClusterRole"))
        {
            let what = format!("{label}: {} {}", kind(doc), name(doc));
            assert!(doc["aggregationRule"].is_null(), "{what}");
            assert!(!rules(doc).is_empty(), "{what} has no rules");
            for rule in rules(doc) {
                for field in [
                    "apiGroups",
                    "resources",
                    "verbs",
                    "resourceNames",
                    "nonResourceURLs",
                ] {
                    assert!(
                        strings(&rule[field]).iter().all(|s| !s.contains('*')),
                        "{what}: wildcard in {field}: {rule}"
                    );
                }
                assert!(
                    !strings(&rule["resources"])
                        .iter()
                        .any(|r| r.starts_with("secrets")),
                    "{what} grants Secrets: {rule}"
                );
                for verb in ["escalate", "bind", "impersonate"] {
                    assert!(
                        !strings(&rule["verbs"]).contains(&verb),
                        "{what} grants {verb}: {rule}"
                    );
                }
                assert!(!strings(&rule["verbs"]).is_empty(), "{what}: {rule}");
            }
        }
        for doc in docs
            .iter()
            .filter(|d| matches!(kind(d), "RoleBinding" | "ClusterRoleBinding"))
        {
            let what = format!("{label}: {} {}", kind(doc), name(doc));
            let role = doc["roleRef"]["name"].as_str().unwrap_or_default();
            assert!(
                roles.contains(role) || BUILT_IN_ROLES.contains(&role),
                "{what} binds unknown role {role}"
            );
            for subject in doc["subjects"].as_array().expect("subjects") {
                assert_eq!(subject["kind"], json!("ServiceAccount"), "{what}");
                assert_eq!(subject["namespace"], json!(NAMESPACE), "{what}");
                let account = subject["name"].as_str().unwrap_or_default();
                assert!(accounts.contains(account), "{what} binds {account}");
            }
        }
        // Users read StaticIPs through the aggregated roles and never write them.
        let view = one(&docs, "ClusterRole", "ests-view");
        let edit = one(&docs, "ClusterRole", "ests-edit");
        assert_eq!(
            view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"],
            json!("true")
        );
        assert_eq!(
            edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"],
            json!("true")
        );
        for rule in rules(view) {
            assert_eq!(strings(&rule["verbs"]), ["get", "list", "watch"]);
        }
        for rule in rules(edit) {
            assert!(
                strings(&rule["resources"])
                    .iter()
                    .all(|r| r.starts_with("enhancedstatefulsets")),
                "users write only sets: {rule}"
            );
        }
        // The extender places pods and writes addresses only when it binds: the defaults
        // leave bind off, every option turns it on.
        let extender = one(&docs, "ClusterRole", "ests-extender");
        let binds = rules(extender).iter().any(|rule| {
            strings(&rule["resources"]).contains(&"pods/binding")
                && strings(&rule["verbs"]).contains(&"create")
        });
        let writes = rules(extender).iter().any(|rule| {
            strings(&rule["verbs"])
                .iter()
                .any(|v| matches!(*v, "create" | "update" | "patch"))
        });
        let bind_on = label == "all options";
        assert_eq!(
            binds, bind_on,
            "{label}: the extender may bind pods: {binds}"
        );
        assert_eq!(writes, bind_on, "{label}: the extender may write: {writes}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// the node agent's DaemonSet (node.enabled)

fn set(pairs: &[(&str, &str)]) -> Values {
    Values {
        files: Vec::new(),
        set: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// The args of the first container named `container` in the pod spec of `doc`.
fn container_args<'a>(doc: &'a Value, list: &str, container: &str) -> Vec<&'a str> {
    doc["spec"]["template"]["spec"][list]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == container)
        .map(|c| strings(&c["args"]))
        .unwrap_or_default()
}

/// The values of `--flag=` in `args`.
fn flag<'a>(args: &[&'a str], flag: &str) -> Vec<&'a str> {
    let prefix = format!("--{flag}=");
    args.iter()
        .filter_map(|a| a.strip_prefix(prefix.as_str()))
        .collect()
}

/// The validating webhooks the webhook crate registers itself with these CNI annotations:
/// what the chart must render.
fn registered_webhook_names(cni: &[CniAnnotation]) -> Vec<String> {
    let (_, validating) = ests_webhook::config::configurations(
        &ests_webhook::config::Endpoint::Url("https://x".into()),
        None,
        NAMESPACE,
        cni,
    );
    validating
        .webhooks
        .unwrap_or_default()
        .into_iter()
        .map(|w| w.name)
        .collect()
}

fn webhook_names(docs: &[Value]) -> Vec<String> {
    one(docs, "ValidatingWebhookConfiguration", "ests-webhook")["webhooks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["name"].as_str().map(str::to_owned))
        .collect()
}

/// Off by default: an existing install renders no DaemonSet, no node RBAC, and keeps
/// writing Calico's annotation (with the pod-address webhook guarding it).
#[tokio::test]
async fn the_node_agent_is_off_by_default_and_calico_stays_the_default() -> anyhow::Result<()> {
    let docs = render(&Values::none()).await?;
    assert!(of_kind(&docs, "DaemonSet").is_empty());
    assert!(
        !docs.iter().any(|d| name(d) == "ests-node"),
        "something of the node agent rendered"
    );
    let webhook = one(&docs, "Deployment", "ests-webhook");
    assert_eq!(
        flag(
            &container_args(webhook, "containers", "webhook"),
            "cni-annotation"
        ),
        ["cni.projectcalico.org/ipAddrs={ips-json}"]
    );
    let calico = [CniAnnotation::calico()];
    let expected = registered_webhook_names(&calico);
    assert_eq!(webhook_names(&docs), expected);
    Ok(())
}

/// `node.enabled`: the DaemonSet as a CNI's (host network, every taint tolerated,
/// node-critical, rolling), its init container installing into the host's CNI directories,
/// the agent on the socket the written list names; and the webhook and the extender's bind
/// write no Calico annotation, with no pod-address webhook left to guard one.
#[tokio::test]
async fn the_node_agent_renders_as_a_cni_daemonset_when_enabled() -> anyhow::Result<()> {
    let docs = render(&set(&[("node.enabled", "true"), ("extender.bind", "true")])).await?;
    for doc in &docs {
        check_object(doc)?;
    }
    let daemonset = one(&docs, "DaemonSet", "ests-node");
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], json!(true));
    assert_eq!(pod["dnsPolicy"], json!("ClusterFirstWithHostNet"));
    assert_eq!(pod["priorityClassName"], json!("system-node-critical"));
    assert_eq!(pod["tolerations"], json!([{"operator": "Exists"}]));
    assert_eq!(pod["serviceAccountName"], json!("ests-node"));
    assert_eq!(
        daemonset["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}})
    );
    // Root without capabilities, read-only, no escalation, in both containers.
    assert_eq!(pod["securityContext"]["runAsUser"], json!(0));
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        json!("RuntimeDefault")
    );
    for list in ["initContainers", "containers"] {
        let containers = pod[list].as_array().context("containers")?;
        assert_eq!(containers.len(), 1, "{list}");
        let sc = &containers[0]["securityContext"];
        assert_eq!(sc["runAsUser"], json!(0), "{list}");
        assert_eq!(sc["allowPrivilegeEscalation"], json!(false), "{list}");
        assert_eq!(sc["readOnlyRootFilesystem"], json!(true), "{list}");
        assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}), "{list}");
        assert!(sc["capabilities"]["add"].is_null(), "{list}");
        assert!(containers[0]["resources"]["limits"]["memory"].is_string());
    }
    let agent = &pod["containers"][0];
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(agent[probe]["httpGet"]["path"], json!(path));
        assert_eq!(agent[probe]["httpGet"]["port"], json!("metrics"));
    }
    assert_eq!(agent["ports"][0]["containerPort"], json!(8084));
    // hostPath volumes: the CNI directories, the socket's, the table's; each mounted at
    // the same path as on the host.
    let volumes: BTreeMap<&str, &str> = pod["volumes"]
        .as_array()
        .context("volumes")?
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap_or_default(),
                v["hostPath"]["path"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        volumes,
        BTreeMap::from([
            ("cni-bin", "/opt/cni/bin"),
            ("cni-conf", "/etc/cni/net.d"),
            ("socket", "/var/run/ests"),
            ("state", "/run/ests/node"),
        ])
    );
    for container in [&pod["initContainers"][0], agent] {
        for mount in container["volumeMounts"].as_array().context("mounts")? {
            let volume = mount["name"].as_str().unwrap_or_default();
            assert_eq!(mount["mountPath"].as_str(), volumes.get(volume).copied());
        }
    }
    let agent_args = container_args(daemonset, "containers", "agent");
    assert_eq!(agent_args[0], "node");
    assert_eq!(flag(&agent_args, "socket"), ["/var/run/ests/cni.sock"]);
    assert_eq!(flag(&agent_args, "state-dir"), ["/run/ests/node"]);
    assert_eq!(flag(&agent_args, "metrics-addr"), ["$(HOST_IP):8084"]);
    let all = render(&all_options()).await?;
    let args = container_args(one(&all, "DaemonSet", "ests-node"), "containers", "agent");
    assert_eq!(flag(&args, "metrics-addr"), ["[::]:9084"]);

    // The init container's flags, run by the ests under test against local directories
    // standing in for the host's: the list it writes is read by the plugin's own parser, and
    // names the socket the agent listens on.
    let install = container_args(daemonset, "initContainers", "install-cni");
    assert_eq!(install[..2], ["node", "install-cni"]);
    let dir = std::env::temp_dir().join(format!("ests-helm-install-cni-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (bin, conf) = (dir.join("opt/cni/bin"), dir.join("etc/cni/net.d"));
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(&conf)?;
    let plugin = dir.join("ests-cni");
    std::fs::write(&plugin, "a plugin")?;
    let args: Vec<String> = install
        .iter()
        .map(|a| {
            a.replace(
                "--plugin=/usr/local/bin/ests-cni",
                &format!("--plugin={}", plugin.display()),
            )
            .replace("=/opt/cni/bin", &format!("={}", bin.display()))
            .replace("=/etc/cni/net.d", &format!("={}", conf.display()))
        })
        .collect();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_ests"))
        .args(&args)
        .env("ESTS_LOG_FORMAT", "text")
        .output()
        .await?;
    assert!(
        output.status.success(),
        "ests {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(std::fs::read(bin.join("ests-cni"))?, b"a plugin");
    let text = std::fs::read_to_string(conf.join("00-ests.conflist"))?;
    let ipam = ests_cni::conflist::ipam_as_plugin_reads(&text)?;
    assert_eq!(ipam.agent_socket, Path::new("/var/run/ests/cni.sock"));
    let list: Value = serde_json::from_str(&text)?;
    assert_eq!(list["name"], json!("ests"));
    assert_eq!(list["plugins"][0]["type"], json!("bridge"));
    assert_eq!(list["plugins"][0]["bridge"], json!("cni0"));
    std::fs::remove_dir_all(&dir)?;

    // Read-only RBAC: exactly the agent's watches.
    let role = one(&docs, "ClusterRole", "ests-node");
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["list", "watch"]},
            {"apiGroups": ["jke.jdcloud.com"], "resources": ["staticips", "ipblocks"], "verbs": ["list", "watch"]},
        ])
    );
    let binding = one(&docs, "ClusterRoleBinding", "ests-node");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "ests-node", "namespace": NAMESPACE}])
    );
    one(&docs, "ServiceAccount", "ests-node");

    // ests's own IPAM: no CNI annotation but ests's own, and no pod-address webhook.
    for (deployment, container) in [("ests-webhook", "webhook"), ("ests-extender", "extender")] {
        let args = container_args(
            one(&docs, "Deployment", deployment),
            "containers",
            container,
        );
        assert_eq!(flag(&args, "cni-annotation"), ["none"], "{deployment}");
    }
    let expected = registered_webhook_names(&[]);
    assert_eq!(webhook_names(&docs), expected);
    assert!(!expected.contains(&"pod-addresses.staticip.jke.jdcloud.com".to_string()));

    // cni.integration overrides the default either way.
    let calico = render(&set(&[
        ("node.enabled", "true"),
        ("cni.integration", "calico"),
    ]))
    .await?;
    let args = container_args(
        one(&calico, "Deployment", "ests-webhook"),
        "containers",
        "webhook",
    );
    assert_eq!(
        flag(&args, "cni-annotation"),
        ["cni.projectcalico.org/ipAddrs={ips-json}"]
    );
    let ests = render(&set(&[("cni.integration", "ests")])).await?;
    let args = container_args(
        one(&ests, "Deployment", "ests-webhook"),
        "containers",
        "webhook",
    );
    assert_eq!(flag(&args, "cni-annotation"), ["none"]);
    Ok(())
}

/// Bad node values are refused by the schema (or the templates), naming the value.
#[tokio::test]
async fn bad_node_values_are_refused_naming_them() -> anyhow::Result<()> {
    let helm = Helm::locate()?;
    for (pairs, named) in [
        (vec![("node.addWait", "soon")], "addWait"),
        (vec![("node.cni.confFileName", "ests.conf")], "confFileName"),
        (
            vec![("node.cni.mainPlugin.ipam.type", "host-local")],
            "ipam",
        ),
        (vec![("node.cni.cniVersion", "0.2.0")], "cniVersion"),
        (vec![("node.socketDir", "relative/dir")], "socketDir"),
        (vec![("node.metricsHost", "::")], "metricsHost"),
        (vec![("node.podRanges[0]", "not-a-cidr")], "podRanges"),
        (vec![("node.enable", "true")], "enable"),
        (vec![("cni.integration", "flannel")], "integration"),
        (vec![("cni.integration", "custom")], "cniAnnotations"),
    ] {
        let values = set(&pairs);
        let refused = helm
            .template(&chart_dir(), RELEASE, NAMESPACE, &values)
            .await
            .err()
            .with_context(|| format!("{pairs:?} accepted"))?;
        // What helm said, without the command line that names the value too.
        let message = format!("{refused:#}");
        let said = message
            .split_once("failed with")
            .map(|(_, s)| s)
            .unwrap_or_default();
        assert!(said.contains(named), "{pairs:?}: {said}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// config/ in step with the chart

/// Labels Helm's rendering adds that a plain `kubectl apply` of config/ has no business with.
fn without_helm_labels(mut doc: Value) -> Value {
    if let Some(labels) = doc["metadata"]["labels"].as_object_mut() {
        labels.retain(|k, _| k.starts_with("rbac.authorization.k8s.io/aggregate-to"));
        if labels.is_empty()
            && let Some(meta) = doc["metadata"].as_object_mut()
        {
            meta.remove("labels");
        }
    }
    doc
}

fn read_documents(path: &Path) -> anyhow::Result<Vec<Value>> {
    let yaml =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_documents(&yaml).with_context(|| format!("parsing {}", path.display()))
}

fn assert_same(what: &str, chart: &[Value], config: &[Value], fix: &str) {
    let by_key = |docs: &[Value]| -> BTreeMap<(String, String), Value> {
        docs.iter()
            .map(|d| ((kind(d).to_string(), name(d).to_string()), d.clone()))
            .collect()
    };
    let (chart, config) = (by_key(chart), by_key(config));
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        config.keys().collect::<Vec<_>>(),
        "{what}: the chart and config/ hold different objects; {fix}"
    );
    for (key, want) in &config {
        if let Some(difference) = first_difference(&chart[key], want, "") {
            panic!("{what}: {key:?} differs at {difference}; {fix}");
        }
    }
}

/// The chart's RBAC for release `ests` in `ests-system`, as config/rbac holds it.
const RBAC_KINDS: &[&str] = &[
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
];

fn rbac_yaml(docs: &[Value]) -> anyhow::Result<String> {
    let mut out = String::from(
        "# The RBAC the Helm chart (charts/ests) installs as release `ests` in namespace\n\
         # ests-system: one ServiceAccount per component with only what it uses, and the\n\
         # user roles aggregated into view/edit/admin. Generated from the chart by\n\
         # `ESTS_UPDATE_CONFIG=1 cargo test -p ests --test helm config_`; do not edit by hand.\n",
    );
    for doc in docs {
        out.push_str("---\n");
        out.push_str(serde_saphyr::to_string(doc)?.trim_end());
        out.push('\n');
    }
    Ok(out)
}

#[tokio::test]
async fn config_is_in_step_with_the_chart() -> anyhow::Result<()> {
    let update = std::env::var_os(UPDATE_ENV).is_some();
    let docs: Vec<Value> = render(&Values::none())
        .await?
        .into_iter()
        .map(without_helm_labels)
        .collect();

    // CRDs: the chart's crds/ holds exactly config/crd (generated from the types).
    let (config_crds, chart_crds) = (repo().join("config/crd"), chart_dir().join("crds"));
    let list = |dir: &Path| -> anyhow::Result<BTreeSet<String>> {
        Ok(std::fs::read_dir(dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    };
    if update {
        for file in list(&chart_crds)? {
            std::fs::remove_file(chart_crds.join(file))?;
        }
        for file in list(&config_crds)? {
            std::fs::copy(config_crds.join(&file), chart_crds.join(&file))?;
        }
    }
    assert_eq!(
        list(&config_crds)?,
        list(&chart_crds)?,
        "charts/ests/crds differs from config/crd; run `{UPDATE_ENV}=1 cargo test -p ests --test helm config_`"
    );
    for file in list(&config_crds)? {
        let want = std::fs::read(config_crds.join(&file))?;
        let have = std::fs::read(chart_crds.join(&file))?;
        assert!(
            want == have,
            "charts/ests/crds/{file} differs from config/crd/{file}; run `{UPDATE_ENV}=1 cargo test -p ests --test helm config_`"
        );
        let crd = read_documents(&chart_crds.join(&file))?;
        assert_eq!(crd.len(), 1, "{file}");
        round_trip::<CustomResourceDefinition>(&crd[0])?;
    }

    // Admission policies: config/policy (generated from crates/api/src/policy.rs).
    let mut policies = Vec::new();
    for file in list(&repo().join("config/policy"))? {
        policies.extend(read_documents(&repo().join("config/policy").join(file))?);
    }
    let chart_policies: Vec<Value> = docs
        .iter()
        .filter(|d| kind(d).starts_with("ValidatingAdmissionPolicy"))
        .cloned()
        .collect();
    assert_same(
        "admission policies",
        &chart_policies,
        &policies,
        "change charts/ests/templates/admission-policies.yaml to match config/policy",
    );

    // Webhook configurations: config/webhook (generated from crates/webhook/src/config.rs),
    // whose caBundle the chart fills in.
    let webhooks = read_documents(&repo().join("config/webhook/webhooks.yaml"))?;
    let chart_webhooks: Vec<Value> = docs
        .iter()
        .filter(|d| kind(d).ends_with("WebhookConfiguration"))
        .cloned()
        .map(|mut d| {
            for hook in d["webhooks"].as_array_mut().into_iter().flatten() {
                if let Some(client) = hook["clientConfig"].as_object_mut() {
                    client.remove("caBundle");
                }
            }
            d
        })
        .collect();
    assert_same(
        "webhook configurations",
        &chart_webhooks,
        &webhooks,
        "change charts/ests/templates/webhook-configurations.yaml to match config/webhook",
    );

    // Scheduler: the chart's extender entries are config/scheduler's; with the bind entry
    // when config/scheduler has one (the chart adds it with `extender.bind`).
    let scheduler = read_documents(&repo().join("config/scheduler/kube-scheduler-config.yaml"))?;
    let binds = scheduler[0]["extenders"]
        .as_array()
        .is_some_and(|e| e.iter().any(|x| x.get("bindVerb").is_some()));
    let bind_docs = if binds {
        render(&Values {
            files: Vec::new(),
            set: vec![("extender.bind".into(), "true".into())],
        })
        .await?
    } else {
        docs.clone()
    };
    let config_map = one(&bind_docs, "ConfigMap", "ests-scheduler-config");
    let mut chart_scheduler: Value = serde_saphyr::from_str(
        config_map["data"]["kube-scheduler-config.yaml"]
            .as_str()
            .unwrap_or_default(),
    )?;
    // The CA the chart makes differs at every render: config/scheduler says CA_DATA.
    for entry in chart_scheduler["extenders"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        if entry["tlsConfig"]["caData"].is_string() {
            entry["tlsConfig"]["caData"] = json!("CA_DATA");
        }
    }
    if let Some(difference) = first_difference(&chart_scheduler, &scheduler[0], "") {
        panic!(
            "the chart's scheduler configuration differs from config/scheduler at {difference}; change the ests.schedulerExtenders template in charts/ests/templates/_helpers.tpl"
        );
    }

    // RBAC: config/rbac is the chart's, for those who install without Helm.
    let rbac: Vec<Value> = RBAC_KINDS
        .iter()
        .flat_map(|k| of_kind(&docs, k))
        .cloned()
        .collect();
    let rbac_path = repo().join("config/rbac/rbac.yaml");
    if update {
        std::fs::create_dir_all(repo().join("config/rbac"))?;
        std::fs::write(&rbac_path, rbac_yaml(&rbac)?)?;
    }
    assert_same(
        "RBAC",
        &rbac,
        &read_documents(&rbac_path)?,
        &format!("run `{UPDATE_ENV}=1 cargo test -p ests --test helm config_`"),
    );
    Ok(())
}

/// config/webhook holds the pod-address webhook for the default CNI annotation; with
/// `cniAnnotations` set, the chart sends it the pods setting any of those keys, as
/// crates/webhook/src/config.rs would for the webhook's own `--cni-annotation` flags.
#[tokio::test]
async fn config_the_pod_address_webhook_follows_cni_annotations() -> anyhow::Result<()> {
    let docs = render(&all_options()).await?;
    let args: Vec<String> = of_kind(&docs, "Deployment")
        .into_iter()
        .flat_map(|d| {
            d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|c| c["args"][0] == "webhook")
        .flat_map(|c| c["args"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    let cni: Vec<CniAnnotation> = args
        .iter()
        .filter_map(|a| a.strip_prefix("--cni-annotation="))
        .map(CniAnnotation::parse)
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    assert_eq!(cni.len(), 2, "the webhook's flags: {args:?}");
    let config = one(&docs, "ValidatingWebhookConfiguration", "ests-webhook");
    let hook = config["webhooks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| w["name"] == "pod-addresses.staticip.jke.jdcloud.com")
        .context("no pod-address webhook rendered")?;
    assert_eq!(
        hook["matchConditions"],
        serde_json::to_value(ests_webhook::config::pod_address_conditions(&cni))?,
        "change charts/ests/templates/webhook-configurations.yaml to match crates/webhook/src/config.rs"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// e2e

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The status code of a plain-HTTP GET of `path` on loopback `port`.
async fn http_status(port: u16, path: &str) -> anyhow::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut response)).await??;
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status line in {response:?}"))
}

/// Stops the processes it names when dropped, however the test ends.
struct Running<'a> {
    plane: &'a ControlPlane,
    names: Vec<String>,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        for name in &self.names {
            if let Err(e) = self.plane.stop_process(name) {
                eprintln!("stopping {name}: {e:#}");
            }
        }
    }
}

/// Runs the container of Deployment `ests-<component>` as a local process, as the chart
/// configures it: its arguments and environment, its ServiceAccount (a token in a
/// kubeconfig), loopback addresses for the ports the chart opens, and `mounts` (the chart's
/// mount path, a local directory) for its volumes. Waits until its /readyz says ready.
async fn run_component(
    plane: &ControlPlane,
    admin: &Client,
    running: &mut Running<'_>,
    prefix: &str,
    component: &str,
    listen_port: Option<u16>,
    mounts: &[(&str, &Path)],
) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NAMESPACE);
    let deployment_name = format!("{RELEASE}-{component}");
    let deployment = deployments.get(&deployment_name).await?;
    let pod = deployment
        .spec
        .template
        .spec
        .with_context(|| format!("{deployment_name} has no pod spec"))?;
    let account = pod
        .service_account_name
        .clone()
        .with_context(|| format!("{deployment_name} names no ServiceAccount"))?;
    let container = pod
        .containers
        .first()
        .with_context(|| format!("{deployment_name} has no container"))?;

    let kubeconfig = plane.dir.join(format!("kubeconfig-{prefix}-{component}"));
    service_account_kubeconfig(
        admin,
        &plane.server,
        &plane.pki.ca_cert,
        NAMESPACE,
        &account,
        &kubeconfig,
    )
    .await?;

    // The process is who the chart says, and no more: its ServiceAccount, which may not read
    // Secrets or grant itself anything.
    let client = ests_testenv::control_plane::client_from_kubeconfig(&kubeconfig).await?;
    let review = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    let user = review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .unwrap_or_default();
    assert_eq!(user, format!("system:serviceaccount:{NAMESPACE}:{account}"));
    for (group, verb, resource, namespace) in [
        ("", "get", "secrets", NAMESPACE),
        ("", "list", "secrets", ""),
        (
            "rbac.authorization.k8s.io",
            "create",
            "clusterrolebindings",
            "",
        ),
        ("rbac.authorization.k8s.io", "escalate", "clusterroles", ""),
    ] {
        assert!(
            !support::may_in(&client, group, verb, resource, namespace).await?,
            "{account} may {verb} {resource}"
        );
    }

    let metrics_port = free_port()?;
    let mut args = Vec::new();
    for arg in container.args.iter().flatten() {
        let mut arg = if arg.starts_with("--metrics-addr=") {
            format!("--metrics-addr=127.0.0.1:{metrics_port}")
        } else if arg.starts_with("--listen=") {
            let port = listen_port.with_context(|| format!("{component} listens; no port"))?;
            format!("--listen=127.0.0.1:{port}")
        } else {
            arg.clone()
        };
        for (mount, local) in mounts {
            arg = arg.replace(mount, &local.display().to_string());
        }
        args.push(arg);
    }
    let name = format!("{prefix}-{component}");
    let kubeconfig = kubeconfig.display().to_string();
    let mut env: Vec<(String, String)> = container
        .env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .filter(|(k, _)| !matches!(k.as_str(), "ESTS_LOG" | "ESTS_LOG_FORMAT"))
        .collect();
    env.extend([
        ("KUBECONFIG".to_string(), kubeconfig),
        ("POD_NAME".to_string(), name.clone()),
        ("POD_NAMESPACE".to_string(), NAMESPACE.to_string()),
        ("ESTS_LOG_FORMAT".to_string(), "text".to_string()),
        // Debug, so that a refused event or write shows in the log the test scans.
        (
            "ESTS_LOG".to_string(),
            "info,kube=warn,ests_controller=debug,ests_staticip=debug,ests_webhook=debug,ests_extender=debug"
                .to_string(),
        ),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    eprintln!("running {name}: ests {}", args.join(" "));
    plane.run_process(&name, Path::new(env!("CARGO_BIN_EXE_ests")), &args, &env)?;
    running.names.push(name.clone());
    let exited = wait_for(format!("{name} ready"), T, || async {
        if !plane.is_running(&name) {
            return Ok(Some(true));
        }
        Ok((http_status(metrics_port, "/readyz").await? == 200).then_some(false))
    })
    .await?;
    if exited {
        bail!("{name} exited:\n{}", plane.log_tail(&name, 40));
    }
    Ok(())
}

/// Where the chart's values put kube-scheduler's client certificate on its host.
const SCHEDULER_CERT_DIR: &str = "/etc/kubernetes/ests";

/// `text` with each host directory replaced by the local one standing in for it.
fn on_host(text: &str, dirs: &[(&str, &Path)]) -> String {
    dirs.iter().fold(text.to_string(), |text, (host, local)| {
        text.replace(host, &local.display().to_string())
    })
}

/// Runs the harness's kube-scheduler as the chart's second scheduler: the chart's
/// configuration (with a kubeconfig holding a token of the chart's ServiceAccount for it),
/// the Deployment's flags, loopback ports. Waits until it holds its Lease.
async fn run_second_scheduler(
    plane: &ControlPlane,
    admin: &Client,
    running: &mut Running<'_>,
    prefix: &str,
    host_dirs: &[(&str, &Path)],
) -> anyhow::Result<()> {
    let process = format!("{prefix}-scheduler");
    let name = format!("{RELEASE}-scheduler");
    let deployment = Api::<Deployment>::namespaced(admin.clone(), NAMESPACE)
        .get(&name)
        .await?;
    let pod = deployment
        .spec
        .template
        .spec
        .with_context(|| format!("{name} has no pod spec"))?;
    let account = pod
        .service_account_name
        .clone()
        .with_context(|| format!("{name} names no ServiceAccount"))?;
    let command = pod
        .containers
        .first()
        .and_then(|c| c.command.clone())
        .with_context(|| format!("{name} has no command"))?;
    let config_map = Api::<ConfigMap>::namespaced(admin.clone(), NAMESPACE)
        .get(&name)
        .await?;
    let dir = plane.dir.join(&process);
    let (config_dir, cert_dir) = (dir.join("config"), dir.join("certs"));
    std::fs::create_dir_all(&config_dir)?;
    std::fs::create_dir_all(&cert_dir)?;
    let kubeconfig = dir.join("kubeconfig");
    service_account_kubeconfig(
        admin,
        &plane.server,
        &plane.pki.ca_cert,
        NAMESPACE,
        &account,
        &kubeconfig,
    )
    .await?;
    let mut config: Value = serde_saphyr::from_str(
        config_map
            .data
            .as_ref()
            .and_then(|d| d.get("config.yaml"))
            .with_context(|| format!("ConfigMap {name} has no config.yaml"))?,
    )?;
    config["clientConnection"] = json!({"kubeconfig": kubeconfig.display().to_string()});
    std::fs::write(
        config_dir.join("config.yaml"),
        on_host(&serde_saphyr::to_string(&config)?, host_dirs),
    )?;
    let kubeconfig = kubeconfig.display().to_string();
    let mut args: Vec<String> = command
        .iter()
        .skip(1)
        .map(|a| {
            a.replace("/etc/ests-scheduler", &config_dir.display().to_string())
                .replace("/var/run/ests-scheduler", &cert_dir.display().to_string())
        })
        .collect();
    args.extend([
        "--bind-address=127.0.0.1".to_string(),
        format!("--secure-port={}", free_port()?),
        format!("--authentication-kubeconfig={kubeconfig}"),
        format!("--authorization-kubeconfig={kubeconfig}"),
    ]);
    eprintln!("running {process}: kube-scheduler {}", args.join(" "));
    plane.run_process(&process, &plane.bin.join("kube-scheduler"), &args, &[])?;
    running.names.push(process.clone());
    let leases: Api<Lease> = Api::namespaced(admin.clone(), NAMESPACE);
    let exited = wait_for("the second scheduler leads", T, || async {
        if !plane.is_running(&process) {
            return Ok(Some(true));
        }
        let lease = leases.get_opt(&name).await?;
        Ok(lease
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .map(|_| false))
    })
    .await?;
    if exited {
        bail!(
            "the second scheduler exited:\n{}",
            plane.log_tail(&process, 40)
        );
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
struct Placement {
    uid: String,
    ip: String,
    node: String,
}

/// Waits until `n` running pods of the example are Bound to their records, with the
/// record's address and node.
async fn bound_pods(
    client: &Client,
    ns: &str,
    n: usize,
) -> anyhow::Result<BTreeMap<String, Placement>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let records: Api<StaticIP> = Api::namespaced(client.clone(), ns);
    wait_for(
        format!("{ns}: {n} pods bound to their StaticIPs"),
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
                .list(&ListParams::default().labels("apps=staticip-example"))
                .await?
                .items
            {
                if pod.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let name = pod.name_any();
                let uid = pod.uid().unwrap_or_default();
                let status = pod.status.as_ref();
                let ip = status.and_then(|s| s.pod_ip.clone()).unwrap_or_default();
                let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
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
                if running && bound {
                    placed.insert(name, Placement { uid, ip, node });
                }
            }
            Ok((placed.len() == n).then_some(placed))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_runs_ests_under_the_charts_service_accounts() -> anyhow::Result<()> {
    install_and_run(false).await
}

/// `controller.staticIPManager=false`: the manager runs as its own Deployment, under its
/// own ServiceAccount, and the controller's role no longer has the manager's permissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_with_the_static_ip_manager_on_its_own() -> anyhow::Result<()> {
    install_and_run(true).await
}

/// Installs the chart, runs its components as local processes under its ServiceAccounts,
/// rolls out the examples, upgrades and uninstalls. The tests that do so take turns: the
/// release's cluster-wide objects (webhook configurations, policies) are shared.
async fn install_and_run(separate_manager: bool) -> anyhow::Result<()> {
    let _turn = ests_testenv::cluster_lock().await;
    let plane = ests_testenv::shared().await?;
    let _logs = LogsOnFailure(plane);
    let admin = plane.client().await?;
    static NODES: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    NODES
        .get_or_try_init(|| async {
            let nodes: Vec<_> = (0..3).map(|i| NodeSpec::new(format!("node-{i}"))).collect();
            create_nodes(&admin, &nodes).await
        })
        .await?;
    // The second variant also has the scheduler call the extender over HTTPS (extender.tls,
    // with the chart's certificate and caData).
    let (prefix, cidr, scheme) = if separate_manager {
        ("helm2", "10.43.0", "https")
    } else {
        ("helm", "10.42.0", "http")
    };

    // The API server here cannot reach Service IPs (no kube-proxy, no pod network), so the
    // webhook configurations name the local webhook by URL (`webhook.url`, with 127.0.0.1
    // in the chart-made certificate), and the scheduler configuration names the local
    // extender (`extender.url`). Everything else is the chart's defaults.
    let (webhook_port, extender_port) = (free_port()?, free_port()?);
    let values = plane.dir.join(format!("{prefix}-values.yaml"));
    std::fs::write(
        &values,
        format!(
            "controller:\n  staticIPManager: {}\n\
             webhook:\n  url: https://127.0.0.1:{webhook_port}\n  tls:\n    extraIPAddresses: [127.0.0.1]\n\
             extender:\n  url: {scheme}://127.0.0.1:{extender_port}\n  bind: true\n  tls:\n    enabled: {separate_manager}\n\
             scheduler:\n  secondScheduler:\n    enabled: true\n",
            !separate_manager
        ),
    )?;
    let helm = Helm::locate()?;
    let installed = helm
        .install(
            &plane.kubeconfig,
            &chart_dir(),
            RELEASE,
            NAMESPACE,
            &Values::file(&values),
            T,
        )
        .await?;
    assert!(installed.contains("NOTES:"), "{installed}");
    eprintln!("{installed}");

    // The certificate the chart made, where the webhook process reads it.
    let secret = Api::<Secret>::namespaced(admin.clone(), NAMESPACE)
        .get("ests-webhook-tls")
        .await?;
    let tls_dir = plane.dir.join(format!("{prefix}-webhook-tls"));
    std::fs::create_dir_all(&tls_dir)?;
    for file in ["tls.crt", "tls.key"] {
        let data = secret
            .data
            .as_ref()
            .and_then(|d| d.get(file))
            .with_context(|| format!("the webhook Secret has no {file}"))?;
        std::fs::write(tls_dir.join(file), &data.0)?;
    }

    // kube-scheduler's client certificate for the extender (extender.tls.clientAuth, on with
    // extender.tls), where the extender and both schedulers look for it: the host directory
    // of the chart's values and the extender's mount, here one local directory.
    let client_dir = plane.dir.join(format!("{prefix}-scheduler-client"));
    if separate_manager {
        let client = Api::<Secret>::namespaced(admin.clone(), NAMESPACE)
            .get("ests-scheduler-client")
            .await?;
        std::fs::create_dir_all(&client_dir)?;
        for (key, file) in [
            ("ca.crt", "ca.crt"),
            ("tls.crt", "scheduler-client.crt"),
            ("tls.key", "scheduler-client.key"),
        ] {
            let data = client
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .with_context(|| format!("the scheduler's client Secret has no {key}"))?;
            std::fs::write(client_dir.join(file), &data.0)?;
        }
    }
    let host_dirs = [(SCHEDULER_CERT_DIR, client_dir.as_path())];

    let mut running = Running {
        plane,
        names: Vec::new(),
    };
    run_component(plane, &admin, &mut running, prefix, "controller", None, &[]).await?;
    let mut components = vec!["controller", "webhook", "extender", "scheduler"];
    if separate_manager {
        run_component(plane, &admin, &mut running, prefix, "static-ip", None, &[]).await?;
        components.push("static-ip");
    }
    run_component(
        plane,
        &admin,
        &mut running,
        prefix,
        "webhook",
        Some(webhook_port),
        &[("/etc/ests/tls", &tls_dir)],
    )
    .await?;
    run_component(
        plane,
        &admin,
        &mut running,
        prefix,
        "extender",
        Some(extender_port),
        &[
            ("/etc/ests/tls", &tls_dir),
            ("/etc/ests/client-ca", &client_dir),
        ],
    )
    .await?;

    if separate_manager {
        // Nobody but kube-scheduler: a caller without its certificate gets no answer.
        let ca = secret
            .data
            .as_ref()
            .and_then(|d| d.get("ca.crt"))
            .context("the webhook Secret has no ca.crt")?;
        let answer = support::call_without_client_certificate(
            extender_port,
            &String::from_utf8_lossy(&ca.0),
        )
        .await;
        assert!(
            !answer.contains("HTTP/1.1"),
            "the chart's extender answered a caller without a certificate: {answer}"
        );
    }

    // The scheduler that places all pods, with the chart's extender entry.
    let config_map = Api::<ConfigMap>::namespaced(admin.clone(), NAMESPACE)
        .get("ests-scheduler-config")
        .await?;
    let scheduler: Value = serde_saphyr::from_str(
        config_map
            .data
            .as_ref()
            .and_then(|d| d.get("kube-scheduler-config.yaml"))
            .context("the scheduler ConfigMap has no kube-scheduler-config.yaml")?,
    )?;
    assert_eq!(
        scheduler["extenders"][0]["urlPrefix"],
        json!(format!("{scheme}://127.0.0.1:{extender_port}"))
    );
    assert_eq!(
        scheduler["extenders"][0]["tlsConfig"]["certFile"].is_string(),
        separate_manager,
        "the scheduler presents a client certificate exactly with extender.tls"
    );
    let extenders = on_host(
        &serde_saphyr::to_string(&json!({"extenders": scheduler["extenders"]}))?,
        &host_dirs,
    );
    plane.restart_scheduler(Some(&extenders)).await?;

    // A user with the built-in `edit` role in their namespace: the aggregated roles let
    // them write sets and read, not write, StaticIPs.
    let ns = format!("{prefix}-e2e");
    let ns = ns.as_str();
    create_namespace(&admin, ns).await?;
    apply_value(
        &admin,
        &json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "alice-edit", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]
        }),
        Some(ns),
        false,
    )
    .await?;
    let (_, alice) = plane.client_as("alice", &[]).await?;
    wait_for("edit aggregates the chart's roles", T, || async {
        Ok(
            (support::may(&alice, "create", "enhancedstatefulsets", ns).await?
                && support::may(&alice, "list", "staticips", ns).await?)
                .then_some(()),
        )
    })
    .await?;
    for verb in ["create", "update", "patch", "delete"] {
        assert!(
            !support::may(&alice, verb, "staticips", ns).await?,
            "alice may {verb} StaticIPs"
        );
    }

    // The source document's example, applied by alice, rolls out with static IPs.
    apply_value(
        &alice,
        &support::sample("staticip-example.yaml"),
        Some(ns),
        false,
    )
    .await?;
    let sets: Api<EnhancedStatefulSet> = Api::namespaced(admin.clone(), ns);
    support::wait_status(&sets, "staticip-example", "6 ready replicas", T, |s| {
        s.replicas == 6 && s.ready_replicas == 6
    })
    .await?;
    let placed = bound_pods(&admin, ns, 6).await?;

    // A re-created pod comes back pinned by the webhook: its address, its node.
    let victim = "staticip-example-5";
    let before = placed
        .get(victim)
        .context("no placement of the victim")?
        .clone();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    pods.delete(victim, &DeleteParams::default()).await?;
    let after = wait_for(format!("{victim} re-created and bound"), T, || async {
        let placed = bound_pods(&admin, ns, 6).await?;
        Ok(placed.get(victim).filter(|p| p.uid != before.uid).cloned())
    })
    .await?;
    assert_eq!((&after.ip, &after.node), (&before.ip, &before.node));
    let pod = pods.get(victim).await?;
    assert_eq!(
        pod.annotations().get(keys::STATIC_IP_POD_IP),
        Some(&before.ip),
        "the webhook pinned the re-created pod"
    );

    // IP range mode: the extender allocates at bind, so each pod starts with the record's
    // address from the pool.
    apply_value(
        &admin,
        &json!({
            "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "StaticIPPool",
            "metadata": {"name": format!("{prefix}-pool")},
            "spec": {"cidrs": [format!("{cidr}.0/26")], "ipv4BlockPrefixLength": 28}
        }),
        None,
        false,
    )
    .await?;
    let mut ranged = support::simple_set("ranged", 2, "Parallel", 2);
    ranged["metadata"]["annotations"] = json!({
        keys::STATIC_IP_ENABLE: "true",
        keys::STATIC_IP_POOL: format!("{prefix}-pool"),
    });
    apply_value(&alice, &ranged, Some(ns), false).await?;
    let records: Api<StaticIP> = Api::namespaced(admin.clone(), ns);
    wait_for(
        "2 range-mode pods running with their records' addresses",
        T,
        || async {
            let mut placed = 0;
            for pod in pods
                .list(&ListParams::default().labels("app=ranged"))
                .await?
                .items
            {
                let Some(record) = records.get_opt(&pod.name_any()).await? else {
                    continue;
                };
                let status = pod.status.as_ref();
                let ip = status.and_then(|s| s.pod_ip.clone()).unwrap_or_default();
                let bound = record
                    .status
                    .as_ref()
                    .is_some_and(|s| s.phase == StaticIPPhase::Bound && s.pod_uid == pod.uid());
                if bound
                    && status.and_then(|s| s.phase.as_deref()) == Some("Running")
                    && ip.starts_with(&format!("{cidr}."))
                    && record.spec.ips.iter().any(|a| a.ip == ip)
                {
                    placed += 1;
                }
            }
            Ok((placed == 2).then_some(()))
        },
    )
    .await?;
    let extender_log = std::fs::read_to_string(plane.log_path(&format!("{prefix}-extender")))?;
    assert!(
        extender_log.contains(&format!(
            "serving the scheduler extender over {}",
            scheme.to_uppercase()
        )),
        "the extender serves {scheme}"
    );
    assert!(
        extender_log.contains("allocated at bind"),
        "the extender bound the range-mode pods:\n{}",
        plane.log_tail(&format!("{prefix}-extender"), 20)
    );

    // The second-scheduler option: kube-scheduler with the chart's configuration, under its
    // ServiceAccount, leads and places a pod that asks for it.
    run_second_scheduler(plane, &admin, &mut running, prefix, &host_dirs).await?;
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "second-scheduler-pod", "namespace": ns},
        "spec": {
            "schedulerName": "ests-scheduler",
            "containers": [{"name": "app", "image": "app:v1"}]
        }
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    wait_for("the second scheduler places its pod", T, || async {
        let pod = pods.get(&pod.name_any()).await?;
        Ok(pod.spec.and_then(|s| s.node_name))
    })
    .await?;

    // Exactly the chart's RBAC sufficed: nothing the components did was refused.
    for component in components {
        let log = std::fs::read_to_string(plane.log_path(&format!("{prefix}-{component}")))?;
        let refused: Vec<&str> = log
            .lines()
            .filter(|l| l.to_ascii_lowercase().contains("forbidden"))
            .take(5)
            .collect();
        assert!(
            refused.is_empty(),
            "{component} was refused:\n{}",
            refused.join("\n")
        );
    }

    // An upgrade keeps the webhook's certificate (the chart looks its Secret up), so the
    // caBundle still matches what the running webhook serves.
    helm.upgrade(
        &plane.kubeconfig,
        &chart_dir(),
        RELEASE,
        NAMESPACE,
        &Values {
            files: Vec::new(),
            set: vec![("controller.concurrency".into(), "8".into())],
        },
        T,
    )
    .await?;
    let upgraded = Api::<Secret>::namespaced(admin.clone(), NAMESPACE)
        .get("ests-webhook-tls")
        .await?;
    assert_eq!(
        upgraded.data, secret.data,
        "the upgrade replaced the certificate"
    );
    let mutating = Api::<MutatingWebhookConfiguration>::all(admin.clone())
        .get("ests-webhook")
        .await?;
    let bundle = mutating
        .webhooks
        .iter()
        .flatten()
        .map(|w| w.client_config.ca_bundle.clone())
        .collect::<Vec<_>>();
    let ca = secret.data.as_ref().and_then(|d| d.get("ca.crt")).cloned();
    assert_eq!(
        bundle,
        vec![ca],
        "caBundle is the Secret's CA after the upgrade"
    );
    let deployment = Api::<Deployment>::namespaced(admin.clone(), NAMESPACE)
        .get("ests-controller")
        .await?;
    let args = deployment
        .spec
        .template
        .spec
        .map(|s| s.containers[0].args.clone());
    assert!(
        args.flatten()
            .is_some_and(|a| a.contains(&"--concurrency=8".to_string())),
        "the upgrade applied the new value"
    );

    drop(running);
    plane.restart_scheduler(None).await?;
    helm.uninstall(&plane.kubeconfig, RELEASE, NAMESPACE, T)
        .await?;
    let mutating: Vec<String> = Api::<MutatingWebhookConfiguration>::all(admin.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    let validating: Vec<String> = Api::<ValidatingWebhookConfiguration>::all(admin.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|c| c.name_any())
        .collect();
    assert!(
        mutating.is_empty() && validating.is_empty(),
        "webhook configurations left behind: {mutating:?} {validating:?}"
    );
    let policies = Api::<ValidatingAdmissionPolicy>::all(admin.clone())
        .list(&ListParams::default())
        .await?;
    assert!(policies.items.is_empty(), "admission policies left behind");
    // CRDs stay (Helm never deletes crds/): the sets and records they hold are kept.
    Api::<CustomResourceDefinition>::all(admin.clone())
        .get("staticips.jke.jdcloud.com")
        .await?;
    Ok(())
}
