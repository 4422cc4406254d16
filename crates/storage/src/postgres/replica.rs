//! Replica health: how far a streaming replica is behind its primary, in bytes and in time, and
//! whether it may serve reads.
//!
//! The shard router and `kirana doctor` ask each replica the same question, often: [`probe`]. It
//! reads a handful of built-in functions on both servers and nothing else. It never writes, never
//! touches replication (no pause, resume or promote) and never decides by itself that a replica
//! leaves rotation: that is [`LagPolicy`] (one probe) and [`Rotation`] (a run of probes, with
//! hysteresis).
//!
//! Positions are WAL LSNs carried as `u64` (PostgreSQL prints them as `16/B374D848`, see
//! [`parse_lsn`] and [`format_lsn`]). Read-your-writes rests on them, not on time: a caller's
//! write token is the primary's position after its commit ([`write_token`]), and a replica may
//! answer that caller once it has replayed that far ([`caught_up`]).
//!
//! The probing role must be a superuser or hold `pg_monitor` (for `pg_read_all_stats`): without
//! it PostgreSQL hides `pg_stat_wal_receiver.status`, and every replica would look
//! [`ReplicaState::ReceiverDown`].

use std::fmt;

use tokio_postgres::Client;
use tokio_postgres::types::PgLsn;

/// What a replica is doing, as far as serving reads is concerned. Only `Streaming` may serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaState {
    /// In recovery, receiving WAL from the primary and applying it.
    Streaming,
    /// In recovery and receiving, but replay was paused (`pg_wal_replay_pause()`): it falls
    /// further behind with every write on the primary, without bound.
    ReplayPaused,
    /// In recovery, but no WAL receiver is streaming: the primary is unreachable, replication
    /// was refused, or the receiver is restarting. It will not see new writes.
    ReceiverDown,
    /// Not in recovery at all: promoted, or started without a standby signal. Its data may
    /// diverge from the primary's from now on; it must never serve this shard's reads.
    NotInRecovery,
}

impl ReplicaState {
    /// One sentence for an operator: what this state means for reads.
    pub fn why(self) -> &'static str {
        match self {
            ReplicaState::Streaming => "streaming from the primary and replaying",
            ReplicaState::ReplayPaused => {
                "WAL replay is paused (pg_wal_replay_pause); it falls behind with every write until resumed"
            }
            ReplicaState::ReceiverDown => "no WAL receiver is streaming from the primary; it will not see new writes",
            ReplicaState::NotInRecovery => {
                "not in recovery (promoted or misconfigured); its data may diverge from the primary's"
            }
        }
    }
}

impl fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplicaState::Streaming => "streaming",
            ReplicaState::ReplayPaused => "replay paused",
            ReplicaState::ReceiverDown => "receiver down",
            ReplicaState::NotInRecovery => "not in recovery",
        })
    }
}

/// One probe's answer about one replica.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaHealth {
    pub state: ReplicaState,
    /// `pg_current_wal_lsn()` on the primary, read before the replica was asked (see [`probe`]).
    pub primary_lsn: u64,
    /// `pg_last_wal_receive_lsn()`: how far WAL has arrived on the replica. 0 when nothing has
    /// been streamed since the replica started. Right after a restart it may sit *below*
    /// `replay_lsn`: streaming restarts at the beginning of a WAL segment.
    pub receive_lsn: u64,
    /// `pg_last_wal_replay_lsn()`: how far the replica has applied WAL. Reads there see exactly
    /// the transactions committed before this position. 0 if it never was in recovery.
    pub replay_lsn: u64,
    /// `primary_lsn − replay_lsn`, or 0 when the replica is at or past it.
    pub lag_bytes: u64,
    /// How old the replica's view is, in seconds: 0 when it has replayed everything the primary
    /// had written; otherwise `now() − pg_last_xact_replay_timestamp()` on the replica, and
    /// `f64::INFINITY` when behind with no replayed commit since it started (unknown, so assume
    /// the worst). See [`probe`] for why this overestimates after an idle spell.
    pub lag_seconds: f64,
    /// `pg_stat_wal_receiver.status` (`streaming`, `starting`, `waiting`, …), `None` when no
    /// receiver runs. Kept for `kirana doctor`.
    pub receiver_status: Option<String>,
}

