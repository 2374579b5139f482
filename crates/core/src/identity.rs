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

/// Reserved ordinals as sorted, disjoint, non-adjacent inclusive ranges: what
/// `spec.reserveOrdinals` says, at a cost of its entries, not of the ordinals they span (any
/// user who may edit a set could otherwise make the controller hold billions of ordinals).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reserved {
    ranges: Vec<(i32, i32)>,
}

impl Reserved {
    /// From inclusive ranges in any order, overlapping or not.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (i32, i32)>) -> Self {
        let mut ranges: Vec<(i32, i32)> = ranges.into_iter().filter(|(l, h)| l <= h).collect();
        ranges.sort_unstable();
        let mut merged: Vec<(i32, i32)> = Vec::with_capacity(ranges.len());
        for (low, high) in ranges {
            match merged.last_mut() {
                Some(last) if i64::from(low) <= i64::from(last.1) + 1 => last.1 = last.1.max(high),
                _ => merged.push((low, high)),
            }
        }
        Self { ranges: merged }
    }

    pub fn contains(&self, ordinal: &i32) -> bool {
        let i = self.ranges.partition_point(|(_, high)| high < ordinal);
        self.ranges.get(i).is_some_and(|(low, _)| low <= ordinal)
    }

    /// The ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[(i32, i32)] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// How many ordinals are reserved.
    pub fn count(&self) -> u64 {
        self.ranges
            .iter()
            .map(|(low, high)| u64::try_from(i64::from(*high) - i64::from(*low) + 1).unwrap_or(0))
            .sum()
    }
}

impl FromIterator<i32> for Reserved {
    fn from_iter<T: IntoIterator<Item = i32>>(ordinals: T) -> Self {
        Self::from_ranges(ordinals.into_iter().map(|o| (o, o)))
    }
}

impl From<&BTreeSet<i32>> for Reserved {
    fn from(ordinals: &BTreeSet<i32>) -> Self {
        ordinals.iter().copied().collect()
    }
}

/// The reserved ordinals of `spec.reserveOrdinals`: integers and inclusive "a-b" ranges.
pub fn reserved_ordinals(entries: &[IntOrString]) -> Result<Reserved, SpecError> {
    let mut ranges = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        let invalid = || SpecError::ReserveOrdinal {
            index,
            value: match entry {
                IntOrString::Int(i) => i.to_string(),
                IntOrString::String(s) => s.clone(),
            },
        };
        match entry {
            IntOrString::Int(i) if *i >= 0 => ranges.push((*i, *i)),
            IntOrString::Int(_) => return Err(invalid()),
            IntOrString::String(s) => {
                let (low, high) = s.split_once('-').ok_or_else(invalid)?;
                let low: i32 = low.trim().parse().map_err(|_| invalid())?;
                let high: i32 = high.trim().parse().map_err(|_| invalid())?;
                if low < 0 || high < low {
                    return Err(invalid());
                }
                ranges.push((low, high));
            }
        }
    }
    Ok(Reserved::from_ranges(ranges))
}

/// The set's identities: the first `replicas` ordinals counting up from `start` that are not
/// reserved, in ascending order. Costs O(replicas + reserved ranges), whatever the ranges
/// span.
pub fn ordinals(start: i32, replicas: i32, reserved: &Reserved) -> Vec<i32> {
    let wanted = usize::try_from(replicas).unwrap_or(0);
    // The CRD bounds replicas (150,000); the capacity is bounded all the same.
    let mut out = Vec::with_capacity(wanted.min(1 << 18));
    let mut next = i64::from(start.max(0));
    let mut ranges = reserved.ranges.iter().peekable();
    while out.len() < wanted && next <= i64::from(i32::MAX) {
        // Skip the ranges below `next`, then jump over the one holding it.
        while ranges
            .next_if(|(_, high)| i64::from(*high) < next)
            .is_some()
        {}
        match ranges.peek() {
            Some((low, high)) if i64::from(*low) <= next => next = i64::from(*high) + 1,
            Some((low, _)) => {
                let gap_end = i64::from(*low);
                while next < gap_end && out.len() < wanted {
                    out.extend(i32::try_from(next).ok());
                    next += 1;
                }
            }
            None => {
                while next <= i64::from(i32::MAX) && out.len() < wanted {
                    out.extend(i32::try_from(next).ok());
                    next += 1;
                }
            }
        }
    }
    out
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
            (
                "a range of two billion costs nothing",
                0,
                3,
                vec![string("0-2000000000")],
                vec![2_000_000_001, 2_000_000_002, 2_000_000_003],
            ),
            (
                "overlapping and adjacent ranges",
                0,
                4,
                vec![string("2-5"), string("4-8"), int(9), string("1-1")],
                vec![0, 10, 11, 12],
            ),
            (
                "every ordinal up to the last reserved: fewer identities",
                2_147_483_640,
                10,
                vec![string("2147483641-2147483647")],
                vec![2_147_483_640],
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
            (vec![string("3-99999999999")], 0),
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
            let got = ordinals(start, replicas, &Reserved::from(&reserved));
            prop_assert_eq!(got.len(), replicas as usize);
            prop_assert!(got.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(got.iter().all(|o| *o >= start && !reserved.contains(o)));
            // No unreserved ordinal was skipped below the highest identity.
            if let Some(last) = got.last() {
                let skipped = (start..*last).filter(|o| !reserved.contains(o) && !got.contains(o)).count();
                prop_assert_eq!(skipped, 0);
            }
        }

        #[test]
        fn ranges_reserve_exactly_the_ordinals_they_span(
            ranges in proptest::collection::vec((0i32..200, 0i32..30), 0..12),
            start in 0i32..100,
            replicas in 0i32..80,
        ) {
            let ranges: Vec<(i32, i32)> = ranges.into_iter().map(|(low, len)| (low, low + len)).collect();
            let expanded: BTreeSet<i32> = ranges.iter().flat_map(|(l, h)| *l..=*h).collect();
            let reserved = Reserved::from_ranges(ranges.clone());
            prop_assert!(reserved.ranges().len() <= ranges.len());
            prop_assert!(reserved.ranges().windows(2).all(|w| i64::from(w[0].1) + 1 < i64::from(w[1].0)));
            for o in 0..260 {
                prop_assert_eq!(reserved.contains(&o), expanded.contains(&o), "ordinal {}", o);
            }
            prop_assert_eq!(
                ordinals(start, replicas, &reserved),
                ordinals(start, replicas, &Reserved::from(&expanded))
            );
        }
    }
}
