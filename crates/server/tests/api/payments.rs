//! Online payments against the test gateway (`kirana_payments::gateway`): the happy path, a
//! declined payment, duplicate and out-of-order webhooks, a dropped webhook fixed by the
//! reconciler, a hold that runs out, a gateway outage (breaker open, cash on delivery still
//! works), refunds that never exceed the capture, fees and payouts.
//!
//! The gateway records every webhook it would send; the tests deliver those exact bytes and
//! signatures to the app's webhook route (the gateway's own delivery is tested in its crate).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use kirana_domain::Clock;
use kirana_payments::gateway::{GatewayConfig, SentEvent, TestGateway};
use kirana_payments::{HttpGateway, WebhookKind};
use kirana_server::payments::{PaymentSettings, Payments};
use serde_json::{Value, json};

use crate::common::*;

const KEY: &str = "test-key";
const SECRET: &str = "test-secret";
const PRICE: i64 = 50_000;

struct Shop {
    app: TestApp,
    gw: TestGateway,
    token: String,
    store: Value,
    variant: String,
}

async fn shop() -> Shop {
    let gw = TestGateway::start(GatewayConfig {
        key: KEY.into(),
        webhook_secret: SECRET.into(),
        webhook_url: None,
        public_url: None,
    })
    .await
    .expect("start the test gateway");
    let mut client = gw.client_config();
    client.timeout = Duration::from_millis(500);
    let provider = HttpGateway::new(client).expect("a client for the gateway");
    let app = TestApp::new().await.with_payments(Payments::new(Some(Arc::new(provider)), PaymentSettings::default()));
    // Webhooks are signed with the gateway's real time; the app's clock must agree with it.
    let real_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    app.clock.advance_secs(real_now - T0 / 1000);
    let (token, store) = app.merchant_with_store("+919822222222", "Prepaid Spices").await;
    app.patch(&format!("/api/v1/stores/{}", id(&store)), Some(&token), json!({ "online_payment_enabled": true }))
        .await
        .expect(200);
    let product = app.create_product(&token, &store, json!({ "title": "Saffron", "price": PRICE, "stock": 10 })).await;
    let variant = product["variants"][0]["id"].as_str().unwrap().to_string();
    Shop { app, gw, token, store, variant }
}

impl Shop {
    fn at(&self, rest: &str) -> String {
        format!("/api/v1/stores/{}{rest}", id(&self.store))
    }

    async fn checkout(&self, method: &str, quantity: i64) -> Resp {
        let s = slug(&self.store);
        let (cart, ct) = self.app.open_cart(&s).await;
        self.app.set_item(&s, &cart, &ct, &self.variant, quantity).await.expect(200);
        let mut body = shopper();
        body["payment_method"] = json!(method);
        self.app.checkout(&s, &cart, &ct, None, body).await
    }

    async fn stock(&self) -> i64 {
        let p = self.app.get(&self.at("/products"), Some(&self.token)).await.expect(200);
        p["items"][0]["variants"][0]["stock"].as_i64().unwrap()
    }

    async fn order(&self, order: &Value) -> Value {
        self.app.get(&self.at(&format!("/orders/{}", id(order))), Some(&self.token)).await.expect(200)
    }

    async fn payment(&self, order: &Value) -> Value {
        self.app.get(&self.at(&format!("/orders/{}/payment", id(order))), Some(&self.token)).await.expect(200)
    }

    async fn ledger(&self) -> Value {
        self.app.get(&self.at("/ledger?limit=100"), Some(&self.token)).await.expect(200)
    }

    /// The gateway's id of an order's payment, from the page the shopper was sent to.
    fn gateway_id(order: &Value) -> String {
        let url = order["payment_url"].as_str().expect("an online order comes with the provider's page");
        url.rsplit('/').next().unwrap().to_string()
    }

    fn events(&self, kind: WebhookKind) -> Vec<SentEvent> {
        self.gw.events().into_iter().filter(|e| e.kind == kind).collect()
    }

