//! What the webhook refuses that the CRDs' schemas and CEL rules cannot say: they cannot
//! evaluate a label selector, CEL over the embedded pod template exceeds the API server's
//! cost budget, and CEL sees one object only, never the other StaticIPPools a pool must not
//! overlap. The IP-mode annotation rules are the admission policy's too, made from the same
//! table ([`ip_mode::RULES`]). Every message names its field.

use ests_api::policy::ip_mode;
use ests_api::{EnhancedStatefulSet, StaticIPPool};
use ipnet::IpNet;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

/// The reasons to refuse creating `new` (or updating `old` to `new`); empty if none.
pub fn set_admission(new: &EnhancedStatefulSet, old: Option<&EnhancedStatefulSet>) -> Vec<String> {
    let mut problems = Vec::new();
    let labels = new
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    match Selector::try_from(new.spec.selector.clone()) {
        Ok(selector) if selector.selects_all() => problems.push(
            "spec.selector: must not be empty (it would select every pod in the namespace)".into(),
        ),
        Ok(selector) if !selector.matches(&labels) => problems.push(format!(
            "spec.selector: {selector} does not select the pods of spec.template.metadata.labels ({})",
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Ok(_) => {}
        Err(e) => problems.push(format!("spec.selector: {e}")),
    }
    if let Some(policy) = new
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .filter(|p| *p != "Always")
    {
        problems.push(format!(
            "spec.template.spec.restartPolicy: must be Always for a stateful set's pods, not {policy}"
        ));
    }
    // The IP-mode annotations, by the rules the admission policy checks too: a cluster
    // without the policy refuses the same sets.
    problems.extend(ip_mode::problems(
        new.annotations(),
        old.map(ResourceExt::annotations),
    ));
    problems
}

/// One CIDR of a pool overlapping one of another pool (or of the same pool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    /// The pool's CIDR, as written.
    pub cidr: String,
    /// The other pool; None for another CIDR of the same pool.
    pub other_pool: Option<String>,
    /// The other CIDR, as written.
    pub other_cidr: String,
}

impl std::fmt::Display for Overlap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.other_pool {
            Some(other) => write!(
                f,
                "{} overlaps {} of StaticIPPool {other}",
                self.cidr, self.other_cidr
            ),
            None => write!(
                f,
                "{} overlaps {} of the same pool",
                self.cidr, self.other_cidr
            ),
        }
    }
}

fn cidrs(pool: &StaticIPPool) -> impl Iterator<Item = (&str, IpNet)> {
    pool.spec
        .cidrs
        .iter()
        .filter_map(|c| Some((c.as_str(), c.parse::<IpNet>().ok()?.trunc())))
}

fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Where the CIDRs of `pool` in `judged` (all of them if None) overlap each other or the
/// CIDRs of `others` (the pool itself, by name, is skipped among them). Unparsable CIDRs,
/// which the CRD refuses, are ignored.
pub fn pool_overlaps<'a>(
    pool: &StaticIPPool,
    judged: Option<&[String]>,
    others: impl IntoIterator<Item = &'a StaticIPPool>,
) -> Vec<Overlap> {
    let name = pool.name_any();
    let mine: Vec<(&str, IpNet)> = cidrs(pool).collect();
    let is_judged = |c: &str| judged.is_none_or(|j| j.iter().any(|x| x == c));
    let mut found = Vec::new();
    for (i, (cidr, net)) in mine.iter().enumerate() {
        for (other_cidr, other) in &mine[..i] {
            if (is_judged(cidr) || is_judged(other_cidr)) && overlap(net, other) {
                found.push(Overlap {
                    cidr: (*cidr).to_string(),
                    other_pool: None,
                    other_cidr: (*other_cidr).to_string(),
                });
            }
        }
    }
    let mut others: Vec<&StaticIPPool> = others
        .into_iter()
        .filter(|o| o.name_any() != name)
        .collect();
    others.sort_by_key(|o| o.name_any());
    for other in others {
        for (other_cidr, other_net) in cidrs(other) {
            for (cidr, net) in mine.iter().filter(|(c, _)| is_judged(c)) {
                if overlap(net, &other_net) {
                    found.push(Overlap {
                        cidr: (*cidr).to_string(),
                        other_pool: Some(other.name_any()),
                        other_cidr: other_cidr.to_string(),
                    });
                }
            }
        }
    }
    found
}

