//! Flags and subcommands of `kubectl ests`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::cluster::{Target, connect};
use crate::duration;
use crate::migrate_node::{self, MigrateRequest};
use crate::move_cmd::{MoveRequest, run_move};
use crate::moving::MoveOptions;
use crate::ranges::{self, MemberSpec};
use crate::rollout;

/// kubectl plugin for EnhancedStatefulSets (jke.jdcloud.com/v1alpha1): drive rollouts, scale
/// in chosen pods, move ordinals between clusters and split ordinals across Karmada members.
///
/// Install the binary on PATH as `kubectl-ests` and run it as `kubectl ests ...`.
#[derive(Parser, Debug)]
#[command(name = "kubectl-ests", bin_name = "kubectl ests", version)]
pub struct Cli {
    /// Path to the kubeconfig file [default: $KUBECONFIG, then ~/.kube/config].
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use [default: the current context].
    #[arg(long, global = true, value_name = "CONTEXT")]
    pub context: Option<String>,

    /// Namespace of the set [default: the context's namespace, else "default"].
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Manage the rollout of a set.
    #[command(subcommand)]
    Rollout(Rollout),
    /// Scale in chosen pods: reserve their ordinals (spec.reserveOrdinals) and lower
    /// spec.replicas by as many, so exactly those pods go and every other pod stays.
    ScaleIn(ScaleInArgs),
    /// Move the boundary ordinal (the source's highest) of a set split across two clusters to
    /// the destination cluster, keeping at most one pod per identity across both: force
    /// Retain on the PVC retention policy and the PV reclaim policy, scale the source down by
    /// one and wait until the pod is gone, copy PVC/PV and Secrets when asked, then lower the
    /// destination's ordinals.start by one and raise its replicas by one.
    Move(MoveArgs),
    /// Print the Karmada OverridePolicy that gives each member cluster a non-overlapping
    /// ordinal range (spec.ordinals.start) for a set under divided placement.
    KarmadaRanges(RangesArgs),
    /// Move a node's static-IP pods and IP blocks to another node (a NodeMigration): a Ready
    /// node is cordoned and emptied within each set's maxUnavailable; a NotReady one is
    /// fenced first. With --wait, follow it like `rollout status`.
    MigrateNode(MigrateNodeArgs),
}

#[derive(Args, Debug)]
pub struct MigrateNodeArgs {
    /// The node to move away from.
    pub source: String,
    /// The node to move to [default: a node labelled jke.jdcloud.com/replacement-for=SOURCE].
    #[arg(long = "to", value_name = "TARGET")]
    pub target: Option<String>,
    /// Confirm that SOURCE is powered off or cut off, so its pods may be released without
    /// the fencing hook. Never for a node that may still run its pods.
    #[arg(long)]
    pub confirm_fenced: bool,
    /// Why (shown in events).
    #[arg(long)]
    pub reason: Option<String>,
    /// Follow the migration and print its progress until it completes; exits non-zero if it
    /// is refused or the timeout passes.
    #[arg(long)]
    pub wait: bool,
    /// With --wait, give up after this long, e.g. 90s, 5m, 1h; 0 waits forever.
    #[arg(long, default_value = "30m", value_parser = duration::parse)]
    pub timeout: Duration,
}

#[derive(Subcommand, Debug)]
pub enum Rollout {
    /// Watch the rollout until every pod at or above the partition is updated and Available
    /// (a progress bar on a terminal, plain lines otherwise); exits non-zero on timeout.
    Status(StatusArgs),
    /// List the revisions (ControllerRevisions) with their change causes.
    History(HistoryArgs),
    /// Roll back to the previous revision, or to --to-revision.
    Undo(UndoArgs),
    /// Pause the rollout: no new pod updates start (scaling and repairs go on).
    Pause(NameArg),
    /// Resume a paused rollout.
    Resume(NameArg),
    /// Replace every pod through a rolling update (sets the template annotation
    /// kubectl.kubernetes.io/restartedAt).
    Restart(NameArg),
}

