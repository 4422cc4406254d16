//! A shard's replicas as its router sees them: each one's pool, its last probe, and whether it
//! is in rotation; the prober loop that keeps that current; and the choice of a replica for a
//! read.
//!
//! Routing never waits for a probe: a read looks at the last one. A replica's place is decided
//! by [`Rotation`] (hysteresis over [`LagPolicy`]); a read that needs the caller's own writes
//! also needs the replica's last replayed position to be at or past the caller's token. When no
//! replica qualifies the read goes to the primary, and the counters say how often that happens.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::Object;

use super::pool::PgPool;
use super::replica::{LagPolicy, ReplicaHealth, Rotation, probe, probe_alone, serves_without_primary};
use crate::scope::ShardId;

/// How the prober and router treat replicas.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaSettings {
    pub policy: LagPolicy,
    /// Time between probes of each replica.
    pub probe_every: Duration,
    /// A probe that takes longer counts as failed (the replica leaves rotation).
    pub probe_timeout: Duration,
    /// How long one read on a replica may take, its connection included. A read past it is
    /// abandoned and run on the primary, and the replica leaves rotation; a probe slower than
    /// it is a failed probe, so a slow replica stays out rather than flapping back in between
    /// reads that each pay the deadline.
    ///
    /// Why: without it a slow replica (a saturated disk, a congested link) does not fail, it
    /// only makes every read that lands on it as slow as it is, and nothing moves them. Every
    /// replica-level read is an indexed lookup or reads a rollup, milliseconds when healthy;
    /// the default leaves ample room for a busy server and still bounds what a slow one costs.
    pub read_deadline: Duration,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        ReplicaSettings {
            // Storefront reads may be a second or 16 MiB of WAL behind; past either, the primary.
            policy: LagPolicy { max_bytes: 16 << 20, max_seconds: 1.0 },
            probe_every: Duration::from_millis(250),
            probe_timeout: Duration::from_secs(1),
            read_deadline: Duration::from_millis(250),
        }
    }
}

/// One replica's state for `kirana doctor` and metrics.
#[derive(Debug, Clone)]
pub struct ReplicaReport {
    pub index: u32,
    pub in_rotation: bool,
    /// The last successful probe, if the last probe succeeded.
    pub health: Option<ReplicaHealth>,
    /// Why the last probe failed, if it did.
    pub error: Option<String>,
    /// How long ago the last probe finished; `None` before the first.
    pub probed_ago: Option<Duration>,
    /// Reads this replica served since start.
    pub reads: u64,
    /// The primary is down and this replica serves the shard's reads on its own, as of what it
    /// last received (see [`ReplicaSet::probe_all`]).
    pub serving_without_primary: bool,
}

struct View {
    rotation: Rotation,
    health: Option<ReplicaHealth>,
    error: Option<String>,
    probed_at: Option<Instant>,
    /// Probed alone while the primary was down, and fit to serve reads then.
    standalone: bool,
}

pub(crate) struct Replica {
    pub(crate) index: u32,
    pub(crate) pool: PgPool,
    view: Mutex<View>,
    reads: AtomicU64,
}

impl Replica {
    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The replicas of one shard.
pub(crate) struct ReplicaSet {
    shard: ShardId,
    replicas: Vec<Replica>,
    settings: ReplicaSettings,
    next: AtomicUsize,
    /// Replica-level reads that went to the primary because no replica qualified.
    pub(crate) fallbacks: AtomicU64,
    /// The last probe could not reach the primary: replicas were judged alone, and those fit
    /// serve every replica-level read (a shard's catalog and pages stay up without its primary).
    primary_down: std::sync::atomic::AtomicBool,
}

impl ReplicaSet {
    pub(crate) fn new(shard: ShardId, pools: Vec<PgPool>, settings: ReplicaSettings) -> ReplicaSet {
        let replicas = pools
            .into_iter()
            .enumerate()
            .map(|(i, pool)| Replica {
                index: i as u32,
                pool,
                view: Mutex::new(View {
                    rotation: Rotation::new(settings.policy),
                    health: None,
                    error: None,
                    probed_at: None,
                    standalone: false,
                }),
                reads: AtomicU64::new(0),
            })
            .collect();
        ReplicaSet {
            shard,
            replicas,
            settings,
            next: AtomicUsize::new(0),
            fallbacks: AtomicU64::new(0),
            primary_down: Default::default(),
        }
    }

