//! The catalog as merchants build it and shoppers see it: categories, products and their
//! variants, search, keyset pages, and the outbox event every change writes.

use axum::http::Method;
use kirana_domain::{MerchantId, StoreId};
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

/// A merchant's store and the paths under it.
struct Shop {
    token: String,
    store: Value,
}

impl Shop {
    async fn new(app: &TestApp, phone: &str, name: &str) -> Shop {
        let (token, store) = app.merchant_with_store(phone, name).await;
        Shop { token, store }
    }

    fn at(&self, rest: &str) -> String {
        format!("/api/v1/stores/{}{rest}", id(&self.store))
    }

    fn public(&self, rest: &str) -> String {
        format!("/api/v1/storefront/{}{rest}", slug(&self.store))
    }

    async fn category(&self, app: &TestApp, name: &str) -> Value {
        app.post(&self.at("/categories"), Some(&self.token), json!({ "name": name })).await.expect(201)
    }

    async fn product(&self, app: &TestApp, body: Value) -> Value {
        app.create_product(&self.token, &self.store, body).await
    }

    async fn try_product(&self, app: &TestApp, body: Value) -> Resp {
        app.post(&self.at("/products"), Some(&self.token), body).await
    }

    async fn get_product(&self, app: &TestApp, product: &Value) -> Resp {
        app.get(&self.at(&format!("/products/{}", id(product))), Some(&self.token)).await
    }

    async fn patch_product(&self, app: &TestApp, product: &Value, body: Value) -> Resp {
        app.patch(&self.at(&format!("/products/{}", id(product))), Some(&self.token), body).await
    }

    async fn delete(&self, app: &TestApp, rest: &str) -> Resp {
        app.call(Method::DELETE, &self.at(rest), Some(&self.token), &[], None).await
    }

    async fn list(&self, app: &TestApp, query: &str) -> Value {
        app.get(&self.at(&format!("/products{query}")), Some(&self.token)).await.expect(200)
    }

    async fn public_list(&self, app: &TestApp, query: &str) -> Value {
        app.get(&self.public(&format!("/products{query}")), None).await.expect(200)
    }
}

fn ids(page: &Value) -> Vec<String> {
    page["items"].as_array().unwrap().iter().map(id).collect()
}

fn titles(page: &Value) -> Vec<String> {
    let mut t: Vec<String> =
        page["items"].as_array().unwrap().iter().map(|p| p["title"].as_str().unwrap().to_string()).collect();
    t.sort();
    t
}

fn variant_ids(product: &Value) -> Vec<String> {
    product["variants"].as_array().unwrap().iter().map(id).collect()
}

#[tokio::test]
async fn categories_can_be_created_listed_renamed_and_deleted() {
    let app = TestApp::new().await;
    let shop = Shop::new(&app, "+919800002001", "Category Store").await;

    let tea = app
        .post(&shop.at("/categories"), Some(&shop.token), json!({ "name": "Tea", "description": "Leaf and dust" }))
        .await
        .expect(201);
    assert_eq!(tea["name"], "Tea");
    assert_eq!(tea["description"], "Leaf and dust");
    let snacks = shop.category(&app, "Snacks").await;

    let list = app.get(&shop.at("/categories"), Some(&shop.token)).await.expect(200);
    assert_eq!(ids(&list), vec![id(&tea), id(&snacks)], "categories list in the order they were made");
    assert_eq!(
        app.get(&shop.at(&format!("/categories/{}", id(&tea))), Some(&shop.token)).await.expect(200)["name"],
        "Tea"
    );

    let renamed = app
        .patch(&shop.at(&format!("/categories/{}", id(&tea))), Some(&shop.token), json!({ "name": "Teas" }))
        .await
        .expect(200);
    assert_eq!(renamed["name"], "Teas");
    assert_eq!(renamed["description"], "Leaf and dust", "an absent field is left alone");

    let r = shop.delete(&app, &format!("/categories/{}", id(&tea))).await;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(app.get(&shop.at(&format!("/categories/{}", id(&tea))), Some(&shop.token)).await.status, 404);
    assert_eq!(shop.delete(&app, &format!("/categories/{}", id(&tea))).await.status, 404);
    assert_eq!(ids(&app.get(&shop.at("/categories"), Some(&shop.token)).await.expect(200)), vec![id(&snacks)]);

    // Shoppers see the menu.
    let home = app.get(&shop.public(""), None).await.expect(200);
    assert_eq!(home["categories"].as_array().unwrap().len(), 1);
    assert_eq!(home["categories"][0]["name"], "Snacks");

    assert_field_error(&app.post(&shop.at("/categories"), Some(&shop.token), json!({})).await, 422, "name");
    assert_field_error(
        &app.post(&shop.at("/categories"), Some(&shop.token), json!({ "name": "  " })).await,
        422,
        "name",
    );
}

