//! HTTP caching: the shopper API's public reads are shareable with strong ETags and 304s; carts,
//! orders and merchants' reads are private; an edit changes the tag.

use axum::http::Method;
use serde_json::json;

use crate::common::{TestApp, slug};

const PUBLIC: &str = "public, max-age=0, s-maxage=30, stale-while-revalidate=60, stale-if-error=86400";

#[tokio::test]
async fn public_reads_revalidate_with_a_strong_etag_and_change_it_on_an_edit() {
    let app = TestApp::new().await;
    let (token, store) = app.merchant_with_store("+919800000101", "Etag Tea").await;
    let product =
        app.create_product(&token, &store, json!({ "title": "Masala chai", "variants": [{ "price": 12000 }] })).await;
    let s = slug(&store);
    let uri = format!("/api/v1/storefront/{s}/products/{}", product["id"].as_str().unwrap());

    for public in [format!("/api/v1/storefront/{s}"), format!("/api/v1/storefront/{s}/products"), uri.clone()] {
        let r = app.get(&public, None).await;
        assert_eq!(r.status, 200, "{public}");
        assert_eq!(r.headers["cache-control"], PUBLIC, "{public}");
        assert!(r.headers.get("vary").is_none(), "{public}: nothing to vary on");
        let etag = r.headers["etag"].to_str().unwrap().to_string();
        assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() > 10, "a strong tag: {etag}");

        // Revalidation: the same tag is a 304 with no body; the same again is the same tag.
        let again = app.call(Method::GET, &public, None, &[("if-none-match", &etag)], None).await;
        assert_eq!(again.status, 304, "{public}");
        assert_eq!(again.body, serde_json::Value::Null, "a 304 has no body");
        assert_eq!(again.headers["etag"], etag.as_str());
        assert_eq!(again.headers["cache-control"], PUBLIC);
        let other = app.call(Method::GET, &public, None, &[("if-none-match", "\"stale\"")], None).await;
        assert_eq!(other.status, 200);
    }

    // An edit: the old tag no longer matches.
    let etag = app.get(&uri, None).await.headers["etag"].to_str().unwrap().to_string();
    let edit = format!("/api/v1/stores/{}/products/{}", store["id"].as_str().unwrap(), product["id"].as_str().unwrap());
    app.patch(&edit, Some(&token), json!({ "title": "Masala chai, 250 g" })).await.expect(200);
    let after = app.call(Method::GET, &uri, None, &[("if-none-match", &etag)], None).await;
    assert_eq!(after.status, 200, "the edit changed the bytes, so the tag");
    assert_eq!(after.body["title"], "Masala chai, 250 g");
    assert_ne!(after.headers["etag"], etag.as_str());
}

#[tokio::test]
async fn carts_orders_errors_and_merchant_reads_are_never_shared() {
    let app = TestApp::new().await;
    let (token, store) = app.merchant_with_store("+919800000102", "Private Tea").await;
    let s = slug(&store);
    let (cart, cart_token) = app.open_cart(&s).await;
    let cart_read = app
        .call(
            Method::GET,
            &format!("/api/v1/storefront/{s}/carts/{cart}"),
            None,
            &[("x-cart-token", &cart_token)],
            None,
        )
        .await;
    assert_eq!(cart_read.status, 200);
    let merchant = app.get(&format!("/api/v1/stores/{}/products", store["id"].as_str().unwrap()), Some(&token)).await;
    assert_eq!(merchant.status, 200);
    let missing = app.get(&format!("/api/v1/storefront/{s}/products/0190a6d6-0000-7000-8000-000000000000"), None).await;
    assert_eq!(missing.status, 404);
    for r in [&cart_read, &merchant, &missing] {
        assert_eq!(r.headers["cache-control"], "private, no-store");
        assert!(r.headers.get("etag").is_none());
    }
}
