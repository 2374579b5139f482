//! StaticIPPool edits the real kube-apiserver refuses, because they would hand one address
//! to two records: block sizes the allocator cannot serve or whose allocation map cannot fit
//! in one object, a live pool's CIDRs removed or changed or its block sizes changed, a pool
//! overlapping another (the admission webhook, which sees every pool), and a pool deleted
//! while its addresses are held (it waits, Terminating, until they are released).

mod support;

use std::time::Duration;

use ests_api::{IPBlock, StaticIP, StaticIPPool, keys};
use ests_testenv::resources::apply_value;
use ests_testenv::{LogsOnFailure, wait_for};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use support::*;
use tokio::sync::OnceCell;

const T: Duration = Duration::from_secs(120);

fn pool(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1",
        "kind": "StaticIPPool",
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// Creates `object` (for real, or as a server-side dry run); the refusal message, or None
/// if it was accepted.
async fn create(env: &Env, object: &Value, dry_run: bool) -> anyhow::Result<Option<String>> {
    ests_testenv::resources::create_refusal(&env.client, object, None, dry_run).await
}

/// Merge-patches pool `name`; the refusal message, or None if it was accepted.
async fn patch_pool(env: &Env, name: &str, patch: Value) -> anyhow::Result<Option<String>> {
    let api: Api<StaticIPPool> = Api::all(env.client.clone());
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(status)) => Ok(Some(status.message.clone())),
        Err(e) => Err(e.into()),
    }
}

/// The webhook (once per test binary) on the control plane with ests installed.
async fn webhook_env() -> anyhow::Result<Env> {
    static STARTED: OnceCell<()> = OnceCell::const_new();
    let env = env().await?;
    STARTED.get_or_try_init(|| start_webhook(&env)).await?;
    Ok(env)
}

