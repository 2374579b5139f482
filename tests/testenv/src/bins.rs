//! Where the control-plane binaries and the KWOK stages are.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, bail};

/// The repository's `tests/harness` directory.
pub fn harness_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../harness")
}

/// The directory holding etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
/// kubectl, kwok and helm: `$ESTS_BIN_DIR` if set, otherwise what
/// `tests/harness/build-bins.sh` builds (once; it is cached outside the repository).
pub fn locate() -> anyhow::Result<PathBuf> {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    if let Some(dir) = FOUND.get() {
        return Ok(dir.clone());
    }
    let dir = match std::env::var_os("ESTS_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => run_build_script("build-bins.sh")?,
    };
    for name in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
    ] {
        if !dir.join(name).is_file() {
            bail!(
                "{} has no {name}; run tests/harness/build-bins.sh",
                dir.display()
            );
        }
    }
    Ok(FOUND.get_or_init(|| dir).clone())
}

/// The KWOK stage files (our own; see tests/harness/kwok).
pub fn kwok_stage_files() -> anyhow::Result<Vec<PathBuf>> {
    let dir = harness_dir().join("kwok");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

/// The directory holding what the real node runs (kubelet, kube-proxy, containerd, its shim,
/// ctr, pause): `$ESTS_NODE_BIN_DIR` if set, otherwise what `tests/harness/build-node.sh`
/// builds (once; cached outside the repository). The Debian packages the node needs are
/// installed first by `tests/harness/install-node-deps.sh` where any is missing (it needs
/// root; without, the node's prerequisite check names what is missing).
pub fn locate_node() -> anyhow::Result<PathBuf> {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    if let Some(dir) = FOUND.get() {
        return Ok(dir.clone());
    }
    let deps = harness_dir().join("install-node-deps.sh");
    let installed = Command::new("bash")
        .arg(&deps)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .status()
        .with_context(|| format!("running {}", deps.display()))?;
    if !installed.success() {
        eprintln!(
            "ests-testenv: {} failed ({installed}); going on to name what is missing",
            deps.display()
        );
    }
    let dir = match std::env::var_os("ESTS_NODE_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => run_build_script("build-node.sh")?,
    };
    Ok(FOUND.get_or_init(|| dir).clone())
}

/// Runs a build script of `tests/harness` and returns the directory it printed last.
fn run_build_script(name: &str) -> anyhow::Result<PathBuf> {
    let script = harness_dir().join(name);
    let output = Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!("{} failed with {}", script.display(), output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout
        .lines()
        .last()
        .with_context(|| format!("{name} printed no directory"))?;
    Ok(PathBuf::from(last.trim()))
}
