//! The embedded backend: the shard's outbox is the log. One reader per (consumer, shard) reads
//! it in commit order and keeps a position per partition in the shard itself, written in the
//! same transaction as the effects it applies.
//!
//! A failing event holds back only its partition: the reader leaves that partition behind and
//! reads on for the others; the partition retries its event with exponential backoff and full
//! jitter, and after the last attempt parks it in the dead letters and catches up from there.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kirana_domain::{Clock, StoreId};
use kirana_storage::{Applied, Logged, Residence, ShardId, ShardLog, Storage};
use rand::Rng;
use tokio::sync::watch;

use crate::consumers::Consumer;
use crate::partition::partition_of;
use crate::status::Heartbeats;

/// The "failure" that holds a partition at an event of a store still moving to this shard.
const ARRIVING: &str = "the store is moving to this shard; waiting for the directory to flip";
/// How often a partition held for an arriving store looks again.
const ARRIVING_RECHECK: Duration = Duration::from_secs(1);

/// How a failing event is retried before it is parked.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // ~0.2 s, 0.4 s … capped at a minute: about four minutes of trying in all.
        RetryPolicy { attempts: 10, base: Duration::from_millis(200), max: Duration::from_secs(60) }
    }
}

impl RetryPolicy {
    /// Full jitter: a random wait up to the exponential bound, so retries of many partitions
    /// do not synchronise.
    pub fn delay(&self, attempt: u32) -> Duration {
        let bound = self.base.saturating_mul(1u32 << attempt.min(16)).min(self.max);
        let ms = rand::rng().random_range(0..=bound.as_millis().max(1) as u64);
        Duration::from_millis(ms)
    }
}

/// Settings of one reader.
#[derive(Debug, Clone, Copy)]
pub struct ReaderConfig {
    pub partitions: u32,
    pub batch: u32,
    /// How long an idle reader waits before looking again.
    pub idle: Duration,
    /// How often an idle reader rewrites its positions, as a heartbeat other processes see.
    pub heartbeat: Duration,
    pub retry: RetryPolicy,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            partitions: crate::partition::DEFAULT_PARTITIONS,
            batch: 500,
            idle: Duration::from_millis(20),
            heartbeat: Duration::from_secs(10),
            retry: RetryPolicy::default(),
        }
    }
}

/// A partition whose event failed: which event, how often, and when to try again.
struct Failing {
    seq: i64,
    attempts: u32,
    retry_at: tokio::time::Instant,
}

/// What one step did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub applied: u32,
    pub parked: u32,
    pub read: usize,
}

/// One consumer reading one shard's outbox.
pub struct Reader {
    consumer: Arc<dyn Consumer>,
    storage: Storage,
    shard: usize,
    cfg: ReaderConfig,
    clock: Arc<dyn Clock>,
    /// Per partition: every event at or before this position is done.
    pos: Vec<i64>,
    /// Where the main read continues; partitions behind it catch up on their own.
    cursor: i64,
    failing: HashMap<u32, Failing>,
    loaded: bool,
}

impl Reader {
    pub fn new(
        consumer: Arc<dyn Consumer>,
        storage: Storage,
        shard: usize,
        cfg: ReaderConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Reader { consumer, storage, shard, cfg, clock, pos: vec![], cursor: 0, failing: HashMap::new(), loaded: false }
    }

    fn log(&self) -> &dyn ShardLog {
        self.storage.logs().nth(self.shard).expect("the shard exists")
    }

    async fn load(&mut self) -> kirana_storage::Result<()> {
        let mut pos = vec![0; self.cfg.partitions as usize];
        for (p, seq) in self.log().positions(self.consumer.name()).await? {
            if let Some(slot) = pos.get_mut(p as usize) {
                *slot = seq;
            }
        }
        self.cursor = pos.iter().copied().min().unwrap_or(0);
        self.pos = pos;
        self.loaded = true;
        Ok(())
    }

    fn behind(&self, p: u32) -> bool {
        self.pos[p as usize] < self.cursor
    }

