//! Node migration's decisions: from what the manager observes of a migration, its source
//! and target nodes, their blocks, records and pods, the actions to take now.
//!
//! Every action is idempotent and its effect is visible in the cluster's objects (a block's
//! node, a record's node, a taint, a pod's absence) or in the migration's status (fencedAt,
//! NetworkMoved), so a manager that dies after any action plans the rest from what it finds.
//! The safety rules live here, once:
//!
//! - nothing of a NotReady source is released (taint, force-delete) before it is fenced; a
//!   source that goes NotReady during a maintenance move turns it into a failure move, which
//!   fences first (its evicted pods would otherwise wait, stopping, for ever);
//! - the network hook succeeds before any block or record moves, so no pod starts on the
//!   target before its addresses are routed there;
//! - the routes and blocks move only once no pod of the source uses them (running, or still
//!   stopping): a maintenance move cordons and evicts first, a failure move force-deletes
//!   the fenced source's pods first;
//! - in maintenance a set's pods are not evicted by the migration but asked to leave
//!   ([`Action::AskToLeave`]): the set's controller, the one writer that takes its pods down,
//!   evicts them within the maxUnavailable its rollout shares ([`crate::rollout::plan`]);
//!   the pods using the blocks are asked to leave together, and a set whose maxUnavailable
//!   can never have all of them down at once is refused before anything is touched;
//! - a target that cannot hold every static-IP pod of the source is refused before anything
//!   moves.

use std::collections::BTreeMap;

use ests_api::{MigrationMode, MigrationPhase};

use crate::quantity::{Resources, add, show};
use crate::rollout::Leave;

/// A pod bound to the source node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePod {
    /// `namespace/name`.
    pub key: String,
    /// It belongs to an identity whose record is moved (a static-IP pod of an ests set).
    pub static_ip: bool,
    /// Its set (`namespace/name`), for maxUnavailable in maintenance mode.
    pub set: Option<String>,
    /// Being deleted already (it still runs, and uses its address, until its node stops it).
    pub terminating: bool,
    /// Its record is in IP range mode: its address lies in one of the source's blocks, whose
    /// routes move with the block.
    pub range_mode: bool,
    /// What the pod was asked already ([`crate::pods::leave_request`]).
    pub leave: Option<Leave>,
}

/// A StaticIP record the migration concerns: one whose node is the source, or one it moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFacts {
    /// `namespace/name` (= the pod identity).
    pub key: String,
    pub node: Option<String>,
    pub ips: Vec<String>,
    /// The identity's pod runs (Running) on the target.
    pub running_on_target: bool,
    /// The identity's pod is not bound yet and pinned (by annotation) to this node.
    pub pending_pinned_to: Option<String>,
    /// The identity's set (`namespace/name`), for maxUnavailable in maintenance mode.
    pub set: Option<String>,
}

