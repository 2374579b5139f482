//! The decisions of leader election, apart from the API calls: when a replica may take the
//! Lease, when a leader must stop, and what it writes. The same rules as client-go's
//! leaderelection package:
//!
//! - a follower may take a held Lease only once it has seen the Lease unchanged for the
//!   lease duration D, timed by its own monotonic clock from when it first saw that record
//!   (never by the holder's wall-clock `renewTime`, so clock skew between nodes does not
//!   matter);
//! - a leader leads only while its renewals succeed: once the renew deadline R < D has
//!   passed since the start of its last successful renewal, it stops.
//!
//! A successful renewal is written after it started and seen by a follower after it was
//! written, so the follower's D runs from later than the leader's R: the old leader has
//! stopped D − R before the new one can take over.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;

/// client-go's JitterFactor: the renew deadline must leave room for more than one retry.
const RETRY_ROOM: f64 = 1.2;

/// The three durations of leader election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// D: how long a Lease stays valid after its holder's last renewal.
    pub lease: Duration,
    /// R: a leader that has not renewed within this long stops leading.
    pub renew_deadline: Duration,
    /// P: how often a leader renews and a follower looks at the Lease.
    pub retry: Duration,
}

impl Timing {
    /// The durations from the flags: the renew deadline defaults to two thirds of the lease
    /// duration and the retry period to a fifth of the renew deadline (client-go's 15 s,
    /// 10 s, 2 s for a 15 s lease).
    pub fn new(
        lease: Duration,
        renew_deadline: Option<Duration>,
        retry: Option<Duration>,
    ) -> Result<Self, String> {
        let renew_deadline = renew_deadline.unwrap_or(lease * 2 / 3);
        let retry = retry.unwrap_or(renew_deadline / 5);
        if lease.as_secs_f64() < 1.0 {
            return Err(format!(
                "the lease duration ({lease:?}) must be at least 1s: the Lease records it in \
                 whole seconds"
            ));
        }
        if renew_deadline >= lease {
            return Err(format!(
                "the renew deadline ({renew_deadline:?}) must be shorter than the lease duration \
                 ({lease:?}): a leader must have stopped before another may take over"
            ));
        }
        if retry.is_zero() || renew_deadline.as_secs_f64() <= retry.as_secs_f64() * RETRY_ROOM {
            return Err(format!(
                "the retry period ({retry:?}) must be above zero and the renew deadline \
                 ({renew_deadline:?}) more than {RETRY_ROOM} times it"
            ));
        }
        Ok(Self {
            lease,
            renew_deadline,
            retry,
        })
    }

    /// The lease duration as the Lease records it, in whole seconds, rounded up so that no
    /// follower waits less than D.
    pub fn lease_seconds(&self) -> i32 {
        let secs = self.lease.as_secs() + u64::from(self.lease.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }
}

/// What leader election compares of a Lease: a change of any of these (a renewal changes
/// `renewTime`) restarts a follower's wait.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub holder: Option<String>,
    pub lease_seconds: Option<i32>,
    pub acquire_time: Option<MicroTime>,
    pub renew_time: Option<MicroTime>,
    pub transitions: Option<i32>,
}

impl Record {
    pub fn of(spec: Option<&LeaseSpec>) -> Self {
        let Some(spec) = spec else {
            return Self::default();
        };
        Self {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            lease_seconds: spec.lease_duration_seconds,
            acquire_time: spec.acquire_time.clone(),
            renew_time: spec.renew_time.clone(),
            transitions: spec.lease_transitions,
        }
    }
}

/// Whether `me` may write itself into the Lease whose record is `record`, first seen in this
/// form at `observed_at` and still so at `now`: it is free, ours (a renewal, or our own
/// earlier process), or unchanged for the lease duration — the longer of the holder's (as
/// the record says) and ours.
pub fn may_acquire(
    record: &Record,
    observed_at: Instant,
    now: Instant,
    me: &str,
    timing: &Timing,
) -> bool {
    let Some(holder) = record.holder.as_deref() else {
        return true;
    };
    if holder == me {
        return true;
    }
    let theirs = record
        .lease_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
        .unwrap_or_default();
    let wait = theirs.max(timing.lease);
    now.saturating_duration_since(observed_at) >= wait
}

