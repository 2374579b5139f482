//! The API as the real kube-apiserver enforces it: the CRDs install with server-side apply,
//! every sample is accepted, bad manifests are refused with messages naming their field, and
//! immutable fields are refused as updates of a live object.

use std::time::Duration;

use ests_testenv::resources::{
    api_for, apply_value, bind_cluster_role, create_namespace, install_crds, install_policies,
    parse_documents,
};
use ests_testenv::{LogsOnFailure, shared, wait_for};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

const NS: &str = "api-checks";

fn sample(name: &str) -> Value {
    let path = ests_testenv::bins::harness_dir()
        .join("../../config/samples")
        .join(name);
    let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_documents(&yaml).expect("sample parses").remove(0)
}

/// Sets `value` at a slash-separated `path` inside `object` (JSON-pointer style: `~1` stands
/// for a '/' inside a key), creating objects on the way; `Value::Null` removes the field.
fn with(mut object: Value, path: &str, value: Value) -> Value {
    let parts: Vec<String> = path.split('/').map(|p| p.replace("~1", "/")).collect();
    let mut node = &mut object;
    for part in &parts[..parts.len() - 1] {
        node = node
            .as_object_mut()
            .expect("path runs through objects")
            .entry(part.clone())
            .or_insert_with(|| json!({}));
    }
    let last = &parts[parts.len() - 1];
    let map = node.as_object_mut().expect("parent is an object");
    if value.is_null() {
        map.remove(last);
    } else {
        map.insert(last.clone(), value);
    }
    object
}

async fn prepared() -> anyhow::Result<Client> {
    let plane = shared().await?;
    let client = plane.client().await?;
    install_crds(&client).await?;
    install_policies(&client, ests_api::policy::DEFAULT_NAMESPACE).await?;
    create_namespace(&client, NS).await?;
    Ok(client)
}

/// Server-side dry-run create; returns the refusal message, or None if accepted.
async fn refusal(client: &Client, object: &Value) -> anyhow::Result<Option<String>> {
    ests_testenv::resources::create_refusal(client, object, Some(NS), true).await
}

#[tokio::test]
async fn every_sample_is_accepted_by_server_side_dry_run() -> anyhow::Result<()> {
    let client = prepared().await?;
    let _logs = LogsOnFailure(shared().await?);
    for name in [
        "staticip-example.yaml",
        "minimal.yaml",
        "on-delete.yaml",
        "storage-ordinals.yaml",
        "ip-pool.yaml",
    ] {
        let object = sample(name);
        if let Some(message) = refusal(&client, &object).await? {
            panic!("{name} was refused: {message}");
        }
        apply_value(&client, &object, Some(NS), true).await?;
    }
    Ok(())
}

