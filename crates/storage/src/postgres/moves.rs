//! Moving one store from one PostgreSQL shard to another while it keeps selling, and the
//! journal of moves in the control database (docs/decisions/0017-store-moves.md). It must never
//! lose a write the source acknowledged, never block another store's writes, and never leave a
//! store writable on two shards at once.
//!
//! A move goes through the states its journal row (`store_moves`) records:
//!
//! 1. `copying`: the store enters the source's `moving_stores`, from when on a trigger records
//!    the key of every row of the store that is written (`move_changes`); once every
//!    transaction older than that has ended, the store's rows are streamed to the target with
//!    `COPY`, from one snapshot.
//! 2. `catching_up`: rounds of "take recorded keys, re-read the current source row by key,
//!    replace or delete it on the target", until a round finds only a few.
//! 3. `frozen`: the store's source row is locked `FOR UPDATE` (waiting out its writers, which
//!    hold `FOR KEY SHARE`) and gets `moved_to`, which refuses every later write there; the
//!    last keys are replayed and the directory flips in one control transaction.
//! 4. `flipped`: after `cleanup_delay` (nodes cache the directory for a few seconds) the source
//!    loses the store's rows, all but a `stores` tombstone whose `moved_to` keeps refusing
//!    writers with a stale directory; then `cleaned`.
//!
//! Replaying a key by its current row makes the replay idempotent and order-free: a crash at
//! any point is resumed from the journal by [`Mover::resume`], redoing at most one step.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{ClientWrapper, Object};
use futures::{SinkExt, StreamExt};
use kirana_domain::{StoreId, Timestamp};
use serde_json::Value;
use tokio_postgres::{IsolationLevel, Row};

use super::pool::{PgPool, PoolRole, query_error};
use super::shard::unique_violation;
use crate::Result;
use crate::error::{ConflictKind, StorageError};
use crate::scope::ShardId;

/// Every shard table holding a store's rows: what a move copies and the capture trigger
/// watches (shard migration 5 lists the same). `dead_letters` is not here: it is the shard's
/// own record of its outbox and stays with the shard, as `consumer_positions` does.
pub const STORE_TABLES: &[&str] = &[
    "stores",
    "categories",
    "products",
    "variants",
    "carts",
    "cart_items",
    "customers",
    "coupons",
    "orders",
    "order_items",
    "order_history",
    "outbox",
    "theme_templates",
    "media",
    "applied_events",
    "sales_hourly",
    "sales_daily",
    "product_sales_daily",
    "cache_versions",
    "notifications",
    "webhook_endpoints",
    "webhook_deliveries",
    "webhook_attempts",
    "payments",
    "payment_events",
    "refunds",
    "ledger_lines",
    "payouts",
];

/// The oldest shard schema that captures changes.
const CAPTURE_SCHEMA: i64 = 5;
/// Keys replayed per catch-up round.
const BATCH: i64 = 2_000;
/// A round that finds fewer keys than this ends the catch-up: the rest are replayed frozen.
const SETTLED: u64 = 100;
/// A store written faster than it can be caught up is frozen anyway after this many rounds.
const MAX_ROUNDS: u32 = 50;
/// How long the move waits for the transactions older than the capture to end.
const OLD_TRANSACTIONS_WAIT: Duration = Duration::from_secs(60);
/// How long the freeze may wait for the row lock of a checkout taking an order number.
const FREEZE_LOCK_TIMEOUT: &str = "5s";
/// How long the frozen store waits for the writers that passed its fence before the freeze;
/// its writes are refused meanwhile, so past this it thaws and the move stops (resumable).
const FREEZE_WAIT: Duration = Duration::from_secs(5);
/// How often a step that lost a race (a deadlock, a serialization failure, a lock not granted
/// in time) is run again before the move stops and says why.
const RACE_ATTEMPTS: u32 = 5;

/// Where a move is, as its journal row says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MoveState {
    Copying,
    CatchingUp,
    Frozen,
    Flipped,
    Cleaned,
}

impl MoveState {
    pub fn as_str(self) -> &'static str {
        match self {
            MoveState::Copying => "copying",
            MoveState::CatchingUp => "catching_up",
            MoveState::Frozen => "frozen",
            MoveState::Flipped => "flipped",
            MoveState::Cleaned => "cleaned",
        }
    }

    fn parse(s: &str) -> Result<MoveState> {
        Ok(match s {
            "copying" => MoveState::Copying,
            "catching_up" => MoveState::CatchingUp,
            "frozen" => MoveState::Frozen,
            "flipped" => MoveState::Flipped,
            "cleaned" => MoveState::Cleaned,
            other => return Err(StorageError::Internal(format!("store_moves: unknown state {other:?}"))),
        })
    }
}

