//! `migrate-node`: creates a NodeMigration for a node and, with `--wait`, follows it to the
//! end as `rollout status` follows a rollout. `kubectl ests migrate-node` and
//! `ests migrate-node` are this one function.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ests_api::{MigrationPhase, NodeMigration, NodeMigrationSpec};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};

/// How often a followed migration is read again.
const POLL: Duration = Duration::from_secs(1);

/// What to migrate, and whether to follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateRequest {
    /// The node to move away from.
    pub source: String,
    /// The node to move to (None: one labelled jke.jdcloud.com/replacement-for=SOURCE).
    pub target: Option<String>,
    /// The operator confirms SOURCE is off or cut off.
    pub confirm_fenced: bool,
    pub reason: Option<String>,
    /// Follow the migration until it completes (or is refused).
    pub wait: bool,
    /// Give up following after this long (zero: never).
    pub timeout: Duration,
}

/// The NodeMigration's name for a source node: one migration per node at a time.
pub fn migration_name(source: &str) -> String {
    format!("migrate-{source}")
}

/// Creates the migration (or follows the one that exists) and, with `wait`, prints its
/// progress until it completes; fails if it is refused or the timeout passes first.
pub async fn run(
    client: Client,
    request: &MigrateRequest,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let api: Api<NodeMigration> = Api::all(client);
    let name = migration_name(&request.source);
    let migration = NodeMigration {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..ObjectMeta::default()
        },
        spec: NodeMigrationSpec {
            source_node: request.source.clone(),
            target_node: request.target.clone(),
            reason: request.reason.clone(),
            confirm_fenced: request.confirm_fenced,
        },
        status: None,
    };
    match api.create(&PostParams::default(), &migration).await {
        Ok(_) => writeln!(out, "nodemigration/{name} created")?,
        Err(kube::Error::Api(s)) if s.is_already_exists() => {
            writeln!(out, "nodemigration/{name} exists already; following it")?
        }
        Err(e) => return Err(e).with_context(|| format!("creating NodeMigration {name}")),
    }
    if !request.wait {
        return Ok(());
    }
    let deadline = (!request.timeout.is_zero()).then(|| Instant::now() + request.timeout);
    let mut last = String::new();
    loop {
        let m = api
            .get(&name)
            .await
            .with_context(|| format!("reading nodemigration/{name}"))?;
        let line = progress(&m);
        if line != last {
            writeln!(out, "{line}")?;
            out.flush()?;
        }
        match outcome(&m) {
            Some(Ok(())) => return Ok(()),
            Some(Err(why)) => bail!("nodemigration/{} refused: {why}", m.name_any()),
            None => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            bail!(
                "nodemigration/{name} did not complete in {:?}: {line}",
                request.timeout
            );
        }
        last = line;
        tokio::time::sleep(POLL).await;
    }
}

/// Whether a followed migration is over: completed, or refused (with why).
pub fn outcome(m: &NodeMigration) -> Option<Result<(), String>> {
    let status = m.status.as_ref()?;
    match status.phase {
        MigrationPhase::Completed => Some(Ok(())),
        MigrationPhase::Refused => {
            Some(Err(waiting(m).unwrap_or_else(|| "no reason given".into())))
        }
        _ => None,
    }
}

/// What the migration waits for, from its Completed condition.
fn waiting(m: &NodeMigration) -> Option<String> {
    m.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Completed")
        .map(|c| c.message.clone())
        .filter(|message| !message.is_empty())
}

/// One line of progress: phase, target, pods on the target, what is awaited.
pub fn progress(m: &NodeMigration) -> String {
    let Some(s) = &m.status else {
        return "Pending".into();
    };
    let running = s.pods.iter().filter(|p| p.running_on_target).count();
    format!(
        "{:?}: {} -> {}, {running}/{} static-IP pods on the target{}",
        s.phase,
        m.spec.source_node,
        s.target_node.as_deref().unwrap_or("?"),
        s.pods.len(),
        waiting(m).map(|w| format!(" — {w}")).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn migration(status: serde_json::Value) -> NodeMigration {
        serde_json::from_value(json!({
            "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "NodeMigration",
            "metadata": {"name": "migrate-a"},
            "spec": {"sourceNode": "a"},
            "status": status,
        }))
        .expect("migration")
    }

    fn completed(message: &str) -> serde_json::Value {
        json!([{"type": "Completed", "status": "False", "reason": "InProgress", "message": message,
                "lastTransitionTime": "2026-12-02T00:00:00Z"}])
    }

    #[test]
    fn progress_and_outcome_follow_the_status() {
        let cases = [
            (json!(null), "Pending", None),
            (
                json!({"phase": "Moving", "targetNode": "b", "conditions": completed("1 of 2 static-IP pods run on b"),
                       "pods": [{"namespace": "ns", "name": "db-0", "ips": [], "runningOnTarget": true},
                                {"namespace": "ns", "name": "db-1", "ips": [], "runningOnTarget": false}]}),
                "Moving: a -> b, 1/2 static-IP pods on the target — 1 of 2 static-IP pods run on b",
                None,
            ),
            (
                json!({"phase": "Refused", "conditions": completed("the target has no room")}),
                "Refused: a -> ?, 0/0 static-IP pods on the target — the target has no room",
                Some(Err("the target has no room".to_string())),
            ),
            (
                json!({"phase": "Completed", "targetNode": "b"}),
                "Completed: a -> b, 0/0 static-IP pods on the target",
                Some(Ok(())),
            ),
        ];
        for (status, line, done) in cases {
            let m = migration(status.clone());
            assert_eq!(progress(&m), line, "{status}");
            assert_eq!(outcome(&m), done, "{status}");
        }
    }

    #[test]
    fn one_migration_per_source_node() {
        assert_eq!(migration_name("node-7"), "migrate-node-7");
    }
}
