//! Static-IP records on the real control plane, with `ests controller` (set controller and
//! StaticIP manager in one process): one record per identity before its pod, records that
//! learn their pod's address and become Bound, release policies on scale-in, and records
//! that outlive their set and are adopted by its successor.
//!
//! Pods keeping their address across re-creation needs the Pod webhook and is proven with
//! it; here the records are checked to keep and hand back the right addresses. Policies
//! that keep an address after its pod went run in IP range mode: in record mode the CNI
//! (here KWOK) hands a released address to the next pod, which the manager then refuses to
//! learn (one address, one record) and which would make these scenarios about KWOK.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use ests_api::{StaticIP, StaticIPPhase, keys};
use ests_testenv::{InvariantChecker, LogsOnFailure, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{Value, json};
use support::*;

const T: Duration = Duration::from_secs(120);

/// The pool range-mode sets here draw from, outside KWOK's pod ranges (10.128.0.0/9).
const POOL: &str = "e2e-pool";

async fn ensure_pool(env: &Env) -> anyhow::Result<()> {
    let pool = json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1",
        "kind": "StaticIPPool",
        "metadata": {"name": POOL},
        "spec": {"cidrs": ["10.40.0.0/16"], "reservedIPs": ["10.40.0.1"]}
    });
    ests_testenv::resources::apply_value(&env.client, &pool, None, false).await?;
    Ok(())
}

/// A Parallel set of `replicas` with static IPs on and release policy `policy`, in IP
/// range mode from [`POOL`] if `range`.
fn static_set(name: &str, replicas: i32, policy: &str, ttl: Option<i64>, range: bool) -> Value {
    let mut set = simple_set(name, replicas, "Parallel", 2);
    let mut annotations = json!({
        keys::STATIC_IP_ENABLE: "true",
        keys::STATIC_IP_RELEASE_POLICY: policy,
    });
    if let Some(ttl) = ttl {
        annotations[keys::STATIC_IP_RELEASE_TTL_SECONDS] = json!(ttl.to_string());
    }
    if range {
        annotations[keys::STATIC_IP_POOL] = json!(POOL);
    }
    set["metadata"]["annotations"] = annotations;
    set
}

/// What a record says, by record name.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    uid: String,
    ips: Vec<String>,
    node: Option<String>,
    bound_pod: Option<String>,
    phase: StaticIPPhase,
}

async fn records(env: &Env, ns: &str) -> anyhow::Result<BTreeMap<String, (Seen, StaticIP)>> {
    let api: Api<StaticIP> = Api::namespaced(env.client.clone(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .map(|r| {
            let status = r.status.clone().unwrap_or_default();
            let seen = Seen {
                uid: r.uid().unwrap_or_default(),
                ips: r.spec.ips.iter().map(|a| a.ip.clone()).collect(),
                node: r.spec.node.clone(),
                bound_pod: status.pod_uid,
                phase: status.phase,
            };
            (r.name_any(), (seen, r))
        })
        .collect())
}

async fn live_pods(env: &Env, ns: &str, selector: &str) -> anyhow::Result<BTreeMap<String, Pod>> {
    let api: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    Ok(api
        .list(&ListParams::default().labels(selector))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.name_any(), p))
        .collect())
}

/// Waits until the identities `expected` each have a running pod and a record Bound to it,
/// holding the pod's IP and node, with the pod stamped with the record's UID; returns the
/// records.
async fn wait_bound(
    env: &Env,
    ns: &str,
    selector: &str,
    expected: &[String],
) -> anyhow::Result<BTreeMap<String, Seen>> {
    wait_for(
        format!("{ns}: {} records Bound to their pods", expected.len()),
        T,
        || async {
            let pods = live_pods(env, ns, selector).await?;
            let records = records(env, ns).await?;
            let mut bound = BTreeMap::new();
            for name in expected {
                let (Some(pod), Some((seen, _))) = (pods.get(name), records.get(name)) else {
                    return Ok(None);
                };
                let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
                let ok = seen.phase == StaticIPPhase::Bound
                    && seen.bound_pod == pod.uid()
                    && ip.is_some_and(|ip| seen.ips == vec![ip])
                    && seen.node == pod.spec.as_ref().and_then(|s| s.node_name.clone())
                    && pod.annotations().get(keys::STATIC_IP_RECORD_UID) == Some(&seen.uid)
                    && pod
                        .labels()
                        .get(keys::STATIC_IP_POD_LABEL)
                        .map(String::as_str)
                        == Some("true");
                if !ok {
                    return Ok(None);
                }
                bound.insert(name.clone(), seen.clone());
            }
            Ok(Some(bound))
        },
    )
    .await
}