    /// Whether the last probe found the primary unreachable.
    pub(crate) fn primary_down(&self) -> bool {
        self.primary_down.load(Ordering::Relaxed)
    }

    /// Whether a replica could serve a replica-level read now (in rotation, or on its own while
    /// the primary is down).
    pub(crate) fn any_serving(&self) -> bool {
        let primary_down = self.primary_down();
        self.replicas.iter().any(|r| {
            let v = r.view();
            v.rotation.in_rotation() || (primary_down && v.standalone)
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    pub(crate) fn settings(&self) -> ReplicaSettings {
        self.settings
    }

    /// Probes every replica once against the primary, concurrently, and updates rotation.
    ///
    /// When the primary does not answer, each replica is probed alone and its own error or
    /// health is recorded (never the primary's: the replica is fine). Replicas leave rotation
    /// (bounded staleness cannot be judged without the primary), but a standby that has replayed
    /// what it received serves the shard's replica-level reads meanwhile: stale by however long
    /// the primary has been gone, which is better than no catalog at all. Writes and strong
    /// reads still need the primary (503). When the primary answers again the replicas earn
    /// their place back as usual.
    pub(crate) async fn probe_all(&self, primary: &PgPool) {
        let primary_up = tokio::time::timeout(self.settings.probe_timeout, async {
            let c = primary.get().await.map_err(|e| e.to_string())?;
            c.simple_query("SELECT 1").await.map_err(|e| e.to_string())
        })
        .await
        .is_ok_and(|r| r.is_ok());
        let was_down = self.primary_down.swap(!primary_up, Ordering::Relaxed);
        if was_down == primary_up {
            if primary_up {
                tracing::info!(shard = self.shard.0, "the shard's primary answers again");
            } else {
                tracing::warn!(shard = self.shard.0, "the shard's primary does not answer; replicas serve reads alone");
            }
        }
        if !primary_up && !self.replicas.is_empty() {
            let probes = self.replicas.iter().map(|r| async move {
                let outcome = tokio::time::timeout(self.settings.probe_timeout, async {
                    let c = r.pool.get().await.map_err(|e| e.to_string())?;
                    probe_alone(&c).await.map_err(|e| format!("{}: {e}", r.pool.role()))
                })
                .await
                .unwrap_or_else(|_| {
                    Err(format!("{}: probe took longer than {:?}", r.pool.role(), self.settings.probe_timeout))
                });
                let mut v = r.view();
                v.rotation.observe(None);
                v.probed_at = Some(Instant::now());
                match outcome {
                    Ok(h) => {
                        v.standalone = serves_without_primary(&h);
                        v.health = Some(h);
                        v.error = None;
                    }
                    Err(e) => {
                        v.standalone = false;
                        v.health = None;
                        v.error = Some(e);
                    }
                }
            });
            futures::future::join_all(probes).await;
            return;
        }
        let probes = self.replicas.iter().map(|r| async move {
            let outcome = tokio::time::timeout(self.settings.probe_timeout, async {
                let p = primary.get().await.map_err(|e| e.to_string())?;
                let c = r.pool.get().await.map_err(|e| e.to_string())?;
                let started = Instant::now();
                let health = probe(&p, &c).await.map_err(|e| format!("{}: {e}", r.pool.role()))?;
                let took = started.elapsed();
                if took > self.settings.read_deadline {
                    return Err(format!(
                        "{}: a probe took {took:?}, longer than the read deadline {:?}",
                        r.pool.role(),
                        self.settings.read_deadline
                    ));
                }
                Ok(health)
            })
            .await
            .unwrap_or_else(|_| Err(format!("{}: probe took longer than {:?}", r.pool.role(), self.settings.probe_timeout)));
            let mut v = r.view();
            let was = v.rotation.in_rotation();
            let now_in = v.rotation.observe(outcome.as_ref().ok());
            if was != now_in {
                match &outcome {
                    Ok(h) => tracing::info!(shard = self.shard.0, replica = r.index, in_rotation = now_in, health = %h, "replica rotation changed"),
                    Err(e) => tracing::warn!(shard = self.shard.0, replica = r.index, error = %e, "replica left rotation"),
                }
            }
            v.probed_at = Some(Instant::now());
            v.standalone = false;
            match outcome {
                Ok(h) => {
                    v.health = Some(h);
                    v.error = None;
                }
                Err(e) => {
                    v.health = None;
                    v.error = Some(e);
                }
            }
        });
        futures::future::join_all(probes).await;
    }

    /// Probes until `shutdown` turns true.
    pub(crate) async fn run_prober(&self, primary: &PgPool, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.settings.probe_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.probe_all(primary).await,
                r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return },
            }
        }
    }

