//! IP range mode: addresses for a record on a node, from that node's blocks of the record's
//! pool; a node that has none free claims a new block.
//!
//! Every change is a compare-and-swap on one IPBlock object (`ests_core::allocator`), so
//! any number of allocators — this manager's replicas, a deposed leader, the extender's
//! bind — can run at once without ever handing out an address twice. What a record holds is
//! found on the blocks themselves (by the record's UID), so an allocation whose record write
//! was lost to a crash is found and reused, never duplicated.

use std::net::IpAddr;

use ests_api::{IPBlock, IPBlockSpec, StaticIP, StaticIPAddress, StaticIPPool};
use ests_core::allocator::{
    AllocError, BlockView, Holder, MAX_CAS_ATTEMPTS, StoreError, allocate_in, block_name,
    blocks_of, blocks_to_try, release_in,
};
use ests_core::static_ip::{going, record_ips};
use ests_core::validate::pool_usable;
use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::blocks::ApiBlockStore;
use crate::metrics::Metrics;

/// Why a record got no addresses.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("StaticIPPool {0} does not exist")]
    UnknownPool(String),
    #[error("StaticIPPool {pool}: {message}")]
    BadPool { pool: String, message: String },
    #[error("StaticIP {0} is being deleted: it gets no addresses")]
    Going(String),
    #[error(transparent)]
    Alloc(#[from] AllocError),
    #[error(transparent)]
    Kube(#[from] ests_runtime::KubeError),
}

/// How many new blocks one allocation may try to claim before giving up (others claim
/// them at the same time).
const MAX_CLAIMS: usize = 64;

/// What allocation reads and writes.
#[derive(Clone)]
pub struct Ipam {
    pub client: Client,
    pub pools: Store<StaticIPPool>,
    pub blocks: Store<IPBlock>,
    pub metrics: Metrics,
}

/// What [`Ipam::assign_to_record`] did.
#[derive(Debug)]
pub enum Assignment {
    /// The record now holds the addresses: the record as written.
    Written(StaticIP),
    /// The record changed since it was read; the record as it is now (None if it is gone).
    Changed(Option<StaticIP>),
}

/// A pool as allocation reads it.
struct Pool {
    name: String,
    uid: Option<String>,
    cidrs: Vec<IpNet>,
    v4_prefix: u8,
    v6_prefix: u8,
    store: ApiBlockStore,
}

impl Ipam {
    /// The pool's addresses that are never handed out.
    pub fn reserved(&self, pool: &str) -> Vec<IpAddr> {
        self.pools
            .get(&ObjectRef::new(pool))
            .map(|p| {
                p.spec
                    .reserved_ips
                    .iter()
                    .filter_map(|a| a.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether addresses may be handed out of pool `name` (freeing them always may).
    fn may_allocate(&self, name: &str) -> Result<(), IpamError> {
        let pool = self.cached_pool(name)?;
        let bad = |message: String| bad_pool(name, message);
        if pool.metadata.deletion_timestamp.is_some() {
            return Err(bad(
                "metadata.deletionTimestamp: the pool is being deleted; no address of it is handed out".into(),
            ));
        }
        // The webhook refuses overlapping pools, but two created in the same instant can
        // both pass it before its cache holds either: overlapping pools hand out nothing.
        let all = self.pools.state();
        if let Err(overlaps) = pool_usable(&pool, all.iter().map(AsRef::as_ref)) {
            return Err(bad(format!(
                "spec.cidrs: {}; no address is handed out of a pool while it overlaps another",
                overlaps
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(())
    }

    /// Pool `name` from the cache.
    fn cached_pool(&self, name: &str) -> Result<std::sync::Arc<StaticIPPool>, IpamError> {
        self.pools
            .get(&ObjectRef::new(name))
            .ok_or_else(|| IpamError::UnknownPool(name.to_string()))
    }

    fn pool(&self, name: &str) -> Result<Pool, IpamError> {
        let pool = self.cached_pool(name)?;
        let bad = |message: String| bad_pool(name, message);
        let cidrs = pool
            .spec
            .cidrs
            .iter()
            .map(|c| {
                c.parse::<IpNet>()
                    .map_err(|e| bad(format!("spec.cidrs: {c}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let reserved = pool
            .spec
            .reserved_ips
            .iter()
            .map(|a| {
                a.parse::<IpAddr>()
                    .map_err(|e| bad(format!("spec.reservedIPs: {a}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let store = ApiBlockStore::new(self.client.clone(), reserved)
            .counting_conflicts(self.metrics.conflicts.with_label_values(&["IPBlock"]));
        Ok(Pool {
            name: name.to_string(),
            uid: pool.uid(),
            cidrs,
            v4_prefix: pool.spec.ipv4_block_prefix_length,
            v6_prefix: pool.spec.ipv6_block_prefix_length,
            store,
        })
    }

    /// One address per IP family of the record's pool, on `node`'s blocks: all families or
    /// none (a family that fails gives back what the others got).
    pub async fn assign(
        &self,
        record: &StaticIP,
        node: &str,
    ) -> Result<Vec<StaticIPAddress>, IpamError> {
        let pool_name = record.spec.pool.clone().unwrap_or_default();
        let result = self.assign_in_pool(record, &pool_name, node).await;
        let outcome = if result.is_ok() { "success" } else { "error" };
        self.metrics
            .allocations
            .with_label_values(&[pool_name.as_str(), outcome])
            .inc();
        result
    }

    /// [`Ipam::assign`], then the addresses and node written to the record — only if the
    /// record is unchanged since it was read (its resourceVersion). If it changed (another
    /// allocator got there first), the addresses it does not hold go back at once and the
    /// record as it is now is returned; anything a crash leaves behind, the block sweeper
    /// frees.
    pub async fn assign_to_record(
        &self,
        record: &StaticIP,
        node: &str,
    ) -> Result<Assignment, IpamError> {
        let name = record.name_any();
        if going(record) {
            return Err(IpamError::Going(format!(
                "{}/{name}",
                record.namespace().unwrap_or_default()
            )));
        }
        let api: Api<StaticIP> =
            Api::namespaced(self.client.clone(), &record.namespace().unwrap_or_default());
        let addresses = self.assign(record, node).await?;
        let patch = json!({
            "metadata": {"resourceVersion": record.resource_version()},
            "spec": {"ips": addresses, "node": node},
        });
        let lost = match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(written) => return Ok(Assignment::Written(written)),
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => {
                self.metrics
                    .conflicts
                    .with_label_values(&["StaticIP"])
                    .inc();
                s.is_conflict()
            }
            Err(source) => {
                return Err(IpamError::Kube(ests_runtime::KubeError::new(
                    format!("writing the addresses of StaticIP {name}"),
                    source,
                )));
            }
        };
        let fresh = if lost {
            api.get_opt(&name)
                .await
                .map_err(ests_runtime::KubeError::doing(format!(
                    "reading StaticIP {name}"
                )))?
        } else {
            None
        };
        let same = fresh.as_ref().filter(|f| f.uid() == record.uid());
        if same.is_some_and(|f| f.spec.ips.is_empty()) {
            // The record is still waiting for addresses (only its status changed): what it
            // got stays held under its UID and is reused by the next attempt.
            return Ok(Assignment::Changed(fresh));
        }
        let kept = same.map(record_ips).unwrap_or_default();
        let extra: Vec<StaticIPAddress> = addresses
            .into_iter()
            .filter(|a| a.ip.parse().is_ok_and(|ip| !kept.contains(&ip)))
            .collect();
        if !extra.is_empty() {
            tracing::info!(record = %name, ips = ?extra, "lost the race for the record; giving the addresses back");
            self.give_back_unkept(record, &extra).await?;
        }
        Ok(Assignment::Changed(fresh))
    }

    async fn assign_in_pool(
        &self,
        record: &StaticIP,
        pool_name: &str,
        node: &str,
    ) -> Result<Vec<StaticIPAddress>, IpamError> {
        let pool = self.pool(pool_name)?;
        self.may_allocate(pool_name)?;
        let holder = holder_of(record);
        let mut got: Vec<StaticIPAddress> = Vec::new();
        for v6 in [false, true] {
            let cidrs: Vec<IpNet> = pool
                .cidrs
                .iter()
                .filter(|c| matches!(c, IpNet::V6(_)) == v6)
                .copied()
                .collect();
            if cidrs.is_empty() {
                continue;
            }
            // Both families or neither: the record is written only with all of them. What
            // one family got before another failed stays held by the record on its block —
            // never given back here, as it may be an address the record already holds under
            // a write this cache has not seen — and is reused by the next attempt, or freed
            // with the record.
            got.push(self.assign_family(&pool, &cidrs, v6, node, &holder).await?);
        }
        if got.is_empty() {
            return Err(IpamError::BadPool {
                pool: pool_name.to_string(),
                message: "spec.cidrs is empty".into(),
            });
        }
        Ok(got)
    }

    async fn assign_family(
        &self,
        pool: &Pool,
        cidrs: &[IpNet],
        v6: bool,
        node: &str,
        holder: &Holder,
    ) -> Result<StaticIPAddress, IpamError> {
        let in_family = |b: &IPBlock| {
            b.spec.pool == pool.name
                && b.spec
                    .cidr
                    .parse::<IpNet>()
                    .is_ok_and(|c| matches!(c, IpNet::V6(_)) == v6)
        };
        let mut cached: Vec<_> = self
            .blocks
            .state()
            .into_iter()
            .filter(|b| in_family(b))
            .collect();
        cached.sort_by_key(|b| b.spec.cidr.parse::<IpNet>().ok());

        // The node's blocks, lowest first, those with an address this record got before
        // (whose record write did not happen) first: it is reused. One on another node's
        // block is never used (`blocks_to_try`).
        let views: Vec<BlockView> = cached
            .iter()
            .map(|b| BlockView {
                name: b.name_any(),
                node: b.spec.node.clone(),
                held: b.spec.allocations.values().any(|a| a.uid == holder.uid),
            })
            .collect();
        for name in blocks_to_try(&views, node) {
            match allocate_in(&pool.store, &name, holder).await {
                Ok(ip) => return Ok(address(ip, name)),
                Err(AllocError::BlockFull(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        // A new block for the node.
        for _ in 0..MAX_CLAIMS {
            let name = self.claim_block(pool, cidrs, v6, node).await?;
            match allocate_in(&pool.store, &name, holder).await {
                Ok(ip) => return Ok(address(ip, name)),
                Err(AllocError::BlockFull(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AllocError::PoolExhausted(node.to_string()).into())
    }

    /// Gives `node` a block of the pool: a free existing one (compare-and-swap on its
    /// owner), or a new object (creation is atomic: of two claimants one gets
    /// AlreadyExists and moves on).
    async fn claim_block(
        &self,
        pool: &Pool,
        cidrs: &[IpNet],
        v6: bool,
        node: &str,
    ) -> Result<String, IpamError> {
        let api: Api<IPBlock> = Api::all(self.client.clone());
        let free: Vec<String> = self
            .blocks
            .state()
            .iter()
            .filter(|b| b.spec.pool == pool.name && b.spec.node.is_none())
            .filter(|b| {
                b.spec
                    .cidr
                    .parse::<IpNet>()
                    .is_ok_and(|c| matches!(c, IpNet::V6(_)) == v6)
            })
            .map(|b| b.name_any())
            .collect();
        for name in free {
            let mut block = match api.get(&name).await {
                Ok(block) => block,
                Err(kube::Error::Api(s)) if s.is_not_found() => continue,
                Err(source) => {
                    return Err(IpamError::Kube(ests_runtime::KubeError::new(
                        format!("reading IPBlock {name}"),
                        source,
                    )));
                }
            };
            if block.spec.node.is_some() {
                continue;
            }
            block.spec.node = Some(node.to_string());
            match api.replace(&name, &PostParams::default(), &block).await {
                Ok(_) => return Ok(name),
                Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => {
                    self.metrics.conflicts.with_label_values(&["IPBlock"]).inc();
                }
                Err(source) => {
                    return Err(IpamError::Kube(ests_runtime::KubeError::new(
                        format!("claiming IPBlock {name}"),
                        source,
                    )));
                }
            }
        }
        let prefix = if v6 { pool.v6_prefix } else { pool.v4_prefix };
        let mut attempts = 0;
        for cidr in cidrs {
            for block in blocks_of(*cidr, prefix) {
                let name = block_name(&pool.name, &block);
                if self.blocks.get(&ObjectRef::new(&name)).is_some() {
                    continue;
                }
                attempts += 1;
                if attempts > MAX_CAS_ATTEMPTS * 4 {
                    return Err(AllocError::Contention(pool.name.clone(), attempts).into());
                }
                let object = IPBlock {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        // Should the pool go without its finalizer, its blocks go with it.
                        owner_references: pool.uid.clone().map(|uid| {
                            vec![OwnerReference {
                                api_version: format!("{}/{}", ests_api::GROUP, ests_api::VERSION),
                                kind: "StaticIPPool".into(),
                                name: pool.name.clone(),
                                uid,
                                ..OwnerReference::default()
                            }]
                        }),
                        ..ObjectMeta::default()
                    },
                    spec: IPBlockSpec {
                        pool: pool.name.clone(),
                        cidr: block.to_string(),
                        node: Some(node.to_string()),
                        allocations: Default::default(),
                    },
                    status: None,
                };
                match api.create(&PostParams::default(), &object).await {
                    Ok(_) => {
                        tracing::info!(block = %name, %node, "claimed a new IPBlock");
                        return Ok(name);
                    }
                    Err(kube::Error::Api(s)) if s.is_already_exists() => {
                        self.metrics.conflicts.with_label_values(&["IPBlock"]).inc();
                    }
                    Err(source) => {
                        return Err(IpamError::Kube(ests_runtime::KubeError::new(
                            format!("creating IPBlock {name}"),
                            source,
                        )));
                    }
                }
            }
        }
        Err(AllocError::PoolExhausted(node.to_string()).into())
    }

    /// Frees exactly `addresses` of `holder` (and nothing else it holds); failures are left
    /// to the block sweeper.
    async fn give_back(&self, pool: &Pool, addresses: &[StaticIPAddress], holder: &Holder) {
        for a in addresses {
            let (Ok(ip), Some(block)) = (a.ip.parse::<IpAddr>(), a.block.as_deref()) else {
                continue;
            };
            match release_in(&pool.store, block, ip, holder).await {
                Ok(()) => self
                    .metrics
                    .releases
                    .with_label_values(&[pool.name.as_str(), "given-back"])
                    .inc(),
                Err(e) => {
                    tracing::warn!(%ip, block, error = %e, "giving back an address; the sweeper will")
                }
            }
        }
    }

    /// Frees exactly `addresses` that `record` got but does not keep (it lost a race for
    /// its own record to another allocator, which wrote other addresses first).
    pub async fn give_back_unkept(
        &self,
        record: &StaticIP,
        addresses: &[StaticIPAddress],
    ) -> Result<(), IpamError> {
        let pool = self.pool(record.spec.pool.as_deref().unwrap_or_default())?;
        self.give_back(&pool, addresses, &holder_of(record)).await;
        Ok(())
    }

    /// Frees every address `record` holds on the blocks of its pool: those in its spec and
    /// any an interrupted allocation left behind. Only for a record that is going (its
    /// deletion finalizer): every address held under its UID is freed. Returns how many were
    /// freed.
    pub async fn release(&self, record: &StaticIP, reason: &str) -> Result<usize, IpamError> {
        let pool_name = record.spec.pool.clone().unwrap_or_default();
        // Freeing needs only the blocks: a record outliving its pool (deleted before the
        // manager protected it) is not left Terminating.
        let store = ApiBlockStore::new(self.client.clone(), self.reserved(&pool_name))
            .counting_conflicts(self.metrics.conflicts.with_label_values(&["IPBlock"]));
        let holder = holder_of(record);
        let mut targets: Vec<(String, IpAddr)> = record
            .spec
            .ips
            .iter()
            .filter_map(|a| Some((a.block.clone()?, a.ip.parse().ok()?)))
            .collect();
        for block in self.blocks.state() {
            for (ip, a) in &block.spec.allocations {
                if a.uid == holder.uid
                    && let Ok(ip) = ip.parse()
                {
                    targets.push((block.name_any(), ip));
                }
            }
        }
        targets.sort();
        targets.dedup();
        let mut freed = 0;
        for (block, ip) in targets {
            match release_in(&store, &block, ip, &holder).await {
                Ok(()) => freed += 1,
                // Someone else's now, or the block is gone: nothing of ours to free.
                Err(AllocError::NotHolder { .. }) => {}
                Err(AllocError::Store(StoreError::NotFound(_))) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.metrics
            .releases
            .with_label_values(&[pool_name.as_str(), reason])
            .inc_by(freed as u64);
        Ok(freed)
    }
}

/// The holder an address of `record` is recorded under.
pub fn holder_of(record: &StaticIP) -> Holder {
    Holder {
        namespace: record.namespace().unwrap_or_default(),
        name: record.name_any(),
        uid: record.uid().unwrap_or_default(),
    }
}

fn address(ip: IpAddr, block: String) -> StaticIPAddress {
    StaticIPAddress {
        ip: ip.to_string(),
        block: Some(block),
    }
}

/// Why pool `pool` cannot serve, naming the field.
fn bad_pool(pool: &str, message: String) -> IpamError {
    IpamError::BadPool {
        pool: pool.to_string(),
        message,
    }
}
