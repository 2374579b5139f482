//! What a migration's plan is made from, read from the caches (and, for the nodes, the API
//! server itself: a node's readiness and taints decide what may be released).

use std::collections::{BTreeMap, BTreeSet};

use ests_api::{EnhancedStatefulSet, MigrationPhase, NodeMigration, keys};
use ests_core::extender::pod_requests;
use ests_core::migration::{Observed, RecordFacts, SourcePod, fits};
use ests_core::quantity::{Resources, add, max, parse_milli};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::Api;

use crate::{Context, Error, kube_err};

/// The plan's input and what the hooks are told.
pub struct Observation {
    pub facts: Observed,
    /// CIDRs of the blocks on the source (and already moved), for the network hook.
    pub source_cidrs: Vec<String>,
    /// The node the provisioning hook named just now: kept in the status as the target, so
    /// that the hook is not asked again while the node registers.
    pub provisioned: Option<String>,
}

fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn terminated(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn key(o: &impl ResourceExt) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

fn allocatable(node: &Node) -> Resources {
    node.status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .map(|a| {
            a.iter()
                .filter_map(|(k, q)| Some((k.clone(), parse_milli(&q.0).ok()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// The requests a set's pods need: the larger of its template's and (while it rolls) its
/// pods' — the template is the update revision.
fn set_requests(set: &EnhancedStatefulSet) -> Resources {
    set.spec
        .template
        .spec
        .as_ref()
        .and_then(|s| pod_requests(s).ok())
        .unwrap_or_default()
}

pub async fn observe(ctx: &Context, m: &NodeMigration) -> Result<Observation, Error> {
    let source = m.spec.source_node.clone();
    let status = m.status.clone().unwrap_or_default();
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let source_node = nodes
        .get_opt(&source)
        .await
        .map_err(kube_err(format!("reading node {source}")))?;

    // The target: chosen before, named, labelled as the replacement, or provided.
    let mut target = status
        .target_node
        .clone()
        .or_else(|| m.spec.target_node.clone())
        .or_else(|| {
            let mut candidates: Vec<String> = ctx
                .nodes
                .state()
                .into_iter()
                .filter(|n| {
                    n.labels().get(keys::REPLACEMENT_FOR_LABEL) == Some(&source)
                        && n.name_any() != source
                })
                .map(|n| n.name_any())
                .collect();
            candidates.sort();
            candidates.into_iter().next()
        });
    let mut provisioned = None;
    // Once: the node it names is kept as the target (see `provisioned`), and a hook that
    // failed is run again only after a while.
    if target.is_none()
        && let Some(hook) = &ctx.settings.provision
        && crate::hook_due(ctx, &m.name_any(), "provision")
    {
        let facts = crate::hooks::HookFacts {
            migration: m.name_any(),
            source: source.clone(),
            target: None,
            cidrs: Vec::new(),
        };
        match crate::hooks::run(hook, "provision", &facts).await {
            Ok(name) if !name.is_empty() => {
                target = Some(name.clone());
                provisioned = Some(name);
            }
            Ok(_) => tracing::warn!(%source, "the provisioning hook named no node"),
            Err(e) => tracing::warn!(%source, error = %e, "provisioning a replacement"),
        }
    }
    let target_node = match &target {
        Some(t) => nodes
            .get_opt(t)
            .await
            .map_err(kube_err(format!("reading node {t}")))?,
        None => None,
    };

    // Records on the source, and those this migration moved.
    let moved: BTreeSet<String> = status
        .pods
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    let pods = ctx.pods.state();
    let pod_by_key: BTreeMap<String, &Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (key(p.as_ref()), p.as_ref()))
        .collect();
    let sets = ctx.sets.state();
    let set_by_uid: BTreeMap<String, &EnhancedStatefulSet> = sets
        .iter()
        .filter_map(|s| Some((s.uid()?, s.as_ref())))
        .collect();
    let mut needed: Vec<Resources> = Vec::new();
    let mut records = Vec::new();
    // Identities in IP range mode: their addresses are in the source's blocks.
    let mut range_mode: BTreeSet<String> = BTreeSet::new();
    for record in ctx.records.state() {
        let k = key(record.as_ref());
        let on_source = record.spec.node.as_deref() == Some(source.as_str());
        if !on_source && !moved.contains(&k) {
            continue;
        }
        if record.spec.pool.is_some() {
            range_mode.insert(k.clone());
        }
        let pod = pod_by_key.get(&k);
        let pod_node = pod.and_then(|p| p.spec.as_ref()?.node_name.clone());
        let owner = record
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true))
            .and_then(|o| set_by_uid.get(&o.uid));
        if on_source {
            let from_pod = pod
                .and_then(|p| p.spec.as_ref())
                .and_then(|s| pod_requests(s).ok())
                .unwrap_or_default();
            let from_set = owner.map(|s| set_requests(s)).unwrap_or_default();
            needed.push(max(&from_pod, &from_set));
        }
        records.push(RecordFacts {
            key: k,
            node: record.spec.node.clone(),
            ips: record.spec.ips.iter().map(|a| a.ip.clone()).collect(),
            running_on_target: pod.is_some_and(|p| running(p))
                && pod_node.is_some()
                && pod_node == target,
            pending_pinned_to: pod
                .filter(|_| pod_node.is_none())
                .and_then(|p| ests_core::pin::pinned_node(p).map(str::to_string)),
            set: owner.map(|s| key(*s)),
        });
    }
    records.sort_by(|a, b| a.key.cmp(&b.key));
    let moving: BTreeSet<&str> = records.iter().map(|r| r.key.as_str()).collect();

    let pods_on_source: Vec<SourcePod> = pods
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(source.as_str()))
        .filter(|p| !terminated(p))
        .map(|p| {
            let k = key(p.as_ref());
            let set = p
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true) && o.kind == "EnhancedStatefulSet")
                .map(|o| format!("{}/{}", p.namespace().unwrap_or_default(), o.name));
            SourcePod {
                static_ip: moving.contains(k.as_str()),
                range_mode: range_mode.contains(&k),
                key: k,
                set,
                terminating: p.metadata.deletion_timestamp.is_some(),
                leave: ests_core::pods::leave_request(p),
            }
        })
        .collect();

    // Each set's maxUnavailable (as its rollouts scale it), for refusing a move it can never
    // allow; when its pods go is its controller's decision, in the budget its rollout shares.
    let mut max_unavailable = BTreeMap::new();
    for set in sets.iter() {
        let k = key(set.as_ref());
        if pods_on_source
            .iter()
            .any(|p| p.set.as_deref() == Some(k.as_str()))
        {
            // An invalid maxUnavailable stops the set's controller, and so its evictions.
            let max = set.spec.rolling_update().map_or(
                Some(ests_core::rollout::ON_DELETE_MAX_UNAVAILABLE),
                |r| {
                    ests_core::identity::max_unavailable(&r.max_unavailable, set.spec.replicas).ok()
                },
            );
            max_unavailable.insert(k, max.unwrap_or(1));
        }
    }

    let blocks: Vec<_> = ctx.blocks.state();
    let blocks_on_source: Vec<String> = blocks
        .iter()
        .filter(|b| b.spec.node.as_deref() == Some(source.as_str()))
        .map(|b| b.name_any())
        .collect();
    let source_cidrs: Vec<String> = blocks
        .iter()
        .filter(|b| {
            b.spec.node.as_deref() == Some(source.as_str())
                || status.moved_blocks.contains(&b.name_any())
        })
        .map(|b| b.spec.cidr.clone())
        .collect();

    let fits = target_node.as_ref().map(|t| {
        let name = t.name_any();
        let mut requested = Resources::new();
        for p in pods.iter().filter(|p| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str())
                && !terminated(p)
                && !moving.contains(key(p.as_ref()).as_str())
        }) {
            if let Some(r) = p.spec.as_ref().and_then(|s| pod_requests(s).ok()) {
                add(&mut requested, &r);
                add(
                    &mut requested,
                    &Resources::from([("pods".to_string(), 1000)]),
                );
            }
        }
        fits(&allocatable(t), &requested, &needed)
    });

    let condition_true = |type_: &str| {
        status
            .conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
    };
    Ok(Observation {
        facts: Observed {
            source: source.clone(),
            source_exists: source_node.is_some(),
            source_ready: source_node.as_ref().is_some_and(ready),
            source_tainted: source_node.as_ref().is_some_and(|n| {
                n.spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|ts| ts.iter().any(|t| t.key == keys::OUT_OF_SERVICE_TAINT))
            }),
            source_cordoned: source_node
                .as_ref()
                .and_then(|n| n.spec.as_ref()?.unschedulable)
                .unwrap_or(false),
            target_exists: target_node.is_some(),
            target,
            fits,
            confirm_fenced: m.spec.confirm_fenced,
            phase: status.phase,
            mode: status.mode,
            fenced: status.fenced_at.is_some(),
            network_moved: condition_true("NetworkMoved"),
            blocks_on_source,
            moved_blocks: status.moved_blocks.len(),
            records,
            pods_on_source,
            max_unavailable,
        },
        source_cidrs,
        provisioned,
    })
}

/// Unfinished migrations, for automatic mode's limit.
pub fn active(migrations: &[std::sync::Arc<NodeMigration>]) -> usize {
    migrations
        .iter()
        .filter(|m| {
            m.status
                .as_ref()
                .is_none_or(|s| s.phase != MigrationPhase::Completed)
        })
        .count()
}