    /// A connection to a replica that may serve a replica-level read: in rotation and, for
    /// read-your-writes, replayed at least to `after`. Round-robin among those; `None` sends
    /// the read to the primary. A replica whose pool cannot give a connection within the read
    /// deadline leaves rotation.
    pub(crate) async fn pick(&self, after: Option<u64>) -> Option<(u32, Object)> {
        let n = self.replicas.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let primary_down = self.primary_down();
        for k in 0..n {
            let r = &self.replicas[(start + k) % n];
            let eligible = {
                let v = r.view();
                (v.rotation.in_rotation() || (primary_down && v.standalone))
                    && after.is_none_or(|lsn| v.health.as_ref().is_some_and(|h| h.caught_up_with(lsn)))
            };
            if !eligible {
                continue;
            }
            match tokio::time::timeout(self.settings.read_deadline, r.pool.get()).await {
                Ok(Ok(c)) => {
                    r.reads.fetch_add(1, Ordering::Relaxed);
                    return Some((r.index, c));
                }
                Ok(Err(e)) => self.failed(r.index, &e.to_string()),
                Err(_) => self.failed(
                    r.index,
                    &format!(
                        "{}: no connection within the read deadline {:?}",
                        r.pool.role(),
                        self.settings.read_deadline
                    ),
                ),
            }
        }
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Takes a replica out of rotation after a read on it failed; the prober brings it back.
    pub(crate) fn failed(&self, index: u32, error: &str) {
        if let Some(r) = self.replicas.get(index as usize) {
            let mut v = r.view();
            if v.rotation.in_rotation() {
                tracing::warn!(shard = self.shard.0, replica = index, error, "replica failed a read; out of rotation");
            }
            v.rotation.observe(None);
            v.standalone = false;
            v.error = Some(error.to_owned());
        }
    }

    pub(crate) fn pool_status(&self) -> Vec<super::pool::PoolStatus> {
        self.replicas.iter().map(|r| r.pool.status()).collect()
    }

    pub(crate) fn report(&self) -> Vec<ReplicaReport> {
        self.replicas
            .iter()
            .map(|r| {
                let v = r.view();
                ReplicaReport {
                    index: r.index,
                    in_rotation: v.rotation.in_rotation(),
                    health: v.health.clone(),
                    error: v.error.clone(),
                    probed_ago: v.probed_at.map(|t| t.elapsed()),
                    reads: r.reads.load(Ordering::Relaxed),
                    serving_without_primary: self.primary_down() && v.standalone,
                }
            })
            .collect()
    }
}
