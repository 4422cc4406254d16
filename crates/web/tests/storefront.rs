//! The server-rendered storefront, driven in-process the way a browser without JavaScript would:
//! the whole application (API, pages, custom-domain rewrite) per test, data set up through the
//! JSON API, pages read as HTML, forms posted with the token and cookies the page gave.
//!
//! What it proves:
//! - **Pages**: home, category, product and search answer HTML with prices (`₹249.00`), a
//!   `<title>`, a description, a canonical link, Open Graph tags and sized images; a product page
//!   stays small.
//! - **Escaping**: merchant text (`<script>`, attribute breakouts, markup in a store name) never
//!   reaches a page unescaped — home, product, search or cart.
//! - **Buying without JavaScript**: product → cart → checkout → order page by forms and 303s;
//!   stock goes down once, and a resubmitted checkout form places one order.
//! - **CSRF**: a missing, wrong or another browser's form token is refused with 403 and changes
//!   nothing.
//! - **Addresses**: old slugs redirect permanently keeping path and query; a custom domain serves
//!   its store at `/` with slug-less links and canonical URLs on that domain; an unknown host
//!   gets the platform; drafts and unknown stores are HTML 404s.
//! - **Crawlers**: sitemaps list active products only; robots files are sane.
//! - **Themes**: a merchant template changes the page; one that runs away, produces huge output
//!   or tries to read files is contained and the default theme is served.
//! - **Carts**: a cart cookie of one store is worthless on another.

mod support;

use std::time::{Duration, Instant};

use kirana_web::storefront::sample_contexts;
use serde_json::json;
use support::*;

/// A store with a category, an active product in it (with an uploaded-style image), and a draft.
struct Catalog {
    shop: Shop,
    category: String,
    product: serde_json::Value,
    draft: serde_json::Value,
}

impl Catalog {
    fn slug(&self) -> String {
        self.shop.slug()
    }

    fn product_id(&self) -> String {
        id(&self.product)
    }
}

async fn catalog(p: &Platform, phone: &str, name: &str) -> Catalog {
    let shop = p.shop(phone, name).await;
    let category = id(&p.category(&shop, "Tea").await);
    let image = format!("/media/{}/{}_800x600", shop.id(), "ab".repeat(32));
    let product = p
        .product(
            &shop,
            json!({
                "title": "Masala Chai",
                "description": "Strong Assam tea with cardamom and ginger.",
                "price": 24900,
                "stock": 5,
                "category_id": category,
                "images": [image],
            }),
        )
        .await;
    let draft = p.product(&shop, json!({ "title": "Secret Blend", "price": 100, "status": "draft" })).await;
    Catalog { shop, category, product, draft }
}

/// Adds one unit of `variant` from the product page's form: the cart redirect.
async fn add_to_cart(b: &Browser, base: &str, product_id: &str) -> Page {
    let page = b.get(&format!("{base}/product/{product_id}")).await;
    page.html();
    let variant = page.field("variant_id");
    let mode = page.field("mode");
    b.post(&format!("{base}/cart"), &[("mode", &mode), ("variant_id", &variant), ("quantity", "1")]).await
}

/// The checkout form's fields for a valid shopper, with the page's token and key.
fn shopper<'a>(csrf: &'a str, key: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("_csrf", csrf),
        ("key", key),
        ("name", "Asha Rao"),
        ("phone", "+919812345678"),
        ("email", "asha@example.in"),
        ("line1", "12 MG Road"),
        ("line2", ""),
        ("landmark", ""),
        ("city", "Pune"),
        ("state", ""),
        ("postal_code", "411001"),
        ("payment_method", "cod"),
        ("coupon", ""),
        ("note", ""),
    ]
}

/// The page's JSON-LD block, parsed.
#[track_caller]
fn json_ld(html: &str) -> serde_json::Value {
    let start = html.find("application/ld+json\">").expect("a JSON-LD block") + "application/ld+json\">".len();
    let end = start + html[start..].find("</script>").expect("the block ends");
    serde_json::from_str(&html[start..end])
        .unwrap_or_else(|e| panic!("JSON-LD does not parse ({e}): {}", &html[start..end]))
}

fn stock(product: &serde_json::Value) -> i64 {
    product["variants"][0]["stock"].as_i64().expect("tracked stock")
}

#[track_caller]
fn assert_permanent_redirect(page: &Page, to: &str) {
    assert!(
        matches!(page.status.as_u16(), 301 | 308),
        "expected a permanent redirect, got {} (Location {:?})",
        page.status,
        page.location()
    );
    assert_eq!(page.location(), Some(to));
}

// ---------------------------------------------------------------------------------------------
// Pages
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn catalog_pages_render_html_with_prices_titles_and_canonical_links() {
    let p = Platform::new().await;
    let c = catalog(&p, "+919800000101", "Sharma General Store").await;
    let (slug, pid) = (c.slug(), c.product_id());
    let b = p.browser();

    let pages = [
        (format!("/{slug}"), format!("{PUBLIC_URL}/{slug}")),
        (format!("/{slug}/"), format!("{PUBLIC_URL}/{slug}")),
        (format!("/{slug}/category/{}", c.category), format!("{PUBLIC_URL}/{slug}/category/{}", c.category)),
        (format!("/{slug}/product/{pid}"), format!("{PUBLIC_URL}/{slug}/product/{pid}")),
        (format!("/{slug}/search?q=chai"), format!("{PUBLIC_URL}/{slug}/search")),
    ];
    for (path, canonical) in pages {
        let page = b.get(&path).await;
        let html = page.html();
        assert!(html.contains("Masala Chai"), "{path}: no product title");
        assert!(html.contains("₹249.00"), "{path}: no price formatted as ₹249.00");
        assert!(!html.contains("Secret Blend"), "{path}: a draft is listed");
        let title = html.split("<title>").nth(1).and_then(|t| t.split("</title>").next()).unwrap_or("");
        assert!(!title.trim().is_empty(), "{path}: empty <title>");
        assert!(page.meta("description").is_some_and(|d| !d.is_empty()), "{path}: no meta description");
        assert_eq!(page.canonical().as_deref(), Some(canonical.as_str()), "{path}: canonical");
        assert_eq!(page.meta("og:url").as_deref(), Some(canonical.as_str()), "{path}: og:url");
        assert!(
            page.hrefs().iter().any(|h| h == &format!("/{slug}/product/{pid}")) || path.contains("/product/"),
            "{path}: no link to the product"
        );
        // The same for every visitor, so browsers revalidate and CDNs share it.
        let cache = page.header("cache-control");
        assert!(cache.contains("public") && cache.contains("s-maxage"), "{path}: Cache-Control {cache:?}");
        assert!(page.set_cookie_names().is_empty(), "{path}: a shared page sets no cookie");
    }

    // The search page reflects the query, and finds nothing for a word that is not there.
    let page = b.get(&format!("/{slug}/search?q=saffron")).await;
    let html = page.html();
    assert!(html.contains("saffron") && !html.contains("Masala Chai"), "{html}");
}

