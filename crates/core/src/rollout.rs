//! The rollout planner: given a set and its observed pods, which pods to create and which to
//! delete now. One pure function, [`plan`], that the controller calls on every reconcile.
//!
//! The rules (design: "Rolling update semantics"):
//!
//! - Identities missing a pod get one, at the revision their index calls for: the update
//!   revision at or above the partition, the current revision below it. `OrderedReady`
//!   creates one identity at a time, each after every lower one is Running and Ready, but
//!   never holds back the re-creation of a pod the controller took down itself.
//! - Pods outside the identities are scaled in. `OrderedReady`: highest first, one at a
//!   time, and only while every identity's pod is Running, Ready and Available (upstream:
//!   "halt if any stateful pod is unhealthy"); `Parallel`: all at once, whatever their health.
//! - Failed and Succeeded pods are deleted, to be re-created.
//! - Unavailable pods are counted over the whole set: missing, terminating, not Running and
//!   Ready, or Ready for less than minReadySeconds. Outdated pods at or above the partition
//!   are taken down from the highest ordinal while that count is below maxUnavailable: a
//!   sliding window. Pods taken down are remembered in `replacing` (persisted in the set's
//!   status before any delete) with the UID of the pod taken down, and such an identity
//!   counts as unavailable until a pod other than that one is there: so the bound also holds
//!   across reconciles and restarts, and when a lagging cache still shows the pod taken down
//!   as running (its delete is then sent again, at no further cost to the budget).
//! - A stuck outdated pod at or above the partition (a container waiting with an error, or
//!   unready longer than `stuck_after`) is replaced even when the budget is spent, at most
//!   maxUnavailable such replacements in flight at once. Below the partition nothing is
//!   replaced, stuck or not.
//! - `paused` starts no update and no stuck replacement; everything else goes on.
//! - Pods a node migration asks to leave their node ([`Leave`]) are taken down in the same
//!   budget, before the update window and whatever the strategy, partition or `paused`: the
//!   set's controller is the one writer that takes its pods down, so a rollout and a
//!   maintenance migration together never exceed maxUnavailable
//!   ([`ON_DELETE_MAX_UNAVAILABLE`] under `OnDelete`). Pods
//!   asked to leave together go at once or not at all.

use std::collections::{BTreeMap, BTreeSet};

use ests_api::PodManagementPolicy;

/// Container waiting reasons that mean a pod will not come up without a change.
pub const STUCK_WAITING_REASONS: &[&str] = &[
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// How many pods of an `OnDelete` set a node migration may have down at once (it has no
/// maxUnavailable of its own).
pub const ON_DELETE_MAX_UNAVAILABLE: i32 = 1;

/// Pod phase, as far as planning cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    /// Succeeded or Failed: the pod will never run again.
    Terminal,
}

/// What the planner knows about one pod of the set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedPod {
    pub name: String,
    pub ordinal: i32,
    /// The `controller-revision-hash` label.
    pub revision: String,
    pub phase: Phase,
    /// Being deleted (deletionTimestamp set, or a delete was issued and not yet observed).
    pub terminating: bool,
    /// The pod's UID; None for a pod the controller created and has not seen yet.
    pub uid: Option<String>,
    /// Since when the pod has been Ready (seconds), if it is.
    pub ready_since: Option<i64>,
    /// Since when the pod has been not Ready (seconds; its creation if never Ready).
    pub unready_since: i64,
    /// A container waits with one of [`STUCK_WAITING_REASONS`].
    pub container_error: Option<String>,
    /// A static-IP pod whose record does not hold its address yet: it is not taken down
    /// (update, stuck or scale-in) until it does, or its address would be lost.
    pub held: bool,
    /// A node migration asks that the pod leave its node.
    pub leave: Option<Leave>,
}

/// How a node migration asks a pod to leave its node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Leave {
    /// On its own, whenever the budget allows one more down.
    Alone,
    /// With every pod of the set asking under the same name, at once: pods using one node's
    /// IP blocks, whose routes move only once all of them are gone.
    Together(String),
}

/// Why an identity is being replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReplaceReason {
    /// Taken down by the rolling update, within the budget.
    Update,
    /// A stuck outdated pod, replaced outside the budget.
    Stuck,
    /// Asked to leave its node by a node migration, within the budget.
    Maintenance,
}

/// An identity taken down and not yet back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacing {
    pub reason: ReplaceReason,
    /// The UID of the pod taken down: while a pod with this UID is seen, the identity is not
    /// back, however Ready that pod looks. None in entries written before UIDs were kept,
    /// which any pod not being deleted ends.
    pub uid: Option<String>,
}

