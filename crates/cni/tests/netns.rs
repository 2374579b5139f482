//! The fast tier for the plugin alone: `ests-cni` as the `ipam` of the reference `bridge`
//! and `ptp` plugins, driven by libcni's `cnitool` into network namespaces and a bridge
//! this test makes, with the stand-in agent (`support::FakeAgent`, for `ests node`, which
//! comes later) serving the decisions. It checks what the interfaces really get; the
//! future real-node tests check the agent and the pods.
//!
//! cnitool and the plugins are built from Go modules by `tests/harness/build-cni.sh`
//! (cached; `ESTS_CNI_BIN_DIR` points elsewhere). Needs root and network namespaces; skips,
//! saying so, only if the kernel refuses to make a namespace.

mod support;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;
use support::{FakeAgent, TempDir, ordinary_pod, plugin, record, run, static_pod};

/// The reference binaries: `$ESTS_CNI_BIN_DIR`, else what build-cni.sh built.
fn reference_bins() -> PathBuf {
    if let Some(dir) = std::env::var_os("ESTS_CNI_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/harness/build-cni.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().unwrap_or_default().trim())
}

fn ip_cmd(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

static NAMES: AtomicUsize = AtomicUsize::new(0);

/// The host's forwarding switches, which bridge (`isGateway`) and ptp turn on and never
/// back off: saved when the first [`Host`] of this process is made, put back when the last
/// goes. (Test binaries run one at a time; the real node's harness saves its own.)
const FORWARDING: [&str; 2] = [
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv6/conf/all/forwarding",
];
static SAVED_FORWARDING: std::sync::Mutex<(usize, Vec<(&str, String)>)> =
    std::sync::Mutex::new((0, Vec::new()));

fn hold_forwarding() {
    let mut saved = SAVED_FORWARDING.lock().unwrap_or_else(|e| e.into_inner());
    if saved.0 == 0 {
        saved.1 = FORWARDING
            .iter()
            .filter_map(|p| Some((*p, std::fs::read_to_string(p).ok()?)))
            .collect();
    }
    saved.0 += 1;
}

fn release_forwarding() {
    let mut saved = SAVED_FORWARDING.lock().unwrap_or_else(|e| e.into_inner());
    saved.0 = saved.0.saturating_sub(1);
    if saved.0 == 0 {
        for (path, value) in saved.1.drain(..) {
            let _ = std::fs::write(path, value);
        }
    }
}

/// What one test made on the host: namespaces, a bridge, libcni's cache files for its
/// network, a CNI_PATH and config directory. All removed when dropped, whatever happened.
struct Host {
    /// Unique per test: the network's name, and the prefix of its namespaces.
    net: String,
    bridge: String,
    namespaces: Vec<String>,
    cni_path: TempDir,
    conf_dir: TempDir,
}

impl Host {
    /// None (with the reason printed) when the kernel refuses network namespaces.
    fn new(kind: &str) -> Option<Self> {
        let n = NAMES.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}{n}", std::process::id() % 100_000);
        let probe = format!("ests-cni-probe-{id}");
        if let Err(e) = ip_cmd(&["netns", "add", &probe]) {
            eprintln!(
                "SKIPPED: this kernel or user cannot make network namespaces ({e}); the CNI fast tier needs root and netns"
            );
            return None;
        }
        let _ = ip_cmd(&["netns", "del", &probe]);
        hold_forwarding();
        let host = Self {
            net: format!("ests-test-{kind}-{id}"),
            // Interface names have at most 15 characters.
            bridge: format!("estst{id}"),
            namespaces: Vec::new(),
            cni_path: TempDir::new("path"),
            conf_dir: TempDir::new("conf"),
        };
        let bins = reference_bins();
        for p in ["bridge", "ptp", "loopback", "host-local", "cnitool"] {
            std::os::unix::fs::symlink(bins.join(p), host.cni_path.path().join(p))
                .expect("link a reference plugin");
        }
        std::os::unix::fs::symlink(plugin(), host.cni_path.path().join("ests-cni"))
            .expect("link ests-cni");
        Some(host)
    }

    fn netns(&mut self, suffix: &str) -> String {
        let name = format!("{}-{suffix}", self.net);
        ip_cmd(&["netns", "add", &name]).expect("make a network namespace");
        self.namespaces.push(name.clone());
        name
    }

    fn write_conflist(&self, plugin: serde_json::Value) {
        let list = json!({"cniVersion": "1.1.0", "name": self.net, "plugins": [plugin]});
        std::fs::write(
            self.conf_dir.path().join("10-ests.conflist"),
            list.to_string(),
        )
        .expect("write the conflist");
    }

    /// `cnitool VERB NET /var/run/netns/NETNS` with the pod's CNI_ARGS.
    fn cnitool(&self, verb: &str, netns: &str, args: &str) -> support::Run {
        let netns_path = format!("/var/run/netns/{netns}");
        let path = self.cni_path.path().to_str().expect("utf-8").to_string();
        let conf = self.conf_dir.path().to_str().expect("utf-8").to_string();
        let mut env = vec![("CNI_PATH", path.as_str()), ("NETCONFPATH", conf.as_str())];
        if !args.is_empty() {
            env.push(("CNI_ARGS", args));
        }
        run(
            &self.cni_path.path().join("cnitool"),
            &[verb, &self.net, &netns_path],
            &env,
            "",
        )
    }

    /// The addresses on `ifname` in `netns`, as `ip -j` reports them.
    fn addresses(netns: &str, ifname: &str) -> Result<Vec<String>, String> {
        let out = ip_cmd(&["-n", netns, "-j", "addr", "show", "dev", ifname])?;
        let json: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        Ok(json[0]["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["scope"] == "global")
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
            .collect())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = ip_cmd(&["netns", "del", ns]);
        }
        let _ = ip_cmd(&["link", "del", &self.bridge]);
        // libcni caches every ADD's result (and what GC lists) under /var/lib/cni, keyed
        // by network name: ours only.
        if let Ok(entries) = std::fs::read_dir("/var/lib/cni/results") {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{}-", self.net))
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        release_forwarding();
    }
}

fn pod_args(name: &str, uid: &str) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME={name};K8S_POD_UID={uid}")
}

fn ok(run: &support::Run, what: &str) {
    assert_eq!(run.code, Some(0), "{what}: {run:?}");
}

#[test]
fn bridge_with_ests_cni_gives_kept_addresses_only_to_their_pods() {
    let Some(mut host) = Host::new("br") else {
        return;
    };
    let agent = FakeAgent::start("node-a", &["10.213.10.0/24"]);
    {
        let mut s = agent.state();
        // web-0's record (record mode) keeps .7, Bound to the pod's previous incarnation.
        s.put_record(record(
            "ns",
            "web-0",
            "rec-0",
            json!({"ips": [{"ip": "10.213.10.7"}], "node": "node-a"}),
            json!({"phase": "Bound", "podUID": "w0-a"}),
        ));
        s.put_pod(static_pod("ns", "web-0", "w0-a", "rec-0"));
        s.put_pod(ordinary_pod("ns", "plain", "p1"));
    }
    host.write_conflist(json!({
        "type": "bridge", "bridge": host.bridge, "isGateway": true, "ipMasq": false,
        "ipam": {"type": "ests-cni", "agentSocket": agent.socket, "timeoutSeconds": 10}
    }));
    let web_a = host.netns("web0a");
    let plain = host.netns("plain");

    let out = host.cnitool("add", &web_a, &pod_args("web-0", "w0-a"));
    ok(&out, "ADD web-0");
    assert_eq!(out.json()["ips"][0]["address"], "10.213.10.7/24", "{out:?}");
    assert_eq!(
        Host::addresses(&web_a, "eth0"),
        Ok(vec!["10.213.10.7/24".to_string()])
    );
    // The bridge holds the gateway the result named.
    let bridge = ip_cmd(&["-j", "addr", "show", "dev", &host.bridge]).expect("bridge exists");
    assert!(bridge.contains("10.213.10.1"), "{bridge}");

    // An ordinary pod gets the lowest free address: not the gateway, not the kept .7.
    let out = host.cnitool("add", &plain, &pod_args("plain", "p1"));
    ok(&out, "ADD plain");
    assert_eq!(
        Host::addresses(&plain, "eth0"),
        Ok(vec!["10.213.10.2/24".to_string()])
    );

    ok(
        &host.cnitool("check", &web_a, &pod_args("web-0", "w0-a")),
        "CHECK",
    );
    ok(&host.cnitool("status", &web_a, ""), "STATUS");
    agent.state().ready = false;
    let out = host.cnitool("status", &web_a, "");
    assert_ne!(
        out.code,
        Some(0),
        "STATUS with the agent not ready: {out:?}"
    );
    agent.state().ready = true;

    // web-0 goes: DEL removes its interface, the agent forgets the attachment, the record
    // keeps the address; DEL again succeeds.
    ok(
        &host.cnitool("del", &web_a, &pod_args("web-0", "w0-a")),
        "DEL",
    );
    assert!(Host::addresses(&web_a, "eth0").is_err(), "eth0 is gone");
    assert_eq!(agent.state().attachments.len(), 1);
    ok(
        &host.cnitool("del", &web_a, &pod_args("web-0", "w0-a")),
        "DEL again",
    );

    // A burst of ordinary pods never gets .7.
    let mut burst = Vec::new();
    for i in 0..6 {
        let name = format!("b{i}");
        agent
            .state()
            .put_pod(ordinary_pod("ns", &name, &format!("u{i}")));
        let ns = host.netns(&name);
        ok(
            &host.cnitool("add", &ns, &pod_args(&name, &format!("u{i}"))),
            "ADD burst",
        );
        let got = Host::addresses(&ns, "eth0").expect("addresses");
        assert_ne!(got, vec!["10.213.10.7/24".to_string()], "{name}");
        burst.push(got);
    }

    // web-0 re-created (new UID, new sandbox): the same address.
    agent
        .state()
        .put_pod(static_pod("ns", "web-0", "w0-b", "rec-0"));
    let web_b = host.netns("web0b");
    ok(
        &host.cnitool("add", &web_b, &pod_args("web-0", "w0-b")),
        "ADD web-0 again",
    );
    assert_eq!(
        Host::addresses(&web_b, "eth0"),
        Ok(vec!["10.213.10.7/24".to_string()])
    );
    // No two attachments share an address.
    let held: Vec<IpAddr> = agent
        .state()
        .attachments
        .values()
        .flat_map(|a| a.addresses.iter().map(|x| x.ip))
        .collect();
    let unique: std::collections::BTreeSet<&IpAddr> = held.iter().collect();
    assert_eq!(unique.len(), held.len(), "{held:?}");

    // cnitool's GC sends no list: libcni DELs every attachment it cached for the network
    // (bridge does not pass GC on to its IPAM), so the agent ends with none.
    ok(&host.cnitool("gc", &web_b, ""), "GC");
    assert!(agent.state().attachments.is_empty());
    assert!(Host::addresses(&web_b, "eth0").is_err(), "eth0 is gone");
}

#[test]
fn ptp_with_ests_cni_and_a_refused_pod() {
    let Some(mut host) = Host::new("ptp") else {
        return;
    };
    let agent = FakeAgent::start("node-a", &["10.213.11.0/24"]);
    {
        let mut s = agent.state();
        s.blocks = vec!["10.213.12.0/26".parse().expect("cidr")];
        s.put_pod(ordinary_pod("ns", "plain", "p1"));
        // web-1 (IP range mode) was bound to an address of a block this node does not own.
        s.put_record(record(
            "ns",
            "web-1",
            "rec-1",
            json!({"pool": "blue", "ips": [{"ip": "10.213.13.5"}], "node": "node-a"}),
            json!({"phase": "Bound", "podUID": "w1"}),
        ));
        s.put_pod(static_pod("ns", "web-1", "w1", "rec-1"));
        // web-2 (IP range mode) first start: the bind wrote .9 of this node's block.
        s.put_record(record(
            "ns",
            "web-2",
            "rec-2",
            json!({"pool": "blue"}),
            json!({"phase": "Pending"}),
        ));
        let mut web2 = static_pod("ns", "web-2", "w2", "rec-2");
        web2.annotated_ips = vec!["10.213.12.9".parse().expect("ip")];
        s.put_pod(web2);
    }
    host.write_conflist(json!({
        "type": "ptp", "ipMasq": false,
        "ipam": {"type": "ests-cni", "agentSocket": agent.socket}
    }));
    let plain = host.netns("plain");
    ok(
        &host.cnitool("add", &plain, &pod_args("plain", "p1")),
        "ADD",
    );
    assert_eq!(
        Host::addresses(&plain, "eth0"),
        Ok(vec!["10.213.11.2/24".to_string()])
    );

    let web2 = host.netns("web2");
    ok(
        &host.cnitool("add", &web2, &pod_args("web-2", "w2")),
        "ADD web-2",
    );
    assert_eq!(
        Host::addresses(&web2, "eth0"),
        Ok(vec!["10.213.12.9/26".to_string()])
    );

    let web1 = host.netns("web1");
    let out = host.cnitool("add", &web1, &pod_args("web-1", "w1"));
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr
            .contains("not in an IP block owned by node node-a"),
        "the reason reaches the runtime: {out:?}"
    );
    assert!(Host::addresses(&web1, "eth0").is_err(), "no interface left");
    assert_eq!(agent.state().attachments.len(), 2);

    ok(
        &host.cnitool("del", &plain, &pod_args("plain", "p1")),
        "DEL",
    );
    ok(
        &host.cnitool("del", &plain, &pod_args("plain", "p1")),
        "DEL again",
    );
    assert_eq!(agent.state().attachments.len(), 1);
}

