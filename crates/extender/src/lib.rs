//! The ests scheduler extender (`ests extender`): the kube-scheduler extender API over the
//! decisions in `ests_core::extender`, answered from watch caches (no API call on the
//! request path).
//!
//! - `POST /filter`: the pinned-node predicate and the capacity predicate with reservations
//!   for static-IP pods; failures say why, per node.
//! - `POST /prioritize`: prefer nodes with room left after the reservations (0..10).
//! - `POST /bind` (with `--bind`): range-mode static-IP pods get their addresses from the
//!   chosen node's blocks, then the Binding ([`bind`]).
//!
//! The answers come from the [`index`], fed by watches ([`watch`]).
#![forbid(unsafe_code)]

pub mod bind;
pub mod index;
pub mod watch;
pub mod wire;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::Response;
use axum::routing::post;
use ests_core::extender::{Fit, filter, score};
use ests_runtime::Answer;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::index::Index;
use crate::watch::SharedIndex;
use crate::wire::{ExtenderArgs, ExtenderFilterResult, HostPriority, Name, NodeList};

/// Largest request body accepted (full Node lists of big clusters are large).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The extender's metrics.
#[derive(Clone)]
pub struct Metrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    /// Objects held in the index, by kind.
    pub cached: IntGaugeVec,
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
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.000_75, 0.001, 0.001_5, 0.002, 0.005,
                    0.01, 0.05,
                ]),
                &["verb"],
            )?,
            cached: IntGaugeVec::new(
                Opts::new(
                    "ests_extender_cached_objects",
                    "Objects the extender's index holds, by kind (pods: bound, running ones)",
                ),
                &["kind"],
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.cached.clone()))?;
        Ok(m)
    }
}

#[derive(Clone)]
pub struct AppState {
    pub index: SharedIndex,
    pub metrics: Metrics,
    /// Present when this extender binds range-mode static-IP pods.
    pub binder: Option<Arc<bind::Binder>>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/filter", post(filter_handler))
        .route("/prioritize", post(prioritize_handler))
        .route("/bind", post(bind_handler))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

fn parse(body: &[u8]) -> Result<ExtenderArgs<'_>, String> {
    serde_json::from_slice(body).map_err(|e| format!("not ExtenderArgs: {e}"))
}

/// Answers a filter call from the index.
pub fn answer_filter(index: &Index, body: &[u8]) -> Answer {
    filter_answer(index, body).0
}

/// A pod let through, and the nodes to charge it to until it is seen bound
/// ([`Index::assume`]).
type Charge = Option<(ests_core::extender::PodView, Vec<Arc<str>>)>;

/// The filter answer, and what to charge for it.
fn filter_answer(index: &Index, body: &[u8]) -> (Answer, Charge) {
    let args = match parse(body) {
        Ok(args) => args,
        Err(e) => return (Answer::bad_request(e), None),
    };
    let pod = index.pod_view(&args.pod);
    let mut result = ExtenderFilterResult::default();
    let mut kept: Vec<Name> = Vec::new();
    for name in args.candidate_names() {
        let fit = match index.node(name) {
            Some(node) => filter(&pod, node),
            None => Fit::No(format!("node {name} is not in the extender's cache yet")),
        };
        match fit {
            Fit::Fits => kept.push(name.into()),
            Fit::No(why) => {
                result.failed_nodes.insert(name.into(), why);
            }
            Fit::Never(why) => {
                result
                    .failed_and_unresolvable_nodes
                    .insert(name.into(), why);
            }
        }
    }
    // Answer in the form the request used, in its order; the list is always present.
    if args.node_names.is_none()
        && let Some(list) = &args.nodes
    {
        let kept: HashSet<&str> = kept.iter().map(Name::as_str).collect();
        result.nodes = Some(NodeList {
            items: list
                .items
                .iter()
                .filter(|n| {
                    n.metadata
                        .name
                        .as_deref()
                        .is_some_and(|name| kept.contains(name))
                })
                .cloned()
                .collect(),
        });
    }
    let charge = index.nodes_to_charge(&pod, kept.iter().map(Name::as_str));
    let charge = (!charge.is_empty()).then_some((pod, charge));
    if result.nodes.is_none() {
        result.node_names = Some(kept);
    }
    (Answer::ok(&result, "ok"), charge)
}

/// Answers a prioritize call from the index.
///
/// Where no candidate node keeps room for static-IP pods, room after the reservations is
/// the room the scheduler's own NodeResourcesFit already scores, so the answer is empty
/// (every node 0 from this extender: the ranking is the scheduler's). That spares both
/// sides a list of every candidate for nearly every pod of a cluster.
pub fn answer_prioritize(index: &Index, body: &[u8]) -> Answer {
    let args = match parse(body) {
        Ok(args) => args,
        Err(e) => return Answer::bad_request(e),
    };
    if !index.any_reservation() || !args.candidate_names().any(|n| index.reserves(n)) {
        return Answer::ok(&[] as &[HostPriority], "ok");
    }
    let pod = index.pod_view(&args.pod);
    let scores: Vec<HostPriority> = args
        .candidate_names()
        .map(|host| HostPriority {
            host: host.into(),
            score: index.node(host).map_or(0, |n| score(&pod, n)),
        })
        .collect();
    Answer::ok(&scores, "ok")
}

fn respond(metrics: &Metrics, verb: &str, started: Instant, answer: Answer) -> Response {
    ests_runtime::http::respond(&metrics.requests, &metrics.duration, verb, started, answer)
}

async fn filter_handler(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let answer = match body {
        Ok(body) => {
            let (answer, charge) = watch::read(&state.index, |index| filter_answer(index, &body));
            if let Some((pod, nodes)) = charge {
                watch::write(&state.index, |index| {
                    index.assume(&pod, nodes, Instant::now())
                });
            }
            answer
        }
        Err(rejection) => Answer::unreadable(rejection),
    };
    respond(&state.metrics, "filter", started, answer)
}

async fn prioritize_handler(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let answer = match body {
        Ok(body) => watch::read(&state.index, |index| answer_prioritize(index, &body)),
        Err(rejection) => Answer::unreadable(rejection),
    };
    respond(&state.metrics, "prioritize", started, answer)
}

async fn bind_handler(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let answer = match body {
        Ok(body) => match &state.binder {
            Some(binder) => binder.answer(&body).await,
            None => Answer::bad_request(
                "this extender does not bind (start it with --bind to let it bind range-mode static-IP pods)",
            ),
        },
        Err(rejection) => Answer::unreadable(rejection),
    };
    respond(&state.metrics, "bind", started, answer)
}
