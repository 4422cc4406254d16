//! One pool of connections to one PostgreSQL server in one role: a shard's primary, one of its
//! replicas, or the directory's control database.
//!
//! The pool owns the limits that keep an overloaded database from taking the service down with
//! it: a size, a wait for a free connection and a wait for a new one. Running out of either is
//! `StorageError::Unavailable` naming the pool (the HTTP edge answers 503 with `Retry-After`),
//! never a hang. It must never connect eagerly: a node starts while a database is down and
//! serves whatever it can until the database returns.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType};
use tokio_postgres::NoTls;

use crate::Result;
use crate::error::StorageError;
use crate::scope::ShardId;

/// Which server a pool reaches, for messages, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolRole {
    /// The control database holding the directory.
    Directory,
    Primary(ShardId),
    /// The primary again, for background work (a bulkhead; see `PgShard`).
    Background(ShardId),
    Replica(ShardId, u32),
}

impl std::fmt::Display for PoolRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolRole::Directory => write!(f, "directory primary"),
            PoolRole::Primary(s) => write!(f, "shard {} primary", s.0),
            PoolRole::Background(s) => write!(f, "shard {} primary (background)", s.0),
            PoolRole::Replica(s, n) => write!(f, "shard {} replica {n}", s.0),
        }
    }
}

/// A pool's limits.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub max_size: usize,
    /// How long a caller waits for a connection (free or new) before getting `Unavailable`.
    pub acquire_timeout: Duration,
    /// How long opening one connection may take (TCP and startup).
    pub connect_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings { max_size: 16, acquire_timeout: Duration::from_secs(2), connect_timeout: Duration::from_secs(2) }
    }
}

/// A pool's occupancy, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Connections open (in use or idle).
    pub size: usize,
    /// Idle connections ready to hand out.
    pub available: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
    pub max_size: usize,
}

pub struct PgPool {
    pool: Pool,
    role: PoolRole,
    settings: PoolSettings,
    /// How long one operation (a read, or a write's whole transaction) may take on a connection
    /// from this pool; see [`PgPool::with_operation_deadline`]. `Duration::MAX` (the default):
    /// no deadline (tokio's timeout treats an unreachable instant as never).
    operation_deadline: Duration,
}

/// The default deadline of a shard primary's request pool ([`PgPool::with_operation_deadline`]):
/// far above any query kirana runs on a request's path, so that only a server that stopped
/// answering reaches it. Other pools (background work, whose batches may be long) have none
/// unless given one.
pub const DEFAULT_OPERATION_DEADLINE: Duration = Duration::from_secs(5);

