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