impl std::fmt::Display for MoveState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one `move_store` or `resume` did.
#[derive(Debug, Clone)]
pub struct MoveReport {
    pub store: StoreId,
    pub from: ShardId,
    pub to: ShardId,
    /// The state this run started from (`Copying` for a fresh move).
    pub resumed_from: MoveState,
    pub rows_copied: u64,
    pub copy: Duration,
    pub catch_up_rounds: u32,
    /// Keys replayed, in the catch-up and in the frozen drain.
    pub changes_applied: u64,
    /// From the freeze's start to the directory flip's commit: how long the store's writes
    /// were refused or queued. Zero when this run started after the flip.
    pub cutover_pause: Duration,
    pub total: Duration,
}

/// One row of the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveStatus {
    pub store: StoreId,
    pub from: ShardId,
    pub to: ShardId,
    pub state: MoveState,
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
    pub rows_copied: u64,
    pub cutover_ms: Option<i64>,
    /// Why the last attempt stopped, if it failed; cleared when the move goes on.
    pub error: Option<String>,
}

/// Moves stores between the shards it knows, keeping the journal in the control database.
pub struct Mover {
    control: Arc<PgPool>,
    shards: HashMap<ShardId, Arc<PgPool>>,
    cleanup_delay: Duration,
    /// Test seam: the next run stops with `Unavailable` right after reaching this state.
    crash_after: Mutex<Option<MoveState>>,
    /// Test seam: how many of the next steps fail as if they had lost a deadlock.
    lose_races: std::sync::atomic::AtomicU32,
}

/// A shard table as the move handles it, read from the source's catalog.
#[derive(Debug, Clone)]
struct Table {
    name: &'static str,
    columns: Vec<String>,
    key: Vec<String>,
}

impl Table {
    fn is_outbox(&self) -> bool {
        self.name == "outbox"
    }

    /// The columns written on the target: all but the outbox's `seq`, which the target assigns
    /// (in source order) so its relay publishes the store's events after its own.
    fn target_columns(&self) -> Vec<&str> {
        self.columns.iter().map(String::as_str).filter(|c| !(self.is_outbox() && *c == "seq")).collect()
    }

