//! `ests-dev`: the local demo. Brings up a control plane on loopback with three simulated
//! nodes and, where the machine allows it, one real node (kubelet, containerd, CNI), installs
//! the ests CRDs and admission policies, runs the ests components that exist, applies
//! config/samples and a set on the real node, prints how to reach it, and stays up until
//! interrupted.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ests_testenv::ControlPlane;
use ests_testenv::control_plane::PlaneOptions;
use ests_testenv::nodes::{NodeSpec, create_nodes};
use ests_testenv::real_node::{NodeNetwork, RealNode};
use ests_testenv::resources::{
    apply_yaml, bind_cluster_role, create_namespace, install_crds, install_policies,
};

/// Run ests's local demo: a real control plane (etcd, kube-apiserver,
/// kube-controller-manager, kube-scheduler) with KWOK-simulated nodes on 127.0.0.1.
#[derive(Parser)]
#[command(name = "ests-dev", version, about)]
struct Args {
    /// Number of simulated nodes to create.
    #[arg(long, default_value_t = 3)]
    nodes: usize,

    /// Namespace the samples are applied to.
    #[arg(long, default_value = "default")]
    namespace: String,

    /// Do not apply config/samples.
    #[arg(long)]
    no_samples: bool,

    /// Do not start the real node (kubelet, containerd, CNI on this machine; needs root):
    /// KWOK nodes only, which starts faster.
    #[arg(long)]
    no_real_node: bool,

    /// Do not run ests's components (nor apply the samples): the control plane and its nodes
    /// only, to run ests yourself.
    #[arg(long)]
    no_ests: bool,

    /// The ests binary whose components to run (default: `ests` beside this program, as
    /// `cargo build -p ests` leaves it).
    #[arg(long)]
    ests: Option<PathBuf>,
}

/// Prints a line to standard output, as `println!`, but a closed standard output (the
/// reader went away: `ests-dev | head`, a test that read its KUBECONFIG line) does not end
/// the demo.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// The identity the demo's controller runs as, as in a cluster.
const CONTROLLER_USER: &str = "system:serviceaccount:ests-system:ests-controller";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ests_testenv::install_crypto_provider();
    let args = Args::parse();
    let ests = match args.ests.clone() {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("ests"),
    };
    if !args.no_ests && !ests.is_file() {
        anyhow::bail!(
            "{} not found: run `cargo build -p ests` first, or pass --ests",
            ests.display()
        );
    }
    eprintln!(
        "ests-dev: starting the control plane (the first run builds it from Go modules; that takes a while)"
    );
    let options = if args.no_real_node {
        PlaneOptions::default()
    } else {
        PlaneOptions::for_real_node(NodeNetwork::standard())
    };
    let plane = ControlPlane::start_with(options).await?;
    let client = plane.client().await?;
    let real_node = if args.no_real_node {
        None
    } else {
        eprintln!("ests-dev: starting the real node (the first run builds kubelet and containerd)");
        match RealNode::start(&plane).await {
            Ok(node) => Some(node),
            Err(e) => {
                eprintln!("ests-dev: no real node, KWOK nodes only: {e:#}");
                None
            }
        }
    };
    let nodes: Vec<NodeSpec> = (0..args.nodes)
        .map(|i| NodeSpec::new(format!("node-{i}")))
        .collect();
    create_nodes(&client, &nodes).await?;
    install_crds(&client).await?;
    install_policies(&client, ests_api::policy::DEFAULT_NAMESPACE).await?;
    create_namespace(&client, ests_api::policy::DEFAULT_NAMESPACE).await?;
    let real_pods = if args.no_ests {
        Vec::new()
    } else {
        start_ests(&plane, &ests, &args).await?;
        match &real_node {
            Some(_) => real_node_demo(&plane, &args.namespace).await?,
            None => Vec::new(),
        }
    };
    let kubectl = plane.bin.join("kubectl");
    say!(
        "ests-dev: control plane ready in {:.1}s at {}",
        plane.start_duration.as_secs_f64(),
        plane.server
    );
    say!("KUBECONFIG={}", plane.kubeconfig.display());
    say!("ests-dev: try, from another shell:");
    say!("  export KUBECONFIG={}", plane.kubeconfig.display());
    say!("  {} get nodes", kubectl.display());
    say!("  {} get ests,sip -A", kubectl.display());
    if !real_pods.is_empty() {
        say!(
            "ests-dev: pods of the set real-demo run on the real node {}; each answers on TCP {} with its name:",
            ests_testenv::real_node::NODE_NAME,
            ests_testenv::real_node::images::ANSWER_PORT
        );
        for (name, ip) in &real_pods {
            say!(
                "  nc {ip} {}    # answers {name}",
                ests_testenv::real_node::images::ANSWER_PORT
            );
        }
        say!(
            "  {} exec -n {} real-demo-0 -- ip addr",
            kubectl.display(),
            args.namespace
        );
    }
    say!(
        "ests-dev: logs are in {}; press Ctrl-C to stop",
        plane.dir.join("logs").display()
    );

    wait_for_shutdown().await?;
    eprintln!("ests-dev: stopping");
    tokio::time::timeout(
        Duration::from_secs(90),
        tokio::task::spawn_blocking(move || {
            // The node first: its undo puts the host back.
            drop(real_node);
            plane.stop()
        }),
    )
    .await
    .context("stopping took too long")??;
    Ok(())
}

