//! The controller never takes a static-IP pod down before its record holds the pod's
//! address: with the StaticIP manager not running, an update stalls (and says why in an
//! event); once the manager runs and the records are Bound, the update goes through.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use ests_api::{StaticIP, keys};
use ests_testenv::{InvariantChecker, LogsOnFailure, wait_for};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::json;
use support::*;

const T: Duration = Duration::from_secs(120);
const NS: &str = "sip-hold";

async fn pod_uids(pods: &Api<Pod>) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(pods
        .list(&ListParams::default().labels("app=held"))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
        .collect())
}

#[tokio::test]
async fn an_update_waits_until_the_records_hold_the_pods_addresses() -> anyhow::Result<()> {
    let env = bare_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let checker = InvariantChecker::start(env.client.clone()).await?;
    start_controller(
        env.plane,
        "ests-controller",
        &["--leader-election=false", "--static-ip-manager=false"],
    )
    .await?;
    let sets = namespace(&env, NS).await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), NS);
    let records: Api<StaticIP> = Api::namespaced(env.client.clone(), NS);
    let mut set = simple_set("held", 3, "Parallel", 3);
    set["metadata"]["annotations"] = json!({keys::STATIC_IP_ENABLE: "true"});
    apply(&env, NS, &set).await?;
    wait_status(&sets, "held", "3 ready", T, |s| s.ready_replicas == 3).await?;
    let before = pod_uids(&pods).await?;
    assert_eq!(before.len(), 3);
    // Records exist before their pods, but nobody binds them.
    assert_eq!(records.list(&ListParams::default()).await?.items.len(), 3);

    patch(
        &sets,
        "held",
        new_template(Some("app"), "app:v2", json!({})),
    )
    .await?;
    let events: Api<Event> = Api::namespaced(env.client.clone(), NS);
    wait_for(
        "the controller says it waits for the records",
        T,
        || async {
            let said = events
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .any(|e| e.reason.as_deref() == Some("WaitingForStaticIP"));
            Ok(said.then_some(()))
        },
    )
    .await?;
    let status = sets.get_status("held").await?.status.unwrap_or_default();
    assert_ne!(
        status.update_revision, status.current_revision,
        "the update is known"
    );
    assert_eq!(pod_uids(&pods).await?, before, "no pod was taken down");

    // The manager binds the records; the update proceeds.
    start_ests(
        env.plane,
        "ests-static-ip",
        "static-ip",
        &["--leader-election=false"],
    )
    .await?;
    wait_status(&sets, "held", "updated", T, |s| {
        s.updated_ready_replicas == 3 && s.current_revision == s.update_revision
    })
    .await?;
    let after = pod_uids(&pods).await?;
    for (name, uid) in &before {
        assert_ne!(after.get(name), Some(uid), "{name} was replaced");
    }
    // Each record was Bound to its old pod before that pod went, and keeps that address
    // for the new one (which the Pod webhook pins).
    for r in records.list(&ListParams::default()).await?.items {
        assert_eq!(r.spec.ips.len(), 1, "{} learnt its address", r.name_any());
    }
    checker.finish()
}
