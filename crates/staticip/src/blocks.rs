//! IPBlock objects as a [`BlockStore`]: a read is a GET, a write is a replace carrying the
//! resourceVersion that was read, which the API server refuses with 409 Conflict if anyone
//! wrote the block in between. That refusal is what makes duplicate addresses impossible,
//! whatever the number of allocators and whether they believe they lead.

use std::net::IpAddr;

use ests_api::IPBlock;
use ests_api::ip_pool::IPAllocation;
use ests_core::allocator::{AllocError, Block, BlockStore, Holder, StoreError};
use ipnet::IpNet;
use kube::api::{Api, PostParams};

/// The IPBlocks of one pool.
#[derive(Clone)]
pub struct ApiBlockStore {
    api: Api<IPBlock>,
    /// Addresses of the pool never handed out (gateways).
    reserved: Vec<IpAddr>,
    /// Counts writes refused because the block changed since it was read.
    conflicts: Option<prometheus::IntCounter>,
}

/// A failed call on IPBlock `name`, by what its status says: a missing block and a
/// conflicting write are told apart from other failures by the API server's status, not by
/// the text of the error.
fn store_error(what: &str, name: &str, e: kube::Error) -> AllocError {
    let message = format!("{what} IPBlock {name}: {e}");
    match &e {
        kube::Error::Api(status) if status.is_not_found() => StoreError::NotFound(message),
        kube::Error::Api(status) if status.is_conflict() => StoreError::Conflict(message),
        _ => StoreError::Other(message),
    }
    .into()
}

/// An IPBlock `name` whose content does not parse.
fn unparsable(what: &str, name: &str, e: impl std::fmt::Display) -> AllocError {
    StoreError::Other(format!("{what} IPBlock {name}: {e}")).into()
}

impl ApiBlockStore {
    pub fn new(client: kube::Client, reserved: Vec<IpAddr>) -> Self {
        Self {
            api: Api::all(client),
            reserved,
            conflicts: None,
        }
    }

    /// Counts refused writes in `counter`.
    pub fn counting_conflicts(mut self, counter: prometheus::IntCounter) -> Self {
        self.conflicts = Some(counter);
        self
    }

    /// The in-memory block of an IPBlock object.
    pub fn to_block(&self, object: &IPBlock) -> Result<Block, AllocError> {
        let name = object.metadata.name.as_deref().unwrap_or_default();
        let cidr: IpNet = object
            .spec
            .cidr
            .parse()
            .map_err(|e| unparsable("parsing the CIDR of", name, e))?;
        let mut allocations = Vec::with_capacity(object.spec.allocations.len());
        for (ip, a) in &object.spec.allocations {
            let ip: IpAddr = ip
                .parse()
                .map_err(|e| unparsable("parsing an address of", name, e))?;
            allocations.push((
                ip,
                Holder {
                    namespace: a.namespace.clone(),
                    name: a.name.clone(),
                    uid: a.uid.clone(),
                },
            ));
        }
        Block::with_allocations(cidr, &self.reserved, allocations)
    }
}

impl BlockStore for ApiBlockStore {
    type Version = IPBlock;

    async fn read(&self, name: &str) -> Result<(Block, IPBlock), AllocError> {
        let object = self
            .api
            .get(name)
            .await
            .map_err(|e| store_error("reading", name, e))?;
        Ok((self.to_block(&object)?, object))
    }

    async fn compare_and_swap(
        &self,
        name: &str,
        read: IPBlock,
        block: Block,
    ) -> Result<bool, AllocError> {
        let mut object = read;
        object.spec.allocations = block
            .allocations()
            .map(|(ip, h)| {
                (
                    ip.to_string(),
                    IPAllocation {
                        namespace: h.namespace.clone(),
                        name: h.name.clone(),
                        uid: h.uid.clone(),
                    },
                )
            })
            .collect();
        // `object` still carries the resourceVersion it was read at: the API server applies
        // the replace only if the block is unchanged since.
        match self
            .api
            .replace(name, &PostParams::default(), &object)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.is_conflict() => {
                if let Some(counter) = &self.conflicts {
                    counter.inc();
                }
                // Writers that collided would collide again if they retried in lockstep.
                tokio::time::sleep(jitter()).await;
                Ok(false)
            }
            Err(e) => Err(store_error("writing", name, e)),
        }
    }
}

/// A pause of 0–15 ms, different in every call and process, before retrying a lost write.
fn jitter() -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    std::time::Duration::from_millis(hasher.finish() % 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, reason: &str) -> kube::Error {
        let mut status = kube::core::Status::failure("refused", reason);
        status.code = code;
        kube::Error::Api(status.boxed())
    }

    #[test]
    fn store_errors_are_told_apart_by_the_api_status() {
        let kind = |e: AllocError| match e {
            AllocError::Store(StoreError::NotFound(m)) => ("not found", m),
            AllocError::Store(StoreError::Conflict(m)) => ("conflict", m),
            AllocError::Store(StoreError::Other(m)) => ("other", m),
            other => ("not a store error", other.to_string()),
        };
        let (found, message) = kind(store_error("reading", "b-1", api_error(404, "NotFound")));
        assert_eq!(found, "not found");
        assert!(message.starts_with("reading IPBlock b-1: "), "{message}");
        assert_eq!(
            kind(store_error("writing", "b-1", api_error(409, "Conflict"))).0,
            "conflict"
        );
        assert_eq!(
            kind(store_error(
                "writing",
                "b-1",
                api_error(500, "InternalError")
            ))
            .0,
            "other"
        );
        // The text of another failure decides nothing.
        assert_eq!(
            kind(store_error("writing", "b-1", api_error(422, "NotFoundish"))).0,
            "other"
        );
    }
}
