//! The fleet chaos test: kirana as an operator who outgrew one machine runs it — several
//! `kirana serve` nodes behind nginx (`least_conn`), a control database and two shards each a
//! primary with a synchronous standby under pg_auto_failover, NATS JetStream, Redis — all of the
//! test's own. Shoppers check out, a merchant edits prices and reads them back with its write
//! token, readers browse, while a schedule injects faults: a store moves to the other shard and
//! back, a node is killed (`kill -9`) and restarted, a shard's primary is killed (failover), NATS
//! is killed and restarted, a standby's replay is paused.
//!
//! Then it checks what must hold together, not only alone: every acknowledged order is there
//! exactly once and stock is exact; the sales rollups equal the orders; every notification and
//! every webhook was delivered (by idempotency key and event id: exactly once in effect, resends
//! counted); no read with a write token saw an older value; the write outage of each failover;
//! the pipeline ends with no alert, nobody resets consumers once the faults stop, and
//! `kirana doctor` is healthy.
//!
//! The CI run is one cycle of the schedule (about a minute of load). `bench/soak.sh` runs it
//! longer: `KIRANA_FLEET_CYCLES` cycles, `KIRANA_FLEET_NODES` nodes, a JSON report at
//! `KIRANA_FLEET_REPORT`; `KIRANA_FLEET_MODE=throughput` measures checkouts per second with
//! no faults instead.

mod fleet_support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use fleet_support::*;
use kirana_cache::testing::OwnRedis;
use kirana_storage::postgres::testing::AutoFailover;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::Mutex;

const STOCK: i64 = 1_000_000;
const PRICE: i64 = 30_000;
const CYCLE: Duration = Duration::from_secs(60);
/// The write outage a failover may cost (the target).
const OUTAGE_TARGET: Duration = Duration::from_secs(15);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// An HTTP client that retries what a well-behaved client retries (refusals with `Retry-After`,
/// a balancer's 502, a dropped connection), sending the same request again (a checkout keeps its
/// idempotency key): what the shopper's app does.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
}

struct Answer {
    status: u16,
    token: Option<String>,
    body: Value,
}

impl Client {
    fn new(base: &str) -> Client {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .pool_max_idle_per_host(16)
            .build()
            .expect("an HTTP client");
        Client { http, base: base.to_string() }
    }

    async fn once(
        &self,
        method: &Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Answer> {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().await?;
        let status = res.status().as_u16();
        let token = res.headers().get("x-kirana-write-token").and_then(|v| v.to_str().ok()).map(String::from);
        let bytes = res.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer { status, token, body })
    }

    /// Sends until the answer is not a refusal; returns it with when the first refusal came, if
    /// any (the start of an outage as this client lived it).
    async fn retrying(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<&Value>,
        give_up: Duration,
    ) -> Result<(Answer, Option<Instant>)> {
        let started = Instant::now();
        let mut refused: Option<Instant> = None;
        loop {
            let wait = match self.once(&method, path, headers, body).await {
                Ok(a) if matches!(a.status, 429 | 502 | 503 | 504) => {
                    refusal(&a.status.to_string(), a.body["detail"].as_str().unwrap_or(""));
                    Duration::from_millis(200)
                }
                Ok(a) => return Ok((a, refused)),
                Err(e) => {
                    refusal("transport", &e.to_string());
                    Duration::from_millis(200)
                }
            };
            refused.get_or_insert_with(Instant::now);
            ensure!(started.elapsed() < give_up, "{method} {path} refused for {give_up:?}");
            tokio::time::sleep(wait).await;
        }
    }
}

/// Refusals the clients met and retried, by status (and the first reason given for each).
static REFUSALS: std::sync::Mutex<Vec<(String, u64, String)>> = std::sync::Mutex::new(Vec::new());

fn refusal(status: &str, why: &str) {
    let mut r = REFUSALS.lock().unwrap();
    match r.iter_mut().find(|(s, ..)| s == status) {
        Some(e) => e.1 += 1,
        None => r.push((status.to_string(), 1, why.chars().take(160).collect())),
    }
}

fn refusals() -> Value {
    let r = REFUSALS.lock().unwrap();
    json!(r.iter().map(|(s, n, why)| json!({ "status": s, "count": n, "first_reason": why })).collect::<Vec<_>>())
}

struct Shop {
    id: String,
    slug: String,
    product: String,
    variant: String,
}