/// The reasons to refuse creating `new` (or updating `old` to `new`) while `others` exist;
/// empty if none. A CIDR the pool already had is not judged again: an overlap made before
/// this check existed must not stop the pool's other updates (its finalizer's removal).
pub fn pool_admission<'a>(
    new: &StaticIPPool,
    old: Option<&StaticIPPool>,
    others: impl IntoIterator<Item = &'a StaticIPPool>,
) -> Vec<String> {
    let added: Option<Vec<String>> = old.map(|old| {
        new.spec
            .cidrs
            .iter()
            .filter(|c| !old.spec.cidrs.contains(c))
            .cloned()
            .collect()
    });
    pool_overlaps(new, added.as_deref(), others)
        .iter()
        .map(|o| {
            format!(
                "spec.cidrs: StaticIPPool {}: {o}; two pools would hand out the same addresses",
                new.name_any()
            )
        })
        .collect()
}

/// Whether `pool` may hand out addresses, given the pools an allocator's cache holds: not
/// while it overlaps another. The webhook refuses overlapping pools, but two created in the
/// same instant can both pass it before its cache holds either, and pools made before the
/// webhook checked may overlap. A cache that holds the later-created of two pools holds the
/// earlier one too (one watch, in resourceVersion order), so whatever an allocator hands out
/// of the earlier pool before it sees the later one, it never hands out an address of the
/// later one: no address goes to two records. The overlaps that stop it, if any.
pub fn pool_usable<'a>(
    pool: &StaticIPPool,
    others: impl IntoIterator<Item = &'a StaticIPPool>,
) -> Result<(), Vec<Overlap>> {
    let stopping = pool_overlaps(pool, None, others)
        .into_iter()
        .filter(|o| o.other_pool.is_some())
        .collect::<Vec<_>>();
    if stopping.is_empty() {
        Ok(())
    } else {
        Err(stopping)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pool(name: &str, cidrs: &[&str], created: &str) -> StaticIPPool {
        serde_json::from_value(json!({
            "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "StaticIPPool",
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {"cidrs": cidrs}
        }))
        .expect("pool")
    }

    #[test]
    fn pools_may_not_overlap() {
        let blue = pool(
            "blue",
            &["172.30.0.0/24", "fd00:30::/112"],
            "2026-01-01T00:00:00Z",
        );
        let cases: &[(&[&str], &[&str])] = &[
            (&["172.30.1.0/24", "fd00:31::/112"], &[]),
            (
                &["172.30.0.0/24"],
                &[
                    "spec.cidrs: StaticIPPool green: 172.30.0.0/24 overlaps 172.30.0.0/24 of StaticIPPool blue; two pools would hand out the same addresses",
                ],
            ),
            (
                &["10.0.0.0/8", "172.30.0.128/25"],
                &[
                    "spec.cidrs: StaticIPPool green: 172.30.0.128/25 overlaps 172.30.0.0/24 of StaticIPPool blue; two pools would hand out the same addresses",
                ],
            ),
            (
                &["172.16.0.0/12"],
                &[
                    "spec.cidrs: StaticIPPool green: 172.16.0.0/12 overlaps 172.30.0.0/24 of StaticIPPool blue; two pools would hand out the same addresses",
                ],
            ),
            (
                &["fd00:30::ff00/120"],
                &[
                    "spec.cidrs: StaticIPPool green: fd00:30::ff00/120 overlaps fd00:30::/112 of StaticIPPool blue; two pools would hand out the same addresses",
                ],
            ),
            // Host bits do not hide an overlap.
            (
                &["172.30.0.77/24"],
                &[
                    "spec.cidrs: StaticIPPool green: 172.30.0.77/24 overlaps 172.30.0.0/24 of StaticIPPool blue; two pools would hand out the same addresses",
                ],
            ),
            // Nor does the pool overlap only itself.
            (
                &["10.1.0.0/16", "10.1.2.0/24"],
                &[
                    "spec.cidrs: StaticIPPool green: 10.1.2.0/24 overlaps 10.1.0.0/16 of the same pool; two pools would hand out the same addresses",
                ],
            ),
        ];
        for (cidrs, want) in cases {
            let green = pool("green", cidrs, "2026-01-02T00:00:00Z");
            assert_eq!(pool_admission(&green, None, [&blue]), *want, "{cidrs:?}");
        }
        // An update is not judged against the pool's old self, and only its new CIDRs are
        // judged.
        let grown = pool(
            "blue",
            &["172.30.0.0/24", "fd00:30::/112", "10.9.0.0/24"],
            "2026-01-01T00:00:00Z",
        );
        assert!(pool_admission(&grown, Some(&blue), [&blue]).is_empty());
        let legacy = pool("old", &["172.30.0.0/25"], "2025-01-01T00:00:00Z");
        assert!(pool_admission(&grown, Some(&blue), [&blue, &legacy]).is_empty());
        let into_legacy = pool(
            "blue",
            &["172.30.0.0/24", "fd00:30::/112", "172.30.0.0/26"],
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            pool_admission(&into_legacy, Some(&blue), [&legacy]).len(),
            2
        );
    }

    /// An allocator's cache that holds the later-created of two pools holds the earlier
    /// one too (one watch, in resourceVersion order), so refusing both is what keeps every
    /// allocator from ever handing out an address of both; "the oldest wins" would not be,
    /// as creation timestamps have one-second resolution and come from several API servers.
    #[test]
    fn overlapping_pools_hand_out_nothing() {
        let first = pool("b-first", &["172.30.0.0/24"], "2026-01-01T00:00:00Z");
        let second = pool("c-second", &["172.30.0.0/25"], "2026-01-01T00:00:05Z");
        let same_second = pool("a-same", &["172.30.0.128/25"], "2026-01-01T00:00:00Z");
        let apart = pool("d-apart", &["10.0.0.0/24"], "2026-01-01T00:00:00Z");
        let all = [&first, &second, &same_second, &apart];
        let usable: Vec<(String, bool)> = all
            .iter()
            .map(|p| (p.name_any(), pool_usable(p, all).is_ok()))
            .collect();
        assert_eq!(
            usable,
            [
                ("b-first".into(), false),
                ("c-second".into(), false),
                ("a-same".into(), false),
                ("d-apart".into(), true),
            ]
        );
        // The first pool alone in a cache (the second not yet seen) hands out addresses.
        assert!(pool_usable(&first, [&first, &apart]).is_ok());
        assert_eq!(
            pool_usable(&same_second, all).map_err(|o| o[0].to_string()),
            Err("172.30.0.128/25 overlaps 172.30.0.0/24 of StaticIPPool b-first".into())
        );
    }

    fn set(
        selector: serde_json::Value,
        labels: serde_json::Value,
        annotations: serde_json::Value,
    ) -> EnhancedStatefulSet {
        serde_json::from_value(json!({
            "apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet",
            "metadata": {"name": "web", "annotations": annotations},
            "spec": {"selector": selector,
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"image": "nginx"}]}}}
        }))
        .expect("set")
    }

    #[test]
    fn selectors_must_select_the_template() {
        let ok = set(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "web", "tier": "x"}),
            json!({}),
        );
        assert!(set_admission(&ok, None).is_empty());
        let expressions = set(
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}]}),
            json!({"app": "db"}),
            json!({}),
        );
        let problems = set_admission(&expressions, None);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("spec.selector: "), "{problems:?}");
        assert!(problems[0].contains("app=db"), "{problems:?}");
        let empty = set(json!({}), json!({"app": "web"}), json!({}));
        assert!(set_admission(&empty, None)[0].contains("must not be empty"));
    }

    #[test]
    fn restart_policy_must_be_always() {
        let mut s = set(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "web"}),
            json!({}),
        );
        if let Some(spec) = s.spec.template.spec.as_mut() {
            spec.restart_policy = Some("OnFailure".into());
        }
        assert_eq!(
            set_admission(&s, None),
            [
                "spec.template.spec.restartPolicy: must be Always for a stateful set's pods, not OnFailure"
            ]
        );
    }

    #[test]
    fn the_ip_mode_never_changes() {
        let before = set(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "web"}),
            json!({"staticip.jke.jdcloud.com/enable": "true"}),
        );
        let to_range = set(
            json!({"matchLabels": {"app": "web"}}),
            json!({"app": "web"}),
            json!({"staticip.jke.jdcloud.com/enable": "true", "staticip.jke.jdcloud.com/pool": "blue"}),
        );
        let problems = set_admission(&to_range, Some(&before));
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("metadata.annotations[staticip.jke.jdcloud.com/pool]"),
            "{problems:?}"
        );
        assert!(set_admission(&before, Some(&before)).is_empty());
    }

    /// Every case of the table the ValidatingAdmissionPolicy is tested on as well
    /// (`crates/ests/tests/ip_mode_policy.rs`): the webhook admits the set and the
    /// controller runs it exactly when the table (and so the API server) admits it.
    #[test]
    fn ip_mode_cases_are_judged_as_the_table_says() {
        let with = |annotations: &std::collections::BTreeMap<String, String>| {
            let mut s = set(
                json!({"matchLabels": {"app": "web"}}),
                json!({"app": "web"}),
                json!({}),
            );
            s.metadata.annotations = Some(annotations.clone());
            s
        };
        let mut wrong = Vec::new();
        for case in ests_api::policy::ip_mode::cases().expect("the cases parse") {
            let new = with(&case.annotations);
            let old = case.old.as_ref().map(with);
            let webhook = set_admission(&new, old.as_ref());
            let controller = crate::static_ip::settings(&new);
            let allowed = webhook.is_empty() && controller.is_ok();
            if allowed != case.allowed {
                wrong.push(format!(
                    "{}: want allowed={}, webhook says {webhook:?}, controller says {controller:?}",
                    case.name, case.allowed
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}
