//! Webhook delivery against real receivers: axum servers on 127.0.0.1:0 (one behind the fault
//! proxy, refusing connections until healed) that verify the signature, fail, recover, redirect
//! or hang, fed by real SQLite shards through the `webhooks`
//! consumer. Time for backoff and disabling is a manual clock the worker reads, so a day of
//! retries takes a few seconds of real time.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kirana_domain::catalog::CategoryChange;
use kirana_domain::store::StoreInput;
use kirana_domain::{Clock, ManualClock, Phone, Timestamp};
use kirana_events::consumers::Webhooks;
use kirana_events::embedded::{Reader, ReaderConfig};
use kirana_events::webhooks::{self as hooks, Deliverer, WebhookConfig};
use kirana_storage::sqlite::{SqliteOptions, Synchronous};
use kirana_storage::{CreatedEndpoint, Delivery, DeliveryStatus, Endpoint, NewEndpoint, Storage, StoreScope};
use tokio::sync::watch;

/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600_000;

#[derive(Clone, Copy)]
enum Behaviour {
    Accept,
    /// Answers 500 to its first `n` requests, then 200.
    FailFirst(usize),
    Always(u16),
    Redirect,
    /// Never answers.
    Hang,
}

#[derive(Debug, Clone)]
struct Hit {
    event_id: String,
    event_type: String,
    timestamp: String,
    signature: String,
    content_type: String,
    body: Bytes,
}

#[derive(Clone)]
struct Receiver {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    requests: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct ReceiverState {
    behaviour: Behaviour,
    hits: Arc<Mutex<Vec<Hit>>>,
    requests: Arc<AtomicUsize>,
}

async fn receive(State(s): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> Response {
    let n = s.requests.fetch_add(1, Ordering::SeqCst);
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let hit = Hit {
        event_id: h("kirana-event-id"),
        event_type: h("kirana-event-type"),
        timestamp: h("kirana-timestamp"),
        signature: h("kirana-signature"),
        content_type: h("content-type"),
        body,
    };
    let status = match s.behaviour {
        Behaviour::Accept => StatusCode::OK,
        Behaviour::FailFirst(k) if n < k => StatusCode::INTERNAL_SERVER_ERROR,
        Behaviour::FailFirst(_) => StatusCode::NO_CONTENT,
        Behaviour::Always(code) => StatusCode::from_u16(code).unwrap(),
        Behaviour::Redirect => return (StatusCode::FOUND, [("location", "https://example.com/")]).into_response(),
        Behaviour::Hang => std::future::pending().await,
    };
    if status.is_success() {
        s.hits.lock().unwrap().push(hit);
    }
    (status, "receiver says so").into_response()
}

impl Receiver {
    async fn start(behaviour: Behaviour) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicUsize::new(0));
        let state = ReceiverState { behaviour, hits: hits.clone(), requests: requests.clone() };
        let app = Router::new().route("/hook", axum::routing::post(receive)).with_state(state);
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url: format!("http://127.0.0.1:{}/hook", addr.port()), hits, requests }
    }

    /// Event ids of the accepted requests, deduplicated as a receiver should (by header).
    fn received(&self) -> HashSet<String> {
        self.hits.lock().unwrap().iter().map(|h| h.event_id.clone()).collect()
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

struct World {
    storage: Storage,
    clock: ManualClock,
    scope: StoreScope,
    _dir: tempfile::TempDir,
}

impl World {
    async fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteOptions { synchronous: Synchronous::Normal, ..SqliteOptions::default() };
        let storage = kirana_storage::sqlite::open(dir.path(), 2, &opts).unwrap();
        let clock = ManualClock::new(Timestamp::from_millis(T0));
        let phone = Phone::parse("+919800000001").unwrap();
        let (m, _) = storage.directory().merchant_for_phone(&phone, clock.now()).await.unwrap();
        let new = StoreInput { name: Some("Chai Point".into()), ..StoreInput::default() }.into_new().unwrap();
        let store = storage.create_store(m.id, new, clock.now()).await.unwrap();
        let scope = storage.scope_for_owner(m.id, store.id).await.unwrap();
        World { storage, clock, scope, _dir: dir }
    }

    fn config(&self) -> WebhookConfig {
        WebhookConfig {
            allow_private_targets: true,
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            poll: Duration::from_millis(20),
            ..WebhookConfig::default()
        }
    }

    fn deliverer(&self, cfg: WebhookConfig) -> Deliverer {
        Deliverer::new(self.storage.clone(), Arc::new(self.clock.clone()), cfg).unwrap()
    }

    async fn endpoint(&self, url: &str, types: &[&str]) -> CreatedEndpoint {
        let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
        let new = NewEndpoint::parse(url, &types).unwrap();
        self.storage.shard(&self.scope).webhooks().create_webhook(&self.scope, new, self.clock.now()).await.unwrap()
    }

    async fn endpoint_now(&self, e: &CreatedEndpoint) -> Endpoint {
        self.storage.shard(&self.scope).webhooks().get_webhook(&self.scope, e.endpoint.id).await.unwrap()
    }

    /// Changes that write events: `n` new categories.
    async fn changes(&self, n: usize) {
        for i in 0..n {
            let change =
                CategoryChange { name: Some(format!("Shelf {i} {}", self.clock.now().millis())), description: None };
            self.storage.shard(&self.scope).create_category(&self.scope, change, self.clock.now()).await.unwrap();
        }
    }

    /// Runs the `webhooks` consumer over everything in the outbox: one delivery per (endpoint,
    /// event), queued once however often this runs.
    async fn fan_out(&self) {
        let shard = self.scope.shard().0 as usize;
        let mut reader = Reader::new(
            Arc::new(Webhooks),
            self.storage.clone(),
            shard,
            ReaderConfig::default(),
            Arc::new(self.clock.clone()),
        );
        reader.step().await.unwrap();
    }

    /// Ids of every event the store wrote that webhooks carry (all but carts').
    async fn event_ids(&self) -> HashSet<String> {
        let events = self.storage.shard(&self.scope).events(&self.scope, 0, 1000).await.unwrap();
        events.into_iter().filter(|(_, e)| !e.kind.starts_with("cart.")).map(|(_, e)| e.id.to_string()).collect()
    }

    async fn deliveries(&self, e: &CreatedEndpoint) -> Vec<Delivery> {
        let page = kirana_domain::page::PageRequest {
            after: None,
            limit: kirana_domain::page::Limit::parse(Some(100)).unwrap(),
        };
        let hooks = self.storage.shard(&self.scope).webhooks();
        hooks.webhook_deliveries(&self.scope, e.endpoint.id, page).await.unwrap().items
    }
}

