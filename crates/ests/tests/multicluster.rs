//! Moving identities between two real control planes with `kubectl ests move`: the shared
//! plane ("east") holds the lower ordinals of a set, a second plane started beside it
//! ("west") the ones above. Each move ends with the boundary identity running only in the
//! destination, on a copy of its PVC bound to the same volume (its data kept), and a watch
//! over both clusters never sees one pod name in both at once.

mod support;

use std::time::Duration;

use clap::Parser;
use ests_api::EnhancedStatefulSet;
use ests_testenv::clusters::{
    CrossClusterChecker, prepare, start_plane, write_contexts_kubeconfig,
};
use ests_testenv::resources::create_namespace;
use ests_testenv::{LogsOnFailure, wait_for};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use support::*;

const T: Duration = Duration::from_secs(120);

async fn plugin(args: &[&str]) -> anyhow::Result<String> {
    let cli = kubectl_ests::Cli::try_parse_from(
        std::iter::once("kubectl-ests").chain(args.iter().copied()),
    )?;
    let mut out = Vec::new();
    let result = kubectl_ests::cli::run_with(cli, &mut out, false).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    eprintln!("$ kubectl ests {}\n{text}", args.join(" "));
    result.map(|()| text)
}

fn db_set() -> serde_json::Value {
    let mut set = simple_set("db", 3, "Parallel", 1);
    set["spec"]["volumeClaimTemplates"] = json!([{
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }]);
    set["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "data", "mountPath": "/data"}]);
    set
}

/// Ready pods of `db` in a cluster, by name.
async fn ready_pods(client: &Client, ns: &str) -> anyhow::Result<Vec<String>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut names: Vec<String> = api
        .list(&ListParams::default().labels("app=db"))
        .await?
        .items
        .into_iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| p.metadata.name)
        .collect();
    names.sort();
    Ok(names)
}

async fn all_pods(client: &Client, ns: &str) -> anyhow::Result<Vec<String>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut names: Vec<String> = api
        .list(&ListParams::default().labels("app=db"))
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    names.sort();
    Ok(names)
}

