use super::Strategy;
use super::*;
use proptest::prelude::{Just, ProptestConfig, any, prop_assert, prop_oneof, proptest};
use proptest::strategy::Strategy as _;

const NOW: i64 = 10_000;

fn rolling(partition: i32, max_unavailable: i32) -> Strategy {
    Strategy::RollingUpdate {
        partition,
        max_unavailable,
        paused: false,
        stuck_after: 300,
    }
}

fn set(replicas: i32, strategy: Strategy, policy: PodManagementPolicy) -> SetView {
    SetView {
        identities: (0..replicas).collect(),
        start: 0,
        policy,
        strategy,
        min_ready_seconds: 0,
        current_revision: "v1".into(),
        update_revision: "v2".into(),
        replacing: BTreeMap::new(),
    }
}

fn ready(ordinal: i32, revision: &str) -> ObservedPod {
    ObservedPod {
        name: format!("web-{ordinal}"),
        ordinal,
        revision: revision.into(),
        phase: Phase::Running,
        terminating: false,
        uid: Some(format!("uid-{ordinal}")),
        ready_since: Some(NOW - 1000),
        unready_since: NOW - 2000,
        container_error: None,
        held: false,
        leave: None,
    }
}

fn unready(ordinal: i32, revision: &str, since: i64) -> ObservedPod {
    ObservedPod {
        ready_since: None,
        unready_since: since,
        ..ready(ordinal, revision)
    }
}

/// Entries of `replacing` naming the pods `ready` and `unready` make as the ones taken down.
fn replacing(entries: &[(i32, ReplaceReason)]) -> BTreeMap<i32, Replacing> {
    entries
        .iter()
        .map(|&(ordinal, reason)| {
            (
                ordinal,
                Replacing {
                    reason,
                    uid: Some(format!("uid-{ordinal}")),
                },
            )
        })
        .collect()
}

fn deleted(plan: &Plan, reason: DeleteReason) -> Vec<i32> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Delete {
                ordinal, reason: r, ..
            } if *r == reason => Some(*ordinal),
            _ => None,
        })
        .collect()
}

