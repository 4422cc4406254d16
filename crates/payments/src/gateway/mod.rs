//! The test gateway: a small payment provider shipped with the project for development and
//! tests, serving the provider's side of the protocol [`crate::http::HttpGateway`] speaks. It
//! keeps everything in memory and can be told to be slow, to fail, or to drop its webhooks.
//! It is a development tool: it must never be pointed at real money.
//!
//! **Provider API** (`Authorization: Bearer <key>` or 401; JSON; errors are
//! `{"error": {"code": "…", "message": "…"}}`, codes `unauthorized`, `invalid_request`,
//! `invalid_state`, `refund_exceeds_captured`, `idempotency_conflict`, `not_found`,
//! `unavailable`):
//! - `POST /v1/payments` [`CreatePayment`](crate::CreatePayment) → 201 [`RemotePayment`]
//!   (`pay_…`, status `created`, `checkout_url` `<public base>/pay/<id>`); a `reference` seen
//!   before → 200 and the first payment; an amount ≤ 0 → 400.
//! - `GET /v1/payments/{id}` → the payment, 404 if unknown.
//! - `POST /v1/payments/{id}/capture` `{"amount"}` → from `authorized`, 0 < amount ≤ the
//!   payment's: `captured`, webhook `payment.captured`. The same capture again → the payment
//!   as is; anything else → 400.
//! - `POST /v1/payments/{id}/cancel` → from `created`/`authorized` to `cancelled` (again →
//!   as is); otherwise 400.
//! - `POST /v1/payments/{id}/refunds` `{"amount", "key"}` → a captured payment's
//!   [`RemoteRefund`](crate::RemoteRefund), webhook `refund.processed`; the same key again → the
//!   first refund, nothing refunded twice; the key with another amount → 409; refunds beyond the
//!   captured amount → 400 `refund_exceeds_captured`.
//!
//! **Shopper pages** (no auth): `GET /pay/{id}` shows the amount and two buttons, which
//! `POST /pay/{id}/authorize` (`created → authorized`, webhook `payment.authorized`) or
//! `POST /pay/{id}/decline` (`created → failed`, webhook `payment.failed`); any other state is
//! left alone. Both answer 303 to the payment's `return_url` with
//! `payment=<id>&status=<status>` added to its query.
//!
//! **Webhooks**: a [`WebhookEvent`](crate::WebhookEvent) as JSON
//! (`{"id": "evt_…", "type": "payment.authorized", "created_at": <unix>, "payment": {…}}`),
//! `POST`ed to the webhook URL with `content-type: application/json` and the
//! [`signature`](crate::signature) header, freshly signed on every attempt. Delivery runs apart
//! from the API call that caused it; a non-2xx answer or no answer (5 s timeout) is retried
//! after 0.2, 0.5, 1, 2 and 5 s, six attempts in all. Like a real gateway's, deliveries may
//! arrive out of order or more than once. Every event is recorded, with whether it was ever
//! delivered.
//!
//! **Faults and control** (`Authorization: Bearer <key>`, for the subcommand and scripts;
//! [`TestGateway`] has the same controls as methods):
//! - `GET /control` → `{"latency_ms", "failing", "drop_webhooks", "webhook_url", "api_calls"}`;
//! - `POST /control` with any of `{"latency_ms", "failing", "drop_webhooks", "webhook_url"}`
//!   (`""` clears the URL) → the same;
//! - `GET /control/events` → every event in order: `id`, `type`, `delivered`, `attempts`,
//!   `signature`, and the `event` itself;
//! - `POST /control/events/{id}/redeliver` → sends that event once more (same id and body,
//!   freshly signed, even in drop mode): 200 `{"delivered": true}`, 404 unknown event, 409 no
//!   webhook URL, 502 the receiver did not take it.
//!
//! Latency delays every API and shopper-page request; failing answers 503 to every `/v1`
//! request; drop mode records events but sends none (until turned off again; retries pending
//! stop too).

mod api;
mod control;
mod deliver;
mod ledger;
mod shopper;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::provider::{RemotePayment, WebhookKind};
pub use deliver::DeliveryError;
use ledger::{Changed, Ledger, LedgerError};