/// The PV bound to a claim, and the host path holding its data.
async fn volume_of(client: &Client, ns: &str, claim: &str) -> anyhow::Result<(String, String)> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    wait_for(format!("{claim} bound"), T, || async {
        let pvc = claims.get(claim).await?;
        let bound = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        let Some(volume) = pvc.spec.and_then(|s| s.volume_name).filter(|_| bound) else {
            return Ok(None);
        };
        let pv = volumes.get(&volume).await?;
        let path = pv
            .spec
            .and_then(|s| s.host_path)
            .map(|h| h.path)
            .unwrap_or_default();
        Ok(Some((volume, path)))
    })
    .await
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[tokio::test]
async fn moving_boundary_ordinals_between_two_control_planes_keeps_one_pod_per_identity()
-> anyhow::Result<()> {
    let east = env().await?;
    let _east_logs = LogsOnFailure(east.plane);
    let west = start_plane().await?;
    let _west_logs = LogsOnFailure(&west);
    let west_client = prepare(&west, "west-node", 2, CONTROLLER_USER).await?;
    start_controller(&west, "ests-controller-west", &["--leader-election=false"]).await?;
    let kubeconfig = write_contexts_kubeconfig(
        &west.dir.join("kubeconfig-contexts"),
        &[("east", east.plane), ("west", &west)],
    )?;
    let kubeconfig = kubeconfig.display().to_string();
    let ns = "move-db";
    let east_sets = namespace(&east, ns).await?;
    create_namespace(&west_client, ns).await?;
    let west_sets: Api<EnhancedStatefulSet> = Api::namespaced(west_client.clone(), ns);

    // Static-IP sets are refused unless the IP may change.
    let mut pinned = simple_set("pinned", 0, "Parallel", 1);
    pinned["metadata"]["annotations"] = json!({"staticip.jke.jdcloud.com/enable": "true"});
    apply(&east, ns, &pinned).await?;
    let err = plugin(&[
        "--kubeconfig",
        &kubeconfig,
        "--context",
        "east",
        "-n",
        ns,
        "move",
        "pinned",
        "--to-context",
        "west",
    ])
    .await
    .expect_err("a static-IP set is refused");
    assert!(format!("{err:#}").contains("--allow-ip-change"), "{err:#}");

    apply(&east, ns, &db_set()).await?;
    wait_status(&east_sets, "db", "3 ready", T, |s| s.ready_replicas == 3).await?;
    // The data of identity 2 lives in its volume's directory.
    let (east_volume, path) = volume_of(&east.client, ns, "data-db-2").await?;
    assert!(!path.is_empty(), "the KWOK volume has a host path");
    std::fs::create_dir_all(&path)?;
    std::fs::write(format!("{path}/marker"), "written by db-2 in east")?;

    let checker = CrossClusterChecker::start(
        vec![
            ("east".into(), east.client.clone()),
            ("west".into(), west_client.clone()),
        ],
        ns,
        "app=db",
    )
    .await?;

    // First move: the destination has no set yet, so it is created empty at ordinal 3.
    let move_args = |extra: &'static [&'static str]| {
        let mut args = vec![
            "--kubeconfig",
            kubeconfig.as_str(),
            "--context",
            "east",
            "-n",
            ns,
            "move",
            "db",
            "--to-context",
            "west",
            "--copy-volumes",
            "--timeout",
            "120s",
        ];
        args.extend_from_slice(extra);
        args
    };
    // A Secret the pods use goes along when asked.
    let secrets: Api<Secret> = Api::namespaced(east.client.clone(), ns);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "db-auth", "namespace": ns},
        "stringData": {"password": "s3cret"}
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;
    let plan = plugin(&move_args(&["--dry-run"])).await?;
    assert!(plan.contains("dry run: nothing changed"), "{plan}");
    assert_eq!(
        east_sets.get("db").await?.spec.replicas,
        3,
        "a dry run changes nothing"
    );
    let out = plugin(&move_args(&["--copy-secret", "db-auth"])).await?;
    assert!(out.contains("db-2 now runs in west only"), "{out}");
    let copied: Secret = Api::namespaced(west_client.clone(), ns)
        .get("db-auth")
        .await?;
    assert_eq!(
        copied
            .data
            .and_then(|d| d.get("password").cloned())
            .map(|b| b.0),
        Some(b"s3cret".to_vec())
    );
    assert!(
        out.contains("set persistentVolumeClaimRetentionPolicy to Retain"),
        "{out}"
    );

    assert_eq!(ready_pods(&west_client, ns).await?, strings(&["db-2"]));
    wait_for("east keeps db-0 and db-1 only", T, || async {
        Ok((all_pods(&east.client, ns).await? == strings(&["db-0", "db-1"])).then_some(()))
    })
    .await?;
    let west_set = west_sets.get("db").await?;
    assert_eq!(
        (west_set.spec.ordinals_start(), west_set.spec.replicas),
        (2, 1)
    );
    let east_set = east_sets.get("db").await?;
    assert_eq!(east_set.spec.replicas, 2);
    let policy = east_set
        .spec
        .persistent_volume_claim_retention_policy
        .clone()
        .expect("the move wrote the retention policy");
    assert_eq!(
        (policy.when_scaled, policy.when_deleted),
        (
            ests_api::PvcRetentionPolicyType::Retain,
            ests_api::PvcRetentionPolicyType::Retain
        )
    );
    let east_pv: PersistentVolume = Api::all(east.client.clone()).get(&east_volume).await?;
    assert_eq!(
        east_pv
            .spec
            .and_then(|s| s.persistent_volume_reclaim_policy)
            .as_deref(),
        Some("Retain")
    );
    // The destination's claim is bound to a copy of the same volume: the data is there.
    let (west_volume, west_path) = volume_of(&west_client, ns, "data-db-2").await?;
    assert_eq!(
        (west_volume.as_str(), west_path.as_str()),
        (east_volume.as_str(), path.as_str())
    );
    assert_eq!(
        std::fs::read_to_string(format!("{west_path}/marker"))?,
        "written by db-2 in east"
    );
    let west_pod: Pod = Api::namespaced(west_client.clone(), ns).get("db-2").await?;
    let claims: Vec<String> = west_pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            v.persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.clone())
        })
        .collect();
    assert_eq!(claims, strings(&["data-db-2"]));

    // Second move: into the existing destination set.
    let out = plugin(&move_args(&[])).await?;
    assert!(out.contains("db-1 now runs in west only"), "{out}");
    assert_eq!(
        ready_pods(&west_client, ns).await?,
        strings(&["db-1", "db-2"])
    );
    wait_for("east keeps db-0 only", T, || async {
        Ok((all_pods(&east.client, ns).await? == strings(&["db-0"])).then_some(()))
    })
    .await?;
    let west_set = west_sets.get("db").await?;
    assert_eq!(
        (west_set.spec.ordinals_start(), west_set.spec.replicas),
        (1, 2)
    );
    let pods = checker.pods();
    assert_eq!(pods.get("west").cloned().unwrap_or_default().len(), 2);

    // A move that stopped after scaling the source down (here: done by hand) leaves db-0 in
    // neither cluster; a plain move refuses, --resume finishes it.
    patch(&east_sets, "db", json!({"spec": {"replicas": 0}})).await?;
    wait_for("db-0 gone from east", T, || async {
        Ok(all_pods(&east.client, ns).await?.is_empty().then_some(()))
    })
    .await?;
    let err = plugin(&move_args(&[]))
        .await
        .expect_err("nothing to move from an empty source");
    assert!(
        format!("{err:#}").contains("no identity to move"),
        "{err:#}"
    );
    let out = plugin(&move_args(&["--resume"])).await?;
    assert!(out.contains("db-0 now runs in west only"), "{out}");
    assert!(!out.contains("scale down"), "{out}");
    assert_eq!(
        ready_pods(&west_client, ns).await?,
        strings(&["db-0", "db-1", "db-2"])
    );
    let west_set = west_sets.get("db").await?;
    assert_eq!(
        (west_set.spec.ordinals_start(), west_set.spec.replicas),
        (0, 3)
    );
    let err = plugin(&move_args(&["--resume"]))
        .await
        .expect_err("nothing left to resume");
    assert!(format!("{err:#}").contains("nothing to resume"), "{err:#}");

    // A destination that is not right above the source is refused before anything changes.
    let err = plugin(&[
        "--kubeconfig",
        &kubeconfig,
        "--context",
        "west",
        "-n",
        ns,
        "move",
        "db",
        "--to-context",
        "east",
    ])
    .await
    .expect_err("west's highest (2) is not right below east's start (0)");
    assert!(format!("{err:#}").contains("must be adjacent"), "{err:#}");
    assert_eq!(west_sets.get("db").await?.spec.replicas, 3);

    checker.finish()?;
    west.stop();
    Ok(())
}
