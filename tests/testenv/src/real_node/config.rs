//! The real node's configuration files, as text: containerd's, the kubelet's, kube-proxy's and
//! the CNI network's. Pure functions of [`NodeFiles`], so what the node runs with can be read in
//! one place and tested without starting anything.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::NodeNetwork;

/// Where the node keeps its state and what it listens on.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    /// The node's directory; everything below is inside it.
    pub dir: PathBuf,
    pub node_name: String,
    pub network: NodeNetwork,
    /// containerd's gRPC socket.
    pub containerd_socket: PathBuf,
    /// The sandbox (pause) image, imported before the kubelet starts.
    pub pause_image: String,
    /// The runc binary (Debian's).
    pub runc: PathBuf,
    /// The CA that signs the client certificates the kubelet accepts (the harness CA).
    pub client_ca: PathBuf,
    /// The kubelet's serving certificate and key (signed by the harness CA, naming the node
    /// address, so the API server can verify it for `logs` and `exec`).
    pub kubelet_tls: (PathBuf, PathBuf),
    pub kubelet_port: u16,
    pub kubelet_healthz_port: u16,
    pub kube_proxy_kubeconfig: PathBuf,
    pub kube_proxy_metrics_port: u16,
    pub kube_proxy_healthz_port: u16,
    /// The node's taint key (NoSchedule), so only pods that ask for the real node land there.
    pub taint_key: String,
}

impl NodeFiles {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn cni_bin_dir(&self) -> PathBuf {
        self.path("cni/bin")
    }

    pub fn cni_conf_dir(&self) -> PathBuf {
        self.path("cni/net.d")
    }
}

fn show(p: &Path) -> String {
    p.display().to_string()
}

/// containerd 2's configuration (version 3): its own root, state and socket under the node's
/// directory; CNI from the node's directories; the sandbox image pinned (it cannot be
/// pulled); NRI off (it would create /var/run/nri); netns mounts under the state directory.
pub fn containerd_toml(f: &NodeFiles) -> String {
    let sock = show(&f.containerd_socket);
    format!(
        r#"version = 3
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = "{debug}"
[plugins.'io.containerd.internal.v1.opt']
  path = "{opt}"
[plugins.'io.containerd.nri.v1.nri']
  disable = true
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{pause}"
[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  # This VM lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj (a sandbox asks for -998)
  # and fails every sandbox with "can't get final child's PID from pipe: EOF". This clamps the
  # score to containerd's own.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{cni_conf}"
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc_root}"
        BinaryName = "{runc}"
"#,
        root = show(&f.path("containerd/root")),
        state = show(&f.path("containerd/state")),
        debug = show(&f.path("containerd/debug.sock")),
        opt = show(&f.path("containerd/opt")),
        pause = f.pause_image,
        cni_bin = show(&f.cni_bin_dir()),
        cni_conf = show(&f.cni_conf_dir()),
        runc_root = show(&f.path("containerd/runc")),
        runc = show(&f.runc),
    )
}

/// The kubelet's configuration. cgroup v1 hosts need `failCgroupV1: false` (kubelet 1.36
/// refuses v1 otherwise) and the cgroupfs driver; an empty resolv.conf keeps pods from the
/// host's nameserver (outside this machine); image garbage collection is off (imported images
/// cannot be pulled again) and eviction thresholds are low (a busy CI disk must not evict).
pub fn kubelet_yaml(f: &NodeFiles) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://{sock}
failSwapOn: false
address: {node_ip}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: Webhook}}
tlsCertFile: {cert}
tlsPrivateKeyFile: {key}
clusterDomain: cluster.local
resolvConf: {resolv}
podLogsDir: {logs}
nodeLeaseDurationSeconds: 20
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
registerWithTaints:
- {{key: {taint}, value: "true", effect: NoSchedule}}
"#,
        sock = show(&f.containerd_socket),
        node_ip = f.network.node_ip,
        port = f.kubelet_port,
        healthz = f.kubelet_healthz_port,
        ca = show(&f.client_ca),
        cert = show(&f.kubelet_tls.0),
        key = show(&f.kubelet_tls.1),
        resolv = show(&f.path("resolv.conf")),
        logs = show(&f.path("podlogs")),
        taint = f.taint_key,
    )
}