    /// The values written for `target_columns`, read from a row source `r`. The store's row
    /// arrives with `moved_to` NULL (the source's fence must not follow the store) and
    /// `arriving_from` set to the source: until the move's last drain clears it, the target's
    /// fence refuses every write of the store but the mover's own (see `stores::fence`).
    fn target_values(&self, r: &str, from: ShardId) -> String {
        self.target_columns()
            .iter()
            .map(|c| match (self.name, *c) {
                ("stores", "moved_to") => "NULL::bigint".into(),
                ("stores", "arriving_from") => format!("{}::bigint", from.0),
                _ => format!("{r}.{}", q(c)),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn column_list(&self) -> String {
        self.target_columns().iter().map(|c| q(c)).collect::<Vec<_>>().join(", ")
    }
}

/// A quoted identifier (column names such as `type` and `position` are keywords).
fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

impl Mover {
    /// A mover over the control database and every shard's primary it may move between.
    pub fn new(control: Arc<PgPool>, shards: HashMap<ShardId, Arc<PgPool>>) -> Mover {
        Mover {
            control,
            shards,
            cleanup_delay: Duration::from_secs(10),
            crash_after: Mutex::new(None),
            lose_races: Default::default(),
        }
    }

    /// How long the source keeps a flipped store's rows: longer than nodes cache the directory,
    /// so a node still sending reads there finds them (writes are refused by the fence).
    pub fn with_cleanup_delay(mut self, delay: Duration) -> Mover {
        self.cleanup_delay = delay;
        self
    }

    /// Test seam: makes the next `move_store` or `resume` stop with `Unavailable` right after
    /// it reaches `state`, as if the process had died there (the journal stays at `state`).
    /// `Copying`: capture on, nothing copied; `CatchingUp`: copied; `Frozen`: source frozen,
    /// not drained; `Flipped`: directory flipped, source not cleaned.
    pub fn crash_after(&self, state: MoveState) {
        *self.crash_after.lock().unwrap_or_else(|p| p.into_inner()) = Some(state);
    }

    /// Test seam: makes the next `n` steps (copy, catch-up rounds, freeze, drain) fail as a
    /// step that lost a deadlock to another transaction does, before they touch anything.
    pub fn lose_races(&self, n: u32) {
        self.lose_races.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Runs one step of the move (each is idempotent), again when it lost a race with another
    /// transaction, up to [`RACE_ATTEMPTS`] times with a growing pause; past that the move stops
    /// with an error that says which step failed, how often, and the database's last word.
    async fn step<T>(&self, what: &str, mut run: impl AsyncFnMut() -> Result<T>) -> Result<T> {
        let mut attempt = 1;
        loop {
            let injected = self
                .lose_races
                .fetch_update(std::sync::atomic::Ordering::SeqCst, std::sync::atomic::Ordering::SeqCst, |n| {
                    n.checked_sub(1)
                })
                .is_ok();
            let outcome = if injected {
                Err(StorageError::Unavailable("test seam: deadlock detected (SQLSTATE 40P01)".into()))
            } else {
                run().await
            };
            match outcome {
                Err(e) if super::pool::lost_a_race(&e) => {
                    if attempt >= RACE_ATTEMPTS {
                        return Err(StorageError::Unavailable(format!(
                            "the move's {what} lost a race with other transactions {attempt} times in a row; the last: {e}"
                        )));
                    }
                    let pause = Duration::from_millis(50 << attempt.min(6));
                    tracing::info!(%what, attempt, error = %e, retry_in_ms = pause.as_millis() as u64,
                        "a store move step lost a race; running it again");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn checkpoint(&self, state: MoveState) -> Result<()> {
        let mut hook = self.crash_after.lock().unwrap_or_else(|p| p.into_inner());
        if *hook == Some(state) {
            *hook = None;
            return Err(StorageError::Unavailable(format!("store move stopped after `{state}` (test hook)")));
        }
        Ok(())
    }

    /// Moves `store` to shard `to` and cleans the source. Refused when the store is unknown or
    /// already there, `to` is not a shard this mover knows, or a move of the store is running
    /// or was left unfinished (that one is continued with [`Mover::resume`]).
    pub async fn move_store(&self, store: StoreId, to: ShardId) -> Result<MoveReport> {
        let started = Instant::now();
        let mut ctl = self.lock(store).await?;
        let result = async {
            if let Some(j) = journal(&ctl, store).await?
                && j.state != MoveState::Cleaned
            {
                return Err(StorageError::conflict(
                    ConflictKind::TooMany,
                    Some("store_id"),
                    format!(
                        "store {store} has an unfinished move from shard {} to shard {} at `{}`: resume it",
                        j.from.0, j.to.0, j.state
                    ),
                ));
            }
            let row = ctl
                .query_opt("SELECT shard FROM stores WHERE store_id = $1", &[&store.uuid()])
                .await
                .map_err(ctl_err)?
                .ok_or_else(|| StorageError::invalid("store_id", "no such store in the directory"))?;
            let from = shard_id(row.get(0))?;
            if from == to {
                return Err(StorageError::invalid("shard", &format!("the store is already on shard {}", to.0)));
            }
            if !self.shards.contains_key(&to) {
                return Err(StorageError::invalid("shard", &format!("unknown shard {}", to.0)));
            }
            if !self.shards.contains_key(&from) {
                return Err(StorageError::invalid(
                    "shard",
                    &format!("the store's shard {} is not one this mover knows", from.0),
                ));
            }
            // Both shards must run the same schema: checked before the journal has a move to resume.
            Move { store, from, to, src: &self.shards[&from], dst: &self.shards[&to] }.tables().await?;
            ctl.execute(
                &format!(
                    "INSERT INTO store_moves (store_id, from_shard, to_shard, state, started_at, updated_at, rows_copied)
                     VALUES ($1, $2, $3, 'copying', {NOW_MS}, {NOW_MS}, 0)
                     ON CONFLICT (store_id) DO UPDATE SET from_shard = EXCLUDED.from_shard,
                         to_shard = EXCLUDED.to_shard, state = 'copying', started_at = EXCLUDED.started_at,
                         updated_at = EXCLUDED.updated_at, rows_copied = 0, cutover_ms = NULL, error = NULL"
                ),
                &[&store.uuid(), &i64::from(from.0), &i64::from(to.0)],
            )
            .await
            .map_err(ctl_err)?;
            self.run(&mut ctl, store, from, to, MoveState::Copying, 0, started).await
        }
        .await;
        self.finish(ctl, store, result).await
    }

    /// Continues the store's unfinished move from the state its journal reached: before the
    /// freeze, from the copy (or the catch-up, once the copy committed); frozen, from the drain
    /// and the flip; flipped, from the cleanup. A finished move is reported as such.
    pub async fn resume(&self, store: StoreId) -> Result<MoveReport> {
        let started = Instant::now();
        let mut ctl = self.lock(store).await?;
        let result = async {
            let j = journal(&ctl, store)
                .await?
                .ok_or_else(|| StorageError::invalid("store_id", "this store has no move to resume"))?;
            for s in [j.from, j.to] {
                if !self.shards.contains_key(&s) {
                    return Err(StorageError::invalid("shard", &format!("unknown shard {}", s.0)));
                }
            }
            self.run(&mut ctl, store, j.from, j.to, j.state, j.rows_copied, started).await
        }
        .await;
        self.finish(ctl, store, result).await
    }

    /// The journal: every store's latest move, most recently changed first.
    pub async fn moves(&self) -> Result<Vec<MoveStatus>> {
        let c = self.control.get().await?;
        let rows = c.query(&format!("{JOURNAL} ORDER BY updated_at DESC, store_id"), &[]).await.map_err(ctl_err)?;
        rows.iter().map(status).collect()
    }

    /// A connection of its own to the control database holding the store's move lock, so two
    /// movers never run one store's move at once. It is taken out of the pool: if this mover
    /// dies, the connection closes and the lock goes with it.
    async fn lock(&self, store: StoreId) -> Result<ClientWrapper> {
        let ctl = Object::take(self.control.get().await?);
        let got: bool = ctl
            .query_one("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", &[&lock_key(store)])
            .await
            .map_err(ctl_err)?
            .get(0);
        if !got {
            return Err(StorageError::conflict(
                ConflictKind::TooMany,
                Some("store_id"),
                format!("a move of store {store} is already running"),
            ));
        }
        Ok(ctl)
    }

    /// Lets the move lock go; best effort (a lost control connection loses it anyway).
    async fn finish(&self, ctl: ClientWrapper, store: StoreId, result: Result<MoveReport>) -> Result<MoveReport> {
        let _ = ctl.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", &[&lock_key(store)]).await;
        result
    }

    /// Runs the move's steps from `state`, noting in the journal why they stopped if they did
    /// (best effort: the journal's state is what a resume goes by, the error is for people).
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        ctl: &mut ClientWrapper,
        store: StoreId,
        from: ShardId,
        to: ShardId,
        state: MoveState,
        rows_copied: u64,
        started: Instant,
    ) -> Result<MoveReport> {
        let result = self.steps(ctl, store, from, to, state, rows_copied, started).await;
        if let Err(e) = &result {
            let _ = ctl
                .execute(
                    &format!("UPDATE store_moves SET error = $2, updated_at = {NOW_MS} WHERE store_id = $1"),
                    &[&store.uuid(), &e.to_string()],
                )
                .await;
            tracing::warn!(store_id = %store, from = from.0, to = to.0, error = %e, "store move stopped");
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn steps(
        &self,
        ctl: &mut ClientWrapper,
        store: StoreId,
        from: ShardId,
        to: ShardId,
        mut state: MoveState,
        rows_copied: u64,
        started: Instant,
    ) -> Result<MoveReport> {
        let (src, dst) = (&*self.shards[&from], &*self.shards[&to]);
        let span = Move { store, from, to, src, dst };
        let mut report = MoveReport {
            store,
            from,
            to,
            resumed_from: state,
            rows_copied,
            copy: Duration::ZERO,
            catch_up_rounds: 0,
            changes_applied: 0,
            cutover_pause: Duration::ZERO,
            total: Duration::ZERO,
        };
        tracing::info!(store_id = %store, from = from.0, to = to.0, %state, "store move");
        let tables = if state < MoveState::Flipped { span.tables().await? } else { span.source_tables().await? };

        if state == MoveState::Copying {
            span.start_capture().await?;
            self.checkpoint(MoveState::Copying)?;
            let t = Instant::now();
            report.rows_copied = self.step("copy", async || span.copy(&tables).await).await?;
            report.copy = t.elapsed();
            set_state(ctl, store, MoveState::CatchingUp, Some(report.rows_copied)).await?;
            state = MoveState::CatchingUp;
            self.checkpoint(MoveState::CatchingUp)?;
        }
        if state == MoveState::CatchingUp {
            loop {
                let n = self.step("catch-up round", async || span.replay(&tables, Some(BATCH)).await).await?;
                report.catch_up_rounds += 1;
                report.changes_applied += n;
                if n < SETTLED || report.catch_up_rounds >= MAX_ROUNDS {
                    break;
                }
            }
            // Journalled before the freeze: a resume from `frozen` freezes again (idempotent),
            // so the directory can never flip away from a source that still takes writes.
            set_state(ctl, store, MoveState::Frozen, None).await?;
            state = MoveState::Frozen;
        }
        if state == MoveState::Frozen {
            let pause = Instant::now();
            self.step("freeze", async || span.freeze().await).await?;
            self.checkpoint(MoveState::Frozen)?;
            loop {
                let n = self.step("final drain", async || span.replay(&tables, None).await).await?;
                report.changes_applied += n;
                if n == 0 {
                    break;
                }
            }
            // Nothing more can reach the target but the mover: the store may live there now.
            self.step("arrival", async || span.arrive().await).await?;
            span.flip(ctl, pause).await?;
            report.cutover_pause = pause.elapsed();
            // Nothing of the store is written on the source any more; the cleanup's deletes
            // must not be captured.
            span.stop_capture().await?;
            state = MoveState::Flipped;
            self.checkpoint(MoveState::Flipped)?;
        }
        if state == MoveState::Flipped {
            let flipped_at: i64 = ctl
                .query_one(
                    &format!("SELECT {NOW_MS} - updated_at FROM store_moves WHERE store_id = $1"),
                    &[&store.uuid()],
                )
                .await
                .map_err(ctl_err)?
                .get(0);
            let waited = Duration::from_millis(u64::try_from(flipped_at).unwrap_or(0));
            if let Some(rest) = self.cleanup_delay.checked_sub(waited) {
                tokio::time::sleep(rest).await;
            }
            span.cleanup(&tables).await?;
            set_state(ctl, store, MoveState::Cleaned, None).await?;
        }
        report.total = started.elapsed();
        tracing::info!(
            store_id = %store, from = from.0, to = to.0, rows = report.rows_copied,
            pause_ms = millis(report.cutover_pause), total_ms = millis(report.total), "store moved"
        );
        Ok(report)
    }
}

/// One store's move between two shards: the steps, each safe to run again.
struct Move<'a> {
    store: StoreId,
    from: ShardId,
    to: ShardId,
    src: &'a PgPool,
    dst: &'a PgPool,
}

impl Move<'_> {
    fn src_err(&self) -> impl Fn(tokio_postgres::Error) -> StorageError + use<> {
        let role = PoolRole::Primary(self.from);
        move |e| query_error(role, e)
    }

    fn dst_err(&self) -> impl Fn(tokio_postgres::Error) -> StorageError + use<> {
        let role = PoolRole::Primary(self.to);
        move |e| query_error(role, e)
    }

    /// The store's tables as the source's catalog has them, after checking both shards run the
    /// same schema (binary `COPY` needs identical columns) and one that captures changes.
    async fn tables(&self) -> Result<Vec<Table>> {
        let (s, d) = (self.src.get().await?, self.dst.get().await?);
        let version = "SELECT coalesce(max(version), 0) FROM kirana_schema";
        let sv: i64 = s.query_one(version, &[]).await.map_err(self.src_err())?.get(0);
        let dv: i64 = d.query_one(version, &[]).await.map_err(self.dst_err())?.get(0);
        if sv != dv || sv < CAPTURE_SCHEMA {
            return Err(StorageError::invalid(
                "shard",
                &format!(
                    "shard {} has schema {sv} and shard {} schema {dv}: both must be the same, at least {CAPTURE_SCHEMA}",
                    self.from.0, self.to.0
                ),
            ));
        }
        drop((s, d));
        self.source_tables().await
    }

    async fn source_tables(&self) -> Result<Vec<Table>> {
        let c = self.src.get().await?;
        let mut out = Vec::with_capacity(STORE_TABLES.len());
        for &name in STORE_TABLES {
            let columns: Vec<String> = c
                .query(
                    "SELECT attname::text FROM pg_attribute
                     WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                    &[&name],
                )
                .await
                .map_err(self.src_err())?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let key: Vec<String> = c
                .query(
                    "SELECT a.attname::text FROM pg_index i
                     CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                     WHERE i.indrelid = $1::text::regclass AND i.indisprimary ORDER BY k.n",
                    &[&name],
                )
                .await
                .map_err(self.src_err())?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if key.is_empty() || !columns.iter().any(|c| c == "store_id") {
                return Err(StorageError::Internal(format!("shard table {name} has no primary key or no store_id")));
            }
            out.push(Table { name, columns, key });
        }
        Ok(out)
    }

    /// Turns capture on, then waits until every transaction that was running when it did has
    /// ended. A write of such a transaction may have missed the capture (its statement did not
    /// see `moving_stores` yet), but once it has ended it is in the copy's snapshot, which is
    /// taken after this returns. So every write is in the snapshot, captured, or both.
    async fn start_capture(&self) -> Result<()> {
        let c = self.src.get().await?;
        c.execute(
            &format!(
                "INSERT INTO moving_stores (store_id, target, started_at) VALUES ($1, $2, {NOW_MS})
                 ON CONFLICT (store_id) DO UPDATE SET target = EXCLUDED.target"
            ),
            &[&self.store.uuid(), &i64::from(self.to.0)],
        )
        .await
        .map_err(self.src_err())?;
        self.wait_for_older_transactions(&c, OLD_TRANSACTIONS_WAIT).await
    }

    /// Waits until every transaction running on the source now has ended (within `limit`).
    async fn wait_for_older_transactions(&self, c: &tokio_postgres::Client, limit: Duration) -> Result<()> {
        let horizon: i64 = c
            .query_one("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint", &[])
            .await
            .map_err(self.src_err())?
            .get(0);
        let since = Instant::now();
        loop {
            let oldest: i64 = c
                .query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint", &[])
                .await
                .map_err(self.src_err())?
                .get(0);
            if oldest >= horizon {
                return Ok(());
            }
            if since.elapsed() > limit {
                return Err(StorageError::Unavailable(format!(
                    "shard {}: a transaction is still running after {limit:?}",
                    self.from.0
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Replaces the store's rows on the target with the source's, from one snapshot, streamed
    /// table by table with binary `COPY`; the target commits them all at once. The keys the
    /// snapshot already covers are then dropped from the capture. Returns the rows copied.
    async fn copy(&self, tables: &[Table]) -> Result<u64> {
        let store = self.store.uuid();
        let mut s = self.src.get().await?;
        let st = s
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(self.src_err())?;
        // Read first, so they belong to the snapshot: each committed before it, so its row is
        // in the copy.
        let covered: Vec<i64> = st
            .query("SELECT id FROM move_changes WHERE store_id = $1", &[&store])
            .await
            .map_err(self.src_err())?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut d = self.dst.get().await?;
        let dt = d.transaction().await.map_err(self.dst_err())?;
        own_xid(&dt).await.map_err(self.dst_err())?;
        // A retried or resumed copy, or a store coming back to a shard it left (its tombstone).
        for t in tables {
            dt.execute(&format!("DELETE FROM {} WHERE store_id = $1", q(t.name)), &[&store])
                .await
                .map_err(self.dst_err())?;
        }
        let mut rows = 0;
        for t in tables {
            let order = if t.is_outbox() { " ORDER BY seq" } else { "" };
            // COPY takes no parameters; a UUID's text is hex and dashes only.
            let out = format!(
                "COPY (SELECT {} FROM {} r WHERE store_id = '{store}'{order}) TO STDOUT (FORMAT binary)",
                t.target_values("r", self.from),
                q(t.name)
            );
            let inn = format!("COPY {} ({}) FROM STDIN (FORMAT binary)", q(t.name), t.column_list());
            let stream = st.copy_out(out.as_str()).await.map_err(self.src_err())?;
            let sink = dt.copy_in(inn.as_str()).await.map_err(self.dst_err())?;
            let mut stream = std::pin::pin!(stream);
            let mut sink = std::pin::pin!(sink);
            while let Some(chunk) = stream.next().await {
                // `feed`, not `send`: the sink flushes when its buffer fills, not once per row.
                sink.feed(chunk.map_err(self.src_err())?).await.map_err(self.dst_err())?;
            }
            rows += sink.as_mut().finish().await.map_err(self.dst_err())?;
        }
        dt.commit().await.map_err(self.dst_err())?;
        st.commit().await.map_err(self.src_err())?;
        if !covered.is_empty() {
            s.execute("DELETE FROM move_changes WHERE id = ANY($1)", &[&covered]).await.map_err(self.src_err())?;
        }
        Ok(rows)
    }

    /// One round of replay: takes up to `limit` recorded keys (all of them with `None`), reads
    /// the source's current rows for them and makes the target's the same, then forgets the
    /// keys. Returns how many keys it took.
    ///
    /// The keys and the rows are read in one snapshot, so with every key taken the target ends
    /// equal to that snapshot; a partial round can momentarily collide with a unique index (two
    /// rows swapped a unique value, one of them not in this round), and is retried whole.
    async fn replay(&self, tables: &[Table], limit: Option<i64>) -> Result<u64> {
        match self.try_replay(tables, limit).await? {
            Some(n) => Ok(n),
            None if limit.is_some() => self.try_replay(tables, None).await?.ok_or_else(|| {
                StorageError::Internal("replaying every captured change still breaks a unique index".into())
            }),
            None => Err(StorageError::Internal("replaying every captured change breaks a unique index".into())),
        }
    }

    /// `None` when the target refused the round with a unique violation (rolled back).
    async fn try_replay(&self, tables: &[Table], limit: Option<i64>) -> Result<Option<u64>> {
        let store = self.store.uuid();
        let mut s = self.src.get().await?;
        let st = s
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .start()
            .await
            .map_err(self.src_err())?;
        let changes = st
            .query(
                "SELECT id, tbl, key FROM move_changes WHERE store_id = $1 ORDER BY id LIMIT $2",
                &[&store, &limit.unwrap_or(i64::MAX)],
            )
            .await
            .map_err(self.src_err())?;
        if changes.is_empty() {
            return Ok(Some(0));
        }
        let mut ids = Vec::with_capacity(changes.len());
        let mut keys: BTreeMap<&str, (Vec<Value>, HashSet<String>)> = BTreeMap::new();
        for r in &changes {
            ids.push(r.get::<_, i64>(0));
            let (tbl, key): (&str, Value) = (r.get(1), r.get(2));
            let (list, seen) = keys.entry(tbl).or_default();
            if seen.insert(key.to_string()) {
                list.push(key);
            }
        }
        let mut current = Vec::with_capacity(keys.len());
        for (tbl, (list, _)) in &keys {
            let t = tables
                .iter()
                .find(|t| t.name == *tbl)
                .ok_or_else(|| StorageError::Internal(format!("move_changes names table {tbl}, which is not moved")))?;
            let list = Value::Array(list.clone());
            let rows: Vec<Value> = st
                .query(
                    &format!(
                        "SELECT to_jsonb(r) FROM {name} r JOIN jsonb_populate_recordset(NULL::{name}, $1) k USING ({key})
                         WHERE r.store_id = $2",
                        name = q(t.name),
                        key = t.key.iter().map(|c| q(c)).collect::<Vec<_>>().join(", ")
                    ),
                    &[&list, &store],
                )
                .await
                .map_err(self.src_err())?
                .iter()
                .map(|r| r.get(0))
                .collect();
            current.push((t, list, Value::Array(rows)));
        }

        let mut d = self.dst.get().await?;
        let dt = d.transaction().await.map_err(self.dst_err())?;
        own_xid(&dt).await.map_err(self.dst_err())?;
        let attempt = async {
            // Every delete before any insert, so rows that traded a unique value both land.
            for (t, keys, _) in &current {
                if t.is_outbox() {
                    continue;
                }
                let on = t.key.iter().map(|c| format!("t.{c} = k.{c}", c = q(c))).collect::<Vec<_>>().join(" AND ");
                dt.execute(
                    &format!(
                        "DELETE FROM {name} t USING jsonb_populate_recordset(NULL::{name}, $1) k WHERE {on}",
                        name = q(t.name)
                    ),
                    &[keys],
                )
                .await?;
            }
            for (t, _, rows) in &current {
                let name = q(t.name);
                let sql = if t.is_outbox() {
                    // Events are only ever appended; a missing row was trimmed after the
                    // source published it, and a present one may be on the target already.
                    format!(
                        "INSERT INTO {name} ({cols}) SELECT {vals} FROM jsonb_populate_recordset(NULL::{name}, $1) r
                         WHERE NOT EXISTS (SELECT 1 FROM {name} o WHERE o.event_id = r.event_id) ORDER BY r.seq",
                        cols = t.column_list(),
                        vals = t.target_values("r", self.from)
                    )
                } else {
                    format!(
                        "INSERT INTO {name} ({cols}) SELECT {vals} FROM jsonb_populate_recordset(NULL::{name}, $1) r",
                        cols = t.column_list(),
                        vals = t.target_values("r", self.from)
                    )
                };
                dt.execute(&sql, &[rows]).await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        }
        .await;
        match attempt {
            Ok(()) => {}
            Err(e) if unique_violation(&e).is_some() => {
                tracing::info!(store_id = %self.store, "a partial replay round met a unique index; replaying all");
                return Ok(None);
            }
            Err(e) => return Err(self.dst_err()(e)),
        }
        dt.commit().await.map_err(self.dst_err())?;
        // Only now: a crash before this replays the same keys again, which changes nothing.
        st.execute("DELETE FROM move_changes WHERE id = ANY($1)", &[&ids]).await.map_err(self.src_err())?;
        st.commit().await.map_err(self.src_err())?;
        Ok(Some(ids.len() as u64))
    }

    /// Refuses every later write of the store on the source, then waits out the writers that
    /// got past the fence before it. Other stores' rows are not touched. Idempotent.
    ///
    /// Not `SELECT … FOR UPDATE` first, as one would think: PostgreSQL does not queue a
    /// `FOR KEY SHARE` locker behind a waiting `FOR UPDATE` when the row's current lockers are
    /// all `KEY SHARE` too, so under a steady stream of writers the freeze starves (seen with
    /// eight checkout loops: never granted). The `UPDATE` takes `FOR NO KEY UPDATE`, which
    /// KEY SHARE does not block, and once it commits every fence reads `moved_to`. A writer
    /// that read the fence just before that is still running, with its transaction id
    /// assigned by its row lock; waiting until every transaction older than the commit has
    /// ended waits it out, exactly as the capture's start does.
    async fn freeze(&self) -> Result<()> {
        let c = self.src.get().await?;
        c.batch_execute(&format!("SET lock_timeout = '{FREEZE_LOCK_TIMEOUT}'")).await.map_err(self.src_err())?;
        let frozen = c
            .execute(
                "UPDATE stores SET moved_to = $2 WHERE store_id = $1",
                &[&self.store.uuid(), &i64::from(self.to.0)],
            )
            .await;
        c.batch_execute("RESET lock_timeout").await.map_err(self.src_err())?;
        if frozen.map_err(self.src_err())? != 1 {
            return Err(StorageError::Internal(format!(
                "store {} has no row on its source shard {}",
                self.store, self.from.0
            )));
        }
        if let Err(e) = self.wait_for_older_transactions(&c, FREEZE_WAIT).await {
            // Refusing the store's writes for longer than this is worse than trying again
            // later: thaw (the journal still says `frozen`, so a resume freezes again).
            c.execute("UPDATE stores SET moved_to = NULL WHERE store_id = $1", &[&self.store.uuid()])
                .await
                .map_err(self.src_err())?;
            return Err(e);
        }
        Ok(())
    }

    /// Makes the store's row on the target a live one (see `Table::target_values`): run once
    /// the source is frozen and drained, just before the directory flips. Idempotent.
    async fn arrive(&self) -> Result<()> {
        let c = self.dst.get().await?;
        c.execute("UPDATE stores SET arriving_from = NULL WHERE store_id = $1", &[&self.store.uuid()])
            .await
            .map_err(self.dst_err())?;
        Ok(())
    }

    /// Points the directory at the target, in the same control transaction as the journal's
    /// `flipped`: either both happened or neither did.
    async fn flip(&self, ctl: &mut ClientWrapper, pause: Instant) -> Result<()> {
        let tx = ctl.transaction().await.map_err(ctl_err)?;
        let n = tx
            .execute(
                "UPDATE stores SET shard = $2 WHERE store_id = $1 AND shard = $3",
                &[&self.store.uuid(), &i64::from(self.to.0), &i64::from(self.from.0)],
            )
            .await
            .map_err(ctl_err)?;
        if n != 1 {
            return Err(StorageError::Internal(format!(
                "the directory no longer places store {} on shard {}; not flipping",
                self.store, self.from.0
            )));
        }
        tx.execute(
            &format!(
                "UPDATE store_moves SET state = 'flipped', cutover_ms = $2, updated_at = {NOW_MS}, error = NULL
                 WHERE store_id = $1"
            ),
            &[&self.store.uuid(), &millis(pause.elapsed())],
        )
        .await
        .map_err(ctl_err)?;
        tx.commit().await.map_err(ctl_err)
    }

    async fn stop_capture(&self) -> Result<()> {
        let mut c = self.src.get().await?;
        let t = c.transaction().await.map_err(self.src_err())?;
        for sql in ["DELETE FROM moving_stores WHERE store_id = $1", "DELETE FROM move_changes WHERE store_id = $1"] {
            t.execute(sql, &[&self.store.uuid()]).await.map_err(self.src_err())?;
        }
        t.commit().await.map_err(self.src_err())
    }

    /// Deletes the store's rows on the source but its `stores` row, whose `moved_to` keeps
    /// refusing writers that still believe the store is here.
    async fn cleanup(&self, tables: &[Table]) -> Result<()> {
        self.stop_capture().await?;
        let mut c = self.src.get().await?;
        let t = c.transaction().await.map_err(self.src_err())?;
        for table in tables.iter().filter(|t| t.name != "stores") {
            t.execute(&format!("DELETE FROM {} WHERE store_id = $1", q(table.name)), &[&self.store.uuid()])
                .await
                .map_err(self.src_err())?;
        }
        t.commit().await.map_err(self.src_err())
    }
}

/// Gives the target's transaction its id before it takes any outbox position. The relay reads
/// the outbox only up to a gap a running transaction may still fill, and tells such a
/// transaction by its id being below the snapshot's `xmax` when the gap was seen
/// (`log::Gaps`): a transaction that took a position *before* it had an id could commit that
/// position after the relay had passed it, and the event would never be published. Every
/// other writer gets its id from the store's fence, first; the mover writes rows whose store
/// row it may not touch first (a catch-up round holding only new events), so it asks for one.
async fn own_xid(t: &tokio_postgres::Transaction<'_>) -> std::result::Result<(), tokio_postgres::Error> {
    t.execute("SELECT pg_current_xact_id()", &[]).await.map(|_| ())
}

const JOURNAL: &str =
    "SELECT store_id, from_shard, to_shard, state, started_at, updated_at, rows_copied, cutover_ms, error
                       FROM store_moves";

fn status(r: &Row) -> Result<MoveStatus> {
    Ok(MoveStatus {
        store: StoreId::from_uuid(r.get(0)),
        from: shard_id(r.get(1))?,
        to: shard_id(r.get(2))?,
        state: MoveState::parse(r.get(3))?,
        started_at: Timestamp::from_millis(r.get(4)),
        updated_at: Timestamp::from_millis(r.get(5)),
        rows_copied: u64::try_from(r.get::<_, i64>(6)).unwrap_or(0),
        cutover_ms: r.get(7),
        error: r.get(8),
    })
}

async fn journal(c: &tokio_postgres::Client, store: StoreId) -> Result<Option<MoveStatus>> {
    let row = c.query_opt(&format!("{JOURNAL} WHERE store_id = $1"), &[&store.uuid()]).await.map_err(ctl_err)?;
    row.as_ref().map(status).transpose()
}

async fn set_state(ctl: &ClientWrapper, store: StoreId, state: MoveState, rows_copied: Option<u64>) -> Result<()> {
    let rows = rows_copied.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    ctl.execute(
        &format!(
            "UPDATE store_moves SET state = $2, rows_copied = coalesce($3, rows_copied), updated_at = {NOW_MS},
             error = NULL WHERE store_id = $1"
        ),
        &[&store.uuid(), &state.as_str(), &rows],
    )
    .await
    .map_err(ctl_err)?;
    Ok(())
}

fn shard_id(v: i64) -> Result<ShardId> {
    u32::try_from(v).map(ShardId).map_err(|_| StorageError::Internal(format!("shard id {v} out of range")))
}

fn lock_key(store: StoreId) -> String {
    format!("store-move:{store}")
}

fn ctl_err(e: tokio_postgres::Error) -> StorageError {
    query_error(PoolRole::Directory, e)
}
