//! From a set as the API holds it to what the rollout planner reads, and back: its spec
//! read and checked once per reconcile ([`read`]), the identities it is replacing as its
//! status remembers them ([`replacing`], [`replacements`]), and the planner's view of it
//! ([`view`]).

use std::collections::BTreeMap;

use ests_api::{EnhancedStatefulSet, EnhancedStatefulSetStatus, Replacement, ReplacementReason};
use kube::core::Selector;

use crate::identity::{max_unavailable, spec_ordinals};
use crate::rollout::{ReplaceReason, Replacing, SetView, Strategy};
use crate::static_ip::{self, IpSettings};

/// What a set's spec asks for, checked: everything a reconcile needs before it looks at
/// the cluster.
#[derive(Debug, Clone)]
pub struct SetSpec {
    /// The identities' ordinals, ascending.
    pub identities: Vec<i32>,
    pub strategy: Strategy,
    /// The set's selector (and, as a string, the scale subresource's, for autoscalers).
    pub selector: Selector,
    /// None when static IPs are off.
    pub ip: Option<IpSettings>,
}

/// The set's spec as a reconcile uses it, or why it cannot be carried out (a message for
/// the set's InvalidSpec condition, naming the field). The checks run in the order of the
/// spec's fields, so the first problem is the one reported.
pub fn read(set: &EnhancedStatefulSet) -> Result<SetSpec, String> {
    let identities = spec_ordinals(&set.spec).map_err(|e| e.to_string())?;
    let strategy = strategy(set)?;
    let selector =
        Selector::try_from(set.spec.selector.clone()).map_err(|e| format!("spec.selector: {e}"))?;
    let ip = static_ip::settings(set)?;
    Ok(SetSpec {
        identities,
        strategy,
        selector,
        ip,
    })
}

/// The update strategy as the planner sees it, maxUnavailable scaled to the replicas.
pub fn strategy(set: &EnhancedStatefulSet) -> Result<Strategy, String> {
    let Some(r) = set.spec.rolling_update() else {
        return Ok(Strategy::OnDelete);
    };
    let max = max_unavailable(&r.max_unavailable, set.spec.replicas).map_err(|e| e.to_string())?;
    Ok(Strategy::RollingUpdate {
        partition: r.partition,
        max_unavailable: max,
        paused: r.paused,
        stuck_after: i64::from(r.stuck_pod_seconds),
    })
}

/// The identities taken down by earlier reconciles, as the status remembers them.
pub fn replacing(status: Option<&EnhancedStatefulSetStatus>) -> BTreeMap<i32, Replacing> {
    status
        .iter()
        .flat_map(|s| s.replacing.iter())
        .map(|r| {
            (
                r.ordinal,
                Replacing {
                    reason: r.reason.into(),
                    uid: r.pod_uid.clone(),
                },
            )
        })
        .collect()
}

/// What the status remembers of the identities being replaced (the inverse of
/// [`replacing`]).
pub fn replacements(replacing: &BTreeMap<i32, Replacing>) -> Vec<Replacement> {
    replacing
        .iter()
        .map(|(ordinal, entry)| Replacement {
            ordinal: *ordinal,
            reason: entry.reason.into(),
            pod_uid: entry.uid.clone(),
        })
        .collect()
}

impl From<ReplacementReason> for ReplaceReason {
    fn from(reason: ReplacementReason) -> Self {
        match reason {
            ReplacementReason::Update => Self::Update,
            ReplacementReason::Stuck => Self::Stuck,
            ReplacementReason::Maintenance => Self::Maintenance,
        }
    }
}

impl From<ReplaceReason> for ReplacementReason {
    fn from(reason: ReplaceReason) -> Self {
        match reason {
            ReplaceReason::Update => Self::Update,
            ReplaceReason::Stuck => Self::Stuck,
            ReplaceReason::Maintenance => Self::Maintenance,
        }
    }
}

