//! `/api/v1/stores/{id}/webhooks`: registering endpoints (the secret shown once), listing,
//! deleting, field-named errors, the delivery log with status codes, and isolation between
//! stores. Delivery itself (signatures, retries, timeouts) is tested in `kirana-events`.

use std::sync::Arc;

use axum::http::Method;
use kirana_domain::Clock;
use kirana_events::consumers::Webhooks;
use kirana_events::embedded::{Reader, ReaderConfig};
use kirana_storage::{AttemptRecord, Outcome};
use serde_json::{Value, json};

use crate::common::{TestApp, id};

/// Runs the `webhooks` consumer over every shard: one delivery per (endpoint, event).
async fn fan_out(app: &TestApp) {
    for shard in 0..app.storage.shard_count() {
        let mut r = Reader::new(
            Arc::new(Webhooks),
            app.storage.clone(),
            shard,
            ReaderConfig::default(),
            Arc::new(app.clock.clone()),
        );
        while r.step().await.unwrap().read > 0 {}
    }
}

/// Records one attempt at every due delivery, as the worker would after an HTTP exchange.
async fn attempt_all(app: &TestApp, status: u16, error: Option<&str>) -> usize {
    let now = app.clock.now();
    let mut n = 0;
    for shard in app.storage.all_shards() {
        for due in shard.webhooks().due_webhook_deliveries(now, 100, &[]).await.unwrap() {
            let outcome =
                if (200..300).contains(&status) { Outcome::Delivered } else { Outcome::RetryAt(now.plus_secs(60)) };
            let record = AttemptRecord {
                key: due.key,
                at: now,
                duration_ms: 42,
                status_code: Some(status),
                error: error.map(String::from),
                outcome,
                disable_after_ms: 86_400_000,
            };
            shard.webhooks().record_webhook_attempt(record).await.unwrap();
            n += 1;
        }
    }
    n
}

fn hooks_uri(store: &Value) -> String {
    format!("/api/v1/stores/{}/webhooks", id(store))
}

fn fields(problem: &Value) -> Vec<String> {
    problem["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn a_webhook_is_registered_listed_read_and_deleted_and_its_secret_shown_once() {
    let app = TestApp::new().await;
    let (token, store) = app.merchant_with_store("+919800000401", "Chai Point").await;
    let uri = hooks_uri(&store);
    let created = app
        .post(
            &uri,
            Some(&token),
            json!({ "url": "https://Hooks.Example.com/kirana", "event_types": ["order.placed", "order.transitioned"] }),
        )
        .await
        .expect(201);
    assert_eq!(created["url"], "https://hooks.example.com/kirana");
    assert_eq!(created["event_types"], json!(["order.placed", "order.transitioned"]));
    assert_eq!(created["active"], true);
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_") && secret.len() >= 40, "{secret}");
    let hid = id(&created);

    let all = app
        .post(&uri, Some(&token), json!({ "url": "https://example.com/all", "event_types": ["*", "order.placed"] }))
        .await
        .expect(201);
    assert_eq!(all["event_types"], json!(["*"]));
    assert_ne!(all["secret"], created["secret"]);

    let list = app.get(&uri, Some(&token)).await.expect(200);
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["id"], all["id"], "newest first");
    assert!(items.iter().all(|w| w.get("secret").is_none()), "the secret is never listed");
    let page = app.get(&format!("{uri}?limit=1"), Some(&token)).await.expect(200);
    let next = page["next_cursor"].as_str().unwrap();
    let rest = app.get(&format!("{uri}?limit=1&cursor={next}"), Some(&token)).await.expect(200);
    assert_eq!(rest["items"][0]["id"], created["id"]);
    assert!(rest["next_cursor"].is_null());

    let one = app.get(&format!("{uri}/{hid}"), Some(&token)).await.expect(200);
    assert_eq!(one["url"], created["url"]);
    assert!(one.get("secret").is_none(), "nor read back");

    let r = app.call(Method::DELETE, &format!("{uri}/{hid}"), Some(&token), &[], None).await;
    assert_eq!(r.status, 204);
    let r = app.get(&format!("{uri}/{hid}"), Some(&token)).await;
    assert_eq!(r.status, 404);
    assert!(r.is_problem());
    assert_eq!(app.call(Method::DELETE, &format!("{uri}/{hid}"), Some(&token), &[], None).await.status, 404);
    assert_eq!(app.get(&format!("{uri}/{hid}/deliveries"), Some(&token)).await.status, 404);
    assert_eq!(app.get(&uri, Some(&token)).await.expect(200)["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn bad_webhook_input_names_every_field() {
    let app = TestApp::new().await;
    let (token, store) = app.merchant_with_store("+919800000402", "Chai Point").await;
    let uri = hooks_uri(&store);
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (
            json!({ "url": "http://example.com/h", "event_types": ["order.shipped", "cart.updated"] }),
            vec!["url", "event_types[0]", "event_types[1]"],
        ),
        (json!({ "url": "https://10.0.0.7/h", "event_types": ["*"] }), vec!["url"]),
        (json!({ "url": "https://169.254.169.254/latest/meta-data", "event_types": ["*"] }), vec!["url"]),
        (json!({ "url": "https://admin:pw@example.com/h", "event_types": ["*"] }), vec!["url"]),
        (json!({ "url": "not a url", "event_types": [] }), vec!["url", "event_types"]),
        (json!({ "url": "https://example.com/h" }), vec!["event_types"]),
        (json!({ "url": "https://example.com/h", "event_types": "*" }), vec!["event_types"]),
        (json!({ "url": "https://example.com/h", "event_types": ["*"], "secret": "mine" }), vec!["secret"]),
        (json!({ "url": format!("https://example.com/{}", "a".repeat(3000)), "event_types": ["*"] }), vec!["url"]),
    ];
    for (body, expected) in cases {
        let r = app.post(&uri, Some(&token), body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {}", r.body);
        assert!(r.is_problem());
        assert_eq!(fields(&r.body), expected, "{body}: {}", r.body);
    }
    let r = app.post(&uri, Some(&token), json!({ "url": "http://example.com/h", "event_types": ["x"] })).await;
    let message = r.body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("https://"), "{message}");
    assert!(r.body["errors"][1]["message"].as_str().unwrap().contains("order.placed"), "it lists the types");
    assert!(app.get(&uri, Some(&token)).await.expect(200)["items"].as_array().unwrap().is_empty());
    // Local receivers are for development.
    app.post(&uri, Some(&token), json!({ "url": "http://127.0.0.1:9000/h", "event_types": ["*"] })).await.expect(201);
    app.post(&uri, Some(&token), json!({ "url": "http://localhost:9000/h", "event_types": ["*"] })).await.expect(201);
}

#[tokio::test]
async fn a_store_has_at_most_twenty_endpoints() {
    let app = TestApp::new().await;
    let (token, store) = app.merchant_with_store("+919800000403", "Chai Point").await;
    let uri = hooks_uri(&store);
    for n in 0..20 {
        let body = json!({ "url": format!("https://example.com/{n}"), "event_types": ["*"] });
        app.post(&uri, Some(&token), body).await.expect(201);
    }
    let r = app.post(&uri, Some(&token), json!({ "url": "https://example.com/21", "event_types": ["*"] })).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body["type"].as_str().unwrap().ends_with("limit-reached"));
}