/// When a leader whose last successful renewal started at `last_renewal` must have stopped.
pub fn renew_deadline(last_renewal: Instant, timing: &Timing) -> Instant {
    last_renewal + timing.renew_deadline
}

/// Whether a leader whose last successful renewal started at `last_renewal` still leads at
/// `now`.
pub fn keeps_leading(last_renewal: Instant, now: Instant, timing: &Timing) -> bool {
    now < renew_deadline(last_renewal, timing)
}

/// The Lease spec `me` writes to take or renew the Lease at wall-clock `now` (what other
/// tools show; leader election itself does not read these times).
pub fn claimed(old: Option<&LeaseSpec>, me: &str, timing: &Timing, now: Timestamp) -> LeaseSpec {
    let old = old.cloned().unwrap_or_default();
    let renewal = old.holder_identity.as_deref() == Some(me);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(timing.lease_seconds()),
        acquire_time: if renewal {
            old.acquire_time.clone()
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: if renewal {
            old.lease_transitions
        } else {
            Some(old.lease_transitions.unwrap_or(0).saturating_add(1))
        },
        ..old
    }
}

/// The Lease spec a leader that stops in good order writes, so that another takes over at
/// once instead of after the lease duration (client-go's ReleaseOnCancel).
pub fn released(old: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
    let old = old.cloned().unwrap_or_default();
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        ..old
    }
}