/// kube-proxy's configuration: iptables mode, NodePorts only on the node's bridge address,
/// and the host's conntrack sysctls and `route_localnet` left alone.
pub fn kube_proxy_yaml(f: &NodeFiles) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {{kubeconfig: {kubeconfig}}}
mode: iptables
hostnameOverride: {node}
clusterCIDR: {pods}
metricsBindAddress: 127.0.0.1:{metrics}
healthzBindAddress: 127.0.0.1:{healthz}
nodePortAddresses: ["{node_ip}/32"]
conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s, udpTimeout: 0s, udpStreamTimeout: 0s}}
iptables: {{localhostNodePorts: false}}
"#,
        kubeconfig = show(&f.kube_proxy_kubeconfig),
        node = f.node_name,
        pods = f.network.pod_cidr,
        metrics = f.kube_proxy_metrics_port,
        healthz = f.kube_proxy_healthz_port,
        node_ip = f.network.node_ip,
    )
}

/// The pod network: the reference `bridge` plugin on the node's bridge (the gateway is the
/// node address) with `host-local` addresses from the dynamic range. Pods get a route to the
/// Service range and no default route, and no masquerading: they reach the host, each other
/// and ClusterIPs, nothing beyond this machine.
pub fn cni_conflist(f: &NodeFiles) -> String {
    let n = &f.network;
    let (start, end) = n.dynamic_range();
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "ests-real-node",
        "plugins": [{
            "type": "bridge",
            "bridge": n.bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "dataDir": show(&f.path("cni/ipam")),
                "ranges": [[{
                    "subnet": n.pod_cidr.to_string(),
                    "rangeStart": start.to_string(),
                    "rangeEnd": end.to_string(),
                    "gateway": n.node_ip.to_string(),
                }]],
                "routes": [{"dst": n.service_cidr.to_string()}],
            },
        }],
    });
    // serde_json cannot fail on a Value built here.
    serde_json::to_string_pretty(&conf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> NodeFiles {
        NodeFiles {
            dir: "/var/tmp/n".into(),
            node_name: "real".into(),
            network: NodeNetwork::standard(),
            containerd_socket: "/var/tmp/n/containerd/containerd.sock".into(),
            pause_image: "localhost/p:1".into(),
            runc: "/usr/sbin/runc".into(),
            client_ca: "/ca.crt".into(),
            kubelet_tls: ("/k.crt".into(), "/k.key".into()),
            kubelet_port: 1,
            kubelet_healthz_port: 2,
            kube_proxy_kubeconfig: "/kp".into(),
            kube_proxy_metrics_port: 3,
            kube_proxy_healthz_port: 4,
            taint_key: "ests.test/real-node".into(),
        }
    }

    #[test]
    fn containerd_keeps_its_state_in_the_node_directory() {
        let toml = containerd_toml(&files());
        for line in toml.lines().filter(|l| l.contains("= \"/")) {
            assert!(
                line.contains("\"/var/tmp/n/") || line.contains("/usr/sbin/runc"),
                "{line}"
            );
        }
        assert!(toml.contains("restrict_oom_score_adj = true"));
        assert!(toml.contains("sandbox = \"localhost/p:1\""));
    }

    #[test]
    fn the_kubelet_serves_on_the_node_address_with_the_harness_ca() {
        let yaml = kubelet_yaml(&files());
        let config: serde_json::Value = serde_saphyr::from_str(&yaml).expect("valid YAML");
        assert_eq!(config["address"], "10.88.0.1");
        assert_eq!(config["failCgroupV1"], false);
        assert_eq!(config["authentication"]["x509"]["clientCAFile"], "/ca.crt");
        assert_eq!(config["registerWithTaints"][0]["effect"], "NoSchedule");
    }

    #[test]
    fn pods_get_the_service_route_and_no_default_route() {
        let conf: serde_json::Value =
            serde_json::from_str(&cni_conflist(&files())).expect("valid JSON");
        let ipam = &conf["plugins"][0]["ipam"];
        assert_eq!(ipam["routes"], json!([{"dst": "10.96.0.0/16"}]));
        assert_eq!(ipam["ranges"][0][0]["gateway"], "10.88.0.1");
        assert_eq!(conf["plugins"][0]["ipMasq"], false);
        let proxy: serde_json::Value =
            serde_saphyr::from_str(&kube_proxy_yaml(&files())).expect("valid YAML");
        assert_eq!(proxy["nodePortAddresses"], json!(["10.88.0.1/32"]));
    }
}
