//! The Pod webhook's decision: a re-created static-IP pod gets its record's addresses and
//! node — as annotations for the CNI and as a node pin the scheduler cannot ignore.
//!
//! Only intent is added; nothing is allocated here. A pod is pinned only if ests's controller
//! created it for the set that owns its record, and only from a record at least as new as
//! the one the controller stamped on it; anything else that claims to be a static-IP pod is
//! refused, so nobody can take a kept address by labelling a pod.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ests_api::{StaticIP, StaticIPPhase, keys};
use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
};
use kube::ResourceExt;

use crate::static_ip::{going, record_ips};

/// An annotation a CNI reads the pinned addresses from, and how its value is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniAnnotation {
    pub key: String,
    /// The value, with `{ips-json}` replaced by the addresses as a JSON list of strings
    /// (`["10.0.0.5","fd00::5"]`), `{ips}` by them comma-separated, `{ipv4}` and `{ipv6}` by
    /// the address of that family (empty if none).
    pub format: String,
}

impl CniAnnotation {
    /// Calico's: `cni.projectcalico.org/ipAddrs: ["<ip>"]`.
    pub fn calico() -> Self {
        Self {
            key: "cni.projectcalico.org/ipAddrs".into(),
            format: "{ips-json}".into(),
        }
    }

    /// Parses `key=format`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (key, format) = spec.split_once('=').ok_or_else(|| {
            format!(
                "{spec:?}: expected key=format, such as cni.projectcalico.org/ipAddrs={{ips-json}}"
            )
        })?;
        if key.is_empty() || format.is_empty() {
            return Err(format!("{spec:?}: key and format must not be empty"));
        }
        Ok(Self {
            key: key.into(),
            format: format.into(),
        })
    }

    pub(crate) fn render(&self, ips: &[IpAddr]) -> String {
        let strings: Vec<String> = ips.iter().map(ToString::to_string).collect();
        let family = |v4: bool| {
            ips.iter()
                .find(|ip| ip.is_ipv4() == v4)
                .map(ToString::to_string)
                .unwrap_or_default()
        };
        self.format
            .replace(
                "{ips-json}",
                &serde_json::to_string(&strings).unwrap_or_default(),
            )
            .replace("{ips}", &strings.join(","))
            .replace("{ipv4}", &family(true))
            .replace("{ipv6}", &family(false))
    }
}

/// One `--cni-annotation` of the webhook and the extender: an annotation, or `none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CniAnnotationFlag {
    /// `none`: no CNI annotation besides ests's own.
    None,
    /// `key=format`.
    Annotation(CniAnnotation),
}

impl CniAnnotationFlag {
    /// The word that asks for no CNI annotation.
    pub const NONE: &'static str = "none";

    /// Parses `none` or `key=format` (an annotation key has no `=`-less form, so the two
    /// never meet).
    pub fn parse(spec: &str) -> Result<Self, String> {
        if spec == Self::NONE {
            return Ok(Self::None);
        }
        CniAnnotation::parse(spec)
            .map(Self::Annotation)
            .map_err(|e| format!("{e}, or {} for no CNI annotation", Self::NONE))
    }
}

/// The CNI annotations that `flags` ask for, written beside ests's own
/// (`staticip.jke.jdcloud.com/ip`, `.../node`):
///
/// - none given: Calico's, `cni.projectcalico.org/ipAddrs` (its IPAM hands a pod the
///   addresses it names);
/// - `none`: no other. ests-cni is the IPAM then, and it reads ests's own annotation and the
///   StaticIP record; a CNI annotation would only be in the way — Calico with ests-cni as
///   its IPAM refuses every pod carrying `ipAddrs` ("not compatible with configured IPAM");
/// - annotations: those (`none` cannot be among them).
pub fn cni_annotations(flags: &[CniAnnotationFlag]) -> Result<Vec<CniAnnotation>, String> {
    if flags.is_empty() {
        return Ok(vec![CniAnnotation::calico()]);
    }
    let mut annotations = Vec::new();
    for flag in flags {
        match flag {
            CniAnnotationFlag::None if flags.len() == 1 => {}
            CniAnnotationFlag::None => {
                return Err(format!(
                    "--cni-annotation {} means no CNI annotation at all: it cannot be given with others",
                    CniAnnotationFlag::NONE
                ));
            }
            CniAnnotationFlag::Annotation(a) => annotations.push(a.clone()),
        }
    }
    Ok(annotations)
}

