//! `ests node install-cni`: puts the `ests-cni` binary and the network config list on the
//! node (the chart's DaemonSet runs it as an init container, with the host's CNI
//! directories mounted).
//!
//! Each file is written whole or not at all: a temporary file in the same directory,
//! synced, then renamed over the old one (and the directory synced), so the runtime, which
//! watches the config directory and runs the binary at any moment, never sees half a file.
//! Renaming also replaces a binary that is running (a plugin mid-ADD keeps the old inode),
//! where writing into it would fail with "text file busy". A file that already holds the
//! same bytes (and, for the binary, mode) is left alone, so a restarted pod changes nothing
//! and the runtime reloads nothing.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The binary's mode: executable by the runtime (root), readable by all, as the reference
/// plugins are installed.
const BINARY_MODE: u32 = 0o755;
/// The config's mode: it names the agent's socket, nothing secret.
const CONFIG_MODE: u32 = 0o644;

/// What the installer puts where.
#[derive(Debug, Clone)]
pub struct Install {
    /// The plugin binary to copy (in the image).
    pub plugin: PathBuf,
    /// The host's CNI binary directory; the copy is named `ests-cni`.
    pub bin_dir: PathBuf,
    /// The host's CNI config directory.
    pub conf_dir: PathBuf,
    /// The config list's file name in it.
    pub conf_file: String,
    /// The config list's text ([`ests_cni::conflist::conflist`]).
    pub conflist: String,
}

/// What one installation did to a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It held the same already and was left alone.
    Unchanged,
    /// It was written (new, or with other content).
    Written,
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub binary: (PathBuf, Change),
    pub conflist: (PathBuf, Change),
}

/// Installs the binary, then the list (the runtime may use the list as soon as it appears,
/// so the binary it names must be there first). The directories must exist: they are the
/// runtime's, and one that is missing means the runtime reads others.
pub fn install(what: &Install) -> anyhow::Result<Installed> {
    if what.conf_file.is_empty()
        || what.conf_file.contains('/')
        || !(what.conf_file.ends_with(".conflist"))
    {
        anyhow::bail!(
            "the config file name {:?} must be a plain file name ending in .conflist (the runtime reads lists only from those)",
            what.conf_file
        );
    }
    let bytes = fs::read(&what.plugin)
        .with_context(|| format!("reading the plugin binary {}", what.plugin.display()))?;
    let binary = what.bin_dir.join(ests_cni::PLUGIN_TYPE);
    let binary_change = put(&binary, &bytes, BINARY_MODE)?;
    let conflist = what.conf_dir.join(&what.conf_file);
    let conflist_change = put(&conflist, what.conflist.as_bytes(), CONFIG_MODE)?;
    Ok(Installed {
        binary: (binary, binary_change),
        conflist: (conflist, conflist_change),
    })
}

