//! Moving the boundary ordinal of a set split across two clusters (source documents 000 and
//! 004): the source holds `{start..k-1}`, the destination `{k..}`; the source's highest
//! identity `k-1` moves to the destination, with at-most-one semantics — its pod is gone
//! from the source before the destination may create it.

use ests_api::{EnhancedStatefulSet, PvcRetentionPolicyType, keys};
use ests_core::identity::{Reserved, ordinals, pod_name, reserved_ordinals};

/// What the plan needs to know of one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetFacts {
    pub replicas: i32,
    pub start: i32,
    pub reserved: Reserved,
    pub static_ip: bool,
    /// Names of the volumeClaimTemplates.
    pub claim_templates: Vec<String>,
    /// Both PVC retention policies are explicitly Retain.
    pub claims_retained: bool,
}

impl SetFacts {
    /// The facts of a set.
    pub fn of(set: &EnhancedStatefulSet) -> Result<Self, MoveError> {
        let spec = &set.spec;
        let reserved = reserved_ordinals(spec.reserve_ordinals.as_deref().unwrap_or_default())
            .map_err(|e| MoveError::Spec(e.to_string()))?;
        // Absent means Retain today; the move writes it explicitly all the same.
        let policy = spec.persistent_volume_claim_retention_policy.clone();
        Ok(Self {
            replicas: spec.replicas,
            start: spec.ordinals_start(),
            reserved,
            static_ip: set
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(keys::STATIC_IP_ENABLE))
                .is_some_and(|v| v == "true"),
            claim_templates: spec
                .volume_claim_templates
                .iter()
                .flatten()
                .filter_map(|c| c.metadata.name.clone())
                .collect(),
            claims_retained: policy.is_some_and(|p| {
                p.when_scaled == PvcRetentionPolicyType::Retain
                    && p.when_deleted == PvcRetentionPolicyType::Retain
            }),
        })
    }

    fn identities(&self) -> Vec<i32> {
        ordinals(self.start, self.replicas, &self.reserved)
    }
}

/// Choices the user made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoveOptions {
    /// Accept that a static-IP identity gets a new IP in the destination.
    pub allow_ip_change: bool,
    /// Copy the identity's PVCs and their PVs.
    pub copy_volumes: bool,
    /// Copy these Secrets.
    pub secrets: Vec<String>,
    /// Finish a move that stopped half-way: the source was scaled down but the destination
    /// not extended, so the one ordinal between them runs nowhere.
    pub resume: bool,
}

/// One step, carried out in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Set both PVC retention policies of the source to Retain.
    RetainClaims,
    /// Set the reclaim policy of the PVs bound to these PVCs to Retain.
    RetainVolumes(Vec<String>),
    /// Lower the source's replicas (removing its highest identity).
    ScaleDownSource { replicas: i32 },
    /// Wait until the pod no longer exists in the source.
    WaitSourcePodGone(String),
    /// Copy these PVCs and their PVs to the destination.
    CopyVolumes(Vec<String>),
    /// Copy these Secrets to the destination.
    CopySecrets(Vec<String>),
    /// Create the destination set as a copy of the source with no replicas.
    CreateDestination { start: i32 },
    /// Lower the destination's ordinals.start and raise its replicas, in one patch.
    ExtendDestination { start: i32, replicas: i32 },
    /// Wait until the pod is Ready in the destination.
    WaitDestinationPodReady(String),
}

/// The plan of one move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovePlan {
    pub ordinal: i32,
    pub pod: String,
    pub claims: Vec<String>,
    pub steps: Vec<Step>,
}

/// Why the move is refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MoveError {
    #[error(
        "the set uses static IPs: the moved pod would get a new IP in the destination; pass --allow-ip-change to accept that"
    )]
    StaticIp,
    #[error("the source has no identity to move (replicas 0)")]
    Empty,
    #[error("the source's highest ordinal {boundary} is not right below the destination's start {start}: the ranges must be adjacent ({{..{boundary}}} then {{{}..}}); if a move stopped after scaling the source down, finish it with --resume", boundary + 1)]
    NotAdjacent { boundary: i32, start: i32 },
    #[error("ordinal {0} is reserved in the destination")]
    ReservedInDestination(i32),
    #[error("ordinal {0} cannot move below 0")]
    Negative(i32),
    #[error("the destination runs identity {0} already")]
    AlreadyInDestination(i32),
    #[error("invalid spec: {0}")]
    Spec(String),
    #[error(
        "nothing to resume: the destination (start {start}) is right above the source's highest ordinal ({boundary:?}), no ordinal is between them"
    )]
    NothingToResume { boundary: Option<i32>, start: i32 },
    #[error("cannot resume: {0}")]
    CannotResume(String),
}