#[derive(Args, Debug)]
pub struct NameArg {
    /// Name of the EnhancedStatefulSet.
    pub name: String,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Name of the EnhancedStatefulSet.
    pub name: String,
    /// Keep watching until the rollout is done; with --watch=false print the status once.
    #[arg(short = 'w', long, default_value_t = true, action = clap::ArgAction::Set)]
    pub watch: bool,
    /// Give up (and exit non-zero) after this long, e.g. 90s, 5m, 1h; 0 waits forever.
    #[arg(long, default_value = "10m", value_parser = duration::parse)]
    pub timeout: Duration,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Name of the EnhancedStatefulSet.
    pub name: String,
    /// Show the pod template of this revision.
    #[arg(long, value_name = "N")]
    pub revision: Option<i64>,
}

#[derive(Args, Debug)]
pub struct UndoArgs {
    /// Name of the EnhancedStatefulSet.
    pub name: String,
    /// The revision to roll back to; 0 means the one before the newest.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub to_revision: i64,
}

#[derive(Args, Debug)]
pub struct ScaleInArgs {
    /// Name of the EnhancedStatefulSet.
    pub name: String,
    /// The pods to remove, e.g. web-3 web-7.
    #[arg(required = true, value_name = "POD")]
    pub pods: Vec<String>,
}

#[derive(Args, Debug)]
pub struct MoveArgs {
    /// Name of the EnhancedStatefulSet (the same in both clusters). The source is --context
    /// (it holds the lower ordinals); the destination holds the ordinals right above.
    pub name: String,
    /// The kubeconfig context of the destination cluster.
    #[arg(long, value_name = "CONTEXT")]
    pub to_context: String,
    /// The kubeconfig of the destination [default: the source's].
    #[arg(long, value_name = "PATH")]
    pub to_kubeconfig: Option<PathBuf>,
    /// Namespace in the destination [default: the source's namespace].
    #[arg(long, value_name = "NAMESPACE")]
    pub to_namespace: Option<String>,
    /// Move a static-IP set's pod although it gets a new IP in the destination (static IPs
    /// do not follow a pod across clusters).
    #[arg(long)]
    pub allow_ip_change: bool,
    /// Copy the moved pod's PVCs and their PVs to the destination (the storage must be
    /// reachable from there); the source keeps its objects, with reclaim policy Retain.
    #[arg(long)]
    pub copy_volumes: bool,
    /// Copy this Secret to the destination (repeatable).
    #[arg(long = "copy-secret", value_name = "NAME")]
    pub copy_secrets: Vec<String>,
    /// Copy every Secret the pod template names (env, envFrom, volumes, imagePullSecrets).
    #[arg(long)]
    pub copy_template_secrets: bool,
    /// How long to wait for the pod to go from the source and to be Ready in the
    /// destination, e.g. 90s, 5m.
    #[arg(long, default_value = "5m", value_parser = duration::parse)]
    pub timeout: Duration,
    /// Print the steps without changing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Finish a move that stopped after scaling the source down (a timeout, an interrupt):
    /// the one ordinal between the source's highest and the destination's start goes to the
    /// destination, without scaling the source again.
    #[arg(long)]
    pub resume: bool,
}

#[derive(Args, Debug)]
pub struct RangesArgs {
    /// Name of the EnhancedStatefulSet on the Karmada control plane.
    pub name: String,
    /// A member cluster, in range order: CLUSTER or CLUSTER=SIZE (repeatable).
    #[arg(long = "cluster", required = true, value_name = "CLUSTER[=SIZE]", value_parser = ranges::parse_member)]
    pub clusters: Vec<MemberSpec>,
    /// The most ordinals one member may need (its replicas plus reserved ordinals): the size
    /// of a member range given without one [default: read from the set through --context:
    /// spec.replicas plus its reserved ordinals].
    #[arg(long, value_name = "N")]
    pub replicas: Option<i32>,
    /// The first ordinal of the first range.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub base: i32,
    /// Allow a SIZE smaller than the set's replicas (only safe when the placement caps that
    /// member's replicas).
    #[arg(long)]
    pub allow_small_ranges: bool,
    /// Output format.
    #[arg(short = 'o', long, default_value = "yaml", value_parser = ["yaml", "json"])]
    pub output: String,
}

impl Cli {
    fn target(&self) -> Target {
        Target {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            namespace: self.namespace.clone(),
        }
    }
}

