//! Orders (moved through their states, with tracking numbers) and customers.

use axum::extract::{Query, State};
use axum::response::Response;
use kirana_domain::OrderId;
use kirana_domain::order::{Order, OrderStatus, TransitionInput};
use kirana_domain::page::{Cursor, Limit, PageRequest};
use kirana_server::AppState;
use serde::{Deserialize, Serialize};

use super::form::{Errors, Submitted, form_errors};
use super::{Chrome, Owned, page, see_other, unprocessable};
use crate::csrf::Csrf;
use crate::error::{WebError, WebResult};

/// Statuses the order list can filter by, in the order a merchant works through them.
const FILTERS: &[&str] =
    &["pending_payment", "placed", "accepted", "packed", "shipped", "delivered", "cancelled", "rejected", "returned"];

#[derive(Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    after: Option<String>,
}

#[derive(Serialize)]
struct ListPage {
    d: Chrome,
    orders: Vec<Order>,
    status: String,
    filters: &'static [&'static str],
    next: Option<String>,
}

fn page_after(after: Option<&str>, n: i64) -> WebResult<PageRequest> {
    let after = after.and_then(|c| Cursor::parse(c).ok());
    Ok(PageRequest { after, limit: Limit::parse(Some(n)).map_err(WebError::Internal)? })
}

pub async fn list(State(s): State<AppState>, o: Owned, csrf: Csrf, Query(q): Query<ListQuery>) -> WebResult<Response> {
    let status = q.status.as_deref().filter(|v| !v.is_empty()).and_then(|v| OrderStatus::parse(v).ok());
    let found = s.storage.shard(&o.scope).orders(&o.scope, status, page_after(q.after.as_deref(), 50)?).await?;
    let ctx = ListPage {
        d: o.chrome(&csrf, "orders"),
        orders: found.items,
        status: status.map(|v| v.as_str().to_string()).unwrap_or_default(),
        filters: FILTERS,
        next: found.next_cursor,
    };
    page(&o.session.web, "dashboard/orders.html", ctx, csrf.jar)
}

#[derive(Serialize)]
pub(super) struct OrderPage {
    pub d: Chrome,
    pub order: Order,
    pub errors: Errors,
    /// The online payment and its refunds (cash on delivery has none).
    pub payment: Option<super::money::PaymentView>,
}

pub async fn show(State(s): State<AppState>, o: Owned, csrf: Csrf) -> WebResult<Response> {
    let id = o.id("order_id", OrderId::parse)?;
    let order = s.storage.shard(&o.scope).order(&o.scope, id).await?;
    let payment = super::money::payment_of(&s, &o, &order).await?;
    page(
        &o.session.web,
        "dashboard/order.html",
        OrderPage { d: o.chrome(&csrf, "orders"), order, errors: Errors::new(), payment },
        csrf.jar,
    )
}

pub async fn transition(State(s): State<AppState>, o: Owned, form: Submitted) -> WebResult<Response> {
    let id = o.id("order_id", OrderId::parse)?;
    let input =
        TransitionInput { to: form.text("to").to_string(), note: form.opt("note"), tracking: form.opt("tracking") };
    let moved = match input.parse() {
        Ok(req) => {
            let actor = format!("merchant:{}", o.session.merchant.id);
            match s
                .storage
                .shard(&o.scope)
                .transition_order(&o.scope, id, req, actor, s.payments.fees(), s.clock.now())
                .await
            {
                Ok(order) => {
                    kirana_server::routes::orders::refund_if_ended(&s, &o.scope, order).await.map_err(WebError::from)
                }
                Err(e) => Err(WebError::from(e)),
            }
        }
        Err(i) => Err(WebError::Invalid(i)),
    };
    match moved {
        Ok(order) => {
            tracing::info!(store_id = %o.store.id, order = order.number, to = order.status.as_str(), "order moved from the dashboard");
            Ok(see_other(form.csrf.jar, &format!("{}/orders/{}", o.base(), order.id)))
        }
        Err(e) => {
            let errors = form_errors(e)?;
            let order = s.storage.shard(&o.scope).order(&o.scope, id).await?;
            let payment = super::money::payment_of(&s, &o, &order).await?;
            let ctx = OrderPage { d: o.chrome(&form.csrf, "orders"), order, errors, payment };
            Ok(unprocessable(page(&o.session.web, "dashboard/order.html", ctx, form.csrf.jar)?))
        }
    }
}

#[derive(Deserialize)]
pub struct CustomersQuery {
    after: Option<String>,
}

#[derive(Serialize)]
struct CustomersPage {
    d: Chrome,
    customers: Vec<kirana_domain::customer::Customer>,
    next: Option<String>,
}

pub async fn customers(
    State(s): State<AppState>,
    o: Owned,
    csrf: Csrf,
    Query(q): Query<CustomersQuery>,
) -> WebResult<Response> {
    let found = s.storage.shard(&o.scope).customers(&o.scope, page_after(q.after.as_deref(), 50)?).await?;
    let ctx = CustomersPage { d: o.chrome(&csrf, "customers"), customers: found.items, next: found.next_cursor };
    page(&o.session.web, "dashboard/customers.html", ctx, csrf.jar)
}
