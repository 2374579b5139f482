//! Static IPs. For now: the IPBlock objects of the API server as the allocator's
//! compare-and-swap store ([`blocks::ApiBlockStore`]). The StaticIP manager (records per
//! identity, record and range mode, release policies) grows here.
#![forbid(unsafe_code)]

pub mod blocks;