    /// Delivers a recorded webhook to the app, as the gateway would.
    async fn deliver(&self, e: &SentEvent) -> Resp {
        self.deliver_raw(e.body.clone(), &e.signature).await
    }

    async fn deliver_raw(&self, body: Vec<u8>, signature: &str) -> Resp {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/payments/webhooks/testgw")
            .header("content-type", "application/json")
            .header(kirana_payments::signature::SIGNATURE_HEADER, signature)
            .body(Body::from(body))
            .unwrap();
        self.app.send(req).await
    }

    /// Every entry's lines sum to zero; returns the sales, fees, refunds and payouts posted.
    async fn balanced_entries(&self) -> Vec<(String, i64)> {
        let ledger = self.ledger().await;
        let mut out = vec![];
        for e in ledger["items"].as_array().unwrap() {
            let lines = e["lines"].as_array().unwrap();
            let sum: i64 = lines.iter().map(|l| l["amount"].as_i64().unwrap()).sum();
            assert_eq!(sum, 0, "an unbalanced entry: {e}");
            let merchant: i64 =
                lines.iter().filter(|l| l["account"] == "merchant").map(|l| l["amount"].as_i64().unwrap()).sum();
            out.push((e["kind"].as_str().unwrap().to_string(), merchant));
        }
        out
    }

    async fn advance_to(&self, status: &str, order: &Value) {
        let path = ["accepted", "packed", "shipped", "delivered"];
        for to in path {
            self.app
                .post(&self.at(&format!("/orders/{}/transitions", id(order))), Some(&self.token), json!({ "to": to }))
                .await
                .expect(200);
            if to == status {
                return;
            }
        }
    }

    /// Pays an online order at the gateway and delivers the authorization; the app captures.
    async fn pay(&self, order: &Value) {
        self.gw.authorize(&Self::gateway_id(order)).expect("the gateway knows the payment");
        let auth = self.events(WebhookKind::PaymentAuthorized).pop().expect("an authorization webhook");
        assert_eq!(self.deliver(&auth).await.status, 200);
    }
}

#[tokio::test]
async fn an_online_order_holds_stock_until_paid_then_is_placed_captured_and_booked() {
    let s = shop().await;
    let order = s.checkout("online", 2).await.expect(201);
    assert_eq!(order["status"], "pending_payment");
    assert_eq!(s.stock().await, 8, "the unpaid order holds its stock");
    let page = order["payment_url"].as_str().unwrap();
    assert!(page.starts_with(&s.gw.url()), "the shopper is sent to the provider's page: {page}");
    // The merchant's dashboard does not count it as waiting yet.
    assert_eq!(s.payment(&order).await["payment"]["state"], "created");

    s.pay(&order).await;
    let placed = s.order(&order).await;
    assert_eq!(placed["status"], "placed");
    assert_eq!(placed["payment_status"], "paid");
    let payment = s.payment(&order).await["payment"].clone();
    assert_eq!((payment["state"].clone(), payment["captured"].clone()), (json!("captured"), json!(2 * PRICE)));
    assert_eq!(s.gw.events().iter().filter(|e| e.kind == WebhookKind::PaymentCaptured).count(), 1, "captured once");

    // Sale and the standard plan's fee (2 %, capped at ₹20 = 2000 paise).
    let entries = s.balanced_entries().await;
    assert!(entries.contains(&("sale".into(), -2 * PRICE)), "{entries:?}");
    assert!(entries.contains(&("fee".into(), 2_000)), "{entries:?}");
    let balance = s.ledger().await["balance"].clone();
    assert_eq!(balance["balance"], 2 * PRICE - 2_000);
    assert_eq!(balance["available"], 0, "nothing is paid out before delivery");
    assert_eq!(balance["held"], 2 * PRICE - 2_000);
}

