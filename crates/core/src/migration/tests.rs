use super::*;
use proptest::prelude::*;

fn cpu(milli: i128) -> Resources {
    Resources::from([("cpu".to_string(), milli)])
}

fn world(ready: bool) -> Observed {
    Observed {
        source: "a".into(),
        source_exists: true,
        source_ready: ready,
        target: Some("b".into()),
        target_exists: true,
        fits: Some(Ok(())),
        blocks_on_source: vec!["blk-1".into()],
        records: vec![RecordFacts {
            key: "ns/db-0".into(),
            node: Some("a".into()),
            ips: vec!["10.40.0.2".into()],
            running_on_target: false,
            pending_pinned_to: None,
            set: Some("ns/db".into()),
        }],
        pods_on_source: vec![SourcePod {
            key: "ns/db-0".into(),
            static_ip: true,
            set: Some("ns/db".into()),
            terminating: false,
            range_mode: true,
            leave: None,
        }],
        max_unavailable: BTreeMap::from([("ns/db".to_string(), 1)]),
        ..Observed::default()
    }
}

#[test]
fn target_room_is_checked_before_anything_moves() {
    let allocatable = Resources::from([("cpu".to_string(), 2000), ("pods".to_string(), 10_000)]);
    assert_eq!(
        fits(&allocatable, &cpu(500), &[cpu(500), cpu(1000)]),
        Ok(())
    );
    assert_eq!(
        fits(&allocatable, &cpu(1000), &[cpu(500), cpu(1000)]),
        Err("the target has 1000m cpu free, the source's static-IP pods need 1500m cpu".into())
    );
    let mut o = world(false);
    o.fits = Some(Err("no room".into()));
    let p = plan(&o);
    assert_eq!(p.phase, MigrationPhase::Refused);
    assert_eq!(p.waiting.as_deref(), Some("no room"));
    assert!(p.actions.iter().all(|a| matches!(a, Action::Start { .. })));
    o.fits = None;
    assert_eq!(plan(&o).phase, MigrationPhase::Pending);
}

#[test]
fn a_not_ready_source_is_fenced_before_anything_else() {
    let o = world(false);
    let p = plan(&o);
    assert_eq!(p.phase, MigrationPhase::Fencing);
    assert_eq!(
        p.actions,
        [
            Action::Start {
                target: "b".into(),
                mode: MigrationMode::Failure
            },
            Action::Fence
        ]
    );
    // The hook said no (still not fenced): the same plan, nothing released.
    let mut o = o;
    o.mode = Some(MigrationMode::Failure);
    assert_eq!(plan(&o).actions, [Action::Fence]);
}

/// Whether the plan moves routes or blocks.
fn moves_network_or_blocks(p: &Plan) -> bool {
    p.actions
        .iter()
        .any(|a| matches!(a, Action::MoveNetwork | Action::MoveBlock(_)))
}

fn pod(key: &str, range_mode: bool) -> SourcePod {
    SourcePod {
        key: key.into(),
        static_ip: true,
        set: Some("ns/db".into()),
        terminating: false,
        range_mode,
        leave: None,
    }
}

fn record(key: &str, ip: &str) -> RecordFacts {
    RecordFacts {
        key: key.into(),
        node: Some("a".into()),
        ips: vec![ip.into()],
        running_on_target: false,
        pending_pinned_to: None,
        set: Some("ns/db".into()),
    }
}

