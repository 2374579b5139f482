//! A release's life as a cluster admin lives it, on the harness's real node, with the
//! invariant checker watching throughout (no two pods answer one address):
//!
//! - `helm install` of charts/ests with the node agent (ests-cni is the node's network) and
//!   the Deployments (controller 2, webhook 2, extender 1) running from the harness's image;
//! - the demo scenario: a user with only `edit` applies the source manifest
//!   (config/samples/staticip-example.yaml, the test image in place of its nginx); its six
//!   pods run on the real node, each answering on its record's address; a rollout in the
//!   manifest's two batches (partition 3, then 0) during which both webhook replicas, the
//!   controller leader and the node agent are deleted, one at a time: the rollout finishes,
//!   every pod answers with the new version on the address it had;
//! - `helm upgrade` to a new image tag: every Deployment's and the DaemonSet's pods are
//!   replaced by pods of the new tag, the webhook's certificate Secret and the caBundle of
//!   both webhook configurations are kept, and a client creating static-IP pods (dry run,
//!   as the controller creates them; and sets) all along sees no admission failure;
//! - a rotated serving certificate (a new CA and certificate, put into the Secret as
//!   cert-manager would, the new CA trusted beside the old first): served by both webhook
//!   replicas without a restart, with no admission failure either;
//! - `helm uninstall`: no webhook configuration is left, the CRDs, the set, its records and
//!   its pods stay (as the chart's README says); `helm install` again adopts them: a pod
//!   deleted then comes back with its record's address.
//!
//! It prints the install and upgrade times, the admission requests made and failed during
//! the upgrade and the rotation, and each component's resident memory as a pod.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ests_api::{EnhancedStatefulSet, StaticIP, keys};
use ests_testenv::helm::{Helm, Values};
use ests_testenv::pki::Pki;
use ests_testenv::real_node::images::ANSWER_PORT;
use ests_testenv::real_node::{RealNode, wait_answer};
use ests_testenv::resources::apply_value;
use ests_testenv::{ControlPlane, InvariantChecker, LogsOnFailure, wait_for};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::Env;
use support::chart::{
    COMPONENTS, NAMESPACE, RELEASE, agent_pod, agent_values, chart_dir, component_pods,
    controller_leader, diagnosis, edit_user, pod_ip, process_facts, ready, restarts,
};
use support::cni::canary;
use support::real_node::{
    answer_set, import_ests_image, ready_pods, real_namespace, static_ip_set,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(240);
/// Replicas of [`COMPONENTS`]: the chart's two controllers and two webhooks (one leader; a
/// peer to fail over to), one extender (nothing here schedules through it).
const REPLICAS: [i32; 3] = [2, 2, 1];
/// The source manifest's set.
const SET: &str = "staticip-example";
/// The namespace of the `edit` user who applies it.
const APP_NS: &str = "cl-app";
/// The tag of the release the upgrade moves to (the same image under a second tag).
const NEXT_TAG: &str = "next";
/// The webhook's certificate Secret and configurations (the chart's names for the release).
const WEBHOOK_SECRET: &str = "ests-webhook-tls";
const WEBHOOK_CONFIGURATION: &str = "ests-webhook";

/// The source manifest as published, with the test image's container on the real node in
/// place of its nginx (which this machine cannot pull), answering `<pod> <version>`.
fn source_set(version: &str) -> Value {
    let mut set = support::sample("staticip-example.yaml");
    let answer = answer_set(SET, 6);
    set["spec"]["template"]["metadata"]["annotations"] =
        answer["spec"]["template"]["metadata"]["annotations"].clone();
    let mut spec = answer["spec"]["template"]["spec"].clone();
    spec["containers"][0]["env"] = json!([{"name": "VERSION", "value": version}]);
    set["spec"]["template"]["spec"] = spec;
    set
}

/// The release's values at image `image` (the node agent on, [`REPLICAS`] or none).
fn values_file(
    plane: &ControlPlane,
    node: &RealNode,
    image: &str,
    replicas: [i32; 3],
) -> anyhow::Result<Values> {
    let path = plane.dir.join(format!(
        "chart-lifecycle-{}-{}.yaml",
        image.rsplit(':').next().unwrap_or_default(),
        replicas.iter().sum::<i32>()
    ));
    std::fs::write(
        &path,
        serde_saphyr::to_string(&agent_values(image, node, replicas)?)?,
    )?;
    Ok(Values::file(path))
}

/// The release's pods: component -> pod name -> UID.
async fn release_pods(
    client: &Client,
) -> anyhow::Result<BTreeMap<String, BTreeMap<String, String>>> {
    let mut all = BTreeMap::new();
    for component in COMPONENTS.into_iter().chain(["node"]) {
        let pods = component_pods(client, component).await?;
        all.insert(
            component.to_string(),
            pods.iter()
                .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
                .collect(),
        );
    }
    Ok(all)
}

/// Waits until `component` runs exactly `replicas` pods, all Ready, none being deleted, none
/// of them one of `old` (UIDs), each running `image`; returns them.
async fn replaced(
    client: &Client,
    component: &str,
    replicas: usize,
    old: &BTreeSet<String>,
    image: &str,
) -> anyhow::Result<Vec<Pod>> {
    wait_for(
        format!("{replicas} new {component} pods Ready on {image}"),
        T,
        || async {
            let pods = component_pods(client, component).await?;
            let settled = pods.len() == replicas
                && pods.iter().all(|p| {
                    ready(p)
                        && p.metadata.deletion_timestamp.is_none()
                        && !old.contains(&p.uid().unwrap_or_default())
                        && p.spec.as_ref().is_some_and(|s| {
                            s.containers
                                .iter()
                                .all(|c| c.image.as_deref() == Some(image))
                        })
                });
            Ok(settled.then_some(pods))
        },
    )
    .await
}

/// Deletes the release's pod `name` of `component` and waits until a new one has taken its
/// place.
async fn delete_and_replace(
    client: &Client,
    component: &str,
    name: &str,
    replicas: usize,
    image: &str,
) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let uid = pods.get(name).await?.uid().unwrap_or_default();
    pods.delete(name, &DeleteParams::default()).await?;
    replaced(client, component, replicas, &BTreeSet::from([uid]), image).await?;
    Ok(())
}

