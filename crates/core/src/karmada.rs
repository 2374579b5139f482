//! Karmada's Resource Interpreter for EnhancedStatefulSet, as pure functions.
//!
//! Each function gives the answer the Lua in `config/karmada/resource-interpreter-customization.yaml`
//! gives for the same operation (`ests-webhook`'s `tests/karmada_parity.rs` runs both on the
//! fixtures in `config/karmada/testdata`), so a Karmada installation may use either the
//! declarative customization or `ests webhook`'s `POST /interpret`, which serves these. Pure,
//! so that the kubectl plugin (a template's Secrets, for `kubectl ests move`) uses them
//! without linking a server.
//!
//! | operation | answer |
//! | --- | --- |
//! | InterpretReplica | `spec.replicas` (default 1) and the template's requirements, as `kube.accuratePodRequirements` computes them |
//! | ReviseReplica | the object with `spec.replicas` replaced |
//! | Retain | the desired object keeping the member's `spec.ordinals` and `status` |
//! | InterpretStatus | the counts, revisions and generations Karmada needs to aggregate |
//! | AggregateStatus | the template with summed counts; `observedGeneration` moves only when every member caught up |
//! | InterpretHealth | the member observed its generation and its partitioned rollout is complete |
//! | InterpretDependency | ConfigMaps, Secrets, PVCs and the ServiceAccount the template names |

use std::collections::BTreeSet;

use crate::quantity::parse_milli;
use base64::Engine;
use serde_json::{Map, Value, json};

/// Annotation Karmada stamps on member objects: the template generation they come from.
pub const RESOURCE_TEMPLATE_GENERATION: &str = "resourcetemplate.karmada.io/generation";
/// apiVersion of the ResourceInterpreterContext.
pub const CONTEXT_API_VERSION: &str = "config.karmada.io/v1alpha1";
/// The kind this interpreter answers for.
pub const KIND: &str = "EnhancedStatefulSet";

/// Counters of the status that are summed over members.
const COUNTERS: [&str; 7] = [
    "replicas",
    "readyReplicas",
    "availableReplicas",
    "currentReplicas",
    "updatedReplicas",
    "updatedReadyReplicas",
    "updatedAvailableReplicas",
];

/// Why a request cannot be answered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InterpretError {
    #[error("the request carries no object")]
    NoObject,
    #[error("Retain needs observedObject")]
    NoObservedObject,
    #[error("kind {0:?} is not {KIND}")]
    WrongKind(String),
    #[error("operation {0:?} is not supported")]
    Unsupported(String),
    #[error("invalid quantity in the template: {0}")]
    Quantity(String),
    #[error("building the patch: {0}")]
    Patch(String),
}

fn get<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

fn int(value: Option<&Value>) -> Option<i64> {
    value.and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
}

/// InterpretReplica: the replicas and what each replica needs.
pub fn get_replicas(obj: &Value) -> Result<(i64, Option<Value>), InterpretError> {
    let replicas = int(get(obj, &["spec", "replicas"])).unwrap_or(1);
    let template = get(obj, &["spec", "template"])
        .cloned()
        .unwrap_or(Value::Null);
    Ok((replicas, replica_requirements(&template)?))
}

/// Karmada's `helper.GenerateReplicaRequirements` (what `kube.accuratePodRequirements` returns):
/// the node claim and the pod's effective requests; `None` when there is neither.
pub fn replica_requirements(template: &Value) -> Result<Option<Value>, InterpretError> {
    let spec = template.get("spec").cloned().unwrap_or(Value::Null);
    let mut claim = Map::new();
    if let Some(selector) = spec.get("nodeSelector").filter(|v| v.is_object()) {
        claim.insert("nodeSelector".into(), selector.clone());
    }
    if let Some(tolerations) = spec
        .get("tolerations")
        .filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
    {
        claim.insert("tolerations".into(), tolerations.clone());
    }
    if let Some(required) = get(
        &spec,
        &[
            "affinity",
            "nodeAffinity",
            "requiredDuringSchedulingIgnoredDuringExecution",
        ],
    )
    .filter(|v| !v.is_null())
    {
        claim.insert("hardNodeAffinity".into(), required.clone());
    }
    let requests = pod_requests(&spec)?;
    if claim.is_empty() && requests.is_empty() {
        return Ok(None);
    }
    let mut out = Map::new();
    if !claim.is_empty() {
        out.insert("nodeClaim".into(), Value::Object(claim));
    }
    if !requests.is_empty() {
        out.insert("resourceRequest".into(), Value::Object(requests));
    }
    Ok(Some(Value::Object(out)))
}

