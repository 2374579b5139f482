//! Finding or creating the set's update revision (a ControllerRevision), re-numbering an old
//! one when a template is re-applied (rollback), and trimming history.

use std::collections::{BTreeMap, BTreeSet};

use ests_api::{EnhancedStatefulSet, keys};
use ests_core::revision::{
    RevisionEntry, revision_data, revision_name, revisions_to_trim, template_hash, template_of,
};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::Selector;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::{Context, Error};

/// The set's revisions as found or made by [`sync`].
pub struct Revisions {
    /// Hash (`controller-revision-hash`) of the update revision.
    pub update: String,
    /// Hash of the current revision.
    pub current: String,
    pub collision_count: i32,
    history: Vec<(String, String, i64)>,
    /// The template each owned revision holds, by hash.
    templates: BTreeMap<String, PodTemplateSpec>,
}

impl Revisions {
    /// The template of the revision with hash `revision`, which a pod labelled with it must
    /// run. Only the update revision is known to hold the set's own template (sync found it
    /// equal, or created it from it); any other is read from its ControllerRevision. A hash
    /// is never taken to mean the set's template because it is what that template hashes to
    /// at collision count 0: after a collision that name holds another template.
    pub fn template(&self, spec: &PodTemplateSpec, revision: &str) -> Option<PodTemplateSpec> {
        if revision == self.update {
            return Some(spec.clone());
        }
        self.templates.get(revision).cloned()
    }
}

fn hash_of(revision: &ControllerRevision) -> String {
    revision
        .labels()
        .get(keys::CONTROLLER_REVISION_HASH)
        .cloned()
        .unwrap_or_default()
}

/// Makes sure the update revision exists and is the newest.
pub async fn sync(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    selector: &Selector,
) -> Result<Revisions, Error> {
    let ns = set.namespace().unwrap_or_default();
    let set_name = set.name_any();
    let uid = set.uid().unwrap_or_default();
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let mut owned: Vec<ControllerRevision> = crate::adopt::claim_revisions(ctx, set, selector)
        .await?
        .iter()
        .map(|r| (**r).clone())
        .collect();
    let template = &set.spec.template;
    let newest = owned.iter().filter_map(|r| r.revision).max().unwrap_or(0);
    let mut collision_count = set
        .status
        .as_ref()
        .and_then(|s| s.collision_count)
        .unwrap_or(0);

    let equal = owned
        .iter()
        .find(|r| template_of(&r.data.0).as_ref() == Some(template));
    let update = match equal {
        Some(existing) if existing.revision == Some(newest) => hash_of(existing),
        Some(existing) => {
            // Rollback: the old revision becomes the newest again.
            let name = existing.name_any();
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"revision": newest + 1})),
            )
            .await
            .map_err(|e| Error::kube(format!("renumbering revision {name}"), e))?;
            let hash = hash_of(existing);
            if let Some(r) = owned.iter_mut().find(|r| r.name_any() == name) {
                r.revision = Some(newest + 1);
            }
            hash
        }
        None => loop {
            let hash = template_hash(template, collision_count);
            let name = revision_name(&set_name, &hash);
            let mut labels = set.spec.selector.match_labels.clone().unwrap_or_default();
            labels.insert(keys::CONTROLLER_REVISION_HASH.into(), hash.clone());
            let revision = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    owner_references: ests_core::pods::owner_reference(set).map(|o| vec![o]),
                    ..Default::default()
                },
                data: RawExtension(revision_data(template)),
                revision: Some(newest + 1),
            };
            match api.create(&PostParams::default(), &revision).await {
                Ok(created) => {
                    owned.push(created);
                    break hash;
                }
                Err(kube::Error::Api(s)) if s.is_already_exists() => {
                    // Our cache may lag; a revision of another template under this name is a
                    // hash collision.
                    let existing = api
                        .get(&name)
                        .await
                        .map_err(|e| Error::kube(format!("reading revision {name}"), e))?;
                    let same = template_of(&existing.data.0).as_ref() == Some(template);
                    let ours = existing.owner_references().iter().any(|o| o.uid == uid);
                    if same && ours {
                        owned.push(existing);
                        break hash;
                    }
                    collision_count += 1;
                    if collision_count > 100 {
                        return Err(Error::other(
                            crate::INVALID,
                            format!("revision name collisions for {set_name}"),
                        ));
                    }
                }
                Err(e) => return Err(Error::kube(format!("creating revision {name}"), e)),
            }
        },
    };
    let current = set
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .filter(|c| owned.iter().any(|r| &hash_of(r) == c))
        .unwrap_or_else(|| update.clone());
    Ok(Revisions {
        update,
        current,
        collision_count,
        history: owned
            .iter()
            .map(|r| (r.name_any(), hash_of(r), r.revision.unwrap_or(0)))
            .collect(),
        templates: owned
            .iter()
            .filter_map(|r| Some((hash_of(r), template_of(&r.data.0)?)))
            .collect(),
    })
}

/// Deletes the oldest revisions no pod uses beyond revisionHistoryLimit.
pub async fn trim(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    revisions: &Revisions,
    pod_hashes: &BTreeSet<String>,
) -> Result<(), Error> {
    let mut live: BTreeSet<String> = BTreeSet::new();
    let entries: Vec<RevisionEntry> = revisions
        .history
        .iter()
        .map(|(name, hash, revision)| {
            if hash == &revisions.update || hash == &revisions.current || pod_hashes.contains(hash)
            {
                live.insert(name.clone());
            }
            RevisionEntry {
                name: name.clone(),
                revision: *revision,
            }
        })
        .collect();
    let api: Api<ControllerRevision> =
        Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    for name in revisions_to_trim(&entries, &live, set.spec.revision_history_limit) {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(Error::kube(format!("deleting revision {name}"), e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": image}]}
        }))
        .expect("template")
    }

    #[test]
    fn a_revision_named_like_the_sets_template_after_a_collision_keeps_its_own_template() {
        // A forced collision: the set's template B hashes (at collision count 0) to the name
        // of an existing revision that holds another template, A. Sync then made B's
        // revision at collision count 1. Pods of the colliding revision (the current one,
        // below the partition) must get A back, not the set's template.
        let a = template("app:a");
        let b = template("app:b");
        let colliding = template_hash(&b, 0);
        let update = template_hash(&b, 1);
        let revisions = Revisions {
            update: update.clone(),
            current: colliding.clone(),
            collision_count: 1,
            history: vec![],
            templates: [(colliding.clone(), a.clone()), (update.clone(), b.clone())].into(),
        };
        assert_eq!(revisions.template(&b, &colliding), Some(a));
        assert_eq!(revisions.template(&b, &update), Some(b.clone()));
        assert_eq!(revisions.template(&b, "unknown"), None, "never a guess");
    }
}
