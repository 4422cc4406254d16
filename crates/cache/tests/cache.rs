//! The cache without Redis: single flight, O(1) invalidation by version, stale-while-revalidate
//! and stale-if-error, on tokio's paused clock where time matters.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kirana_cache::testing::{DbDown, counted, page};
use kirana_cache::{Cache, CacheKey, Config, Source, StaleReason, Ttl, Value};
use kirana_domain::StoreId;
use tokio::sync::Notify;

const TTL: Ttl = Ttl::new(Duration::from_secs(10), Duration::from_secs(60));

fn cache() -> Cache {
    Cache::new(Config::default()).unwrap()
}

/// Counts what the cache reports through the `metrics` facade, for the test's thread only.
#[derive(Default)]
struct Counts(Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>);

struct CountOne(Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>, String);

impl metrics::CounterFn for CountOne {
    fn increment(&self, value: u64) {
        *self.0.lock().unwrap().entry(self.1.clone()).or_default() += value;
    }

    fn absolute(&self, value: u64) {
        self.0.lock().unwrap().insert(self.1.clone(), value);
    }
}

impl metrics::Recorder for Counts {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
        metrics::Counter::from_arc(Arc::new(CountOne(
            self.0.clone(),
            format!("{}{{{}}}", key.name(), labels.join(",")),
        )))
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

impl Counts {
    fn get(&self, name: &str) -> u64 {
        self.0.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

/// Yields until `cond` holds, failing after many rounds rather than hanging.
async fn until(mut cond: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition never became true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_misses_on_one_cold_key_load_it_once() {
    let cache = cache();
    let key = CacheKey::new(StoreId::generate(), 1, "page:/").unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());

    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let (cache, key, calls, release) = (cache.clone(), key.clone(), calls.clone(), release.clone());
            tokio::spawn(async move {
                let loader = async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    release.notified().await;
                    Ok::<_, DbDown>(page("home"))
                };
                cache.get_or_load(&key, TTL, loader).await
            })
        })
        .collect();

    // All 500 are inside `get_or_load`, waiting on the one load, before it may finish.
    until(|| cache.waiting(&key) == 500).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    release.notify_one();

    let mut loaded = 0;
    for task in tasks {
        let cached = task.await.unwrap().unwrap();
        assert_eq!(&cached.value.body[..], b"home");
        assert_eq!(cached.source, Source::Loaded);
        loaded += 1;
    }
    assert_eq!(loaded, 500);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the loader ran once for 500 callers");

