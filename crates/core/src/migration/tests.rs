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
        }],
        budgets: BTreeMap::from([(
            "ns/db".to_string(),
            Budget {
                unavailable: 0,
                max_unavailable: 1,
            },
        )]),
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
    assert_eq!(
        p.actions,
        [Action::Cordon, Action::Evict("ns/db-0".into())],
        "{p:?}"
    );
    assert!(!moves_network_or_blocks(&p));
    // Evicted, still stopping (and serving at its address): nothing moves.
    o.source_cordoned = true;
    o.pods_on_source[0].terminating = true;
    o.budgets.get_mut("ns/db").expect("budget").unavailable = 1;
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
fn maintenance_stops_a_blocks_pods_together_within_max_unavailable() {
    // Three range-mode pods of one set on the source; their routes move at once, so all
    // three must be down together.
    let mut o = world(true);
    o.mode = Some(MigrationMode::Maintenance);
    o.source_cordoned = true;
    o.records = (0..3)
        .map(|i| record(&format!("ns/db-{i}"), &format!("10.40.0.{}", i + 2)))
        .collect();
    o.pods_on_source = (0..3).map(|i| pod(&format!("ns/db-{i}"), true)).collect();
    let budget = |unavailable, max_unavailable| {
        BTreeMap::from([(
            "ns/db".to_string(),
            Budget {
                unavailable,
                max_unavailable,
            },
        )])
    };
    let evicted = |p: &Plan| {
        p.actions
            .iter()
            .filter(|a| matches!(a, Action::Evict(_)))
            .count()
    };
    // The set allows three down: all three go in one pass.
    o.budgets = budget(0, 3);
    assert_eq!(evicted(&plan(&o)), 3);
    // Another of its pods is down elsewhere: none goes until it is back (one or two would
    // only wait, down, for the third).
    o.budgets = budget(1, 3);
    let p = plan(&o);
    assert_eq!(evicted(&p), 0, "{p:?}");
    assert_eq!(p.phase, MigrationPhase::Moving);
    assert!(p.waiting.is_some_and(|w| w.contains("ns/db")));
    // The set can never have three down: refused before anything is touched.
    o.budgets = budget(0, 2);
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
    o.budgets = budget(1, 3);
    o.pods_on_source.remove(0);
    o.records[0].pending_pinned_to = Some("a".into());
    assert_eq!(evicted(&plan(&o)), 2);
    o.budgets = budget(1, 2);
    assert_eq!(plan(&o).phase, MigrationPhase::Refused);
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
    let evicted: Vec<&Action> = p
        .actions
        .iter()
        .filter(|a| matches!(a, Action::Evict(_)))
        .collect();
    assert_eq!(evicted, [&Action::Evict("ns/db-0".into())], "one at a time");
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
        .position(|a| a == &Action::Evict("ns/db-0".into()));
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

    fn budget(&mut self, set: Option<&str>, change: i32) {
        let maintenance = self.o.mode == Some(MigrationMode::Maintenance);
        if let Some(b) = set.and_then(|s| self.o.budgets.get_mut(s)) {
            b.unavailable += change;
            if maintenance && b.unavailable > b.max_unavailable {
                self.over_budget = true;
            }
        }
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
                if let Some(p) = self.o.pods_on_source.iter().find(|p| &p.key == k) {
                    let (set, counted) = (p.set.clone(), p.terminating);
                    if !counted {
                        self.budget(set.as_deref(), 1);
                    }
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
                    let set = p.set.clone();
                    self.budget(set.as_deref(), 1);
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
        if stop {
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
        let mut started = Vec::new();
        for r in &mut self.o.records {
            if target.is_some() && r.pending_pinned_to == target {
                r.pending_pinned_to = None;
                r.running_on_target = true;
                started.push(r.set.clone());
            }
        }
        for set in started {
            self.budget(set.as_deref(), -1);
        }
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
    ) {
        let mut o = world(ready);
        o.confirm_fenced = confirm;
        o.records = (0..pods).map(|i| RecordFacts {
            // The first is down already, waiting pinned to the source.
            pending_pinned_to: (i == 0).then(|| "a".to_string()),
            ..record(&format!("ns/db-{i}"), &format!("10.40.0.{}", i + 2))
        }).collect();
        o.pods_on_source = (1..pods).map(|i| pod(&format!("ns/db-{i}"), range_mode)).collect();
        o.budgets = BTreeMap::from([(
            "ns/db".to_string(),
            Budget { unavailable: 1, max_unavailable },
        )]);
        // All of a set's range-mode pods on the source are down at once when their routes
        // move; in maintenance the set must allow it.
        let refusable = ready && range_mode && pods > max_unavailable as usize;
        let mut m = Model::new(o);
        let mut last = None;
        for round in 0..200 {
            let p = plan(&m.o);
            if p.phase == MigrationPhase::Completed {
                break;
            }
            // Crash after `cut` actions of this plan (or none).
            let cut = crashes.get(round % crashes.len()).copied().unwrap_or(0).min(p.actions.len());
            let cut = if round % 3 == 2 { p.actions.len() } else { cut.max(1).min(p.actions.len()) };
            for a in &p.actions[..cut] {
                m.apply(a);
            }
            m.settle(round % 2 == 1);
            last = Some(p);
        }
        let phase = plan(&m.o).phase;
        if refusable {
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