impl ReplicaHealth {
    /// Whether this replica has replayed a caller's write token; see [`caught_up`].
    pub fn caught_up_with(&self, token_lsn: u64) -> bool {
        caught_up(self.replay_lsn, token_lsn)
    }
}

impl fmt::Display for ReplicaHealth {
    /// One line for `kirana doctor` and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} bytes and {} behind (primary {}, received {}, replayed {}); {}",
            self.state,
            self.lag_bytes,
            match self.lag_seconds {
                s if s.is_infinite() => "an unknown time".to_owned(),
                s => format!("{s:.3} s"),
            },
            format_lsn(self.primary_lsn),
            format_lsn(self.receive_lsn),
            format_lsn(self.replay_lsn),
            self.state.why(),
        )?;
        if self.state == ReplicaState::ReceiverDown {
            match &self.receiver_status {
                Some(status) => write!(f, " (receiver status: {status})")?,
                None => f.write_str(" (no receiver process)")?,
            }
        }
        Ok(())
    }
}

/// Probes a replica against its primary.
///
/// The primary is read first, on purpose: the replica is then compared with a position the
/// primary had already written when the replica was asked, so `lag_bytes` is never
/// underestimated, and `replay_lsn ≥ primary_lsn` means "has replayed everything the primary had
/// at probe time". That is the idle, caught-up case, and it is reported as 0 seconds: there
/// `pg_last_xact_replay_timestamp()` is merely the time of the last commit, which on a quiet
/// shard can be hours old although the replica is perfectly fresh.
///
/// When behind, the time lag is measured from the last replayed commit. This overestimates
/// after an idle spell: the first WAL after an hour of quiet shows an hour of lag until the
/// replica replays it, usually milliseconds later. That WAL need not be a write: an idle primary
/// still logs a running-transactions record about 15 s after its last activity. It also trusts
/// the two clocks to agree. Overestimating is the safe side for routing; [`Rotation`] keeps one
/// such blip from costing more than a probe interval.
///
/// The probe sets no timeout of its own: the caller wraps it (`tokio::time::timeout`) with the
/// probe interval it uses. Any error — the replica is stopped, unreachable or mid-restart, or
/// the "primary" is itself in recovery — means the caller takes the replica out of rotation.
pub async fn probe(primary: &Client, replica: &Client) -> Result<ReplicaHealth, tokio_postgres::Error> {
    // `query_typed` sends no separate Prepare: one round trip per server.
    let primary_lsn =
        lsn(primary.query_typed("SELECT pg_current_wal_lsn()", &[]).await.and_then(one_row)?.try_get(0)?);

    // `pg_is_wal_replay_paused()` raises an error outside recovery, hence the CASE.
    // `pg_stat_wal_receiver` has at most one row.
    let row = replica
        .query_typed(
            "SELECT pg_is_in_recovery(),
                    pg_last_wal_replay_lsn(),
                    pg_last_wal_receive_lsn(),
                    CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END,
                    extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8,
                    (SELECT pid FROM pg_stat_wal_receiver),
                    (SELECT status FROM pg_stat_wal_receiver)",
            &[],
        )
        .await
        .and_then(one_row)?;
    let in_recovery: bool = row.try_get(0)?;
    let replay_lsn = lsn(row.try_get(1)?);
    let receive_lsn = lsn(row.try_get(2)?);
    let paused: bool = row.try_get(3)?;
    let replay_age: Option<f64> = row.try_get(4)?;
    let receiver_pid: Option<i32> = row.try_get(5)?;
    let mut receiver_status: Option<String> = row.try_get(6)?;
    if receiver_pid.is_some() && receiver_status.is_none() {
        // A receiver runs, but this role may not see what it does.
        receiver_status = Some("hidden: the probing role needs pg_monitor".to_owned());
    }

    let state = if !in_recovery {
        ReplicaState::NotInRecovery
    } else if receiver_status.as_deref() != Some("streaming") {
        ReplicaState::ReceiverDown
    } else if paused {
        ReplicaState::ReplayPaused
    } else {
        ReplicaState::Streaming
    };
    let lag_seconds = if replay_lsn >= primary_lsn {
        0.0
    } else {
        // Negative only when the replica's clock is behind the primary's.
        replay_age.map_or(f64::INFINITY, |age| age.max(0.0))
    };
    Ok(ReplicaHealth {
        state,
        primary_lsn,
        receive_lsn,
        replay_lsn,
        lag_bytes: primary_lsn.saturating_sub(replay_lsn),
        lag_seconds,
        receiver_status,
    })
}