/// What the webhook is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinSettings {
    /// Usernames of ests's controller (its service account): the only creators of
    /// static-IP pods.
    pub controller_users: Vec<String>,
    pub cni: Vec<CniAnnotation>,
}

/// The webhook's answer for a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum PinVerdict {
    /// Admit with these changes (empty when the pod already carries them: reinvocation).
    Pin(json_patch::Patch),
    /// Admit as it is: not a static-IP pod, or a new identity whose record has no address yet.
    Unchanged,
    /// Refuse, saying why.
    Deny(Denial),
}

/// A refusal: what the caller is told, and what only the webhook's log says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// Only what the caller's own request carried: never a record's UID, resourceVersion,
    /// workload, addresses or node (whoever can create pods must not learn them this way).
    pub message: String,
    /// What the webhook knows besides, for its log.
    pub detail: String,
}

fn deny(message: String) -> PinVerdict {
    PinVerdict::Deny(Denial {
        message,
        detail: String::new(),
    })
}

fn deny_with(message: String, detail: String) -> PinVerdict {
    PinVerdict::Deny(Denial { message, detail })
}

/// Whether `pod` says it is a static-IP pod (label `staticip.jke.jdcloud.com/enabled=true`),
/// which only the ests controller may create ([`pin`] refuses anyone else).
pub fn static_ip_pod(pod: &Pod) -> bool {
    pod.labels()
        .get(keys::STATIC_IP_POD_LABEL)
        .map(String::as_str)
        == Some("true")
}

/// The decision for `pod`, created by `user`, whose stamped record the webhook's cache holds
/// as `record` (looked up by the pod's name and namespace).
pub fn pin(pod: &Pod, record: Option<&StaticIP>, user: &str, settings: &PinSettings) -> PinVerdict {
    let name = pod.name_any();
    if !static_ip_pod(pod) {
        return PinVerdict::Unchanged;
    }
    if !settings.controller_users.iter().any(|u| u == user) {
        return deny(format!(
            "pod {name} carries the label {}=true, which only the ests controller ({}) may set; {user} may not create static-IP pods",
            keys::STATIC_IP_POD_LABEL,
            settings.controller_users.join(", ")
        ));
    }
    let Some(stamped_uid) = pod.annotations().get(keys::STATIC_IP_RECORD_UID) else {
        return deny(format!(
            "static-IP pod {name} lacks the annotation {}",
            keys::STATIC_IP_RECORD_UID
        ));
    };
    let stamped_version = pod
        .annotations()
        .get(keys::STATIC_IP_RECORD_VERSION)
        .map(String::as_str)
        .unwrap_or_default();
    let Some(record) = record else {
        return deny(format!(
            "StaticIP {name} ({stamped_uid}) is not in the webhook's cache yet; the controller will retry"
        ));
    };
    if record.uid().as_deref() != Some(stamped_uid.as_str()) {
        return deny_with(
            format!(
                "the webhook's cache holds a StaticIP {name} that is not the stamped {stamped_uid}; the controller will retry"
            ),
            format!("cached UID {}", record.uid().unwrap_or_default()),
        );
    }
    if going(record) {
        return deny(format!(
            "StaticIP {name} is being deleted: its address is being freed; the controller creates the pod once a new record exists"
        ));
    }
    if older(
        record.resource_version().as_deref().unwrap_or_default(),
        stamped_version,
    ) {
        return deny_with(
            format!(
                "the webhook's cache holds StaticIP {name} older than the stamped {stamped_version}; the controller will retry"
            ),
            format!(
                "cached resourceVersion {}",
                record.resource_version().unwrap_or_default()
            ),
        );
    }
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true));
    if owner.map(|o| o.uid.as_str()) != Some(record.spec.workload.uid.as_str()) {
        return deny_with(
            format!("pod {name} is not owned by the workload of StaticIP {name}"),
            format!(
                "the record's workload is {} {} (UID {})",
                record.spec.workload.kind, record.spec.workload.name, record.spec.workload.uid
            ),
        );
    }
    // A record moving with its node (node migration) pins to its new node already.
    let bound = record
        .status
        .as_ref()
        .is_some_and(|s| matches!(s.phase, StaticIPPhase::Bound | StaticIPPhase::Migrating));
    let ips = record_ips(record);
    if !bound || ips.is_empty() {
        // A new identity: its address is chosen later (CNI or extender).
        return PinVerdict::Unchanged;
    }
    let mut pinned = pod.clone();
    let node = record.spec.node.as_deref();
    pinned
        .annotations_mut()
        .extend(address_annotations(&ips, node, &settings.cni));
    // A record without a node (its node was deleted; record mode) keeps its addresses
    // wherever the pod is scheduled.
    if let Some(node) = node {
        pin_to_node(&mut pinned, node);
    }
    match (serde_json::to_value(pod), serde_json::to_value(&pinned)) {
        (Ok(before), Ok(after)) => PinVerdict::Pin(json_patch::diff(&before, &after)),
        (Err(e), _) | (_, Err(e)) => deny(format!("pod {name}: {e}")),
    }
}