/// Admission requests a client made and those that failed (the API server's message).
#[derive(Debug, Default)]
struct Admissions {
    made: u64,
    failed: Vec<String>,
}

/// A client creating a static-IP pod as the controller creates one (`pod`, under the
/// controller's user, through the mutating webhook, which pins it to its record) and a set
/// (through the validating webhook), both with dryRun, about ten times a second until
/// `stop` turns true. Every webhook of ests fails closed: a request the webhook did not
/// answer fails here as it would for a user.
fn admission_client(
    controller: Client,
    admin: Client,
    pod: Pod,
    stop: watch::Receiver<bool>,
) -> JoinHandle<Admissions> {
    tokio::spawn(async move {
        let namespace = pod.namespace().unwrap_or_default();
        let pods: Api<Pod> = Api::namespaced(controller, &namespace);
        let sets: Api<EnhancedStatefulSet> = Api::namespaced(admin, APP_NS);
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        let mut set = source_set("probe");
        set["metadata"]["name"] = json!("admission-probe");
        let set: Result<EnhancedStatefulSet, _> = serde_json::from_value(set);
        let mut admissions = Admissions::default();
        let Ok(set) = set else {
            admissions
                .failed
                .push(format!("the probe set does not parse: {set:?}"));
            return admissions;
        };
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while !*stop.borrow() {
            tick.tick().await;
            match pods.create(&dry_run, &pod).await {
                Ok(created) if created.annotations().contains_key(keys::STATIC_IP_POD_NODE) => {}
                Ok(_) => admissions
                    .failed
                    .push("a static-IP pod admitted unpinned".into()),
                Err(e) => admissions.failed.push(format!("pod: {e}")),
            }
            if let Err(e) = sets.create(&dry_run, &set).await {
                admissions.failed.push(format!("set: {e}"));
            }
            admissions.made += 2;
        }
        admissions
    })
}

