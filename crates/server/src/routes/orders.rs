//! A store's orders, their state machine, and the customers they record.

use axum::Json;
use axum::extract::State;
use kirana_domain::customer::Customer;
use kirana_domain::order::{Order, OrderStatus, TransitionInput};
use kirana_domain::page::Page;
use kirana_domain::validate::{Checker, checked};
use kirana_domain::{CustomerId, OrderId};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiResult, Problem};
use crate::extract::{Body, Params, StoreAccess};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_orders))
        .routes(routes!(get_order))
        .routes(routes!(transition_order))
        .routes(routes!(list_customers))
        .routes(routes!(get_customer))
}

/// Orders newest first, optionally of one status.
#[utoipa::path(get, path = "/api/v1/stores/{store_id}/orders", tag = "orders", security(("merchant" = [])),
    params(("store_id" = String, Path), ("status" = Option<OrderStatus>, Query), ("cursor" = Option<String>, Query), ("limit" = Option<u32>, Query, maximum = 100)),
    responses((status = 200, body = Page<Order>), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn list_orders(State(s): State<AppState>, a: StoreAccess, p: Params) -> ApiResult<Json<Page<Order>>> {
    let mut c = Checker::new();
    let status = c.check_opt("status", p.text("status"), OrderStatus::parse);
    c.finish()?;
    Ok(Json(s.storage.shard(&a.scope).orders(&a.scope, checked(status), p.page()?).await?))
}

#[utoipa::path(get, path = "/api/v1/stores/{store_id}/orders/{order_id}", tag = "orders", security(("merchant" = [])),
    params(("store_id" = String, Path), ("order_id" = String, Path)),
    responses((status = 200, body = Order), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn get_order(State(s): State<AppState>, a: StoreAccess) -> ApiResult<Json<Order>> {
    let id = a.path.id("order_id", OrderId::parse)?;
    Ok(Json(s.storage.shard(&a.scope).order(&a.scope, id).await?))
}

/// Moves an order to its next state: placed → accepted → packed → shipped → delivered, or
/// rejected (from placed), cancelled (before shipped), returned (after delivered). Anything
/// else is refused with 409. Rejecting, cancelling and returning put the stock back.
#[utoipa::path(post, path = "/api/v1/stores/{store_id}/orders/{order_id}/transitions", tag = "orders", security(("merchant" = [])),
    params(("store_id" = String, Path), ("order_id" = String, Path)), request_body = TransitionInput,
    responses((status = 200, body = Order), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn transition_order(
    State(s): State<AppState>,
    a: StoreAccess,
    Body(input): Body<TransitionInput>,
) -> ApiResult<Json<Order>> {
    let id = a.path.id("order_id", OrderId::parse)?;
    let req = input.parse()?;
    let actor = format!("merchant:{}", a.merchant.id);
    let order =
        s.storage.shard(&a.scope).transition_order(&a.scope, id, req, actor, s.payments.fees(), s.clock.now()).await?;
    tracing::info!(store_id = %a.scope.store_id(), order = order.number, to = order.status.as_str(), "order moved");
    let order = refund_if_ended(&s, &a.scope, order).await?;
    Ok(Json(order))
}

/// A prepaid order the merchant rejects or cancels is refunded in full at once, as shoppers
/// expect (a returned one is refunded by the merchant, who may keep part of it). A provider
/// that cannot be reached leaves the refund pending; the reconciler sends it.
pub async fn refund_if_ended(s: &AppState, scope: &kirana_storage::StoreScope, order: Order) -> ApiResult<Order> {
    use kirana_domain::order::{PaymentMethod, PaymentStatus};
    if order.payment_method != PaymentMethod::Online
        || order.payment_status != PaymentStatus::RefundDue
        || !matches!(order.status, OrderStatus::Cancelled | OrderStatus::Rejected)
    {
        return Ok(order);
    }
    let shard = s.storage.shard(scope);
    let payment = shard.payments().payment_for_order(scope, order.id).await?;
    let left = payment.captured - payment.refunded;
    if left > 0 {
        let new = kirana_storage::payments::NewRefund {
            order_id: order.id,
            amount: left,
            reason: Some(format!("order {}", order.status.as_str())),
            actor: "system".into(),
        };
        s.payments.refund(&s.storage, scope, new, s.clock.now()).await?;
    }
    Ok(shard.order(scope, order.id).await?)
}

/// Customers newest first.
#[utoipa::path(get, path = "/api/v1/stores/{store_id}/customers", tag = "customers", security(("merchant" = [])),
    params(("store_id" = String, Path), ("cursor" = Option<String>, Query), ("limit" = Option<u32>, Query, maximum = 100)),
    responses((status = 200, body = Page<Customer>), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn list_customers(State(s): State<AppState>, a: StoreAccess, p: Params) -> ApiResult<Json<Page<Customer>>> {
    Ok(Json(s.storage.shard(&a.scope).customers(&a.scope, p.page()?).await?))
}

#[utoipa::path(get, path = "/api/v1/stores/{store_id}/customers/{customer_id}", tag = "customers", security(("merchant" = [])),
    params(("store_id" = String, Path), ("customer_id" = String, Path)),
    responses((status = 200, body = Customer), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn get_customer(State(s): State<AppState>, a: StoreAccess) -> ApiResult<Json<Customer>> {
    let id = a.path.id("customer_id", CustomerId::parse)?;
    Ok(Json(s.storage.shard(&a.scope).customer(&a.scope, id).await?))
}