#[tokio::test]
async fn category_names_are_unique_in_a_store_regardless_of_case() {
    let app = TestApp::new().await;
    let shop = Shop::new(&app, "+919800002002", "Unique Cats").await;
    let tea = shop.category(&app, "Tea").await;
    let snacks = shop.category(&app, "Snacks").await;

    for dup in ["Tea", "tea", "TEA", "  tEa "] {
        let r = app.post(&shop.at("/categories"), Some(&shop.token), json!({ "name": dup })).await;
        assert_field_error(&r, 409, "name");
        assert!(r.body["type"].as_str().unwrap().ends_with("/name-taken"));
    }
    let r =
        app.patch(&shop.at(&format!("/categories/{}", id(&snacks))), Some(&shop.token), json!({ "name": "TEA" })).await;
    assert_field_error(&r, 409, "name");
    assert_eq!(
        app.get(&shop.at(&format!("/categories/{}", id(&snacks))), Some(&shop.token)).await.expect(200)["name"],
        "Snacks"
    );

    // A category may change its own name's case, and another store may use the name.
    let r = app
        .patch(&shop.at(&format!("/categories/{}", id(&tea))), Some(&shop.token), json!({ "name": "TEA" }))
        .await
        .expect(200);
    assert_eq!(r["name"], "TEA");
    let other = Shop::new(&app, "+919800002003", "Other Cats").await;
    other.category(&app, "tea").await;
    // A deleted category's name is free again.
    assert_eq!(shop.delete(&app, &format!("/categories/{}", id(&tea))).await.status, 204);
    shop.category(&app, "Tea").await;
}

#[tokio::test]
async fn deleting_a_category_leaves_its_products_uncategorised() {
    let app = TestApp::new().await;
    let shop = Shop::new(&app, "+919800002004", "Uncategorised").await;
    let tea = shop.category(&app, "Tea").await;
    let chai = shop.product(&app, json!({ "title": "Masala Chai", "price": 2500, "category_id": id(&tea) })).await;
    assert_eq!(chai["category_id"], tea["id"]);
    let before = ids(&shop.list(&app, &format!("?category={}", id(&tea))).await);
    assert_eq!(before, vec![id(&chai)]);

    assert_eq!(shop.delete(&app, &format!("/categories/{}", id(&tea))).await.status, 204);
    let after = shop.get_product(&app, &chai).await.expect(200);
    assert!(after["category_id"].is_null(), "{after}");
    assert_eq!(after["title"], "Masala Chai");
    assert_eq!(after["variants"][0]["id"], chai["variants"][0]["id"]);
    assert!(shop.list(&app, &format!("?category={}", id(&tea))).await["items"].as_array().unwrap().is_empty());
    assert_eq!(ids(&shop.public_list(&app, "").await), vec![id(&chai)]);
    // The deleted category cannot be given to a product.
    let r = shop.patch_product(&app, &chai, json!({ "category_id": id(&tea) })).await;
    assert_field_error(&r, 422, "category_id");
}