#[tokio::test]
async fn a_declined_payment_cancels_the_order_and_releases_its_stock() {
    let s = shop().await;
    let order = s.checkout("online", 3).await.expect(201);
    assert_eq!(s.stock().await, 7);
    s.gw.decline(&Shop::gateway_id(&order)).unwrap();
    let failed = s.events(WebhookKind::PaymentFailed).pop().unwrap();
    assert_eq!(s.deliver(&failed).await.status, 200);
    let o = s.order(&order).await;
    assert_eq!((o["status"].clone(), o["payment_status"].clone()), (json!("cancelled"), json!("voided")));
    assert_eq!(s.stock().await, 10, "the hold is released");
    assert_eq!(s.payment(&order).await["payment"]["state"], "failed");
    assert!(s.balanced_entries().await.is_empty(), "no money moved");
}

#[tokio::test]
async fn duplicate_and_out_of_order_webhooks_change_nothing_twice() {
    let s = shop().await;
    let order = s.checkout("online", 1).await.expect(201);
    s.gw.set_drop_webhooks(true);
    s.pay(&order).await;
    let auth = s.events(WebhookKind::PaymentAuthorized).pop().unwrap();
    let capture = s.events(WebhookKind::PaymentCaptured).pop().expect("the app captured: the gateway said so");
    // The capture news again, the authorization again (now stale), then the capture once more.
    for (e, outcome) in [(&capture, "unchanged"), (&auth, "duplicate"), (&capture, "duplicate")] {
        let r = s.deliver(e).await;
        assert_eq!((r.status.as_u16(), r.body["outcome"].as_str()), (200, Some(outcome)), "{}", r.body);
    }
    let sales = s.balanced_entries().await.into_iter().filter(|(k, _)| k == "sale").count();
    assert_eq!(sales, 1, "one sale, however often the news came");
    assert_eq!(s.order(&order).await["status"], "placed");

    // A webhook that was tampered with, or is not signed, is refused and changes nothing.
    let mut forged = capture.body.clone();
    let at = forged.len() / 2;
    forged[at] ^= 1;
    assert_eq!(s.deliver_raw(forged, &capture.signature).await.status, 401);
    assert_eq!(s.deliver_raw(capture.body.clone(), "t=1,v1=00").await.status, 401);
    // A genuine webhook replayed past the window (five minutes) is refused too.
    s.app.clock.advance_secs(6 * 60);
    let replay = s.deliver(&capture).await;
    assert_eq!(replay.status, 401);
    assert!(replay.body["detail"].as_str().unwrap().contains("replay window"), "{}", replay.body);
}

#[tokio::test]
async fn a_dropped_webhook_is_made_good_by_the_reconciler() {
    let s = shop().await;
    let order = s.checkout("online", 1).await.expect(201);
    s.gw.set_drop_webhooks(true);
    s.gw.authorize(&Shop::gateway_id(&order)).unwrap();
    // The webhook never arrives: the order waits, paid at the provider.
    assert_eq!(s.order(&order).await["status"], "pending_payment");
    let payments = s.app.state.payments.clone();
    let early = payments.reconcile_once(&s.app.storage, s.app.clock.now()).await.unwrap();
    assert_eq!(early.checked, 0, "a payment is not asked about before it has had time to report");
    s.app.clock.advance_secs(180);
    let r = payments.reconcile_once(&s.app.storage, s.app.clock.now()).await.unwrap();
    assert_eq!((r.checked, r.moved), (1, 1), "{r:?}");
    let o = s.order(&order).await;
    assert_eq!((o["status"].clone(), o["payment_status"].clone()), (json!("placed"), json!("paid")));
    assert_eq!(s.payment(&order).await["payment"]["state"], "captured");
}

