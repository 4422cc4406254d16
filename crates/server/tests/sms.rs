//! Sign-in codes through a real HTTP SMS provider (an axum stand-in for the gateway) with the
//! fault proxy between: what it receives, one retry of a quick failure with the same key, and a
//! blackholed provider costing one timeout before its breaker answers for it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use kirana_domain::{ManualClock, Timestamp};
use kirana_events::sms::{HttpSms, SmsConfig};
use kirana_faultproxy::FaultProxy;
use kirana_server::{AppState, ServerConfig};
use kirana_storage::sqlite::{SqliteOptions, Synchronous};
use serde_json::{Value, json};
use tokio::time::Instant;
use tower::ServiceExt;

#[derive(Debug, Clone)]
struct Received {
    authorization: Option<String>,
    key: Option<String>,
    body: Value,
}

#[derive(Clone, Default)]
struct Provider {
    received: Arc<Mutex<Vec<Received>>>,
    /// Answers 500 to this many requests first.
    fail_first: Arc<Mutex<usize>>,
}

async fn gateway(State(p): State<Provider>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
    p.received.lock().unwrap().push(Received {
        authorization: header("authorization"),
        key: header("idempotency-key"),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    let mut fail = p.fail_first.lock().unwrap();
    if *fail > 0 {
        *fail -= 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::ACCEPTED
}

struct World {
    router: Router,
    provider: Provider,
    proxy: FaultProxy,
    _dir: tempfile::TempDir,
}

const TIMEOUT: Duration = Duration::from_millis(300);
const COOL_OFF: Duration = Duration::from_millis(600);

impl World {
    async fn new() -> World {
        let provider = Provider::default();
        let app = Router::new().route("/send", axum::routing::post(gateway)).with_state(provider.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let proxy = FaultProxy::start(upstream).unwrap();
        let sms = HttpSms::new(SmsConfig {
            token: Some("sk_test_gateway".into()),
            timeout: TIMEOUT,
            connect_timeout: TIMEOUT,
            breaker_cool_off: COOL_OFF,
            ..SmsConfig::new(format!("http://{}/send", proxy.addr()))
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteOptions { synchronous: Synchronous::Normal, ..SqliteOptions::default() };
        let storage = kirana_storage::sqlite::open(dir.path(), 1, &opts).unwrap();
        let clock = ManualClock::new(Timestamp::from_millis(1_767_225_600_000));
        let config = ServerConfig { otp_per_ip: 1000, ..ServerConfig::default() };
        let state = AppState::new(storage, Arc::new(clock), Arc::new(sms), config);
        let router = kirana_server::app(state).layer(MockConnectInfo(SocketAddr::from(([10, 0, 0, 1], 5000))));
        World { router, provider, proxy, _dir: dir }
    }

    async fn post(&self, uri: &str, body: Value) -> (StatusCode, HeaderMap, Value) {
        let req = Request::post(uri).header("content-type", "application/json").body(Body::from(body.to_string()));
        let res = self.router.clone().oneshot(req.unwrap()).await.unwrap();
        let (status, headers) = (res.status(), res.headers().clone());
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn request_code(&self, phone: &str) -> (StatusCode, HeaderMap, Value) {
        self.post("/api/v1/auth/otp", json!({ "phone": phone })).await
    }

    fn received(&self) -> Vec<Received> {
        self.provider.received.lock().unwrap().clone()
    }
}

fn retry_after(headers: &HeaderMap) -> u64 {
    headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).expect("a Retry-After")
}

#[tokio::test]
async fn a_code_reaches_the_provider_with_its_token_and_a_key_and_signs_the_merchant_in() {
    let w = World::new().await;
    let (status, _, _) = w.request_code("+919800000101").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let got = w.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].authorization.as_deref(), Some("Bearer sk_test_gateway"));
    assert!(got[0].key.as_deref().is_some_and(|k| k.len() >= 16), "an idempotency key: {:?}", got[0].key);
    assert_eq!(got[0].body["to"], "+919800000101");
    let message = got[0].body["message"].as_str().unwrap();
    let code: String = message.chars().take_while(char::is_ascii_digit).collect();
    assert_eq!(code.len(), 6, "{message}");
    let (status, _, body) = w.post("/api/v1/auth/verify", json!({ "phone": "+919800000101", "code": code })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_quick_failure_is_retried_once_with_the_same_key() {
    let w = World::new().await;
    *w.provider.fail_first.lock().unwrap() = 1;
    let (status, _, body) = w.request_code("+919800000102").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let got = w.received();
    assert_eq!(got.len(), 2, "the failure and its retry");
    assert_eq!(got[0].key, got[1].key, "one message to the provider, not two");

    // Failing twice is more than one retry covers: the shopper is told to try again shortly.
    *w.provider.fail_first.lock().unwrap() = 2;
    let (status, headers, body) = w.request_code("+919800000103").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(retry_after(&headers) >= 1);
    assert_eq!(w.received().len(), 4);
}

#[tokio::test]
async fn a_blackholed_provider_costs_one_timeout_then_sign_in_answers_503_at_once_until_it_returns() {
    let w = World::new().await;
    w.proxy.set_blackhole(true);
    let started = Instant::now();
    let (status, headers, body) = w.request_code("+919800000110").await;
    let first = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["type"], "https://kirana.dev/problems/unavailable");
    assert!(first >= TIMEOUT, "the first request waited out the timeout ({first:?})");
    assert!(retry_after(&headers) >= 1);

    // The breaker is open: nobody else waits, and nothing more is sent.
    let held = w.proxy.live_connections();
    for n in 0..20 {
        let one = Instant::now();
        let (status, headers, _) = w.request_code(&format!("+9198000002{n:02}")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(one.elapsed() < TIMEOUT / 2, "request {n} waited {:?}", one.elapsed());
        assert!((1..=1).contains(&retry_after(&headers)), "the cool-off, rounded up to a second");
    }
    assert_eq!(w.proxy.live_connections(), held, "no new connection to the provider while open");

    // Back, and after the cool-off one request probes it and closes the breaker.
    w.proxy.heal();
    tokio::time::sleep(COOL_OFF).await;
    let (status, _, body) = w.request_code("+919800000111").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, _, _) = w.request_code("+919800000112").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let phones: Vec<String> = w.received().iter().map(|r| r.body["to"].as_str().unwrap_or("").to_string()).collect();
    assert!(phones.ends_with(&["+919800000111".to_string(), "+919800000112".to_string()]), "{phones:?}");
    assert!(!phones.iter().any(|p| p.starts_with("+9198000002")), "nothing sent while the breaker was open");
}
