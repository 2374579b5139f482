//! What a step's outcome leaves in the migration's status, and which hook runs when: pure
//! functions of the status and the outcome, so that `act` only talks to the cluster. The
//! status is the manager's memory: what is written here is what the next plan starts from.

use ests_api::{MigratingPod, MigrationMode, MigrationPhase, NodeMigrationStatus};
use ests_core::migration::RecordFacts;
use ests_runtime::conditions::set_condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// Whether a step's hook is asked now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookTurn<'a, H> {
    /// No hook is configured for the step.
    None,
    /// Ask it.
    Run(&'a H),
    /// It was asked a moment ago: its answer, in the status, stands for now.
    NotYet,
}

/// [`HookTurn`] for `hook`; `due` says (and notes) whether it may run again now, and is
/// asked only when there is a hook.
pub fn hook_turn<H>(hook: Option<&H>, due: impl FnOnce() -> bool) -> HookTurn<'_, H> {
    match hook {
        None => HookTurn::None,
        Some(hook) if due() => HookTurn::Run(hook),
        Some(_) => HookTurn::NotYet,
    }
}

/// The target and the mode, kept for the rest of the migration; started once.
pub fn started(status: &mut NodeMigrationStatus, target: &str, mode: MigrationMode, at: Time) {
    status.target_node = Some(target.to_string());
    status.mode = Some(mode);
    status.started_at.get_or_insert(at);
}

/// A maintenance move whose source went NotReady goes on as a failure move.
pub fn escalated(status: &mut NodeMigrationStatus) {
    status.mode = Some(MigrationMode::Failure);
}

/// The fencing answer: `Ok(by)` fenced (by whom), `Err(why)` not.
pub fn fenced(status: &mut NodeMigrationStatus, answer: &Result<String, String>, at: Time) {
    match answer {
        Ok(by) => {
            status.fenced_at = Some(at);
            status.fenced_by = Some(by.clone());
            set_condition(
                &mut status.conditions,
                "Fenced",
                true,
                "Fenced",
                format!("fenced by the {by}"),
            );
        }
        Err(why) => set_condition(
            &mut status.conditions,
            "Fenced",
            false,
            "NotFenced",
            why.clone(),
        ),
    }
}

/// The network hook's answer: `Ok(message)` the routes moved, `Err(why)` not.
pub fn network_moved(status: &mut NodeMigrationStatus, answer: &Result<String, String>) {
    match answer {
        Ok(message) => set_condition(
            &mut status.conditions,
            "NetworkMoved",
            true,
            "Moved",
            message.clone(),
        ),
        Err(why) => set_condition(
            &mut status.conditions,
            "NetworkMoved",
            false,
            "HookFailed",
            why.clone(),
        ),
    }
}

/// Block `name` is on the target.
pub fn block_moved(status: &mut NodeMigrationStatus, name: &str) {
    if !status.moved_blocks.iter().any(|b| b == name) {
        status.moved_blocks.push(name.to_string());
    }
}

/// The record `namespace/name` points at the target; `ips` are its addresses. Listed once,
/// with the addresses it had when first moved.
pub fn record_moved(status: &mut NodeMigrationStatus, key: &str, ips: Vec<String>) {
    if status
        .pods
        .iter()
        .any(|p| format!("{}/{}", p.namespace, p.name) == key)
    {
        return;
    }
    let (namespace, name) = key.split_once('/').unwrap_or(("", key));
    status.pods.push(MigratingPod {
        namespace: namespace.into(),
        name: name.into(),
        ips,
        running_on_target: false,
    });
}

/// The end of a pass: the plan's phase, which moved pods run on the target, and the
/// Completed condition (`waiting`: why not yet). True if the migration completes with this
/// pass (its completion time is set now, once).
pub fn settle(
    status: &mut NodeMigrationStatus,
    phase: MigrationPhase,
    waiting: Option<&str>,
    records: &[RecordFacts],
    at: Time,
) -> bool {
    status.phase = phase;
    for pod in &mut status.pods {
        let key = format!("{}/{}", pod.namespace, pod.name);
        pod.running_on_target = records.iter().any(|r| r.key == key && r.running_on_target);
    }
    match waiting {
        Some(why) => set_condition(
            &mut status.conditions,
            "Completed",
            false,
            "InProgress",
            why.to_string(),
        ),
        None => set_condition(
            &mut status.conditions,
            "Completed",
            true,
            "Completed",
            "every static-IP pod runs on the target".into(),
        ),
    }
    if phase == MigrationPhase::Completed && status.completed_at.is_none() {
        status.completed_at = Some(at);
        return true;
    }
    false
}

/// From when a migration's duration counts: fencing, or its start in maintenance.
pub fn clock_start(status: &NodeMigrationStatus) -> Option<&Time> {
    status.fenced_at.as_ref().or(status.started_at.as_ref())
}

