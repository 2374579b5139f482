//! The pluggable steps of a migration: fencing the source, moving its routes, providing a
//! replacement. Each is a command the operator configures (a cloud CLI, a BMC tool, `curl`
//! against an HTTP endpoint); exit status 0 means done. The command gets the facts as
//! arguments and environment (`ESTS_SOURCE_NODE`, `ESTS_TARGET_NODE`, `ESTS_MIGRATION`,
//! `ESTS_CIDRS`), and is killed after a timeout.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::process::Command;

/// A configured hook: a program and its leading arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub timeout: Duration,
}

impl Hook {
    /// Parses a command line (split on whitespace; no shell).
    pub fn parse(line: &str) -> Result<Self, String> {
        let mut words = line.split_whitespace();
        let program = words
            .next()
            .ok_or_else(|| "empty hook command".to_string())?;
        Ok(Self {
            program: program.into(),
            args: words.map(String::from).collect(),
            timeout: Duration::from_secs(60),
        })
    }
}

/// When each hook last ran, by migration and verb. Every event of a migration's pods and
/// nodes re-plans it, and a plan asks again for what is not done yet (fenced, routes moved,
/// a target named): the pacer keeps that from running a hook on every event.
#[derive(Debug, Default)]
pub struct Pacer {
    last: HashMap<(String, &'static str), Instant>,
}

impl Pacer {
    /// Whether hook `verb` may run for `migration` at `now`, `retry` after its last run; if
    /// so, notes that it runs.
    pub fn due(
        &mut self,
        migration: &str,
        verb: &'static str,
        now: Instant,
        retry: Duration,
    ) -> bool {
        let key = (migration.to_string(), verb);
        if self
            .last
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < retry)
        {
            return false;
        }
        self.last.insert(key, now);
        true
    }
}

/// What a hook is told.
#[derive(Debug, Clone, Default)]
pub struct HookFacts {
    pub migration: String,
    pub source: String,
    pub target: Option<String>,
    pub cidrs: Vec<String>,
}

/// Runs the hook for `verb` (`fence`, `network`, `provision`): `Ok(stdout)` when it exits 0.
pub async fn run(hook: &Hook, verb: &str, facts: &HookFacts) -> Result<String, String> {
    let mut command = Command::new(&hook.program);
    command
        .args(&hook.args)
        .arg(verb)
        .arg(&facts.source)
        .env("ESTS_MIGRATION", &facts.migration)
        .env("ESTS_SOURCE_NODE", &facts.source)
        .env(
            "ESTS_TARGET_NODE",
            facts.target.as_deref().unwrap_or_default(),
        )
        .env("ESTS_CIDRS", facts.cidrs.join(","))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(target) = &facts.target {
        command.arg(target);
    }
    let shown = hook.program.display();
    let output = tokio::time::timeout(hook.timeout, command.output())
        .await
        .map_err(|_| format!("{verb} hook {shown} did not finish in {:?}", hook.timeout))?
        .map_err(|e| format!("running the {verb} hook {shown}: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if output.status.success() {
        Ok(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        Err(format!(
            "{verb} hook {shown} answered no ({}): {}",
            output.status,
            if stderr.is_empty() { stdout } else { stderr }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_runs_again_only_after_the_retry() {
        let (t0, retry) = (Instant::now(), Duration::from_secs(5));
        let mut p = Pacer::default();
        assert!(p.due("m1", "fence", t0, retry));
        assert!(!p.due("m1", "fence", t0 + Duration::from_secs(1), retry));
        assert!(p.due("m1", "network", t0, retry), "each verb on its own");
        assert!(p.due("m2", "fence", t0, retry), "each migration on its own");
        assert!(p.due("m1", "fence", t0 + retry, retry));
        assert!(!p.due("m1", "fence", t0 + retry, retry));
    }

    #[tokio::test]
    async fn a_hook_says_yes_with_exit_zero_and_no_otherwise() {
        let facts = HookFacts {
            migration: "m".into(),
            source: "a".into(),
            target: Some("b".into()),
            cidrs: vec!["10.0.0.0/26".into()],
        };
        let script = std::env::temp_dir().join(format!("ests-hook-{}.sh", std::process::id()));
        std::fs::write(&script, "#!/bin/sh\necho \"$ESTS_CIDRS $1 $2 $3\"\n").expect("script");
        let yes = Hook::parse(&format!("sh {}", script.display())).expect("hook");
        assert_eq!(
            run(&yes, "fence", &facts).await,
            Ok("10.0.0.0/26 fence a b".to_string())
        );
        let _ = std::fs::remove_file(&script);
        let no = Hook::parse("false").expect("hook");
        let err = run(&no, "fence", &facts).await.expect_err("false says no");
        assert!(err.contains("fence hook false answered no"), "{err}");
        let missing = Hook::parse("/nonexistent/fence").expect("hook");
        assert!(run(&missing, "fence", &facts).await.is_err());
        let sleeper =
            std::env::temp_dir().join(format!("ests-hook-slow-{}.sh", std::process::id()));
        std::fs::write(&sleeper, "#!/bin/sh\nsleep 5\n").expect("script");
        let mut slow = Hook::parse(&format!("sh {}", sleeper.display())).expect("hook");
        slow.timeout = Duration::from_millis(100);
        assert!(
            run(&slow, "fence", &facts)
                .await
                .expect_err("too slow")
                .contains("did not finish")
        );
        let _ = std::fs::remove_file(&sleeper);
        assert!(Hook::parse("  ").is_err());
    }
}
