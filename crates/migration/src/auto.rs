//! Automatic mode: a node NotReady for longer than a window gets a NodeMigration, which then
//! waits for fencing like any other. Never more than a configured number unfinished at once;
//! a node already being migrated gets no second one.

use std::sync::Arc;
use std::time::Duration;

use ests_api::{NodeMigration, NodeMigrationSpec, keys};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::Context;

/// Automatic mode's settings.
#[derive(Debug, Clone)]
pub struct AutoSettings {
    /// How long a node stays NotReady before it is migrated.
    pub after: Duration,
    /// Unfinished migrations allowed at once (automatic and manual together).
    pub max_active: usize,
}

/// How long the node has been NotReady, if it is (its Ready condition's last transition).
pub fn not_ready_for(node: &Node, now: Timestamp) -> Option<Duration> {
    let ready = node
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    if ready.status == "True" {
        return None;
    }
    let since = ready.last_transition_time.as_ref()?.0;
    let millis = (now.as_millisecond() - since.as_millisecond()).max(0);
    Some(Duration::from_millis(u64::try_from(millis).unwrap_or(0)))
}

/// The nodes to migrate now: NotReady longer than the window, not replacements being moved
/// to, without a migration, within the limit.
pub fn due(
    nodes: &[Arc<Node>],
    migrations: &[Arc<NodeMigration>],
    settings: &AutoSettings,
    now: Timestamp,
) -> Vec<String> {
    let active = crate::observe::active(migrations);
    let covered: std::collections::BTreeSet<&str> = migrations
        .iter()
        .map(|m| m.spec.source_node.as_str())
        .collect();
    let mut due: Vec<String> = nodes
        .iter()
        .filter(|n| not_ready_for(n, now).is_some_and(|d| d >= settings.after))
        .map(|n| n.name_any())
        .filter(|n| !covered.contains(n.as_str()))
        .collect();
    due.sort();
    due.truncate(settings.max_active.saturating_sub(active));
    due
}

pub async fn run(ctx: Arc<Context>, settings: AutoSettings) {
    ctx.listed.wait().await;
    let api: Api<NodeMigration> = Api::all(ctx.client.clone());
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        for node in due(
            &ctx.nodes.state(),
            &ctx.migrations.state(),
            &settings,
            Timestamp::now(),
        ) {
            let migration = NodeMigration {
                metadata: ObjectMeta {
                    name: Some(format!("auto-{node}")),
                    labels: Some([(keys::AUTO_MIGRATION_LABEL.to_string(), node.clone())].into()),
                    ..ObjectMeta::default()
                },
                spec: NodeMigrationSpec {
                    source_node: node.clone(),
                    reason: Some(format!(
                        "NotReady for more than {}s (automatic mode)",
                        settings.after.as_secs()
                    )),
                    ..NodeMigrationSpec::default()
                },
                status: None,
            };
            match api.create(&PostParams::default(), &migration).await {
                Ok(_) => tracing::info!(%node, "node NotReady too long: migration created"),
                Err(kube::Error::Api(s)) if s.is_already_exists() => {}
                Err(e) => tracing::warn!(%node, error = %e, "creating a migration"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: &str, since: &str) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "status": {"conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": since}]}
            }))
            .expect("node"),
        )
    }

    #[test]
    fn only_nodes_not_ready_past_the_window_and_within_the_limit() {
        let now: Timestamp = "2026-11-23T10:00:00Z".parse().expect("time");
        let nodes = vec![
            node("a", "Unknown", "2026-11-23T09:58:00Z"),
            node("b", "False", "2026-11-23T09:59:50Z"),
            node("c", "True", "2026-11-23T09:00:00Z"),
            node("d", "Unknown", "2026-11-23T09:50:00Z"),
        ];
        let settings = AutoSettings {
            after: Duration::from_secs(60),
            max_active: 1,
        };
        assert_eq!(due(&nodes, &[], &settings, now), ["a"]);
        let two = AutoSettings {
            max_active: 5,
            ..settings.clone()
        };
        assert_eq!(due(&nodes, &[], &two, now), ["a", "d"]);
        // A node with a migration gets none more, and it counts against the limit.
        let existing: Arc<NodeMigration> = Arc::new(NodeMigration::new(
            "m",
            NodeMigrationSpec {
                source_node: "a".into(),
                ..NodeMigrationSpec::default()
            },
        ));
        assert_eq!(
            due(&nodes, std::slice::from_ref(&existing), &two, now),
            ["d"]
        );
        assert!(due(&nodes, &[existing], &settings, now).is_empty());
    }
}