/// What the gateway is configured with at start.
#[derive(Clone)]
pub struct GatewayConfig {
    /// The API key clients must send as `Authorization: Bearer …`.
    pub key: String,
    /// The key webhooks are signed with.
    pub webhook_secret: String,
    /// Where webhooks go; without one, events are only recorded.
    pub webhook_url: Option<String>,
    /// The base of `checkout_url` as shoppers' browsers reach the gateway;
    /// `http://<bound address>` when not set.
    pub public_url: Option<String>,
}

/// The key and the secret are credentials: never in a log line or a panic message.
impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("key", &"<redacted>")
            .field("webhook_secret", &"<redacted>")
            .field("webhook_url", &self.webhook_url)
            .field("public_url", &self.public_url)
            .finish()
    }
}

/// An event the gateway produced, and how its delivery went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentEvent {
    pub id: String,
    pub kind: WebhookKind,
    /// The exact bytes sent (the same on every attempt).
    pub body: Vec<u8>,
    /// The signature header of the latest attempt (of the recording, before any).
    pub signature: String,
    /// Whether any attempt was answered with a 2xx.
    pub delivered: bool,
    /// Attempts made so far, redeliveries included.
    pub attempts: u32,
}

/// What the handlers, the delivery tasks and [`TestGateway`] share.
pub(crate) struct Shared {
    key: String,
    secret: String,
    /// The base of `checkout_url`, without a trailing slash.
    public_base: String,
    ledger: Mutex<Ledger>,
    webhook_url: Mutex<Option<String>>,
    latency_ms: AtomicU64,
    failing: AtomicBool,
    drop_webhooks: AtomicBool,
    /// Requests that reached `/v1`, refused ones included: what a client's breaker saves.
    api_calls: AtomicU64,
    /// Set once on shutdown: deliveries in progress or waiting to retry give up.
    stop: watch::Sender<bool>,
    /// Where deliveries are spawned, so a control method called off the runtime still works.
    runtime: tokio::runtime::Handle,
    client: reqwest::Client,
}