#[tokio::test]
async fn the_source_manifest_gets_six_bound_records_in_record_mode() -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let ns = "sip-source";
    let sets = namespace(&env, ns).await?;
    let checker = InvariantChecker::start(env.client.clone()).await?;
    apply(&env, ns, &sample("staticip-example.yaml")).await?;
    wait_status(&sets, "staticip-example", "6 ready", T, |s| {
        s.ready_replicas == 6
    })
    .await?;
    let bound = wait_bound(
        &env,
        ns,
        "apps=staticip-example",
        &names("staticip-example", 0..6),
    )
    .await?;

    assert_eq!(bound.len(), 6);
    let set = sets.get("staticip-example").await?;
    assert!(
        set.finalizers()
            .iter()
            .any(|f| f == keys::SET_RECORDS_FINALIZER)
    );
    for (name, (_, record)) in records(&env, ns).await? {
        assert_eq!(
            record.spec.workload.uid,
            set.uid().unwrap_or_default(),
            "{name}"
        );
        assert_eq!(record.spec.pod_name, name);
        assert!(record.spec.pool.is_none(), "record mode");
        let owner = &record.owner_references()[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            (set.uid().unwrap_or_default().as_str(), Some(true))
        );
    }
    checker.finish()
}

/// Waits until the identities `expected` each have a pod stamped with a record that holds
/// addresses of [`POOL`] (on the pod's node, for records allocated for that pod: a record
/// kept from an earlier pod keeps its node, and only the Pod webhook pins the new pod
/// there); returns the records.
async fn wait_allocated(
    env: &Env,
    ns: &str,
    selector: &str,
    expected: &[String],
    on_pods_node: bool,
) -> anyhow::Result<BTreeMap<String, Seen>> {
    wait_for(
        format!("{ns}: {} records with addresses", expected.len()),
        T,
        || async {
            let pods = live_pods(env, ns, selector).await?;
            let records = records(env, ns).await?;
            let mut allocated = BTreeMap::new();
            for name in expected {
                let (Some(pod), Some((seen, record))) = (pods.get(name), records.get(name)) else {
                    return Ok(None);
                };
                let ok = !record.spec.ips.is_empty()
                    && record
                        .spec
                        .ips
                        .iter()
                        .all(|a| a.ip.starts_with("10.40.") && a.block.is_some())
                    && (!on_pods_node
                        || seen.node == pod.spec.as_ref().and_then(|s| s.node_name.clone()))
                    && pod.annotations().get(keys::STATIC_IP_RECORD_UID) == Some(&seen.uid);
                if !ok {
                    return Ok(None);
                }
                allocated.insert(name.clone(), seen.clone());
            }
            Ok(Some(allocated))
        },
    )
    .await
}

/// Every address on [`POOL`]'s blocks, with the record (`namespace/name`) holding it.
async fn block_allocations(env: &Env) -> anyhow::Result<BTreeMap<String, String>> {
    let api: Api<ests_api::IPBlock> = Api::all(env.client.clone());
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|b| b.spec.pool == POOL)
        .flat_map(|b| b.spec.allocations.into_iter())
        .map(|(ip, a)| (ip, format!("{}/{}", a.namespace, a.name)))
        .collect())
}

/// Waits until the blocks hold exactly the addresses of the records in `ns` (nothing of a
/// released record, nothing leaked).
async fn wait_blocks_match_records(env: &Env, ns: &str) -> anyhow::Result<()> {
    wait_for(
        format!("{ns}: blocks hold exactly the records' addresses"),
        T,
        || async {
            let records = records(env, ns).await?;
            let wanted: BTreeMap<String, String> = records
                .iter()
                .flat_map(|(n, (s, _))| {
                    s.ips
                        .iter()
                        .map(move |ip| (ip.clone(), format!("{ns}/{n}")))
                })
                .collect();
            let prefix = format!("{ns}/");
            let on_blocks: BTreeMap<String, String> = block_allocations(env)
                .await?
                .into_iter()
                .filter(|(_, holder)| holder.starts_with(&prefix))
                .collect();
            Ok((on_blocks == wanted).then_some(()))
        },
    )
    .await
}