/// Runs [`admission_client`] until `during` ends; the admissions it saw.
async fn admissions_during<F: std::future::Future<Output = anyhow::Result<()>>>(
    controller: &Client,
    admin: &Client,
    pod: &Pod,
    during: F,
) -> anyhow::Result<Admissions> {
    let (stop, stopped) = watch::channel(false);
    let client = admission_client(controller.clone(), admin.clone(), pod.clone(), stopped);
    let outcome = during.await;
    stop.send_replace(true);
    let admissions = client.await?;
    outcome.map(|()| admissions)
}

/// Both webhook configurations of the release, as dynamic objects: their webhooks'
/// `clientConfig.caBundle` is one field in either kind.
async fn webhook_configurations(
    client: &Client,
) -> anyhow::Result<Vec<(Api<DynamicObject>, DynamicObject)>> {
    let mut found = Vec::new();
    for resource in [
        ApiResource::erase::<MutatingWebhookConfiguration>(&()),
        ApiResource::erase::<ValidatingWebhookConfiguration>(&()),
    ] {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let configuration = api.get(WEBHOOK_CONFIGURATION).await?;
        found.push((api, configuration));
    }
    Ok(found)
}

/// The caBundle of both webhook configurations' webhooks.
async fn ca_bundles(client: &Client) -> anyhow::Result<Vec<Value>> {
    Ok(webhook_configurations(client)
        .await?
        .iter()
        .flat_map(|(_, c)| c.data["webhooks"].as_array().cloned().unwrap_or_default())
        .map(|w| w["clientConfig"]["caBundle"].clone())
        .collect())
}

