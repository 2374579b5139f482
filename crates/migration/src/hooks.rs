//! The pluggable steps of a migration: fencing the source, moving its routes, providing a
//! replacement. Each is what the operator configures, in one of two forms:
//!
//! - a command (a cloud CLI, a BMC tool): exit status 0 means done. It gets the facts as
//!   arguments and environment (`ESTS_SOURCE_NODE`, `ESTS_TARGET_NODE`, `ESTS_MIGRATION`,
//!   `ESTS_CIDRS`);
//! - an `https://` (or `http://`) URL, for the shipped image, which has no shell and no curl:
//!   a POST of a JSON [`HookRequest`], with `Authorization: Bearer <token>` when a token file
//!   is configured (read at every call, so a rotated Secret is used at once) and the server
//!   checked against a CA bundle file when one is configured (else the public web roots);
//!   a 2xx answer means done, and its body (trimmed) is the hook's output.
//!
//! Either is given up on after its timeout (60 s). One that says no, fails or times out is
//! asked again after 5 s (see [`Pacer`]), for as long as the migration needs it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::process::Command;

/// A configured hook and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub target: HookTarget,
    pub timeout: Duration,
}

/// What a hook calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookTarget {
    /// A program and its leading arguments.
    Command { program: PathBuf, args: Vec<String> },
    /// An HTTP(S) endpoint.
    Http(HttpHook),
}

/// An HTTP(S) hook endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpHook {
    pub url: String,
    /// A file holding the bearer token (a mounted Secret), read at every call.
    pub bearer_token_file: Option<PathBuf>,
    /// PEM CA bundle the server's certificate must chain to, instead of the public roots.
    pub ca_file: Option<PathBuf>,
}

/// The JSON document an HTTP hook is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookRequest<'a> {
    /// `fence`, `network` or `provision`.
    pub verb: &'a str,
    pub migration: &'a str,
    pub source_node: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_node: Option<&'a str>,
    /// The source's IP blocks (network).
    pub cidrs: &'a [String],
}

impl Hook {
    /// Parses a hook: an `https://` or `http://` URL, else a command line (split on
    /// whitespace; no shell).
    pub fn parse(line: &str) -> Result<Self, String> {
        let line = line.trim();
        let target = if line.starts_with("https://") || line.starts_with("http://") {
            let url = reqwest::Url::parse(line).map_err(|e| format!("hook URL {line:?}: {e}"))?;
            if url.host_str().is_none_or(str::is_empty) {
                return Err(format!("hook URL {line:?} names no host"));
            }
            HookTarget::Http(HttpHook {
                url: url.to_string(),
                bearer_token_file: None,
                ca_file: None,
            })
        } else {
            let mut words = line.split_whitespace();
            let program = words
                .next()
                .ok_or_else(|| "empty hook command".to_string())?;
            HookTarget::Command {
                program: program.into(),
                args: words.map(String::from).collect(),
            }
        };
        Ok(Self {
            target,
            timeout: Duration::from_secs(60),
        })
    }

    /// An HTTP hook with the bearer token and CA bundle files (no change to a command).
    pub fn with_http_auth(mut self, token: Option<PathBuf>, ca: Option<PathBuf>) -> Self {
        if let HookTarget::Http(http) = &mut self.target {
            http.bearer_token_file = token;
            http.ca_file = ca;
        }
        self
    }

    /// What the hook is, for messages (never the token).
    fn shown(&self) -> String {
        match &self.target {
            HookTarget::Command { program, .. } => program.display().to_string(),
            HookTarget::Http(http) => http.url.clone(),
        }
    }
}

