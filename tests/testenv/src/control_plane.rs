//! Starts and stops a real control plane on 127.0.0.1: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and KWOK (the simulated kubelets).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::bins;
use crate::pki::{CertFiles, Pki};
use crate::process::{Process, ProcessGroup, Watchdog, log_tail};
use crate::real_node::NodeNetwork;

/// Label that makes KWOK manage (simulate the kubelet of) a node.
pub const MANAGED_LABEL: (&str, &str) = ("ests.test/kwok", "managed");
/// The default StorageClass; KWOK provisions its volumes.
pub const STORAGE_CLASS: &str = "ests-standard";
/// The Service range; its first address is the `kubernetes` Service.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// KWOK hands out pod IPs from this range (each node gets a /22 of it); static-IP tests must
/// use other ranges.
pub const KWOK_POD_CIDR: &str = "10.128.0.0/9";
/// kube-controller-manager marks a node NotReady this long after its last heartbeat.
pub const NODE_MONITOR_GRACE: Duration = Duration::from_secs(20);
/// KWOK's node Lease duration; it renews every quarter of it.
const NODE_LEASE_SECONDS: u64 = 20;
const START_TIMEOUT: Duration = Duration::from_secs(120);
const FIELD_MANAGER: &str = "ests-testenv";

/// A running control plane. Dropping it stops every process it started.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub bin: PathBuf,
    /// Admin kubeconfig (system:masters).
    pub kubeconfig: PathBuf,
    /// https://127.0.0.1:<port>
    pub server: String,
    pub pki: Pki,
    /// How long `start` took, for the record.
    pub start_duration: Duration,
    /// What the plane was started for.
    pub options: PlaneOptions,
    scheduler_port: u16,
    processes: ProcessGroup,
}

/// How a control plane is started.
#[derive(Debug, Clone, Default)]
pub struct PlaneOptions {
    /// Serve a real node (kubelet) on this network as well as the KWOK ones: see
    /// [`PlaneOptions::for_real_node`].
    pub real_node: Option<NodeNetwork>,
}

impl PlaneOptions {
    /// A plane a real kubelet can join, on `network`. On top of the KWOK-only plane: the API
    /// server listens on every address and advertises the node's bridge address (pods reach
    /// it through the `kubernetes` Service, and EndpointSlices refuse loopback), its serving
    /// certificate names that address and the Service's, it authenticates to kubelets with a
    /// client certificate (`kubectl logs` and `exec`), authorizes nodes with the Node
    /// authorizer and NodeRestriction, mounts service-account tokens, maintains the
    /// `kubernetes` Service's endpoints, and calls webhook Services at their endpoints. None
    /// of this slows a KWOK-only plane, which keeps the lean flags.
    pub fn for_real_node(network: NodeNetwork) -> Self {
        Self {
            real_node: Some(network),
        }
    }
}

/// Where control planes are created: tmpfs when there is one, for a fast etcd.
fn base_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Whether a start failed because a port picked free was taken before it was bound.
fn lost_a_port_race(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.to_string().contains("address already in use"))
}

fn arg(flag: &str, value: impl std::fmt::Display) -> String {
    format!("--{flag}={value}")
}