#[tokio::test]
async fn the_delivery_log_shows_each_event_its_attempts_and_status_codes() {
    let app = TestApp::new().await;
    let (token, store) = app.merchant_with_store("+919800000404", "Chai Point").await;
    let uri = hooks_uri(&store);
    let products = app
        .post(&uri, Some(&token), json!({ "url": "https://example.com/products", "event_types": ["product.created"] }))
        .await
        .expect(201);
    let pid = id(&products);
    let log_uri = format!("{uri}/{pid}/deliveries");
    assert!(app.get(&log_uri, Some(&token)).await.expect(200)["items"].as_array().unwrap().is_empty());

    app.create_product(&token, &store, json!({ "title": "Chai", "price": 2_500 })).await;
    app.clock.advance_secs(1);
    app.create_product(&token, &store, json!({ "title": "Samosa", "price": 1_500 })).await;
    app.post(&format!("/api/v1/stores/{}/categories", id(&store)), Some(&token), json!({ "name": "Tea" }))
        .await
        .expect(201);
    fan_out(&app).await;
    fan_out(&app).await;

    let log = app.get(&log_uri, Some(&token)).await.expect(200);
    let items = log["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "one delivery per subscribed event, queued once: {log}");
    assert!(items.iter().all(|d| d["event_type"] == "product.created" && d["status"] == "pending"));
    assert!(items.iter().all(|d| d["attempts"] == 0 && d["recent_attempts"].as_array().unwrap().is_empty()));
    assert!(items[0]["event_id"].as_str().unwrap() > items[1]["event_id"].as_str().unwrap(), "newest first");

    // The endpoint answers 500, then 200.
    assert_eq!(attempt_all(&app, 500, Some("HTTP 500: database down")).await, 2);
    let log = app.get(&log_uri, Some(&token)).await.expect(200);
    for d in log["items"].as_array().unwrap() {
        assert_eq!(d["status"], "pending");
        assert_eq!(d["attempts"], 1);
        assert_eq!(d["last_status"], 500);
        assert_eq!(d["last_error"], "HTTP 500: database down");
        assert!(d["next_attempt_at"].is_string());
        assert_eq!(d["recent_attempts"][0]["status_code"], 500);
        assert_eq!(d["recent_attempts"][0]["duration_ms"], 42);
    }
    let failing = app.get(&format!("{uri}/{pid}"), Some(&token)).await.expect(200);
    assert!(failing["failing_since"].is_string());
    app.clock.advance_secs(60);
    assert_eq!(attempt_all(&app, 200, None).await, 2);
    assert_eq!(attempt_all(&app, 200, None).await, 0, "nothing left to send");

    let page = app.get(&format!("{log_uri}?limit=1"), Some(&token)).await.expect(200);
    let d = &page["items"][0];
    assert_eq!(d["status"], "delivered");
    assert_eq!((d["attempts"].as_i64(), d["last_status"].as_i64()), (Some(2), Some(200)));
    assert!(d["last_error"].is_null() && d["next_attempt_at"].is_null() && d["delivered_at"].is_string());
    let tries: Vec<i64> =
        d["recent_attempts"].as_array().unwrap().iter().map(|a| a["status_code"].as_i64().unwrap()).collect();
    assert_eq!(tries, [200, 500], "newest try first");
    let next = page["next_cursor"].as_str().unwrap();
    let rest = app.get(&format!("{log_uri}?limit=1&cursor={next}"), Some(&token)).await.expect(200);
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest["next_cursor"].is_null());
    let ids: Vec<&str> = [d, &rest["items"][0]].iter().map(|d| d["event_id"].as_str().unwrap()).collect();
    assert_ne!(ids[0], ids[1]);
    let healthy = app.get(&format!("{uri}/{pid}"), Some(&token)).await.expect(200);
    assert!(healthy["failing_since"].is_null(), "a success ends the failing run");

    let r = app.get(&format!("{log_uri}?limit=500"), Some(&token)).await;
    assert_eq!(r.status, 422);
    assert_eq!(fields(&r.body), ["limit"]);
}