#[test]
fn a_fenced_source_force_deletes_its_pods_before_moving_routes_and_blocks() {
    let mut o = world(false);
    o.mode = Some(MigrationMode::Failure);
    o.fenced = true;
    // Its range-mode pod is Running in the API: released first, nothing moves yet.
    let p = plan(&o);
    assert_eq!(
        p.actions,
        [Action::Taint, Action::ForceDelete("ns/db-0".into())]
    );
    assert_eq!(p.phase, MigrationPhase::Moving);
    assert!(
        p.waiting
            .as_deref()
            .is_some_and(|w| w.contains("still use its IP blocks")),
        "{p:?}"
    );
    // Being deleted is not gone: on a fenced node it never finishes by itself.
    o.source_tainted = true;
    o.pods_on_source[0].terminating = true;
    let p = plan(&o);
    assert_eq!(p.actions, [Action::ForceDelete("ns/db-0".into())]);
    // Gone, and re-created pinned to the source meanwhile: the routes move, then the blocks
    // and records, and the pinned pod is made again with the new pin.
    o.pods_on_source.clear();
    o.records[0].pending_pinned_to = Some("a".into());
    assert_eq!(plan(&o).actions, [Action::MoveNetwork]);
    o.network_moved = true;
    let p = plan(&o);
    assert_eq!(
        p.actions,
        [
            Action::MoveBlock("blk-1".into()),
            Action::MoveRecord("ns/db-0".into()),
            Action::Recreate("ns/db-0".into()),
        ]
    );
    assert_eq!(p.phase, MigrationPhase::Moving);
    // Moved, running on the target: the source goes, then done.
    o.blocks_on_source.clear();
    o.records[0].node = Some("b".into());
    o.records[0].pending_pinned_to = None;
    o.records[0].running_on_target = true;
    o.moved_blocks = 1;
    assert_eq!(plan(&o).actions, [Action::DeleteSource]);
    o.source_exists = false;
    let done = plan(&o);
    assert_eq!(done.phase, MigrationPhase::Completed);
    assert_eq!(done.waiting, None);
}

#[test]
fn record_mode_pods_of_a_fenced_source_go_once_their_records_point_to_the_target() {
    // No pod uses the blocks: the routes move at once, and each record-mode pod is released
    // after its record moved, so that it comes back on the target straight away.
    let mut o = world(false);
    o.mode = Some(MigrationMode::Failure);
    o.fenced = true;
    o.pods_on_source[0].range_mode = false;
    assert_eq!(plan(&o).actions, [Action::MoveNetwork]);
    o.network_moved = true;
    assert_eq!(
        plan(&o).actions,
        [
            Action::MoveBlock("blk-1".into()),
            Action::MoveRecord("ns/db-0".into()),
            Action::Taint,
            Action::ForceDelete("ns/db-0".into()),
        ]
    );
    // With no static-IP pod left, the taint still releases the node's other pods.
    o.pods_on_source.clear();
    assert!(plan(&o).actions.contains(&Action::Taint));
}

#[test]
fn maintenance_cordons_and_evicts_before_moving_routes_and_blocks() {
    let mut o = world(true);
    o.mode = Some(MigrationMode::Maintenance);
    let p = plan(&o);
    let together = Leave::Together("a".into());
    assert_eq!(
        p.actions,
        [
            Action::Cordon,
            Action::AskToLeave("ns/db-0".into(), together.clone())
        ],
        "{p:?}"
    );
    assert!(!moves_network_or_blocks(&p));
    // Asked: not again.
    o.source_cordoned = true;
    o.pods_on_source[0].leave = Some(together);
    assert!(plan(&o).actions.is_empty());
    // Evicted by its set, still stopping (and serving at its address): nothing moves.
    o.pods_on_source[0].terminating = true;
    let p = plan(&o);
    assert!(p.actions.is_empty(), "{p:?}");
    assert!(
        p.waiting
            .as_deref()
            .is_some_and(|w| w.contains("still use its IP blocks")),
        "{p:?}"
    );
    // Gone; its successor waits, pinned to the cordoned source.
    o.pods_on_source.clear();
    o.records[0].pending_pinned_to = Some("a".into());
    assert_eq!(plan(&o).actions, [Action::MoveNetwork]);
    o.network_moved = true;
    assert_eq!(
        plan(&o).actions,
        [
            Action::MoveBlock("blk-1".into()),
            Action::MoveRecord("ns/db-0".into()),
            Action::Recreate("ns/db-0".into()),
        ]
    );
}

