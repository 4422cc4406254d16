//! A merchant's stores and their settings.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use kirana_domain::page::Page;
use kirana_domain::store::{Store, StoreInput};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiResult, Problem};
use crate::extract::{Body, Merchant, Params, StoreAccess};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_store, list_stores)).routes(routes!(get_store, update_store))
}

/// Creates a store. Only `name` is needed; the slug is derived from it unless chosen, and the
/// store is live at `/{slug}` the moment this returns.
#[utoipa::path(post, path = "/api/v1/stores", tag = "stores", security(("merchant" = [])), request_body = StoreInput,
    responses((status = 201, body = Store), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn create_store(
    State(s): State<AppState>,
    m: Merchant,
    Body(input): Body<StoreInput>,
) -> ApiResult<(StatusCode, HeaderMap, Json<Store>)> {
    let new = input.into_new()?;
    let store = s.storage.create_store(m.id, new, s.clock.now()).await?;
    tracing::info!(store_id = %store.id, slug = %store.slug, "store created");
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/stores/{}", store.id)) {
        h.insert(header::LOCATION, v);
    }
    Ok((StatusCode::CREATED, h, Json(store)))
}

/// The merchant's stores, newest first.
#[utoipa::path(get, path = "/api/v1/stores", tag = "stores", security(("merchant" = [])),
    params(("cursor" = Option<String>, Query), ("limit" = Option<u32>, Query, maximum = 100)),
    responses((status = 200, body = Page<Store>), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn list_stores(State(s): State<AppState>, m: Merchant, p: Params) -> ApiResult<Json<Page<Store>>> {
    Ok(Json(s.storage.stores_of(m.id, p.page()?).await?))
}

#[utoipa::path(get, path = "/api/v1/stores/{store_id}", tag = "stores", security(("merchant" = [])),
    params(("store_id" = String, Path)),
    responses((status = 200, body = Store), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn get_store(State(s): State<AppState>, a: StoreAccess) -> ApiResult<Json<Store>> {
    Ok(Json(s.storage.store(&a.scope).await?))
}

/// Changes a store's name, slug, domain or settings. Absent fields are left alone; `null`
/// clears a nullable one. An old slug keeps answering for the store.
#[utoipa::path(patch, path = "/api/v1/stores/{store_id}", tag = "stores", security(("merchant" = [])),
    params(("store_id" = String, Path)), request_body = StoreInput,
    responses((status = 200, body = Store), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn update_store(
    State(s): State<AppState>,
    a: StoreAccess,
    Body(input): Body<StoreInput>,
) -> ApiResult<Json<Store>> {
    let change = input.into_change()?;
    Ok(Json(s.storage.update_store(&a.scope, change, s.clock.now()).await?))
}
