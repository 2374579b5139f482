//! Leader election shared by the components that must run once per cluster: the work runs
//! while this process holds the Lease, and stops — every writer at once — as soon as it
//! can no longer be sure it does.
//!
//! The election loop is our own, on a `coordination.k8s.io/v1` Lease with
//! resourceVersion-conditional writes, with client-go's rules ([`rules`]). It replaced
//! kube-lease-manager (0.13), which cannot give a renew deadline: a holder whose renewals
//! fail only backs off and goes on believing it leads until it reads another holder in the
//! Lease — that is, until after another replica took over — so for a while two leaders each
//! took pods down. It also judged expiry by the holder's wall clock in `renewTime`, and its
//! takeovers were server-side applies without a resourceVersion.
//!
//! When the renew deadline passes, the work's future is dropped on the spot (no graceful
//! shutdown: in-flight reconciles are cut at their next await, migration hooks are killed
//! with their futures) and the process exits non-zero, as kube-controller-manager does, so
//! that its Deployment restarts it as a follower with fresh caches.

pub mod rules;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::oneshot;

use crate::serve;
use rules::{Record, Timing};

/// Leader-election flags. Durations take a unit (`15s`, `500ms`, `1m`) or are seconds.
#[derive(clap::Args, Debug, Clone)]
pub struct LeaderArgs {
    /// Take part in leader election, so that of several replicas only one works.
    /// Turn off only when exactly one replica runs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "ESTS_LEADER_ELECTION")]
    pub leader_election: bool,

    /// Name of the Lease used for leader election [default: the subcommand's, e.g.
    /// ests-controller or ests-static-ip].
    #[arg(long, env = "ESTS_LEASE_NAME")]
    pub lease_name: Option<String>,

    /// Namespace of that Lease (the namespace ests runs in).
    #[arg(long, default_value = "ests-system", env = "POD_NAMESPACE")]
    pub lease_namespace: String,

    /// Lease duration (15s, 500ms, 1m, or bare seconds): a replica takes over from the leader only after seeing the Lease
    /// unrenewed for this long (timed by its own clock, so clock skew does not matter).
    /// Longer means a slower takeover after a crash; it must exceed the renew deadline.
    #[arg(
        long = "lease-duration",
        visible_alias = "lease-seconds",
        default_value = "15s",
        env = "ESTS_LEASE_DURATION",
        value_parser = rules::parse_duration
    )]
    pub lease_duration: Duration,

    /// Renew deadline (a duration, as above): a leader that has not renewed its Lease within this long (API errors,
    /// timeouts, conflicts) stops all its work at once and exits non-zero, before any other
    /// replica may take over. The margin to the lease duration covers requests still in
    /// flight and clocks that run at slightly different rates [default: two thirds of the
    /// lease duration, 10s for 15s].
    #[arg(long, env = "ESTS_RENEW_DEADLINE", value_parser = rules::parse_duration)]
    pub renew_deadline: Option<Duration>,

    /// Retry period (a duration): how often the leader renews its Lease and the others look whether it
    /// is free [default: a fifth of the renew deadline, 2s for 10s].
    #[arg(long, env = "ESTS_RETRY_PERIOD", value_parser = rules::parse_duration)]
    pub retry_period: Option<Duration>,
}

