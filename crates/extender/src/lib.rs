//! The ests scheduler extender. For now: the wire format of the kube-scheduler extender API
//! ([`wire`]); the server, its caches and `ests extender` come next (issue 7), over the
//! decisions in `ests_core::extender`.
#![forbid(unsafe_code)]

pub mod wire;