/// The update strategy as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    RollingUpdate {
        partition: i32,
        /// Already scaled from an int or percent; at least 1.
        max_unavailable: i32,
        paused: bool,
        /// Seconds an outdated pod may be unready before it counts as stuck.
        stuck_after: i64,
    },
    OnDelete,
}

/// The set as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetView {
    /// The identities' ordinals, ascending.
    pub identities: Vec<i32>,
    /// `ordinals.start`: index = ordinal - start.
    pub start: i32,
    pub policy: PodManagementPolicy,
    pub strategy: Strategy,
    pub min_ready_seconds: i64,
    pub current_revision: String,
    pub update_revision: String,
    /// Identities taken down by earlier reconciles and not yet re-created.
    pub replacing: BTreeMap<i32, Replacing>,
}

/// Why a pod is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// Its ordinal is no longer an identity.
    ScaleIn,
    /// Outdated, taken down within the maxUnavailable budget.
    Update,
    /// Outdated and stuck, replaced outside the budget.
    Stuck,
    /// Failed or Succeeded; it will be re-created.
    Terminal,
    /// Asked to leave its node by a node migration, within the budget: evicted (the
    /// Eviction API, so PodDisruptionBudgets have their say, as in a drain).
    Maintenance,
}

impl DeleteReason {
    /// Whether the pod's claims are handed to it before it is deleted: a scaled-in pod's
    /// identity is outside the set from now on, so under `whenScaled: Delete` its claims go
    /// with it (`pods::claim_owners` says whether they do). Any other delete re-creates the
    /// identity, whose claims stay.
    pub fn hands_over_claims(self) -> bool {
        self == Self::ScaleIn
    }

    /// The reason as a metric label and in the pod's delete event.
    pub fn label(self) -> &'static str {
        match self {
            Self::ScaleIn => "scale-in",
            Self::Update => "update",
            Self::Stuck => "stuck",
            Self::Terminal => "terminated",
            Self::Maintenance => "node migration",
        }
    }
}

/// One step for the controller to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create {
        ordinal: i32,
        revision: String,
    },
    Delete {
        name: String,
        ordinal: i32,
        reason: DeleteReason,
    },
}

/// Counts for the set's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub replicas: i32,
    pub ready: i32,
    pub available: i32,
    pub current: i32,
    pub updated: i32,
    pub updated_ready: i32,
    pub updated_available: i32,
    /// Unavailable identities, the number maxUnavailable bounds.
    pub unavailable: i32,
    /// Every identity at or above the partition is updated and Available.
    pub rollout_complete: bool,
    /// Every identity is on the update revision and Available.
    pub all_updated: bool,
}

/// The planner's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Persist this in status before carrying out any delete.
    pub replacing: BTreeMap<i32, Replacing>,
    pub actions: Vec<Action>,
    /// Plan again after this many seconds even if nothing changes (minReadySeconds, the
    /// stuck grace).
    pub requeue_after: Option<i64>,
    /// Counts over the pods as observed (before the actions).
    pub counts: Counts,
    /// The current revision the status records: the update revision once every identity
    /// runs it and is Available ([`Counts::all_updated`]), else the set's current one.
    pub current_revision: String,
    /// Ordinals of pods due to be taken down (scale-in or update) that are kept because
    /// their static-IP record does not hold their address yet.
    pub held: Vec<i32>,
}

impl SetView {
    fn index(&self, ordinal: i32) -> i32 {
        ordinal - self.start
    }

    /// The revision the pod of `ordinal` should run.
    pub fn target_revision(&self, ordinal: i32) -> &str {
        match self.strategy {
            Strategy::RollingUpdate { partition, .. } if self.index(ordinal) < partition => {
                &self.current_revision
            }
            _ => &self.update_revision,
        }
    }

    fn partition(&self) -> i32 {
        match self.strategy {
            Strategy::RollingUpdate { partition, .. } => partition,
            Strategy::OnDelete => 0,
        }
    }
}

impl ObservedPod {
    /// A pod just created and not yet running, as the controller expects it to appear.
    pub fn pending(
        name: impl Into<String>,
        ordinal: i32,
        revision: impl Into<String>,
        since: i64,
    ) -> Self {
        Self {
            name: name.into(),
            ordinal,
            revision: revision.into(),
            phase: Phase::Pending,
            terminating: false,
            uid: None,
            ready_since: None,
            unready_since: since,
            container_error: None,
            held: false,
            leave: None,
        }
    }

