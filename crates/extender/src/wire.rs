//! The kube-scheduler extender API (`k8s.io/kube-scheduler/extender/v1`), exactly as the
//! scheduler writes and reads it.
//!
//! The Go structs carry no JSON tags, so keys are the Go field names in PascalCase; Go
//! decodes case-insensitively, so the lowercase keys of pre-1.17 copies are accepted too.
//! `rename_all = "PascalCase"` gets the acronyms wrong (`PodUID`, `UID`,
//! `NumPDBViolations`): those are renamed by hand. The objects inside are ordinary
//! Kubernetes JSON.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde::{Deserialize, Serialize};

/// Highest score a prioritize answer may give; the scheduler does not clamp.
pub const MAX_EXTENDER_PRIORITY: i64 = 10;

/// A list of nodes, as `v1.NodeList` (only `items` matters here).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeList {
    #[serde(default)]
    pub items: Vec<Node>,
}

/// The parts of a pod the predicates read: its identity, labels, annotations and requests.
/// The scheduler sends the whole object — managed fields, status, every container field —
/// and building all of it would cost more than the predicates do; the rest is skipped.
pub fn lean_pod<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Pod, D::Error> {
    use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[derive(Deserialize, Default)]
    #[serde(default, rename_all = "camelCase")]
    struct Meta {
        name: Option<String>,
        namespace: Option<String>,
        uid: Option<String>,
        labels: Option<BTreeMap<String, String>>,
        annotations: Option<BTreeMap<String, String>>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default, rename_all = "camelCase")]
    struct LeanContainer {
        name: String,
        resources: Option<ResourceRequirements>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default, rename_all = "camelCase")]
    struct Spec {
        containers: Vec<LeanContainer>,
        init_containers: Option<Vec<LeanContainer>>,
        overhead: Option<BTreeMap<String, Quantity>>,
        node_name: Option<String>,
    }
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Lean {
        metadata: Meta,
        spec: Option<Spec>,
    }
    let container = |c: LeanContainer| Container {
        name: c.name,
        resources: c.resources,
        ..Container::default()
    };
    let lean = Lean::deserialize(d)?;
    Ok(Pod {
        metadata: ObjectMeta {
            name: lean.metadata.name,
            namespace: lean.metadata.namespace,
            uid: lean.metadata.uid,
            labels: lean.metadata.labels,
            annotations: lean.metadata.annotations,
            ..ObjectMeta::default()
        },
        spec: lean.spec.map(|s| PodSpec {
            containers: s.containers.into_iter().map(container).collect(),
            init_containers: s
                .init_containers
                .map(|cs| cs.into_iter().map(container).collect()),
            overhead: s.overhead,
            node_name: s.node_name,
            ..PodSpec::default()
        }),
        status: None,
    })
}

/// A node name in a request or an answer, borrowed from the JSON it came in (names of
/// nodes carry no escapes), so thousands of candidates cost no allocation each.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(transparent)]
pub struct Name<'a>(#[serde(borrow)] pub Cow<'a, str>);

impl<'a> From<&'a str> for Name<'a> {
    fn from(name: &'a str) -> Self {
        Self(Cow::Borrowed(name))
    }
}

impl Name<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The body of filter and prioritize calls.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderArgs<'a> {
    /// The pod, with only what the predicates read (see [`lean_pod`]).
    #[serde(alias = "pod", deserialize_with = "lean_pod")]
    pub pod: Pod,
    /// Full nodes, when the extender is not `nodeCacheCapable`.
    #[serde(default, alias = "nodes")]
    pub nodes: Option<NodeList>,
    /// Node names, when it is.
    #[serde(default, borrow, alias = "nodenames", alias = "nodeNames")]
    pub node_names: Option<Vec<Name<'a>>>,
}

impl ExtenderArgs<'_> {
    /// The candidate nodes' names, whichever form the request used, borrowed.
    pub fn candidate_names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match (&self.node_names, &self.nodes) {
            (Some(names), _) => Box::new(names.iter().map(Name::as_str)),
            (None, Some(list)) => {
                Box::new(list.items.iter().filter_map(|n| n.metadata.name.as_deref()))
            }
            (None, None) => Box::new(std::iter::empty()),
        }
    }
}

/// The answer to a filter call. `NodeNames` (or `Nodes`) must always be present: a missing
/// list makes the scheduler treat every node as filtered out.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderFilterResult<'a> {
    #[serde(alias = "nodes")]
    pub nodes: Option<NodeList>,
    #[serde(borrow, alias = "nodenames", alias = "nodeNames")]
    pub node_names: Option<Vec<Name<'a>>>,
    #[serde(default, borrow, alias = "failedNodes")]
    pub failed_nodes: BTreeMap<Name<'a>, String>,
    /// Nodes preemption cannot help; wins over `FailedNodes`.
    #[serde(default, borrow)]
    pub failed_and_unresolvable_nodes: BTreeMap<Name<'a>, String>,
    #[serde(default, alias = "error")]
    pub error: String,
}

