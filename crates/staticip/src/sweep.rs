//! The block sweeper: one reconcile per IPBlock. It frees addresses whose holder is gone
//! or never took them (an allocation whose record write was lost: a crash, a lost race),
//! gives the empty blocks of deleted nodes back to their pool, keeps the block's status
//! counts, and exports per-block and per-pool address metrics.
//!
//! An address is freed only when the API server itself says its holder record no longer
//! exists (or exists under another UID), or when the holder's addresses are fixed and do
//! not include it: `spec.ips` cannot change once set, so an allocation in flight (record
//! without addresses yet) is never mistaken for a leak. Every free is a compare-and-swap
//! that re-checks the holder.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ests_api::{IPBlock, StaticIP};
use ests_core::allocator::{AllocError, Holder, release_in, returns_to_pool};
use ests_core::static_ip::record_ips;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crate::blocks::ApiBlockStore;
use crate::{Context, Error};

/// Sweep every block at least this often.
const RESYNC: Duration = Duration::from_secs(30);

/// Whether the allocation of `ip` to `holder` is still wanted, as far as the caches know.
enum Verdict {
    Keep,
    Leaked,
    AskServer,
}

fn verdict(record: Option<&StaticIP>, ip: IpAddr, holder: &Holder) -> Verdict {
    match record {
        Some(r) if r.uid().as_deref() == Some(holder.uid.as_str()) => {
            let held = record_ips(r);
            if held.is_empty() || held.contains(&ip) {
                Verdict::Keep
            } else {
                Verdict::Leaked
            }
        }
        _ => Verdict::AskServer,
    }
}

/// One reconcile, in a span naming its object: every log line of it says which block.
#[tracing::instrument(name = "reconcile", skip_all, fields(controller = "block", block = %block.name_any()))]
pub async fn reconcile(block: Arc<IPBlock>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Judging holders needs the record cache filled.
    ctx.caches_listed().await;
    let name = block.name_any();
    let pool = block.spec.pool.clone();
    let store = ApiBlockStore::new(ctx.ipam.client.clone(), ctx.ipam.reserved(&pool))
        .counting_conflicts(ctx.metrics.conflicts.with_label_values(&["IPBlock"]));
    for (ip, a) in &block.spec.allocations {
        let Ok(ip) = ip.parse::<IpAddr>() else {
            continue;
        };
        let holder = Holder {
            namespace: a.namespace.clone(),
            name: a.name.clone(),
            uid: a.uid.clone(),
        };
        let cached = ctx
            .records
            .get(&ObjectRef::new(&holder.name).within(&holder.namespace));
        let leaked = match verdict(cached.as_deref(), ip, &holder) {
            Verdict::Keep => false,
            Verdict::Leaked => true,
            Verdict::AskServer => {
                let api: Api<StaticIP> =
                    Api::namespaced(ctx.ipam.client.clone(), &holder.namespace);
                let live = api.get_opt(&holder.name).await.map_err(|e| {
                    Error::kube(
                        format!("reading StaticIP {}/{}", holder.namespace, holder.name),
                        e,
                    )
                })?;
                matches!(
                    verdict(live.as_ref(), ip, &holder),
                    Verdict::AskServer | Verdict::Leaked
                )
            }
        };
        if !leaked {
            continue;
        }
        match release_in(&store, &name, ip, &holder).await {
            Ok(()) => {
                tracing::info!(%ip, holder = %format!("{}/{} ({})", holder.namespace, holder.name, holder.uid), "freed a leaked address");
                ctx.metrics
                    .releases
                    .with_label_values(&[pool.as_str(), "leaked"])
                    .inc();
            }
            Err(AllocError::NotHolder { .. }) => {}
            Err(e) => {
                return Err(Error::other(
                    crate::ALLOCATION,
                    format!("freeing {ip} on IPBlock {name}: {e}"),
                ));
            }
        }
    }

    // A deleted node's empty block goes back to the pool, once the API server confirms the
    // node is gone. The write carries the block's resourceVersion: an allocation made
    // meanwhile keeps the block where it is.
    let node = block.spec.node.as_deref();
    if returns_to_pool(node, block.spec.allocations.len(), &|n| ctx.node_gone(n))
        && let Some(node) = node
        && ctx.node_deleted(node).await?
    {
        let mut freed = (*block).clone();
        freed.spec.node = None;
        let api: Api<IPBlock> = Api::all(ctx.ipam.client.clone());
        match api.replace(&name, &PostParams::default(), &freed).await {
            Ok(_) => {
                tracing::info!(%node, "gave the empty block of a deleted node back to its pool");
            }
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => {
                ctx.metrics.conflicts.with_label_values(&["IPBlock"]).inc();
            }
            Err(e) => {
                return Err(Error::kube(
                    format!("giving IPBlock {name} of deleted node {node} back to its pool"),
                    e,
                ));
            }
        }
    }

    // Counts and metrics, from the block as last read.
    let block_state = store
        .to_block(&block)
        .map_err(|e| Error::other(crate::ALLOCATION, format!("IPBlock {name}: {e}")))?;
    let capacity = i64::try_from(block_state.capacity()).unwrap_or(i64::MAX);
    let allocated = i64::try_from(block_state.allocated()).unwrap_or(i64::MAX);
    ctx.metrics
        .block_addresses
        .with_label_values(&[pool.as_str(), name.as_str(), "used"])
        .set(allocated);
    ctx.metrics
        .block_addresses
        .with_label_values(&[pool.as_str(), name.as_str(), "free"])
        .set(capacity - allocated);
    let (mut used, mut total) = (0i64, 0i64);
    for b in ctx
        .ipam
        .blocks
        .state()
        .iter()
        .filter(|b| b.spec.pool == pool)
    {
        if let Ok(state) = store.to_block(b) {
            used += i64::try_from(state.allocated()).unwrap_or(0);
            total += i64::try_from(state.capacity()).unwrap_or(0);
        }
    }
    ctx.metrics
        .pool_addresses
        .with_label_values(&[pool.as_str(), "used"])
        .set(used);
    ctx.metrics
        .pool_addresses
        .with_label_values(&[pool.as_str(), "free"])
        .set(total - used);

    let current = block.status.as_ref().map(|s| (s.capacity, s.allocated));
    if current != Some((capacity, allocated)) {
        let api: Api<IPBlock> = Api::all(ctx.ipam.client.clone());
        let patch = json!({"status": {"capacity": capacity, "allocated": allocated}});
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => {
                return Err(Error::kube(
                    format!("writing the status of IPBlock {name}"),
                    e,
                ));
            }
        }
    }
    Ok(Action::requeue(RESYNC))
}

pub fn error_policy(block: Arc<IPBlock>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&["block", error.label()])
        .inc();
    tracing::warn!(block = %block.name_any(), %error, "sweep failed");
    Action::requeue(Duration::from_secs(5))
}