#[tokio::test]
async fn every_event_arrives_once_with_a_signature_that_verifies() {
    let w = World::new().await;
    let all = Receiver::start(Behaviour::Accept).await;
    let some = Receiver::start(Behaviour::Accept).await;
    let everything = w.endpoint(&all.url, &["*"]).await;
    let categories = w.endpoint(&some.url, &["category.created"]).await;
    assert!(everything.secret.starts_with("whsec_") && everything.secret.len() > 40);
    assert_ne!(everything.secret, categories.secret);
    w.changes(5).await;
    w.fan_out().await;
    w.fan_out().await; // a second pass queues nothing new

    let d = w.deliverer(w.config());
    assert_eq!(d.deliver_due_once().await, 6 + 5, "store.created and 5 categories, and the 5 again");
    assert_eq!(d.deliver_due_once().await, 0, "nothing is sent twice");

    let expected = w.event_ids().await;
    assert_eq!(expected.len(), 6);
    assert_eq!(all.received(), expected, "every event arrives");
    assert_eq!(all.requests(), 6, "and once");
    let now = w.clock.now().millis() / 1000;
    for hit in all.hits.lock().unwrap().iter() {
        hooks::verify(&everything.secret, &hit.timestamp, &hit.signature, &hit.body, now, 300)
            .unwrap_or_else(|e| panic!("{e}: {hit:?}"));
        assert!(hooks::verify(&categories.secret, &hit.timestamp, &hit.signature, &hit.body, now, 300).is_err());
        assert_eq!(hit.content_type, "application/json");
        let event: serde_json::Value = serde_json::from_slice(&hit.body).unwrap();
        assert_eq!(event["id"], hit.event_id.as_str());
        assert_eq!(event["type"], hit.event_type.as_str());
        assert_eq!(event["store_id"], w.scope.store_id().to_string());
    }
    let hits = some.hits.lock().unwrap().clone();
    assert_eq!(hits.len(), 5);
    assert!(hits.iter().all(|h| h.event_type == "category.created"), "only the subscribed type");

    for d in w.deliveries(&everything).await {
        assert_eq!((d.status, d.attempts, d.last_status), (DeliveryStatus::Delivered, 1, Some(200)));
        assert!(d.delivered_at.is_some() && d.next_attempt_at.is_none());
        assert_eq!(d.recent_attempts.len(), 1);
    }
}

