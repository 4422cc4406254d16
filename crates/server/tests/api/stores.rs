//! Stores: created from a name and live at once, found by slug (old slugs keep answering),
//! tuned through settings, and listed for their owner only.

use axum::http::Method;
use serde_json::{Value, json};

use crate::common::*;

#[track_caller]
fn assert_field_error(r: &Resp, status: u16, field: &str) {
    assert_eq!(r.status.as_u16(), status, "body: {}", r.body);
    assert!(r.is_problem(), "not a problem document: {:?}", r.headers);
    let fields: Vec<&str> =
        r.body["errors"].as_array().into_iter().flatten().filter_map(|e| e["field"].as_str()).collect();
    assert!(fields.contains(&field), "expected an error naming {field}, got {}", r.body);
}

async fn storefront(app: &TestApp, slug: &str) -> Resp {
    app.get(&format!("/api/v1/storefront/{slug}"), None).await
}

async fn get_store(app: &TestApp, token: &str, store: &Value) -> Value {
    app.get(&format!("/api/v1/stores/{}", id(store)), Some(token)).await.expect(200)
}

async fn patch_store(app: &TestApp, token: &str, store: &Value, body: Value) -> Resp {
    app.patch(&format!("/api/v1/stores/{}", id(store)), Some(token), body).await
}

async fn list_stores(app: &TestApp, token: &str, query: &str) -> Value {
    app.get(&format!("/api/v1/stores{query}"), Some(token)).await.expect(200)
}

fn item_ids(page: &Value) -> Vec<String> {
    page["items"].as_array().unwrap().iter().map(id).collect()
}

