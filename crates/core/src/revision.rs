//! Revisions: the pod template is kept in a ControllerRevision named `<set>-<hash>`, as
//! upstream does, so that re-applying an old template re-uses (and re-numbers) its revision
//! and a rollback is a roll forward to old content.

use std::collections::{BTreeMap, BTreeSet};

use ests_api::{EnhancedStatefulSet, keys};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::ResourceExt;
use serde_json::{Value, json};

/// The characters upstream uses to encode hashes (no vowels, no look-alikes).
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The hash of a template (and of the collision count, bumped when two templates collide),
/// in the form upstream uses for `controller-revision-hash`.
pub fn template_hash(template: &PodTemplateSpec, collision_count: i32) -> String {
    // serde_json writes struct fields in declaration order and maps sorted: stable bytes.
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |b: u8| {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    };
    bytes.iter().copied().for_each(&mut feed);
    if collision_count > 0 {
        collision_count
            .to_le_bytes()
            .into_iter()
            .for_each(&mut feed);
    }
    hash.to_string()
        .bytes()
        .map(|b| char::from(SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()]))
        .collect()
}

/// The name of a set's revision.
pub fn revision_name(set: &str, hash: &str) -> String {
    format!("{set}-{hash}")
}

/// What a ControllerRevision holds: a patch that replaces the set's template.
pub fn revision_data(template: &PodTemplateSpec) -> Value {
    json!({"spec": {"template": {"$patch": "replace", "spec": template.spec, "metadata": template.metadata}}})
}

/// The template a revision holds.
pub fn template_of(data: &Value) -> Option<PodTemplateSpec> {
    let mut template = data.get("spec")?.get("template")?.clone();
    template.as_object_mut()?.remove("$patch");
    serde_json::from_value(template).ok()
}

/// How many hash collisions the update revision's name may meet before the set is given up
/// on (each bumps `status.collisionCount`).
pub const MAX_COLLISIONS: i32 = 100;

/// A ControllerRevision the set owns, as choosing the update revision sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedRevision {
    pub name: String,
    /// Its `controller-revision-hash` label.
    pub hash: String,
    pub revision: Option<i64>,
    /// The template it holds; None if its data does not parse as one.
    pub template: Option<PodTemplateSpec>,
}

impl OwnedRevision {
    pub fn of(revision: &ControllerRevision) -> Self {
        Self {
            name: revision.name_any(),
            hash: hash_of(revision),
            revision: revision.revision,
            template: template_of(&revision.data.0),
        }
    }
}

/// A revision's `controller-revision-hash` label (empty if it has none).
pub fn hash_of(revision: &ControllerRevision) -> String {
    revision
        .labels()
        .get(keys::CONTROLLER_REVISION_HASH)
        .cloned()
        .unwrap_or_default()
}

/// The ControllerRevision, numbered `revision`, that keeps the set's template under `hash`:
/// labelled like the set's pods and owned (controlled) by the set.
pub fn build_revision(set: &EnhancedStatefulSet, hash: &str, revision: i64) -> ControllerRevision {
    let mut labels = set.spec.selector.match_labels.clone().unwrap_or_default();
    labels.insert(keys::CONTROLLER_REVISION_HASH.into(), hash.into());
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(revision_name(&set.name_any(), hash)),
            namespace: set.namespace(),
            labels: Some(labels),
            owner_references: crate::pods::owner_reference(set).map(|o| vec![o]),
            ..Default::default()
        },
        data: RawExtension(revision_data(&set.spec.template)),
        revision: Some(revision),
    }
}

/// Where the set's template is kept, as [`update_revision`] decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateRevision {
    /// The newest owned revision already holds it.
    Newest { hash: String },
    /// An older owned revision holds it (a rollback): it is re-numbered `revision`, the
    /// newest, so that a rollback is a roll forward to old content.
    Renumber {
        name: String,
        hash: String,
        revision: i64,
    },
    /// No owned revision holds it: a new one is made, numbered `revision` (its name, from
    /// the collision count, is [`revision_name`] of [`template_hash`]).
    Create { revision: i64 },
}

/// Which owned revision holds `template`, or that a new one must be made. The first owned
/// revision holding an equal template is the one (there is at most one unless a collision
/// made two).
pub fn update_revision(owned: &[OwnedRevision], template: &PodTemplateSpec) -> UpdateRevision {
    let newest = owned.iter().filter_map(|r| r.revision).max().unwrap_or(0);
    match owned.iter().find(|r| r.template.as_ref() == Some(template)) {
        Some(existing) if existing.revision == Some(newest) => UpdateRevision::Newest {
            hash: existing.hash.clone(),
        },
        Some(existing) => UpdateRevision::Renumber {
            name: existing.name.clone(),
            hash: existing.hash.clone(),
            revision: newest + 1,
        },
        None => UpdateRevision::Create {
            revision: newest + 1,
        },
    }
}

