//! Non-overlapping ordinal ranges for the member clusters of a Karmada divided placement, and
//! the OverridePolicy that gives each member its `spec.ordinals.start`.
//!
//! Under divided placement Karmada chooses each member's replicas (ReviseReplica), up to all
//! of them in one member. Member `i` gets the range `[start_i, start_i + size_i)`; with every
//! size at least the set's replicas plus its reserved ordinals, no assignment of replicas can
//! make two members' identities meet.

use serde_json::{Value, json};

/// One member's range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRange {
    pub cluster: String,
    pub start: i32,
    pub size: i32,
}

impl MemberRange {
    /// The last ordinal of the range.
    pub fn end(&self) -> i32 {
        self.start + self.size - 1
    }
}

/// Why no ranges can be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    #[error("no member clusters named")]
    NoClusters,
    #[error("cluster {0} is named twice")]
    Duplicate(String),
    #[error("cluster {cluster}: a range needs at least one ordinal, got {size}")]
    Empty { cluster: String, size: i32 },
    #[error(
        "cluster {cluster}: range {size} is smaller than the {needed} ordinals one member may get (replicas plus reserved ordinals); pass --allow-small-ranges if the placement caps that member"
    )]
    TooSmall {
        cluster: String,
        size: i32,
        needed: i32,
    },
    #[error("ordinal ranges go past the largest ordinal")]
    Overflow,
}

/// A member named on the command line: `member1` or `member1=SIZE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    pub cluster: String,
    pub size: Option<i32>,
}

/// Parses `member1` or `member1=10`.
pub fn parse_member(text: &str) -> Result<MemberSpec, String> {
    match text.split_once('=') {
        None if !text.is_empty() => Ok(MemberSpec {
            cluster: text.to_string(),
            size: None,
        }),
        Some((cluster, size)) if !cluster.is_empty() => Ok(MemberSpec {
            cluster: cluster.to_string(),
            size: Some(
                size.parse()
                    .map_err(|e| format!("member {cluster}: size {size:?}: {e}"))?,
            ),
        }),
        _ => Err(format!("expected CLUSTER or CLUSTER=SIZE, got {text:?}")),
    }
}

