//! Tenant isolation, proven route by route.
//!
//! The test walks every operation of `/openapi.json` — which is every route of the router, as
//! routes can only be registered with their description. Each store-scoped operation is called
//! by merchant A with store B's ids (and with A's store but B's ids inside it); each storefront
//! operation is called with one store's slug and the other store's cart, order or product, or a
//! foreign cart token. All must answer 404, exactly as for ids that do not exist, and B's data
//! must be untouched afterwards. A route this test does not know how to call fails it, so a new
//! route cannot be added without being checked here.

use axum::http::Method;
use serde_json::{Value, json};

use crate::common::*;

/// What one store holds, for use as path ids.
struct Tenant {
    token: String,
    store: Value,
    ids: Vec<(&'static str, String)>,
    cart: (String, String),
    order_cart_token: String,
}

impl Tenant {
    fn id(&self, name: &str) -> String {
        if name == "store_id" {
            return id(&self.store);
        }
        if name == "slug" {
            return slug(&self.store);
        }
        if name == "cart_id" {
            return self.cart.0.clone();
        }
        self.ids
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("the isolation test has no fixture for path parameter {{{name}}}; add one"))
    }
}

async fn tenant(app: &TestApp, phone: &str, name: &str) -> Tenant {
    let (token, store) = app.merchant_with_store(phone, name).await;
    let sid = id(&store);
    let cat =
        app.post(&format!("/api/v1/stores/{sid}/categories"), Some(&token), json!({ "name": "Tea" })).await.expect(201);
    let product = app
        .create_product(
            &token,
            &store,
            json!({ "title": format!("{name} chai"), "price": 2500, "stock": 50, "category_id": id(&cat) }),
        )
        .await;
    let variant = product["variants"][0]["id"].as_str().unwrap().to_string();
    let coupon = app
        .post(
            &format!("/api/v1/stores/{sid}/coupons"),
            Some(&token),
            json!({ "code": "WELCOME", "kind": "percent", "value": 10 }),
        )
        .await
        .expect(201);
    let s = slug(&store);
    let (order_cart, order_ct) = app.open_cart(&s).await;
    app.set_item(&s, &order_cart, &order_ct, &variant, 1).await.expect(200);
    let order = app.checkout(&s, &order_cart, &order_ct, None, shopper()).await.expect(201);
    let customers = app.get(&format!("/api/v1/stores/{sid}/customers"), Some(&token)).await.expect(200);
    let key = app.post("/api/v1/api-keys", Some(&token), json!({ "name": "sync" })).await.expect(201);
    let cart = app.open_cart(&s).await;
    app.set_item(&s, &cart.0, &cart.1, &variant, 1).await.expect(200);
    let webhook = app
        .post(
            &format!("/api/v1/stores/{sid}/webhooks"),
            Some(&token),
            json!({ "url": format!("https://{}.example.com/hooks", slug(&store)), "event_types": ["*"] }),
        )
        .await
        .expect(201);
    Tenant {
        ids: vec![
            ("category_id", id(&cat)),
            ("product_id", id(&product)),
            ("variant_id", variant),
            ("coupon_id", id(&coupon)),
            ("order_id", id(&order)),
            ("customer_id", id(&customers["items"][0])),
            ("key_id", key["key"]["id"].as_str().unwrap().to_string()),
            ("webhook_id", id(&webhook)),
        ],
        token,
        store,
        cart,
        order_cart_token: order_ct,
    }
}

/// A valid body for each operation that takes one, so a missing scope check would succeed
/// (and fail this test) rather than be hidden behind a validation error.
fn body_for(method: &Method, template: &str, victim: &Tenant) -> Option<Value> {
    let t = template;
    let b = match (method.as_str(), t) {
        ("PATCH", "/api/v1/stores/{store_id}") => json!({ "name": "hacked" }),
        ("POST", "/api/v1/stores/{store_id}/categories") => json!({ "name": "hacked" }),
        ("PATCH", "/api/v1/stores/{store_id}/categories/{category_id}") => json!({ "name": "hacked" }),
        ("POST", "/api/v1/stores/{store_id}/products") => json!({ "title": "hacked", "price": 1 }),
        ("PATCH", "/api/v1/stores/{store_id}/products/{product_id}") => json!({ "title": "hacked" }),
        ("POST", "/api/v1/stores/{store_id}/coupons") => json!({ "code": "HACKED", "kind": "flat", "value": 100 }),
        ("PATCH", "/api/v1/stores/{store_id}/coupons/{coupon_id}") => json!({ "active": false }),
        ("POST", "/api/v1/stores/{store_id}/orders/{order_id}/transitions") => json!({ "to": "cancelled" }),
        ("POST", "/api/v1/stores/{store_id}/orders/{order_id}/refunds") => json!({ "amount": 100 }),
        ("PUT", "/api/v1/storefront/{slug}/carts/{cart_id}/items") => {
            json!({ "variant_id": victim.id("variant_id"), "quantity": 3 })
        }
        ("POST", "/api/v1/storefront/{slug}/carts/{cart_id}/checkout") => shopper(),
        // Multipart in real use; the store check comes before the body is read.
        ("POST", "/api/v1/stores/{store_id}/media") => json!({}),
        ("POST", "/api/v1/stores/{store_id}/webhooks") => {
            json!({ "url": "https://hacked.example.com/hooks", "event_types": ["*"] })
        }
        _ => return None,
    };
    Some(b)
}