/// One node's score in a prioritize answer (the answer is a bare JSON array of these).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct HostPriority<'a> {
    #[serde(borrow, alias = "host")]
    pub host: Name<'a>,
    #[serde(alias = "score")]
    pub score: i64,
}

/// The body of a bind call.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderBindingArgs {
    #[serde(alias = "podName")]
    pub pod_name: String,
    #[serde(alias = "podNamespace")]
    pub pod_namespace: String,
    #[serde(rename = "PodUID", alias = "podUID")]
    pub pod_uid: String,
    #[serde(alias = "node")]
    pub node: String,
}

/// The answer to a bind call: an empty `Error` means bound.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ExtenderBindingResult {
    #[serde(default, alias = "error")]
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_parse_in_both_node_forms_and_legacy_case() {
        let body = r#"{"Pod": {"metadata": {"name": "web-0"}}, "Nodes": null, "NodeNames": ["n1", "n\u0032"]}"#;
        let cached: ExtenderArgs = serde_json::from_str(body).expect("nodeCacheCapable form");
        assert_eq!(cached.candidate_names().collect::<Vec<_>>(), ["n1", "n2"]);
        assert!(
            matches!(
                cached.node_names.as_deref(),
                Some([Name(Cow::Borrowed("n1")), Name(Cow::Owned(_))])
            ),
            "names are borrowed unless escaped: {:?}",
            cached.node_names
        );
        let body = json!({
            "pod": {"metadata": {"name": "web-0"}}, "nodes": {"items": [{"metadata": {"name": "n3"}}]}
        })
        .to_string();
        let full: ExtenderArgs =
            serde_json::from_str(&body).expect("full nodes, legacy lowercase keys");
        assert_eq!(full.candidate_names().collect::<Vec<_>>(), ["n3"]);
        let bind: ExtenderBindingArgs = serde_json::from_value(json!({
            "PodName": "web-0", "PodNamespace": "ns", "PodUID": "u-1", "Node": "n1"
        }))
        .expect("bind args");
        assert_eq!(bind.pod_uid, "u-1");
    }

    #[test]
    fn answers_use_the_exact_keys() {
        let result = ExtenderFilterResult {
            node_names: Some(vec![]),
            ..ExtenderFilterResult::default()
        };
        let v = serde_json::to_value(&result).expect("json");
        assert_eq!(
            v,
            json!({"Nodes": null, "NodeNames": [], "FailedNodes": {}, "FailedAndUnresolvableNodes": {}, "Error": ""})
        );
        let result = ExtenderFilterResult {
            node_names: Some(vec!["n1".into()]),
            failed_nodes: [("n2".into(), "full".to_string())].into(),
            ..ExtenderFilterResult::default()
        };
        assert_eq!(
            serde_json::to_value(&result).expect("json"),
            json!({"Nodes": null, "NodeNames": ["n1"], "FailedNodes": {"n2": "full"}, "FailedAndUnresolvableNodes": {}, "Error": ""})
        );
        let scores = serde_json::to_value(vec![HostPriority {
            host: "n1".into(),
            score: 7,
        }])
        .expect("json");
        assert_eq!(scores, json!([{"Host": "n1", "Score": 7}]));
        assert_eq!(
            serde_json::to_value(ExtenderBindingArgs {
                pod_uid: "u".into(),
                ..Default::default()
            })
            .expect("json")["PodUID"],
            "u"
        );
    }

    #[test]
    fn the_pod_keeps_what_the_predicates_read() {
        let body = json!({
            "Pod": {
                "metadata": {"name": "web-0", "namespace": "ns", "uid": "u-1",
                             "labels": {"staticip.jke.jdcloud.com/enabled": "true"},
                             "annotations": {"staticip.jke.jdcloud.com/node": "n1"},
                             "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
                             "resourceVersion": "7"},
                "spec": {"containers": [{"name": "app", "image": "app:v1", "env": [{"name": "A", "value": "1"}],
                                         "resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "1"}}}],
                         "initContainers": [{"name": "init", "resources": {"requests": {"cpu": "500m"}}}],
                         "overhead": {"cpu": "10m"}, "nodeName": "n1", "volumes": [{"name": "v", "emptyDir": {}}]},
                "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False"}]}
            },
            "NodeNames": ["n1"]
        })
        .to_string();
        let args: ExtenderArgs = serde_json::from_str(&body).expect("args");
        let pod = &args.pod;
        assert_eq!(pod.metadata.name.as_deref(), Some("web-0"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(pod.metadata.uid.as_deref(), Some("u-1"));
        assert_eq!(
            pod.metadata.labels.as_ref().map(|l| l.len()),
            Some(1),
            "labels kept"
        );
        assert!(
            pod.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key("staticip.jke.jdcloud.com/node"))
        );
        assert!(pod.metadata.managed_fields.is_none());
        assert!(pod.status.is_none());
        let spec = pod.spec.as_ref().expect("spec");
        let requests = ests_core::extender::pod_requests(spec).expect("requests");
        assert_eq!(requests.get("cpu"), Some(&510));
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
    }
}