/// Sets the caBundle of every webhook of both configurations to `bundle` (as cert-manager's
/// CA injector does).
async fn set_ca_bundle(client: &Client, bundle: &[u8]) -> anyhow::Result<()> {
    let encoded = serde_json::to_value(ByteString(bundle.to_vec()))?;
    for (api, mut configuration) in webhook_configurations(client).await? {
        for webhook in configuration.data["webhooks"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            webhook["clientConfig"]["caBundle"] = encoded.clone();
        }
        let patch = json!({"webhooks": configuration.data["webhooks"]});
        api.patch(
            WEBHOOK_CONFIGURATION,
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
    }
    Ok(())
}

/// Whether the webhook replica at `ip` serves a certificate for its Service that `ca_pem`
/// alone verifies (a TLS handshake trusting only that CA).
async fn serves_certificate_of(ip: IpAddr, port: u16, ca_pem: &str) -> anyhow::Result<bool> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::pem_slice_iter(
            ca_pem.as_bytes(),
        )
    {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(format!("ests-webhook.{NAMESPACE}.svc"))?;
    let tcp = tokio::net::TcpStream::connect((ip, port)).await?;
    Ok(
        tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
            .await
            .is_ok_and(|handshake| handshake.is_ok()),
    )
}

/// Every pod of the source set Ready, answering `<pod> <version>` on its record's address;
/// pod name -> address.
async fn answering(env: &Env, version: &str) -> anyhow::Result<BTreeMap<String, IpAddr>> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), APP_NS);
    let all = support::names(SET, 0..6);
    let running = ready_pods(&pods, &all, T).await?;
    let records = wait_for("the 6 pods' records Bound to them", T, || async {
        let records = support::bound_records(env, APP_NS).await?;
        let bound = running
            .iter()
            .all(|(name, (uid, _))| records.get(name).is_some_and(|r| &r.0 == uid));
        Ok(bound.then_some(records))
    })
    .await;
    let records = match records {
        Ok(records) => records,
        Err(e) => {
            let all = Api::<StaticIP>::namespaced(env.client.clone(), APP_NS)
                .list(&Default::default())
                .await?;
            let states: Vec<String> = all
                .items
                .iter()
                .map(|r| format!("{} {:?}", r.name_any(), r.status))
                .collect();
            return Err(e.context(format!(
                "running {running:?}; records {states:#?}\n{}",
                env.plane
                    .kubectl(&[
                        "logs",
                        "-n",
                        NAMESPACE,
                        "-l",
                        "app.kubernetes.io/component=controller",
                        "--tail=60",
                        "--prefix"
                    ])
                    .await
                    .unwrap_or_default()
            )));
        }
    };
    let mut addresses = BTreeMap::new();
    for (name, (_, ip)) in running {
        assert_eq!(records[&name].2, ip.to_string(), "{name}'s record");
        assert_eq!(
            wait_answer(ip, ANSWER_PORT, T).await?,
            format!("{name} {version}"),
            "{name} at {ip}"
        );
        addresses.insert(name, ip);
    }
    Ok(addresses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_is_installed_upgraded_rotated_and_uninstalled_on_the_real_node()
-> anyhow::Result<()> {
    if ests_testenv::real_node::turned_off() {
        return Ok(());
    }
    let (plane, node) = ests_testenv::shared_real_node().await?;
    let _logs = LogsOnFailure(plane);
    let admin = plane.client().await?;
    let env = Env {
        plane,
        client: admin.clone(),
    };
    let image = import_ests_image(node).await?;
    let (repository, _) = image.rsplit_once(':').context("the image has no tag")?;
    let next = format!("{repository}:{NEXT_TAG}");
    node.tag_image(&image, &next).await?;
    let checker = InvariantChecker::start(admin.clone()).await?;
    let helm = Helm::locate()?;

    // Installed with the agent first and the Deployments after (every pod of the node then
    // has an address of the agent's, none of host-local's, which the agent does not know).
    let begun = Instant::now();
    let installed = async {
        helm.install(
            &plane.kubeconfig,
            &chart_dir(),
            RELEASE,
            NAMESPACE,
            &values_file(plane, node, &image, [0; 3])?,
            T,
        )
        .await?;
        agent_pod(&admin, T).await?;
        let pods: Api<Pod> = Api::namespaced(admin.clone(), APP_NS);
        real_namespace(&env, APP_NS).await?;
        canary(&pods, true, T).await?;
        helm.upgrade(
            &plane.kubeconfig,
            &chart_dir(),
            RELEASE,
            NAMESPACE,
            &values_file(plane, node, &image, REPLICAS)?,
            T,
        )
        .await
    };
    if let Err(e) = installed.await {
        return Err(e.context(diagnosis(plane, node).await));
    }
    let install_time = begun.elapsed();
    let mut leader = controller_leader(&admin, T).await?;

    // The source manifest, applied by a user with only `edit`.
    let carol = edit_user(plane, APP_NS, "carol", T).await?;
    apply_value(&carol, &source_set("v1"), Some(APP_NS), false).await?;
    let sets: Api<EnhancedStatefulSet> = Api::namespaced(admin.clone(), APP_NS);
    support::wait_status(&sets, SET, "6 ready", T, |s| s.ready_replicas == 6)
        .await
        .map_err(|e| e.context(node.log_tails(20)))?;
    let addresses = answering(&env, "v1").await?;

    // The rollout, in the manifest's batches; a component is deleted right after each
    // change, while the set is rolling.
    let mut v2 = source_set("v2");
    apply_value(&carol, &v2, Some(APP_NS), false).await?;
    for webhook in component_pods(&admin, "webhook").await? {
        delete_and_replace(&admin, "webhook", &webhook.name_any(), 2, &image).await?;
    }
    support::wait_status(&sets, SET, "the first batch updated", T, |s| {
        s.updated_replicas == 3 && s.ready_replicas == 6
    })
    .await?;
    v2["spec"]["updateStrategy"]["rollingUpdate"]["partition"] = json!(0);
    apply_value(&carol, &v2, Some(APP_NS), false).await?;
    let rolling = sets.get(SET).await?.status.unwrap_or_default();
    delete_and_replace(&admin, "controller", &leader, 2, &image).await?;
    let old_leader = leader.clone();
    leader = wait_for("a new controller leader", T, || async {
        let holder = controller_leader(&admin, T).await?;
        Ok((holder != old_leader).then_some(holder))
    })
    .await?;
    let agent = agent_pod(&admin, T).await?;
    delete_and_replace(&admin, "node", &agent.name_any(), 1, &image).await?;
    support::wait_status(&sets, SET, "all 6 updated and ready", T, |s| {
        s.updated_replicas == 6 && s.ready_replicas == 6 && s.current_revision == s.update_revision
    })
    .await
    .map_err(|e| e.context(node.log_tails(20)))?;
    eprintln!(
        "chart_lifecycle: the leader {old_leader} was deleted with {} of 6 pods updated; {leader} leads now",
        rolling.updated_replicas
    );
    assert_eq!(
        answering(&env, "v2").await?,
        addresses,
        "every pod kept its address through the rollout"
    );

    // A pod as the controller creates it, for the admission client: identity 6 of the set,
    // scaled out and in again, whose record a second set keeps (WhenDeleted keeps a
    // scaled-in identity's record: the webhook pins its pod).
    let kept = static_ip_set("kept", 2, "WhenDeleted");
    support::apply(&env, APP_NS, &kept).await?;
    support::wait_status(&sets, "kept", "2 ready", T, |s| s.ready_replicas == 2).await?;
    let app_pods: Api<Pod> = Api::namespaced(admin.clone(), APP_NS);
    let mut template = app_pods.get("kept-1").await?;
    template.metadata.resource_version = None;
    template.metadata.uid = None;
    template.metadata.creation_timestamp = None;
    template.metadata.managed_fields = None;
    template.status = None;
    if let Some(spec) = template.spec.as_mut() {
        spec.node_name = None;
    }
    support::patch(&sets, "kept", json!({"spec": {"replicas": 1}})).await?;
    wait_for("kept-1 gone, its record kept", T, || async {
        let gone = app_pods.get_opt("kept-1").await?.is_none();
        let record = Api::<StaticIP>::namespaced(admin.clone(), APP_NS)
            .get_opt("kept-1")
            .await?;
        Ok((gone && record.is_some()).then_some(()))
    })
    .await?;
    let (_, controller_client) = plane
        .client_as(
            &format!("system:serviceaccount:{NAMESPACE}:{RELEASE}-controller"),
            &[],
        )
        .await?;
    let baseline = admissions_during(&controller_client, &admin, &template, async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(())
    })
    .await?;
    assert!(
        baseline.made > 0 && baseline.failed.is_empty(),
        "the admission client before the upgrade: {baseline:?}"
    );

    // The upgrade to the next tag: every pod replaced, the certificate kept, no admission
    // failure.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NAMESPACE);
    let certificate = secrets.get(WEBHOOK_SECRET).await?.data;
    let bundles = ca_bundles(&admin).await?;
    let before = release_pods(&admin).await?;
    let begun = Instant::now();
    let upgrade = admissions_during(&controller_client, &admin, &template, async {
        helm.upgrade(
            &plane.kubeconfig,
            &chart_dir(),
            RELEASE,
            NAMESPACE,
            &values_file(plane, node, &next, REPLICAS)?,
            T,
        )
        .await?;
        for (component, replicas) in COMPONENTS.into_iter().zip(REPLICAS).chain([("node", 1)]) {
            let old: BTreeSet<String> = before[component].values().cloned().collect();
            replaced(&admin, component, replicas as usize, &old, &next).await?;
        }
        Ok(())
    })
    .await
    .map_err(|e| e.context(format!("{}\n{}", node.log_tails(20), "the upgrade")))?;
    let upgrade_time = begun.elapsed();
    assert_eq!(
        secrets.get(WEBHOOK_SECRET).await?.data,
        certificate,
        "the upgrade changed the webhook's certificate"
    );
    assert_eq!(
        ca_bundles(&admin).await?,
        bundles,
        "the upgrade changed a caBundle"
    );
    assert!(
        upgrade.failed.is_empty(),
        "{} of {} admission requests failed during the upgrade: {:?}",
        upgrade.failed.len(),
        upgrade.made,
        upgrade.failed
    );
    assert_eq!(answering(&env, "v2").await?, addresses, "after the upgrade");

    // The serving certificate rotated: a new CA trusted beside the old, the Secret
    // replaced, the new certificate served by both replicas without a restart, the old CA
    // dropped.
    let webhooks_before = component_pods(&admin, "webhook").await?;
    let old_ca = certificate
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .context("the webhook Secret has no ca.crt")?
        .0
        .clone();
    let pki = Pki::create(&plane.dir.join("rotated-webhook-ca"))?;
    let names: Vec<String> = ["webhook", "extender"]
        .iter()
        .flat_map(|c| {
            let service = format!("{RELEASE}-{c}");
            [
                service.clone(),
                format!("{service}.{NAMESPACE}"),
                format!("{service}.{NAMESPACE}.svc"),
                format!("{service}.{NAMESPACE}.svc.cluster.local"),
            ]
        })
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let issued = pki.serving("ests-webhook", &names)?;
    let begun = Instant::now();
    let rotation = admissions_during(&controller_client, &admin, &template, async {
        let mut both = old_ca.clone();
        both.extend_from_slice(pki.ca_pem.as_bytes());
        set_ca_bundle(&admin, &both).await?;
        let mut secret = secrets.get(WEBHOOK_SECRET).await?;
        let data = secret.data.get_or_insert_default();
        data.insert("ca.crt".into(), ByteString(pki.ca_pem.clone().into_bytes()));
        data.insert("tls.crt".into(), ByteString(std::fs::read(&issued.cert)?));
        data.insert("tls.key".into(), ByteString(std::fs::read(&issued.key)?));
        secrets
            .replace(WEBHOOK_SECRET, &PostParams::default(), &secret)
            .await?;
        for pod in &webhooks_before {
            let ip = pod_ip(pod)?;
            let port = support::chart::named_port(pod, "https")?;
            wait_for(
                format!("{} serving the new certificate", pod.name_any()),
                T,
                || async {
                    Ok(serves_certificate_of(ip, port, &pki.ca_pem)
                        .await
                        .unwrap_or(false)
                        .then_some(()))
                },
            )
            .await?;
        }
        set_ca_bundle(&admin, pki.ca_pem.as_bytes()).await?;
        // Requests after the old CA is gone go to the new certificate only.
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(())
    })
    .await?;
    let rotation_time = begun.elapsed();
    for pod in &webhooks_before {
        let now = Api::<Pod>::namespaced(admin.clone(), NAMESPACE)
            .get(&pod.name_any())
            .await?;
        assert_eq!(now.uid(), pod.uid(), "{} replaced", pod.name_any());
        assert_eq!(
            restarts(&now),
            restarts(pod),
            "{} restarted",
            pod.name_any()
        );
    }
    assert!(
        rotation.failed.is_empty(),
        "{} of {} admission requests failed during the rotation: {:?}",
        rotation.failed.len(),
        rotation.made,
        rotation.failed
    );

    // Each component's memory as a pod, on the new tag.
    let mut rss = Vec::new();
    for component in COMPONENTS.into_iter().chain(["node"]) {
        for pod in component_pods(&admin, component).await? {
            let id = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref()?.first()?.container_id.clone())
                .with_context(|| format!("{} has no container", pod.name_any()))?;
            rss.push((
                component,
                pod.name_any(),
                process_facts(node, &id).await?.rss_kib,
            ));
        }
    }

    // Uninstalled: no webhook configuration left; CRDs, the set, its records and pods kept.
    let records: Api<StaticIP> = Api::namespaced(admin.clone(), APP_NS);
    let record_names: BTreeSet<String> = records
        .list(&Default::default())
        .await?
        .items
        .iter()
        .map(|r| r.name_any())
        .collect();
    helm.uninstall(&plane.kubeconfig, RELEASE, NAMESPACE, T)
        .await?;
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(admin.clone());
    let left: Vec<String> = mutating
        .list(&Default::default())
        .await?
        .items
        .iter()
        .map(|c| c.name_any())
        .chain(
            validating
                .list(&Default::default())
                .await?
                .items
                .iter()
                .map(|c| c.name_any()),
        )
        .filter(|n| n.starts_with(RELEASE))
        .collect();
    assert!(left.is_empty(), "left after uninstall: {left:?}");
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for crd in ["enhancedstatefulsets", "staticips", "ipblocks"] {
        assert!(
            crds.get_opt(&format!("{crd}.{}", ests_api::GROUP))
                .await?
                .is_some(),
            "the CRD {crd} went with the release"
        );
    }
    assert!(
        sets.get_opt(SET).await?.is_some(),
        "the set went with the release"
    );
    let kept_records: BTreeSet<String> = records
        .list(&Default::default())
        .await?
        .items
        .iter()
        .map(|r| r.name_any())
        .collect();
    assert_eq!(kept_records, record_names, "records after uninstall");
    for (name, ip) in &addresses {
        assert_eq!(
            wait_answer(*ip, ANSWER_PORT, T).await?,
            format!("{name} v2"),
            "{name} after uninstall"
        );
    }

    // Installed again: the records are adopted; a deleted pod comes back on its address.
    helm.install(
        &plane.kubeconfig,
        &chart_dir(),
        RELEASE,
        NAMESPACE,
        &values_file(plane, node, &next, REPLICAS)?,
        T,
    )
    .await
    .map_err(|e| e.context(node.log_tails(20)))?;
    agent_pod(&admin, T).await?;
    controller_leader(&admin, T).await?;
    let (_, ip) = support::real_node::recreated(&app_pods, &format!("{SET}-2"), T).await?;
    assert_eq!(
        ip,
        addresses[&format!("{SET}-2")],
        "{SET}-2 after reinstall"
    );
    assert_eq!(answering(&env, "v2").await?, addresses, "after reinstall");

    eprintln!(
        "chart_lifecycle: helm install (agent, then the Deployments) took {:.1}s; helm upgrade to a new tag until every pod was replaced {:.1}s; rotation served by both webhooks in {:.1}s",
        install_time.as_secs_f64(),
        upgrade_time.as_secs_f64(),
        rotation_time.as_secs_f64()
    );
    eprintln!(
        "chart_lifecycle: admission requests during the upgrade: {} made, {} failed; during the rotation: {} made, {} failed",
        upgrade.made,
        upgrade.failed.len(),
        rotation.made,
        rotation.failed.len()
    );
    for (component, pod, kib) in &rss {
        eprintln!(
            "chart_lifecycle: RSS {component} {pod}: {:.1} MiB",
            *kib as f64 / 1024.0
        );
    }

    // Clean up: the sets while the controller runs (their records' finalizers), the canary,
    // the release, and the CNI list the chart leaves on the node.
    for name in [SET, "kept"] {
        sets.delete(name, &DeleteParams::default()).await?;
    }
    app_pods.delete("canary", &DeleteParams::default()).await?;
    wait_for("the sets and their pods gone", T, || async {
        let left = app_pods.list(&Default::default()).await?.items.len();
        let sets_left = sets.list(&Default::default()).await?.items.len();
        Ok((left == 0 && sets_left == 0).then_some(()))
    })
    .await?;
    helm.uninstall(&plane.kubeconfig, RELEASE, NAMESPACE, T)
        .await?;
    std::fs::remove_file(node.dir.join("cni/net.d/00-ests.conflist"))?;
    checker.finish()
}
