//! What a machine needs to run the real node, and a clear error naming what is missing.
//! The facts are gathered once; the judgement over them is a pure function with a table test.

use std::path::{Path, PathBuf};

/// What was found on the machine.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub euid: u32,
    /// /proc/self/ns/net exists (network namespaces).
    pub netns: bool,
    /// cgroup v1 hierarchies mounted under /sys/fs/cgroup (by controller name).
    pub cgroup_v1: Vec<String>,
    /// Controllers of a cgroup v2 unified hierarchy at /sys/fs/cgroup.
    pub cgroup_v2: Vec<String>,
    /// Files that were looked for and not found, each with how to get it.
    pub missing_files: Vec<(PathBuf, &'static str)>,
    /// The kubelet's cgroups already exist and no earlier real node of ours left them.
    pub foreign_kubepods: bool,
}

/// The cgroup controllers the kubelet needs.
const CONTROLLERS: &[&str] = &["cpu", "cpuacct", "cpuset", "memory", "pids"];
const NODE_DEPS: &str = "bash tests/harness/install-node-deps.sh";

/// Everything missing, one sentence each; empty when the node can start.
pub fn missing(facts: &Facts) -> Vec<String> {
    let mut out = Vec::new();
    if facts.euid != 0 {
        out.push(format!(
            "not root (euid {}): the real node makes a bridge, network namespaces, mounts and iptables rules",
            facts.euid
        ));
    }
    if !facts.netns {
        out.push("no network namespaces (/proc/self/ns/net is missing)".to_string());
    }
    if facts.cgroup_v2.is_empty() {
        let absent: Vec<&str> = CONTROLLERS
            .iter()
            .copied()
            .filter(|c| !facts.cgroup_v1.iter().any(|have| have == c))
            .collect();
        if !absent.is_empty() {
            out.push(format!(
                "cgroup layout unsupported: no unified (v2) hierarchy with controllers, and no v1 hierarchy for {} under /sys/fs/cgroup",
                absent.join(", ")
            ));
        }
    }
    if facts.foreign_kubepods {
        out.push(
            "a kubepods cgroup already exists: another kubelet runs on this machine".to_string(),
        );
    }
    for (path, how) in &facts.missing_files {
        out.push(format!("{} not found ({how})", path.display()));
    }
    out
}

/// The files the node runs, with where each comes from.
pub fn required_files(node_bin: &Path) -> Vec<(PathBuf, &'static str)> {
    const BUILD: &str = "bash tests/harness/build-node.sh";
    let mut files: Vec<(PathBuf, &'static str)> = [
        "kubelet",
        "kube-proxy",
        "containerd",
        "containerd-shim-runc-v2",
        "ctr",
        "pause",
    ]
    .iter()
    .map(|b| (node_bin.join(b), BUILD))
    .collect();
    for plugin in ["bridge", "host-local", "loopback"] {
        files.push((Path::new(super::CNI_PLUGIN_DIR).join(plugin), NODE_DEPS));
    }
    files
}

/// Commands the node and its clean-up run, found on PATH.
const COMMANDS: &[&str] = &[
    "runc",
    "iptables",
    "iptables-save",
    "ip",
    "flock",
    "busybox",
    "umount",
    "pkill",
];

/// Looks a command up on PATH.
pub fn which(command: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(command))
        .find(|p| p.is_file())
}

/// Gathers the facts of this machine.
pub fn gather(node_bin: &Path, kubepods_ours: bool) -> Facts {
    let cgroup = Path::new("/sys/fs/cgroup");
    let cgroup_v2 = std::fs::read_to_string(cgroup.join("cgroup.controllers"))
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let cgroup_v1 = CONTROLLERS
        .iter()
        .filter(|c| cgroup.join(c).join("cgroup.procs").is_file())
        .map(|c| c.to_string())
        .collect();
    let mut missing_files: Vec<(PathBuf, &'static str)> = required_files(node_bin)
        .into_iter()
        .filter(|(p, _)| !p.is_file())
        .collect();
    for command in COMMANDS {
        if which(command).is_none() {
            missing_files.push((PathBuf::from(command), NODE_DEPS));
        }
    }
    Facts {
        euid: nix::unistd::geteuid().as_raw(),
        netns: Path::new("/proc/self/ns/net").exists(),
        cgroup_v1,
        cgroup_v2,
        missing_files,
        foreign_kubepods: !kubepods_ours && kubepods_exist(),
    }
}

/// Whether a `kubepods` cgroup exists in any hierarchy.
pub fn kubepods_exist() -> bool {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return false;
    };
    let roots = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .chain([PathBuf::from("/sys/fs/cgroup")]);
    roots
        .flat_map(|root| ["kubepods", "kubepods.slice"].map(|n| root.join(n)))
        .any(|p| p.is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1_root() -> Facts {
        Facts {
            euid: 0,
            netns: true,
            cgroup_v1: CONTROLLERS.iter().map(|c| c.to_string()).collect(),
            ..Facts::default()
        }
    }

    #[test]
    fn what_is_missing_is_named() {
        let cases: Vec<(&str, Facts, &[&str])> = vec![
            ("a v1 root machine", v1_root(), &[]),
            (
                "a v2 machine",
                Facts {
                    cgroup_v1: vec![],
                    cgroup_v2: vec!["cpu".into(), "memory".into()],
                    ..v1_root()
                },
                &[],
            ),
            (
                "not root",
                Facts {
                    euid: 1000,
                    ..v1_root()
                },
                &["not root (euid 1000)"],
            ),
            (
                "no pids hierarchy",
                Facts {
                    cgroup_v1: vec![
                        "cpu".into(),
                        "cpuacct".into(),
                        "cpuset".into(),
                        "memory".into(),
                    ],
                    ..v1_root()
                },
                &["no v1 hierarchy for pids"],
            ),
            (
                "no netns",
                Facts {
                    netns: false,
                    ..v1_root()
                },
                &["no network namespaces"],
            ),
            (
                "another kubelet",
                Facts {
                    foreign_kubepods: true,
                    ..v1_root()
                },
                &["another kubelet"],
            ),
            (
                "no runc",
                Facts {
                    missing_files: vec![("runc".into(), NODE_DEPS)],
                    ..v1_root()
                },
                &["runc not found (bash tests/harness/install-node-deps.sh)"],
            ),
        ];
        for (name, facts, want) in cases {
            let got = missing(&facts);
            assert_eq!(got.len(), want.len(), "{name}: {got:?}");
            for (g, w) in got.iter().zip(want) {
                assert!(g.contains(w), "{name}: {g:?} should say {w:?}");
            }
        }
    }
}
