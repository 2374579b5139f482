//! The ests scheduler extender (`ests extender`): the kube-scheduler extender API over the
//! decisions in `ests_core::extender`, answered from watch caches (no API call on the
//! request path).
//!
//! - `POST /filter`: the pinned-node predicate and the capacity predicate with reservations
//!   for static-IP pods; failures say why, per node.
//! - `POST /prioritize`: prefer nodes with room left after the reservations (0..10).
//!
//! Bind for IP range mode (allocating at bind) is still to come (issue 7).
#![forbid(unsafe_code)]

pub mod views;
pub mod wire;

use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ests_api::{EnhancedStatefulSet, StaticIP};
use ests_core::extender::{Fit, PodView, filter, score};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::Store;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use serde_json::json;

use crate::wire::{ExtenderArgs, ExtenderFilterResult, HostPriority, NodeList};

/// Largest request body accepted (full Node lists of big clusters are large).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The extender's metrics.
#[derive(Clone)]
pub struct Metrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "ests_extender_requests_total",
                    "Extender requests by verb and result",
                ),
                &["verb", "result"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "ests_extender_request_duration_seconds",
                    "Time to answer, by verb",
                )
                .buckets(vec![
                    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.05,
                ]),
                &["verb"],
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        Ok(m)
    }
}

/// The caches the extender answers from.
#[derive(Clone)]
pub struct Caches {
    pub nodes: Store<Node>,
    pub pods: Store<Pod>,
    pub records: Store<StaticIP>,
    pub sets: Store<EnhancedStatefulSet>,
}

#[derive(Clone)]
pub struct AppState {
    pub caches: Caches,
    pub metrics: Metrics,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/filter", post(filter_handler))
        .route("/prioritize", post(prioritize_handler))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

fn bad_request(message: String) -> (StatusCode, Vec<u8>, &'static str) {
    (
        StatusCode::BAD_REQUEST,
        json!({"error": message}).to_string().into_bytes(),
        "malformed",
    )
}

/// The request, the nodes as the predicates see them, and the pod.
fn inputs(
    caches: &Caches,
    body: &[u8],
) -> Result<(ExtenderArgs, views::Snapshot, PodView), String> {
    let args: ExtenderArgs =
        serde_json::from_slice(body).map_err(|e| format!("not ExtenderArgs: {e}"))?;
    let records = caches.records.state();
    let snapshot = views::snapshot(
        &caches.nodes.state(),
        &caches.pods.state(),
        &records,
        &caches.sets.state(),
    );
    let pod = views::pod_view(&args.pod, &records);
    Ok((args, snapshot, pod))
}

/// Answers a filter call from the caches.
pub fn answer_filter(caches: &Caches, body: &[u8]) -> (StatusCode, Vec<u8>, &'static str) {
    let (args, snapshot, pod) = match inputs(caches, body) {
        Ok(inputs) => inputs,
        Err(e) => return bad_request(e),
    };
    let mut result = ExtenderFilterResult::default();
    let mut kept = Vec::new();
    for name in args.candidates() {
        let fit = match snapshot.nodes.get(&name) {
            Some(node) => filter(&pod, node),
            None => Fit::No(format!("node {name} is not in the extender's cache yet")),
        };
        match fit {
            Fit::Fits => kept.push(name),
            Fit::No(why) => {
                result.failed_nodes.insert(name, why);
            }
            Fit::Never(why) => {
                result.failed_and_unresolvable_nodes.insert(name, why);
            }
        }
    }
    // Answer in the form the request used; the list is always present.
    match (&args.node_names, args.nodes) {
        (None, Some(list)) => {
            result.nodes = Some(NodeList {
                items: list
                    .items
                    .into_iter()
                    .filter(|n| {
                        n.metadata
                            .name
                            .as_ref()
                            .is_some_and(|name| kept.contains(name))
                    })
                    .collect(),
            });
        }
        _ => result.node_names = Some(kept),
    }
    match serde_json::to_vec(&result) {
        Ok(body) => (StatusCode::OK, body, "ok"),
        Err(e) => bad_request(format!("serializing the answer: {e}")),
    }
}

/// Answers a prioritize call from the caches.
pub fn answer_prioritize(caches: &Caches, body: &[u8]) -> (StatusCode, Vec<u8>, &'static str) {
    let (args, snapshot, pod) = match inputs(caches, body) {
        Ok(inputs) => inputs,
        Err(e) => return bad_request(e),
    };
    let scores: Vec<HostPriority> = args
        .candidates()
        .into_iter()
        .map(|host| {
            let score = snapshot.nodes.get(&host).map_or(0, |n| score(&pod, n));
            HostPriority { host, score }
        })
        .collect();
    match serde_json::to_vec(&scores) {
        Ok(body) => (StatusCode::OK, body, "ok"),
        Err(e) => bad_request(format!("serializing the answer: {e}")),
    }
}

fn respond(
    metrics: &Metrics,
    verb: &str,
    started: Instant,
    answer: (StatusCode, Vec<u8>, &str),
) -> Response {
    let (code, body, result) = answer;
    metrics.requests.with_label_values(&[verb, result]).inc();
    metrics
        .duration
        .with_label_values(&[verb])
        .observe(started.elapsed().as_secs_f64());
    (code, [("content-type", "application/json")], body).into_response()
}

fn unreadable(rejection: BytesRejection) -> (StatusCode, Vec<u8>, &'static str) {
    (
        rejection.status(),
        json!({"error": rejection.body_text()})
            .to_string()
            .into_bytes(),
        "malformed",
    )
}

async fn filter_handler(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let answer = match body {
        Ok(body) => answer_filter(&state.caches, &body),
        Err(rejection) => unreadable(rejection),
    };
    respond(&state.metrics, "filter", started, answer)
}

async fn prioritize_handler(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let answer = match body {
        Ok(body) => answer_prioritize(&state.caches, &body),
        Err(rejection) => unreadable(rejection),
    };
    respond(&state.metrics, "prioritize", started, answer)
}
