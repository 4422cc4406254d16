//! The indexer: one worker per shard that follows the shard's outbox from its own position and
//! keeps the index in step with the catalog. It reads each changed product back from the shard
//! rather than trusting the event's copy, so replaying any stretch of events leaves the same
//! index (and events that carry fewer fields one day change nothing here).
//!
//! Its position is kept in the shard as an ordinary consumer's (`ShardLog::apply` with no
//! effects), written only after the index commit that covers it: a crash replays a little,
//! never skips. The index is per node, so each node needs its own consumer name.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kirana_domain::event::kinds;
use kirana_domain::{Clock, ProductId, StoreId};
use kirana_storage::{Logged, ShardId, ShardLog, Storage, StorageError, StoreScope};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{Result, SearchError};
use crate::facade::Readiness;
use crate::index::SearchIndex;

/// Positions are kept under one partition: the indexer reads the shard's outbox in order.
const PARTITION: u32 = 0;

#[derive(Debug, Clone)]
pub struct IndexerConfig {
    /// The consumer name its positions are kept under; one per node (the index is per node).
    pub consumer: String,
    /// Outbox rows read per step.
    pub batch: u32,
    /// Commit once this many changes are pending…
    pub commit_every: usize,
    /// …or once the oldest pending change is this old…
    pub commit_after: Duration,
    /// …or, when caught up, once it is this old (small: a quiet store's edit shows soon).
    pub commit_when_idle: Duration,
    /// How long an idle indexer waits before looking again.
    pub idle: Duration,
}