    fn running_and_ready(&self) -> bool {
        self.phase == Phase::Running && !self.terminating && self.ready_since.is_some()
    }

    fn available(&self, now: i64, min_ready_seconds: i64) -> bool {
        self.running_and_ready()
            && self
                .ready_since
                .is_some_and(|since| now - since >= min_ready_seconds)
    }

    fn stuck(&self, now: i64, stuck_after: i64) -> bool {
        !self.terminating
            && self.ready_since.is_none()
            && (self.container_error.is_some() || now - self.unready_since >= stuck_after)
    }
}

/// Decides what to do now. `now` is in seconds, like the pods' timestamps.
pub fn plan(set: &SetView, pods: &[ObservedPod], now: i64) -> Plan {
    let identities: BTreeSet<i32> = set.identities.iter().copied().collect();
    let mut by_ordinal: BTreeMap<i32, &ObservedPod> = BTreeMap::new();
    let mut condemned: Vec<&ObservedPod> = Vec::new();
    for pod in pods {
        if identities.contains(&pod.ordinal) {
            by_ordinal.insert(pod.ordinal, pod);
        } else {
            condemned.push(pod);
        }
    }
    let available = |p: &ObservedPod| p.available(now, set.min_ready_seconds);

    // An identity is back once a pod exists for it that is not being deleted and is not the
    // pod that was taken down. The pod taken down may still be seen alive: a watch that lags
    // behind the delete, a first list after a restart that is older than it, or a delete
    // that was never sent (the process died after recording it). Which of these it is cannot
    // be told, so the identity still counts against the budget and the delete is sent again
    // (naming the pod's UID, so it is a no-op if the pod is gone). It is sent even if the
    // partition, the template or `paused` changed since: the decision was taken, and the
    // pod would have gone already had the first delete been seen; giving it up while the
    // pod may in truth be gone would count a missing pod as available. A held pod waits.
    let mut again: Vec<(&ObservedPod, DeleteReason)> = Vec::new();
    let mut replacing = set.replacing.clone();
    replacing.retain(|ordinal, entry| {
        if !identities.contains(ordinal) {
            return false;
        }
        let Some(pod) = by_ordinal.get(ordinal) else {
            return true;
        };
        if pod.terminating {
            return true;
        }
        if entry.uid.is_none() || pod.uid != entry.uid {
            return false;
        }
        if pod.phase != Phase::Terminal && !pod.held {
            // (A terminal pod is deleted below, as every terminal pod is.)
            again.push((
                pod,
                match entry.reason {
                    ReplaceReason::Update => DeleteReason::Update,
                    ReplaceReason::Stuck => DeleteReason::Stuck,
                    ReplaceReason::Maintenance => DeleteReason::Maintenance,
                },
            ));
        }
        true
    });
    let counts = count(set, &by_ordinal, &condemned, &replacing, now);

    let mut actions: Vec<Action> = again
        .iter()
        .map(|(pod, reason)| delete(pod, *reason))
        .collect();
    let mut requeue: Option<i64> = None;
    let mut requeue_in = |seconds: i64| {
        let seconds = seconds.max(1);
        requeue = Some(requeue.map_or(seconds, |r: i64| r.min(seconds)));
    };

    // Terminal pods go, to be re-created at the revision their index calls for.
    for pod in by_ordinal
        .values()
        .filter(|p| p.phase == Phase::Terminal && !p.terminating)
    {
        actions.push(Action::Delete {
            name: pod.name.clone(),
            ordinal: pod.ordinal,
            reason: DeleteReason::Terminal,
        });
    }

    // Missing identities get pods.
    let mut lower_all_ready = true;
    for &ordinal in &set.identities {
        match by_ordinal.get(&ordinal) {
            Some(pod) => {
                lower_all_ready &= pod.running_and_ready() && !replacing.contains_key(&ordinal);
            }
            None => {
                let ordered = set.policy == PodManagementPolicy::OrderedReady;
                if !ordered || replacing.contains_key(&ordinal) || lower_all_ready {
                    actions.push(Action::Create {
                        ordinal,
                        revision: set.target_revision(ordinal).to_string(),
                    });
                }
                if ordered && !replacing.contains_key(&ordinal) {
                    // One new identity at a time, each after every lower one is Ready.
                    lower_all_ready = false;
                }
            }
        }
    }

    // Pods outside the identities are scaled in.
    condemned.sort_by_key(|p| std::cmp::Reverse(p.ordinal));
    match set.policy {
        PodManagementPolicy::Parallel => {
            for pod in condemned.iter().filter(|p| !p.terminating && !p.held) {
                actions.push(delete(pod, DeleteReason::ScaleIn));
            }
        }
        PodManagementPolicy::OrderedReady => {
            // As upstream's monotonic mode ("before a scaling operation is applied to a
            // Pod, all of its predecessors must be Running and Ready"): no scale-in while
            // any identity is missing, terminating or not Available, nor while a condemned
            // pod is still going. The highest condemned pod then goes if every condemned
            // pod below it is Available, or if it is not Available itself: a pod that
            // serves nothing costs no availability when it goes (upstream lets only the
            // lowest unhealthy pod go, and so waits for ever on two).
            let identities_healthy = set.identities.iter().all(|o| {
                !replacing.contains_key(o) && by_ordinal.get(o).is_some_and(|p| available(p))
            });
            if identities_healthy
                && !condemned.iter().any(|p| p.terminating)
                && let Some((highest, below)) = condemned.split_first()
                && !highest.held
                && (!available(highest) || below.iter().all(|p| available(p)))
            {
                actions.push(delete(highest, DeleteReason::ScaleIn));
            }
        }
    }

    // Pods asked to leave their node, in the budget the update window then shares.
    let mut unavailable = counts.unavailable;
    let budget = match set.strategy {
        Strategy::RollingUpdate {
            max_unavailable, ..
        } => max_unavailable,
        Strategy::OnDelete => ON_DELETE_MAX_UNAVAILABLE,
    };
    for group in leaving(&by_ordinal, &replacing) {
        let cost = group.iter().filter(|p| available(p)).count() as i32;
        if cost > 0 && unavailable + cost > budget {
            // In order: a later, smaller request does not overtake one that waits.
            break;
        }
        unavailable += cost;
        for pod in group {
            actions.push(delete(pod, DeleteReason::Maintenance));
            replacing.insert(pod.ordinal, taken_down(pod, ReplaceReason::Maintenance));
        }
    }

    if let Strategy::RollingUpdate {
        partition,
        max_unavailable,
        paused,
        stuck_after,
    } = set.strategy
    {
        // Ready pods that are not yet Available become so without any event.
        for pod in by_ordinal.values() {
            if let Some(since) = pod.ready_since
                && pod.running_and_ready()
                && !available(pod)
            {
                requeue_in(since + set.min_ready_seconds - now);
            }
        }
        if !paused {
            // Identities already being replaced are counted in `unavailable` and their
            // pods' deletes are sent above.
            let outdated: Vec<&ObservedPod> = by_ordinal
                .values()
                .rev()
                .copied()
                .filter(|p| {
                    !p.terminating
                        && !p.held
                        && p.phase != Phase::Terminal
                        && p.revision != set.target_revision(p.ordinal)
                        && !replacing.contains_key(&p.ordinal)
                })
                .collect();

            // Stuck pods first: they do not need the budget, only a free replacement slot.
            let mut stuck_in_flight = replacing
                .values()
                .filter(|r| r.reason == ReplaceReason::Stuck)
                .count() as i32;
            let mut taken: BTreeSet<i32> = BTreeSet::new();
            // Only at or above the partition: a raised partition stops stuck replacements
            // too, as it stops every change below it upstream (re-creating such a pod would
            // move it to the current revision, which the user did not ask for).
            for pod in outdated
                .iter()
                .filter(|p| set.index(p.ordinal) >= partition)
            {
                if pod.stuck(now, stuck_after) {
                    if stuck_in_flight < max_unavailable {
                        actions.push(delete(pod, DeleteReason::Stuck));
                        replacing.insert(pod.ordinal, taken_down(pod, ReplaceReason::Stuck));
                        taken.insert(pod.ordinal);
                        stuck_in_flight += 1;
                    }
                } else if pod.ready_since.is_none() {
                    requeue_in(pod.unready_since + stuck_after - now);
                }
            }

            // Then the sliding window, from the highest ordinal down.
            for pod in outdated
                .iter()
                .filter(|p| set.index(p.ordinal) >= partition && !taken.contains(&p.ordinal))
            {
                if unavailable >= max_unavailable {
                    break;
                }
                if available(pod) {
                    unavailable += 1;
                }
                actions.push(delete(pod, DeleteReason::Update));
                replacing.insert(pod.ordinal, taken_down(pod, ReplaceReason::Update));
            }
        }
    }

    // Pods that are due to go but are kept for their static IP, so that a stalled rollout
    // can say why.
    let mut held: Vec<i32> = condemned
        .iter()
        .filter(|p| p.held && !p.terminating)
        .map(|p| p.ordinal)
        .collect();
    if let Strategy::RollingUpdate {
        partition, paused, ..
    } = set.strategy
        && !paused
    {
        held.extend(
            by_ordinal
                .values()
                .filter(|p| {
                    p.held
                        && !p.terminating
                        && p.phase != Phase::Terminal
                        && set.index(p.ordinal) >= partition
                        && p.revision != set.target_revision(p.ordinal)
                })
                .map(|p| p.ordinal),
        );
    }
    held.sort_unstable();

    Plan {
        replacing,
        actions,
        requeue_after: requeue,
        current_revision: current_after(set, &counts).to_string(),
        counts,
        held,
    }
}