fn fill(template: &str, pick: impl Fn(&str) -> String) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').unwrap() + start;
        out.push_str(&pick(&rest[start + 1..end]));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Routes that hold no store's data, or whose isolation is checked by content below.
const NOT_STORE_SCOPED: &[(&str, &str, &str)] = &[
    ("POST", "/api/v1/auth/otp", "sign-in; no store"),
    ("POST", "/api/v1/auth/verify", "sign-in; no store"),
    ("GET", "/api/v1/me", "the caller's own merchant record"),
    ("POST", "/api/v1/api-keys", "creates the caller's own key"),
    ("GET", "/api/v1/api-keys", "lists the caller's own keys (checked below)"),
    ("DELETE", "/api/v1/api-keys/{key_id}", "checked below: another merchant's key is 404"),
    ("POST", "/api/v1/stores", "creates a store for the caller"),
    ("GET", "/api/v1/stores", "lists the caller's own stores (checked below)"),
    ("GET", "/api/v1/storefront/{slug}", "public by slug; no foreign ids"),
    ("GET", "/api/v1/storefront/{slug}/products", "public by slug; content checked below"),
    ("POST", "/api/v1/storefront/{slug}/carts", "opens a new cart; no foreign ids"),
    ("GET", "/media/{store_id}/{name}/{file}", "public image bytes named by their content hash"),
    ("GET", "/healthz", "probe"),
    ("GET", "/readyz", "probe"),
    ("GET", "/metrics", "operations: per shard and replica, never per store"),
    ("GET", "/openapi.json", "the API description"),
    ("GET", "/api/v1/ops/slo", "operations: the node's objectives, never per store"),
    (
        "POST",
        "/api/v1/payments/webhooks/{provider}",
        "the provider's signed callback; the signed payment names its store",
    ),
    ("GET", "/ops", "operations: the same objectives as a page"),
];

#[tokio::test]
async fn no_route_lets_one_store_reach_another_in_the_same_shard() {
    // One shard: both stores share every table, so only the queries' store scope separates them.
    walk_every_route(1).await;
}

#[tokio::test]
async fn no_route_lets_one_store_reach_another_across_shards() {
    // Many shards: the directory must route each store to its own file.
    walk_every_route(8).await;
}

