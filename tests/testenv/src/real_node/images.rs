//! Container images without a registry: one-layer images written as `docker save` archives
//! (manifest.json, the config, layer.tar) that `ctr images import` takes. The harness builds
//! three: the sandbox (`pause`, built statically from Kubernetes' pause.c), a busybox test
//! image whose server answers every TCP connection with its pod's name, and the ests image
//! (the workspace's `ests` binary with the shared libraries it links, as the Dockerfile ships).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use ring::digest::{SHA256, digest};
use serde_json::json;

/// The port the test image answers on.
pub const ANSWER_PORT: u16 = 8080;
/// The sandbox image.
pub const PAUSE_IMAGE: &str = "localhost/ests-test/pause:3.10";
/// The test image, version 1 (answers `<pod name> v1`).
pub const ANSWER_IMAGE: &str = "localhost/ests-test/answer:v1";
/// The ests image as the harness builds it.
pub const ESTS_IMAGE: &str = "localhost/ests/ests:dev";

enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        data: Vec<u8>,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
}

/// A one-layer image being put together.
pub struct Image {
    pub reference: String,
    entries: Vec<Entry>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
    user: Option<String>,
}

impl Image {
    pub fn new(reference: &str) -> Self {
        Self {
            reference: reference.to_string(),
            entries: Vec::new(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            user: None,
        }
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        self.entries.push(Entry::Dir {
            path: path.into(),
            mode,
        });
        self
    }

    pub fn file(mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.entries.push(Entry::File {
            path: path.into(),
            data: data.into(),
            mode,
        });
        self
    }

    /// A file copied from the host (symbolic links followed).
    pub fn host_file(self, path: &str, host: &Path, mode: u32) -> anyhow::Result<Self> {
        let data = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        Ok(self.file(path, data, mode))
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.entries.push(Entry::Symlink {
            path: path.into(),
            target: target.into(),
        });
        self
    }

    pub fn entrypoint(mut self, args: &[&str]) -> Self {
        self.entrypoint = args.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn cmd(mut self, args: &[&str]) -> Self {
        self.cmd = args.iter().map(|a| a.to_string()).collect();
        self
    }

    pub fn env(mut self, var: &str) -> Self {
        self.env.push(var.to_string());
        self
    }

    pub fn user(mut self, user: &str) -> Self {
        self.user = Some(user.to_string());
        self
    }

    fn layer(&self) -> anyhow::Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        for entry in &self.entries {
            let mut header = tar::Header::new_gnu();
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            match entry {
                Entry::Dir { path, mode } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_size(0);
                    tar.append_data(&mut header, path, std::io::empty())?;
                }
                Entry::File { path, data, mode } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    tar.append_data(&mut header, path, data.as_slice())?;
                }
                Entry::Symlink { path, target } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    tar.append_link(&mut header, path, target)?;
                }
            }
        }
        Ok(tar.into_inner()?)
    }

    /// Writes the image as a `docker save` archive.
    pub fn write_archive(&self, out: &Path) -> anyhow::Result<()> {
        let layer = self.layer().context("building the layer")?;
        let diff_id = hex(digest(&SHA256, &layer).as_ref());
        let mut config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": self.env, "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
        });
        if !self.entrypoint.is_empty() {
            config["config"]["Entrypoint"] = json!(self.entrypoint);
        }
        if !self.cmd.is_empty() {
            config["config"]["Cmd"] = json!(self.cmd);
        }
        if let Some(user) = &self.user {
            config["config"]["User"] = json!(user);
        }
        let config = serde_json::to_vec(&config)?;
        let config_name = format!("{}.json", hex(digest(&SHA256, &config).as_ref()));
        let layer_name = format!("{diff_id}/layer.tar");
        let manifest = serde_json::to_vec(&json!([{
            "Config": config_name,
            "RepoTags": [self.reference],
            "Layers": [layer_name],
        }]))?;
        let file =
            std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut archive = tar::Builder::new(std::io::BufWriter::new(file));
        for (name, data) in [
            ("manifest.json", manifest.as_slice()),
            (config_name.as_str(), config.as_slice()),
            (layer_name.as_str(), layer.as_slice()),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_mtime(0);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            archive
                .append_data(&mut header, name, data)
                .with_context(|| format!("writing {}", out.display()))?;
        }
        archive.into_inner()?;
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sandbox image: Kubernetes' pause, built statically by build-node.sh.
pub fn pause(node_bin: &Path) -> anyhow::Result<Image> {
    Image::new(PAUSE_IMAGE)
        .host_file("pause", &node_bin.join("pause"), 0o755)
        .map(|i| i.entrypoint(&["/pause"]))
}

