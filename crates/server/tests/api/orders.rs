//! The order state machine, its history and restocking.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::common::*;

const ALL: [&str; 8] = ["placed", "accepted", "packed", "shipped", "delivered", "rejected", "cancelled", "returned"];

/// The allowed edges, written out independently of the domain code.
const ALLOWED: &[(&str, &str)] = &[
    ("placed", "accepted"),
    ("placed", "rejected"),
    ("placed", "cancelled"),
    ("accepted", "packed"),
    ("accepted", "cancelled"),
    ("packed", "shipped"),
    ("packed", "cancelled"),
    ("shipped", "delivered"),
    ("delivered", "returned"),
];

/// How to reach each state from `placed`.
fn path_to(state: &str) -> &'static [&'static str] {
    match state {
        "placed" => &[],
        "accepted" => &["accepted"],
        "packed" => &["accepted", "packed"],
        "shipped" => &["accepted", "packed", "shipped"],
        "delivered" => &["accepted", "packed", "shipped", "delivered"],
        "rejected" => &["rejected"],
        "cancelled" => &["cancelled"],
        "returned" => &["accepted", "packed", "shipped", "delivered", "returned"],
        _ => unreachable!(),
    }
}

struct Shop {
    token: String,
    store: Value,
    variant: String,
    product: String,
}

async fn shop(app: &TestApp) -> Shop {
    let (token, store) = app.merchant_with_store("+919844444444", "Orders Store").await;
    let product = app.create_product(&token, &store, json!({ "title": "Saree", "price": 150_000, "stock": 100 })).await;
    Shop { variant: product["variants"][0]["id"].as_str().unwrap().to_string(), product: id(&product), token, store }
}

impl Shop {
    async fn step(&self, app: &TestApp, order: &str, to: &str) -> Resp {
        app.post(
            &format!("/api/v1/stores/{}/orders/{order}/transitions", id(&self.store)),
            Some(&self.token),
            json!({ "to": to }),
        )
        .await
    }

    async fn stock(&self, app: &TestApp) -> i64 {
        let p = app
            .get(&format!("/api/v1/stores/{}/products/{}", id(&self.store), self.product), Some(&self.token))
            .await
            .expect(200);
        p["variants"][0]["stock"].as_i64().unwrap()
    }

    async fn order_in(&self, app: &TestApp, state: &str, quantity: i64) -> String {
        let order = app.place_order(&slug(&self.store), &self.variant, quantity).await;
        for step in path_to(state) {
            self.step(app, &id(&order), step).await.expect(200);
        }
        id(&order)
    }
}

#[tokio::test]
async fn every_invalid_transition_is_refused_with_409_and_changes_nothing() {
    let app = TestApp::new().await;
    let shop = shop(&app).await;
    for from in ALL {
        let order = shop.order_in(&app, from, 1).await;
        for to in ALL {
            if ALLOWED.contains(&(from, to)) {
                continue;
            }
            let before = shop.stock(&app).await;
            let r = shop.step(&app, &order, to).await;
            assert_eq!(r.status, 409, "{from} → {to} should be refused: {}", r.body);
            assert_eq!(r.body["type"], "https://kirana.dev/problems/invalid-transition");
            let now = app
                .get(&format!("/api/v1/stores/{}/orders/{order}", id(&shop.store)), Some(&shop.token))
                .await
                .expect(200);
            assert_eq!(now["status"], from, "a refused step leaves the order as it was");
            assert_eq!(shop.stock(&app).await, before, "a refused step moves no stock");
        }
    }
}

#[tokio::test]
async fn every_allowed_transition_is_taken_and_recorded() {
    let app = TestApp::new().await;
    let shop = shop(&app).await;
    for (from, to) in ALLOWED {
        let order = shop.order_in(&app, from, 1).await;
        let after = shop.step(&app, &order, to).await.expect(200);
        assert_eq!(after["status"], *to);
        let last = after["history"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["from"], *from);
        assert_eq!(last["to"], *to);
        assert!(last["actor"].as_str().unwrap().starts_with("merchant:"));
    }
}

#[tokio::test]
async fn rejecting_cancelling_and_returning_put_the_stock_back() {
    let app = TestApp::new().await;
    let shop = shop(&app).await;
    for (from, to) in [
        ("placed", "rejected"),
        ("placed", "cancelled"),
        ("accepted", "cancelled"),
        ("packed", "cancelled"),
        ("delivered", "returned"),
    ] {
        let order = shop.order_in(&app, from, 3).await;
        let before = shop.stock(&app).await;
        shop.step(&app, &order, to).await.expect(200);
        assert_eq!(shop.stock(&app).await, before + 3, "{from} → {to} restocks");
    }
    // Moving forward never touches stock.
    let order = shop.order_in(&app, "placed", 2).await;
    let before = shop.stock(&app).await;
    for to in ["accepted", "packed", "shipped", "delivered"] {
        shop.step(&app, &order, to).await.expect(200);
    }
    assert_eq!(shop.stock(&app).await, before);
}

