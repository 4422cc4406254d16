//! `kirana bench` end to end at a small size: a real kirana server on 127.0.0.1:0, a dataset
//! built through its HTTP API exactly as merchants would, a manifest like `kirana seed` writes,
//! then an open-loop run and a closed-loop run with the flash sale. Every request type must be
//! exercised with zero errors, and the flash sale must never sell more than its stock. Then the
//! flash sale during browsing, against a server whose per-store rate limit the buyers must meet:
//! exactly its stock sold (counted on the server), every 429 waited out, both windows measured.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use clap::Parser;
use kirana_domain::SystemClock;
use kirana_loadgen::manifest::{FlashSale, Manifest, MerchantKey};
use kirana_loadgen::{BenchArgs, Report};
use kirana_server::auth::MemoryNotifier;
use kirana_server::{AppState, ServerConfig};
use kirana_storage::sqlite::{SqliteOptions, Synchronous};
use serde_json::{Value, json};

const STORES: u64 = 20;
const FLASH_STOCK: i64 = 25;
const FLASH_SHOPPERS: u64 = 60;

struct Server {
    base: String,
    notifier: Arc<MemoryNotifier>,
    _dir: tempfile::TempDir,
}

/// Order-status reads the server saw, and how many carried a write token.
static ORDER_READS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static ORDER_READS_WITH_TOKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn count_order_reads(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let path = req.uri().path();
    if req.method() == axum::http::Method::GET && path.starts_with("/api/v1/storefront/") && path.contains("/orders/") {
        ORDER_READS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if req.headers().contains_key("x-kirana-write-token") {
            ORDER_READS_WITH_TOKEN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    next.run(req).await
}

async fn start_server(config: ServerConfig) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    // Durability is not under test here; NORMAL keeps checkouts fast on a debug build.
    let opts = SqliteOptions { synchronous: Synchronous::Normal, ..SqliteOptions::default() };
    let storage = kirana_storage::sqlite::open(dir.path(), 1, &opts).expect("open storage");
    let notifier = Arc::new(MemoryNotifier::default());
    let state = AppState::new(storage, Arc::new(SystemClock), notifier.clone(), config);
    let app = kirana_server::app(state).layer(axum::middleware::from_fn(count_order_reads));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.expect("serve");
    });
    Server { base: format!("http://{addr}"), notifier, _dir: dir }
}

/// A merchant's client for building the dataset.
struct Merchant<'a> {
    http: reqwest::Client,
    server: &'a Server,
    token: String,
}