#[tokio::test]
async fn an_unpaid_hold_runs_out_and_its_stock_comes_back() {
    let s = shop().await;
    let order = s.checkout("online", 4).await.expect(201);
    let gid = Shop::gateway_id(&order);
    s.app.clock.advance_secs(14 * 60);
    let r = s.app.state.payments.reconcile_once(&s.app.storage, s.app.clock.now()).await.unwrap();
    assert_eq!((r.checked, r.expired), (1, 0), "asked about, but still within its hold: {r:?}");
    assert_eq!(s.stock().await, 6);
    s.app.clock.advance_secs(2 * 60);
    let r = s.app.state.payments.reconcile_once(&s.app.storage, s.app.clock.now()).await.unwrap();
    assert_eq!(r.expired, 1, "{r:?}");
    assert_eq!(s.order(&order).await["status"], "cancelled");
    assert_eq!(s.stock().await, 10);
    let remote = s.gw.authorize(&gid).expect("the gateway knows it");
    assert_eq!(remote.status, kirana_payments::RemoteStatus::Cancelled, "cancelled at the provider: it cannot be paid");
}

#[tokio::test]
async fn a_payment_made_after_its_hold_ran_out_is_voided_not_taken() {
    let s = shop().await;
    let order = s.checkout("online", 4).await.expect(201);
    let gid = Shop::gateway_id(&order);
    // The provider is unreachable when the hold runs out: the hold ends here anyway.
    s.gw.set_failing(true);
    s.app.clock.advance_secs(16 * 60);
    let r = s.app.state.payments.reconcile_once(&s.app.storage, s.app.clock.now()).await.unwrap();
    assert_eq!(r.expired, 1, "{r:?}");
    assert_eq!(s.stock().await, 10);
    // It recovers and the shopper, still on its page, pays.
    s.gw.set_failing(false);
    s.gw.authorize(&gid).unwrap();
    let auth = s.events(WebhookKind::PaymentAuthorized).pop().unwrap();
    // Sixteen minutes on, by the app's clock: signed now, as the gateway would sign it then.
    let now = s.app.clock.now().millis() / 1000;
    let r =
        s.deliver_raw(auth.body.clone(), &kirana_payments::signature::sign(SECRET.as_bytes(), now, &auth.body)).await;
    assert_eq!((r.status.as_u16(), r.body["outcome"].as_str()), (200, Some("unchanged")), "{}", r.body);
    assert_eq!(s.gw.decline(&gid).unwrap().status, kirana_payments::RemoteStatus::Cancelled, "voided at the provider");
    assert_eq!(s.order(&order).await["status"], "cancelled");
    assert!(s.balanced_entries().await.is_empty(), "no money was taken");
}

#[tokio::test]
async fn with_the_gateway_down_online_payment_is_unavailable_and_cash_on_delivery_works() {
    let s = shop().await;
    s.gw.set_failing(true);
    // The first failures cost an order each, cancelled at once with its stock back.
    for _ in 0..3 {
        let r = s.checkout("online", 1).await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(r.body["detail"].as_str().unwrap().contains("payment_method"), "{}", r.body);
    }
    assert_eq!(s.stock().await, 10, "no stock held by orders that could not be paid");
    // The breaker is open: online checkout is refused without calling the gateway and without
    // spending the cart.
    let calls = s.gw.api_calls();
    let shop_slug = slug(&s.store);
    let (cart, ct) = s.app.open_cart(&shop_slug).await;
    s.app.set_item(&shop_slug, &cart, &ct, &s.variant, 1).await.expect(200);
    let mut online = shopper();
    online["payment_method"] = json!("online");
    let r = s.app.checkout(&shop_slug, &cart, &ct, None, online).await;
    assert_eq!(r.status, 503);
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(s.gw.api_calls(), calls, "no call while the breaker is open");
    // The same cart pays cash on delivery.
    let cod = s.app.checkout(&shop_slug, &cart, &ct, None, shopper()).await.expect(201);
    assert_eq!(cod["status"], "placed");
    assert_eq!(s.stock().await, 9);
}