/// Probes a replica alone, for when its primary cannot be reached: how far it has received and
/// replayed, and whether it is still a standby. Nothing newer than what it received can be read
/// anywhere this node reaches, so `primary_lsn` is taken as the furthest it received (or
/// replayed), and lag is measured against that: only WAL received and not yet replayed.
pub async fn probe_alone(replica: &Client) -> Result<ReplicaHealth, tokio_postgres::Error> {
    let row = replica
        .query_typed(
            "SELECT pg_is_in_recovery(),
                    pg_last_wal_replay_lsn(),
                    pg_last_wal_receive_lsn(),
                    CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END,
                    extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8,
                    (SELECT status FROM pg_stat_wal_receiver)",
            &[],
        )
        .await
        .and_then(one_row)?;
    let in_recovery: bool = row.try_get(0)?;
    let replay_lsn = lsn(row.try_get(1)?);
    let receive_lsn = lsn(row.try_get(2)?);
    let paused: bool = row.try_get(3)?;
    let replay_age: Option<f64> = row.try_get(4)?;
    let receiver_status: Option<String> = row.try_get(5)?;
    let state = if !in_recovery {
        ReplicaState::NotInRecovery
    } else if receiver_status.as_deref() != Some("streaming") {
        ReplicaState::ReceiverDown
    } else if paused {
        ReplicaState::ReplayPaused
    } else {
        ReplicaState::Streaming
    };
    let known = receive_lsn.max(replay_lsn);
    Ok(ReplicaHealth {
        state,
        primary_lsn: known,
        receive_lsn,
        replay_lsn,
        lag_bytes: known.saturating_sub(replay_lsn),
        lag_seconds: if replay_lsn >= known { 0.0 } else { replay_age.map_or(f64::INFINITY, |a| a.max(0.0)) },
        receiver_status,
    })
}

/// Whether a replica may serve reads while its primary is down: still a standby (a promoted
/// one is the new primary, reached through the primary's URL, and may have diverged) and done
/// replaying what it received. Lag to the lost primary cannot be known; what it has is the
/// freshest this node can read.
pub fn serves_without_primary(health: &ReplicaHealth) -> bool {
    health.state != ReplicaState::NotInRecovery && health.replay_lsn >= health.receive_lsn
}

/// A write token: the primary's WAL position, read after the caller's commit returned.
///
/// With `synchronous_commit` on (PostgreSQL's default) the commit record has been flushed when
/// the commit returns, so this position is at or past it, read from any session. With
/// `synchronous_commit = off` the commit returns before its WAL is written and this may fall
/// short of it; such a deployment must take `pg_current_wal_insert_lsn()` instead.
pub async fn write_token(primary: &Client) -> Result<u64, tokio_postgres::Error> {
    Ok(lsn(primary.query_typed("SELECT pg_current_wal_lsn()", &[]).await.and_then(one_row)?.try_get(0)?))
}

