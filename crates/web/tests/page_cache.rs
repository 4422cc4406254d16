//! The read cache in front of the storefront, end to end through the router: what a hit costs
//! (no query), how an edit reaches the next read (through the events), one render for a
//! stampede, the queries behind every page bounded whatever the store's size, and serving on
//! with Redis or the database down.

mod support;

use std::time::Duration;

use kirana_cache::testing::OwnRedis;
use kirana_server::read_cache::{ReadCache, ReadCacheConfig};
use kirana_storage::query_count::statements;
use serde_json::json;
use support::*;

/// Versions trusted for an hour: a change can then reach a page only through the invalidation
/// consumer's word to this node, which is what the tests below are about.
fn config() -> ReadCacheConfig {
    ReadCacheConfig { version_ttl: Duration::from_secs(3600), ..ReadCacheConfig::default() }
}

/// Polls `probe` until it answers, for at most ten seconds.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_cached_page_is_served_with_validators_and_an_edit_reaches_the_next_reads_through_the_events() {
    let (p, _cache, pipeline) = Platform::new().await.cached(config(), true);
    let shop = p.shop("+919800007001", "Cached Chai").await;
    let product = p.product(&shop, json!({ "title": "Masala Chai", "price": 24900, "stock": 5 })).await;
    let (slug, pid) = (shop.slug(), id(&product));
    let page = format!("/{slug}/product/{pid}");
    let api = format!("/api/v1/storefront/{slug}/products/{pid}");
    let b = p.browser();
    // The store's creation and its product's have bumped its version.
    let scope = p.scope(&slug).await;
    eventually("the pipeline has applied the setup", || {
        let (storage, scope) = (p.storage.clone(), scope.clone());
        async move {
            let events = storage.shard(&scope).events(&scope, 0, 1000).await.unwrap();
            let pages = events.iter().filter(|(_, e)| kirana_events::consumers::changes_pages(e)).count() as i64;
            (storage.shard(&scope).cache_version(&scope).await.unwrap() == pages).then_some(())
        }
    })
    .await;

    let first = b.get(&page).await;
    assert_eq!(first.header("x-kirana-cache"), "miss");
    assert!(first.html().contains("Masala Chai"));
    let again = b.get(&page).await;
    assert_eq!(again.header("x-kirana-cache"), "hit");
    assert_eq!(again.body, first.body, "a hit is the same bytes");
    let etag = again.header("etag");
    assert!(etag.starts_with('"') && etag.ends_with('"'), "a strong ETag: {etag:?}");
    assert!(again.header("cache-control").contains("s-maxage"), "{:?}", again.header("cache-control"));
    assert!(again.header("vary").is_empty(), "nothing varies a public page");
    assert!(again.set_cookie_names().is_empty());
    // An edge hit still joins the caller's trace and says so.
    let traced = b.get_with(&page, &[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]).await;
    assert_eq!(traced.header("x-kirana-cache"), "hit");
    assert!(
        traced.header("traceparent").starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{:?}",
        traced.header("traceparent")
    );
    assert!(!traced.header("x-request-id").is_empty());

    // A browser's revalidation is a 304 without a body; a campaign link is the same page.
    let revalidated = b.get_with(&page, &[("if-none-match", &etag)]).await;
    assert_eq!(revalidated.status.as_u16(), 304);
    assert!(revalidated.body.is_empty());
    assert_eq!(revalidated.header("etag"), etag);
    assert_eq!(b.get(&format!("{page}?utm_source=whatsapp&fbclid=x")).await.header("x-kirana-cache"), "hit");
    // The JSON API's public read is cached the same way.
    assert_eq!(b.get(&api).await.header("x-kirana-cache"), "miss");
    assert_eq!(b.get(&api).await.header("x-kirana-cache"), "hit");

    // The merchant renames the product. Only the invalidation consumer can make this node read
    // the store's version again (it is trusted for an hour here): the next reads after it ran
    // show the new title, and revalidation with the old tag now gets the new page.
    let patch = p
        .api(
            axum::http::Method::PATCH,
            &shop.at(&format!("/products/{pid}")),
            Some(&shop.token),
            Some(json!({ "title": "Kadak Chai" })),
        )
        .await;
    patch.expect(200);
    let fresh = eventually("the renamed product on the cached page", || {
        let (b, page) = (b.clone(), page.clone());
        async move {
            let res = b.get(&page).await;
            res.html().contains("Kadak Chai").then_some(res)
        }
    })
    .await;
    assert_eq!(fresh.header("x-kirana-cache"), "miss", "a new version is a new key");
    assert!(!fresh.html().contains("Masala Chai"));
    assert_ne!(fresh.header("etag"), etag);
    assert_eq!(b.get_with(&page, &[("if-none-match", &etag)]).await.status.as_u16(), 200);
    let json = b.get(&api).await;
    assert!(json.body.contains("Kadak Chai"), "the API read moved on with the same version: {}", json.body);

    pipeline.expect("a pipeline").stop().await;
}