/// Kind of a resource's amount as Karmada keeps it.
fn is_binary(name: &str) -> bool {
    name == "memory" || name == "ephemeral-storage" || name.starts_with("hugepages-")
}

/// A container's requests, with limits standing in for missing requests.
fn container_requests(container: &Value) -> Result<Vec<(String, i128)>, InterpretError> {
    let resources = container.get("resources");
    let mut merged: Map<String, Value> = resources
        .and_then(|r| r.get("requests"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(limits) = resources
        .and_then(|r| r.get("limits"))
        .and_then(Value::as_object)
    {
        for (k, v) in limits {
            merged.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    merged
        .into_iter()
        .map(|(k, v)| amount(&k, &v).map(|a| (k, a)))
        .collect()
}

/// The amount Karmada keeps for a quantity: milli-units for CPU, whole units (rounded up)
/// for everything else.
fn amount(name: &str, quantity: &Value) -> Result<i128, InterpretError> {
    let text = match quantity {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => return Err(InterpretError::Quantity(format!("{name}: {other}"))),
    };
    let milli = parse_milli(&text).map_err(|e| InterpretError::Quantity(format!("{name}: {e}")))?;
    Ok(if name == "cpu" {
        milli
    } else {
        // Quantity.Value() rounds up.
        (milli + 999).div_euclid(1000)
    })
}

/// Karmada's `Resource.AddPodTemplateRequest`: the sum over containers, at least the
/// largest init container, plus the overhead; only positive amounts.
fn pod_requests(spec: &Value) -> Result<Map<String, Value>, InterpretError> {
    let mut total: std::collections::BTreeMap<String, i128> = Default::default();
    let list = |key: &str| {
        spec.get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    for c in list("containers") {
        for (k, v) in container_requests(&c)? {
            *total.entry(k).or_default() += v;
        }
    }
    for c in list("initContainers") {
        for (k, v) in container_requests(&c)? {
            let e = total.entry(k).or_default();
            *e = (*e).max(v);
        }
    }
    if let Some(overhead) = spec.get("overhead").and_then(Value::as_object) {
        for (k, v) in overhead {
            *total.entry(k.clone()).or_default() += amount(k, v)?;
        }
    }
    Ok(total
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| {
            let text = if k == "cpu" {
                format_milli_decimal(v)
            } else if is_binary(&k) {
                format_binary(v)
            } else {
                format_decimal(v)
            };
            (k, Value::String(text))
        })
        .collect())
}

const DECIMAL_SUFFIXES: [&str; 7] = ["", "k", "M", "G", "T", "P", "E"];
const BINARY_SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

/// A whole number in canonical DecimalSI form (`1500`, `2k`).
fn format_decimal(value: i128) -> String {
    let (mut v, mut i) = (value, 0);
    while v != 0 && v % 1000 == 0 && i + 1 < DECIMAL_SUFFIXES.len() {
        v /= 1000;
        i += 1;
    }
    format!("{v}{}", DECIMAL_SUFFIXES[i])
}

/// Milli-units in canonical DecimalSI form (`750m`, `2`).
fn format_milli_decimal(milli: i128) -> String {
    if milli % 1000 == 0 {
        format_decimal(milli / 1000)
    } else {
        format!("{milli}m")
    }
}

/// A whole number in canonical BinarySI form (`1536Mi`; below 1024 or not a multiple of
/// 1024 it is written as a decimal).
fn format_binary(value: i128) -> String {
    if value.abs() < 1024 || value % 1024 != 0 {
        return format_decimal(value);
    }
    let (mut v, mut i) = (value, 0);
    while v != 0 && v % 1024 == 0 && i + 1 < BINARY_SUFFIXES.len() {
        v /= 1024;
        i += 1;
    }
    format!("{v}{}", BINARY_SUFFIXES[i])
}

/// ReviseReplica: the object with `spec.replicas` replaced.
pub fn revise_replica(obj: &Value, replicas: i64) -> Value {
    let mut out = obj.clone();
    if let Some(spec) = out.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("replicas".into(), json!(replicas));
    } else if let Some(o) = out.as_object_mut() {
        o.insert("spec".into(), json!({"replicas": replicas}));
    }
    out
}

/// Retain: members own `spec.ordinals` and `status`.
pub fn retain(desired: &Value, observed: &Value) -> Value {
    let mut out = desired.clone();
    if let Some(ordinals) = get(observed, &["spec", "ordinals"]).filter(|v| !v.is_null())
        && let Some(spec) = out.get_mut("spec").and_then(Value::as_object_mut)
    {
        spec.insert("ordinals".into(), ordinals.clone());
    }
    if let Some(status) = observed.get("status").filter(|v| !v.is_null())
        && let Some(o) = out.as_object_mut()
    {
        o.insert("status".into(), status.clone());
    }
    out
}

/// InterpretStatus: what AggregateStatus needs from one member.
pub fn reflect_status(observed: &Value) -> Value {
    let mut status = Map::new();
    let Some(s) = observed.get("status").filter(|v| v.is_object()) else {
        return Value::Object(status);
    };
    for key in COUNTERS
        .iter()
        .chain(&["currentRevision", "updateRevision", "observedGeneration"])
    {
        if let Some(v) = s.get(*key).filter(|v| !v.is_null()) {
            status.insert((*key).into(), v.clone());
        }
    }
    if let Some(generation) = get(observed, &["metadata", "generation"]).filter(|v| !v.is_null()) {
        status.insert("generation".into(), generation.clone());
    }
    if let Some(g) = get(
        observed,
        &["metadata", "annotations", RESOURCE_TEMPLATE_GENERATION],
    )
    .and_then(Value::as_str)
    .and_then(|s| s.trim().parse::<f64>().ok())
    {
        let number = if g.fract() == 0.0 {
            json!(g as i64)
        } else {
            json!(g)
        };
        status.insert("resourceTemplateGeneration".into(), number);
    }
    Value::Object(status)
}

/// AggregateStatus: the template's status from the members' reflected statuses. `items` is
/// `None` when the set is placed nowhere.
pub fn aggregate_status(desired: &Value, items: Option<&[Value]>) -> Value {
    let mut out = desired.clone();
    let Some(root) = out.as_object_mut() else {
        return out;
    };
    let metadata = root
        .entry("metadata")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .map(|m| {
            m.entry("generation").or_insert(json!(0));
            m.clone()
        })
        .unwrap_or_default();
    let generation = int(metadata.get("generation")).unwrap_or(0);
    let status = root.entry("status").or_insert_with(|| json!({}));
    if !status.is_object() {
        *status = json!({});
    }
    let Some(status) = status.as_object_mut() else {
        return out;
    };
    status.entry("observedGeneration").or_insert(json!(0));
    let Some(items) = items else {
        status.insert("observedGeneration".into(), json!(generation));
        for key in COUNTERS {
            status.insert(key.into(), json!(0));
        }
        status.insert("updateRevision".into(), json!(""));
        status.insert("currentRevision".into(), json!(""));
        return out;
    };
    let mut sums = [0i64; COUNTERS.len()];
    let (mut update_revision, mut current_revision) = (String::new(), String::new());
    let mut up_to_date = 0;
    for item in items {
        let s = item.get("status").filter(|v| v.is_object());
        if let Some(s) = s {
            for (sum, key) in sums.iter_mut().zip(COUNTERS) {
                *sum += int(s.get(key)).unwrap_or(0);
            }
            for (field, slot) in [
                ("updateRevision", &mut update_revision),
                ("currentRevision", &mut current_revision),
            ] {
                if let Some(r) = s
                    .get(field)
                    .and_then(Value::as_str)
                    .filter(|r| !r.is_empty())
                {
                    *slot = r.to_string();
                }
            }
        }
        let field = |key: &str| s.and_then(|s| int(s.get(key))).unwrap_or(0);
        if field("resourceTemplateGeneration") == generation
            && field("generation") == field("observedGeneration")
        {
            up_to_date += 1;
        }
    }
    if up_to_date == items.len() {
        status.insert("observedGeneration".into(), json!(generation));
    }
    for (sum, key) in sums.iter().zip(COUNTERS) {
        status.insert(key.into(), json!(sum));
    }
    status.insert("updateRevision".into(), json!(update_revision));
    status.insert("currentRevision".into(), json!(current_revision));
    out
}

/// InterpretHealth: the member observed its generation and its partitioned rollout is
/// complete (`RolloutComplete=True`; without that condition, at least `replicas - partition`
/// pods are updated and Available).
pub fn interpret_health(observed: &Value) -> bool {
    let Some(status) = observed.get("status").filter(|v| v.is_object()) else {
        return false;
    };
    let observed_generation = int(status.get("observedGeneration"));
    if observed_generation.is_none()
        || observed_generation != int(get(observed, &["metadata", "generation"]))
    {
        return false;
    }
    if let Some(c) = status
        .get("conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some("RolloutComplete"))
        })
    {
        return c.get("status").and_then(Value::as_str) == Some("True");
    }
    let replicas = int(get(observed, &["spec", "replicas"])).unwrap_or(1);
    let strategy = get(observed, &["spec", "updateStrategy"]);
    let partition =
        if strategy.and_then(|s| s.get("type")).and_then(Value::as_str) == Some("OnDelete") {
            replicas
        } else {
            strategy
                .and_then(|s| int(get(s, &["rollingUpdate", "partition"])))
                .unwrap_or(0)
        };
    int(status.get("updatedAvailableReplicas")).unwrap_or(0) >= (replicas - partition).max(0)
}

/// InterpretDependency: what `kube.getPodDependencies(template, namespace)` returns —
/// ConfigMaps, Secrets, the ServiceAccount (unless `default`) and PVCs the template names,
/// each kind in name order.
pub fn get_dependencies(desired: &Value) -> Vec<Value> {
    let namespace = get(desired, &["metadata", "namespace"])
        .and_then(Value::as_str)
        .unwrap_or_default();
    let spec = get(desired, &["spec", "template", "spec"])
        .cloned()
        .unwrap_or(Value::Null);
    let mut config_maps = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    let mut service_accounts = BTreeSet::new();
    let mut claims = BTreeSet::new();
    let name_at = |v: &Value, path: &[&str]| -> Option<String> {
        get(v, path)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    for r in spec
        .get("imagePullSecrets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        secrets.extend(name_at(r, &["name"]));
    }
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        for c in spec
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for e in c
                .get("envFrom")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                config_maps.extend(name_at(e, &["configMapRef", "name"]));
                secrets.extend(name_at(e, &["secretRef", "name"]));
            }
            for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
                config_maps.extend(name_at(e, &["valueFrom", "configMapKeyRef", "name"]));
                secrets.extend(name_at(e, &["valueFrom", "secretKeyRef", "name"]));
            }
        }
    }
    for v in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        config_maps.extend(name_at(v, &["configMap", "name"]));
        secrets.extend(name_at(v, &["secret", "secretName"]));
        secrets.extend(name_at(v, &["azureFile", "secretName"]));
        for kind in [
            "cephfs",
            "cinder",
            "flexVolume",
            "rbd",
            "scaleIO",
            "iscsi",
            "storageos",
        ] {
            secrets.extend(name_at(v, &[kind, "secretRef", "name"]));
        }
        secrets.extend(name_at(v, &["csi", "nodePublishSecretRef", "name"]));
        for s in get(v, &["projected", "sources"])
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            config_maps.extend(name_at(s, &["configMap", "name"]));
            secrets.extend(name_at(s, &["secret", "name"]));
        }
        claims.extend(name_at(v, &["persistentVolumeClaim", "claimName"]));
    }
    if let Some(sa) = name_at(&spec, &["serviceAccountName"]).filter(|s| s != "default") {
        service_accounts.insert(sa);
    }
    let mut out = Vec::new();
    for (kind, names) in [
        ("ConfigMap", config_maps),
        ("Secret", secrets),
        ("ServiceAccount", service_accounts),
        ("PersistentVolumeClaim", claims),
    ] {
        for name in names {
            let mut r = json!({"apiVersion": "v1", "kind": kind, "name": name});
            if !namespace.is_empty() {
                r["namespace"] = json!(namespace);
            }
            out.push(r);
        }
    }
    out
}

