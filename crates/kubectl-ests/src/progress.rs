//! How far a rollout is, and whether it is done: every pod at or above the partition is on
//! the update revision and Available, for the generation the controller last observed.

use ests_api::{EnhancedStatefulSet, UpdateStrategyType};
use ests_core::identity::spec_ordinals;

/// The condition the controller sets when the partitioned rollout is complete.
pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";

/// A snapshot of a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Pods at or above the partition: the ones this rollout updates.
    pub target: i32,
    /// Pods on the update revision.
    pub updated: i32,
    /// Of those, Ready.
    pub ready: i32,
    /// Of those, Available.
    pub available: i32,
    pub partition: i32,
    pub paused: bool,
    /// The controller has observed the current generation.
    pub observed: bool,
    pub done: bool,
}

/// Why a rollout has no status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProgressError {
    #[error(
        "rollout status is only available for the RollingUpdate strategy (this set is OnDelete)"
    )]
    OnDelete,
    #[error("invalid spec: {0}")]
    Spec(String),
}

/// The progress of `set`'s rollout.
pub fn rollout_progress(set: &EnhancedStatefulSet) -> Result<Progress, ProgressError> {
    if set.spec.update_strategy_type() == UpdateStrategyType::OnDelete {
        return Err(ProgressError::OnDelete);
    }
    let rolling = set.spec.rolling_update().unwrap_or_default();
    let start = set.spec.ordinals_start();
    let identities = spec_ordinals(&set.spec).map_err(|e| ProgressError::Spec(e.to_string()))?;
    let target = identities
        .iter()
        .filter(|o| **o - start >= rolling.partition)
        .count();
    let target = i32::try_from(target).unwrap_or(i32::MAX);
    let status = set.status.clone().unwrap_or_default();
    let generation = set.metadata.generation;
    let observed = generation.is_some() && status.observed_generation == generation;
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == ROLLOUT_COMPLETE);
    let complete = match condition {
        Some(c) => {
            c.status == "True"
                && (c.observed_generation.is_none() || c.observed_generation == generation)
        }
        // A controller that does not write the condition: judge by the counts.
        None => status.updated_available_replicas >= target && status.update_revision.is_some(),
    };
    Ok(Progress {
        target,
        updated: status.updated_replicas,
        ready: status.updated_ready_replicas,
        available: status.updated_available_replicas,
        partition: rolling.partition,
        paused: rolling.paused,
        observed,
        done: observed && complete,
    })
}

impl Progress {
    /// One line saying where the rollout is, as kubectl's status viewers do.
    pub fn message(&self, name: &str) -> String {
        if !self.observed {
            return format!("Waiting for the controller to observe the new spec of {name}...");
        }
        if self.done {
            return if self.partition > 0 {
                format!(
                    "partitioned roll out complete: {} new pods have been updated (partition {})",
                    self.target, self.partition
                )
            } else {
                format!(
                    "roll out complete: {} pods are updated and available",
                    self.target
                )
            };
        }
        let paused = if self.paused { " (paused)" } else { "" };
        let counts = format!(
            "{} of {} new pods are updated, {} ready, {} available",
            self.updated.min(self.target),
            self.target,
            self.ready.min(self.target),
            self.available.min(self.target),
        );
        if self.partition > 0 {
            format!(
                "Waiting for partitioned roll out to finish{paused}: {counts} (partition {})...",
                self.partition
            )
        } else {
            format!("Waiting for roll out to finish{paused}: {counts}...")
        }
    }

