//! What the real node changes on the host, and how it is put back.
//!
//! Before the node changes anything, [`HostSnapshot::take`] records what it may touch (the
//! sysctls the kubelet and the bridge plugin set, the fixed paths the kubelet, containerd and
//! libcni write whatever their directories, the iptables chains that exist), and
//! [`undo_script`] turns that into an idempotent bash script at a fixed path. The node's
//! watchdog runs it after stopping the node's processes, however the test process ended; a
//! normal stop goes through the same watchdog. If a watchdog died too (the machine lock is
//! free but the script is still there), the next real node runs it first ([`recover`]).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::NodeNetwork;

/// Where the lock and the undo script live: tmpfs, gone with a reboot like the host state
/// they are about.
pub const STATE_DIR: &str = "/run/ests-real-node";

pub fn lock_file() -> PathBuf {
    Path::new(STATE_DIR).join("lock")
}

pub fn undo_file() -> PathBuf {
    Path::new(STATE_DIR).join("undo.sh")
}

/// Sysctls that the kubelet (vm.*, kernel.*), the bridge plugin (ip_forward) or kube-proxy may
/// change on the host.
const SYSCTLS: &[&str] = &[
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/forwarding",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/netfilter/nf_conntrack_max",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// Paths the kubelet, containerd and libcni create whatever their configured directories.
const FIXED_PATHS: &[&str] = &[
    "/run/containerd",
    "/var/lib/kubelet",
    "/var/lib/cni",
    "/var/log/containers",
    "/var/log/pods",
    "/opt/containerd",
    "/var/run/nri",
    "/etc/cni",
];

/// The chain prefixes kube-proxy, the kubelet and the CNI plugins create.
const CHAIN_PREFIXES: &[&str] = &["KUBE-", "CNI-"];

/// The host as it was before the node started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSnapshot {
    /// (sysctl path under /proc/sys, value)
    pub sysctls: Vec<(String, String)>,
    /// Fixed paths that did not exist (removed again at the end).
    pub absent_paths: Vec<PathBuf>,
    /// `<command>/<table>/<chain>` of every KUBE-/CNI- chain that existed (kept at the end).
    pub chains: BTreeSet<String>,
}

impl HostSnapshot {
    pub fn take() -> anyhow::Result<Self> {
        let sysctls = SYSCTLS
            .iter()
            .filter_map(|s| {
                let value = std::fs::read_to_string(Path::new("/proc/sys").join(s)).ok()?;
                Some((s.to_string(), value.trim().to_string()))
            })
            .collect();
        let absent_paths = FIXED_PATHS
            .iter()
            .map(PathBuf::from)
            .filter(|p| std::fs::symlink_metadata(p).is_err())
            .collect();
        let mut chains = BTreeSet::new();
        for command in ["iptables-save", "ip6tables-save"] {
            let Some(path) = super::prereq::which(command) else {
                continue;
            };
            let output = Command::new(path)
                .output()
                .with_context(|| format!("running {command}"))?;
            let family = command.trim_end_matches("-save");
            chains.extend(chains_in(family, &String::from_utf8_lossy(&output.stdout)));
        }
        Ok(Self {
            sysctls,
            absent_paths,
            chains,
        })
    }
}

/// The KUBE-/CNI- chains in `iptables-save` output, as `<family>/<table>/<chain>`.
fn chains_in(family: &str, save: &str) -> Vec<String> {
    let mut table = "";
    let mut out = Vec::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim();
        } else if let Some(rest) = line.strip_prefix(':') {
            let chain = rest.split_whitespace().next().unwrap_or_default();
            if CHAIN_PREFIXES.iter().any(|p| chain.starts_with(p)) {
                out.push(format!("{family}/{table}/{chain}"));
            }
        }
    }
    out
}

/// What the undo script needs to know about the node.
#[derive(Debug, Clone)]
pub struct UndoTarget {
    pub dir: PathBuf,
    pub network: NodeNetwork,
    pub containerd_socket: PathBuf,
    pub kube_proxy: PathBuf,
}

