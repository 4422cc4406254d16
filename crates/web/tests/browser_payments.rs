//! Paying online, end to end in a real browser: a shopper checks out choosing online payment,
//! lands on the test gateway's page, pays (or declines), and comes back to the order's page on
//! the storefront. The gateway runs on a port of its own and sends its signed webhooks to the
//! platform's, so every part is the real one: the redirect, the provider's page, the webhook, the
//! capture and the return.

// Shared with `browser.rs`, which uses the parts this journey does not (screenshots, timing).
#[allow(dead_code)]
#[path = "browser/chrome.rs"]
mod chrome;
#[allow(dead_code)]
#[path = "browser/server.rs"]
mod server;

use std::sync::Arc;

use chrome::{Browser, eventually};
use kirana_payments::gateway::{GatewayConfig, TestGateway};
use kirana_payments::{HttpGateway, WebhookKind};
use kirana_server::payments::{PaymentSettings, Payments};
use serde_json::{Value, json};
use server::Server;

const KEY: &str = "browser-key";
const SECRET: &str = "browser-secret";

struct Setup {
    server: Server,
    gw: TestGateway,
    /// The product's storefront page.
    product_url: String,
    token: String,
    store_id: String,
}

async fn setup() -> Setup {
    let gw = TestGateway::start(GatewayConfig {
        key: KEY.into(),
        webhook_secret: SECRET.into(),
        webhook_url: None,
        public_url: None,
    })
    .await
    .expect("start the test gateway");
    let client = gw.client_config();
    let server = Server::start_with(move |state, base| {
        let provider = HttpGateway::new(client).expect("a gateway client");
        let settings = PaymentSettings { public_url: base.to_string(), ..PaymentSettings::default() };
        state.with_payments(Payments::new(Some(Arc::new(provider)), settings))
    })
    .await;
    gw.set_webhook_url(format!("{}/api/v1/payments/webhooks/testgw", server.base));

    // The merchant's side through the API: a store that takes online payment, one product.
    let http = reqwest::Client::new();
    let api = |path: &str| format!("{}{path}", server.base);
    let phone = "+919876500001";
    http.post(api("/api/v1/auth/otp")).json(&json!({ "phone": phone })).send().await.unwrap();
    let code = server.notifier.last_code(phone).expect("a sign-in code");
    let verified: Value = http
        .post(api("/api/v1/auth/verify"))
        .json(&json!({ "phone": phone, "code": code }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = verified["token"].as_str().unwrap().to_string();
    let post = |path: String, body: Value| {
        let req = http.post(api(&path)).bearer_auth(&token).json(&body);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let store = post("/api/v1/stores".into(), json!({ "name": "Prepaid Teas" })).await;
    let store_id = store["id"].as_str().unwrap().to_string();
    http.patch(api(&format!("/api/v1/stores/{store_id}")))
        .bearer_auth(&token)
        .json(&json!({ "online_payment_enabled": true }))
        .send()
        .await
        .unwrap();
    let product = post(
        format!("/api/v1/stores/{store_id}/products"),
        json!({ "title": "Darjeeling", "price": 45_000, "stock": 5 }),
    )
    .await;
    let product_url = format!("/{}/product/{}", store["slug"].as_str().unwrap(), product["id"].as_str().unwrap());
    Setup { server, gw, product_url, token, store_id }
}

/// Adds the product to the cart and checks out choosing online payment; returns when the
/// browser is on the gateway's page.
async fn check_out_online(b: &Browser, s: &Setup) {
    b.goto(&s.product_url).await;
    b.click(".product form button[type=submit]").await;
    b.wait_for_path("the cart", |p| p.ends_with("/cart")).await;
    b.click("main a[href$='/checkout']").await;
    b.wait_for_path("checkout", |p| p.ends_with("/checkout")).await;
    let form = "main form[action$='/checkout']";
    b.fill(&format!("{form} input[name=name]"), "Asha Rao").await;
    b.fill(&format!("{form} input[name=phone]"), "9812345678").await;
    b.fill(&format!("{form} input[name=line1]"), "12 MG Road").await;
    b.fill(&format!("{form} input[name=city]"), "Pune").await;
    b.fill(&format!("{form} input[name=postal_code]"), "411001").await;
    b.click(&format!("{form} input[name=payment_method][value=online]")).await;
    b.click(&format!("{form} button[type=submit]")).await;
    let gw = s.gw.url();
    eventually(|| async { b.current_url().await.starts_with(&gw).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("the shopper is sent to the gateway's page"));
}

/// Waits until the order page shows `status`, reloading it as a shopper would: on a busy
/// machine the provider may not have answered the page's own question in time, and then the
/// webhook (or the next look) brings the news.
async fn wait_for_status(b: &Browser, status: &str, payment: &str) {
    let shown = eventually(|| async {
        let here = b.path().await;
        if b.text("#order-status").await == status && b.text("main").await.contains(payment) {
            return Some(());
        }
        b.goto(&here).await;
        None
    })
    .await;
    assert!(shown.is_some(), "the order page never showed {status:?}: {}", b.text("main").await);
}

async fn stock(s: &Setup) -> i64 {
    let products: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/stores/{}/products", s.server.base, s.store_id))
        .bearer_auth(&s.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    products["items"][0]["variants"][0]["stock"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shopper_pays_online_on_the_gateway_page_and_comes_back_to_a_placed_order() {
    let s = setup().await;
    let b = Browser::open(&s.server.base, 1280, 900).await;
    check_out_online(&b, &s).await;
    assert!(b.text("main, body").await.contains("450.00"), "the gateway shows the amount");
    assert_eq!(stock(&s).await, 4, "the unpaid order holds its unit");

    b.click("form[action$='/authorize'] button").await;
    b.wait_for_path("back on the order's page", |p| p.contains("/order/") && p.contains("paid=1")).await;
    wait_for_status(&b, "Placed", "online (paid)").await;
    let page = b.text("main").await;
    assert!(page.contains("Thank you! Your order has been placed."), "{page}");
    assert!(page.contains("online (paid)"), "the payment is shown paid: {page}");
    // The gateway's webhooks reached the platform too (it captured, and said so).
    let delivered = eventually(|| async {
        s.gw.events().iter().any(|e| e.kind == WebhookKind::PaymentCaptured && e.delivered).then_some(())
    })
    .await;
    assert!(delivered.is_some(), "the capture webhook was delivered: {:?}", s.gw.events());
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_comes_back_to_a_cancelled_order_and_the_stock_is_released() {
    let s = setup().await;
    let b = Browser::open(&s.server.base, 1280, 900).await;
    check_out_online(&b, &s).await;
    b.click("form[action$='/decline'] button").await;
    b.wait_for_path("back on the order's page", |p| p.contains("/order/")).await;
    wait_for_status(&b, "Cancelled", "online (voided)").await;
    assert_eq!(stock(&s).await, 5, "the unit is back on sale");
    b.close().await;
}