    /// A progress bar `width` characters wide, then the counts.
    pub fn bar(&self, width: usize) -> String {
        let target = usize::try_from(self.target.max(0)).unwrap_or(0);
        let done = usize::try_from(self.available.clamp(0, self.target)).unwrap_or(0);
        let filled = (done * width).checked_div(target).unwrap_or(width);
        format!(
            "[{}{}] {done}/{target} available, {} updated, {} ready{}",
            "#".repeat(filled),
            "-".repeat(width - filled),
            self.updated.min(self.target),
            self.ready.min(self.target),
            if self.paused { " (paused)" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn set(spec: Value, status: Value, generation: i64) -> EnhancedStatefulSet {
        let mut spec_full = json!({
            "replicas": 5,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "a", "image": "a"}]}}
        });
        if let (Some(base), Some(extra)) = (spec_full.as_object_mut(), spec.as_object()) {
            base.extend(extra.clone());
        }
        serde_json::from_value(json!({
            "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet",
            "metadata": {"name": "web", "generation": generation},
            "spec": spec_full, "status": status
        }))
        .expect("set")
    }

    fn complete(status: &str, generation: Option<i64>) -> Value {
        json!([{"type": "RolloutComplete", "status": status, "reason": "r", "message": "m",
                "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": generation}])
    }

    #[test]
    fn done_only_when_the_current_generation_reports_rollout_complete() {
        let rolling = json!({"updateStrategy": {"rollingUpdate": {"partition": 2}}});
        let cases = [
            (
                "complete",
                set(
                    rolling.clone(),
                    json!({"observedGeneration": 3, "updatedAvailableReplicas": 3, "conditions": complete("True", Some(3))}),
                    3,
                ),
                true,
            ),
            (
                "condition false",
                set(
                    rolling.clone(),
                    json!({"observedGeneration": 3, "conditions": complete("False", Some(3))}),
                    3,
                ),
                false,
            ),
            (
                "new generation not observed",
                set(
                    rolling.clone(),
                    json!({"observedGeneration": 2, "conditions": complete("True", Some(2))}),
                    3,
                ),
                false,
            ),
            (
                "condition from an older generation",
                set(
                    rolling.clone(),
                    json!({"observedGeneration": 3, "conditions": complete("True", Some(2))}),
                    3,
                ),
                false,
            ),
            (
                "no condition, counts reach the partition's target",
                set(
                    rolling.clone(),
                    json!({"observedGeneration": 3, "updatedAvailableReplicas": 3, "updateRevision": "web-1"}),
                    3,
                ),
                true,
            ),
            (
                "no condition, one short",
                set(
                    rolling.clone(),
                    json!({"observedGeneration": 3, "updatedAvailableReplicas": 2, "updateRevision": "web-1"}),
                    3,
                ),
                false,
            ),
            ("no status", set(rolling, Value::Null, 1), false),
        ];
        for (name, s, want) in cases {
            assert_eq!(rollout_progress(&s).expect("progress").done, want, "{name}");
        }
    }

    #[test]
    fn the_target_counts_identities_at_or_above_the_partition_with_start_and_reserves() {
        let cases = [
            (json!({}), 5),
            (
                json!({"updateStrategy": {"rollingUpdate": {"partition": 2}}}),
                3,
            ),
            (
                json!({"updateStrategy": {"rollingUpdate": {"partition": 9}}}),
                0,
            ),
            // Ordinals 10..: indices 0,1,(2 reserved),3,4,5: partition 3 leaves 3,4,5.
            (
                json!({"ordinals": {"start": 10}, "reserveOrdinals": [12], "updateStrategy": {"rollingUpdate": {"partition": 3}}}),
                3,
            ),
        ];
        for (spec, want) in cases {
            let p = rollout_progress(&set(spec.clone(), Value::Null, 1)).expect("progress");
            assert_eq!(p.target, want, "{spec}");
        }
    }

    #[test]
    fn on_delete_sets_have_no_rollout_status() {
        let s = set(
            json!({"updateStrategy": {"type": "OnDelete"}}),
            Value::Null,
            1,
        );
        assert_eq!(rollout_progress(&s), Err(ProgressError::OnDelete));
    }

    #[test]
    fn messages_and_bars_say_where_the_rollout_is() {
        let s = set(
            json!({"updateStrategy": {"rollingUpdate": {"partition": 1, "paused": true}}}),
            json!({"observedGeneration": 1, "updatedReplicas": 3, "updatedReadyReplicas": 2, "updatedAvailableReplicas": 2}),
            1,
        );
        let p = rollout_progress(&s).expect("progress");
        assert_eq!(
            p.message("web"),
            "Waiting for partitioned roll out to finish (paused): 3 of 4 new pods are updated, 2 ready, 2 available (partition 1)..."
        );
        let mut whole = p.clone();
        whole.partition = 0;
        whole.paused = false;
        assert_eq!(
            whole.message("web"),
            "Waiting for roll out to finish: 3 of 4 new pods are updated, 2 ready, 2 available..."
        );
        assert_eq!(
            p.bar(8),
            "[####----] 2/4 available, 3 updated, 2 ready (paused)"
        );
    }
}
