//! One real Kubernetes node beside the KWOK ones: containerd, the kubelet and kube-proxy on
//! this machine, pods with real addresses on veths of a bridge the host reaches.
//!
//! [`RealNode::start`] joins a control plane started with
//! [`PlaneOptions::for_real_node`](crate::control_plane::PlaneOptions::for_real_node). The node
//! is labelled and tainted (`ests.test/real-node`), so only pods that ask for it land there
//! ([`RealNode::placement`]); KWOK nodes keep working beside it. Only one real node can run on a
//! machine (its bridge, ports and the kubelet's fixed paths are shared): its watchdog holds a
//! machine-wide lock until everything the node changed on the host is put back
//! ([`host`]), so the next test binary waits for that instead of tripping over it.
//!
//! The facts behind every choice here (versions, flags, the pitfalls of this machine kind) are
//! in `shared/design/real-node/README.md`.

pub mod config;
pub mod host;
pub mod images;
pub mod prereq;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::bins;
use crate::control_plane::{ControlPlane, SERVICE_CIDR, write_kubeconfig};
use crate::process::{ProcessGroup, Watchdog, WatchdogOptions};
use crate::wait::wait_for;
use config::NodeFiles;

/// The node's name.
pub const NODE_NAME: &str = "ests-real-node";
/// The label (value `true`) and NoSchedule taint key of the real node.
pub const NODE_KEY: &str = "ests.test/real-node";
/// Where Debian's containernetworking-plugins are.
pub const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";
/// How long a second real node on the machine waits for the first to be cleaned up.
const LOCK_WAIT: Duration = Duration::from_secs(600);
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The real node's network: a bridge on the host carrying the node address (also the API
/// server's advertise address and the pods' gateway) and the pods' addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNetwork {
    pub bridge: String,
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    /// Where tests' IP range mode pools on the real node take their blocks from: routed to
    /// the bridge like the Service range, so nothing sent there leaves the machine, while
    /// the host routes a routing plugin (ptp) adds for its pods' addresses win.
    pub block_cidr: Ipv4Net,
}

impl NodeNetwork {
    /// Bridge `estsbr0`, node 10.88.0.1, pods in 10.88.0.0/16, Services in 10.96.0.0/16, IP
    /// blocks in 10.89.0.0/16: none of them overlaps KWOK's pod range (10.128.0.0/9) or the
    /// 172.30.0.0/16 of the static-IP tests.
    pub fn standard() -> Self {
        Self {
            bridge: "estsbr0".into(),
            node_ip: Ipv4Addr::new(10, 88, 0, 1),
            pod_cidr: Ipv4Net::new(Ipv4Addr::new(10, 88, 0, 0), 16).unwrap_or_default(),
            service_cidr: SERVICE_CIDR.parse().unwrap_or_default(),
            block_cidr: Ipv4Net::new(Ipv4Addr::new(10, 89, 0, 0), 16).unwrap_or_default(),
        }
    }

    /// The `kubernetes` Service's ClusterIP: the first address of the Service range.
    pub fn kubernetes_service_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.service_cidr.network()) + 1)
    }

    /// The addresses host-local hands out: the lower half of the pod range from .10 on. A /16
    /// is never used up while one node lives, so no address is handed out twice in a node's
    /// life (a re-used address with a new random MAC is unreachable while neighbour caches
    /// hold the old one); the upper half is left for addresses tests choose.
    pub fn dynamic_range(&self) -> (Ipv4Addr, Ipv4Addr) {
        let base = u32::from(self.pod_cidr.network());
        let half = 1u32 << (31 - u32::from(self.pod_cidr.prefix_len()));
        (Ipv4Addr::from(base + 10), Ipv4Addr::from(base + half - 2))
    }
}

/// Whether the real node is turned off for this run (`ESTS_REAL_NODE=off`): tests that need
/// it then say so and return, for a quicker run. CI never sets it.
pub fn turned_off() -> bool {
    let off = std::env::var("ESTS_REAL_NODE").is_ok_and(|v| v == "off");
    if off {
        eprintln!("ests-testenv: ESTS_REAL_NODE=off: this test, on the real node, is not run");
    }
    off
}

