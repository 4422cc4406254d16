//! The shared second level: Redis, reached through one multiplexed connection, every call (the
//! connect included) under one short deadline and behind the circuit breaker.
//!
//! It must never make a request fail: every error becomes a miss (on `get`) or nothing (on `set`),
//! counted and logged once per breaker opening, not once per call.
//!
//! Why not redis's `ConnectionManager`: it reconnects with its own retries and backoff, a second
//! policy that would fight the breaker's. Here a failed call drops the connection, and the next
//! call the breaker lets through (the half-open probe) connects afresh.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use crate::metrics as m;
use crate::value::Stored;
use kirana_resilience::{Breaker, BreakerState, Failure};

/// Counts of what the L2 did, since the cache was built. The same numbers go to metrics; tests
/// and `kirana doctor` read them here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct L2Stats {
    /// Calls that went to Redis.
    pub calls: u64,
    /// Calls the open breaker skipped.
    pub skipped: u64,
    /// Calls that hit the deadline.
    pub timeouts: u64,
    /// Calls that failed quickly (refused, reset, protocol).
    pub errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    skipped: AtomicU64,
    timeouts: AtomicU64,
    errors: AtomicU64,
}

pub(crate) struct L2 {
    client: redis::Client,
    /// The live connection, if any. Cloning a multiplexed connection is cheap and shares the one
    /// socket; `None` after a failure, so the next allowed call reconnects.
    conn: Mutex<Option<MultiplexedConnection>>,
    timeout: Duration,
    breaker: Breaker,
    counters: Counters,
}

impl L2 {
    pub fn new(client: redis::Client, timeout: Duration, breaker: Breaker) -> Self {
        Self { client, conn: Mutex::new(None), timeout, breaker, counters: Counters::default() }
    }

    pub fn state(&self) -> BreakerState {
        self.breaker.state()
    }

    pub fn stats(&self) -> L2Stats {
        let c = &self.counters;
        L2Stats {
            calls: c.calls.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            timeouts: c.timeouts.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
        }
    }

    /// The entry under `key`, if Redis has one and answers in time.
    pub async fn get(&self, key: &str) -> Option<Stored> {
        let mut pipe = redis::pipe();
        pipe.get(key).pttl(key);
        let (bytes, pttl): (Option<Vec<u8>>, i64) =
            self.call(|mut conn| async move { pipe.query_async(&mut conn).await }).await?;
        Stored::decode(bytes?, pttl, Instant::now())
    }

    /// Stores `entry` until its stale horizon (`SET … PX`).
    pub async fn set(&self, key: &str, entry: &Stored) {
        let Some((bytes, px)) = entry.encode(Instant::now()) else { return };
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(bytes).arg("PX").arg(px);
        let _: Option<()> = self.call(|mut conn| async move { cmd.query_async(&mut conn).await }).await;
    }

    async fn call<T, F, Fut>(&self, f: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.breaker.allow() {
            self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let existing = self.conn.lock().expect("l2 connection lock").clone();
        let attempt = async {
            let conn = match existing {
                Some(conn) => conn,
                None => {
                    let conn = self.client.get_multiplexed_async_connection().await?;
                    *self.conn.lock().expect("l2 connection lock") = Some(conn.clone());
                    conn
                }
            };
            f(conn).await
        };
        let failure = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(v)) => {
                self.breaker.success();
                self.publish_state();
                return Some(v);
            }
            Ok(Err(e)) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                m::l2_error("error");
                (Failure::Error, e.to_string())
            }
            Err(_) => {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                m::l2_error("timeout");
                (Failure::Timeout, format!("no answer within {:?}", self.timeout))
            }
        };
        // A socket that failed or hung is not trusted again: the next call reconnects.
        *self.conn.lock().expect("l2 connection lock") = None;
        if self.breaker.failure(failure.0) {
            tracing::warn!(error = %failure.1, "Redis cache level failing: skipping it for a while, serving from memory and the database");
        }
        self.publish_state();
        None
    }

    fn publish_state(&self) {
        m::breaker_state(self.breaker.state());
    }
}