/// Makes `path` hold `bytes` with `mode`, atomically; leaves it alone if it does already.
pub fn put(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<Change> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    match fs::read(path) {
        Ok(existing) if existing == bytes => {
            let current = fs::metadata(path)
                .with_context(|| format!("reading the mode of {}", path.display()))?
                .permissions()
                .mode()
                & 0o7777;
            if current == mode {
                return Ok(Change::Unchanged);
            }
        }
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?
        .to_string_lossy();
    // Hidden and not ending in .conflist, so the runtime never reads it as a config; named
    // after this process, so two installers (an old pod and its replacement) never write
    // into one temporary file.
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| -> anyhow::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        // The mode asked at creation is masked by the umask: set it exactly.
        file.set_permissions(Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        // The rename itself survives a crash only once the directory is synced.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map(|()| Change::Written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A fresh directory under the system's temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "ests-install-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("bin")).expect("bin dir");
            fs::create_dir_all(dir.join("net.d")).expect("conf dir");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn setup(dir: &TempDir, plugin: &[u8], conflist: &str) -> Install {
        let plugin_path = dir.0.join("ests-cni.src");
        fs::write(&plugin_path, plugin).expect("plugin");
        Install {
            plugin: plugin_path,
            bin_dir: dir.0.join("bin"),
            conf_dir: dir.0.join("net.d"),
            conf_file: "00-ests.conflist".into(),
            conflist: conflist.into(),
        }
    }

    fn inode(path: &Path) -> u64 {
        fs::metadata(path).expect("metadata").ino()
    }

    #[test]
    fn installs_both_files_then_leaves_them_alone_until_they_differ() {
        let dir = TempDir::new("idempotent");
        let what = setup(&dir, b"binary v1", "{\"v\": 1}\n");
        let first = install(&what).expect("installed");
        assert_eq!(first.binary.1, Change::Written);
        assert_eq!(first.conflist.1, Change::Written);
        let (binary, conflist) = (first.binary.0.clone(), first.conflist.0.clone());
        assert_eq!(binary, dir.0.join("bin/ests-cni"));
        assert_eq!(fs::read(&binary).expect("binary"), b"binary v1");
        assert_eq!(
            fs::metadata(&binary).expect("meta").permissions().mode() & 0o7777,
            0o755
        );
        assert_eq!(
            fs::read_to_string(&conflist).expect("conflist"),
            "{\"v\": 1}\n"
        );
        assert_eq!(
            fs::metadata(&conflist).expect("meta").permissions().mode() & 0o7777,
            0o644
        );
        let (binary_inode, conflist_inode) = (inode(&binary), inode(&conflist));

        // Again, the same: nothing written (a rename would give new inodes).
        let again = install(&what).expect("installed");
        assert_eq!(again.binary.1, Change::Unchanged);
        assert_eq!(again.conflist.1, Change::Unchanged);
        assert_eq!(inode(&binary), binary_inode);
        assert_eq!(inode(&conflist), conflist_inode);

        // A new config: only it is rewritten.
        let newer = Install {
            conflist: "{\"v\": 2}\n".into(),
            ..what.clone()
        };
        let changed = install(&newer).expect("installed");
        assert_eq!(changed.binary.1, Change::Unchanged);
        assert_eq!(changed.conflist.1, Change::Written);
        assert_ne!(inode(&conflist), conflist_inode);
        assert_eq!(
            fs::read_to_string(&conflist).expect("conflist"),
            "{\"v\": 2}\n"
        );

        // The same bytes with a wrong mode are put right.
        fs::set_permissions(&binary, Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(
            install(&newer).expect("installed").binary.1,
            Change::Written
        );
        assert_eq!(
            fs::metadata(&binary).expect("meta").permissions().mode() & 0o7777,
            0o755
        );

        // No temporary file is left behind.
        for sub in ["bin", "net.d"] {
            let names: Vec<String> = fs::read_dir(dir.0.join(sub))
                .expect("list")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names.len(), 1, "{sub}: {names:?}");
        }
    }

    #[test]
    fn a_running_binary_is_replaced_not_written_into() {
        let dir = TempDir::new("running");
        let what = setup(&dir, b"old", "{}\n");
        install(&what).expect("installed");
        // An open handle stands for a plugin mid-ADD: it keeps reading the old inode.
        let mut open = File::open(dir.0.join("bin/ests-cni")).expect("open");
        fs::write(&what.plugin, b"new").expect("new plugin");
        assert_eq!(install(&what).expect("installed").binary.1, Change::Written);
        let mut old = String::new();
        std::io::Read::read_to_string(&mut open, &mut old).expect("read");
        assert_eq!(old, "old");
        assert_eq!(fs::read(dir.0.join("bin/ests-cni")).expect("new"), b"new");
    }

    #[test]
    fn failures_name_what_failed() {
        let dir = TempDir::new("failures");
        let mut what = setup(&dir, b"b", "{}\n");
        what.conf_file = "../escape.conflist".into();
        let e = install(&what).expect_err("refused");
        assert!(e.to_string().contains("plain file name"), "{e:#}");
        what.conf_file = "00-ests.conf".into();
        assert!(install(&what).is_err());
        what.conf_file = "00-ests.conflist".into();
        what.plugin = dir.0.join("missing");
        let e = install(&what).expect_err("no plugin");
        assert!(
            format!("{e:#}").contains("reading the plugin binary"),
            "{e:#}"
        );
        let mut what = setup(&dir, b"b", "{}\n");
        what.conf_dir = dir.0.join("no-such-dir");
        let e = install(&what).expect_err("no conf dir");
        assert!(format!("{e:#}").contains("creating"), "{e:#}");
        // The binary goes in first: the list, which names it, could not be written.
        assert!(dir.0.join("bin/ests-cni").is_file());
    }
}