/// The current revision moves on to the update revision once every identity runs it and is
/// Available; until then pods below the partition are made at the current one.
fn current_after<'a>(set: &'a SetView, counts: &Counts) -> &'a str {
    if counts.all_updated {
        &set.update_revision
    } else {
        &set.current_revision
    }
}

/// The pods asked to leave their node, by request: each `Together` name's pods as one group
/// (by name), then the `Alone` ones from the highest ordinal down, as the update window goes.
/// Pods already going, terminal or held wait (a held pod's address is not in its record yet).
fn leaving<'a>(
    by_ordinal: &BTreeMap<i32, &'a ObservedPod>,
    replacing: &BTreeMap<i32, Replacing>,
) -> Vec<Vec<&'a ObservedPod>> {
    let mut together: BTreeMap<&str, Vec<&ObservedPod>> = BTreeMap::new();
    let mut alone = Vec::new();
    for pod in by_ordinal.values().rev().copied() {
        match &pod.leave {
            Some(Leave::Together(name)) => together.entry(name).or_default().push(pod),
            Some(Leave::Alone) => alone.push(vec![pod]),
            None => {}
        }
    }
    let ready_to_go = |p: &&ObservedPod| {
        !p.terminating
            && !p.held
            && p.phase != Phase::Terminal
            && !replacing.contains_key(&p.ordinal)
    };
    together
        .into_values()
        .filter_map(|group| {
            // A group goes only whole: while one of it is held, none goes; those already
            // going are counted in `unavailable`.
            if group.iter().any(|p| p.held && !p.terminating) {
                return None;
            }
            let group: Vec<_> = group.into_iter().filter(ready_to_go).collect();
            (!group.is_empty()).then_some(group)
        })
        .chain(alone.into_iter().filter(|g| g.iter().all(ready_to_go)))
        .collect()
}

