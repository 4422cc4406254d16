//! The merchant dashboard, driven in-process the way a phone browser without JavaScript would:
//! the whole application per test, pages read as HTML, every change a form posted (url-encoded,
//! or multipart where the page's form is) with the token and cookies the page gave, results
//! checked through the JSON API, the storefront and storage.
//!
//! What it proves:
//! - **Sessions**: signing in by phone and code sets an HttpOnly, SameSite=Lax cookie scoped to
//!   `/dashboard` (and Secure on https); a wrong code is shown beside the code; signing out
//!   revokes the session, so the old cookie opens nothing even when sent again.
//! - **Stores, products, images, variants**: a store made from the form is live at the link the
//!   home page shows; a product posted with a photo is on the storefront with a year-cacheable
//!   JPEG; prices typed in rupees are stored in paise; variant ids survive an edit; bad input and
//!   non-images are shown again beside their fields, with what was typed, and create nothing.
//! - **CSRF and isolation**: every dashboard POST refuses a missing or foreign form token with
//!   403; another merchant gets 404 for every page and form of a store not theirs. Neither
//!   changes anything.
//! - **Orders, coupons, settings, theme**: orders show up in the list, home numbers and
//!   stats.json, and move through their states (a wrong move is refused with a message); coupons
//!   are created and turned off; settings are saved in minor units and basis points and a slug
//!   change keeps the old link; theme previews do not save, broken templates are refused with
//!   their line, good ones go live, and reset restores the default.
//! - **Headers**: dashboard pages are never cached by shared caches and never framed.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Method, header};
use kirana_domain::{ManualClock, Timestamp};
use kirana_server::auth::MemoryNotifier;
use kirana_server::media::MediaStore;
use kirana_server::{AppState, ServerConfig};
use kirana_storage::sqlite::{SqliteOptions, Synchronous};
use serde_json::{Value, json};
use support::*;

// ---------------------------------------------------------------------------------------------
// Helpers: signing in, forms, and reading pages
// ---------------------------------------------------------------------------------------------

/// A merchant with one store (made through the API) and a browser signed in to the dashboard.
struct Merchant {
    shop: Shop,
    b: Browser,
}

impl Merchant {
    /// `/dashboard/stores/{id}{rest}`.
    fn at(&self, rest: &str) -> String {
        format!("/dashboard/stores/{}{rest}", self.shop.id())
    }
}

async fn merchant(p: &Platform, phone: &str, name: &str) -> Merchant {
    let shop = p.shop(phone, name).await;
    let b = p.browser();
    sign_in_with(p, &b, phone).await;
    Merchant { shop, b }
}

/// The form token of the page at `uri`, which must answer 200.
async fn csrf_of(b: &Browser, uri: &str) -> String {
    let page = b.get(uri).await;
    page.html();
    page.csrf()
}

/// A `multipart/form-data` body, built part by part in form order as a browser sends it.
struct Multipart {
    boundary: &'static str,
    body: Vec<u8>,
}

impl Multipart {
    fn new() -> Multipart {
        Multipart { boundary: "----KiranaDashboardTest7MA4YWxkTrZu0gW", body: Vec::new() }
    }

    fn text(mut self, name: &str, value: &str) -> Multipart {
        let head = format!("--{}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n", self.boundary);
        self.body.extend_from_slice(head.as_bytes());
        self.body.extend_from_slice(value.as_bytes());
        self.body.extend_from_slice(b"\r\n");
        self
    }

    fn texts(self, fields: &[(&str, &str)]) -> Multipart {
        fields.iter().fold(self, |m, (k, v)| m.text(k, v))
    }

    /// A file part; a file input left empty sends `filename=""` and no bytes.
    fn file(mut self, name: &str, filename: &str, content_type: &str, bytes: &[u8]) -> Multipart {
        let head = format!(
            "--{}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n",
            self.boundary
        );
        self.body.extend_from_slice(head.as_bytes());
        self.body.extend_from_slice(bytes);
        self.body.extend_from_slice(b"\r\n");
        self
    }

    async fn post(mut self, b: &Browser, uri: &str) -> Page {
        self.body.extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        let content_type = format!("multipart/form-data; boundary={}", self.boundary);
        b.post_body(uri, &content_type, self.body).await
    }
}

/// A PNG of `w`×`h` pixels.
fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 251) as u8, (y % 241) as u8, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).expect("PNG encodes");
    out.into_inner()
}

/// The tag (`<…>`) around byte `i` of `html`.
fn tag_at(html: &str, i: usize) -> Option<&str> {
    let start = html[..i].rfind('<')?;
    let end = i + html[i..].find('>')?;
    Some(&html[start..end])
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let j = tag.find(&key)? + key.len();
    let end = tag[j..].find('"')?;
    Some(unescape(&tag[j..j + end]))
}

/// The value of every input named `name`, in page order (`""` for one without a value).
fn values(html: &str, name: &str) -> Vec<String> {
    let marker = format!("name=\"{name}\"");
    html.match_indices(&marker)
        .filter_map(|(i, _)| tag_at(html, i))
        .map(|tag| attr(tag, "value").unwrap_or_default())
        .collect()
}

/// The contents of the textarea named `name`.
#[track_caller]
fn textarea(html: &str, name: &str) -> String {
    let i = html.find(&format!("name=\"{name}\"")).unwrap_or_else(|| panic!("no textarea {name}"));
    let start = i + html[i..].find('>').expect("the tag ends") + 1;
    let end = start + html[start..].find("</textarea>").expect("the textarea ends");
    unescape(&html[start..end])
}

/// The selected option of the select named `name` (`""` when none is marked).
#[track_caller]
fn selected(html: &str, name: &str) -> String {
    let i = html.find(&format!("name=\"{name}\"")).unwrap_or_else(|| panic!("no select {name}"));
    let end = i + html[i..].find("</select>").expect("the select ends");
    html[i..end]
        .split("<option")
        .find(|o| o.split('>').next().is_some_and(|t| t.contains(" selected")))
        .and_then(|o| attr(o, "value"))
        .unwrap_or_default()
}

/// The message shown beside the input named `name`: a `<p class="err">` after it and before
/// the next named input.
fn error_beside(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\"");
    let i = html.find(&marker)? + marker.len();
    let rest = &html[i..];
    let segment = &rest[..rest.find(" name=\"").unwrap_or(rest.len())];
    let j = segment.find("<p class=\"err\">")? + "<p class=\"err\">".len();
    let end = segment[j..].find("</p>")?;
    Some(unescape(&segment[j..j + end]))
}

/// The text inside the element with `id="…"` (up to its first child tag).
#[track_caller]
fn text_of(html: &str, id: &str) -> String {
    let i = html.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in page:\n{html}"));
    let start = i + html[i..].find('>').expect("the tag ends") + 1;
    let end = start + html[start..].find('<').expect("the text ends");
    unescape(html[start..end].trim())
}

/// The `<p class="problem">` message of a page shown again with errors.
fn problem(html: &str) -> Option<String> {
    let i = html.find("class=\"problem\"")?;
    let start = i + html[i..].find('>')? + 1;
    let end = start + html[start..].find("</p>")?;
    Some(unescape(&html[start..end]))
}

fn header<'a>(page: &'a Page, name: &str) -> &'a str {
    page.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// The raw `Set-Cookie` header that sets `name`.
fn set_cookie<'a>(page: &'a Page, name: &str) -> Option<&'a str> {
    page.headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
}

/// A cookie's attributes, lower-cased, without its name and value.
fn cookie_attrs(raw: &str) -> Vec<String> {
    raw.split(';').skip(1).map(|a| a.trim().to_ascii_lowercase()).collect()
}

#[track_caller]
fn assert_status(page: &Page, status: u16, what: &str) {
    assert_eq!(page.status.as_u16(), status, "{what}: unexpected status; body:\n{}", page.body);
}

/// Everything a merchant's store holds, as the API and storage report it: what "changes
/// nothing" is checked against.
async fn snapshot(p: &Platform, shop: &Shop) -> Value {
    let get = |rest: &'static str| {
        let uri = shop.at(rest);
        async move { p.api(Method::GET, &uri, Some(&shop.token), None).await.expect(200) }
    };
    let store = get("").await;
    let scope = p.scope(store["slug"].as_str().expect("a slug")).await;
    let theme = p.storage.shard(&scope).theme_templates(&scope).await.expect("theme templates");
    json!({
        "store": store,
        "products": get("/products").await,
        "categories": get("/categories").await,
        "orders": get("/orders").await,
        "coupons": get("/coupons").await,
        "customers": get("/customers").await,
        "stores": p.api(Method::GET, "/api/v1/stores", Some(&shop.token), None).await.expect(200),
        "theme": theme,
    })
}