/// Parses a duration flag: `15s`, `500ms`, `2m`, or a bare number of seconds (as the older
/// `--lease-seconds` took).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(n) = text.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (like 15s, 500ms, 2m or 15)"))?;
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing::new(Duration::from_secs(15), None, None).expect("valid")
    }

    fn held_by(holder: &str, seconds: i32) -> Record {
        Record {
            holder: Some(holder.into()),
            lease_seconds: Some(seconds),
            ..Record::default()
        }
    }

    #[test]
    fn defaults_are_client_gos() {
        let t = timing();
        assert_eq!(t.renew_deadline, Duration::from_secs(10));
        assert_eq!(t.retry, Duration::from_secs(2));
        assert_eq!(t.lease_seconds(), 15);
    }

    #[test]
    fn a_renew_deadline_not_shorter_than_the_lease_is_refused() {
        let d = Duration::from_secs(10);
        assert!(Timing::new(d, Some(d), None).is_err());
        assert!(Timing::new(d, Some(Duration::from_secs(11)), None).is_err());
        assert!(Timing::new(d, Some(Duration::from_secs(4)), Some(Duration::ZERO)).is_err());
        // The deadline must leave room for more than one try.
        assert!(
            Timing::new(
                d,
                Some(Duration::from_secs(4)),
                Some(Duration::from_secs(4))
            )
            .is_err()
        );
        assert!(Timing::new(Duration::from_millis(500), None, None).is_err());
        assert!(
            Timing::new(
                d,
                Some(Duration::from_secs(4)),
                Some(Duration::from_secs(1))
            )
            .is_ok()
        );
    }

    #[test]
    fn the_smallest_chart_lease_gets_working_defaults() {
        let t = Timing::new(Duration::from_secs(2), None, None).expect("valid");
        assert!(t.renew_deadline < t.lease && t.retry < t.renew_deadline);
    }

    #[test]
    fn a_fractional_lease_is_recorded_rounded_up() {
        let t = Timing::new(Duration::from_millis(4500), None, None).expect("valid");
        assert_eq!(t.lease_seconds(), 5);
    }

    #[test]
    fn a_free_or_own_lease_may_be_taken_at_once() {
        let t0 = Instant::now();
        let t = timing();
        assert!(may_acquire(&Record::default(), t0, t0, "a", &t));
        let released = Record {
            holder: None,
            lease_seconds: Some(1),
            ..Record::default()
        };
        assert!(may_acquire(&released, t0, t0, "a", &t));
        assert!(may_acquire(&held_by("a", 15), t0, t0, "a", &t));
    }

    #[test]
    fn a_held_lease_is_taken_only_after_the_lease_duration_unchanged() {
        let t0 = Instant::now();
        let t = timing();
        let record = held_by("b", 15);
        assert!(!may_acquire(&record, t0, t0, "a", &t));
        assert!(!may_acquire(
            &record,
            t0,
            t0 + Duration::from_millis(14_999),
            "a",
            &t
        ));
        assert!(may_acquire(
            &record,
            t0,
            t0 + Duration::from_secs(15),
            "a",
            &t
        ));
    }

    #[test]
    fn the_longer_of_the_holders_and_our_lease_duration_counts() {
        let t0 = Instant::now();
        let t = timing();
        let longer = held_by("b", 30);
        assert!(!may_acquire(
            &longer,
            t0,
            t0 + Duration::from_secs(20),
            "a",
            &t
        ));
        assert!(may_acquire(
            &longer,
            t0,
            t0 + Duration::from_secs(30),
            "a",
            &t
        ));
        let shorter = held_by("b", 1);
        assert!(!may_acquire(
            &shorter,
            t0,
            t0 + Duration::from_secs(5),
            "a",
            &t
        ));
    }

    #[test]
    fn a_leader_stops_at_its_renew_deadline_before_anyone_may_take_over() {
        let t = timing();
        let renewed = Instant::now();
        assert!(keeps_leading(renewed, renewed, &t));
        assert!(keeps_leading(
            renewed,
            renewed + Duration::from_millis(9_999),
            &t
        ));
        assert!(!keeps_leading(
            renewed,
            renewed + Duration::from_secs(10),
            &t
        ));
        // A follower sees that renewal no earlier than it started; at the leader's deadline
        // it may not take over yet.
        let seen = renewed;
        let at_deadline = renew_deadline(renewed, &t);
        assert!(!may_acquire(
            &held_by("leader", t.lease_seconds()),
            seen,
            at_deadline,
            "follower",
            &t
        ));
    }

    #[test]
    fn taking_a_lease_counts_a_transition_and_renewing_keeps_the_acquire_time() {
        let t = timing();
        let then = Timestamp::from_second(1_000).expect("time");
        let now = Timestamp::from_second(1_010).expect("time");
        let taken = claimed(
            Some(&LeaseSpec {
                holder_identity: Some("b".into()),
                lease_transitions: Some(3),
                acquire_time: Some(MicroTime(then)),
                ..LeaseSpec::default()
            }),
            "a",
            &t,
            now,
        );
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        assert_eq!(taken.lease_duration_seconds, Some(15));
        let later = Timestamp::from_second(1_012).expect("time");
        let renewed = claimed(Some(&taken), "a", &t, later);
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time, Some(MicroTime(now)));
        assert_eq!(renewed.renew_time, Some(MicroTime(later)));
        assert_eq!(claimed(None, "a", &t, now).lease_transitions, Some(1));
    }

    #[test]
    fn a_released_lease_is_free_and_keeps_its_transitions() {
        let now = Timestamp::from_second(1_000).expect("time");
        let held = LeaseSpec {
            holder_identity: Some("a".into()),
            lease_transitions: Some(2),
            ..LeaseSpec::default()
        };
        let free = released(Some(&held), now);
        assert_eq!(Record::of(Some(&free)).holder, None);
        assert_eq!(free.lease_transitions, Some(2));
    }

    #[test]
    fn an_empty_holder_is_no_holder() {
        let spec = LeaseSpec {
            holder_identity: Some(String::new()),
            ..LeaseSpec::default()
        };
        assert_eq!(Record::of(Some(&spec)).holder, None);
    }

    #[test]
    fn durations_parse_with_units_or_as_seconds() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("4"), Ok(Duration::from_secs(4)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
