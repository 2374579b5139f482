//! Prometheus metrics of the StaticIP manager. Labels are bounded by the number of pools,
//! blocks and decision kinds.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

/// The manager's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Addresses per pool, by state (`used`, `free`).
    pub pool_addresses: IntGaugeVec,
    /// Addresses per block, by state.
    pub block_addresses: IntGaugeVec,
    /// Allocations by pool and result.
    pub allocations: IntCounterVec,
    /// Addresses freed on blocks, by pool and why (record released, leaked allocation).
    pub releases: IntCounterVec,
    /// Writes refused because someone else wrote first, by object kind.
    pub conflicts: IntCounterVec,
    /// What the manager decided for records, by decision.
    pub record_decisions: IntCounterVec,
    /// Failed reconciles, by controller (`record`, `block`, `pool`) and what went wrong.
    pub reconcile_errors: IntCounterVec,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            pool_addresses: IntGaugeVec::new(
                Opts::new(
                    "ests_staticip_pool_addresses",
                    "Addresses of a pool's claimed blocks, by state",
                ),
                &["pool", "state"],
            )?,
            block_addresses: IntGaugeVec::new(
                Opts::new(
                    "ests_staticip_block_addresses",
                    "Addresses of a block, by state",
                ),
                &["pool", "block", "state"],
            )?,
            allocations: IntCounterVec::new(
                Opts::new(
                    "ests_staticip_allocations_total",
                    "Address allocations, by pool and result",
                ),
                &["pool", "result"],
            )?,
            releases: IntCounterVec::new(
                Opts::new(
                    "ests_staticip_releases_total",
                    "Addresses freed, by pool and reason",
                ),
                &["pool", "reason"],
            )?,
            conflicts: IntCounterVec::new(
                Opts::new(
                    "ests_staticip_conflicts_total",
                    "Compare-and-swap writes refused because the object changed, by kind",
                ),
                &["kind"],
            )?,
            record_decisions: IntCounterVec::new(
                Opts::new(
                    "ests_staticip_record_decisions_total",
                    "Decisions taken for StaticIP records",
                ),
                &["decision"],
            )?,
            reconcile_errors: IntCounterVec::new(
                Opts::new(
                    "ests_staticip_reconcile_errors_total",
                    "Failed reconciles, by controller and what went wrong",
                ),
                &["controller", "error"],
            )?,
        };
        registry.register(Box::new(m.pool_addresses.clone()))?;
        registry.register(Box::new(m.block_addresses.clone()))?;
        registry.register(Box::new(m.allocations.clone()))?;
        registry.register(Box::new(m.releases.clone()))?;
        registry.register(Box::new(m.conflicts.clone()))?;
        registry.register(Box::new(m.record_decisions.clone()))?;
        registry.register(Box::new(m.reconcile_errors.clone()))?;
        Ok(m)
    }
}