/// A future that resolves when the work must stop.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// Runs `work` while leading (at once without leader election) until a shutdown signal;
/// `ready` turns true while it runs. On SIGTERM the work stops in good order and the Lease
/// is released; when leadership is lost it is cut off and this returns an error.
pub async fn run_leading<F, Fut>(
    client: Client,
    args: &LeaderArgs,
    default_lease: &str,
    ready: Arc<AtomicBool>,
    work: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    if !args.leader_election {
        ready.store(true, Ordering::SeqCst);
        return work(Box::pin(serve::shutdown_signal())).await;
    }
    let timing = Timing::new(args.lease_duration, args.renew_deadline, args.retry_period)
        .map_err(anyhow::Error::msg)
        .context("leader election flags")?;
    let lease = args.lease_name.as_deref().unwrap_or(default_lease);
    let identity = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("{default_lease}-{}", std::process::id()));
    let mut elector = Elector {
        api: Api::namespaced(client, &args.lease_namespace),
        lease: lease.to_string(),
        identity: identity.clone(),
        timing,
        observed: None,
    };
    tracing::info!(%identity, %lease, ?timing, "waiting to lead");
    let renewed = tokio::select! {
        renewed = elector.acquire() => renewed,
        () = serve::shutdown_signal() => return Ok(()),
    };
    tracing::info!(%identity, %lease, "leading");
    ready.store(true, Ordering::SeqCst);

    // The keeper renews on its own task, so its timers fire however busy the work is.
    let (lost_tx, mut lost) = oneshot::channel();
    let (release_tx, release) = oneshot::channel::<()>();
    let keeper = tokio::spawn(async move {
        tokio::select! {
            reason = elector.keep(renewed) => {
                let _ = lost_tx.send(reason);
                // The work is dropped as soon as the signal is read and the process then
                // exits. Should it still be here halfway to the earliest takeover, end it
                // without running destructors: exiting late is what must never happen.
                tokio::time::sleep((timing.lease - timing.renew_deadline) / 2).await;
                tracing::error!("still running after losing leadership; exiting now");
                std::process::exit(1);
            }
            _ = release => elector.release().await,
        }
    });
    let work = work(Box::pin(serve::shutdown_signal()));
    let lost_error = |reason: anyhow::Error| {
        tracing::error!(%identity, %lease, error = %format!("{reason:#}"), "lost leadership; stopping every writer and exiting");
        reason.context(format!("lost leadership of Lease {lease}"))
    };
    let result = tokio::select! {
        biased;
        // Leaving through this arm drops the work future: every reconcile, watch and hook
        // of it stops here, whatever it was doing.
        // A keeper that ended without a word (it panicked) counts as a loss too.
        reason = &mut lost => return Err(lost_error(
            reason.unwrap_or_else(|_| anyhow::anyhow!("the lease keeper stopped")),
        )),
        result = work => result,
    };
    // The work has stopped in good order (a shutdown signal, or its own end) while the
    // keeper still held the Lease: hand the Lease over at once.
    let _ = release_tx.send(());
    tokio::select! {
        biased;
        // Lost before the release was asked for; a keeper that released drops its sender.
        Ok(reason) = &mut lost => return Err(lost_error(reason)),
        _ = keeper => {}
    }
    result
}

/// One replica's view of the Lease and its moves.
struct Elector {
    api: Api<Lease>,
    lease: String,
    identity: String,
    timing: Timing,
    /// The record last seen, and since when (monotonic) it has been seen unchanged.
    observed: Option<(Record, Instant)>,
}

/// What one attempt to take or renew the Lease found.
enum Attempt {
    /// The Lease is ours (taken, or renewed).
    Held,
    /// Someone else holds it (`holder`), or took it meanwhile (a write conflict: `None`).
    Other(Option<String>),
}

impl Elector {
    /// Tries every retry period until the Lease is ours; returns when the winning attempt
    /// started (what the renew deadline runs from).
    async fn acquire(&mut self) -> Instant {
        loop {
            let started = Instant::now();
            match self.attempt(false).await {
                Ok(Attempt::Held) => return started,
                Ok(Attempt::Other(holder)) => {
                    tracing::debug!(lease = %self.lease, ?holder, "the Lease is held");
                }
                Err(e) => {
                    tracing::warn!(lease = %self.lease, error = %format!("{e:#}"), "reading or taking the Lease");
                }
            }
            tokio::time::sleep_until((started + self.timing.retry).into()).await;
        }
    }

    /// Renews every retry period while leading; returns why leading ended: the renew
    /// deadline passed since the last successful renewal, or another holder was seen.
    async fn keep(&mut self, mut last_renewal: Instant) -> anyhow::Error {
        let mut last_error = None;
        loop {
            let deadline = rules::renew_deadline(last_renewal, &self.timing);
            let next = (Instant::now() + self.timing.retry).min(deadline);
            tokio::time::sleep_until(next.into()).await;
            let started = Instant::now();
            if !rules::keeps_leading(last_renewal, started, &self.timing) {
                return self.missed(last_renewal, last_error);
            }
            // No renewal may end past the deadline: a hung request counts as a failed one.
            match tokio::time::timeout_at(deadline.into(), self.attempt(true)).await {
                Ok(Ok(Attempt::Held)) => {
                    last_renewal = started;
                    last_error = None;
                }
                Ok(Ok(Attempt::Other(Some(holder)))) => {
                    return anyhow::anyhow!("the Lease is held by {holder} now");
                }
                Ok(Ok(Attempt::Other(None))) => {
                    tracing::warn!(lease = %self.lease, "renewing the Lease: written meanwhile; retrying");
                    last_error = Some(anyhow::anyhow!("a conflicting write of the Lease"));
                }
                Ok(Err(e)) => {
                    tracing::warn!(lease = %self.lease, error = %format!("{e:#}"), "renewing the Lease failed; retrying");
                    last_error = Some(e);
                }
                Err(_) => {
                    return self.missed(
                        last_renewal,
                        Some(anyhow::anyhow!("a renewal still unanswered")),
                    );
                }
            }
        }
    }