impl Merchant<'_> {
    async fn sign_in<'s>(server: &'s Server, phone: &str) -> Merchant<'s> {
        let http = reqwest::Client::new();
        let res = http
            .post(format!("{}/api/v1/auth/otp", server.base))
            .json(&json!({ "phone": phone }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
        let normalized = kirana_domain::Phone::parse(phone).unwrap();
        let code = server.notifier.last_code(normalized.as_str()).expect("a code was sent");
        let res = http
            .post(format!("{}/api/v1/auth/verify", server.base))
            .json(&json!({ "phone": phone, "code": code }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        Merchant { http, server, token: body["token"].as_str().unwrap().to_string() }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let res = self
            .http
            .post(format!("{}/api/v1{path}", self.server.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        assert_eq!(status, 201, "POST {path}: {body}");
        body
    }
}

fn id(v: &Value) -> String {
    v["id"].as_str().expect("an id").to_string()
}

/// Twenty stores `seed-0` … `seed-19`, each with two categories of three products (one with
/// size variants) and ample stock; a flash product with `flash_stock` units in store 0.
async fn build_dataset(server: &Server, dir: &Path, flash_stock: i64) -> (Manifest, String) {
    let merchant = Merchant::sign_in(server, "+919876543210").await;
    let terms = ["chai", "rice", "soap", "kurta"];
    let mut merchants = Vec::new();
    let mut flash = None;
    for i in 0..STORES {
        let store =
            merchant.post("/stores", json!({ "name": format!("Seed Store {i}"), "slug": format!("seed-{i}") })).await;
        assert_eq!(store["slug"], format!("seed-{i}"));
        let sid = id(&store);
        for (c, name) in ["Grocery", "Clothing"].iter().enumerate() {
            let cat = id(&merchant.post(&format!("/stores/{sid}/categories"), json!({ "name": name })).await);
            for p in 0..3 {
                let term = terms[(c * 3 + p) % terms.len()];
                let body = if p == 2 {
                    json!({
                        "title": format!("{term} kurta {p}"), "category_id": cat, "options": ["Size"],
                        "variants": [
                            { "options": ["M"], "price": 59_900, "stock": 100_000 },
                            { "options": ["L"], "price": 64_900, "stock": 100_000 },
                        ],
                    })
                } else {
                    json!({ "title": format!("{term} pack {p}"), "category_id": cat, "price": 4_900 + p as i64 * 1000, "stock": 100_000 })
                };
                merchant.post(&format!("/stores/{sid}/products"), body).await;
            }
        }
        if i == 0 {
            let p = merchant
                .post(
                    &format!("/stores/{sid}/products"),
                    json!({ "title": "Flash Sale Deal", "price": 99_900, "stock": flash_stock }),
                )
                .await;
            flash = Some(FlashSale {
                store_index: 0,
                product_id: id(&p),
                variant_id: p["variants"][0]["id"].as_str().unwrap().to_string(),
                stock: flash_stock,
            });
        }
        if i < 5 {
            merchants.push(MerchantKey { store_index: i, store_id: sid, token: merchant.token.clone() });
        }
    }
    let manifest = Manifest {
        version: 1,
        stores: STORES,
        slug_prefix: "seed-".into(),
        search_terms: terms.iter().map(|t| t.to_string()).collect(),
        merchants,
        flash_sale: flash,
    };
    std::fs::write(dir.join("seed-manifest.json"), serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    (manifest, merchant.token)
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn args(server: &Server, dir: &Path, extra: &[&str]) -> BenchArgs {
    let manifest = dir.join("seed-manifest.json");
    let mut argv = vec![
        "bench".to_string(),
        "--target".into(),
        server.base.clone(),
        "--manifest".into(),
        manifest.display().to_string(),
        "--warmup".into(),
        "300ms".into(),
        "--duration".into(),
        "2s".into(),
        "--timeout".into(),
        "5s".into(),
        "--quiet".into(),
        // Richer than the defaults so that two seconds reach every request type.
        "--merchant-ratio".into(),
        "0.15".into(),
        "--search-ratio".into(),
        "0.5".into(),
        "--cart-ratio".into(),
        "0.5".into(),
        "--checkout-ratio".into(),
        "0.8".into(),
        "--seed".into(),
        "7".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    Cli::parse_from(argv).bench
}

#[track_caller]
fn assert_every_main_type_ran_cleanly(report: &Report) {
    for name in [
        "home",
        "category",
        "product",
        "search",
        "cart_create",
        "cart_add",
        "checkout",
        "order_status",
        "dashboard_orders",
        "dashboard_products",
    ] {
        let s = report.requests.get(name).unwrap_or_else(|| panic!("no {name} in the report"));
        assert!(s.count > 0, "{name} never ran:\n{report}");
        assert_eq!(s.errors, 0, "{name} had errors: {:?}", report.errors);
        assert!(s.latency_us.p50 > 0 && s.latency_us.max >= s.latency_us.p99, "{name}: {:?}", s.latency_us);
    }
    assert_eq!(report.totals.errors, 0, "{:?}", report.errors);
    assert_eq!(report.totals.warmup_errors, 0, "{:?}", report.errors);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let by_type: u64 = report.in_session_order().filter(|(n, _)| !n.starts_with("flash")).map(|(_, s)| s.count).sum();
    assert_eq!(report.totals.requests, by_type);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_bench_exercises_every_request_type_without_errors_and_the_flash_sale_never_oversells() {
    let server = start_server(ServerConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    build_dataset(&server, dir.path(), FLASH_STOCK).await;

    // Open loop, with server CPU measured (the server is this process; enough to exercise it).
    let json_path = dir.path().join("open.json");
    let pid = std::process::id().to_string();
    let open = kirana_loadgen::bench(args(
        &server,
        dir.path(),
        &["--rate", "40", "--json", json_path.to_str().unwrap(), "--server-pid", &pid],
    ))
    .await
    .expect("the open-loop bench runs");
    assert_every_main_type_ran_cleanly(&open);
    // Each shopper reads its order back with the token its checkout earned: on a fleet, the
    // read may land on another node or a replica, and must still find the order.
    let reads = ORDER_READS.load(std::sync::atomic::Ordering::SeqCst);
    assert!(reads > 0, "order status was read");
    assert_eq!(ORDER_READS_WITH_TOKEN.load(std::sync::atomic::Ordering::SeqCst), reads, "every one with its token");
    assert_eq!(open.config.mode, "open");
    // 40 sessions/s over a 2 s window: exactly 80 start in it, whatever the server does.
    assert_eq!(open.totals.sessions, 80);
    assert_eq!(open.totals.target_sessions_per_sec, Some(40.0));
    assert!((open.totals.sessions_per_sec - 40.0).abs() < 1e-9);
    assert!(open.flash_sale.is_none() && !open.requests.contains_key("flash_checkout"));
    let server_usage = open.server.as_ref().expect("server usage with --server-pid");
    assert!(server_usage.rss_bytes.unwrap() > 0);
    let back: Report =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).expect("the JSON parses back");
    assert_eq!(back, open);

    // Closed loop with the flash sale, and some shoppers landing on product pages seen before.
    let closed = kirana_loadgen::bench(args(
        &server,
        dir.path(),
        &[
            "--concurrency",
            "4",
            "--landing-ratio",
            "0.3",
            "--flash-sale",
            "--flash-shoppers",
            &FLASH_SHOPPERS.to_string(),
        ],
    ))
    .await
    .expect("the closed-loop bench runs");
    assert_every_main_type_ran_cleanly(&closed);
    assert_eq!((closed.config.mode.as_str(), closed.config.concurrency), ("closed", Some(4)));
    assert!(closed.totals.sessions > 0);

    let flash = closed.flash_sale.as_ref().expect("a flash-sale result");
    assert_eq!(flash.errors, 0, "{:?}", closed.errors);
    assert!(!flash.oversold);
    assert!(flash.orders <= FLASH_STOCK as u64, "oversold: {} orders for {FLASH_STOCK}", flash.orders);
    assert_eq!(flash.orders + flash.sold_out, FLASH_SHOPPERS);
    // Regular shoppers leave the flash item alone, so all of its stock was there to race for.
    assert_eq!(flash.orders, FLASH_STOCK as u64);
    for name in ["flash_cart", "flash_add", "flash_checkout"] {
        let s = &closed.requests[name];
        assert!(s.count > 0 && s.errors == 0, "{name}: {s:?}");
    }
    assert_eq!(closed.requests["flash_cart"].count, FLASH_SHOPPERS);
    assert_eq!(closed.requests["flash_checkout"].ok, FLASH_STOCK as u64);
}

const SALE_STOCK: i64 = 20;
const SALE_BUYERS: u64 = 200;
/// Requests per second (and burst) each store may have: 200 buyers arriving at once meet 429s
/// whatever the machine's speed, and only buyers that wait them out and retry can all finish.
const STORE_RPS: u32 = 150;

/// Orders in store `store_id` and, of them, those holding `variant`, counted through the
/// merchant API here rather than trusted from the bench.
async fn orders_in_store(server: &Server, token: &str, store_id: &str, variant: &str) -> (u64, u64) {
    let http = reqwest::Client::new();
    let (mut all, mut holding) = (0, 0);
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}/api/v1/stores/{store_id}/orders?limit=100", server.base);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let res = http.get(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let page: Value = res.json().await.unwrap();
        for o in page["items"].as_array().unwrap() {
            all += 1;
            holding += u64::from(o["items"].as_array().unwrap().iter().any(|l| l["variant_id"] == variant));
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return (all, holding),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flash_sale_during_browsing_sells_exactly_its_stock_through_the_rate_limit_and_measures_both_windows() {
    let config = ServerConfig { store_rps: STORE_RPS, store_burst: STORE_RPS, ..ServerConfig::default() };
    let server = start_server(config).await;
    let dir = tempfile::tempdir().unwrap();
    let (manifest, token) = build_dataset(&server, dir.path(), SALE_STOCK).await;
    let flash = manifest.flash_sale.clone().unwrap();
    let json_path = dir.path().join("during.json");

    let report = kirana_loadgen::bench(args(
        &server,
        dir.path(),
        &[
            "--rate",
            "20",
            "--flash-during-browse",
            "--flash-shoppers",
            &SALE_BUYERS.to_string(),
            "--flash-give-up",
            "30s",
            "--json",
            json_path.to_str().unwrap(),
        ],
    ))
    .await
    .expect("the bench runs");
    let fb = report.flash_during_browse.as_ref().unwrap_or_else(|| panic!("no flash_during_browse in\n{report}"));
    let v = &fb.flash;

    // The sale, as the server holds it: one order per unit, none left; and the bench agrees.
    assert_eq!(v.verdict, "PASS", "{:?}\n{report}", v.reasons);
    assert_eq!((v.server_orders, v.server_units, v.server_stock_left), (Some(20), Some(20), Some(0)), "{report}");
    assert!(!v.oversold);
    let (all, holding) = orders_in_store(&server, &token, &manifest.merchants[0].store_id, &flash.variant_id).await;
    assert_eq!(manifest.merchants[0].store_index, flash.store_index);
    assert_eq!(
        (all, holding),
        (SALE_STOCK as u64, SALE_STOCK as u64),
        "the flash store has exactly the sale's orders: browsing spared it"
    );

    // Every buyer got an answer: an order or "sold out", none gave up, no error.
    assert_eq!(v.stock_at_start, SALE_STOCK);
    assert_eq!((v.orders, v.sold_out, v.errors, v.gave_up), (20, SALE_BUYERS - 20, 0, 0), "{:?}", report.errors);
    // The store's rate limit was met, and every 429 (and 503) was waited out and retried.
    assert!(v.answers_429 > 0, "200 buyers at once never met a {STORE_RPS}/s limit:\n{report}");
    assert_eq!(v.retries, v.answers_429 + v.answers_503, "a refusal was not retried");
    assert_eq!(report.requests["flash_checkout"].ok, 20);
    assert_eq!(report.requests["flash_cart"].count, SALE_BUYERS, "one sample per buyer's request, retries inside it");
    assert_eq!(report.requests["flash_cart"].errors, 0);
    let brief = report.flash_sale.as_ref().expect("the sale in brief too");
    assert_eq!((brief.orders, brief.stock, brief.oversold), (20, SALE_STOCK, false));

    // Both windows measured the other stores, untouched by the flash store's limit.
    for (name, w) in [("quiet", &fb.quiet), ("contended", &fb.contended)] {
        assert!(w.reads.count > 0 && w.reads.latency_us.p99 > 0, "{name} window has no reads:\n{report}");
        assert_eq!((w.errors, w.limited, w.shed), (0, 0, 0), "{name}: {:?}", report.errors);
        assert!(w.secs > 0.0);
        let by_type: u64 = w.by_type.values().map(|s| s.count).sum();
        assert_eq!(by_type, w.requests);
    }
    assert!((fb.quiet.secs - 2.0).abs() < 1e-6, "the quiet window is --duration long: {}", fb.quiet.secs);
    assert!((fb.contended.starts_at_secs - 2.0).abs() < 1e-6);
    let ratio = fb.p99_ratio.expect("a ratio");
    let expected = fb.contended.reads.latency_us.p99 as f64 / fb.quiet.reads.latency_us.p99 as f64;
    assert!((ratio - expected).abs() < 1e-9);
    assert_eq!(fb.p99_goal_met, ratio <= 2.0);
    // The whole measured span is both windows, and the browsing stopped when the sale ended.
    assert!((report.measured_secs - fb.quiet.secs - fb.contended.secs).abs() < 0.01, "{report}");
    assert!(report.config.flash_during_browse);
    assert_eq!(report.totals.requests, fb.quiet.requests + fb.contended.requests);
    // Second by second, the same reads: none lost, none counted twice.
    assert_eq!(fb.timeline.len(), report.measured_secs.ceil() as usize);
    let by_second: u64 = fb.timeline.iter().map(|t| t.reads).sum();
    assert_eq!(by_second, fb.quiet.reads.count + fb.contended.reads.count);

    let back: Report = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(back, report);
    let table = report.to_string();
    assert!(table.contains("contended / quiet p99") && table.contains("→ PASS"), "{table}");
}
