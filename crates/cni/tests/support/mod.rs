//! What the plugin's tests share: a stand-in for the node agent, and running the plugin.
//!
//! [`FakeAgent`] stands in for `ests node`, which does not exist yet: it serves the agent
//! socket from the test process, implementing the plugin's protocol over the pure decision
//! `ests_core::cni` and in-memory state (pods, records, blocks and pod ranges as the real
//! agent's watch caches will hold them; the attachment table it keeps itself). It tests the
//! plugin and the decision together, not the agent: the agent's own tests, against the real
//! control plane and the real node of the harness, come with it and do not replace these.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Shutdown};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use ests_api::StaticIP;
use ests_cni::protocol::{self, Failure, FailureKind, Request, Response};
use ests_core::cni::{self as decide, AttachmentKey, CniPod};
use ipnet::IpNet;
use kube::ResourceExt;

/// A directory of the test's own, removed when dropped.
pub struct TempDir(pub PathBuf);

static DIRS: AtomicUsize = AtomicUsize::new(0);

impl TempDir {
    pub fn new(what: &str) -> Self {
        let n = DIRS.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("ests-cni-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the stand-in agent knows: its caches and its attachment table.
pub struct State {
    pub node: String,
    pub pods: BTreeMap<(String, String), CniPod>,
    pub records: BTreeMap<(String, String), StaticIP>,
    pub blocks: Vec<IpNet>,
    pub pod_ranges: Vec<IpNet>,
    pub attachments: BTreeMap<AttachmentKey, decide::Attachment>,
    /// STATUS answers NotReady while false (caches not synced).
    pub ready: bool,
    /// Requests served, by command.
    pub served: BTreeMap<&'static str, usize>,
}

impl State {
    /// Puts `record` in the record cache, under its namespace and name.
    pub fn put_record(&mut self, record: StaticIP) {
        let id = (record.namespace().unwrap_or_default(), record.name_any());
        self.records.insert(id, record);
    }

    /// Puts `pod` in the pod cache, under its namespace and name.
    pub fn put_pod(&mut self, pod: CniPod) {
        self.pods
            .insert((pod.namespace.clone(), pod.name.clone()), pod);
    }

    /// Answers as the real agent does: with its handler, over this state's maps.
    fn handle(&mut self, request: Request) -> Response {
        let pods = &self.pods;
        let records = &self.records;
        let pod = |ns: &str, name: &str| pods.get(&(ns.to_string(), name.to_string())).cloned();
        let record =
            |ns: &str, name: &str| records.get(&(ns.to_string(), name.to_string())).cloned();
        let kept = ests_node::handler::kept_addresses(records.values());
        let kept_by = |ip: &IpAddr| kept.get(ip).cloned();
        let facts = ests_node::handler::Facts {
            node: &self.node,
            pod: &pod,
            record: &record,
            owned_blocks: &self.blocks,
            pod_ranges: &self.pod_ranges,
            kept_by: &kept_by,
            ready: self.ready,
        };
        let outcome = ests_node::handler::handle(&mut self.attachments, &facts, request);
        *self.served.entry(outcome.verb).or_default() += 1;
        outcome.response
    }
}

/// The stand-in agent: serves `socket` on a thread until dropped.
pub struct FakeAgent {
    pub socket: PathBuf,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    _dir: TempDir,
}

impl FakeAgent {
    pub fn start(node: &str, pod_ranges: &[&str]) -> Self {
        let dir = TempDir::new("agent");
        let socket = dir.path().join("agent.sock");
        Self::start_at(node, pod_ranges, socket, dir)
    }

    /// Serves `socket`; `dir` (holding it) goes when the agent does.
    pub fn start_at(node: &str, pod_ranges: &[&str], socket: PathBuf, dir: TempDir) -> Self {
        let listener = UnixListener::bind(&socket).expect("bind the agent socket");
        let state = Arc::new(Mutex::new(State {
            node: node.into(),
            pods: BTreeMap::new(),
            records: BTreeMap::new(),
            blocks: Vec::new(),
            pod_ranges: pod_ranges
                .iter()
                .map(|r| r.parse().expect("pod range"))
                .collect(),
            attachments: BTreeMap::new(),
            ready: true,
            served: BTreeMap::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = state.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    // One exchange at a time: the real agent serialises decisions per node.
                    serve(&stream, &state);
                }
            })
        };
        Self {
            socket,
            state,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("agent state")
    }
}

fn serve(stream: &UnixStream, state: &Mutex<State>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let response = match protocol::read_message::<Request>(stream) {
        Ok(request) => state.lock().expect("agent state").handle(request),
        Err(e) => Response::Error(Failure {
            kind: FailureKind::BadRequest,
            message: e.to_string(),
        }),
    };
    let _ = protocol::write_message(stream, &response);
    let _ = stream.shutdown(Shutdown::Both);
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The static-IP pod `ns/name` of set `web` (UID set-1), stamped with record `record_uid`.
pub fn static_pod(namespace: &str, name: &str, uid: &str, record_uid: &str) -> CniPod {
    CniPod {
        namespace: namespace.into(),
        name: name.into(),
        uid: uid.into(),
        static_ip: true,
        stamped_record: Some(record_uid.into()),
        owner_uid: Some("set-1".into()),
        annotated_ips: Vec::new(),
        pinned_node: None,
    }
}

pub fn ordinary_pod(namespace: &str, name: &str, uid: &str) -> CniPod {
    CniPod {
        namespace: namespace.into(),
        name: name.into(),
        uid: uid.into(),
        ..CniPod::default()
    }
}

/// A StaticIP record `ns/name` of set `web` with `spec` (ips, node, pool) and `status`.
pub fn record(
    namespace: &str,
    name: &str,
    uid: &str,
    spec: serde_json::Value,
    status: serde_json::Value,
) -> StaticIP {
    let mut base = serde_json::json!({
        "workload": {"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet", "name": "web", "uid": "set-1"},
        "podName": name
    });
    if let (Some(base), Some(extra)) = (base.as_object_mut(), spec.as_object()) {
        base.extend(extra.clone());
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "StaticIP",
        "metadata": {"name": name, "namespace": namespace, "uid": uid},
        "spec": base, "status": status
    }))
    .expect("record")
}

/// What a plugin run printed, and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The stdout as JSON (a result or an error): the only thing a plugin prints there.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:?}"))
    }

    /// The CNI error code of a failed run, checking the error's shape.
    pub fn error_code(&self) -> u64 {
        assert_ne!(self.code, Some(0), "expected a failure: {self:?}");
        let json = self.json();
        assert!(json["msg"].is_string(), "no msg: {self:?}");
        assert!(json["cniVersion"].is_string(), "no cniVersion: {self:?}");
        json["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code: {self:?}"))
    }
}

/// Runs `program` with exactly `env` (and PATH) and `stdin`, within a deadline.
pub fn run(program: &Path, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Run {
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.as_bytes());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(out)) => Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Ok(Err(e)) => panic!("waiting for {}: {e}", program.display()),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("{} {args:?} took longer than 60 s", program.display());
        }
    }
}

/// The plugin binary cargo built for these tests.
pub fn plugin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ests-cni"))
}