#[tokio::test]
async fn a_simple_product_gets_one_default_variant() {
    let app = TestApp::new().await;
    let shop = Shop::new(&app, "+919800002005", "Simple Store").await;
    let p = shop.product(&app, json!({ "title": "Masala Chai 250g", "price": 2500, "compare_at_price": 3000, "stock": 10, "sku": "CHAI-250" })).await;
    assert_eq!(p["status"], "active", "a new product is on sale unless told otherwise");
    assert_eq!(p["options"], json!([]));
    let v = p["variants"].as_array().unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0]["title"], "Default");
    assert_eq!(v[0]["options"], json!([]));
    assert_eq!((v[0]["price"].clone(), v[0]["compare_at_price"].clone()), (json!(2500), json!(3000)));
    assert_eq!((v[0]["stock"].clone(), v[0]["sku"].clone()), (json!(10), json!("CHAI-250")));
    assert_eq!(shop.get_product(&app, &p).await.expect(200), p);

    let untracked = shop.product(&app, json!({ "title": "Water", "price": 2000 })).await;
    assert!(untracked["variants"][0]["stock"].is_null(), "stock absent means untracked");

    for (body, field) in [
        (json!({ "price": 100 }), "title"),
        (json!({ "title": "No price" }), "price"),
        (json!({ "title": "Negative", "price": -1 }), "price"),
        (json!({ "title": "Bad stock", "price": 1, "stock": -3 }), "stock"),
        (json!({ "title": "Both", "price": 1, "variants": [{ "price": 1 }] }), "price"),
    ] {
        assert_field_error(&shop.try_product(&app, body).await, 422, field);
    }
}

#[tokio::test]
async fn a_product_with_options_has_a_variant_per_combination() {
    let app = TestApp::new().await;
    let shop = Shop::new(&app, "+919800002006", "Tee Store").await;
    let tee = shop
        .product(
            &app,
            json!({
                "title": "Cotton Tee",
                "options": ["Size", "Colour"],
                "variants": [
                    { "options": ["M", "Red"], "price": 49900, "stock": 5, "sku": "TEE-M-RED" },
                    { "options": ["L", "Red"], "price": 54900, "stock": 0 },
                    { "options": ["M", "Blue"], "price": 49900 }
                ]
            }),
        )
        .await;
    assert_eq!(tee["options"], json!(["Size", "Colour"]));
    let v = tee["variants"].as_array().unwrap();
    let got: Vec<(&str, i64)> =
        v.iter().map(|v| (v["title"].as_str().unwrap(), v["price"].as_i64().unwrap())).collect();
    assert_eq!(got, vec![("M / Red", 49900), ("L / Red", 54900), ("M / Blue", 49900)], "variants keep the order given");
    assert_eq!(v[0]["sku"], "TEE-M-RED");
    assert_eq!(v[1]["stock"], 0);
    assert!(v[2]["stock"].is_null());

    let r = shop
        .try_product(&app, json!({ "title": "Bad", "options": ["Size"], "variants": [{ "options": ["M"], "price": 1 }, { "options": ["m"], "price": 1 }] }))
        .await;
    assert_field_error(&r, 422, "variants[1].options");
    let r = shop
        .try_product(
            &app,
            json!({ "title": "Bad", "options": ["Size"], "variants": [{ "options": ["M", "Red"], "price": 1 }] }),
        )
        .await;
    assert_field_error(&r, 422, "variants[0].options");
    let r = shop.try_product(&app, json!({ "title": "Bad", "variants": [{ "price": 1 }, { "price": 2 }] })).await;
    assert_field_error(&r, 422, "options");
    let r = shop.try_product(&app, json!({ "title": "Bad", "variants": [] })).await;
    assert_field_error(&r, 422, "variants");
}

async fn sized(shop: &Shop, app: &TestApp, title: &str, sizes: &[&str]) -> Value {
    let variants: Vec<Value> = sizes.iter().map(|s| json!({ "options": [s], "price": 1000, "stock": 3 })).collect();
    shop.product(app, json!({ "title": title, "options": ["Size"], "variants": variants })).await
}