/// A running real node. Its processes are stopped, and the host put back, by its watchdog
/// when the test process exits, or by [`RealNode::stop`].
pub struct RealNode {
    pub name: String,
    pub network: NodeNetwork,
    pub dir: PathBuf,
    /// How long `start` took, for the record.
    pub start_duration: Duration,
    node_bin: PathBuf,
    socket: PathBuf,
    processes: ProcessGroup,
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

impl RealNode {
    /// Starts the node against `plane` (which must have been started for a real node) and
    /// waits until it is Ready. Fails with every missing prerequisite named when the machine
    /// cannot run one.
    pub async fn start(plane: &ControlPlane) -> anyhow::Result<Self> {
        let begun = Instant::now();
        let network = plane.options.real_node.clone().context(
            "this control plane was not started for a real node: use ControlPlane::start_with(PlaneOptions::for_real_node(..))",
        )?;
        let node_bin = bins::locate_node()?;
        // Hold the machine's lock (waiting for an earlier node's clean-up), then check.
        std::fs::create_dir_all(host::STATE_DIR)
            .with_context(|| format!("creating {}", host::STATE_DIR))?;
        let dir = PathBuf::from(format!("/var/tmp/ests-node-{}", std::process::id()));
        let options = WatchdogOptions {
            dir: None,
            cleanup: Some(host::undo_file()),
            lock: Some((host::lock_file(), LOCK_WAIT)),
        };
        let watchdog = tokio::task::spawn_blocking(move || Watchdog::start_with(&options))
            .await
            .context("waiting for the real node's lock")??;
        host::recover()?;
        let facts = prereq::gather(&node_bin, false);
        let missing = prereq::missing(&facts);
        if !missing.is_empty() {
            bail!(
                "this machine cannot run the real node:\n- {}",
                missing.join("\n- ")
            );
        }
        if dir.exists() {
            bail!("{} exists already; remove it", dir.display());
        }
        std::fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let socket = dir.join("containerd/containerd.sock");
        let target = host::UndoTarget {
            dir: dir.clone(),
            network: network.clone(),
            containerd_socket: socket.clone(),
            kube_proxy: node_bin.join("kube-proxy"),
        };
        let snapshot = host::HostSnapshot::take()?;
        std::fs::write(host::undo_file(), host::undo_script(&snapshot, &target))
            .context("writing the real node's undo script")?;
        let node = Self {
            name: NODE_NAME.to_string(),
            network,
            dir: dir.clone(),
            start_duration: Duration::ZERO,
            node_bin,
            socket,
            processes: ProcessGroup::new(watchdog, dir.join("logs")),
        };
        match node.start_processes(plane).await {
            Ok(()) => {
                let mut node = node;
                node.start_duration = begun.elapsed();
                Ok(node)
            }
            Err(e) => {
                let tails = node.log_tails(30);
                node.stop();
                Err(e.context(format!("starting the real node\n{tails}")))
            }
        }
    }

