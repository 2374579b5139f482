//! Child processes that are always stopped, by process id, however the test process ends.
//!
//! Each control plane (and the real node) has a watchdog: a small shell process whose standard
//! input is a pipe from the test process. Every child's pid is written to it as the child
//! starts. When the test process exits for any reason (a failed test, a panic, Ctrl-C,
//! SIGKILL), the kernel closes the pipe, the watchdog reads end-of-file and stops every pid it
//! was given, runs its clean-up script if it has one (the real node's undo of its host
//! changes), then removes the directory. A normal stop does the same work in process first.
//!
//! A watchdog can also hold a machine-wide lock (`flock`) from before its owner starts until
//! its clean-up is done, so a resource only one process may use at a time (the real node's
//! bridge, ports and fixed paths) is never used by the next test binary while the previous
//! one's clean-up still runs.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const WATCHDOG: &str = r#"
trap '' INT HUP
dir="$1"; cleanup="$2"; lock="$3"; lock_wait="$4"; pids=""
if [ -n "$lock" ]; then
  exec 9>>"$lock"
  flock -w "$lock_wait" 9 || { echo busy; exit 1; }
fi
echo ready
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
[ -n "$cleanup" ] && [ -f "$cleanup" ] && bash "$cleanup" >"$cleanup.log" 2>&1
[ -z "$ESTS_KEEP_DIR" ] && [ -n "$dir" ] && rm -rf --one-file-system "$dir"
exit 0
"#;

/// What a watchdog does besides stopping its pids.
#[derive(Debug, Default, Clone)]
pub struct WatchdogOptions {
    /// Removed at the end (unless ESTS_KEEP_DIR is set).
    pub dir: Option<PathBuf>,
    /// A bash script run after the pids are stopped (it must be idempotent: a normal stop may
    /// have run it already).
    pub cleanup: Option<PathBuf>,
    /// A lock file held (`flock`) from start until the clean-up is done, and how long to wait
    /// for it.
    pub lock: Option<(PathBuf, Duration)>,
}

/// Stops registered processes when the test process goes away.
pub struct Watchdog {
    pipe: ChildStdin,
    child: Child,
}

impl Watchdog {
    /// Starts a watchdog that will also remove `dir` (unless ESTS_KEEP_DIR is set).
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(&WatchdogOptions {
            dir: Some(dir.to_path_buf()),
            ..WatchdogOptions::default()
        })
    }

    /// Starts a watchdog; returns once it holds its lock, if it has one (this blocks for up
    /// to the lock's wait).
    pub fn start_with(options: &WatchdogOptions) -> anyhow::Result<Self> {
        let display = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let (lock, lock_wait) = match &options.lock {
            Some((path, wait)) => (path.display().to_string(), wait.as_secs().max(1)),
            None => (String::new(), 0),
        };
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("ests-watchdog")
            .arg(display(&options.dir))
            .arg(display(&options.cleanup))
            .arg(&lock)
            .arg(lock_wait.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the watchdog (bash)")?;
        let pipe = child.stdin.take().context("watchdog has no stdin")?;
        let stdout = child.stdout.take().context("watchdog has no stdout")?;
        let mut first = String::new();
        BufReader::new(stdout)
            .read_line(&mut first)
            .context("reading the watchdog's first line")?;
        match first.trim() {
            "ready" => Ok(Self { pipe, child }),
            "busy" => {
                let _ = child.wait();
                bail!(
                    "another process holds {lock} after {lock_wait} s (a real node runs elsewhere on this machine:                      another test binary, or ests-dev)"
                )
            }
            other => {
                let _ = child.wait();
                bail!("the watchdog did not start: {other:?} (is flock from util-linux installed?)")
            }
        }
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

/// Processes started and stopped together under one watchdog: a control plane's, or the real
/// node's. Each logs to `<logs>/<name>.log`.
pub struct ProcessGroup {
    logs: PathBuf,
    inner: Mutex<GroupInner>,
}

struct GroupInner {
    watchdog: Option<Watchdog>,
    processes: Vec<Process>,
}

impl ProcessGroup {
    pub fn new(watchdog: Watchdog, logs: PathBuf) -> Self {
        Self {
            logs,
            inner: Mutex::new(GroupInner {
                watchdog: Some(watchdog),
                processes: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GroupInner> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `program` as process `name` of this group.
    pub fn run(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let mut inner = self.lock();
        let GroupInner {
            watchdog,
            processes,
        } = &mut *inner;
        let watchdog = watchdog.as_mut().context("already stopped")?;
        let process = Process::spawn(watchdog, name, program, args, env, self.log_path(name))?;
        processes.push(process);
        Ok(())
    }

    /// Whether the process `name` is running.
    pub fn is_running(&self, name: &str) -> bool {
        self.lock()
            .processes
            .iter_mut()
            .any(|p| p.name == name && p.exited().is_none())
    }

    /// The pid of the running process `name`.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.lock()
            .processes
            .iter_mut()
            .filter(|p| p.name == name)
            .find_map(|p| p.exited().is_none().then(|| p.pid()))
    }

    /// How the process `name` exited, with the tail of its log, if it has.
    pub fn exited(&self, name: &str) -> Option<(std::process::ExitStatus, String)> {
        let mut inner = self.lock();
        let p = inner.processes.iter_mut().find(|p| p.name == name)?;
        let status = p.exited()?;
        Some((status, p.log_tail(40)))
    }

    /// Ends the processes called `name` with `end`, forgets them, and tells the watchdog,
    /// so it never signals their (reaped, reusable) pids.
    pub fn end(&self, name: &str, end: impl Fn(&mut Process)) -> anyhow::Result<()> {
        let mut inner = self.lock();
        let GroupInner {
            watchdog,
            processes,
        } = &mut *inner;
        processes
            .iter_mut()
            .filter(|p| p.name == name)
            .for_each(end);
        processes.retain(|p| p.name != name);
        if let Some(w) = watchdog.as_mut() {
            let running: Vec<&Process> = processes.iter().collect();
            forget_stopped(w, &running)?;
        }
        Ok(())
    }

    /// Waits until `check` succeeds, for at most `timeout`; fails at once, with the log, if
    /// the process `name` exits.
    pub async fn wait_ready<F, Fut>(
        &self,
        name: &str,
        timeout: Duration,
        mut check: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let deadline = Instant::now() + timeout;
        let mut last_error = anyhow::anyhow!("not checked yet");
        while Instant::now() < deadline {
            if let Some((status, tail)) = self.exited(name) {
                bail!("{name} exited with {status}:\n{tail}");
            }
            match check().await {
                Ok(()) => return Ok(()),
                Err(e) => last_error = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("{name} not ready after {timeout:?}: {last_error:#}")
    }

    /// The log file of a process.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// The last lines of every process log, for a failing test to print.
    pub fn log_tails(&self, lines: usize) -> String {
        let inner = self.lock();
        let mut out = String::new();
        for p in &inner.processes {
            out.push_str(&format!(
                "===== {} (pid {}) {} =====\n{}\n",
                p.name,
                p.pid(),
                p.log.display(),
                p.log_tail(lines)
            ));
        }
        out
    }

    /// Stops every process (in reverse start order, each SIGTERM then SIGKILL after
    /// `grace`), then lets the watchdog run its clean-up and waits for it.
    pub fn stop_all(&self, grace: Duration) {
        let mut inner = self.lock();
        for p in inner.processes.iter_mut().rev() {
            p.stop(grace);
        }
        inner.processes.clear();
        if let Some(w) = inner.watchdog.take() {
            w.finish();
        }
    }
}