/// The rule that keeps pod traffic on the bridge (the bridge plugin turns forwarding on).
pub fn forward_rule(bridge: &str) -> Vec<String> {
    ["FORWARD", "-i", bridge, "!", "-o", bridge, "-j", "DROP"]
        .map(str::to_string)
        .to_vec()
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The bash script that puts the host back: stop every container (the processes in the
/// kubelet's cgroups, then containerd's shims), remove kube-proxy's and the kubelet's iptables
/// chains that were not there before, unmount everything under the node's directory (deepest
/// first), remove the veths and the bridge (its routes go with it) and the FORWARD rule,
/// remove the kubelet's cgroups, restore the sysctls, remove the fixed paths that were absent,
/// and the node's directory (unless ESTS_KEEP_DIR is set), then itself. Every step is
/// idempotent.
pub fn undo_script(snapshot: &HostSnapshot, target: &UndoTarget) -> String {
    let dir = target.dir.display().to_string();
    let bridge = &target.network.bridge;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "#!/usr/bin/env bash\n\
         # Puts back what the real node in {dir} changed on this host. Written by ests-testenv\n\
         # before the node changed anything; run by the node's watchdog once the node's processes\n\
         # are stopped, or by the next real node if that watchdog died too. Idempotent.\n\
         set -u\n\
         dir={dir_q}\n\
         echo \"undo: $(date +%T.%N) real node in $dir\"",
        dir_q = quote(&dir)
    );
    let _ = writeln!(
        s,
        "# 1. Containers: every process in the kubelet's cgroups, then containerd's shims.\n\
         for _ in $(seq 100); do\n  \
           pids=$(find /sys/fs/cgroup -path '*/kubepods*' -name cgroup.procs -exec cat {{}} + 2>/dev/null | sort -u)\n  \
           [ -z \"$pids\" ] && break\n  \
           kill -9 $pids 2>/dev/null; sleep 0.1\n\
         done\n\
         pkill -9 -f -- {shim_q} 2>/dev/null\n\
         for f in \"$dir\"/containerd/state/io.containerd.runtime.v2.task/*/*/shim.pid; do\n  \
           [ -f \"$f\" ] && kill -9 \"$(cat \"$f\")\" 2>/dev/null\n\
         done",
        shim_q = quote(&format!("-address {}", target.containerd_socket.display()))
    );
    let keep: Vec<&str> = snapshot.chains.iter().map(String::as_str).collect();
    let _ = writeln!(
        s,
        "# 2. iptables: kube-proxy's own clean-up, then KUBE-/CNI- chains that were not there before.\n\
         [ -x {kp} ] && {kp} --cleanup >/dev/null 2>&1\n\
         keep=' {keep} '\n\
         for ipt in iptables ip6tables; do\n  \
           command -v \"$ipt\" >/dev/null || continue\n  \
           for t in filter nat mangle raw; do\n    \
             drop=''\n    \
             for c in $(\"$ipt\" -t \"$t\" -S 2>/dev/null | sed -n 's/^-N \\(\\(KUBE\\|CNI\\)-[^ ]*\\)$/\\1/p'); do\n      \
               case \"$keep\" in *\" $ipt/$t/$c \"*) continue ;; esac\n      \
               drop=\"$drop $c\"\n      \
               \"$ipt\" -t \"$t\" -S 2>/dev/null | grep -E -- \"-j $c( |$)\" | grep -v \"^-A $c \" | sed 's/^-A/-D/' |\n        \
                 while read -r rule; do eval \"$ipt -t $t $rule\" 2>/dev/null; done\n    \
             done\n    \
             for c in $drop; do \"$ipt\" -t \"$t\" -F \"$c\" 2>/dev/null; done\n    \
             for c in $drop; do \"$ipt\" -t \"$t\" -X \"$c\" 2>/dev/null; done\n  \
           done\n\
         done",
        kp = quote(&target.kube_proxy.display().to_string()),
        keep = keep.join(" "),
    );
    let _ = writeln!(
        s,
        "# 3. Mounts under the node's directory (netns, shm, rootfs overlays, volumes), deepest first.\n\
         for _ in 1 2 3; do\n  \
           awk -v d=\"$dir/\" 'index($5, d) == 1 {{ print $5 }}' /proc/self/mountinfo | sort -r |\n    \
             while read -r m; do umount \"$m\" 2>/dev/null || umount -l \"$m\" 2>/dev/null; done\n\
         done"
    );
    let rule = forward_rule(bridge).join(" ");
    let _ = writeln!(
        s,
        "# 4. Network: veths on the bridge, the bridge (its routes go with it), the FORWARD rule.\n\
         for v in $(ip -o link show master {br} 2>/dev/null | awk -F': ' '{{ print $2 }}' | cut -d@ -f1); do\n  \
           ip link del \"$v\" 2>/dev/null\n\
         done\n\
         ip link show {br} >/dev/null 2>&1 && ip link del {br}\n\
         while iptables -D {rule} 2>/dev/null; do :; done",
        br = quote(bridge),
    );
    let _ = writeln!(
        s,
        "# 5. The kubelet's cgroups, leaves first.\n\
         find /sys/fs/cgroup -depth -type d -path '*/kubepods*' -exec rmdir {{}} \\; 2>/dev/null"
    );
    let _ = writeln!(s, "# 6. Sysctls as they were.");
    for (key, value) in &snapshot.sysctls {
        let _ = writeln!(s, "echo {} > /proc/sys/{key} 2>/dev/null", quote(value));
    }
    let _ = writeln!(
        s,
        "# 7. Fixed paths that did not exist before, and the node's directory."
    );
    for path in &snapshot.absent_paths {
        let _ = writeln!(
            s,
            "rm -rf --one-file-system {} 2>/dev/null",
            quote(&path.display().to_string())
        );
    }
    let _ = writeln!(
        s,
        "[ -z \"${{ESTS_KEEP_DIR:-}}\" ] && rm -rf --one-file-system \"$dir\"\n\
         echo \"undo: $(date +%T.%N) done\"\n\
         rm -f \"$0\""
    );
    s
}

/// Runs a leftover undo script: a real node whose watchdog died too (the lock is ours now).
pub fn recover() -> anyhow::Result<()> {
    let undo = undo_file();
    if !undo.is_file() {
        return Ok(());
    }
    eprintln!(
        "ests-testenv: an earlier real node was not cleaned up; running {}",
        undo.display()
    );
    run_undo(&undo)
}

/// Runs the undo script (a normal stop lets the watchdog do this; tests call it directly).
pub fn run_undo(undo: &Path) -> anyhow::Result<()> {
    let status = Command::new("bash")
        .arg(undo)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {}", undo.display()))?;
    if !status.success() {
        bail!("{} failed with {status}", undo.display());
    }
    Ok(())
}

/// Runs a command that changes the host; fails with its standard error.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The node's network on the host: the bridge with the node address (made before anything
/// binds it), the Service range and the tests' IP block range routed to the bridge from the
/// node address (host to ClusterIP or to a block never leaves by the host's own interfaces),
/// and a FORWARD rule that drops whatever pods
/// send beyond the bridge.
pub fn set_up_network(network: &NodeNetwork) -> anyhow::Result<()> {
    let bridge = network.bridge.as_str();
    if Path::new("/sys/class/net").join(bridge).exists() {
        bail!(
            "the bridge {bridge} exists already: another real node runs on this machine, or one was not cleaned up"
        );
    }
    run("ip", &["link", "add", bridge, "type", "bridge"])?;
    let address = format!("{}/{}", network.node_ip, network.pod_cidr.prefix_len());
    run("ip", &["addr", "add", &address, "dev", bridge])?;
    run("ip", &["link", "set", bridge, "up"])?;
    let source = network.node_ip.to_string();
    for range in [network.service_cidr, network.block_cidr] {
        let range = range.to_string();
        run(
            "ip",
            &["route", "replace", &range, "dev", bridge, "src", &source],
        )?;
    }
    let mut rule = vec!["-I".to_string()];
    rule.extend(forward_rule(bridge));
    let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
    run("iptables", &rule)
}

/// What a test compares before a real node starts and after it stopped: every network
/// interface, route, iptables rule, mount, network namespace, the sysctls the node may touch,
/// the fixed paths and the kubelet's cgroups. Equal fingerprints mean the host was put back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub links: Vec<String>,
    pub routes: Vec<String>,
    pub iptables: Vec<String>,
    pub mounts: Vec<String>,
    pub netns: Vec<String>,
    pub sysctls: Vec<(String, String)>,
    pub fixed_paths: Vec<String>,
    pub kubepods: bool,
}

