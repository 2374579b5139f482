//! Finding or creating the set's update revision (a ControllerRevision), re-numbering an old
//! one when a template is re-applied (rollback), and trimming history.

use std::collections::{BTreeMap, BTreeSet};

use ests_api::EnhancedStatefulSet;
use ests_core::revision::{
    NameTaken, OwnedRevision, RevisionEntry, UpdateRevision, build_revision, current_revision,
    name_taken, revision_name, revisions_to_trim, template_for, template_hash, template_of,
    update_revision,
};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
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
    /// The template a pod labelled with `revision` runs (see
    /// [`ests_core::revision::template_for`]); None for a revision the set does not own.
    pub fn template<'a>(
        &'a self,
        spec: &'a PodTemplateSpec,
        revision: &str,
    ) -> Option<&'a PodTemplateSpec> {
        template_for(revision, &self.update, spec, &self.templates)
    }
}

/// Makes sure the update revision exists and is the newest (`ests_core::revision` decides
/// which revision that is; this carries it out).
pub async fn sync(
    ctx: &Context,
    set: &EnhancedStatefulSet,
    selector: &Selector,
) -> Result<Revisions, Error> {
    let api: Api<ControllerRevision> =
        Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    let mut owned: Vec<OwnedRevision> = crate::adopt::claim_revisions(ctx, set, selector)
        .await?
        .iter()
        .map(|r| OwnedRevision::of(r))
        .collect();
    let mut collision_count = set
        .status
        .as_ref()
        .and_then(|s| s.collision_count)
        .unwrap_or(0);
    let update = match update_revision(&owned, &set.spec.template) {
        UpdateRevision::Newest { hash } => hash,
        UpdateRevision::Renumber {
            name,
            hash,
            revision,
        } => {
            renumber(&api, &name, revision).await?;
            if let Some(r) = owned.iter_mut().find(|r| r.name == name) {
                r.revision = Some(revision);
            }
            hash
        }
        UpdateRevision::Create { revision } => {
            let (created, hash) = create(&api, set, revision, &mut collision_count).await?;
            owned.push(created);
            hash
        }
    };
    let current = current_revision(
        set.status
            .as_ref()
            .and_then(|s| s.current_revision.as_deref()),
        owned.iter().map(|r| r.hash.as_str()),
        &update,
    );
    Ok(Revisions {
        update,
        current,
        collision_count,
        history: owned
            .iter()
            .map(|r| (r.name.clone(), r.hash.clone(), r.revision.unwrap_or(0)))
            .collect(),
        templates: owned
            .into_iter()
            .filter_map(|r| Some((r.hash, r.template?)))
            .collect(),
    })
}

/// Rollback: the revision `name` becomes the newest again, numbered `revision`.
async fn renumber(api: &Api<ControllerRevision>, name: &str, revision: i64) -> Result<(), Error> {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"revision": revision})),
    )
    .await
    .map_err(|e| Error::kube(format!("renumbering revision {name}"), e))?;
    Ok(())
}

/// Creates the update revision, numbered `revision`, under the first name (by
/// `collision_count`, bumped on each collision) that is free or already holds it.
async fn create(
    api: &Api<ControllerRevision>,
    set: &EnhancedStatefulSet,
    revision: i64,
    collision_count: &mut i32,
) -> Result<(OwnedRevision, String), Error> {
    let uid = set.uid().unwrap_or_default();
    loop {
        let hash = template_hash(&set.spec.template, *collision_count);
        let name = revision_name(&set.name_any(), &hash);
        match api
            .create(
                &PostParams::default(),
                &build_revision(set, &hash, revision),
            )
            .await
        {
            Ok(created) => return Ok((OwnedRevision::of(&created), hash)),
            Err(kube::Error::Api(s)) if s.is_already_exists() => {
                // Our cache may lag; a revision of another template under this name is a
                // hash collision.
                let existing = api
                    .get(&name)
                    .await
                    .map_err(|e| Error::kube(format!("reading revision {name}"), e))?;
                let same = template_of(&existing.data.0).as_ref() == Some(&set.spec.template);
                let ours = existing.owner_references().iter().any(|o| o.uid == uid);
                match name_taken(same, ours, *collision_count) {
                    NameTaken::Ours => return Ok((OwnedRevision::of(&existing), hash)),
                    NameTaken::Collision {
                        collision_count: next,
                    } => *collision_count = next,
                    NameTaken::GiveUp => {
                        return Err(Error::other(
                            crate::INVALID,
                            format!("revision name collisions for {}", set.name_any()),
                        ));
                    }
                }
            }
            Err(e) => return Err(Error::kube(format!("creating revision {name}"), e)),
        }
    }
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