/// The duration metric's mode label.
pub fn mode_label(status: &NodeMigrationStatus) -> &'static str {
    match status.mode {
        Some(MigrationMode::Maintenance) => "maintenance",
        _ => "failure",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).expect("time"))
    }

    fn condition<'a>(status: &'a NodeMigrationStatus, type_: &str) -> (&'a str, &'a str) {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status.as_str(), c.reason.as_str()))
            .expect("condition")
    }

    #[test]
    fn a_hook_runs_when_configured_and_due() {
        let hook = "h";
        let mut asked = false;
        assert_eq!(
            hook_turn(None::<&&str>, || {
                asked = true;
                true
            }),
            HookTurn::None
        );
        assert!(!asked, "no hook: nothing to note");
        assert_eq!(hook_turn(Some(&hook), || true), HookTurn::Run(&hook));
        assert_eq!(hook_turn(Some(&hook), || false), HookTurn::NotYet);
    }

    #[test]
    fn started_keeps_the_first_start_time() {
        let mut status = NodeMigrationStatus::default();
        started(&mut status, "t1", MigrationMode::Maintenance, at(10));
        started(&mut status, "t2", MigrationMode::Failure, at(20));
        assert_eq!(status.target_node.as_deref(), Some("t2"));
        assert_eq!(status.mode, Some(MigrationMode::Failure));
        assert_eq!(status.started_at, Some(at(10)));
        escalated(&mut status);
        assert_eq!(status.mode, Some(MigrationMode::Failure));
    }

    #[test]
    fn fencing_and_network_answers_land_in_their_conditions() {
        let mut status = NodeMigrationStatus::default();
        fenced(&mut status, &Err("no hook".into()), at(5));
        assert_eq!(condition(&status, "Fenced"), ("False", "NotFenced"));
        assert_eq!(status.fenced_at, None);
        fenced(&mut status, &Ok("fencing hook".into()), at(6));
        assert_eq!(condition(&status, "Fenced"), ("True", "Fenced"));
        assert_eq!(
            (status.fenced_at.clone(), status.fenced_by.as_deref()),
            (Some(at(6)), Some("fencing hook"))
        );
        network_moved(&mut status, &Err("exit 1".into()));
        assert_eq!(condition(&status, "NetworkMoved"), ("False", "HookFailed"));
        network_moved(&mut status, &Ok("moved".into()));
        assert_eq!(condition(&status, "NetworkMoved"), ("True", "Moved"));
        assert_eq!(status.conditions.len(), 2, "one condition per type");
    }

    #[test]
    fn moved_blocks_and_records_are_listed_once() {
        let mut status = NodeMigrationStatus::default();
        block_moved(&mut status, "b1");
        block_moved(&mut status, "b1");
        block_moved(&mut status, "b2");
        assert_eq!(status.moved_blocks, vec!["b1", "b2"]);
        record_moved(&mut status, "ns/web-0", vec!["10.0.0.1".into()]);
        record_moved(&mut status, "ns/web-0", vec!["10.0.0.9".into()]);
        assert_eq!(status.pods.len(), 1);
        assert_eq!(
            (
                status.pods[0].namespace.as_str(),
                status.pods[0].name.as_str()
            ),
            ("ns", "web-0")
        );
        assert_eq!(
            status.pods[0].ips,
            vec!["10.0.0.1"],
            "the first addresses stay"
        );
    }

    #[test]
    fn settling_marks_pods_on_the_target_and_completes_once() {
        let mut status = NodeMigrationStatus::default();
        record_moved(&mut status, "ns/web-0", vec![]);
        record_moved(&mut status, "ns/web-1", vec![]);
        let record = |key: &str, running_on_target| RecordFacts {
            key: key.into(),
            node: Some("t".into()),
            ips: vec![],
            running_on_target,
            pending_pinned_to: None,
            set: None,
        };
        let records = vec![record("ns/web-0", true), record("ns/web-1", false)];
        let done = settle(
            &mut status,
            MigrationPhase::Moving,
            Some("web-1 starting"),
            &records,
            at(1),
        );
        assert!(!done);
        assert_eq!(condition(&status, "Completed"), ("False", "InProgress"));
        let on_target: Vec<bool> = status.pods.iter().map(|p| p.running_on_target).collect();
        assert_eq!(on_target, vec![true, false]);
        assert!(settle(
            &mut status,
            MigrationPhase::Completed,
            None,
            &records,
            at(2)
        ));
        assert!(!settle(
            &mut status,
            MigrationPhase::Completed,
            None,
            &records,
            at(3)
        ));
        assert_eq!(status.completed_at, Some(at(2)));
        assert_eq!(condition(&status, "Completed"), ("True", "Completed"));
    }

    #[test]
    fn the_clock_starts_at_fencing_or_else_at_the_start() {
        let mut status = NodeMigrationStatus::default();
        assert_eq!(clock_start(&status), None);
        status.started_at = Some(at(1));
        assert_eq!(clock_start(&status), Some(&at(1)));
        status.fenced_at = Some(at(2));
        assert_eq!(clock_start(&status), Some(&at(2)));
        for (mode, label) in [
            (None, "failure"),
            (Some(MigrationMode::Failure), "failure"),
            (Some(MigrationMode::Maintenance), "maintenance"),
        ] {
            status.mode = mode;
            assert_eq!(mode_label(&status), label);
        }
    }
}