/// What to make of a create of the update revision that found its name taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameTaken {
    /// The revision there is the set's own, with its template: a cache that lagged. It is
    /// the update revision.
    Ours,
    /// Another template (or another owner's revision) under this name: a hash collision. The
    /// next try hashes with this collision count.
    Collision { collision_count: i32 },
    /// Too many collisions in a row: something other than chance is at work.
    GiveUp,
}

/// [`NameTaken`] for a revision found under the update revision's name: `same_template`
/// whether it holds the set's template, `ours` whether the set owns it, at
/// `collision_count`.
pub fn name_taken(same_template: bool, ours: bool, collision_count: i32) -> NameTaken {
    if same_template && ours {
        return NameTaken::Ours;
    }
    let next = collision_count.saturating_add(1);
    if next > MAX_COLLISIONS {
        NameTaken::GiveUp
    } else {
        NameTaken::Collision {
            collision_count: next,
        }
    }
}

/// The current revision: the one the status records while the set still owns it, else the
/// update revision (a new set, or a current revision deleted by hand).
pub fn current_revision<'a>(
    recorded: Option<&str>,
    owned_hashes: impl IntoIterator<Item = &'a str>,
    update: &str,
) -> String {
    match recorded {
        Some(recorded) if owned_hashes.into_iter().any(|h| h == recorded) => recorded.into(),
        _ => update.into(),
    }
}

/// The template a pod labelled with revision `revision` runs: the set's own for the update
/// revision (found equal to it, or made from it), else the one its ControllerRevision holds
/// (`stored`, by hash). None when no owned revision has that hash: such a pod is not
/// created, never given the set's template in its place (a pod labelled with one revision
/// and running another template would never be updated). A hash is never taken to mean the
/// set's template because that template hashes to it at collision count 0: after a
/// collision, that name holds another template.
pub fn template_for<'a>(
    revision: &str,
    update: &str,
    set_template: &'a PodTemplateSpec,
    stored: &'a BTreeMap<String, PodTemplateSpec>,
) -> Option<&'a PodTemplateSpec> {
    if revision == update {
        return Some(set_template);
    }
    stored.get(revision)
}

/// A revision as history trimming sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionEntry {
    pub name: String,
    pub revision: i64,
}