#[tokio::test]
async fn the_product_page_is_small_and_describes_itself_for_sharing() {
    let p = Platform::new().await;
    let c = catalog(&p, "+919800000102", "Sharma General Store").await;
    let (slug, pid) = (c.slug(), c.product_id());
    let page = p.browser().get(&format!("/{slug}/product/{pid}")).await;
    let html = page.html();

    assert_eq!(page.meta("og:title").as_deref(), Some("Masala Chai · Sharma General Store"));
    assert_eq!(page.meta("og:description").as_deref(), Some("Strong Assam tea with cardamom and ginger."));
    assert_eq!(page.meta("description").as_deref(), Some("Strong Assam tea with cardamom and ginger."));
    assert_eq!(page.meta("og:type").as_deref(), Some("product"));
    let image = c.product["images"][0].as_str().unwrap();
    // Absolute, and a file that exists: the 640-px variant of the 800-px upload.
    assert_eq!(page.meta("og:image"), Some(format!("{PUBLIC_URL}{image}/640.jpg")), "og:image must be absolute");

    // The product image is sized (no layout shift) and offers its resized variants.
    let img = html.split("<img ").nth(1).and_then(|t| t.split('>').next()).expect("an <img> on the page");
    assert!(img.contains("width=\"640\"") && img.contains("height=\"480\""), "unsized image: <img {img}>");
    assert!(img.contains(&format!("src=\"{image}/640.jpg\"")), "<img {img}>");
    assert!(img.contains("srcset=") && img.contains("alt=\"Masala Chai\""), "<img {img}>");

    // Structured data for search engines, and the add-to-cart form.
    let ld = json_ld(html);
    assert_eq!((ld["@type"].as_str(), ld["name"].as_str()), (Some("Product"), Some("Masala Chai")), "{ld}");
    assert_eq!((ld_price(&ld), ld["offers"]["priceCurrency"].as_str()), (Some(249.0), Some("INR")));
    assert_eq!(page.field("variant_id"), variant(&c.product));
    // The same page for every visitor, so caches may share it: no form token, no cookie.
    assert!(field(html, "_csrf").is_none(), "a public page carries no per-browser token");
    assert!(page.set_cookie_names().is_empty(), "a public page sets no cookie: {:?}", page.set_cookie_names());
    assert!(page.header("cache-control").contains("public"), "{:?}", page.header("cache-control"));

    let size = html.len();
    println!("product page: {size} bytes");
    assert!(size < 14 * 1024, "a simple product page should fit in ~14 KB (the first round trip); it is {size} bytes");
}

#[tokio::test]
async fn drafts_and_unknown_stores_are_html_not_found_pages() {
    let p = Platform::new().await;
    let c = catalog(&p, "+919800000103", "Draft Store").await;
    let slug = c.slug();
    let b = p.browser();

    for path in [
        format!("/{slug}/product/{}", id(&c.draft)),
        format!("/{slug}/product/not-a-uuid"),
        format!("/{slug}/product/{}", uuid_like()),
        format!("/{slug}/category/{}", uuid_like()),
        "/no-such-store".to_string(),
        "/no-such-store/product/1".to_string(),
        "/no-such-store/cart".to_string(),
    ] {
        let page = b.get(&path).await;
        assert_eq!(page.status.as_u16(), 404, "{path}: {}", page.body);
        assert!(page.content_type().starts_with("text/html"), "{path}: a shopper gets a page, not JSON");
        assert!(page.body.contains("Not found") && !page.body.contains("Secret Blend"), "{path}: {}", page.body);
    }
}

fn uuid_like() -> String {
    "0190a5b2-7c3e-7def-8123-456789abcdef".to_string()
}

#[tokio::test]
async fn an_empty_cart_page_works_and_checkout_sends_an_empty_cart_back_to_it() {
    let p = Platform::new().await;
    let c = catalog(&p, "+919800000104", "Empty Cart Store").await;
    let slug = c.slug();
    let b = p.browser();

    let html = b.get(&format!("/{slug}/cart")).await.html().to_string();
    assert!(html.contains("Your cart is empty"), "{html}");
    assert!(!html.contains("Cart ("), "an empty cart shows no count");
    assert_eq!(b.get(&format!("/{slug}/checkout")).await.redirect(), format!("/{slug}/cart"));
}

