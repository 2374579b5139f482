//! The Pod webhook's other decision: a pod that is not a static-IP pod may not ask the CNI,
//! through a configured CNI annotation (Calico's `cni.projectcalico.org/ipAddrs`), for an
//! address a StaticIP record keeps.
//!
//! Such a CNI hands a pod whatever address its annotation names, whoever created the pod: an
//! ordinary pod naming a kept address would share it with the identity's pod. ests's own
//! annotations are kept to static-IP pods by an admission policy (`ests-pod-addresses`); the
//! CNI's cannot be, because which addresses are kept is known only from the records, which
//! the webhook caches. Static-IP pods are [`crate::pin`]'s to judge: the controller creates
//! them and the webhook writes their CNI annotation from their own record.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::Value;

use crate::pin::{CniAnnotation, Denial, static_ip_pod};

/// An address a pod names in a CNI annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The annotation's key.
    pub key: String,
    /// The address, canonical (`::ffff:10.0.0.5` is `10.0.0.5`, as Go's parser reads it).
    pub ip: IpAddr,
}

/// The addresses `pod` newly names in the configured CNI annotations: none for a static-IP
/// pod. On an update (`old` given) an annotation whose value is unchanged names nothing new:
/// a pod keeps what it was admitted with (a static-IP pod released from its set loses its
/// label, not its annotation).
pub fn claims(pod: &Pod, old: Option<&Pod>, cni: &[CniAnnotation]) -> Vec<Claim> {
    if static_ip_pod(pod) {
        return Vec::new();
    }
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    for c in cni {
        let Some(value) = pod.annotations().get(&c.key) else {
            continue;
        };
        if old.is_some_and(|old| old.annotations().get(&c.key) == Some(value)) {
            continue;
        }
        // Two configured annotations with one key (a misconfiguration) name it once.
        if !seen.insert(c.key.as_str()) {
            continue;
        }
        found.extend(addresses_in(value).into_iter().map(|ip| Claim {
            key: c.key.clone(),
            ip,
        }));
    }
    found
}

/// Refuses `pod` (on an update, `old` is the pod before) if it is not a static-IP pod and a
/// configured CNI annotation names an address that `held_by` says a record keeps (`Some` of
/// that record, for the log). The message repeats only what the caller sent.
pub fn kept_address_claims<R: Display>(
    pod: &Pod,
    old: Option<&Pod>,
    cni: &[CniAnnotation],
    held_by: impl Fn(&IpAddr) -> Option<R>,
) -> Option<Denial> {
    let kept: Vec<(Claim, R)> = claims(pod, old, cni)
        .into_iter()
        .filter_map(|claim| held_by(&claim.ip).map(|holder| (claim, holder)))
        .collect();
    if kept.is_empty() {
        return None;
    }
    // Grouped by annotation, in the order the annotations are configured.
    let mut named: Vec<(&str, Vec<String>)> = Vec::new();
    for (claim, _) in &kept {
        match named.iter_mut().find(|(key, _)| *key == claim.key) {
            Some((_, ips)) => ips.push(claim.ip.to_string()),
            None => named.push((&claim.key, vec![claim.ip.to_string()])),
        }
    }
    let names = named
        .iter()
        .map(|(key, ips)| format!("annotation {key} names {}", ips.join(" and ")))
        .collect::<Vec<_>>()
        .join(" and ");
    let message = if kept.len() == 1 {
        format!(
            "{names}, an address kept for a static-IP identity; only pods created by the ests controller may use it"
        )
    } else {
        format!(
            "{names}, addresses kept for static-IP identities; only pods created by the ests controller may use them"
        )
    };
    let detail = kept
        .iter()
        .map(|(claim, holder)| format!("{} is kept by StaticIP {holder}", claim.ip))
        .collect::<Vec<_>>()
        .join(", ");
    Some(Denial { message, detail })
}

/// Every address in an annotation value, read liberally: a JSON list of strings, a
/// comma-separated list, a single address, or any text around them (a CNI's own format).
/// Tokens that are not addresses are ignored. A value that is JSON is also read decoded, as
/// a CNI parsing it as JSON would (`"\u0031\u0030.0.0.5"` is `10.0.0.5`).
pub fn addresses_in(value: &str) -> BTreeSet<IpAddr> {
    let mut texts = vec![value.to_string()];
    if let Ok(json) = serde_json::from_str::<Value>(value) {
        strings_of(&json, &mut texts);
    }
    texts
        .iter()
        .flat_map(|text| {
            // Addresses are made of hex digits, dots and colons; anything else separates
            // them (quotes, brackets, commas, spaces, a /prefix or a %zone).
            text.split(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'))
        })
        .filter_map(|token| token.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect()
}

fn strings_of(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings_of(v, out)),
        Value::Object(fields) => {
            for (k, v) in fields {
                out.push(k.clone());
                strings_of(v, out);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests;
