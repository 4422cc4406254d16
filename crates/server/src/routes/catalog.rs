//! A store's categories and products.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use kirana_domain::catalog::{Category, CategoryInput, Product, ProductInput, ProductStatus};
use kirana_domain::page::Page;
use kirana_domain::validate::{Checker, checked};
use kirana_domain::{CategoryId, ProductId};
use kirana_storage::ProductFilter;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiResult, Problem};
use crate::extract::{Body, Params, StoreAccess};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_category, list_categories))
        .routes(routes!(get_category, update_category, delete_category))
        .routes(routes!(create_product, list_products))
        .routes(routes!(get_product, update_product, delete_product))
}

#[utoipa::path(post, path = "/api/v1/stores/{store_id}/categories", tag = "catalog", security(("merchant" = [])),
    params(("store_id" = String, Path)), request_body = CategoryInput,
    responses((status = 201, body = Category), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn create_category(
    State(s): State<AppState>,
    a: StoreAccess,
    Body(input): Body<CategoryInput>,
) -> ApiResult<(StatusCode, Json<Category>)> {
    let change = input.into_change(true)?;
    let c = s.storage.shard(&a.scope).create_category(&a.scope, change, s.clock.now()).await?;
    Ok((StatusCode::CREATED, Json(c)))
}

/// Categories in the order they were created.
#[utoipa::path(get, path = "/api/v1/stores/{store_id}/categories", tag = "catalog", security(("merchant" = [])),
    params(("store_id" = String, Path), ("cursor" = Option<String>, Query), ("limit" = Option<u32>, Query, maximum = 100)),
    responses((status = 200, body = Page<Category>), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn list_categories(State(s): State<AppState>, a: StoreAccess, p: Params) -> ApiResult<Json<Page<Category>>> {
    Ok(Json(s.storage.shard(&a.scope).categories(&a.scope, p.page()?).await?))
}

#[utoipa::path(get, path = "/api/v1/stores/{store_id}/categories/{category_id}", tag = "catalog", security(("merchant" = [])),
    params(("store_id" = String, Path), ("category_id" = String, Path)),
    responses((status = 200, body = Category), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn get_category(State(s): State<AppState>, a: StoreAccess) -> ApiResult<Json<Category>> {
    let id = a.path.id("category_id", CategoryId::parse)?;
    Ok(Json(s.storage.shard(&a.scope).category(&a.scope, id).await?))
}

#[utoipa::path(patch, path = "/api/v1/stores/{store_id}/categories/{category_id}", tag = "catalog", security(("merchant" = [])),
    params(("store_id" = String, Path), ("category_id" = String, Path)), request_body = CategoryInput,
    responses((status = 200, body = Category), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn update_category(
    State(s): State<AppState>,
    a: StoreAccess,
    Body(input): Body<CategoryInput>,
) -> ApiResult<Json<Category>> {
    let id = a.path.id("category_id", CategoryId::parse)?;
    let change = input.into_change(false)?;
    Ok(Json(s.storage.shard(&a.scope).update_category(&a.scope, id, change, s.clock.now()).await?))
}

/// Deletes a category; its products stay, uncategorised.
#[utoipa::path(delete, path = "/api/v1/stores/{store_id}/categories/{category_id}", tag = "catalog", security(("merchant" = [])),
    params(("store_id" = String, Path), ("category_id" = String, Path)),
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn delete_category(State(s): State<AppState>, a: StoreAccess) -> ApiResult<StatusCode> {
    let id = a.path.id("category_id", CategoryId::parse)?;
    s.storage.shard(&a.scope).delete_category(&a.scope, id, s.clock.now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates a product. A simple one needs `title` and `price`; one with options lists
/// `options` and `variants`. Prices are integer minor units of the store's currency.
#[utoipa::path(post, path = "/api/v1/stores/{store_id}/products", tag = "catalog", security(("merchant" = [])),
    params(("store_id" = String, Path)), request_body = ProductInput,
    responses((status = 201, body = Product), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn create_product(
    State(s): State<AppState>,
    a: StoreAccess,
    Body(input): Body<ProductInput>,
) -> ApiResult<(StatusCode, Json<Product>)> {
    let change = input.into_change(true)?;
    let p = s.storage.shard(&a.scope).create_product(&a.scope, change, s.clock.now()).await?;
    Ok((StatusCode::CREATED, Json(p)))
}

/// Parses the product-list filters shared by the merchant and storefront lists.
pub(crate) fn product_filter(p: &Params, with_status: bool) -> ApiResult<ProductFilter> {
    let mut c = Checker::new();
    let status = if with_status { c.check_opt("status", p.text("status"), ProductStatus::parse) } else { Some(None) };
    let category = c.check_opt("category", p.text("category"), |raw| {
        CategoryId::parse(raw).ok_or_else(|| "is not a category id".to_string())
    });
    let query = c.check_opt("q", p.text("q"), |q| {
        let q = q.trim();
        if q.chars().count() > 100 { Err("must be at most 100 characters".to_string()) } else { Ok(q.to_string()) }
    });
    c.finish()?;
    Ok(ProductFilter {
        status: checked(status),
        category: checked(category),
        query: checked(query).filter(|q| !q.is_empty()),
    })
}

/// Products newest first, optionally by status, category or words in the title.
#[utoipa::path(get, path = "/api/v1/stores/{store_id}/products", tag = "catalog", security(("merchant" = [])),
    params(("store_id" = String, Path), ("status" = Option<ProductStatus>, Query), ("category" = Option<String>, Query),
        ("q" = Option<String>, Query), ("cursor" = Option<String>, Query), ("limit" = Option<u32>, Query, maximum = 100)),
    responses((status = 200, body = Page<Product>), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn list_products(State(s): State<AppState>, a: StoreAccess, p: Params) -> ApiResult<Json<Page<Product>>> {
    let filter = product_filter(&p, true)?;
    Ok(Json(s.storage.shard(&a.scope).products(&a.scope, filter, p.page()?).await?))
}

#[utoipa::path(get, path = "/api/v1/stores/{store_id}/products/{product_id}", tag = "catalog", security(("merchant" = [])),
    params(("store_id" = String, Path), ("product_id" = String, Path)),
    responses((status = 200, body = Product), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn get_product(State(s): State<AppState>, a: StoreAccess) -> ApiResult<Json<Product>> {
    let id = a.path.id("product_id", ProductId::parse)?;
    Ok(Json(s.storage.shard(&a.scope).product(&a.scope, id).await?))
}

/// Changes a product. `variants`, when given, is the whole new list: entries with an `id`
/// update that variant, entries without create one, and unlisted variants are removed.
#[utoipa::path(patch, path = "/api/v1/stores/{store_id}/products/{product_id}", tag = "catalog", security(("merchant" = [])),
    params(("store_id" = String, Path), ("product_id" = String, Path)), request_body = ProductInput,
    responses((status = 200, body = Product), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn update_product(
    State(s): State<AppState>,
    a: StoreAccess,
    Body(input): Body<ProductInput>,
) -> ApiResult<Json<Product>> {
    let id = a.path.id("product_id", ProductId::parse)?;
    let change = input.into_change(false)?;
    Ok(Json(s.storage.shard(&a.scope).update_product(&a.scope, id, change, s.clock.now()).await?))
}

/// Deletes a product and its variants. Past orders keep their copy of it.
#[utoipa::path(delete, path = "/api/v1/stores/{store_id}/products/{product_id}", tag = "catalog", security(("merchant" = [])),
    params(("store_id" = String, Path), ("product_id" = String, Path)),
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn delete_product(State(s): State<AppState>, a: StoreAccess) -> ApiResult<StatusCode> {
    let id = a.path.id("product_id", ProductId::parse)?;
    s.storage.shard(&a.scope).delete_product(&a.scope, id, s.clock.now()).await?;
    Ok(StatusCode::NO_CONTENT)
}
