//! The IP allocator of IP range mode: which address of a node's blocks to hand out, and the
//! compare-and-swap discipline that makes a duplicate impossible.
//!
//! A pool's CIDRs are split into blocks ([`split`]); a node owns blocks; a block records its
//! taken addresses itself (`IPBlock.spec.allocations`). Every allocation or release reads a
//! block, changes it in memory ([`Block`]) and writes it back only if nobody wrote it in
//! between ([`BlockStore::compare_and_swap`], the API server's resourceVersion check). Two
//! allocators — a deposed leader, the extender's bind, a second manager — can therefore never
//! hand out one address twice: the second write of a block fails and is retried on fresh state.
//! Nothing is rebuilt from pods; the blocks are the truth.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

/// Who holds an address: a StaticIP record, by namespace/name and UID.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Holder {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// Why an allocation or release did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("block {0} has no free address")]
    BlockFull(IpNet),
    #[error("no free block left in the pool for node {0}")]
    PoolExhausted(String),
    #[error("{ip} is not in block {block}")]
    OutsideBlock { ip: IpAddr, block: IpNet },
    #[error("{ip} is held by {holder:?}, not by the releasing record")]
    NotHolder { ip: IpAddr, holder: Option<Holder> },
    #[error("block {0} changed {1} times in a row while writing; giving up")]
    Contention(String, usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why the store of blocks (the API server, for IPBlock objects) failed, by what a caller
/// can do about it; each carries what failed, naming the block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The block does not exist (any more): nothing of it to free.
    #[error("{0}")]
    NotFound(String),
    /// The block changed under a write other than the compare-and-swap absorbs.
    #[error("{0}")]
    Conflict(String),
    /// Anything else: the API server unreachable or refusing, a block that does not parse.
    #[error("{0}")]
    Other(String),
}

/// Splits `cidr` into blocks with prefix length `prefix` (the CIDR itself if it is smaller).
pub fn split(cidr: IpNet, prefix: u8) -> Vec<IpNet> {
    if prefix <= cidr.prefix_len() {
        return vec![cidr.trunc()];
    }
    match cidr.subnets(prefix) {
        Ok(subnets) => subnets.collect(),
        Err(_) => vec![cidr.trunc()],
    }
}

/// The blocks of `cidr` with prefix length `prefix`, lazily: an IPv6 pool may have more
/// blocks than fit in memory, and only the first free ones are ever looked at.
pub fn blocks_of(cidr: IpNet, prefix: u8) -> Box<dyn Iterator<Item = IpNet> + Send> {
    if prefix <= cidr.prefix_len() {
        return Box::new(std::iter::once(cidr.trunc()));
    }
    match cidr.subnets(prefix) {
        Ok(subnets) => Box::new(subnets),
        Err(_) => Box::new(std::iter::once(cidr.trunc())),
    }
}

/// A block of one family of a pool, as an allocation for a record on a node chooses among
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockView {
    pub name: String,
    /// The node that owns the block; None while it is free.
    pub node: Option<String>,
    /// Whether the record already holds an address on it (an allocation whose record write
    /// was lost).
    pub held: bool,
}

/// The blocks an allocation for a record of a pod on `node` tries, in order: the node's
/// blocks the record already holds an address on (reused: nothing is handed out twice),
/// then the node's other blocks, each in the order given. A block of another node — or a
/// free one — is never tried, even if the record holds an address there: that address is
/// not where the pod runs, so it is never written to the record (the sweeper frees it once
/// the record holds others).
pub fn blocks_to_try(blocks: &[BlockView], node: &str) -> Vec<String> {
    let on_node = || blocks.iter().filter(|b| b.node.as_deref() == Some(node));
    on_node()
        .filter(|b| b.held)
        .chain(on_node().filter(|b| !b.held))
        .map(|b| b.name.clone())
        .collect()
}

/// Whether a block goes back to its pool (its node cleared, free for any node to claim):
/// only once its node is gone and it holds no address. A block with addresses stays where
/// it is — its records are placed afresh and free them, or a migration moves it whole.
pub fn returns_to_pool(
    node: Option<&str>,
    allocated: usize,
    node_gone: &dyn Fn(&str) -> bool,
) -> bool {
    allocated == 0 && node.is_some_and(node_gone)
}

/// The name of the IPBlock object of block `cidr` of pool `pool`: the pool, the network
/// address and the prefix length, with `.` and `:` as `-` (`blue-10-20-0-64-26`).
pub fn block_name(pool: &str, cidr: &IpNet) -> String {
    let address: String = cidr
        .network()
        .to_string()
        .chars()
        .map(|c| if c == '.' || c == ':' { '-' } else { c })
        .collect();
    format!("{pool}-{address}-{}", cidr.prefix_len())
}