#[test]
fn the_agent_absent_makes_the_runtime_try_again() {
    let Some(mut host) = Host::new("absent") else {
        return;
    };
    let dir = TempDir::new("no-agent");
    let socket = dir.path().join("agent.sock");
    host.write_conflist(json!({
        "type": "bridge", "bridge": host.bridge, "isGateway": true, "ipMasq": false,
        "ipam": {"type": "ests-cni", "agentSocket": socket}
    }));
    let ns = host.netns("a");
    let out = host.cnitool("add", &ns, &pod_args("plain", "p1"));
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(
        out.stderr.contains("not running"),
        "cnitool reports the plugin's message: {out:?}"
    );
    // bridge leaves its veth for the runtime's DEL, which fails too while the agent is
    // away (it cannot forget what it may hold), so the runtime retries it.
    let out = host.cnitool("del", &ns, &pod_args("plain", "p1"));
    assert_ne!(out.code, Some(0), "DEL without the agent: {out:?}");
    // The agent comes up: DEL, then ADD again, succeed.
    let agent = FakeAgent::start_at("node-a", &["10.213.14.0/24"], socket, dir);
    agent.state().put_pod(ordinary_pod("ns", "plain", "p1"));
    ok(&host.cnitool("del", &ns, &pod_args("plain", "p1")), "DEL");
    // The bridge the failed ADD made is left without ports and with an all-zero MAC,
    // which the reference bridge plugin then fails to set back on it (EINVAL): made afresh.
    let _ = ip_cmd(&["link", "del", &host.bridge]);
    ok(&host.cnitool("add", &ns, &pod_args("plain", "p1")), "ADD");
    assert_eq!(
        Host::addresses(&ns, "eth0"),
        Ok(vec!["10.213.14.2/24".to_string()])
    );
}