/// Adds one unit of the product to a new shopper's cart and checks out with cash on delivery:
/// the order page's path.
async fn shopper_order(p: &Platform, slug: &str, product_id: &str) -> String {
    let b = p.browser();
    let page = b.get(&format!("/{slug}/product/{product_id}")).await;
    page.html();
    let added = b
        .post(
            &format!("/{slug}/cart"),
            &[("mode", &page.field("mode")), ("variant_id", &page.field("variant_id")), ("quantity", "1")],
        )
        .await;
    assert_status(&added, 303, "add to cart");
    let form = b.get(&format!("/{slug}/checkout")).await;
    form.html();
    let (csrf, key) = (form.csrf(), form.field("key"));
    let placed = b
        .post(
            &format!("/{slug}/checkout"),
            &[
                ("_csrf", csrf.as_str()),
                ("key", key.as_str()),
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
            ],
        )
        .await;
    assert_status(&placed, 303, "checkout");
    placed.redirect().to_string()
}

/// The product form as the page at `uri` shows it, ready to be changed and posted back.
#[derive(Debug, Clone)]
struct ProductForm {
    csrf: String,
    title: String,
    description: String,
    status: String,
    category_id: String,
    keep_images: Vec<String>,
    single_id: String,
    price: String,
    compare_at_price: String,
    stock: String,
    sku: String,
    options: String,
    /// id, options, price, compare, stock, sku
    rows: Vec<[String; 6]>,
    image: Option<(String, String, Vec<u8>)>,
    action: String,
}

impl ProductForm {
    /// Reads the form from a page shown normally (200) or again with errors (422).
    #[track_caller]
    fn read(page: &Page) -> ProductForm {
        assert!(matches!(page.status.as_u16(), 200 | 422), "no product form: {}\n{}", page.status, page.body);
        assert!(page.content_type().starts_with("text/html"), "not HTML: {:?}", page.headers);
        let html = page.body.as_str();
        let cols: Vec<Vec<String>> =
            ["variant_id", "variant_options", "variant_price", "variant_compare", "variant_stock", "variant_sku"]
                .iter()
                .map(|n| values(html, n))
                .collect();
        assert!(cols.iter().all(|c| c.len() == cols[0].len()), "ragged variant rows: {cols:?}");
        let rows = (0..cols[0].len()).map(|i| std::array::from_fn(|c| cols[c][i].clone())).collect();
        ProductForm {
            csrf: page.csrf(),
            title: page.field("title"),
            description: textarea(html, "description"),
            status: selected(html, "status"),
            category_id: selected(html, "category_id"),
            keep_images: values(html, "keep_image"),
            single_id: values(html, "single_id").pop().unwrap_or_default(),
            price: values(html, "price").pop().unwrap_or_default(),
            compare_at_price: values(html, "compare_at_price").pop().unwrap_or_default(),
            stock: values(html, "stock").pop().unwrap_or_default(),
            sku: values(html, "sku").pop().unwrap_or_default(),
            options: values(html, "options").pop().unwrap_or_default(),
            rows,
            image: None,
            action: "save".into(),
        }
    }

    /// Posts the form as a browser would: multipart, fields in page order.
    async fn post(&self, b: &Browser, uri: &str) -> Page {
        let mut m = Multipart::new().texts(&[
            ("_csrf", &self.csrf),
            ("title", &self.title),
            ("description", &self.description),
            ("status", &self.status),
            ("category_id", &self.category_id),
        ]);
        for url in &self.keep_images {
            m = m.text("keep_image", url);
        }
        m = match &self.image {
            Some((filename, content_type, bytes)) => m.file("image", filename, content_type, bytes),
            None => m.file("image", "", "application/octet-stream", b""),
        };
        m = m.texts(&[
            ("single_id", &self.single_id),
            ("price", &self.price),
            ("compare_at_price", &self.compare_at_price),
            ("stock", &self.stock),
            ("sku", &self.sku),
            ("options", &self.options),
        ]);
        for [id, options, price, compare, stock, sku] in &self.rows {
            m = m.texts(&[
                ("variant_id", id),
                ("variant_options", options),
                ("variant_price", price),
                ("variant_compare", compare),
                ("variant_stock", stock),
                ("variant_sku", sku),
            ]);
        }
        m.text("action", &self.action).post(b, uri).await
    }
}

fn row(options: &str, price: &str, stock: &str, sku: &str) -> [String; 6] {
    [String::new(), options.into(), price.into(), String::new(), stock.into(), sku.into()]
}

/// The new-product form of the merchant's store.
async fn new_product_form(m: &Merchant) -> ProductForm {
    ProductForm::read(&m.b.get(&m.at("/products/new")).await)
}

/// The id of the product a create redirect points at (`…/products/{id}?saved=1`).
#[track_caller]
fn created_product(m: &Merchant, page: &Page) -> String {
    assert_status(page, 303, "product form");
    let to = page.redirect();
    let prefix = m.at("/products/");
    let rest = to.strip_prefix(&prefix).unwrap_or_else(|| panic!("redirect {to} is not under {prefix}"));
    let id = rest.strip_suffix("?saved=1").unwrap_or_else(|| panic!("redirect {to} does not say saved"));
    id.to_string()
}

async fn products(p: &Platform, shop: &Shop) -> Vec<Value> {
    let page = p.api(Method::GET, &shop.at("/products"), Some(&shop.token), None).await.expect(200);
    page["items"].as_array().expect("an items list").clone()
}

async fn coupons(p: &Platform, shop: &Shop) -> Vec<Value> {
    let page = p.api(Method::GET, &shop.at("/coupons"), Some(&shop.token), None).await.expect(200);
    page["items"].as_array().expect("an items list").clone()
}

async fn store(p: &Platform, shop: &Shop) -> Value {
    p.api(Method::GET, &shop.at(""), Some(&shop.token), None).await.expect(200)
}

