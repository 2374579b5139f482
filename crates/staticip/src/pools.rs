//! Pool protection: a StaticIPPool carries the finalizer `jke.jdcloud.com/pool-protection`
//! while it lives. Deleted, it stays (Terminating) while any of its blocks holds an address,
//! as a PersistentVolumeClaim in use waits for its pods; no address is handed out of it
//! meanwhile (`Ipam::assign`). Once none is held its blocks are deleted, each at the
//! resourceVersion judged free (an allocation in between makes the delete fail and the
//! pool wait again), and the finalizer goes. What to do is `ests_core::allocator::pool_step`.

use std::sync::Arc;
use std::time::Duration;

use ests_api::{IPBlock, StaticIPPool, keys};
use ests_core::allocator::{PoolStep, pool_step};
use ests_runtime::finalizers;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Preconditions};
use kube::runtime::controller::Action;

use crate::{Context, Error};

/// How often a deleted pool whose addresses are held is looked at again.
const WAIT: Duration = Duration::from_secs(5);

/// One reconcile, in a span naming its object: every log line of it says which pool.
#[tracing::instrument(name = "reconcile", skip_all, fields(controller = "pool", pool = %pool.name_any()))]
pub async fn reconcile(pool: Arc<StaticIPPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = pool.name_any();
    let client = ctx.ipam.client.clone();
    let deleting = pool.metadata.deletion_timestamp.is_some();
    let protected = finalizers::has(pool.as_ref(), keys::POOL_PROTECTION_FINALIZER);
    // The blocks of a deleted pool are read from the API server, not the cache: its last
    // allocation must not be missed.
    let blocks: Vec<IPBlock> = if deleting && protected {
        Api::<IPBlock>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| Error::kube(format!("listing the IPBlocks of StaticIPPool {name}"), e))?
            .items
            .into_iter()
            .filter(|b| b.spec.pool == name)
            .collect()
    } else {
        Vec::new()
    };
    let held: Vec<(String, usize)> = blocks
        .iter()
        .map(|b| (b.name_any(), b.spec.allocations.len()))
        .collect();
    let pools: Api<StaticIPPool> = Api::all(client.clone());
    match pool_step(deleting, protected, &held) {
        PoolStep::None => Ok(Action::await_change()),
        PoolStep::Protect => protect(&pools, &pool, true).await,
        PoolStep::Wait { held, blocks } => {
            tracing::info!(
                held,
                blocks,
                "StaticIPPool deleted; waiting until no record holds an address of it"
            );
            Ok(Action::requeue(WAIT))
        }
        PoolStep::DeleteBlocks(names) => {
            let api: Api<IPBlock> = Api::all(client);
            for block in blocks.iter().filter(|b| names.contains(&b.name_any())) {
                let block_name = block.name_any();
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: block.uid(),
                        resource_version: block.resource_version(),
                    }),
                    ..DeleteParams::default()
                };
                match api.delete(&block_name, &params).await {
                    Ok(_) => {
                        tracing::info!(block = %block_name, "deleted a free IPBlock of a deleted StaticIPPool")
                    }
                    // Changed (an allocation) or gone since it was read: judged again.
                    Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => {}
                    Err(e) => {
                        return Err(Error::kube(
                            format!("deleting IPBlock {block_name} of StaticIPPool {name}"),
                            e,
                        ));
                    }
                }
            }
            Ok(Action::requeue(Duration::from_secs(1)))
        }
        PoolStep::Release => {
            tracing::info!("StaticIPPool deleted and no address of it held; letting it go");
            protect(&pools, &pool, false).await
        }
    }
}

/// Adds or removes the protection finalizer at the resourceVersion it was judged at (the
/// pool waits on its finalizer while addresses are held, which kube-runtime's `finalizer`
/// helper cannot express: see `ests_runtime::finalizers`).
async fn protect(api: &Api<StaticIPPool>, pool: &StaticIPPool, on: bool) -> Result<Action, Error> {
    if finalizers::set(api, pool, keys::POOL_PROTECTION_FINALIZER, on).await? {
        Ok(Action::await_change())
    } else {
        Ok(Action::requeue(Duration::from_secs(1)))
    }
}

pub fn error_policy(pool: Arc<StaticIPPool>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .with_label_values(&["pool", error.label()])
        .inc();
    tracing::warn!(pool = %pool.name_any(), %error, "pool protection failed");
    Action::requeue(Duration::from_secs(5))
}
