//! Online payment on the pages, in process, against the test gateway: the storefront sends an
//! online checkout to the provider's page and, on the shopper's return, asks the provider
//! rather than wait for a webhook; checkout offers online payment as unavailable while the
//! provider is down; the dashboard refunds part of a payment (never more than is left) and shows
//! the store's balance, ledger and payouts on its Money page.

mod support;

use std::sync::Arc;
use std::time::Duration;

use kirana_payments::HttpGateway;
use kirana_payments::gateway::{GatewayConfig, TestGateway};
use kirana_server::payments::{PaymentSettings, Payments};
use serde_json::json;
use support::*;

const KEY: &str = "web-key";
const SECRET: &str = "web-secret";

struct Paying {
    p: Platform,
    gw: TestGateway,
    shop: Shop,
    product: String,
}

async fn paying() -> Paying {
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
    let provider = HttpGateway::new(client).expect("a gateway client");
    let settings = PaymentSettings { public_url: PUBLIC_URL.into(), ..PaymentSettings::default() };
    let p = Platform::new().await.with_payments(Payments::new(Some(Arc::new(provider)), settings));
    let shop = p.shop("+919800007001", "Online Tea House").await;
    p.patch_store(&shop, json!({ "online_payment_enabled": true })).await;
    let product = id(&p.product(&shop, json!({ "title": "Assam", "price": 30_000, "stock": 5 })).await);
    Paying { p, gw, shop, product }
}

/// Checks out one unit from a fresh browser; the checkout's answer.
async fn check_out(x: &Paying, method: &str) -> Page {
    let (b, slug) = (x.p.browser(), x.shop.slug());
    let page = b.get(&format!("/{slug}/product/{}", x.product)).await;
    page.html();
    let added = b
        .post(
            &format!("/{slug}/cart"),
            &[("mode", &page.field("mode")), ("variant_id", &page.field("variant_id")), ("quantity", "1")],
        )
        .await;
    assert_eq!(added.status.as_u16(), 303);
    let form = b.get(&format!("/{slug}/checkout")).await;
    form.html();
    let fields = [
        ("_csrf", form.csrf()),
        ("key", form.field("key")),
        ("name", "Asha Rao".into()),
        ("phone", "+919812345678".into()),
        ("line1", "12 MG Road".into()),
        ("city", "Pune".into()),
        ("postal_code", "411001".into()),
        ("payment_method", method.into()),
    ];
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    b.post(&format!("/{slug}/checkout"), &fields).await
}

/// Pays at the gateway (the shopper's click on its page) and follows its redirect back: the
/// order page the shopper sees.
async fn pay_and_return(x: &Paying, sent_to: &str) -> Page {
    click_and_return(x, sent_to, "authorize").await
}

/// The shopper's click on the gateway's page (`authorize` or `decline`), and the way back.
async fn click_and_return(x: &Paying, sent_to: &str, button: &str) -> Page {
    let gid = sent_to.rsplit('/').next().unwrap();
    x.gw.set_drop_webhooks(true);
    let click = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{}/pay/{gid}/{button}", x.gw.url()))
        .send()
        .await
        .expect("the gateway's page answers");
    assert_eq!(click.status().as_u16(), 303);
    let back = click.headers()["location"].to_str().unwrap().to_string();
    // The shopper's browser lands on the return address the platform gave the provider.
    let path = back.strip_prefix(PUBLIC_URL).unwrap_or_else(|| panic!("back to this platform: {back}"));
    x.p.browser().get(path).await
}