impl ControlPlane {
    /// Builds (or finds cached) binaries and starts a control plane with no nodes.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(PlaneOptions::default()).await
    }

    /// Starts a control plane with `options`. Ports are picked free and then bound by the
    /// processes, so another process may take one in between: such a start is stopped and
    /// made again on new ports (a few times).
    pub async fn start_with(options: PlaneOptions) -> anyhow::Result<Self> {
        const ATTEMPTS: usize = 3;
        let mut attempt = 1;
        loop {
            match Self::start_once(options.clone()).await {
                Err(e) if attempt < ATTEMPTS && lost_a_port_race(&e) => {
                    eprintln!(
                        "ests-testenv: a port was taken while the control plane started; starting again ({e:#})"
                    );
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn start_once(options: PlaneOptions) -> anyhow::Result<Self> {
        let begun = Instant::now();
        let bin = bins::locate()?;
        let dir = base_dir().join(format!(
            "ests-cp-{}-{}",
            std::process::id(),
            begun.elapsed().as_nanos() ^ u128::from(free_port()?)
        ));
        std::fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let watchdog = Watchdog::start(&dir)?;
        let pki = Pki::create(&dir.join("pki"))?;
        let api_port = free_port()?;
        let scheduler_port = free_port()?;
        let server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = dir.join("kubeconfig");
        let admin = pki.client("admin", "ests-admin", &["system:masters"])?;
        write_kubeconfig(&kubeconfig, &server, &pki.ca_cert, &admin)?;

        let mut plane = Self {
            dir: dir.clone(),
            bin,
            kubeconfig,
            server,
            pki,
            start_duration: Duration::ZERO,
            options,
            scheduler_port,
            processes: ProcessGroup::new(watchdog, dir.join("logs")),
        };
        if let Err(e) = plane.start_processes(api_port).await {
            return Err(e.context(format!(
                "starting the control plane\n{}",
                plane.log_tails(30)
            )));
        }
        plane.start_duration = begun.elapsed();
        Ok(plane)
    }

    async fn start_processes(&self, api_port: u16) -> anyhow::Result<()> {
        let etcd_port = free_port()?;
        let etcd_peer = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        self.spawn(
            "etcd",
            vec![
                arg("name", "ests"),
                arg("data-dir", self.dir.join("etcd").display()),
                arg("listen-client-urls", &etcd_url),
                arg("advertise-client-urls", &etcd_url),
                arg("listen-peer-urls", format!("http://127.0.0.1:{etcd_peer}")),
                arg(
                    "initial-advertise-peer-urls",
                    format!("http://127.0.0.1:{etcd_peer}"),
                ),
                arg(
                    "initial-cluster",
                    format!("ests=http://127.0.0.1:{etcd_peer}"),
                ),
                arg("unsafe-no-fsync", true),
                arg("auto-compaction-retention", 1),
                arg("quota-backend-bytes", 8_589_934_592u64),
                arg("log-level", "warn"),
            ],
        )?;
        self.wait_ready("etcd", || etcd_healthy(etcd_port)).await?;

        let node_network = self.options.real_node.clone();
        let serving_ips: Vec<std::net::IpAddr> = node_network
            .iter()
            .flat_map(|n| [n.node_ip.into(), n.kubernetes_service_ip().into()])
            .collect();
        let serving = self.pki.serving_with_ips(
            "kube-apiserver",
            &[
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            &serving_ips,
        )?;
        let (sa_key, sa_pub) = self.pki.service_account_key()?;
        let mut apiserver_args = vec![
            arg("etcd-servers", &etcd_url),
            arg("secure-port", api_port),
            arg("tls-cert-file", serving.cert.display()),
            arg("tls-private-key-file", serving.key.display()),
            arg("client-ca-file", self.pki.ca_cert.display()),
            arg(
                "service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
            ),
            arg("service-account-key-file", sa_pub.display()),
            arg("service-account-signing-key-file", sa_key.display()),
            arg("service-cluster-ip-range", SERVICE_CIDR),
            arg("allow-privileged", true),
            arg("max-requests-inflight", 0),
            arg("max-mutating-requests-inflight", 0),
            arg("enable-priority-and-fairness", false),
            arg("cert-dir", self.dir.join("apiserver-certs").display()),
            arg("feature-gates", "MaxUnavailableStatefulSet=true"),
        ];
        match &node_network {
            None => apiserver_args.extend([
                arg("bind-address", "127.0.0.1"),
                arg("advertise-address", "127.0.0.1"),
                arg("authorization-mode", "RBAC"),
                arg("endpoint-reconciler-type", "none"),
                // With no kubelets there are no service-account tokens to mount; as envtest does.
                arg("disable-admission-plugins", "ServiceAccount"),
            ]),
            Some(network) => {
                let kubelet_client = self.pki.client(
                    "apiserver-kubelet-client",
                    "kube-apiserver-kubelet-client",
                    &["system:masters"],
                )?;
                apiserver_args.extend([
                    arg("bind-address", "0.0.0.0"),
                    arg("advertise-address", network.node_ip),
                    arg("authorization-mode", "Node,RBAC"),
                    arg("enable-admission-plugins", "NodeRestriction"),
                    arg("kubelet-client-certificate", kubelet_client.cert.display()),
                    arg("kubelet-client-key", kubelet_client.key.display()),
                    arg("kubelet-certificate-authority", self.pki.ca_cert.display()),
                    arg("kubelet-preferred-address-types", "InternalIP"),
                    // Webhook Services are called at their endpoints, with or without
                    // kube-proxy on the host.
                    arg("enable-aggregator-routing", true),
                ]);
            }
        }
        self.spawn("kube-apiserver", apiserver_args)?;
        self.wait_ready("kube-apiserver", || async {
            let client = self.client().await?;
            let request = http::Request::get("/readyz").body(Vec::new())?;
            client
                .request_text(request)
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from)
        })
        .await?;

        let kcm_port = free_port()?;
        self.spawn(
            "kube-controller-manager",
            vec![
                arg("kubeconfig", self.kubeconfig.display()),
                arg("authentication-kubeconfig", self.kubeconfig.display()),
                arg("authorization-kubeconfig", self.kubeconfig.display()),
                arg("bind-address", "127.0.0.1"),
                arg("secure-port", kcm_port),
                arg(
                    "authorization-always-allow-paths",
                    "/healthz,/readyz,/livez,/metrics",
                ),
                arg("leader-elect", false),
                arg("controllers", "*"),
                arg("use-service-account-credentials", false),
                arg("service-account-private-key-file", sa_key.display()),
                arg("root-ca-file", self.pki.ca_cert.display()),
                arg("node-monitor-period", "2s"),
                arg(
                    "node-monitor-grace-period",
                    format!("{}s", NODE_MONITOR_GRACE.as_secs()),
                ),
                arg("kube-api-qps", 5000),
                arg("kube-api-burst", 10000),
                arg("feature-gates", "MaxUnavailableStatefulSet=true"),
            ],
        )?;
        self.start_scheduler(None)?;

        let kwok_port = free_port()?;
        let stages = bins::kwok_stage_files()?;
        let mut kwok_args = vec![
            arg("kubeconfig", self.kubeconfig.display()),
            arg("manage-all-nodes", false),
            arg(
                "manage-nodes-with-label-selector",
                format!("{}={}", MANAGED_LABEL.0, MANAGED_LABEL.1),
            ),
            arg("node-lease-duration-seconds", NODE_LEASE_SECONDS),
            arg("cidr", KWOK_POD_CIDR),
            arg("node-ip", "10.255.0.1"),
            arg("server-address", format!("127.0.0.1:{kwok_port}")),
        ];
        for stage in &stages {
            kwok_args.push(arg("config", stage.display()));
        }
        self.spawn("kwok", kwok_args)?;

        self.wait_ready("kube-controller-manager", || https_healthy(kcm_port))
            .await?;
        self.wait_ready("kube-scheduler", || https_healthy(self.scheduler_port))
            .await?;
        self.wait_ready("kwok", || plain_http_healthy(kwok_port, "/healthz", "ok"))
            .await?;
        self.install_storage_class().await
    }

    /// Starts kube-scheduler with a configuration; `extra` is appended to the
    /// KubeSchedulerConfiguration (for example an `extenders:` list).
    fn start_scheduler(&self, extra: Option<&str>) -> anyhow::Result<()> {
        let config = self.dir.join("scheduler.yaml");
        let body = format!(
            "apiVersion: kubescheduler.config.k8s.io/v1\n\
             kind: KubeSchedulerConfiguration\n\
             clientConnection:\n  kubeconfig: {}\n  qps: 5000\n  burst: 10000\n\
             leaderElection:\n  leaderElect: false\n\
             profiles:\n- schedulerName: default-scheduler\n{}\n",
            self.kubeconfig.display(),
            extra.unwrap_or_default()
        );
        std::fs::write(&config, body).with_context(|| format!("writing {}", config.display()))?;
        self.spawn(
            "kube-scheduler",
            vec![
                arg("config", config.display()),
                arg("bind-address", "127.0.0.1"),
                arg("secure-port", self.scheduler_port),
                arg("authentication-kubeconfig", self.kubeconfig.display()),
                arg("authorization-kubeconfig", self.kubeconfig.display()),
                arg(
                    "authorization-always-allow-paths",
                    "/healthz,/readyz,/livez,/metrics",
                ),
            ],
        )
    }

    /// Restarts kube-scheduler with `extra` appended to its configuration (`None` for the
    /// default configuration) and waits until it is healthy.
    pub async fn restart_scheduler(&self, extra: Option<&str>) -> anyhow::Result<()> {
        self.stop_process("kube-scheduler")?;
        self.start_scheduler(extra)?;
        self.wait_ready("kube-scheduler", || https_healthy(self.scheduler_port))
            .await
    }

    fn spawn(&self, name: &str, args: Vec<String>) -> anyhow::Result<()> {
        self.run_process(name, &self.bin.join(name), &args, &[])
    }

    /// Runs `program` as a process of this control plane: it logs to `logs/<name>.log`,
    /// shows in [`Self::log_tails`], and is stopped with the control plane (or by
    /// [`Self::stop_process`]).
    pub fn run_process(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        self.processes.run(name, program, args, env)
    }

    /// Whether the process `name` is running.
    pub fn is_running(&self, name: &str) -> bool {
        self.processes.is_running(name)
    }

    /// A client for kube-scheduler's own HTTPS endpoint (its `/metrics`); the scheduler's
    /// serving certificate is self-signed, so it is not verified.
    pub async fn scheduler_client(&self) -> anyhow::Result<Client> {
        crate::install_crypto_provider();
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("reading {}", self.kubeconfig.display()))?;
        let mut config =
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        config.cluster_url = format!("https://127.0.0.1:{}", self.scheduler_port).parse()?;
        config.root_cert = None;
        config.accept_invalid_certs = true;
        Ok(Client::try_from(config)?)
    }

    /// The pid of the running process `name` (to read its CPU time and memory).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.processes.pid(name)
    }

    /// How the process `name` exited (its status and the tail of its log); `None` while it
    /// runs.
    pub fn exited(&self, name: &str) -> Option<(std::process::ExitStatus, String)> {
        self.processes.exited(name)
    }

    /// Starts kube-scheduler again after [`Self::stop_process`], with `extra` as in
    /// [`Self::restart_scheduler`], and waits until it is healthy.
    pub async fn start_scheduler_with(&self, extra: Option<&str>) -> anyhow::Result<()> {
        self.start_scheduler(extra)?;
        self.wait_ready("kube-scheduler", || https_healthy(self.scheduler_port))
            .await
    }

    /// Kills the processes called `name` with SIGKILL, as a crash would.
    pub fn kill_process(&self, name: &str) -> anyhow::Result<()> {
        self.processes.end(name, Process::kill)
    }

    /// Stops the processes called `name` (SIGTERM, then SIGKILL after 10 s).
    pub fn stop_process(&self, name: &str) -> anyhow::Result<()> {
        self.processes
            .end(name, |p| p.stop(Duration::from_secs(10)))
    }

    /// Waits until `check` succeeds; fails at once, with the log, if the process exits.
    async fn wait_ready<F, Fut>(&self, name: &str, check: F) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        self.processes.wait_ready(name, START_TIMEOUT, check).await
    }

    async fn install_storage_class(&self) -> anyhow::Result<()> {
        let class: StorageClass = serde_json::from_value(serde_json::json!({
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": STORAGE_CLASS,
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}
            },
            "provisioner": "ests.test/kwok-volume",
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate"
        }))?;
        let api: Api<StorageClass> = Api::all(self.client().await?);
        api.patch(
            STORAGE_CLASS,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&class),
        )
        .await
        .context("installing the StorageClass")?;
        Ok(())
    }

    /// A client authenticated as the admin (system:masters).
    pub async fn client(&self) -> anyhow::Result<Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// A kubeconfig and client authenticated as `user` in `groups`, by a client certificate.
    /// For a service account: user `system:serviceaccount:<ns>:<name>`, groups
    /// `system:serviceaccounts` and `system:serviceaccounts:<ns>`.
    pub async fn client_as(
        &self,
        user: &str,
        groups: &[&str],
    ) -> anyhow::Result<(PathBuf, Client)> {
        let stem: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let cert = self.pki.client(&stem, user, groups)?;
        let path = self.dir.join(format!("kubeconfig-{stem}"));
        write_kubeconfig(&path, &self.server, &self.pki.ca_cert, &cert)?;
        let client = client_from_kubeconfig(&path).await?;
        Ok((path, client))
    }

    /// The last lines of every process log, for a failing test to print.
    pub fn log_tails(&self, lines: usize) -> String {
        self.processes.log_tails(lines)
    }

    /// The log file of a process.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.processes.log_path(name)
    }

    /// The tail of one process's log.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        log_tail(&self.log_path(name), lines)
    }

    /// Runs kubectl against this plane as the admin; returns its standard output, or an
    /// error with its standard error.
    pub async fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = tokio::process::Command::new(self.bin.join("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .context("running kubectl")?;
        if !output.status.success() {
            bail!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Stops every process (in reverse start order) and removes the directory.
    pub fn stop(&self) {
        self.processes.stop_all(Duration::from_secs(10));
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes a kubeconfig for `server` that authenticates with `cert`.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    cert: &CertFiles,
) -> anyhow::Result<()> {
    let body = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: ests\n  cluster:\n    server: {server}\n    certificate-authority: {}\n\
         users:\n- name: ests\n  user:\n    client-certificate: {}\n    client-key: {}\n\
         contexts:\n- name: ests\n  context:\n    cluster: ests\n    user: ests\ncurrent-context: ests\n",
        ca.display(),
        cert.cert.display(),
        cert.key.display()
    );
    // Written beside and renamed over: tests of one binary that ask for the same user's
    // kubeconfig at once must never read a half-written file ("failed to determine current
    // context").
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let tmp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
    std::fs::write(&tmp, body).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// A kube client for a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> anyhow::Result<Client> {
    crate::install_crypto_provider();
    let kubeconfig =
        Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

async fn etcd_healthy(port: u16) -> anyhow::Result<()> {
    plain_http_healthy(port, "/health", "\"health\":\"true\"").await
}

/// GETs `path` over plain HTTP on loopback and checks the body contains `expect`.
async fn plain_http_healthy(port: u16, path: &str, expect: &str) -> anyhow::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut response)).await??;
    if response.starts_with("HTTP/1.") && response.contains(" 200 ") && response.contains(expect) {
        Ok(())
    } else {
        bail!("unhealthy: {}", response.lines().next().unwrap_or_default())
    }
}

