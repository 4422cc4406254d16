//! The layered cache: L1 in this process (moka, bounded in bytes), L2 in Redis when configured,
//! then the caller's loader (the database). It owns the in-flight loads (single flight), the
//! stale-while-revalidate refreshes, and serving stale when the loader fails.
//!
//! It never decides what a key means or when to invalidate: callers put the store's cache
//! version in the key (see `key`), and a bumped version is simply a key nobody has loaded yet.
//!
//! Concurrency roles:
//! - `flights` maps a rendered key to the one load running for it. Every caller that misses
//!   joins it; only the first caller's loader runs. The load is a spawned task, so a caller that
//!   gives up (a request timeout) does not abort the load the others wait for.
//! - A load writes L1 *before* it leaves `flights`, and a caller that finds no flight looks at L1
//!   again under the `flights` lock before starting one: a key is never loaded twice because a
//!   caller slipped between the two.

use std::any::Any;
use std::collections::HashMap;
use std::fmt::Display;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::time::Instant;

use crate::CacheError;
use crate::key::CacheKey;
use crate::l2::{L2, L2Stats};
use crate::metrics as m;
use crate::value::{Freshness, Stored, Ttl, Value};
use kirana_resilience::{Breaker, BreakerState};

/// How the cache is built. `Default` is the production setting without Redis.
#[derive(Debug, Clone)]
pub struct Config {
    /// The L1 bound: bodies, content types, ETags and keys together, in bytes.
    pub max_bytes: u64,
    /// `redis://…`: the shared L2. `None`: L1 only.
    pub redis_url: Option<String>,
    /// The deadline of every Redis call, connecting included. Redis answers in well under a
    /// millisecond here; past this it is treated as down.
    pub l2_timeout: Duration,
    /// Quick Redis errors in a row that open the breaker (one timeout opens it at once).
    pub breaker_threshold: u32,
    /// How long an open breaker skips Redis before one probe may try it again.
    pub breaker_cool_off: Duration,
    /// After a refresh of a stale entry failed, how long before the next one may run: a down
    /// database is asked once per key per this, not once per request.
    pub refresh_retry: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            redis_url: None,
            l2_timeout: Duration::from_millis(50),
            breaker_threshold: 3,
            breaker_cool_off: Duration::from_secs(5),
            refresh_retry: Duration::from_secs(1),
        }
    }
}

/// Why a stale value was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleReason {
    /// Past its freshness; a refresh is running (or was just started).
    Revalidating,
    /// The loader failed (the database is down); this is the last good value.
    LoaderError,
}

impl StaleReason {
    fn label(self) -> &'static str {
        match self {
            Self::Revalidating => "revalidating",
            Self::LoaderError => "loader_error",
        }
    }
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Fresh, from this process's memory.
    L1,
    /// Fresh, from Redis (another node loaded it).
    L2,
    /// Just loaded by a loader (this caller's or a concurrent caller's).
    Loaded,
    /// Stale, for the reason given.
    Stale(StaleReason),
}

/// An answer from the cache.
#[derive(Debug, Clone)]
pub struct Cached {
    pub value: Arc<Value>,
    pub source: Source,
}

/// The layered cache. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

/// A loader's error, type-erased so one map can hold the flights of callers with different error
/// types; each caller gets its own type back by downcasting.
type AnyError = Arc<dyn Any + Send + Sync>;
/// `Err(message)`: the load task panicked or was cancelled with the runtime.
type FlightOutput = Result<Result<Landed, AnyError>, Arc<str>>;
type Flight = Shared<BoxFuture<'static, FlightOutput>>;

#[derive(Clone)]
struct Landed {
    stored: Arc<Stored>,
    source: Source,
}

struct Inner {
    l1: moka::sync::Cache<String, Arc<Stored>>,
    l2: Option<L2>,
    flights: Mutex<HashMap<String, Flight>>,
    refresh_retry: Duration,
}

/// Expires L1 entries at their stale horizon. This only frees memory: whether an entry is fresh,
/// stale or gone is decided on tokio time at every read (moka keeps its own clock, which a test's
/// paused tokio clock does not move).
struct Horizon;

impl moka::Expiry<String, Arc<Stored>> for Horizon {
    fn expire_after_create(&self, _: &String, v: &Arc<Stored>, _: std::time::Instant) -> Option<Duration> {
        Some(v.stale_until.saturating_duration_since(Instant::now()))
    }

    fn expire_after_update(
        &self,
        _: &String,
        v: &Arc<Stored>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.stale_until.saturating_duration_since(Instant::now()))
    }
}

/// `host:port` of a Redis URL, for the breaker's label (no scheme, credentials or database).
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest).to_string()
}

/// Overhead counted per L1 entry beyond its bytes: the entry, its `Arc`s and moka's bookkeeping.
const ENTRY_OVERHEAD: usize = 160;

