//! The ests API: `EnhancedStatefulSet`, `StaticIP`, `StaticIPPool` and `IPBlock`, the
//! well-known labels and annotations, and the CRDs generated from these types.
//!
//! This crate performs no I/O. Everything that talks to the API server builds on it.
#![forbid(unsafe_code)]

pub mod crd;
pub mod enhanced_stateful_set;
pub mod ip_pool;
pub mod keys;
pub mod node_migration;
pub mod policy;
pub mod static_ip;

pub use enhanced_stateful_set::{
    EnhancedStatefulSet, EnhancedStatefulSetSpec, EnhancedStatefulSetStatus, Ordinals,
    PersistentVolumeClaimRetentionPolicy, PodManagementPolicy, PodUpdatePolicy,
    PvcRetentionPolicyType, Replacement, ReplacementReason, RollingUpdate, UpdateStrategy,
    UpdateStrategyType,
};
pub use ip_pool::{
    IPAllocation, IPBlock, IPBlockSpec, IPBlockStatus, NodeDeletionPolicy, StaticIPPool,
    StaticIPPoolSpec,
};
pub use node_migration::{
    MigratingPod, MigrationMode, MigrationPhase, NodeMigration, NodeMigrationSpec,
    NodeMigrationStatus,
};
pub use static_ip::{
    ReleasePolicy, StaticIP, StaticIPAddress, StaticIPPhase, StaticIPSpec, StaticIPStatus,
    WorkloadReference,
};

/// The API group of every ests resource.
pub const GROUP: &str = "jke.jdcloud.com";
/// The only served (and storage) version.
pub const VERSION: &str = "v1alpha1";
