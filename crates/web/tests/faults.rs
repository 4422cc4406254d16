//! Issue 8's fault-injection proof: the platform with a [`FaultProxy`] between it and one of
//! its services, and a fault switched on while it serves.
//!
//! - A blackholed Redis costs the read cache one timeout per breaker cool-off, not one per
//!   request.
//! - A slow replica misses its read deadline once, leaves rotation, and reads move to the
//!   primary until it is fast again.
//! - A blackholed primary: cached pages serve on, checkouts answer 201 or 503 (with
//!   Retry-After) within a bound, and retrying every 503 with its Idempotency-Key makes
//!   exactly one order per checkout.
//! - A blackholed directory (control database): pages of stores already seen serve on, their
//!   shoppers still check out, and sign-in or an unknown store answers 503 within the deadline.
//!
//! Times here are on the real clock (real sockets, real servers); every bound on them is
//! one-sided and generous, so a busy machine can make a test slower, not wrong.

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use kirana_faultproxy::FaultProxy;
use kirana_server::read_cache::ReadCacheConfig;
use kirana_storage::postgres::cluster::{PgConfig, ShardUrls, open};
use kirana_storage::postgres::testing::{PgPair, TempDb};
use serde_json::{Value, json};
use support::*;
use tokio::time::Instant;
use tower::ServiceExt;

/// Polls `probe` until it answers, for at most `patience`.
async fn eventually<T, F, Fut>(what: &str, patience: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + patience;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up after {patience:?} waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `host:port` of a `postgresql://user@host:port/db?…` URL.
fn pg_addr(url: &str) -> SocketAddr {
    let host_port = url.split('@').nth(1).and_then(|rest| rest.split('/').next()).expect("a host and port");
    host_port.parse().expect("an IP address and port")
}

/// An API answer with its headers.
struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    replayed: bool,
    body: Value,
}

/// A JSON API call with extra headers (the cart token, an idempotency key).
async fn call(p: &Platform, method: Method, uri: &str, headers: &[(&str, &str)], body: Option<Value>) -> Answer {
    let mut b = Request::builder().method(method).uri(uri).header(header::HOST, PLATFORM_HOST);
    for (name, value) in headers {
        b = b.header(*name, *value);
    }
    let req = match body {
        Some(v) => b.header(header::CONTENT_TYPE, "application/json").body(Body::from(v.to_string())),
        None => b.body(Body::empty()),
    }
    .expect("a request");
    let res = p.router.clone().oneshot(req).await.expect("the router answers");
    let status = res.status();
    let (retry_after, replayed) = {
        let text = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        (text("retry-after"), text("idempotent-replayed").is_some())
    };
    let bytes = res.into_body().collect().await.expect("a body").to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Answer { status, retry_after, replayed, body }
}

/// The three public reads of a product: home page, product page, API read.
fn public_pages(slug: &str, pid: &str) -> [String; 3] {
    [format!("/{slug}"), format!("/{slug}/product/{pid}"), format!("/api/v1/storefront/{slug}/products/{pid}")]
}

/// A new API cart holding `quantity` of `variant`: its id and token.
async fn cart_holding(p: &Platform, slug: &str, variant: &str, quantity: i64) -> (String, String) {
    let cart = call(p, Method::POST, &format!("/api/v1/storefront/{slug}/carts"), &[], Some(json!({}))).await;
    assert_eq!(cart.status, 201, "{}", cart.body);
    let (cart_id, token) = (cart.body["cart_id"].as_str().unwrap(), cart.body["token"].as_str().unwrap());
    let items = format!("/api/v1/storefront/{slug}/carts/{cart_id}/items");
    let item = json!({ "variant_id": variant, "quantity": quantity });
    let set = call(p, Method::PUT, &items, &[("x-cart-token", token)], Some(item)).await;
    assert_eq!(set.status, 200, "{}", set.body);
    (cart_id.to_string(), token.to_string())
}

