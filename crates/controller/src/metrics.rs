//! Prometheus metrics of the controller. Labels are bounded: results, reasons, and the
//! namespace/name of sets (as many as there are sets).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// The controller's metrics, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    pub pods_created: IntCounterVec,
    pub pods_deleted: IntCounterVec,
    pub replicas: IntGaugeVec,
    pub updated_replicas: IntGaugeVec,
    pub unavailable_replicas: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let set_labels = &["namespace", "name"];
        let m = Self {
            reconciles: IntCounterVec::new(
                Opts::new(
                    "ests_controller_reconcile_total",
                    "Reconciles of EnhancedStatefulSets by result: success, or what went wrong (conflict, not-found, invalid-set, ...)",
                ),
                &["result"],
            )?,
            reconcile_duration: HistogramVec::new(
                HistogramOpts::new(
                    "ests_controller_reconcile_duration_seconds",
                    "Time to reconcile one set",
                )
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
                &[],
            )?,
            pods_created: IntCounterVec::new(
                Opts::new("ests_controller_pods_created_total", "Pods created"),
                &["result"],
            )?,
            pods_deleted: IntCounterVec::new(
                Opts::new(
                    "ests_controller_pods_deleted_total",
                    "Pods deleted, by reason",
                ),
                &["reason"],
            )?,
            replicas: IntGaugeVec::new(
                Opts::new("ests_set_replicas", "Pods of a set"),
                set_labels,
            )?,
            updated_replicas: IntGaugeVec::new(
                Opts::new(
                    "ests_set_updated_replicas",
                    "Pods of a set on its update revision",
                ),
                set_labels,
            )?,
            unavailable_replicas: IntGaugeVec::new(
                Opts::new(
                    "ests_set_unavailable_replicas",
                    "Identities of a set that are not Available",
                ),
                set_labels,
            )?,
            registry,
        };
        m.registry.register(Box::new(m.reconciles.clone()))?;
        m.registry
            .register(Box::new(m.reconcile_duration.clone()))?;
        m.registry.register(Box::new(m.pods_created.clone()))?;
        m.registry.register(Box::new(m.pods_deleted.clone()))?;
        m.registry.register(Box::new(m.replicas.clone()))?;
        m.registry.register(Box::new(m.updated_replicas.clone()))?;
        m.registry
            .register(Box::new(m.unavailable_replicas.clone()))?;
        Ok(m)
    }

    /// The counts of set `namespace/name` as its last plan saw them.
    pub fn set_counts(&self, namespace: &str, name: &str, counts: &ests_core::rollout::Counts) {
        let labels = [namespace, name];
        self.replicas
            .with_label_values(&labels)
            .set(i64::from(counts.replicas));
        self.updated_replicas
            .with_label_values(&labels)
            .set(i64::from(counts.updated));
        self.unavailable_replicas
            .with_label_values(&labels)
            .set(i64::from(counts.unavailable));
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        out
    }
}