#[tokio::test]
async fn restocked_units_can_be_sold_again() {
    let app = TestApp::new().await;
    let (token, store) = app.merchant_with_store("+919855555555", "Last One").await;
    let p = app.create_product(&token, &store, json!({ "title": "Only one", "price": 100, "stock": 1 })).await;
    let variant = p["variants"][0]["id"].as_str().unwrap();
    let s = slug(&store);
    let order = app.place_order(&s, variant, 1).await;
    let (cart, ct) = app.open_cart(&s).await;
    assert_eq!(app.set_item(&s, &cart, &ct, variant, 1).await.status, 409, "sold out");
    app.post(
        &format!("/api/v1/stores/{}/orders/{}/transitions", id(&store), id(&order)),
        Some(&token),
        json!({ "to": "cancelled" }),
    )
    .await
    .expect(200);
    app.set_item(&s, &cart, &ct, variant, 1).await.expect(200);
    app.checkout(&s, &cart, &ct, None, shopper()).await.expect(201);
}

#[tokio::test]
async fn history_records_who_when_what_and_the_tracking_number() {
    let app = TestApp::new().await;
    let shop = shop(&app).await;
    let order = shop.order_in(&app, "packed", 1).await;
    let uri = format!("/api/v1/stores/{}/orders/{order}/transitions", id(&shop.store));
    app.clock.advance_secs(3600);
    let shipped = app
        .post(&uri, Some(&shop.token), json!({ "to": "shipped", "note": "Handed to courier", "tracking": "AWB123456" }))
        .await
        .expect(200);
    assert_eq!(shipped["tracking"], "AWB123456");
    let history = shipped["history"].as_array().unwrap();
    let steps: Vec<&str> = history.iter().map(|h| h["to"].as_str().unwrap()).collect();
    assert_eq!(steps, ["placed", "accepted", "packed", "shipped"]);
    assert_eq!(history[0]["actor"], "shopper");
    let last = &history[3];
    assert_eq!(last["note"], "Handed to courier");
    assert_eq!(last["tracking"], "AWB123456");
    assert_eq!(last["at"], "2026-01-01T01:00:00Z");
    // Tracking belongs to shipping only.
    let r = app.post(&uri, Some(&shop.token), json!({ "to": "delivered", "tracking": "X" })).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["errors"][0]["field"], "tracking");
    // The shopper sees the tracking number but not the merchant's note or name.
    let public = app.get(&format!("/api/v1/storefront/{}/orders/{order}", slug(&shop.store)), None).await;
    assert_eq!(public.status, 422, "the shopper needs their token");
}

#[tokio::test]
async fn cash_is_marked_paid_on_delivery_and_voided_on_cancel() {
    let app = TestApp::new().await;
    let shop = shop(&app).await;
    let delivered = shop.order_in(&app, "delivered", 1).await;
    let o =
        app.get(&format!("/api/v1/stores/{}/orders/{delivered}", id(&shop.store)), Some(&shop.token)).await.expect(200);
    assert_eq!(o["payment_status"], "paid");
    let returned = shop.step(&app, &delivered, "returned").await.expect(200);
    assert_eq!(returned["payment_status"], "refund_due");
    let cancelled = shop.order_in(&app, "cancelled", 1).await;
    let o =
        app.get(&format!("/api/v1/stores/{}/orders/{cancelled}", id(&shop.store)), Some(&shop.token)).await.expect(200);
    assert_eq!(o["payment_status"], "voided");
    assert_eq!(o["next_statuses"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_transitions_move_an_order_once() {
    let app = Arc::new(TestApp::new().await);
    let shop = Arc::new(shop(&app).await);
    let order = shop.order_in(&app, "placed", 2).await;
    let before = shop.stock(&app).await;
    let mut tasks = vec![];
    for i in 0..20 {
        let (app, shop, order) = (app.clone(), shop.clone(), order.clone());
        let to = if i % 2 == 0 { "cancelled" } else { "rejected" };
        tasks.push(tokio::spawn(async move { shop.step(&app, &order, to).await.status.as_u16() }));
    }
    let mut codes = vec![];
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 409).count(), 19);
    assert_eq!(shop.stock(&app).await, before + 2, "restocked exactly once");
}

#[tokio::test]
async fn orders_are_listed_newest_first_and_filtered_by_status() {
    let app = TestApp::new().await;
    let shop = shop(&app).await;
    let mut placed = vec![];
    for _ in 0..5 {
        placed.push(shop.order_in(&app, "placed", 1).await);
    }
    let accepted = shop.order_in(&app, "accepted", 1).await;
    let base = format!("/api/v1/stores/{}/orders", id(&shop.store));
    let all = app.get(&format!("{base}?limit=4"), Some(&shop.token)).await.expect(200);
    let first: Vec<String> = all["items"].as_array().unwrap().iter().map(id).collect();
    assert_eq!(first[0], accepted);
    assert_eq!(first[1], placed[4]);
    let next = all["next_cursor"].as_str().unwrap();
    let rest = app.get(&format!("{base}?limit=4&cursor={next}"), Some(&shop.token)).await.expect(200);
    let second: Vec<String> = rest["items"].as_array().unwrap().iter().map(id).collect();
    assert_eq!(second, [placed[1].clone(), placed[0].clone()]);
    assert!(rest["next_cursor"].is_null());
    let only = app.get(&format!("{base}?status=accepted"), Some(&shop.token)).await.expect(200);
    assert_eq!(only["items"].as_array().unwrap().len(), 1);
    assert_eq!(only["items"][0]["id"], accepted.as_str());
    assert_eq!(app.get(&format!("{base}?status=lost"), Some(&shop.token)).await.status, 422);
    // Numbers are the store's own, in order.
    let numbers: Vec<i64> = all["items"].as_array().unwrap().iter().map(|o| o["number"].as_i64().unwrap()).collect();
    assert_eq!(numbers, [1006, 1005, 1004, 1003]);
}