// ---------------------------------------------------------------------------------------------
// Signing in and out
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_merchant_signs_in_with_a_code_gets_a_strict_cookie_and_signing_out_revokes_it() {
    let p = Platform::new().await;
    let b = p.browser();
    let phone = "+919800000001";

    // No session: every page sends the browser to sign in.
    let first = b.get("/dashboard").await;
    assert_eq!(first.redirect(), "/dashboard/sign-in");
    assert_eq!(b.get("/dashboard/stores/new").await.redirect(), "/dashboard/sign-in");

    // A number that is not a phone: 422 with the message beside it, no code sent.
    let form = b.get("/dashboard/sign-in").await;
    form.html();
    let bad = b.post("/dashboard/sign-in", &[("_csrf", &form.csrf()), ("phone", "12ab")]).await;
    assert_status(&bad, 422, "bad phone");
    assert!(error_beside(&bad.body, "phone").is_some(), "{}", bad.body);
    assert_eq!(field(&bad.body, "phone").as_deref(), Some("12ab"), "what was typed is kept");

    // Phone → 303 to the code page for that (normalised) number.
    let sent = b.post("/dashboard/sign-in", &[("_csrf", &form.csrf()), ("phone", "98000 00001")]).await;
    assert_status(&sent, 303, "phone posted");
    assert_eq!(sent.redirect(), "/dashboard/sign-in/code?phone=%2B919800000001");
    let code_page = b.get(sent.redirect()).await;
    code_page.html();
    assert_eq!(code_page.field("phone"), phone);
    let code = p.notifier.last_code(phone).expect("a code was sent");

    // A wrong code: 422, the code page again with the message beside the code, no session.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let refused =
        b.post("/dashboard/sign-in/code", &[("_csrf", &code_page.csrf()), ("phone", phone), ("code", wrong)]).await;
    assert_status(&refused, 422, "wrong code");
    let msg = error_beside(&refused.body, "code").expect("a message beside the code");
    assert!(msg.contains("wrong"), "the message says the code is wrong: {msg:?}");
    assert_eq!(field(&refused.body, "phone").as_deref(), Some(phone), "the phone is kept");
    assert!(set_cookie(&refused, "kirana_session").is_none(), "no session for a wrong code");
    assert!(b.cookie("kirana_session", "/dashboard").is_none());

    // The right code: 303 to the dashboard with a session cookie no script or other site gets.
    let done =
        b.post("/dashboard/sign-in/code", &[("_csrf", &code_page.csrf()), ("phone", phone), ("code", &code)]).await;
    assert_status(&done, 303, "right code");
    assert_eq!(done.redirect(), "/dashboard");
    let raw = set_cookie(&done, "kirana_session").expect("a session cookie is set");
    let attrs = cookie_attrs(raw);
    for want in ["httponly", "samesite=lax", "path=/dashboard"] {
        assert!(attrs.iter().any(|a| a == want), "session cookie lacks {want}: {raw}");
    }
    assert!(!attrs.iter().any(|a| a == "secure"), "not Secure on a plain-http platform: {raw}");
    let session = b.cookie("kirana_session", "/dashboard").expect("the browser keeps the session");

    // A new merchant is asked to create a store first.
    assert_eq!(b.get("/dashboard").await.redirect(), "/dashboard/stores/new");
    let new_store = b.get("/dashboard/stores/new").await;
    new_store.html();
    // The session cookie is the API's bearer token for the same merchant.
    let me = p.api(Method::GET, "/api/v1/me", Some(&session), None).await.expect(200);
    assert_eq!(me["phone"].as_str(), Some(phone), "{me}");

    // Signing out: 303 to sign-in, the cookie removed, the session revoked.
    let out = b.post("/dashboard/sign-out", &[("_csrf", &new_store.csrf())]).await;
    assert_status(&out, 303, "sign-out");
    assert_eq!(out.redirect(), "/dashboard/sign-in");
    let removal = set_cookie(&out, "kirana_session").expect("the cookie is removed");
    assert!(cookie_attrs(removal).iter().any(|a| a == "max-age=0"), "{removal}");
    assert!(b.cookie("kirana_session", "/dashboard").is_none());
    assert_eq!(b.get("/dashboard").await.redirect(), "/dashboard/sign-in");

    // Sending the old cookie again opens nothing: the session is gone on the server too.
    b.set_cookie("kirana_session", "/dashboard", &session);
    assert_eq!(b.get("/dashboard").await.redirect(), "/dashboard/sign-in");
    assert_eq!(b.get("/dashboard/stores/new").await.redirect(), "/dashboard/sign-in");
    let api = p.api(Method::GET, "/api/v1/me", Some(&session), None).await;
    assert_eq!(api.status.as_u16(), 401, "the revoked token no longer works on the API either: {}", api.body);
}

/// A platform served at an https address: its cookies must be `Secure`.
#[tokio::test]
async fn on_an_https_platform_the_session_and_form_cookies_are_secure() {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = SqliteOptions { synchronous: Synchronous::Normal, ..SqliteOptions::default() };
    let storage = kirana_storage::sqlite::open(dir.path(), 1, &opts).expect("open storage");
    let clock = ManualClock::new(Timestamp::from_millis(T0));
    let notifier = Arc::new(MemoryNotifier::default());
    let state = AppState::new(storage, Arc::new(clock), notifier.clone(), ServerConfig::default())
        .with_media(MediaStore::memory());
    let web = kirana_web::Web::new("https://kirana.test", &[7u8; 32]);
    let router = kirana_web::app(state, web).layer(MockConnectInfo(SocketAddr::from(([10, 0, 0, 1], 5000))));
    let b = Browser::new(router, PLATFORM_HOST);
    let phone = "+919800000002";

    let form = b.get("/dashboard/sign-in").await;
    form.html();
    let csrf_cookie = set_cookie(&form, "kirana_csrf").expect("a form cookie is set");
    assert!(cookie_attrs(csrf_cookie).iter().any(|a| a == "secure"), "{csrf_cookie}");
    let sent = b.post("/dashboard/sign-in", &[("_csrf", &form.csrf()), ("phone", phone)]).await;
    assert_status(&sent, 303, "phone posted");
    let code_page = b.get(sent.redirect()).await;
    let code = notifier.last_code(phone).expect("a code was sent");
    let done =
        b.post("/dashboard/sign-in/code", &[("_csrf", &code_page.csrf()), ("phone", phone), ("code", &code)]).await;
    assert_status(&done, 303, "right code");
    let raw = set_cookie(&done, "kirana_session").expect("a session cookie is set");
    let attrs = cookie_attrs(raw);
    for want in ["secure", "httponly", "samesite=lax", "path=/dashboard"] {
        assert!(attrs.iter().any(|a| a == want), "session cookie lacks {want}: {raw}");
    }
}

// ---------------------------------------------------------------------------------------------
// Stores and products
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_store_created_from_the_form_is_live_at_the_link_its_home_page_shows() {
    let p = Platform::new().await;
    let b = p.browser();
    sign_in_with(&p, &b, "+919800000003").await;

    let csrf = csrf_of(&b, "/dashboard/stores/new").await;
    let made =
        b.post("/dashboard/stores/new", &[("_csrf", &csrf), ("name", "Gupta Kirana Bhandar"), ("slug", "")]).await;
    assert_status(&made, 303, "store form");
    let to = made.redirect().to_string();
    let id = to
        .strip_prefix("/dashboard/stores/")
        .and_then(|r| r.strip_suffix("?created=1"))
        .unwrap_or_else(|| panic!("redirect {to} is not a store home"))
        .to_string();

    let home = b.get(&to).await;
    let html = home.html();
    assert!(html.contains("Your store is live"), "{html}");
    assert!(html.contains("Gupta Kirana Bhandar"), "{html}");
    let link = html.find("id=\"store-link\"").and_then(|i| tag_at(html, i)).expect("a#store-link");
    assert!(link.starts_with("<a "), "{link}");
    let url = attr(link, "href").expect("the link has an href");
    assert_eq!(text_of(html, "store-link"), url, "the link shows its address");
    let path = url.strip_prefix(PUBLIC_URL).unwrap_or_else(|| panic!("{url} is not on the platform"));
    assert_eq!(path, "/gupta-kirana-bhandar");

    // The storefront answers there at once, and the home page without the flag is the same store.
    let front = p.browser().get(path).await;
    assert!(front.html().contains("Gupta Kirana Bhandar"));
    assert!(b.get(&format!("/dashboard/stores/{id}")).await.html().contains(&url));
    // With one store, /dashboard goes straight to its home.
    assert_eq!(b.get("/dashboard").await.redirect(), format!("/dashboard/stores/{id}"));
}

#[tokio::test]
async fn a_product_posted_with_a_photo_is_on_the_storefront_with_a_cacheable_jpeg_and_exact_price() {
    let p = Platform::new().await;
    let m = merchant(&p, "+919800000004", "Photo Store").await;
    let slug = m.shop.slug();

    let mut form = new_product_form(&m).await;
    assert_eq!(form.status, "active", "a new product is on sale by default");
    form.title = "Kashmiri Kahwa".into();
    form.description = "Green tea with saffron.\nServe hot.".into();
    form.price = "249.50".into();
    form.stock = "12".into();
    form.sku = "KAHWA-1".into();
    form.image = Some(("kahwa.png".into(), "image/png".into(), png(700, 500)));
    let res = form.post(&m.b, &m.at("/products/new")).await;
    let pid = created_product(&m, &res);

    // Stored in paise, with the uploaded image.
    let product = p.merchant_product(&m.shop, &pid).await;
    assert_eq!(product["title"], "Kashmiri Kahwa");
    assert_eq!(product["description"], "Green tea with saffron.\nServe hot.");
    assert_eq!(product["variants"][0]["price"], 24950, "₹249.50 is 24950 paise: {product}");
    assert_eq!(product["variants"][0]["stock"], 12);
    assert_eq!(product["variants"][0]["sku"], "KAHWA-1");
    let images = product["images"].as_array().expect("images");
    assert_eq!(images.len(), 1, "{product}");
    let image = images[0].as_str().unwrap().to_string();
    assert!(image.starts_with(&format!("/media/{}/", m.shop.id())) && image.ends_with("_700x500"), "{image}");

    // The edit page it redirected to says saved and shows the photo, kept.
    let edit = m.b.get(res.redirect()).await;
    assert!(edit.html().contains("Saved."));
    assert_eq!(values(&edit.body, "keep_image"), vec![image.clone()]);
    assert_eq!(ProductForm::read(&edit).price, "249.50", "the price is shown as typed");

    // The storefront shows it with the price and the resized JPEG, cached for a year.
    let front = p.browser().get(&format!("/{slug}/product/{pid}")).await;
    let html = front.html();
    assert!(html.contains("₹249.50"), "{html}");
    let img = html.split("<img ").nth(1).and_then(|t| t.split('>').next()).expect("an <img>");
    let src = attr(&format!(" {img}"), "src").expect("the image has a src");
    assert!(src.starts_with("/media/"), "{src}");
    assert_eq!(src, format!("{image}/640.jpg"));
    let jpeg = p.browser().get(&src).await;
    assert_status(&jpeg, 200, "the image");
    assert_eq!(jpeg.content_type(), "image/jpeg");
    let cache = header(&jpeg, "cache-control");
    assert!(cache.contains("immutable") && cache.contains("max-age=31536000"), "{cache}");
}