/// The steps that move `set`'s boundary ordinal from `source` to `destination` (`None` when
/// the destination has no such set yet).
pub fn plan_move(
    set: &str,
    source: &SetFacts,
    destination: Option<&SetFacts>,
    options: &MoveOptions,
) -> Result<MovePlan, MoveError> {
    if source.static_ip && !options.allow_ip_change {
        return Err(MoveError::StaticIp);
    }
    let identities = source.identities();
    if options.resume {
        return plan_resume(set, source, &identities, destination, options);
    }
    let boundary = *identities.last().ok_or(MoveError::Empty)?;
    if boundary < 0 {
        return Err(MoveError::Negative(boundary));
    }
    let pod = pod_name(set, boundary);
    let claims: Vec<String> = source
        .claim_templates
        .iter()
        .map(|c| format!("{c}-{pod}"))
        .collect();
    let mut steps = Vec::new();
    if !source.claims_retained {
        steps.push(Step::RetainClaims);
    }
    if !claims.is_empty() {
        steps.push(Step::RetainVolumes(claims.clone()));
    }
    steps.push(Step::ScaleDownSource {
        replicas: source.replicas - 1,
    });
    steps.push(Step::WaitSourcePodGone(pod.clone()));
    if options.copy_volumes && !claims.is_empty() {
        steps.push(Step::CopyVolumes(claims.clone()));
    }
    if !options.secrets.is_empty() {
        steps.push(Step::CopySecrets(options.secrets.clone()));
    }
    let (start, replicas) = match destination {
        Some(d) => {
            let ids = d.identities();
            if ids.contains(&boundary) {
                return Err(MoveError::AlreadyInDestination(boundary));
            }
            if d.reserved.contains(&boundary) {
                return Err(MoveError::ReservedInDestination(boundary));
            }
            if d.start != boundary + 1 {
                return Err(MoveError::NotAdjacent {
                    boundary,
                    start: d.start,
                });
            }
            (d.start, d.replicas)
        }
        None => {
            steps.push(Step::CreateDestination {
                start: boundary + 1,
            });
            (boundary + 1, 0)
        }
    };
    steps.push(Step::ExtendDestination {
        start: start - 1,
        replicas: replicas + 1,
    });
    steps.push(Step::WaitDestinationPodReady(pod.clone()));
    Ok(MovePlan {
        ordinal: boundary,
        pod,
        claims,
        steps,
    })
}

