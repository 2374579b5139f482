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
        }],
        pods_on_source: vec![SourcePod {
            key: "ns/db-0".into(),
            static_ip: true,
            set: Some("ns/db".into()),
            terminating: false,
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

#[test]
fn a_fenced_source_moves_network_then_blocks_records_and_pods() {
    let mut o = world(false);
    o.mode = Some(MigrationMode::Failure);
    o.fenced = true;
    assert_eq!(plan(&o).actions, [Action::MoveNetwork]);
    o.network_moved = true;
    let p = plan(&o);
    assert_eq!(
        p.actions,
        [
            Action::MoveBlock("blk-1".into()),
            Action::MoveRecord("ns/db-0".into()),
            Action::Taint,
            Action::ForceDelete("ns/db-0".into()),
        ]
    );
    assert_eq!(p.phase, MigrationPhase::Moving);
    // Moved, pod gone, running on the target: the source goes, then done.
    o.blocks_on_source.clear();
    o.records[0].node = Some("b".into());
    o.records[0].running_on_target = true;
    o.pods_on_source.clear();
    o.source_tainted = true;
    o.moved_blocks = 1;
    assert_eq!(plan(&o).actions, [Action::DeleteSource]);
    o.source_exists = false;
    let done = plan(&o);
    assert_eq!(done.phase, MigrationPhase::Completed);
    assert_eq!(done.waiting, None);
}

#[test]
fn maintenance_evicts_within_max_unavailable_and_never_fences() {
    let mut o = world(true);
    o.pods_on_source.push(SourcePod {
        key: "ns/db-1".into(),
        static_ip: true,
        set: Some("ns/db".into()),
        terminating: false,
    });
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
#[derive(Debug, Clone)]
struct Model {
    o: Observed,
    /// The fencing hook's answer.
    hook_says_yes: bool,
    /// Whether something of the source was released before it was fenced.
    released_unfenced: bool,
    moved_before_network: bool,
}

impl Model {
    fn apply(&mut self, action: &Action) {
        let o = &mut self.o;
        match action {
            Action::Start { target, mode } => {
                o.target = Some(target.clone());
                o.mode = Some(*mode);
            }
            Action::Fence => {
                if self.hook_says_yes || o.confirm_fenced {
                    o.fenced = true;
                }
            }
            Action::MoveNetwork => o.network_moved = true,
            Action::MoveBlock(b) => {
                if !o.network_moved {
                    self.moved_before_network = true;
                }
                o.blocks_on_source.retain(|x| x != b);
                o.moved_blocks += 1;
            }
            Action::MoveRecord(k) => {
                if !o.network_moved {
                    self.moved_before_network = true;
                }
                for r in &mut o.records {
                    if &r.key == k {
                        r.node = o.target.clone();
                    }
                }
            }
            Action::Taint => {
                if !o.fenced {
                    self.released_unfenced = true;
                }
                o.source_tainted = true;
            }
            Action::Cordon => o.source_cordoned = true,
            Action::ForceDelete(k) | Action::Evict(k) => {
                if matches!(action, Action::ForceDelete(_)) && !o.fenced {
                    self.released_unfenced = true;
                }
                o.pods_on_source.retain(|p| &p.key != k);
                // The controller re-creates it; the webhook pins it to the record's node.
                let target = o.target.clone();
                for r in &mut o.records {
                    if &r.key == k && r.node == target {
                        r.running_on_target = true;
                    }
                }
            }
            Action::Recreate(k) => {
                for r in &mut o.records {
                    if &r.key == k {
                        r.pending_pinned_to = None;
                    }
                }
            }
            Action::DeleteSource => o.source_exists = false,
        }
    }
}

proptest! {
    /// Whatever prefix of each plan is carried out before a crash, re-planning from what the
    /// cluster shows finishes the migration, never releases an unfenced source, and never
    /// moves an address before its routes.
    #[test]
    fn crashes_after_any_step_resume_and_finish(
        pods in 1usize..6,
        ready in any::<bool>(),
        confirm in any::<bool>(),
        crashes in proptest::collection::vec(0usize..8, 40),
    ) {
        let mut o = world(ready);
        o.confirm_fenced = confirm;
        o.records = (0..pods).map(|i| RecordFacts {
            key: format!("ns/db-{i}"),
            node: Some("a".into()),
            ips: vec![format!("10.40.0.{}", i + 2)],
            running_on_target: false,
            pending_pinned_to: (i == 0).then(|| "a".to_string()),
        }).collect();
        o.pods_on_source = (1..pods).map(|i| SourcePod {
            key: format!("ns/db-{i}"),
            static_ip: true,
            set: Some("ns/db".into()),
            terminating: false,
        }).collect();
        let mut m = Model { o, hook_says_yes: true, released_unfenced: false, moved_before_network: false };
        let mut done = false;
        for round in 0..200 {
            let p = plan(&m.o);
            if p.phase == MigrationPhase::Completed {
                done = true;
                break;
            }
            // Crash after `cut` actions of this plan (or none).
            let cut = crashes.get(round % crashes.len()).copied().unwrap_or(0).min(p.actions.len());
            let cut = if round % 3 == 2 { p.actions.len() } else { cut.max(1).min(p.actions.len()) };
            for a in &p.actions[..cut] {
                m.apply(a);
            }
            // Pinned pending pods get scheduled on the target once re-created.
            let target = m.o.target.clone();
            for r in &mut m.o.records {
                if r.pending_pinned_to.is_none() && r.node == target && !m.o.pods_on_source.iter().any(|p| p.key == r.key) {
                    r.running_on_target = true;
                }
            }
        }
        prop_assert!(done, "finished: {:?}", m.o);
        prop_assert!(!m.released_unfenced);
        prop_assert!(!m.moved_before_network);
    }
}

#[test]
fn a_hook_that_says_no_releases_nothing_ever() {
    let mut m = Model {
        o: world(false),
        hook_says_yes: false,
        released_unfenced: false,
        moved_before_network: false,
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