#[tokio::test]
async fn patching_variants_updates_listed_ones_creates_new_ones_and_removes_the_rest() {
    let app = TestApp::new().await;
    let shop = Shop::new(&app, "+919800002007", "Patch Store").await;
    let tee = sized(&shop, &app, "Tee", &["S", "M", "L"]).await;
    let [s, m, _l] = [0, 1, 2].map(|i| tee["variants"][i].clone());

    let patched = shop
        .patch_product(
            &app,
            &tee,
            json!({ "variants": [
                { "id": id(&m), "options": ["M"], "price": 1200, "stock": 7, "sku": "TEE-M" },
                { "options": ["XL"], "price": 1500, "stock": 2 },
                { "id": id(&s), "options": ["S"], "price": 900, "stock": 1 }
            ] }),
        )
        .await
        .expect(200);
    let v = patched["variants"].as_array().unwrap();
    assert_eq!(v.len(), 3, "{patched}");
    assert_eq!(v[0]["id"], m["id"], "an entry with an id updates that variant in place");
    assert_eq!(
        (v[0]["price"].clone(), v[0]["stock"].clone(), v[0]["sku"].clone()),
        (json!(1200), json!(7), json!("TEE-M"))
    );
    assert_eq!(v[1]["title"], "XL");
    let xl = id(&v[1]);
    assert!(![id(&s), id(&m), id(&tee["variants"][2])].contains(&xl), "an entry without an id is a new variant");
    assert_eq!(v[2]["id"], s["id"]);
    assert_eq!(v[2]["price"], 900);
    assert!(!variant_ids(&patched).contains(&id(&tee["variants"][2])), "L was not listed, so it is gone");
    assert_eq!(shop.get_product(&app, &tee).await.expect(200), patched);

    // A PATCH without `variants` leaves them alone.
    let renamed = shop.patch_product(&app, &tee, json!({ "title": "Tee Shirt" })).await.expect(200);
    assert_eq!(renamed["variants"], patched["variants"]);
    assert_eq!(renamed["title"], "Tee Shirt");
}

#[tokio::test]
async fn a_variant_of_another_product_cannot_be_patched_in() {
    let app = TestApp::new().await;
    let shop = Shop::new(&app, "+919800002008", "Foreign Variants").await;
    let tee = sized(&shop, &app, "Tee", &["S", "M"]).await;
    let cap = sized(&shop, &app, "Cap", &["One"]).await;

    let r = shop
        .patch_product(
            &app,
            &tee,
            json!({ "variants": [
                { "id": id(&tee["variants"][0]), "options": ["S"], "price": 1000 },
                { "id": id(&cap["variants"][0]), "options": ["M"], "price": 1 }
            ] }),
        )
        .await;
    assert_field_error(&r, 422, "variants[1].id");
    let r = shop
        .patch_product(&app, &tee, json!({ "variants": [{ "id": "not-a-uuid", "options": ["S"], "price": 1 }] }))
        .await;
    assert_field_error(&r, 422, "variants[0].id");
    let r = shop
        .patch_product(
            &app,
            &tee,
            json!({ "variants": [{ "id": uuid::Uuid::now_v7().to_string(), "options": ["S"], "price": 1 }] }),
        )
        .await;
    assert_field_error(&r, 422, "variants[0].id");

    // Nothing moved.
    assert_eq!(shop.get_product(&app, &tee).await.expect(200)["variants"], tee["variants"]);
    assert_eq!(shop.get_product(&app, &cap).await.expect(200)["variants"], cap["variants"]);
}

#[tokio::test]
async fn skus_are_unique_across_a_stores_products() {
    let app = TestApp::new().await;
    let shop = Shop::new(&app, "+919800002009", "Sku Store").await;
    let tea = shop.product(&app, json!({ "title": "Tea", "price": 100, "sku": "TEA-250" })).await;

    assert_field_error(
        &shop.try_product(&app, json!({ "title": "Copy", "price": 1, "sku": "TEA-250" })).await,
        422,
        "variants[0].sku",
    );
    let r = shop
        .try_product(
            &app,
            json!({ "title": "Copy", "options": ["Size"], "variants": [
                { "options": ["S"], "price": 1, "sku": "FRESH" },
                { "options": ["M"], "price": 1, "sku": "TEA-250" }
            ] }),
        )
        .await;
    assert_field_error(&r, 422, "variants[1].sku");
    let copy = ids(&shop.list(&app, "").await);
    assert_eq!(copy, vec![id(&tea)], "refused products are not created");

    let tee = sized(&shop, &app, "Tee", &["S", "M"]).await;
    let r = shop
        .patch_product(
            &app,
            &tee,
            json!({ "variants": [
                { "id": id(&tee["variants"][0]), "options": ["S"], "price": 1, "sku": "TEE-S" },
                { "id": id(&tee["variants"][1]), "options": ["M"], "price": 1, "sku": "TEA-250" }
            ] }),
        )
        .await;
    assert_field_error(&r, 422, "variants[1].sku");
    assert!(
        shop.get_product(&app, &tee).await.expect(200)["variants"][0]["sku"].is_null(),
        "a refused PATCH changes nothing"
    );

    // Within one product, twice is refused too.
    let r = shop
        .try_product(&app, json!({ "title": "Twice", "options": ["Size"], "variants": [{ "options": ["S"], "price": 1, "sku": "X" }, { "options": ["M"], "price": 1, "sku": "X" }] }))
        .await;
    assert_field_error(&r, 422, "variants[1].sku");

    // Another store may use the SKU; and deleting the product frees it here.
    let other = Shop::new(&app, "+919800002010", "Other Sku Store").await;
    other.product(&app, json!({ "title": "Their Tea", "price": 100, "sku": "TEA-250" })).await;
    assert_eq!(shop.delete(&app, &format!("/products/{}", id(&tea))).await.status, 204);
    shop.product(&app, json!({ "title": "New Tea", "price": 100, "sku": "TEA-250" })).await;
}