#[test]
fn maintenance_asks_a_blocks_pods_to_leave_together_and_refuses_what_no_budget_allows() {
    // Three range-mode pods of one set on the source; their routes move at once, so all
    // three must be down together: they are asked to leave together (their set's controller
    // takes them down at once when its budget allows, see the rollout planner).
    let mut o = world(true);
    o.mode = Some(MigrationMode::Maintenance);
    o.source_cordoned = true;
    o.records = (0..3)
        .map(|i| record(&format!("ns/db-{i}"), &format!("10.40.0.{}", i + 2)))
        .collect();
    o.pods_on_source = (0..3).map(|i| pod(&format!("ns/db-{i}"), true)).collect();
    let asked = |p: &Plan| {
        p.actions
            .iter()
            .filter(|a| matches!(a, Action::AskToLeave(_, Leave::Together(g)) if g == "a"))
            .count()
    };
    o.max_unavailable = BTreeMap::from([("ns/db".to_string(), 3)]);
    let p = plan(&o);
    assert_eq!(asked(&p), 3, "{p:?}");
    assert_eq!(p.phase, MigrationPhase::Moving);
    // The set can never have three down: refused before anything is touched.
    o.max_unavailable = BTreeMap::from([("ns/db".to_string(), 2)]);
    o.source_cordoned = false;
    let p = plan(&o);
    assert_eq!(p.phase, MigrationPhase::Refused);
    assert!(p.actions.is_empty(), "{p:?}");
    assert!(
        p.waiting
            .as_deref()
            .is_some_and(|w| w.contains("maxUnavailable")),
        "{p:?}"
    );
    // One stopped already and waiting pinned to the source counts with the rest: two left
    // to stop and one down make three, within a budget of three.
    o.max_unavailable = BTreeMap::from([("ns/db".to_string(), 3)]);
    o.pods_on_source.remove(0);
    o.records[0].pending_pinned_to = Some("a".into());
    assert_eq!(asked(&plan(&o)), 2);
    o.max_unavailable = BTreeMap::from([("ns/db".to_string(), 2)]);
    assert_eq!(plan(&o).phase, MigrationPhase::Refused);
    // A pod of no set has no budget to wait for: evicted.
    o.max_unavailable = BTreeMap::from([("ns/db".to_string(), 3)]);
    o.pods_on_source[0].set = None;
    assert!(plan(&o).actions.contains(&Action::Evict("ns/db-1".into())));
}

#[test]
fn maintenance_evicts_record_mode_pods_within_max_unavailable_and_never_fences() {
    let mut o = world(true);
    o.pods_on_source[0].range_mode = false;
    o.pods_on_source.push(pod("ns/db-1", false));
    let p = plan(&o);
    assert!(!p.actions.contains(&Action::Fence));
    assert!(p.actions.contains(&Action::Start {
        target: "b".into(),
        mode: MigrationMode::Maintenance
    }));
    o.mode = Some(MigrationMode::Maintenance);
    o.network_moved = true;
    let p = plan(&o);
    assert!(p.actions.contains(&Action::Cordon));
    assert!(!p.actions.contains(&Action::Taint));
    // Both are asked; their set's controller takes them down one at a time.
    let asked: Vec<&Action> = p
        .actions
        .iter()
        .filter(|a| matches!(a, Action::AskToLeave(..) | Action::Evict(_)))
        .collect();
    assert_eq!(
        asked,
        [
            &Action::AskToLeave("ns/db-0".into(), Leave::Alone),
            &Action::AskToLeave("ns/db-1".into(), Leave::Alone)
        ]
    );
    assert!(
        !p.actions
            .iter()
            .any(|a| matches!(a, Action::ForceDelete(_)))
    );
    // Its record moves first, so that it comes back on the target.
    let record_moved = p
        .actions
        .iter()
        .position(|a| a == &Action::MoveRecord("ns/db-0".into()));
    let evict = p
        .actions
        .iter()
        .position(|a| a == &Action::AskToLeave("ns/db-0".into(), Leave::Alone));
    assert!(record_moved < evict, "{p:?}");
}

#[test]
fn pending_pods_pinned_to_the_source_are_recreated() {
    let mut o = world(false);
    o.mode = Some(MigrationMode::Failure);
    o.fenced = true;
    o.network_moved = true;
    o.records[0].node = Some("b".into());
    o.records[0].pending_pinned_to = Some("a".into());
    o.pods_on_source.clear();
    o.blocks_on_source.clear();
    assert!(
        plan(&o)
            .actions
            .contains(&Action::Recreate("ns/db-0".into()))
    );
}

