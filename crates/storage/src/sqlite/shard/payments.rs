//! Payments, refunds, the ledger and payouts on SQLite (see [`crate::payments`]).
//!
//! Every function runs inside the caller's transaction (the writer's, for changes), binds the
//! store id in every statement, and guards each change on the state it read.

use async_trait::async_trait;
use kirana_domain::event::kinds;
use kirana_domain::order::{OrderStatus, PaymentStatus, TransitionRequest};
use kirana_domain::page::{Page, PageRequest};
use kirana_domain::payment::{
    Account, Balance, EntryKind, FeePlans, LedgerEntry, LedgerLine, Payment, PaymentState, Payout, Posting, Refund,
    RefundStatus,
};
use kirana_domain::{EntryId, Invalid, OrderId, PaymentId, PayoutId, RefundId, StoreId, Timestamp};
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use serde_json::json;
use uuid::Uuid;

use super::{SqliteShard, emit, orders, placeholders};
use crate::Result;
use crate::error::StorageError;
use crate::payments::{NewRefund, NewsApplied, PaymentNews, Payments};
use crate::scope::StoreScope;

const PAYMENT: &str = "SELECT payment_id, order_id, provider, provider_ref, checkout_url, state, amount, currency,
    captured, refunded, created_at, updated_at FROM payments";

fn payment_row(r: &Row<'_>) -> rusqlite::Result<Payment> {
    Ok(Payment {
        id: PaymentId::from_uuid(r.get(0)?),
        order_id: OrderId::from_uuid(r.get(1)?),
        provider: r.get(2)?,
        provider_ref: r.get(3)?,
        checkout_url: r.get(4)?,
        state: PaymentState::from_stored(&r.get::<_, String>(5)?),
        amount: r.get(6)?,
        currency: r.get(7)?,
        captured: r.get(8)?,
        refunded: r.get(9)?,
        created_at: Timestamp::from_millis(r.get(10)?),
        updated_at: Timestamp::from_millis(r.get(11)?),
    })
}

const REFUND: &str = "SELECT refund_id, payment_id, order_id, amount, reason, status, actor, provider_ref, error,
    created_at, updated_at FROM refunds";

fn refund_row(r: &Row<'_>) -> rusqlite::Result<Refund> {
    Ok(Refund {
        id: RefundId::from_uuid(r.get(0)?),
        payment_id: PaymentId::from_uuid(r.get(1)?),
        order_id: OrderId::from_uuid(r.get(2)?),
        amount: r.get(3)?,
        reason: r.get(4)?,
        status: RefundStatus::from_stored(&r.get::<_, String>(5)?),
        actor: r.get(6)?,
        provider_ref: r.get(7)?,
        error: r.get(8)?,
        created_at: Timestamp::from_millis(r.get(9)?),
        updated_at: Timestamp::from_millis(r.get(10)?),
    })
}

/// The order statuses whose ledger lines a payout may settle: the order reached its end.
const SETTLED_STATUSES: &str = "('delivered', 'returned', 'cancelled', 'rejected')";

/// Opens the payment of an order checked out for online payment (inside the checkout).
pub(super) fn open(
    c: &Connection,
    store: StoreId,
    order: OrderId,
    amount: i64,
    currency: &str,
    now: Timestamp,
) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO payments (store_id, payment_id, order_id, provider, state, amount, currency, created_at, updated_at)
         VALUES (?1, ?2, ?3, '', 'created', ?4, ?5, ?6, ?6)",
    )?
    .execute(params![store.uuid(), PaymentId::generate().uuid(), order.uuid(), amount, currency, now.millis()])?;
    Ok(())
}

fn get(c: &Connection, store: StoreId, id: PaymentId) -> Result<Payment> {
    c.prepare_cached(&format!("{PAYMENT} WHERE store_id = ?1 AND payment_id = ?2"))?
        .query_row(params![store.uuid(), id.uuid()], payment_row)
        .optional()?
        .ok_or(StorageError::NotFound)
}

