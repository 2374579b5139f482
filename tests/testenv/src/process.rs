//! Child processes that are always stopped, by process id, however the test process ends.
//!
//! Each control plane has a watchdog: a small shell process whose standard input is a pipe
//! from the test process. Every child's pid is written to it as the child starts. When the
//! test process exits for any reason (a failed test, a panic, Ctrl-C, SIGKILL), the kernel
//! closes the pipe, the watchdog reads end-of-file and stops every pid it was given, then
//! removes the control plane's directory. A normal stop does the same work in process first.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const WATCHDOG: &str = r#"
trap '' INT HUP
dir="$1"; pids=""
while read -r line; do
  case "$line" in
    forget) pids="" ;;
    *) pids="$pids $line" ;;
  esac
done
for p in $pids; do kill -TERM "$p" 2>/dev/null; done
for _ in $(seq 100); do
  alive=""; for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ -z "$alive" ] && break; sleep 0.1
done
for p in $pids; do kill -KILL "$p" 2>/dev/null; done
[ -z "$ESTS_KEEP_DIR" ] && [ -n "$dir" ] && rm -rf "$dir"
exit 0
"#;

/// Stops registered processes when the test process goes away.
pub struct Watchdog {
    pipe: ChildStdin,
    child: Child,
}

impl Watchdog {
    /// Starts a watchdog that will also remove `dir` (unless ESTS_KEEP_DIR is set).
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("ests-watchdog")
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the watchdog (bash)")?;
        let pipe = child.stdin.take().context("watchdog has no stdin")?;
        Ok(Self { pipe, child })
    }

    fn register(&mut self, pid: u32) -> anyhow::Result<()> {
        writeln!(self.pipe, "{pid}").context("telling the watchdog a pid")
    }

    /// Forgets every pid: they were stopped and reaped already, and may be reused.
    fn forget_all(&mut self) {
        let _ = writeln!(self.pipe, "forget");
    }

    /// Closes the pipe and waits for the watchdog to finish its cleanup.
    pub fn finish(mut self) {
        self.forget_all();
        drop(self.pipe);
        let _ = self.child.wait();
    }
}

/// A running child process with its log file.
pub struct Process {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Process {
    /// Starts `program` with `args`, standard output and error going to `log`.
    pub fn spawn(
        watchdog: &mut Watchdog,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        // Appending: a process restarted under the same name keeps its earlier log.
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .envs(env.iter().copied())
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        watchdog.register(child.id())?;
        Ok(Self {
            name: name.to_string(),
            log,
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited, with its status.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// SIGKILL, as a crash would; reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL after `grace`; reaps the process.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Forget reaped pids in the watchdog so it never signals a reused pid.
pub fn forget_stopped(watchdog: &mut Watchdog, still_running: &[&Process]) -> anyhow::Result<()> {
    watchdog.forget_all();
    for p in still_running {
        watchdog.register(p.pid())?;
    }
    Ok(())
}

/// The last `lines` lines of a file, or a note that it cannot be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