impl Default for IndexerConfig {
    fn default() -> Self {
        IndexerConfig {
            consumer: "search".into(),
            batch: 500,
            commit_every: 500,
            commit_after: Duration::from_secs(1),
            commit_when_idle: Duration::from_millis(100),
            idle: Duration::from_millis(50),
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexerStep {
    /// Nothing new in the outbox.
    Idle,
    /// Read this many outbox rows (of any kind).
    Progress { read: usize },
}

pub struct Indexer {
    index: Arc<SearchIndex>,
    storage: Storage,
    shard: usize,
    cfg: IndexerConfig,
    clock: Arc<dyn Clock>,
    ready: Readiness,
    /// Every row up to here is in the index (committed or pending).
    read: i64,
    /// Every row up to here is in a commit and recorded as the position.
    recorded: i64,
    /// When the oldest uncommitted change of this indexer was made.
    dirty_since: Option<Instant>,
    loaded: bool,
}

impl Indexer {
    pub fn new(
        index: Arc<SearchIndex>,
        storage: Storage,
        shard: usize,
        cfg: IndexerConfig,
        clock: Arc<dyn Clock>,
        ready: Readiness,
    ) -> Indexer {
        Indexer { index, storage, shard, cfg, clock, ready, read: 0, recorded: 0, dirty_since: None, loaded: false }
    }

    fn log(&self) -> Result<&dyn ShardLog> {
        self.storage
            .logs()
            .nth(self.shard)
            .ok_or_else(|| SearchError::Storage(StorageError::Internal(format!("there is no shard {}", self.shard))))
    }

    /// The recorded position (rows up to it are committed in the index).
    pub fn position(&self) -> i64 {
        self.recorded
    }

    async fn load(&mut self) -> Result<()> {
        let log = self.log()?;
        let pos =
            log.positions(&self.cfg.consumer).await?.into_iter().find(|(p, _)| *p == PARTITION).map_or(0, |(_, s)| s);
        // Rows the outbox no longer has were trimmed before this indexer read them (a new
        // index on an old node, or a trimmer that does not know this consumer): those
        // products reach the index only through `kirana search reindex`.
        if let Some(first) = log.outbox_after(pos, 1).await?.first()
            && first.seq > pos + 1
            && log.outbox_stats().await?.last_seq > 0
        {
            metrics::counter!("kirana_search_gaps_total").increment(1);
            tracing::warn!(
                shard = self.shard,
                position = pos,
                next = first.seq,
                "search indexer: outbox rows were trimmed before it read them; reindex to be complete"
            );
        }
        self.read = pos;
        self.recorded = pos;
        self.loaded = true;
        Ok(())
    }

    /// Reads one batch from the outbox and applies its product events to the index. Commits
    /// when enough is pending (see [`IndexerConfig`]).
    pub async fn step(&mut self) -> Result<IndexerStep> {
        if !self.loaded {
            self.load().await?;
        }
        let rows = self.log()?.outbox_after(self.read, self.cfg.batch).await?;
        let Some(last) = rows.last().map(|r| r.seq) else {
            if self.dirty_since.is_some_and(|t| t.elapsed() >= self.cfg.commit_when_idle) {
                self.flush().await?;
            }
            if self.dirty_since.is_none() {
                // Caught up and committed: searches may trust the index for this shard.
                self.ready.mark(self.shard);
            }
            return Ok(IndexerStep::Idle);
        };
        let mut scopes: HashMap<StoreId, Option<StoreScope>> = HashMap::new();
        for row in &rows {
            self.apply(row, &mut scopes).await?;
        }
        self.read = last;
        if self.dirty_since.is_none() {
            self.dirty_since = Some(Instant::now());
        }
        let due = self.index.pending() >= self.cfg.commit_every
            || self.dirty_since.is_some_and(|t| t.elapsed() >= self.cfg.commit_after);
        if due {
            self.flush().await?;
        }
        Ok(IndexerStep::Progress { read: rows.len() })
    }

    async fn apply(&self, row: &Logged, scopes: &mut HashMap<StoreId, Option<StoreScope>>) -> Result<()> {
        let e = &row.event;
        let kind = e.kind.as_str();
        if kind != kinds::PRODUCT_CREATED && kind != kinds::PRODUCT_UPDATED && kind != kinds::PRODUCT_DELETED {
            return Ok(());
        }
        let Some(id) = e.payload.get("id").and_then(|v| v.as_str()).and_then(ProductId::parse) else {
            tracing::warn!(shard = self.shard, seq = row.seq, event_id = %e.id, "product event without a product id; skipped");
            return Ok(());
        };
        if kind == kinds::PRODUCT_DELETED {
            return self.index.remove(id);
        }
        let scope = match scopes.get(&e.store_id) {
            Some(s) => s.clone(),
            None => {
                // A store this shard no longer holds (moved away) is indexed from its new
                // shard's outbox; the product ids are the same, so nothing is lost.
                let entry = self.storage.directory().entry(e.store_id).await?;
                let s = entry.filter(|d| d.shard == ShardId(self.shard as u32)).map(|d| d.scope());
                scopes.insert(e.store_id, s.clone());
                s
            }
        };
        let Some(scope) = scope else { return Ok(()) };
        match self.storage.shard(&scope).product(&scope, id).await {
            Ok(p) => self.index.upsert(e.store_id, &p),
            // Deleted since: its own event removes it too, but a replay may come here first.
            Err(StorageError::NotFound) => self.index.remove(id),
            Err(other) => Err(other.into()),
        }
    }

    /// Commits the index and records the position it covers.
    pub async fn flush(&mut self) -> Result<()> {
        if self.dirty_since.is_none() && self.read == self.recorded {
            return Ok(());
        }
        let index = self.index.clone();
        tokio::task::spawn_blocking(move || index.commit()).await.map_err(|e| SearchError::Task(e.to_string()))??;
        let now = self.clock.now();
        self.log()?.apply(&self.cfg.consumer, vec![], vec![(PARTITION, self.read)], now).await?;
        self.recorded = self.read;
        self.dirty_since = None;
        Ok(())
    }

    /// Steps until the outbox is read to its end, then commits: what tests and `reindex` use.
    pub async fn catch_up(&mut self) -> Result<usize> {
        let mut total = 0;
        while let IndexerStep::Progress { read } = self.step().await? {
            total += read;
        }
        self.flush().await?;
        self.ready.mark(self.shard);
        Ok(total)
    }

    /// Runs until `shutdown` says stop, then commits what it has. Errors are logged and
    /// retried after a pause: the indexer never dies silently.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let pause = match self.step().await {
                Ok(IndexerStep::Progress { .. }) => Duration::ZERO,
                Ok(IndexerStep::Idle) => self.cfg.idle,
                Err(e) => {
                    tracing::error!(shard = self.shard, error = %e, "search indexer failed; retrying in a second");
                    Duration::from_secs(1)
                }
            };
            if !pause.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
        if let Err(e) = self.flush().await {
            tracing::warn!(shard = self.shard, error = %e, "search indexer could not commit on shutdown; it will replay");
        }
    }
}

/// Starts an indexer per shard; they stop (after a last commit) when `shutdown` turns true.
pub fn start(
    index: Arc<SearchIndex>,
    storage: Storage,
    cfg: IndexerConfig,
    clock: Arc<dyn Clock>,
    ready: Readiness,
    shutdown: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..storage.shard_count())
        .map(|shard| {
            let indexer =
                Indexer::new(index.clone(), storage.clone(), shard, cfg.clone(), clock.clone(), ready.clone());
            tokio::spawn(indexer.run(shutdown.clone()))
        })
        .collect()
}