/// Everything a plan is made from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The source node's name.
    pub source: String,
    pub source_exists: bool,
    pub source_ready: bool,
    pub source_tainted: bool,
    pub source_cordoned: bool,
    /// The target: from the status, the spec, or a node labelled as the replacement.
    pub target: Option<String>,
    /// The target exists as a Node.
    pub target_exists: bool,
    /// Whether the target can hold what moves (see [`fits`]); None until checked.
    pub fits: Option<Result<(), String>>,
    pub confirm_fenced: bool,
    /// From the status.
    pub phase: MigrationPhase,
    pub mode: Option<MigrationMode>,
    pub fenced: bool,
    pub network_moved: bool,
    /// IP blocks whose node is the source.
    pub blocks_on_source: Vec<String>,
    /// Blocks already moved (from the status).
    pub moved_blocks: usize,
    pub records: Vec<RecordFacts>,
    pub pods_on_source: Vec<SourcePod>,
    /// Maintenance: per set, its maxUnavailable (scaled), for the refusal of a move it can
    /// never allow.
    pub max_unavailable: BTreeMap<String, i32>,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Persist the target and the mode in the status.
    Start { target: String, mode: MigrationMode },
    /// Maintenance, and the source went NotReady: persist mode Failure (fencing comes next).
    Escalate,
    /// Ask the fencing hook (or take the operator's confirmation); on yes, persist fencedAt.
    Fence,
    /// Run the network hook for the source's blocks; on success, persist NetworkMoved.
    MoveNetwork,
    /// Compare-and-swap the block's node from the source to the target.
    MoveBlock(String),
    /// Point the record at the target (phase Migrating).
    MoveRecord(String),
    /// Maintenance: mark the source unschedulable.
    Cordon,
    /// Failure, fenced: the out-of-service taint on the source.
    Taint,
    /// Failure, fenced: delete the pod at once (its node is off).
    ForceDelete(String),
    /// Maintenance, a pod of no set: the Eviction API (a PodDisruptionBudget may refuse;
    /// retried).
    Evict(String),
    /// Maintenance, a pod of a set: annotate it so that the set's controller evicts it
    /// within the set's maxUnavailable, counted with its rollout.
    AskToLeave(String, Leave),
    /// A pod created before its record moved, pinned to the source: delete it so that it is
    /// created again with the new pin.
    Recreate(String),
    /// Remove the source Node object: it holds nothing.
    DeleteSource,
}

/// The plan for now: actions in order, the phase to show, and what is awaited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub phase: MigrationPhase,
    pub actions: Vec<Action>,
    /// Why the migration is not done yet (None once Completed).
    pub waiting: Option<String>,
}

impl Plan {
    fn wait(phase: MigrationPhase, actions: Vec<Action>, why: impl Into<String>) -> Self {
        Self {
            phase,
            actions,
            waiting: Some(why.into()),
        }
    }
}

/// What the target must hold: the static-IP pods of the source (their requests, and one pod
/// slot each). Addresses need no room: the source's blocks move whole.
pub fn fits(
    allocatable: &Resources,
    requested: &Resources,
    moving: &[Resources],
) -> Result<(), String> {
    let mut needed = Resources::new();
    for r in moving {
        add(&mut needed, r);
        add(&mut needed, &Resources::from([("pods".to_string(), 1000)]));
    }
    for (name, want) in &needed {
        // Cluster-level resources no node advertises are not the node's to check.
        let checked =
            allocatable.contains_key(name) || matches!(name.as_str(), "cpu" | "memory" | "pods");
        let free =
            allocatable.get(name).copied().unwrap_or(0) - requested.get(name).copied().unwrap_or(0);
        if checked && *want > free {
            return Err(format!(
                "the target has {} {name} free, the source's static-IP pods need {} {name}",
                show(name, free.max(0)),
                show(name, *want)
            ));
        }
    }
    Ok(())
}

