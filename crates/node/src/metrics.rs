//! The agent's metrics.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

#[derive(Clone)]
pub struct Metrics {
    /// Requests by CNI verb and result (`ok` or the failure's kind).
    pub requests: IntCounterVec,
    /// Time from a request read to its answer, by CNI verb (ADD includes waiting for the
    /// caches to catch up and saving the table).
    pub duration: HistogramVec,
    /// Addresses held by attachments.
    pub attached: IntGauge,
    /// ADD decisions taken again because the first could not pass yet (the pod or record
    /// not cached yet, a DEL to come): what of an ADD's latency is waiting for the world.
    pub add_retries: IntCounter,
    /// The agent's own Kubernetes API requests by kind (`watch`, `read`, `write`): its
    /// watches and their relists only — an ADD or DEL makes none.
    pub api_requests: IntCounterVec,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "ests_node_cni_requests_total",
                "CNI requests answered by the node agent, by verb and result",
            ),
            &["command", "result"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "ests_node_cni_request_duration_seconds",
                "Time the node agent took to answer a CNI request",
            )
            .buckets(vec![
                0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0,
            ]),
            &["command"],
        )?;
        let attached = IntGauge::new(
            "ests_node_attached_addresses",
            "Addresses held by the node agent's attachments",
        )?;
        let api_requests = IntCounterVec::new(
            Opts::new(
                "ests_node_api_requests_total",
                "Kubernetes API requests the node agent sent, by kind (watch, read, write)",
            ),
            &["kind"],
        )?;
        let add_retries = IntCounter::new(
            "ests_node_cni_add_retries_total",
            "ADD decisions the node agent took again while its caches caught up",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(add_retries.clone()))?;
        registry.register(Box::new(api_requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(attached.clone()))?;
        Ok(Self {
            requests,
            duration,
            attached,
            add_retries,
            api_requests,
        })
    }
}