#[tokio::test]
async fn two_variants_can_swap_skus_in_one_patch() {
    let app = TestApp::new().await;
    let shop = Shop::new(&app, "+919800002011", "Swap Store").await;
    let tee = shop
        .product(
            &app,
            json!({ "title": "Tee", "options": ["Size"], "variants": [
                { "options": ["S"], "price": 1, "sku": "SKU-A" },
                { "options": ["M"], "price": 1, "sku": "SKU-B" }
            ] }),
        )
        .await;
    let (s, m) = (id(&tee["variants"][0]), id(&tee["variants"][1]));
    let swapped = shop
        .patch_product(
            &app,
            &tee,
            json!({ "variants": [
                { "id": s, "options": ["S"], "price": 1, "sku": "SKU-B" },
                { "id": m, "options": ["M"], "price": 1, "sku": "SKU-A" }
            ] }),
        )
        .await
        .expect(200);
    assert_eq!(variant_ids(&swapped), vec![s.clone(), m.clone()]);
    assert_eq!(swapped["variants"][0]["sku"], "SKU-B");
    assert_eq!(swapped["variants"][1]["sku"], "SKU-A");
    // The swapped SKUs are still guarded.
    assert_field_error(
        &shop.try_product(&app, json!({ "title": "Copy", "price": 1, "sku": "SKU-A" })).await,
        422,
        "variants[0].sku",
    );
}

#[tokio::test]
async fn changing_a_simple_products_price_keeps_its_variant() {
    let app = TestApp::new().await;
    let shop = Shop::new(&app, "+919800002012", "Reprice Store").await;
    let chai = shop.product(&app, json!({ "title": "Chai", "price": 2500, "stock": 10, "sku": "CHAI" })).await;
    let variant = id(&chai["variants"][0]);
    let (cart, ct) = app.open_cart(&slug(&shop.store)).await;
    app.set_item(&slug(&shop.store), &cart, &ct, &variant, 1).await.expect(200);

    let repriced = shop.patch_product(&app, &chai, json!({ "price": 3000 })).await.expect(200);
    let v = &repriced["variants"][0];
    assert_eq!(v["price"], 3000);
    assert_eq!(v["id"], variant.as_str(), "the variant a shopper's cart holds must survive a price change");
    assert_eq!(v["stock"], 10, "stock was not part of the change");
    assert_eq!(v["sku"], "CHAI", "the SKU was not part of the change");
}

async fn public_get(app: &TestApp, shop: &Shop, product: &Value) -> Resp {
    app.get(&shop.public(&format!("/products/{}", id(product))), None).await
}

