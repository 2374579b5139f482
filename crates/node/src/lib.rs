//! `ests node`, the node agent the `ests-cni` IPAM plugin asks for a pod's addresses.
//!
//! Follow an ADD through it: the plugin's request arrives on the agent's unix socket
//! ([`agent`]), the facts of the node come from watch-fed caches (its pods, every StaticIP
//! record, the IP blocks, its Node), [`handler::handle`] maps the request onto the pure
//! decision in [`ests_core::cni`], and the attachment the decision makes is written to the
//! agent's [`table`] file before the plugin hears the answer. An ADD costs no API request.
//!
//! Decisions are serialised per node (one lock over the table), so two ADDs never race for
//! one address; the table file survives a restart of the agent, so nothing held is
//! forgotten or handed out twice.
//!
//! [`install`] is `ests node install-cni`: the plugin binary and its network config list
//! put on the node, for the runtime to find.

pub mod agent;
pub mod handler;
pub mod install;
pub mod metrics;
pub mod table;

pub use agent::{Settings, run};
pub use metrics::Metrics;
