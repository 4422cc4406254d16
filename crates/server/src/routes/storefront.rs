//! The shopper's JSON API: a store by its slug, its catalog, carts, checkout and order status.
//! Public: no merchant credential; a cart opens only with its own token.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use kirana_domain::cart::{Cart, CartItemInput, CheckoutInput, Quantity};
use kirana_domain::catalog::{Category, ProductStatus, PublicProduct};
use kirana_domain::order::{OrderStatus, PaymentMethod, PublicOrder};
use kirana_domain::page::{Limit, Page, PageRequest};
use kirana_domain::store::PublicStore;
use kirana_domain::validate::{Checker, checked};
use kirana_domain::{CartId, Invalid, OrderId, ProductId, VariantId};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::catalog::product_filter;
use crate::auth::{hash_token, new_token};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Body, CartToken, IdempotencyKey, Params, Shop};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(store_home))
        .routes(routes!(list_products))
        .routes(routes!(get_product))
        .routes(routes!(create_cart))
        .routes(routes!(get_cart))
        .routes(routes!(set_item))
        .routes(routes!(checkout))
        .routes(routes!(order_status))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StoreHome {
    pub store: PublicStore,
    /// The first 100 categories, in menu order.
    pub categories: Vec<Category>,
}

/// A store's public face: its details and categories.
#[utoipa::path(get, path = "/api/v1/storefront/{slug}", tag = "storefront", params(("slug" = String, Path)),
    responses((status = 200, body = StoreHome), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn store_home(State(s): State<AppState>, shop: Shop) -> ApiResult<Json<StoreHome>> {
    let store = s.storage.store(&shop.scope).await?;
    let page = PageRequest { after: None, limit: Limit::parse(Some(100)).map_err(ApiError::Internal)? };
    let categories = s.storage.shard(&shop.scope).categories(&shop.scope, page).await?.items;
    Ok(Json(StoreHome { store: PublicStore::from(&store), categories }))
}

/// Products on sale, newest first; `category` filters. With `q`, the products matching those
/// words (stemmed, typos forgiven, title above description), best first; the `cursor` of such
/// a list is an offset into the ranking, valid only with the same `q`.
#[utoipa::path(get, path = "/api/v1/storefront/{slug}/products", tag = "storefront",
    params(("slug" = String, Path), ("q" = Option<String>, Query), ("category" = Option<String>, Query), ("cursor" = Option<String>, Query), ("limit" = Option<u32>, Query, maximum = 100)),
    responses((status = 200, body = Page<PublicProduct>), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn list_products(State(s): State<AppState>, shop: Shop, p: Params) -> ApiResult<Json<Page<PublicProduct>>> {
    let mut filter = product_filter(&p, false)?;
    if let (Some(search), Some(words)) = (&s.search, &filter.query) {
        let page = search.search(&shop.scope, words, filter.category, p.page()?).await?;
        return Ok(Json(page.map(PublicProduct::from)));
    }
    filter.status = Some(ProductStatus::Active);
    let page = s.storage.shard(&shop.scope).products(&shop.scope, filter, p.page()?).await?;
    Ok(Json(page.map(PublicProduct::from)))
}

#[utoipa::path(get, path = "/api/v1/storefront/{slug}/products/{product_id}", tag = "storefront",
    params(("slug" = String, Path), ("product_id" = String, Path)),
    responses((status = 200, body = PublicProduct), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn get_product(State(s): State<AppState>, shop: Shop) -> ApiResult<Json<PublicProduct>> {
    let id = shop.path.id("product_id", ProductId::parse)?;
    let p = s.storage.shard(&shop.scope).product(&shop.scope, id).await?;
    if p.status != ProductStatus::Active {
        return Err(ApiError::NotFound);
    }
    Ok(Json(PublicProduct::from(p)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NewCart {
    pub cart_id: CartId,
    /// Send as `X-Cart-Token` on every request about this cart. Shown once.
    pub token: String,
    pub cart: Cart,
}

/// Opens a cart. Keep its token: it is the only key to the cart and to the order it becomes.
#[utoipa::path(post, path = "/api/v1/storefront/{slug}/carts", tag = "storefront", params(("slug" = String, Path)),
    responses((status = 201, body = NewCart), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn create_cart(State(s): State<AppState>, shop: Shop) -> ApiResult<(StatusCode, Json<NewCart>)> {
    let token = new_token("cart");
    let cart = s.storage.shard(&shop.scope).create_cart(&shop.scope, hash_token(&token), s.clock.now()).await?;
    Ok((StatusCode::CREATED, Json(NewCart { cart_id: cart.id, token, cart })))
}

#[utoipa::path(get, path = "/api/v1/storefront/{slug}/carts/{cart_id}", tag = "storefront", security(("cart_token" = [])),
    params(("slug" = String, Path), ("cart_id" = String, Path)),
    responses((status = 200, body = Cart), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn get_cart(State(s): State<AppState>, shop: Shop, token: CartToken) -> ApiResult<Json<Cart>> {
    let id = shop.path.id("cart_id", CartId::parse)?;
    Ok(Json(s.storage.shard(&shop.scope).cart(&shop.scope, id, token.0, s.clock.now()).await?))
}

/// Sets how many of a variant the cart holds; 0 removes it.
#[utoipa::path(put, path = "/api/v1/storefront/{slug}/carts/{cart_id}/items", tag = "storefront", security(("cart_token" = [])),
    params(("slug" = String, Path), ("cart_id" = String, Path)), request_body = CartItemInput,
    responses((status = 200, body = Cart), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn set_item(
    State(s): State<AppState>,
    shop: Shop,
    token: CartToken,
    Body(input): Body<CartItemInput>,
) -> ApiResult<Json<Cart>> {
    let id = shop.path.id("cart_id", CartId::parse)?;
    let mut c = Checker::new();
    let variant = c.check(
        "variant_id",
        VariantId::parse(&input.variant_id).ok_or_else(|| "is not a product variant of this store".to_string()),
    );
    let quantity = c.check("quantity", Quantity::parse(input.quantity));
    c.finish()?;
    let cart = s
        .storage
        .shard(&shop.scope)
        .set_cart_item(&shop.scope, id, token.0, checked(variant), checked(quantity), s.clock.now())
        .await?;
    Ok(Json(cart))
}

/// Places the order. Prices, delivery, tax and discount are computed here from the catalog;
/// stock is taken in the same transaction. Send an `Idempotency-Key` so a retry after a lost
/// response returns the same order (with `Idempotent-Replayed: true`) instead of a second one.
#[utoipa::path(post, path = "/api/v1/storefront/{slug}/carts/{cart_id}/checkout", tag = "storefront", security(("cart_token" = [])),
    params(("slug" = String, Path), ("cart_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)), request_body = CheckoutInput,
    responses((status = 201, body = PublicOrder), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn checkout(
    State(s): State<AppState>,
    shop: Shop,
    token: CartToken,
    key: IdempotencyKey,
    Body(input): Body<CheckoutInput>,
) -> ApiResult<(StatusCode, HeaderMap, Json<PublicOrder>)> {
    let id = shop.path.id("cart_id", CartId::parse)?;
    // The fingerprint covers the cart and the whole request as parsed, so a retry must be the
    // same request; a different one under the same key is refused, not silently answered.
    let idempotency = key.0.map(|k| {
        let mut h = Sha256::new();
        h.update(id.uuid().as_bytes());
        h.update(serde_json::to_vec(&input).unwrap_or_default());
        kirana_storage::IdempotencyKey { key: k, fingerprint: h.finalize().into() }
    });
    let return_url = input.return_url.clone();
    let req = input.parse()?;
    let online = req.payment_method == PaymentMethod::Online;
    if let Some(url) = &return_url {
        crate::payments::check_return_url(url)?;
    }
    if online && s.storage.store(&shop.scope).await?.settings.online_payment_enabled {
        // Refused before any stock is taken: cash on delivery still works. (A store that does
        // not take online payment is told so by the checkout itself, naming the field.)
        s.payments.check_online()?;
    }
    let (order, replayed) =
        s.storage.shard(&shop.scope).checkout(&shop.scope, id, token.0, req, idempotency, s.clock.now()).await?;
    if !replayed {
        tracing::info!(store_id = %shop.scope.store_id(), order = order.number, total = order.totals.total, "order placed");
        crate::metrics::order_placed(&order);
    }
    let mut payment_url = None;
    if online && order.status == OrderStatus::PendingPayment {
        let back = return_url.unwrap_or_else(|| {
            format!("{}/{}/order/{}", s.payments.settings().public_url, shop.scope.slug(), order.id)
        });
        let payment = s.payments.start(&s.storage, &shop.scope, &order, &back, s.clock.now()).await?;
        payment_url = payment.checkout_url;
    }
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/storefront/{}/orders/{}", shop.scope.slug(), order.id)) {
        h.insert(header::LOCATION, v);
    }
    if replayed {
        h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    let mut public = PublicOrder::from(order);
    public.payment_url = payment_url;
    Ok((StatusCode::CREATED, h, Json(public)))
}

/// An order's status, for the shopper who placed it: `token` is the cart's token (or send it
/// as `X-Cart-Token`).
#[utoipa::path(get, path = "/api/v1/storefront/{slug}/orders/{order_id}", tag = "storefront",
    params(("slug" = String, Path), ("order_id" = String, Path), ("token" = Option<String>, Query)),
    responses((status = 200, body = PublicOrder), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn order_status(
    State(s): State<AppState>,
    shop: Shop,
    p: Params,
    headers: HeaderMap,
) -> ApiResult<Json<PublicOrder>> {
    let id = shop.path.id("order_id", OrderId::parse)?;
    let token = p
        .text("token")
        .or_else(|| headers.get(crate::extract::CART_TOKEN_HEADER).and_then(|v| v.to_str().ok()))
        .filter(|t| t.len() <= 200)
        .ok_or_else(|| {
            ApiError::Invalid(Invalid::field("token", "is required: the token of the cart that placed the order"))
        })?;
    let shard = s.storage.shard(&shop.scope);
    let order = shard.order_for_shopper(&shop.scope, id, hash_token(token)).await?;
    let mut public = PublicOrder::from(order);
    if public.status == OrderStatus::PendingPayment {
        public.payment_url =
            shard.payments().payment_for_order(&shop.scope, id).await.ok().and_then(|p| p.checkout_url);
    }
    Ok(Json(public))
}