/// An order a shopper was told was placed.
#[derive(Clone)]
struct Acked {
    store: usize,
    order: String,
    qty: i64,
}

#[derive(Default)]
struct Tally {
    acked: Mutex<Vec<Acked>>,
    /// The longest a shopper's checkout (or its cart) was refused, by outage window.
    outages: Mutex<Vec<(Instant, Duration)>>,
    ryw_checks: AtomicU64,
    ryw_violations: Mutex<Vec<String>>,
    reads: AtomicU64,
    errors: Mutex<Vec<String>>,
}

/// One shopper's order: cart, item, checkout, each retried until accepted.
async fn order(c: &Client, shops: &[Shop], tally: &Tally, k: u64) -> Result<()> {
    let store = (k % shops.len() as u64) as usize;
    let shop = &shops[store];
    let qty = 1 + (k % 3) as i64;
    let give_up = Duration::from_secs(90);
    let (cart, mut first) = c
        .retrying(Method::POST, &format!("/api/v1/storefront/{}/carts", shop.slug), &[], Some(&json!({})), give_up)
        .await?;
    ensure!(cart.status == 201, "cart: {} {}", cart.status, cart.body);
    let (id, token) =
        (cart.body["cart_id"].as_str().unwrap_or_default(), cart.body["token"].as_str().unwrap_or_default());
    let ct = [("x-cart-token", token.to_string())];
    let item = json!({ "variant_id": shop.variant, "quantity": qty });
    let (set, r) = c
        .retrying(Method::PUT, &format!("/api/v1/storefront/{}/carts/{id}/items", shop.slug), &ct, Some(&item), give_up)
        .await?;
    first = first.or(r);
    ensure!(set.status == 200, "cart item: {} {}", set.status, set.body);
    let body = json!({
        "customer": { "name": "Asha Rao", "phone": "+919812345678" },
        "address": { "line1": "12 MG Road", "city": "Pune", "postal_code": "411001" },
        "payment_method": "cod"
    });
    let headers = [("x-cart-token", token.to_string()), ("idempotency-key", format!("fleet-{k}-{}", uuid_ish(k)))];
    let (placed, r) = c
        .retrying(
            Method::POST,
            &format!("/api/v1/storefront/{}/carts/{id}/checkout", shop.slug),
            &headers,
            Some(&body),
            give_up,
        )
        .await?;
    first = first.or(r);
    ensure!(placed.status == 201 || placed.status == 200, "checkout: {} {}", placed.status, placed.body);
    let order = placed.body["id"].as_str().context("an order id")?.to_string();
    tally.acked.lock().await.push(Acked { store, order, qty });
    if let Some(at) = first {
        tally.outages.lock().await.push((at, at.elapsed()));
    }
    Ok(())
}

fn uuid_ish(k: u64) -> String {
    format!("{:x}", std::process::id() as u64 * 1_000_003 + k)
}

/// The merchant edits a price, then reads it back through the balancer (any node) with its
/// write token: the storefront read must show the edit, never an older price.
async fn edit_and_read_back(c: &Client, key: &str, shops: &[Shop], tally: &Tally, k: u64) -> Result<()> {
    let shop = &shops[(k % shops.len() as u64) as usize];
    let price = PRICE + 1 + (k as i64 % 10_000);
    let auth = [("authorization", format!("Bearer {key}"))];
    let patch = json!({ "price": price });
    let (edit, _) = c
        .retrying(
            Method::PATCH,
            &format!("/api/v1/stores/{}/products/{}", shop.id, shop.product),
            &auth,
            Some(&patch),
            Duration::from_secs(60),
        )
        .await?;
    if edit.status != 200 {
        tally.errors.lock().await.push(format!("price edit: {} {}", edit.status, edit.body));
        return Ok(());
    }
    let Some(token) = edit.token else {
        tally.ryw_violations.lock().await.push("a write answered without a write token".into());
        return Ok(());
    };
    let (read, _) = c
        .retrying(
            Method::GET,
            &format!("/api/v1/storefront/{}/products/{}", shop.slug, shop.product),
            &[("x-kirana-write-token", token.clone())],
            None,
            Duration::from_secs(60),
        )
        .await?;
    tally.ryw_checks.fetch_add(1, Ordering::Relaxed);
    let seen = read.body["variants"][0]["price"].as_i64();
    if read.status != 200 || seen != Some(price) {
        tally.ryw_violations.lock().await.push(format!(
            "store {}: wrote price {price} (token {token}), read {:?} ({}, cache {:?})",
            shop.slug,
            seen,
            read.status,
            read.body.get("variants")
        ));
    }
    Ok(())
}