#[tokio::test]
async fn structured_data_prices_follow_the_store_currency() {
    let p = Platform::new().await;
    let token = p.sign_in("+919800000105").await;
    for (currency, minor, shown, price) in [("JPY", 500, "¥500", 500.0), ("KWD", 1_005, "KWD 1.005", 1.005)] {
        let store = p
            .api(
                axum::http::Method::POST,
                "/api/v1/stores",
                Some(&token),
                Some(json!({ "name": format!("{currency} Shop"), "currency": currency })),
            )
            .await
            .expect(201);
        let shop = Shop { token: token.clone(), store };
        let product = p.product(&shop, json!({ "title": "Matcha", "price": minor })).await;
        let html = p.browser().get(&format!("/{}/product/{}", shop.slug(), id(&product))).await.html().to_string();
        assert!(html.contains(shown), "{currency}: the page shows {shown}");
        let ld = json_ld(&html);
        assert_eq!(ld["offers"]["priceCurrency"].as_str(), Some(currency));
        assert_eq!(ld_price(&ld), Some(price), "{currency}: JSON-LD price for {shown}: {ld}");
    }
}

// ---------------------------------------------------------------------------------------------
// Escaping
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn merchant_text_is_escaped_on_every_page() {
    const SCRIPT: &str = "<script>alert(1)</script>";
    const BREAKOUT: &str = "\"><img src=x onerror=alert(1)>";
    const STORE: &str = "<b>Bold</b> & Sons";
    let p = Platform::new().await;
    let shop = p.shop("+919800000201", STORE).await;
    let slug = shop.slug();
    let a = p.product(&shop, json!({ "title": SCRIPT, "description": BREAKOUT, "price": 1000, "stock": 9 })).await;
    let bp = p.product(&shop, json!({ "title": BREAKOUT, "description": SCRIPT, "price": 2000, "stock": 9 })).await;
    let b = p.browser();

    assert_eq!(add_to_cart(&b, &format!("/{slug}"), &id(&a)).await.redirect(), format!("/{slug}/cart"));
    assert_eq!(add_to_cart(&b, &format!("/{slug}"), &id(&bp)).await.redirect(), format!("/{slug}/cart"));

    let searched: String = form_urlencoded::byte_serialize(b"alert").collect();
    let query: String = form_urlencoded::byte_serialize(SCRIPT.as_bytes()).collect();
    for path in [
        format!("/{slug}"),
        format!("/{slug}/product/{}", id(&a)),
        format!("/{slug}/product/{}", id(&bp)),
        format!("/{slug}/search?q={searched}"),
        format!("/{slug}/search?q={query}"),
        format!("/{slug}/cart"),
        format!("/{slug}/checkout"),
    ] {
        let page = b.get(&path).await;
        let html = page.html();
        for raw in [SCRIPT, BREAKOUT, "<b>", "<img src=x"] {
            assert!(!html.contains(raw), "{path}: {raw:?} appears unescaped:\n{html}");
        }
        assert!(html.contains(&escape(STORE)), "{path}: the escaped store name is missing");
        // Besides JSON-LD, the one script is the layout's cart count, on public pages.
        let scripts = html.matches("<script>").count();
        let public = !path.ends_with("/cart") && !path.ends_with("/checkout");
        assert_eq!(scripts, usize::from(public), "{path}: a <script> element other than ours");
    }
    // The escaped forms are what shoppers read.
    for (path, expect) in [
        (format!("/{slug}"), vec![escape(SCRIPT), escape(BREAKOUT)]),
        (format!("/{slug}/product/{}", id(&a)), vec![escape(SCRIPT), escape(BREAKOUT)]),
        (format!("/{slug}/search?q={searched}"), vec![escape(SCRIPT), escape(BREAKOUT)]),
        (format!("/{slug}/cart"), vec![escape(SCRIPT), escape(BREAKOUT)]),
    ] {
        let html = b.get(&path).await.html().to_string();
        for e in expect {
            assert!(html.contains(&e), "{path}: missing the escaped form {e:?}");
        }
    }
    // Meta tags carry the text as attribute values, quotes escaped.
    let page = b.get(&format!("/{slug}/product/{}", id(&a))).await;
    assert_eq!(page.meta("og:description").as_deref(), Some(BREAKOUT));
    assert!(page.body.contains(&format!("content=\"{}\"", escape(BREAKOUT))));
    // Structured data carries the exact text, JSON-escaped so it cannot close its <script>.
    let ld = json_ld(&page.body);
    assert_eq!((ld["name"].as_str(), ld["description"].as_str()), (Some(SCRIPT), Some(BREAKOUT)));
}

