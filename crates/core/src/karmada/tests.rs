use super::*;

fn set(spec: Value, status: Value) -> Value {
    json!({
        "apiVersion": "jke.jdcloud.com/v1alpha1",
        "kind": "EnhancedStatefulSet",
        "metadata": {"name": "web", "namespace": "shop", "generation": 2},
        "spec": spec,
        "status": status,
    })
}

#[test]
fn quantities_are_written_in_canonical_form() {
    let cases = [
        (format_milli_decimal(750), "750m"),
        (format_milli_decimal(2000), "2"),
        (format_milli_decimal(3_000_000), "3k"),
        (format_binary(1_610_612_736), "1536Mi"),
        (format_binary(1_073_741_824), "1Gi"),
        (format_binary(1500), "1500"),
        (format_binary(512), "512"),
        (format_decimal(2000), "2k"),
    ];
    for (got, want) in cases {
        assert_eq!(got, want);
    }
}

#[test]
fn requests_sum_containers_take_the_larger_init_container_and_fall_back_to_limits() {
    let template = json!({"spec": {
        "initContainers": [{"resources": {"requests": {"cpu": "2", "memory": "64Mi"}}}],
        "containers": [
            {"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}},
            {"resources": {"limits": {"cpu": "250m", "memory": "512Mi"}}},
        ],
        "overhead": {"cpu": "100m"},
    }});
    let r = replica_requirements(&template)
        .expect("valid")
        .expect("some");
    assert_eq!(
        r,
        json!({"resourceRequest": {"cpu": "2100m", "memory": "1536Mi"}})
    );
}

#[test]
fn a_template_without_requests_or_constraints_has_no_requirements() {
    let template = json!({"spec": {"containers": [{"name": "a", "image": "a"}]}});
    assert_eq!(replica_requirements(&template), Ok(None));
    let (replicas, _) = get_replicas(&json!({"spec": {"template": template}})).expect("ok");
    assert_eq!(replicas, 1, "replicas default to 1");
}

#[test]
fn node_claim_carries_selector_tolerations_and_required_affinity_only() {
    let template = json!({"spec": {
        "nodeSelector": {"zone": "a"},
        "tolerations": [{"key": "k", "operator": "Exists"}],
        "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []},
            "preferredDuringSchedulingIgnoredDuringExecution": [],
        }},
        "containers": [],
    }});
    let r = replica_requirements(&template)
        .expect("valid")
        .expect("some");
    assert_eq!(
        r["nodeClaim"],
        json!({"nodeSelector": {"zone": "a"}, "tolerations": [{"key": "k", "operator": "Exists"}],
               "hardNodeAffinity": {"nodeSelectorTerms": []}})
    );
}

#[test]
fn retain_keeps_the_members_ordinals_and_status_but_not_partition_or_paused() {
    let desired = set(
        json!({"replicas": 3, "ordinals": {"start": 0},
               "updateStrategy": {"rollingUpdate": {"partition": 1, "paused": false}}}),
        Value::Null,
    );
    let observed = set(
        json!({"replicas": 3, "ordinals": {"start": 5},
               "updateStrategy": {"rollingUpdate": {"partition": 0, "paused": true}}}),
        json!({"replicas": 3}),
    );
    let r = retain(&desired, &observed);
    assert_eq!(r["spec"]["ordinals"], json!({"start": 5}));
    assert_eq!(r["status"], json!({"replicas": 3}));
    assert_eq!(
        r["spec"]["updateStrategy"],
        desired["spec"]["updateStrategy"]
    );
    // A member without ordinals keeps the desired ones (from the OverridePolicy).
    let bare = set(json!({"replicas": 3}), Value::Null);
    assert_eq!(
        retain(&desired, &bare)["spec"]["ordinals"],
        json!({"start": 0})
    );
}

#[test]
fn health_follows_rollout_complete_and_the_observed_generation() {
    let complete = json!([{"type": "RolloutComplete", "status": "True"}]);
    let rolling = json!([{"type": "RolloutComplete", "status": "False"}]);
    let cases = [
        (
            "complete",
            set(
                json!({"replicas": 2}),
                json!({"observedGeneration": 2, "conditions": complete}),
            ),
            true,
        ),
        (
            "rolling",
            set(
                json!({"replicas": 2}),
                json!({"observedGeneration": 2, "conditions": rolling}),
            ),
            false,
        ),
        (
            "stale generation",
            set(
                json!({"replicas": 2}),
                json!({"observedGeneration": 1, "conditions": complete}),
            ),
            false,
        ),
        ("no status", set(json!({"replicas": 2}), Value::Null), false),
        (
            "counts: partition met",
            set(
                json!({"replicas": 3, "updateStrategy": {"rollingUpdate": {"partition": 1}}}),
                json!({"observedGeneration": 2, "updatedAvailableReplicas": 2}),
            ),
            true,
        ),
        (
            "counts: one short",
            set(
                json!({"replicas": 3}),
                json!({"observedGeneration": 2, "updatedAvailableReplicas": 2}),
            ),
            false,
        ),
        (
            "counts: OnDelete needs no update",
            set(
                json!({"replicas": 3, "updateStrategy": {"type": "OnDelete"}}),
                json!({"observedGeneration": 2}),
            ),
            true,
        ),
    ];
    for (name, obj, want) in cases {
        assert_eq!(interpret_health(&obj), want, "{name}");
    }
}

