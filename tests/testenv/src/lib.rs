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
pub mod resources;
pub mod wait;

use tokio::sync::{Mutex, MutexGuard, OnceCell};

pub use control_plane::ControlPlane;
pub use invariants::InvariantChecker;
pub use monitor::PodMonitor;
pub use nodes::NodeSpec;
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
