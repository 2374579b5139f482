//! The plugin binary run as a runtime runs it (the CNI environment and the config on stdin),
//! against the stand-in agent (`support::FakeAgent`) or none: what it prints and its error
//! codes, per the CNI spec. Needs no root; `netns.rs` runs it under the reference plugins.

mod support;

use serde_json::json;
use support::{FakeAgent, TempDir, ordinary_pod, plugin, record, run, static_pod};

const ALL_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

fn config(version: &str, socket: &str) -> String {
    json!({"cniVersion": version, "name": "estsnet", "type": "bridge",
           "ipam": {"type": "ests-cni", "agentSocket": socket, "timeoutSeconds": 5,
                    "routes": [{"dst": "0.0.0.0/0"}]}})
    .to_string()
}

const POD_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=plain;K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_UID=u1";

fn cni(command: &str, container: &str, args: &str, stdin: &str) -> support::Run {
    run(
        &plugin(),
        &[],
        &[
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", container),
            ("CNI_NETNS", "/var/run/netns/none"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/nonexistent"),
            ("CNI_ARGS", args),
        ],
        stdin,
    )
}

#[test]
fn version_lists_the_supported_versions() {
    let out = run(&plugin(), &[], &[("CNI_COMMAND", "VERSION")], "");
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        out.json(),
        json!({"cniVersion": "1.1.0", "supportedVersions": ALL_VERSIONS})
    );
}

#[test]
fn by_hand_it_explains_itself_on_stderr_only() {
    for args in [&["--help"][..], &["version"][..], &[][..]] {
        let out = run(&plugin(), args, &[], "");
        assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
        assert_eq!(out.stdout, "", "{args:?}: stdout is the protocol's");
        assert!(out.stderr.contains("ests-cni"), "{args:?}: {out:?}");
        assert!(out.stderr.contains("agentSocket"), "{args:?}: {out:?}");
    }
}

/// Each case: what is wrong, the command, CNI_ARGS, stdin, and the spec's code.
#[test]
fn bad_input_gets_the_specs_error_codes() {
    let dir = TempDir::new("absent");
    let absent = dir.path().join("no-agent.sock");
    let absent = absent.to_str().expect("utf-8 path");
    let good = config("1.1.0", absent);
    let cases: Vec<(&str, &str, &str, String, u64)> = vec![
        ("unknown command", "FROB", POD_ARGS, good.clone(), 4),
        ("config is not JSON", "ADD", POD_ARGS, "{not json".into(), 6),
        ("empty stdin", "ADD", POD_ARGS, String::new(), 6),
        (
            "no ipam section",
            "ADD",
            POD_ARGS,
            json!({"cniVersion": "1.1.0", "name": "n", "type": "bridge"}).to_string(),
            7,
        ),
        (
            "relative agent socket",
            "ADD",
            POD_ARGS,
            config("1.1.0", "agent.sock"),
            7,
        ),
        (
            "version the plugin does not speak",
            "ADD",
            POD_ARGS,
            config("0.2.0", absent),
            1,
        ),
        ("ADD without CNI_ARGS", "ADD", "", good.clone(), 4),
        (
            "CNI_ARGS naming no pod",
            "ADD",
            "IgnoreUnknown=1",
            good.clone(),
            4,
        ),
        (
            "CNI_ARGS without the pod's UID",
            "ADD",
            "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=a",
            good.clone(),
            4,
        ),
        (
            "CNI_ARGS not pairs",
            "ADD",
            "K8S_POD_NAMESPACE",
            good.clone(),
            4,
        ),
        ("agent absent on ADD", "ADD", POD_ARGS, good.clone(), 11),
        ("agent absent on DEL", "DEL", POD_ARGS, good.clone(), 11),
        ("agent absent on CHECK", "CHECK", POD_ARGS, good.clone(), 11),
        ("agent absent on STATUS", "STATUS", "", good.clone(), 50),
    ];
    for (what, command, args, stdin, code) in cases {
        let out = cni(command, "c1", args, &stdin);
        assert_eq!(out.error_code(), code, "{what}: {out:?}");
    }
    // No container ID on ADD: the environment is bad.
    let out = run(
        &plugin(),
        &[],
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/x"),
            ("CNI_ARGS", POD_ARGS),
        ],
        &good,
    );
    assert_eq!(out.error_code(), 4, "{out:?}");
    // The agent's absence is explained.
    let out = cni("ADD", "c1", POD_ARGS, &good);
    assert!(
        out.json()["details"]
            .as_str()
            .is_some_and(|d| d.contains("not running") && d.contains("no-agent.sock")),
        "{out:?}"
    );
}

