//! End to end, in a real browser: a merchant signs in to the dashboard, opens a store and adds a
//! product with a photo; a shopper finds it on the storefront and buys it, cash on delivery; the
//! merchant finds the order in the dashboard and ships it.
//!
//! The platform runs in process on a real port ([`server`]); headless Chromium drives it
//! through chromedriver ([`chrome`]). Each page visited is saved as a PNG: into
//! `KIRANA_SCREENSHOTS` (e.g. `docs/screenshots`, relative to the workspace root) to refresh the
//! docs, else into a temp dir.
//!
//! It also measures what the issue asks for: the server time from the first dashboard page to a
//! live store with one product, printed as a `BENCH` line with the wall time and request count.

#[path = "browser/chrome.rs"]
mod chrome;
#[path = "browser/server.rs"]
mod server;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrome::{Browser, Shots};
use server::Server;

const PHONE: &str = "9876543210";
const PHONE_E164: &str = "+919876543210";
const STORE: &str = "Sharma General Store";
const PRODUCT: &str = "Masala Chai, 250 g";
const TRACKING: &str = "TRK123";
/// The bound for the dashboard-to-live-store path, in server time. Generous on purpose:
/// it catches a path gone wrong (a query per row, a lock held across the upload), not tuning;
/// the real figure is printed. In a debug build most of it is decoding and resizing the photo.
const LIVE_STORE_BUDGET: Duration = Duration::from_secs(1);