fn created(plan: &Plan) -> Vec<(i32, String)> {
    plan.actions
        .iter()
        .filter_map(|a| match a {
            Action::Create { ordinal, revision } => Some((*ordinal, revision.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn source_document_first_batch_takes_two_from_the_top() {
    let s = set(6, rolling(3, 2), PodManagementPolicy::OrderedReady);
    let pods: Vec<_> = (0..6).map(|o| ready(o, "v1")).collect();
    let p = plan(&s, &pods, NOW);
    assert_eq!(deleted(&p, DeleteReason::Update), vec![5, 4]);
    assert_eq!(p.replacing.keys().copied().collect::<Vec<_>>(), vec![4, 5]);
}

#[test]
fn replaced_pods_come_back_at_once_in_ordered_ready_mode() {
    let mut s = set(6, rolling(3, 2), PodManagementPolicy::OrderedReady);
    s.replacing = replacing(&[(4, ReplaceReason::Update), (5, ReplaceReason::Update)]);
    let pods: Vec<_> = (0..4).map(|o| ready(o, "v1")).collect();
    let p = plan(&s, &pods, NOW);
    assert_eq!(created(&p), vec![(4, "v2".into()), (5, "v2".into())]);
    assert!(
        deleted(&p, DeleteReason::Update).is_empty(),
        "budget spent by the two missing pods"
    );
}

#[test]
fn a_never_ready_updated_pod_still_lets_the_next_one_go() {
    // Source document: pod 4's new incarnation never becomes Ready; 5 is back; 3 updates.
    let s = set(6, rolling(3, 2), PodManagementPolicy::OrderedReady);
    let mut pods: Vec<_> = (0..4).map(|o| ready(o, "v1")).collect();
    pods.push(unready(4, "v2", NOW - 10));
    pods.push(ready(5, "v2"));
    let p = plan(&s, &pods, NOW);
    assert_eq!(deleted(&p, DeleteReason::Update), vec![3]);
}

#[test]
fn broken_pods_block_update_after_partition_lowered() {
    // Source document, variant: two updated pods never Ready stop any further update.
    let s = set(6, rolling(0, 2), PodManagementPolicy::OrderedReady);
    let mut pods: Vec<_> = (0..3).map(|o| ready(o, "v1")).collect();
    pods.push(ready(3, "v2"));
    pods.push(unready(4, "v2", NOW - 10));
    pods.push(unready(5, "v2", NOW - 10));
    let p = plan(&s, &pods, NOW);
    assert!(deleted(&p, DeleteReason::Update).is_empty());
    assert!(p.actions.is_empty(), "{:?}", p.actions);
}

#[test]
fn unavailable_pods_below_the_partition_use_the_budget() {
    let s = set(6, rolling(3, 2), PodManagementPolicy::Parallel);
    let mut pods: Vec<_> = (0..6).map(|o| ready(o, "v1")).collect();
    pods[0] = unready(0, "v1", NOW - 10);
    pods[2].terminating = true;
    let p = plan(&s, &pods, NOW);
    assert!(deleted(&p, DeleteReason::Update).is_empty());
}

#[test]
fn no_update_below_the_partition() {
    let s = set(6, rolling(3, 6), PodManagementPolicy::Parallel);
    let pods: Vec<_> = (0..6).map(|o| ready(o, "v1")).collect();
    let p = plan(&s, &pods, NOW);
    assert_eq!(deleted(&p, DeleteReason::Update), vec![5, 4, 3]);
}

#[test]
fn paused_starts_nothing_but_finishes_recreations_and_scaling() {
    let mut s = set(4, rolling(0, 2), PodManagementPolicy::Parallel);
    if let Strategy::RollingUpdate { paused, .. } = &mut s.strategy {
        *paused = true;
    }
    s.replacing = replacing(&[(3, ReplaceReason::Update)]);
    let mut pods: Vec<_> = (0..3).map(|o| ready(o, "v1")).collect();
    pods.push(ready(7, "v1"));
    pods.push(unready(1, "v1", 0));
    pods[1].container_error = Some("CrashLoopBackOff".into());
    pods.remove(4);
    let p = plan(&s, &pods, NOW);
    assert_eq!(created(&p), vec![(3, "v2".into())]);
    assert_eq!(deleted(&p, DeleteReason::ScaleIn), vec![7]);
    assert!(deleted(&p, DeleteReason::Update).is_empty());
    assert!(deleted(&p, DeleteReason::Stuck).is_empty());
}

#[test]
fn stuck_pods_are_replaced_past_the_budget_up_to_the_cap() {
    // A bad rollout: every updated pod crash-loops. A fixed template makes them outdated
    // (update revision v3); they are replaced although nothing is available.
    let mut s = set(5, rolling(0, 2), PodManagementPolicy::Parallel);
    s.current_revision = "v1".into();
    s.update_revision = "v3".into();
    let pods: Vec<_> = (0..5)
        .map(|o| ObservedPod {
            container_error: Some("CrashLoopBackOff".into()),
            held: false,
            ..unready(o, "v2", NOW - 5)
        })
        .collect();
    let p = plan(&s, &pods, NOW);
    assert_eq!(deleted(&p, DeleteReason::Stuck), vec![4, 3]);
    assert!(deleted(&p, DeleteReason::Update).is_empty());

    // With two in flight, no more until one is back.
    s.replacing = p.replacing.clone();
    let remaining: Vec<_> = pods.into_iter().filter(|p| p.ordinal < 3).collect();
    let p = plan(&s, &remaining, NOW);
    assert!(deleted(&p, DeleteReason::Stuck).is_empty());
    assert_eq!(created(&p), vec![(3, "v3".into()), (4, "v3".into())]);
}

#[test]
fn briefly_unready_pods_are_not_replaced_past_the_budget() {
    // An outage: every pod unready for a minute. Nothing is stuck yet; the budget is spent.
    let s = set(5, rolling(0, 1), PodManagementPolicy::Parallel);
    let pods: Vec<_> = (0..5).map(|o| unready(o, "v1", NOW - 60)).collect();
    let p = plan(&s, &pods, NOW);
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(
        p.requeue_after,
        Some(240),
        "re-plan when the first pod would count as stuck"
    );
}

#[test]
fn ordered_ready_creates_one_identity_at_a_time() {
    let s = set(4, rolling(0, 1), PodManagementPolicy::OrderedReady);
    let p = plan(&s, &[], NOW);
    assert_eq!(created(&p), vec![(0, "v2".into())]);
    let p = plan(&s, &[unready(0, "v2", NOW)], NOW);
    assert!(created(&p).is_empty());
    let p = plan(&s, &[ready(0, "v2"), ready(1, "v2")], NOW);
    assert_eq!(created(&p), vec![(2, "v2".into())]);
}

#[test]
fn parallel_creates_and_scales_in_everything_at_once() {
    let s = set(3, rolling(0, 1), PodManagementPolicy::Parallel);
    let p = plan(&s, &[ready(5, "v1"), ready(4, "v1")], NOW);
    assert_eq!(created(&p).len(), 3);
    assert_eq!(deleted(&p, DeleteReason::ScaleIn), vec![5, 4]);
}

#[test]
fn ordered_ready_scales_in_from_the_top_one_at_a_time() {
    let s = set(2, rolling(0, 1), PodManagementPolicy::OrderedReady);
    let pods = vec![
        ready(0, "v1"),
        ready(1, "v1"),
        ready(2, "v1"),
        ready(3, "v1"),
    ];
    let p = plan(&s, &pods, NOW);
    assert_eq!(deleted(&p, DeleteReason::ScaleIn), vec![3]);
    let mut pods = pods;
    pods[3].terminating = true;
    let p = plan(&s, &pods, NOW);
    assert!(deleted(&p, DeleteReason::ScaleIn).is_empty());
}

#[test]
fn terminal_pods_are_deleted_and_min_ready_seconds_requeues() {
    let mut s = set(2, rolling(0, 1), PodManagementPolicy::Parallel);
    s.min_ready_seconds = 30;
    s.current_revision = "v2".into();
    let mut done = ready(0, "v2");
    done.phase = Phase::Terminal;
    let mut fresh = ready(1, "v2");
    fresh.ready_since = Some(NOW - 10);
    let p = plan(&s, &[done, fresh], NOW);
    assert_eq!(deleted(&p, DeleteReason::Terminal), vec![0]);
    assert_eq!(p.requeue_after, Some(20));
    assert_eq!(p.counts.ready, 1);
    assert_eq!(p.counts.available, 0);
}

#[test]
fn on_delete_replaces_nothing_but_recreates_at_the_update_revision() {
    let s = set(3, Strategy::OnDelete, PodManagementPolicy::Parallel);
    let pods = vec![ready(0, "v1"), ready(1, "v1")];
    let p = plan(&s, &pods, NOW);
    assert_eq!(created(&p), vec![(2, "v2".into())]);
    assert_eq!(p.actions.len(), 1);
}

#[test]
fn start_ordinal_shifts_the_partition() {
    let mut s = set(3, rolling(1, 3), PodManagementPolicy::Parallel);
    s.start = 5;
    s.identities = vec![5, 6, 7];
    let pods = vec![ready(5, "v1"), ready(6, "v1"), ready(7, "v1")];
    let p = plan(&s, &pods, NOW);
    assert_eq!(deleted(&p, DeleteReason::Update), vec![7, 6]);
}

#[test]
fn rollout_complete_counts_only_pods_at_or_above_the_partition() {
    let s = set(4, rolling(2, 1), PodManagementPolicy::Parallel);
    let pods = vec![
        ready(0, "v1"),
        ready(1, "v1"),
        ready(2, "v2"),
        ready(3, "v2"),
    ];
    let p = plan(&s, &pods, NOW);
    assert!(p.counts.rollout_complete);
    assert!(!p.counts.all_updated);
    assert_eq!((p.counts.current, p.counts.updated), (2, 2));
}

/// A simulated cluster for multi-step property tests: pods take a few steps to come up,
/// some never do, deletes take a step to finish.
#[derive(Debug)]
struct Sim {
    set: SetView,
    /// The pods as they are.
    pods: BTreeMap<i32, ObservedPod>,
    /// Pods that are gone but that the controller's cache still shows as they were before
    /// their delete, for a few more steps (a lagging watch, expectations expired, a restart
    /// whose first list is old).
    ghosts: BTreeMap<i32, (ObservedPod, u8)>,
    /// Whether deleted pods may linger as ghosts.
    lag: bool,
    /// Pods of this revision never become Ready.
    bad_revision: Option<String>,
    now: i64,
    /// Pods named after an identity that the set does not control: orphans (None), adopted
    /// when a reconcile starts as `claim_pods` does, unless the adoption fails and ends the
    /// reconcile; and pods released because their labels stopped matching (Some(steps left
    /// before their owner deletes them)). A create of such a name fails (AlreadyExists).
    foreign: BTreeMap<i32, (ObservedPod, Option<u8>)>,
    /// Releases the world may still make.
    releases_left: u8,
    /// The set's resourceVersion, bumped by every status write.
    version: u64,
    /// A second writer (or a cache that lags) plans from this older copy of the set's
    /// `replacing` and version; its status write, conditional on the version, fails, and
    /// nothing it planned is done.
    second_writer: Option<(BTreeMap<i32, Replacing>, u64)>,
}

impl Sim {
    fn step(&mut self, dice: &[u8]) -> Plan {
        // Claim first: orphans are adopted; one whose adoption fails ends the reconcile.
        let orphans: Vec<i32> = self
            .foreign
            .iter()
            .filter(|(_, (_, release))| release.is_none())
            .map(|(o, _)| *o)
            .collect();
        for ordinal in orphans {
            if dice
                .get(ordinal as usize % dice.len().max(1))
                .copied()
                .unwrap_or(0)
                % 4
                == 0
            {
                return self.nothing_done(dice);
            }
            if let Some((pod, _)) = self.foreign.remove(&ordinal) {
                self.pods.insert(ordinal, pod);
            }
        }
        // Which copy of the set plans: the current one, or the second writer's older one.
        let (replacing, read_version) = match &self.second_writer {
            Some((replacing, version)) if dice.first().is_some_and(|d| d % 3 == 0) => {
                (replacing.clone(), *version)
            }
            _ => (self.set.replacing.clone(), self.version),
        };
        if read_version != self.version {
            // Its status write is refused (the resourceVersion moved on): nothing is done.
            return self.nothing_done(dice);
        }
        let mut planning = self.set.clone();
        planning.replacing = replacing;
        // What the planner sees: the pods, and ghosts where no pod is.
        let mut view = self.pods.clone();
        for (ordinal, (ghost, _)) in &self.ghosts {
            view.entry(*ordinal).or_insert_with(|| ghost.clone());
        }
        let pods: Vec<_> = view.values().cloned().collect();
        let max_unavailable = match self.set.strategy {
            Strategy::RollingUpdate {
                max_unavailable, ..
            } => max_unavailable,
            Strategy::OnDelete => i32::MAX,
        };
        let before = plan(&planning, &pods, self.now);
        // The budget is checked against the truth, not against what the planner saw.
        let unavailable_before = self
            .set
            .identities
            .iter()
            .filter(|o| {
                !self.pods.get(o).is_some_and(|p| {
                    !p.terminating && p.available(self.now, self.set.min_ready_seconds)
                })
            })
            .count() as i32;

        // Invariant: one pod per identity; no update below the partition; the budget.
        let mut taken_available = 0;
        for action in &before.actions {
            match action {
                Action::Create { ordinal, .. } => {
                    assert!(
                        !self.pods.contains_key(ordinal),
                        "second pod for identity {ordinal}"
                    );
                }
                Action::Delete {
                    ordinal, reason, ..
                } => {
                    let seen = &view[ordinal];
                    if *reason == DeleteReason::ScaleIn
                        && self.set.policy == PodManagementPolicy::OrderedReady
                    {
                        // Upstream's monotonic scale-in: never while an identity is unhealthy.
                        let healthy = self.set.identities.iter().all(|o| {
                            self.pods
                                .get(o)
                                .is_some_and(|p| p.available(self.now, self.set.min_ready_seconds))
                        });
                        assert!(healthy, "scaled in {ordinal} with an unhealthy identity");
                    }
                    if matches!(
                        reason,
                        DeleteReason::Update | DeleteReason::Stuck | DeleteReason::Maintenance
                    ) {
                        // A delete sent again for a pod taken down earlier was decided then.
                        let again = self
                            .set
                            .replacing
                            .get(ordinal)
                            .is_some_and(|r| r.uid == seen.uid);
                        if let Strategy::RollingUpdate { partition, .. } = self.set.strategy
                            && !again
                            && *reason != DeleteReason::Maintenance
                        {
                            assert!(
                                ordinal - self.set.start >= partition,
                                "{reason:?} below the partition"
                            );
                        }
                        if let Some(pod) = self.pods.get(ordinal)
                            && pod.uid == seen.uid
                            && !pod.terminating
                            && pod.available(self.now, self.set.min_ready_seconds)
                        {
                            taken_available += 1;
                        }
                    }
                }
            }
        }
        assert!(
            unavailable_before + taken_available <= max_unavailable.max(unavailable_before),
            "updates took {taken_available} available pods down with {unavailable_before} unavailable and maxUnavailable {max_unavailable}"
        );
        let stuck = before
            .replacing
            .values()
            .filter(|r| r.reason == ReplaceReason::Stuck)
            .count() as i32;
        assert!(
            stuck <= max_unavailable,
            "{stuck} stuck replacements in flight"
        );

        // A static-IP pod whose record does not hold its address yet is never taken down.
        for action in &before.actions {
            if let Action::Delete {
                ordinal, reason, ..
            } = action
            {
                let held = view.get(ordinal).is_some_and(|p| p.held);
                assert!(
                    !held || *reason == DeleteReason::Terminal,
                    "deleted held pod {ordinal} ({reason:?})"
                );
            }
        }

        // Carry the plan out: the status first (a write at the version read), then the pods.
        if let Some(stale) = self.second_writer.as_mut()
            && dice.get(1).is_some_and(|d| d % 2 == 0)
        {
            // The second copy catches up now and then.
            *stale = (self.set.replacing.clone(), self.version);
        }
        self.set.replacing = before.replacing.clone();
        self.version += 1;
        for action in &before.actions {
            match action {
                Action::Create { ordinal, .. } if self.foreign.contains_key(ordinal) => {
                    // AlreadyExists: the name is taken by a pod the set does not control.
                }
                Action::Create { ordinal, revision } => {
                    let mut pod = ObservedPod::pending(
                        format!("web-{ordinal}"),
                        *ordinal,
                        revision.clone(),
                        self.now,
                    );
                    pod.uid = Some(format!("{ordinal}@{}", self.now));
                    // Static-IP pods: the record learns the address a little later.
                    pod.held = dice
                        .get(*ordinal as usize % dice.len().max(1))
                        .is_some_and(|d| d % 2 == 1);
                    self.pods.insert(*ordinal, pod);
                    self.ghosts.remove(ordinal);
                }
                Action::Delete { ordinal, .. } => {
                    // Deletes name the UID of the pod they mean.
                    if let Some(p) = self.pods.get_mut(ordinal)
                        && p.uid == view[ordinal].uid
                    {
                        p.terminating = true;
                    }
                }
            }
        }
        self.advance(dice);
        before
    }

    /// A reconcile that did nothing; the world moves on. What the current set would plan is
    /// returned (not carried out), so that a caller waiting for a finished rollout keeps going.
    fn nothing_done(&mut self, dice: &[u8]) -> Plan {
        self.advance(dice);
        let pods: Vec<_> = self.pods.values().cloned().collect();
        plan(&self.set, &pods, self.now)
    }

    /// Every identity's name is the set's own (no orphan or released pod holds one).
    fn settled(&self) -> bool {
        self.foreign.is_empty()
    }

    /// The world moves: terminating pods go, pending pods may come up, pods are released and
    /// their owners delete them.
    fn advance(&mut self, dice: &[u8]) {
        self.now += 5;
        let mut i = 0;
        let mut next = || {
            i += 1;
            dice.get(i % dice.len().max(1)).copied().unwrap_or(0)
        };
        self.ghosts.retain(|_, (_, steps)| {
            *steps -= 1;
            *steps > 0
        });
        let gone: Vec<i32> = self
            .pods
            .iter()
            .filter(|(_, p)| p.terminating)
            .map(|(o, _)| *o)
            .collect();
        for ordinal in gone {
            if next() % 4 == 0 {
                continue;
            }
            if let Some(mut pod) = self.pods.remove(&ordinal)
                && self.lag
                && next() % 2 == 0
            {
                pod.terminating = false;
                self.ghosts.insert(ordinal, (pod, 1 + next() % 3));
            }
        }
        for pod in self.pods.values_mut() {
            // Records catch up with their pods at their own pace.
            if pod.held && next() % 2 == 0 {
                pod.held = false;
            } else if !pod.held && next() % 5 == 0 {
                pod.held = true;
            }
            let bad = self.bad_revision.as_deref() == Some(pod.revision.as_str());
            if pod.ready_since.is_none() && !pod.terminating && !bad && next() % 3 != 0 {
                pod.phase = Phase::Running;
                pod.ready_since = Some(self.now);
            } else if bad && pod.phase == Phase::Pending {
                pod.phase = Phase::Running;
                pod.container_error = (next() % 2 == 0).then(|| "CrashLoopBackOff".to_string());
            }
        }
        self.foreign.retain(|_, (_, release)| match release {
            Some(steps) => {
                *steps = steps.saturating_sub(1);
                *steps > 0
            }
            None => true,
        });
        if self.releases_left > 0 && next() % 7 == 0 {
            let running: Vec<i32> = self
                .pods
                .iter()
                .filter(|(_, p)| !p.terminating)
                .map(|(o, _)| *o)
                .collect();
            if let Some(&ordinal) = running.get(usize::from(next()) % running.len().max(1))
                && let Some(pod) = self.pods.remove(&ordinal)
            {
                self.releases_left -= 1;
                self.ghosts.remove(&ordinal);
                self.foreign.insert(ordinal, (pod, Some(1 + next() % 4)));
            }
        }
    }
}

fn arb_sim() -> impl proptest::strategy::Strategy<Value = (Sim, Vec<u8>)> {
    (
        1i32..12,
        0i32..3,
        0i32..14,
        1i32..5,
        any::<bool>(),
        prop_oneof![Just(0i64), Just(10)],
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 64..256),
        0i32..3,
        any::<bool>(),
        (0u8..3, any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(
                replicas,
                start,
                partition,
                max_unavailable,
                parallel,
                min_ready,
                broken,
                dice,
                extra,
                lag,
                (leave, churn, second_writer),
            )| {
                let identities: Vec<i32> = (start..start + replicas).collect();
                // A node migration asks some pods to leave: alone (every other one), or
                // together (as many as the budget allows at once).
                let leave_of = |o: i32| match leave {
                    1 if o % 2 == 0 => Some(Leave::Alone),
                    2 if o - start < max_unavailable => Some(Leave::Together("node-a".into())),
                    _ => None,
                };
                // `extra` pods beyond the identities: a scale-in at the same time.
                let pods = (start..start + replicas + extra)
                    .map(|o| {
                        (
                            o,
                            ObservedPod {
                                name: format!("web-{o}"),
                                ordinal: o,
                                revision: "v1".into(),
                                phase: Phase::Running,
                                terminating: false,
                                uid: Some(format!("{o}@0")),
                                ready_since: Some(0),
                                unready_since: 0,
                                container_error: None,
                                held: false,
                                leave: leave_of(o),
                            },
                        )
                    })
                    .collect();
                let set = SetView {
                    identities,
                    start,
                    policy: if parallel {
                        PodManagementPolicy::Parallel
                    } else {
                        PodManagementPolicy::OrderedReady
                    },
                    strategy: Strategy::RollingUpdate {
                        partition: partition.min(replicas),
                        max_unavailable,
                        paused: false,
                        stuck_after: 60,
                    },
                    min_ready_seconds: min_ready,
                    current_revision: "v1".into(),
                    update_revision: "v2".into(),
                    replacing: BTreeMap::new(),
                };
                let mut pods: BTreeMap<i32, ObservedPod> = pods;
                // Churn: the first identity's pod starts as an orphan (a set re-created after
                // `--cascade=orphan`), and pods are released on the way.
                let mut foreign = BTreeMap::new();
                if churn && let Some(pod) = pods.remove(&start) {
                    foreign.insert(start, (pod, None));
                }
                let sim = Sim {
                    set: set.clone(),
                    pods,
                    ghosts: BTreeMap::new(),
                    lag,
                    bad_revision: broken.then(|| "v2".to_string()),
                    now: 1000,
                    foreign,
                    releases_left: if churn { 3 } else { 0 },
                    version: 0,
                    second_writer: second_writer.then(|| (set.replacing.clone(), 0)),
                };
                (sim, dice)
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Budget, partition, one pod per identity, the stuck cap and ordered scale-in hold at
    /// every step, and a rollout (and a scale-in) whose pods come back finishes.
    #[test]
    fn rollouts_hold_their_bounds_and_finish((mut sim, dice) in arb_sim()) {
        for step in 0..400 {
            let offset = step % dice.len();
            let plan = sim.step(&dice[offset..]);
            let scaled_in = sim.pods.keys().all(|o| sim.set.identities.contains(o));
            let left = sim.pods.values().all(|p| p.leave.is_none());
            if plan.counts.rollout_complete && plan.actions.is_empty() && scaled_in && left && sim.settled() && sim.bad_revision.is_none() {
                break;
            }
        }
        if sim.bad_revision.is_none() {
            let pods: Vec<_> = sim.pods.values().cloned().collect();
            let last = plan(&sim.set, &pods, sim.now + 1000);
            prop_assert!(last.counts.rollout_complete, "rollout did not finish: {:?}", sim);
            let left: Vec<_> = sim
                .pods
                .values()
                .filter(|p| !sim.set.identities.contains(&p.ordinal) && !p.held && !p.terminating)
                .collect();
            prop_assert!(left.is_empty(), "scale-in did not finish: {:?}", sim);
            let asked: Vec<_> = sim
                .pods
                .values()
                .filter(|p| sim.set.identities.contains(&p.ordinal) && p.leave.is_some())
                .collect();
            prop_assert!(asked.is_empty(), "pods asked to leave stayed: {:?}", sim);
        }
    }

    /// A bad rollout stopped by raising the partition: nothing below the new partition is
    /// taken down again, stuck or not (the step checks it), and the stuck pods above it are
    /// still replaced within the cap.
    #[test]
    fn a_raised_partition_stops_stuck_replacements_below_it((mut sim, dice) in arb_sim()) {
        sim.bad_revision = Some("v2".into());
        if let Strategy::RollingUpdate { partition, .. } = &mut sim.set.strategy {
            *partition = 0;
        }
        for step in 0..60 {
            sim.step(&dice[step % dice.len()..]);
            sim.now += 30;
        }
        let raised = i32::try_from(sim.set.identities.len() / 2).unwrap_or(0);
        if let Strategy::RollingUpdate { partition, .. } = &mut sim.set.strategy {
            *partition = raised;
        }
        sim.set.update_revision = "v3".into();
        for step in 0..100 {
            sim.step(&dice[step % dice.len()..]);
            sim.now += 30;
        }
    }

    /// A bad rollout followed by a fixed template recovers without anyone deleting pods.
    #[test]
    fn a_fixed_template_repairs_a_bad_rollout((mut sim, dice) in arb_sim()) {
        sim.bad_revision = Some("v2".into());
        if let Strategy::RollingUpdate { partition, .. } = &mut sim.set.strategy {
            *partition = 0;
        }
        for step in 0..60 {
            sim.step(&dice[step % dice.len()..]);
        }
        // The fix: update revision v3, which comes up.
        sim.set.update_revision = "v3".into();
        for step in 0..600 {
            let plan = sim.step(&dice[step % dice.len()..]);
            if plan.counts.rollout_complete && plan.actions.is_empty() && sim.settled() {
                break;
            }
            sim.now += 30;
        }
        let pods: Vec<_> = sim.pods.values().cloned().collect();
        let last = plan(&sim.set, &pods, sim.now + 1000);
        prop_assert!(last.counts.rollout_complete, "not repaired: {:?}", sim);
    }
}

#[test]
fn held_static_ip_pods_are_not_taken_down() {
    let mut set = set(
        4,
        Strategy::RollingUpdate {
            partition: 0,
            max_unavailable: 2,
            paused: false,
            stuck_after: 60,
        },
        PodManagementPolicy::OrderedReady,
    );
    let mut pods: Vec<ObservedPod> = (0..4).map(|o| ready(o, "v1")).collect();
    pods[3].held = true;
    let plan1 = plan(&set, &pods, NOW);
    assert_eq!(
        deleted(&plan1, DeleteReason::Update),
        vec![2, 1],
        "3 is held: the window moves past it"
    );
    assert_eq!(plan1.held, vec![3]);
    // Scale-in waits for a held pod, in order.
    set.identities = vec![0, 1];
    set.strategy = Strategy::OnDelete;
    let plan2 = plan(&set, &pods, NOW);
    assert_eq!(deleted(&plan2, DeleteReason::ScaleIn), Vec::<i32>::new());
    assert_eq!(plan2.held, vec![3], "the plan says what it waits for");
    pods[3].held = false;
    let plan3 = plan(&set, &pods, NOW);
    assert_eq!(deleted(&plan3, DeleteReason::ScaleIn), vec![3]);
}

#[test]
fn ordered_ready_scale_in_halts_while_any_pod_is_unhealthy() {
    // Upstream: "halt if any stateful pod is unhealthy" before deleting the highest one.
    let s = set(1, rolling(0, 1), PodManagementPolicy::OrderedReady);
    let pods = vec![ready(0, "v2"), unready(1, "v2", NOW - 10), ready(2, "v2")];
    let p = plan(&s, &pods, NOW);
    assert!(
        deleted(&p, DeleteReason::ScaleIn).is_empty(),
        "{:?}",
        p.actions
    );
    // An unready identity halts it too, and so does a missing one.
    let pods = vec![unready(0, "v2", NOW - 10), ready(1, "v2"), ready(2, "v2")];
    let p = plan(&s, &pods, NOW);
    assert!(
        deleted(&p, DeleteReason::ScaleIn).is_empty(),
        "{:?}",
        p.actions
    );
    let p = plan(&s, &[ready(1, "v2"), ready(2, "v2")], NOW);
    assert!(
        deleted(&p, DeleteReason::ScaleIn).is_empty(),
        "{:?}",
        p.actions
    );
    // Once every pod is Ready, scale-in goes on from the top.
    let pods = vec![ready(0, "v2"), ready(1, "v2"), ready(2, "v2")];
    let p = plan(&s, &pods, NOW);
    assert_eq!(deleted(&p, DeleteReason::ScaleIn), vec![2]);
}

#[test]
fn ordered_ready_scale_in_waits_for_min_ready_seconds() {
    let mut s = set(1, rolling(0, 1), PodManagementPolicy::OrderedReady);
    s.min_ready_seconds = 30;
    let mut young = ready(0, "v2");
    young.ready_since = Some(NOW - 5);
    let p = plan(&s, &[young, ready(1, "v2")], NOW);
    assert!(
        deleted(&p, DeleteReason::ScaleIn).is_empty(),
        "{:?}",
        p.actions
    );
}

#[test]
fn an_unhealthy_condemned_pod_goes_once_the_identities_are_healthy() {
    // It serves nothing, so taking it away costs no availability (upstream: "the first
    // unhealthy pod" may go).
    let s = set(1, rolling(0, 1), PodManagementPolicy::OrderedReady);
    let pods = vec![ready(0, "v2"), ready(1, "v2"), unready(2, "v2", NOW - 10)];
    let p = plan(&s, &pods, NOW);
    assert_eq!(deleted(&p, DeleteReason::ScaleIn), vec![2]);
    // Two unhealthy condemned pods do not wait for each other.
    let pods = vec![
        ready(0, "v2"),
        unready(1, "v2", NOW - 10),
        unready(2, "v2", NOW - 10),
    ];
    let p = plan(&s, &pods, NOW);
    assert_eq!(deleted(&p, DeleteReason::ScaleIn), vec![2]);
}

#[test]
fn parallel_scale_in_does_not_wait_for_unhealthy_pods() {
    let s = set(1, rolling(0, 1), PodManagementPolicy::Parallel);
    let pods = vec![unready(0, "v2", NOW - 10), ready(1, "v2"), ready(2, "v2")];
    let p = plan(&s, &pods, NOW);
    assert_eq!(deleted(&p, DeleteReason::ScaleIn), vec![2, 1]);
}

#[test]
fn a_crash_looping_pod_below_a_raised_partition_is_not_replaced() {
    // Pods 2 and 3 were updated to a bad v2 and crash-loop; the partition is raised to 3 to
    // stop the rollout. Pod 2 is now below the partition: it is left alone, as upstream
    // leaves every pod below the partition. Pod 3 is still replaced (at v2, its revision).
    let mut s = set(4, rolling(3, 2), PodManagementPolicy::Parallel);
    s.update_revision = "v3".into();
    let crash = |o| ObservedPod {
        container_error: Some("CrashLoopBackOff".into()),
        ..unready(o, "v2", NOW - 5)
    };
    let pods = vec![ready(0, "v1"), ready(1, "v1"), crash(2), crash(3)];
    let p = plan(&s, &pods, NOW);
    assert_eq!(deleted(&p, DeleteReason::Stuck), vec![3]);
    assert!(!p.replacing.contains_key(&2));
}

#[test]
fn an_identity_being_replaced_counts_against_the_budget_while_its_old_pod_is_still_seen() {
    // Pod 4 was taken down (recorded in `replacing`), but the cache still shows it Ready:
    // a lagging watch, or a restart whose first list is older than the delete. A new
    // template then makes pod 5 outdated too. Pod 4 is gone in truth, so taking 5 down would
    // make two unavailable with maxUnavailable 1.
    let mut s = set(6, rolling(0, 1), PodManagementPolicy::Parallel);
    s.update_revision = "v3".into();
    s.replacing = replacing(&[(4, ReplaceReason::Update)]);
    let mut pods: Vec<_> = (0..5).map(|o| ready(o, "v1")).collect();
    pods.push(ready(5, "v2"));
    let p = plan(&s, &pods, NOW);
    assert!(
        !deleted(&p, DeleteReason::Update).contains(&5),
        "{:?}",
        p.actions
    );
    assert_eq!(p.counts.unavailable, 1);
    assert!(p.replacing.contains_key(&4), "4 is not back");
    assert_eq!(
        deleted(&p, DeleteReason::Update),
        vec![4],
        "the delete of pod 4 is sent again, in case it was lost"
    );

    // It is sent again even after the partition was raised past it: the decision was taken.
    let mut raised = s.clone();
    raised.strategy = rolling(5, 1);
    let p = plan(&raised, &pods, NOW);
    assert_eq!(deleted(&p, DeleteReason::Update), vec![4]);
    assert_eq!(p.counts.unavailable, 1);

    // A new incarnation of 4 (another UID) ends the replacement; 5 may go then.
    pods[4].uid = Some("uid-4-new".into());
    pods[4].revision = "v3".into();
    let p = plan(&s, &pods, NOW);
    assert!(!p.replacing.contains_key(&4));
    assert_eq!(deleted(&p, DeleteReason::Update), vec![5]);

    // An entry without a UID (an older status) ends with any pod not being deleted.
    pods[4] = ready(4, "v1");
    s.replacing = [(
        4,
        Replacing {
            reason: ReplaceReason::Update,
            uid: None,
        },
    )]
    .into();
    let p = plan(&s, &pods, NOW);
    assert!(!p.replacing.contains_key(&4));
}

fn leaving(mut pod: ObservedPod, how: Leave) -> ObservedPod {
    pod.leave = Some(how);
    pod
}

#[test]
fn pods_asked_to_leave_share_the_budget_with_the_rollout() {
    // maxUnavailable 2: the migration's pod goes first, the update window takes the other.
    let s = set(5, rolling(0, 2), PodManagementPolicy::Parallel);
    let mut pods: Vec<_> = (0..5).map(|o| ready(o, "v1")).collect();
    pods[1] = leaving(ready(1, "v1"), Leave::Alone);
    let p = plan(&s, &pods, NOW);
    assert_eq!(deleted(&p, DeleteReason::Maintenance), vec![1]);
    assert_eq!(deleted(&p, DeleteReason::Update), vec![4]);
    assert_eq!(p.replacing[&1].reason, ReplaceReason::Maintenance);
    // Taken down and still seen (a lagging cache): sent again, at no further cost.
    let mut s2 = s.clone();
    s2.replacing = p.replacing.clone();
    let p = plan(&s2, &pods, NOW);
    assert_eq!(deleted(&p, DeleteReason::Maintenance), vec![1]);
    assert_eq!(deleted(&p, DeleteReason::Update), vec![4]);
    assert_eq!(p.counts.unavailable, 2);
}

#[test]
fn a_pod_not_yet_available_for_min_ready_seconds_keeps_a_maintenance_eviction_waiting() {
    // The rollout's new pod has been Ready 3 s of its 10: still unavailable, the budget of
    // one is spent; a migration's request waits (readyReplicas alone would say go).
    let mut s = set(3, rolling(0, 1), PodManagementPolicy::Parallel);
    s.min_ready_seconds = 10;
    let mut fresh = ready(2, "v2");
    fresh.ready_since = Some(NOW - 3);
    let pods = vec![leaving(ready(0, "v1"), Leave::Alone), ready(1, "v1"), fresh];
    let p = plan(&s, &pods, NOW);
    assert!(p.actions.is_empty(), "{p:?}");
    assert_eq!(p.requeue_after, Some(7));
    let p = plan(&s, &pods, NOW + 7);
    assert_eq!(deleted(&p, DeleteReason::Maintenance), vec![0]);
    assert!(deleted(&p, DeleteReason::Update).is_empty());
}

#[test]
fn maintenance_goes_on_when_paused_below_the_partition_and_under_on_delete() {
    let paused = Strategy::RollingUpdate {
        partition: 3,
        max_unavailable: 1,
        paused: true,
        stuck_after: 300,
    };
    for strategy in [paused, Strategy::OnDelete] {
        let s = set(3, strategy, PodManagementPolicy::OrderedReady);
        let pods = vec![
            leaving(ready(0, "v1"), Leave::Alone),
            leaving(ready(1, "v1"), Leave::Alone),
            ready(2, "v1"),
        ];
        let p = plan(&s, &pods, NOW);
        // One at a time (OnDelete's budget is one), from the highest ordinal.
        assert_eq!(
            deleted(&p, DeleteReason::Maintenance),
            vec![1],
            "{strategy:?}"
        );
        assert!(deleted(&p, DeleteReason::Update).is_empty());
    }
}

#[test]
fn pods_asked_to_leave_together_go_at_once_or_not_at_all() {
    let s = set(4, rolling(0, 2), PodManagementPolicy::Parallel);
    let together = Leave::Together("node-a".into());
    let mut pods: Vec<_> = (0..4)
        .map(|o| leaving(ready(o, "v2"), together.clone()))
        .collect();
    pods.truncate(2);
    pods.push(unready(2, "v2", NOW - 5));
    pods.push(ready(3, "v2"));
    // One is down already: two more would make three.
    let p = plan(&s, &pods, NOW);
    assert!(deleted(&p, DeleteReason::Maintenance).is_empty(), "{p:?}");
    pods[2] = ready(2, "v2");
    let p = plan(&s, &pods, NOW);
    assert_eq!(deleted(&p, DeleteReason::Maintenance), vec![1, 0]);
    // A held member (its record does not hold its address yet) keeps the whole group.
    pods[0].held = true;
    let p = plan(&s, &pods, NOW);
    assert!(deleted(&p, DeleteReason::Maintenance).is_empty(), "{p:?}");
    // One of the group already stopping costs nothing more: the rest go.
    pods[0].held = false;
    pods[0].terminating = true;
    let p = plan(&s, &pods, NOW);
    assert_eq!(deleted(&p, DeleteReason::Maintenance), vec![1]);
}

#[test]
fn the_current_revision_advances_only_once_every_identity_is_updated_and_available() {
    let all_v2: Vec<_> = (0..3).map(|o| ready(o, "v2")).collect();
    let mut one_unready = all_v2.clone();
    one_unready[1] = unready(1, "v2", NOW - 10);
    let mut one_outdated = all_v2.clone();
    one_outdated[0] = ready(0, "v1");
    let two_of_three: Vec<_> = all_v2[..2].to_vec();
    let mut fresh = all_v2.clone();
    fresh[2].ready_since = Some(NOW - 5);
    for (case, strategy, min_ready, pods, want) in [
        (
            "all updated and available",
            rolling(0, 1),
            0,
            all_v2.clone(),
            "v2",
        ),
        (
            "an updated pod not ready",
            rolling(0, 1),
            0,
            one_unready,
            "v1",
        ),
        (
            "an identity still outdated",
            rolling(0, 1),
            0,
            one_outdated.clone(),
            "v1",
        ),
        (
            "below a partition, still outdated",
            rolling(1, 1),
            0,
            one_outdated,
            "v1",
        ),
        ("an identity missing", rolling(0, 1), 0, two_of_three, "v1"),
        (
            "ready for less than minReadySeconds",
            rolling(0, 1),
            30,
            fresh,
            "v1",
        ),
        ("OnDelete, all updated", Strategy::OnDelete, 0, all_v2, "v2"),
    ] {
        let mut s = set(3, strategy, PodManagementPolicy::Parallel);
        s.min_ready_seconds = min_ready;
        let p = plan(&s, &pods, NOW);
        assert_eq!(p.current_revision, want, "{case}");
        assert_eq!(p.counts.all_updated, want == "v2", "{case}");
    }
}

#[test]
fn only_a_scale_in_hands_the_claims_to_the_pod() {
    for (reason, hands_over, label) in [
        (DeleteReason::ScaleIn, true, "scale-in"),
        (DeleteReason::Update, false, "update"),
        (DeleteReason::Stuck, false, "stuck"),
        (DeleteReason::Terminal, false, "terminated"),
        (DeleteReason::Maintenance, false, "node migration"),
    ] {
        assert_eq!(reason.hands_over_claims(), hands_over, "{reason:?}");
        assert_eq!(reason.label(), label);
    }
}