/// A JSON patch (RFC 6902) from `before` to `after`, base64-encoded as Karmada's `[]byte`.
fn patch_field(before: &Value, after: &Value) -> Result<Option<String>, InterpretError> {
    let patch = json_patch::diff(before, after);
    if patch.0.is_empty() {
        return Ok(None);
    }
    let bytes = serde_json::to_vec(&patch).map_err(|e| InterpretError::Patch(e.to_string()))?;
    Ok(Some(
        base64::engine::general_purpose::STANDARD.encode(bytes),
    ))
}

/// The successful part of a response to `request` (a `ResourceInterpreterRequest`).
pub fn interpret(request: &Value) -> Result<Map<String, Value>, InterpretError> {
    let kind = get(request, &["kind", "kind"])
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind != KIND {
        return Err(InterpretError::WrongKind(kind.to_string()));
    }
    let operation = request
        .get("operation")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let object = request
        .get("object")
        .filter(|v| v.is_object())
        .ok_or(InterpretError::NoObject);
    let mut response = Map::new();
    let mut patched = |before: &Value, after: Value| -> Result<(), InterpretError> {
        if let Some(patch) = patch_field(before, &after)? {
            response.insert("patch".into(), json!(patch));
            response.insert("patchType".into(), json!("JSONPatch"));
        }
        Ok(())
    };
    match operation {
        "InterpretReplica" => {
            let (replicas, requirements) = get_replicas(object?)?;
            response.insert("replicas".into(), json!(replicas));
            if let Some(r) = requirements {
                response.insert("replicaRequirements".into(), r);
            }
        }
        "ReviseReplica" => {
            let object = object?;
            let replicas = int(request.get("replicas")).unwrap_or(0);
            patched(object, revise_replica(object, replicas))?;
        }
        "Retain" => {
            let object = object?;
            let observed = request
                .get("observedObject")
                .filter(|v| v.is_object())
                .ok_or(InterpretError::NoObservedObject)?;
            patched(object, retain(object, observed))?;
        }
        "AggregateStatus" => {
            let object = object?;
            let items: Option<Vec<Value>> = request
                .get("aggregatedStatus")
                .and_then(Value::as_array)
                .cloned();
            patched(object, aggregate_status(object, items.as_deref()))?;
        }
        "InterpretStatus" => {
            response.insert("rawStatus".into(), reflect_status(object?));
        }
        "InterpretHealth" => {
            response.insert("healthy".into(), json!(interpret_health(object?)));
        }
        "InterpretDependency" => {
            response.insert("dependencies".into(), json!(get_dependencies(object?)));
        }
        other => return Err(InterpretError::Unsupported(other.to_string())),
    }
    Ok(response)
}

/// Answers a `ResourceInterpreterContext`: always a context with a response echoing the
/// request's uid, `successful:false` with a 400 status when it cannot be answered.
pub fn answer(context: &Value) -> Result<Value, String> {
    let request = context
        .get("request")
        .filter(|r| r.is_object())
        .ok_or_else(|| "not a ResourceInterpreterContext: no request".to_string())?;
    let uid = request.get("uid").cloned().unwrap_or(json!(""));
    let mut response = match interpret(request) {
        Ok(mut r) => {
            r.insert("successful".into(), json!(true));
            r.insert("status".into(), json!({"code": 200}));
            r
        }
        Err(e) => {
            let mut r = Map::new();
            r.insert("successful".into(), json!(false));
            r.insert(
                "status".into(),
                json!({"code": 400, "message": e.to_string()}),
            );
            r
        }
    };
    response.insert("uid".into(), uid);
    Ok(json!({
        "apiVersion": CONTEXT_API_VERSION,
        "kind": "ResourceInterpreterContext",
        "response": response,
    }))
}

#[cfg(test)]
mod tests;