/// Every store the merchant owns, walking the pages.
async fn all_stores(app: &TestApp, token: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("?limit=100&cursor={c}"),
            None => "?limit=100".into(),
        };
        let page = list_stores(app, token, &q).await;
        out.extend(item_ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

#[tokio::test]
async fn a_store_needs_only_a_name_and_is_live_at_once() {
    let app = TestApp::new().await;
    let token = app.sign_in("+919800001001").await;
    let r = app.post("/api/v1/stores", Some(&token), json!({ "name": "Sharma General Store" })).await;
    let location = r.headers.get("location").map(|v| v.to_str().unwrap().to_string());
    let store = r.expect(201);
    assert_eq!(location.as_deref(), Some(format!("/api/v1/stores/{}", id(&store)).as_str()));
    assert_eq!(store["name"], "Sharma General Store");
    assert_eq!(store["slug"], "sharma-general-store");
    assert_eq!(store["path"], "/sharma-general-store");
    assert_eq!(store["currency"], "INR");
    assert_eq!(store["cod_enabled"], true);
    assert!(store["custom_domain"].is_null());

    let home = storefront(&app, "sharma-general-store").await.expect(200);
    assert_eq!(home["store"]["id"], store["id"]);
    assert_eq!(home["store"]["name"], "Sharma General Store");
    assert_eq!(get_store(&app, &token, &store).await["slug"], "sharma-general-store");

    // A name alone is needed, and needed.
    for body in [json!({}), json!({ "name": "  " }), json!({ "slug": "no-name-here" })] {
        assert_field_error(&app.post("/api/v1/stores", Some(&token), body).await, 422, "name");
    }
}

#[tokio::test]
async fn a_second_store_with_the_same_name_gets_its_own_slug() {
    let app = TestApp::new().await;
    let (ta, a) = app.merchant_with_store("+919800001002", "Chai Shop").await;
    let (_, b) = app.merchant_with_store("+919800001003", "Chai Shop").await;
    let c = app.create_store(&ta, json!({ "name": "chai   shop!" })).await;
    assert_eq!(slug(&a), "chai-shop");
    let slugs = [slug(&a), slug(&b), slug(&c)];
    assert!(slugs[1].starts_with("chai-shop-") && slugs[2].starts_with("chai-shop-"), "{slugs:?}");
    assert!(slugs[0] != slugs[1] && slugs[1] != slugs[2] && slugs[0] != slugs[2], "{slugs:?}");
    for store in [&a, &b, &c] {
        assert_eq!(storefront(&app, &slug(store)).await.expect(200)["store"]["id"], store["id"]);
    }
    // Many more of the same name still each get one.
    let mut seen: Vec<String> = slugs.to_vec();
    for _ in 0..5 {
        let s = app.create_store(&ta, json!({ "name": "Chai Shop" })).await;
        assert!(!seen.contains(&slug(&s)), "{} handed out twice", slug(&s));
        seen.push(slug(&s));
    }
}

#[tokio::test]
async fn a_chosen_slug_that_is_taken_is_refused_naming_slug() {
    let app = TestApp::new().await;
    let ta = app.sign_in("+919800001004").await;
    let a = app.create_store(&ta, json!({ "name": "Masala House", "slug": "masala-house" })).await;
    assert_eq!(slug(&a), "masala-house");

    let tb = app.sign_in("+919800001005").await;
    let r = app.post("/api/v1/stores", Some(&tb), json!({ "name": "Other", "slug": "masala-house" })).await;
    assert_field_error(&r, 409, "slug");
    assert!(r.body["type"].as_str().unwrap().ends_with("/slug-taken"));
    assert!(item_ids(&list_stores(&app, &tb, "").await).is_empty(), "a refused store must not exist");
    assert_eq!(storefront(&app, "masala-house").await.expect(200)["store"]["id"], a["id"]);
    // Not even its owner can have it twice.
    assert_field_error(
        &app.post("/api/v1/stores", Some(&ta), json!({ "name": "Again", "slug": "masala-house" })).await,
        409,
        "slug",
    );
}

#[tokio::test]
async fn reserved_words_are_never_slugs() {
    let app = TestApp::new().await;
    let (token, store) = app.merchant_with_store("+919800001006", "Fine Foods").await;
    for word in ["api", "dashboard", "static", "metrics", "healthz", "readyz", "openapi", "checkout", "admin"] {
        assert_field_error(
            &app.post("/api/v1/stores", Some(&token), json!({ "name": "X", "slug": word })).await,
            422,
            "slug",
        );
        assert_field_error(&patch_store(&app, &token, &store, json!({ "slug": word })).await, 422, "slug");
    }
    for malformed in ["ab", "Has-Caps", "-lead", "dou--ble", "sp ace", "ünï"] {
        assert_field_error(
            &app.post("/api/v1/stores", Some(&token), json!({ "name": "X", "slug": malformed })).await,
            422,
            "slug",
        );
    }
    // A store named like a reserved word is created, on some other slug.
    for name in ["Dashboard", "API", "Metrics"] {
        let s = app.create_store(&token, json!({ "name": name })).await;
        assert_ne!(slug(&s), name.to_lowercase());
        storefront(&app, &slug(&s)).await.expect(200);
    }
    assert_eq!(get_store(&app, &token, &store).await["slug"], "fine-foods");
}

#[tokio::test]
async fn a_renamed_store_answers_on_its_new_and_its_old_slug() {
    let app = TestApp::new().await;
    let (ta, a) = app.merchant_with_store("+919800001007", "Old Name").await;
    assert_eq!(slug(&a), "old-name");

    let renamed = patch_store(&app, &ta, &a, json!({ "slug": "new-name" })).await.expect(200);
    assert_eq!(renamed["slug"], "new-name");
    assert_eq!(renamed["path"], "/new-name");
    assert_eq!(get_store(&app, &ta, &a).await["slug"], "new-name");

    for s in ["new-name", "old-name", "OLD-NAME"] {
        let home = storefront(&app, s).await.expect(200);
        assert_eq!(home["store"]["id"], a["id"], "{s} must reach the renamed store");
        assert_eq!(home["store"]["slug"], "new-name", "{s} shows the current slug");
    }

    // The old slug stays the store's: nobody else can claim it, by PATCH, by choice or by name.
    let (tb, b) = app.merchant_with_store("+919800001008", "Someone Else").await;
    assert_field_error(&patch_store(&app, &tb, &b, json!({ "slug": "old-name" })).await, 409, "slug");
    assert_field_error(
        &app.post("/api/v1/stores", Some(&tb), json!({ "name": "X", "slug": "old-name" })).await,
        409,
        "slug",
    );
    let c = app.create_store(&tb, json!({ "name": "Old Name" })).await;
    assert_ne!(slug(&c), "old-name");
    assert_eq!(storefront(&app, "old-name").await.expect(200)["store"]["id"], a["id"]);
    assert_eq!(get_store(&app, &tb, &b).await["slug"], "someone-else");

    // Renaming the store itself leaves its address alone.
    let named = patch_store(&app, &ta, &a, json!({ "name": "Brand New Name" })).await.expect(200);
    assert_eq!((named["name"].clone(), named["slug"].clone()), (json!("Brand New Name"), json!("new-name")));

    // The owner can go back to it.
    let back = patch_store(&app, &ta, &a, json!({ "slug": "old-name" })).await.expect(200);
    assert_eq!(back["slug"], "old-name");
    assert_eq!(storefront(&app, "new-name").await.expect(200)["store"]["slug"], "old-name");
}

#[tokio::test]
async fn store_settings_change_only_what_the_patch_gives() {
    let app = TestApp::new().await;
    let (token, store) = app.merchant_with_store("+919800001009", "Settings Store").await;

    let s = patch_store(
        &app,
        &token,
        &store,
        json!({ "delivery_fee": 4000, "free_delivery_threshold": 50000, "tax_rate_bps": 500 }),
    )
    .await
    .expect(200);
    assert_eq!(
        (s["delivery_fee"].clone(), s["free_delivery_threshold"].clone(), s["tax_rate_bps"].clone()),
        (json!(4000), json!(50000), json!(500))
    );

    // Absent fields are left alone.
    let s = patch_store(&app, &token, &store, json!({ "description": "Fresh every morning" })).await.expect(200);
    assert_eq!(s["description"], "Fresh every morning");
    assert_eq!(s["delivery_fee"], 4000);
    assert_eq!(s["free_delivery_threshold"], 50000);
    assert_eq!(s["tax_rate_bps"], 500);
    assert_eq!(s["name"], "Settings Store");
    assert_eq!(s["slug"], "settings-store");

    // `null` clears the threshold, and only it.
    let s = patch_store(&app, &token, &store, json!({ "free_delivery_threshold": null })).await.expect(200);
    assert!(s["free_delivery_threshold"].is_null(), "{s}");
    assert_eq!(s["delivery_fee"], 4000);
    assert_eq!(s["description"], "Fresh every morning");

    let stored = get_store(&app, &token, &store).await;
    assert!(stored["free_delivery_threshold"].is_null());
    assert_eq!(stored["delivery_fee"], 4000);
    let public = storefront(&app, &slug(&store)).await.expect(200);
    assert_eq!(public["store"]["delivery_fee"], 4000);
    assert!(public["store"]["free_delivery_threshold"].is_null());

    // A bad value changes nothing.
    assert_field_error(
        &patch_store(&app, &token, &store, json!({ "delivery_fee": -1, "description": "x" })).await,
        422,
        "delivery_fee",
    );
    assert_eq!(get_store(&app, &token, &store).await["description"], "Fresh every morning");
}

#[tokio::test]
async fn a_store_must_accept_some_payment_method() {
    let app = TestApp::new().await;
    let (token, store) = app.merchant_with_store("+919800001010", "Pay Store").await;

    assert_field_error(&patch_store(&app, &token, &store, json!({ "cod_enabled": false })).await, 422, "cod_enabled");
    assert_eq!(get_store(&app, &token, &store).await["cod_enabled"], true, "a refused change changes nothing");

    let s = patch_store(&app, &token, &store, json!({ "cod_enabled": false, "online_payment_enabled": true }))
        .await
        .expect(200);
    assert_eq!((s["cod_enabled"].clone(), s["online_payment_enabled"].clone()), (json!(false), json!(true)));
    assert_field_error(
        &patch_store(&app, &token, &store, json!({ "online_payment_enabled": false })).await,
        422,
        "cod_enabled",
    );
    assert_eq!(get_store(&app, &token, &store).await["online_payment_enabled"], true);

    let r = app.post("/api/v1/stores", Some(&token), json!({ "name": "No Pay", "cod_enabled": false })).await;
    assert_field_error(&r, 422, "cod_enabled");
}

#[tokio::test]
async fn a_custom_domain_belongs_to_one_store_and_can_be_released() {
    let app = TestApp::new().await;
    let (ta, a) = app.merchant_with_store("+919800001011", "Domain A").await;
    let (tb, b) = app.merchant_with_store("+919800001012", "Domain B").await;

    let s = patch_store(&app, &ta, &a, json!({ "custom_domain": "shop.sharma.in" })).await.expect(200);
    assert_eq!(s["custom_domain"], "shop.sharma.in");

    for claim in ["shop.sharma.in", "Shop.Sharma.IN", "shop.sharma.in."] {
        let r = patch_store(&app, &tb, &b, json!({ "custom_domain": claim })).await;
        assert_field_error(&r, 409, "custom_domain");
    }
    assert!(get_store(&app, &tb, &b).await["custom_domain"].is_null());
    let r =
        app.post("/api/v1/stores", Some(&tb), json!({ "name": "Domain C", "custom_domain": "shop.sharma.in" })).await;
    assert_field_error(&r, 409, "custom_domain");
    assert_eq!(item_ids(&list_stores(&app, &tb, "").await), vec![id(&b)], "a refused store must not exist");
    assert_field_error(
        &patch_store(&app, &ta, &a, json!({ "custom_domain": "not a domain" })).await,
        422,
        "custom_domain",
    );

    // Released with null, it is free for another store.
    let s = patch_store(&app, &ta, &a, json!({ "custom_domain": null })).await.expect(200);
    assert!(s["custom_domain"].is_null());
    assert!(get_store(&app, &ta, &a).await["custom_domain"].is_null());
    let s = patch_store(&app, &tb, &b, json!({ "custom_domain": "shop.sharma.in" })).await.expect(200);
    assert_eq!(s["custom_domain"], "shop.sharma.in");

    // A refused move to a taken domain keeps the store's own.
    patch_store(&app, &ta, &a, json!({ "custom_domain": "a.example.com" })).await.expect(200);
    assert_field_error(
        &patch_store(&app, &ta, &a, json!({ "custom_domain": "shop.sharma.in" })).await,
        409,
        "custom_domain",
    );
    assert_eq!(get_store(&app, &ta, &a).await["custom_domain"], "a.example.com");
    // Other settings do not disturb the domain.
    patch_store(&app, &ta, &a, json!({ "delivery_fee": 100 })).await.expect(200);
    assert_eq!(get_store(&app, &ta, &a).await["custom_domain"], "a.example.com");
}

#[tokio::test]
async fn a_refused_store_patch_changes_nothing() {
    let app = TestApp::new().await;
    let (ta, a) = app.merchant_with_store("+919800001013", "Partial A").await;
    let (tb, b) = app.merchant_with_store("+919800001014", "Partial B").await;
    patch_store(&app, &tb, &b, json!({ "custom_domain": "b.example.com" })).await.expect(200);

    let r = patch_store(&app, &ta, &a, json!({ "slug": "fresh-slug", "custom_domain": "b.example.com" })).await;
    assert_field_error(&r, 409, "custom_domain");
    assert_eq!(get_store(&app, &ta, &a).await["slug"], "partial-a", "the refused PATCH must not rename the store");
    assert_eq!(storefront(&app, "fresh-slug").await.status, 404, "the refused slug must not be reserved for the store");
}

#[tokio::test]
async fn the_store_list_shows_only_my_stores_newest_first_page_by_page() {
    let app = TestApp::new().await;
    let ta = app.sign_in("+919800001015").await;
    let mine: Vec<Value> = {
        let mut v = vec![];
        for n in ["First", "Second", "Third"] {
            v.push(app.create_store(&ta, json!({ "name": format!("{n} Store") })).await);
        }
        v
    };
    let (tb, theirs) = app.merchant_with_store("+919800001016", "Their Store").await;

    let page1 = list_stores(&app, &ta, "?limit=2").await;
    assert_eq!(item_ids(&page1), vec![id(&mine[2]), id(&mine[1])], "newest first");
    let cursor = page1["next_cursor"].as_str().expect("a next page").to_string();
    let page2 = list_stores(&app, &ta, &format!("?limit=2&cursor={cursor}")).await;
    assert_eq!(item_ids(&page2), vec![id(&mine[0])]);
    assert!(page2["next_cursor"].is_null(), "the last page has no next_cursor: {page2}");
    assert_eq!(page2["items"][0]["name"], "First Store");
    assert_eq!(page2["items"][0]["slug"], "first-store");

    let all = list_stores(&app, &ta, "").await;
    assert_eq!(item_ids(&all), vec![id(&mine[2]), id(&mine[1]), id(&mine[0])]);
    assert!(!item_ids(&all).contains(&id(&theirs)));
    assert_eq!(item_ids(&list_stores(&app, &tb, "").await), vec![id(&theirs)]);

    // A cursor from one merchant's list shows another merchant nothing of the first's.
    let other = list_stores(&app, &tb, &format!("?cursor={cursor}")).await;
    assert!(item_ids(&other).iter().all(|i| *i == id(&theirs)));

    for (q, field) in
        [("?limit=0", "limit"), ("?limit=101", "limit"), ("?limit=ten", "limit"), ("?cursor=!!", "cursor")]
    {
        assert_field_error(&app.get(&format!("/api/v1/stores{q}"), Some(&ta)).await, 422, field);
    }
}

#[tokio::test]
async fn a_merchant_may_own_at_most_fifty_stores() {
    let app = TestApp::new().await;
    let token = app.sign_in("+919800001017").await;
    for n in 1..=50 {
        app.create_store(&token, json!({ "name": format!("Branch {n}") })).await;
    }
    let r = app.post("/api/v1/stores", Some(&token), json!({ "name": "Branch 51" })).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.is_problem());
    assert!(r.body["type"].as_str().unwrap().ends_with("/limit-reached"), "{}", r.body);
    assert_eq!(all_stores(&app, &token).await.len(), 50);
    // The refused store left nothing behind: its slug is free for someone else.
    assert_eq!(storefront(&app, "branch-51").await.status, 404);
    let (_, other) = app.merchant_with_store("+919800001018", "Branch 51").await;
    assert_eq!(slug(&other), "branch-51");
    // And the limit is per merchant.
    let r = app.call(Method::GET, &format!("/api/v1/stores/{}", id(&other)), Some(&token), &[], None).await;
    assert_eq!(r.status, 404);
}