#[tokio::test]
async fn block_prefix_lengths_the_allocator_cannot_serve_are_refused() -> anyhow::Result<()> {
    let env = bare_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let cases = [
        // 2^24 addresses: the allocator handles at most 2^20 in one block.
        ("ipv6BlockPrefixLength", 104, false),
        ("ipv6BlockPrefixLength", 107, false),
        // 2^11+ allocations of worst-case records exceed etcd's 1.5 MiB object limit.
        ("ipv6BlockPrefixLength", 116, false),
        ("ipv6BlockPrefixLength", 117, true),
        ("ipv6BlockPrefixLength", 126, true),
        ("ipv6BlockPrefixLength", 127, false),
        ("ipv4BlockPrefixLength", 16, false),
        ("ipv4BlockPrefixLength", 20, false),
        ("ipv4BlockPrefixLength", 21, true),
        ("ipv4BlockPrefixLength", 30, true),
        ("ipv4BlockPrefixLength", 31, false),
    ];
    let mut failures = Vec::new();
    for (field, prefix, accepted) in cases {
        let object = pool(
            "prefix-bounds",
            json!({"cidrs": ["172.31.0.0/16", "fd00:31::/64"], field: prefix}),
        );
        match (create(&env, &object, true).await?, accepted) {
            (None, true) => {}
            (Some(m), false) if m.contains(&format!("spec.{field}")) => {}
            (None, false) => failures.push(format!("{field} {prefix}: accepted")),
            (Some(m), _) => failures.push(format!("{field} {prefix}: refused: {m}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    Ok(())
}

#[tokio::test]
async fn a_live_pools_cidrs_may_only_be_appended_and_its_block_sizes_never_change()
-> anyhow::Result<()> {
    let env = bare_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let name = "live-edits";
    assert_eq!(
        create(
            &env,
            &pool(name, json!({"cidrs": ["172.29.0.0/24", "fd00:29::/120"]})),
            false
        )
        .await?,
        None
    );
    let refused = [
        (
            json!({"spec": {"ipv4BlockPrefixLength": 27}}),
            "spec.ipv4BlockPrefixLength",
        ),
        (
            json!({"spec": {"ipv6BlockPrefixLength": 121}}),
            "spec.ipv6BlockPrefixLength",
        ),
        (json!({"spec": {"cidrs": ["172.29.0.0/24"]}}), "spec.cidrs"),
        (
            json!({"spec": {"cidrs": ["172.29.0.0/25", "fd00:29::/120"]}}),
            "spec.cidrs",
        ),
        (
            json!({"spec": {"cidrs": ["172.29.0.0/23", "fd00:29::/120"]}}),
            "spec.cidrs",
        ),
    ];
    let mut failures = Vec::new();
    for (patch, field) in &refused {
        match patch_pool(&env, name, patch.clone()).await? {
            None => failures.push(format!("{patch}: accepted")),
            Some(m) if !m.contains(field) => failures.push(format!("{patch}: {m}")),
            Some(_) => {}
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Appending a CIDR and changing the reserved addresses are fine.
    assert_eq!(
        patch_pool(
            &env,
            name,
            json!({"spec": {"cidrs": ["172.29.0.0/24", "fd00:29::/120", "172.29.1.0/24"], "reservedIPs": ["172.29.0.1"]}})
        )
        .await?,
        None
    );
    Api::<StaticIPPool>::all(env.client.clone())
        .delete(name, &DeleteParams::default())
        .await?;
    Ok(())
}

#[tokio::test]
async fn overlapping_pools_are_refused_naming_both_pools_and_the_overlap() -> anyhow::Result<()> {
    let env = webhook_env().await?;
    let _logs = LogsOnFailure(env.plane);
    let first = pool(
        "overlap-first",
        json!({"cidrs": ["172.30.0.0/24", "fd00:30::/112"], "reservedIPs": ["172.30.0.1"]}),
    );
    // The webhook answers only once its pool cache has listed.
    wait_for("the pool webhook admits a pool", T, || async {
        Ok(create(&env, &first, false).await?.is_none().then_some(()))
    })
    .await?;
    let cases = [
        (
            json!({"cidrs": ["172.30.0.0/24"]}),
            "172.30.0.0/24 overlaps 172.30.0.0/24",
        ),
        (
            json!({"cidrs": ["10.99.0.0/24", "172.30.0.128/25"]}),
            "172.30.0.128/25 overlaps 172.30.0.0/24",
        ),
        (
            json!({"cidrs": ["172.16.0.0/12"]}),
            "172.16.0.0/12 overlaps 172.30.0.0/24",
        ),
        (
            json!({"cidrs": ["fd00:30::ff00/120"]}),
            "fd00:30::ff00/120 overlaps fd00:30::/112",
        ),
    ];
    let mut failures = Vec::new();
    for (spec, overlap) in &cases {
        match wait_for_refusal(&env, &pool("overlap-second", spec.clone())).await? {
            None => failures.push(format!("{spec}: accepted")),
            Some(m)
                if !(m.contains("spec.cidrs")
                    && m.contains("overlap-second")
                    && m.contains("StaticIPPool overlap-first")
                    && m.contains(overlap)) =>
            {
                failures.push(format!("{spec}: {m}"))
            }
            Some(_) => {}
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // A pool beside it is accepted, and cannot grow into it.
    assert_eq!(
        create(
            &env,
            &pool("overlap-beside", json!({"cidrs": ["172.30.1.0/24"]})),
            false
        )
        .await?,
        None
    );
    let grown = patch_pool(
        &env,
        "overlap-beside",
        json!({"spec": {"cidrs": ["172.30.1.0/24", "fd00:30::8000/113"]}}),
    )
    .await?;
    assert!(
        grown.as_deref().is_some_and(|m| m.contains("overlap-first")
            && m.contains("fd00:30::8000/113 overlaps fd00:30::/112")),
        "{grown:?}"
    );
    // Updating a pool does not find it overlapping itself.
    assert_eq!(
        patch_pool(
            &env,
            "overlap-first",
            json!({"spec": {"reservedIPs": ["172.30.0.1", "172.30.0.2"]}})
        )
        .await?,
        None
    );
    let api: Api<StaticIPPool> = Api::all(env.client.clone());
    for name in ["overlap-first", "overlap-beside"] {
        api.delete(name, &DeleteParams::default()).await?;
    }
    Ok(())
}

/// A dry-run create's refusal; the webhook's cache may not have seen a pool created a moment
/// ago, so an acceptance is retried for a while.
async fn wait_for_refusal(env: &Env, object: &Value) -> anyhow::Result<Option<String>> {
    let result = wait_for("a refusal", Duration::from_secs(10), || async {
        create(env, object, true).await
    })
    .await;
    match result {
        Ok(message) => Ok(Some(message)),
        Err(_) => create(env, object, true).await,
    }
}

#[tokio::test]
async fn deleting_a_pool_waits_until_its_addresses_are_released() -> anyhow::Result<()> {
    let env = env().await?;
    let _logs = LogsOnFailure(env.plane);
    let name = "deleted-pool";
    let pools: Api<StaticIPPool> = Api::all(env.client.clone());
    apply_value(
        &env.client,
        &pool(name, json!({"cidrs": ["10.44.0.0/24"]})),
        None,
        false,
    )
    .await?;
    let ns = "pool-deletion";
    let sets = namespace(&env, ns).await?;
    let mut set = simple_set("held", 1, "Parallel", 1);
    set["metadata"]["annotations"] = json!({
        keys::STATIC_IP_ENABLE: "true",
        keys::STATIC_IP_POOL: name,
        keys::STATIC_IP_RELEASE_POLICY: "WhenDeleted",
    });
    apply(&env, ns, &set).await?;
    let records: Api<StaticIP> = Api::namespaced(env.client.clone(), ns);
    let ip = wait_for("the record holds an address of the pool", T, || async {
        Ok(records
            .get_opt("held-0")
            .await?
            .and_then(|r| r.spec.ips.first().map(|a| a.ip.clone())))
    })
    .await?;
    assert!(ip.starts_with("10.44.0."), "{ip}");

    pools.delete(name, &DeleteParams::default()).await?;
    // The pool stays, Terminating, while the record holds its address.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let live = pools.get_opt(name).await?;
    assert!(
        live.as_ref()
            .is_some_and(|p| p.metadata.deletion_timestamp.is_some()),
        "the pool went while an address of it is held: {live:?}"
    );
    let record = records.get("held-0").await?;
    assert_eq!(
        record.spec.ips.first().map(|a| a.ip.as_str()),
        Some(ip.as_str())
    );
    // A new record cannot get an address of a pool being deleted.
    sets.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 2}})),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let second = records.get_opt("held-1").await?;
    assert!(
        second.as_ref().is_none_or(|r| r.spec.ips.is_empty()),
        "a record got an address of a pool being deleted: {second:?}"
    );

    // Once the set and its records are gone, so are the pool and its blocks: no record is
    // left Terminating.
    sets.delete("held", &DeleteParams::foreground()).await?;
    wait_for(
        "the records, the pool and its blocks are gone",
        T,
        || async {
            let left = records.list(&ListParams::default()).await?.items;
            let blocks: Vec<_> = Api::<IPBlock>::all(env.client.clone())
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|b| b.spec.pool == name)
                .map(|b| b.name_any())
                .collect();
            let pool = pools.get_opt(name).await?;
            Ok((left.is_empty() && blocks.is_empty() && pool.is_none()).then_some(()))
        },
    )
    .await?;
    Ok(())
}