#[tokio::test]
async fn editing_keeps_ticked_photos_and_the_variant_drops_unticked_ones_and_delete_removes_the_product() {
    let p = Platform::new().await;
    let m = merchant(&p, "+919800000020", "Edit Store").await;
    let slug = m.shop.slug();

    let mut form = new_product_form(&m).await;
    form.title = "Filter Coffee".into();
    form.price = "120".into();
    form.stock = "4".into();
    form.image = Some(("coffee.png".into(), "image/png".into(), png(400, 300)));
    let pid = created_product(&m, &form.post(&m.b, &m.at("/products/new")).await);
    let created = p.merchant_product(&m.shop, &pid).await;
    let uri = m.at(&format!("/products/{pid}"));

    // Posted back unchanged (photo ticked): the same photo, the same variant, a new title.
    let mut edit = ProductForm::read(&m.b.get(&uri).await);
    assert_eq!(edit.single_id, variant(&created), "the form carries the variant's id");
    assert_eq!(edit.keep_images.len(), 1);
    edit.title = "Filter Coffee (strong)".into();
    assert_status(&edit.post(&m.b, &uri).await, 303, "unchanged edit");
    let after = p.merchant_product(&m.shop, &pid).await;
    assert_eq!(after["title"], "Filter Coffee (strong)");
    assert_eq!(after["images"], created["images"], "a ticked photo is kept");
    assert_eq!(variant(&after), variant(&created), "the variant keeps its id");
    assert_eq!(
        (after["variants"][0]["price"].as_i64(), after["variants"][0]["stock"].as_i64()),
        (Some(12000), Some(4))
    );

    // Unticked: the photo goes.
    let mut edit = ProductForm::read(&m.b.get(&uri).await);
    edit.keep_images.clear();
    assert_status(&edit.post(&m.b, &uri).await, 303, "photo unticked");
    assert_eq!(p.merchant_product(&m.shop, &pid).await["images"], json!([]));

    // Delete: back to the list; gone from the API and the storefront.
    let mut edit = ProductForm::read(&m.b.get(&uri).await);
    edit.action = "delete".into();
    let res = edit.post(&m.b, &uri).await;
    assert_status(&res, 303, "delete");
    assert_eq!(res.redirect(), m.at("/products?saved=deleted"));
    let gone = p.api(Method::GET, &m.shop.at(&format!("/products/{pid}")), Some(&m.shop.token), None).await;
    assert_eq!(gone.status.as_u16(), 404, "{}", gone.body);
    assert_eq!(p.browser().get(&format!("/{slug}/product/{pid}")).await.status.as_u16(), 404);
    assert!(!m.b.get(&m.at("/products")).await.html().contains("Filter Coffee"));
}

#[tokio::test]
async fn a_product_with_options_keeps_its_variant_ids_when_edited() {
    let p = Platform::new().await;
    let m = merchant(&p, "+919800000005", "Kurta Corner").await;
    let slug = m.shop.slug();

    let mut form = new_product_form(&m).await;
    assert!(form.rows.len() >= 3, "the form offers empty variant rows: {:?}", form.rows);
    form.title = "Cotton Kurta".into();
    form.options = "Size, Colour".into();
    form.rows[0] = row("M / Red", "499", "5", "KURTA-M-RED");
    form.rows[1] = row("L / Blue", "549.50", "3", "KURTA-L-BLUE");
    let pid = created_product(&m, &form.post(&m.b, &m.at("/products/new")).await);

    let product = p.merchant_product(&m.shop, &pid).await;
    assert_eq!(product["options"], json!(["Size", "Colour"]));
    let variants = product["variants"].as_array().expect("variants").clone();
    assert_eq!(variants.len(), 2, "{product}");
    let by_title = |vs: &[Value], t: &str| vs.iter().find(|v| v["title"] == t).cloned().expect(t);
    let (red, blue) = (by_title(&variants, "M / Red"), by_title(&variants, "L / Blue"));
    assert_eq!((red["price"].as_i64(), red["stock"].as_i64()), (Some(49900), Some(5)));
    assert_eq!((blue["price"].as_i64(), blue["stock"].as_i64()), (Some(54950), Some(3)));

    // The storefront offers both.
    let front = p.browser().get(&format!("/{slug}/product/{pid}")).await;
    let html = front.html();
    assert!(html.contains("M / Red") && html.contains("L / Blue"), "{html}");
    assert_eq!(values(html, "variant_id").len(), 2, "one choice per variant");

    // Edit: the form shows both rows with their ids; change the blue one's stock only.
    let page = m.b.get(&m.at(&format!("/products/{pid}"))).await;
    let mut edit = ProductForm::read(&page);
    assert_eq!(edit.options, "Size, Colour");
    let filled: Vec<&[String; 6]> = edit.rows.iter().filter(|r| !r[0].is_empty()).collect();
    assert_eq!(filled.len(), 2, "{:?}", edit.rows);
    let blue_row = edit.rows.iter().position(|r| r[1] == "L / Blue").expect("the blue row");
    assert_eq!(edit.rows[blue_row][0], blue["id"].as_str().unwrap());
    edit.rows[blue_row][4] = "7".into();
    let saved = edit.post(&m.b, &m.at(&format!("/products/{pid}"))).await;
    assert_status(&saved, 303, "edit");

    let after = p.merchant_product(&m.shop, &pid).await;
    let variants = after["variants"].as_array().expect("variants").clone();
    assert_eq!(variants.len(), 2, "{after}");
    let (red2, blue2) = (by_title(&variants, "M / Red"), by_title(&variants, "L / Blue"));
    assert_eq!(red2["id"], red["id"], "variant ids survive an edit");
    assert_eq!(blue2["id"], blue["id"], "variant ids survive an edit");
    assert_eq!(blue2["stock"], 7, "the changed row applies");
    assert_eq!(red2["stock"], 5, "the unchanged row stays");
}

#[tokio::test]
async fn bad_product_input_is_shown_beside_its_fields_with_what_was_typed_and_creates_nothing() {
    let p = Platform::new().await;
    let m = merchant(&p, "+919800000006", "Typo Traders").await;

    let mut form = new_product_form(&m).await;
    form.title = "".into();
    form.description = "Typed <carefully>".into();
    form.price = "abc".into();
    form.stock = "x".into();
    form.sku = "KEEP-ME".into();
    let res = form.post(&m.b, &m.at("/products/new")).await;
    assert_status(&res, 422, "bad product");
    let html = &res.body;
    assert!(problem(html).is_some(), "a summary says to fix the fields: {html}");
    assert!(error_beside(html, "title").is_some_and(|e| e.contains("required")), "title: {html}");
    assert!(error_beside(html, "price").is_some_and(|e| e.contains("amount")), "price: {html}");
    assert!(error_beside(html, "stock").is_some_and(|e| e.contains("whole number")), "stock: {html}");
    assert_eq!(error_beside(html, "sku"), None, "no message beside a good field");

    // What was typed is kept.
    let again = ProductForm::read(&res);
    assert_eq!((again.price.as_str(), again.stock.as_str(), again.sku.as_str()), ("abc", "x", "KEEP-ME"));
    assert_eq!(again.description, "Typed <carefully>");
    assert!(!html.contains("Typed <carefully>"), "typed text is escaped when shown again");

    assert!(products(&p, &m.shop).await.is_empty(), "nothing was created");
}

