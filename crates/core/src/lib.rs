//! ests decisions as pure functions of what was observed: no I/O, no clocks, no randomness.
//! The running components (controller, webhook, extender) feed these functions from their
//! watch caches and carry out what they return.
#![forbid(unsafe_code)]

pub mod address_claims;
pub mod adoption;
pub mod allocator;
pub mod cni;
pub mod extender;
pub mod identity;
pub mod karmada;
pub mod migration;
pub mod pin;
pub mod pods;
pub mod quantity;
pub mod revision;
pub mod rollout;
pub mod set_view;
pub mod static_ip;
pub mod validate;