fn taken_down(pod: &ObservedPod, reason: ReplaceReason) -> Replacing {
    Replacing {
        reason,
        uid: pod.uid.clone(),
    }
}

fn delete(pod: &ObservedPod, reason: DeleteReason) -> Action {
    Action::Delete {
        name: pod.name.clone(),
        ordinal: pod.ordinal,
        reason,
    }
}

fn count(
    set: &SetView,
    by_ordinal: &BTreeMap<i32, &ObservedPod>,
    condemned: &[&ObservedPod],
    replacing: &BTreeMap<i32, Replacing>,
    now: i64,
) -> Counts {
    let mut c = Counts::default();
    for pod in by_ordinal.values().chain(condemned.iter()) {
        if pod.terminating {
            continue;
        }
        c.replicas += 1;
        let ready = pod.running_and_ready();
        let available = pod.available(now, set.min_ready_seconds);
        c.ready += i32::from(ready);
        c.available += i32::from(available);
        if pod.revision == set.current_revision {
            c.current += 1;
        }
        if pod.revision == set.update_revision {
            c.updated += 1;
            c.updated_ready += i32::from(ready);
            c.updated_available += i32::from(available);
        }
    }
    let partition = set.partition();
    let mut complete = true;
    let mut all_updated = true;
    for &ordinal in &set.identities {
        let good = by_ordinal.get(&ordinal).is_some_and(|p| {
            p.revision == set.update_revision && p.available(now, set.min_ready_seconds)
        });
        // An identity being replaced is unavailable even while the pod taken down is
        // still seen Ready.
        if replacing.contains_key(&ordinal)
            || !by_ordinal
                .get(&ordinal)
                .is_some_and(|p| p.available(now, set.min_ready_seconds))
        {
            c.unavailable += 1;
        }
        all_updated &= good;
        if set.index(ordinal) >= partition {
            complete &= good;
        }
    }
    c.rollout_complete = complete;
    c.all_updated = all_updated;
    c
}

#[cfg(test)]
mod tests;