/// What the merchant's first minutes produced.
struct Opened {
    /// `/dashboard/stores/{store_id}`.
    store_home: String,
    /// The storefront's address, as the dashboard links to it.
    store_url: String,
    /// The new product's storefront page.
    product_url: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_opens_a_store_a_shopper_buys_and_the_merchant_ships_it_in_a_real_browser() {
    let server = Server::start().await;
    let mut browser = Browser::open(&server.base, 1280, 900).await;
    let mut shots = Shots::new();
    let photo_dir = tempfile::tempdir().expect("a temp dir for the photo");
    let photo = product_photo(photo_dir.path());

    // The timed path: first dashboard page to the live product page. Wall time leaves out the
    // screenshots but not the driver's round trips and typing, so server time is the figure
    // that describes the platform.
    let (before, started, shots_before) = (server.meter.read(), Instant::now(), shots.spent);
    let opened = open_a_store(&browser, &mut shots, &server, &photo).await;
    let (spent, wall) = (server.meter.read() - before, started.elapsed() - (shots.spent - shots_before));
    println!(
        "BENCH dashboard-to-live-store: server_ms={:.1} wall_ms={:.0} requests={}",
        spent.busy.as_secs_f64() * 1000.0,
        wall.as_secs_f64() * 1000.0,
        spent.requests
    );
    for (what, took) in server.meter.slowest(before, 5) {
        println!("  {:>7.1} ms  {what}", took.as_secs_f64() * 1000.0);
    }
    assert!(
        spent.busy < LIVE_STORE_BUDGET,
        "the platform spent {:?} on the path from sign-in to a live store ({} requests); the bound is {LIVE_STORE_BUDGET:?}",
        spent.busy,
        spent.requests
    );
    shots.take(&browser, "storefront-product").await;

    // The page as a shopper's first visit downloads it: no cookies, uncompressed.
    let html = reqwest::get(browser.url(&opened.product_url)).await.expect("the product page answers");
    assert!(html.status().is_success(), "the product page answered {}", html.status());
    let bytes = html.bytes().await.expect("the product page's body").len();
    println!("BENCH product-page-html-bytes: {bytes}");

    // The product page on a phone.
    browser.resize(390, 844).await;
    browser.goto(&opened.product_url).await;
    browser.wait_for_images().await;
    shots.take(&browser, "storefront-product-phone").await;
    browser.resize(1280, 900).await;

    let order_url = buy_it(&browser, &mut shots, &opened).await;
    ship_it(&browser, &mut shots, &opened, &order_url).await;
    numbers_refresh_without_a_reload(&browser, &opened).await;
    the_rest_of_the_dashboard(&browser, &mut shots, &opened).await;

    browser.close().await;
    if let Some(dir) = shots.kept() {
        println!("{} screenshots in {}", shots.taken.len(), dir.display());
    }
}

/// Sign in, create a store, add a product with a photo, open its storefront page.
async fn open_a_store(b: &Browser, shots: &mut Shots, server: &Server, photo: &Path) -> Opened {
    b.goto("/dashboard/sign-in").await;
    b.find("form#sign-in").await;
    shots.take(b, "dashboard-sign-in").await;
    b.fill("form#sign-in input[name=phone]", PHONE).await;
    b.click("form#sign-in button[type=submit]").await;

    b.find("form#verify").await;
    let path = b.path().await;
    assert!(path.starts_with("/dashboard/sign-in/code?phone="), "the code form follows; at {path}");
    shots.take(b, "dashboard-sign-in-code").await;
    let code = server.notifier.last_code(PHONE_E164).expect("a sign-in code was sent to the merchant's phone");
    b.fill("form#verify input[name=code]", &code).await;
    b.click("form#verify button[type=submit]").await;

    // A merchant without a store is sent to create one.
    b.find("form#new-store").await;
    assert_eq!(b.path().await, "/dashboard/stores/new");
    shots.take(b, "dashboard-new-store").await;
    b.fill("form#new-store input[name=name]", STORE).await;
    b.click("form#new-store button[type=submit]").await;

    let store_url = b.attr("a#store-link", "href").await;
    let after_create = b.path().await;
    let store_home = after_create.split('?').next().unwrap_or_default().to_string();
    assert!(store_home.starts_with("/dashboard/stores/"), "the store's home follows; at {store_home}");
    assert_eq!(b.text("#waiting").await, "0", "a new store has no orders waiting");
    shots.take(b, "dashboard-store-home").await;

    b.click(&format!("main a[href='{store_home}/products/new']")).await;
    b.find("form#product").await;
    b.fill("form#product input[name=title]", PRODUCT).await;
    b.fill("form#product textarea[name=description]", "Strong Assam tea with cardamom and ginger.").await;
    b.fill("form#product input[name=price]", "249").await;
    b.fill("form#product input[name=stock]", "10").await;
    b.attach("form#product input[type=file][name=image]", photo).await;
    let status = b.find("form#product select[name=status]").await.prop("value").await.expect("the status");
    assert_eq!(status.as_deref(), Some("active"), "a new product is on sale unless the merchant says otherwise");
    shots.take(b, "dashboard-product-form").await;
    b.click("form#product button[type=submit]").await;

    let product_url = b.attr("a.storefront-link", "href").await;
    let path = b.path().await;
    assert!(path.starts_with(&format!("{store_home}/products/")), "the product's page follows; at {path}");
    let flash = b.text(".flash").await;
    assert!(flash.contains("on sale"), "the merchant is told the product is on sale; it reads {flash:?}");
    b.wait_for_images().await;
    shots.take(b, "dashboard-product").await;

    // Live: the storefront page of the new product, with its photo.
    b.goto(&product_url).await;
    b.wait_for_text("h1", "the product's title", |t| t == PRODUCT).await;
    b.wait_for_images().await;
    assert_eq!(b.text(".price").await, "₹249.00");
    Opened { store_home, store_url, product_url }
}

/// The shopper: storefront home, product, cart, checkout with cash on delivery, confirmation.
/// Returns the confirmation page's address (it carries the order's token).
async fn buy_it(b: &Browser, shots: &mut Shots, opened: &Opened) -> String {
    b.goto(&opened.store_url).await;
    let card = b.text("a.card").await;
    assert!(card.contains(PRODUCT), "the home page lists the product; its card reads {card:?}");
    b.wait_for_images().await;
    shots.take(b, "storefront-home").await;

    b.click("a.card").await;
    b.wait_for_text("h1", "the product's title", |t| t == PRODUCT).await;
    assert_eq!(b.url(&b.path().await), b.url(&opened.product_url), "the card links to the product page");
    b.click(".product form button[type=submit]").await;

    b.wait_for_path("the cart", |p| p.ends_with("/cart")).await;
    let cart = b.text("main table").await;
    assert!(cart.contains(PRODUCT), "the cart holds the product; it reads {cart:?}");
    assert!(b.text(".cartlink").await.contains("(1)"), "the header counts one item");
    shots.take(b, "storefront-cart").await;

    b.click("main a[href$='/checkout']").await;
    b.wait_for_path("checkout", |p| p.ends_with("/checkout")).await;
    let form = "main form[action$='/checkout']";
    b.fill(&format!("{form} input[name=name]"), "Asha Rao").await;
    b.fill(&format!("{form} input[name=phone]"), "9812345678").await;
    b.fill(&format!("{form} input[name=line1]"), "12 MG Road").await;
    b.fill(&format!("{form} input[name=city]"), "Pune").await;
    b.fill(&format!("{form} input[name=postal_code]"), "411001").await;
    b.click(&format!("{form} input[name=payment_method][value=cod]")).await;
    shots.take(b, "storefront-checkout").await;
    b.click(&format!("{form} button[type=submit]")).await;

    b.wait_for_path("the order confirmation", |p| p.contains("/order/") && p.contains("token=")).await;
    assert_eq!(b.text("h1").await, "Order #1001");
    let page = b.text("main").await;
    assert!(page.contains("Thank you! Your order has been placed."), "the shopper is thanked; the page reads {page:?}");
    assert!(page.contains("cash on delivery"), "the order is cash on delivery; the page reads {page:?}");
    shots.take(b, "storefront-order").await;
    b.current_url().await
}

/// The merchant: the waiting order on the store's home, the orders list, the order moved
/// placed → accepted → packed → shipped with a tracking number; the shopper's page follows.
async fn ship_it(b: &Browser, shots: &mut Shots, opened: &Opened, order_url: &str) {
    b.goto(&opened.store_home).await;
    b.wait_for_text("#waiting", "one waiting order", |t| t == "1").await;
    shots.take(b, "dashboard-store-home-order-waiting").await;

    b.goto(&format!("{}/orders", opened.store_home)).await;
    let rows = b.find_all("tr.order").await;
    assert_eq!(rows.len(), 1, "one order is listed");
    let row = b.text("tr.order").await;
    assert!(row.contains("#1001"), "the row shows the order's number; it reads {row:?}");
    shots.take(b, "dashboard-orders").await;

    b.click("tr.order a.order-link").await;
    b.wait_for_text("#order-status", "placed", |t| t.eq_ignore_ascii_case("placed")).await;
    shots.take(b, "dashboard-order").await;
    for next in ["accepted", "packed", "shipped"] {
        if next == "shipped" {
            b.fill("form.transition:has(button[name=to][value=shipped]) input[name=tracking]", TRACKING).await;
        }
        b.click(&format!("form.transition button[name=to][value={next}]")).await;
        b.wait_for_text("#order-status", next, |t| t.eq_ignore_ascii_case(next)).await;
    }
    let page = b.text("body").await;
    assert!(page.contains(TRACKING), "the order page shows the tracking number; it reads {page:?}");
    shots.take(b, "dashboard-order-shipped").await;

    b.goto(order_url).await;
    let page = b.text("main").await;
    assert!(
        page.contains("Status: Shipped") && page.contains(TRACKING),
        "the shopper's page shows the shipment; it reads {page:?}"
    );
    shots.take(b, "storefront-order-shipped").await;
}

/// The store's home page keeps its numbers current without a reload: an order placed elsewhere
/// (a second shopper, over the JSON API) shows up after the page's own refresh. The page
/// refreshes every 10 s and whenever the tab becomes visible; the test fires the latter rather
/// than wait out the former.
async fn numbers_refresh_without_a_reload(b: &Browser, opened: &Opened) {
    b.goto(&opened.store_home).await;
    b.wait_for_text("#waiting", "nothing waiting once the order shipped", |t| t == "0").await;
    assert_eq!(b.text("#orders-today").await, "1");
    // A mark a reload would erase.
    b.eval("window.kiranaSamePage = true; return true;").await;

    let api = |path: &str| b.url(&format!("/api/v1/storefront{path}"));
    let slug = opened.store_url.trim_end_matches('/').rsplit('/').next().expect("the store's slug").to_string();
    let http = reqwest::Client::new();
    let products: serde_json::Value =
        http.get(api(&format!("/{slug}/products"))).send().await.unwrap().json().await.unwrap();
    let variant = products["items"][0]["variants"][0]["id"].as_str().expect("the product's variant").to_string();
    let cart: serde_json::Value = http
        .post(api(&format!("/{slug}/carts")))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (cart_id, token) = (cart["cart_id"].as_str().unwrap(), cart["token"].as_str().unwrap());
    let added = http
        .put(api(&format!("/{slug}/carts/{cart_id}/items")))
        .header("x-cart-token", token)
        .json(&serde_json::json!({ "variant_id": variant, "quantity": 2 }))
        .send()
        .await
        .unwrap();
    assert!(added.status().is_success(), "the second shopper's cart takes the item: {}", added.status());
    let placed = http
        .post(api(&format!("/{slug}/carts/{cart_id}/checkout")))
        .header("x-cart-token", token)
        .json(&serde_json::json!({
            "customer": { "name": "Ravi Kumar", "phone": "+919811111111" },
            "address": { "line1": "4 Park Street", "city": "Kolkata", "postal_code": "700016" },
            "payment_method": "cod"
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status().as_u16(), 201, "the second order is placed");

    b.eval("document.dispatchEvent(new Event('visibilitychange')); return true;").await;
    b.wait_for_text("#waiting", "the new order, without a reload", |t| t == "1").await;
    b.wait_for_text("#orders-today", "two orders today", |t| t == "2").await;
    b.wait_for_text("#revenue-today", "three units' revenue", |t| t == "₹747.00").await;
    assert_eq!(
        b.eval("return window.kiranaSamePage === true;").await,
        serde_json::json!(true),
        "the page was not reloaded"
    );
}

/// Every other page once, each doing its one job: a category made and given to the product
/// (and the storefront's category page and search), customers, a coupon, settings, and the theme
/// editor's preview and its refusal of a broken template.
async fn the_rest_of_the_dashboard(b: &Browser, shots: &mut Shots, opened: &Opened) {
    let home = &opened.store_home;
    b.goto(&format!("{home}/products")).await;
    b.fill("#cat-name", "Tea").await;
    b.click("form[action$='/categories'] button[type=submit]").await;
    b.wait_for_text("main", "the new category", |t| t.contains("Saved.") && t.contains("Tea")).await;
    shots.take(b, "dashboard-products").await;
    b.click("tr.product a.product-link").await;
    b.click("form#product select[name=category_id] option:nth-child(2)").await;
    b.click("form#product button[type=submit]").await;
    b.wait_for_text(".flash", "the product saved", |t| t.starts_with("Saved.")).await;

    b.goto(&opened.store_url).await;
    b.click(".cats a").await;
    b.wait_for_text("h1", "the category page", |t| t == "Tea").await;
    assert!(b.text("main").await.contains(PRODUCT), "the category lists the product");
    b.wait_for_images().await;
    shots.take(b, "storefront-category").await;
    b.fill(".search input[name=q]", "chai\n").await;
    b.wait_for_path("search results", |p| p.contains("/search?q=chai")).await;
    assert!(b.text("main").await.contains(PRODUCT), "searching finds the product");
    b.wait_for_images().await;
    shots.take(b, "storefront-search").await;

    b.goto(&format!("{home}/customers")).await;
    let customers = b.text("main table").await;
    assert!(
        customers.contains("Asha Rao") && customers.contains("Ravi Kumar"),
        "both shoppers are customers: {customers:?}"
    );
    shots.take(b, "dashboard-customers").await;

    b.goto(&format!("{home}/coupons")).await;
    b.fill("form#new-coupon input[name=code]", "WELCOME10").await;
    b.fill("form#new-coupon input[name=value]", "10").await;
    b.click("form#new-coupon button[type=submit]").await;
    b.wait_for_text("main", "the coupon listed", |t| t.contains("WELCOME10") && t.contains("10% off")).await;
    shots.take(b, "dashboard-coupons").await;

    b.goto(&format!("{home}/settings")).await;
    b.find("form#settings").await;
    shots.take(b, "dashboard-settings").await;

    b.goto(&format!("{home}/theme?t=product.html")).await;
    b.eval(
        "const s = document.getElementById('source'); \
         s.value = s.value.replace('<h1>{{ product.title }}</h1>', '<h1>{{ product.title }} <small>fresh today</small></h1>'); \
         return s.value.includes('fresh today');",
    )
    .await;
    b.click("form#theme button[value=preview]").await;
    b.find("iframe#theme-preview").await;
    let srcdoc = b.attr("iframe#theme-preview", "srcdoc").await;
    assert!(srcdoc.contains("fresh today"), "the preview renders the edit");
    shots.take(b, "dashboard-theme-preview").await;
    b.eval("document.getElementById('source').value = '<h1>{{ product.title }</h1>\\n{% if %}'; return true;").await;
    b.click("form#theme button[value=save]").await;
    let error = b.text("#theme-error").await;
    assert!(error.contains("product.html") && error.contains("line"), "the merchant sees where and why: {error:?}");
    shots.take(b, "dashboard-theme-error").await;
    b.goto(&opened.product_url).await;
    b.wait_for_text("h1", "the storefront, untouched by the broken template", |t| t == PRODUCT).await;
}

/// A 640×480 photo-like PNG (a gradient with a disc), so the upload goes through decoding and
/// resizing like a real one.
fn product_photo(dir: &Path) -> PathBuf {
    let img = image::RgbImage::from_fn(640, 480, |x, y| {
        let (dx, dy) = (x as f32 - 320.0, y as f32 - 250.0);
        if dx * dx + dy * dy < 150.0 * 150.0 {
            image::Rgb([150 - (y / 8) as u8, 75, 30])
        } else {
            image::Rgb([240 - (y / 10) as u8, 200 - (x / 16) as u8, 140])
        }
    });
    let path = dir.join("masala-chai.png");
    img.save(&path).expect("the photo is written");
    path
}