#[tokio::test]
async fn an_online_checkout_goes_to_the_provider_and_the_return_shows_the_order_placed() {
    let x = paying().await;
    let sent = check_out(&x, "online").await;
    assert_eq!(sent.status.as_u16(), 303, "{}", sent.body);
    let to = sent.redirect().to_string();
    assert!(to.starts_with(&x.gw.url()), "to the provider's page: {to}");
    // No webhook will come (dropped): the order page asks the provider on the way back.
    let page = pay_and_return(&x, &to).await;
    let html = page.expect(200);
    assert!(html.contains(r#"id="order-status">Placed"#), "{html}");
    assert!(html.contains("Thank you! Your order has been placed."), "{html}");
    let orders = x.p.orders(&x.shop).await;
    assert_eq!((orders[0]["status"].as_str(), orders[0]["payment_status"].as_str()), (Some("placed"), Some("paid")));
}

#[tokio::test]
async fn a_declined_payment_returns_to_a_cancelled_order() {
    let x = paying().await;
    let sent = check_out(&x, "online").await;
    let page = click_and_return(&x, sent.redirect(), "decline").await;
    let html = page.expect(200);
    assert!(html.contains(r#"id="order-status">Cancelled"#), "{html}");
    let product = x.p.merchant_product(&x.shop, &x.product).await;
    assert_eq!(product["variants"][0]["stock"], 5, "the unit is back");
}

#[tokio::test]
async fn while_the_provider_is_down_checkout_offers_cash_on_delivery_only() {
    let x = paying().await;
    x.gw.set_failing(true);
    // The first attempt finds out (its order is cancelled at once, its stock back) …
    let first = check_out(&x, "online").await;
    assert_eq!(first.status.as_u16(), 303);
    assert!(first.redirect().contains("unpaid=1"), "{}", first.redirect());
    // … and after the breaker opens the form says so, and refuses online payment before it
    // takes anything.
    for _ in 0..2 {
        check_out(&x, "online").await;
    }
    let refused = check_out(&x, "online").await;
    assert_eq!(refused.status.as_u16(), 503, "{}", refused.body);
    assert!(refused.body.contains("Online payment is unavailable right now"), "{}", refused.body);
    assert!(refused.body.contains("(unavailable right now)"), "the option is shown disabled");
    let cod = check_out(&x, "cod").await;
    assert_eq!(cod.status.as_u16(), 303);
    assert!(cod.redirect().contains("placed=1"));
    let product = x.p.merchant_product(&x.shop, &x.product).await;
    assert_eq!(product["variants"][0]["stock"], 4, "only the cash order holds stock");
}

#[tokio::test]
async fn the_dashboard_refunds_part_of_a_payment_and_shows_the_money() {
    let x = paying().await;
    let sent = check_out(&x, "online").await;
    pay_and_return(&x, sent.redirect()).await.expect(200);
    let order = id(&x.p.orders(&x.shop).await[0]);

    let b = x.p.browser();
    sign_in_with(&x.p, &b, "+919800007001").await;
    let base = format!("/dashboard/stores/{}", x.shop.id());
    let page = b.get(&format!("{base}/orders/{order}")).await;
    let html = page.expect(200);
    assert!(html.contains(r#"id="refund-form""#), "a paid order can be refunded: {html}");
    let csrf = page.csrf();

    let refunds = format!("{base}/orders/{order}/refunds");
    let done = b.post(&refunds, &[("_csrf", &csrf), ("amount", "100.50"), ("reason", "one tin dented")]).await;
    assert_eq!(done.status.as_u16(), 303, "{}", done.body);
    let too_much = b.post(&refunds, &[("_csrf", &csrf), ("amount", "200")]).await;
    assert_eq!(too_much.status.as_u16(), 422);
    assert!(too_much.body.contains("exceeds what is left to refund"), "{}", too_much.body);
    let bad = b.post(&refunds, &[("_csrf", &csrf), ("amount", "lots")]).await;
    assert_eq!(bad.status.as_u16(), 422);
    assert!(bad.body.contains("must be an amount"), "{}", bad.body);

    let orders = x.p.orders(&x.shop).await;
    assert_eq!(orders[0]["payment_status"], "partially_refunded");
    let money = b.get(&format!("{base}/money")).await;
    let html = money.expect(200);
    // ₹300 sale, ₹6 fee (2 %), ₹100.50 refunded: ₹193.50 owed, none of it due until delivery.
    assert!(html.contains(r#"id="balance-total">₹193.50"#), "{html}");
    assert!(html.contains(r#"id="balance-available">₹0.00"#), "{html}");
    assert!(html.contains("refund") && html.contains("sale") && html.contains("fee"), "{html}");
}