#[tokio::test]
async fn a_file_that_is_not_an_image_is_refused_beside_the_photo_and_creates_nothing() {
    let p = Platform::new().await;
    let m = merchant(&p, "+919800000007", "Fake Photo Store").await;

    let mut form = new_product_form(&m).await;
    form.title = "Not A Picture".into();
    form.price = "10".into();
    form.image = Some(("x.png".into(), "image/png".into(), b"this is plain text, not a PNG".to_vec()));
    let res = form.post(&m.b, &m.at("/products/new")).await;
    assert_status(&res, 422, "non-image upload");
    let msg = error_beside(&res.body, "image").expect("a message beside the photo");
    assert!(!msg.is_empty());
    assert_eq!(field(&res.body, "title").as_deref(), Some("Not A Picture"), "the title is kept");
    assert!(products(&p, &m.shop).await.is_empty(), "nothing was created");
}

// ---------------------------------------------------------------------------------------------
// CSRF and isolation
// ---------------------------------------------------------------------------------------------

/// A store with one of everything: a product, a category, an order, a coupon.
struct Stocked {
    m: Merchant,
    product: String,
    order: String,
    coupon: String,
}

async fn stocked(p: &Platform, phone: &str, name: &str) -> Stocked {
    let m = merchant(p, phone, name).await;
    p.category(&m.shop, "Tea").await;
    let product = id(&p.product(&m.shop, json!({ "title": "Masala Chai", "price": 24900, "stock": 10 })).await);
    shopper_order(p, &m.shop.slug(), &product).await;
    let order = id(&p.orders(&m.shop).await[0]);
    let coupon = p
        .api(
            Method::POST,
            &m.shop.at("/coupons"),
            Some(&m.shop.token),
            Some(json!({ "code": "WELCOME", "kind": "percent", "value": 10 })),
        )
        .await
        .expect(201);
    Stocked { m, product, order, coupon: id(&coupon) }
}

/// Every dashboard POST of a store, with a plausible form (without its `_csrf`).
fn store_posts(
    base: &str,
    product: &str,
    order: &str,
    coupon: &str,
) -> Vec<(String, Vec<(&'static str, &'static str)>)> {
    vec![
        (format!("{base}/categories"), vec![("name", "Snacks")]),
        (format!("{base}/products/new"), vec![("title", "Sneaky"), ("price", "10"), ("status", "active")]),
        (format!("{base}/products/{product}"), vec![("title", "Renamed"), ("price", "1"), ("action", "save")]),
        (format!("{base}/products/{product}"), vec![("action", "delete")]),
        (format!("{base}/orders/{order}/transitions"), vec![("to", "accepted")]),
        (format!("{base}/orders/{order}/transitions"), vec![("to", "cancelled")]),
        (format!("{base}/orders/{order}/refunds"), vec![("amount", "1")]),
        (format!("{base}/coupons"), vec![("code", "SNEAKY"), ("kind", "flat"), ("value", "50")]),
        (format!("{base}/coupons/{coupon}"), vec![("active", "false")]),
        (format!("{base}/settings"), vec![("name", "Hijacked"), ("slug", "hijacked"), ("delivery_fee", "999")]),
        (format!("{base}/theme"), vec![("name", "home.html"), ("source", "hacked"), ("action", "save")]),
        (format!("{base}/theme"), vec![("name", "home.html"), ("action", "reset")]),
        ("/dashboard/stores/new".to_string(), vec![("name", "Another Store")]),
    ]
}

#[tokio::test]
async fn every_dashboard_post_without_this_browsers_form_token_is_refused_and_changes_nothing() {
    let p = Platform::new().await;
    let s = stocked(&p, "+919800000008", "Guarded Store").await;
    let m = &s.m;
    let before = snapshot(&p, &m.shop).await;

    // A token that is valid — for another browser.
    let other = p.browser();
    let foreign = csrf_of(&other, "/dashboard/sign-in").await;
    let own = csrf_of(&m.b, &m.at("")).await;
    assert_ne!(foreign, own);

    let posts = store_posts(&m.at(""), &s.product, &s.order, &s.coupon);
    for (uri, fields) in &posts {
        for (how, token) in [("missing", None), ("wrong", Some("x".repeat(43))), ("foreign", Some(foreign.clone()))] {
            let mut form: Vec<(&str, &str)> = fields.clone();
            if let Some(t) = &token {
                form.insert(0, ("_csrf", t.as_str()));
            }
            let res = m.b.post(uri, &form).await;
            assert_status(&res, 403, &format!("POST {uri} {fields:?} with a {how} token"));
        }
    }
    // Multipart forms are checked too.
    let res = Multipart::new()
        .texts(&[("_csrf", &foreign), ("title", "Sneaky"), ("price", "10")])
        .file("image", "a.png", "image/png", &png(4, 4))
        .post(&m.b, &m.at("/products/new"))
        .await;
    assert_status(&res, 403, "multipart product form with a foreign token");
    let res =
        Multipart::new().texts(&[("name", "Hijacked"), ("slug", "hijacked")]).post(&m.b, &m.at("/settings")).await;
    assert_status(&res, 403, "multipart settings form without a token");

    // Sign-out with a bad token keeps the session.
    let out = m.b.post("/dashboard/sign-out", &[("_csrf", &foreign)]).await;
    assert_status(&out, 403, "sign-out with a foreign token");
    assert!(set_cookie(&out, "kirana_session").is_none());
    assert_eq!(m.b.get("/dashboard").await.redirect(), m.at(""), "still signed in");

    assert_eq!(snapshot(&p, &m.shop).await, before, "a refused form changed something");

    // Signing in: a refused phone form sends no code; a refused code form does not use it up.
    let phone = "+919800000009";
    let b = p.browser();
    let token = csrf_of(&b, "/dashboard/sign-in").await;
    for bad in [None, Some(foreign.as_str())] {
        let mut form = vec![("phone", phone)];
        if let Some(t) = bad {
            form.push(("_csrf", t));
        }
        assert_status(&b.post("/dashboard/sign-in", &form).await, 403, "phone form with a bad token");
    }
    assert!(p.notifier.last_code(phone).is_none(), "a refused form sent a code");
    let sent = b.post("/dashboard/sign-in", &[("_csrf", &token), ("phone", phone)]).await;
    assert_status(&sent, 303, "phone form");
    let code = p.notifier.last_code(phone).expect("a code");
    for bad in [None, Some(foreign.as_str())] {
        let mut form = vec![("phone", phone), ("code", code.as_str())];
        if let Some(t) = bad {
            form.push(("_csrf", t));
        }
        let res = b.post("/dashboard/sign-in/code", &form).await;
        assert_status(&res, 403, "code form with a bad token");
        assert!(set_cookie(&res, "kirana_session").is_none());
    }
    let done = b.post("/dashboard/sign-in/code", &[("_csrf", &token), ("phone", phone), ("code", &code)]).await;
    assert_status(&done, 303, "the code still works after refused posts");
}

#[tokio::test]
async fn another_merchant_gets_not_found_for_every_page_and_form_of_a_store_not_theirs() {
    let p = Platform::new().await;
    let a = stocked(&p, "+919800000010", "Store of A").await;
    let b = stocked(&p, "+919800000011", "Store of B").await;
    let (a_before, b_before) = (snapshot(&p, &a.m.shop).await, snapshot(&p, &b.m.shop).await);
    let browser = &b.m.b;
    let csrf = csrf_of(browser, &b.m.at("")).await;

    let a_base = a.m.at("");
    let (ap, ao, ac) = (&a.product, &a.order, &a.coupon);
    let mut gets: Vec<String> = [
        "",
        "?created=1",
        "/stats.json",
        "/products",
        "/products/new",
        "/orders",
        "/orders?status=placed",
        "/customers",
        "/coupons",
        "/settings",
        "/theme",
        "/theme?t=home.html",
        "/money",
    ]
    .iter()
    .map(|r| format!("{a_base}{r}"))
    .collect();
    gets.push(format!("{a_base}/products/{ap}"));
    gets.push(format!("{a_base}/orders/{ao}"));
    // A's objects under B's own store id.
    gets.push(b.m.at(&format!("/products/{ap}")));
    gets.push(b.m.at(&format!("/orders/{ao}")));
    for uri in &gets {
        assert_status(&browser.get(uri).await, 404, &format!("B: GET {uri}"));
    }

    let mut posts = store_posts(&a_base, ap, ao, ac);
    posts.retain(|(uri, _)| uri.starts_with(&a_base));
    posts.extend(
        store_posts(&b.m.at(""), ap, ao, ac)
            .into_iter()
            .filter(|(uri, _)| uri.contains(ap.as_str()) || uri.contains(ao.as_str()) || uri.contains(ac.as_str())),
    );
    assert!(posts.len() >= 14, "{posts:?}");
    for (uri, fields) in &posts {
        let mut form = fields.clone();
        form.insert(0, ("_csrf", csrf.as_str()));
        assert_status(&browser.post(uri, &form).await, 404, &format!("B: POST {uri} {fields:?}"));
    }
    let res = Multipart::new()
        .texts(&[("_csrf", &csrf), ("title", "Sneaky"), ("price", "10")])
        .file("image", "a.png", "image/png", &png(4, 4))
        .post(browser, &format!("{a_base}/products/new"))
        .await;
    assert_status(&res, 404, "B: multipart product form to A's store");

    assert_eq!(snapshot(&p, &a.m.shop).await, a_before, "B changed A's store");
    assert_eq!(snapshot(&p, &b.m.shop).await, b_before, "B's own store changed by posts naming A's objects");
}

