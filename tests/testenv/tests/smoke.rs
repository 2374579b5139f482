//! The harness itself: a StatefulSet under the real kube-controller-manager and scheduler on
//! KWOK nodes gets Running pods with IPs and Bound PVCs, and garbage collection removes its
//! pods when it goes.

use std::time::Duration;

use ests_testenv::nodes::{NodeSpec, create_nodes};
use ests_testenv::resources::{apply_yaml, create_namespace};
use ests_testenv::{InvariantChecker, LogsOnFailure, shared, wait_for};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams};

const STATEFUL_SET: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  serviceName: web
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
"#;

#[tokio::test]
async fn stateful_set_runs_on_kwok_nodes_and_is_garbage_collected() -> anyhow::Result<()> {
    let plane = shared().await?;
    let _logs = LogsOnFailure(plane);
    let client = plane.client().await?;
    create_nodes(
        &client,
        &[
            NodeSpec::new("smoke-0"),
            NodeSpec::new("smoke-1"),
            NodeSpec::new("smoke-2"),
        ],
    )
    .await?;
    let checker = InvariantChecker::start(client.clone()).await?;
    let ns = "smoke";
    create_namespace(&client, ns).await?;
    apply_yaml(&client, STATEFUL_SET, Some(ns), false).await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let running = wait_for(
        "3 Running pods with IPs",
        Duration::from_secs(90),
        || async {
            let list = pods.list(&ListParams::default().labels("app=web")).await?;
            let ready: Vec<_> = list
                .items
                .into_iter()
                .filter(|p| {
                    let s = p.status.as_ref();
                    s.and_then(|s| s.phase.as_deref()) == Some("Running")
                        && s.and_then(|s| s.pod_ip.as_ref()).is_some()
                })
                .collect();
            Ok((ready.len() == 3).then_some(ready))
        },
    )
    .await?;
    let mut ips: Vec<_> = running
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 3, "every pod has its own IP: {ips:?}");

    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    wait_for("3 Bound PVCs", Duration::from_secs(60), || async {
        let list = claims.list(&ListParams::default()).await?;
        let bound = list
            .items
            .iter()
            .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
            .count();
        Ok((bound == 3).then_some(()))
    })
    .await?;
    let names: Vec<_> = claims
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    for ordinal in 0..3 {
        assert!(names.contains(&format!("data-web-{ordinal}")), "{names:?}");
    }

    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    sets.delete("web", &DeleteParams::background()).await?;
    wait_for(
        "pods garbage-collected",
        Duration::from_secs(90),
        || async {
            let left = pods
                .list(&ListParams::default().labels("app=web"))
                .await?
                .items
                .len();
            Ok((left == 0).then_some(()))
        },
    )
    .await?;
    checker.finish()
}
