//! The HTTP provider against the test gateway over real sockets, with a webhook receiver of
//! the test's own: what the platform will see of a provider, faults included.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use kirana_payments::gateway::{DeliveryError, GatewayConfig, TestGateway};
use kirana_payments::signature::SIGNATURE_HEADER;
use kirana_payments::{
    CreatePayment, GatewayClientConfig, HttpGateway, PaymentProvider, ProviderError, RemoteStatus, WebhookError,
    WebhookEvent, WebhookKind,
};
use tokio::sync::mpsc;

const KEY: &str = "sk_test_key";
const SECRET: &str = "whsec_test_secret";
/// Long enough for a webhook on a loaded CI machine; a test waits this long only on failure.
const PATIENCE: Duration = Duration::from_secs(10);

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs() as i64
}

fn config() -> GatewayConfig {
    GatewayConfig { key: KEY.into(), webhook_secret: SECRET.into(), webhook_url: None, public_url: None }
}

fn client(gw: &TestGateway) -> HttpGateway {
    client_with(gw, |_| {})
}

fn client_with(gw: &TestGateway, tweak: impl FnOnce(&mut GatewayClientConfig)) -> HttpGateway {
    let mut cfg = GatewayClientConfig::new(gw.url(), KEY, SECRET);
    tweak(&mut cfg);
    HttpGateway::new(cfg).expect("a good URL")
}

fn payment(reference: &str, amount: i64) -> CreatePayment {
    CreatePayment {
        reference: reference.into(),
        amount,
        currency: "INR".into(),
        store_id: "st_42".into(),
        order_id: format!("ord_{reference}"),
        return_url: "http://shop.test/orders/done?from=gateway".into(),
    }
}

/// A webhook as the receiver got it.
#[derive(Debug)]
struct Received {
    signature: Option<String>,
    content_type: Option<String>,
    body: Bytes,
}

/// The platform's side of webhooks: records every request; answers 500 to the first
/// `fail_first` of them, 200 after.
struct Receiver {
    url: String,
    rx: mpsc::UnboundedReceiver<Received>,
}

struct ReceiverState {
    tx: mpsc::UnboundedSender<Received>,
    fail_first: AtomicU32,
}

async fn receive(State(state): State<Arc<ReceiverState>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let _ = state.tx.send(Received { signature: header(SIGNATURE_HEADER), content_type: header("content-type"), body });
    let failing = state.fail_first.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    if failing { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK }
}