/// A shopper browsing: the product read and page, no token (the cache's business).
async fn browse(c: &Client, shops: &[Shop], tally: &Tally, k: u64) {
    let shop = &shops[(k % shops.len() as u64) as usize];
    for path in [
        format!("/api/v1/storefront/{}/products/{}", shop.slug, shop.product),
        format!("/{}/product/{}", shop.slug, shop.product),
    ] {
        if c.once(&Method::GET, &path, &[], None).await.is_ok() {
            tally.reads.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Fleet {
    /// Logs and data of every part, removed when the fleet is dropped.
    _root: tempfile::TempDir,
    af: Arc<AutoFailover>,
    nats: Nats,
    _redis: OwnRedis,
    nginx: Nginx,
    nodes: Vec<Node>,
    config: std::path::PathBuf,
    received: Arc<Received>,
    receiver_port: u16,
}

impl Fleet {
    async fn start(nodes: usize) -> Result<Fleet> {
        let root = tempfile::Builder::new().prefix("kirana-fleet-").tempdir()?;
        let af = Arc::new(tokio::task::spawn_blocking(|| AutoFailover::start(&["control", "s0", "s1"])).await?);
        let nats = Nats::start(root.path()).await?;
        let redis = tokio::task::spawn_blocking(OwnRedis::start).await?;
        let (receiver_port, received) = receiver().await?;
        let config = write_config(
            root.path(),
            &af,
            &nats.url(),
            &redis.url(),
            &format!("http://127.0.0.1:{receiver_port}/sms"),
            &["s0", "s1"],
        )?;
        // The ports first (nginx names them), then the nodes behind it.
        let ports: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
        let nginx = Nginx::start(root.path(), &ports).await?;
        let mut nodes_ready = Vec::new();
        for (i, port) in ports.into_iter().enumerate() {
            let mut n = Node::new(&format!("node-{}", i + 1), port, &config, root.path(), &nginx.url());
            n.start().await?;
            nodes_ready.push(n);
        }
        Ok(Fleet { _root: root, af, nats, _redis: redis, nginx, nodes: nodes_ready, config, received, receiver_port })
    }

    fn client(&self) -> Client {
        Client::new(&self.nginx.url())
    }

    async fn cli(&self, args: &[&str]) -> Result<(bool, String)> {
        cli(&self.config, args).await
    }

    /// Which shard the directory places a store on (read from the control database).
    async fn shard_of(&self, store: &str) -> Result<u32> {
        let (c, conn) = tokio_postgres::connect(&self.af.url("control"), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let id: uuid_like::Uuid = store.parse().map_err(|e| anyhow!("{e}"))?;
        let row = c.query_one("SELECT shard FROM stores WHERE store_id = $1::text::uuid", &[&id.0]).await?;
        Ok(row.get::<_, i64>(0) as u32)
    }

    async fn metric(&self, node: usize, name: &str) -> Option<f64> {
        let text = reqwest::get(format!("{}/metrics", self.nodes[node].url())).await.ok()?.text().await.ok()?;
        let mut total = None;
        for l in text.lines().filter(|l| l.starts_with(name) && !l.starts_with('#')) {
            if let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                *total.get_or_insert(0.0) += v;
            }
        }
        total
    }
}

/// Store ids parse as UUIDs without a UUID crate in this test: kept as text for the query.
mod uuid_like {
    pub struct Uuid(pub String);
    impl std::str::FromStr for Uuid {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            if s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                Ok(Uuid(s.to_string()))
            } else {
                Err(format!("not a UUID: {s}"))
            }
        }
    }
}

/// The fault schedule of one cycle, as (seconds into the cycle, what).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    MoveAway,
    KillNode,
    StartNode,
    KillPrimary,
    KillNats,
    StartNats,
    PauseReplay,
    RestartPostgres,
    ResumeReplay,
    MoveBack,
}