/// A cash-on-delivery checkout's body.
fn checkout_body() -> Value {
    json!({
        "customer": { "name": "Asha Rao", "phone": "+919812345678" },
        "address": { "line1": "12 MG Road", "city": "Pune", "postal_code": "411001" },
        "payment_method": "cod"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_redis_costs_one_timeout_per_cool_off_not_one_per_request() {
    // In front of the shared Redis, which is never stopped: the fault is this test's proxy.
    let proxy = FaultProxy::start("127.0.0.1:6379".parse().unwrap()).expect("a proxy in front of Redis");
    let cache_config =
        kirana_cache::Config { redis_url: Some(format!("redis://{}", proxy.addr())), ..Default::default() };
    let cool_off = cache_config.breaker_cool_off;
    let config = ReadCacheConfig { cache: cache_config, ..ReadCacheConfig::default() };
    let (p, cache, _) = Platform::new().await.cached(config, false);
    let shop = p.shop("+919800008001", "Blackhole Tea House").await;
    let mut products = Vec::new();
    for n in 0..51 {
        products
            .push(id(&p.product(&shop, json!({ "title": format!("Darjeeling {n}"), "price": 100, "stock": 5 })).await));
    }
    let slug = shop.slug();
    let b = p.browser();
    let warm = b.get(&format!("/{slug}/product/{}", products[0])).await;
    assert_eq!(warm.header("x-kirana-cache"), "miss");
    let before = cache.cache().l2_stats().expect("an L2");
    assert!(
        before.calls > 0 && before.timeouts == 0 && before.errors == 0,
        "Redis answers through the proxy: {before:?}"
    );

    proxy.set_blackhole(true);
    let started = Instant::now();
    for (n, pid) in products.iter().enumerate().skip(1) {
        let page = b.get(&format!("/{slug}/product/{pid}")).await;
        assert!(page.html().contains(&format!("Darjeeling {n}")), "cold page {n}");
    }
    let took = started.elapsed();
    let after = cache.cache().l2_stats().expect("an L2");
    let timeouts = after.timeouts - before.timeouts;
    // One timeout opens the breaker; another may come only from the probe after a cool-off.
    let allowed = 1 + (took.as_secs_f64() / cool_off.as_secs_f64()) as u64;
    println!("50 cold pages with Redis blackholed in {took:?}: {after:?} (before: {before:?})");
    assert!(timeouts >= 1, "the blackhole was noticed: {after:?}");
    assert!(timeouts <= allowed, "{timeouts} timeouts in {took:?}, at most {allowed} allowed: {after:?}");
    assert_eq!(after.errors, before.errors, "silence is timeouts, not errors: {after:?}");
    assert_eq!(after.calls - before.calls, timeouts, "every call that went to Redis was one that timed out");
    assert!(after.skipped - before.skipped >= 50 - allowed, "the rest skipped Redis: {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_replica_misses_its_read_deadline_once_and_reads_move_to_the_primary() {
    let pair = tokio::task::spawn_blocking(PgPair::start).await.expect("start a primary and a replica");
    let proxy = FaultProxy::start(pg_addr(&pair.replica_url())).expect("a proxy in front of the replica");
    let replica = pair.replica_url().replace(&pg_addr(&pair.replica_url()).to_string(), &proxy.addr().to_string());
    let control = TempDb::create().await;
    let mut pg = PgConfig::new(control.url(), vec![ShardUrls { primary: pair.primary_url(), replicas: vec![replica] }]);
    pg.replicas.probe_every = Duration::from_millis(50);
    // Roomy lag bounds, as the API suite's: this test is about slowness, not lag.
    pg.replicas.policy = kirana_storage::postgres::replica::LagPolicy { max_bytes: 64 << 20, max_seconds: 10.0 };
    let deadline = pg.replicas.read_deadline;
    assert_eq!(deadline, Duration::from_millis(250), "the default read deadline");
    let cluster = open(&pg).await.expect("open the PostgreSQL backend");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let probers = cluster.start_probers(stopped);
    let shard = cluster.shards[0].clone();
    let replica_reads = || shard.replica_report()[0].reads;
    let p = Platform::over(cluster.storage.clone(), Box::new(control));
    let shop = p.shop("+919800008002", "Slow Replica Spices").await;
    let pid = id(&p.product(&shop, json!({ "title": "Kashmiri Chilli", "price": 300, "stock": 5 })).await);
    let read = format!("/api/v1/storefront/{}/products/{pid}", shop.slug());

    eventually("the replica is in rotation and serves the product", Duration::from_secs(30), || async {
        let before = replica_reads();
        let res = p.api(Method::GET, &read, None, None).await;
        (res.status == 200 && replica_reads() > before && shard.replica_report()[0].in_rotation).then_some(())
    })
    .await;

    // 300 ms each way: a replica round trip (a read, or a probe) now takes at least 600 ms,
    // past the read deadline and well within the probe's own timeout of a second. Only the
    // deadline rule can keep such a replica out: its probes would otherwise succeed and bring
    // it back every 50 ms, and every read sent to it would pay the deadline again.
    let reads_before_slow = replica_reads();
    proxy.set_latency(Duration::from_millis(300));
    let (mut slowest, mut paid_the_deadline) = (Duration::ZERO, 0);
    let mut reads_after_first = None;
    let started = Instant::now();
    let mut n = 0;
    // A read every 20 ms for two seconds: dozens of probe intervals.
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    while n < 20 || started.elapsed() < Duration::from_secs(2) {
        pace.tick().await;
        let one = Instant::now();
        let res = p.api(Method::GET, &read, None, None).await;
        slowest = slowest.max(one.elapsed());
        paid_the_deadline += usize::from(one.elapsed() >= deadline);
        assert_eq!(res.status, 200, "read {n} with the replica slow: {}", res.body);
        assert_eq!(res.body["title"], "Kashmiri Chilli");
        reads_after_first.get_or_insert_with(replica_reads);
        n += 1;
    }
    let report = shard.replica_report()[0].clone();
    println!(
        "{n} reads with a 300 ms replica: {paid_the_deadline} paid the deadline, slowest {slowest:?}; replica: {report:?}"
    );
    // The first read pays it; a replica let back in by a probe would make later ones pay it
    // too. (One more is tolerated: a primary read slowed by a busy machine.)
    assert!(paid_the_deadline <= 2, "{paid_the_deadline} of {n} reads waited out the replica's deadline");
    assert!(!report.in_rotation, "the slow replica left rotation: {report:?}");
    assert_eq!(replica_reads(), reads_after_first.unwrap(), "after the first miss the replica served nothing");
    // No read waited for the replica: one of its round trips alone is 600 ms.
    assert!(slowest < Duration::from_millis(600), "the slowest read took {slowest:?}");
    eventually("a probe fails for its slowness", Duration::from_secs(10), || async {
        let report = shard.replica_report()[0].clone();
        report.error.as_deref().is_some_and(|e| e.contains("a probe took")).then_some(())
    })
    .await;

    proxy.set_latency(Duration::ZERO);
    eventually("the replica is fast again, back in rotation and serving", Duration::from_secs(30), || async {
        let before = replica_reads();
        let res = p.api(Method::GET, &read, None, None).await;
        (res.status == 200 && replica_reads() > before).then_some(())
    })
    .await;
    assert!(shard.replica_report()[0].in_rotation);

    // The operator sees where reads were answered, and the retry the budget allowed when a read
    // went to the slow replica. (A probe may find it slow first; or the first read may wait out
    // the deadline for a replica connection the probe holds, and go to the primary without
    // having sent anything to the replica: no retry then.)
    let metrics = p.browser().get("/metrics").await.body;
    let line = |needle: &[&str]| {
        metrics.lines().any(|l| l.starts_with("kirana_db_seconds_count{") && needle.iter().all(|n| l.contains(n)))
    };
    assert!(line(&["db=\"s0\"", "role=\"replica\"", "op=\"read\""]), "replica reads timed:\n{metrics}");
    assert!(line(&["db=\"s0\"", "role=\"primary\"", "op=\"read\""]), "primary reads timed");
    let retried = metrics.lines().any(|l| {
        l.starts_with("kirana_retries_total{")
            && l.contains("dependency=\"replica_read\"")
            && l.contains("outcome=\"allowed\"")
            && !l.ends_with(" 0")
    });
    let a_read_met_the_slow_replica = reads_after_first.unwrap() > reads_before_slow;
    assert_eq!(
        retried, a_read_met_the_slow_replica,
        "a read that missed the deadline on the replica was retried, within budget; none otherwise:\n{metrics}"
    );

    stop.send(true).expect("the probers listen");
    for prober in probers {
        prober.await.expect("a prober stops cleanly");
    }
    drop(pair);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_primary_blackholed_pages_serve_checkouts_fail_fast_and_no_acknowledged_order_is_lost_or_doubled() {
    // The shard's primary is a database of the shared server, reached through the proxy: the
    // blackhole cuts this test's connections only. The directory is reached directly.
    let (shard_db, control) = (TempDb::create().await, TempDb::create().await);
    let proxy = FaultProxy::start("127.0.0.1:5432".parse().unwrap()).expect("a proxy in front of PostgreSQL");
    let primary = format!("postgres://postgres@{}/{}", proxy.addr(), shard_db.name);
    let mut pg = PgConfig::new(control.url(), vec![ShardUrls { primary, replicas: vec![] }]);
    pg.pool.acquire_timeout = Duration::from_secs(1);
    pg.pool.connect_timeout = Duration::from_secs(1);
    pg.primary_deadline = Duration::from_millis(1500);
    let cluster = open(&pg).await.expect("open the PostgreSQL backend");
    // Fresh for a moment only, so the outage is served from stale entries; versions trusted
    // for an hour (as in the page cache tests), so a page needs no database read at all.
    let config = ReadCacheConfig {
        ttl: kirana_cache::Ttl::new(Duration::from_millis(200), Duration::from_secs(3600)),
        version_ttl: Duration::from_secs(3600),
        ..ReadCacheConfig::default()
    };
    let (p, _, _) = Platform::over(cluster.storage.clone(), Box::new((control, shard_db))).cached(config, false);
    let p = Arc::new(p);
    let shop = p.shop("+919800008003", "Partitioned Pantry").await;
    const STOCK: i64 = 100;
    const N: usize = 40;
    let product = p.product(&shop, json!({ "title": "Nilgiri Tea", "price": 25000, "stock": STOCK })).await;
    let (pid, variant) = (id(&product), variant(&product));
    let cold = id(&p.product(&shop, json!({ "title": "Never Viewed", "price": 100, "stock": 5 })).await);
    let slug = shop.slug();
    let pages = public_pages(&slug, &pid);
    let b = p.browser();
    for page in &pages {
        assert_eq!(b.get(page).await.status, 200, "{page} warmed");
    }
    let mut carts = Vec::new();
    for _ in 0..N {
        carts.push(cart_holding(&p, &slug, &variant, 1).await);
    }
    let body = checkout_body();
    let checkout = {
        let (p, slug, body) = (p.clone(), slug.clone(), body.clone());
        move |n: usize, cart: String, token: String| {
            let (p, slug, body) = (p.clone(), slug.clone(), body.clone());
            async move {
                let uri = format!("/api/v1/storefront/{slug}/carts/{cart}/checkout");
                let key = format!("faults-checkout-{n}");
                let headers = [("x-cart-token", token.as_str()), ("idempotency-key", key.as_str())];
                call(&p, Method::POST, &uri, &headers, Some(body)).await
            }
        }
    };

    // All N at once; the primary goes silent once the first few have been answered, with the
    // rest queued on the stock row's lock, inside their transactions or waiting for a
    // connection.
    let answered = Arc::new(AtomicUsize::new(0));
    let first_answers = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for (n, (cart, token)) in carts.iter().cloned().enumerate() {
        let (checkout, answered, first_answers) = (checkout.clone(), answered.clone(), first_answers.clone());
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let answer = checkout(n, cart, token).await;
            if answered.fetch_add(1, Ordering::SeqCst) + 1 >= 3 {
                first_answers.notify_one();
            }
            (answer, started.elapsed())
        }));
    }
    first_answers.notified().await;
    proxy.set_blackhole(true);
    let cut_after = answered.load(Ordering::SeqCst);

    // While the primary is silent: the warmed pages answer from the cache, without waiting for
    // it; a page nobody warmed says to come back.
    for page in &pages {
        let started = Instant::now();
        let res = b.get(page).await;
        assert_eq!(res.status, 200, "{page} with the primary blackholed: {}", res.body);
        assert!(started.elapsed() < pg.primary_deadline, "{page} waited for the database: {:?}", started.elapsed());
    }
    let started = Instant::now();
    let res = b.get(&format!("/{slug}/product/{cold}")).await;
    assert_eq!(res.status, 503, "{}", res.body);
    assert!(!res.header("retry-after").is_empty(), "a 503 page says when to retry");
    println!("a cold page with the primary blackholed: 503 in {:?}", started.elapsed());

    let mut acknowledged = HashMap::new();
    let mut to_retry = Vec::new();
    let mut slowest = Duration::ZERO;
    for (n, task) in tasks.into_iter().enumerate() {
        let (answer, took) = task.await.expect("a checkout task");
        slowest = slowest.max(took);
        assert!(took < Duration::from_secs(5), "checkout {n} took {took:?} to answer {}", answer.status);
        match answer.status.as_u16() {
            201 => {
                acknowledged.insert(n, id(&answer.body));
            }
            503 => {
                assert!(answer.retry_after.is_some(), "a 503 says when to retry: {}", answer.body);
                to_retry.push(n);
            }
            other => panic!("checkout {n}: {other} {}", answer.body),
        }
    }
    println!(
        "blackholed after {cut_after} answers: {} acknowledged, {} answered 503, slowest in {slowest:?}",
        acknowledged.len(),
        to_retry.len()
    );
    assert!(!to_retry.is_empty(), "the blackhole came while checkouts were in flight");

    // The primary is back (what it was sent meanwhile arrives now): every 503 is retried with
    // its own key until it is acknowledged.
    proxy.set_blackhole(false);
    let mut replayed = 0;
    for n in to_retry {
        let (cart, token) = carts[n].clone();
        let answer = eventually(&format!("checkout {n} retried"), Duration::from_secs(30), || {
            let attempt = checkout(n, cart.clone(), token.clone());
            async move {
                let answer = attempt.await;
                match answer.status.as_u16() {
                    201 => Some(answer),
                    503 => None,
                    other => panic!("retried checkout {n}: {other} {}", answer.body),
                }
            }
        })
        .await;
        replayed += usize::from(answer.replayed);
        acknowledged.insert(n, id(&answer.body));
    }
    println!("{replayed} retries found the order their first attempt had committed after all");

    let orders = p.api(Method::GET, &shop.at("/orders?limit=100"), Some(&shop.token), None).await.expect(200)["items"]
        .as_array()
        .expect("an items list")
        .clone();
    let ids: HashSet<String> = orders.iter().map(id).collect();
    let numbers: HashSet<i64> = orders.iter().map(|o| o["number"].as_i64().expect("an order number")).collect();
    assert_eq!(orders.len(), N, "one order per checkout");
    assert_eq!(ids.len(), N, "no order twice");
    assert_eq!(numbers.len(), N, "no order number twice");
    assert_eq!(acknowledged.len(), N);
    for (n, order) in &acknowledged {
        assert!(ids.contains(order), "checkout {n}'s acknowledged order {order} is in the store");
    }
    let stock = p.merchant_product(&shop, &pid).await["variants"][0]["stock"].as_i64();
    assert_eq!(stock, Some(STOCK - N as i64), "stock taken once per order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_directory_blackholed_known_stores_keep_serving_and_selling_and_sign_in_fails_fast() {
    // The control database behind the proxy; the shard reached directly.
    let (shard_db, control) = (TempDb::create().await, TempDb::create().await);
    let proxy = FaultProxy::start("127.0.0.1:5432".parse().unwrap()).expect("a proxy in front of PostgreSQL");
    let directory = format!("postgres://postgres@{}/{}", proxy.addr(), control.name);
    let mut pg = PgConfig::new(directory, vec![ShardUrls { primary: shard_db.url(), replicas: vec![] }]);
    pg.pool.acquire_timeout = Duration::from_secs(1);
    pg.pool.connect_timeout = Duration::from_secs(1);
    let deadline = Duration::from_millis(1000);
    pg.primary_deadline = deadline;
    let cluster = open(&pg).await.expect("open the PostgreSQL backend");
    let (p, _, _) = Platform::over(cluster.storage.clone(), Box::new((control, shard_db)))
        .cached(ReadCacheConfig::default(), false);
    let shop = p.shop("+919800008004", "Directoryless Dhaba").await;
    let product = p.product(&shop, json!({ "title": "Masala Chai", "price": 2000, "stock": 50 })).await;
    let (pid, variant) = (id(&product), variant(&product));
    let slug = shop.slug();
    let pages = public_pages(&slug, &pid);
    let b = p.browser();
    for page in &pages {
        assert_eq!(b.get(page).await.status, 200, "{page} warmed");
    }

    proxy.set_blackhole(true);
    // Pages for a few seconds: every one answers, and the directory's silence is paid rarely
    // (the store's entry is remembered and the last answer kept), not once per request.
    let (started, mut n, mut waited) = (Instant::now(), 0, 0);
    while started.elapsed() < Duration::from_secs(3) {
        for page in &pages {
            let one = Instant::now();
            let res = b.get(page).await;
            assert_eq!(res.status, 200, "{page} with the directory silent: {}", res.body);
            waited += usize::from(one.elapsed() >= deadline);
            n += 1;
        }
    }
    assert!(waited <= 3, "{waited} of {n} page requests waited out the directory's deadline");

    // A shopper of a store already seen can still buy: cart, item, checkout.
    let (cart_id, token) = cart_holding(&p, &slug, &variant, 2).await;
    let uri = format!("/api/v1/storefront/{slug}/carts/{cart_id}/checkout");
    let headers = [("x-cart-token", token.as_str()), ("idempotency-key", "dir-down-1")];
    let order = call(&p, Method::POST, &uri, &headers, Some(checkout_body())).await;
    assert_eq!(order.status, 201, "checkout with the directory silent: {}", order.body);

    // What needs the directory fails within its deadline, as a 503 to retry, never a 404 or a hang.
    for (what, method, uri, body) in [
        ("sign-in", Method::POST, "/api/v1/auth/otp".to_string(), Some(json!({ "phone": "+919800008005" }))),
        ("an unknown store", Method::GET, "/api/v1/storefront/never-seen-store/products".to_string(), None),
    ] {
        let one = Instant::now();
        let res = call(&p, method, &uri, &[], body).await;
        assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE, "{what}: {}", res.body);
        assert!(res.retry_after.is_some(), "{what}: a Retry-After");
        assert!(one.elapsed() < deadline * 3, "{what} took {:?}", one.elapsed());
    }

    proxy.heal();
    eventually("sign-in works again", Duration::from_secs(30), || async {
        let res = call(&p, Method::POST, "/api/v1/auth/otp", &[], Some(json!({ "phone": "+919800008006" }))).await;
        (res.status == StatusCode::ACCEPTED).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_shards_primary_stopped_its_replica_serves_reads_writes_answer_503_and_the_node_stays_ready() {
    // Shard 0: a primary with a streaming replica of the test's own, whose primary is stopped.
    // Shard 1: a database of the shared server, untouched.
    let pair = tokio::task::spawn_blocking(PgPair::start).await.expect("start a primary and a replica");
    let (control, other) = (TempDb::create().await, TempDb::create().await);
    let mut pg = PgConfig::new(
        control.url(),
        vec![
            ShardUrls { primary: pair.primary_url(), replicas: vec![pair.replica_url()] },
            ShardUrls { primary: other.url(), replicas: vec![] },
        ],
    );
    pg.replicas.probe_every = Duration::from_millis(50);
    pg.replicas.policy = kirana_storage::postgres::replica::LagPolicy { max_bytes: 64 << 20, max_seconds: 10.0 };
    pg.pool.acquire_timeout = Duration::from_secs(1);
    pg.pool.connect_timeout = Duration::from_secs(1);
    let cluster = open(&pg).await.expect("open the PostgreSQL backend");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let probers = cluster.start_probers(stopped);
    let replica = cluster.shards[0].clone();
    let p = Platform::over(cluster.storage.clone(), Box::new((control, other)));
    // A store on each shard (new stores go to the emptier one).
    let mut shops: HashMap<u32, (Shop, String)> = HashMap::new();
    for i in 0..6 {
        let shop = p.shop(&format!("+9198000081{i:02}"), &format!("Split Spices {i}")).await;
        let scope = p.scope(&shop.slug()).await;
        // Placement counts are cached for a few seconds: forget them, so the next store goes to
        // the emptier shard.
        cluster.storage.forget(scope.store_id());
        let shard = scope.shard().0;
        let pid = id(&p.product(&shop, json!({ "title": format!("Haldi {i}"), "price": 300, "stock": 5 })).await);
        shops.entry(shard).or_insert((shop, pid));
    }
    let (on_zero, pid_zero) = shops.remove(&0).expect("a store on shard 0");
    let (on_one, pid_one) = shops.remove(&1).expect("a store on shard 1");
    let read = |shop: &Shop, pid: &str| format!("/api/v1/storefront/{}/products/{pid}", shop.slug());
    eventually("shard 0's replica has the product and is in rotation", Duration::from_secs(30), || async {
        (replica.replica_report()[0].in_rotation
            && call(&p, Method::GET, &read(&on_zero, &pid_zero), &[], None).await.status == 200)
            .then_some(())
    })
    .await;
    let ready = call(&p, Method::GET, "/readyz", &[], None).await;
    assert_eq!((ready.status, ready.body["status"].as_str()), (StatusCode::OK, Some("ready")), "{}", ready.body);

    let pair = Arc::new(pair);
    let stopping = pair.clone();
    tokio::task::spawn_blocking(move || stopping.stop_primary()).await.expect("stop the primary");
    eventually("the replica serves reads on its own", Duration::from_secs(30), || async {
        replica.replica_report()[0].serving_without_primary.then_some(())
    })
    .await;
    let report = replica.replica_report()[0].clone();
    assert!(report.error.is_none(), "the replica is judged on its own, not by the primary's error: {report:?}");
    let before = report.reads;
    let got = call(&p, Method::GET, &read(&on_zero, &pid_zero), &[], None).await;
    assert_eq!(got.status, 200, "a catalog read of the shard whose primary is down: {}", got.body);
    assert!(got.body["title"].as_str().is_some_and(|t| t.starts_with("Haldi")), "{}", got.body);
    assert!(replica.replica_report()[0].reads > before, "served by the replica");
    let page = p.browser().get(&format!("/{}/product/{pid_zero}", on_zero.slug())).await;
    assert_eq!(page.status.as_u16(), 200, "the product page too");

    // Writes to shard 0 answer 503 with Retry-After, fast; shard 1 writes and reads as ever.
    let started = Instant::now();
    let cart =
        call(&p, Method::POST, &format!("/api/v1/storefront/{}/carts", on_zero.slug()), &[], Some(json!({}))).await;
    assert_eq!(cart.status, StatusCode::SERVICE_UNAVAILABLE, "{}", cart.body);
    assert!(cart.retry_after.is_some(), "a 503 says when to come back");
    assert!(started.elapsed() < Duration::from_secs(5), "refused within the pool's bounds: {:?}", started.elapsed());
    let cart =
        call(&p, Method::POST, &format!("/api/v1/storefront/{}/carts", on_one.slug()), &[], Some(json!({}))).await;
    assert_eq!(cart.status, StatusCode::CREATED, "{}", cart.body);
    assert_eq!(call(&p, Method::GET, &read(&on_one, &pid_one), &[], None).await.status, 200);

    // The node stays ready: a balancer must not pull it (and every other node with it) for one
    // shard's primary; the body says which shard is read-only and why.
    let ready = call(&p, Method::GET, "/readyz", &[], None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    assert_eq!(ready.body["status"], "degraded");
    assert_eq!(ready.body["shards"][0]["shard"], 0);
    assert_eq!(ready.body["shards"][0]["state"], "read_only");
    assert_eq!(ready.body["shards"].as_array().map(Vec::len), Some(1), "{}", ready.body);

    stop.send(true).expect("the probers listen");
    for prober in probers {
        prober.await.expect("a prober stops cleanly");
    }
    drop(pair);
}