impl Receiver {
    async fn start(fail_first: u32) -> Receiver {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(ReceiverState { tx, fail_first: AtomicU32::new(fail_first) });
        let app = axum::Router::new().route("/hooks", axum::routing::post(receive)).with_state(state);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("a port");
        let url = format!("http://{}/hooks", listener.local_addr().expect("bound"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, rx }
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(PATIENCE, self.rx.recv()).await.expect("a webhook in time").expect("the receiver runs")
    }

    /// Nothing arrives for `wait`. There is no signal for "never", so this one waits.
    async fn nothing_for(&mut self, wait: Duration) {
        if let Ok(Some(got)) = tokio::time::timeout(wait, self.rx.recv()).await {
            panic!("expected no webhook, got {got:?}");
        }
    }
}

/// A gateway whose webhooks go to a fresh receiver.
async fn gateway_and_receiver(fail_first: u32) -> (TestGateway, Receiver) {
    let receiver = Receiver::start(fail_first).await;
    let gw = TestGateway::start(config()).await.expect("the gateway starts");
    gw.set_webhook_url(&receiver.url);
    (gw, receiver)
}

/// Verified and parsed as the platform would.
fn verified(provider: &HttpGateway, got: &Received) -> WebhookEvent {
    assert_eq!(got.content_type.as_deref(), Some("application/json"));
    provider.verify_webhook(got.signature.as_deref(), &got.body, now()).expect("a valid webhook")
}

/// What the shopper's browser does with a button on the payment page.
async fn click(checkout_url: &str, button: &str) -> reqwest::Response {
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("a client");
    browser.post(format!("{checkout_url}/{button}")).send().await.expect("the page answers")
}

#[tokio::test]
async fn creating_twice_with_the_same_reference_returns_the_same_payment() {
    let gw = TestGateway::start(config()).await.expect("starts");
    let provider = client(&gw);
    let first = provider.create(&payment("p1", 49_900)).await.expect("created");
    assert_eq!(first.status, RemoteStatus::Created);
    assert!(first.id.starts_with("pay_"));
    assert_eq!(first.checkout_url, format!("{}/pay/{}", gw.url(), first.id));
    assert_eq!((first.amount, first.captured, first.refunded), (49_900, 0, 0));
    let again = provider.create(&payment("p1", 49_900)).await.expect("the same");
    assert_eq!(again, first);
    assert_eq!(provider.fetch(&first.id).await.expect("known"), first);
    let other = provider.create(&payment("p2", 100)).await.expect("another");
    assert_ne!(other.id, first.id);
}

#[tokio::test]
async fn a_payment_without_an_amount_is_rejected() {
    let gw = TestGateway::start(config()).await.expect("starts");
    let provider = client(&gw);
    let refused = provider.create(&payment("p1", 0)).await;
    assert!(matches!(&refused, Err(ProviderError::Rejected(why)) if why.contains("invalid_request")), "{refused:?}");
    assert!(provider.available(), "a refusal says nothing of the gateway's health");
}

#[tokio::test]
async fn the_shoppers_payment_sends_a_signed_webhook_naming_the_order() {
    let (gw, mut hooks) = gateway_and_receiver(0).await;
    let provider = client(&gw);
    let created = provider.create(&payment("p1", 49_900)).await.expect("created");

    let page = reqwest::get(&created.checkout_url).await.expect("the page");
    assert_eq!(page.status(), 200);
    let html = page.text().await.expect("html");
    assert!(html.contains("499.00") && html.contains("/authorize") && html.contains("/decline"), "{html}");

    let back = click(&created.checkout_url, "authorize").await;
    assert_eq!(back.status(), StatusCode::SEE_OTHER);
    let location = back.headers()["location"].to_str().expect("ascii");
    assert_eq!(location, format!("http://shop.test/orders/done?from=gateway&payment={}&status=authorized", created.id));

    let event = verified(&provider, &hooks.next().await);
    assert_eq!(event.kind, WebhookKind::PaymentAuthorized);
    assert!(event.id.starts_with("evt_"));
    assert_eq!(event.payment.id, created.id);
    assert_eq!(event.payment.reference, "p1");
    assert_eq!(event.payment.store_id, "st_42");
    assert_eq!(event.payment.order_id, "ord_p1");
    assert_eq!(event.payment.status, RemoteStatus::Authorized);
    assert_eq!(provider.fetch(&created.id).await.expect("known").status, RemoteStatus::Authorized);

    let late = click(&created.checkout_url, "decline").await;
    assert!(
        late.headers()["location"].to_str().expect("ascii").ends_with("status=authorized"),
        "a second click changes nothing"
    );
    assert_eq!(gw.events().len(), 1, "and sends nothing");
}

#[tokio::test]
async fn a_declined_payment_sends_payment_failed() {
    let (gw, mut hooks) = gateway_and_receiver(0).await;
    let provider = client(&gw);
    let created = provider.create(&payment("p1", 100)).await.expect("created");
    let back = click(&created.checkout_url, "decline").await;
    assert_eq!(back.status(), StatusCode::SEE_OTHER);
    assert!(
        back.headers()["location"].to_str().expect("ascii").ends_with(&format!("payment={}&status=failed", created.id))
    );
    let event = verified(&provider, &hooks.next().await);
    assert_eq!((event.kind, event.payment.status), (WebhookKind::PaymentFailed, RemoteStatus::Failed));
    assert!(provider.capture(&created.id, 100).await.is_err(), "nothing to capture");
}

#[tokio::test]
async fn refunds_stop_at_the_captured_amount() {
    let (gw, mut hooks) = gateway_and_receiver(0).await;
    let provider = client(&gw);
    let created = provider.create(&payment("p1", 500)).await.expect("created");
    gw.authorize(&created.id).expect("known");
    assert_eq!(verified(&provider, &hooks.next().await).kind, WebhookKind::PaymentAuthorized);

    let captured = provider.capture(&created.id, 500).await.expect("captured");
    assert_eq!((captured.status, captured.captured), (RemoteStatus::Captured, 500));
    assert_eq!(provider.capture(&created.id, 500).await.expect("the same capture again"), captured);
    let event = verified(&provider, &hooks.next().await);
    assert_eq!((event.kind, event.payment.captured), (WebhookKind::PaymentCaptured, 500));
    assert!(matches!(provider.cancel(&created.id).await, Err(ProviderError::Rejected(_))), "captured is final");

    let first = provider.refund(&created.id, 300, "rf_a").await.expect("refunded");
    assert_eq!((first.amount, first.key.as_str(), first.payment.refunded), (300, "rf_a", 300));
    let second = provider.refund(&created.id, 200, "rf_b").await.expect("refunded");
    assert_eq!(second.payment.refunded, 500);
    let over = provider.refund(&created.id, 1, "rf_c").await;
    assert!(matches!(&over, Err(ProviderError::Rejected(why)) if why.contains("refund_exceeds_captured")), "{over:?}");
    for _ in 0..2 {
        let event = verified(&provider, &hooks.next().await);
        assert_eq!(event.kind, WebhookKind::RefundProcessed);
    }
    assert_eq!(provider.fetch(&created.id).await.expect("known").refunded, 500);
}

#[tokio::test]
async fn a_refund_retried_with_its_key_refunds_once() {
    let gw = TestGateway::start(config()).await.expect("starts");
    let provider = client(&gw);
    let created = provider.create(&payment("p1", 500)).await.expect("created");
    gw.authorize(&created.id).expect("known");
    provider.capture(&created.id, 500).await.expect("captured");

    let first = provider.refund(&created.id, 100, "rf_a").await.expect("refunded");
    let again = provider.refund(&created.id, 100, "rf_a").await.expect("the same refund");
    assert_eq!(again.id, first.id);
    assert_eq!(again.payment.refunded, 100, "refunded once");
    let conflict = provider.refund(&created.id, 200, "rf_a").await;
    assert!(matches!(&conflict, Err(ProviderError::Rejected(why)) if why.contains("409")), "{conflict:?}");
    let refunds = gw.events().iter().filter(|e| e.kind == WebhookKind::RefundProcessed).count();
    assert_eq!(refunds, 1);
}

#[tokio::test]
async fn cancel_stops_a_payment_before_capture() {
    let gw = TestGateway::start(config()).await.expect("starts");
    let provider = client(&gw);
    let created = provider.create(&payment("p1", 500)).await.expect("created");
    assert_eq!(provider.cancel(&created.id).await.expect("cancelled").status, RemoteStatus::Cancelled);
    assert_eq!(provider.cancel(&created.id).await.expect("again").status, RemoteStatus::Cancelled);
    assert_eq!(gw.authorize(&created.id).expect("known").status, RemoteStatus::Cancelled, "too late to pay");
}

#[tokio::test]
async fn unknown_payments_are_not_found() {
    let gw = TestGateway::start(config()).await.expect("starts");
    let provider = client(&gw);
    assert_eq!(provider.fetch("pay_nope").await, Err(ProviderError::NotFound("pay_nope".into())));
    assert_eq!(provider.capture("pay_nope", 1).await, Err(ProviderError::NotFound("pay_nope".into())));
    assert!(
        matches!(provider.fetch("../control").await, Err(ProviderError::NotFound(_))),
        "an id stays in its segment"
    );
    for id in ["", ".", ".."] {
        assert_eq!(provider.cancel(id).await, Err(ProviderError::NotFound(id.into())), "{id:?}");
    }
    assert!(gw.authorize("pay_nope").is_none());
    let page = reqwest::get(format!("{}/pay/pay_nope", gw.url())).await.expect("answers");
    assert_eq!(page.status(), 404);
    assert!(provider.available());
}

#[tokio::test]
async fn requests_without_the_key_are_refused_and_bad_json_is_a_400() {
    let gw = TestGateway::start(config()).await.expect("starts");
    let wrong = client_with(&gw, |c| c.key = "sk_wrong".into());
    let refused = wrong.create(&payment("p1", 100)).await;
    assert!(matches!(&refused, Err(ProviderError::Rejected(why)) if why.contains("401")), "{refused:?}");
    assert!(wrong.available());

    let http = reqwest::Client::new();
    let res = http
        .post(format!("{}/v1/payments", gw.url()))
        .bearer_auth(KEY)
        .body("{not json")
        .send()
        .await
        .expect("answers");
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], "invalid_request");
}

