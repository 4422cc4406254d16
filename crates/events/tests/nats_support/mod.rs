//! Shared by the JetStream tests: NATS servers (the shared one, checked; or a private one a test
//! may kill), a configuration with streams of its own per test, shops that take orders, and the
//! ledger of what every store should show once the pipeline has caught up.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kirana_domain::analytics::day_of;
use kirana_domain::cart::{CheckoutInput, Quantity};
use kirana_domain::catalog::ProductInput;
use kirana_domain::store::StoreInput;
use kirana_domain::{Clock, MerchantId, Phone, StoreId, SystemClock, VariantId};
use kirana_events::jetstream::{JetStreamBus, JetStreamConfig};
use kirana_storage::sqlite::{SqliteOptions, Synchronous};
use kirana_storage::{Storage, StoreScope};
use serde_json::json;

pub const SHARED_ADDR: &str = "127.0.0.1:4222";
const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// Logs of the pipeline in the test's output (shown when a test fails; `RUST_LOG` overrides).
pub fn logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("kirana_events=info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// The shared NATS (JetStream on) every test that does not stop NATS uses. Absent, the test
/// fails saying how to start it.
pub fn shared_nats() -> String {
    let addr: SocketAddr = SHARED_ADDR.parse().unwrap();
    if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
        panic!(
            "NATS is not running on {SHARED_ADDR}; start it with:\n  start-stop-daemon --start --oknodo --background \
             --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"
        );
    }
    format!("nats://{SHARED_ADDR}")
}

/// A configuration whose streams and subjects belong to this test alone, with timeouts short
/// enough that outages are noticed in a test's time.
pub fn test_config(url: &str, partitions: u32) -> JetStreamConfig {
    let tag = uuid::Uuid::now_v7().simple().to_string();
    JetStreamConfig {
        stream: format!("KIRANA_EVENTS_{tag}"),
        dlq_stream: format!("KIRANA_DLQ_{tag}"),
        subject_prefix: format!("t{tag}.ev"),
        dlq_prefix: format!("t{tag}.dlq"),
        partitions,
        // Left behind by a failed test, the shared server forgets them soon.
        max_age: Duration::from_secs(3600),
        dlq_max_age: Duration::from_secs(3600),
        ack_wait: Duration::from_secs(30),
        fetch_wait: Duration::from_millis(500),
        idle: Duration::from_millis(10),
        timeout: Duration::from_secs(2),
        ..JetStreamConfig::new(url)
    }
}

/// Removes a test's streams from the shared server.
pub async fn drop_streams(bus: &JetStreamBus) {
    let js = bus.jetstream();
    let _ = js.delete_stream(&bus.config().stream).await;
    let _ = js.delete_stream(&bus.config().dlq_stream).await;
}

/// Messages a stream holds now.
pub async fn stream_messages(bus: &JetStreamBus, name: &str) -> u64 {
    let stream = bus.jetstream().get_stream(name).await.expect("the stream exists");
    stream.cached_info().state.messages
}

/// A NATS server of the test's own, on a free port with its own store directory, which the
/// test may kill and start again. Dropping it kills it.
pub struct OwnNats {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl OwnNats {
    /// A port and directory, no server yet.
    pub fn reserve() -> OwnNats {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        OwnNats { child: None, port, dir: tempfile::tempdir().unwrap() }
    }

    pub fn start() -> OwnNats {
        let mut n = OwnNats::reserve();
        n.run();
        n
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// Starts the server (again, on the same port and store) and waits until it listens.
    pub fn run(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(NATS_SERVER)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.dir.path().join("js"))
            .arg("-l")
            .arg(self.log())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {NATS_SERVER}: {e}"));
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen on {addr}; log: {}", self.log_tail());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// A clean stop (SIGTERM), waiting for the process to end.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success();
        assert!(ok, "could not signal nats-server");
        let deadline = Instant::now() + Duration::from_secs(15);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct Shop {
    pub scope: StoreScope,
    pub variant: VariantId,
    pub price: i64,
}

/// Orders a store took: how many, and what they came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    pub orders: i64,
    pub revenue: i64,
}

/// Storage with shops, and a ledger of the orders they took.
pub struct World {
    pub storage: Storage,
    pub clock: Arc<dyn Clock>,
    pub shops: Vec<Shop>,
    ledger: Mutex<HashMap<StoreId, Taken>>,
    /// The first day any order could have been placed on (reporting days).
    first_day: i64,
    _dir: tempfile::TempDir,
}

impl World {
    pub async fn new(shards: u32, stores: usize) -> Arc<World> {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteOptions { synchronous: Synchronous::Normal, ..SqliteOptions::default() };
        let storage = kirana_storage::sqlite::open(dir.path(), shards, &opts).unwrap();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let mut shops = Vec::with_capacity(stores);
        let mut owner: Option<MerchantId> = None;
        for i in 0..stores {
            // At most 50 stores per merchant: a new one every 40.
            if i % 40 == 0 {
                let phone = Phone::parse(&format!("+9197{:08}", i / 40)).unwrap();
                owner = Some(storage.directory().merchant_for_phone(&phone, clock.now()).await.unwrap().0.id);
            }
            let owner = owner.unwrap();
            let new = StoreInput { name: Some(format!("Shop {i}")), ..StoreInput::default() }.into_new().unwrap();
            let store = storage.create_store(owner, new, clock.now()).await.unwrap();
            let scope = storage.scope_for_owner(owner, store.id).await.unwrap();
            let price = 10_000 + 100 * i as i64;
            let input: ProductInput =
                serde_json::from_value(json!({ "title": format!("Chai {i}"), "price": price })).unwrap();
            let product = storage
                .shard(&scope)
                .create_product(&scope, input.into_change(true).unwrap(), clock.now())
                .await
                .unwrap();
            shops.push(Shop { scope, variant: product.variants[0].id, price });
        }
        let first_day = day_of(clock.now().millis()) - 1;
        Arc::new(World { storage, clock, shops, ledger: Mutex::new(HashMap::new()), first_day, _dir: dir })
    }

