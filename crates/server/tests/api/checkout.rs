//! Checkout: no oversell, no coupon over-use, idempotency, and server-side totals.

use std::sync::Arc;

use axum::http::Method;
use serde_json::{Value, json};

use crate::common::*;

async fn store_with_product(app: &TestApp, stock: Option<i64>, price: i64) -> (String, Value, String) {
    let (token, store) = app.merchant_with_store("+919811111111", "Racing Store").await;
    let product =
        app.create_product(&token, &store, json!({ "title": "Limited Tee", "price": price, "stock": stock })).await;
    let variant = product["variants"][0]["id"].as_str().unwrap().to_string();
    (token, store, variant)
}

async fn stock_of(app: &TestApp, token: &str, store: &Value, variant: &str) -> Option<i64> {
    let list = app.get(&format!("/api/v1/stores/{}/products?limit=100", id(store)), Some(token)).await.expect(200);
    for p in list["items"].as_array().unwrap() {
        for v in p["variants"].as_array().unwrap() {
            if v["id"] == variant {
                return v["stock"].as_i64();
            }
        }
    }
    panic!("variant {variant} not found")
}

async fn all_orders(app: &TestApp, token: &str, store: &Value) -> Vec<Value> {
    let mut out = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let uri = match &cursor {
            Some(c) => format!("/api/v1/stores/{}/orders?limit=100&cursor={c}", id(store)),
            None => format!("/api/v1/stores/{}/orders?limit=100", id(store)),
        };
        let page = app.get(&uri, Some(token)).await.expect(200);
        out.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_racing_checkouts_for_fifty_units_make_exactly_fifty_orders() {
    let app = Arc::new(TestApp::new().await);
    let (token, store, variant) = store_with_product(&app, Some(50), 49_900).await;
    let s = slug(&store);
    let mut carts = vec![];
    for _ in 0..200 {
        let (cart, ct) = app.open_cart(&s).await;
        app.set_item(&s, &cart, &ct, &variant, 1).await.expect(200);
        carts.push((cart, ct));
    }
    let mut tasks = vec![];
    for (cart, ct) in carts {
        let (app, s) = (app.clone(), s.clone());
        tasks.push(tokio::spawn(async move { app.checkout(&s, &cart, &ct, None, shopper()).await }));
    }
    let (mut placed, mut refused) = (0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            201 => placed += 1,
            409 => {
                refused += 1;
                assert!(r.is_problem());
                assert_eq!(r.body["type"], "https://kirana.dev/problems/insufficient-stock");
                assert_eq!(r.body["shortages"][0]["variant_id"], variant.as_str(), "the refusal names the variant");
                assert_eq!(r.body["shortages"][0]["available"], 0);
                assert!(r.body["detail"].as_str().unwrap().contains("Limited Tee"), "{}", r.body);
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert_eq!((placed, refused), (50, 150));
    assert_eq!(stock_of(&app, &token, &store, &variant).await, Some(0));
    assert_eq!(all_orders(&app, &token, &store).await.len(), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coupon_with_a_usage_limit_is_never_over_used() {
    let app = Arc::new(TestApp::new().await);
    let (token, store, variant) = store_with_product(&app, None, 10_000).await;
    let coupon = app
        .post(
            &format!("/api/v1/stores/{}/coupons", id(&store)),
            Some(&token),
            json!({ "code": "first10", "kind": "flat", "value": 1_000, "usage_limit": 10 }),
        )
        .await
        .expect(201);
    assert_eq!(coupon["code"], "FIRST10");
    let s = slug(&store);
    let mut tasks = vec![];
    for _ in 0..40 {
        let (cart, ct) = app.open_cart(&s).await;
        app.set_item(&s, &cart, &ct, &variant, 1).await.expect(200);
        let (app, s) = (app.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            let mut body = shopper();
            body["coupon"] = json!("first10");
            app.checkout(&s, &cart, &ct, None, body).await
        }));
    }
    let mut discounted = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            201 => {
                discounted += 1;
                assert_eq!(r.body["totals"]["discount"], 1_000);
                assert_eq!(r.body["coupon_code"], "FIRST10");
            }
            409 => {
                assert_eq!(r.body["type"], "https://kirana.dev/problems/coupon-rejected");
                assert_eq!(r.body["errors"][0]["field"], "coupon");
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert_eq!(discounted, 10);
    let c = app.get(&format!("/api/v1/stores/{}/coupons/{}", id(&store), id(&coupon)), Some(&token)).await.expect(200);
    assert_eq!(c["used_count"], 10);
}

#[tokio::test]
async fn repeating_a_checkout_with_the_same_key_returns_the_same_order() {
    let app = TestApp::new().await;
    let (token, store, variant) = store_with_product(&app, Some(10), 5_000).await;
    let s = slug(&store);
    let (cart, ct) = app.open_cart(&s).await;
    app.set_item(&s, &cart, &ct, &variant, 3).await.expect(200);
    let first = app.checkout(&s, &cart, &ct, Some("order-attempt-1"), shopper()).await;
    assert_eq!(first.status, 201);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let again = app.checkout(&s, &cart, &ct, Some("order-attempt-1"), shopper()).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.body, first.body, "the replay is the same order, byte for byte");
    assert_eq!(all_orders(&app, &token, &store).await.len(), 1);
    assert_eq!(stock_of(&app, &token, &store, &variant).await, Some(7), "stock was taken once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_repeats_of_one_key_make_one_order() {
    let app = Arc::new(TestApp::new().await);
    let (token, store, variant) = store_with_product(&app, Some(10), 5_000).await;
    let s = slug(&store);
    let (cart, ct) = app.open_cart(&s).await;
    app.set_item(&s, &cart, &ct, &variant, 2).await.expect(200);
    let mut tasks = vec![];
    for _ in 0..20 {
        let (app, s, cart, ct) = (app.clone(), s.clone(), cart.clone(), ct.clone());
        tasks.push(tokio::spawn(async move { app.checkout(&s, &cart, &ct, Some("same-key"), shopper()).await }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
        ids.insert(id(&r.body));
    }
    assert_eq!(ids.len(), 1, "every repeat got the one order");
    assert_eq!(all_orders(&app, &token, &store).await.len(), 1);
    assert_eq!(stock_of(&app, &token, &store, &variant).await, Some(8));
}

#[tokio::test]
async fn a_key_reused_for_a_different_request_is_refused() {
    let app = TestApp::new().await;
    let (_, store, variant) = store_with_product(&app, Some(10), 5_000).await;
    let s = slug(&store);
    let (cart, ct) = app.open_cart(&s).await;
    app.set_item(&s, &cart, &ct, &variant, 1).await.expect(200);
    app.checkout(&s, &cart, &ct, Some("k1"), shopper()).await.expect(201);
    let mut other = shopper();
    other["address"]["city"] = json!("Mumbai");
    let r = app.checkout(&s, &cart, &ct, Some("k1"), other).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["type"], "https://kirana.dev/problems/idempotency-key-reused");
    assert_eq!(r.body["errors"][0]["field"], "Idempotency-Key");
}

#[tokio::test]
async fn a_checked_out_cart_is_closed() {
    let app = TestApp::new().await;
    let (_, store, variant) = store_with_product(&app, Some(10), 5_000).await;
    let s = slug(&store);
    let (cart, ct) = app.open_cart(&s).await;
    app.set_item(&s, &cart, &ct, &variant, 1).await.expect(200);
    let order = app.checkout(&s, &cart, &ct, None, shopper()).await.expect(201);
    let again = app.checkout(&s, &cart, &ct, None, shopper()).await;
    assert_eq!(again.status, 409);
    assert_eq!(again.body["type"], "https://kirana.dev/problems/cart-closed");
    assert!(again.body["detail"].as_str().unwrap().contains(&format!("#{}", order["number"])));
    assert_eq!(app.set_item(&s, &cart, &ct, &variant, 2).await.status, 409);
    let view = app
        .call(Method::GET, &format!("/api/v1/storefront/{s}/carts/{cart}"), None, &[("x-cart-token", &ct)], None)
        .await
        .expect(200);
    assert_eq!(view["status"], "checked_out");
}

#[tokio::test]
async fn totals_are_computed_by_the_server() {
    let app = TestApp::new().await;
    let token = app.sign_in("+919822222222").await;
    let store = app
        .create_store(&token, json!({ "name": "Taxed", "delivery_fee": 4_000, "free_delivery_threshold": 100_000, "tax_rate_bps": 1_800, "prices_include_tax": false }))
        .await;
    let tee = app.create_product(&token, &store, json!({ "title": "Tee", "price": 19_999, "stock": 100 })).await;
    let cap = app.create_product(&token, &store, json!({ "title": "Cap", "price": 12_345 })).await;
    app.post(
        &format!("/api/v1/stores/{}/coupons", id(&store)),
        Some(&token),
        json!({ "code": "TENOFF", "kind": "percent", "value": 10, "max_discount": 5_000 }),
    )
    .await
    .expect(201);
    let s = slug(&store);
    let (cart, ct) = app.open_cart(&s).await;
    app.set_item(&s, &cart, &ct, tee["variants"][0]["id"].as_str().unwrap(), 2).await.expect(200);
    let view = app.set_item(&s, &cart, &ct, cap["variants"][0]["id"].as_str().unwrap(), 1).await.expect(200);
    // Cart preview: subtotal 2×199.99 + 123.45 = 523.43; no coupon; delivery 40 (goods < 1000);
    // tax 18 % of 523.43 = 94.2174 → 94.22.
    assert_eq!(
        view["totals"],
        json!({ "subtotal": 52_343, "discount": 0, "delivery_fee": 4_000, "tax": 9_422, "total": 65_765 })
    );
    let mut body = shopper();
    body["coupon"] = json!("tenoff");
    // A client-sent price is not even a field: prices come from the catalog only.
    let mut with_price = body.clone();
    with_price["total"] = json!(1);
    assert_eq!(app.checkout(&s, &cart, &ct, None, with_price).await.status, 422);
    let order = app.checkout(&s, &cart, &ct, None, body).await.expect(201);
    // 10 % of 523.43 = 52.343 → 52.34 (under the 50.00 cap? no: capped at 50.00).
    // goods 473.43; delivery 40; tax 18 % of 473.43 = 85.2174 → 85.22; total 598.65.
    assert_eq!(
        order["totals"],
        json!({ "subtotal": 52_343, "discount": 5_000, "delivery_fee": 4_000, "tax": 8_522, "total": 59_865 })
    );
    assert_eq!(order["currency"], "INR");
    assert_eq!(order["items"][0]["unit_price"], 19_999);
    assert_eq!(order["items"][0]["line_total"], 39_998);

    // Free delivery once goods after discount reach the threshold.
    let (cart, ct) = app.open_cart(&s).await;
    app.set_item(&s, &cart, &ct, tee["variants"][0]["id"].as_str().unwrap(), 6).await.expect(200);
    let order = app.checkout(&s, &cart, &ct, None, shopper()).await.expect(201);
    assert_eq!(order["totals"]["delivery_fee"], 0);
    assert_eq!(order["totals"]["total"], 119_994 + 21_599);
}

#[tokio::test]
async fn a_shortage_names_every_item_that_ran_out() {
    let app = TestApp::new().await;
    let token = app.sign_in("+919833333333").await;
    let store = app.create_store(&token, json!({ "name": "Short" })).await;
    let a = app
        .create_product(&token, &store, json!({ "title": "Kurta", "options": ["Size"], "variants": [{ "options": ["M"], "price": 100, "stock": 5 }, { "options": ["L"], "price": 100, "stock": 1 }] }))
        .await;
    let b = app.create_product(&token, &store, json!({ "title": "Dupatta", "price": 100, "stock": 2 })).await;
    let s = slug(&store);
    let (cart, ct) = app.open_cart(&s).await;
    let m = a["variants"][0]["id"].as_str().unwrap();
    let l = a["variants"][1]["id"].as_str().unwrap();
    let d = b["variants"][0]["id"].as_str().unwrap();
    app.set_item(&s, &cart, &ct, m, 1).await.expect(200);
    app.set_item(&s, &cart, &ct, l, 1).await.expect(200);
    app.set_item(&s, &cart, &ct, d, 2).await.expect(200);
    // Someone else buys the last L and one Dupatta first.
    let (c2, t2) = app.open_cart(&s).await;
    app.set_item(&s, &c2, &t2, l, 1).await.expect(200);
    app.set_item(&s, &c2, &t2, d, 1).await.expect(200);
    app.checkout(&s, &c2, &t2, None, shopper()).await.expect(201);

    let r = app.checkout(&s, &cart, &ct, None, shopper()).await;
    assert_eq!(r.status, 409);
    let short: Vec<(String, i64)> = r.body["shortages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["title"].as_str().unwrap().to_string(), x["available"].as_i64().unwrap()))
        .collect();
    assert_eq!(short, [("Kurta / L".to_string(), 0), ("Dupatta".to_string(), 1)]);
    // Nothing was taken by the refused checkout.
    let kurta = app.get(&format!("/api/v1/stores/{}/products/{}", id(&store), id(&a)), Some(&token)).await.expect(200);
    assert_eq!(kurta["variants"][0]["stock"], 5);
    // Adding more than is left is refused up front too.
    let r = app.set_item(&s, &cart, &ct, m, 6).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.body["shortages"][0]["title"], "Kurta / M");
}

#[tokio::test]
async fn checkout_refuses_what_the_store_does_not_take() {
    let app = TestApp::new().await;
    let (_, store, variant) = store_with_product(&app, None, 100).await;
    let s = slug(&store);
    let (cart, ct) = app.open_cart(&s).await;
    let r = app.checkout(&s, &cart, &ct, None, shopper()).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["errors"][0]["field"], "cart", "an empty cart is refused");
    app.set_item(&s, &cart, &ct, &variant, 1).await.expect(200);
    let mut online = shopper();
    online["payment_method"] = json!("online");
    let r = app.checkout(&s, &cart, &ct, None, online).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["errors"][0]["field"], "payment_method");
    let mut coupon = shopper();
    coupon["coupon"] = json!("NOSUCH");
    let r = app.checkout(&s, &cart, &ct, None, coupon).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["errors"][0]["field"], "coupon");
}

#[tokio::test]
async fn orders_keep_the_price_they_were_sold_at() {
    let app = TestApp::new().await;
    let (token, store, variant) = store_with_product(&app, Some(10), 5_000).await;
    let order = app.place_order(&slug(&store), &variant, 2).await;
    let product =
        app.get(&format!("/api/v1/stores/{}/products?limit=1", id(&store)), Some(&token)).await.expect(200)["items"][0]
            .clone();
    let mut patch = json!({ "title": "Renamed", "variants": [{ "id": variant, "price": 9_999, "stock": 10 }] });
    patch["variants"][0]["options"] = json!([]);
    app.patch(&format!("/api/v1/stores/{}/products/{}", id(&store), id(&product)), Some(&token), patch)
        .await
        .expect(200);
    let again =
        app.get(&format!("/api/v1/stores/{}/orders/{}", id(&store), id(&order)), Some(&token)).await.expect(200);
    assert_eq!(again["items"][0]["unit_price"], 5_000);
    assert_eq!(again["items"][0]["title"], "Limited Tee");
    assert_eq!(again["totals"]["subtotal"], 10_000);
}

#[tokio::test]
async fn a_shopper_sees_their_order_only_with_their_token() {
    let app = TestApp::new().await;
    let (_, store, variant) = store_with_product(&app, Some(10), 5_000).await;
    let s = slug(&store);
    let (cart, ct) = app.open_cart(&s).await;
    app.set_item(&s, &cart, &ct, &variant, 1).await.expect(200);
    let order = app.checkout(&s, &cart, &ct, None, shopper()).await;
    let location = order.headers.get("location").unwrap().to_str().unwrap().to_string();
    let order = order.expect(201);
    let seen = app.get(&format!("{location}?token={ct}"), None).await.expect(200);
    assert_eq!(seen["id"], order["id"]);
    assert_eq!(seen["status"], "placed");
    assert!(seen.get("customer").is_none() && seen["history"][0].get("actor").is_none(), "no staff detail leaks");
    let by_header = app.call(Method::GET, &location, None, &[("x-cart-token", &ct)], None).await.expect(200);
    assert_eq!(by_header["id"], order["id"]);
    let (_, other_token) = app.open_cart(&s).await;
    assert_eq!(app.get(&format!("{location}?token={other_token}"), None).await.status, 404);
    assert_eq!(app.get(&location, None).await.status, 422);
}

#[tokio::test]
async fn customers_are_recorded_once_per_phone() {
    let app = TestApp::new().await;
    let (token, store, variant) = store_with_product(&app, None, 1_000).await;
    let s = slug(&store);
    app.place_order(&s, &variant, 1).await;
    app.place_order(&s, &variant, 2).await;
    let list = app.get(&format!("/api/v1/stores/{}/customers", id(&store)), Some(&token)).await.expect(200);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["phone"], "+919812345678");
    assert_eq!(items[0]["orders_count"], 2);
    assert_eq!(items[0]["total_spent"], 3_000);
    let one =
        app.get(&format!("/api/v1/stores/{}/customers/{}", id(&store), id(&items[0])), Some(&token)).await.expect(200);
    assert_eq!(one["name"], "Asha Rao");
}

#[tokio::test]
async fn an_idle_cart_expires() {
    let app = TestApp::new().await;
    let (_, store, variant) = store_with_product(&app, None, 1_000).await;
    let s = slug(&store);
    let (cart, ct) = app.open_cart(&s).await;
    app.set_item(&s, &cart, &ct, &variant, 1).await.expect(200);
    app.clock.advance_secs(29 * 24 * 3600);
    // Touching the cart keeps it alive another 30 days.
    app.set_item(&s, &cart, &ct, &variant, 2).await.expect(200);
    app.clock.advance_secs(29 * 24 * 3600);
    app.call(Method::GET, &format!("/api/v1/storefront/{s}/carts/{cart}"), None, &[("x-cart-token", &ct)], None)
        .await
        .expect(200);
    app.clock.advance_secs(2 * 24 * 3600);
    let r = app
        .call(Method::GET, &format!("/api/v1/storefront/{s}/carts/{cart}"), None, &[("x-cart-token", &ct)], None)
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(app.checkout(&s, &cart, &ct, None, shopper()).await.status, 404);
}

#[tokio::test]
async fn placing_an_order_writes_its_event_in_the_same_transaction() {
    let app = TestApp::new().await;
    let (token, store, variant) = store_with_product(&app, Some(3), 1_000).await;
    let order = app.place_order(&slug(&store), &variant, 1).await;
    let me = app.get("/api/v1/me", Some(&token)).await.expect(200);
    let merchant = kirana_domain::MerchantId::parse(me["id"].as_str().unwrap()).unwrap();
    let store_id = kirana_domain::StoreId::parse(&id(&store)).unwrap();
    let scope = app.storage.scope_for_owner(merchant, store_id).await.unwrap();
    let events = app.storage.shard(&scope).events(&scope, 0, 100).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|(_, e)| e.kind.as_str()).collect();
    assert!(kinds.ends_with(&["customer.upserted", "order.placed"]), "{kinds:?}");
    let (_, placed) = events.last().unwrap();
    assert_eq!(placed.store_id, store_id);
    assert_eq!(placed.payload["id"], order["id"]);
    assert_eq!(placed.version, 1);
    // Positions only grow.
    assert!(events.windows(2).all(|w| w[0].0 < w[1].0));
}
