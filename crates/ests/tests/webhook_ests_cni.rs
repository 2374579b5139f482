//! The webhook under ests's own IPAM (`ests webhook --cni-annotation none`, the chart's
//! `cni.integration: ests`), registered with the real kube-apiserver: a re-created static-IP
//! pod is pinned with ests's own annotations (`staticip.jke.jdcloud.com/ip`, `/node`) and
//! node only — no Calico `ipAddrs`, which Calico refuses under a foreign IPAM — and the
//! guard of kept addresses is what ests-cni reads: ests's own annotation, kept to static-IP
//! pods by the `ests-pod-addresses` policy; no pod-address webhook is registered, since no
//! CNI annotation is read.

mod support;

use std::time::Duration;

use ests_api::{StaticIP, StaticIPPhase, keys};
use ests_testenv::resources::create_refusal;
use ests_testenv::{InvariantChecker, LogsOnFailure, wait_for};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;
use support::*;

const T: Duration = Duration::from_secs(120);

/// Running pods of set `name` whose records are Bound to them: name -> (uid, address).
async fn bound(
    env: &Env,
    ns: &str,
    name: &str,
    n: usize,
) -> anyhow::Result<std::collections::BTreeMap<String, (String, String)>> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let records: Api<StaticIP> = Api::namespaced(env.client.clone(), ns);
    wait_for(format!("{ns}: {n} pods bound"), T, || async {
        let mut placed = std::collections::BTreeMap::new();
        for pod in pods
            .list(&ListParams::default().labels(&format!("app={name}")))
            .await?
            .items
        {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let uid = pod.uid().unwrap_or_default();
            let ip = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_default();
            let Some(record) = records.get_opt(&pod.name_any()).await? else {
                continue;
            };
            let is_bound = record.status.as_ref().is_some_and(|s| {
                s.phase == StaticIPPhase::Bound && s.pod_uid.as_deref() == Some(uid.as_str())
            }) && record.spec.ips.iter().any(|a| a.ip == ip);
            if is_bound {
                placed.insert(pod.name_any(), (uid, ip));
            }
        }
        Ok((placed.len() == n).then_some(placed))
    })
    .await
}

#[tokio::test]
async fn under_ests_own_ipam_pods_carry_only_ests_annotations() -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    start_webhook_with(&env, &["--cni-annotation=none"], &[]).await?;
    let checker = InvariantChecker::start(env.client.clone()).await?;

    // No pod-address webhook: nothing reads a CNI annotation.
    let validating = Api::<ValidatingWebhookConfiguration>::all(env.client.clone())
        .get(ests_webhook::config::NAME)
        .await?;
    let hooks: Vec<String> = validating
        .webhooks
        .iter()
        .flatten()
        .map(|w| w.name.clone())
        .collect();
    assert!(
        !hooks.iter().any(|h| h.starts_with("pod-addresses.")),
        "{hooks:?}"
    );

    let ns = "wh-ests-cni";
    namespace(&env, ns).await?;
    let mut set = simple_set("web", 2, "Parallel", 1);
    set["metadata"]["annotations"] = json!({
        keys::STATIC_IP_ENABLE: "true",
        keys::STATIC_IP_RELEASE_POLICY: "WhenDeleted",
    });
    apply(&env, ns, &set).await?;
    let first = bound(&env, ns, "web", 2).await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    pods.delete("web-1", &DeleteParams::default()).await?;
    let (_, ip) = first["web-1"].clone();
    let again = wait_for("web-1 re-created and bound", T, || async {
        let now = bound(&env, ns, "web", 2).await?;
        Ok((now["web-1"].0 != first["web-1"].0).then_some(now))
    })
    .await?;
    assert_eq!(again["web-1"].1, ip, "web-1 kept its address");
    let pinned = pods.get("web-1").await?;
    let annotations = pinned.annotations();
    assert_eq!(annotations.get(keys::STATIC_IP_POD_IP), Some(&ip));
    assert!(annotations.contains_key(keys::STATIC_IP_POD_NODE));
    assert!(
        !annotations.contains_key("cni.projectcalico.org/ipAddrs"),
        "{annotations:?}"
    );

    // What ests-cni reads is guarded: an ordinary pod naming the kept address in ests's own
    // annotation is refused by the policy.
    let thief = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "thief", "annotations": {keys::STATIC_IP_POD_IP: ip}},
        "spec": {"containers": [{"name": "app", "image": "app:v1"}]}
    });
    let refusal = create_refusal(&env.client, &thief, Some(ns), true)
        .await?
        .unwrap_or_default();
    assert!(
        refusal.contains(keys::STATIC_IP_POD_IP) && refusal.contains("only on static-IP pods"),
        "{refusal:?}"
    );
    checker.finish()
}
