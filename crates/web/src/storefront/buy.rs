//! Buying: the cart (a server-side cart behind an HttpOnly cookie), checkout and the order page.
//! Plain forms and 303 redirects; nothing needs JavaScript.

use std::collections::BTreeMap;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::CookieJar;
use kirana_domain::cart::{AddressInput, Cart, CartStatus, CheckoutInput, CustomerInput, Quantity};
use kirana_domain::order::{OrderStatus, PaymentMethod, PublicOrder};
use kirana_domain::{CartId, OrderId, VariantId};
use kirana_server::AppState;
use kirana_server::auth::{hash_token, new_token};
use kirana_storage::{ConflictKind, IdempotencyKey, StorageError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Front, Meta, Resolve, Site, found};
use crate::cookies;
use crate::csrf::Csrf;
use crate::error::{WebError, WebResult};

/// The cart cookie's contents: the cart's id and the hash of its token.
pub fn cart_cookie(jar: &CookieJar) -> Option<(CartId, [u8; 32])> {
    let raw = jar.get(cookies::CART)?.value().to_string();
    let (id, token) = raw.split_once('.')?;
    Some((CartId::parse(id)?, hash_token(token)))
}

fn cart_token(jar: &CookieJar) -> Option<String> {
    jar.get(cookies::CART)?.value().split_once('.').map(|(_, t)| t.to_string())
}

#[derive(Serialize)]
struct CartPage {
    site: Site,
    cart: Option<Cart>,
    error: Option<String>,
}

async fn open_cart(state: &AppState, f: &Front, jar: &CookieJar) -> Option<Cart> {
    let (id, token) = cart_cookie(jar)?;
    let cart = state.storage.shard(&f.scope).cart(&f.scope, id, token, state.clock.now()).await.ok()?;
    (cart.status == CartStatus::Open).then_some(cart)
}

async fn render_cart(
    state: &AppState,
    f: &Front,
    csrf: Csrf,
    error: Option<String>,
    status: StatusCode,
) -> WebResult<Response> {
    let cart = open_cart(state, f, &csrf.jar).await;
    let jar = csrf.jar.clone().add(count_cookie(f, cart.as_ref()));
    let meta = Meta {
        path: "/cart".into(),
        title: format!("Cart · {}", f.store.name),
        description: String::new(),
        image: None,
        kind: "website",
    };
    let site = f.private_site(state, csrf.token(), cart.as_ref(), meta).await?;
    let mut res = f.private_page("cart.html", CartPage { site, cart, error }, jar)?;
    *res.status_mut() = status;
    Ok(res)
}

/// The cart-count cookie the cached pages' header shows, in step with `cart`.
fn count_cookie(f: &Front, cart: Option<&Cart>) -> axum_extra::extract::cookie::Cookie<'static> {
    let n = cart.map_or(0, super::cart_count);
    cookies::visible(&f.web, cookies::CART_COUNT, n.to_string(), &f.cookie_path())
}

/// Whether a post comes from a page of this same site: its `Origin` (or, from a browser that
/// sends none, its `Referer`) names the host it was sent to. A cross-site page can make a browser
/// post a form but cannot make it lie about where the form was.
fn same_origin(headers: &HeaderMap) -> bool {
    let authority = |url: &str| url.split_once("://").map(|(_, rest)| rest.split('/').next().unwrap_or("").to_string());
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    let from = match headers.get(header::ORIGIN) {
        Some(origin) => origin.to_str().ok().and_then(authority),
        None => headers.get(header::REFERER).and_then(|r| r.to_str().ok()).and_then(authority),
    };
    from.is_some_and(|a| a.eq_ignore_ascii_case(host))
}

pub async fn cart(State(state): State<AppState>, r: Resolve, csrf: Csrf) -> WebResult<Response> {
    let f = found!(r);
    render_cart(&state, &f, csrf, None, StatusCode::OK).await
}

#[derive(Debug, Deserialize)]
pub struct CartForm {
    #[serde(default)]
    _csrf: String,
    variant_id: String,
    quantity: Option<String>,
    /// `add` (product page: add to what is there) or `set` (cart page: replace; 0 removes).
    mode: Option<String>,
}

