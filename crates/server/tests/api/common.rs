//! The in-process harness: a fresh data directory, clock and router per test, and helpers that
//! speak the API the way a merchant's or shopper's client would.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use kirana_domain::{ManualClock, Timestamp};
use kirana_server::auth::MemoryNotifier;
use kirana_server::{AppState, ServerConfig};
use kirana_storage::Storage;
use kirana_storage::sqlite::{SqliteOptions, Synchronous};
use serde_json::{Value, json};
use tower::ServiceExt;

pub struct TestApp {
    pub router: Router,
    /// What the router serves with (its limiters, say).
    #[allow(dead_code)]
    pub state: AppState,
    pub notifier: Arc<MemoryNotifier>,
    pub clock: ManualClock,
    pub storage: Storage,
    /// The PostgreSQL backend's parts (replica reports, probes), when the suite runs on it.
    #[allow(dead_code)] // only the replica tests look
    pub cluster: Option<kirana_storage::postgres::cluster::PgCluster>,
    /// The replica's URL, with `Backend::PostgresWithReplica`.
    #[allow(dead_code)]
    pub replica_url: Option<String>,
    /// The databases: a temp directory (SQLite) or temp databases (PostgreSQL), removed with
    /// the app.
    _keep: Box<dyn std::any::Any + Send + Sync>,
}

/// Which storage backend the suite runs on: `tests/api` runs it on SQLite, `tests/api_pg` on
/// PostgreSQL (the same files, one `BACKEND` constant apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// One shard whose primary has a streaming replica of the test's own (`PgPair`).
    PostgresWithReplica,
}

type Keep = Box<dyn std::any::Any + Send + Sync>;

struct Opened {
    storage: Storage,
    cluster: Option<kirana_storage::postgres::cluster::PgCluster>,
    replica_url: Option<String>,
    keep: Keep,
}