/// Whether a replica that has replayed up to `replay_lsn` sees a write whose token is
/// `token_lsn`: read-your-writes by position, never by a waiting period.
pub fn caught_up(replay_lsn: u64, token_lsn: u64) -> bool {
    replay_lsn >= token_lsn
}

/// Parses PostgreSQL's text form of an LSN, `16/B374D848`: two hexadecimal halves of up to
/// eight digits each, high half first.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    let half = |part: &str| {
        // `from_str_radix` would also take a leading `+`.
        if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(part, 16).ok()
    };
    Some((u64::from(half(high)?) << 32) | u64::from(half(low)?))
}

/// Formats an LSN the way PostgreSQL prints it, so that it can be pasted into SQL.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// How far behind a replica may be and still serve bounded-staleness reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LagPolicy {
    pub max_bytes: u64,
    pub max_seconds: f64,
}

impl LagPolicy {
    /// Whether one probe puts this replica in rotation: streaming, and within both bounds.
    ///
    /// A paused or disconnected replica is refused even when it happens to be caught up: it
    /// stops following at the next write, and nothing would bound its staleness until the next
    /// probe. (Read-your-writes may still use it for a caller whose token it has replayed.)
    pub fn admits(&self, health: &ReplicaHealth) -> bool {
        self.within(health, 1.0)
    }

    /// The stricter bound a replica must meet to come back: half of each.
    fn readmits(&self, health: &ReplicaHealth) -> bool {
        self.within(health, 0.5)
    }

    fn within(&self, health: &ReplicaHealth, fraction: f64) -> bool {
        health.state == ReplicaState::Streaming
            && health.lag_bytes as f64 <= self.max_bytes as f64 * fraction
            && health.lag_seconds <= self.max_seconds * fraction
    }
}

/// One replica's place in rotation across probes, with hysteresis: it leaves as soon as a probe
/// fails or is past either bound, and returns only when a probe finds it within *half* of both.
///
/// Why: a replica hovering at the bound would otherwise flap in and out on every probe, and each
/// return would send it reads just before it slips again. Leaving stays immediate because
/// staleness is the harm; returning waits because a replica that just came back under the bound
/// is usually still catching up. A new `Rotation` starts out of rotation: a replica earns its
/// place with its first good probe.
///
/// No ban is ever lifted for lack of alternatives: when no replica is in rotation, reads go to
/// the primary.
#[derive(Debug, Clone)]
pub struct Rotation {
    policy: LagPolicy,
    in_rotation: bool,
}

impl Rotation {
    pub fn new(policy: LagPolicy) -> Self {
        Rotation { policy, in_rotation: false }
    }

    /// Takes one probe's outcome (`None` when the probe failed or timed out) and says whether
    /// the replica is in rotation now.
    pub fn observe(&mut self, health: Option<&ReplicaHealth>) -> bool {
        self.in_rotation = match health {
            None => false,
            Some(health) if self.in_rotation => self.policy.admits(health),
            Some(health) => self.policy.readmits(health),
        };
        self.in_rotation
    }

    pub fn in_rotation(&self) -> bool {
        self.in_rotation
    }
}

fn lsn(value: Option<PgLsn>) -> u64 {
    value.map_or(0, u64::from)
}