// ---------------------------------------------------------------------------------------------
// Orders
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_shopper_order_shows_up_everywhere_and_moves_to_shipped_through_the_forms() {
    let p = Platform::new().await;
    let m = merchant(&p, "+919800000012", "Order Store").await;
    let slug = m.shop.slug();
    let pid = id(&p.product(&m.shop, json!({ "title": "Masala Chai", "price": 24900, "stock": 10 })).await);

    // Before any order: nothing waiting.
    let home = m.b.get(&m.at("")).await;
    assert_eq!(text_of(home.html(), "waiting"), "0");

    shopper_order(&p, &slug, &pid).await;
    let order = p.orders(&m.shop).await.remove(0);
    let (oid, number, total) =
        (id(&order), order["number"].as_i64().unwrap(), order["totals"]["total"].as_i64().unwrap());
    assert!(total > 0);

    // The list, filtered and not.
    let list = m.b.get(&m.at("/orders")).await;
    let html = list.html();
    assert!(html.contains(&format!("href=\"{}\"", m.at(&format!("/orders/{oid}")))), "{html}");
    assert!(html.contains(&format!("#{number}")) && html.contains("Asha Rao"), "{html}");
    assert!(m.b.get(&m.at("/orders?status=placed")).await.html().contains(&format!("#{number}")));
    assert!(!m.b.get(&m.at("/orders?status=shipped")).await.html().contains(&format!("#{number}")));

    // The home page's numbers and waiting list, and the JSON its script polls.
    let home = m.b.get(&m.at("")).await;
    let html = home.html();
    assert_eq!(text_of(html, "waiting"), "1");
    assert_eq!(text_of(html, "orders-today"), "1");
    assert!(html.contains(&format!("#{number}")), "the waiting list shows the order: {html}");
    let stats = m.b.get(&m.at("/stats.json")).await;
    assert_status(&stats, 200, "stats.json");
    assert!(stats.content_type().starts_with("application/json"), "{:?}", stats.headers);
    let stats: Value = serde_json::from_str(&stats.body).expect("stats are JSON");
    assert_eq!(stats["waiting"], 1, "{stats}");
    assert_eq!(stats["orders_today"], 1, "{stats}");
    assert_eq!(stats["revenue_today"], total, "{stats}");
    assert_eq!(text_of(html, "revenue-today"), stats["revenue_today_text"].as_str().unwrap());

    // placed → accepted → packed → shipped (with a tracking number), each from the page's form.
    let order_uri = m.at(&format!("/orders/{oid}"));
    for (to, tracking) in [("accepted", None), ("packed", None), ("shipped", Some("TRK123"))] {
        let page = m.b.get(&order_uri).await;
        let html = page.html();
        assert!(html.contains(&format!("name=\"to\" value=\"{to}\"")), "the page offers {to}: {html}");
        let csrf = page.csrf();
        let mut form = vec![("_csrf", csrf.as_str())];
        if let Some(t) = tracking {
            form.push(("tracking", t));
        }
        form.push(("to", to));
        let res = m.b.post(&format!("{order_uri}/transitions"), &form).await;
        assert_status(&res, 303, &format!("move to {to}"));
        assert_eq!(res.redirect(), order_uri);
    }
    let page = m.b.get(&order_uri).await;
    let html = page.html();
    assert_eq!(text_of(html, "order-status"), "shipped");
    assert_eq!(text_of(html, "tracking-number"), "TRK123");
    let stored = p.api(Method::GET, &m.shop.at(&format!("/orders/{oid}")), Some(&m.shop.token), None).await.expect(200);
    assert_eq!(stored["status"], "shipped", "{stored}");
    assert_eq!(text_of(m.b.get(&m.at("")).await.html(), "waiting"), "0", "nothing waits any more");

    // A move the rules forbid: 422 with a message, the order untouched.
    shopper_order(&p, &slug, &pid).await;
    let second = p.orders(&m.shop).await.into_iter().find(|o| o["status"] == "placed").expect("a placed order");
    let second_uri = m.at(&format!("/orders/{}", id(&second)));
    let csrf = csrf_of(&m.b, &second_uri).await;
    let res = m.b.post(&format!("{second_uri}/transitions"), &[("_csrf", &csrf), ("to", "delivered")]).await;
    assert_status(&res, 422, "placed → delivered");
    let msg = problem(&res.body).expect("a message says why");
    assert!(msg.contains("delivered"), "{msg}");
    assert_eq!(text_of(&res.body, "order-status"), "placed");
    let stored = p
        .api(Method::GET, &m.shop.at(&format!("/orders/{}", id(&second))), Some(&m.shop.token), None)
        .await
        .expect(200);
    assert_eq!(stored["status"], "placed", "{stored}");

    // The shopper is a customer now.
    let customers = m.b.get(&m.at("/customers")).await;
    let html = customers.html();
    assert!(html.contains("Asha Rao") && html.contains("+919812345678"), "{html}");
}

/// "Today" is the merchant's day in India on the platform's (injected) clock: an order placed
/// yesterday still waits, but is not one of today's orders.
#[tokio::test]
async fn todays_numbers_start_again_on_a_new_day_in_india() {
    let p = Platform::new().await;
    let m = merchant(&p, "+919800000021", "Day Store").await;
    let pid = id(&p.product(&m.shop, json!({ "title": "Masala Chai", "price": 24900, "stock": 10 })).await);
    shopper_order(&p, &m.shop.slug(), &pid).await;
    let stats = |b: Browser, uri: String| async move {
        let page = b.get(&uri).await;
        assert_status(&page, 200, "stats.json");
        serde_json::from_str::<Value>(&page.body).expect("stats are JSON")
    };
    let uri = m.at("/stats.json");
    let today = stats(m.b.clone(), uri.clone()).await;
    assert_eq!((today["orders_today"].as_i64(), today["waiting"].as_i64()), (Some(1), Some(1)), "{today}");

    p.clock.advance_secs(24 * 3600);
    let tomorrow = stats(m.b.clone(), uri).await;
    assert_eq!(tomorrow["waiting"], 1, "what waits still waits: {tomorrow}");
    assert_eq!(
        (tomorrow["orders_today"].as_i64(), tomorrow["revenue_today"].as_i64()),
        (Some(0), Some(0)),
        "yesterday's order is not today's: {tomorrow}"
    );
    assert_eq!(text_of(m.b.get(&m.at("")).await.html(), "orders-today"), "0");
}

