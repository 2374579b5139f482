//! The rules of a set's IP-mode annotations, written once. The ValidatingAdmissionPolicy's
//! CEL ([`Rule::expression`], in [`super`]) and the Rust checks of the webhook and the
//! controller ([`problems`], used by `ests_core::validate::set_admission` and
//! `ests_core::static_ip::settings`) are both made from [`RULES`], so the API server, the
//! webhook and the controller cannot disagree about a set. [`cases`] is the table both
//! sides are tested on: in Rust by `ests-core`, in CEL against a real API server by
//! `crates/ests/tests/ip_mode_policy.rs`.
//!
//! An annotation set to `""` counts as unset everywhere (CEL's `orValue('')`): a set
//! written with an empty value means the same as one without it.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::keys::{
    STATIC_IP_ENABLE, STATIC_IP_POOL, STATIC_IP_RELEASE_POLICY, STATIC_IP_RELEASE_TTL_SECONDS,
};

/// The most digits a TTL may have: about 31 years of seconds, and far from `i64`'s end.
pub const TTL_MAX_DIGITS: usize = 9;

/// One rule over a set's annotations; `""` (or absent) is unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// When set, the annotation holds one of `values`.
    OneOf {
        key: &'static str,
        values: &'static [&'static str],
    },
    /// When set, the annotation is a whole number of seconds: 1 to [`TTL_MAX_DIGITS`]
    /// ASCII digits, no sign, no space.
    Seconds { key: &'static str },
    /// The annotation is set only when `other` holds `value`.
    Needs {
        key: &'static str,
        other: &'static str,
        value: &'static str,
    },
    /// The annotation is set whenever `other` holds `value`.
    RequiredWith {
        key: &'static str,
        other: &'static str,
        value: &'static str,
    },
    /// An update keeps the annotation's value.
    Immutable { key: &'static str },
}

/// Every rule, in the order they are checked (the first broken one is what the API server
/// answers with).
pub const RULES: &[Rule] = &[
    Rule::OneOf {
        key: STATIC_IP_ENABLE,
        values: &["true", "false"],
    },
    Rule::Needs {
        key: STATIC_IP_POOL,
        other: STATIC_IP_ENABLE,
        value: "true",
    },
    Rule::OneOf {
        key: STATIC_IP_RELEASE_POLICY,
        values: RELEASE_POLICIES,
    },
    Rule::RequiredWith {
        key: STATIC_IP_RELEASE_TTL_SECONDS,
        other: STATIC_IP_RELEASE_POLICY,
        value: "TTL",
    },
    Rule::Needs {
        key: STATIC_IP_RELEASE_TTL_SECONDS,
        other: STATIC_IP_RELEASE_POLICY,
        value: "TTL",
    },
    Rule::Seconds {
        key: STATIC_IP_RELEASE_TTL_SECONDS,
    },
    Rule::Immutable {
        key: STATIC_IP_ENABLE,
    },
    Rule::Immutable {
        key: STATIC_IP_POOL,
    },
];

/// The release policies a set may name: [`crate::ReleasePolicy`] as it is written (a test
/// holds the two equal).
pub const RELEASE_POLICIES: &[&str] = &["WhenScaled", "WhenDeleted", "TTL", "Never"];

/// The value of `key` in `annotations`, `""` when absent.
pub fn value<'a>(annotations: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    annotations.get(key).map_or("", String::as_str)
}

/// `key` of `object` in CEL, `''` when absent.
pub(crate) fn cel_value(object: &str, key: &str) -> String {
    format!("{object}.metadata.?annotations[?'{key}'].orValue('')")
}

fn is_seconds(v: &str) -> bool {
    (1..=TTL_MAX_DIGITS).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit())
}

impl Rule {
    /// Whether `new` (an update of `old`, or a create when None) keeps the rule.
    pub fn holds(
        &self,
        new: &BTreeMap<String, String>,
        old: Option<&BTreeMap<String, String>>,
    ) -> bool {
        match *self {
            Rule::OneOf { key, values } => {
                let v = value(new, key);
                v.is_empty() || values.contains(&v)
            }
            Rule::Seconds { key } => {
                let v = value(new, key);
                v.is_empty() || is_seconds(v)
            }
            Rule::Needs {
                key,
                other,
                value: v,
            } => value(new, key).is_empty() || value(new, other) == v,
            Rule::RequiredWith {
                key,
                other,
                value: v,
            } => value(new, other) != v || !value(new, key).is_empty(),
            Rule::Immutable { key } => old.is_none_or(|old| value(new, key) == value(old, key)),
        }
    }