#[tokio::test]
async fn a_receiver_that_fails_then_recovers_gets_every_delivery() {
    let w = World::new().await;
    let flaky = Receiver::start(Behaviour::FailFirst(5)).await;
    let e = w.endpoint(&flaky.url, &["*"]).await;
    w.changes(5).await;
    w.fan_out().await;
    let d = w.deliverer(w.config());
    let expected = w.event_ids().await;
    for _ in 0..20 {
        d.deliver_due_once().await;
        if flaky.received() == expected {
            break;
        }
        // Past the longest backoff so far; well inside the 24 h window.
        w.clock.advance_secs(3600);
    }
    assert_eq!(flaky.received(), expected, "every delivery arrives after the receiver recovers");
    assert_eq!(flaky.hits.lock().unwrap().len(), expected.len(), "each exactly once once it answers 2xx");
    assert!(flaky.requests() >= expected.len() + 5);

    let log = w.deliveries(&e).await;
    assert!(log.iter().all(|d| d.status == DeliveryStatus::Delivered && d.last_status == Some(204)));
    let retried: Vec<&Delivery> = log.iter().filter(|d| d.attempts > 1).collect();
    assert!(!retried.is_empty());
    for d in retried {
        let first = d.recent_attempts.last().unwrap();
        assert_eq!((first.attempt, first.status_code), (1, Some(500)));
        assert!(first.error.as_deref().unwrap().starts_with("HTTP 500"), "{first:?}");
        assert_eq!(d.recent_attempts[0].status_code, Some(204));
    }
    let endpoint = w.endpoint_now(&e).await;
    assert!(endpoint.active);
    assert_eq!(endpoint.failing_since, None, "a success ends the failing run");
}

#[tokio::test]
async fn a_hanging_receiver_does_not_slow_the_others() {
    let w = World::new().await;
    let hanging = Receiver::start(Behaviour::Hang).await;
    let healthy = Receiver::start(Behaviour::Accept).await;
    let stuck = w.endpoint(&hanging.url, &["*"]).await;
    w.endpoint(&healthy.url, &["*"]).await;
    w.changes(9).await;
    w.fan_out().await;
    let expected = w.event_ids().await;

    let cfg = WebhookConfig { timeout: Duration::from_secs(5), per_endpoint: 2, ..w.config() };
    let (stop, stopped) = watch::channel(false);
    let started = Instant::now();
    let worker = tokio::spawn(hooks::run(w.storage.clone(), Arc::new(w.clock.clone()) as Arc<dyn Clock>, cfg, stopped));
    while healthy.received() != expected {
        assert!(started.elapsed() < Duration::from_secs(4), "the healthy endpoint waited on the hanging one");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    assert_eq!(hanging.requests(), 2, "the hanging endpoint holds only its own two slots");
    assert!(took < Duration::from_secs(4), "all 10 delivered in {took:?}, before the first timeout");

    stop.send(true).unwrap();
    worker.await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(5), "shutdown let the requests in flight time out");
    let timed_out: Vec<Delivery> = w.deliveries(&stuck).await.into_iter().filter(|d| d.attempts == 1).collect();
    assert_eq!(timed_out.len(), 2);
    for d in timed_out {
        assert_eq!(d.status, DeliveryStatus::Pending, "retried later");
        assert_eq!(d.last_status, None);
        assert_eq!(d.last_error.as_deref(), Some("timed out after 5000 ms"));
        assert!(d.recent_attempts[0].duration_ms >= 4900, "{:?}", d.recent_attempts);
    }
}