/// The set as the planner sees it, at revisions `current` and `update` (hashes).
pub fn view(set: &EnhancedStatefulSet, spec: &SetSpec, current: &str, update: &str) -> SetView {
    SetView {
        identities: spec.identities.clone(),
        start: set.spec.ordinals_start(),
        policy: set.spec.pod_management_policy,
        strategy: spec.strategy,
        min_ready_seconds: i64::from(set.spec.min_ready_seconds),
        current_revision: current.to_string(),
        update_revision: update.to_string(),
        replacing: replacing(set.status.as_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn set(spec: Value, annotations: Value) -> EnhancedStatefulSet {
        let mut full = json!({
            "serviceName": "web",
            "replicas": 4,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "c", "image": "i"}]}},
        });
        if let (Some(full), Some(extra)) = (full.as_object_mut(), spec.as_object()) {
            full.extend(extra.clone());
        }
        serde_json::from_value(json!({
            "apiVersion": "jke.jdcloud.com/v1alpha1",
            "kind": "EnhancedStatefulSet",
            "metadata": {"name": "web", "namespace": "ns", "annotations": annotations},
            "spec": full,
        }))
        .expect("set")
    }

    #[test]
    fn a_valid_spec_reads_into_identities_strategy_selector_and_ip_settings() {
        let s = set(
            json!({
                "reserveOrdinals": [1],
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {
                    "partition": 2, "maxUnavailable": "50%", "paused": true, "stuckPodSeconds": 60}},
            }),
            json!({}),
        );
        let spec = read(&s).expect("valid");
        assert_eq!(spec.identities, vec![0, 2, 3, 4]);
        assert_eq!(
            spec.strategy,
            Strategy::RollingUpdate {
                partition: 2,
                max_unavailable: 2,
                paused: true,
                stuck_after: 60
            }
        );
        assert_eq!(spec.selector.to_string(), "app=web");
        assert_eq!(spec.ip, None);
    }

    #[test]
    fn an_invalid_spec_names_its_first_bad_field() {
        let bad_max = json!({"updateStrategy": {"type": "RollingUpdate",
                                                "rollingUpdate": {"maxUnavailable": 0}}});
        let bad_selector = json!({"selector": {"matchExpressions": [
            {"key": "app", "operator": "Bogus", "values": ["web"]}]}});
        let bad_ip = json!({"staticip.jke.jdcloud.com/enable": "maybe"});
        for (name, spec, annotations, field) in [
            (
                "reserved ordinal",
                json!({"reserveOrdinals": ["x"]}),
                json!({}),
                "spec.reserveOrdinals",
            ),
            (
                "maxUnavailable",
                bad_max.clone(),
                json!({}),
                "maxUnavailable",
            ),
            ("selector", bad_selector.clone(), json!({}), "spec.selector"),
            (
                "ordinals before maxUnavailable",
                json!({"reserveOrdinals": ["x"], "updateStrategy": bad_max["updateStrategy"]}),
                json!({}),
                "spec.reserveOrdinals",
            ),
            (
                "maxUnavailable before the selector",
                json!({"updateStrategy": bad_max["updateStrategy"], "selector": bad_selector["selector"]}),
                json!({}),
                "maxUnavailable",
            ),
            (
                "ip annotations",
                json!({}),
                bad_ip,
                "staticip.jke.jdcloud.com/enable",
            ),
        ] {
            let message = read(&set(spec, annotations)).expect_err(name);
            assert!(message.contains(field), "{name}: {message}");
        }
    }

    #[test]
    fn on_delete_has_no_budget_of_its_own_to_read() {
        let s = set(
            json!({"updateStrategy": {"type": "OnDelete",
                                      "rollingUpdate": {"maxUnavailable": 0}}}),
            json!({}),
        );
        assert_eq!(strategy(&s), Ok(Strategy::OnDelete));
    }

    #[test]
    fn replacing_round_trips_through_the_status() {
        for (reason, recorded) in [
            (ReplaceReason::Update, ReplacementReason::Update),
            (ReplaceReason::Stuck, ReplacementReason::Stuck),
            (ReplaceReason::Maintenance, ReplacementReason::Maintenance),
        ] {
            let entries: BTreeMap<i32, Replacing> = [
                (
                    3,
                    Replacing {
                        reason,
                        uid: Some("uid-3".into()),
                    },
                ),
                (5, Replacing { reason, uid: None }),
            ]
            .into();
            let status = EnhancedStatefulSetStatus {
                replacing: replacements(&entries),
                ..Default::default()
            };
            assert!(status.replacing.iter().all(|r| r.reason == recorded));
            assert_eq!(replacing(Some(&status)), entries);
        }
        assert!(replacing(None).is_empty());
    }

    #[test]
    fn the_view_carries_the_spec_the_revisions_and_the_remembered_replacements() {
        let mut s = set(
            json!({"ordinals": {"start": 5}, "minReadySeconds": 7}),
            json!({}),
        );
        s.status = Some(EnhancedStatefulSetStatus {
            replacing: vec![Replacement {
                ordinal: 6,
                reason: ReplacementReason::Update,
                pod_uid: Some("u".into()),
            }],
            ..Default::default()
        });
        let spec = read(&s).expect("valid");
        let v = view(&s, &spec, "r1", "r2");
        assert_eq!(v.identities, vec![5, 6, 7, 8]);
        assert_eq!((v.start, v.min_ready_seconds), (5, 7));
        assert_eq!(
            (v.current_revision.as_str(), v.update_revision.as_str()),
            ("r1", "r2")
        );
        assert_eq!(v.replacing.keys().copied().collect::<Vec<_>>(), vec![6]);
    }
}
