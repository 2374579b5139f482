//! Revisions: the pod template is kept in a ControllerRevision named `<set>-<hash>`, as
//! upstream does, so that re-applying an old template re-uses (and re-numbers) its revision
//! and a rollback is a roll forward to old content.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::PodTemplateSpec;
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