impl PgPool {
    /// Builds the pool without connecting: the first `get` opens the first connection.
    pub fn new(url: &str, role: PoolRole, settings: PoolSettings) -> Result<PgPool> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| StorageError::Internal(format!("{role}: bad PostgreSQL URL: {e}")))?;
        config.connect_timeout(settings.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("kirana");
        }
        // `Fast` recycling trusts a connection that has not reported itself closed; a dead one
        // surfaces as a query error, which the caller sees as `Unavailable` and retries.
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(settings.max_size.max(1))
            .wait_timeout(Some(settings.acquire_timeout))
            // A connection that cannot be opened within the acquire budget fails the caller:
            // both bounds apply, so neither a full pool nor a silent server makes a caller hang.
            .create_timeout(Some(settings.connect_timeout.min(settings.acquire_timeout)))
            .recycle_timeout(Some(settings.acquire_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StorageError::Internal(format!("{role}: cannot build the pool: {e}")))?;
        Ok(PgPool { pool, role, settings, operation_deadline: Duration::MAX })
    }

    /// Sets how long one operation on this pool's connections may take before the caller gets
    /// `Unavailable` and the connection is discarded.
    ///
    /// Why, beside the acquire and connect timeouts: those bound getting a connection, not using
    /// it. A server that stops answering on a connection already open (a network partition, a
    /// blackholed link, a hung host) leaves every query on it waiting for TCP to give up, which
    /// takes many minutes; PostgreSQL's `statement_timeout` cannot help, it runs on the server
    /// that no longer hears us. The caller's deadline is the only bound left.
    pub fn with_operation_deadline(mut self, deadline: Duration) -> PgPool {
        self.operation_deadline = deadline;
        self
    }

    pub fn operation_deadline(&self) -> Duration {
        self.operation_deadline
    }

    pub fn role(&self) -> PoolRole {
        self.role
    }

    /// A connection, within the acquire timeout. Prepare statements through the object's
    /// `prepare_cached`, which keeps them per connection.
    pub async fn get(&self) -> Result<Object> {
        self.pool.get().await.map_err(|e| {
            let role = self.role;
            match e {
                PoolError::Timeout(TimeoutType::Wait) => StorageError::Unavailable(format!(
                    "{role}: no free connection within {:?} (pool of {} exhausted)",
                    self.settings.acquire_timeout, self.settings.max_size
                )),
                PoolError::Timeout(TimeoutType::Create) => StorageError::Unavailable(format!(
                    "{role}: connecting took longer than {:?}",
                    self.settings.connect_timeout.min(self.settings.acquire_timeout)
                )),
                PoolError::Timeout(TimeoutType::Recycle) => {
                    StorageError::Unavailable(format!("{role}: checking an idle connection timed out"))
                }
                PoolError::Backend(e) => StorageError::Unavailable(format!("{role}: cannot connect: {e}")),
                PoolError::Closed => StorageError::Unavailable(format!("{role}: the pool is closed")),
                other => StorageError::Internal(format!("{role}: {other}")),
            }
        })
    }

    pub fn status(&self) -> PoolStatus {
        let s = self.pool.status();
        PoolStatus { size: s.size, available: s.available, waiting: s.waiting, max_size: s.max_size }
    }

    /// Stops handing out connections and closes the idle ones (shutdown).
    pub fn close(&self) {
        self.pool.close();
    }
}

/// Maps a query's error: a constraint or data error is a bug here (callers handle the
/// constraints they expect first); a lost connection or a server shutting down is retryable.
pub(crate) fn query_error(role: PoolRole, e: tokio_postgres::Error) -> StorageError {
    use tokio_postgres::error::SqlState;
    let what = describe(&e);
    match e.code() {
        // No server error: the connection broke (or a value did not convert, which is a bug).
        None if e.is_closed() || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>()) => {
            StorageError::Unavailable(format!("{role}: {what}"))
        }
        None => StorageError::Internal(format!("{role}: {what}")),
        Some(c)
            if *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::LOCK_NOT_AVAILABLE
                || *c == SqlState::TOO_MANY_CONNECTIONS
                || *c == SqlState::READ_ONLY_SQL_TRANSACTION =>
        {
            StorageError::Unavailable(format!("{role}: {what}"))
        }
        Some(_) => StorageError::Internal(format!("{role}: {what}")),
    }
}

/// An error as an operator needs to read it: the server's own message and SQLSTATE (the
/// driver's `Display` says only "db error"), or the driver's error with its cause.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// Whether a write failed because the server is read-only: a standby, such as a primary that a
/// failover demoted while this connection stayed open. Such a connection must not be reused.
pub(crate) fn from_a_standby(e: &StorageError) -> bool {
    matches!(e, StorageError::Unavailable(m) if m.contains("(SQLSTATE 25006)"))
}

/// Whether an error is a transaction that lost a race with another and may simply be run again:
/// a deadlock, a serialization failure, a lock that was not granted in time.
pub(crate) fn lost_a_race(e: &StorageError) -> bool {
    matches!(e, StorageError::Unavailable(m)
        if m.contains("(SQLSTATE 40P01)") || m.contains("(SQLSTATE 40001)") || m.contains("(SQLSTATE 55P03)"))
}