#[tokio::test]
async fn a_caller_with_its_write_token_never_gets_a_cached_copy_older_than_its_write() {
    // No pipeline: the store's version is never bumped, so the cache would keep its copies for
    // the hour it trusts versions. Only the caller's token can get it its own edit.
    let (p, _cache, _) = Platform::new().await.cached(config(), false);
    let shop = p.shop("+919800007009", "Token Tea").await;
    let product = p.product(&shop, json!({ "title": "Masala Chai", "price": 24900, "stock": 5 })).await;
    let (slug, pid) = (shop.slug(), id(&product));
    let page = format!("/{slug}/product/{pid}");
    let api = format!("/api/v1/storefront/{slug}/products/{pid}");
    let b = p.browser();
    for uri in [&page, &api] {
        assert_eq!(b.get(uri).await.header("x-kirana-cache"), "miss");
        assert_eq!(b.get(uri).await.header("x-kirana-cache"), "hit");
    }

    let patch = p
        .api(
            axum::http::Method::PATCH,
            &shop.at(&format!("/products/{pid}")),
            Some(&shop.token),
            Some(json!({ "title": "Kadak Chai" })),
        )
        .await;
    let token = patch.headers.get("x-kirana-write-token").expect("a write answers with its token").to_str().unwrap();
    let token = token.to_string();
    assert_eq!(patch.status.as_u16(), 200);

    // With the token (the API's header, or the pages' cookie), the caller reads its edit on the
    // first try, from the edge's fast path as from the cache's long way.
    for _ in 0..2 {
        let read = b.get_with(&api, &[("x-kirana-write-token", &token)]).await;
        assert!(read.body.contains("Kadak Chai"), "{}", read.body);
        assert_eq!(read.header("x-kirana-cache"), "bypass");
        let read = b.get_with(&page, &[("cookie", &format!("kirana_wt={token}"))]).await;
        assert!(read.html().contains("Kadak Chai"));
        assert_eq!(read.header("x-kirana-cache"), "bypass");
    }
    // Everyone else still gets the cached copy until the version moves (not this test's subject).
    assert_eq!(b.get(&page).await.header("x-kirana-cache"), "hit");

    // A cart is nothing a page shows: creating one earns no token, so a shopper's browsing after
    // adding to cart stays on the cache.
    let cart =
        p.api(axum::http::Method::POST, &format!("/api/v1/storefront/{slug}/carts"), None, Some(json!({}))).await;
    assert_eq!(cart.status.as_u16(), 201, "{}", cart.body);
    assert!(cart.headers.get("x-kirana-write-token").is_none(), "{:?}", cart.headers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_page_hit_by_500_concurrent_requests_is_rendered_once() {
    let (p, cache, _) = Platform::new().await.cached(config(), false);
    let shop = p.shop("+919800007002", "Stampede Store").await;
    let one = id(&p.product(&shop, json!({ "title": "Warm-up Tea", "price": 100, "stock": 5 })).await);
    let two = id(&p.product(&shop, json!({ "title": "Diwali Sweets", "price": 100, "stock": 5 })).await);
    let slug = shop.slug();
    let b = p.browser();
    // The store's scope and version are known to the node now; what a cold product page
    // costs, rendered once:
    assert_eq!(b.get(&format!("/{slug}")).await.header("x-kirana-cache"), "miss");
    let before = statements();
    assert_eq!(b.get(&format!("/{slug}/product/{one}")).await.header("x-kirana-cache"), "miss");
    let one_render = statements() - before;
    assert!(one_render > 0, "statements are counted (the query-count feature is on)");

    let page = format!("/{slug}/product/{two}");
    let before = statements();
    let requests: Vec<_> = (0..500)
        .map(|_| {
            let (b, page) = (b.clone(), page.clone());
            tokio::spawn(async move { b.get(&page).await })
        })
        .collect();
    let mut bodies = std::collections::HashSet::new();
    for r in requests {
        let res = r.await.expect("a request task");
        assert_eq!(res.status.as_u16(), 200);
        bodies.insert(res.body);
    }
    let stampede = statements() - before;
    assert_eq!(bodies.len(), 1, "everyone got the same page");
    assert!(bodies.iter().next().is_some_and(|b| b.contains("Diwali Sweets")));
    assert_eq!(stampede, one_render, "500 concurrent cold requests cost what one render costs");
    let (entries, _) = cache.cache().l1_usage();
    assert!(entries >= 3, "home, two product pages: {entries}");
}

#[tokio::test]
async fn every_storefront_page_costs_the_same_queries_for_a_small_store_and_a_big_one() {
    let p = Platform::new().await;
    let shop = p.shop("+919800007003", "Growing Store").await;
    let category = id(&p.category(&shop, "Tea").await);
    let product =
        |n: usize| json!({ "title": format!("Assam Tea {n}"), "price": 100 + n, "stock": 5, "category_id": category });
    let first = id(&p.product(&shop, product(0)).await);
    for n in 1..3 {
        p.product(&shop, product(n)).await;
    }
    let slug = shop.slug();
    let b = p.browser();
    add_to_cart_from(&b, &slug, &first).await;
    let pages = [
        format!("/{slug}"),
        format!("/{slug}/category/{category}"),
        format!("/{slug}/product/{first}"),
        format!("/{slug}/search?q=assam"),
        format!("/{slug}/cart"),
        format!("/{slug}/checkout"),
        format!("/api/v1/storefront/{slug}"),
        format!("/api/v1/storefront/{slug}/products"),
        format!("/api/v1/storefront/{slug}/products?q=assam"),
        format!("/api/v1/storefront/{slug}/products/{first}"),
    ];
    let cost = |b: Browser, pages: Vec<String>| async move {
        let mut costs = Vec::new();
        for page in pages {
            b.get(&page).await; // the directory cache and the like, warmed
            let before = statements();
            let res = b.get(&page).await;
            assert_eq!(res.status.as_u16(), 200, "{page}: {}", res.body);
            costs.push((page, statements() - before));
        }
        costs
    };
    let small = cost(b.clone(), pages.to_vec()).await;

    // Thirty times the products (more than a page of every list), and more categories.
    for n in 3..90 {
        p.product(&shop, product(n)).await;
    }
    for n in 0..20 {
        p.category(&shop, &format!("Shelf {n}")).await;
    }
    let big = cost(b, pages.to_vec()).await;
    for ((page, s), (_, g)) in small.iter().zip(&big) {
        println!("{page}: {s} statements with 3 products, {g} with 90");
        assert!(*s <= 12, "{page}: {s} statements for one page");
        assert_eq!(g, s, "{page}: the queries grew with the store");
    }
}

/// Adds one unit of the product to `b`'s cart through the product page's form.
async fn add_to_cart_from(b: &Browser, slug: &str, product_id: &str) {
    let page = b.get(&format!("/{slug}/product/{product_id}")).await;
    let fields = [("mode", page.field("mode")), ("variant_id", page.field("variant_id")), ("quantity", "1".into())];
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(b.post(&format!("/{slug}/cart"), &fields).await.redirect(), format!("/{slug}/cart"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_pages_through_redis_and_serve_on_when_redis_stops() {
    let mut redis = tokio::task::spawn_blocking(OwnRedis::start).await.expect("start a redis-server of our own");
    let with_redis = ReadCacheConfig {
        cache: kirana_cache::Config { redis_url: Some(redis.url()), ..Default::default() },
        ..config()
    };
    let (p, _, _) = Platform::new().await.cached(with_redis.clone(), false);
    let other_cache = ReadCache::new(with_redis).expect("a second node's cache");
    let other = Browser::new(p.node(&other_cache), PLATFORM_HOST);
    let shop = p.shop("+919800007004", "Shared Store").await;
    let one = id(&p.product(&shop, json!({ "title": "Filter Coffee", "price": 100, "stock": 5 })).await);
    let two = id(&p.product(&shop, json!({ "title": "Jaggery", "price": 100, "stock": 5 })).await);
    let slug = shop.slug();
    let (page_one, page_two) = (format!("/{slug}/product/{one}"), format!("/{slug}/product/{two}"));
    let here = p.browser();

    let rendered = here.get(&page_one).await;
    assert_eq!(rendered.header("x-kirana-cache"), "miss");
    let shared = other.get(&page_one).await;
    assert_eq!(shared.header("x-kirana-cache"), "hit-shared", "the other node took it from Redis");
    assert_eq!(shared.body, rendered.body);
    assert_eq!(shared.header("etag"), rendered.header("etag"), "every node tags the same bytes alike");

    redis.stop();
    assert_eq!(here.get(&page_one).await.header("x-kirana-cache"), "hit", "memory serves on");
    let cold = other.get(&page_two).await;
    assert_eq!(cold.status.as_u16(), 200, "a page no node has is rendered from the database");
    assert!(cold.html().contains("Jaggery"));
    assert_eq!(other.get(&page_two).await.header("x-kirana-cache"), "hit");
    let l2 = other_cache.cache().l2_stats().expect("an L2");
    assert!(l2.errors + l2.timeouts + l2.skipped > 0, "Redis was asked and failed, or skipped: {l2:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_shards_database_stopped_cached_pages_serve_and_checkout_answers_503_with_retry_after() {
    use kirana_storage::postgres::cluster::{PgConfig, ShardUrls, open};
    use kirana_storage::postgres::testing::{PgPair, TempDb};
    let pair = tokio::task::spawn_blocking(PgPair::start).await.expect("start a primary and a replica");
    let control = TempDb::create().await;
    let urls = vec![ShardUrls { primary: pair.primary_url(), replicas: vec![pair.replica_url()] }];
    let mut pg = PgConfig::new(control.url(), urls);
    pg.pool.acquire_timeout = Duration::from_secs(2);
    let cluster = open(&pg).await.expect("open the PostgreSQL backend");
    // Fresh for a moment only, so the outage below is served from stale entries.
    let short = ReadCacheConfig {
        ttl: kirana_cache::Ttl::new(Duration::from_millis(200), Duration::from_secs(3600)),
        ..config()
    };
    let (p, _, _) = Platform::over(cluster.storage.clone(), Box::new(control)).cached(short, false);
    let shop = p.shop("+919800007005", "Outage Store").await;
    let one = id(&p.product(&shop, json!({ "title": "Cardamom", "price": 100, "stock": 5 })).await);
    let two = id(&p.product(&shop, json!({ "title": "Saffron", "price": 900, "stock": 5 })).await);
    let slug = shop.slug();
    let (home, page, api) =
        (format!("/{slug}"), format!("/{slug}/product/{one}"), format!("/api/v1/storefront/{slug}/products/{one}"));
    let shopper = p.browser();
    add_to_cart_from(&shopper, &slug, &one).await;
    let form = shopper.get(&format!("/{slug}/checkout")).await;
    let (csrf, key) = (form.csrf(), form.field("key"));
    let mut before = Vec::new();
    for url in [&home, &page, &api] {
        let res = shopper.get(url).await;
        assert_eq!(res.status.as_u16(), 200, "{url}: {}", res.body);
        before.push(res);
    }

    let _pair = tokio::task::spawn_blocking(move || {
        pair.stop_replica();
        pair.stop_primary();
        pair
    })
    .await
    .expect("stop the shard's servers");

    for (url, was) in [&home, &page, &api].into_iter().zip(&before) {
        let stale = eventually(&format!("{url} served stale while the database is down"), || {
            let (b, url) = (shopper.clone(), url.to_string());
            async move {
                let res = b.get(&url).await;
                assert_eq!(res.status.as_u16(), 200, "{url} with the database down: {}", res.body);
                (res.header("x-kirana-cache") == "stale").then_some(res)
            }
        })
        .await;
        assert_eq!(stale.body, was.body, "{url}: the last good copy");
    }
    // A page nobody loaded before cannot be served; it says to come back.
    let cold = shopper.get(&format!("/{slug}/product/{two}")).await;
    assert_eq!(cold.status.as_u16(), 503, "{}", cold.body);
    assert!(!cold.header("retry-after").is_empty(), "a 503 page says when to retry");
    // Buying needs the database: the checkout answers 503 with Retry-After, on the page and
    // through the API.
    let mut fields = vec![("_csrf", csrf.as_str()), ("key", key.as_str())];
    fields.extend([("name", "Asha"), ("phone", "+919812345678"), ("line1", "12 MG Road"), ("city", "Pune")]);
    fields.extend([("postal_code", "411001"), ("payment_method", "cod")]);
    let checkout = shopper.post(&format!("/{slug}/checkout"), &fields).await;
    assert_eq!(checkout.status.as_u16(), 503, "{}", checkout.body);
    assert!(!checkout.header("retry-after").is_empty());
    let cart =
        p.api(axum::http::Method::POST, &format!("/api/v1/storefront/{slug}/carts"), None, Some(json!({}))).await;
    assert_eq!(cart.status.as_u16(), 503, "{}", cart.body);
}

#[tokio::test]
async fn an_order_leaves_cached_pages_alone_unless_it_sells_the_last_unit() {
    let (p, _cache, pipeline) = Platform::new().await.cached(config(), true);
    let shop = p.shop("+919800007006", "Last Unit Store").await;
    let pid = id(&p.product(&shop, json!({ "title": "Rare Honey", "price": 50000, "stock": 2 })).await);
    let slug = shop.slug();
    let page = format!("/{slug}/product/{pid}");
    let b = p.browser();
    let scope = p.scope(&slug).await;
    let version = || {
        let (storage, scope) = (p.storage.clone(), scope.clone());
        async move { storage.shard(&scope).cache_version(&scope).await.unwrap() }
    };
    let settled = || async {
        eventually("the pipeline has applied every page-changing event", || async {
            let events = p.storage.shard(&scope).events(&scope, 0, 1000).await.unwrap();
            let pages = events.iter().filter(|(_, e)| kirana_events::consumers::changes_pages(e)).count() as i64;
            (version().await == pages).then_some(())
        })
        .await
    };
    settled().await;
    assert!(b.get(&page).await.html().contains("Add to cart"));
    let buy = |phone: &'static str| {
        let (b, slug, pid) = (p.browser(), slug.clone(), pid.clone());
        async move {
            add_to_cart_from(&b, &slug, &pid).await;
            let form = b.get(&format!("/{slug}/checkout")).await;
            let (csrf, key) = (form.csrf(), form.field("key"));
            let mut fields = vec![("_csrf", csrf.as_str()), ("key", key.as_str()), ("phone", phone)];
            fields.extend([("name", "Asha"), ("line1", "12 MG Road"), ("city", "Pune"), ("postal_code", "411001")]);
            fields.push(("payment_method", "cod"));
            let placed = b.post(&format!("/{slug}/checkout"), &fields).await;
            assert_eq!(placed.status.as_u16(), 303, "{}", placed.body);
        }
    };

    // One of two sold: the page would look the same, and its cached copy stays.
    let before = version().await;
    buy("+919812345001").await;
    settled().await;
    assert_eq!(version().await, before, "an order that flips nothing changes no page");
    assert_eq!(b.get(&page).await.header("x-kirana-cache"), "hit");

    // The last one: the variant sold out, and the next reads say so.
    buy("+919812345002").await;
    let sold_out = eventually("the cached page shows the product sold out", || {
        let (b, page) = (b.clone(), page.clone());
        async move {
            let res = b.get(&page).await;
            res.html().contains("Sold out").then_some(res)
        }
    })
    .await;
    assert_eq!(sold_out.header("x-kirana-cache"), "miss");
    assert_eq!(version().await, before + 1, "one bump, for the sell-out");
    pipeline.expect("a pipeline").stop().await;
}