#[tokio::test]
async fn bad_manifests_are_refused_with_messages_naming_the_field() -> anyhow::Result<()> {
    let client = prepared().await?;
    let _logs = LogsOnFailure(shared().await?);
    let minimal = sample("minimal.yaml");
    let example = sample("staticip-example.yaml");
    let rolling = "spec/updateStrategy/rollingUpdate";
    let enable = "staticip.jke.jdcloud.com~1enable";
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "negative replicas",
            with(minimal.clone(), "spec/replicas", json!(-1)),
            "spec.replicas",
        ),
        (
            "replicas beyond a cluster's pods",
            with(minimal.clone(), "spec/replicas", json!(150_001)),
            "spec.replicas",
        ),
        (
            "negative partition",
            with(minimal.clone(), &format!("{rolling}/partition"), json!(-1)),
            "spec.updateStrategy.rollingUpdate.partition",
        ),
        (
            "maxUnavailable 0",
            with(
                minimal.clone(),
                &format!("{rolling}/maxUnavailable"),
                json!(0),
            ),
            "spec.updateStrategy.rollingUpdate.maxUnavailable",
        ),
        (
            "maxUnavailable 0%",
            with(
                minimal.clone(),
                &format!("{rolling}/maxUnavailable"),
                json!("0%"),
            ),
            "spec.updateStrategy.rollingUpdate.maxUnavailable",
        ),
        (
            "maxUnavailable 150%",
            with(
                minimal.clone(),
                &format!("{rolling}/maxUnavailable"),
                json!("150%"),
            ),
            "spec.updateStrategy.rollingUpdate.maxUnavailable",
        ),
        (
            "maxUnavailable words",
            with(
                minimal.clone(),
                &format!("{rolling}/maxUnavailable"),
                json!("two"),
            ),
            "spec.updateStrategy.rollingUpdate.maxUnavailable",
        ),
        (
            "unknown podUpdatePolicy",
            with(
                minimal.clone(),
                &format!("{rolling}/podUpdatePolicy"),
                json!("InPlaceOnly"),
            ),
            "spec.updateStrategy.rollingUpdate.podUpdatePolicy",
        ),
        (
            "stuck grace too short",
            with(
                minimal.clone(),
                &format!("{rolling}/stuckPodSeconds"),
                json!(1),
            ),
            "spec.updateStrategy.rollingUpdate.stuckPodSeconds",
        ),
        (
            "unknown podManagementPolicy",
            with(
                minimal.clone(),
                "spec/podManagementPolicy",
                json!("Sometimes"),
            ),
            "spec.podManagementPolicy",
        ),
        (
            "unknown strategy type",
            with(
                minimal.clone(),
                "spec/updateStrategy/type",
                json!("BlueGreen"),
            ),
            "spec.updateStrategy.type",
        ),
        (
            "rollingUpdate with OnDelete",
            with(
                with(
                    minimal.clone(),
                    "spec/updateStrategy/type",
                    json!("OnDelete"),
                ),
                &format!("{rolling}/partition"),
                json!(1),
            ),
            "spec.updateStrategy.rollingUpdate",
        ),
        (
            "negative ordinals.start",
            with(minimal.clone(), "spec/ordinals/start", json!(-1)),
            "spec.ordinals.start",
        ),
        (
            "negative minReadySeconds",
            with(minimal.clone(), "spec/minReadySeconds", json!(-5)),
            "spec.minReadySeconds",
        ),
        (
            "negative revisionHistoryLimit",
            with(minimal.clone(), "spec/revisionHistoryLimit", json!(-1)),
            "spec.revisionHistoryLimit",
        ),
        (
            "negative reserved ordinal",
            with(minimal.clone(), "spec/reserveOrdinals", json!([1, -1])),
            "spec.reserveOrdinals",
        ),
        (
            "reserved ordinal that is no range",
            with(minimal.clone(), "spec/reserveOrdinals", json!(["three"])),
            "spec.reserveOrdinals",
        ),
        (
            "selector not matching the template",
            with(
                minimal.clone(),
                "spec/selector/matchLabels/app",
                json!("other"),
            ),
            "spec.selector",
        ),
        (
            "no selector",
            with(minimal.clone(), "spec/selector", Value::Null),
            "spec.selector",
        ),
        (
            "no template",
            with(minimal.clone(), "spec/template", Value::Null),
            "spec.template",
        ),
        (
            "template without containers",
            with(
                minimal.clone(),
                "spec/template/spec/containers",
                Value::Null,
            ),
            "spec.template.spec.containers",
        ),
        (
            "unknown PVC retention",
            with(
                minimal.clone(),
                "spec/persistentVolumeClaimRetentionPolicy/whenScaled",
                json!("Keep"),
            ),
            "spec.persistentVolumeClaimRetentionPolicy.whenScaled",
        ),
        (
            "static IP enable not a boolean",
            with(
                example.clone(),
                &format!("metadata/annotations/{enable}"),
                json!("yes"),
            ),
            "metadata.annotations[staticip.jke.jdcloud.com/enable]",
        ),
        (
            "pool without static IP",
            with(
                minimal.clone(),
                "metadata/annotations/staticip.jke.jdcloud.com~1pool",
                json!("static-pool"),
            ),
            "metadata.annotations[staticip.jke.jdcloud.com/pool]",
        ),
        (
            "unknown release policy",
            with(
                example.clone(),
                "metadata/annotations/staticip.jke.jdcloud.com~1release-policy",
                json!("Sometimes"),
            ),
            "metadata.annotations[staticip.jke.jdcloud.com/release-policy]",
        ),
        (
            "pool with a bad CIDR",
            with(sample("ip-pool.yaml"), "spec/cidrs", json!(["10.0.0.0/33"])),
            "spec.cidrs",
        ),
        (
            "pool block too small",
            with(
                sample("ip-pool.yaml"),
                "spec/ipv4BlockPrefixLength",
                json!(31),
            ),
            "spec.ipv4BlockPrefixLength",
        ),
        (
            "static IP record with a bad address",
            static_ip(json!([{"ip": "300.1.1.1"}])),
            "spec.ips",
        ),
        (
            "static IP record with two IPv4 addresses",
            static_ip(json!([{"ip": "172.30.0.1"}, {"ip": "172.30.0.2"}])),
            "spec.ips",
        ),
    ];
    assert!(cases.len() >= 15);
    // ValidatingAdmissionPolicies take effect a moment after they are created.
    wait_for(
        "admission policies in force",
        Duration::from_secs(60),
        || async { Ok(refusal(&client, &cases[21].1).await?.map(|_| ())) },
    )
    .await?;
    let mut failures = Vec::new();
    for (name, object, field) in &cases {
        match refusal(&client, object).await? {
            None => failures.push(format!("{name}: accepted")),
            Some(message) if !message.contains(field) => {
                failures.push(format!("{name}: message does not name {field}: {message}"))
            }
            Some(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    Ok(())
}

fn static_ip(ips: Value) -> Value {
    json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1",
        "kind": "StaticIP",
        "metadata": {"name": "web-0"},
        "spec": {
            "workload": {"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet", "name": "web", "uid": "u-1"},
            "podName": "web-0",
            "ips": ips
        }
    })
}

