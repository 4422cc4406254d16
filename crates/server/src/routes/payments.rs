//! Money for the merchant and the provider: an order's payment and refunds, the store's ledger
//! and payouts, and the provider's webhook endpoint.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use kirana_domain::page::Page;
use kirana_domain::payment::{Balance, LedgerEntry, Payment, Payout, Refund, RefundStatus};
use kirana_domain::validate::Checker;
use kirana_domain::{Invalid, OrderId, text};
use kirana_storage::payments::NewRefund;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Body, Params, PathIds, StoreAccess};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(provider_webhook))
        .routes(routes!(order_payment))
        .routes(routes!(refund_order))
        .routes(routes!(ledger))
        .routes(routes!(payouts))
}

/// An order's online payment and its refunds.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPayment {
    pub payment: Payment,
    pub refunds: Vec<Refund>,
}

/// The body of `POST …/refunds`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundInput {
    /// Minor units; at most what is left of the captured amount.
    pub amount: i64,
    pub reason: Option<String>,
}

/// The store's balance and its ledger, newest entry first.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ledger {
    pub balance: Balance,
    pub items: Vec<LedgerEntry>,
    /// Pass as `cursor` for the next page of entries; absent on the last.
    pub next_cursor: Option<String>,
}

/// The payment provider's webhook: signed (`X-Kirana-Gateway-Signature`), checked for age,
/// applied once per event id. Answers 200 for an event applied, seen before or stale, so the
/// provider stops retrying; 401 for a bad signature; 404 for a payment the platform does not
/// know.
#[utoipa::path(post, path = "/api/v1/payments/webhooks/{provider}", tag = "payments",
    params(("provider" = String, Path, description = "The provider's name (`testgw`)")),
    responses((status = 200, description = "Applied, or already applied"), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn provider_webhook(
    State(s): State<AppState>,
    path: PathIds,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let name = path.raw("provider").unwrap_or_default();
    if s.payments.provider_name() != Some(name) {
        return Err(ApiError::NotFound);
    }
    let signature = headers.get(kirana_payments::signature::SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    let outcome = s.payments.on_webhook(&s.storage, signature, &body, s.clock.now()).await?;
    Ok(Json(serde_json::json!({ "outcome": format!("{outcome:?}").to_lowercase() })))
}

#[utoipa::path(get, path = "/api/v1/stores/{store_id}/orders/{order_id}/payment", tag = "payments", security(("merchant" = [])),
    params(("store_id" = String, Path), ("order_id" = String, Path)),
    responses((status = 200, body = OrderPayment), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn order_payment(State(s): State<AppState>, a: StoreAccess) -> ApiResult<Json<OrderPayment>> {
    let id = a.path.id("order_id", OrderId::parse)?;
    let payments = s.storage.shard(&a.scope).payments();
    let payment = payments.payment_for_order(&a.scope, id).await?;
    let refunds = payments.refunds(&a.scope, id).await?;
    Ok(Json(OrderPayment { payment, refunds }))
}

/// Refunds part or all of an order's captured online payment. The sum of an order's refunds
/// never exceeds what was captured, however many are asked for at once. 201 when the provider
/// confirmed it; 202 when it could not be reached (the refund is kept and sent again).
#[utoipa::path(post, path = "/api/v1/stores/{store_id}/orders/{order_id}/refunds", tag = "payments", security(("merchant" = [])),
    params(("store_id" = String, Path), ("order_id" = String, Path)), request_body = RefundInput,
    responses((status = 201, body = Refund), (status = 202, body = Refund), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn refund_order(
    State(s): State<AppState>,
    a: StoreAccess,
    Body(input): Body<RefundInput>,
) -> ApiResult<(StatusCode, Json<Refund>)> {
    let id = a.path.id("order_id", OrderId::parse)?;
    let mut c = Checker::new();
    if input.amount <= 0 {
        c.fail("amount", "must be more than zero");
    }
    let reason = c.check_opt("reason", input.reason, |r| text::line(&r, 0, text::limits::ADDRESS_LINE));
    c.finish()?;
    // Another store's order is not found, exactly as a missing one.
    s.storage.shard(&a.scope).order(&a.scope, id).await?;
    let new = NewRefund {
        order_id: id,
        amount: input.amount,
        reason: reason.flatten(),
        actor: format!("merchant:{}", a.merchant.id),
    };
    let refund = s.payments.refund(&s.storage, &a.scope, new, s.clock.now()).await?;
    match refund.status {
        RefundStatus::Succeeded => Ok((StatusCode::CREATED, Json(refund))),
        RefundStatus::Pending => Ok((StatusCode::ACCEPTED, Json(refund))),
        RefundStatus::Failed => Err(ApiError::Invalid(Invalid::field(
            "amount",
            format!("the payment provider refused the refund: {}", refund.error.unwrap_or_default()),
        ))),
    }
}

/// The store's balance (every figure a sum of its ledger) and its ledger entries.
#[utoipa::path(get, path = "/api/v1/stores/{store_id}/ledger", tag = "payments", security(("merchant" = [])),
    params(("store_id" = String, Path), ("cursor" = Option<String>, Query), ("limit" = Option<u32>, Query, maximum = 100)),
    responses((status = 200, body = Ledger), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn ledger(State(s): State<AppState>, a: StoreAccess, p: Params) -> ApiResult<Json<Ledger>> {
    let payments = s.storage.shard(&a.scope).payments();
    let page = payments.ledger(&a.scope, p.page()?).await?;
    let balance = payments.balance(&a.scope).await?;
    Ok(Json(Ledger { balance, items: page.items, next_cursor: page.next_cursor }))
}

/// Payouts to the store's bank account, newest first.
#[utoipa::path(get, path = "/api/v1/stores/{store_id}/payouts", tag = "payments", security(("merchant" = [])),
    params(("store_id" = String, Path), ("cursor" = Option<String>, Query), ("limit" = Option<u32>, Query, maximum = 100)),
    responses((status = 200, body = Page<Payout>), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn payouts(State(s): State<AppState>, a: StoreAccess, p: Params) -> ApiResult<Json<Page<Payout>>> {
    Ok(Json(s.storage.shard(&a.scope).payments().payouts(&a.scope, p.page()?).await?))
}