/// When each hook last ran, by migration and verb. Every event of a migration's pods and
/// nodes re-plans it, and a plan asks again for what is not done yet (fenced, routes moved,
/// a target named): the pacer keeps that from running a hook on every event.
#[derive(Debug, Default)]
pub struct Pacer {
    last: HashMap<(String, &'static str), Instant>,
}

impl Pacer {
    /// Whether hook `verb` may run for `migration` at `now`, `retry` after its last run; if
    /// so, notes that it runs.
    pub fn due(
        &mut self,
        migration: &str,
        verb: &'static str,
        now: Instant,
        retry: Duration,
    ) -> bool {
        let key = (migration.to_string(), verb);
        if self
            .last
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < retry)
        {
            return false;
        }
        self.last.insert(key, now);
        true
    }
}

/// What a hook is told.
#[derive(Debug, Clone, Default)]
pub struct HookFacts {
    pub migration: String,
    pub source: String,
    pub target: Option<String>,
    pub cidrs: Vec<String>,
}

/// Runs the hook for `verb` (`fence`, `network`, `provision`): `Ok(output)` when it says
/// yes (a command exits 0, an endpoint answers 2xx).
pub async fn run(hook: &Hook, verb: &str, facts: &HookFacts) -> Result<String, String> {
    match &hook.target {
        HookTarget::Command { program, args } => {
            run_command(hook, program, args, verb, facts).await
        }
        HookTarget::Http(http) => {
            let shown = hook.shown();
            tokio::time::timeout(hook.timeout, call(http, verb, facts))
                .await
                .map_err(|_| format!("{verb} hook {shown} did not answer in {:?}", hook.timeout))?
                .map_err(|why| format!("{verb} hook {shown}: {why}"))
        }
    }
}