/// The server of the test image: every TCP connection on $PORT is answered with one line,
/// `<hostname> <version>`; in a pod the hostname is the pod's name.
const SERVE: &str = r#"#!/bin/sh
echo "serving $(hostname) $VERSION on :${PORT:-8080}"
exec nc -ll -p "${PORT:-8080}" -e /bin/answer
"#;
const ANSWER: &str = "#!/bin/sh\necho \"$(hostname) $VERSION\"\n";

/// The test image at `version` (`localhost/ests-test/answer:<version>`): Debian's static
/// busybox and a server that answers with the pod's name and the version. (Debian's static
/// busybox `wget` crashes in an image without NSS libraries; `nc` works.)
pub fn answer(version: &str) -> anyhow::Result<Image> {
    let busybox = super::prereq::which("busybox").context("busybox is not installed")?;
    let mut image = Image::new(&format!("localhost/ests-test/answer:{version}"))
        .dir("bin", 0o755)
        .dir("tmp", 0o1777)
        .dir("etc", 0o755)
        .host_file("bin/busybox", &busybox, 0o755)?
        .file("bin/serve", SERVE, 0o755)
        .file("bin/answer", ANSWER, 0o755)
        .env(&format!("VERSION={version}"))
        .entrypoint(&["/bin/serve"]);
    for applet in [
        "sh", "nc", "hostname", "ip", "cat", "echo", "ls", "sleep", "env", "ps", "wc",
    ] {
        image = image.symlink(&format!("bin/{applet}"), "busybox");
    }
    Ok(image)
}

/// The ests image: `binary` at /usr/local/bin/ests and the CNI plugin `cni` beside it at
/// /usr/local/bin/ests-cni (which `ests node install-cni` copies onto the node), with the
/// shared libraries `ldd` lists for either, the distroless `nonroot` user (65532),
/// entrypoint `ests`, command `--help` — the layout of the Dockerfile's image. (The
/// Dockerfile links ests-cni statically, since the host runs it; the harness's host is the
/// one it was built on, so its debug build runs there as it is.)
pub fn ests(binary: &Path, cni: &Path) -> anyhow::Result<Image> {
    let mut image = Image::new(ESTS_IMAGE)
        .dir("tmp", 0o1777)
        .dir("etc", 0o755)
        .file(
            "etc/passwd",
            "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
            0o644,
        )
        .host_file("usr/local/bin/ests", binary, 0o755)?
        .host_file("usr/local/bin/ests-cni", cni, 0o755)?
        .entrypoint(&["/usr/local/bin/ests"])
        .cmd(&["--help"])
        .user("65532:65532");
    let mut libraries = linked_libraries(binary)?;
    for lib in linked_libraries(cni)? {
        if !libraries.contains(&lib) {
            libraries.push(lib);
        }
    }
    for lib in libraries {
        let real =
            std::fs::canonicalize(&lib).with_context(|| format!("resolving {}", lib.display()))?;
        let inside = lib.to_string_lossy().trim_start_matches('/').to_string();
        image = image.host_file(&inside, &real, 0o755)?;
    }
    Ok(image)
}

/// The shared libraries a dynamically linked binary loads, as `ldd` lists them.
fn linked_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // A static binary: "not a dynamic executable".
        if String::from_utf8_lossy(&output.stderr).contains("not a dynamic")
            || text.contains("not a dynamic")
        {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(parse_ldd(&text))
}

/// The paths in `ldd` output: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO has none.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_every_library_path() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn an_archive_names_its_layer_by_digest() {
        let dir = std::env::temp_dir().join(format!("ests-image-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let out = dir.join("i.tar");
        Image::new("localhost/x:1")
            .dir("bin", 0o755)
            .file("bin/hello", "hi", 0o755)
            .symlink("bin/sh", "hello")
            .entrypoint(&["/bin/hello"])
            .write_archive(&out)
            .expect("written");
        let mut archive = tar::Archive::new(std::fs::File::open(&out).expect("open"));
        let mut names = Vec::new();
        let mut manifest = None;
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let name = entry.path().expect("path").display().to_string();
            if name == "manifest.json" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut entry, &mut text).expect("read");
                manifest = Some(serde_json::from_str::<serde_json::Value>(&text).expect("json"));
            }
            names.push(name);
        }
        let manifest = manifest.expect("a manifest");
        assert_eq!(manifest[0]["RepoTags"][0], "localhost/x:1");
        let layer = manifest[0]["Layers"][0].as_str().expect("a layer");
        assert!(names.iter().any(|n| n == layer), "{names:?}");
        assert_eq!(layer.len(), 64 + "/layer.tar".len());
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