#[tokio::test]
async fn one_store_cannot_see_or_touch_another_stores_webhooks() {
    let app = TestApp::with_shards(4).await;
    let (ta, a) = app.merchant_with_store("+919800000405", "Alpha").await;
    let (tb, b) = app.merchant_with_store("+919800000406", "Beta").await;
    let b_hook = app
        .post(&hooks_uri(&b), Some(&tb), json!({ "url": "https://beta.example.com/h", "event_types": ["*"] }))
        .await
        .expect(201);
    let bid = id(&b_hook);
    // A second store of A's own: B's endpoint id is not reachable through it either.
    let a2 = app.create_store(&ta, json!({ "name": "Alpha Two" })).await;
    for store in [&a, &a2, &b] {
        let base = hooks_uri(store);
        for (method, path) in [
            (Method::GET, format!("{base}/{bid}")),
            (Method::DELETE, format!("{base}/{bid}")),
            (Method::GET, format!("{base}/{bid}/deliveries")),
        ] {
            let r = app.call(method.clone(), &path, Some(&ta), &[], None).await;
            assert_eq!(r.status, 404, "{method} {path}: {}", r.body);
        }
    }
    let r =
        app.post(&hooks_uri(&b), Some(&ta), json!({ "url": "https://evil.example.com/h", "event_types": ["*"] })).await;
    assert_eq!(r.status, 404);
    assert!(app.get(&hooks_uri(&a), Some(&ta)).await.expect(200)["items"].as_array().unwrap().is_empty());
    let theirs = app.get(&hooks_uri(&b), Some(&tb)).await.expect(200);
    assert_eq!(theirs["items"].as_array().unwrap().len(), 1, "B's endpoint survived, alone");

    // A's events never reach B's endpoint.
    app.create_product(&ta, &a, json!({ "title": "Chai", "price": 2_500 })).await;
    fan_out(&app).await;
    let log = app.get(&format!("{}/{bid}/deliveries", hooks_uri(&b)), Some(&tb)).await.expect(200);
    assert!(
        log["items"].as_array().unwrap().iter().all(|d| d["event_type"] == "store.created"),
        "only B's own events: {log}"
    );
}

#[tokio::test]
async fn the_webhook_routes_are_described_in_openapi() {
    let app = TestApp::new().await;
    let spec = app.get("/openapi.json", None).await.expect(200);
    let paths = &spec["paths"];
    for (path, methods) in [
        ("/api/v1/stores/{store_id}/webhooks", &["get", "post"][..]),
        ("/api/v1/stores/{store_id}/webhooks/{webhook_id}", &["get", "delete"][..]),
        ("/api/v1/stores/{store_id}/webhooks/{webhook_id}/deliveries", &["get"][..]),
    ] {
        for m in methods {
            assert!(paths[path][m].is_object(), "{m} {path} is missing from /openapi.json");
        }
    }
    assert!(spec["components"]["schemas"]["WebhookInput"].is_object());
    assert!(spec["components"]["schemas"]["WebhookDelivery"].is_object());
}