/// Which revisions to delete so that at most `limit` revisions that no pod uses (and that
/// are neither current nor update revision) remain: the oldest go first.
pub fn revisions_to_trim(
    history: &[RevisionEntry],
    live: &BTreeSet<String>,
    limit: i32,
) -> Vec<String> {
    let mut dead: Vec<&RevisionEntry> =
        history.iter().filter(|r| !live.contains(&r.name)).collect();
    dead.sort_by_key(|r| r.revision);
    let keep = usize::try_from(limit.max(0)).unwrap_or(0);
    let excess = dead.len().saturating_sub(keep);
    dead.into_iter()
        .take(excess)
        .map(|r| r.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": image}]}
        }))
        .expect("template")
    }

    #[test]
    fn equal_templates_hash_equal_and_collisions_change_the_hash() {
        let a = template_hash(&template("nginx:v1"), 0);
        assert_eq!(a, template_hash(&template("nginx:v1"), 0));
        assert_ne!(a, template_hash(&template("nginx:v2"), 0));
        assert_ne!(a, template_hash(&template("nginx:v1"), 1));
        assert!(a.bytes().all(|b| SAFE_ALPHABET.contains(&b)), "{a}");
        assert!(!a.is_empty() && a.len() <= 10);
    }

    #[test]
    fn revision_data_round_trips_the_template() {
        let t = template("nginx:v1");
        let data = revision_data(&t);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        assert_eq!(template_of(&data), Some(t));
    }

    fn owned(name: &str, revision: Option<i64>, image: Option<&str>) -> OwnedRevision {
        OwnedRevision {
            name: format!("web-{name}"),
            hash: name.into(),
            revision,
            template: image.map(template),
        }
    }

    #[test]
    fn the_update_revision_is_found_renumbered_or_made() {
        let t = template("app:b");
        for (case, history, want) in [
            (
                "a new set makes revision 1",
                vec![],
                UpdateRevision::Create { revision: 1 },
            ),
            (
                "the newest holds the template",
                vec![
                    owned("a", Some(1), Some("app:a")),
                    owned("b", Some(2), Some("app:b")),
                ],
                UpdateRevision::Newest { hash: "b".into() },
            ),
            (
                "a rollback re-numbers the old revision as the newest",
                vec![
                    owned("b", Some(1), Some("app:b")),
                    owned("a", Some(4), Some("app:a")),
                ],
                UpdateRevision::Renumber {
                    name: "web-b".into(),
                    hash: "b".into(),
                    revision: 5,
                },
            ),
            (
                "a new template is numbered after the newest",
                vec![
                    owned("a", Some(3), Some("app:a")),
                    owned("x", None, Some("app:x")),
                ],
                UpdateRevision::Create { revision: 4 },
            ),
            (
                "a revision whose data does not parse holds no template",
                vec![owned("a", Some(2), None)],
                UpdateRevision::Create { revision: 3 },
            ),
            (
                "an unnumbered revision holding the template is renumbered",
                vec![
                    owned("a", Some(2), Some("app:a")),
                    owned("b", None, Some("app:b")),
                ],
                UpdateRevision::Renumber {
                    name: "web-b".into(),
                    hash: "b".into(),
                    revision: 3,
                },
            ),
        ] {
            assert_eq!(update_revision(&history, &t), want, "{case}");
        }
    }

    #[test]
    fn a_built_revision_is_named_labelled_and_owned_like_the_sets_pods() {
        let set: EnhancedStatefulSet = serde_json::from_value(json!({
            "apiVersion": "jke.jdcloud.com/v1alpha1",
            "kind": "EnhancedStatefulSet",
            "metadata": {"name": "web", "namespace": "ns", "uid": "set-uid"},
            "spec": {
                "serviceName": "web", "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "web", "image": "app:a"}]}},
            },
        }))
        .expect("set");
        let built = build_revision(&set, "h1", 7);
        assert_eq!(built.name_any(), "web-h1");
        assert_eq!(built.namespace().as_deref(), Some("ns"));
        assert_eq!(built.revision, Some(7));
        assert_eq!(hash_of(&built), "h1");
        assert_eq!(built.labels().get("app").map(String::as_str), Some("web"));
        let owner = built.owner_references().first().cloned().expect("owned");
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            ("set-uid", Some(true))
        );
        let seen = OwnedRevision::of(&built);
        assert_eq!(seen.template.as_ref(), Some(&set.spec.template));
        assert_eq!((seen.name.as_str(), seen.hash.as_str()), ("web-h1", "h1"));
    }

    #[test]
    fn a_taken_name_is_ours_a_collision_or_the_end() {
        for (same, ours, count, want) in [
            (true, true, 0, NameTaken::Ours),
            (true, true, 7, NameTaken::Ours),
            (false, true, 0, NameTaken::Collision { collision_count: 1 }),
            (true, false, 0, NameTaken::Collision { collision_count: 1 }),
            (
                false,
                false,
                41,
                NameTaken::Collision {
                    collision_count: 42,
                },
            ),
            (
                false,
                true,
                MAX_COLLISIONS - 1,
                NameTaken::Collision {
                    collision_count: MAX_COLLISIONS,
                },
            ),
            (false, true, MAX_COLLISIONS, NameTaken::GiveUp),
            (false, false, i32::MAX, NameTaken::GiveUp),
        ] {
            assert_eq!(name_taken(same, ours, count), want, "{same} {ours} {count}");
        }
    }

    #[test]
    fn the_recorded_current_revision_stands_while_the_set_owns_it() {
        let owned = ["a", "b"];
        for (recorded, want) in [
            (Some("a"), "a"),
            (Some("b"), "b"),
            (Some("gone"), "b"),
            (None, "b"),
        ] {
            assert_eq!(current_revision(recorded, owned, "b"), want, "{recorded:?}");
        }
        assert_eq!(current_revision(Some("a"), [], "u"), "u");
    }

    #[test]
    fn a_revision_runs_the_sets_template_only_as_the_update_revision() {
        // A forced collision: the set's template B hashes (at collision count 0) to the name
        // of an existing revision that holds another template, A. Sync then made B's
        // revision at collision count 1. Pods of the colliding revision (the current one,
        // below the partition) must get A back, not the set's template.
        let a = template("app:a");
        let b = template("app:b");
        let colliding = template_hash(&b, 0);
        let update = template_hash(&b, 1);
        let stored: BTreeMap<String, PodTemplateSpec> =
            [(colliding.clone(), a.clone()), (update.clone(), b.clone())].into();
        for (case, revision, want) in [
            ("the update revision", update.as_str(), Some(&b)),
            (
                "the colliding name keeps its own",
                colliding.as_str(),
                Some(&a),
            ),
            ("an unknown revision is never a guess", "unknown", None),
        ] {
            assert_eq!(template_for(revision, &update, &b, &stored), want, "{case}");
        }
        let only_set = BTreeMap::new();
        assert_eq!(template_for(&update, &update, &b, &only_set), Some(&b));
        assert_eq!(template_for(&colliding, &update, &b, &only_set), None);
    }

    #[test]
    fn trimming_keeps_live_revisions_and_the_newest_dead_ones() {
        let history: Vec<_> = (1..=6)
            .map(|i| RevisionEntry {
                name: format!("r{i}"),
                revision: i,
            })
            .collect();
        let live: BTreeSet<String> = ["r1".into(), "r6".into()].into();
        assert_eq!(revisions_to_trim(&history, &live, 2), vec!["r2", "r3"]);
        assert_eq!(revisions_to_trim(&history, &live, 10), Vec::<String>::new());
        assert_eq!(
            revisions_to_trim(&history, &live, 0),
            vec!["r2", "r3", "r4", "r5"]
        );
    }
}