    /// Where each store of `rows` lives, for [`Reader::take`]: on this shard (almost always),
    /// moved away, or moving here (see `Storage::residence`).
    async fn residences<'a>(
        &self,
        rows: impl Iterator<Item = &'a Logged>,
    ) -> kirana_storage::Result<HashMap<StoreId, Residence>> {
        let mut out = HashMap::new();
        for row in rows {
            let store = row.event.store_id;
            if let std::collections::hash_map::Entry::Vacant(slot) = out.entry(store) {
                slot.insert(self.storage.residence(store, ShardId(self.shard as u32)).await?);
            }
        }
        Ok(out)
    }

    /// Turns a partition's rows into applied events, stopping at the first that fails.
    /// Returns the events, the last good position, and the failing row if any.
    ///
    /// A store moved away is skipped: its new shard's outbox holds copies of these events, and
    /// the consumer applies them there (once, by event id). A store still moving here stops the
    /// partition like a failure, without counting an attempt, until the directory flips.
    fn take<'a>(
        &self,
        rows: impl Iterator<Item = &'a Logged>,
        residences: &HashMap<StoreId, Residence>,
    ) -> (Vec<Applied>, Option<i64>, Option<(Logged, String)>) {
        let mut out = Vec::new();
        let mut last = None;
        for row in rows {
            match residences.get(&row.event.store_id).copied().unwrap_or(Residence::Here) {
                Residence::Here => {}
                Residence::Away => {
                    last = Some(row.seq);
                    continue;
                }
                Residence::Arriving => return (out, last, Some((row.clone(), ARRIVING.to_owned()))),
            }
            match crate::consumers::effects_in_trace(&*self.consumer, &row.event, row.traceparent.as_ref()) {
                Ok(effects) => {
                    out.push(Applied { event: row.event.clone(), effects });
                    last = Some(row.seq);
                }
                Err(e) => return (out, last, Some((row.clone(), e))),
            }
        }
        (out, last, None)
    }

    /// Records a failure of partition `p` at `row`: retry later, or park it after the last
    /// attempt. Returns whether it was parked.
    async fn failed(&mut self, p: u32, row: Logged, error: String) -> kirana_storage::Result<bool> {
        if error == ARRIVING {
            // Not a failure: the move will flip soon. Look again in a second, for as long as it
            // takes (an abandoned move shows in `kirana shard moves` and `kirana doctor`).
            tracing::debug!(consumer = self.consumer.name(), shard = self.shard, partition = p, seq = row.seq,
                store_id = %row.event.store_id, "waiting for a store moving here");
            let retry_at = tokio::time::Instant::now() + ARRIVING_RECHECK;
            self.failing.insert(p, Failing { seq: row.seq, attempts: 0, retry_at });
            return Ok(false);
        }
        let attempts = match self.failing.get(&p) {
            Some(f) if f.seq == row.seq => f.attempts + 1,
            _ => 1,
        };
        if attempts >= self.cfg.retry.attempts {
            tracing::error!(consumer = self.consumer.name(), shard = self.shard, partition = p, seq = row.seq,
                event_id = %row.event.id, error = %error, attempts, "event parked in the dead letters");
            let now = self.clock.now();
            self.log().park(self.consumer.name(), p, &row, &error, attempts, now).await?;
            self.pos[p as usize] = row.seq;
            self.failing.remove(&p);
            return Ok(true);
        }
        tracing::warn!(consumer = self.consumer.name(), shard = self.shard, partition = p, seq = row.seq,
            error = %error, attempts, "event failed; retrying");
        let retry_at = tokio::time::Instant::now() + self.cfg.retry.delay(attempts);
        self.failing.insert(p, Failing { seq: row.seq, attempts, retry_at });
        Ok(false)
    }

    /// Reads and applies what is there: first lets partitions that fell behind catch up (when
    /// their retry is due), then reads on from the cursor for the others.
    pub async fn step(&mut self) -> kirana_storage::Result<Step> {
        if !self.loaded {
            self.load().await?;
        }
        let mut step = Step::default();
        let name = self.consumer.name();
        let now = self.clock.now();

        // 1. Partitions behind the cursor, whose retry (if any) is due.
        for p in 0..self.cfg.partitions {
            while self.behind(p) && self.failing.get(&p).is_none_or(|f| f.retry_at <= tokio::time::Instant::now()) {
                let rows = self.log().outbox_after(self.pos[p as usize], self.cfg.batch).await?;
                let mine: Vec<&Logged> = rows
                    .iter()
                    .filter(|r| r.seq <= self.cursor && partition_of(r.event.store_id, self.cfg.partitions) == p)
                    .collect();
                step.read += mine.len();
                let scanned_to = rows.last().map(|r| r.seq).unwrap_or(self.cursor).min(self.cursor);
                let residences = self.residences(mine.iter().copied()).await?;
                let (batch, last, failure) = self.take(mine.into_iter(), &residences);
                let reached = match (&failure, last) {
                    (Some(_), Some(l)) => l,
                    (Some(_), None) => self.pos[p as usize],
                    (None, _) => scanned_to,
                };
                let touched = crate::consumers::touched(&batch);
                step.applied += self.log().apply(name, batch, vec![(p, reached)], now).await?;
                self.consumer.applied(&touched);
                self.pos[p as usize] = reached;
                if let Some((row, error)) = failure {
                    if self.failed(p, row, error).await? {
                        step.parked += 1;
                        continue;
                    }
                    break;
                }
                self.failing.remove(&p);
            }
        }

        // 2. The main read.
        let rows = self.log().outbox_after(self.cursor, self.cfg.batch).await?;
        let Some(end) = rows.last().map(|r| r.seq) else { return Ok(step) };
        step.read += rows.len();
        let mut by_partition: BTreeMap<u32, Vec<&Logged>> = BTreeMap::new();
        for r in &rows {
            let p = partition_of(r.event.store_id, self.cfg.partitions);
            if !self.behind(p) && r.seq > self.pos[p as usize] {
                by_partition.entry(p).or_default().push(r);
            }
        }
        let residences = self.residences(rows.iter()).await?;
        let mut batch = Vec::new();
        let mut failures = Vec::new();
        for (p, list) in by_partition {
            let (mut applied, last, failure) = self.take(list.into_iter(), &residences);
            batch.append(&mut applied);
            if let Some(f) = failure {
                // This partition stays where its last good event left it; the cursor moves on.
                self.pos[p as usize] = last.unwrap_or(self.pos[p as usize]);
                failures.push((p, f));
            }
        }
        let failed: Vec<u32> = failures.iter().map(|(p, _)| *p).collect();
        let positions: Vec<(u32, i64)> = (0..self.cfg.partitions)
            .map(|p| if failed.contains(&p) || self.behind(p) { (p, self.pos[p as usize]) } else { (p, end) })
            .collect();
        let touched = crate::consumers::touched(&batch);
        step.applied += self.log().apply(name, batch, positions.clone(), now).await?;
        self.consumer.applied(&touched);
        for (p, seq) in positions {
            self.pos[p as usize] = seq;
        }
        self.cursor = end;
        for (p, (row, error)) in failures {
            if self.failed(p, row, error).await? {
                step.parked += 1;
            }
        }
        Ok(step)
    }

    /// Rewrites the positions as they are: a heartbeat other processes can read.
    async fn beat(&mut self) -> kirana_storage::Result<()> {
        if !self.loaded {
            self.load().await?;
        }
        let positions = (0..self.cfg.partitions).map(|p| (p, self.pos[p as usize])).collect();
        self.log().apply(self.consumer.name(), vec![], positions, self.clock.now()).await?;
        Ok(())
    }

    /// Runs until `shutdown` says stop. Storage errors are logged and retried after a pause:
    /// the reader never dies silently, and its heartbeat stops only if it is stuck.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>, heartbeats: Arc<Heartbeats>) {
        let key = format!("{}/shard-{}", self.consumer.name(), self.shard);
        let mut last_beat = tokio::time::Instant::now();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let pause = match self.step().await {
                Ok(s) if s.read > 0 => Duration::ZERO,
                Ok(_) => self.cfg.idle,
                // A store froze for a move between the directory lookup and the apply: its
                // events belong to the target now, which the directory says in a moment.
                Err(kirana_storage::StorageError::Moved { store, .. }) => {
                    tracing::info!(reader = %key, %store, "a store moved away mid-batch; reading again");
                    Duration::from_millis(100)
                }
                Err(e) => {
                    tracing::error!(reader = %key, error = %e, "event reader failed; retrying in a second");
                    Duration::from_secs(1)
                }
            };
            heartbeats.beat(&key);
            if last_beat.elapsed() >= self.cfg.heartbeat {
                if let Err(e) = self.beat().await {
                    tracing::warn!(reader = %key, error = %e, "could not record a heartbeat");
                }
                last_beat = tokio::time::Instant::now();
            }
            if !pause.is_zero() {
                // A dropped sender (the node's work torn down) is a stop too.
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    r = shutdown.changed() => if r.is_err() { return },
                }
            }
        }
    }
}