fn for_order(c: &Connection, store: StoreId, order: OrderId) -> Result<Payment> {
    c.prepare_cached(&format!("{PAYMENT} WHERE store_id = ?1 AND order_id = ?2"))?
        .query_row(params![store.uuid(), order.uuid()], payment_row)
        .optional()?
        .ok_or(StorageError::NotFound)
}

fn get_refund(c: &Connection, store: StoreId, id: RefundId) -> Result<Refund> {
    c.prepare_cached(&format!("{REFUND} WHERE store_id = ?1 AND refund_id = ?2"))?
        .query_row(params![store.uuid(), id.uuid()], refund_row)
        .optional()?
        .ok_or(StorageError::NotFound)
}

fn attach(
    c: &Connection,
    store: StoreId,
    id: PaymentId,
    provider: &str,
    provider_ref: &str,
    url: &str,
    now: Timestamp,
) -> Result<Payment> {
    c.prepare_cached(
        "UPDATE payments SET provider = ?3, provider_ref = ?4, checkout_url = ?5, updated_at = ?6
         WHERE store_id = ?1 AND payment_id = ?2",
    )?
    .execute(params![store.uuid(), id.uuid(), provider, provider_ref, url, now.millis()])?;
    get(c, store, id)
}

/// The fee plan the store is on.
fn plan(c: &Connection, store: StoreId) -> Result<Option<String>> {
    Ok(c.prepare_cached("SELECT plan FROM stores WHERE store_id = ?1")?
        .query_row([store.uuid()], |r| r.get(0))
        .optional()?
        .flatten())
}

/// Writes a posting unless the store already has one for its cause; `true` when written.
fn post(c: &Connection, store: StoreId, p: &Posting, payout: Option<PayoutId>, now: Timestamp) -> Result<bool> {
    debug_assert!(p.is_balanced(), "{p:?}");
    if !p.is_balanced() {
        return Err(StorageError::Internal(format!("an unbalanced posting: {p:?}")));
    }
    let seen = c
        .prepare_cached("SELECT 1 FROM ledger_lines WHERE store_id = ?1 AND entry_key = ?2 LIMIT 1")?
        .query_row(params![store.uuid(), p.key], |_| Ok(()))
        .optional()?;
    if seen.is_some() {
        return Ok(false);
    }
    let entry = EntryId::generate();
    for (i, (account, amount)) in p.lines.iter().enumerate() {
        let settled = if *account == Account::Merchant { payout.map(|p| p.uuid()) } else { None };
        c.prepare_cached(
            "INSERT INTO ledger_lines (store_id, entry_id, line, entry_key, kind, account, amount, order_id, payout_id, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            store.uuid(),
            entry.uuid(),
            i as i64,
            p.key,
            p.kind.as_str(),
            account.as_str(),
            amount,
            p.order_id.map(|o| o.uuid()),
            settled,
            now.millis()
        ])?;
    }
    Ok(true)
}

/// Charges the store's fee on an order, once (inside the delivery step of a cash-on-delivery
/// order, or the capture of an online one).
pub(super) fn charge_fee(
    c: &Connection,
    store: StoreId,
    order: OrderId,
    total: i64,
    fees: &FeePlans,
    now: Timestamp,
) -> Result<()> {
    let fee = fees.for_store(plan(c, store)?.as_deref()).fee(total);
    if fee > 0 {
        post(c, store, &Posting::fee(order, fee), None, now)?;
    }
    Ok(())
}

fn set_order_payment(
    c: &Connection,
    store: StoreId,
    order: OrderId,
    status: PaymentStatus,
    now: Timestamp,
) -> Result<()> {
    c.prepare_cached("UPDATE orders SET payment_status = ?3, updated_at = ?4 WHERE store_id = ?1 AND order_id = ?2")?
        .execute(params![store.uuid(), order.uuid(), status.as_str(), now.millis()])?;
    Ok(())
}