// ---------------------------------------------------------------------------------------------
// Coupons, settings, theme
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn coupons_are_created_listed_and_turned_off_from_the_forms() {
    let p = Platform::new().await;
    let m = merchant(&p, "+919800000013", "Coupon Store").await;
    let uri = m.at("/coupons");

    let page = m.b.get(&uri).await;
    assert!(page.html().contains("No coupons yet."));
    let fields = |csrf: &str, code: &str, kind: &str, value: &str| -> Vec<(String, String)> {
        let mut f = vec![("_csrf".to_string(), csrf.to_string()), ("code".into(), code.into())];
        if !kind.is_empty() {
            f.push(("kind".into(), kind.into()));
        }
        for (k, v) in
            [("value", value), ("max_discount", "100"), ("min_order", ""), ("usage_limit", ""), ("expires_at", "")]
        {
            f.push((k.into(), v.into()));
        }
        f
    };
    let post = |f: Vec<(String, String)>| {
        let b = m.b.clone();
        let uri = uri.clone();
        async move {
            let pairs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            b.post(&uri, &pairs).await
        }
    };

    let res = post(fields(&page.csrf(), "DIWALI10", "percent", "10")).await;
    assert_status(&res, 303, "coupon form");
    assert_eq!(res.redirect(), uri);
    let list = coupons(&p, &m.shop).await;
    assert_eq!(list.len(), 1);
    let c = &list[0];
    assert_eq!(
        (c["code"].as_str(), c["kind"].as_str(), c["value"].as_i64()),
        (Some("DIWALI10"), Some("percent"), Some(10))
    );
    assert_eq!(c["max_discount"], 10000, "₹100 cap in paise: {c}");
    assert_eq!(c["active"], true);
    let cid = id(c);

    let page = m.b.get(&uri).await;
    let html = page.html();
    assert!(html.contains("DIWALI10") && html.contains("10% off"), "{html}");
    let action = format!("action=\"{uri}/{cid}\"");
    assert!(html.contains(&action), "a turn-off form for the coupon: {html}");

    // Turn it off.
    let res = m.b.post(&format!("{uri}/{cid}"), &[("_csrf", &page.csrf()), ("active", "false")]).await;
    assert_status(&res, 303, "turn off");
    let stored =
        p.api(Method::GET, &m.shop.at(&format!("/coupons/{cid}")), Some(&m.shop.token), None).await.expect(200);
    assert_eq!(stored["active"], false, "{stored}");
    assert!(m.b.get(&uri).await.html().contains("Turn on"));

    // Bad input: no kind and a value that is not a number.
    let csrf = csrf_of(&m.b, &uri).await;
    let res = post(fields(&csrf, "BAD1", "", "abc")).await;
    assert_status(&res, 422, "bad coupon");
    let html = &res.body;
    assert!(error_beside(html, "kind").is_some_and(|e| e.contains("percent or flat")), "kind: {html}");
    assert!(error_beside(html, "value").is_some(), "value: {html}");
    assert_eq!(field(html, "code").as_deref(), Some("BAD1"), "the code typed is kept");
    assert_eq!(field(html, "value").as_deref(), Some("abc"), "the value typed is kept");
    assert_eq!(coupons(&p, &m.shop).await.len(), 1, "nothing was created");
}

/// The settings form as the page shows it, as ordered (name, value) pairs.
fn settings_fields(page: &Page) -> Vec<(String, String)> {
    let html = page.html();
    let mut f: Vec<(String, String)> = vec![("_csrf".into(), page.csrf())];
    for name in ["name", "slug"] {
        f.push((name.into(), field(html, name).unwrap_or_default()));
    }
    f.push(("description".into(), textarea(html, "description")));
    for name in ["custom_domain", "delivery_fee", "free_delivery_threshold", "tax_rate"] {
        f.push((name.into(), field(html, name).unwrap_or_default()));
    }
    for name in ["prices_include_tax", "cod_enabled", "online_payment_enabled"] {
        let i = html.find(&format!("name=\"{name}\"")).expect("a checkbox");
        if tag_at(html, i).is_some_and(|t| t.contains(" checked")) {
            f.push((name.into(), "on".into()));
        }
    }
    for name in ["contact_phone", "contact_whatsapp", "contact_email"] {
        f.push((name.into(), field(html, name).unwrap_or_default()));
    }
    f.push(("contact_address".into(), textarea(html, "contact_address")));
    f
}

fn set(fields: &mut Vec<(String, String)>, name: &str, value: Option<&str>) {
    fields.retain(|(k, _)| k != name);
    if let Some(v) = value {
        fields.push((name.into(), v.into()));
    }
}

/// Posts the settings form as the browser does: multipart, with the logo input left empty.
async fn post_settings(m: &Merchant, fields: &[(String, String)]) -> Page {
    let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Multipart::new()
        .texts(&pairs)
        .file("logo", "", "application/octet-stream", b"")
        .post(&m.b, &m.at("/settings"))
        .await
}

#[tokio::test]
async fn settings_are_saved_in_minor_units_and_bad_ones_are_shown_beside_their_fields() {
    let p = Platform::new().await;
    let m = merchant(&p, "+919800000014", "Settings Store").await;
    let old_slug = m.shop.slug();
    p.product(&m.shop, json!({ "title": "Masala Chai", "price": 24900 })).await;

    let page = m.b.get(&m.at("/settings")).await;
    let mut f = settings_fields(&page);
    assert!(f.iter().any(|(k, _)| k == "cod_enabled"), "COD starts on: {f:?}");
    set(&mut f, "name", Some("Fresh Basket"));
    set(&mut f, "delivery_fee", Some("40"));
    set(&mut f, "tax_rate", Some("18"));
    set(&mut f, "cod_enabled", None);
    set(&mut f, "online_payment_enabled", Some("on"));
    set(&mut f, "contact_phone", Some("98765 43210"));
    let res = post_settings(&m, &f).await;
    assert_status(&res, 303, "settings");
    assert_eq!(res.redirect(), m.at("/settings?saved=1"));

    let s = store(&p, &m.shop).await;
    assert_eq!(s["name"], "Fresh Basket", "{s}");
    assert_eq!(s["delivery_fee"], 4000, "{s}");
    assert_eq!(s["tax_rate_bps"], 1800, "{s}");
    assert_eq!(s["cod_enabled"], false, "{s}");
    assert_eq!(s["contact"]["phone"], "+919876543210", "{s}");
    assert_eq!(s["slug"], old_slug.as_str(), "the slug is untouched");
    let page = m.b.get(res.redirect()).await;
    let html = page.html();
    assert!(html.contains("Settings saved."));
    assert_eq!(field(html, "delivery_fee").as_deref(), Some("40.00"));
    assert_eq!(field(html, "tax_rate").as_deref(), Some("18.00"));

    // A bad e-mail: 422, the message beside it, what was typed kept, nothing saved.
    let mut bad = settings_fields(&page);
    set(&mut bad, "name", Some("Should Not Save"));
    set(&mut bad, "contact_email", Some("not-an-email"));
    let res = post_settings(&m, &bad).await;
    assert_status(&res, 422, "bad e-mail");
    assert!(error_beside(&res.body, "contact_email").is_some(), "{}", res.body);
    assert_eq!(error_beside(&res.body, "name"), None);
    assert_eq!(field(&res.body, "contact_email").as_deref(), Some("not-an-email"));
    assert_eq!(field(&res.body, "name").as_deref(), Some("Should Not Save"));
    assert_eq!(store(&p, &m.shop).await, s, "a refused form saved something");

    // A logo uploaded with the form is stored as media; ticking "remove" takes it away.
    let page = m.b.get(&m.at("/settings")).await;
    let pairs = settings_fields(&page);
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let res = Multipart::new()
        .texts(&pairs)
        .file("logo", "logo.png", "image/png", &png(330, 330))
        .post(&m.b, &m.at("/settings"))
        .await;
    assert_status(&res, 303, "logo upload");
    let logo = store(&p, &m.shop).await["logo_url"].as_str().map(str::to_string).expect("a logo URL");
    assert!(logo.starts_with(&format!("/media/{}/", m.shop.id())), "{logo}");
    let page = m.b.get(&m.at("/settings")).await;
    assert_eq!(field(page.html(), "logo_url").as_deref(), Some(logo.as_str()), "the form keeps the logo");
    let mut kept = settings_fields(&page);
    kept.push(("logo_url".into(), logo.clone()));
    assert_status(&post_settings(&m, &kept).await, 303, "save keeping the logo");
    assert_eq!(store(&p, &m.shop).await["logo_url"].as_str(), Some(logo.as_str()), "an untouched logo stays");
    set(&mut kept, "remove_logo", Some("on"));
    assert_status(&post_settings(&m, &kept).await, 303, "remove the logo");
    assert_eq!(store(&p, &m.shop).await["logo_url"], Value::Null);

    // A new slug: the store moves, the old link redirects to it.
    let mut moved = settings_fields(&m.b.get(&m.at("/settings")).await);
    set(&mut moved, "slug", Some("fresh-basket"));
    assert_status(&post_settings(&m, &moved).await, 303, "new slug");
    assert_eq!(store(&p, &m.shop).await["slug"], "fresh-basket");
    let old = p.browser().get(&format!("/{old_slug}")).await;
    assert!(matches!(old.status.as_u16(), 301 | 308), "the old link redirects permanently: {}", old.status);
    assert_eq!(old.location(), Some("/fresh-basket"));
    assert!(p.browser().get("/fresh-basket").await.html().contains("Fresh Basket"));
}