/// POSTs the facts to an HTTP hook.
async fn call(http: &HttpHook, verb: &str, facts: &HookFacts) -> Result<String, String> {
    let mut client = reqwest::Client::builder().use_rustls_tls();
    if let Some(ca) = &http.ca_file {
        let pem = tokio::fs::read(ca)
            .await
            .map_err(|e| format!("reading the CA bundle {}: {e}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("the CA bundle {}: {e}", ca.display()))?;
        // Only the configured CA: a hook that can release a node's pods is not trusted on
        // the word of any public CA.
        client = client.tls_built_in_root_certs(false);
        for cert in certs {
            client = client.add_root_certificate(cert);
        }
    }
    let client = client
        .build()
        .map_err(|e| format!("building the HTTP client: {e}"))?;
    let body = HookRequest {
        verb,
        migration: &facts.migration,
        source_node: &facts.source,
        target_node: facts.target.as_deref(),
        cidrs: &facts.cidrs,
    };
    let mut request = client.post(&http.url).json(&body);
    if let Some(file) = &http.bearer_token_file {
        let token = tokio::fs::read_to_string(file)
            .await
            .map_err(|e| format!("reading the bearer token {}: {e}", file.display()))?;
        request = request.bearer_auth(token.trim());
    }
    let response = request.send().await.map_err(|e| format!("{e}"))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    let text = text.trim().to_string();
    if status.is_success() {
        Ok(text)
    } else {
        Err(format!("answered no ({status}): {text}"))
    }
}

async fn run_command(
    hook: &Hook,
    program: &std::path::Path,
    args: &[String],
    verb: &str,
    facts: &HookFacts,
) -> Result<String, String> {
    let mut command = Command::new(program);
    command
        .args(args)
        .arg(verb)
        .arg(&facts.source)
        .env("ESTS_MIGRATION", &facts.migration)
        .env("ESTS_SOURCE_NODE", &facts.source)
        .env(
            "ESTS_TARGET_NODE",
            facts.target.as_deref().unwrap_or_default(),
        )
        .env("ESTS_CIDRS", facts.cidrs.join(","))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(target) = &facts.target {
        command.arg(target);
    }
    let shown = hook.shown();
    let output = tokio::time::timeout(hook.timeout, command.output())
        .await
        .map_err(|_| format!("{verb} hook {shown} did not finish in {:?}", hook.timeout))?
        .map_err(|e| format!("running the {verb} hook {shown}: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if output.status.success() {
        Ok(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        Err(format!(
            "{verb} hook {shown} answered no ({}): {}",
            output.status,
            if stderr.is_empty() { stdout } else { stderr }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_runs_again_only_after_the_retry() {
        let (t0, retry) = (Instant::now(), Duration::from_secs(5));
        let mut p = Pacer::default();
        assert!(p.due("m1", "fence", t0, retry));
        assert!(!p.due("m1", "fence", t0 + Duration::from_secs(1), retry));
        assert!(p.due("m1", "network", t0, retry), "each verb on its own");
        assert!(p.due("m2", "fence", t0, retry), "each migration on its own");
        assert!(p.due("m1", "fence", t0 + retry, retry));
        assert!(!p.due("m1", "fence", t0 + retry, retry));
    }

    #[tokio::test]
    async fn a_hook_says_yes_with_exit_zero_and_no_otherwise() {
        let facts = HookFacts {
            migration: "m".into(),
            source: "a".into(),
            target: Some("b".into()),
            cidrs: vec!["10.0.0.0/26".into()],
        };
        let script = std::env::temp_dir().join(format!("ests-hook-{}.sh", std::process::id()));
        std::fs::write(&script, "#!/bin/sh\necho \"$ESTS_CIDRS $1 $2 $3\"\n").expect("script");
        let yes = Hook::parse(&format!("sh {}", script.display())).expect("hook");
        assert_eq!(
            run(&yes, "fence", &facts).await,
            Ok("10.0.0.0/26 fence a b".to_string())
        );
        let _ = std::fs::remove_file(&script);
        let no = Hook::parse("false").expect("hook");
        let err = run(&no, "fence", &facts).await.expect_err("false says no");
        assert!(err.contains("fence hook false answered no"), "{err}");
        let missing = Hook::parse("/nonexistent/fence").expect("hook");
        assert!(run(&missing, "fence", &facts).await.is_err());
        let sleeper =
            std::env::temp_dir().join(format!("ests-hook-slow-{}.sh", std::process::id()));
        std::fs::write(&sleeper, "#!/bin/sh\nsleep 5\n").expect("script");
        let mut slow = Hook::parse(&format!("sh {}", sleeper.display())).expect("hook");
        slow.timeout = Duration::from_millis(100);
        assert!(
            run(&slow, "fence", &facts)
                .await
                .expect_err("too slow")
                .contains("did not finish")
        );
        let _ = std::fs::remove_file(&sleeper);
        assert!(Hook::parse("  ").is_err());
    }

    #[test]
    fn urls_are_http_hooks_and_everything_else_a_command() {
        let http = Hook::parse(" https://fencer.example:8443/v1/fence ").expect("url");
        assert_eq!(
            http.target,
            HookTarget::Http(HttpHook {
                url: "https://fencer.example:8443/v1/fence".into(),
                bearer_token_file: None,
                ca_file: None,
            })
        );
        assert!(Hook::parse("https://").is_err(), "no host");
        let command = Hook::parse("/usr/bin/fence --zone a").expect("command");
        assert_eq!(
            command.target,
            HookTarget::Command {
                program: "/usr/bin/fence".into(),
                args: vec!["--zone".into(), "a".into()]
            }
        );
        let authed = command.with_http_auth(Some("/t".into()), None);
        assert!(
            matches!(authed.target, HookTarget::Command { .. }),
            "a command has no token"
        );
    }

    /// What the hook server was sent: the Authorization header and the JSON body.
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(Option<String>, serde_json::Value)>>>;

    /// A real HTTPS hook server on loopback, with a certificate from a CA of the test's own.
    struct Server {
        url: String,
        dir: std::path::PathBuf,
        ca: std::path::PathBuf,
        seen: Seen,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    async fn server(name: &str) -> Server {
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::post;
        ests_testenv::install_crypto_provider();
        let dir = std::env::temp_dir().join(format!("ests-hook-{name}-{}", std::process::id()));
        let pki = ests_testenv::pki::Pki::create(&dir).expect("CA");
        let files = pki.serving("hook", &[]).expect("serving certificate");
        let config = ests_runtime::tls::reloading_config(
            ests_runtime::tls::CertFiles {
                cert: files.cert,
                key: files.key,
            },
            Duration::from_secs(3600),
            |_| {},
        )
        .await
        .expect("TLS config");
        let seen: Seen = Default::default();
        let record = seen.clone();
        let app = axum::Router::new()
            .route(
                "/fence",
                post(
                    move |headers: HeaderMap, body: axum::Json<serde_json::Value>| {
                        let record = record.clone();
                        async move {
                            let auth = headers
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .map(String::from);
                            let yes = auth.as_deref() == Some("Bearer s3cret");
                            record.lock().expect("lock").push((auth, body.0));
                            if yes {
                                (StatusCode::OK, "fenced\n")
                            } else {
                                (StatusCode::FORBIDDEN, "not you")
                            }
                        }
                    },
                ),
            )
            .route(
                "/slow",
                post(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let port = listener.local_addr().expect("address").port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(ests_runtime::tls::serve(listener, config, app, async {
            let _ = stopped.await;
        }));
        Server {
            url: format!("https://127.0.0.1:{port}"),
            dir,
            ca: pki.ca_cert.clone(),
            seen,
            stop: Some(stop),
        }
    }

    #[tokio::test]
    async fn an_https_hook_posts_the_facts_with_its_token_and_says_yes_only_on_2xx() {
        let srv = server("http").await;
        let facts = HookFacts {
            migration: "m".into(),
            source: "a".into(),
            target: Some("b".into()),
            cidrs: vec!["10.0.0.0/26".into()],
        };
        let token = srv.dir.join("token");
        std::fs::write(&token, "s3cret\n").expect("token");
        let hook = Hook::parse(&format!("{}/fence", srv.url))
            .expect("hook")
            .with_http_auth(Some(token.clone()), Some(srv.ca.clone()));
        assert_eq!(run(&hook, "fence", &facts).await, Ok("fenced".to_string()));
        let (auth, body) = srv.seen.lock().expect("lock")[0].clone();
        assert_eq!(auth.as_deref(), Some("Bearer s3cret"));
        assert_eq!(
            body,
            serde_json::json!({"verb": "fence", "migration": "m", "sourceNode": "a",
                               "targetNode": "b", "cidrs": ["10.0.0.0/26"]})
        );
        // A rotated token (the Secret's file changed) is used at the next call.
        std::fs::write(&token, "old-and-wrong").expect("token");
        let no = run(&hook, "fence", &facts).await.expect_err("403 is no");
        assert!(no.contains("answered no (403 Forbidden): not you"), "{no}");
        // Without the CA bundle the server is not trusted (public roots only).
        let untrusted = Hook::parse(&format!("{}/fence", srv.url))
            .expect("hook")
            .with_http_auth(Some(token.clone()), None);
        let err = run(&untrusted, "fence", &facts)
            .await
            .expect_err("untrusted");
        assert!(
            err.starts_with(&format!("fence hook {}/fence: ", srv.url)),
            "{err}"
        );
        // Too slow: given up after its timeout.
        let mut slow = Hook::parse(&format!("{}/slow", srv.url))
            .expect("hook")
            .with_http_auth(None, Some(srv.ca.clone()));
        slow.timeout = Duration::from_millis(200);
        let err = run(&slow, "fence", &facts).await.expect_err("slow");
        assert!(err.contains("did not answer in"), "{err}");
        // Nobody listening.
        let gone = Hook::parse("https://127.0.0.1:1/fence")
            .expect("hook")
            .with_http_auth(None, Some(srv.ca.clone()));
        assert!(run(&gone, "fence", &facts).await.is_err());
        // A CA bundle that is not PEM is an error, not a panic.
        std::fs::write(srv.dir.join("bad-ca"), "not a certificate").expect("bad ca");
        let bad = Hook::parse(&format!("{}/fence", srv.url))
            .expect("hook")
            .with_http_auth(None, Some(srv.dir.join("bad-ca")));
        assert!(run(&bad, "fence", &facts).await.is_err());
    }
}