/// What the StaticIP manager does about a pool: protect it with its finalizer while it
/// lives; once it is deleted, wait while any of its blocks holds an address, then delete
/// its blocks, then let it go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolStep {
    /// Nothing to do.
    None,
    /// Add the protection finalizer.
    Protect,
    /// Deleted, but records hold `held` addresses of it (in `blocks` blocks): wait.
    Wait { held: usize, blocks: usize },
    /// Deleted and no address held: delete these (free) blocks.
    DeleteBlocks(Vec<String>),
    /// Deleted, no block left: remove the finalizer.
    Release,
}

/// The next [`PoolStep`] for a pool (`deleting`: it has a deletion timestamp; `protected`:
/// it carries the finalizer), given its blocks as (name, addresses held).
pub fn pool_step(deleting: bool, protected: bool, blocks: &[(String, usize)]) -> PoolStep {
    match (deleting, protected) {
        (false, false) => PoolStep::Protect,
        (false, true) | (true, false) => PoolStep::None,
        (true, true) => {
            let holding: Vec<usize> = blocks.iter().map(|(_, n)| *n).filter(|n| *n > 0).collect();
            if !holding.is_empty() {
                PoolStep::Wait {
                    held: holding.iter().sum(),
                    blocks: holding.len(),
                }
            } else if !blocks.is_empty() {
                PoolStep::DeleteBlocks(blocks.iter().map(|(name, _)| name.clone()).collect())
            } else {
                PoolStep::Release
            }
        }
    }
}

/// One block's allocation state: a bitmap over its addresses, for constant-time-ish
/// allocation even in large blocks, plus who holds each taken address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub cidr: IpNet,
    /// Bit i set = address `cidr.network() + i` taken or never to be handed out.
    used: Vec<u64>,
    holders: BTreeMap<u64, Holder>,
    /// The same, keyed by holder, so that asking again for a held address costs one lookup.
    by_holder: HashMap<Holder, u64>,
    size: u64,
    /// No bitmap word below this one has a free address: where the search starts.
    first_free_word: SearchHint,
}

/// A search hint, not state: blocks with the same allocations are equal whatever it says.
#[derive(Debug, Clone, Copy, Default)]
struct SearchHint(usize);

impl PartialEq for SearchHint {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for SearchHint {}

fn offset_of(cidr: &IpNet, ip: IpAddr) -> Option<u64> {
    if !cidr.contains(&ip) {
        return None;
    }
    match (cidr.network(), ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => Some(u64::from(u32::from(ip) - u32::from(net))),
        (IpAddr::V6(net), IpAddr::V6(ip)) => u64::try_from(u128::from(ip) - u128::from(net)).ok(),
        _ => None,
    }
}

fn address_at(cidr: &IpNet, offset: u64) -> IpAddr {
    match cidr.network() {
        IpAddr::V4(net) => IpAddr::V4((u32::from(net).wrapping_add(offset as u32)).into()),
        IpAddr::V6(net) => IpAddr::V6((u128::from(net).wrapping_add(u128::from(offset))).into()),
    }
}

/// Largest block handled in memory: 2^20 addresses (a /12 of IPv4, a /108 of IPv6).
const MAX_BLOCK_BITS: u8 = 20;

impl Block {
    /// An empty block. Its first and last addresses (network and broadcast for IPv4, the
    /// subnet-router anycast and last for IPv6) and every address in `reserved` are never
    /// handed out.
    pub fn new(cidr: IpNet, reserved: &[IpAddr]) -> Result<Self, AllocError> {
        let bits = cidr.max_prefix_len() - cidr.prefix_len();
        if !(2..=MAX_BLOCK_BITS).contains(&bits) {
            return Err(StoreError::Other(format!(
                "block {cidr} must hold between 4 and 2^{MAX_BLOCK_BITS} addresses"
            ))
            .into());
        }
        let size = 1u64 << bits;
        let words = usize::try_from(size.div_ceil(64)).unwrap_or(0);
        let mut block = Self {
            cidr: cidr.trunc(),
            used: vec![0; words],
            holders: BTreeMap::new(),
            by_holder: HashMap::new(),
            size,
            first_free_word: SearchHint(0),
        };
        block.mark(0);
        block.mark(size - 1);
        for ip in reserved {
            if let Some(offset) = offset_of(&block.cidr, *ip) {
                block.mark(offset);
            }
        }
        Ok(block)
    }

    /// A block with existing allocations, as read from its object.
    pub fn with_allocations(
        cidr: IpNet,
        reserved: &[IpAddr],
        allocations: impl IntoIterator<Item = (IpAddr, Holder)>,
    ) -> Result<Self, AllocError> {
        let mut block = Self::new(cidr, reserved)?;
        for (ip, holder) in allocations {
            let offset = offset_of(&block.cidr, ip).ok_or(AllocError::OutsideBlock {
                ip,
                block: block.cidr,
            })?;
            block.mark(offset);
            // A record holds one address per block; should a block say otherwise, every
            // address stays taken and the holder is answered with the last one.
            block.by_holder.insert(holder.clone(), offset);
            block.holders.insert(offset, holder);
        }
        Ok(block)
    }