#[tokio::test]
async fn shoppers_see_only_active_products() {
    let app = TestApp::new().await;
    let shop = Shop::new(&app, "+919800002013", "Status Store").await;
    let active = shop.product(&app, json!({ "title": "On Sale", "price": 100 })).await;
    let draft = shop.product(&app, json!({ "title": "Coming Soon", "price": 100, "status": "draft" })).await;
    let archived = shop.product(&app, json!({ "title": "Gone", "price": 100, "status": "archived" })).await;

    assert_eq!(public_get(&app, &shop, &active).await.expect(200)["title"], "On Sale");
    for hidden in [&draft, &archived] {
        let r = public_get(&app, &shop, hidden).await;
        assert_eq!(r.status, 404, "{}", r.body);
        assert!(r.is_problem());
    }
    assert_eq!(ids(&shop.public_list(&app, "").await), vec![id(&active)]);
    assert!(shop.public_list(&app, "?q=coming").await["items"].as_array().unwrap().is_empty());

    // The merchant sees everything, and can filter by status.
    assert_eq!(ids(&shop.list(&app, "").await).len(), 3);
    assert_eq!(ids(&shop.list(&app, "?status=draft").await), vec![id(&draft)]);
    assert_eq!(ids(&shop.list(&app, "?status=archived").await), vec![id(&archived)]);
    assert_field_error(&app.get(&shop.at("/products?status=sold"), Some(&shop.token)).await, 422, "status");
    // Shoppers cannot ask for other statuses.
    assert_eq!(ids(&shop.public_list(&app, "?status=draft").await), vec![id(&active)]);

    // Status changes take effect at once.
    shop.patch_product(&app, &draft, json!({ "status": "active" })).await.expect(200);
    shop.patch_product(&app, &active, json!({ "status": "archived" })).await.expect(200);
    public_get(&app, &shop, &draft).await.expect(200);
    assert_eq!(public_get(&app, &shop, &active).await.status, 404);
    assert_eq!(ids(&shop.public_list(&app, "").await), vec![id(&draft)]);
    assert_field_error(&shop.patch_product(&app, &draft, json!({ "status": "hidden" })).await, 422, "status");
}

#[tokio::test]
async fn shoppers_see_whether_a_variant_is_available_not_how_many_are_left() {
    let app = TestApp::new().await;
    let shop = Shop::new(&app, "+919800002014", "Stock Store").await;
    let tee = shop
        .product(
            &app,
            json!({ "title": "Tee", "options": ["Size"], "variants": [
                { "options": ["S"], "price": 900, "stock": 0, "sku": "TEE-S" },
                { "options": ["M"], "price": 1000, "stock": 5 },
                { "options": ["L"], "price": 1100 }
            ] }),
        )
        .await;
    let sold_out = shop.product(&app, json!({ "title": "Sold Out", "price": 100, "stock": 0 })).await;

    let p = app.get(&shop.public(&format!("/products/{}", id(&tee))), None).await.expect(200);
    let avail: Vec<bool> =
        p["variants"].as_array().unwrap().iter().map(|v| v["available"].as_bool().unwrap()).collect();
    assert_eq!(avail, vec![false, true, true]);
    for v in p["variants"].as_array().unwrap() {
        assert!(v.get("stock").is_none(), "a shopper must not see stock counts: {v}");
        assert!(v.get("sku").is_none(), "a shopper need not see SKUs: {v}");
    }
    assert!(p.get("status").is_none());
    assert_eq!(p["available"], true);
    assert_eq!(p["price_from"], 900);

    let listed = shop.public_list(&app, "").await;
    let out = listed["items"].as_array().unwrap().iter().find(|i| i["id"] == sold_out["id"]).expect("listed");
    assert_eq!(out["available"], false);
    assert_eq!(out["variants"][0]["available"], false);
    assert!(!listed.to_string().contains("\"stock\""), "no stock counts in the public list");
}

#[tokio::test]
async fn search_matches_title_words_case_insensitively_and_treats_wildcards_literally() {
    let app = TestApp::new().await;
    let shop = Shop::new(&app, "+919800002015", "Search Store").await;
    for title in [
        "Masala Chai",
        "Ginger CHAI Premix",
        "Green Tea",
        "100% Pure Honey",
        "Pure Honey 1000g",
        "Honey_Lemon Drops",
        "Honey-Lemon Tea",
    ] {
        shop.product(&app, json!({ "title": title, "price": 100 })).await;
    }
    let cases: &[(&str, &[&str])] = &[
        ("chai", &["Ginger CHAI Premix", "Masala Chai"]),
        ("CHAI", &["Ginger CHAI Premix", "Masala Chai"]),
        ("masala%20chai", &["Masala Chai"]),
        ("chai+masala", &["Masala Chai"]),
        ("%20%20tea%20", &["Green Tea", "Honey-Lemon Tea"]),
        ("100%25", &["100% Pure Honey"]),
        ("%25", &["100% Pure Honey"]),
        ("honey_lemon", &["Honey_Lemon Drops"]),
        ("_", &["Honey_Lemon Drops"]),
        ("coffee", &[]),
    ];
    for (q, want) in cases {
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(titles(&shop.list(&app, &format!("?q={q}")).await), want, "merchant list, q={q}");
        assert_eq!(titles(&shop.public_list(&app, &format!("?q={q}")).await), want, "storefront list, q={q}");
    }
    assert_eq!(titles(&shop.list(&app, "?q=").await).len(), 7, "an empty query filters nothing");
    assert_field_error(&app.get(&shop.public(&format!("/products?q={}", "a".repeat(101))), None).await, 422, "q");
}