#[tokio::test]
async fn a_host_that_is_down_costs_a_few_attempts_per_cool_off_not_one_per_delivery() {
    let w = World::new().await;
    // The merchants' host behind the fault proxy, refusing every connection until healed.
    let host = Receiver::start(Behaviour::Accept).await;
    let upstream: std::net::SocketAddr =
        host.url.trim_start_matches("http://").trim_end_matches("/hook").parse().unwrap();
    let proxy = kirana_faultproxy::FaultProxy::start(upstream).unwrap();
    proxy.set_refuse(true);
    let mut down = Vec::new();
    for n in 0..3 {
        down.push(w.endpoint(&format!("http://{}/hook?merchant-app={n}", proxy.addr()), &["*"]).await);
    }
    let healthy = Receiver::start(Behaviour::Accept).await;
    w.endpoint(&healthy.url, &["*"]).await;
    w.changes(9).await;
    w.fan_out().await;
    let expected = w.event_ids().await;
    assert_eq!(expected.len(), 10);

    const COOL_OFF: Duration = Duration::from_millis(300);
    let cfg =
        WebhookConfig { per_endpoint: 1, host_breaker_threshold: 2, host_breaker_cool_off: COOL_OFF, ..w.config() };
    let d = w.deliverer(cfg);
    // The breaker opens between these two instants.
    let before = tokio::time::Instant::now();
    d.deliver_due_once().await;
    let after = tokio::time::Instant::now();
    assert_eq!(healthy.received(), expected, "the healthy host gets everything");
    let tried = |all: &[Vec<Delivery>]| all.iter().flatten().filter(|x| x.attempts > 0).count();
    let mut logs = Vec::new();
    for e in &down {
        logs.push(w.deliveries(e).await);
    }
    assert_eq!(logs.iter().flatten().count(), 30);
    // One request per endpoint was in flight when the second refusal opened the breaker.
    assert!(tried(&logs) <= 3, "{} of 30 deliveries tried against a refusing host", tried(&logs));
    assert_eq!(d.hosts_open(), vec![proxy.addr().to_string()]);
    assert_eq!(host.requests(), 0);

    // The tried ones are due again an hour later; the breaker still holds every one back.
    w.clock.advance_secs(3600);
    if before.elapsed() < COOL_OFF {
        d.deliver_due_once().await;
        let mut again = Vec::new();
        for e in &down {
            again.push(w.deliveries(e).await);
        }
        assert_eq!(tried(&again), tried(&logs), "no attempt while the breaker is open");
    }

    // The host comes back; after the cool-off one delivery probes it, then all go.
    proxy.heal();
    tokio::time::sleep_until(after + COOL_OFF).await;
    d.deliver_due_once().await;
    assert_eq!(host.requests(), 30, "each endpoint's ten events, once each");
    assert_eq!(host.received(), expected);
    assert!(d.hosts_open().is_empty());
}