    fn mark(&mut self, offset: u64) {
        self.used[(offset / 64) as usize] |= 1 << (offset % 64);
    }

    fn clear(&mut self, offset: u64) {
        self.used[(offset / 64) as usize] &= !(1 << (offset % 64));
    }

    /// Hands out the lowest free address to `holder`; the address it already holds, if any.
    pub fn allocate(&mut self, holder: &Holder) -> Result<IpAddr, AllocError> {
        if let Some(offset) = self.by_holder.get(holder) {
            return Ok(address_at(&self.cidr, *offset));
        }
        let start = self.first_free_word.0;
        for (word_index, word) in self.used.iter().enumerate().skip(start) {
            if *word != u64::MAX {
                self.first_free_word = SearchHint(word_index);
                let offset = word_index as u64 * 64 + u64::from(word.trailing_ones());
                if offset >= self.size {
                    break;
                }
                self.mark(offset);
                self.holders.insert(offset, holder.clone());
                self.by_holder.insert(holder.clone(), offset);
                return Ok(address_at(&self.cidr, offset));
            }
        }
        Err(AllocError::BlockFull(self.cidr))
    }

    /// Frees `ip` if `holder` holds it (same record UID). Releasing an address that is free
    /// already is a no-op, so a release can be retried.
    pub fn release(&mut self, ip: IpAddr, holder: &Holder) -> Result<(), AllocError> {
        let offset = offset_of(&self.cidr, ip).ok_or(AllocError::OutsideBlock {
            ip,
            block: self.cidr,
        })?;
        match self.holders.get(&offset) {
            None => Ok(()),
            Some(h) if h == holder => {
                self.holders.remove(&offset);
                self.by_holder.remove(holder);
                self.clear(offset);
                self.first_free_word =
                    SearchHint(self.first_free_word.0.min((offset / 64) as usize));
                Ok(())
            }
            Some(other) => Err(AllocError::NotHolder {
                ip,
                holder: Some(other.clone()),
            }),
        }
    }

    /// Taken addresses and their holders.
    pub fn allocations(&self) -> impl Iterator<Item = (IpAddr, &Holder)> {
        self.holders
            .iter()
            .map(|(offset, h)| (address_at(&self.cidr, *offset), h))
    }

    /// Addresses that can be handed out in total.
    pub fn capacity(&self) -> u64 {
        let unusable = self
            .used
            .iter()
            .map(|w| u64::from(w.count_ones()))
            .sum::<u64>()
            - self.holders.len() as u64;
        self.size - unusable
    }

    /// Addresses taken.
    pub fn allocated(&self) -> u64 {
        self.holders.len() as u64
    }
}

/// A versioned store of blocks: what the API server is for IPBlock objects. Versions are
/// opaque (a resourceVersion); only equality matters.
pub trait BlockStore {
    type Version: Clone + Send;

    /// The block and its version.
    fn read(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<(Block, Self::Version), AllocError>> + Send;

    /// Writes `block` only if it is still at `version`; `Ok(false)` on a conflict.
    fn compare_and_swap(
        &self,
        name: &str,
        version: Self::Version,
        block: Block,
    ) -> impl Future<Output = Result<bool, AllocError>> + Send;
}

/// How often a write is retried on fresh state before giving up.
pub const MAX_CAS_ATTEMPTS: usize = 16;

/// Allocates an address for `holder` from block `name`: read, change, compare-and-swap,
/// retried on conflicts.
pub async fn allocate_in(
    store: &impl BlockStore,
    name: &str,
    holder: &Holder,
) -> Result<IpAddr, AllocError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (mut block, version) = store.read(name).await?;
        let before = block.allocated();
        let ip = block.allocate(holder)?;
        // Already held: nothing to write.
        if block.allocated() == before || store.compare_and_swap(name, version, block).await? {
            return Ok(ip);
        }
    }
    Err(AllocError::Contention(name.to_string(), MAX_CAS_ATTEMPTS))
}

/// Releases `ip` of `holder` in block `name`, with the same discipline.
pub async fn release_in(
    store: &impl BlockStore,
    name: &str,
    ip: IpAddr,
    holder: &Holder,
) -> Result<(), AllocError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let (mut block, version) = store.read(name).await?;
        let before = block.allocated();
        block.release(ip, holder)?;
        if block.allocated() == before || store.compare_and_swap(name, version, block).await? {
            return Ok(());
        }
    }
    Err(AllocError::Contention(name.to_string(), MAX_CAS_ATTEMPTS))
}

#[cfg(test)]
mod tests;