#[tokio::test]
async fn immutable_fields_are_refused_as_updates() -> anyhow::Result<()> {
    let client = prepared().await?;
    let _logs = LogsOnFailure(shared().await?);
    let live = with(
        sample("storage-ordinals.yaml"),
        "metadata/name",
        json!("immutable"),
    );
    let live = with(
        live,
        "metadata/annotations/staticip.jke.jdcloud.com~1enable",
        json!("true"),
    );
    apply_value(&client, &live, Some(NS), false).await?;
    let api = api_for(&client, &live, Some(NS)).await?;
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "selector",
            json!({"spec": {"selector": {"matchLabels": {"app": "storage-ordinals", "tier": "db"}}}}),
            "spec.selector",
        ),
        (
            "serviceName",
            json!({"spec": {"serviceName": "other"}}),
            "spec.serviceName",
        ),
        (
            "podManagementPolicy",
            json!({"spec": {"podManagementPolicy": "OrderedReady"}}),
            "spec.podManagementPolicy",
        ),
        (
            "volumeClaimTemplates",
            json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "other"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}),
            "spec.volumeClaimTemplates",
        ),
        (
            "static IP turned off",
            json!({"metadata": {"annotations": {"staticip.jke.jdcloud.com/enable": "false"}}}),
            "metadata.annotations[staticip.jke.jdcloud.com/enable]",
        ),
        (
            "IP mode changed to range mode",
            json!({"metadata": {"annotations": {"staticip.jke.jdcloud.com/pool": "static-pool"}}}),
            "metadata.annotations[staticip.jke.jdcloud.com/pool]",
        ),
    ];
    wait_for(
        "admission policies in force",
        Duration::from_secs(60),
        || async {
            let result = api
                .patch(
                    "immutable",
                    &PatchParams {
                        dry_run: true,
                        ..Default::default()
                    },
                    &Patch::Merge(&cases[4].1),
                )
                .await;
            Ok(result.is_err().then_some(()))
        },
    )
    .await?;
    let mut failures = Vec::new();
    for (name, patch, field) in &cases {
        let result = api
            .patch("immutable", &PatchParams::default(), &Patch::Merge(patch))
            .await;
        match result {
            Ok(_) => failures.push(format!("{name}: update accepted")),
            Err(kube::Error::Api(status)) if !status.message.contains(field) => failures.push(
                format!("{name}: message does not name {field}: {}", status.message),
            ),
            Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Mutable fields still change.
    api.patch("immutable", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 5, "updateStrategy": {"rollingUpdate": {"partition": 2, "paused": true}}}})))
        .await?;

    // A StaticIP record's addresses cannot change once set.
    let record = with(
        static_ip(json!([{"ip": "172.30.0.9"}])),
        "metadata/name",
        json!("immutable-0"),
    );
    let controller = "system:serviceaccount:ests-system:ests-controller";
    bind_cluster_role(&client, "ests-test-controller", "cluster-admin", controller).await?;
    let (_, ests) = shared()
        .await?
        .client_as(
            controller,
            &[
                "system:serviceaccounts",
                "system:serviceaccounts:ests-system",
            ],
        )
        .await?;
    let records = api_for(&ests, &record, Some(NS)).await?;
    records
        .create(
            &PostParams::default(),
            &serde_json::from_value(record.clone())?,
        )
        .await?;
    let change = json!({"spec": {"ips": [{"ip": "172.30.0.10"}]}});
    match records
        .patch(
            "immutable-0",
            &PatchParams::default(),
            &Patch::Merge(&change),
        )
        .await
    {
        Ok(_) => failures.push("StaticIP spec.ips: update accepted".into()),
        Err(kube::Error::Api(status)) if !status.message.contains("spec.ips") => {
            failures.push(format!(
                "StaticIP spec.ips: message does not name the field: {}",
                status.message
            ))
        }
        Err(_) => {}
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[tokio::test]
async fn only_static_ip_pods_carry_ests_address_annotations() -> anyhow::Result<()> {
    let client = prepared().await?;
    let _logs = LogsOnFailure(shared().await?);
    let pod = |name: &str, labels: Value, annotations: Value| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "app:v1"}]}
        })
    };
    let static_ip = json!({"staticip.jke.jdcloud.com/enabled": "true"});
    for key in [
        "staticip.jke.jdcloud.com/ip",
        "staticip.jke.jdcloud.com/node",
    ] {
        let message = refusal(
            &client,
            &pod("plain", json!({}), json!({key: "172.30.0.9"})),
        )
        .await?
        .unwrap_or_else(|| panic!("an ordinary pod with {key} was accepted"));
        assert!(
            message.contains(&format!("metadata.annotations[{key}]")),
            "{message}"
        );
        assert_eq!(
            refusal(
                &client,
                &pod("labelled", static_ip.clone(), json!({key: "172.30.0.9"}))
            )
            .await?,
            None,
            "a static-IP pod carries {key}"
        );
    }
    assert_eq!(
        refusal(&client, &pod("plain", json!({}), json!({}))).await?,
        None
    );
    // Added later to a running ordinary pod: refused as well.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), NS);
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod("later", json!({}), json!({})))?,
    )
    .await?;
    let added = pods
        .patch(
            "later",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"annotations": {"staticip.jke.jdcloud.com/ip": "172.30.0.9"}}}),
            ),
        )
        .await;
    assert!(
        matches!(&added, Err(kube::Error::Api(s)) if s.message.contains("metadata.annotations[staticip.jke.jdcloud.com/ip]")),
        "{added:?}"
    );
    pods.delete("later", &Default::default()).await?;
    Ok(())
}
