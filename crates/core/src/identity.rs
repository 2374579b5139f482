//! Which pod identities a set has: ordinals, reserved ordinals, pod and container names.

use std::collections::BTreeSet;

use ests_api::EnhancedStatefulSetSpec;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Why a spec value could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "spec.reserveOrdinals[{index}]: {value:?} is neither a non-negative integer nor a range \"a-b\" with a <= b"
    )]
    ReserveOrdinal { index: usize, value: String },
    #[error(
        "spec.updateStrategy.rollingUpdate.maxUnavailable: {0:?} is neither an integer >= 1 nor a percentage from 1% to 100%"
    )]
    MaxUnavailable(String),
}

/// Largest ordinal range a single reserveOrdinals entry may span, so that a typo such as
/// "0-2000000000" cannot make the controller allocate gigabytes.
const MAX_RESERVED_RANGE: i64 = 100_000;

/// The reserved ordinals of `spec.reserveOrdinals`: integers and inclusive "a-b" ranges.
pub fn reserved_ordinals(entries: &[IntOrString]) -> Result<BTreeSet<i32>, SpecError> {
    let mut reserved = BTreeSet::new();
    for (index, entry) in entries.iter().enumerate() {
        let invalid = || SpecError::ReserveOrdinal {
            index,
            value: match entry {
                IntOrString::Int(i) => i.to_string(),
                IntOrString::String(s) => s.clone(),
            },
        };
        match entry {
            IntOrString::Int(i) if *i >= 0 => {
                reserved.insert(*i);
            }
            IntOrString::Int(_) => return Err(invalid()),
            IntOrString::String(s) => {
                let (low, high) = s.split_once('-').ok_or_else(invalid)?;
                let low: i32 = low.trim().parse().map_err(|_| invalid())?;
                let high: i32 = high.trim().parse().map_err(|_| invalid())?;
                if low < 0 || high < low || i64::from(high) - i64::from(low) > MAX_RESERVED_RANGE {
                    return Err(invalid());
                }
                reserved.extend(low..=high);
            }
        }
    }
    Ok(reserved)
}

/// The set's identities: the first `replicas` ordinals counting up from `start` that are not
/// reserved, in ascending order.
pub fn ordinals(start: i32, replicas: i32, reserved: &BTreeSet<i32>) -> Vec<i32> {
    let wanted = usize::try_from(replicas).unwrap_or(0);
    (start.max(0)..=i32::MAX)
        .filter(|o| !reserved.contains(o))
        .take(wanted)
        .collect()
}

/// The identities of a set's spec.
pub fn spec_ordinals(spec: &EnhancedStatefulSetSpec) -> Result<Vec<i32>, SpecError> {
    let reserved = reserved_ordinals(spec.reserve_ordinals.as_deref().unwrap_or_default())?;
    Ok(ordinals(spec.ordinals_start(), spec.replicas, &reserved))
}

/// The name of the pod of `ordinal` in set `set`.
pub fn pod_name(set: &str, ordinal: i32) -> String {
    format!("{set}-{ordinal}")
}

/// The ordinal of a pod of set `set`, if `pod` is named like one.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    let suffix = pod.strip_prefix(set)?.strip_prefix('-')?;
    if suffix.is_empty()
        || !suffix.bytes().all(|b| b.is_ascii_digit())
        || (suffix.len() > 1 && suffix.starts_with('0'))
    {
        return None;
    }
    suffix.parse().ok()
}

/// The name ests gives a container that has none: the last path segment of its image,
/// without tag or digest (`nginx:v1` → `nginx`, `registry:5000/team/app@sha256:…` → `app`),
/// made a valid DNS label.
pub fn container_name_from_image(image: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let repo = last.split(':').next().unwrap_or(last);
    let mut name: String = repo
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(63);
    let name = name.trim_matches('-').to_string();
    if name.is_empty() {
        "container".into()
    } else {
        name
    }
}