/// Scales 6 -> 4 -> 6 under `policy`; returns the records before, after scale-in and after
/// scale-up.
async fn scale_in_and_out(
    ns: &str,
    policy: &str,
    ttl: Option<i64>,
    range: bool,
) -> anyhow::Result<[BTreeMap<String, Seen>; 3]> {
    let env = env().await?;
    let sets = namespace(&env, ns).await?;
    let name = "web";
    if range {
        ensure_pool(&env).await?;
    }
    apply(&env, ns, &static_set(name, 6, policy, ttl, range)).await?;
    let first = if range {
        wait_allocated(&env, ns, "app=web", &names(name, 0..6), true).await?
    } else {
        wait_bound(&env, ns, "app=web", &names(name, 0..6)).await?
    };

    patch(&sets, name, json!({"spec": {"replicas": 4}})).await?;
    wait_status(&sets, name, "4 left", T, |s| s.replicas == 4).await?;
    wait_for("pods 4 and 5 gone", T, || async {
        Ok((live_pods(&env, ns, "app=web").await?.len() == 4).then_some(()))
    })
    .await?;
    // The manager has seen the pods go (or released the records).
    let mut after_scale_in = wait_for(
        format!("{policy}: records of 4 and 5 settled"),
        T,
        || async {
            let records = records(&env, ns).await?;
            let settled = ["web-4", "web-5"].iter().all(|n| match records.get(*n) {
                None => true,
                Some((_, r)) => r.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "PodPresent" && c.status == "False")
                }),
            });
            Ok(settled.then(|| {
                records
                    .into_iter()
                    .map(|(k, (s, _))| (k, s))
                    .collect::<BTreeMap<_, _>>()
            }))
        },
    )
    .await?;
    if range {
        wait_blocks_match_records(&env, ns).await?;
    }

    // With a TTL, the records go after it; WhenScaled ones go once the controller's claim
    // for their last pod has run out (ests_core::static_ip::CLAIM_SECONDS after it was
    // created).
    if ttl.is_some() || policy == "WhenScaled" {
        let released = wait_for("records of 4 and 5 released", T, || async {
            let records = records(&env, ns).await?;
            let gone = !records.contains_key("web-4") && !records.contains_key("web-5");
            Ok(gone.then(|| {
                records
                    .into_iter()
                    .map(|(k, (s, _))| (k, s))
                    .collect::<BTreeMap<_, _>>()
            }))
        })
        .await?;
        if ttl.is_none() {
            after_scale_in = released;
        }
    }

    patch(&sets, name, json!({"spec": {"replicas": 6}})).await?;
    wait_status(&sets, name, "6 again", T, |s| s.replicas == 6).await?;
    let again = if range {
        wait_allocated(&env, ns, "app=web", &names(name, 0..6), false).await?
    } else {
        wait_bound(&env, ns, "app=web", &names(name, 0..6)).await?
    };
    if range {
        wait_blocks_match_records(&env, ns).await?;
    }
    Ok([first, after_scale_in, again])
}

#[tokio::test]
async fn when_scaled_releases_scaled_in_identities() -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let [first, after_in, again] =
        scale_in_and_out("sip-when-scaled", "WhenScaled", None, false).await?;
    assert!(
        !after_in.contains_key("web-4") && !after_in.contains_key("web-5"),
        "released: {after_in:?}"
    );
    for n in ["web-4", "web-5"] {
        assert_ne!(first[n].uid, again[n].uid, "{n} got a fresh record");
    }
    for n in names("web", 0..4) {
        assert_eq!(first[&n], after_in[&n], "{n} untouched by the scale-in");
        assert_eq!(first[&n], again[&n], "{n} untouched by the scale-up");
    }
    checker.finish()
}

async fn kept_across_scale_in(ns: &str, policy: &str) -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let [first, after_in, again] = scale_in_and_out(ns, policy, None, true).await?;
    for n in names("web", 0..6) {
        assert_eq!(first[&n].uid, after_in[&n].uid, "{policy}: {n} kept");
        assert_eq!(
            first[&n].ips, after_in[&n].ips,
            "{policy}: {n} kept its address"
        );
        assert_eq!(
            first[&n].uid, again[&n].uid,
            "{policy}: {n} is the same identity again"
        );
        assert_eq!(
            first[&n].ips, again[&n].ips,
            "{policy}: {n} hands back its old address"
        );
        assert_eq!(
            first[&n].node, again[&n].node,
            "{policy}: {n} keeps its node"
        );
    }
    checker.finish()
}

#[tokio::test]
async fn when_deleted_keeps_addresses_across_scale_in() -> anyhow::Result<()> {
    kept_across_scale_in("sip-when-deleted", "WhenDeleted").await
}

#[tokio::test]
async fn never_keeps_addresses_across_scale_in() -> anyhow::Result<()> {
    kept_across_scale_in("sip-never", "Never").await
}