/// The steps that finish a move stopped after the source was scaled down: the ordinal right
/// below the destination's start, which the source no longer runs, goes to the destination.
fn plan_resume(
    set: &str,
    source: &SetFacts,
    identities: &[i32],
    destination: Option<&SetFacts>,
    options: &MoveOptions,
) -> Result<MovePlan, MoveError> {
    let d = destination.ok_or_else(|| {
        MoveError::CannotResume(
            "the destination has no such set; run the move without --resume".into(),
        )
    })?;
    let boundary = identities.last().copied();
    // The first ordinal above the source's identities (its start when it has none).
    let lower = boundary.map_or(source.start, |b| b + 1);
    if d.start == lower {
        return Err(MoveError::NothingToResume {
            boundary,
            start: d.start,
        });
    }
    if d.start != lower + 1 {
        return Err(MoveError::CannotResume(format!(
            "exactly one ordinal must be missing between the source's highest ({boundary:?}) and the destination's start ({})",
            d.start
        )));
    }
    let ordinal = lower;
    if d.reserved.contains(&ordinal) {
        return Err(MoveError::ReservedInDestination(ordinal));
    }
    let pod = pod_name(set, ordinal);
    let claims: Vec<String> = source
        .claim_templates
        .iter()
        .map(|c| format!("{c}-{pod}"))
        .collect();
    let mut steps = Vec::new();
    if !source.claims_retained {
        steps.push(Step::RetainClaims);
    }
    if !claims.is_empty() {
        steps.push(Step::RetainVolumes(claims.clone()));
    }
    steps.push(Step::WaitSourcePodGone(pod.clone()));
    if options.copy_volumes && !claims.is_empty() {
        steps.push(Step::CopyVolumes(claims.clone()));
    }
    if !options.secrets.is_empty() {
        steps.push(Step::CopySecrets(options.secrets.clone()));
    }
    steps.push(Step::ExtendDestination {
        start: ordinal,
        replicas: d.replicas + 1,
    });
    steps.push(Step::WaitDestinationPodReady(pod.clone()));
    Ok(MovePlan {
        ordinal,
        pod,
        claims,
        steps,
    })
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::RetainClaims => write!(
                f,
                "source: set persistentVolumeClaimRetentionPolicy to Retain"
            ),
            Step::RetainVolumes(c) => write!(
                f,
                "source: set the reclaim policy of the PVs of {} to Retain",
                c.join(", ")
            ),
            Step::ScaleDownSource { replicas } => {
                write!(f, "source: scale down to {replicas} replicas")
            }
            Step::WaitSourcePodGone(p) => write!(f, "source: wait until pod {p} is gone"),
            Step::CopyVolumes(c) => write!(
                f,
                "copy PVCs {} and their PVs to the destination",
                c.join(", ")
            ),
            Step::CopySecrets(s) => write!(f, "copy Secrets {} to the destination", s.join(", ")),
            Step::CreateDestination { start } => write!(
                f,
                "destination: create the set with ordinals.start {start} and 0 replicas"
            ),
            Step::ExtendDestination { start, replicas } => write!(
                f,
                "destination: set ordinals.start {start} and replicas {replicas}"
            ),
            Step::WaitDestinationPodReady(p) => {
                write!(f, "destination: wait until pod {p} is Ready")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn facts(replicas: i32, start: i32, reserved: &[i32]) -> SetFacts {
        SetFacts {
            replicas,
            start,
            reserved: reserved.iter().copied().collect(),
            static_ip: false,
            claim_templates: vec!["data".into()],
            claims_retained: false,
        }
    }

    fn copy() -> MoveOptions {
        MoveOptions {
            copy_volumes: true,
            ..Default::default()
        }
    }

    #[test]
    fn the_highest_source_identity_moves_to_an_adjacent_destination() {
        let plan =
            plan_move("web", &facts(3, 0, &[]), Some(&facts(2, 3, &[])), &copy()).expect("plan");
        assert_eq!(plan.ordinal, 2);
        assert_eq!(plan.pod, "web-2");
        assert_eq!(plan.claims, vec!["data-web-2"]);
        assert_eq!(
            plan.steps,
            vec![
                Step::RetainClaims,
                Step::RetainVolumes(vec!["data-web-2".into()]),
                Step::ScaleDownSource { replicas: 2 },
                Step::WaitSourcePodGone("web-2".into()),
                Step::CopyVolumes(vec!["data-web-2".into()]),
                Step::ExtendDestination {
                    start: 2,
                    replicas: 3
                },
                Step::WaitDestinationPodReady("web-2".into()),
            ]
        );
    }

    #[test]
    fn the_source_pod_is_gone_before_the_destination_may_create_it() {
        let cases = [
            (facts(3, 0, &[]), Some(facts(0, 3, &[]))),
            (facts(1, 5, &[]), None),
            (facts(4, 0, &[1]), Some(facts(1, 5, &[]))),
        ];
        for (source, destination) in cases {
            let plan = plan_move("web", &source, destination.as_ref(), &copy()).expect("plan");
            let gone = plan
                .steps
                .iter()
                .position(|s| matches!(s, Step::WaitSourcePodGone(_)));
            let extend = plan
                .steps
                .iter()
                .position(|s| matches!(s, Step::ExtendDestination { .. }));
            let scale = plan
                .steps
                .iter()
                .position(|s| matches!(s, Step::ScaleDownSource { .. }));
            assert!(scale < gone && gone < extend, "{:?}", plan.steps);
            // Retain comes before anything can delete a claim.
            assert_eq!(plan.steps[0], Step::RetainClaims);
        }
    }

    #[test]
    fn reserved_source_ordinals_pick_the_real_highest_identity() {
        // Identities 0,2,3 (1 reserved): 3 moves.
        let plan =
            plan_move("web", &facts(3, 0, &[1]), Some(&facts(1, 4, &[])), &copy()).expect("plan");
        assert_eq!(plan.ordinal, 3);
        assert!(plan.steps.contains(&Step::ExtendDestination {
            start: 3,
            replicas: 2
        }));
    }

    #[test]
    fn a_missing_destination_is_created_empty_right_above_the_boundary() {
        let plan =
            plan_move("web", &facts(2, 0, &[]), None, &MoveOptions::default()).expect("plan");
        assert!(plan.steps.contains(&Step::CreateDestination { start: 2 }));
        assert!(plan.steps.contains(&Step::ExtendDestination {
            start: 1,
            replicas: 1
        }));
        assert!(
            !plan.steps.iter().any(|s| matches!(s, Step::CopyVolumes(_))),
            "volumes are copied only when asked"
        );
    }

    #[test]
    fn refusals() {
        let mut static_ip = facts(2, 0, &[]);
        static_ip.static_ip = true;
        let cases: [(SetFacts, Option<SetFacts>, MoveOptions, MoveError); 5] = [
            (
                static_ip.clone(),
                None,
                MoveOptions::default(),
                MoveError::StaticIp,
            ),
            (
                facts(0, 0, &[]),
                None,
                MoveOptions::default(),
                MoveError::Empty,
            ),
            (
                facts(3, 0, &[]),
                Some(facts(1, 5, &[])),
                MoveOptions::default(),
                MoveError::NotAdjacent {
                    boundary: 2,
                    start: 5,
                },
            ),
            (
                facts(3, 0, &[]),
                Some(facts(1, 3, &[2])),
                MoveOptions::default(),
                MoveError::ReservedInDestination(2),
            ),
            (
                facts(3, 0, &[]),
                Some(facts(2, 1, &[])),
                MoveOptions::default(),
                MoveError::AlreadyInDestination(2),
            ),
        ];
        for (source, destination, options, want) in cases {
            assert_eq!(
                plan_move("web", &source, destination.as_ref(), &options),
                Err(want.clone()),
                "{want}"
            );
        }
        let allowed = MoveOptions {
            allow_ip_change: true,
            ..Default::default()
        };
        assert!(plan_move("web", &static_ip, None, &allowed).is_ok());
    }

    #[test]
    fn a_move_stopped_after_the_scale_down_is_resumed_without_scaling_again() {
        let resume = MoveOptions {
            resume: true,
            copy_volumes: true,
            ..Default::default()
        };
        // The source went from 3 to 2 replicas; the destination still starts at 3.
        let plan =
            plan_move("web", &facts(2, 0, &[]), Some(&facts(1, 3, &[])), &resume).expect("plan");
        assert_eq!(plan.ordinal, 2);
        assert!(
            !plan
                .steps
                .iter()
                .any(|s| matches!(s, Step::ScaleDownSource { .. }))
        );
        let gone = plan
            .steps
            .iter()
            .position(|s| matches!(s, Step::WaitSourcePodGone(_)));
        let extend = plan.steps.iter().position(|s| {
            matches!(
                s,
                Step::ExtendDestination {
                    start: 2,
                    replicas: 2
                }
            )
        });
        assert!(gone.is_some() && gone < extend, "{:?}", plan.steps);
        // The last identity of the source: the source is empty now.
        let plan =
            plan_move("web", &facts(0, 0, &[]), Some(&facts(2, 1, &[])), &resume).expect("plan");
        assert_eq!(plan.ordinal, 0);
        // Nothing stopped half-way, or more than one ordinal missing: refused.
        let cases = [
            (facts(3, 0, &[]), Some(facts(1, 3, &[]))),
            (facts(1, 0, &[]), Some(facts(1, 3, &[]))),
            (facts(2, 0, &[]), None),
        ];
        for (source, destination) in cases {
            assert!(
                plan_move("web", &source, destination.as_ref(), &resume).is_err(),
                "{source:?} {destination:?}"
            );
        }
        assert!(matches!(
            plan_move("web", &facts(0, 0, &[]), Some(&facts(3, 0, &[])), &resume),
            Err(MoveError::NothingToResume {
                boundary: None,
                start: 0
            })
        ));
    }

    #[test]
    fn moving_one_ordinal_at_a_time_empties_the_source_and_never_shares_an_identity() {
        let (mut source, mut destination) = (facts(4, 0, &[]), Some(facts(0, 4, &[])));
        let mut retained = false;
        while source.replicas > 0 {
            let plan = plan_move("web", &source, destination.as_ref(), &copy()).expect("plan");
            for step in &plan.steps {
                match step {
                    Step::RetainClaims => retained = true,
                    Step::ScaleDownSource { replicas } => source.replicas = *replicas,
                    Step::ExtendDestination { start, replicas } => {
                        let d = destination.get_or_insert_with(|| facts(0, *start + 1, &[]));
                        d.start = *start;
                        d.replicas = *replicas;
                    }
                    _ => {}
                }
                let s: BTreeSet<i32> = source.identities().into_iter().collect();
                let d: BTreeSet<i32> = destination
                    .as_ref()
                    .map(|d| d.identities())
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                assert!(s.is_disjoint(&d), "{s:?} and {d:?} after {step}");
            }
            source.claims_retained = retained;
        }
        let d = destination.expect("destination");
        assert_eq!(d.identities(), vec![0, 1, 2, 3]);
    }
}
