//! A set's revisions (ControllerRevisions it controls) and which one an undo goes to.

use ests_api::keys;
use ests_core::revision::template_of;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;

/// The annotation kubectl reads a revision's change cause from.
pub const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

/// One revision of a set.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    pub number: i64,
    pub name: String,
    /// Its `controller-revision-hash`.
    pub hash: String,
    pub change_cause: Option<String>,
    pub template: Option<PodTemplateSpec>,
}

/// The revisions controlled by the set with `uid`, oldest first.
pub fn owned_revisions(uid: &str, revisions: &[ControllerRevision]) -> Vec<Revision> {
    let mut out: Vec<Revision> = revisions
        .iter()
        .filter(|r| {
            r.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid && o.controller == Some(true))
        })
        .map(|r| Revision {
            number: r.revision.unwrap_or(0),
            name: r.metadata.name.clone().unwrap_or_default(),
            hash: r
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(keys::CONTROLLER_REVISION_HASH))
                .cloned()
                .unwrap_or_default(),
            change_cause: r
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CHANGE_CAUSE))
                .cloned(),
            template: template_of(&r.data.0),
        })
        .collect();
    out.sort_by_key(|r| r.number);
    out
}

/// Why there is nothing to roll back to.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UndoError {
    #[error("no rollout history found")]
    NoHistory,
    #[error("no revision to roll back to: the set has only one")]
    NoPrevious,
    #[error("unable to find the specified revision {0}")]
    NotFound(i64),
    #[error("revision {0} holds no readable template")]
    Unreadable(i64),
    #[error("skipped rollback: the current template already matches revision {0}")]
    AlreadyThere(i64),
}

/// The revision `kubectl ests rollout undo --to-revision N` goes to: `N`, or with `N = 0`
/// the newest revision before the newest one.
pub fn undo_target<'a>(
    history: &'a [Revision],
    current: &PodTemplateSpec,
    to_revision: i64,
) -> Result<&'a Revision, UndoError> {
    if history.is_empty() {
        return Err(UndoError::NoHistory);
    }
    let target = if to_revision == 0 {
        let mut numbers: Vec<&Revision> = history.iter().collect();
        numbers.sort_by_key(|r| std::cmp::Reverse(r.number));
        numbers.get(1).copied().ok_or(UndoError::NoPrevious)?
    } else {
        history
            .iter()
            .find(|r| r.number == to_revision)
            .ok_or(UndoError::NotFound(to_revision))?
    };
    let template = target
        .template
        .as_ref()
        .ok_or(UndoError::Unreadable(target.number))?;
    if template == current {
        return Err(UndoError::AlreadyThere(target.number));
    }
    Ok(target)
}

/// The change cause to show for a revision: its own annotation, else, for the set's update
/// revision, the set's annotation (the controller does not copy it onto revisions).
pub fn change_cause(
    revision: &Revision,
    update_revision: Option<&str>,
    set_cause: Option<&str>,
) -> String {
    revision
        .change_cause
        .clone()
        .or_else(|| {
            (update_revision == Some(revision.hash.as_str()))
                .then(|| set_cause.map(str::to_string))
                .flatten()
        })
        .unwrap_or_else(|| "<none>".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": image}]}}))
        .expect("template")
    }

    fn revision(uid: &str, number: i64, image: &str, cause: Option<&str>) -> ControllerRevision {
        let mut annotations = serde_json::Map::new();
        if let Some(c) = cause {
            annotations.insert(CHANGE_CAUSE.into(), json!(c));
        }
        serde_json::from_value(json!({
            "metadata": {"name": format!("web-h{number}"), "labels": {"controller-revision-hash": format!("h{number}")},
                "annotations": annotations,
                "ownerReferences": [{"apiVersion": "jke.jdcloud.com/v1alpha1", "kind": "EnhancedStatefulSet",
                    "name": "web", "uid": uid, "controller": true}]},
            "data": ests_core::revision::revision_data(&template(image)),
            "revision": number
        }))
        .expect("revision")
    }

    #[test]
    fn history_keeps_only_the_sets_revisions_in_order() {
        let all = [
            revision("u1", 3, "v3", None),
            revision("other", 9, "v9", None),
            revision("u1", 1, "v1", Some("first")),
        ];
        let h = owned_revisions("u1", &all);
        assert_eq!(h.iter().map(|r| r.number).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(h[0].change_cause.as_deref(), Some("first"));
        assert_eq!(h[1].hash, "h3");
        assert_eq!(h[1].template, Some(template("v3")));
    }

    #[test]
    fn undo_goes_to_the_previous_or_the_named_revision() {
        let h = owned_revisions(
            "u",
            &[
                revision("u", 1, "v1", None),
                revision("u", 2, "v2", None),
                revision("u", 4, "v4", None),
            ],
        );
        let current = template("v4");
        let cases: [(i64, Result<i64, UndoError>); 5] = [
            (0, Ok(2)),
            (1, Ok(1)),
            (4, Err(UndoError::AlreadyThere(4))),
            (3, Err(UndoError::NotFound(3))),
            (2, Ok(2)),
        ];
        for (to, want) in cases {
            assert_eq!(
                undo_target(&h, &current, to).map(|r| r.number),
                want,
                "--to-revision {to}"
            );
        }
        let single = owned_revisions("u", &[revision("u", 1, "v1", None)]);
        assert_eq!(
            undo_target(&single, &current, 0).map(|r| r.number),
            Err(UndoError::NoPrevious)
        );
        assert_eq!(
            undo_target(&[], &current, 0).map(|r| r.number),
            Err(UndoError::NoHistory)
        );
    }

    #[test]
    fn change_cause_falls_back_to_the_sets_annotation_for_the_update_revision() {
        let h = owned_revisions(
            "u",
            &[
                revision("u", 1, "v1", Some("own")),
                revision("u", 2, "v2", None),
            ],
        );
        assert_eq!(change_cause(&h[0], Some("h2"), Some("set")), "own");
        assert_eq!(change_cause(&h[1], Some("h2"), Some("set")), "set");
        assert_eq!(change_cause(&h[1], Some("h1"), Some("set")), "<none>");
    }
}
