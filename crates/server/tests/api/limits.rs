//! Staying up under load: one store's burst is limited without touching the others, and a
//! saturated node sheds by priority, fast, with `Retry-After`.

use kirana_server::ServerConfig;
use kirana_server::admission::{AdmissionConfig, Priority};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn a_store_past_its_rate_gets_429_with_retry_after_while_another_store_is_served() {
    let config = ServerConfig { store_rps: 1, store_burst: 4, ..ServerConfig::default() };
    let app = TestApp::with_config(1, config).await;
    let (token, busy) = app.merchant_with_store("+919800008001", "Flash Store").await;
    let (_, quiet) = app.merchant_with_store("+919800008002", "Quiet Store").await;
    let busy_products = format!("/api/v1/storefront/{}/products", slug(&busy));
    for n in 0..4 {
        assert_eq!(app.get(&busy_products, None).await.status.as_u16(), 200, "request {n} is within the burst");
    }
    let limited = app.get(&busy_products, None).await;
    assert_eq!(limited.status.as_u16(), 429, "{}", limited.body);
    assert!(limited.is_problem());
    assert_eq!(limited.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    // The merchant's own API for that store shares its budget…
    let merchant = app.get(&format!("/api/v1/stores/{}/products", id(&busy)), Some(&token)).await;
    assert_eq!(merchant.status.as_u16(), 429);
    // …and another store has its own.
    let other = app.get(&format!("/api/v1/storefront/{}/products", slug(&quiet)), None).await;
    assert_eq!(other.status.as_u16(), 200);
}

#[tokio::test]
async fn a_saturated_node_sheds_browsing_with_a_fast_503_but_still_answers_probes() {
    let admission = AdmissionConfig { initial: 2.0, min: 2.0, max: 2.0, ..AdmissionConfig::default() };
    let app = TestApp::with_config(1, ServerConfig { admission, ..ServerConfig::default() }).await;
    let (_, store) = app.merchant_with_store("+919800008003", "Busy Node Store").await;
    let products = format!("/api/v1/storefront/{}/products", slug(&store));
    assert_eq!(app.get(&products, None).await.status.as_u16(), 200);

    // Two requests in flight fill the limit (as two slow checkouts would).
    let held = [app.state.admission.try_admit(Priority::Checkout), app.state.admission.try_admit(Priority::Checkout)];
    assert!(held.iter().all(Option::is_some));
    let shed = app.get(&products, None).await;
    assert_eq!(shed.status.as_u16(), 503, "{}", shed.body);
    assert!(shed.is_problem());
    assert_eq!(shed.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let checkout = app.post(&format!("/api/v1/storefront/{}/carts", slug(&store)), None, json!({})).await;
    assert_eq!(checkout.status.as_u16(), 503, "the limit itself is full: even cart writes wait");
    assert_eq!(app.get("/readyz", None).await.status.as_u16(), 200, "probes are never shed");

    drop(held);
    assert_eq!(app.get(&products, None).await.status.as_u16(), 200, "room again");

    // The shed read counts against the storefront's availability objective.
    let slo = app.get("/api/v1/ops/slo", None).await.expect(200);
    let objectives = slo["objectives"].as_array().expect("objectives");
    let availability = objectives.iter().find(|o| o["name"] == "storefront-availability").expect("a default objective");
    assert_eq!((availability["window"]["good"].as_u64(), availability["window"]["total"].as_u64()), (Some(2), Some(3)));
    assert_eq!(availability["target"], 0.9995);
    assert!(availability["budget_remaining"].as_f64().unwrap() < 0.0, "one in three failed: far over budget");
    assert!(availability["alerts"].as_array().unwrap().iter().any(|a| a == "page"), "{availability}");
}

#[tokio::test]
async fn metrics_count_requests_orders_and_the_event_backlog() {
    let app = TestApp::new().await;
    let (token, store) = app.merchant_with_store("+919800008004", "Counted Store").await;
    let product = app.create_product(&token, &store, json!({ "title": "Jaggery", "price": 12_000, "stock": 5 })).await;
    let variant = product["variants"][0]["id"].as_str().unwrap().to_string();
    let order = app.place_order(&slug(&store), &variant, 2).await;
    let total = order["totals"]["total"].as_i64().expect("a total");
    app.get(&format!("/api/v1/storefront/{}/products", slug(&store)), None).await.expect(200);

    let res = app.get("/metrics", None).await;
    assert_eq!(res.status.as_u16(), 200);
    let text = res.body.as_str().map(str::to_string).unwrap_or_else(|| res.body.to_string());
    let has = |needle: &str| text.lines().any(|l| l.starts_with(needle) && !l.ends_with(" 0"));
    assert!(has("kirana_orders_total{currency=\"INR\"} 1"), "one order counted:\n{text}");
    assert!(has(&format!("kirana_order_revenue_minor_total{{currency=\"INR\"}} {total}")), "its revenue, in paise");
    assert!(
        text.lines().any(|l| l.starts_with("kirana_http_requests_total")
            && l.contains("group=\"shopper_api\"")
            && l.contains("journey=\"storefront\"")),
        "requests by group and journey"
    );
    assert!(text.contains("kirana_http_request_duration_seconds_bucket"), "latency as a histogram");
    for op in ["read", "write"] {
        let op = format!("op=\"{op}\"");
        assert!(
            text.lines().any(|l| l.starts_with("kirana_db_seconds_count")
                && l.contains("db=\"s0\"")
                && l.contains("role=\"primary\"")
                && l.contains(&op)),
            "database {op} latency per shard and role:\n{text}"
        );
    }
    // No consumer runs in this app, so everything written is still in the outbox.
    assert!(has("kirana_outbox_rows{shard=\"0\"}"), "the backlog per shard:\n{text}");
    assert!(!text.contains(&id(&store)), "never a store id in a label");
}
