//! A record deleted under a running pod does not hold that pod forever: with the StaticIP
//! manager not running (nothing ever binds), every pod runs with an address its record is
//! about to learn and is held; once one record is deleted, its pod has no record that will
//! ever learn or bind its address, and a scale-in takes it down.

mod support;

use std::time::Duration;

use ests_api::{StaticIP, keys};
use ests_testenv::{InvariantChecker, LogsOnFailure, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;
use support::*;

const T: Duration = Duration::from_secs(120);
const NS: &str = "sip-gone";

#[tokio::test]
async fn a_pod_whose_record_was_deleted_is_not_held() -> anyhow::Result<()> {
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
    let mut set = simple_set("orphan", 3, "Parallel", 3);
    set["metadata"]["annotations"] = json!({keys::STATIC_IP_ENABLE: "true"});
    apply(&env, NS, &set).await?;
    wait_status(&sets, "orphan", "3 ready", T, |s| s.ready_replicas == 3).await?;
    assert_eq!(records.list(&ListParams::default()).await?.items.len(), 3);

    // The record goes while its pod runs (nobody learnt or bound its address).
    records.delete("orphan-2", &DeleteParams::default()).await?;
    wait_for("orphan-2's record gone", T, || async {
        Ok(records.get_opt("orphan-2").await?.is_none().then_some(()))
    })
    .await?;
    patch(&sets, "orphan", json!({"spec": {"replicas": 2}})).await?;
    wait_for("orphan-2 scaled in", T, || async {
        Ok(pods.get_opt("orphan-2").await?.is_none().then_some(()))
    })
    .await?;
    // The pods whose records are about to learn their addresses run on.
    for name in ["orphan-0", "orphan-1"] {
        assert!(pods.get_opt(name).await?.is_some(), "{name} still runs");
    }
    env.plane.stop_process("ests-controller")?;
    checker.finish()
}
