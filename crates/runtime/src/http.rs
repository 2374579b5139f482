//! Typed HTTP answers: every handler of the webhook and the extender decides an [`Answer`]
//! (a status, a JSON body and the result it is counted under), and the axum handler turns it
//! into a response with [`respond`], which counts it. A request that cannot be answered gets a
//! JSON `{"error": ...}` with a 4xx or 5xx, never a panic.

use std::fmt::Display;
use std::time::Instant;

use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use prometheus::{HistogramVec, IntCounterVec};
use serde::Serialize;
use serde_json::json;

/// A JSON answer and what came of the request, for the requests counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    /// The JSON body.
    pub body: Vec<u8>,
    /// The metrics label of the outcome (`allowed`, `denied`, `ok`, `malformed`, ...): a
    /// `&'static str`, so the label set stays bounded.
    pub result: &'static str,
}

impl Answer {
    /// 200 with `value` as the body, counted as `result`. A value that cannot be serialized
    /// is a 500 counted as `error`, naming what failed.
    pub fn ok<T: Serialize + ?Sized>(value: &T, result: &'static str) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self {
                status: StatusCode::OK,
                body,
                result,
            },
            Err(e) => Self::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("serializing the answer: {e}"),
                "error",
            ),
        }
    }

    /// `status` with `{"error": message}`, counted as `result`.
    pub fn error(status: StatusCode, message: impl Display, result: &'static str) -> Self {
        Self {
            status,
            body: json!({"error": message.to_string()})
                .to_string()
                .into_bytes(),
            result,
        }
    }

    /// 400 with `{"error": message}`: the body is not a request this server can answer.
    pub fn bad_request(message: impl Display) -> Self {
        Self::error(StatusCode::BAD_REQUEST, message, "malformed")
    }

    /// A body that could not be read (too large, cut off), with the status axum chose.
    pub fn unreadable(rejection: BytesRejection) -> Self {
        Self::error(rejection.status(), rejection.body_text(), "malformed")
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        (self.status, [(CONTENT_TYPE, "application/json")], self.body).into_response()
    }
}

/// Counts `answer` under `route` in `requests` (labels: route, result) and the time since
/// `started` in `duration` (label: route), then makes it the response.
pub fn respond(
    requests: &IntCounterVec,
    duration: &HistogramVec,
    route: &str,
    started: Instant,
    answer: Answer,
) -> Response {
    requests.with_label_values(&[route, answer.result]).inc();
    duration
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    answer.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn error_of(answer: &Answer) -> Value {
        serde_json::from_slice::<Value>(&answer.body).expect("a JSON body")["error"].clone()
    }

    #[test]
    fn errors_are_json_with_their_status_and_result() {
        let bad = Answer::bad_request("not an AdmissionReview: EOF");
        assert_eq!(
            (bad.status, bad.result),
            (StatusCode::BAD_REQUEST, "malformed")
        );
        assert_eq!(error_of(&bad), "not an AdmissionReview: EOF");
        let ok = Answer::ok(&json!({"a": 1}), "allowed");
        assert_eq!((ok.status, ok.result), (StatusCode::OK, "allowed"));
        assert_eq!(ok.body, br#"{"a":1}"#);
    }

    /// A map with non-string keys is what serde_json refuses to write.
    #[test]
    fn an_answer_that_cannot_be_written_is_a_500() {
        let unwritable: std::collections::BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let answer = Answer::ok(&unwritable, "allowed");
        assert_eq!(
            (answer.status, answer.result),
            (StatusCode::INTERNAL_SERVER_ERROR, "error")
        );
        assert!(
            error_of(&answer)
                .as_str()
                .is_some_and(|e| e.starts_with("serializing the answer: ")),
            "{answer:?}"
        );
    }

    #[test]
    fn responses_are_counted_and_carry_json() {
        let registry = prometheus::Registry::new();
        let requests = IntCounterVec::new(prometheus::Opts::new("r", "r"), &["route", "result"])
            .expect("counter");
        let duration = HistogramVec::new(prometheus::HistogramOpts::new("d", "d"), &["route"])
            .expect("histogram");
        registry
            .register(Box::new(requests.clone()))
            .expect("register");
        let response = respond(
            &requests,
            &duration,
            "filter",
            Instant::now(),
            Answer::bad_request("x"),
        );
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response.headers().get(CONTENT_TYPE).map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        assert_eq!(
            requests.with_label_values(&["filter", "malformed"]).get(),
            1
        );
        assert_eq!(
            duration.with_label_values(&["filter"]).get_sample_count(),
            1
        );
    }
}