#[test]
fn add_answers_in_each_versions_layout_and_repeats() {
    let agent = FakeAgent::start("node-a", &["10.213.0.0/24"]);
    agent.state().put_pod(ordinary_pod("ns", "plain", "u1"));
    let socket = agent.socket.to_str().expect("utf-8").to_string();
    for (i, version) in ALL_VERSIONS.iter().enumerate() {
        let container = format!("c{i}");
        let out = cni("ADD", &container, POD_ARGS, &config(version, &socket));
        assert_eq!(out.code, Some(0), "{version}: {out:?}");
        let result = out.json();
        assert_eq!(result["cniVersion"], *version);
        let expected_ip = format!("10.213.0.{}/24", i + 2);
        assert_eq!(
            result["ips"][0]["address"],
            expected_ip.as_str(),
            "{result}"
        );
        assert_eq!(result["ips"][0]["gateway"], "10.213.0.1");
        assert_eq!(result["routes"], json!([{"dst": "0.0.0.0/0"}]));
        // An IPAM result names no interface; 0.3.x/0.4.0 tag each address's family.
        assert!(result.get("interfaces").is_none(), "{result}");
        assert!(result["ips"][0].get("interface").is_none(), "{result}");
        if version.starts_with("0.") {
            assert_eq!(result["ips"][0]["version"], "4", "{result}");
        } else {
            assert!(result["ips"][0].get("version").is_none(), "{result}");
        }
        // ADD again for the same container and interface: the same answer.
        let again = cni("ADD", &container, POD_ARGS, &config(version, &socket));
        assert_eq!(again.json()["ips"], result["ips"], "{version}");
    }
    assert_eq!(agent.state().attachments.len(), ALL_VERSIONS.len());
}

#[test]
fn del_check_gc_and_status_follow_the_spec() {
    let agent = FakeAgent::start("node-a", &["10.213.1.0/24"]);
    agent.state().put_pod(ordinary_pod("ns", "plain", "u1"));
    let conf = config("1.1.0", agent.socket.to_str().expect("utf-8"));
    for c in ["c1", "c2", "c3"] {
        assert_eq!(cni("ADD", c, POD_ARGS, &conf).code, Some(0));
    }
    assert_eq!(cni("CHECK", "c1", POD_ARGS, &conf).code, Some(0));
    // DEL frees; again, and for a container never added, it still succeeds. DEL needs no
    // pod (runtimes may have lost it).
    assert_eq!(cni("DEL", "c1", POD_ARGS, &conf).code, Some(0));
    assert_eq!(cni("DEL", "c1", "", &conf).code, Some(0));
    assert_eq!(cni("DEL", "never", "", &conf).code, Some(0));
    let out = cni("CHECK", "c1", POD_ARGS, &conf);
    assert_eq!(out.error_code(), 101, "CHECK after DEL: {out:?}");
    // GC without the runtime's list does nothing; with it, forgets what is not listed.
    let gc = |valid: Option<serde_json::Value>| {
        let mut c: serde_json::Value = serde_json::from_str(&conf).expect("conf");
        if let Some(valid) = valid {
            c["cni.dev/valid-attachments"] = valid;
        }
        run(
            &plugin(),
            &[],
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/nonexistent")],
            &c.to_string(),
        )
    };
    assert_eq!(gc(None).code, Some(0));
    assert_eq!(agent.state().attachments.len(), 2);
    let out = gc(Some(json!([{"containerID": "c3", "ifname": "eth0"}])));
    assert_eq!(out.code, Some(0), "{out:?}");
    let left: Vec<String> = agent
        .state()
        .attachments
        .keys()
        .map(|k| k.container_id.clone())
        .collect();
    assert_eq!(left, vec!["c3".to_string()]);
    // STATUS: ready, then not.
    let status = || {
        run(
            &plugin(),
            &[],
            &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/nonexistent")],
            &conf,
        )
    };
    assert_eq!(status().code, Some(0));
    agent.state().ready = false;
    assert_eq!(status().error_code(), 50);
}