    let again = cache.get_or_load(&key, TTL, counted(&calls, "never")).await.unwrap();
    assert_eq!(again.source, Source::L1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_version_bump_is_a_new_key_and_reloads() {
    let cache = cache();
    let store = StoreId::generate();
    let calls = Arc::new(AtomicUsize::new(0));
    let v1 = CacheKey::new(store, 1, "page:/").unwrap();

    assert_eq!(cache.get_or_load(&v1, TTL, counted(&calls, "old")).await.unwrap().source, Source::Loaded);
    assert_eq!(cache.get_or_load(&v1, TTL, counted(&calls, "old")).await.unwrap().source, Source::L1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // The invalidation consumer bumped the store's version: nothing is deleted, the key changes.
    let v2 = CacheKey::new(store, 2, "page:/").unwrap();
    let after = cache.get_or_load(&v2, TTL, counted(&calls, "new")).await.unwrap();
    assert_eq!(after.source, Source::Loaded);
    assert_eq!(&after.value.body[..], b"new");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Another store's keys are untouched by this store's bump.
    let other = CacheKey::new(StoreId::generate(), 1, "page:/").unwrap();
    cache.get_or_load(&other, TTL, counted(&calls, "other")).await.unwrap();
    assert_eq!(cache.get_or_load(&other, TTL, counted(&calls, "other")).await.unwrap().source, Source::L1);
}

#[tokio::test(start_paused = true)]
async fn a_stale_value_is_served_at_once_while_one_refresh_runs_then_the_fresh_one() {
    let cache = cache();
    let key = CacheKey::new(StoreId::generate(), 1, "catalog:categories").unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    cache.get_or_load(&key, TTL, counted(&calls, "v1")).await.unwrap();

    tokio::time::advance(TTL.fresh).await;
    let release = Arc::new(Notify::new());
    let slow_refresh = {
        let (calls, release) = (calls.clone(), release.clone());
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            release.notified().await;
            Ok::<_, DbDown>(page("v2"))
        }
    };
    let stale = cache.get_or_load(&key, TTL, slow_refresh).await.unwrap();
    assert_eq!(stale.source, Source::Stale(StaleReason::Revalidating));
    assert_eq!(&stale.value.body[..], b"v1");

    // While the refresh waits on the database, others get the stale value too, and no second load.
    until(|| calls.load(Ordering::SeqCst) == 2).await;
    for _ in 0..10 {
        let again = cache.get_or_load(&key, TTL, counted(&calls, "never")).await.unwrap();
        assert_eq!(&again.value.body[..], b"v1");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one refresh for eleven stale reads");

    release.notify_one();
    cache.settled(&key).await;
    let fresh = cache.get_or_load(&key, TTL, counted(&calls, "never")).await.unwrap();
    assert_eq!(fresh.source, Source::L1);
    assert_eq!(&fresh.value.body[..], b"v2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn when_the_loader_fails_a_stale_value_is_served_and_counted_as_a_loader_error() {
    // A current-thread runtime: the cache's spawned loads report on this thread too.
    let counts = Counts::default();
    let _recording = metrics::set_default_local_recorder(&counts);
    let cache = cache();
    let key = CacheKey::new(StoreId::generate(), 1, "page:/").unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    cache.get_or_load(&key, TTL, counted(&calls, "v1")).await.unwrap();
    tokio::time::advance(TTL.fresh).await;

    let failing = |calls: &Arc<AtomicUsize>| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<Value, _>(DbDown)
        }
    };
    // The first stale read starts the refresh; the refresh fails.
    cache.get_or_load(&key, TTL, failing(&calls)).await.unwrap();
    cache.settled(&key).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // From then on the stale value is served as what it is: the database's stand-in. The database
    // is not asked again before the retry interval.
    let served = cache.get_or_load(&key, TTL, failing(&calls)).await.unwrap();
    assert_eq!(served.source, Source::Stale(StaleReason::LoaderError));
    assert_eq!(&served.value.body[..], b"v1");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(counts.get("kirana_cache_stale_served_total{reason=revalidating}"), 1);
    assert_eq!(counts.get("kirana_cache_stale_served_total{reason=loader_error}"), 1);
    assert_eq!(counts.get("kirana_cache_load_errors_total{}"), 1);
    assert_eq!(counts.get("kirana_cache_loads_total{}"), 2);
    assert_eq!(counts.get("kirana_cache_requests_total{level=l1,result=stale}"), 2);

    tokio::time::advance(Config::default().refresh_retry).await;
    cache.get_or_load(&key, TTL, failing(&calls)).await.unwrap();
    cache.settled(&key).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3, "retried after the interval");

    // Past the stale horizon there is nothing left to serve: the error comes through.
    tokio::time::advance(TTL.stale).await;
    let err = cache.get_or_load(&key, TTL, failing(&calls)).await.unwrap_err();
    assert_eq!(*err, DbDown);
    assert_eq!(counts.get("kirana_cache_load_errors_total{}"), 3);
    assert_eq!(counts.get("kirana_cache_requests_total{level=l1,result=miss}"), 2, "the first load and this one");
}

#[tokio::test(start_paused = true)]
async fn without_a_stale_value_the_loaders_error_reaches_every_waiting_caller() {
    let cache = cache();
    let key = CacheKey::new(StoreId::generate(), 1, "page:/").unwrap();
    let release = Arc::new(Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (cache, key, release, calls) = (cache.clone(), key.clone(), release.clone(), calls.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load(&key, TTL, async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        release.notified().await;
                        Err::<Value, _>(DbDown)
                    })
                    .await
            })
        })
        .collect();
    until(|| cache.waiting(&key) == 20).await;
    release.notify_one();
    for task in tasks {
        assert_eq!(*task.await.unwrap().unwrap_err(), DbDown);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A failed load is not cached: the next caller loads again.
    let ok = cache.get_or_load(&key, TTL, counted(&calls, "back")).await.unwrap();
    assert_eq!(ok.source, Source::Loaded);
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_gives_up_does_not_cancel_the_load_others_wait_for() {
    let cache = cache();
    let key = CacheKey::new(StoreId::generate(), 1, "page:/").unwrap();
    let release = Arc::new(Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let loader = {
        let (release, calls) = (release.clone(), calls.clone());
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            release.notified().await;
            Ok::<_, DbDown>(page("done"))
        }
    };
    let gave_up = tokio::time::timeout(Duration::from_millis(100), cache.get_or_load(&key, TTL, loader)).await;
    assert!(gave_up.is_err());
    release.notify_one();
    cache.settled(&key).await;
    let later = cache.get_or_load(&key, TTL, counted(&calls, "never")).await.unwrap();
    assert_eq!(later.source, Source::L1);
    assert_eq!(&later.value.body[..], b"done");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn the_memory_bound_evicts_rather_than_grows() {
    let cache = Cache::new(Config { max_bytes: 64 * 1024, ..Config::default() }).unwrap();
    let store = StoreId::generate();
    static BODY: [u8; 4096] = [b'x'; 4096];
    for i in 0..100 {
        let key = CacheKey::new(store, 1, &format!("page:{i}")).unwrap();
        cache.get_or_load(&key, TTL, async { Ok::<_, DbDown>(Value::new("text/html", &BODY[..])) }).await.unwrap();
    }
    let (_, bytes) = cache.l1_usage();
    assert!(bytes <= 64 * 1024, "L1 holds {bytes} bytes, over its 64 KiB bound");
}
