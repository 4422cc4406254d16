//! `GET /api/v1/stores/{id}/analytics`: sales per day and best sellers from the rollups the
//! analytics consumer keeps, bounded ranges, field-named errors.

use std::sync::Arc;

use kirana_events::consumers::SalesAnalytics;
use kirana_events::embedded::{Reader, ReaderConfig};
use serde_json::json;

use crate::common::{TestApp, id, slug};

/// Runs the analytics consumer over every shard until it has read everything.
async fn consume(app: &TestApp) {
    for shard in 0..app.storage.shard_count() {
        let mut r = Reader::new(
            Arc::new(SalesAnalytics),
            app.storage.clone(),
            shard,
            ReaderConfig::default(),
            Arc::new(app.clock.clone()),
        );
        while r.step().await.unwrap().read > 0 {}
    }
}

#[tokio::test]
async fn sales_per_day_and_best_sellers_follow_the_orders() {
    let app = TestApp::new().await;
    let (token, store) = app.merchant_with_store("+919800000301", "Chai Point").await;
    let sid = id(&store);
    let s = slug(&store);
    let chai = app.create_product(&token, &store, json!({ "title": "Chai", "price": 2_500, "stock": 100 })).await;
    let samosa = app.create_product(&token, &store, json!({ "title": "Samosa", "price": 1_500, "stock": 100 })).await;
    let chai_v = chai["variants"][0]["id"].as_str().unwrap();
    let samosa_v = samosa["variants"][0]["id"].as_str().unwrap();
    let mut revenue = 0;
    for (v, q) in [(chai_v, 2), (samosa_v, 1), (chai_v, 1)] {
        let order = app.place_order(&s, v, q).await;
        revenue += order["totals"]["total"].as_i64().unwrap();
    }
    // A day later, one more.
    app.clock.advance_secs(86_400);
    let order = app.place_order(&s, samosa_v, 3).await;
    let day2 = order["totals"]["total"].as_i64().unwrap();
    consume(&app).await;

    let a = app.get(&format!("/api/v1/stores/{sid}/analytics"), Some(&token)).await.expect(200);
    assert_eq!(a["days"].as_array().unwrap().len(), 30, "the last 30 days by default");
    assert_eq!(a["totals"]["orders"], 4);
    assert_eq!(a["totals"]["revenue"], revenue + day2);
    assert_eq!(a["totals"]["units"], 7);
    let days = a["days"].as_array().unwrap();
    assert_eq!(days[28]["orders"], 3, "{days:?}");
    assert_eq!(days[29]["orders"], 1);
    assert_eq!(a["top_products"][0]["title"], "Chai", "₹75 of chai beats ₹60 of samosas");
    assert_eq!(a["top_products"][0]["units"], 3);
    assert_eq!(a["top_products"][1]["units"], 4);

    // One day only.
    let to = days[28]["date"].as_str().unwrap();
    let one = app.get(&format!("/api/v1/stores/{sid}/analytics?from={to}&to={to}"), Some(&token)).await.expect(200);
    assert_eq!(one["totals"]["orders"], 3);
    assert_eq!(one["days"].as_array().unwrap().len(), 1);

    // Consuming again changes nothing.
    consume(&app).await;
    let again = app.get(&format!("/api/v1/stores/{sid}/analytics"), Some(&token)).await.expect(200);
    assert_eq!(again["totals"], a["totals"]);

    // Another store's numbers are its own.
    let (other_token, other) = app.merchant_with_store("+919800000302", "Empty Shop").await;
    let b = app.get(&format!("/api/v1/stores/{}/analytics", id(&other)), Some(&other_token)).await.expect(200);
    assert_eq!(b["totals"]["orders"], 0);
}

#[tokio::test]
async fn bad_ranges_are_refused_naming_the_field() {
    let app = TestApp::new().await;
    let (token, store) = app.merchant_with_store("+919800000303", "Range Mart").await;
    let sid = id(&store);
    for (q, field) in [
        ("from=2026-13-01", "from"),
        ("to=yesterday", "to"),
        ("from=2026-02-01&to=2026-01-01", "from"),
        ("from=2024-01-01&to=2026-01-01", "from"),
    ] {
        let r = app.get(&format!("/api/v1/stores/{sid}/analytics?{q}"), Some(&token)).await;
        assert_eq!(r.status, 422, "{q}: {}", r.body);
        assert!(r.is_problem());
        assert!(r.body.to_string().contains(&format!("\"{field}\"")), "{q}: {}", r.body);
    }
}