#[tokio::test]
async fn theme_edits_preview_without_saving_refuse_broken_templates_and_reset_to_the_default() {
    let p = Platform::new().await;
    let m = merchant(&p, "+919800000015", "Theme Store").await;
    let slug = m.shop.slug();
    let pid = id(&p.product(&m.shop, json!({ "title": "Masala Chai", "price": 24900 })).await);
    let product_page = format!("/{slug}/product/{pid}");
    // The storefront's product page (the same for every visitor).
    let storefront = || {
        let (b, path) = (p.browser(), product_page.clone());
        async move { b.get(&path).await.html().to_string() }
    };
    let default_page = storefront().await;
    let uri = m.at("/theme");

    let page = m.b.get(&format!("{uri}?t=product.html")).await;
    let default_source = textarea(page.html(), "source");
    assert!(default_source.contains("{% block main %}"), "the editor starts from the default: {default_source}");
    const MARK: &str = "<p id=\"dash-mark\">Fresh & \"hot\"</p>";
    let edited = default_source.replacen("{% block main %}", &format!("{{% block main %}}{MARK}"), 1);

    // Preview: 200, the rendered page in a sandboxed srcdoc, escaped; nothing saved.
    let res = m
        .b
        .post(&uri, &[("_csrf", &page.csrf()), ("name", "product.html"), ("source", &edited), ("action", "preview")])
        .await;
    let html = res.html();
    assert!(!html.contains(MARK), "the edited markup is never in the page unescaped");
    let i = html.find("id=\"theme-preview\"").expect("a preview iframe");
    let frame = tag_at(html, i).expect("the iframe tag");
    assert!(frame.contains(" sandbox"), "{frame}");
    let srcdoc = attr(frame, "srcdoc").expect("a srcdoc");
    assert!(srcdoc.contains(MARK), "the preview shows the edit: {srcdoc}");
    assert_eq!(textarea(html, "source"), edited, "the editor keeps the edit");
    assert!(!storefront().await.contains("dash-mark"), "a preview does not save");
    assert_eq!(storefront().await, default_page);

    // A syntax error: 422 naming the template and line; nothing saved.
    let broken =
        "{% extends \"storefront/layout.html\" %}\n{% block main %}\n<h1>{{ product.title }</h1>\n{% endblock %}\n";
    let res =
        m.b.post(&uri, &[("_csrf", &page.csrf()), ("name", "product.html"), ("source", broken), ("action", "save")])
            .await;
    assert_status(&res, 422, "broken template");
    let error = text_of(&res.body, "theme-error");
    assert!(error.contains("product.html") && error.contains("line 3"), "{error}");
    assert_eq!(storefront().await, default_page, "a broken template is not saved");

    // A good one: saved, live on the storefront.
    let res =
        m.b.post(&uri, &[("_csrf", &page.csrf()), ("name", "product.html"), ("source", &edited), ("action", "save")])
            .await;
    assert_status(&res, 303, "save");
    assert_eq!(res.redirect(), format!("{uri}?t=product.html&saved=1"));
    let live = storefront().await;
    assert!(live.contains("<p id=\"dash-mark\">Fresh & \"hot\"</p>"), "{live}");
    let page = m.b.get(res.redirect()).await;
    assert_eq!(textarea(page.html(), "source"), edited, "the editor shows the saved version");

    // Reset: back to the default, on the storefront and in the editor.
    let res = m.b.post(&uri, &[("_csrf", &page.csrf()), ("name", "product.html"), ("action", "reset")]).await;
    assert_status(&res, 303, "reset");
    assert_eq!(storefront().await, default_page);
    assert_eq!(textarea(m.b.get(res.redirect()).await.html(), "source"), default_source);
}

// ---------------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------------

#[track_caller]
fn assert_private(page: &Page, what: &str) {
    let cache = header(page, "cache-control");
    assert!(cache.contains("private") && cache.contains("no-store"), "{what}: Cache-Control {cache:?}");
    assert_eq!(header(page, "x-frame-options"), "DENY", "{what}: X-Frame-Options");
}

#[tokio::test]
async fn dashboard_pages_are_never_cached_by_others_nor_framed() {
    let p = Platform::new().await;
    let s = stocked(&p, "+919800000016", "Header Store").await;
    let m = &s.m;

    // Signed out: the sign-in and code pages.
    let b = p.browser();
    let sign_in = b.get("/dashboard/sign-in").await;
    sign_in.html();
    assert_private(&sign_in, "sign-in page");
    let sent = b.post("/dashboard/sign-in", &[("_csrf", &sign_in.csrf()), ("phone", "+919800000017")]).await;
    assert_private(&sent, "phone redirect");
    let code = b.get(sent.redirect()).await;
    code.html();
    assert_private(&code, "code page");
    let wrong =
        b.post("/dashboard/sign-in/code", &[("_csrf", &code.csrf()), ("phone", "+919800000017"), ("code", "12")]).await;
    assert_status(&wrong, 422, "malformed code");
    assert_private(&wrong, "code page with errors");

    // Signed in: every page of the store.
    let pages = [
        "".to_string(),
        "?created=1".into(),
        "/products".into(),
        "/products/new".into(),
        format!("/products/{}", s.product),
        "/orders".into(),
        format!("/orders/{}", s.order),
        "/customers".into(),
        "/coupons".into(),
        "/settings".into(),
        "/theme".into(),
        "/theme?t=layout.html".into(),
    ];
    for rest in &pages {
        let page = m.b.get(&m.at(rest)).await;
        page.html();
        assert_private(&page, &format!("GET {}", m.at(rest)));
    }
    let stats = m.b.get(&m.at("/stats.json")).await;
    assert_status(&stats, 200, "stats");
    assert_private(&stats, "stats.json");

    // A second store: /dashboard lists both, and the new-store form.
    let form = m.b.get("/dashboard/stores/new").await;
    form.html();
    assert_private(&form, "new store form");
    let made = m.b.post("/dashboard/stores/new", &[("_csrf", &form.csrf()), ("name", "Second Store")]).await;
    assert_status(&made, 303, "second store");
    assert_private(&made, "store created redirect");
    let list = m.b.get("/dashboard").await;
    assert!(list.html().contains("Second Store"));
    assert_private(&list, "store list");

    // Forms shown again with errors.
    let csrf = form.csrf();
    let bad = m.b.post(&m.at("/coupons"), &[("_csrf", csrf.as_str()), ("code", "X"), ("value", "abc")]).await;
    assert_status(&bad, 422, "bad coupon");
    assert_private(&bad, "coupons with errors");
    let bad = m.b.post("/dashboard/stores/new", &[("_csrf", csrf.as_str()), ("name", "")]).await;
    assert_status(&bad, 422, "store without a name");
    assert_private(&bad, "new store with errors");
}

/// Error pages under `/dashboard` (a refused form, another merchant's store) are dashboard
/// responses too: a shared cache must not keep them and no site may frame them.
#[tokio::test]
async fn dashboard_error_pages_are_private_and_unframed_too() {
    let p = Platform::new().await;
    let a = merchant(&p, "+919800000018", "Error Store A").await;
    let b = merchant(&p, "+919800000019", "Error Store B").await;

    let forbidden = a.b.post(&a.at("/categories"), &[("_csrf", "nope"), ("name", "X")]).await;
    assert_status(&forbidden, 403, "refused form");
    let not_found = b.b.get(&a.at("/settings")).await;
    assert_status(&not_found, 404, "another merchant's settings");
    let missing = a.b.get(&a.at(&format!("/orders/{}", uuid_like()))).await;
    assert_status(&missing, 404, "an unknown order");
    let mut missing_headers = vec![];
    for (page, what) in [(&forbidden, "403 page"), (&not_found, "404 page"), (&missing, "unknown order 404")] {
        assert!(page.content_type().starts_with("text/html"), "{what} is HTML");
        let (cache, frame) = (header(page, "cache-control"), header(page, "x-frame-options"));
        if !(cache.contains("private") && cache.contains("no-store")) || frame != "DENY" {
            missing_headers.push(format!("{what}: Cache-Control {cache:?}, X-Frame-Options {frame:?}"));
        }
    }
    assert!(
        missing_headers.is_empty(),
        "dashboard error pages without private headers:\n{}",
        missing_headers.join("\n")
    );
}

fn uuid_like() -> String {
    "0190d3c1-7c3e-7a55-9d2e-5b6b7c8d9e0f".to_string()
}
