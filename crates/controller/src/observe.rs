//! From API objects to what the planner reads: the only place that interprets pod status.

use ests_api::keys;
use ests_core::identity::ordinal_of;
use ests_core::pods::leave_request;
use ests_core::rollout::{ObservedPod, Phase, STUCK_WAITING_REASONS};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Seconds since the epoch.
pub fn seconds(time: &Time) -> i64 {
    time.0.as_second()
}

/// The planner's view of a pod of set `set`, or None if its name is not one of the set's.
/// `held`: the pod must be kept for now (see [`ests_core::static_ip::holds_pod`]).
pub fn observe(set: &str, pod: &Pod, held: bool) -> Option<ObservedPod> {
    let name = pod.metadata.name.clone()?;
    let ordinal = ordinal_of(set, &name)?;
    let status = pod.status.as_ref();
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Running") => Phase::Running,
        Some("Succeeded" | "Failed") => Phase::Terminal,
        _ => Phase::Pending,
    };
    let created = pod.metadata.creation_timestamp.as_ref().map_or(0, seconds);
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    let since = ready
        .and_then(|c| c.last_transition_time.as_ref())
        .map_or(created, seconds);
    let is_ready = ready.is_some_and(|c| c.status == "True");
    let container_error = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
        .find(|reason| STUCK_WAITING_REASONS.contains(&reason.as_str()));
    Some(ObservedPod {
        name,
        ordinal,
        revision: pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(keys::CONTROLLER_REVISION_HASH).cloned())
            .unwrap_or_default(),
        phase,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        uid: pod.metadata.uid.clone(),
        ready_since: is_ready.then_some(since),
        unready_since: if is_ready { created } else { since },
        container_error,
        held,
        leave: leave_request(pod),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn readiness_times_and_container_errors_are_read() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-2", "creationTimestamp": "2026-01-01T00:00:00Z", "labels": {"controller-revision-hash": "abc"}},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:01:40Z"}],
                "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]
            }
        }))
        .expect("pod");
        let o = observe("web", &pod, false).expect("one of the set's pods");
        assert_eq!(
            (o.ordinal, o.revision.as_str(), o.phase),
            (2, "abc", Phase::Running)
        );
        assert_eq!(o.ready_since, None);
        assert_eq!(o.unready_since - 1_767_225_600, 100);
        assert_eq!(o.container_error.as_deref(), Some("CrashLoopBackOff"));
        assert!(observe("other", &pod, false).is_none());
    }
}