#[test]
fn no_target_waits_and_says_how_to_name_one() {
    let mut o = world(false);
    o.target = None;
    let p = plan(&o);
    assert_eq!(p.phase, MigrationPhase::Pending);
    assert!(p.actions.is_empty());
    assert!(p.waiting.is_some_and(|w| w.contains("replacement-for")));
}

/// A model cluster the plans are carried out in, with crashes anywhere.
#[derive(Debug, Clone, Default)]
struct Model {
    o: Observed,
    /// The fencing hook's answer.
    hook_says_yes: bool,
    /// Whether something of the source was released before it was fenced.
    released_unfenced: bool,
    moved_before_network: bool,
    /// Whether routes or a block moved while a range-mode pod of the source still ran (or
    /// was still stopping) there.
    moved_while_used: bool,
    /// Whether, in maintenance, a set had more pods down than its maxUnavailable.
    over_budget: bool,
    /// The set's controller's `status.replacing`, kept between its passes.
    replacing: BTreeMap<i32, crate::rollout::Replacing>,
}

impl Model {
    fn new(o: Observed) -> Self {
        Self {
            o,
            hook_says_yes: true,
            ..Self::default()
        }
    }

    fn in_use(&self) -> bool {
        self.o
            .pods_on_source
            .iter()
            .any(|p| p.static_ip && p.range_mode)
    }

    /// In maintenance, the set may never have more identities down than its maxUnavailable:
    /// an identity is up while its pod runs on the source (not stopping) or on the target.
    fn check_budget(&mut self) {
        if self.o.mode != Some(MigrationMode::Maintenance) {
            return;
        }
        let down = self
            .o
            .records
            .iter()
            .filter(|r| {
                !r.running_on_target
                    && !self
                        .o
                        .pods_on_source
                        .iter()
                        .any(|p| p.key == r.key && !p.terminating)
            })
            .count() as i32;
        if down > self.o.max_unavailable["ns/db"] {
            self.over_budget = true;
        }
    }

    /// The set's controller: the rollout planner over the set's pods as they are, carrying
    /// out its maintenance evictions (the only way a set's pod leaves in maintenance).
    fn controller(&mut self) {
        use crate::rollout::{self, DeleteReason, ObservedPod, Phase, SetView, Strategy};
        let ordinal = |key: &str| -> i32 {
            key.rsplit_once('-')
                .and_then(|(_, o)| o.parse().ok())
                .expect("key ns/db-<ordinal>")
        };
        let pods: Vec<ObservedPod> = self
            .o
            .records
            .iter()
            .map(|r| {
                let i = ordinal(&r.key);
                let mut pod = ObservedPod::pending(format!("db-{i}"), i, "v1", 0);
                let on_source = self.o.pods_on_source.iter().find(|p| p.key == r.key);
                let (uid, up) = match on_source {
                    Some(p) => {
                        pod.terminating = p.terminating;
                        pod.leave = p.leave.clone();
                        ("source", true)
                    }
                    None if r.running_on_target => ("target", true),
                    None => ("pending", false),
                };
                pod.uid = Some(format!("{i}@{uid}"));
                if up {
                    pod.phase = Phase::Running;
                    pod.ready_since = Some(0);
                }
                pod
            })
            .collect();
        let view = SetView {
            identities: pods.iter().map(|p| p.ordinal).collect(),
            start: 0,
            policy: ests_api::PodManagementPolicy::Parallel,
            strategy: Strategy::RollingUpdate {
                partition: 0,
                max_unavailable: self.o.max_unavailable["ns/db"],
                paused: false,
                stuck_after: 1 << 40,
            },
            min_ready_seconds: 0,
            current_revision: "v1".into(),
            update_revision: "v1".into(),
            replacing: self.replacing.clone(),
        };
        let plan = rollout::plan(&view, &pods, 1);
        self.replacing = plan.replacing;
        for action in plan.actions {
            if let rollout::Action::Delete {
                ordinal,
                reason: DeleteReason::Maintenance,
                ..
            } = action
                && let Some(p) = self
                    .o
                    .pods_on_source
                    .iter_mut()
                    .find(|p| p.key == format!("ns/db-{ordinal}"))
            {
                p.terminating = true;
            }
        }
        self.check_budget();
    }