    async fn start_processes(&self, plane: &ControlPlane) -> anyhow::Result<()> {
        host::set_up_network(&self.network)?;
        let files = self.files(plane)?;
        self.write_files(plane, &files)?;

        let path = format!(
            "{}:{}",
            self.node_bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let config = files.path("containerd/config.toml").display().to_string();
        // The shim is found on PATH: it must be the v2 one built beside containerd.
        self.processes.run(
            "containerd",
            &self.node_bin.join("containerd"),
            &["--config".into(), config],
            &[("PATH", &path)],
        )?;
        self.processes
            .wait_ready("containerd", START_TIMEOUT, || async {
                self.ctr(&["version"]).await.map(|_| ())
            })
            .await?;
        self.import(images::pause(&self.node_bin)?).await?;
        self.import(images::answer("v1")?).await?;

        let kubelet_kubeconfig = files.path("kubelet.kubeconfig").display().to_string();
        self.processes.run(
            "kubelet",
            &self.node_bin.join("kubelet"),
            &[
                format!("--config={}", files.path("kubelet.yaml").display()),
                format!("--kubeconfig={kubelet_kubeconfig}"),
                format!("--root-dir={}", files.path("kubelet").display()),
                format!("--cert-dir={}", files.path("kubelet-pki").display()),
                format!("--hostname-override={}", self.name),
                format!("--node-ip={}", self.network.node_ip),
                format!("--node-labels={NODE_KEY}=true"),
                "-v=1".into(),
            ],
            &[("PATH", &path)],
        )?;
        self.processes.run(
            "kube-proxy",
            &self.node_bin.join("kube-proxy"),
            &[
                format!("--config={}", files.path("kube-proxy.yaml").display()),
                "-v=1".into(),
            ],
            &[("PATH", &path)],
        )?;
        let nodes: Api<Node> = Api::all(plane.client().await?);
        self.processes
            .wait_ready("kubelet", START_TIMEOUT, || async {
                let node = nodes.get(&self.name).await?;
                if crate::nodes::is_ready(&node) {
                    Ok(())
                } else {
                    bail!("node {} is not Ready yet", self.name)
                }
            })
            .await
    }

    fn files(&self, plane: &ControlPlane) -> anyhow::Result<NodeFiles> {
        let serving = plane.pki.serving_with_ips(
            "kubelet-serving",
            &[&self.name],
            &[IpAddr::V4(self.network.node_ip)],
        )?;
        let runc = prereq::which("runc").context("runc is not installed")?;
        let kubelet_port = free_port()?;
        Ok(NodeFiles {
            dir: self.dir.clone(),
            node_name: self.name.clone(),
            network: self.network.clone(),
            containerd_socket: self.socket.clone(),
            pause_image: images::PAUSE_IMAGE.into(),
            runc,
            client_ca: plane.pki.ca_cert.clone(),
            kubelet_tls: (serving.cert, serving.key),
            kubelet_port,
            kubelet_healthz_port: free_port()?,
            kube_proxy_kubeconfig: self.dir.join("kube-proxy.kubeconfig"),
            kube_proxy_metrics_port: free_port()?,
            kube_proxy_healthz_port: free_port()?,
            taint_key: NODE_KEY.into(),
        })
    }

    fn write_files(&self, plane: &ControlPlane, files: &NodeFiles) -> anyhow::Result<()> {
        let write = |rel: &str, text: &str| -> anyhow::Result<()> {
            let path = files.path(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
        };
        write("containerd/config.toml", &config::containerd_toml(files))?;
        write("kubelet.yaml", &config::kubelet_yaml(files))?;
        write("kube-proxy.yaml", &config::kube_proxy_yaml(files))?;
        write(
            "cni/net.d/10-ests-real-node.conflist",
            &config::cni_conflist(files),
        )?;
        // Empty: pods must not get the host's nameserver, which is outside this machine.
        write("resolv.conf", "")?;
        for rel in ["kubelet", "kubelet-pki", "podlogs", "cni/ipam"] {
            std::fs::create_dir_all(files.path(rel))?;
        }
        // The plugins are linked in one by one, so later ones (ests's own CNI) can join them.
        let bin = files.cni_bin_dir();
        std::fs::create_dir_all(&bin)?;
        for entry in std::fs::read_dir(CNI_PLUGIN_DIR)
            .with_context(|| format!("reading {CNI_PLUGIN_DIR}"))?
        {
            let entry = entry?;
            std::os::unix::fs::symlink(entry.path(), bin.join(entry.file_name()))?;
        }
        // The Node authorizer knows the kubelet by this exact name and group.
        let kubelet = plane.pki.client(
            "kubelet-client",
            &format!("system:node:{}", self.name),
            &["system:nodes"],
        )?;
        write_kubeconfig(
            &files.path("kubelet.kubeconfig"),
            &plane.server,
            &plane.pki.ca_cert,
            &kubelet,
        )?;
        // system:kube-proxy is bound to system:node-proxier by the default policy.
        let proxy = plane
            .pki
            .client("kube-proxy-client", "system:kube-proxy", &[])?;
        write_kubeconfig(
            &files.kube_proxy_kubeconfig,
            &plane.server,
            &plane.pki.ca_cert,
            &proxy,
        )
    }

    /// Runs `ctr` against the node's containerd, in the Kubernetes namespace.
    async fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = tokio::process::Command::new(self.node_bin.join("ctr"))
            .arg(format!("--address={}", self.socket.display()))
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .await
            .context("running ctr")?;
        if !output.status.success() {
            bail!(
                "ctr {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// How many tasks (sandboxes and containers) containerd runs: a benchmark waits for the
    /// count to come back down before it measures again, so one round's tear-down (CNI DELs
    /// included) does not slow the next.
    pub async fn task_count(&self) -> anyhow::Result<usize> {
        let tasks = self.ctr(&["tasks", "ls", "--quiet"]).await?;
        Ok(tasks.lines().filter(|l| !l.trim().is_empty()).count())
    }

    /// Imports an image into the node's containerd (pods use it with `imagePullPolicy:
    /// IfNotPresent` or `Never`: there is no registry).
    pub async fn import(&self, image: images::Image) -> anyhow::Result<()> {
        let dir = self.dir.join("images");
        std::fs::create_dir_all(&dir)?;
        let file = dir.join(format!("{}.tar", image.reference.replace(['/', ':'], "_")));
        let (image_ref, path) = (image.reference.clone(), file.clone());
        tokio::task::spawn_blocking(move || image.write_archive(&path))
            .await?
            .with_context(|| format!("building the image {image_ref}"))?;
        self.ctr(&["images", "import", &file.display().to_string()])
            .await
            .with_context(|| format!("importing {image_ref}"))?;
        std::fs::remove_file(&file).ok();
        Ok(())
    }

    /// Builds the ests image from `binary` and the CNI plugin `cni` (as the Dockerfile ships
    /// them) and imports it; returns its reference.
    pub async fn import_ests_image(&self, binary: &Path, cni: &Path) -> anyhow::Result<String> {
        let (binary, cni) = (binary.to_path_buf(), cni.to_path_buf());
        let image = tokio::task::spawn_blocking(move || images::ests(&binary, &cni)).await??;
        let reference = image.reference.clone();
        self.import(image).await?;
        Ok(reference)
    }

    /// Tags the imported image `image` also as `tag` (a new reference to the same image, as
    /// a registry serves a release under a second tag): an upgrade to `tag` changes every
    /// pod template that names the image, so every pod of it is replaced.
    pub async fn tag_image(&self, image: &str, tag: &str) -> anyhow::Result<()> {
        let _ = self.ctr(&["images", "rm", tag]).await;
        self.ctr(&["images", "tag", image, tag])
            .await
            .with_context(|| format!("tagging {image} as {tag}"))?;
        Ok(())
    }

    /// Makes `conflist` the node's pod network from now on, with `plugin` (an executable)
    /// linked into the node's CNI directory under its file name. The runtime loads the
    /// first network config by name, so this one (`00-…`) takes over from the node's
    /// own; it watches the directory, so pods created a moment later use it (wait for a pod
    /// that shows it before relying on it). Files of the node's directory only: nothing on
    /// the host changes.
    pub fn install_cni(&self, plugin: &Path, conflist: &Value) -> anyhow::Result<()> {
        let name = plugin
            .file_name()
            .with_context(|| format!("{} names no file", plugin.display()))?;
        let link = self.dir.join("cni/bin").join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(plugin, &link)
            .with_context(|| format!("linking {}", link.display()))?;
        let path = self.dir.join("cni/net.d/00-ests.conflist");
        std::fs::write(&path, serde_json::to_vec_pretty(conflist)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Removes the network [`RealNode::install_cni`] wrote: the runtime falls back to the
    /// node's own (bridge with host-local) a moment later.
    pub fn uninstall_cni(&self) -> anyhow::Result<()> {
        let path = self.dir.join("cni/net.d/00-ests.conflist");
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        }
    }

    /// The host pid of a running container (`containerd://<id>` or the bare id from a pod's
    /// containerStatuses), from containerd's task list: to read its memory in `/proc`.
    pub async fn container_pid(&self, container_id: &str) -> anyhow::Result<u32> {
        let id = container_id.trim_start_matches("containerd://");
        let tasks = self.ctr(&["tasks", "ls"]).await?;
        // Columns: TASK PID STATUS.
        tasks
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                Some((fields.next()?, fields.next()?))
            })
            .find(|(task, _)| *task == id)
            .with_context(|| format!("containerd has no task {id}"))?
            .1
            .parse()
            .with_context(|| format!("the pid of task {id}"))
    }

    /// What a pod spec needs to run on this node: its node selector and a toleration of its
    /// taint; merge into `spec` (of a pod or a template).
    pub fn placement() -> Value {
        json!({
            "nodeSelector": {NODE_KEY: "true"},
            "tolerations": [{"key": NODE_KEY, "operator": "Exists", "effect": "NoSchedule"}],
        })
    }

    /// The last lines of the node's process logs, for a failing test to print.
    pub fn log_tails(&self, lines: usize) -> String {
        self.processes.log_tails(lines)
    }

    /// The log of one of the node's processes (containerd, kubelet, kube-proxy).
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.processes.log_path(name)
    }

    /// Stops the node's processes and puts the host back (the watchdog runs the undo
    /// script); blocks until that is done.
    pub fn stop(&self) {
        self.processes.stop_all(Duration::from_secs(10));
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether the harness may send to `ip`: loopback, or the real node's own network (its pods,
/// its bridge, its IP blocks). Every other address, private ranges included, is off this
/// machine, and a test never sends there (KWOK's pod addresses are not real).
pub fn on_this_machine(ip: IpAddr) -> bool {
    let network = NodeNetwork::standard();
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || network.pod_cidr.contains(&v4) || network.block_cidr.contains(&v4)
        }
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// Connects to `ip:port` and reads what the server says until it closes (the test image
/// answers `<pod name> <version>`); fails after `timeout`, and at once for an address that
/// is not on this machine ([`on_this_machine`]).
pub async fn ask(ip: IpAddr, port: u16, timeout: Duration) -> anyhow::Result<String> {
    if !on_this_machine(ip) {
        bail!("{ip} is not on this machine (loopback or the real node's network); not asking it");
    }
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((ip, port)).await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        anyhow::Ok(answer.trim().to_string())
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .with_context(|| format!("no answer from {ip}:{port} within {timeout:?}"))?
        .with_context(|| format!("asking {ip}:{port}"))
}

/// Waits until `ip:port` answers, and returns the answer.
pub async fn wait_answer(ip: IpAddr, port: u16, timeout: Duration) -> anyhow::Result<String> {
    if !on_this_machine(ip) {
        bail!("{ip} is not on this machine (loopback or the real node's network); not asking it");
    }
    wait_for(format!("an answer from {ip}:{port}"), timeout, || async {
        Ok(Some(ask(ip, port, Duration::from_secs(2)).await?))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_and_the_nodes_own_ranges_are_asked() {
        for ip in ["127.0.0.1", "10.88.0.5", "10.89.1.2"] {
            assert!(on_this_machine(ip.parse().expect("ip")), "{ip}");
        }
        for ip in [
            "10.90.0.1",
            "10.128.0.5",
            "172.30.0.1",
            "8.8.8.8",
            "fd00::1",
        ] {
            assert!(!on_this_machine(ip.parse().expect("ip")), "{ip}");
        }
        let n = NodeNetwork::standard();
        assert!(!n.block_cidr.contains(&n.node_ip) && !n.pod_cidr.contains(&n.block_cidr.addr()));
    }

    #[test]
    fn the_standard_network_keeps_clear_of_the_other_ranges() {
        let n = NodeNetwork::standard();
        assert_eq!(n.kubernetes_service_ip(), Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(
            n.dynamic_range(),
            (
                Ipv4Addr::new(10, 88, 0, 10),
                Ipv4Addr::new(10, 88, 127, 254)
            )
        );
        let kwok: Ipv4Net = crate::control_plane::KWOK_POD_CIDR.parse().expect("a CIDR");
        let static_ip_tests: Ipv4Net = "172.30.0.0/16".parse().expect("a CIDR");
        for other in [kwok, static_ip_tests, n.service_cidr] {
            assert!(
                !other.contains(&n.pod_cidr.network()) && !n.pod_cidr.contains(&other.network()),
                "{other} overlaps {}",
                n.pod_cidr
            );
        }
    }
}