/// GETs /healthz of a component serving self-signed HTTPS on loopback.
async fn https_healthy(port: u16) -> anyhow::Result<()> {
    crate::install_crypto_provider();
    let url: http::Uri = format!("https://127.0.0.1:{port}").parse()?;
    let mut config = Config::new(url);
    config.accept_invalid_certs = true;
    config.connect_timeout = Some(Duration::from_secs(2));
    let client = Client::try_from(config)?;
    let request = http::Request::get("/healthz").body(Vec::new())?;
    let body = client.request_text(request).await?;
    if body.trim() == "ok" {
        Ok(())
    } else {
        bail!("healthz said {body:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubeconfig_rewritten_while_read_is_always_whole() {
        let dir = std::env::temp_dir().join(format!("ests-kubeconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("kubeconfig");
        let cert = CertFiles {
            cert: dir.join("c.crt"),
            key: dir.join("c.key"),
        };
        let ca = dir.join("ca.crt");
        write_kubeconfig(&path, "https://127.0.0.1:1", &ca, &cert).expect("write");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (path, ca, cert, stop) = (path.clone(), ca.clone(), cert.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    write_kubeconfig(&path, "https://127.0.0.1:1", &ca, &cert).expect("write");
                }
            })
        };
        for _ in 0..2_000 {
            let kubeconfig = Kubeconfig::read_from(&path).expect("whole");
            assert_eq!(kubeconfig.current_context.as_deref(), Some("ests"));
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        writer.join().expect("writer");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_a_port_taken_in_between_makes_a_start_retry() {
        let taken = anyhow::anyhow!(
            "kube-apiserver exited with exit status: 1: failed to listen on 127.0.0.1:39265: listen tcp 127.0.0.1:39265: bind: address already in use"
        )
        .context("starting the control plane");
        assert!(lost_a_port_race(&taken));
        let other = anyhow::anyhow!("etcd exited with exit status: 2: no such file")
            .context("starting the control plane");
        assert!(!lost_a_port_race(&other));
    }
}