#[tokio::test]
async fn ttl_releases_after_the_identity_has_been_gone_long_enough() -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let [first, after_in, again] = scale_in_and_out("sip-ttl", "TTL", Some(3), true).await?;
    for n in ["web-4", "web-5"] {
        assert_eq!(first[n].uid, after_in[n].uid, "{n} kept until the TTL");
        assert_ne!(first[n].uid, again[n].uid, "{n} released after the TTL");
    }
    for n in names("web", 0..4) {
        assert_eq!(first[&n].ips, again[&n].ips, "{n} untouched");
    }
    checker.finish()
}

/// Deletes set `web` and re-creates it; returns the records before, the records left in
/// between, and the new set's UID.
async fn delete_and_recreate(
    ns: &str,
    policy: &str,
) -> anyhow::Result<(BTreeMap<String, Seen>, BTreeMap<String, StaticIP>, String)> {
    let env = env().await?;
    let sets = namespace(&env, ns).await?;
    ensure_pool(&env).await?;
    apply(&env, ns, &static_set("web", 3, policy, None, true)).await?;
    let before = wait_allocated(&env, ns, "app=web", &names("web", 0..3), true).await?;
    sets.delete("web", &DeleteParams::background()).await?;
    wait_for("set and pods gone", T, || async {
        let gone = sets.get_opt("web").await?.is_none()
            && live_pods(&env, ns, "app=web").await?.is_empty();
        Ok(gone.then_some(()))
    })
    .await?;
    // Garbage collection takes what the set still owned.
    let between = wait_for("records settled after the delete", T, || async {
        let records = records(&env, ns).await?;
        let settled = records
            .values()
            .all(|(_, r)| r.owner_references().is_empty());
        Ok(settled.then(|| {
            records
                .into_iter()
                .map(|(k, (_, r))| (k, r))
                .collect::<BTreeMap<_, _>>()
        }))
    })
    .await?;
    wait_blocks_match_records(&env, ns).await?;
    apply(&env, ns, &static_set("web", 3, policy, None, true)).await?;
    wait_status(&sets, "web", "3 ready", T, |s| s.ready_replicas == 3).await?;
    let uid = sets.get("web").await?.uid().unwrap_or_default();
    Ok((before, between, uid))
}

#[tokio::test]
async fn a_recreated_set_adopts_the_records_its_predecessor_kept() -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let ns = "sip-adopt";
    let (before, between, uid) = delete_and_recreate(ns, "Never").await?;
    assert_eq!(between.len(), 3, "records outlive the set: {between:?}");
    for (name, record) in &between {
        let ips: Vec<String> = record.spec.ips.iter().map(|a| a.ip.clone()).collect();
        assert_eq!(ips, before[name].ips, "{name} kept its addresses");
    }
    let adopted = wait_for("records adopted by the new set", T, || async {
        let records = records(&env, ns).await?;
        let pods = live_pods(&env, ns, "app=web").await?;
        let ok = names("web", 0..3).iter().all(|n| {
            records.get(n).is_some_and(|(s, r)| {
                r.spec.workload.uid == uid
                    && r.owner_references()
                        .iter()
                        .any(|o| o.uid == uid && o.controller == Some(true))
                    && pods.get(n).is_some_and(|p| {
                        p.annotations().get(keys::STATIC_IP_RECORD_UID) == Some(&s.uid)
                    })
            })
        });
        Ok(ok.then(|| {
            records
                .into_iter()
                .map(|(k, (s, _))| (k, s))
                .collect::<BTreeMap<_, _>>()
        }))
    })
    .await?;
    for n in names("web", 0..3) {
        assert_eq!(before[&n].uid, adopted[&n].uid, "{n}: the same record");
        assert_eq!(before[&n].ips, adopted[&n].ips, "{n}: the old address");
    }
    wait_blocks_match_records(&env, ns).await?;
    checker.finish()
}

#[tokio::test]
async fn when_deleted_releases_with_the_set() -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let checker = InvariantChecker::start(env.client.clone()).await?;
    let ns = "sip-release-with-set";
    let (before, between, _) = delete_and_recreate(ns, "WhenDeleted").await?;
    assert!(between.is_empty(), "records went with the set: {between:?}");
    // The re-created set got fresh records.
    let again = wait_allocated(&env, ns, "app=web", &names("web", 0..3), true).await?;
    for n in names("web", 0..3) {
        assert_ne!(before[&n].uid, again[&n].uid, "{n}: a fresh record");
    }
    wait_blocks_match_records(&env, ns).await?;
    checker.finish()
}