/// Deletes outbox rows every consumer is past, so the log stays short.
pub async fn trim(storage: &Storage, consumers: &[&str], partitions: u32) -> kirana_storage::Result<u64> {
    trim_behind(storage, consumers, partitions, &[]).await
}

/// [`trim`], also behind `whole_shard` readers: ones that keep a single position per shard
/// (partition 0) rather than one per partition — the search indexer. Until such a reader has
/// written its first position, nothing is trimmed.
pub async fn trim_behind(
    storage: &Storage,
    consumers: &[&str],
    partitions: u32,
    whole_shard: &[String],
) -> kirana_storage::Result<u64> {
    let mut total = 0;
    for shard in 0..storage.shard_count() {
        total += trim_shard(storage, shard, consumers, partitions, whole_shard).await?;
    }
    Ok(total)
}

/// [`trim_behind`] on one shard (its trimmer runs under the shard's lease).
pub async fn trim_shard(
    storage: &Storage,
    shard: usize,
    consumers: &[&str],
    partitions: u32,
    whole_shard: &[String],
) -> kirana_storage::Result<u64> {
    let Some(log) = storage.logs().nth(shard) else { return Ok(0) };
    let mut floor = i64::MAX;
    for name in consumers {
        let positions = log.positions(name).await?;
        let min = (0..partitions)
            .map(|p| positions.iter().find(|(q, _)| *q == p).map(|(_, s)| *s).unwrap_or(0))
            .min()
            .unwrap_or(0);
        floor = floor.min(min);
    }
    for name in whole_shard {
        let at = log.positions(name).await?.iter().find(|(p, _)| *p == 0).map_or(0, |(_, s)| *s);
        floor = floor.min(at);
    }
    if floor != i64::MAX && floor > 0 { log.trim_outbox(floor).await } else { Ok(0) }
}