/// Consecutive ranges from `base`, in the order the members are given. `needed` is what one
/// member may get at most (replicas plus reserved ordinals); a member without a size gets
/// that many ordinals.
pub fn split_ranges(
    members: &[MemberSpec],
    base: i32,
    needed: i32,
    allow_small: bool,
) -> Result<Vec<MemberRange>, RangeError> {
    if members.is_empty() {
        return Err(RangeError::NoClusters);
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut next = i64::from(base.max(0));
    let mut out = Vec::with_capacity(members.len());
    for m in members {
        if !seen.insert(m.cluster.clone()) {
            return Err(RangeError::Duplicate(m.cluster.clone()));
        }
        let size = m.size.unwrap_or(needed.max(1));
        if size < 1 {
            return Err(RangeError::Empty {
                cluster: m.cluster.clone(),
                size,
            });
        }
        if size < needed && !allow_small {
            return Err(RangeError::TooSmall {
                cluster: m.cluster.clone(),
                size,
                needed,
            });
        }
        let start = i32::try_from(next).map_err(|_| RangeError::Overflow)?;
        next += i64::from(size);
        if next - 1 > i64::from(i32::MAX) {
            return Err(RangeError::Overflow);
        }
        out.push(MemberRange {
            cluster: m.cluster.clone(),
            start,
            size,
        });
    }
    Ok(out)
}

/// Whether two ranges share an ordinal.
pub fn overlapping(ranges: &[MemberRange]) -> Option<(String, String)> {
    for (i, a) in ranges.iter().enumerate() {
        for b in &ranges[i + 1..] {
            if a.start <= b.end() && b.start <= a.end() {
                return Some((a.cluster.clone(), b.cluster.clone()));
            }
        }
    }
    None
}

/// The OverridePolicy that sets each member's `spec.ordinals` for the set.
pub fn override_policy(name: &str, namespace: &str, ranges: &[MemberRange]) -> Value {
    let rules: Vec<Value> = ranges
        .iter()
        .map(|r| {
            json!({
                "targetCluster": {"clusterNames": [r.cluster]},
                "overriders": {"plaintext": [{
                    "path": "/spec/ordinals",
                    "operator": "add",
                    "value": {"start": r.start}
                }]}
            })
        })
        .collect();
    json!({
        "apiVersion": "policy.karmada.io/v1alpha1",
        "kind": "OverridePolicy",
        "metadata": {
            "name": format!("{name}-ordinals"),
            "namespace": namespace,
            "annotations": {
                "jke.jdcloud.com/ordinal-ranges": ranges
                    .iter()
                    .map(|r| format!("{}={}-{}", r.cluster, r.start, r.end()))
                    .collect::<Vec<_>>()
                    .join(",")
            }
        },
        "spec": {
            "resourceSelectors": [{
                "apiVersion": format!("{}/{}", ests_api::GROUP, ests_api::VERSION),
                "kind": "EnhancedStatefulSet",
                "name": name,
                "namespace": namespace
            }],
            "overrideRules": rules
        }
    })
}

/// The member ranges an OverridePolicy made by [`override_policy`] gives: (cluster, start).
pub fn starts_of(policy: &Value) -> Vec<(String, i32)> {
    policy["spec"]["overrideRules"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|rule| {
            let clusters: Vec<String> = rule["targetCluster"]["clusterNames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect();
            let start = rule["overriders"]["plaintext"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["path"] == "/spec/ordinals")
                .and_then(|p| p["value"]["start"].as_i64())
                .and_then(|s| i32::try_from(s).ok());
            clusters
                .into_iter()
                .filter_map(move |c| start.map(|s| (c, s)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(text: &[&str]) -> Vec<MemberSpec> {
        text.iter()
            .map(|t| parse_member(t).expect("member"))
            .collect()
    }

    #[test]
    fn ranges_follow_each_other_from_the_base() {
        let cases = [
            (vec!["a", "b", "c"], 0, 5, vec![(0, 5), (5, 5), (10, 5)]),
            (vec!["a=10", "b"], 100, 6, vec![(100, 10), (110, 6)]),
            (vec!["only"], 0, 0, vec![(0, 1)]),
        ];
        for (m, base, needed, want) in cases {
            let r = split_ranges(&members(&m), base, needed, false).expect("ranges");
            assert_eq!(
                r.iter().map(|r| (r.start, r.size)).collect::<Vec<_>>(),
                want,
                "{m:?}"
            );
            assert_eq!(overlapping(&r), None);
        }
    }

    #[test]
    fn bad_member_lists_are_refused() {
        assert_eq!(split_ranges(&[], 0, 3, false), Err(RangeError::NoClusters));
        assert_eq!(
            split_ranges(&members(&["a", "a"]), 0, 3, false),
            Err(RangeError::Duplicate("a".into()))
        );
        assert!(matches!(
            split_ranges(&members(&["a=2"]), 0, 3, false),
            Err(RangeError::TooSmall { .. })
        ));
        assert!(split_ranges(&members(&["a=2"]), 0, 3, true).is_ok());
        assert!(matches!(
            split_ranges(&members(&["a=0"]), 0, 3, true),
            Err(RangeError::Empty { .. })
        ));
        assert_eq!(
            split_ranges(&members(&["a", "b"]), i32::MAX - 3, 3, false),
            Err(RangeError::Overflow)
        );
        assert!(parse_member("=3").is_err());
        assert!(parse_member("a=x").is_err());
    }

    #[test]
    fn the_policy_round_trips_its_starts() {
        let r = split_ranges(&members(&["m1", "m2"]), 0, 4, false).expect("ranges");
        let p = override_policy("web", "shop", &r);
        assert_eq!(starts_of(&p), vec![("m1".into(), 0), ("m2".into(), 4)]);
        assert_eq!(
            p["metadata"]["annotations"]["jke.jdcloud.com/ordinal-ranges"],
            "m1=0-3,m2=4-7"
        );
    }
}