    /// A shopper buys `qty` of shop `i`'s product: cart, line, checkout. Panics if the
    /// checkout fails: the event pipeline must never be in its way.
    pub async fn order(&self, i: usize, qty: i64) {
        let shop = &self.shops[i];
        let shard = self.storage.shard(&shop.scope);
        let token = [9u8; 32];
        let cart = shard.create_cart(&shop.scope, token, self.clock.now()).await.unwrap();
        shard
            .set_cart_item(&shop.scope, cart.id, token, shop.variant, Quantity::parse(qty).unwrap(), self.clock.now())
            .await
            .unwrap();
        let input: CheckoutInput = serde_json::from_value(json!({
            "customer": { "name": "Asha Rao", "phone": "+919812345678" },
            "address": { "line1": "12 MG Road", "city": "Pune", "postal_code": "411001" },
            "payment_method": "cod"
        }))
        .unwrap();
        let (order, _) = shard
            .checkout(&shop.scope, cart.id, token, input.parse().unwrap(), None, self.clock.now())
            .await
            .expect("checkout succeeds whatever the event pipeline is doing");
        let mut ledger = self.ledger.lock().unwrap();
        let t = ledger.entry(shop.scope.store_id()).or_default();
        t.orders += 1;
        t.revenue += order.totals.total;
    }

    /// `n` orders spread round-robin over the shops, `concurrency` shoppers at a time, each
    /// pausing `gap` between orders.
    pub async fn burst(self: &Arc<Self>, n: usize, concurrency: usize, gap: Duration) {
        let mut tasks = Vec::new();
        for c in 0..concurrency {
            let w = self.clone();
            tasks.push(tokio::spawn(async move {
                let mut k = c;
                while k < n {
                    w.order(k % w.shops.len(), 1 + (k % 3) as i64).await;
                    k += concurrency;
                    if !gap.is_zero() {
                        tokio::time::sleep(gap).await;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    pub fn taken(&self, i: usize) -> Taken {
        self.ledger.lock().unwrap().get(&self.shops[i].scope.store_id()).copied().unwrap_or_default()
    }

    pub fn orders_taken(&self) -> i64 {
        self.ledger.lock().unwrap().values().map(|t| t.orders).sum()
    }

    /// What the sales rollups say about shop `i`.
    pub async fn sales(&self, i: usize) -> Taken {
        let scope = &self.shops[i].scope;
        let today = day_of(self.clock.now().millis());
        let a = self.storage.shard(scope).analytics(scope, self.first_day, today + 1).await.unwrap();
        Taken { orders: a.totals.orders, revenue: a.totals.revenue }
    }

    pub async fn cache_version(&self, i: usize) -> i64 {
        let scope = &self.shops[i].scope;
        self.storage.shard(scope).cache_version(scope).await.unwrap()
    }

    /// Events that change shop `i`'s pages: its creation and its product's (orders change none:
    /// the product's stock is not tracked, so nothing sells out). A double-applied event shows
    /// here as one too many.
    pub fn page_events(&self, _i: usize) -> i64 {
        2
    }

    /// Whether shop `i` shows exactly its orders: rollups equal to the ledger and one cache
    /// version per page-changing event.
    pub async fn settled(&self, i: usize) -> Result<(), String> {
        let (want, got) = (self.taken(i), self.sales(i).await);
        if want != got {
            return Err(format!("shop {i}: rollups {got:?}, orders {want:?}"));
        }
        let (want, got) = (self.page_events(i), self.cache_version(i).await);
        if want != got {
            return Err(format!("shop {i}: cache version {got}, page-changing events {want}"));
        }
        Ok(())
    }

    pub async fn all_settled(&self) -> Result<(), String> {
        for i in 0..self.shops.len() {
            self.settled(i).await?;
        }
        Ok(())
    }

    /// Outbox rows waiting, over every shard.
    pub async fn outbox_rows(&self) -> i64 {
        let mut n = 0;
        for log in self.storage.logs() {
            n += log.outbox_stats().await.unwrap().rows;
        }
        n
    }

    /// Events ever written, over every shard (outbox positions have no gaps).
    pub async fn events_written(&self) -> i64 {
        let mut n = 0;
        for log in self.storage.logs() {
            n += log.outbox_stats().await.unwrap().last_seq;
        }
        n
    }
}

/// Polls `check` until it passes; fails with its last complaint at the deadline.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + within;
    loop {
        let last = match check().await {
            Ok(()) => return,
            Err(e) => e,
        };
        if Instant::now() > deadline {
            panic!("{what}: not within {within:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
