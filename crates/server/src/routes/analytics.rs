//! Sales analytics for a store, from the rollups the analytics consumer keeps: the cost of a
//! report is the days it covers, never the orders in them.

use axum::Json;
use axum::extract::State;
use kirana_domain::analytics::{Analytics, day_of, parse_day};
use kirana_domain::validate::{Checker, checked};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiResult, Problem};
use crate::extract::{Params, StoreAccess};
use crate::state::AppState;

/// Longest range one report covers.
pub const MAX_DAYS: i64 = 366;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(analytics))
}

/// Orders, revenue and units per day (India's calendar) and the ten best sellers between `from`
/// and `to` (inclusive, `YYYY-MM-DD`; default: the last 30 days). Built from events, so an order
/// appears within moments of being placed.
#[utoipa::path(get, path = "/api/v1/stores/{store_id}/analytics", tag = "analytics", security(("merchant" = [])),
    params(("store_id" = String, Path), ("from" = Option<String>, Query, format = Date), ("to" = Option<String>, Query, format = Date)),
    responses((status = 200, body = Analytics), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn analytics(State(s): State<AppState>, a: StoreAccess, p: Params) -> ApiResult<Json<Analytics>> {
    let today = day_of(s.clock.now().millis());
    let mut c = Checker::new();
    let to = c.check_opt("to", p.text("to"), parse_day);
    let from = c.check_opt("from", p.text("from"), parse_day);
    c.finish()?;
    let to = checked(to).unwrap_or(today);
    let from = checked(from).unwrap_or(to - 29);
    let mut c = Checker::new();
    if from > to {
        c.fail("from", "must not be after `to`");
    } else if to - from + 1 > MAX_DAYS {
        c.fail("from", format!("a report covers at most {MAX_DAYS} days"));
    }
    c.finish()?;
    Ok(Json(s.storage.shard(&a.scope).analytics(&a.scope, from, to).await?))
}
