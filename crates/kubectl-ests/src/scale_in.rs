//! Scaling in chosen pods: reserve their ordinals and lower replicas by as many, so exactly
//! those identities go and every other stays.

use std::collections::BTreeSet;

use ests_api::EnhancedStatefulSetSpec;
use ests_core::identity::{ordinal_of, ordinals, reserved_ordinals, spec_ordinals};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The spec change that scales in the chosen pods.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleIn {
    pub replicas: i32,
    pub reserve_ordinals: Vec<IntOrString>,
    /// The identities the set keeps.
    pub remaining: Vec<i32>,
    /// The ordinals that go.
    pub removed: Vec<i32>,
}

/// Why the pods cannot be scaled in.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScaleInError {
    #[error("no pods named")]
    Nothing,
    #[error("{pod} is not a pod of set {set}")]
    NotOurs { pod: String, set: String },
    #[error("{pod} is not one of the set's identities {identities:?}")]
    NotAnIdentity { pod: String, identities: Vec<i32> },
    #[error("invalid spec: {0}")]
    Spec(String),
}

/// Reserves the ordinals of `pods` and lowers replicas by their number.
pub fn scale_in(
    set: &str,
    spec: &EnhancedStatefulSetSpec,
    pods: &[String],
) -> Result<ScaleIn, ScaleInError> {
    if pods.is_empty() {
        return Err(ScaleInError::Nothing);
    }
    let identities = spec_ordinals(spec).map_err(|e| ScaleInError::Spec(e.to_string()))?;
    let mut chosen = BTreeSet::new();
    for pod in pods {
        let ordinal = ordinal_of(set, pod).ok_or_else(|| ScaleInError::NotOurs {
            pod: pod.clone(),
            set: set.to_string(),
        })?;
        if !identities.contains(&ordinal) {
            return Err(ScaleInError::NotAnIdentity {
                pod: pod.clone(),
                identities,
            });
        }
        chosen.insert(ordinal);
    }
    let mut reserve = spec.reserve_ordinals.clone().unwrap_or_default();
    reserve.extend(chosen.iter().map(|o| IntOrString::Int(*o)));
    let replicas = spec.replicas - i32::try_from(chosen.len()).unwrap_or(i32::MAX);
    let reserved = reserved_ordinals(&reserve).map_err(|e| ScaleInError::Spec(e.to_string()))?;
    let remaining = ordinals(spec.ordinals_start(), replicas, &reserved);
    debug_assert_eq!(
        remaining,
        identities
            .iter()
            .copied()
            .filter(|o| !chosen.contains(o))
            .collect::<Vec<_>>()
    );
    Ok(ScaleIn {
        replicas,
        reserve_ordinals: reserve,
        remaining,
        removed: chosen.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(replicas: i32, start: i32, reserve: serde_json::Value) -> EnhancedStatefulSetSpec {
        serde_json::from_value(json!({
            "replicas": replicas, "ordinals": {"start": start}, "reserveOrdinals": reserve,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"spec": {"containers": [{"name": "a", "image": "a"}]}}
        }))
        .expect("spec")
    }

    fn names(pods: &[&str]) -> Vec<String> {
        pods.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn chosen_pods_go_and_every_other_identity_stays() {
        let cases = [
            (
                spec(5, 0, json!([])),
                vec!["web-1", "web-3"],
                vec![0, 2, 4],
                3,
            ),
            (spec(3, 10, json!([11])), vec!["web-12"], vec![10, 13], 2),
            (spec(4, 0, json!(["1-2"])), vec!["web-0"], vec![3, 4, 5], 3),
            (spec(2, 0, json!([])), vec!["web-1", "web-1"], vec![0], 1),
        ];
        for (s, pods, remaining, replicas) in cases {
            let r = scale_in("web", &s, &names(&pods)).expect("scales in");
            assert_eq!(r.remaining, remaining, "{pods:?}");
            assert_eq!(r.replicas, replicas, "{pods:?}");
            let before = spec_ordinals(&s).expect("ordinals");
            let mut spec_after = s.clone();
            spec_after.replicas = r.replicas;
            spec_after.reserve_ordinals = Some(r.reserve_ordinals.clone());
            assert_eq!(spec_ordinals(&spec_after).expect("ordinals"), remaining);
            assert!(
                remaining.iter().all(|o| before.contains(o)),
                "no identity is created"
            );
        }
    }

    #[test]
    fn pods_that_are_not_identities_are_refused() {
        let s = spec(3, 0, json!([1]));
        assert!(matches!(
            scale_in("web", &s, &names(&["web-1"])),
            Err(ScaleInError::NotAnIdentity { .. })
        ));
        assert!(matches!(
            scale_in("web", &s, &names(&["web-7"])),
            Err(ScaleInError::NotAnIdentity { .. })
        ));
        assert!(matches!(
            scale_in("web", &s, &names(&["db-0"])),
            Err(ScaleInError::NotOurs { .. })
        ));
        assert!(matches!(
            scale_in("web", &s, &names(&["webby-0"])),
            Err(ScaleInError::NotOurs { .. })
        ));
        assert_eq!(scale_in("web", &s, &[]), Err(ScaleInError::Nothing));
    }
}