    /// A pod of the source left the API: the controller makes it again at once, and the
    /// webhook pins it to its record's node.
    fn gone(&mut self, key: &str) {
        self.o.pods_on_source.retain(|p| p.key != key);
        for r in &mut self.o.records {
            if r.key == key {
                r.pending_pinned_to = r.node.clone();
            }
        }
    }

    fn apply(&mut self, action: &Action) {
        match action {
            Action::Start { target, mode } => {
                self.o.target = Some(target.clone());
                self.o.mode = Some(*mode);
            }
            Action::Escalate => self.o.mode = Some(MigrationMode::Failure),
            Action::Fence => {
                if self.hook_says_yes || self.o.confirm_fenced {
                    self.o.fenced = true;
                }
            }
            Action::MoveNetwork => {
                if self.in_use() {
                    self.moved_while_used = true;
                }
                self.o.network_moved = true;
            }
            Action::MoveBlock(b) => {
                if !self.o.network_moved {
                    self.moved_before_network = true;
                }
                if self.in_use() {
                    self.moved_while_used = true;
                }
                self.o.blocks_on_source.retain(|x| x != b);
                self.o.moved_blocks += 1;
            }
            Action::MoveRecord(k) => {
                if !self.o.network_moved {
                    self.moved_before_network = true;
                }
                let target = self.o.target.clone();
                for r in &mut self.o.records {
                    if &r.key == k {
                        r.node = target.clone();
                    }
                }
            }
            Action::Taint => {
                if !self.o.fenced {
                    self.released_unfenced = true;
                }
                self.o.source_tainted = true;
            }
            Action::Cordon => self.o.source_cordoned = true,
            Action::ForceDelete(k) => {
                if !self.o.fenced {
                    self.released_unfenced = true;
                }
                if self.o.pods_on_source.iter().any(|p| &p.key == k) {
                    self.gone(k);
                }
            }
            Action::Evict(k) => {
                // Stopping: it leaves the API once its node has stopped it.
                let pod = self
                    .o
                    .pods_on_source
                    .iter_mut()
                    .find(|p| &p.key == k && !p.terminating);
                if let Some(p) = pod {
                    p.terminating = true;
                }
            }
            Action::AskToLeave(k, how) => {
                if let Some(p) = self.o.pods_on_source.iter_mut().find(|p| &p.key == k) {
                    p.leave = Some(how.clone());
                }
            }
            Action::Recreate(k) => {
                for r in &mut self.o.records {
                    if &r.key == k && r.pending_pinned_to.is_some() {
                        r.pending_pinned_to = r.node.clone();
                    }
                }
            }
            Action::DeleteSource => self.o.source_exists = false,
        }
    }

    /// Time passes: stopping pods are gone, and pods pinned to the target run there (one
    /// pinned to the source waits: it is cordoned or tainted).
    fn settle(&mut self, stop: bool) {
        // A pod being deleted stops only on a node that runs: on a NotReady one it waits
        // until it is force-deleted.
        if stop && self.o.source_ready {
            let stopped: Vec<String> = self
                .o
                .pods_on_source
                .iter()
                .filter(|p| p.terminating)
                .map(|p| p.key.clone())
                .collect();
            for k in stopped {
                self.gone(&k);
            }
        }
        let target = self.o.target.clone();
        for r in &mut self.o.records {
            if target.is_some() && r.pending_pinned_to == target {
                r.pending_pinned_to = None;
                r.running_on_target = true;
            }
        }
        self.controller();
    }
}

