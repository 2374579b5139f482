//! A real Kubernetes control plane on loopback for ests's tests and local demo.
//!
//! One control plane per test binary ([`shared`]); tests isolate themselves with their own
//! namespaces, and tests that change cluster-wide things (nodes, webhook configurations,
//! pools, scheduler configuration) take [`cluster_lock`] or use their own tainted nodes.
#![forbid(unsafe_code)]

pub mod bins;
pub mod clusters;
pub mod control_plane;
pub mod helm;
pub mod invariants;
pub mod monitor;
pub mod nodes;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod real_node;
pub mod resources;
pub mod wait;

use tokio::sync::{Mutex, MutexGuard, OnceCell};

pub use control_plane::ControlPlane;
pub use invariants::InvariantChecker;
pub use monitor::PodMonitor;
pub use nodes::NodeSpec;
pub use proxy::ApiProxy;
pub use real_node::RealNode;
pub use wait::{wait_for, wait_until};

/// Installs the process's one rustls crypto provider (ring, as kube's default); later calls
/// are no-ops.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The control plane of this test binary, started on first use. Its processes are stopped
/// by the watchdog when the test binary exits.
pub async fn shared() -> anyhow::Result<&'static ControlPlane> {
    static PLANE: OnceCell<ControlPlane> = OnceCell::const_new();
    PLANE
        .get_or_try_init(|| async {
            let plane = ControlPlane::start().await?;
            eprintln!(
                "ests-testenv: control plane at {} started in {:.1}s (kubeconfig {})",
                plane.server,
                plane.start_duration.as_secs_f64(),
                plane.kubeconfig.display()
            );
            Ok(plane)
        })
        .await
}

/// The control plane of this test binary with the machine's real node joined to it, both
/// started on first use (a test binary uses either this or [`shared`]). Fails, naming what is
/// missing, where the machine cannot run a real node: tests that need one fail rather than
/// skip.
pub async fn shared_real_node() -> anyhow::Result<(&'static ControlPlane, &'static RealNode)> {
    static PLANE: OnceCell<(ControlPlane, RealNode)> = OnceCell::const_new();
    let (plane, node) = PLANE
        .get_or_try_init(|| async {
            let plane = ControlPlane::start_with(control_plane::PlaneOptions::for_real_node(
                real_node::NodeNetwork::standard(),
            ))
            .await?;
            let node = RealNode::start(&plane).await?;
            eprintln!(
                "ests-testenv: control plane at {} ({:.1}s) with real node {} ({:.1}s)",
                plane.server,
                plane.start_duration.as_secs_f64(),
                node.name,
                node.start_duration.as_secs_f64()
            );
            Ok::<_, anyhow::Error>((plane, node))
        })
        .await?;
    Ok((plane, node))
}

/// Serializes tests that change cluster-wide state within one test binary.
pub async fn cluster_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::const_new(());
    LOCK.lock().await
}

/// Prints the control plane's logs if the current test panics while this guard lives.
pub struct LogsOnFailure<'a>(pub &'a ControlPlane);

impl Drop for LogsOnFailure<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.0.log_tails(40));
        }
    }
}