/// Runs the command; `out` gets what a user reads.
pub async fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    run_with(cli, out, tty).await
}

/// [`run`], saying whether `out` is a terminal (progress bars) or not (plain lines).
pub async fn run_with(cli: Cli, out: &mut dyn Write, tty: bool) -> anyhow::Result<()> {
    let target = cli.target();
    match &cli.command {
        Command::Rollout(r) => {
            let cluster = connect(&target).await?;
            match r {
                Rollout::Status(a) => {
                    rollout::status(&cluster, &a.name, a.watch, a.timeout, out, tty).await
                }
                Rollout::History(a) => rollout::history(&cluster, &a.name, a.revision, out).await,
                Rollout::Undo(a) => rollout::undo(&cluster, &a.name, a.to_revision, out).await,
                Rollout::Pause(a) => rollout::set_paused(&cluster, &a.name, true, out).await,
                Rollout::Resume(a) => rollout::set_paused(&cluster, &a.name, false, out).await,
                Rollout::Restart(a) => rollout::restart(&cluster, &a.name, out).await,
            }
        }
        Command::ScaleIn(a) => {
            let cluster = connect(&target).await?;
            rollout::scale_in_pods(&cluster, &a.name, &a.pods, out).await
        }
        Command::Move(a) => {
            let source = connect(&target).await?;
            let destination = connect(&Target {
                kubeconfig: a.to_kubeconfig.clone().or(target.kubeconfig.clone()),
                context: Some(a.to_context.clone()),
                namespace: Some(a.to_namespace.clone().unwrap_or(source.namespace.clone())),
            })
            .await?;
            if target.context.as_deref() == Some(a.to_context.as_str()) && a.to_kubeconfig.is_none()
            {
                anyhow::bail!(
                    "the source and the destination are the same context {}",
                    a.to_context
                );
            }
            let request = MoveRequest {
                name: &a.name,
                options: MoveOptions {
                    allow_ip_change: a.allow_ip_change,
                    copy_volumes: a.copy_volumes,
                    secrets: a.copy_secrets.clone(),
                    resume: a.resume,
                },
                template_secrets: a.copy_template_secrets,
                timeout: a.timeout,
                dry_run: a.dry_run,
            };
            run_move(&source, &destination, request, out).await
        }
        Command::KarmadaRanges(a) => karmada_ranges(&target, a, out).await,
        Command::MigrateNode(a) => {
            let cluster = connect(&target).await?;
            let request = MigrateRequest {
                source: a.source.clone(),
                target: a.target.clone(),
                confirm_fenced: a.confirm_fenced,
                reason: a.reason.clone(),
                wait: a.wait,
                timeout: a.timeout,
            };
            migrate_node::run(cluster.client, &request, out).await
        }
    }
}

async fn karmada_ranges(
    target: &Target,
    a: &RangesArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let (needed, namespace) = match a.replicas {
        Some(n) => (
            n,
            target.namespace.clone().unwrap_or_else(|| "default".into()),
        ),
        None => {
            let cluster = connect(target).await?;
            let api: kube::Api<ests_api::EnhancedStatefulSet> =
                kube::Api::namespaced(cluster.client.clone(), &cluster.namespace);
            let set = api.get(&a.name).await.with_context(|| {
                format!("reading {} to size the ranges (or pass --replicas)", a.name)
            })?;
            let reserved = ests_core::identity::reserved_ordinals(
                set.spec.reserve_ordinals.as_deref().unwrap_or_default(),
            )
            .map_err(|e| anyhow::anyhow!("{}: {e}", a.name))?;
            let reserved = i32::try_from(reserved.count()).unwrap_or(i32::MAX);
            (
                set.spec.replicas.saturating_add(reserved),
                cluster.namespace,
            )
        }
    };
    let member_ranges = ranges::split_ranges(&a.clusters, a.base, needed, a.allow_small_ranges)?;
    let policy = ranges::override_policy(&a.name, &namespace, &member_ranges);
    let text = if a.output == "json" {
        serde_json::to_string_pretty(&policy).context("printing JSON")?
    } else {
        serde_saphyr::to_string(&policy).context("printing YAML")?
    };
    writeln!(out, "{}", text.trim_end())?;
    Ok(())
}
