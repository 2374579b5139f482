//! The Karmada interpreter twice over: every case in `config/karmada/testdata/cases.yaml` runs
//! through `karmadactl interpret` (Karmada's own Lua VM on our ResourceInterpreterCustomization)
//! and through `POST /interpret` of the webhook's router. Both must give the same answer, and
//! that answer must match the case's expectations.
//!
//! karmadactl is built from Go modules by `tests/harness/build-bins.sh` (cached), or found in
//! `$ESTS_BIN_DIR`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use axum::body::Body;
use base64::Engine;
use ests_core::pin::PinSettings;
use ests_webhook::{AppState, Metrics, router};
use http::Request;
use kube::runtime::reflector;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tower::ServiceExt;

#[derive(Deserialize)]
struct Case {
    name: String,
    operation: String,
    desired: Option<String>,
    observed: Option<String>,
    status: Option<String>,
    replica: Option<i64>,
    expect: Map<String, Value>,
}

fn karmada_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/karmada")
}

fn karmadactl() -> PathBuf {
    let dir = match std::env::var_os("ESTS_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/harness/build-bins.sh");
            let out = Command::new("bash")
                .arg(&script)
                .stderr(std::process::Stdio::inherit())
                .output()
                .expect("running build-bins.sh");
            assert!(out.status.success(), "build-bins.sh failed: {}", out.status);
            let stdout = String::from_utf8_lossy(&out.stdout);
            PathBuf::from(
                stdout
                    .lines()
                    .last()
                    .expect("build-bins.sh printed a directory")
                    .trim(),
            )
        }
    };
    let path = dir.join("karmadactl");
    assert!(
        path.is_file(),
        "{} is missing; run tests/harness/build-bins.sh",
        path.display()
    );
    path
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture(name: &str) -> Value {
    yaml_docs(&karmada_dir().join("testdata").join(name)).remove(0)
}