#[tokio::test]
async fn partial_refunds_never_exceed_the_capture() {
    let s = shop().await;
    let order = s.checkout("online", 2).await.expect(201);
    s.pay(&order).await;
    let refunds = s.at(&format!("/orders/{}/refunds", id(&order)));
    let first = s.app.post(&refunds, Some(&s.token), json!({ "amount": 30_000, "reason": "one pack damaged" })).await;
    let first = first.expect(201);
    assert_eq!(first["status"], "succeeded");
    let too_much = s.app.post(&refunds, Some(&s.token), json!({ "amount": 70_001 })).await;
    assert_eq!(too_much.status, 422, "{}", too_much.body);
    assert_eq!(too_much.body["errors"][0]["field"], "amount");
    assert_eq!(s.order(&order).await["payment_status"], "partially_refunded");
    s.app.post(&refunds, Some(&s.token), json!({ "amount": 70_000 })).await.expect(201);
    assert_eq!(s.order(&order).await["payment_status"], "refunded");
    let p = s.payment(&order).await;
    assert_eq!((p["payment"]["refunded"].clone(), p["refunds"].as_array().unwrap().len()), (json!(100_000), 2));
    // Nothing is left: any further refund is refused, and the gateway refunded exactly twice.
    assert_eq!(s.app.post(&refunds, Some(&s.token), json!({ "amount": 1 })).await.status, 422);
    assert_eq!(s.events(WebhookKind::RefundProcessed).len(), 2);
    let refunded: i64 = s.balanced_entries().await.iter().filter(|(k, _)| k == "refund").map(|(_, a)| a).sum();
    assert_eq!(refunded, 100_000);
    // Bad input names its field.
    let zero = s.app.post(&refunds, Some(&s.token), json!({ "amount": 0 })).await;
    assert_eq!((zero.status.as_u16(), zero.body["errors"][0]["field"].as_str()), (422, Some("amount")));
}

#[tokio::test]
async fn rejecting_a_prepaid_order_refunds_it_in_full() {
    let s = shop().await;
    let order = s.checkout("online", 1).await.expect(201);
    s.pay(&order).await;
    let o = s
        .app
        .post(&s.at(&format!("/orders/{}/transitions", id(&order))), Some(&s.token), json!({ "to": "rejected" }))
        .await
        .expect(200);
    assert_eq!((o["status"].clone(), o["payment_status"].clone()), (json!("rejected"), json!("refunded")));
    assert_eq!(s.stock().await, 10);
}

#[tokio::test]
async fn payouts_settle_delivered_orders_net_of_fees_once_per_run() {
    let s = shop().await;
    let online = s.checkout("online", 1).await.expect(201);
    s.pay(&online).await;
    let cod = s.checkout("cod", 1).await.expect(201);
    let waiting = s.checkout("online", 1).await.expect(201);
    s.pay(&waiting).await;
    s.advance_to("delivered", &online).await;
    s.advance_to("delivered", &cod).await;
    // Fees: 2 % of ₹500 = ₹10 on each delivered or captured order.
    let balance = s.ledger().await["balance"].clone();
    assert_eq!(balance["fees"], 3 * 1_000);
    assert_eq!(balance["available"], PRICE - 1_000 - 1_000, "the delivered online sale, less both delivered fees");

    let payments = s.app.state.payments.clone();
    let slot = s.app.clock.now();
    assert_eq!(payments.pay_out_once(&s.app.storage, slot, s.app.clock.now()).await.unwrap(), 1);
    assert_eq!(payments.pay_out_once(&s.app.storage, slot, s.app.clock.now()).await.unwrap(), 0, "never twice");
    let list = s.app.get(&s.at("/payouts"), Some(&s.token)).await.expect(200);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["amount"], PRICE - 2_000);
    let after = s.ledger().await["balance"].clone();
    assert_eq!(after["available"], 0);
    assert_eq!(after["paid_out"], PRICE - 2_000);
    assert_eq!(after["balance"], PRICE - 1_000, "what is left is the undelivered order's sale less its fee");
    // A later run with nothing newly settled pays nothing.
    s.app.clock.advance_secs(8 * 3600);
    assert_eq!(payments.pay_out_once(&s.app.storage, s.app.clock.now(), s.app.clock.now()).await.unwrap(), 0);
}