const SCHEDULE: &[(u64, Fault)] = &[
    (5, Fault::MoveAway),
    (12, Fault::KillNode),
    (18, Fault::StartNode),
    (22, Fault::KillPrimary),
    (30, Fault::KillNats),
    (33, Fault::StartNats),
    (38, Fault::PauseReplay),
    (40, Fault::RestartPostgres),
    (48, Fault::ResumeReplay),
    (52, Fault::MoveBack),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_under_faults_loses_nothing_and_says_so() -> Result<()> {
    let mode = std::env::var("KIRANA_FLEET_MODE").unwrap_or_else(|_| "chaos".into());
    let nodes = env_u64("KIRANA_FLEET_NODES", 2).max(1) as usize;
    let cycles = env_u64("KIRANA_FLEET_CYCLES", 1).max(1);
    let mut fleet = Fleet::start(nodes).await?;
    let c = fleet.client();

    // A merchant with four stores, each with a product in stock and a webhook endpoint for
    // its orders.
    let (ok, out) = fleet.cli(&["merchant", "token", "--phone", "+919800000501"]).await?;
    ensure!(ok, "merchant token: {out}");
    let key = out.lines().rev().find(|l| l.starts_with("kir_")).context("a token")?.trim().to_string();
    let auth = [("authorization", format!("Bearer {key}"))];
    let mut shops = Vec::new();
    for i in 0..4 {
        let (s, _) = c
            .retrying(
                Method::POST,
                "/api/v1/stores",
                &auth,
                Some(&json!({ "name": format!("Fleet Store {i}") })),
                Duration::from_secs(30),
            )
            .await?;
        ensure!(s.status == 201, "store: {} {}", s.status, s.body);
        let (id, slug) = (s.body["id"].as_str().unwrap().to_string(), s.body["slug"].as_str().unwrap().to_string());
        let body = json!({ "title": format!("Darjeeling {i}"), "price": PRICE, "stock": STOCK, "status": "active" });
        let (p, _) = c
            .retrying(
                Method::POST,
                &format!("/api/v1/stores/{id}/products"),
                &auth,
                Some(&body),
                Duration::from_secs(30),
            )
            .await?;
        ensure!(p.status == 201, "product: {} {}", p.status, p.body);
        let (product, variant) =
            (p.body["id"].as_str().unwrap().to_string(), p.body["variants"][0]["id"].as_str().unwrap().to_string());
        let hook = json!({ "url": format!("http://127.0.0.1:{}/hooks", fleet.receiver_port), "event_types": ["order.placed"] });
        let (h, _) = c
            .retrying(
                Method::POST,
                &format!("/api/v1/stores/{id}/webhooks"),
                &auth,
                Some(&hook),
                Duration::from_secs(30),
            )
            .await?;
        ensure!(h.status == 201, "webhook: {} {}", h.status, h.body);
        shops.push(Shop { id, slug, product, variant });
    }
    let shops = Arc::new(shops);
    let mut homes = Vec::new();
    for s in shops.iter() {
        homes.push(fleet.shard_of(&s.id).await?);
    }
    println!("stores on shards {homes:?}");

    let tally = Arc::new(Tally::default());
    let running = Arc::new(AtomicBool::new(true));
    let started = Instant::now();
    let mut load = Vec::new();
    let shoppers = if mode == "throughput" { 8 } else { 4 };
    for s in 0..shoppers {
        let (c, shops, tally, running) = (c.clone(), shops.clone(), tally.clone(), running.clone());
        load.push(tokio::spawn(async move {
            let mut k = s as u64;
            while running.load(Ordering::Relaxed) {
                if let Err(e) = order(&c, &shops, &tally, k).await {
                    tally.errors.lock().await.push(format!("order {k}: {e:#}"));
                }
                k += shoppers as u64;
            }
        }));
    }
    if mode != "throughput" {
        let (c2, shops2, tally2, running2, key2) =
            (c.clone(), shops.clone(), tally.clone(), running.clone(), key.clone());
        load.push(tokio::spawn(async move {
            let mut k = 0;
            while running2.load(Ordering::Relaxed) {
                if let Err(e) = edit_and_read_back(&c2, &key2, &shops2, &tally2, k).await {
                    tally2.errors.lock().await.push(format!("edit {k}: {e:#}"));
                }
                k += 1;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }));
        for r in 0..2u64 {
            let (c, shops, tally, running) = (c.clone(), shops.clone(), tally.clone(), running.clone());
            load.push(tokio::spawn(async move {
                let mut k = r;
                while running.load(Ordering::Relaxed) {
                    browse(&c, &shops, &tally, k).await;
                    k += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
    }

    // The faults, cycle after cycle.
    let mut faults: Vec<(f64, String)> = Vec::new();
    let mut failovers: Vec<(Instant, String)> = Vec::new();
    if mode == "throughput" {
        tokio::time::sleep(Duration::from_secs(env_u64("KIRANA_FLEET_SECS", 30))).await;
    } else {
        let moving = 0usize;
        let mut killed_pg: Option<String> = None;
        let mut paused: Option<String> = None;
        let mut base = started;
        for cycle in 0..cycles {
            // Alternate which shard loses its primary.
            let victim_shard = if cycle % 2 == 0 { "s0" } else { "s1" };
            let other_shard = if victim_shard == "s0" { "s1" } else { "s0" };
            // A step that takes long (a move waiting for a standby) delays the rest of the cycle
            // with it, so faults keep their spacing (a primary is never restarted before its
            // standby could take over).
            let mut slip = Duration::ZERO;
            for (at, fault) in SCHEDULE {
                let due = base + Duration::from_secs(*at) + slip;
                tokio::time::sleep_until(due.into()).await;
                let t = started.elapsed().as_secs_f64();
                let what = match fault {
                    Fault::MoveAway | Fault::MoveBack => {
                        let from = fleet.shard_of(&shops[moving].id).await?;
                        let to = 1 - from;
                        let began = Instant::now();
                        let (mut ok, mut out) = fleet
                            .cli(&["shard", "move", &shops[moving].id, &to.to_string(), "--cleanup-delay", "3"])
                            .await?;
                        // A move that meets a failover stops and says why; the operator resumes it.
                        let mut resumes = 0;
                        while !ok && resumes < 30 {
                            println!("[{:6.1} s] the move stopped: {}", started.elapsed().as_secs_f64(), out.trim());
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            (ok, out) = fleet.cli(&["shard", "resume", &shops[moving].id]).await?;
                            resumes += 1;
                        }
                        ensure!(ok, "the move never completed: {out}");
                        if began.elapsed() > Duration::from_secs(15) {
                            println!("a slow move, its whole output:\n{out}");
                        }
                        let total = out.lines().find(|l| l.contains("total:")).unwrap_or("").trim().to_string();
                        let pause = out.lines().find(|l| l.contains("cutover pause:")).unwrap_or("").trim().to_string();
                        format!(
                            "store {} moved from shard {from} to shard {to} in {:.1} s ({pause}; {total}; {resumes} resumes)",
                            shops[moving].slug,
                            began.elapsed().as_secs_f64()
                        )
                    }
                    Fault::KillNode => {
                        let n = fleet.nodes.len() - 1;
                        fleet.nodes[n].kill().await;
                        format!("kill -9 {}", fleet.nodes[n].name)
                    }
                    Fault::StartNode => {
                        let n = fleet.nodes.len() - 1;
                        fleet.nodes[n].start().await?;
                        format!("{} started again", fleet.nodes[n].name)
                    }
                    Fault::KillPrimary => {
                        let af = fleet.af.clone();
                        let f = victim_shard.to_string();
                        let node = tokio::task::spawn_blocking(move || {
                            let p = af.primary(&f).expect("a primary");
                            af.kill(&p);
                            p
                        })
                        .await?;
                        failovers.push((Instant::now(), victim_shard.to_string()));
                        killed_pg = Some(node.clone());
                        format!("kill -9 {victim_shard}'s primary ({node})")
                    }
                    Fault::KillNats => {
                        fleet.nats.kill().await;
                        "kill -9 NATS".to_string()
                    }
                    Fault::StartNats => {
                        fleet.nats.run().await?;
                        "NATS started again".to_string()
                    }
                    Fault::PauseReplay => {
                        let af = fleet.af.clone();
                        let f = other_shard.to_string();
                        let node = tokio::task::spawn_blocking(move || {
                            let standby = af.states(&f).into_iter().find(|n| n.reported == "secondary").map(|n| n.name);
                            if let Some(s) = &standby {
                                let _ = af.node_sql(s, "SELECT pg_wal_replay_pause()");
                            }
                            standby
                        })
                        .await?;
                        paused = node.clone();
                        format!("replay paused on {other_shard}'s standby ({node:?})")
                    }
                    Fault::RestartPostgres => {
                        let Some(node) = killed_pg.take() else { continue };
                        let af = fleet.af.clone();
                        let (n, f) = (node.clone(), victim_shard.to_string());
                        // As an operator would: once the standby has taken over.
                        let promoted = tokio::task::spawn_blocking(move || {
                            let deadline = Instant::now() + Duration::from_secs(60);
                            while af.primary(&f).is_none_or(|p| p == n) && Instant::now() < deadline {
                                std::thread::sleep(Duration::from_millis(200));
                            }
                            let promoted = af.primary(&f);
                            af.restart(&n);
                            promoted
                        })
                        .await?;
                        format!("{node} restarted (rejoins as a standby of {promoted:?})")
                    }
                    Fault::ResumeReplay => {
                        let Some(node) = paused.take() else { continue };
                        let af = fleet.af.clone();
                        let n = node.clone();
                        tokio::task::spawn_blocking(move || af.node_sql(&n, "SELECT pg_wal_replay_resume()"))
                            .await?
                            .ok();
                        format!("replay resumed on {node}")
                    }
                };
                println!("[{t:6.1} s] {what}");
                faults.push((t, what));
                slip += Instant::now().saturating_duration_since(due + Duration::from_secs(1));
            }
            // The killed primary has rejoined as a standby before the next cycle kills again.
            let af = fleet.af.clone();
            tokio::task::spawn_blocking(move || {
                af.wait_replicating("s0");
                af.wait_replicating("s1");
            })
            .await?;
            base += CYCLE + slip;
            tokio::time::sleep_until(base.into()).await;
        }
    }
    running.store(false, Ordering::Relaxed);
    let load_secs = started.elapsed().as_secs_f64();
    for l in load {
        l.await?;
    }
    let acked = tally.acked.lock().await.clone();
    println!("{} orders acknowledged in {load_secs:.0} s, {} errors", acked.len(), tally.errors.lock().await.len());

    if mode == "throughput" {
        let rate = acked.len() as f64 / load_secs;
        let mut shed = 0.0;
        for i in 0..fleet.nodes.len() {
            shed += fleet.metric(i, "kirana_shed_total").await.unwrap_or(0.0);
        }
        let report = json!({
            "mode": "throughput",
            "nodes": nodes,
            "seconds": load_secs,
            "orders": acked.len(),
            "orders_per_second": rate,
            "refusals_retried": refusals(),
            "shed_by_admission": shed,
        });
        println!("{report}");
        if let Ok(path) = std::env::var("KIRANA_FLEET_REPORT") {
            std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        }
        ensure!(tally.errors.lock().await.is_empty(), "errors: {:?}", tally.errors.lock().await);
        return Ok(());
    }

    // ---- What must hold together ----
    let mut violations: Vec<String> = tally.errors.lock().await.clone();
    let mut per_store: HashMap<usize, (i64, i64)> = HashMap::new();
    for a in &acked {
        let e = per_store.entry(a.store).or_default();
        e.0 += 1;
        e.1 += a.qty;
    }
    let acked_ids: HashSet<String> = acked.iter().map(|a| a.order.clone()).collect();
    ensure!(acked_ids.len() == acked.len(), "an order id was acknowledged twice");

    // Every acknowledged order is there exactly once, and nothing else; stock is exact.
    let strong = [("authorization", format!("Bearer {key}")), ("x-kirana-consistency", "strong".to_string())];
    let mut stored = HashSet::new();
    for (i, shop) in shops.iter().enumerate() {
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(cur) => format!("/api/v1/stores/{}/orders?limit=100&cursor={cur}", shop.id),
                None => format!("/api/v1/stores/{}/orders?limit=100", shop.id),
            };
            let (page, _) = c.retrying(Method::GET, &path, &strong, None, Duration::from_secs(60)).await?;
            ensure!(page.status == 200, "orders: {} {}", page.status, page.body);
            for o in page.body["items"].as_array().into_iter().flatten() {
                let id = o["id"].as_str().unwrap_or_default().to_string();
                if !stored.insert(id.clone()) {
                    violations.push(format!("order {id} listed twice"));
                }
            }
            match page.body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => break,
            }
        }
        let (p, _) = c
            .retrying(
                Method::GET,
                &format!("/api/v1/stores/{}/products/{}", shop.id, shop.product),
                &strong,
                None,
                Duration::from_secs(60),
            )
            .await?;
        let stock = p.body["variants"][0]["stock"].as_i64();
        let sold = per_store.get(&i).map_or(0, |s| s.1);
        if stock != Some(STOCK - sold) {
            violations.push(format!("store {}: stock {stock:?}, expected {}", shop.slug, STOCK - sold));
        }
    }
    for lost in acked_ids.difference(&stored) {
        violations.push(format!("acknowledged order {lost} is missing"));
    }
    for extra in stored.difference(&acked_ids) {
        violations.push(format!("order {extra} was never acknowledged"));
    }

    // The rollups, the merchants' messages and the webhooks catch up with the orders.
    let settle = Instant::now();
    let deadline = settle + Duration::from_secs(150);
    let day = |offset: i64| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let ist = now + 5 * 3600 + 1800;
        let days = ist.div_euclid(86_400) + offset;
        let (y, m, d) = civil(days);
        format!("{y:04}-{m:02}-{d:02}")
    };
    loop {
        let mut behind = Vec::new();
        for (i, shop) in shops.iter().enumerate() {
            let path = format!("/api/v1/stores/{}/analytics?from={}&to={}", shop.id, day(-1), day(1));
            let a = c.once(&Method::GET, &path, &strong, None).await;
            let counted = a.as_ref().ok().filter(|a| a.status == 200).and_then(|a| a.body["totals"]["orders"].as_i64());
            let want = per_store.get(&i).map_or(0, |s| s.0);
            if counted != Some(want) {
                behind.push(format!("store {}: rollups {counted:?} of {want}", shop.slug));
            }
        }
        let sms = fleet.received.sms.lock().unwrap().len();
        let hooks = fleet.received.hooks.lock().unwrap().len();
        if sms != acked.len() {
            behind.push(format!("{sms} of {} merchant messages", acked.len()));
        }
        if hooks != acked.len() {
            behind.push(format!("{hooks} of {} webhooks", acked.len()));
        }
        if behind.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            violations.push(format!("not caught up {:?} after the load: {}", settle.elapsed(), behind.join("; ")));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let caught_up = settle.elapsed();
    // A little longer: a double count would show now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (i, shop) in shops.iter().enumerate() {
        let path = format!("/api/v1/stores/{}/analytics?from={}&to={}", shop.id, day(-1), day(1));
        let (a, _) = c.retrying(Method::GET, &path, &strong, None, Duration::from_secs(30)).await?;
        let want = per_store.get(&i).map_or(0, |s| s.0);
        if a.body["totals"]["orders"].as_i64() != Some(want) {
            violations.push(format!("store {}: rollups {} of {want} orders", shop.slug, a.body["totals"]["orders"]));
        }
    }
    let hook_orders: HashSet<String> = fleet
        .received
        .hooks
        .lock()
        .unwrap()
        .values()
        .filter_map(|(_, p)| p["payload"]["id"].as_str().or(p["data"]["id"].as_str()).map(String::from))
        .collect();
    let resent_sms: u32 = fleet.received.sms.lock().unwrap().values().map(|n| n - 1).sum();
    let resent_hooks: u32 = fleet.received.hooks.lock().unwrap().values().map(|(n, _)| n - 1).sum();
    if !hook_orders.is_empty() && hook_orders != acked_ids {
        violations.push(format!(
            "webhooks name {} orders, {} acknowledged ({} not delivered)",
            hook_orders.len(),
            acked_ids.len(),
            acked_ids.difference(&hook_orders).count()
        ));
    }

    // Read-your-writes held on every node, cache or not.
    violations.extend(tally.ryw_violations.lock().await.iter().cloned());

    // The write outage each failover cost shoppers.
    let outages = tally.outages.lock().await.clone();
    let mut failover_outages = Vec::new();
    for (at, shard) in &failovers {
        let worst = outages
            .iter()
            .filter(|(start, _)| *start >= *at - Duration::from_secs(1) && *start <= *at + Duration::from_secs(20))
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default();
        failover_outages
            .push(json!({ "shard": shard, "at_s": (*at - started).as_secs_f64(), "outage_s": worst.as_secs_f64() }));
        if worst > OUTAGE_TARGET {
            violations.push(format!("a failover of {shard} cost shoppers {worst:?} (target {OUTAGE_TARGET:?})"));
        }
    }

    // Quiet now: the pipeline says nothing is wrong, and nobody resets consumers.
    let mut resets = Vec::new();
    for i in 0..fleet.nodes.len() {
        resets.push(fleet.metric(i, "kirana_jetstream_consumer_resets_total").await.unwrap_or(0.0));
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    for (i, before) in resets.iter().enumerate() {
        let after = fleet.metric(i, "kirana_jetstream_consumer_resets_total").await.unwrap_or(0.0);
        if after != *before {
            violations.push(format!("{} reset {} consumers in a quiet moment", fleet.nodes[i].name, after - before));
        }
    }
    let held: Vec<f64> = {
        let mut v = Vec::new();
        for i in 0..fleet.nodes.len() {
            v.push(fleet.metric(i, "kirana_leases_held").await.unwrap_or(0.0));
        }
        v
    };
    if nodes > 1 && held.contains(&0.0) {
        violations.push(format!("a node holds no work: leases per node {held:?}"));
    }
    let (status_ok, status) = fleet.cli(&["events", "status"]).await?;
    if !status_ok {
        violations.push(format!("kirana events status after the run:\n{status}"));
    }
    let doctor_deadline = Instant::now() + Duration::from_secs(60);
    let doctor = loop {
        let (ok, out) = fleet.cli(&["doctor"]).await?;
        if ok || Instant::now() > doctor_deadline {
            if !ok {
                violations.push(format!("kirana doctor after the run:\n{out}"));
            }
            break out;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    ensure!(
        doctor.contains("ha shard 0:") && doctor.contains("monitor says"),
        "doctor shows each shard's HA:\n{doctor}"
    );

    let report = json!({
        "mode": "chaos",
        "nodes": nodes,
        "cycles": cycles,
        "load_seconds": load_secs,
        "orders": acked.len(),
        "orders_per_second": acked.len() as f64 / load_secs,
        "stores_on_shards": homes,
        "reads": tally.reads.load(Ordering::Relaxed),
        "read_your_writes_checks": tally.ryw_checks.load(Ordering::Relaxed),
        "notifications_delivered": fleet.received.sms.lock().unwrap().len(),
        "notifications_resent": resent_sms,
        "webhooks_delivered": fleet.received.hooks.lock().unwrap().len(),
        "webhooks_resent": resent_hooks,
        "caught_up_after_s": caught_up.as_secs_f64(),
        "faults": faults.iter().map(|(t, w)| json!({ "at_s": t, "fault": w })).collect::<Vec<_>>(),
        "failovers": failover_outages,
        "refusals_retried": refusals(),
        "violations": violations,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Ok(path) = std::env::var("KIRANA_FLEET_REPORT") {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    if !violations.is_empty() {
        for n in &fleet.nodes {
            eprintln!("--- {} (last lines) ---\n{}", n.name, n.tail(80));
            let relay: Vec<String> =
                n.log_lines().into_iter().filter(|l| l.contains("relay") || l.contains("lease")).collect();
            eprintln!(
                "--- {} relay and lease lines ---\n{}",
                n.name,
                relay[relay.len().saturating_sub(40)..].join("\n")
            );
        }
        // Each shard's outbox as the relay should see it.
        for f in ["s0", "s1"] {
            let af = fleet.af.clone();
            let f = f.to_string();
            let dump = tokio::task::spawn_blocking(move || {
                let Some(p) = af.primary(&f) else { return format!("{f}: no primary") };
                let q = |sql: &str| af.node_sql(&p, sql).unwrap_or_else(|e| format!("error: {e}"));
                format!(
                    "{f} ({p}): relay at {}; outbox min/max/count {}; first rows:\n{}\nsnapshot {}; sequence {}",
                    q("SELECT string_agg(consumer || '/' || partition || ':' || seq, ' ') FROM consumer_positions WHERE consumer = 'relay' OR consumer LIKE 'search%'"),
                    q("SELECT min(seq) || '/' || max(seq) || '/' || count(*) FROM outbox"),
                    q("SELECT seq || ' ' || type || ' ' || store_id || ' ' || occurred_at || ' xmin=' || xmin FROM outbox ORDER BY seq LIMIT 8"),
                    q("SELECT pg_current_snapshot()"),
                    q("SELECT last_value || ' called=' || is_called FROM outbox_seq_seq"),
                )
            })
            .await?;
            eprintln!("{dump}");
        }
        bail!("{} violation(s):\n{}", violations.len(), violations.join("\n"));
    }
    for n in fleet.nodes.iter_mut() {
        n.stop().await;
    }
    fleet.nginx.stop().await;
    fleet.nats.kill().await;
    let af = fleet.af.clone();
    drop(fleet);
    tokio::task::spawn_blocking(move || drop(af)).await?;
    Ok(())
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}