/// karmadactl's results as {name: value}: it prints `---`, `# [i/n] name:` and the YAML value.
fn lua_answer(karmadactl: &Path, case: &Case) -> Value {
    let testdata = karmada_dir().join("testdata");
    let mut cmd = Command::new(karmadactl);
    cmd.arg("interpret")
        .arg("-f")
        .arg(karmada_dir().join("resource-interpreter-customization.yaml"))
        .arg("--operation")
        .arg(&case.operation);
    if let Some(f) = &case.desired {
        cmd.arg("--desired-file").arg(testdata.join(f));
    }
    if let Some(f) = &case.observed {
        cmd.arg("--observed-file").arg(testdata.join(f));
    }
    if let Some(f) = &case.status {
        cmd.arg("--status-file").arg(testdata.join(f));
    }
    if let Some(r) = case.replica {
        cmd.arg("--desired-replica").arg(r.to_string());
    }
    let out = cmd.output().expect("running karmadactl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // karmadactl reports a failing script on stderr and still exits 0.
    assert!(
        out.status.success() && !stderr.contains("error"),
        "{}: karmadactl failed ({}): {stderr}",
        case.name,
        out.status
    );
    let mut results = Map::new();
    for doc in stdout.split("---\n").filter(|d| !d.trim().is_empty()) {
        let (header, body) = doc.split_once('\n').unwrap_or((doc, ""));
        let name = header
            .trim()
            .rsplit(' ')
            .next()
            .expect("a result name")
            .trim_end_matches(':')
            .to_string();
        let value: Value = serde_saphyr::from_str(body)
            .unwrap_or_else(|e| panic!("{}: result {name}: {e}\n{body}", case.name));
        results.insert(name, value);
    }
    Value::Object(results)
}

/// The webhook's answer, in karmadactl's shape.
async fn webhook_answer(case: &Case) -> Value {
    let registry = prometheus::Registry::new();
    let (records, _writer) = reflector::store();
    let app = router(AppState {
        records,
        kept: Default::default(),
        pools: kube::runtime::reflector::store().0,
        pools_listed: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        pin: Arc::new(PinSettings {
            controller_users: vec![],
            cni: vec![],
        }),
        metrics: Metrics::register(&registry).expect("metrics"),
    });
    let desired = case.desired.as_deref().map(fixture);
    let observed = case.observed.as_deref().map(fixture);
    let object = desired
        .clone()
        .or(observed.clone())
        .expect("a fixture object");
    let mut request = json!({
        "uid": "parity",
        "kind": {"group": "jke.jdcloud.com", "version": "v1alpha1", "kind": "EnhancedStatefulSet"},
        "name": object["metadata"]["name"],
        "namespace": object["metadata"]["namespace"],
        "operation": case.operation,
        "object": object,
        // Karmada sends replicas in every request.
        "replicas": case.replica.unwrap_or(0),
    });
    if case.operation == "Retain" {
        request["observedObject"] = observed.clone().expect("Retain needs an observed fixture");
    }
    if let Some(f) = &case.status {
        request["aggregatedStatus"] = json!(yaml_docs(&karmada_dir().join("testdata").join(f)));
    }
    let context = json!({"apiVersion": "config.karmada.io/v1alpha1", "kind": "ResourceInterpreterContext", "request": request});
    let http = Request::post("/interpret")
        .header("content-type", "application/json")
        .body(Body::from(context.to_string()))
        .expect("request");
    let reply = app.oneshot(http).await.expect("router answers");
    assert_eq!(reply.status(), 200, "{}", case.name);
    let body = axum::body::to_bytes(reply.into_body(), 1 << 24)
        .await
        .expect("body");
    let reply: Value = serde_json::from_slice(&body).expect("JSON reply");
    assert_eq!(reply["kind"], "ResourceInterpreterContext");
    let r = &reply["response"];
    assert_eq!(r["uid"], "parity", "{}", case.name);
    assert_eq!(r["successful"], true, "{}: {r}", case.name);
    let patched = |object: &Value| -> Value {
        let mut object = object.clone();
        if let Some(patch) = r["patch"].as_str() {
            assert_eq!(r["patchType"], "JSONPatch");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(patch)
                .expect("base64 patch");
            let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("JSON patch");
            json_patch::patch(&mut object, &patch).expect("patch applies to the object as sent");
        }
        object
    };
    let sent = &context["request"]["object"];
    match case.operation.as_str() {
        "InterpretReplica" => {
            json!({"replica": r["replicas"], "requires": r.get("replicaRequirements").cloned().unwrap_or(Value::Null)})
        }
        "ReviseReplica" => json!({"revised": patched(sent)}),
        "Retain" => json!({"retained": patched(sent)}),
        "AggregateStatus" => json!({"aggregatedStatus": patched(sent)}),
        "InterpretStatus" => json!({"status": r["rawStatus"]}),
        "InterpretHealth" => json!({"healthy": r["healthy"]}),
        "InterpretDependency" => json!({"dependencies": r["dependencies"]}),
        other => panic!("unknown operation {other}"),
    }
}

/// Dependencies are a set: Karmada builds them from Go maps.
fn normalized(mut answer: Value) -> Value {
    if let Some(deps) = answer.get_mut("dependencies").and_then(Value::as_array_mut) {
        deps.sort_by_key(|d| (d["kind"].to_string(), d["name"].to_string()));
    }
    answer
}

#[tokio::test]
async fn lua_customization_and_webhook_give_the_same_answers() {
    let karmadactl = karmadactl();
    let cases: Vec<Case> = serde_saphyr::from_str(
        &std::fs::read_to_string(karmada_dir().join("testdata/cases.yaml")).expect("cases.yaml"),
    )
    .expect("cases parse");
    let operations: std::collections::BTreeSet<&str> =
        cases.iter().map(|c| c.operation.as_str()).collect();
    assert_eq!(
        operations.into_iter().collect::<Vec<_>>(),
        [
            "AggregateStatus",
            "InterpretDependency",
            "InterpretHealth",
            "InterpretReplica",
            "InterpretStatus",
            "Retain",
            "ReviseReplica"
        ],
        "every operation has a case"
    );
    for case in &cases {
        let lua = normalized(lua_answer(&karmadactl, case));
        let webhook = normalized(webhook_answer(case).await);
        assert_eq!(lua, webhook, "{}: Lua and webhook differ", case.name);
        for (pointer, want) in &case.expect {
            let got = lua.pointer(pointer).cloned().unwrap_or(Value::Null);
            assert_eq!(&got, want, "{}: {pointer}", case.name);
        }
        eprintln!("ok: {} ({})", case.name, case.operation);
    }
}

#[test]
fn the_customization_passes_karmadactl_check() {
    let out = Command::new(karmadactl())
        .arg("interpret")
        .arg("-f")
        .arg(karmada_dir().join("resource-interpreter-customization.yaml"))
        .arg("--check")
        .output()
        .expect("running karmadactl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for rule in [
        "Retain",
        "InterpretReplica",
        "ReviseReplica",
        "InterpretStatus",
        "AggregateStatus",
        "InterpretHealth",
        "InterpretDependency",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{rule}:")))
            .unwrap_or_else(|| panic!("no {rule} line in:\n{stdout}"));
        assert!(line.ends_with("PASS"), "{line}");
    }
}