async fn open(shards: u32) -> Opened {
    match crate::BACKEND {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            // Tests need not survive power loss; the durability test runs the real binary with FULL.
            let opts = SqliteOptions { synchronous: Synchronous::Normal, ..SqliteOptions::default() };
            let storage = kirana_storage::sqlite::open(dir.path(), shards, &opts).expect("open storage");
            Opened { storage, cluster: None, replica_url: None, keep: Box::new(dir) }
        }
        Backend::Postgres => {
            use kirana_storage::postgres::cluster::{PgConfig, ShardUrls, open};
            use kirana_storage::postgres::testing::TempDb;
            let control = TempDb::create().await;
            let mut dbs = Vec::new();
            for _ in 0..shards {
                dbs.push(TempDb::create().await);
            }
            let urls = dbs.iter().map(|d| ShardUrls { primary: d.url(), replicas: vec![] }).collect();
            let mut config = PgConfig::new(control.url(), urls);
            // The racing-checkout tests queue hundreds of writers on one row; on a shared, busy
            // machine the default 2 s wait for a connection would turn some into 503s (which is
            // the overload answer, but not what those tests are about).
            config.pool.acquire_timeout = std::time::Duration::from_secs(60);
            let cluster = open(&config).await.expect("open the PostgreSQL backend");
            dbs.push(control);
            Opened { storage: cluster.storage.clone(), cluster: Some(cluster), replica_url: None, keep: Box::new(dbs) }
        }
        Backend::PostgresWithReplica => {
            use kirana_storage::postgres::cluster::{PgConfig, ShardUrls, open};
            use kirana_storage::postgres::testing::{PgPair, TempDb};
            assert_eq!(shards, 1, "the replica harness has one shard");
            let pair = tokio::task::spawn_blocking(PgPair::start).await.expect("start a primary and a replica");
            let control = TempDb::create().await;
            let urls = vec![ShardUrls { primary: pair.primary_url(), replicas: vec![pair.replica_url()] }];
            let mut config = PgConfig::new(control.url(), urls);
            config.replicas.probe_every = std::time::Duration::from_millis(50);
            // These suites are about lag and routing, not slowness: a busy machine must not make
            // a healthy replica miss its read deadline and leave rotation mid-test.
            config.replicas.read_deadline = std::time::Duration::from_secs(2);
            // Roomy bounds: on a busy shared machine a healthy replica can be a second behind;
            // the tests pause replay to make a laggard, which no bound admits.
            config.replicas.policy =
                kirana_storage::postgres::replica::LagPolicy { max_bytes: 64 << 20, max_seconds: 10.0 };
            let cluster = open(&config).await.expect("open the PostgreSQL backend");
            Opened {
                storage: cluster.storage.clone(),
                cluster: Some(cluster),
                replica_url: Some(pair.replica_url()),
                keep: Box::new((pair, control)),
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Resp {
    #[track_caller]
    pub fn expect(self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "unexpected status; body: {}", self.body);
        self.body
    }

    pub fn is_problem(&self) -> bool {
        self.headers
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap_or("").starts_with("application/problem+json"))
    }
}

/// 2026-01-01T00:00:00Z: tests run on a clock of their own.
pub const T0: i64 = 1_767_225_600_000;

impl TestApp {
    pub async fn new() -> TestApp {
        TestApp::with_shards(1).await
    }

    pub async fn with_shards(shards: u32) -> TestApp {
        TestApp::with_config(shards, ServerConfig::default()).await
    }

    pub async fn with_config(shards: u32, config: ServerConfig) -> TestApp {
        let Opened { storage, cluster, replica_url, keep } = open(shards).await;
        let clock = ManualClock::new(Timestamp::from_millis(T0));
        let notifier = Arc::new(MemoryNotifier::default());
        let state = AppState::new(storage.clone(), Arc::new(clock.clone()), notifier.clone(), config);
        let router = kirana_server::app(state.clone()).layer(MockConnectInfo(SocketAddr::from(([10, 0, 0, 1], 5000))));
        TestApp { router, state, notifier, clock, storage, cluster, replica_url, _keep: keep }
    }

    /// The same app taking online payments through `payments`.
    #[allow(dead_code)] // only the payments tests pay online
    pub fn with_payments(mut self, payments: kirana_server::payments::Payments) -> TestApp {
        self.state = self.state.clone().with_payments(payments);
        self.router =
            kirana_server::app(self.state.clone()).layer(MockConnectInfo(SocketAddr::from(([10, 0, 0, 1], 5000))));
        self
    }

    pub async fn send(&self, req: Request<Body>) -> Resp {
        let res = self.router.clone().oneshot(req).await.expect("router answers");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Resp { status, headers, body }
    }

    /// A request with an optional bearer token, extra headers and JSON body.
    pub async fn call(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Resp {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = match body {
            Some(v) => b.header("content-type", "application/json").body(Body::from(v.to_string())),
            None => b.body(Body::empty()),
        };
        self.send(req.expect("request")).await
    }

    pub async fn get(&self, uri: &str, token: Option<&str>) -> Resp {
        self.call(Method::GET, uri, token, &[], None).await
    }

    pub async fn post(&self, uri: &str, token: Option<&str>, body: Value) -> Resp {
        self.call(Method::POST, uri, token, &[], Some(body)).await
    }

    pub async fn patch(&self, uri: &str, token: Option<&str>, body: Value) -> Resp {
        self.call(Method::PATCH, uri, token, &[], Some(body)).await
    }

    /// Signs in through the OTP flow, reading the code the notifier "sent".
    pub async fn sign_in(&self, phone: &str) -> String {
        self.post("/api/v1/auth/otp", None, json!({ "phone": phone })).await.expect(202);
        let normalized = kirana_domain::Phone::parse(phone).unwrap();
        let code = self.notifier.last_code(normalized.as_str()).expect("a code was sent");
        let body = self.post("/api/v1/auth/verify", None, json!({ "phone": phone, "code": code })).await.expect(200);
        body["token"].as_str().unwrap().to_string()
    }

    pub async fn create_store(&self, token: &str, body: Value) -> Value {
        self.post("/api/v1/stores", Some(token), body).await.expect(201)
    }

    /// A merchant with one store: (token, store).
    pub async fn merchant_with_store(&self, phone: &str, name: &str) -> (String, Value) {
        let token = self.sign_in(phone).await;
        let store = self.create_store(&token, json!({ "name": name })).await;
        (token, store)
    }

    pub async fn create_product(&self, token: &str, store: &Value, body: Value) -> Value {
        let uri = format!("/api/v1/stores/{}/products", store["id"].as_str().unwrap());
        self.post(&uri, Some(token), body).await.expect(201)
    }

    /// Opens a cart: (cart_id, cart token).
    pub async fn open_cart(&self, slug: &str) -> (String, String) {
        let body = self.post(&format!("/api/v1/storefront/{slug}/carts"), None, json!({})).await.expect(201);
        (body["cart_id"].as_str().unwrap().to_string(), body["token"].as_str().unwrap().to_string())
    }

    pub async fn set_item(&self, slug: &str, cart: &str, cart_token: &str, variant: &str, quantity: i64) -> Resp {
        self.call(
            Method::PUT,
            &format!("/api/v1/storefront/{slug}/carts/{cart}/items"),
            None,
            &[("x-cart-token", cart_token)],
            Some(json!({ "variant_id": variant, "quantity": quantity })),
        )
        .await
    }

    pub async fn checkout(&self, slug: &str, cart: &str, cart_token: &str, key: Option<&str>, body: Value) -> Resp {
        let mut headers = vec![("x-cart-token", cart_token)];
        if let Some(k) = key {
            headers.push(("idempotency-key", k));
        }
        self.call(Method::POST, &format!("/api/v1/storefront/{slug}/carts/{cart}/checkout"), None, &headers, Some(body))
            .await
    }

    /// A cart holding `quantity` of `variant`, checked out: the order.
    pub async fn place_order(&self, slug: &str, variant: &str, quantity: i64) -> Value {
        let (cart, ct) = self.open_cart(slug).await;
        self.set_item(slug, &cart, &ct, variant, quantity).await.expect(200);
        self.checkout(slug, &cart, &ct, None, shopper()).await.expect(201)
    }
}

/// A valid checkout body.
pub fn shopper() -> Value {
    json!({
        "customer": { "name": "Asha Rao", "phone": "+919812345678", "email": "asha@example.in" },
        "address": { "line1": "12 MG Road", "city": "Pune", "postal_code": "411001" },
        "payment_method": "cod"
    })
}

pub fn id(v: &Value) -> String {
    v["id"].as_str().expect("an id").to_string()
}

pub fn slug(store: &Value) -> String {
    store["slug"].as_str().expect("a slug").to_string()
}