    fn missed(&self, last_renewal: Instant, last_error: Option<anyhow::Error>) -> anyhow::Error {
        let error = anyhow::anyhow!(
            "not renewed for {:?} (renew deadline {:?})",
            last_renewal.elapsed(),
            self.timing.renew_deadline
        );
        match last_error {
            Some(e) => e.context(error),
            None => error,
        }
    }

    /// One try, as client-go's tryAcquireOrRenew: read the Lease, and if this replica may
    /// hold it, write itself in, conditional on the version read. A `leading` replica only
    /// renews: a Lease that names anyone else (or no one) means it was taken from it.
    async fn attempt(&mut self, leading: bool) -> anyhow::Result<Attempt> {
        let name = self.lease.clone();
        let Some(mut current) = self
            .api
            .get_opt(&name)
            .await
            .with_context(|| format!("reading Lease {name}"))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(rules::claimed(
                    None,
                    &self.identity,
                    &self.timing,
                    Timestamp::now(),
                )),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.note(&created);
                    Ok(Attempt::Held)
                }
                Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(Attempt::Other(None)),
                Err(e) => Err(e).with_context(|| format!("creating Lease {name}")),
            };
        };
        self.note(&current);
        let Some((record, since)) = &self.observed else {
            bail!("Lease {name} was read but not noted");
        };
        let ours = record.holder.as_deref() == Some(self.identity.as_str());
        if leading && !ours {
            return Ok(Attempt::Other(Some(
                record.holder.clone().unwrap_or_else(|| "no one".into()),
            )));
        }
        if !rules::may_acquire(record, *since, Instant::now(), &self.identity, &self.timing) {
            return Ok(Attempt::Other(record.holder.clone()));
        }
        current.spec = Some(rules::claimed(
            current.spec.as_ref(),
            &self.identity,
            &self.timing,
            Timestamp::now(),
        ));
        // A replace carries the resourceVersion read: if anyone wrote the Lease since, the
        // API server refuses it (409) and nobody's write is lost.
        match self
            .api
            .replace(&name, &PostParams::default(), &current)
            .await
        {
            Ok(written) => {
                self.note(&written);
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(Attempt::Other(None)),
            Err(e) => Err(e).with_context(|| format!("writing Lease {name}")),
        }
    }

    /// Notes the record read or written; its clock restarts when it changed.
    fn note(&mut self, lease: &Lease) {
        let record = Record::of(lease.spec.as_ref());
        if self
            .observed
            .as_ref()
            .is_none_or(|(seen, _)| seen != &record)
        {
            self.observed = Some((record, Instant::now()));
        }
    }

    /// Frees the Lease if it is still ours, so another replica takes over at once; within
    /// the renew deadline, and only a warning if it fails (the Lease then expires).
    async fn release(&mut self) {
        let name = self.lease.clone();
        let write = async {
            let Some(mut current) = self.api.get_opt(&name).await? else {
                return Ok(());
            };
            if Record::of(current.spec.as_ref()).holder.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            current.spec = Some(rules::released(current.spec.as_ref(), Timestamp::now()));
            self.api
                .replace(&name, &PostParams::default(), &current)
                .await
                .map(|_| ())
        };
        match tokio::time::timeout(self.timing.renew_deadline, write).await {
            Ok(Ok(())) => tracing::info!(lease = %name, "released the Lease"),
            Ok(Err(e)) => tracing::warn!(lease = %name, error = %e, "releasing the Lease"),
            Err(_) => tracing::warn!(lease = %name, "releasing the Lease: no answer"),
        }
    }
}