fn one_row(rows: Vec<tokio_postgres::Row>) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
    // Both queries are a bare SELECT without FROM or WHERE: exactly one row, always.
    Ok(rows.into_iter().next().expect("a SELECT without FROM returns one row"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(state: ReplicaState, lag_bytes: u64, lag_seconds: f64) -> ReplicaHealth {
        ReplicaHealth {
            state,
            primary_lsn: 1_000_000 + lag_bytes,
            receive_lsn: 1_000_000 + lag_bytes,
            replay_lsn: 1_000_000,
            lag_bytes,
            lag_seconds,
            receiver_status: Some("streaming".to_owned()),
        }
    }

    const POLICY: LagPolicy = LagPolicy { max_bytes: 1_000, max_seconds: 2.0 };

    #[test]
    fn lsns_parse_as_postgres_prints_them() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF"), Some(u64::MAX));
        assert_eq!(parse_lsn("0/3000148"), Some(0x300_0148));
        assert_eq!(parse_lsn("a/b"), Some(0xA_0000_000B));
    }

    #[test]
    fn malformed_lsns_are_refused() {
        for bad in ["", "/", "16", "16/", "/B374D848", "1/2/3", "+1/2", "1/-2", "G/0", "100000000/0", " 1/2", "1/2 "] {
            assert_eq!(parse_lsn(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formatting_round_trips_through_parsing() {
        for lsn in [0, 1, 0x16_B374_D848, 0xFFFF_FFFF, 0x1_0000_0000, u64::MAX] {
            assert_eq!(parse_lsn(&format_lsn(lsn)), Some(lsn));
        }
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(format_lsn(0x300_0148), "0/3000148");
    }

    #[test]
    fn a_replica_serves_a_token_once_it_has_replayed_that_far() {
        assert!(caught_up(100, 100));
        assert!(caught_up(101, 100));
        assert!(!caught_up(99, 100));
        assert!(health(ReplicaState::Streaming, 0, 0.0).caught_up_with(1_000_000));
        assert!(!health(ReplicaState::Streaming, 0, 0.0).caught_up_with(1_000_001));
    }

    #[test]
    fn the_policy_admits_only_a_streaming_replica_within_both_bounds() {
        assert!(POLICY.admits(&health(ReplicaState::Streaming, 1_000, 2.0)));
        assert!(!POLICY.admits(&health(ReplicaState::Streaming, 1_001, 0.0)));
        assert!(!POLICY.admits(&health(ReplicaState::Streaming, 0, 2.5)));
        assert!(!POLICY.admits(&health(ReplicaState::Streaming, 10, f64::INFINITY)));
        for state in [ReplicaState::ReplayPaused, ReplicaState::ReceiverDown, ReplicaState::NotInRecovery] {
            assert!(!POLICY.admits(&health(state, 0, 0.0)), "{state}");
        }
    }

    #[test]
    fn rotation_leaves_at_the_bound_and_returns_only_under_half_of_it() {
        let mut rotation = Rotation::new(POLICY);
        assert!(!rotation.in_rotation(), "a new replica has not proved itself yet");
        assert!(!rotation.observe(Some(&health(ReplicaState::Streaming, 800, 0.5))), "over half: not yet");
        assert!(rotation.observe(Some(&health(ReplicaState::Streaming, 400, 0.5))));
        assert!(rotation.observe(Some(&health(ReplicaState::Streaming, 900, 1.9))), "in rotation up to the bound");
        assert!(!rotation.observe(Some(&health(ReplicaState::Streaming, 1_200, 0.1))), "leaves past it");
        assert!(!rotation.observe(Some(&health(ReplicaState::Streaming, 900, 0.1))), "back under, not under half");
        assert!(!rotation.observe(Some(&health(ReplicaState::Streaming, 100, 1.5))), "seconds count too");
        assert!(rotation.observe(Some(&health(ReplicaState::Streaming, 100, 0.2))));
        assert!(!rotation.observe(None), "a failed probe takes it out at once");
        assert!(!rotation.in_rotation());
    }

    #[test]
    fn the_doctor_line_names_state_lag_and_positions() {
        let mut down = health(ReplicaState::ReceiverDown, 4_096, f64::INFINITY);
        down.receiver_status = None;
        let line = down.to_string();
        assert!(line.starts_with("receiver down: 4096 bytes and an unknown time behind"), "{line}");
        assert!(line.contains("replayed 0/F4240"), "{line}");
        assert!(line.ends_with("(no receiver process)"), "{line}");
        let fine = health(ReplicaState::Streaming, 0, 0.0).to_string();
        assert!(fine.starts_with("streaming: 0 bytes and 0.000 s behind"), "{fine}");
    }
}