async fn walk_every_route(shards: u32) {
    let app = TestApp::with_shards(shards).await;
    let a = tenant(&app, "+919800000001", "Alpha Stores").await;
    let b = tenant(&app, "+919800000002", "Beta Mart").await;

    let spec = app.get("/openapi.json", None).await.expect(200);
    let paths = spec["paths"].as_object().expect("paths");
    let mut checked = 0;
    for (template, item) in paths {
        for (method_name, op) in item.as_object().unwrap() {
            let method = Method::from_bytes(method_name.to_uppercase().as_bytes()).unwrap();
            let takes_body = op.get("requestBody").is_some();
            if let Some((_, _, _why)) = NOT_STORE_SCOPED.iter().find(|(m, p, _)| *m == method.as_str() && p == template)
            {
                continue;
            }
            let body = |victim: &Tenant| {
                let b = body_for(&method, template, victim);
                assert!(
                    !takes_body || b.is_some(),
                    "the isolation test has no body fixture for {method} {template}; add one"
                );
                b
            };
            if template.contains("{store_id}") {
                // A's credentials, B's store and B's ids.
                let uri = fill(template, |p| b.id(p));
                let r = app.call(method.clone(), &uri, Some(&a.token), &[], body(&b)).await;
                assert_eq!(
                    r.status, 404,
                    "{method} {uri} with another merchant's store answered {}: {}",
                    r.status, r.body
                );
                assert!(r.is_problem());
                // A's credentials and A's store, but B's ids inside it.
                if template.matches('{').count() > 1 {
                    let uri = fill(template, |p| if p == "store_id" { a.id(p) } else { b.id(p) });
                    let r = app.call(method.clone(), &uri, Some(&a.token), &[], body(&b)).await;
                    assert_eq!(
                        r.status, 404,
                        "{method} {uri} with another store's ids answered {}: {}",
                        r.status, r.body
                    );
                }
                checked += 1;
            } else if template.contains("{slug}") {
                // A's slug with B's ids, presenting B's own cart token: the store scope must
                // refuse what the token would open elsewhere.
                let uri = fill(template, |p| if p == "slug" { a.id(p) } else { b.id(p) });
                let mut headers = vec![("x-cart-token", b.cart.1.as_str())];
                let token_q;
                let uri = if template.contains("{order_id}") {
                    token_q = format!("{uri}?token={}", b.order_cart_token);
                    headers.clear();
                    token_q
                } else {
                    uri
                };
                let r = app.call(method.clone(), &uri, None, &headers, body(&b)).await;
                assert_eq!(r.status, 404, "{method} {uri} reached another store's data: {} {}", r.status, r.body);
                // B's own slug and ids, but A's cart token: a token opens only its own cart.
                if template.contains("{cart_id}") || template.contains("{order_id}") {
                    let uri = fill(template, |p| b.id(p));
                    let r = if template.contains("{order_id}") {
                        app.call(method.clone(), &format!("{uri}?token={}", a.order_cart_token), None, &[], body(&b))
                            .await
                    } else {
                        app.call(method.clone(), &uri, None, &[("x-cart-token", a.cart.1.as_str())], body(&b)).await
                    };
                    assert_eq!(
                        r.status, 404,
                        "{method} {uri} opened with another cart's token: {} {}",
                        r.status, r.body
                    );
                }
                checked += 1;
            } else {
                panic!(
                    "{method} {template} is neither store-scoped nor listed in NOT_STORE_SCOPED; scope it or list it with a reason"
                );
            }
        }
    }
    assert!(checked >= 25, "only {checked} routes were checked; did the spec lose paths?");

    // B's data is exactly as it was.
    let sid = id(&b.store);
    let store = app.get(&format!("/api/v1/stores/{sid}"), Some(&b.token)).await.expect(200);
    assert_eq!(store["name"], "Beta Mart");
    let product =
        app.get(&format!("/api/v1/stores/{sid}/products/{}", b.id("product_id")), Some(&b.token)).await.expect(200);
    assert_eq!(product["title"], "Beta Mart chai");
    assert_eq!(product["variants"][0]["stock"], 49, "only B's own checkout took stock");
    let order = app.get(&format!("/api/v1/stores/{sid}/orders/{}", b.id("order_id")), Some(&b.token)).await.expect(200);
    assert_eq!(order["status"], "placed");
    let coupon =
        app.get(&format!("/api/v1/stores/{sid}/coupons/{}", b.id("coupon_id")), Some(&b.token)).await.expect(200);
    assert_eq!(coupon["active"], true);
    let cats = app.get(&format!("/api/v1/stores/{sid}/categories"), Some(&b.token)).await.expect(200);
    assert_eq!(cats["items"].as_array().unwrap().len(), 1);
    let hooks = app.get(&format!("/api/v1/stores/{sid}/webhooks"), Some(&b.token)).await.expect(200);
    assert_eq!(hooks["items"].as_array().unwrap().len(), 1, "B's webhook survived A's calls");
    assert_eq!(hooks["items"][0]["id"], b.id("webhook_id").as_str());
    let cart = app
        .call(
            Method::GET,
            &format!("/api/v1/storefront/{}/carts/{}", slug(&b.store), b.cart.0),
            None,
            &[("x-cart-token", &b.cart.1)],
            None,
        )
        .await
        .expect(200);
    assert_eq!(cart["items"][0]["quantity"], 1);
    assert_eq!(cart["status"], "open");

    // Lists show only the caller's own.
    let stores = app.get("/api/v1/stores", Some(&a.token)).await.expect(200);
    assert_eq!(stores["items"].as_array().unwrap().len(), 1);
    assert_eq!(stores["items"][0]["id"], a.store["id"]);
    let keys = app.get("/api/v1/api-keys", Some(&a.token)).await.expect(200);
    assert!(keys["items"].as_array().unwrap().iter().all(|k| k["id"].as_str() != Some(&b.id("key_id"))));
    let r = app.call(Method::DELETE, &format!("/api/v1/api-keys/{}", b.id("key_id")), Some(&a.token), &[], None).await;
    assert_eq!(r.status, 404);
    let listed = app.get(&format!("/api/v1/storefront/{}/products", slug(&a.store)), None).await.expect(200);
    assert!(listed["items"].as_array().unwrap().iter().all(|p| p["title"] == "Alpha Stores chai"));
    let listed = app
        .get(&format!("/api/v1/storefront/{}/products?category={}", slug(&a.store), b.id("category_id")), None)
        .await
        .expect(200);
    assert!(listed["items"].as_array().unwrap().is_empty(), "another store's category id filters to nothing");
}

#[tokio::test]
async fn a_merchant_without_a_credential_reaches_nothing() {
    let app = TestApp::new().await;
    let a = tenant(&app, "+919800000003", "Gamma").await;
    let spec = app.get("/openapi.json", None).await.expect(200);
    for (template, item) in spec["paths"].as_object().unwrap() {
        if !template.starts_with("/api/v1/stores")
            && !template.starts_with("/api/v1/api-keys")
            && template != "/api/v1/me"
        {
            continue;
        }
        for method_name in item.as_object().unwrap().keys() {
            let method = Method::from_bytes(method_name.to_uppercase().as_bytes()).unwrap();
            let uri = fill(template, |p| a.id(p));
            for token in [None, Some("kir_not-a-real-token")] {
                let r = app.call(method.clone(), &uri, token, &[], Some(json!({}))).await;
                assert_eq!(r.status, 401, "{method} {uri} with token {token:?}: {}", r.body);
                assert!(r.is_problem());
            }
        }
    }
}