pub async fn change_cart(
    State(state): State<AppState>,
    r: Resolve,
    csrf: Csrf,
    headers: HeaderMap,
    Form(form): Form<CartForm>,
) -> WebResult<Response> {
    let f = found!(r);
    // The cart page's forms carry this browser's token; the product page is cached and shared,
    // so its add-to-cart form carries none and must come from this site instead.
    if form._csrf.is_empty() {
        if !same_origin(&headers) {
            return Err(WebError::Csrf);
        }
    } else {
        csrf.check(&form._csrf)?;
    }
    let variant = VariantId::parse(form.variant_id.trim())
        .ok_or_else(|| WebError::BadRequest("That item is not sold here.".into()))?;
    let asked: i64 = form
        .quantity
        .as_deref()
        .unwrap_or("1")
        .trim()
        .parse()
        .map_err(|_| WebError::BadRequest("Quantity must be a number.".into()))?;
    let adding = form.mode.as_deref() != Some("set");
    let shard = state.storage.shard(&f.scope);
    let now = state.clock.now();
    let mut jar = csrf.jar.clone();
    // The cart behind the cookie, or a new one if it is gone, expired or already an order.
    let (id, token_hash, current) = match (cart_cookie(&jar), open_cart(&state, &f, &jar).await) {
        (Some((id, hash)), Some(cart)) => (id, hash, cart),
        _ => {
            let token = new_token("cart");
            let cart = shard.create_cart(&f.scope, hash_token(&token), now).await?;
            jar = jar.add(f.cookie(cookies::CART, format!("{}.{}", cart.id, token)));
            (cart.id, hash_token(&token), cart)
        }
    };
    let have = current.items.iter().find(|l| l.variant_id == variant).map(|l| i64::from(l.quantity)).unwrap_or(0);
    let want = if adding { have + asked.max(1) } else { asked };
    let quantity = match Quantity::parse(want) {
        Ok(q) => q,
        Err(m) => {
            return render_cart(
                &state,
                &f,
                csrf.with_jar(jar),
                Some(format!("Quantity {m}.")),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await;
        }
    };
    match shard.set_cart_item(&f.scope, id, token_hash, variant, quantity, now).await {
        Ok(cart) => {
            let jar = jar.add(count_cookie(&f, Some(&cart)));
            Ok((jar, Redirect::to(&format!("{}/cart", f.base))).into_response())
        }
        Err(StorageError::InsufficientStock(short)) => {
            let msg = short
                .iter()
                .map(|s| format!("Only {} left of {}.", s.available.max(0), s.title))
                .collect::<Vec<_>>()
                .join(" ");
            render_cart(&state, &f, csrf.with_jar(jar), Some(msg), StatusCode::CONFLICT).await
        }
        Err(StorageError::Invalid(_)) => {
            render_cart(
                &state,
                &f,
                csrf.with_jar(jar),
                Some("That item is no longer for sale.".into()),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct CheckoutForm {
    #[serde(default)]
    _csrf: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    phone: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    line1: String,
    #[serde(default)]
    line2: String,
    #[serde(default)]
    landmark: String,
    #[serde(default)]
    city: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    postal_code: String,
    #[serde(default)]
    payment_method: String,
    #[serde(default)]
    coupon: String,
    #[serde(default)]
    note: String,
}

#[derive(Serialize)]
struct CheckoutPage {
    site: Site,
    cart: Cart,
    form: CheckoutForm,
    /// Field → message; `_` for the form as a whole.
    errors: BTreeMap<String, String>,
    /// Whether online payment can be taken right now (the store takes it and the provider
    /// answers): offered disabled, with a word why, when not.
    online_available: bool,
}

async fn render_checkout(
    state: &AppState,
    f: &Front,
    csrf: Csrf,
    cart: Cart,
    mut form: CheckoutForm,
    errors: BTreeMap<String, String>,
    status: StatusCode,
) -> WebResult<Response> {
    if form.key.is_empty() {
        // One key per checkout form: a double-submitted form places one order.
        form.key = uuid::Uuid::now_v7().to_string();
    }
    if form.payment_method.is_empty() {
        form.payment_method = if f.store.settings.cod_enabled { "cod".into() } else { "online".into() };
    }
    let meta = Meta {
        path: "/checkout".into(),
        title: format!("Checkout · {}", f.store.name),
        description: String::new(),
        image: None,
        kind: "website",
    };
    let site = f.private_site(state, csrf.token(), Some(&cart), meta).await?;
    let online_available = f.store.settings.online_payment_enabled && state.payments.available();
    let page = CheckoutPage { site, cart, form, errors, online_available };
    let mut res = f.private_page("checkout.html", page, csrf.jar)?;
    *res.status_mut() = status;
    Ok(res)
}

pub async fn checkout_form(State(state): State<AppState>, r: Resolve, csrf: Csrf) -> WebResult<Response> {
    let f = found!(r);
    match open_cart(&state, &f, &csrf.jar).await {
        Some(cart) if !cart.items.is_empty() => {
            render_checkout(&state, &f, csrf, cart, CheckoutForm::default(), BTreeMap::new(), StatusCode::OK).await
        }
        _ => Ok(Redirect::to(&format!("{}/cart", f.base)).into_response()),
    }
}

fn some(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

pub async fn checkout(
    State(state): State<AppState>,
    r: Resolve,
    csrf: Csrf,
    Form(form): Form<CheckoutForm>,
) -> WebResult<Response> {
    let f = found!(r);
    csrf.check(&form._csrf)?;
    let Some((cart_id, token_hash)) = cart_cookie(&csrf.jar) else {
        return Ok(Redirect::to(&format!("{}/cart", f.base)).into_response());
    };
    let token = cart_token(&csrf.jar).unwrap_or_default();
    let payment_method = match form.payment_method.as_str() {
        "online" => PaymentMethod::Online,
        _ => PaymentMethod::Cod,
    };
    let input = CheckoutInput {
        customer: CustomerInput { name: form.name.clone(), phone: form.phone.clone(), email: some(&form.email) },
        address: AddressInput {
            line1: form.line1.clone(),
            line2: some(&form.line2),
            landmark: some(&form.landmark),
            city: form.city.clone(),
            state: some(&form.state),
            postal_code: form.postal_code.clone(),
            country: None,
        },
        payment_method,
        coupon: some(&form.coupon),
        note: some(&form.note),
        return_url: None,
    };
    let key = some(&form.key).filter(|k| k.len() <= 100).map(|k| {
        let mut h = Sha256::new();
        h.update(cart_id.uuid().as_bytes());
        h.update(serde_json::to_vec(&input).unwrap_or_default());
        IdempotencyKey { key: format!("web-{k}"), fingerprint: h.finalize().into() }
    });
    let shard = state.storage.shard(&f.scope);
    let again = |errors: BTreeMap<String, String>, status: StatusCode| {
        let (state, f, form) = (state.clone(), &f, form.clone());
        async move {
            match open_cart(&state, f, &csrf.jar).await {
                Some(cart) => render_checkout(&state, f, csrf, cart, form, errors, status).await,
                None => Ok(Redirect::to(&format!("{}/cart", f.base)).into_response()),
            }
        }
    };
    let request = match input.parse() {
        Ok(r) => r,
        Err(invalid) => {
            let errors = invalid.0.into_iter().map(|e| (form_field(&e.field), e.message)).collect();
            return again(errors, StatusCode::UNPROCESSABLE_ENTITY).await;
        }
    };
    let online = request.payment_method == PaymentMethod::Online && f.store.settings.online_payment_enabled;
    if online && !state.payments.available() {
        let why = "Online payment is unavailable right now. Choose cash on delivery, or try again shortly.";
        return again(
            BTreeMap::from([("payment_method".to_string(), why.to_string())]),
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .await;
    }
    match shard.checkout(&f.scope, cart_id, token_hash, request, key, state.clock.now()).await {
        Ok((order, replayed)) => {
            if !replayed {
                kirana_server::metrics::order_placed(&order);
            }
            let token: String = form_urlencoded::byte_serialize(token.as_bytes()).collect();
            let jar = CookieJar::new().add(count_cookie(&f, None));
            let order_page = format!("{}/order/{}?token={token}", f.base, order.id);
            if order.status == OrderStatus::PendingPayment {
                // To the provider's page; it sends the shopper back to the order's page here.
                let back = format!("{}/order/{}?token={token}&paid=1", f.origin, order.id);
                return Ok(
                    match state.payments.start(&state.storage, &f.scope, &order, &back, state.clock.now()).await {
                        Ok(p) => match p.checkout_url {
                            Some(url) => (jar, Redirect::to(&url)).into_response(),
                            None => (jar, Redirect::to(&order_page)).into_response(),
                        },
                        // The order was cancelled and its stock released: its page says so.
                        Err(_) => (jar, Redirect::to(&format!("{order_page}&unpaid=1"))).into_response(),
                    },
                );
            }
            Ok((jar, Redirect::to(&format!("{order_page}&placed=1"))).into_response())
        }
        Err(StorageError::InsufficientStock(short)) => {
            let msg = short
                .iter()
                .map(|s| format!("Only {} left of {}.", s.available.max(0), s.title))
                .collect::<Vec<_>>()
                .join(" ");
            again(BTreeMap::from([("_".to_string(), format!("{msg} Please update your cart."))]), StatusCode::CONFLICT)
                .await
        }
        Err(StorageError::Coupon(reason)) => {
            again(
                BTreeMap::from([("coupon".to_string(), capitalise(&reason.to_string()))]),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
        Err(StorageError::Invalid(invalid)) => {
            let errors = invalid.0.into_iter().map(|e| (form_field(&e.field), e.message)).collect();
            again(errors, StatusCode::UNPROCESSABLE_ENTITY).await
        }
        Err(StorageError::Conflict { kind: ConflictKind::CartClosed, .. }) => {
            Ok(Redirect::to(&format!("{}/cart", f.base)).into_response())
        }
        Err(e) => Err(e.into()),
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// The form's field name for an API field path (`customer.phone` → `phone`).
fn form_field(path: &str) -> String {
    path.rsplit('.').next().unwrap_or(path).to_string()
}

#[derive(Debug, Default, Deserialize)]
pub struct OrderQuery {
    token: Option<String>,
    placed: Option<String>,
    /// Back from the provider's page.
    paid: Option<String>,
    /// The payment could not be started.
    unpaid: Option<String>,
}

#[derive(Serialize)]
struct OrderPage {
    site: Site,
    order: PublicOrder,
    just_placed: bool,
    /// The payment could not be started: the order was cancelled.
    unpaid: bool,
    status_url: String,
}

pub async fn order(
    State(state): State<AppState>,
    r: Resolve,
    csrf: Csrf,
    Query(q): Query<OrderQuery>,
) -> WebResult<Response> {
    let f = found!(r);
    let id = f.param("order_id").and_then(OrderId::parse).ok_or(WebError::NotFound)?;
    let token =
        q.token.clone().filter(|t| t.len() <= 200).or_else(|| cart_token(&csrf.jar)).ok_or(WebError::NotFound)?;
    let shard = state.storage.shard(&f.scope);
    let mut order = shard.order_for_shopper(&f.scope, id, hash_token(&token)).await?;
    let mut payment_url = None;
    if order.payment_method == PaymentMethod::Online
        && (q.paid.is_some() || order.status == OrderStatus::PendingPayment)
    {
        let payment = shard.payments().payment_for_order(&f.scope, id).await.ok();
        // Back from the provider with the payment still open (no webhook yet, or its capture
        // under way): ask the provider now, which also captures, so a shopper who paid sees a
        // placed, paid order.
        if let (Some(p), Some(_)) = (&payment, &q.paid)
            && p.state.is_open()
            && state.payments.refresh(&state.storage, &f.scope, p, state.clock.now()).await.is_ok()
        {
            order = shard.order_for_shopper(&f.scope, id, hash_token(&token)).await?;
        }
        if order.status == OrderStatus::PendingPayment {
            payment_url = payment.and_then(|p| p.checkout_url);
        }
    }
    let meta = Meta {
        path: format!("/order/{id}"),
        title: format!("Order #{} · {}", order.number, f.store.name),
        description: String::new(),
        image: None,
        kind: "website",
    };
    let cart = open_cart(&state, &f, &csrf.jar).await;
    let site = f.private_site(&state, csrf.token(), cart.as_ref(), meta).await?;
    let enc: String = form_urlencoded::byte_serialize(token.as_bytes()).collect();
    // The store's own origin: on a custom domain the link must stay on that domain.
    let status_url = format!("{}/order/{id}?token={enc}", f.origin);
    f.private_page(
        "order.html",
        OrderPage {
            site,
            order: PublicOrder { payment_url, ..PublicOrder::from(order) },
            just_placed: q.placed.is_some() || (q.paid.is_some()),
            unpaid: q.unpaid.is_some(),
            status_url,
        },
        csrf.jar,
    )
}

/// Plausible contexts for every editable template, rendered when a merchant saves a theme, so
/// a template that would fail on a real page is refused before it goes live.
pub fn sample_contexts(store: &kirana_domain::store::Store) -> Vec<(&'static str, serde_json::Value)> {
    use kirana_domain::catalog::{Product, ProductStatus, PublicProduct, Variant};
    use kirana_domain::store::PublicStore;
    use kirana_domain::{Amount, ProductId, Timestamp};
    let now = Timestamp::from_millis(1_767_225_600_000);
    let product = |title: &str, stock: Option<i64>| {
        PublicProduct::from(Product {
            id: ProductId::generate(),
            title: title.into(),
            description: "A sample product, to try the theme on.".into(),
            status: ProductStatus::Active,
            category_id: None,
            images: vec![],
            options: vec!["Size".into()],
            variants: vec![Variant {
                id: VariantId::generate(),
                title: "M".into(),
                options: vec!["M".into()],
                sku: None,
                price: Amount::from_stored(49_900),
                compare_at_price: Some(Amount::from_stored(59_900)),
                stock,
            }],
            created_at: now,
            updated_at: now,
        })
    };
    let site = serde_json::json!({
        "store": PublicStore::from(store),
        "base": format!("/{}", store.slug),
        "categories": [],
        "cart_count": 1,
        "csrf": "sample",
        "canonical": "https://example.com/",
        "title": store.name,
        "description": "",
        "og_image": null,
        "og_type": "website",
    });
    let products = vec![product("Masala Chai", Some(10)), product("Sold-out Saree", Some(0))];
    let cart = serde_json::json!({
        "id": CartId::generate(), "status": "open", "currency": store.settings.currency,
        "items": [{ "variant_id": VariantId::generate(), "product_id": ProductId::generate(), "title": "Masala Chai",
                    "variant_title": "M", "image": null, "unit_price": 49_900, "quantity": 2, "line_total": 99_800, "available": true }],
        "totals": { "subtotal": 99_800, "discount": 0, "delivery_fee": 4_000, "tax": 0, "total": 103_800 },
        "created_at": now, "updated_at": now, "expires_at": now,
    });
    let order = serde_json::json!({
        "id": OrderId::generate(), "number": 1001, "status": "shipped", "payment_method": "cod", "payment_status": "pending",
        "currency": store.settings.currency, "items": [{ "product_id": ProductId::generate(), "variant_id": VariantId::generate(),
            "title": "Masala Chai", "variant_title": "M", "sku": null, "unit_price": 49_900, "quantity": 2, "line_total": 99_800 }],
        "totals": { "subtotal": 99_800, "discount": 0, "delivery_fee": 4_000, "tax": 0, "total": 103_800 },
        "coupon_code": null,
        "address": { "line1": "12 MG Road", "line2": null, "landmark": null, "city": "Pune", "state": null, "postal_code": "411001", "country": "IN" },
        "tracking": "AWB123", "history": [{ "to": "placed", "tracking": null, "at": now }, { "to": "shipped", "tracking": "AWB123", "at": now }],
        "created_at": now,
    });
    let list =
        serde_json::json!({ "site": site, "category": null, "q": null, "products": products, "next": "after=x" });
    vec![
        ("home.html", list.clone()),
        (
            "category.html",
            serde_json::json!({ "site": site, "category": { "id": uuid::Uuid::nil(), "name": "Tea", "description": "", "created_at": now, "updated_at": now }, "q": null, "products": products, "next": null }),
        ),
        (
            "search.html",
            serde_json::json!({ "site": site, "category": null, "q": "chai", "products": products, "next": null }),
        ),
        (
            "product.html",
            serde_json::json!({ "site": site, "product": products[0], "selected": products[0].variants[0].id, "added": false }),
        ),
        ("cart.html", serde_json::json!({ "site": site, "cart": cart, "error": null })),
        (
            "checkout.html",
            serde_json::json!({ "site": site, "cart": cart, "form": CheckoutForm::default(), "errors": {}, "online_available": true }),
        ),
        (
            "order.html",
            serde_json::json!({ "site": site, "order": order, "just_placed": true, "unpaid": false, "status_url": "https://example.com/o" }),
        ),
    ]
}