/// Walks a list 100 at a time: the pages' ids.
async fn pages(app: &TestApp, base: &str, token: Option<&str>) -> Vec<Vec<String>> {
    let mut out = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let uri = match &cursor {
            Some(c) => format!("{base}?limit=100&cursor={c}"),
            None => format!("{base}?limit=100"),
        };
        let page = app.get(&uri, token).await.expect(200);
        out.push(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => {
                assert!(page["next_cursor"].is_null(), "{}", page["next_cursor"]);
                return out;
            }
        }
        assert!(out.len() < 10, "pagination does not end");
    }
}

#[tokio::test]
async fn product_lists_page_newest_first_without_repeats() {
    let app = TestApp::new().await;
    let shop = Shop::new(&app, "+919800002016", "Big Store").await;
    let mut created = vec![];
    for n in 0..250 {
        created.push(id(&shop.product(&app, json!({ "title": format!("Item {n:03}"), "price": 100 + n })).await));
    }
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();

    for (what, base, token) in
        [("merchant", shop.at("/products"), Some(shop.token.as_str())), ("storefront", shop.public("/products"), None)]
    {
        let pages = pages(&app, &base, token).await;
        let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![100, 100, 50], "{what} pages");
        let flat: Vec<String> = pages.concat();
        assert_eq!(flat, newest_first, "{what}: every product once, newest first");
    }

    // Without a limit a page holds 20; a limit above 100 is refused.
    let first = shop.public_list(&app, "").await;
    assert_eq!(ids(&first), newest_first[..20]);
    assert!(first["next_cursor"].is_string());
    assert_field_error(&app.get(&shop.public("/products?limit=101"), None).await, 422, "limit");
    assert_field_error(&app.get(&shop.at("/products?cursor=garbage!"), Some(&shop.token)).await, 422, "cursor");
}

#[tokio::test]
async fn the_category_filter_lists_only_that_categorys_products() {
    let app = TestApp::new().await;
    let shop = Shop::new(&app, "+919800002017", "Filter Store").await;
    let tea = shop.category(&app, "Tea").await;
    let snacks = shop.category(&app, "Snacks").await;
    let chai = shop.product(&app, json!({ "title": "Chai", "price": 100, "category_id": id(&tea) })).await;
    let green = shop.product(&app, json!({ "title": "Green", "price": 100, "category_id": id(&tea) })).await;
    let chips = shop.product(&app, json!({ "title": "Chips", "price": 100, "category_id": id(&snacks) })).await;
    let _loose = shop.product(&app, json!({ "title": "Loose", "price": 100 })).await;
    shop.product(&app, json!({ "title": "Draft Tea", "price": 100, "category_id": id(&tea), "status": "draft" })).await;

    assert_eq!(ids(&shop.public_list(&app, &format!("?category={}", id(&tea))).await), vec![id(&green), id(&chai)]);
    assert_eq!(ids(&shop.public_list(&app, &format!("?category={}", id(&snacks))).await), vec![id(&chips)]);
    assert_eq!(
        ids(&shop.list(&app, &format!("?category={}", id(&tea))).await).len(),
        3,
        "the merchant sees the draft too"
    );
    assert_eq!(ids(&shop.public_list(&app, &format!("?category={}&q=chai", id(&tea))).await), vec![id(&chai)]);

    // Moving a product moves it between lists; null uncategorises it.
    shop.patch_product(&app, &chips, json!({ "category_id": id(&tea) })).await.expect(200);
    assert_eq!(ids(&shop.public_list(&app, &format!("?category={}", id(&tea))).await).len(), 3);
    let loose = shop.patch_product(&app, &chai, json!({ "category_id": null })).await.expect(200);
    assert!(loose["category_id"].is_null());
    assert!(!ids(&shop.public_list(&app, &format!("?category={}", id(&tea))).await).contains(&id(&chai)));

    let unknown = uuid::Uuid::now_v7();
    assert!(shop.public_list(&app, &format!("?category={unknown}")).await["items"].as_array().unwrap().is_empty());
    assert_field_error(&app.get(&shop.public("/products?category=tea"), None).await, 422, "category");
    assert_field_error(
        &shop.try_product(&app, json!({ "title": "X", "price": 1, "category_id": unknown.to_string() })).await,
        422,
        "category_id",
    );
}