#[tokio::test]
async fn persistent_failure_disables_the_endpoint_with_a_reason() {
    let w = World::new().await;
    let broken = Receiver::start(Behaviour::Always(503)).await;
    let fine = Receiver::start(Behaviour::Accept).await;
    let e = w.endpoint(&broken.url, &["*"]).await;
    let other = w.endpoint(&fine.url, &["*"]).await;
    w.changes(1).await;
    w.fan_out().await;
    let d = w.deliverer(w.config());
    let start = w.clock.now();
    let mut rounds = 0;
    while w.endpoint_now(&e).await.active {
        assert!(rounds < 80, "still active after {rounds} half-hours");
        d.deliver_due_once().await;
        w.clock.advance_secs(1800);
        rounds += 1;
    }
    let endpoint = w.endpoint_now(&e).await;
    let reason = endpoint.disabled_reason.clone().unwrap();
    assert!(reason.contains("24 h") && reason.contains("HTTP 503"), "{reason}");
    assert_eq!(endpoint.failing_since, Some(start));
    let days = (w.clock.now().millis() - start.millis()) as f64 / 86_400_000.0;
    assert!((1.0..1.1).contains(&days), "disabled after a day of failing, not {days} days");

    let log = w.deliveries(&e).await;
    assert_eq!(log.len(), 2);
    for d in &log {
        assert_eq!(d.status, DeliveryStatus::Failed);
        assert_eq!(d.last_status, Some(503));
        assert!(d.attempts >= 10, "retried all day: {} attempts", d.attempts);
        assert!(d.recent_attempts.len() <= 10);
    }
    // The merchant is told.
    let shard = w.storage.all_shards().nth(w.scope.shard().0 as usize).unwrap();
    let queued = shard.log().due_notifications(w.clock.now(), 10).await.unwrap();
    assert!(queued.iter().any(|n| n.message.contains("disabled") && n.message.contains(&broken.url)), "{queued:?}");

    // Nothing more is queued for it, or sent; the healthy endpoint carries on.
    let requests = broken.requests();
    w.changes(2).await;
    w.fan_out().await;
    d.deliver_due_once().await;
    assert_eq!(broken.requests(), requests);
    assert_eq!(w.deliveries(&e).await.len(), 2);
    assert_eq!(fine.received(), w.event_ids().await);
    assert!(w.endpoint_now(&other).await.active);
}

#[tokio::test]
async fn redirects_are_failures_and_are_not_followed() {
    let w = World::new().await;
    let moved = Receiver::start(Behaviour::Redirect).await;
    let e = w.endpoint(&moved.url, &["*"]).await;
    w.fan_out().await;
    w.deliverer(w.config()).deliver_due_once().await;
    let log = w.deliveries(&e).await;
    assert_eq!(log[0].status, DeliveryStatus::Pending);
    assert_eq!(log[0].last_status, Some(302));
    assert!(log[0].last_error.as_deref().unwrap().contains("redirects are not followed"));
    assert_eq!(moved.requests(), 1);
}

#[tokio::test]
async fn private_addresses_are_refused_unless_allowed() {
    let w = World::new().await;
    let local = Receiver::start(Behaviour::Accept).await;
    let by_ip = w.endpoint(&local.url, &["*"]).await;
    let by_name = w.endpoint(&local.url.replace("127.0.0.1", "localhost"), &["*"]).await;
    w.fan_out().await;
    let production = WebhookConfig { allow_private_targets: false, ..w.config() };
    w.deliverer(production).deliver_due_once().await;
    assert_eq!(local.requests(), 0, "nothing reached the local network");
    let log = w.deliveries(&by_ip).await;
    assert_eq!(log[0].last_error.as_deref(), Some("refused: 127.0.0.1 is not a public address"));
    let log = w.deliveries(&by_name).await;
    let error = log[0].last_error.clone().unwrap();
    assert!(error.contains("does not resolve to a public address"), "{error}");
}

#[tokio::test]
async fn deleting_an_endpoint_stops_its_pending_deliveries() {
    let w = World::new().await;
    let down = Receiver::start(Behaviour::Always(500)).await;
    let e = w.endpoint(&down.url, &["*"]).await;
    w.changes(2).await;
    w.fan_out().await;
    let d = w.deliverer(w.config());
    assert!(d.deliver_due_once().await >= 3);
    let before = down.requests();
    w.storage.shard(&w.scope).webhooks().delete_webhook(&w.scope, e.endpoint.id).await.unwrap();
    w.clock.advance_secs(3600);
    assert_eq!(d.deliver_due_once().await, 0, "its retries are gone with it");
    assert_eq!(down.requests(), before);
    let hooks = w.storage.shard(&w.scope).webhooks();
    let page = kirana_domain::page::PageRequest::default();
    assert!(matches!(
        hooks.webhook_deliveries(&w.scope, e.endpoint.id, page).await,
        Err(kirana_storage::StorageError::NotFound)
    ));
}