    /// The rule in CEL, over a ValidatingAdmissionPolicy's `object`, `oldObject` and
    /// `request`: the same test as [`Rule::holds`].
    pub fn expression(&self) -> String {
        let quoted = |v: &str| format!("'{v}'");
        match *self {
            Rule::OneOf { key, values } => format!(
                "{} in ['', {}]",
                cel_value("object", key),
                values
                    .iter()
                    .map(|v| quoted(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Rule::Seconds { key } => {
                let v = cel_value("object", key);
                // RE2's `$` is the end of the text (no multi-line mode), as `is_seconds`.
                format!("{v} == '' || {v}.matches('^[0-9]{{1,{TTL_MAX_DIGITS}}}$')")
            }
            Rule::Needs { key, other, value } => format!(
                "{} == '' || {} == {}",
                cel_value("object", key),
                cel_value("object", other),
                quoted(value)
            ),
            Rule::RequiredWith { key, other, value } => format!(
                "{} != {} || {} != ''",
                cel_value("object", other),
                quoted(value),
                cel_value("object", key)
            ),
            Rule::Immutable { key } => format!(
                "request.operation != 'UPDATE' || {} == {}",
                cel_value("object", key),
                cel_value("oldObject", key)
            ),
        }
    }

    /// What a set breaking the rule is told, naming the annotation.
    pub fn message(&self) -> String {
        match *self {
            Rule::OneOf { key, values } => {
                format!(
                    "metadata.annotations[{key}] must be one of {}",
                    values
                        .iter()
                        .map(|v| format!("\"{v}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
            Rule::Seconds { key } => format!(
                "metadata.annotations[{key}] must be a whole number of seconds (1 to {TTL_MAX_DIGITS} digits)"
            ),
            Rule::Needs { key, other, value } => format!(
                "metadata.annotations[{key}] needs metadata.annotations[{other}] set to \"{value}\""
            ),
            Rule::RequiredWith { key, other, value } => format!(
                "metadata.annotations[{key}] is required when metadata.annotations[{other}] is \"{value}\""
            ),
            Rule::Immutable { key } => format!(
                "metadata.annotations[{key}] is immutable: a set's IP mode cannot change while the set exists; delete and re-create the set"
            ),
        }
    }
}

/// The messages of the rules `new` breaks (an update of `old`, or a create when None), in
/// the order of [`RULES`]; empty if none.
pub fn problems(
    new: &BTreeMap<String, String>,
    old: Option<&BTreeMap<String, String>>,
) -> Vec<String> {
    RULES
        .iter()
        .filter(|rule| !rule.holds(new, old))
        .map(Rule::message)
        .collect()
}

/// One case of `testdata/ip-mode-annotations.yaml`, keys with their prefix.
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub name: String,
    /// The set's annotations before an update; None for a create.
    #[serde(default)]
    pub old: Option<BTreeMap<String, String>>,
    pub annotations: BTreeMap<String, String>,
    /// Whether the set is admitted.
    pub allowed: bool,
}

/// The annotation keys of the cases are written without this.
const PREFIX: &str = "staticip.jke.jdcloud.com/";

/// The cases of `testdata/ip-mode-annotations.yaml`, with full keys.
pub fn cases() -> Result<Vec<Case>, String> {
    let text = include_str!("../../testdata/ip-mode-annotations.yaml");
    let mut cases: Vec<Case> = serde_saphyr::from_str(text)
        .map_err(|e| format!("parsing testdata/ip-mode-annotations.yaml: {e}"))?;
    let prefixed = |m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.clone()))
            .collect()
    };
    for case in &mut cases {
        case.annotations = prefixed(&case.annotations);
        case.old = case.old.as_ref().map(prefixed);
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cases_are_judged_as_they_say() {
        for case in cases().expect("the cases parse") {
            assert_eq!(
                problems(&case.annotations, case.old.as_ref()).is_empty(),
                case.allowed,
                "{}: {:?}",
                case.name,
                problems(&case.annotations, case.old.as_ref())
            );
        }
    }

    /// The policy names are the API's: what a set may name is what its records hold (the
    /// StaticIP CRD's enum).
    #[test]
    fn release_policies_are_the_api_ones() {
        for name in RELEASE_POLICIES {
            serde_json::from_value::<crate::ReleasePolicy>(serde_json::json!(name))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let crd = crate::crd::all()
            .into_iter()
            .find(|c| c.spec.names.kind == "StaticIP")
            .expect("the StaticIP CRD");
        let crd = serde_json::to_value(&crd).expect("the CRD serializes");
        let listed = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["releasePolicy"]["enum"];
        assert_eq!(*listed, serde_json::json!(RELEASE_POLICIES));
    }

    /// Values are put between single quotes in CEL as they are: none may hold one.
    #[test]
    fn values_need_no_escaping_in_cel() {
        for rule in RULES {
            let values: &[&str] = match rule {
                Rule::OneOf { values, .. } => values,
                Rule::Needs { value, .. } | Rule::RequiredWith { value, .. } => {
                    std::slice::from_ref(value)
                }
                Rule::Seconds { .. } | Rule::Immutable { .. } => &[],
            };
            assert!(values.iter().all(|v| !v.contains(['\'', '\\'])), "{rule:?}");
        }
    }

    #[test]
    fn every_message_names_its_annotation() {
        for rule in RULES {
            let key = match rule {
                Rule::OneOf { key, .. }
                | Rule::Seconds { key }
                | Rule::Needs { key, .. }
                | Rule::RequiredWith { key, .. }
                | Rule::Immutable { key } => key,
            };
            assert!(
                rule.message()
                    .starts_with(&format!("metadata.annotations[{key}] ")),
                "{rule:?}"
            );
        }
    }
}
