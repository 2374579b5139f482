//! Every manifest in config/samples deserializes into the API types and round-trips.

use std::path::{Path, PathBuf};

use ests_api::{EnhancedStatefulSet, StaticIPPool, UpdateStrategyType};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/samples")
}

fn read(name: &str) -> String {
    let path = samples_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(yaml: &str) -> T {
    let object: T = serde_saphyr::from_str(yaml).expect("sample deserializes");
    let json = serde_json::to_value(&object).expect("serializes");
    let back: T = serde_json::from_value(json).expect("deserializes again");
    assert_eq!(back, object);
    object
}

#[test]
fn every_sample_round_trips() {
    let mut seen = 0;
    for entry in std::fs::read_dir(samples_dir()).expect("samples directory") {
        let path = entry.expect("entry").path();
        let yaml = std::fs::read_to_string(&path).expect("readable");
        let kind: serde_json::Value = serde_saphyr::from_str(&yaml).expect("yaml");
        match kind["kind"].as_str() {
            Some("EnhancedStatefulSet") => {
                round_trip::<EnhancedStatefulSet>(&yaml);
            }
            Some("StaticIPPool") => {
                round_trip::<StaticIPPool>(&yaml);
            }
            other => panic!("{}: unexpected kind {other:?}", path.display()),
        }
        seen += 1;
    }
    assert!(seen >= 5, "expected at least five samples, found {seen}");
}

#[test]
fn source_document_manifest_means_what_it_says() {
    let set: EnhancedStatefulSet = round_trip(&read("staticip-example.yaml"));
    assert_eq!(set.metadata.name.as_deref(), Some("staticip-example"));
    let annotations = set.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get(ests_api::keys::STATIC_IP_ENABLE)
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(set.spec.replicas, 6);
    let rolling = set.spec.rolling_update().expect("RollingUpdate");
    assert_eq!(rolling.partition, 3);
    assert_eq!(rolling.max_unavailable, IntOrString::Int(2));
    assert!(!rolling.paused);
    let containers = &set
        .spec
        .template
        .spec
        .as_ref()
        .expect("pod spec")
        .containers;
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0].image.as_deref(), Some("nginx:v1"));
    assert_eq!(
        containers[0].name, "",
        "the source manifest's container has no name"
    );
}

#[test]
fn absent_fields_take_upstream_defaults() {
    let set: EnhancedStatefulSet = round_trip(&read("minimal.yaml"));
    assert_eq!(set.spec.replicas, 1);
    assert_eq!(set.spec.revision_history_limit, 10);
    assert_eq!(
        set.spec.update_strategy_type(),
        UpdateStrategyType::RollingUpdate
    );
    let rolling = set
        .spec
        .rolling_update()
        .expect("absent strategy means RollingUpdate");
    assert_eq!(rolling.max_unavailable, IntOrString::Int(1));
    assert_eq!(rolling.partition, 0);

    let on_delete: EnhancedStatefulSet = round_trip(&read("on-delete.yaml"));
    assert_eq!(
        on_delete.spec.update_strategy_type(),
        UpdateStrategyType::OnDelete
    );
    assert_eq!(on_delete.spec.rolling_update(), None);
    let serialized = serde_json::to_value(&on_delete).expect("serializes");
    assert!(
        serialized["spec"]["updateStrategy"]
            .get("rollingUpdate")
            .is_none(),
        "an OnDelete set must never be given a rollingUpdate"
    );
}

#[test]
fn storage_sample_reserves_and_starts_late() {
    let set: EnhancedStatefulSet = round_trip(&read("storage-ordinals.yaml"));
    assert_eq!(set.spec.ordinals_start(), 10);
    assert_eq!(set.spec.reserve_ordinals, Some(vec![IntOrString::Int(12)]));
    assert_eq!(
        set.spec.volume_claim_templates.as_ref().map(Vec::len),
        Some(1)
    );
}