// ---------------------------------------------------------------------------------------------
// Buying
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_shopper_buys_with_forms_and_redirects_alone() {
    let p = Platform::new().await;
    let c = catalog(&p, "+919800000301", "Form Store").await;
    let (slug, pid) = (c.slug(), c.product_id());
    let b = p.browser();

    // Product page → add to cart → 303 to the cart, which holds the item.
    let res = add_to_cart(&b, &format!("/{slug}"), &pid).await;
    assert_eq!(res.status.as_u16(), 303);
    assert_eq!(res.redirect(), format!("/{slug}/cart"));
    assert!(b.cookie("kirana_cart", &format!("/{slug}")).is_some(), "the cart cookie is scoped to the store");
    let cart = b.get(&format!("/{slug}/cart")).await;
    let html = cart.html();
    assert!(html.contains("Masala Chai") && html.contains("₹249.00") && html.contains("Cart (1)"), "{html}");

    // Checkout form → place order → 303 to the order page with its token.
    let form = b.get(&format!("/{slug}/checkout")).await;
    form.html();
    let (csrf, key) = (form.csrf(), form.field("key"));
    assert!(!key.is_empty(), "the checkout form carries an idempotency key");
    let placed = b.post(&format!("/{slug}/checkout"), &shopper(&csrf, &key)).await;
    assert_eq!(placed.status.as_u16(), 303, "{}", placed.body);
    let to = placed.redirect().to_string();
    let prefix = format!("/{slug}/order/");
    assert!(to.starts_with(&prefix) && to.contains("?token="), "{to}");

    let orders = p.orders(&c.shop).await;
    assert_eq!(orders.len(), 1, "one order placed");
    let order = &orders[0];
    assert!(to.starts_with(&format!("{prefix}{}?", id(order))), "{to} is not order {}", id(order));

    // The order page shows its number and status, to anyone with the link.
    let number = order["number"].as_i64().unwrap();
    for viewer in [b.clone(), p.browser()] {
        let html = viewer.get(&to).await.html().to_string();
        assert!(html.contains(&format!("Order #{number}")), "{html}");
        assert!(html.contains(r#"Status: <strong id="order-status">Placed</strong>"#), "{html}");
        assert!(html.contains("12 MG Road") && html.contains("₹249.00"), "{html}");
    }
    // Without the token it is not found.
    assert_eq!(p.browser().get(&format!("{prefix}{}", id(order))).await.status.as_u16(), 404);

    // Stock went down by one; the cart is spent.
    assert_eq!(stock(&p.merchant_product(&c.shop, &pid).await), 4);
    assert!(b.get(&format!("/{slug}/cart")).await.html().contains("Your cart is empty"));
}

#[tokio::test]
async fn resubmitting_the_checkout_form_places_one_order() {
    let p = Platform::new().await;
    let c = catalog(&p, "+919800000302", "Double Click Store").await;
    let (slug, pid) = (c.slug(), c.product_id());
    let b = p.browser();
    add_to_cart(&b, &format!("/{slug}"), &pid).await.redirect();
    let form = b.get(&format!("/{slug}/checkout")).await;
    let (csrf, key) = (form.csrf(), form.field("key"));

    let first = b.post(&format!("/{slug}/checkout"), &shopper(&csrf, &key)).await;
    let first_to = first.redirect().to_string();
    let again = b.post(&format!("/{slug}/checkout"), &shopper(&csrf, &key)).await;
    assert_eq!(again.status.as_u16(), 303, "{}", again.body);
    assert_eq!(again.redirect(), first_to, "the resubmitted form leads to the same order");

    assert_eq!(p.orders(&c.shop).await.len(), 1, "a double-submitted form places one order");
    assert_eq!(stock(&p.merchant_product(&c.shop, &pid).await), 4, "stock taken once");
}

#[tokio::test]
async fn an_invalid_checkout_form_is_shown_again_with_errors_and_what_was_typed() {
    let p = Platform::new().await;
    let c = catalog(&p, "+919800000303", "Typo Store").await;
    let slug = c.slug();
    let b = p.browser();
    add_to_cart(&b, &format!("/{slug}"), &c.product_id()).await.redirect();
    let form = b.get(&format!("/{slug}/checkout")).await;
    let (csrf, key) = (form.csrf(), form.field("key"));

    let mut fields = shopper(&csrf, &key);
    fields.retain(|(k, _)| *k != "phone");
    fields.push(("phone", "12"));
    let res = b.post(&format!("/{slug}/checkout"), &fields).await;
    assert_eq!(res.status.as_u16(), 422, "{}", res.body);
    assert!(res.body.contains("aria-invalid=\"true\""), "the bad field is marked");
    assert_eq!(res.field("name"), "Asha Rao", "typed values are kept");
    assert_eq!(res.field("key"), key, "the same key, so a corrected form is still one order");
    assert!(p.orders(&c.shop).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// CSRF
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cart_posts_from_another_site_are_refused_and_change_nothing() {
    let p = Platform::new().await;
    let c = catalog(&p, "+919800000401", "Guarded Store").await;
    let (slug, pid) = (c.slug(), c.product_id());
    let variant_id = variant(&c.product);
    let cart = format!("/{slug}/cart");

    // Alice has this site's form cookie (any private page sets it) but no cart; Bob has a cart,
    // whose page's forms carry his token.
    let alice = p.browser();
    assert!(alice.get(&cart).await.html().contains("Your cart is empty"));
    let bob = p.browser();
    add_to_cart(&bob, &format!("/{slug}"), &pid).await.redirect();
    let bob_token = bob.get(&cart).await.csrf();

    let add = [("mode", "add"), ("variant_id", variant_id.as_str()), ("quantity", "1")];
    let with_token = |t: &str| {
        let mut f: Vec<(String, String)> = add.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        f.push(("_csrf".into(), t.into()));
        form(&f)
    };
    let forged: Vec<(&str, Option<&str>, Option<&str>, String)> = vec![
        // (what, Origin, Referer, body)
        ("a cross-site form without a token", Some("http://evil.test"), None, form_of(&add)),
        ("a cross-site form that sends only a Referer", None, Some("http://evil.test/page"), form_of(&add)),
        ("a post that says nothing of where it came from", None, None, form_of(&add)),
        (
            "a same-site post with a wrong token",
            Some("http://kirana.test"),
            None,
            with_token(&"A".repeat(bob_token.len())),
        ),
        ("a same-site post with another browser's token", Some("http://kirana.test"), None, with_token(&bob_token)),
    ];
    for (what, origin, referer, body) in forged {
        let res = alice.post_raw(&cart, origin, referer, body).await;
        assert_eq!(res.status.as_u16(), 403, "{what}: {}", res.body);
        assert!(res.content_type().starts_with("text/html"), "{what}: an HTML page");
        assert!(!res.set_cookie_names().contains(&"kirana_cart".to_string()), "{what}: a cart was opened");
    }
    // A browser that never loaded a private page (no form cookie) cannot use a token either.
    let stranger = p.browser();
    let res = stranger.post(&cart, &[("_csrf", &bob_token), ("variant_id", &variant_id)]).await;
    assert_eq!(res.status.as_u16(), 403);

    assert!(alice.cookie("kirana_cart", &format!("/{slug}")).is_none());
    assert!(alice.get(&cart).await.html().contains("Your cart is empty"));
    assert!(bob.get(&cart).await.html().contains("Cart (1)"), "Bob's cart is untouched");
    assert_eq!(stock(&p.merchant_product(&c.shop, &pid).await), 5);

    // The product page's form (no token, this site's Origin) works; then the cart page's form
    // with Alice's own token; and a post that sends only this site's Referer.
    assert_eq!(add_to_cart(&alice, &format!("/{slug}"), &pid).await.redirect(), cart);
    let alice_token = alice.get(&cart).await.csrf();
    assert_ne!(alice_token, bob_token, "form tokens are per browser");
    let set =
        [("_csrf", alice_token.as_str()), ("mode", "set"), ("variant_id", variant_id.as_str()), ("quantity", "3")];
    assert_eq!(alice.post(&cart, &set).await.redirect(), cart);
    assert!(alice.get(&cart).await.html().contains("Cart (3)"));
    let res = bob.post_raw(&cart, None, Some(&format!("http://kirana.test/{slug}/product/{pid}")), form_of(&add)).await;
    assert_eq!(res.redirect(), cart);
    assert!(bob.get(&cart).await.html().contains("Cart (2)"));
}

fn form_of(fields: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish()
}

fn form(fields: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish()
}

#[tokio::test]
async fn checkout_posts_without_this_browsers_form_token_are_refused_and_place_nothing() {
    let p = Platform::new().await;
    let c = catalog(&p, "+919800000402", "Guarded Checkout").await;
    let (slug, pid) = (c.slug(), c.product_id());
    let checkout = format!("/{slug}/checkout");

    let alice = p.browser();
    add_to_cart(&alice, &format!("/{slug}"), &pid).await.redirect();
    let form = alice.get(&checkout).await;
    let key = form.field("key");
    let bob = p.browser();
    add_to_cart(&bob, &format!("/{slug}"), &pid).await.redirect();
    let bob_token = bob.get(&format!("/{slug}/cart")).await.csrf();

    for (what, token) in [("missing", None), ("wrong", Some("not-the-token".to_string())), ("bob's", Some(bob_token))] {
        let mut fields = shopper("", &key);
        fields.retain(|(k, _)| *k != "_csrf");
        if let Some(t) = &token {
            fields.push(("_csrf", t));
        }
        let res = alice.post(&checkout, &fields).await;
        assert_eq!(res.status.as_u16(), 403, "{what} token: {}", res.body);
    }
    assert!(p.orders(&c.shop).await.is_empty(), "no order was placed");
    assert_eq!(stock(&p.merchant_product(&c.shop, &pid).await), 5, "no stock was taken");
    let html = alice.get(&format!("/{slug}/cart")).await.html().to_string();
    assert!(html.contains("Masala Chai") && html.contains("Cart (1)"), "the cart is untouched: {html}");

    // Bob's cookies with Alice's cart cookie and token: still refused (the token is Alice's).
    let alice_cart = alice.cookie("kirana_cart", &format!("/{slug}")).unwrap();
    bob.set_cookie("kirana_cart", &format!("/{slug}"), &alice_cart);
    let res = bob.post(&checkout, &shopper(&form.csrf(), &key)).await;
    assert_eq!(res.status.as_u16(), 403);
    assert!(p.orders(&c.shop).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Addresses: old slugs, custom domains, unknown hosts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_old_slug_redirects_permanently_keeping_path_and_query() {
    let p = Platform::new().await;
    let c = catalog(&p, "+919800000501", "Old Name Store").await;
    let (old, pid) = (c.slug(), c.product_id());
    let renamed = p.patch_store(&c.shop, json!({ "slug": "new-name-store" })).await;
    let new = renamed["slug"].as_str().unwrap().to_string();
    assert_eq!(new, "new-name-store");
    let b = p.browser();

    assert_permanent_redirect(&b.get(&format!("/{old}/product/{pid}?x=1")).await, &format!("/{new}/product/{pid}?x=1"));
    assert_permanent_redirect(&b.get(&format!("/{old}")).await, &format!("/{new}"));
    assert_permanent_redirect(
        &b.get(&format!("/{old}/category/{}?after=abc", c.category)).await,
        &format!("/{new}/category/{}?after=abc", c.category),
    );
    // The new address serves the page, canonical on the new slug.
    let page = b.get(&format!("/{new}/product/{pid}")).await;
    page.html();
    assert_eq!(page.canonical(), Some(format!("{PUBLIC_URL}/{new}/product/{pid}")));
}

#[tokio::test]
async fn an_old_slug_typed_in_capitals_still_redirects_to_the_same_page() {
    let p = Platform::new().await;
    let c = catalog(&p, "+919800000502", "Caps Store").await;
    let (old, pid) = (c.slug(), c.product_id());
    p.patch_store(&c.shop, json!({ "slug": "caps-store-two" })).await;
    let shouted = old.to_ascii_uppercase();
    // Slugs are matched case-insensitively, so the redirect must keep the rest of the path.
    assert_permanent_redirect(
        &p.browser().get(&format!("/{shouted}/product/{pid}?x=1")).await,
        &format!("/caps-store-two/product/{pid}?x=1"),
    );
}

#[tokio::test]
async fn a_custom_domain_serves_its_store_at_the_root_with_links_and_canonicals_on_that_domain() {
    let p = Platform::new().await;
    let c = catalog(&p, "+919800000601", "Domain Store").await;
    let (slug, pid) = (c.slug(), c.product_id());
    p.patch_store(&c.shop, json!({ "custom_domain": "shop.example.com" })).await;
    let origin = "http://shop.example.com";
    let b = p.browser().on_host("shop.example.com");

    let home = b.get("/").await;
    let html = home.html();
    assert!(html.contains("Domain Store") && html.contains("Masala Chai"), "{html}");
    assert!(matches!(home.canonical().as_deref(), Some("http://shop.example.com" | "http://shop.example.com/")));
    assert!(home.hrefs().contains(&format!("/product/{pid}")), "links without the slug: {:?}", home.hrefs());

    let page = b.get(&format!("/product/{pid}")).await;
    page.html();
    assert_eq!(page.canonical(), Some(format!("{origin}/product/{pid}")));
    assert_eq!(page.meta("og:url"), Some(format!("{origin}/product/{pid}")));
    let slugged: Vec<String> = page.hrefs().into_iter().filter(|h| h.starts_with(&format!("/{slug}"))).collect();
    assert!(slugged.is_empty(), "links with the slug on the store's own domain: {slugged:?}");
    assert!(page.body.contains("action=\"/cart\""), "the form posts to the domain's /cart");

    let cat = b.get(&format!("/category/{}?x=1", c.category)).await;
    assert_eq!(cat.canonical(), Some(format!("{origin}/category/{}", c.category)));

    // Host names are case-insensitive and may carry a port.
    let page = p.browser().on_host("Shop.Example.COM:8080").get(&format!("/product/{pid}")).await;
    assert!(page.html().contains("Masala Chai"));

    // Buying on the domain: cookies on `/`, redirects without the slug.
    let res = add_to_cart(&b, "", &pid).await;
    assert_eq!(res.redirect(), "/cart");
    assert!(b.cookie("kirana_cart", "/").is_some());
    let form = b.get("/checkout").await;
    let placed = b.post("/checkout", &shopper(&form.csrf(), &form.field("key"))).await;
    let to = placed.redirect().to_string();
    assert!(to.starts_with("/order/"), "{to}");
    assert!(b.get(&to).await.html().contains("Order #"));

    // Crawlers on the domain.
    let robots = b.get("/robots.txt").await;
    assert_eq!(robots.expect(200).lines().last(), Some(format!("Sitemap: {origin}/sitemap.xml").as_str()));
    assert!(robots.body.contains("Disallow: /cart"));
    let sitemap = b.get("/sitemap.xml").await;
    assert!(sitemap.expect(200).contains(&format!("<loc>{origin}/product/{pid}</loc>")));

    // Platform paths are the platform's on every host.
    let api = b.get(&format!("/api/v1/storefront/{slug}")).await;
    assert_eq!(api.status.as_u16(), 200, "{}", api.body);
    assert!(api.content_type().starts_with("application/json"));

    // The slug path still works on the platform host, canonical on the platform.
    let page = p.browser().get(&format!("/{slug}/product/{pid}")).await;
    assert_eq!(page.canonical(), Some(format!("{PUBLIC_URL}/{slug}/product/{pid}")));
}

#[tokio::test]
async fn the_order_status_link_on_a_custom_domain_points_at_that_domain() {
    let p = Platform::new().await;
    let c = catalog(&p, "+919800000603", "Linked Store").await;
    p.patch_store(&c.shop, json!({ "custom_domain": "shop.example.com" })).await;
    let b = p.browser().on_host("shop.example.com");
    add_to_cart(&b, "", &c.product_id()).await.redirect();
    let form = b.get("/checkout").await;
    let to = b.post("/checkout", &shopper(&form.csrf(), &form.field("key"))).await.redirect().to_string();
    let page = b.get(&to).await;
    page.html();

    // "Keep this page's address": the link shown must lead back to this page.
    let shown = page.hrefs().into_iter().find(|h| h.contains("token=")).expect("the page links to itself");
    let (_, rest) = shown.split_once("://").expect("an absolute link");
    let (host, path) = rest.split_once('/').expect("a path");
    let again = p.browser().on_host(host).get(&format!("/{path}")).await;
    assert_eq!(again.status.as_u16(), 200, "the order page's own link {shown} does not work: {}", again.body);
    assert!(shown.starts_with("http://shop.example.com/order/"), "{shown}");
}

#[tokio::test]
async fn an_unknown_host_gets_the_platform_as_on_its_own_host() {
    let p = Platform::new().await;
    let c = catalog(&p, "+919800000602", "Host Store").await;
    let (slug, pid) = (c.slug(), c.product_id());
    p.patch_store(&c.shop, json!({ "custom_domain": "shop.example.com" })).await;
    let platform = p.browser();
    let stranger = p.browser().on_host("other.example.net");

    // `/` and slug-less store paths are nobody's store there, exactly as on the platform host.
    for path in ["/".to_string(), format!("/product/{pid}")] {
        let (a, b) = (platform.get(&path).await, stranger.get(&path).await);
        assert_eq!(a.status, b.status, "{path}");
        assert_eq!(b.status.as_u16(), 404, "{path}: {}", b.body);
        assert!(!b.body.contains("Masala Chai"));
    }
    // Slug paths serve the store with the platform's addresses.
    let page = stranger.get(&format!("/{slug}/product/{pid}")).await;
    page.html();
    assert_eq!(page.canonical(), Some(format!("{PUBLIC_URL}/{slug}/product/{pid}")));
    assert!(page.body.contains(&format!("action=\"/{slug}/cart\"")));
}

// ---------------------------------------------------------------------------------------------
// Crawlers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_sitemap_lists_active_products_and_robots_files_point_crawlers_well() {
    let p = Platform::new().await;
    let c = catalog(&p, "+919800000701", "Sitemap Store").await;
    let (slug, pid) = (c.slug(), c.product_id());
    let b = p.browser();

    let sitemap = b.get(&format!("/{slug}/sitemap.xml")).await;
    let xml = sitemap.expect(200);
    assert!(sitemap.content_type().starts_with("application/xml"), "{:?}", sitemap.headers);
    assert!(xml.starts_with("<?xml") && xml.contains("<urlset"));
    assert!(xml.contains(&format!("<loc>{PUBLIC_URL}/{slug}</loc>")), "{xml}");
    assert!(xml.contains(&format!("<loc>{PUBLIC_URL}/{slug}/product/{pid}</loc>")), "{xml}");
    assert!(xml.contains(&format!("<loc>{PUBLIC_URL}/{slug}/category/{}</loc>", c.category)), "{xml}");
    assert!(!xml.contains(&id(&c.draft)), "a draft is listed: {xml}");
    assert!(xml.contains("<lastmod>2026-01-01</lastmod>"), "{xml}");

    // A product moved back to draft leaves the sitemap.
    let path = c.shop.at(&format!("/products/{pid}"));
    p.api(axum::http::Method::PATCH, &path, Some(&c.shop.token), Some(json!({ "status": "draft" }))).await.expect(200);
    let xml = b.get(&format!("/{slug}/sitemap.xml")).await.body;
    assert!(!xml.contains(&pid), "{xml}");

    let store_robots = b.get(&format!("/{slug}/robots.txt")).await;
    let text = store_robots.expect(200);
    assert!(store_robots.content_type().starts_with("text/plain"));
    assert!(text.contains(&format!("Sitemap: {PUBLIC_URL}/{slug}/sitemap.xml")), "{text}");

    let robots = b.get("/robots.txt").await;
    let text = robots.expect(200);
    assert!(robots.content_type().starts_with("text/plain"));
    assert!(text.starts_with("User-agent: *"), "{text}");
    for private in ["/dashboard", "/api/", "/*/cart", "/*/checkout", "/*/order/"] {
        assert!(text.lines().any(|l| l == format!("Disallow: {private}")), "{private} not disallowed: {text}");
    }
    assert!(!text.lines().any(|l| l.trim() == "Disallow: /"), "stores must stay crawlable: {text}");
}

// ---------------------------------------------------------------------------------------------
// Themes
// ---------------------------------------------------------------------------------------------

/// A store with three active products (one more than the theme check's sample pages), so a
/// template can behave on real pages differently from how it behaved when it was checked.
async fn themed_store(p: &Platform, phone: &str) -> (Shop, String) {
    let shop = p.shop(phone, "Theme Store").await;
    for (title, price) in [("Masala Chai", 24900), ("Green Tea", 19900), ("Kashmiri Kahwa", 29900)] {
        p.product(&shop, json!({ "title": title, "price": price, "stock": 10 })).await;
    }
    let slug = shop.slug();
    (shop, slug)
}

/// Whether the merchant's theme as stored would pass the save-time check.
async fn passes_check(p: &Platform, slug: &str) -> Result<(), String> {
    let scope = p.scope(slug).await;
    let store = p.storage.store(&scope).await.unwrap();
    let overrides = p.storage.shard(&scope).theme_templates(&scope).await.unwrap();
    p.web.themes.validate(&overrides, &sample_contexts(&store))
}

/// Loads the home page within a deadline (a runaway template must not hang it).
async fn home_within(b: &Browser, slug: &str, limit: Duration) -> (Page, Duration) {
    let started = Instant::now();
    let page = tokio::time::timeout(limit, b.get(&format!("/{slug}")))
        .await
        .unwrap_or_else(|_| panic!("the home page took longer than {limit:?}"));
    (page, started.elapsed())
}

#[tokio::test]
async fn a_merchant_template_changes_the_page_and_still_escapes() {
    let p = Platform::new().await;
    let (_, slug) = themed_store(&p, "+919800000801").await;
    p.store_theme_template(
        &slug,
        "home.html",
        r#"{% extends "storefront/layout.html" %}{% block main %}<h1 class="mine">Welcome to {{ site.store.name }}</h1><ul>{% for p in products %}<li>{{ p.title|upper }} {{ p.price_from|money(site.store.currency) }}</li>{% endfor %}</ul><p>{{ "<i>x</i>" }}</p>{% endblock %}"#,
    )
    .await;
    passes_check(&p, &slug).await.expect("a valid template passes the save-time check");

    let html = p.browser().get(&format!("/{slug}")).await.html().to_string();
    assert!(html.contains("<h1 class=\"mine\">Welcome to Theme Store</h1>"), "{html}");
    assert!(html.contains("<li>MASALA CHAI ₹249.00</li>"), "{html}");
    assert!(html.contains("&lt;i&gt;x&lt;/i&gt;"), "merchant templates auto-escape too");
    assert!(html.contains("<link rel=\"canonical\""), "the default layout is still used");
    // Other pages keep the default theme.
    assert!(p.browser().get(&format!("/{slug}/search?q=tea")).await.html().contains("Results for"));
}

#[tokio::test]
async fn a_runaway_template_is_stopped_and_the_default_theme_served() {
    let p = Platform::new().await;
    let (_, slug) = themed_store(&p, "+919800000802").await;
    // Each runs away only with more products than the samples had, so each passed the check.
    let runaways = [
        // Ten billion steps.
        r#"{% if products|length > 2 %}{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}{% else %}fine{% endif %}"#,
        // Unbounded recursion.
        r#"{% macro f(n) %}x{{ f(n + 1) }}{% endmacro %}{% if products|length > 2 %}{{ f(0) }}{% else %}fine{% endif %}"#,
        // A loop that keeps doubling a string.
        r#"{% if products|length > 2 %}{% set ns = namespace(s="xxxx") %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}{% else %}fine{% endif %}"#,
    ];
    let b = p.browser();
    for source in runaways {
        p.store_theme_template(&slug, "home.html", source).await;
        passes_check(&p, &slug).await.unwrap_or_else(|e| panic!("{source}: refused by the check: {e}"));
        // Twice: the compiled theme is cached, the failure is not.
        for _ in 0..2 {
            let (page, took) = home_within(&b, &slug, Duration::from_secs(30)).await;
            let html = page.html();
            println!("runaway template: {took:?}");
            assert!(html.contains("Masala Chai") && html.contains("<h1>Theme Store</h1>"), "{source}: {html}");
            assert!(!html.contains("xxxx"), "{source}: partial output of the runaway template");
        }
    }
}

#[tokio::test]
async fn a_template_with_huge_output_is_capped_and_the_default_theme_served() {
    let p = Platform::new().await;
    let (_, slug) = themed_store(&p, "+919800000803").await;
    // 300 × 8 KiB ≈ 2.4 MB: within the fuel budget, over the 1 MiB page cap.
    let chunk = "y".repeat(8 * 1024);
    let template =
        format!("{{% if products|length > 2 %}}{{% for i in range(300) %}}{chunk}{{% endfor %}}{{% endif %}}");
    p.store_theme_template(&slug, "home.html", &template).await;
    passes_check(&p, &slug).await.expect("the template passed its check on the sample pages");

    let (page, took) = home_within(&p.browser(), &slug, Duration::from_secs(30)).await;
    println!("huge-output template: {took:?}");
    let html = page.html();
    assert!(html.len() < 64 * 1024, "the page is {} bytes", html.len());
    assert!(html.contains("Masala Chai") && !html.contains(&chunk[..64]), "default theme expected");

    // Far past the fuel budget (≈ 40 MB): stopped by fuel before it is all produced.
    let template =
        format!("{{% if products|length > 2 %}}{{% for i in range(5000) %}}{chunk}{{% endfor %}}{{% endif %}}");
    p.store_theme_template(&slug, "home.html", &template).await;
    let (page, took) = home_within(&p.browser(), &slug, Duration::from_secs(30)).await;
    println!("far-past-fuel template: {took:?}");
    assert!(page.html().contains("Masala Chai"));
}

#[tokio::test]
async fn templates_cannot_read_files() {
    let p = Platform::new().await;
    let (_, slug) = themed_store(&p, "+919800000804").await;
    let attempts = [
        r#"{% include "/etc/passwd" %}"#,
        r#"{% include "../../../../../../etc/passwd" %}"#,
        r#"{% include "storefront/../../../../../../etc/passwd" %}"#,
        r#"{% extends "/etc/passwd" %}"#,
        r#"{% import "/etc/hostname" as h %}{{ h }}"#,
        r#"{% include "Cargo.toml" %}"#,
    ];
    for source in attempts {
        let scope = p.scope(&slug).await;
        let store = p.storage.store(&scope).await.unwrap();
        let overrides = vec![("home.html".to_string(), source.to_string())];
        assert!(
            p.web.themes.validate(&overrides, &sample_contexts(&store)).is_err(),
            "{source}: accepted by the save-time check"
        );
        // Stored anyway (as if the check were bypassed), it still reads nothing.
        p.store_theme_template(&slug, "home.html", source).await;
        let html = p.browser().get(&format!("/{slug}")).await.html().to_string();
        assert!(!html.contains("root:") && !html.contains("[package]"), "{source}: file contents leaked");
        assert!(html.contains("Masala Chai"), "{source}: the default theme is served");
    }
}

// ---------------------------------------------------------------------------------------------
// Carts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_cart_cookie_from_one_store_is_worthless_on_another() {
    let p = Platform::new().await;
    let a = catalog(&p, "+919800001001", "Store A").await;
    let bshop = p.shop("+919800001002", "Store B").await;
    let bproduct = p.product(&bshop, json!({ "title": "Basmati Rice", "price": 50000, "stock": 3 })).await;
    let (sa, sb) = (a.slug(), bshop.slug());

    let shopper = p.browser();
    add_to_cart(&shopper, &format!("/{sa}"), &a.product_id()).await.redirect();
    let a_cookie = shopper.cookie("kirana_cart", &format!("/{sa}")).expect("store A's cart cookie");

    // The same cookie presented to store B (a jar that ignores paths, or a custom domain).
    shopper.set_cookie("kirana_cart", &format!("/{sb}"), &a_cookie);
    let html = shopper.get(&format!("/{sb}/cart")).await.html().to_string();
    assert!(html.contains("Your cart is empty"), "store B shows store A's cart: {html}");
    assert!(!html.contains("Masala Chai") && !html.contains("Cart ("), "{html}");
    assert_eq!(shopper.get(&format!("/{sb}/checkout")).await.redirect(), format!("/{sb}/cart"));

    // Adding to B's cart with A's cookie opens a new cart for B, leaving A's alone.
    let res = add_to_cart(&shopper, &format!("/{sb}"), &id(&bproduct)).await;
    assert_eq!(res.redirect(), format!("/{sb}/cart"));
    let b_cookie = shopper.cookie("kirana_cart", &format!("/{sb}")).unwrap();
    assert_ne!(b_cookie, a_cookie, "store B issued its own cart");

    // Store A's variant cannot be put in store B's cart.
    let csrf = shopper.get(&format!("/{sb}/cart")).await.csrf();
    let res = shopper.post(&format!("/{sb}/cart"), &[("_csrf", &csrf), ("variant_id", &variant(&a.product))]).await;
    assert!(res.status.is_client_error(), "another store's variant: {} {}", res.status, res.body);

    let a_cart = shopper.get(&format!("/{sa}/cart")).await.html().to_string();
    assert!(a_cart.contains("Masala Chai") && a_cart.contains("Cart (1)"), "{a_cart}");
    assert!(!a_cart.contains("Basmati Rice"), "store B's item reached store A's cart");
    let b_cart = shopper.get(&format!("/{sb}/cart")).await.html().to_string();
    assert!(b_cart.contains("Basmati Rice") && b_cart.contains("Cart (1)"), "{b_cart}");
    assert!(!b_cart.contains("Masala Chai"), "{b_cart}");
}

/// A structured-data price: schema.org takes a number or a decimal string (kirana writes the
/// string, in the currency's own precision, so no float rounding creeps in).
fn ld_price(ld: &serde_json::Value) -> Option<f64> {
    let p = &ld["offers"]["price"];
    p.as_f64().or_else(|| p.as_str().and_then(|s| s.parse().ok()))
}
