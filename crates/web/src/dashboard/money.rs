//! Money on the dashboard: an order's online payment and its refunds, and the store's balance,
//! ledger and payouts.

use axum::extract::{Query, State};
use axum::response::Response;
use kirana_domain::OrderId;
use kirana_domain::order::Order;
use kirana_domain::page::{Cursor, Limit, PageRequest};
use kirana_domain::payment::{Balance, LedgerEntry, Payment, PaymentState, Payout, Refund, RefundStatus};
use kirana_domain::validate::{Checker, checked};
use kirana_server::AppState;
use kirana_storage::StorageError;
use kirana_storage::payments::NewRefund;
use serde::{Deserialize, Serialize};

use super::form::{Submitted, form_errors, parse_amount};
use super::{Chrome, Owned, page, see_other, unprocessable};
use crate::csrf::Csrf;
use crate::error::{WebError, WebResult};

/// An order's online payment as the order page shows it (absent for cash on delivery).
#[derive(Serialize)]
pub struct PaymentView {
    pub payment: Payment,
    pub refunds: Vec<Refund>,
    /// What may still be refunded, in minor units.
    pub refundable: i64,
}

pub async fn payment_of(s: &AppState, o: &Owned, order: &Order) -> WebResult<Option<PaymentView>> {
    let payments = s.storage.shard(&o.scope).payments();
    match payments.payment_for_order(&o.scope, order.id).await {
        Ok(payment) => {
            let refunds = payments.refunds(&o.scope, order.id).await?;
            let refundable =
                if payment.state == PaymentState::Captured { payment.captured - payment.refunded } else { 0 };
            Ok(Some(PaymentView { payment, refunds, refundable }))
        }
        Err(StorageError::NotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Refunds part or all of an order's online payment, from the order page.
pub async fn refund(State(s): State<AppState>, o: Owned, form: Submitted) -> WebResult<Response> {
    let id = o.id("order_id", OrderId::parse)?;
    // Another store's order is not found, exactly as a missing one.
    s.storage.shard(&o.scope).order(&o.scope, id).await?;
    let mut c = Checker::new();
    let amount = c.check("amount", parse_amount(form.text("amount"), o.store.settings.currency.exponent()));
    let reason = form.opt("reason").map(|r| r.chars().take(200).collect::<String>());
    let outcome = match c.finish() {
        Err(invalid) => Err(WebError::Invalid(invalid)),
        Ok(()) => {
            let new = NewRefund {
                order_id: id,
                amount: checked(amount),
                reason,
                actor: format!("merchant:{}", o.session.merchant.id),
            };
            match s.payments.refund(&s.storage, &o.scope, new, s.clock.now()).await {
                Ok(r) if r.status == RefundStatus::Failed => Err(WebError::BadRequest(format!(
                    "The payment provider refused the refund: {}",
                    r.error.unwrap_or_default()
                ))),
                Ok(r) => Ok(r),
                Err(e) => Err(WebError::from(e)),
            }
        }
    };
    match outcome {
        Ok(_) => Ok(see_other(form.csrf.jar, &format!("{}/orders/{id}", o.base()))),
        Err(e) => {
            let errors = form_errors(e)?;
            let order = s.storage.shard(&o.scope).order(&o.scope, id).await?;
            let payment = payment_of(&s, &o, &order).await?;
            let ctx = super::orders::OrderPage { d: o.chrome(&form.csrf, "orders"), order, errors, payment };
            Ok(unprocessable(page(&o.session.web, "dashboard/order.html", ctx, form.csrf.jar)?))
        }
    }
}

#[derive(Deserialize)]
pub struct MoneyQuery {
    after: Option<String>,
}

#[derive(Serialize)]
struct MoneyPage {
    d: Chrome,
    balance: Balance,
    entries: Vec<LedgerEntry>,
    next: Option<String>,
    payouts: Vec<Payout>,
    /// The store's fee plan (`None`: the platform's default).
    plan: String,
}

/// The store's balance, ledger and payouts.
pub async fn money(
    State(s): State<AppState>,
    o: Owned,
    csrf: Csrf,
    Query(q): Query<MoneyQuery>,
) -> WebResult<Response> {
    let payments = s.storage.shard(&o.scope).payments();
    let after = q.after.as_deref().and_then(|c| Cursor::parse(c).ok());
    let page_of = |n: i64| -> WebResult<PageRequest> {
        Ok(PageRequest { after, limit: Limit::parse(Some(n)).map_err(WebError::Internal)? })
    };
    let entries = payments.ledger(&o.scope, page_of(50)?).await?;
    let payouts = payments.payouts(&o.scope, PageRequest { after: None, ..page_of(20)? }).await?;
    let plan = payments.plan(&o.scope).await?.unwrap_or_else(|| s.payments.fees().default.clone());
    let ctx = MoneyPage {
        d: o.chrome(&csrf, "money"),
        balance: payments.balance(&o.scope).await?,
        entries: entries.items,
        next: entries.next_cursor,
        payouts: payouts.items,
        plan,
    };
    page(&o.session.web, "dashboard/money.html", ctx, csrf.jar)
}
