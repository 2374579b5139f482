//! What the controller did that its watch caches may not show yet.
//!
//! A delete or create is recorded before the API call. Until the pod cache shows its effect,
//! the planner sees a deleted pod as terminating and a created pod as present (Pending), so
//! a stale cache never makes it take down more pods than the budget allows or create a
//! second pod for an identity. Entries expire, so a missed event cannot block a set for ever.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ests_core::rollout::ObservedPod;

const TTL: Duration = Duration::from_secs(60);
/// A create expectation lives shorter: a pod created and deleted (by someone else) before
/// the cache showed it would otherwise look present until the entry expires. Creating again
/// is harmless — a pod that does exist answers AlreadyExists, never a second pod.
const CREATE_TTL: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Pending {
    deletes: HashMap<String, Instant>,
    creates: HashMap<String, (i32, String, Instant)>,
}

/// Expectations of every set, keyed by `namespace/name`.
#[derive(Default)]
pub struct Expectations(Mutex<HashMap<String, Pending>>);

impl Expectations {
    fn with<T>(&self, set: &str, f: impl FnOnce(&mut Pending) -> T) -> T {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let pending = all.entry(set.to_string()).or_default();
        let result = f(pending);
        if pending.deletes.is_empty() && pending.creates.is_empty() {
            all.remove(set);
        }
        result
    }

    /// A delete of the pod with `uid` is about to be sent.
    pub fn expect_delete(&self, set: &str, uid: &str) {
        self.with(set, |p| p.deletes.insert(uid.to_string(), Instant::now()));
    }

    /// A create of pod `name` is about to be sent.
    pub fn expect_create(&self, set: &str, name: &str, ordinal: i32, revision: &str) {
        self.with(set, |p| {
            p.creates.insert(
                name.to_string(),
                (ordinal, revision.to_string(), Instant::now()),
            )
        });
    }

    /// How soon the set's earliest create expectation expires (the reconcile looks again
    /// then: nothing else may trigger it).
    pub fn next_expiry(&self, set: &str) -> Option<Duration> {
        let all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.get(set)?
            .creates
            .values()
            .map(|(_, _, at)| CREATE_TTL.saturating_sub(at.elapsed()))
            .min()
    }

    /// The call failed: nothing will change.
    pub fn forget_create(&self, set: &str, name: &str) {
        self.with(set, |p| p.creates.remove(name));
    }

    /// The call failed: nothing will change.
    pub fn forget_delete(&self, set: &str, uid: &str) {
        self.with(set, |p| p.deletes.remove(uid));
    }

    /// Overlays the expectations on the observed pods (`uids` gives each observed pod's UID)
    /// and drops those the cache now shows fulfilled.
    pub fn adjust(
        &self,
        set: &str,
        observed: &mut Vec<ObservedPod>,
        uids: &HashMap<String, String>,
        now: i64,
    ) {
        self.with(set, |p| {
            let expired = |at: &Instant| at.elapsed() > TTL;
            let present: std::collections::HashSet<&String> = uids.values().collect();
            p.deletes
                .retain(|uid, at| present.contains(uid) && !expired(at));
            for pod in observed.iter_mut() {
                if uids
                    .get(&pod.name)
                    .is_some_and(|uid| p.deletes.contains_key(uid))
                {
                    pod.terminating = true;
                }
            }
            p.creates.retain(|name, (_, _, at)| {
                let seen = uids
                    .get(name)
                    .is_some_and(|uid| !p.deletes.contains_key(uid));
                !seen && at.elapsed() <= CREATE_TTL
            });
            for (name, (ordinal, revision, _)) in &p.creates {
                if !observed.iter().any(|o| &o.name == name) {
                    observed.push(ObservedPod::pending(
                        name.clone(),
                        *ordinal,
                        revision.clone(),
                        now,
                    ));
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ests_core::rollout::Phase;

    fn pod(name: &str, ordinal: i32) -> ObservedPod {
        ObservedPod {
            name: name.into(),
            ordinal,
            revision: "v1".into(),
            phase: Phase::Running,
            terminating: false,
            uid: None,
            ready_since: Some(0),
            unready_since: 0,
            container_error: None,
            held: false,
            leave: None,
        }
    }

    #[test]
    fn a_deleted_pod_still_in_the_cache_is_terminating_until_it_goes() {
        let e = Expectations::default();
        e.expect_delete("ns/web", "uid-1");
        let uids: HashMap<_, _> = [("web-0".to_string(), "uid-1".to_string())].into();
        let mut observed = vec![pod("web-0", 0)];
        e.adjust("ns/web", &mut observed, &uids, 10);
        assert!(observed[0].terminating);
        // Gone from the cache: the expectation is fulfilled and dropped.
        let mut observed = vec![];
        e.adjust("ns/web", &mut observed, &HashMap::new(), 10);
        assert!(e.0.lock().expect("lock").is_empty());
    }

    #[test]
    fn a_created_pod_not_yet_in_the_cache_is_present() {
        let e = Expectations::default();
        e.expect_create("ns/web", "web-1", 1, "v2");
        let mut observed = vec![pod("web-0", 0)];
        e.adjust(
            "ns/web",
            &mut observed,
            &[("web-0".into(), "a".into())].into(),
            10,
        );
        assert_eq!(observed.len(), 2);
        assert_eq!(
            (observed[1].phase, observed[1].revision.as_str()),
            (Phase::Pending, "v2")
        );
        // The old incarnation, being deleted, does not fulfil the create.
        e.expect_delete("ns/web", "old");
        let mut observed = vec![pod("web-1", 1)];
        e.adjust(
            "ns/web",
            &mut observed,
            &[("web-1".into(), "old".into())].into(),
            10,
        );
        assert!(observed[0].terminating);
        // The new one does.
        let mut observed = vec![pod("web-1", 1)];
        e.adjust(
            "ns/web",
            &mut observed,
            &[("web-1".into(), "new".into())].into(),
            10,
        );
        assert_eq!(observed.len(), 1);
        assert!(!observed[0].terminating);
        assert!(e.0.lock().expect("lock").is_empty());
    }
}