#[test]
fn refusals_reach_the_runtime_with_their_reason() {
    let agent = FakeAgent::start("node-a", &["10.213.2.0/24"]);
    {
        let mut state = agent.state();
        state.blocks = vec!["10.40.0.0/26".parse().expect("cidr")];
        // web-0's record keeps its address on another node; web-1 waits for the bind.
        state.put_record(record(
            "ns",
            "web-0",
            "rec-0",
            json!({"pool": "blue", "ips": [{"ip": "10.40.0.5"}], "node": "node-b"}),
            json!({"phase": "Bound", "podUID": "old"}),
        ));
        state.put_record(record(
            "ns",
            "web-1",
            "rec-1",
            json!({"pool": "blue"}),
            json!({"phase": "Pending"}),
        ));
        state.put_pod(static_pod("ns", "web-0", "p0", "rec-0"));
        state.put_pod(static_pod("ns", "web-1", "p1", "rec-1"));
        // web-2 claims a record of another workload: refused for good.
        state.put_record(record(
            "ns",
            "web-2",
            "rec-2",
            json!({"pool": "blue", "ips": [{"ip": "10.40.0.6"}], "node": "node-a"}),
            json!({"phase": "Bound", "podUID": "old"}),
        ));
        let mut foreign = static_pod("ns", "web-2", "p2", "rec-2");
        foreign.owner_uid = Some("another-set".into());
        state.put_pod(foreign);
    }
    let conf = config("1.1.0", agent.socket.to_str().expect("utf-8"));
    let out = cni(
        "ADD",
        "c1",
        "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0;K8S_POD_UID=p0",
        &conf,
    );
    // Not refused for good: a node migration moves the record here just before the pod
    // comes, and the agent's cache may lag it.
    assert_eq!(out.error_code(), 11, "{out:?}");
    let details = out.json()["details"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(details.contains("node-b"), "{details}");
    let out = cni(
        "ADD",
        "c2",
        "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-1;K8S_POD_UID=p1",
        &conf,
    );
    assert_eq!(out.error_code(), 11, "waiting for the bind: {out:?}");
    let out = cni(
        "ADD",
        "c4",
        "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-2;K8S_POD_UID=p2",
        &conf,
    );
    assert_eq!(out.error_code(), 100, "another workload's record: {out:?}");
    assert!(
        out.json()["details"]
            .as_str()
            .is_some_and(|d| d.contains("not owned by the workload")),
        "{out:?}"
    );
    // A pod the agent has not seen yet: try again later.
    let out = cni(
        "ADD",
        "c3",
        "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=unknown;K8S_POD_UID=u",
        &conf,
    );
    assert_eq!(out.error_code(), 11, "{out:?}");
    assert!(agent.state().attachments.is_empty(), "nothing handed out");
}

#[test]
fn an_agent_answering_garbage_is_an_agent_error() {
    let dir = TempDir::new("garbage");
    let socket = dir.path().join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut stream, _)) = listener.accept() {
            let mut request = Vec::new();
            let _ = stream.read_to_end(&mut request);
            let _ = stream.write_all(b"not json");
        }
    });
    let out = cni(
        "ADD",
        "c1",
        POD_ARGS,
        &config("1.1.0", socket.to_str().expect("utf-8")),
    );
    assert_eq!(out.error_code(), 102, "{out:?}");
    server.join().expect("server");
}

#[test]
fn dual_stack_answers_both_families_or_neither() {
    let agent = FakeAgent::start("node-a", &["10.213.3.0/30", "fd00:213:3::/120"]);
    agent.state().put_pod(ordinary_pod("ns", "plain", "u1"));
    let socket = agent.socket.to_str().expect("utf-8").to_string();
    let out = cni("ADD", "c1", POD_ARGS, &config("0.4.0", &socket));
    assert_eq!(out.code, Some(0), "{out:?}");
    let ips = out.json()["ips"].clone();
    assert_eq!(
        ips,
        json!([
            {"version": "4", "address": "10.213.3.2/30", "gateway": "10.213.3.1"},
            {"version": "6", "address": "fd00:213:3::2/120", "gateway": "fd00:213:3::1"}
        ])
    );
    // The /30 has no second pod address: the next pod gets neither family, and may retry.
    let out = cni("ADD", "c2", POD_ARGS, &config("1.1.0", &socket));
    assert_eq!(out.error_code(), 11, "{out:?}");
    assert_eq!(agent.state().attachments.len(), 1);
}
