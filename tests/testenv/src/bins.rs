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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Two runs of a build script at once: the second waits for the first's lock before it
    /// looks at the cache (both once rebuilt one wrapper module under the other).
    #[test]
    fn a_build_script_waits_for_another_ones_lock() -> anyhow::Result<()> {
        let cache = std::env::temp_dir().join(format!("ests-build-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&cache);
        // A cache that already holds everything build-cni.sh wants: a run only checks.
        let out = cache.join("bin-cniv1.3.0-pluginsv1.9.1");
        std::fs::create_dir_all(&out)?;
        for name in ["cnitool", "bridge", "ptp", "loopback", "host-local"] {
            let path = out.join(name);
            std::fs::write(&path, "#!/bin/sh\n")?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        }
        let held = std::fs::File::create(cache.join(".build.lock"))?;
        held.lock()?;
        let mut run = Command::new("bash")
            .arg(harness_dir().join("build-cni.sh"))
            .env("ESTS_CACHE", &cache)
            .env_remove("CNI_VERSION")
            .env_remove("CNI_PLUGINS_VERSION")
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        // Not done while the lock is held (a window to look in, not a synchronisation).
        let looked = Instant::now();
        while looked.elapsed() < Duration::from_millis(500) {
            assert!(run.try_wait()?.is_none(), "finished under another's lock");
            std::thread::yield_now();
        }
        held.unlock()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = run.try_wait()? {
                break status;
            }
            anyhow::ensure!(Instant::now() < deadline, "still waiting after the lock");
            std::thread::yield_now();
        };
        assert!(status.success());
        let mut printed = String::new();
        std::io::Read::read_to_string(&mut run.stdout.take().context("stdout")?, &mut printed)?;
        assert_eq!(printed.trim(), out.display().to_string());
        std::fs::remove_dir_all(&cache)?;
        Ok(())
    }
}