/// Runs ests's controller and webhook as processes of the plane (the webhook registered by
/// URL) and applies config/samples unless `--no-samples`.
async fn start_ests(
    plane: &ControlPlane,
    ests: &std::path::Path,
    args: &Args,
) -> anyhow::Result<()> {
    let client = plane.client().await?;
    // Until the Helm chart's least-privilege roles exist, the demo grants the controller
    // cluster-admin.
    bind_cluster_role(
        &client,
        "ests-controller-demo",
        "cluster-admin",
        CONTROLLER_USER,
    )
    .await?;
    let groups = [
        "system:serviceaccounts",
        "system:serviceaccounts:ests-system",
    ];
    let (kubeconfig, _) = plane.client_as(CONTROLLER_USER, &groups).await?;
    let kubeconfig = kubeconfig.display().to_string();
    plane.run_process(
        "ests-controller",
        ests,
        &[
            "controller".into(),
            "--lease-namespace=ests-system".into(),
            "--metrics-addr=127.0.0.1:0".into(),
        ],
        &[
            ("KUBECONFIG", kubeconfig.as_str()),
            ("POD_NAME", "ests-controller-demo"),
        ],
    )?;
    eprintln!("ests-dev: started ests controller ({})", ests.display());

    // The admission webhook, on loopback with a certificate of the harness CA, registered
    // with the API server by URL.
    let serving = plane.pki.serving("ests-webhook", &[])?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let webhook_addr = format!("127.0.0.1:{port}");
    plane.run_process(
        "ests-webhook",
        ests,
        &[
            "webhook".into(),
            format!("--listen={webhook_addr}"),
            format!("--tls-cert-file={}", serving.cert.display()),
            format!("--tls-key-file={}", serving.key.display()),
            "--metrics-addr=127.0.0.1:0".into(),
        ],
        &[("KUBECONFIG", kubeconfig.as_str())],
    )?;
    ests_testenv::wait_for(
        "the webhook listens",
        std::time::Duration::from_secs(30),
        || async {
            Ok(tokio::net::TcpStream::connect(&webhook_addr)
                .await
                .ok()
                .map(|_| ()))
        },
    )
    .await?;
    let (mutating, validating) = ests_webhook::config::configurations(
        &ests_webhook::config::Endpoint::Url(format!("https://{webhook_addr}")),
        Some(plane.pki.ca_pem.as_bytes()),
        ests_api::policy::DEFAULT_NAMESPACE,
        &[ests_core::pin::CniAnnotation::calico()],
    );
    for configuration in [
        serde_json::to_value(&mutating)?,
        serde_json::to_value(&validating)?,
    ] {
        ests_testenv::resources::apply_value(&client, &configuration, None, false).await?;
    }
    eprintln!("ests-dev: started and registered ests webhook on https://{webhook_addr}");
    if !args.no_samples {
        let dir = ests_testenv::bins::harness_dir().join("../../config/samples");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for file in files {
            let yaml = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            apply_yaml(&client, &yaml, Some(&args.namespace), false)
                .await
                .with_context(|| format!("applying {}", file.display()))?;
            eprintln!("ests-dev: applied {}", file.display());
        }
    }
    Ok(())
}

/// An EnhancedStatefulSet of two on the real node, from the test image; returns its pods'
/// names and addresses once they are Ready.
async fn real_node_demo(
    plane: &ControlPlane,
    namespace: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    use ests_testenv::real_node::images::{ANSWER_IMAGE, ANSWER_PORT};
    use k8s_openapi::api::core::v1::Pod;
    let client = plane.client().await?;
    let mut spec = serde_json::json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "answer",
            "image": ANSWER_IMAGE,
            "imagePullPolicy": "Never",
            "readinessProbe": {"tcpSocket": {"port": ANSWER_PORT}, "periodSeconds": 1},
        }],
    });
    if let (Some(spec), serde_json::Value::Object(placement)) =
        (spec.as_object_mut(), RealNode::placement())
    {
        spec.extend(placement);
    }
    let set = serde_json::json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1",
        "kind": "EnhancedStatefulSet",
        "metadata": {"name": "real-demo", "namespace": namespace},
        "spec": {
            "replicas": 2,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "real-demo"}},
            "template": {"metadata": {"labels": {"app": "real-demo"}}, "spec": spec},
        },
    });
    ests_testenv::resources::apply_value(&client, &set, Some(namespace), false).await?;
    let pods: kube::Api<Pod> = kube::Api::namespaced(client, namespace);
    let mut found = Vec::new();
    for name in ["real-demo-0", "real-demo-1"] {
        let ip = ests_testenv::wait::ready_pod_ip(&pods, name, Duration::from_secs(180)).await?;
        found.push((name.to_string(), ip));
    }
    eprintln!("ests-dev: real-demo is Ready on the real node");
    Ok(found)
}

async fn wait_for_shutdown() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C"),
        _ = term.recv() => Ok(()),
    }
}
