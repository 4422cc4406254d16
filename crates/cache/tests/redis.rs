//! The cache with real Redis: two nodes sharing L2, a Redis that stops and comes back, and a
//! Redis that accepts connections and never answers.
//!
//! The shared Redis at 127.0.0.1:6379 must be running (`.ci/run` starts it): these tests fail,
//! never skip, without it. The stop-and-restart test runs a `redis-server` of its own on a free
//! port, so it can kill it without disturbing anyone.
//!
//! These run on real time (a paused clock would fire the deadline while real sockets are
//! waited on); what they assert about time they assert with the L2's counters, not a stopwatch.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kirana_cache::testing::{OwnRedis, counted};
use kirana_cache::{BreakerState, Cache, CacheKey, Config, Source, Ttl};
use kirana_domain::StoreId;

const TTL: Ttl = Ttl::new(Duration::from_secs(10), Duration::from_secs(60));
const SHARED: &str = "127.0.0.1:6379";
const COOL_OFF: Duration = Duration::from_millis(300);

fn shared_redis() -> String {
    let addr = SHARED.parse().unwrap();
    if let Err(e) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        panic!(
            "start Redis: these tests need it at {SHARED} ({e}). Run \
             `redis-server --daemonize yes --port 6379 --save '' --appendonly no`, or `bash .ci/run`, \
             which starts it."
        );
    }
    format!("redis://{SHARED}")
}

/// A node whose L2 is at `url`. Tests that expect Redis to answer give it a generous deadline, so
/// a CI machine busy with other suites cannot turn a slow answer into an open breaker; the
/// blackhole test keeps the production deadline.
fn node_with_deadline(url: &str, l2_timeout: Duration) -> Cache {
    Cache::new(Config { redis_url: Some(url.to_owned()), l2_timeout, breaker_cool_off: COOL_OFF, ..Config::default() })
        .unwrap()
}

fn node(url: &str) -> Cache {
    node_with_deadline(url, Duration::from_secs(2))
}

#[tokio::test]
async fn a_value_loaded_on_one_node_is_an_l2_hit_on_another_without_its_loader() {
    let url = shared_redis();
    let (a, b) = (node(&url), node(&url));
    let key = CacheKey::new(StoreId::generate(), 1, "page:/").unwrap();
    let calls = Arc::new(AtomicUsize::new(0));

    let on_a = a.get_or_load(&key, TTL, counted(&calls, "from a")).await.unwrap();
    assert_eq!(on_a.source, Source::Loaded);
    let on_b = b.get_or_load(&key, TTL, counted(&calls, "never")).await.unwrap();
    assert_eq!(on_b.source, Source::L2);
    assert_eq!(on_b.value, on_a.value, "same bytes, content type and ETag");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "node b did not call its loader");
    // And b now has it in memory.
    assert_eq!(b.get_or_load(&key, TTL, counted(&calls, "never")).await.unwrap().source, Source::L1);

    // Redis keeps it until the stale horizon, not longer.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pttl: i64 = redis::cmd("PTTL").arg(key.render()).query_async(&mut conn).await.unwrap();
    let horizon = (TTL.fresh + TTL.stale).as_millis() as i64;
    assert!(pttl > horizon - 5_000 && pttl <= horizon, "PTTL {pttl} ms, horizon {horizon} ms");
    assert_eq!(a.l2_state(), Some(BreakerState::Closed));
}

#[tokio::test]
async fn with_redis_stopped_gets_still_succeed_and_the_breaker_spares_later_calls_until_it_returns() {
    let _ = shared_redis();
    let mut redis = OwnRedis::start();
    let cache = node(&redis.url());
    let store = StoreId::generate();
    let key = |name: &str| CacheKey::new(store, 1, name).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));

    let home = cache.get_or_load(&key("page:/"), TTL, counted(&calls, "home")).await.unwrap();
    assert_eq!(home.source, Source::Loaded);
    assert_eq!(cache.l2_stats().unwrap().errors, 0);

    redis.stop();

    // Every get still answers: from memory, or from the loader (the database).
    for i in 0..3 {
        let got = cache.get_or_load(&key(&format!("page:/p{i}")), TTL, counted(&calls, "p")).await.unwrap();
        assert_eq!(got.source, Source::Loaded);
    }
    assert_eq!(cache.l2_state(), Some(BreakerState::Open), "opened after the first failures");
    let opened = cache.l2_stats().unwrap();
    assert!(opened.errors + opened.timeouts >= 1);

    for i in 0..50 {
        let got = cache.get_or_load(&key(&format!("page:/q{i}")), TTL, counted(&calls, "q")).await.unwrap();
        assert_eq!(got.source, Source::Loaded);
    }
    let later = cache.get_or_load(&key("page:/"), TTL, counted(&calls, "never")).await.unwrap();
    assert_eq!(later.source, Source::L1);
    assert_eq!(&later.value.body[..], b"home");
    let after = cache.l2_stats().unwrap();
    assert_eq!(after.calls, opened.calls, "no call went to the stopped Redis while the breaker was open");
    assert_eq!(after.timeouts, opened.timeouts, "so none waited for a deadline");
    assert!(after.skipped >= opened.skipped + 100, "50 gets and 50 sets skipped: {after:?}");

    // Redis comes back on the same port; after the cool-off one probe finds it and L2 is used again.
    redis.restart();
    // The cool-off is measured on the clock; there is no other signal to wait for.
    tokio::time::sleep(COOL_OFF).await;
    let back = cache.get_or_load(&key("page:/back"), TTL, counted(&calls, "back")).await.unwrap();
    assert_eq!(back.source, Source::Loaded);
    assert_eq!(cache.l2_state(), Some(BreakerState::Closed));
    let other_node = node(&redis.url());
    let shared = other_node.get_or_load(&key("page:/back"), TTL, counted(&calls, "never")).await.unwrap();
    assert_eq!(shared.source, Source::L2, "the value loaded after the restart reached Redis");
}

#[tokio::test]
async fn a_blackholed_redis_costs_one_timeout_then_the_breaker_opens() {
    let _ = shared_redis();
    // Accepts connections and never answers, like a Redis behind a dropped route.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });
    let cache = node_with_deadline(&format!("redis://127.0.0.1:{port}"), Config::default().l2_timeout);
    let store = StoreId::generate();
    let calls = Arc::new(AtomicUsize::new(0));

    for i in 0..20 {
        let key = CacheKey::new(store, 1, &format!("page:{i}")).unwrap();
        let got = cache.get_or_load(&key, TTL, counted(&calls, "p")).await.unwrap();
        assert_eq!(got.source, Source::Loaded);
    }
    let stats = cache.l2_stats().unwrap();
    assert_eq!(stats.timeouts, 1, "one timeout, then the breaker: {stats:?}");
    assert_eq!(stats.calls, 1);
    assert_eq!(stats.skipped, 39, "19 gets and 20 sets skipped");
    assert_eq!(cache.l2_state(), Some(BreakerState::Open));
    assert_eq!(calls.load(Ordering::SeqCst), 20);
    held.abort();
}
