//! A store's coupons.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use kirana_domain::CouponId;
use kirana_domain::coupon::{Coupon, CouponInput};
use kirana_domain::page::Page;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiResult, Problem};
use crate::extract::{Body, Params, StoreAccess};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_coupon, list_coupons)).routes(routes!(get_coupon, update_coupon))
}

/// Creates a coupon: `percent` (value 1–100, optional `max_discount`) or `flat` (value in
/// minor units), with an optional minimum order, usage limit and validity window.
#[utoipa::path(post, path = "/api/v1/stores/{store_id}/coupons", tag = "coupons", security(("merchant" = [])),
    params(("store_id" = String, Path)), request_body = CouponInput,
    responses((status = 201, body = Coupon), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn create_coupon(
    State(s): State<AppState>,
    a: StoreAccess,
    Body(input): Body<CouponInput>,
) -> ApiResult<(StatusCode, Json<Coupon>)> {
    let change = input.into_change(true)?;
    let c = s.storage.shard(&a.scope).create_coupon(&a.scope, change, s.clock.now()).await?;
    Ok((StatusCode::CREATED, Json(c)))
}

#[utoipa::path(get, path = "/api/v1/stores/{store_id}/coupons", tag = "coupons", security(("merchant" = [])),
    params(("store_id" = String, Path), ("cursor" = Option<String>, Query), ("limit" = Option<u32>, Query, maximum = 100)),
    responses((status = 200, body = Page<Coupon>), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn list_coupons(State(s): State<AppState>, a: StoreAccess, p: Params) -> ApiResult<Json<Page<Coupon>>> {
    Ok(Json(s.storage.shard(&a.scope).coupons(&a.scope, p.page()?).await?))
}

#[utoipa::path(get, path = "/api/v1/stores/{store_id}/coupons/{coupon_id}", tag = "coupons", security(("merchant" = [])),
    params(("store_id" = String, Path), ("coupon_id" = String, Path)),
    responses((status = 200, body = Coupon), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn get_coupon(State(s): State<AppState>, a: StoreAccess) -> ApiResult<Json<Coupon>> {
    let id = a.path.id("coupon_id", CouponId::parse)?;
    Ok(Json(s.storage.shard(&a.scope).coupon(&a.scope, id).await?))
}

/// Changes a coupon (deactivate it with `{"active": false}`).
#[utoipa::path(patch, path = "/api/v1/stores/{store_id}/coupons/{coupon_id}", tag = "coupons", security(("merchant" = [])),
    params(("store_id" = String, Path), ("coupon_id" = String, Path)), request_body = CouponInput,
    responses((status = 200, body = Coupon), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn update_coupon(
    State(s): State<AppState>,
    a: StoreAccess,
    Body(input): Body<CouponInput>,
) -> ApiResult<Json<Coupon>> {
    let id = a.path.id("coupon_id", CouponId::parse)?;
    let change = input.into_change(false)?;
    Ok(Json(s.storage.shard(&a.scope).update_coupon(&a.scope, id, change, s.clock.now()).await?))
}