#[test]
fn aggregation_sums_counts_and_moves_observed_generation_only_when_all_members_caught_up() {
    let desired = set(json!({"replicas": 5}), Value::Null);
    let member = |replicas: i64, template_generation: i64, generation: i64, observed: i64| {
        json!({"clusterName": "m", "status": {
            "replicas": replicas, "readyReplicas": replicas, "updateRevision": "web-1",
            "resourceTemplateGeneration": template_generation,
            "generation": generation, "observedGeneration": observed}})
    };
    let all = aggregate_status(&desired, Some(&[member(2, 2, 4, 4), member(3, 2, 9, 9)]));
    assert_eq!(all["status"]["replicas"], 5);
    assert_eq!(all["status"]["readyReplicas"], 5);
    assert_eq!(all["status"]["availableReplicas"], 0);
    assert_eq!(all["status"]["observedGeneration"], 2);
    assert_eq!(all["status"]["updateRevision"], "web-1");
    let lagging = aggregate_status(&desired, Some(&[member(2, 2, 4, 4), member(3, 1, 9, 9)]));
    assert_eq!(lagging["status"]["observedGeneration"], 0);
    let nowhere = aggregate_status(&desired, None);
    assert_eq!(nowhere["status"]["replicas"], 0);
    assert_eq!(nowhere["status"]["observedGeneration"], 2);
}

#[test]
fn dependencies_name_each_referenced_object_once_and_skip_the_default_service_account() {
    let desired = json!({"metadata": {"namespace": "shop"}, "spec": {"template": {"spec": {
        "serviceAccountName": "default",
        "containers": [{"env": [{"valueFrom": {"configMapKeyRef": {"name": "a"}}}],
                        "envFrom": [{"configMapRef": {"name": "a"}}, {"secretRef": {"name": "s"}}]}],
        "volumes": [{"persistentVolumeClaim": {"claimName": "shared"}},
                    {"csi": {"nodePublishSecretRef": {"name": "csi"}}}],
    }}}});
    let names: Vec<(String, String)> = get_dependencies(&desired)
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_string(),
                d["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("ConfigMap", "a"),
        ("Secret", "csi"),
        ("Secret", "s"),
        ("PersistentVolumeClaim", "shared"),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), n.to_string()))
    .collect();
    assert_eq!(names, want);
}

#[test]
fn answers_echo_the_uid_patch_in_base64_and_refuse_other_kinds() {
    let object = set(json!({"replicas": 3}), Value::Null);
    let context = json!({"request": {
        "uid": "u1", "kind": {"group": "jke.jdcloud.com", "version": "v1alpha1", "kind": "EnhancedStatefulSet"},
        "operation": "ReviseReplica", "object": object, "replicas": 2}});
    let reply = answer(&context).expect("answered");
    let r = &reply["response"];
    assert_eq!(r["uid"], "u1");
    assert_eq!(r["successful"], true);
    assert_eq!(r["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(r["patch"].as_str().expect("patch"))
        .expect("base64");
    let patch: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(
        patch,
        json!([{"op": "replace", "path": "/spec/replicas", "value": 2}])
    );

    let mut other = context.clone();
    other["request"]["kind"]["kind"] = json!("Deployment");
    let reply = answer(&other).expect("answered");
    assert_eq!(reply["response"]["successful"], false);
    assert_eq!(reply["response"]["status"]["code"], 400);
    assert_eq!(reply["response"]["uid"], "u1");

    assert!(answer(&json!({"response": {}})).is_err());
}

#[test]
fn hostile_contexts_get_an_answer_never_a_panic() {
    let object = set(
        json!({"replicas": 3, "template": {"spec": {"containers": []}}}),
        Value::Null,
    );
    let base = json!({"request": {
        "uid": "u", "kind": {"kind": "EnhancedStatefulSet"}, "operation": "InterpretReplica",
        "object": object, "observedObject": object, "aggregatedStatus": [{"status": {}}], "replicas": 1}});
    let operations = [
        "InterpretReplica",
        "ReviseReplica",
        "Retain",
        "AggregateStatus",
        "InterpretStatus",
        "InterpretHealth",
        "InterpretDependency",
        "Prune",
        "",
        "*",
    ];
    let weird = [
        json!(null),
        json!(1),
        json!(-7.5),
        json!("x"),
        json!([]),
        json!({}),
        json!([1, {"a": null}]),
        json!({"cpu": "1.5"}),
        json!({"memory": "bogus"}),
        json!({"containers": "no"}),
    ];
    let paths: [&[&str]; 12] = [
        &["object"],
        &["object", "spec"],
        &["object", "spec", "replicas"],
        &["object", "spec", "template"],
        &["object", "spec", "template", "spec", "containers"],
        &["object", "status"],
        &["object", "metadata"],
        &["observedObject"],
        &["aggregatedStatus"],
        &["replicas"],
        &["kind"],
        &["object", "spec", "template", "spec", "overhead"],
    ];
    let mut answered = 0;
    for op in operations {
        for path in paths {
            for value in &weird {
                let mut context = base.clone();
                context["request"]["operation"] = json!(op);
                let mut target = &mut context["request"];
                for key in &path[..path.len() - 1] {
                    target = &mut target[*key];
                }
                if let Some(o) = target.as_object_mut() {
                    o.insert(path[path.len() - 1].to_string(), value.clone());
                }
                let reply = answer(&context).expect("a context with a request is answered");
                assert_eq!(reply["response"]["uid"], "u");
                let successful = reply["response"]["successful"]
                    .as_bool()
                    .expect("successful");
                assert!(successful || reply["response"]["status"]["message"].is_string());
                answered += 1;
            }
        }
    }
    assert_eq!(answered, operations.len() * paths.len() * weird.len());
}
