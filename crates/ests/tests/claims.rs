//! PVCs as upstream's StatefulSet keeps them: owners re-synced when the retention policy
//! changes on a live set, a claim another controller controls never taken over, a
//! Terminating claim never used by a new pod, and a claim deleted under a Pending pod
//! re-created.

mod support;

use std::time::Duration;

use ests_testenv::{LogsOnFailure, wait_for};
use k8s_openapi::api::core::v1::{ConfigMap, Event, PersistentVolumeClaim, Pod};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::*;

const T: Duration = Duration::from_secs(120);

/// A Parallel set of `replicas` with one claim template, `data`.
fn set_with_claims(name: &str, replicas: i32, when_deleted: &str) -> Value {
    let mut set = simple_set(name, replicas, "Parallel", 1);
    set["spec"]["volumeClaimTemplates"] = json!([{
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }]);
    set["spec"]["persistentVolumeClaimRetentionPolicy"] =
        json!({"whenScaled": "Retain", "whenDeleted": when_deleted});
    set
}

/// The UIDs of the owners of claim `name` (empty if it has none or does not exist).
async fn owners(claims: &Api<PersistentVolumeClaim>, name: &str) -> anyhow::Result<Vec<String>> {
    Ok(claims
        .get_opt(name)
        .await?
        .map(|c| c.owner_references().iter().map(|o| o.uid.clone()).collect())
        .unwrap_or_default())
}

#[tokio::test]
async fn a_retention_policy_changed_on_a_live_set_resyncs_its_claims_owners() -> anyhow::Result<()>
{
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "claims-resync";
    let sets = namespace(&env, ns).await?;
    apply(&env, ns, &set_with_claims("keep", 2, "Retain")).await?;
    wait_status(&sets, "keep", "2 ready", T, |s| s.ready_replicas == 2).await?;
    let uid = sets.get("keep").await?.uid().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), ns);
    for name in ["data-keep-0", "data-keep-1"] {
        assert!(
            owners(&claims, name).await?.is_empty(),
            "{name}: Retain owns nothing"
        );
    }
    patch(
        &sets,
        "keep",
        json!({"spec": {"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"}}}),
    )
    .await?;
    wait_for(
        "the claims owned by the set (whenDeleted: Delete)",
        T,
        || async {
            let a = owners(&claims, "data-keep-0").await?;
            let b = owners(&claims, "data-keep-1").await?;
            Ok((a == [uid.clone()] && b == [uid.clone()]).then_some(()))
        },
    )
    .await?;
    patch(
        &sets,
        "keep",
        json!({"spec": {"persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain"}}}),
    )
    .await?;
    wait_for(
        "the claims let go again (whenDeleted: Retain)",
        T,
        || async {
            let a = owners(&claims, "data-keep-0").await?;
            let b = owners(&claims, "data-keep-1").await?;
            Ok((a.is_empty() && b.is_empty()).then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_claim_another_controller_controls_is_never_taken_over() -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "claims-foreign";
    let sets = namespace(&env, ns).await?;
    // Someone else's claim, under the name the set's identity 0 would use.
    let owner: ConfigMap = Api::namespaced(env.client.clone(), ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "other-owner"}}))?,
        )
        .await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), ns);
    let foreign: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "data-theirs-0", "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "other-owner",
            "uid": owner.uid(), "controller": true
        }]},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))?;
    claims.create(&PostParams::default(), &foreign).await?;
    apply(&env, ns, &set_with_claims("theirs", 2, "Delete")).await?;
    wait_status(&sets, "theirs", "2 ready", T, |s| s.ready_replicas == 2).await?;
    let uid = sets.get("theirs").await?.uid().unwrap_or_default();
    wait_for("the set's own claim owned by it", T, || async {
        Ok((owners(&claims, "data-theirs-1").await? == [uid.clone()]).then_some(()))
    })
    .await?;
    assert_eq!(
        owners(&claims, "data-theirs-0").await?,
        vec![owner.uid().unwrap_or_default()],
        "the other controller's claim keeps its owner only"
    );
    Ok(())
}

#[tokio::test]
async fn a_terminating_claim_makes_the_pod_wait() -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "claims-terminating";
    let sets = namespace(&env, ns).await?;
    apply(&env, ns, &set_with_claims("held", 1, "Retain")).await?;
    wait_status(&sets, "held", "1 ready", T, |s| s.ready_replicas == 1).await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    // The claim is deleted but held (a finalizer of the test's), then its pod goes.
    claims
        .patch(
            "data-held-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["ests.test/hold"]}})),
        )
        .await?;
    let old_claim = claims.get("data-held-0").await?.uid();
    claims
        .delete("data-held-0", &DeleteParams::default())
        .await?;
    pods.delete("held-0", &DeleteParams::default()).await?;
    let events: Api<Event> = Api::namespaced(env.client.clone(), ns);
    wait_for("the set says its pod waits for the claim", T, || async {
        let waiting = events
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("WaitingForClaim"));
        Ok(waiting.then_some(()))
    })
    .await?;
    assert!(
        pods.get_opt("held-0").await?.is_none(),
        "no pod started on a Terminating claim"
    );
    // Once the claim is gone, a new one is made and the pod comes back on it.
    claims
        .patch(
            "data-held-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await?;
    wait_status(&sets, "held", "1 ready again", T, |s| s.ready_replicas == 1).await?;
    let claim = claims.get("data-held-0").await?;
    assert_ne!(claim.uid(), old_claim, "a new claim");
    assert!(claim.metadata.deletion_timestamp.is_none());
    Ok(())
}

#[tokio::test]
async fn a_claim_deleted_under_a_pending_pod_is_made_again() -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "claims-pending";
    namespace(&env, ns).await?;
    let mut set = set_with_claims("waits", 1, "Retain");
    // No node fits: the pod stays Pending, and unscheduled, its claim is free to go.
    set["spec"]["template"]["spec"]["nodeSelector"] = json!({"ests.test/nowhere": "true"});
    apply(&env, ns, &set).await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(env.client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let first = wait_for("the pod Pending with its claim", T, || async {
        let pod = pods.get_opt("waits-0").await?;
        let claim = claims.get_opt("data-waits-0").await?;
        Ok(pod.zip(claim).map(|(_, c)| c.uid()))
    })
    .await?;
    claims
        .delete("data-waits-0", &DeleteParams::default())
        .await?;
    wait_for("the claim made again for the Pending pod", T, || async {
        let claim = claims.get_opt("data-waits-0").await?;
        Ok(claim
            .filter(|c| c.uid() != first && c.metadata.deletion_timestamp.is_none())
            .map(|_| ()))
    })
    .await?;
    Ok(())
}