fn apply_news(
    c: &Connection,
    store: StoreId,
    id: PaymentId,
    news: &PaymentNews,
    fees: &FeePlans,
    now: Timestamp,
) -> Result<NewsApplied> {
    let before = get(c, store, id)?;
    let order = orders::get(c, store, before.order_id)?;
    let unchanged = |duplicate| NewsApplied {
        duplicate,
        moved: false,
        payment: before.clone(),
        order_status: order.status,
        refund: None,
    };
    if let Some(event) = &news.event_id {
        let fresh = c
            .prepare_cached(
                "INSERT OR IGNORE INTO payment_events (store_id, event_id, received_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![store.uuid(), event, now.millis()])?;
        if fresh == 0 {
            return Ok(unchanged(true));
        }
    }
    if !before.state.may_become(news.state) {
        return Ok(unchanged(false));
    }
    // A capture is of the whole payment (the platform never captures part); a provider that
    // reports none or more is read as the whole.
    let captured = if news.state != PaymentState::Captured {
        0
    } else if news.captured <= 0 || news.captured > before.amount {
        before.amount
    } else {
        news.captured
    };
    let moved = c
        .prepare_cached(
            "UPDATE payments SET state = ?4, captured = max(captured, ?5), updated_at = ?6
             WHERE store_id = ?1 AND payment_id = ?2 AND state = ?3",
        )?
        .execute(params![
            store.uuid(),
            id.uuid(),
            before.state.as_str(),
            news.state.as_str(),
            captured,
            now.millis()
        ])?;
    if moved == 0 {
        return Ok(unchanged(false));
    }

    let mut order_status = order.status;
    let mut refund = None;
    match news.state {
        PaymentState::Authorized | PaymentState::Captured if order.status == OrderStatus::PendingPayment => {
            place(c, store, before.order_id, now)?;
            order_status = OrderStatus::Placed;
        }
        PaymentState::Failed | PaymentState::Cancelled if order.status == OrderStatus::PendingPayment => {
            let note = if news.state == PaymentState::Failed {
                "the payment was declined"
            } else {
                "the payment was not completed in time"
            };
            let req = TransitionRequest { to: OrderStatus::Cancelled, note: Some(note.into()), tracking: None };
            order_status = orders::transition(c, store, before.order_id, &req, "system", fees, now)?.status;
        }
        _ => {}
    }
    if news.state == PaymentState::Captured {
        post(c, store, &Posting::sale(id, before.order_id, captured), None, now)?;
        // An order that had already ended earned the store nothing: no fee on money that goes
        // straight back. (A fee charged on a sale is kept when the sale is later refunded.)
        if !matches!(order_status, OrderStatus::Cancelled | OrderStatus::Rejected) {
            charge_fee(c, store, before.order_id, captured, fees, now)?;
        }
        set_order_payment(c, store, before.order_id, PaymentStatus::Paid, now)?;
        if matches!(order_status, OrderStatus::Cancelled | OrderStatus::Rejected) {
            // The money arrived for an order that had already ended (the hold timed out while
            // the shopper paid): it goes straight back.
            let new = NewRefund {
                order_id: before.order_id,
                amount: captured,
                reason: Some("paid after the order was cancelled".into()),
                actor: "system".into(),
            };
            refund = Some(begin_refund(c, store, &new, now)?);
        }
    }
    emit(
        c,
        store,
        kinds::PAYMENT_UPDATED,
        now,
        json!({ "payment_id": id, "order_id": before.order_id, "from": before.state, "to": news.state, "amount": before.amount }),
    )?;
    Ok(NewsApplied { duplicate: false, moved: true, payment: get(c, store, id)?, order_status, refund })
}

/// A pending order whose payment went through becomes a placed one: the merchant sees it now,
/// and `order.placed` feeds the same notifications and reports a cash order does at checkout.
fn place(c: &Connection, store: StoreId, order: OrderId, now: Timestamp) -> Result<()> {
    let moved = c
        .prepare_cached(
            "UPDATE orders SET status = 'placed', updated_at = ?3 WHERE store_id = ?1 AND order_id = ?2 AND status = 'pending_payment'",
        )?
        .execute(params![store.uuid(), order.uuid(), now.millis()])?;
    if moved == 0 {
        return Ok(());
    }
    orders::record_step(
        c,
        store,
        order,
        Some(OrderStatus::PendingPayment),
        OrderStatus::Placed,
        "system",
        Some("the payment was authorized"),
        None,
        now,
    )?;
    let placed = orders::get(c, store, order)?;
    emit(c, store, kinds::ORDER_PLACED, now, json!(placed))?;
    Ok(())
}

fn begin_refund(c: &Connection, store: StoreId, new: &NewRefund, now: Timestamp) -> Result<Refund> {
    if new.amount <= 0 {
        return Err(StorageError::invalid("amount", "must be more than zero"));
    }
    let payment = match for_order(c, store, new.order_id) {
        Err(StorageError::NotFound) => {
            return Err(StorageError::invalid(
                "order",
                "was not paid online; nothing can be refunded through the provider",
            ));
        }
        other => other?,
    };
    if payment.state != PaymentState::Captured {
        return Err(StorageError::invalid("order", "has no captured payment to refund"));
    }
    let reserved = c
        .prepare_cached(
            "UPDATE payments SET refunded = refunded + ?3, updated_at = ?4
             WHERE store_id = ?1 AND payment_id = ?2 AND refunded + ?3 <= captured",
        )?
        .execute(params![store.uuid(), payment.id.uuid(), new.amount, now.millis()])?;
    if reserved == 0 {
        let left = payment.captured - payment.refunded;
        return Err(StorageError::Invalid(Invalid::field(
            "amount",
            format!("exceeds what is left to refund: {left} of {} (minor units)", payment.captured),
        )));
    }
    let id = RefundId::generate();
    c.prepare_cached(
        "INSERT INTO refunds (store_id, refund_id, payment_id, order_id, amount, reason, status, actor, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?8, ?8)",
    )?
    .execute(params![
        store.uuid(),
        id.uuid(),
        payment.id.uuid(),
        new.order_id.uuid(),
        new.amount,
        new.reason,
        new.actor,
        now.millis()
    ])?;
    get_refund(c, store, id)
}

fn finish_refund(
    c: &Connection,
    store: StoreId,
    id: RefundId,
    outcome: &std::result::Result<String, String>,
    now: Timestamp,
) -> Result<Refund> {
    let refund = get_refund(c, store, id)?;
    if refund.status != RefundStatus::Pending {
        return Ok(refund);
    }
    match outcome {
        Ok(provider_ref) => {
            c.prepare_cached(
                "UPDATE refunds SET status = 'succeeded', provider_ref = ?3, updated_at = ?4
                 WHERE store_id = ?1 AND refund_id = ?2 AND status = 'pending'",
            )?
            .execute(params![store.uuid(), id.uuid(), provider_ref, now.millis()])?;
            post(c, store, &Posting::refund(id, refund.order_id, refund.amount), None, now)?;
            let payment = get(c, store, refund.payment_id)?;
            let done: i64 = c
                .prepare_cached(
                    "SELECT coalesce(sum(amount), 0) FROM refunds WHERE store_id = ?1 AND payment_id = ?2 AND status = 'succeeded'",
                )?
                .query_row(params![store.uuid(), refund.payment_id.uuid()], |r| r.get(0))?;
            let status =
                if done >= payment.captured { PaymentStatus::Refunded } else { PaymentStatus::PartiallyRefunded };
            set_order_payment(c, store, refund.order_id, status, now)?;
            emit(
                c,
                store,
                kinds::REFUND_SUCCEEDED,
                now,
                json!({ "refund_id": id, "order_id": refund.order_id, "amount": refund.amount, "payment_status": status }),
            )?;
        }
        Err(reason) => {
            c.prepare_cached(
                "UPDATE refunds SET status = 'failed', error = ?3, updated_at = ?4
                 WHERE store_id = ?1 AND refund_id = ?2 AND status = 'pending'",
            )?
            .execute(params![store.uuid(), id.uuid(), reason, now.millis()])?;
            c.prepare_cached(
                "UPDATE payments SET refunded = refunded - ?3, updated_at = ?4 WHERE store_id = ?1 AND payment_id = ?2",
            )?
            .execute(params![store.uuid(), refund.payment_id.uuid(), refund.amount, now.millis()])?;
        }
    }
    get_refund(c, store, id)
}

fn refunds(c: &Connection, store: StoreId, order: OrderId) -> Result<Vec<Refund>> {
    Ok(c.prepare_cached(&format!("{REFUND} WHERE store_id = ?1 AND order_id = ?2 ORDER BY refund_id"))?
        .query_map(params![store.uuid(), order.uuid()], refund_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

fn balance(c: &Connection, store: StoreId) -> Result<Balance> {
    // One pass over the store's merchant lines, as on PostgreSQL.
    let sql = format!(
        "SELECT
            coalesce(sum(l.amount), 0),
            coalesce(sum(l.amount) FILTER (WHERE l.payout_id IS NULL
                AND (l.order_id IS NULL OR o.status IN {SETTLED_STATUSES})), 0),
            coalesce(sum(l.amount) FILTER (WHERE l.payout_id IS NULL), 0),
            coalesce(sum(l.amount) FILTER (WHERE l.kind = 'fee'), 0),
            coalesce(sum(l.amount) FILTER (WHERE l.kind = 'payout'), 0),
            coalesce(sum(l.amount) FILTER (WHERE l.kind = 'sale'), 0),
            coalesce(sum(l.amount) FILTER (WHERE l.kind = 'refund'), 0)
         FROM ledger_lines l LEFT JOIN orders o ON o.store_id = l.store_id AND o.order_id = l.order_id
         WHERE l.store_id = ?1 AND l.account = 'merchant'"
    );
    let sums: [i64; 7] = c.prepare_cached(&sql)?.query_row([store.uuid()], |r| {
        Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?])
    })?;
    let [merchant, available, unpaid, fees, paid_out, sales, refunded] = sums;
    // The merchant account is credit-normal: what the store is owed is minus its sum.
    Ok(Balance {
        balance: -merchant,
        available: -available,
        held: -(unpaid - available),
        fees,
        paid_out,
        sales: -sales,
        refunded,
    })
}

fn ledger(c: &Connection, store: StoreId, page: PageRequest) -> Result<Page<LedgerEntry>> {
    let after = page.after.map(|p| p.uuid());
    let ids: Vec<Uuid> = c
        .prepare_cached(
            "SELECT DISTINCT entry_id FROM ledger_lines WHERE store_id = ?1 AND (?2 IS NULL OR entry_id < ?2)
             ORDER BY entry_id DESC LIMIT ?3",
        )?
        .query_map(params![store.uuid(), after, page.limit.probe()], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if ids.is_empty() {
        return Ok(Page { items: vec![], next_cursor: None });
    }
    let sql = format!(
        "SELECT entry_id, entry_key, kind, account, amount, order_id, payout_id, created_at FROM ledger_lines
         WHERE store_id = ?1 AND entry_id IN ({}) ORDER BY entry_id DESC, line",
        placeholders(2, ids.len())
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let mut entries: Vec<LedgerEntry> = Vec::with_capacity(ids.len());
    let mut rows = stmt.query(params_from_iter(std::iter::once(store.uuid()).chain(ids.iter().copied())))?;
    while let Some(r) = rows.next()? {
        let id = EntryId::from_uuid(r.get(0)?);
        let line = LedgerLine { account: Account::from_stored(&r.get::<_, String>(3)?), amount: r.get(4)? };
        let payout: Option<Uuid> = r.get(6)?;
        match entries.last_mut() {
            Some(e) if e.id == id => {
                e.lines.push(line);
                e.payout_id = e.payout_id.or(payout.map(PayoutId::from_uuid));
            }
            _ => entries.push(LedgerEntry {
                id,
                key: r.get(1)?,
                kind: EntryKind::from_stored(&r.get::<_, String>(2)?),
                order_id: r.get::<_, Option<Uuid>>(5)?.map(OrderId::from_uuid),
                payout_id: payout.map(PayoutId::from_uuid),
                lines: vec![line],
                at: Timestamp::from_millis(r.get(7)?),
            }),
        }
    }
    Ok(Page::from_probe(entries, page.limit, |e| e.id.uuid()))
}

fn payout_row(r: &Row<'_>) -> rusqlite::Result<Payout> {
    Ok(Payout {
        id: PayoutId::from_uuid(r.get(0)?),
        amount: r.get(1)?,
        slot: Timestamp::from_millis(r.get(2)?),
        lines: r.get(3)?,
        created_at: Timestamp::from_millis(r.get(4)?),
    })
}

fn payouts(c: &Connection, store: StoreId, page: PageRequest) -> Result<Page<Payout>> {
    let after = page.after.map(|p| p.uuid());
    let rows = c
        .prepare_cached(
            "SELECT payout_id, amount, slot, lines, created_at FROM payouts
             WHERE store_id = ?1 AND (?2 IS NULL OR payout_id < ?2) ORDER BY payout_id DESC LIMIT ?3",
        )?
        .query_map(params![store.uuid(), after, page.limit.probe()], payout_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Page::from_probe(rows, page.limit, |p| p.id.uuid()))
}

fn pay_out(c: &Connection, store: StoreId, slot: Timestamp, now: Timestamp) -> Result<Option<Payout>> {
    let due = format!(
        "store_id = ?1 AND account = 'merchant' AND payout_id IS NULL
         AND (order_id IS NULL OR order_id IN (SELECT order_id FROM orders WHERE store_id = ?1 AND status IN {SETTLED_STATUSES}))"
    );
    let (sum, lines): (Option<i64>, i64) = c
        .prepare_cached(&format!("SELECT sum(amount), count(*) FROM ledger_lines WHERE {due}"))?
        .query_row([store.uuid()], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let owed = -sum.unwrap_or(0);
    if owed <= 0 {
        return Ok(None);
    }
    let id = PayoutId::generate();
    let made = c
        .prepare_cached(
            "INSERT OR IGNORE INTO payouts (store_id, payout_id, slot, amount, lines, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![store.uuid(), id.uuid(), slot.millis(), owed, lines, now.millis()])?;
    if made == 0 {
        return Ok(None);
    }
    let settled = c
        .prepare_cached(&format!("UPDATE ledger_lines SET payout_id = ?2 WHERE {due}"))?
        .execute(params![store.uuid(), id.uuid()])?;
    debug_assert_eq!(settled as i64, lines);
    post(c, store, &Posting::payout(id, owed), Some(id), now)?;
    emit(c, store, kinds::PAYOUT_PAID, now, json!({ "payout_id": id, "amount": owed, "slot": slot.millis() }))?;
    Ok(Some(Payout { id, amount: owed, slot, lines, created_at: now }))
}

#[async_trait]
impl Payments for SqliteShard {
    async fn payment_for_order(&self, scope: &StoreScope, order: OrderId) -> Result<Payment> {
        self.db.read(|c| for_order(c, scope.store_id(), order))
    }

    async fn payment(&self, scope: &StoreScope, id: PaymentId) -> Result<Payment> {
        self.db.read(|c| get(c, scope.store_id(), id))
    }

    async fn attach_provider(
        &self,
        scope: &StoreScope,
        id: PaymentId,
        provider: &str,
        provider_ref: &str,
        checkout_url: &str,
        now: Timestamp,
    ) -> Result<Payment> {
        let s = scope.store_id();
        let (p, r, u) = (provider.to_owned(), provider_ref.to_owned(), checkout_url.to_owned());
        self.db.write(move |c| attach(c, s, id, &p, &r, &u, now)).await
    }

    async fn apply_payment_news(
        &self,
        scope: &StoreScope,
        id: PaymentId,
        news: PaymentNews,
        fees: &FeePlans,
        now: Timestamp,
    ) -> Result<NewsApplied> {
        let (s, fees) = (scope.store_id(), fees.clone());
        self.db.write(move |c| apply_news(c, s, id, &news, &fees, now)).await
    }

    async fn begin_refund(&self, scope: &StoreScope, refund: NewRefund, now: Timestamp) -> Result<Refund> {
        let s = scope.store_id();
        self.db.write(move |c| begin_refund(c, s, &refund, now)).await
    }

    async fn finish_refund(
        &self,
        scope: &StoreScope,
        id: RefundId,
        outcome: std::result::Result<String, String>,
        now: Timestamp,
    ) -> Result<Refund> {
        let s = scope.store_id();
        self.db.write(move |c| finish_refund(c, s, id, &outcome, now)).await
    }

    async fn refunds(&self, scope: &StoreScope, order: OrderId) -> Result<Vec<Refund>> {
        self.db.read(|c| refunds(c, scope.store_id(), order))
    }

    async fn set_plan(&self, scope: &StoreScope, plan: Option<&str>, now: Timestamp) -> Result<()> {
        let (s, plan) = (scope.store_id(), plan.map(str::to_owned));
        self.db
            .write(move |c| {
                c.prepare_cached("UPDATE stores SET plan = ?2, updated_at = ?3 WHERE store_id = ?1")?
                    .execute(params![s.uuid(), plan, now.millis()])?;
                Ok(())
            })
            .await
    }

    async fn plan(&self, scope: &StoreScope) -> Result<Option<String>> {
        self.db.read(|c| plan(c, scope.store_id()))
    }

    async fn balance(&self, scope: &StoreScope) -> Result<Balance> {
        self.db.read(|c| balance(c, scope.store_id()))
    }

    async fn ledger(&self, scope: &StoreScope, page: PageRequest) -> Result<Page<LedgerEntry>> {
        self.db.read(|c| ledger(c, scope.store_id(), page))
    }

    async fn payouts(&self, scope: &StoreScope, page: PageRequest) -> Result<Page<Payout>> {
        self.db.read(|c| payouts(c, scope.store_id(), page))
    }

    async fn pay_out(&self, scope: &StoreScope, slot: Timestamp, now: Timestamp) -> Result<Option<Payout>> {
        let s = scope.store_id();
        self.db.write(move |c| pay_out(c, s, slot, now)).await
    }

    async fn open_payments(&self, before: Timestamp, limit: u32) -> Result<Vec<(StoreId, Payment)>> {
        self.db.read(|c| {
            // The store id read last, after the columns `payment_row` knows.
            let sql = PAYMENT.replace(" FROM payments", ", store_id FROM payments");
            let mut stmt = c.prepare_cached(&format!(
                "{sql} WHERE state IN ('created', 'authorized') AND updated_at < ?1 ORDER BY updated_at LIMIT ?2"
            ))?;
            let rows = stmt
                .query_map(params![before.millis(), limit], |r| Ok((StoreId::from_uuid(r.get(12)?), payment_row(r)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    async fn pending_refunds(&self, before: Timestamp, limit: u32) -> Result<Vec<(StoreId, Refund)>> {
        self.db.read(|c| {
            let sql = REFUND.replace(" FROM refunds", ", store_id FROM refunds");
            let mut stmt = c.prepare_cached(&format!(
                "{sql} WHERE status = 'pending' AND updated_at < ?1 ORDER BY updated_at LIMIT ?2"
            ))?;
            let rows = stmt
                .query_map(params![before.millis(), limit], |r| Ok((StoreId::from_uuid(r.get(11)?), refund_row(r)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
    }

    async fn stores_with_unpaid_lines(&self, after: Option<StoreId>, limit: u32) -> Result<Vec<StoreId>> {
        self.db.read(|c| {
            let ids = c
                .prepare_cached(
                    "SELECT DISTINCT store_id FROM ledger_lines
                     WHERE account = 'merchant' AND payout_id IS NULL AND (?1 IS NULL OR store_id > ?1)
                     ORDER BY store_id LIMIT ?2",
                )?
                .query_map(params![after.map(|s| s.uuid()), limit], |r| Ok(StoreId::from_uuid(r.get(0)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(ids)
        })
    }
}