/// maxUnavailable as a number of pods: an integer as is, a percentage of `replicas` rounded
/// down; never less than 1.
pub fn max_unavailable(value: &IntOrString, replicas: i32) -> Result<i32, SpecError> {
    let scaled = match value {
        IntOrString::Int(i) if *i >= 1 => *i,
        IntOrString::Int(i) => return Err(SpecError::MaxUnavailable(i.to_string())),
        IntOrString::String(s) => {
            let percent: i64 = s
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .filter(|p| (1..=100).contains(p))
                .ok_or_else(|| SpecError::MaxUnavailable(s.clone()))?;
            i32::try_from(i64::from(replicas.max(0)) * percent / 100).unwrap_or(i32::MAX)
        }
    };
    Ok(scaled.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn int(i: i32) -> IntOrString {
        IntOrString::Int(i)
    }
    fn string(s: &str) -> IntOrString {
        IntOrString::String(s.into())
    }

    /// name, ordinals.start, replicas, reserveOrdinals, expected identities
    type OrdinalCase = (&'static str, i32, i32, Vec<IntOrString>, Vec<i32>);

    #[test]
    fn ordinals_skip_reserved_and_start_at_start() {
        let cases: &[OrdinalCase] = &[
            ("plain", 0, 3, vec![], vec![0, 1, 2]),
            ("start five, one replica", 5, 1, vec![], vec![5]),
            ("zero replicas", 0, 0, vec![int(0)], vec![]),
            ("reserve one", 0, 3, vec![int(1)], vec![0, 2, 3]),
            ("reserve range", 0, 3, vec![string("0-2")], vec![3, 4, 5]),
            (
                "reserve below start is irrelevant",
                4,
                2,
                vec![int(1)],
                vec![4, 5],
            ),
            (
                "scale in a chosen pod",
                0,
                5,
                vec![int(3)],
                vec![0, 1, 2, 4, 5],
            ),
        ];
        for (name, start, replicas, reserve, want) in cases {
            let reserved = reserved_ordinals(reserve).expect(name);
            assert_eq!(&ordinals(*start, *replicas, &reserved), want, "{name}");
        }
    }

    #[test]
    fn bad_reserved_ordinals_name_the_entry() {
        for (entries, index) in [
            (vec![int(-1)], 0),
            (vec![int(1), string("3")], 1),
            (vec![string("5-2")], 0),
            (vec![string("a-b")], 0),
            (vec![string("0-2000000000")], 0),
        ] {
            let err = reserved_ordinals(&entries).expect_err("invalid");
            assert!(
                matches!(err, SpecError::ReserveOrdinal { index: i, .. } if i == index),
                "{err}"
            );
            assert!(err.to_string().starts_with("spec.reserveOrdinals["));
        }
    }

    #[test]
    fn pod_names_round_trip_and_reject_lookalikes() {
        assert_eq!(pod_name("web", 7), "web-7");
        assert_eq!(ordinal_of("web", "web-7"), Some(7));
        assert_eq!(ordinal_of("web", "web-07"), None);
        assert_eq!(ordinal_of("web", "web-0"), Some(0));
        assert_eq!(ordinal_of("web", "web-x"), None);
        assert_eq!(ordinal_of("web", "webx-1"), None);
        assert_eq!(ordinal_of("web", "web-1-2"), None);
        assert_eq!(ordinal_of("web", "web-"), None);
    }

    #[test]
    fn containers_are_named_after_their_image() {
        for (image, name) in [
            ("nginx:v1", "nginx"),
            ("nginx", "nginx"),
            ("registry.local:5000/team/my_app:1.2", "my-app"),
            ("ghcr.io/org/app@sha256:abc", "app"),
            ("Upper/Case:tag", "case"),
            (":::", "container"),
        ] {
            assert_eq!(container_name_from_image(image), name, "{image}");
        }
    }

    #[test]
    fn max_unavailable_rounds_down_with_a_floor_of_one() {
        for (value, replicas, want) in [
            (int(2), 6, 2),
            (string("50%"), 6, 3),
            (string("20%"), 3, 1),
            (string("1%"), 10, 1),
            (string("100%"), 7, 7),
            (int(10), 3, 10),
        ] {
            assert_eq!(
                max_unavailable(&value, replicas),
                Ok(want),
                "{value:?} of {replicas}"
            );
        }
        for bad in [int(0), int(-1), string("0%"), string("101%"), string("ten")] {
            assert!(max_unavailable(&bad, 5).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn identities_are_exactly_replicas_unreserved_ordinals(
            start in 0i32..50,
            replicas in 0i32..60,
            reserved in proptest::collection::btree_set(0i32..120, 0..20),
        ) {
            let got = ordinals(start, replicas, &reserved);
            prop_assert_eq!(got.len(), replicas as usize);
            prop_assert!(got.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(got.iter().all(|o| *o >= start && !reserved.contains(o)));
            // No unreserved ordinal was skipped below the highest identity.
            if let Some(last) = got.last() {
                let skipped = (start..*last).filter(|o| !reserved.contains(o) && !got.contains(o)).count();
                prop_assert_eq!(skipped, 0);
            }
        }
    }
}