/// The outbox of one store: (type, payload) in the order written.
async fn events(app: &TestApp, token: &str, store: &Value) -> Vec<(String, Value)> {
    let me = app.get("/api/v1/me", Some(token)).await.expect(200);
    let merchant = MerchantId::parse(me["id"].as_str().unwrap()).unwrap();
    let store_id = StoreId::parse(&id(store)).unwrap();
    let scope = app.storage.scope_for_owner(merchant, store_id).await.expect("the owner's scope");
    let events = app.storage.shard(&scope).events(&scope, 0, 1000).await.expect("events");
    let mut last = 0;
    events
        .into_iter()
        .map(|(seq, e)| {
            assert!(seq > last, "events come in write order");
            last = seq;
            assert_eq!(e.store_id, store_id, "an event of another store");
            assert_eq!(e.version, 1);
            (e.kind, e.payload)
        })
        .collect()
}

fn kinds(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(k, _)| k.as_str()).collect()
}

#[tokio::test]
async fn every_catalog_change_writes_an_outbox_event_and_a_refused_one_writes_none() {
    // One shard: both stores' events share one outbox table.
    let app = TestApp::new().await;
    let a = Shop::new(&app, "+919800002018", "Outbox A").await;
    let b = Shop::new(&app, "+919800002019", "Outbox B").await;
    assert_eq!(kinds(&events(&app, &a.token, &a.store).await), vec!["store.created"]);

    let tea = a.category(&app, "Tea").await;
    app.patch(&a.at(&format!("/categories/{}", id(&tea))), Some(&a.token), json!({ "description": "Leaves" }))
        .await
        .expect(200);
    let chai = a.product(&app, json!({ "title": "Chai", "price": 100, "sku": "CHAI", "category_id": id(&tea) })).await;
    a.patch_product(&app, &chai, json!({ "title": "Masala Chai" })).await.expect(200);
    b.product(&app, json!({ "title": "Their Chai", "price": 100 })).await;

    // Refused changes leave no trace.
    assert_eq!(app.post(&a.at("/categories"), Some(&a.token), json!({ "name": "TEA" })).await.status, 409);
    assert_eq!(a.try_product(&app, json!({ "title": "Copy", "price": 1, "sku": "CHAI" })).await.status, 422);
    assert_eq!(
        a.patch_product(&app, &chai, json!({ "category_id": uuid::Uuid::now_v7().to_string() })).await.status,
        422
    );

    assert_eq!(a.delete(&app, &format!("/products/{}", id(&chai))).await.status, 204);
    assert_eq!(a.delete(&app, &format!("/categories/{}", id(&tea))).await.status, 204);
    assert_eq!(a.delete(&app, &format!("/products/{}", id(&chai))).await.status, 404);

    let got = events(&app, &a.token, &a.store).await;
    assert_eq!(
        kinds(&got),
        vec![
            "store.created",
            "category.created",
            "category.updated",
            "product.created",
            "product.updated",
            "product.deleted",
            "category.deleted"
        ]
    );
    assert_eq!(got[0].1["name"], "Outbox A");
    assert_eq!(got[1].1["id"], tea["id"]);
    assert_eq!(got[2].1["description"], "Leaves");
    assert_eq!(got[3].1["id"], chai["id"]);
    assert_eq!(got[4].1["title"], "Masala Chai");
    assert_eq!(got[5].1["id"], chai["id"]);
    assert_eq!(got[6].1["id"], tea["id"]);

    let theirs = events(&app, &b.token, &b.store).await;
    assert_eq!(kinds(&theirs), vec!["store.created", "product.created"]);
    assert_eq!(theirs[1].1["title"], "Their Chai");
}