/// Per set, how many of its pods are down at once when the source's routes move: those
/// using the source's blocks (running or stopping) and those already stopped and waiting,
/// pinned to the source, for the move.
fn down_at_move<'a>(o: &'a Observed, using_blocks: &[&'a SourcePod]) -> BTreeMap<&'a str, i32> {
    let mut down: BTreeMap<&str, i32> = BTreeMap::new();
    let waiting = o
        .records
        .iter()
        .filter(|r| r.pending_pinned_to.as_deref() == Some(o.source.as_str()))
        .filter_map(|r| r.set.as_deref());
    for set in using_blocks
        .iter()
        .filter_map(|p| p.set.as_deref())
        .chain(waiting)
    {
        *down.entry(set).or_default() += 1;
    }
    down
}

/// Maintenance: a set whose pods that must be down together when the routes move
/// outnumber its maxUnavailable can never allow the move. Said before anything of the source
/// is touched (while pods use the blocks, nothing has moved).
fn never_down_together(o: &Observed, using_blocks: &[&SourcePod]) -> Option<String> {
    if using_blocks.is_empty() {
        return None;
    }
    down_at_move(o, using_blocks)
        .into_iter()
        .find_map(|(set, down)| {
            let max_unavailable = *o.max_unavailable.get(set)?;
            (down > max_unavailable).then(|| {
                format!(
                    "moving {}'s IP blocks has {down} pods of set {set} down at once (their addresses are routed together), but its maxUnavailable is {max_unavailable}: raise it, or move them off {} first",
                    o.source, o.source
                )
            })
        })
}

/// Maintenance: the pods using the source's blocks that still run leave together: each
/// set's pods at once when its budget allows all of them (some down and the rest refused would
/// only keep the first ones down, waiting), decided by the set's controller; a pod of no set
/// is evicted.
fn leave_together(o: &Observed, using_blocks: &[&SourcePod], actions: &mut Vec<Action>) {
    for pod in using_blocks.iter().filter(|p| !p.terminating) {
        leave(pod, Leave::Together(o.source.clone()), actions);
    }
}

/// Maintenance: asks `pod` to leave (once), or evicts it if no set owns it.
fn leave(pod: &SourcePod, how: Leave, actions: &mut Vec<Action>) {
    if pod.set.is_none() {
        actions.push(Action::Evict(pod.key.clone()));
    } else if pod.leave.as_ref() != Some(&how) {
        actions.push(Action::AskToLeave(pod.key.clone(), how));
    }
}

/// The plan for a migration as observed.
pub fn plan(o: &Observed) -> Plan {
    use MigrationPhase::*;
    if o.phase == Completed {
        return Plan {
            phase: Completed,
            actions: vec![],
            waiting: None,
        };
    }
    let Some(target) = o.target.clone().filter(|_| o.target_exists) else {
        return Plan::wait(
            Pending,
            vec![],
            match &o.target {
                Some(t) => format!("target node {t} does not exist (yet)"),
                None => "no target: name one in spec.targetNode or label a node jke.jdcloud.com/replacement-for=<source>".into(),
            },
        );
    };
    let mut actions = Vec::new();
    let mode = match o.mode {
        // Its pods stop no more and may still run: only fencing can release them now.
        Some(MigrationMode::Maintenance) if o.source_exists && !o.source_ready => {
            actions.push(Action::Escalate);
            MigrationMode::Failure
        }
        Some(mode) => mode,
        None => {
            let mode = if o.source_exists && o.source_ready {
                MigrationMode::Maintenance
            } else {
                MigrationMode::Failure
            };
            actions.push(Action::Start {
                target: target.clone(),
                mode,
            });
            mode
        }
    };
    // Before anything moves, the target must hold it all.
    let started =
        o.moved_blocks > 0 || o.records.iter().any(|r| r.node.as_deref() == Some(&target));
    if !started {
        match &o.fits {
            None => return Plan::wait(Pending, actions, "checking the target's room"),
            Some(Err(why)) => return Plan::wait(Refused, actions, why.clone()),
            Some(Ok(())) => {}
        }
    }
    if mode == MigrationMode::Failure && !o.fenced {
        actions.push(Action::Fence);
        return Plan::wait(
            Fencing,
            actions,
            format!(
                "{} is not Ready and may still run its pods: nothing of it is released until it is fenced (fencing hook, or spec.confirmFenced)",
                o.source
            ),
        );
    }
    // The source's pods that use its blocks (range mode), running or still stopping: their
    // addresses are routed to the source until the network hook moves the routes, so the
    // routes and the blocks move only once all of them are gone. One move for the node, not
    // one per block: the hook is asked once with all the source's CIDRs and its
    // NetworkMoved condition is the migration's, so a per-block move would need a hook call
    // and a persisted state per block, and would gain nothing where (as usually) a set's
    // pods on a node share one block.
    let using_blocks: Vec<&SourcePod> = o
        .pods_on_source
        .iter()
        .filter(|p| p.static_ip && p.range_mode)
        .collect();
    if mode == MigrationMode::Maintenance {
        if let Some(why) = never_down_together(o, &using_blocks) {
            return Plan::wait(Refused, actions, why);
        }
        // The node is being emptied: nothing new lands on it meanwhile.
        if o.source_exists && !o.source_cordoned {
            actions.push(Action::Cordon);
        }
    }
    if !using_blocks.is_empty() {
        let note = match mode {
            // Fenced: nothing runs there whatever the API says, and a pod being deleted
            // never finishes by itself on a node that is off: all go now.
            MigrationMode::Failure => {
                if o.source_exists && !o.source_tainted {
                    actions.push(Action::Taint);
                }
                actions.extend(
                    using_blocks
                        .iter()
                        .map(|p| Action::ForceDelete(p.key.clone())),
                );
                None
            }
            MigrationMode::Maintenance => {
                leave_together(o, &using_blocks, &mut actions);
                Some(
                    "their sets' controllers evict each set's pods together within its maxUnavailable",
                )
            }
        };
        return Plan::wait(
            Moving,
            actions,
            format!(
                "{} static-IP pods on {} still use its IP blocks: its routes and blocks move once they are gone{}",
                using_blocks.len(),
                o.source,
                note.map(|why| format!(" ({why})")).unwrap_or_default()
            ),
        );
    }
    if !o.network_moved {
        actions.push(Action::MoveNetwork);
        return Plan::wait(Moving, actions, "moving the source's routes (network hook)");
    }
    actions.extend(o.blocks_on_source.iter().cloned().map(Action::MoveBlock));
    let source_records: Vec<&RecordFacts> = o
        .records
        .iter()
        .filter(|r| r.node.as_deref() != Some(target.as_str()))
        .collect();
    actions.extend(
        source_records
            .iter()
            .map(|r| Action::MoveRecord(r.key.clone())),
    );
    // Pods made before their record moved, pinned to the source.
    actions.extend(
        o.records
            .iter()
            .filter(|r| r.pending_pinned_to.as_deref().is_some_and(|n| n != target))
            .map(|r| Action::Recreate(r.key.clone())),
    );
    // What is left on the source is in record mode: each pod goes after its record moved
    // (above, in this pass), so that it is made again on the target straight away.
    match mode {
        MigrationMode::Failure => {
            let leaving: Vec<&SourcePod> =
                o.pods_on_source.iter().filter(|p| p.static_ip).collect();
            // The out-of-service taint releases the node's other pods to Kubernetes too; it
            // comes after the records moved, so that a static-IP pod Kubernetes deletes is
            // made again on the target.
            if o.source_exists && !o.source_tainted {
                actions.push(Action::Taint);
            }
            actions.extend(leaving.iter().map(|p| Action::ForceDelete(p.key.clone())));
        }
        MigrationMode::Maintenance => {
            // Each within its set's maxUnavailable, by its set's controller; the Eviction API
            // adds the PDBs.
            for pod in o
                .pods_on_source
                .iter()
                .filter(|p| p.static_ip && !p.terminating)
            {
                leave(pod, Leave::Alone, &mut actions);
            }
        }
    }
    let moving = o.records.len();
    let running = o.records.iter().filter(|r| r.running_on_target).count();
    if running < moving || !source_records.is_empty() || !o.blocks_on_source.is_empty() {
        return Plan::wait(
            Moving,
            actions,
            format!("{running} of {moving} static-IP pods run on {target}"),
        );
    }
    // A fenced source is removed once it holds nothing (pods still terminating there are
    // collected with it); a source in maintenance stays, cordoned, for the operator.
    if mode == MigrationMode::Failure && o.source_exists {
        let left = o.pods_on_source.iter().filter(|p| !p.terminating).count();
        if left == 0 {
            actions.push(Action::DeleteSource);
        }
        return Plan::wait(
            Moving,
            actions,
            format!(
                "removing {} once it holds nothing ({left} pods left)",
                o.source
            ),
        );
    }
    Plan {
        phase: Completed,
        actions,
        waiting: None,
    }
}

#[cfg(test)]
mod tests;
