//! Prometheus metrics of the webhook.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

/// The webhook's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Requests by endpoint and result (allowed, pinned, denied, malformed, error).
    pub requests: IntCounterVec,
    /// Time to answer, by endpoint (the server's own share of the API server's wait).
    pub duration: HistogramVec,
    /// Certificate reloads by result.
    pub cert_reloads: IntCounterVec,
    /// Certificates served since start (1 + successful reloads).
    pub certs_loaded: IntCounter,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "ests_webhook_requests_total",
                    "Admission requests by endpoint and result",
                ),
                &["endpoint", "result"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "ests_webhook_request_duration_seconds",
                    "Time to answer an admission request",
                )
                .buckets(vec![
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.05,
                ]),
                &["endpoint"],
            )?,
            cert_reloads: IntCounterVec::new(
                Opts::new(
                    "ests_webhook_certificate_reloads_total",
                    "Certificate reloads by result",
                ),
                &["result"],
            )?,
            certs_loaded: IntCounter::new(
                "ests_webhook_certificates_loaded_total",
                "Certificates loaded since start",
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.cert_reloads.clone()))?;
        registry.register(Box::new(m.certs_loaded.clone()))?;
        Ok(m)
    }
}
