//! A Kubernetes client that counts the requests it sends, by what they cost the API server:
//! `watch` (a long-running GET with `watch=true`), `read` (any other GET) and `write`
//! (every other method). The node agent shows with it that the CNI path makes no API
//! request: its caches are fed by watches alone.

use http::{Method, Request};
use kube::client::{Body, ClientBuilder};
use kube::{Client, Config};
use prometheus::IntCounterVec;

/// What a request costs the API server (the `kind` label).
pub fn kind_of(method: &Method, query: Option<&str>) -> &'static str {
    if method != Method::GET {
        return "write";
    }
    let watching = query.is_some_and(|q| {
        q.split('&')
            .any(|pair| matches!(pair, "watch=true" | "watch=1"))
    });
    if watching { "watch" } else { "read" }
}

/// A client from the environment's configuration (in-cluster or kubeconfig, as
/// `Client::try_default`) whose every request is counted in `requests` by [`kind_of`].
pub async fn counted_client(requests: IntCounterVec) -> anyhow::Result<Client> {
    let config = Config::infer().await?;
    let count = tower::util::MapRequestLayer::new(move |request: Request<Body>| {
        requests
            .with_label_values(&[kind_of(request.method(), request.uri().query())])
            .inc();
        request
    });
    Ok(ClientBuilder::try_from(config)?.with_layer(&count).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_what_they_cost() {
        let cases = [
            (Method::GET, Some("watch=true&resourceVersion=5"), "watch"),
            (Method::GET, Some("fieldSelector=x&watch=1"), "watch"),
            (Method::GET, Some("limit=500"), "read"),
            (Method::GET, Some("watchy=true"), "read"),
            (Method::GET, None, "read"),
            (Method::POST, None, "write"),
            (Method::PATCH, Some("fieldManager=ests"), "write"),
            (Method::DELETE, None, "write"),
            (Method::PUT, None, "write"),
        ];
        for (method, query, kind) in cases {
            assert_eq!(kind_of(&method, query), kind, "{method} {query:?}");
        }
    }
}