impl Cache {
    /// Builds the cache. Does not connect to Redis: a Redis that is down at start costs what it
    /// costs later, one timeout before the breaker opens.
    pub fn new(config: Config) -> Result<Self, CacheError> {
        let l1 = moka::sync::Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|k: &String, v: &Arc<Stored>| {
                u32::try_from(k.len() + v.value.weight() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
            })
            .expire_after(Horizon)
            .build();
        let l2 = match &config.redis_url {
            Some(url) => {
                let client = redis::Client::open(url.as_str()).map_err(CacheError::InvalidRedisUrl)?;
                let breaker =
                    Breaker::new(config.breaker_threshold, config.breaker_cool_off).named("redis", host_of(url));
                Some(L2::new(client, config.l2_timeout, breaker))
            }
            None => None,
        };
        let inner = Inner { l1, l2, flights: Mutex::new(HashMap::new()), refresh_retry: config.refresh_retry };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The value under `key`: fresh from L1 or L2, else loaded by `loader` (once, however many
    /// callers miss together), or stale while a refresh runs, or stale because the loader failed.
    ///
    /// `loader` runs only if needed, and in a task of its own (so it is `'static`): a caller that
    /// goes away does not cancel the load others wait for. Its error comes back as `Arc<E>`, the
    /// same error for every caller that waited on that load. Callers that share a key must use the
    /// same error type; one that does not still gets an answer, from its own loader, uncoalesced.
    pub async fn get_or_load<F, E>(&self, key: &CacheKey, ttl: Ttl, loader: F) -> Result<Cached, Arc<E>>
    where
        F: Future<Output = Result<Value, E>> + Send + 'static,
        E: Display + Send + Sync + 'static,
    {
        let k = key.render();
        let mut loader = Some(loader);
        let flight = loop {
            if let Some(hit) = self.inner.serve_from_l1(&k, ttl, &mut loader) {
                return Ok(hit);
            }
            m::request("l1", "miss");
            if let Some(flight) = self.inner.join_or_start(&k, ttl, &mut loader, None, true) {
                break flight;
            }
            // L1 was filled between our look and the lock: read it again.
        };
        let landed = match flight.await {
            Ok(landed) => landed,
            Err(panicked) => panic!("cache load of {k} did not finish: {panicked}"),
        };
        match landed {
            Ok(Landed { stored, source }) => {
                if let Source::Stale(reason) = source {
                    m::stale_served(reason.label());
                }
                Ok(Cached { value: stored.value.clone(), source })
            }
            Err(any) => match any.downcast::<E>() {
                Ok(e) => Err(e),
                Err(_) => {
                    let loader = loader.expect("a caller whose loader ran gets its own error type back");
                    let value = loader.await.map_err(Arc::new)?;
                    Ok(Cached { value: Arc::new(value), source: Source::Loaded })
                }
            },
        }
    }

    /// The value under `key` if this node holds it fresh in memory; nothing else is tried and
    /// nothing is loaded. For a fast path in front of the request stack: any other case goes
    /// the long way, through [`Cache::get_or_load`].
    pub fn peek(&self, key: &CacheKey) -> Option<Arc<Value>> {
        let stored = self.inner.l1.get(&key.render())?;
        (stored.freshness(Instant::now()) == Freshness::Fresh).then(|| {
            m::request("l1", "hit");
            stored.value.clone()
        })
    }

    /// The L2 breaker's state, or `None` without Redis.
    pub fn l2_state(&self) -> Option<BreakerState> {
        self.inner.l2.as_ref().map(L2::state)
    }

    /// What the L2 has done so far, or `None` without Redis.
    pub fn l2_stats(&self) -> Option<L2Stats> {
        self.inner.l2.as_ref().map(L2::stats)
    }

    /// How many callers are waiting on `key`'s load right now (0 when none runs).
    pub fn waiting(&self, key: &CacheKey) -> usize {
        let flights = self.inner.flights.lock().expect("flights lock");
        // The map holds one handle; every other is a waiting caller.
        flights.get(&key.render()).and_then(Shared::strong_count).map_or(0, |n| n - 1)
    }

    /// Waits until no load of `key` runs (a background refresh included). For tests and
    /// shutdown; requests never need it.
    pub async fn settled(&self, key: &CacheKey) {
        let flight = self.inner.flights.lock().expect("flights lock").get(&key.render()).cloned();
        if let Some(flight) = flight {
            let _ = flight.await;
        }
    }

    /// Entries and weighted bytes in L1 (approximate: moka applies writes lazily).
    pub fn l1_usage(&self) -> (u64, u64) {
        self.inner.l1.run_pending_tasks();
        (self.inner.l1.entry_count(), self.inner.l1.weighted_size())
    }
}

impl Inner {
    /// A fresh or stale L1 entry, starting a refresh for a stale one. `None` on a miss.
    fn serve_from_l1<F, E>(self: &Arc<Self>, k: &str, ttl: Ttl, loader: &mut Option<F>) -> Option<Cached>
    where
        F: Future<Output = Result<Value, E>> + Send + 'static,
        E: Display + Send + Sync + 'static,
    {
        let stored = self.l1.get(k)?;
        let now = Instant::now();
        match stored.freshness(now) {
            Freshness::Fresh => {
                m::request("l1", "hit");
                Some(Cached { value: stored.value.clone(), source: Source::L1 })
            }
            Freshness::Stale => {
                m::request("l1", "stale");
                let reason = match stored.refresh_failed_at {
                    Some(_) => StaleReason::LoaderError,
                    None => StaleReason::Revalidating,
                };
                let may_refresh = stored.refresh_failed_at.is_none_or(|at| now >= at + self.refresh_retry);
                if may_refresh {
                    // Joins a running refresh if there is one; the flight runs without us.
                    let _ = self.join_or_start(k, ttl, loader, Some(stored.clone()), false);
                }
                m::stale_served(reason.label());
                Some(Cached { value: stored.value.clone(), source: Source::Stale(reason) })
            }
            Freshness::Expired => None,
        }
    }

    /// The flight for `k`: the running one, or a new one running `loader`. With `recheck_l1`,
    /// `None` if L1 got a servable entry meanwhile (the caller reads it instead).
    fn join_or_start<F, E>(
        self: &Arc<Self>,
        k: &str,
        ttl: Ttl,
        loader: &mut Option<F>,
        fallback: Option<Arc<Stored>>,
        recheck_l1: bool,
    ) -> Option<Flight>
    where
        F: Future<Output = Result<Value, E>> + Send + 'static,
        E: Display + Send + Sync + 'static,
    {
        let mut flights = self.flights.lock().expect("flights lock");
        if let Some(flight) = flights.get(k) {
            return Some(flight.clone());
        }
        if recheck_l1 && self.l1.get(k).is_some_and(|s| s.freshness(Instant::now()) != Freshness::Expired) {
            return None;
        }
        let loader = loader.take()?;
        let this = self.clone();
        let key = k.to_owned();
        let task = tokio::spawn(async move {
            let _leave = LeaveFlights { inner: this.clone(), key: key.clone() };
            this.fill(&key, ttl, loader, fallback).await
        });
        let flight: Flight = task.map(|joined| joined.map_err(|e| Arc::from(e.to_string()))).boxed().shared();
        flights.insert(k.to_owned(), flight.clone());
        Some(flight)
    }

    /// One load: L2 first, then the loader; on the loader's error, the best stale value known.
    async fn fill<F, E>(
        &self,
        k: &str,
        ttl: Ttl,
        loader: F,
        mut fallback: Option<Arc<Stored>>,
    ) -> Result<Landed, AnyError>
    where
        F: Future<Output = Result<Value, E>> + Send + 'static,
        E: Display + Send + Sync + 'static,
    {
        if let Some(l2) = &self.l2 {
            match l2.get(k).await.map(|s| (s.freshness(Instant::now()), s)) {
                Some((Freshness::Fresh, stored)) => {
                    m::request("l2", "hit");
                    let stored = Arc::new(stored);
                    self.l1.insert(k.to_owned(), stored.clone());
                    return Ok(Landed { stored, source: Source::L2 });
                }
                // Stale in Redis: everyone's copy is old, so load now rather than serve it, but
                // keep it for the loader's failure.
                Some((Freshness::Stale, stored)) => {
                    m::request("l2", "stale");
                    if fallback.as_ref().is_none_or(|f| f.stale_until < stored.stale_until) {
                        fallback = Some(Arc::new(stored));
                    }
                }
                _ => m::request("l2", "miss"),
            }
        }
        m::load();
        match loader.await {
            Ok(value) => {
                let stored = Arc::new(Stored::new(Arc::new(value), ttl, Instant::now()));
                self.l1.insert(k.to_owned(), stored.clone());
                if let Some(l2) = &self.l2 {
                    l2.set(k, &stored).await;
                }
                Ok(Landed { stored, source: Source::Loaded })
            }
            Err(e) => {
                m::load_error();
                let now = Instant::now();
                match fallback.filter(|f| f.freshness(now) != Freshness::Expired) {
                    Some(stale) => {
                        tracing::warn!(key = k, error = %e, "cache loader failed: serving the stale value");
                        let mut marked = (*stale).clone();
                        marked.refresh_failed_at = Some(now);
                        let marked = Arc::new(marked);
                        self.l1.insert(k.to_owned(), marked.clone());
                        Ok(Landed { stored: marked, source: Source::Stale(StaleReason::LoaderError) })
                    }
                    None => Err(Arc::new(e) as AnyError),
                }
            }
        }
    }
}

/// Takes a load out of `flights` when it ends, however it ends (a panicking loader included), so
/// the next miss starts a new one.
struct LeaveFlights {
    inner: Arc<Inner>,
    key: String,
}

impl Drop for LeaveFlights {
    fn drop(&mut self) {
        if let Ok(mut flights) = self.inner.flights.lock() {
            flights.remove(&self.key);
        }
    }
}