proptest! {
    /// Whatever prefix of each plan is carried out before a crash, re-planning from what the
    /// cluster shows finishes the migration (or, in maintenance, refuses one its sets'
    /// maxUnavailable cannot allow, before touching anything), never releases an unfenced
    /// source, never moves an address before its routes, never moves routes or blocks while
    /// a pod still uses them, and never has more of a set down than its maxUnavailable.
    #[test]
    fn crashes_after_any_step_resume_and_finish(
        pods in 1usize..6,
        ready in any::<bool>(),
        confirm in any::<bool>(),
        range_mode in any::<bool>(),
        max_unavailable in 1i32..6,
        crashes in proptest::collection::vec(0usize..8, 40),
        goes_down in proptest::option::of(0usize..12),
    ) {
        let mut o = world(ready);
        o.confirm_fenced = confirm;
        o.records = (0..pods).map(|i| RecordFacts {
            // The first is down already, waiting pinned to the source.
            pending_pinned_to: (i == 0).then(|| "a".to_string()),
            ..record(&format!("ns/db-{i}"), &format!("10.40.0.{}", i + 2))
        }).collect();
        o.pods_on_source = (1..pods).map(|i| pod(&format!("ns/db-{i}"), range_mode)).collect();
        o.max_unavailable = BTreeMap::from([("ns/db".to_string(), max_unavailable)]);
        // All of a set's range-mode pods on the source are down at once when their routes
        // move; in maintenance the set must allow it.
        let refusable = ready && range_mode && pods > max_unavailable as usize;
        let mut m = Model::new(o);
        let mut last = None;
        let mut went_down = false;
        for round in 0..200 {
            // A Ready source may go NotReady in the middle of its maintenance move.
            if goes_down == Some(round) && m.o.source_ready {
                m.o.source_ready = false;
                went_down = true;
            }
            let p = plan(&m.o);
            if p.phase == MigrationPhase::Completed {
                break;
            }
            // Crash after `cut` actions of this plan (or none).
            let cut = crashes.get(round % crashes.len()).copied().unwrap_or(0).min(p.actions.len());
            let cut = if round % 3 == 2 { p.actions.len() } else { cut.max(1).min(p.actions.len()) };
            for a in &p.actions[..cut] {
                m.apply(a);
                m.check_budget();
            }
            m.settle(round % 2 == 1);
            last = Some(p);
        }
        let phase = plan(&m.o).phase;
        if refusable && !went_down {
            prop_assert_eq!(phase, MigrationPhase::Refused, "{:?}", last);
            prop_assert!(m.o.pods_on_source.iter().all(|p| !p.terminating), "nothing evicted: {:?}", m.o);
            prop_assert_eq!(m.o.pods_on_source.len(), pods - 1);
            prop_assert!(!m.o.network_moved && m.o.moved_blocks == 0);
        } else {
            prop_assert_eq!(phase, MigrationPhase::Completed, "finished: {:?} {:?}", m.o, last);
        }
        prop_assert!(!m.released_unfenced);
        prop_assert!(!m.moved_before_network);
        prop_assert!(!m.moved_while_used, "{:?}", m.o);
        prop_assert!(!m.over_budget, "{:?}", m.o);
    }
}

#[test]
fn a_hook_that_says_no_releases_nothing_ever() {
    let mut m = Model {
        hook_says_yes: false,
        ..Model::new(world(false))
    };
    for _ in 0..20 {
        let p = plan(&m.o);
        assert_eq!(p.phase, MigrationPhase::Fencing);
        for a in &p.actions {
            m.apply(a);
        }
    }
    assert!(!m.released_unfenced);
    assert_eq!(m.o.pods_on_source.len(), 1);
    assert_eq!(m.o.blocks_on_source.len(), 1);
}

#[test]
fn a_source_that_goes_not_ready_during_maintenance_is_fenced_before_anything_is_released() {
    let mut o = world(true);
    o.mode = Some(MigrationMode::Maintenance);
    o.source_cordoned = true;
    o.pods_on_source[0].leave = Some(Leave::Together("a".into()));
    o.pods_on_source[0].terminating = true;
    // Evicted, and its node stops answering: the pod never finishes stopping by itself.
    o.source_ready = false;
    let p = plan(&o);
    assert_eq!(p.actions, [Action::Escalate, Action::Fence], "{p:?}");
    assert_eq!(p.phase, MigrationPhase::Fencing);
    // Escalated, not fenced yet: still nothing released.
    o.mode = Some(MigrationMode::Failure);
    assert_eq!(plan(&o).actions, [Action::Fence]);
    // Fenced: the out-of-service taint and the force-delete release it.
    o.fenced = true;
    let p = plan(&o);
    assert_eq!(
        p.actions,
        [Action::Taint, Action::ForceDelete("ns/db-0".into())],
        "{p:?}"
    );
}
