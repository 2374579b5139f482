//! Status conditions as Kubernetes means them: one per type, whose `lastTransitionTime`
//! moves only when its status does (so "since when" survives every rewrite).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// The condition `type_` (status `True` when `ok`), keeping the transition time of the one
/// in `previous` when its status is the same, and now otherwise.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(
            || Time(Timestamp::now()),
            |c| c.last_transition_time.clone(),
        );
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Sets the condition `type_` in `conditions` (see [`condition`]), which are kept sorted by
/// type so that an unchanged list writes the same bytes.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
) {
    let new = condition(conditions, type_, ok, reason, message, None);
    conditions.retain(|c| c.type_ != type_);
    conditions.push(new);
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transition_time_moves_only_with_the_status() {
        let mut conditions = Vec::new();
        set_condition(&mut conditions, "Bound", false, "Waiting", String::new());
        set_condition(&mut conditions, "Alpha", true, "Yes", String::new());
        let types: Vec<&str> = conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Alpha", "Bound"], "one per type, sorted");

        let old = Time(Timestamp::from_second(1).expect("time"));
        conditions[1].last_transition_time = old.clone();
        set_condition(&mut conditions, "Bound", false, "StillWaiting", "m".into());
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[1].last_transition_time, old, "same status");
        assert_eq!(conditions[1].reason, "StillWaiting");

        set_condition(&mut conditions, "Bound", true, "Bound", String::new());
        assert_ne!(conditions[1].last_transition_time, old, "status changed");
        assert_eq!(conditions[1].status, "True");
    }
}