fn lines_of(program: &str, args: &[&str]) -> Vec<String> {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

impl Fingerprint {
    pub fn take() -> anyhow::Result<Self> {
        let mut links: Vec<String> = lines_of("ip", &["-o", "link", "show"])
            .iter()
            .filter_map(|l| l.split(": ").nth(1).map(str::to_string))
            .collect();
        links.sort();
        let mut routes = lines_of("ip", &["-4", "route", "show", "table", "all"]);
        routes.extend(lines_of("ip", &["-6", "route", "show", "table", "all"]));
        let mut iptables = Vec::new();
        for command in ["iptables", "ip6tables"] {
            for table in ["filter", "nat", "mangle", "raw"] {
                iptables.extend(
                    lines_of(command, &["-t", table, "-S"])
                        .into_iter()
                        .map(|l| format!("{command} {table} {l}")),
                );
            }
        }
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .context("reading /proc/self/mountinfo")?
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
            .collect();
        mounts.sort();
        Ok(Self {
            links,
            routes,
            iptables,
            mounts,
            netns: lines_of("ip", &["netns", "list"]),
            sysctls: HostSnapshot::take()?.sysctls,
            fixed_paths: FIXED_PATHS
                .iter()
                .filter(|p| std::fs::symlink_metadata(p).is_ok())
                .map(|p| p.to_string())
                .collect(),
            kubepods: super::prereq::kubepods_exist(),
        })
    }

    /// The differences from `other`, one line each.
    pub fn diff(&self, other: &Self) -> Vec<String> {
        fn sets<T: Ord + Clone + std::fmt::Debug>(
            what: &str,
            a: &[T],
            b: &[T],
            out: &mut Vec<String>,
        ) {
            let a: BTreeSet<&T> = a.iter().collect();
            let b: BTreeSet<&T> = b.iter().collect();
            for gone in a.difference(&b) {
                out.push(format!("{what}: {gone:?} is gone"));
            }
            for new in b.difference(&a) {
                out.push(format!("{what}: {new:?} is new"));
            }
        }
        let mut out = Vec::new();
        sets("link", &self.links, &other.links, &mut out);
        sets("route", &self.routes, &other.routes, &mut out);
        sets("iptables", &self.iptables, &other.iptables, &mut out);
        sets("mount", &self.mounts, &other.mounts, &mut out);
        sets("netns", &self.netns, &other.netns, &mut out);
        sets("sysctl", &self.sysctls, &other.sysctls, &mut out);
        sets("path", &self.fixed_paths, &other.fixed_paths, &mut out);
        if self.kubepods != other.kubepods {
            out.push(format!(
                "kubepods cgroups: {} then {}",
                self.kubepods, other.kubepods
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_are_read_per_table() {
        let save = "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-FIREWALL - [0:0]\n:DOCKER - [0:0]\nCOMMIT\n\
                    *nat\n:KUBE-SERVICES - [0:0]\n:CNI-abc - [0:0]\nCOMMIT\n";
        assert_eq!(
            chains_in("iptables", save),
            vec![
                "iptables/filter/KUBE-FIREWALL",
                "iptables/nat/KUBE-SERVICES",
                "iptables/nat/CNI-abc"
            ]
        );
    }

    #[test]
    fn the_undo_script_restores_what_was_recorded() {
        let snapshot = HostSnapshot {
            sysctls: vec![("vm/overcommit_memory".into(), "0".into())],
            absent_paths: vec!["/var/lib/kubelet".into()],
            chains: ["iptables/filter/KUBE-OLD".to_string()].into(),
        };
        let target = UndoTarget {
            dir: "/var/tmp/ests-node-1".into(),
            network: NodeNetwork::standard(),
            containerd_socket: "/var/tmp/ests-node-1/containerd/containerd.sock".into(),
            kube_proxy: "/cache/kube-proxy".into(),
        };
        let script = undo_script(&snapshot, &target);
        for want in [
            "echo '0' > /proc/sys/vm/overcommit_memory",
            "rm -rf --one-file-system '/var/lib/kubelet'",
            "keep=' iptables/filter/KUBE-OLD '",
            "ip link del 'estsbr0'",
            "iptables -D FORWARD -i estsbr0 ! -o estsbr0 -j DROP",
            "pkill -9 -f -- '-address /var/tmp/ests-node-1/containerd/containerd.sock'",
        ] {
            assert!(script.contains(want), "missing {want:?} in\n{script}");
        }
        // The script parses as bash.
        let status = Command::new("bash")
            .arg("-n")
            .arg("-c")
            .arg(&script)
            .status()
            .expect("bash runs");
        assert!(status.success(), "{script}");
    }
}