#[tokio::test]
async fn drop_mode_records_events_but_sends_none_until_redelivered() {
    let (gw, mut hooks) = gateway_and_receiver(0).await;
    let provider = client(&gw);
    gw.set_drop_webhooks(true);
    let created = provider.create(&payment("p1", 500)).await.expect("created");
    gw.authorize(&created.id).expect("known");
    hooks.nothing_for(Duration::from_millis(500)).await;
    let events = gw.events();
    assert_eq!(events.len(), 1);
    let dropped = &events[0];
    assert_eq!((dropped.kind, dropped.delivered, dropped.attempts), (WebhookKind::PaymentAuthorized, false, 0));

    // The same event, twice: what a platform must deduplicate.
    for _ in 0..2 {
        gw.redeliver(&dropped.id).await.expect("delivered");
        let got = hooks.next().await;
        assert_eq!(&got.body[..], &dropped.body[..], "the same body");
        let event = verified(&provider, &got);
        assert_eq!(event.id, dropped.id);
    }
    let after = &gw.events()[0];
    assert_eq!((after.delivered, after.attempts), (true, 2));
    assert_eq!(gw.redeliver("evt_nope").await, Err(DeliveryError::UnknownEvent("evt_nope".into())));
}

#[tokio::test]
async fn a_failed_delivery_is_retried_until_the_receiver_takes_it() {
    let (gw, mut hooks) = gateway_and_receiver(2).await;
    let provider = client(&gw);
    let created = provider.create(&payment("p1", 500)).await.expect("created");
    gw.authorize(&created.id).expect("known");
    let attempts: Vec<WebhookEvent> = [hooks.next().await, hooks.next().await, hooks.next().await]
        .iter()
        .map(|got| verified(&provider, got))
        .collect();
    assert!(attempts.iter().all(|e| e.id == attempts[0].id), "one event, three attempts");
    // The third attempt was taken; the record follows right after the answer.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !gw.events()[0].delivered {
        assert!(tokio::time::Instant::now() < deadline, "recorded as delivered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(gw.events()[0].attempts, 3);
}

#[tokio::test]
async fn a_failing_gateway_is_unavailable_and_the_breaker_stops_the_calls() {
    let gw = TestGateway::start(config()).await.expect("starts");
    let provider = client_with(&gw, |c| {
        c.breaker_threshold = 3;
        c.breaker_cool_off = Duration::from_secs(60);
    });
    gw.set_failing(true);
    for _ in 0..5 {
        let failed = provider.create(&payment("p1", 100)).await;
        assert!(matches!(failed, Err(ProviderError::Unavailable(_))), "{failed:?}");
    }
    assert_eq!(gw.api_calls(), 3, "the breaker opened on the third failure and let nothing more through");
    assert!(!provider.available());
    assert!(provider.unavailable_for().is_some());

    gw.set_failing(false);
    assert!(matches!(provider.fetch("pay_x").await, Err(ProviderError::Unavailable(_))), "still open");
    assert_eq!(gw.api_calls(), 3);
}

#[tokio::test]
async fn after_the_cool_off_one_call_probes_and_its_success_closes_the_breaker() {
    let gw = TestGateway::start(config()).await.expect("starts");
    let cool_off = Duration::from_millis(300);
    let provider = client_with(&gw, |c| {
        c.breaker_threshold = 1;
        c.breaker_cool_off = cool_off;
    });
    gw.set_failing(true);
    assert!(matches!(provider.create(&payment("p1", 100)).await, Err(ProviderError::Unavailable(_))));
    assert!(!provider.available());
    gw.set_failing(false);
    // The cool-off is time itself: nothing signals its end.
    tokio::time::sleep(cool_off).await;
    assert!(provider.available(), "a probe may go");
    provider.create(&payment("p1", 100)).await.expect("the probe succeeds");
    assert!(provider.available());
    assert_eq!(gw.api_calls(), 2);
}

#[tokio::test]
async fn a_gateway_slower_than_the_timeout_is_unavailable_at_once() {
    let gw = TestGateway::start(config()).await.expect("starts");
    let provider = client_with(&gw, |c| c.timeout = Duration::from_millis(200));
    gw.set_latency(Duration::from_millis(500));
    let started = tokio::time::Instant::now();
    let slow = provider.create(&payment("p1", 100)).await;
    assert!(matches!(&slow, Err(ProviderError::Unavailable(why)) if why.contains("no answer")), "{slow:?}");
    assert!(started.elapsed() < Duration::from_millis(500), "bounded by the timeout, not the latency");
    assert_eq!(gw.api_calls(), 1, "a timeout is not retried");
    assert!(!provider.available(), "one timeout opens the breaker");
}

#[tokio::test]
async fn a_tampered_replayed_or_unsigned_webhook_is_refused() {
    let (gw, mut hooks) = gateway_and_receiver(0).await;
    let provider = client(&gw);
    let created = provider.create(&payment("p1", 500)).await.expect("created");
    gw.authorize(&created.id).expect("known");
    let got = hooks.next().await;
    let signature = got.signature.as_deref();
    assert!(provider.verify_webhook(signature, &got.body, now()).is_ok());

    let tampered = String::from_utf8(got.body.to_vec()).expect("json").replace("\"amount\":500", "\"amount\":5");
    assert_ne!(tampered.as_bytes(), &got.body[..]);
    assert_eq!(provider.verify_webhook(signature, tampered.as_bytes(), now()), Err(WebhookError::BadSignature));
    assert_eq!(provider.verify_webhook(signature, &got.body, now() + 301), Err(WebhookError::Stale), "a replay");
    assert_eq!(provider.verify_webhook(None, &got.body, now()), Err(WebhookError::MissingSignature));
    let other = client_with(&gw, |c| c.webhook_secret = "whsec_other".into());
    assert_eq!(other.verify_webhook(signature, &got.body, now()), Err(WebhookError::BadSignature));

    // Correctly signed, but not an event.
    let junk = b"{\"hello\":1}";
    let header = kirana_payments::signature::sign(SECRET.as_bytes(), now(), junk);
    assert!(matches!(provider.verify_webhook(Some(&header), junk, now()), Err(WebhookError::Malformed(_))));
}

#[tokio::test]
async fn the_controls_work_over_http_too() {
    let (gw, mut hooks) = gateway_and_receiver(0).await;
    let provider = client(&gw);
    let http = reqwest::Client::new();
    let control = format!("{}/control", gw.url());

    assert_eq!(http.get(&control).send().await.expect("answers").status(), 401, "behind the key");
    let set = http.post(&control).bearer_auth(KEY).json(&serde_json::json!({ "drop_webhooks": true }));
    let settings: serde_json::Value = set.send().await.expect("answers").json().await.expect("json");
    assert_eq!(settings["drop_webhooks"], true);
    assert_eq!(settings["webhook_url"], hooks.url.as_str());

    let created = provider.create(&payment("p1", 500)).await.expect("created");
    assert_eq!(click(&created.checkout_url, "authorize").await.status(), StatusCode::SEE_OTHER);
    let events: serde_json::Value = http
        .get(format!("{control}/events"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .expect("json");
    assert_eq!(events[0]["type"], "payment.authorized");
    assert_eq!(events[0]["delivered"], false);
    assert_eq!(events[0]["event"]["payment"]["id"], created.id.as_str());
    let id = events[0]["id"].as_str().expect("an id");

    let redelivered =
        http.post(format!("{control}/events/{id}/redeliver")).bearer_auth(KEY).send().await.expect("answers");
    assert_eq!(redelivered.status(), 200);
    assert_eq!(verified(&provider, &hooks.next().await).id, id);
    let unknown =
        http.post(format!("{control}/events/evt_nope/redeliver")).bearer_auth(KEY).send().await.expect("answers");
    assert_eq!(unknown.status(), 404);

    let fail = http.post(&control).bearer_auth(KEY).json(&serde_json::json!({ "failing": true, "latency_ms": 10 }));
    assert_eq!(fail.send().await.expect("answers").status(), 200);
    assert!(matches!(provider.fetch(&created.id).await, Err(ProviderError::Unavailable(_))));
    let bad = http.post(&control).bearer_auth(KEY).json(&serde_json::json!({ "failing": "yes" }));
    assert_eq!(bad.send().await.expect("answers").status(), 400);
}

#[tokio::test]
async fn serve_stops_when_told() {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("a port");
    let addr = listener.local_addr().expect("bound");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(kirana_payments::gateway::serve(listener, config(), async move {
        let _ = stopped.await;
    }));
    let res = reqwest::get(format!("http://{addr}/pay/pay_nope")).await.expect("answers");
    assert_eq!(res.status(), 404);
    stop.send(()).expect("the server waits");
    tokio::time::timeout(PATIENCE, server).await.expect("stops in time").expect("no panic").expect("no error");
}
