//! The set controller and records that go, with the StaticIP manager not running (nothing
//! ever binds or releases but the test):
//! - a record deleted under a running pod does not hold that pod forever: every pod runs
//!   with an address its record is about to learn and is held; once one record is deleted,
//!   its pod has no record that will ever learn or bind its address, and a scale-in takes it
//!   down;
//! - the controller claims a record before it creates the record's pod, so a release judged
//!   on the record before the pod existed loses on the record's resourceVersion.

mod support;

use std::time::Duration;

use ests_api::{StaticIP, keys};
use ests_testenv::{InvariantChecker, LogsOnFailure, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Preconditions};
use serde_json::json;
use support::*;
use tokio::sync::OnceCell;

const T: Duration = Duration::from_secs(120);
const NS: &str = "sip-gone";

/// The control plane with one controller running, without the StaticIP manager.
async fn controller_env() -> anyhow::Result<Env> {
    static STARTED: OnceCell<()> = OnceCell::const_new();
    let env = bare_env().await?;
    STARTED
        .get_or_try_init(|| {
            start_controller(
                env.plane,
                "ests-controller",
                &["--leader-election=false", "--static-ip-manager=false"],
            )
        })
        .await?;
    Ok(env)
}

#[tokio::test]
async fn a_pod_whose_record_was_deleted_is_not_held() -> anyhow::Result<()> {
    let env = controller_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let checker = InvariantChecker::start(env.client.clone()).await?;
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
    checker.finish()
}

#[tokio::test]
async fn a_release_judged_before_the_pod_was_created_loses_to_the_controllers_claim()
-> anyhow::Result<()> {
    const NS: &str = "sip-claim";
    let env = controller_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let sets = namespace(&env, NS).await?;
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), NS);
    let records: Api<StaticIP> = Api::namespaced(env.client.clone(), NS);
    let mut set = simple_set("claimer", 1, "Parallel", 1);
    set["metadata"]["annotations"] = json!({keys::STATIC_IP_ENABLE: "true"});
    apply(&env, NS, &set).await?;
    wait_status(&sets, "claimer", "1 ready", T, |s| s.ready_replicas == 1).await?;
    let old = pods.get("claimer-0").await?.uid().unwrap_or_default();
    // Past the claim the record was created with: the next pod needs a claim of its own.
    tokio::time::sleep(Duration::from_secs(
        ests_core::static_ip::CLAIM_REUSE_SECONDS.unsigned_abs() + 1,
    ))
    .await;

    // A release judges the record while the identity has no pod (as a manager whose set
    // cache says the identity was scaled in and whose clock says the claim ran out) ...
    let judged = records.get("claimer-0").await?;
    pods.delete("claimer-0", &DeleteParams::default()).await?;
    // ... and the controller, whose cache still wants the identity, creates its pod.
    let pod = wait_for("claimer-0 re-created", T, || async {
        Ok(pods
            .get_opt("claimer-0")
            .await?
            .filter(|p| p.uid().as_deref() != Some(old.as_str())))
    })
    .await?;
    // The release's delete, at the resourceVersion it judged, loses.
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: judged.uid(),
            resource_version: judged.resource_version(),
        }),
        ..DeleteParams::default()
    };
    match records.delete("claimer-0", &params).await {
        Err(kube::Error::Api(s)) if s.is_conflict() => {}
        other => panic!(
            "a release judged before the pod was created went through: {:?}",
            other.map(|_| ())
        ),
    }
    let claimed = records.get("claimer-0").await?;
    assert!(
        claimed
            .annotations()
            .contains_key(keys::STATIC_IP_RECORD_CLAIMED_AT),
        "the record carries the claim"
    );
    assert_ne!(claimed.resource_version(), judged.resource_version());
    assert_eq!(
        pod.annotations().get(keys::STATIC_IP_RECORD_VERSION),
        claimed.resource_version().as_ref(),
        "the pod is stamped with the record as claimed"
    );
    checker.finish()
}