/// The annotations that give a pod its addresses: ests's own (`staticip.jke.jdcloud.com/ip`,
/// comma-separated, and `.../node` when the record has one) and each configured CNI's. The webhook adds them at
/// creation; the extender's bind adds them to a range-mode pod before binding it.
pub fn address_annotations(
    ips: &[IpAddr],
    node: Option<&str>,
    cni: &[CniAnnotation],
) -> BTreeMap<String, String> {
    let joined: Vec<String> = ips.iter().map(ToString::to_string).collect();
    let mut annotations = BTreeMap::from([(keys::STATIC_IP_POD_IP.to_string(), joined.join(","))]);
    if let Some(node) = node {
        annotations.insert(keys::STATIC_IP_POD_NODE.to_string(), node.to_string());
    }
    for c in cni {
        annotations.insert(c.key.clone(), c.render(ips));
    }
    annotations
}

/// The node a pod was pinned to by the webhook (its `staticip.jke.jdcloud.com/node`
/// annotation), if any.
pub fn pinned_node(pod: &Pod) -> Option<&str> {
    pod.annotations()
        .get(keys::STATIC_IP_POD_NODE)
        .map(String::as_str)
}

/// Whether resourceVersion `cached` is older than `stamped`. They are opaque strings to
/// clients; etcd-backed ones are increasing integers, which is the only ordering used here.
/// Anything else that differs counts as older, so the pod is retried rather than pinned
/// from an unknown record.
fn older(cached: &str, stamped: &str) -> bool {
    match (cached.parse::<u64>(), stamped.parse::<u64>()) {
        (Ok(c), Ok(s)) => c < s,
        _ => cached != stamped,
    }
}

/// ANDs `metadata.name In [node]` into every required node-selector term (required terms
/// are ORed, so appending a term of its own would un-pin the pod); creates the term if
/// there is none. Terms that already pin to `node` are left alone.
fn pin_to_node(pod: &mut Pod, node: &str) {
    let requirement = NodeSelectorRequirement {
        key: "metadata.name".into(),
        operator: "In".into(),
        values: Some(vec![node.into()]),
    };
    let spec = pod.spec.get_or_insert_with(Default::default);
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    let required = node_affinity
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(|| NodeSelector {
            node_selector_terms: Vec::new(),
        });
    if required.node_selector_terms.is_empty() {
        required
            .node_selector_terms
            .push(NodeSelectorTerm::default());
    }
    for term in &mut required.node_selector_terms {
        let fields = term.match_fields.get_or_insert_with(Vec::new);
        if !fields.contains(&requirement) {
            fields.push(requirement.clone());
        }
    }
}

#[cfg(test)]
mod tests;
