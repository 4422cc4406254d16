//! The storefront's `GET /api/v1/storefront/{slug}/products?q=` with search on: relevance
//! order, typos forgiven, the same response shape, offset cursors.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use kirana_domain::catalog::ProductInput;
use kirana_domain::store::StoreInput;
use kirana_domain::{Clock, Phone, SystemClock};
use kirana_search::{Indexer, IndexerConfig, ProductSearch, Readiness, SearchIndex};
use kirana_server::auth::MemoryNotifier;
use kirana_server::{AppState, ServerConfig};
use kirana_storage::sqlite::{SqliteOptions, Synchronous};
use serde_json::{Value, json};
use tower::ServiceExt;

async fn get(app: &axum::Router, uri: &str) -> Value {
    let res = app.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{uri}");
    serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

#[tokio::test]
async fn the_storefront_list_answers_q_through_the_index_in_relevance_order() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteOptions { synchronous: Synchronous::Normal, ..SqliteOptions::default() };
    let storage = kirana_storage::sqlite::open(dir.path(), 1, &opts).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (m, _) =
        storage.directory().merchant_for_phone(&Phone::parse("+919800000001").unwrap(), clock.now()).await.unwrap();
    let new = StoreInput { name: Some("Chai Corner".into()), ..StoreInput::default() }.into_new().unwrap();
    let store = storage.create_store(m.id, new, clock.now()).await.unwrap();
    let scope = storage.scope_for_owner(m.id, store.id).await.unwrap();
    for (title, description) in
        [("Morning Blend", "a masala chai for early risers"), ("Masala Chai", "spiced"), ("Basmati Rice", "long grain")]
    {
        let input: ProductInput =
            serde_json::from_value(json!({ "title": title, "description": description, "price": 100, "stock": 1 }))
                .unwrap();
        storage.shard(&scope).create_product(&scope, input.into_change(true).unwrap(), clock.now()).await.unwrap();
    }
    let index = Arc::new(SearchIndex::in_memory().unwrap());
    let ready = Readiness::new(1);
    Indexer::new(index.clone(), storage.clone(), 0, IndexerConfig::default(), clock.clone(), ready.clone())
        .catch_up()
        .await
        .unwrap();
    let state = AppState::new(storage.clone(), clock, Arc::new(MemoryNotifier::default()), ServerConfig::default())
        .with_search(ProductSearch::new(storage, index, ready));
    let app = kirana_server::app(state);

    let base = format!("/api/v1/storefront/{}/products", store.slug);
    let body = get(&app, &format!("{base}?q=masla%20chai")).await;
    let titles: Vec<&str> = body["items"].as_array().unwrap().iter().map(|p| p["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["Masala Chai", "Morning Blend"], "title match first, description match next");

    let first = get(&app, &format!("{base}?q=chai&limit=1")).await;
    assert_eq!(first["items"][0]["title"], "Masala Chai");
    let cursor = first["next_cursor"].as_str().expect("a second page");
    let second = get(&app, &format!("{base}?q=chai&limit=1&cursor={cursor}")).await;
    assert_eq!(second["items"][0]["title"], "Morning Blend");
    assert!(second["next_cursor"].is_null());

    // Without q the list is unchanged: every product, newest first.
    assert_eq!(get(&app, &base).await["items"].as_array().unwrap().len(), 3);
}