impl Shared {
    fn new(config: GatewayConfig, addr: SocketAddr) -> std::io::Result<Arc<Shared>> {
        let public_base = config.public_url.unwrap_or_else(|| format!("http://{addr}"));
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("kirana-test-gateway")
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Arc::new(Shared {
            key: config.key,
            secret: config.webhook_secret,
            public_base: public_base.trim_end_matches('/').to_owned(),
            ledger: Mutex::new(Ledger::default()),
            webhook_url: Mutex::new(config.webhook_url.filter(|u| !u.is_empty())),
            latency_ms: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            drop_webhooks: AtomicBool::new(false),
            api_calls: AtomicU64::new(0),
            stop: watch::Sender::new(false),
            runtime: tokio::runtime::Handle::current(),
            client,
        }))
    }

    /// The books. A handler that panicked mid-change leaves them as they were at the panic;
    /// for a development tool that is better than refusing every later request.
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn webhook_url(&self) -> Option<String> {
        self.webhook_url.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set_webhook_url(&self, url: Option<String>) {
        *self.webhook_url.lock().unwrap_or_else(PoisonError::into_inner) = url.filter(|u| !u.is_empty());
    }

    fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms.load(Ordering::Relaxed))
    }

    fn set_latency(&self, latency: Duration) {
        self.latency_ms.store(u64::try_from(latency.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    fn dropping(&self) -> bool {
        self.drop_webhooks.load(Ordering::Relaxed)
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Applies a change to the books; the event it produced is recorded under the same lock
    /// (so events are in the order of the changes) and sent after the lock is released.
    fn change<T>(
        self: &Arc<Self>,
        op: impl FnOnce(&mut Ledger) -> Result<Changed<T>, LedgerError>,
    ) -> Result<T, LedgerError> {
        let (value, event) = {
            let mut ledger = self.ledger();
            let (value, event) = op(&mut ledger)?;
            let event = event.map(|(kind, payment)| ledger.record(kind, payment, self.secret.as_bytes(), unix_now()));
            (value, event)
        };
        if let Some(id) = event {
            self.dispatch(id);
        }
        Ok(value)
    }

    /// Starts delivering a recorded event, apart from the request that produced it.
    fn dispatch(self: &Arc<Self>, event_id: String) {
        if self.dropping() {
            tracing::info!(event = %event_id, "drop mode: the event is recorded, not sent");
            return;
        }
        self.runtime.spawn(deliver::deliver(self.clone(), event_id));
    }
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Holds every API and shopper-page request for the configured latency.
async fn latency(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let latency = shared.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    next.run(req).await
}

fn router(shared: Arc<Shared>) -> Router {
    let slow = axum::middleware::from_fn_with_state(shared.clone(), latency);
    Router::new()
        .merge(
            api::router(shared.clone())
                .layer(slow.clone())
                .layer(axum::middleware::from_fn_with_state(shared.clone(), api::count)),
        )
        .merge(shopper::router().layer(slow))
        .merge(control::router(shared.clone()))
        .fallback(api::unknown_route)
        .with_state(shared)
}

/// Serves the gateway on `listener` until `shutdown` completes, then lets requests in flight
/// finish; webhook deliveries still pending are abandoned.
pub async fn serve(
    listener: TcpListener,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let shared = Shared::new(config, listener.local_addr()?)?;
    serve_shared(listener, shared, shutdown).await
}

async fn serve_shared(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, public = %shared.public_base, "test payment gateway listening");
    let stop = shared.clone();
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop.stop.send_replace(true);
        })
        .await
}

/// A test gateway on `127.0.0.1:<free port>` for one test, with its controls as methods. It
/// stops when dropped.
pub struct TestGateway {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for TestGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestGateway").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl TestGateway {
    pub async fn start(config: GatewayConfig) -> std::io::Result<TestGateway> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Shared::new(config, addr)?;
        let (tx, rx) = oneshot::channel::<()>();
        let server = serve_shared(listener, shared.clone(), async move {
            // A dropped sender is a stop too.
            let _ = rx.await;
        });
        tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "the test payment gateway stopped");
            }
        });
        Ok(TestGateway { shared, addr, shutdown: Some(tx) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`: the API's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client's settings for this gateway: its address, key and webhook secret (the defaults
    /// otherwise), for tests to adjust and hand to [`crate::HttpGateway::new`].
    pub fn client_config(&self) -> crate::GatewayClientConfig {
        crate::GatewayClientConfig::new(self.url(), self.shared.key.clone(), self.shared.secret.clone())
    }

    /// Where later deliveries (retries included) go.
    pub fn set_webhook_url(&self, url: impl Into<String>) {
        self.shared.set_webhook_url(Some(url.into()));
    }

    /// Holds every API and shopper-page request this long before answering.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.set_latency(latency);
    }

    /// Whether the `/v1` API answers 503 to everything.
    pub fn set_failing(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::Relaxed);
    }

    /// Whether events are recorded without being sent.
    pub fn set_drop_webhooks(&self, drop: bool) {
        self.shared.drop_webhooks.store(drop, Ordering::Relaxed);
    }

    /// Requests that reached `/v1` so far, failed and unauthorized ones included.
    pub fn api_calls(&self) -> u64 {
        self.shared.api_calls.load(Ordering::Relaxed)
    }

    /// Every event produced so far, in order.
    pub fn events(&self) -> Vec<SentEvent> {
        self.shared.ledger().events().to_vec()
    }

    /// Sends an earlier event once more (same id and body, freshly signed), even in drop
    /// mode, and says whether the receiver took it.
    pub async fn redeliver(&self, event_id: &str) -> Result<(), DeliveryError> {
        deliver::attempt(&self.shared, event_id).await
    }

    /// What the shopper's "Pay" does: a created payment becomes authorized (and its webhook
    /// goes out); any other is left as it is. `None` for an unknown payment.
    pub fn authorize(&self, payment_id: &str) -> Option<RemotePayment> {
        self.shared.change(|l| l.authorize(payment_id)).ok()
    }

    /// What the shopper's "Decline" does: a created payment fails (and its webhook goes out).
    pub fn decline(&self, payment_id: &str) -> Option<RemotePayment> {
        self.shared.change(|l| l.decline(payment_id)).ok()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Stop deliveries now, not after the server's requests in flight have drained.
        self.shared.stop.send_replace(true);
    }
}
