//! Payments, refunds, the ledger and payouts on PostgreSQL: the port of `sqlite::shard::payments`.
//!
//! Writers here run concurrently, so each change locks what it judged: news of a payment locks
//! the payment row first (then its order, as every order change does), a refund reserves its
//! amount with a guarded increment, a ledger posting is claimed by its unique key (the loser of
//! a race inserts nothing), and a payout serialises on the store's payout lock and settles
//! exactly the lines it summed.

use deadpool_postgres::GenericClient;
use kirana_domain::event::kinds;
use kirana_domain::order::{OrderStatus, PaymentStatus, TransitionRequest};
use kirana_domain::page::{Page, PageRequest};
use kirana_domain::payment::{
    Account, Balance, EntryKind, FeePlans, LedgerEntry, LedgerLine, Payment, PaymentState, Payout, Posting, Refund,
    RefundStatus,
};
use kirana_domain::{EntryId, Invalid, OrderId, PaymentId, PayoutId, RefundId, StoreId, Timestamp};
use serde_json::json;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{emit, exec, lock, one, opt, orders, rows};
use crate::Result;
use crate::error::StorageError;
use crate::payments::{NewRefund, NewsApplied, PaymentNews};

const PAYMENT: &str = "SELECT payment_id, order_id, provider, provider_ref, checkout_url, state, amount, currency,
    captured, refunded, created_at, updated_at FROM payments";

fn payment_row(r: &Row) -> Payment {
    Payment {
        id: PaymentId::from_uuid(r.get(0)),
        order_id: OrderId::from_uuid(r.get(1)),
        provider: r.get(2),
        provider_ref: r.get(3),
        checkout_url: r.get(4),
        state: PaymentState::from_stored(r.get::<_, &str>(5)),
        amount: r.get(6),
        currency: r.get(7),
        captured: r.get(8),
        refunded: r.get(9),
        created_at: Timestamp::from_millis(r.get(10)),
        updated_at: Timestamp::from_millis(r.get(11)),
    }
}

const REFUND: &str = "SELECT refund_id, payment_id, order_id, amount, reason, status, actor, provider_ref, error,
    created_at, updated_at FROM refunds";

fn refund_row(r: &Row) -> Refund {
    Refund {
        id: RefundId::from_uuid(r.get(0)),
        payment_id: PaymentId::from_uuid(r.get(1)),
        order_id: OrderId::from_uuid(r.get(2)),
        amount: r.get(3),
        reason: r.get(4),
        status: RefundStatus::from_stored(r.get::<_, &str>(5)),
        actor: r.get(6),
        provider_ref: r.get(7),
        error: r.get(8),
        created_at: Timestamp::from_millis(r.get(9)),
        updated_at: Timestamp::from_millis(r.get(10)),
    }
}

/// The order statuses whose ledger lines a payout may settle: the order reached its end.
const SETTLED_STATUSES: &str = "('delivered', 'returned', 'cancelled', 'rejected')";

pub async fn open<C: GenericClient>(
    c: &C,
    store: StoreId,
    order: OrderId,
    amount: i64,
    currency: &str,
    now: Timestamp,
) -> Result<()> {
    exec(
        c,
        "INSERT INTO payments (store_id, payment_id, order_id, provider, state, amount, currency, created_at, updated_at)
         VALUES ($1, $2, $3, '', 'created', $4, $5, $6, $6)",
        &[&store.uuid(), &PaymentId::generate().uuid(), &order.uuid(), &amount, &currency, &now.millis()],
    )
    .await?;
    Ok(())
}

pub async fn get<C: GenericClient>(c: &C, store: StoreId, id: PaymentId) -> Result<Payment> {
    opt(c, &format!("{PAYMENT} WHERE store_id = $1 AND payment_id = $2"), &[&store.uuid(), &id.uuid()])
        .await?
        .map(|r| payment_row(&r))
        .ok_or(StorageError::NotFound)
}

pub async fn for_order<C: GenericClient>(c: &C, store: StoreId, order: OrderId) -> Result<Payment> {
    opt(c, &format!("{PAYMENT} WHERE store_id = $1 AND order_id = $2"), &[&store.uuid(), &order.uuid()])
        .await?
        .map(|r| payment_row(&r))
        .ok_or(StorageError::NotFound)
}

async fn get_refund<C: GenericClient>(c: &C, store: StoreId, id: RefundId) -> Result<Refund> {
    opt(c, &format!("{REFUND} WHERE store_id = $1 AND refund_id = $2"), &[&store.uuid(), &id.uuid()])
        .await?
        .map(|r| refund_row(&r))
        .ok_or(StorageError::NotFound)
}

pub async fn attach<C: GenericClient>(
    c: &C,
    store: StoreId,
    id: PaymentId,
    provider: &str,
    provider_ref: &str,
    url: &str,
    now: Timestamp,
) -> Result<Payment> {
    exec(
        c,
        "UPDATE payments SET provider = $3, provider_ref = $4, checkout_url = $5, updated_at = $6
         WHERE store_id = $1 AND payment_id = $2",
        &[&store.uuid(), &id.uuid(), &provider, &provider_ref, &url, &now.millis()],
    )
    .await?;
    get(c, store, id).await
}

pub async fn plan<C: GenericClient>(c: &C, store: StoreId) -> Result<Option<String>> {
    Ok(opt(c, "SELECT plan FROM stores WHERE store_id = $1", &[&store.uuid()]).await?.and_then(|r| r.get(0)))
}

pub async fn set_plan<C: GenericClient>(c: &C, store: StoreId, plan: Option<&str>, now: Timestamp) -> Result<()> {
    exec(c, "UPDATE stores SET plan = $2, updated_at = $3 WHERE store_id = $1", &[&store.uuid(), &plan, &now.millis()])
        .await?;
    Ok(())
}

/// Writes a posting unless the store already has one for its cause; `true` when written. The
/// first line claims the key: a concurrent poster of the same cause waits on it, then inserts
/// nothing.
async fn post<C: GenericClient>(
    c: &C,
    store: StoreId,
    p: &Posting,
    payout: Option<PayoutId>,
    now: Timestamp,
) -> Result<bool> {
    if !p.is_balanced() {
        return Err(StorageError::Internal(format!("an unbalanced posting: {p:?}")));
    }
    let entry = EntryId::generate();
    for (i, (account, amount)) in p.lines.iter().enumerate() {
        let settled = if *account == Account::Merchant { payout.map(|p| p.uuid()) } else { None };
        let written = exec(
            c,
            "INSERT INTO ledger_lines (store_id, entry_id, line, entry_key, kind, account, amount, order_id, payout_id, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (store_id, entry_key, line) DO NOTHING",
            &[
                &store.uuid(),
                &entry.uuid(),
                &(i as i64),
                &p.key,
                &p.kind.as_str(),
                &account.as_str(),
                amount,
                &p.order_id.map(|o| o.uuid()),
                &settled,
                &now.millis(),
            ],
        )
        .await?;
        if written == 0 {
            // Only the first line can find its key taken: a whole posting is one transaction.
            return Ok(false);
        }
    }
    Ok(true)
}

pub async fn charge_fee<C: GenericClient>(
    c: &C,
    store: StoreId,
    order: OrderId,
    total: i64,
    fees: &FeePlans,
    now: Timestamp,
) -> Result<()> {
    let fee = fees.for_store(plan(c, store).await?.as_deref()).fee(total);
    if fee > 0 {
        post(c, store, &Posting::fee(order, fee), None, now).await?;
    }
    Ok(())
}

async fn set_order_payment<C: GenericClient>(
    c: &C,
    store: StoreId,
    order: OrderId,
    status: PaymentStatus,
    now: Timestamp,
) -> Result<()> {
    exec(
        c,
        "UPDATE orders SET payment_status = $3, updated_at = $4 WHERE store_id = $1 AND order_id = $2",
        &[&store.uuid(), &order.uuid(), &status.as_str(), &now.millis()],
    )
    .await?;
    Ok(())
}

pub async fn apply_news<C: GenericClient>(
    c: &C,
    store: StoreId,
    id: PaymentId,
    news: &PaymentNews,
    fees: &FeePlans,
    now: Timestamp,
) -> Result<NewsApplied> {
    opt(c, "SELECT 1 FROM payments WHERE store_id = $1 AND payment_id = $2 FOR UPDATE", &[&store.uuid(), &id.uuid()])
        .await?
        .ok_or(StorageError::NotFound)?;
    let before = get(c, store, id).await?;
    let order = orders::get(c, store, before.order_id).await?;
    let unchanged = |duplicate| NewsApplied {
        duplicate,
        moved: false,
        payment: before.clone(),
        order_status: order.status,
        refund: None,
    };
    if let Some(event) = &news.event_id {
        let fresh = exec(
            c,
            "INSERT INTO payment_events (store_id, event_id, received_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&store.uuid(), event, &now.millis()],
        )
        .await?;
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
    exec(
        c,
        "UPDATE payments SET state = $3, captured = greatest(captured, $4), updated_at = $5
         WHERE store_id = $1 AND payment_id = $2",
        &[&store.uuid(), &id.uuid(), &news.state.as_str(), &captured, &now.millis()],
    )
    .await?;

    let mut order_status = order.status;
    let mut refund = None;
    match news.state {
        PaymentState::Authorized | PaymentState::Captured if order.status == OrderStatus::PendingPayment => {
            place(c, store, before.order_id, now).await?;
            order_status = OrderStatus::Placed;
        }
        PaymentState::Failed | PaymentState::Cancelled if order.status == OrderStatus::PendingPayment => {
            let note = if news.state == PaymentState::Failed {
                "the payment was declined"
            } else {
                "the payment was not completed in time"
            };
            let req = TransitionRequest { to: OrderStatus::Cancelled, note: Some(note.into()), tracking: None };
            order_status = orders::transition(c, store, before.order_id, &req, "system", fees, now).await?.status;
        }
        _ => {}
    }
    if news.state == PaymentState::Captured {
        post(c, store, &Posting::sale(id, before.order_id, captured), None, now).await?;
        if !matches!(order_status, OrderStatus::Cancelled | OrderStatus::Rejected) {
            charge_fee(c, store, before.order_id, captured, fees, now).await?;
        }
        set_order_payment(c, store, before.order_id, PaymentStatus::Paid, now).await?;
        if matches!(order_status, OrderStatus::Cancelled | OrderStatus::Rejected) {
            let new = NewRefund {
                order_id: before.order_id,
                amount: captured,
                reason: Some("paid after the order was cancelled".into()),
                actor: "system".into(),
            };
            refund = Some(begin_refund(c, store, &new, now).await?);
        }
    }
    emit(
        c,
        store,
        kinds::PAYMENT_UPDATED,
        now,
        json!({ "payment_id": id, "order_id": before.order_id, "from": before.state, "to": news.state, "amount": before.amount }),
    )
    .await?;
    Ok(NewsApplied { duplicate: false, moved: true, payment: get(c, store, id).await?, order_status, refund })
}

async fn place<C: GenericClient>(c: &C, store: StoreId, order: OrderId, now: Timestamp) -> Result<()> {
    let moved = exec(
        c,
        "UPDATE orders SET status = 'placed', updated_at = $3
         WHERE store_id = $1 AND order_id = $2 AND status = 'pending_payment'",
        &[&store.uuid(), &order.uuid(), &now.millis()],
    )
    .await?;
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
    )
    .await?;
    let placed = orders::get(c, store, order).await?;
    emit(c, store, kinds::ORDER_PLACED, now, json!(placed)).await
}

pub async fn begin_refund<C: GenericClient>(c: &C, store: StoreId, new: &NewRefund, now: Timestamp) -> Result<Refund> {
    if new.amount <= 0 {
        return Err(StorageError::invalid("amount", "must be more than zero"));
    }
    let payment = match for_order(c, store, new.order_id).await {
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
    let reserved = exec(
        c,
        "UPDATE payments SET refunded = refunded + $3, updated_at = $4
         WHERE store_id = $1 AND payment_id = $2 AND refunded + $3 <= captured",
        &[&store.uuid(), &payment.id.uuid(), &new.amount, &now.millis()],
    )
    .await?;
    if reserved == 0 {
        let now_left = get(c, store, payment.id).await?;
        return Err(StorageError::Invalid(Invalid::field(
            "amount",
            format!(
                "exceeds what is left to refund: {} of {} (minor units)",
                now_left.captured - now_left.refunded,
                now_left.captured
            ),
        )));
    }
    let id = RefundId::generate();
    exec(
        c,
        "INSERT INTO refunds (store_id, refund_id, payment_id, order_id, amount, reason, status, actor, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $8, $8)",
        &[
            &store.uuid(),
            &id.uuid(),
            &payment.id.uuid(),
            &new.order_id.uuid(),
            &new.amount,
            &new.reason,
            &new.actor,
            &now.millis(),
        ],
    )
    .await?;
    get_refund(c, store, id).await
}

pub async fn finish_refund<C: GenericClient>(
    c: &C,
    store: StoreId,
    id: RefundId,
    outcome: &std::result::Result<String, String>,
    now: Timestamp,
) -> Result<Refund> {
    opt(c, "SELECT 1 FROM refunds WHERE store_id = $1 AND refund_id = $2 FOR UPDATE", &[&store.uuid(), &id.uuid()])
        .await?
        .ok_or(StorageError::NotFound)?;
    let refund = get_refund(c, store, id).await?;
    if refund.status != RefundStatus::Pending {
        return Ok(refund);
    }
    match outcome {
        Ok(provider_ref) => {
            exec(
                c,
                "UPDATE refunds SET status = 'succeeded', provider_ref = $3, updated_at = $4
                 WHERE store_id = $1 AND refund_id = $2",
                &[&store.uuid(), &id.uuid(), provider_ref, &now.millis()],
            )
            .await?;
            post(c, store, &Posting::refund(id, refund.order_id, refund.amount), None, now).await?;
            let payment = get(c, store, refund.payment_id).await?;
            let done: i64 = one(
                c,
                "SELECT coalesce(sum(amount), 0)::BIGINT FROM refunds
                 WHERE store_id = $1 AND payment_id = $2 AND status = 'succeeded'",
                &[&store.uuid(), &refund.payment_id.uuid()],
            )
            .await?
            .get(0);
            let status =
                if done >= payment.captured { PaymentStatus::Refunded } else { PaymentStatus::PartiallyRefunded };
            set_order_payment(c, store, refund.order_id, status, now).await?;
            emit(
                c,
                store,
                kinds::REFUND_SUCCEEDED,
                now,
                json!({ "refund_id": id, "order_id": refund.order_id, "amount": refund.amount, "payment_status": status }),
            )
            .await?;
        }
        Err(reason) => {
            exec(
                c,
                "UPDATE refunds SET status = 'failed', error = $3, updated_at = $4 WHERE store_id = $1 AND refund_id = $2",
                &[&store.uuid(), &id.uuid(), reason, &now.millis()],
            )
            .await?;
            exec(
                c,
                "UPDATE payments SET refunded = refunded - $3, updated_at = $4 WHERE store_id = $1 AND payment_id = $2",
                &[&store.uuid(), &refund.payment_id.uuid(), &refund.amount, &now.millis()],
            )
            .await?;
        }
    }
    get_refund(c, store, id).await
}

pub async fn refunds<C: GenericClient>(c: &C, store: StoreId, order: OrderId) -> Result<Vec<Refund>> {
    let rows = rows(
        c,
        &format!("{REFUND} WHERE store_id = $1 AND order_id = $2 ORDER BY refund_id"),
        &[&store.uuid(), &order.uuid()],
    )
    .await?;
    Ok(rows.iter().map(refund_row).collect())
}

pub async fn balance<C: GenericClient>(c: &C, store: StoreId) -> Result<Balance> {
    let r = one(
        c,
        &format!(
            "SELECT
                coalesce(sum(l.amount), 0)::BIGINT,
                coalesce(sum(l.amount) FILTER (WHERE l.payout_id IS NULL
                    AND (l.order_id IS NULL OR o.status IN {SETTLED_STATUSES})), 0)::BIGINT,
                coalesce(sum(l.amount) FILTER (WHERE l.payout_id IS NULL), 0)::BIGINT,
                coalesce(sum(l.amount) FILTER (WHERE l.kind = 'fee'), 0)::BIGINT,
                coalesce(sum(l.amount) FILTER (WHERE l.kind = 'payout'), 0)::BIGINT,
                coalesce(sum(l.amount) FILTER (WHERE l.kind = 'sale'), 0)::BIGINT,
                coalesce(sum(l.amount) FILTER (WHERE l.kind = 'refund'), 0)::BIGINT
             FROM ledger_lines l LEFT JOIN orders o ON o.store_id = l.store_id AND o.order_id = l.order_id
             WHERE l.store_id = $1 AND l.account = 'merchant'"
        ),
        &[&store.uuid()],
    )
    .await?;
    let (merchant, available, unpaid): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
    Ok(Balance {
        balance: -merchant,
        available: -available,
        held: -(unpaid - available),
        fees: r.get(3),
        paid_out: r.get(4),
        sales: -r.get::<_, i64>(5),
        refunded: r.get(6),
    })
}

pub async fn ledger<C: GenericClient>(c: &C, store: StoreId, page: PageRequest) -> Result<Page<LedgerEntry>> {
    let after = page.after.map(|p| p.uuid());
    let ids: Vec<Uuid> = rows(
        c,
        "SELECT DISTINCT entry_id FROM ledger_lines WHERE store_id = $1 AND ($2::uuid IS NULL OR entry_id < $2)
         ORDER BY entry_id DESC LIMIT $3",
        &[&store.uuid(), &after, &page.limit.probe()],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect();
    if ids.is_empty() {
        return Ok(Page { items: vec![], next_cursor: None });
    }
    let lines = rows(
        c,
        "SELECT entry_id, entry_key, kind, account, amount, order_id, payout_id, created_at FROM ledger_lines
         WHERE store_id = $1 AND entry_id = ANY($2) ORDER BY entry_id DESC, line",
        &[&store.uuid(), &ids],
    )
    .await?;
    let mut entries: Vec<LedgerEntry> = Vec::with_capacity(ids.len());
    for r in &lines {
        let id = EntryId::from_uuid(r.get(0));
        let line = LedgerLine { account: Account::from_stored(r.get::<_, &str>(3)), amount: r.get(4) };
        let payout: Option<Uuid> = r.get(6);
        match entries.last_mut() {
            Some(e) if e.id == id => {
                e.lines.push(line);
                e.payout_id = e.payout_id.or(payout.map(PayoutId::from_uuid));
            }
            _ => entries.push(LedgerEntry {
                id,
                key: r.get(1),
                kind: EntryKind::from_stored(r.get::<_, &str>(2)),
                order_id: r.get::<_, Option<Uuid>>(5).map(OrderId::from_uuid),
                payout_id: payout.map(PayoutId::from_uuid),
                lines: vec![line],
                at: Timestamp::from_millis(r.get(7)),
            }),
        }
    }
    Ok(Page::from_probe(entries, page.limit, |e| e.id.uuid()))
}

fn payout_row(r: &Row) -> Payout {
    Payout {
        id: PayoutId::from_uuid(r.get(0)),
        amount: r.get(1),
        slot: Timestamp::from_millis(r.get(2)),
        lines: r.get(3),
        created_at: Timestamp::from_millis(r.get(4)),
    }
}

pub async fn payouts<C: GenericClient>(c: &C, store: StoreId, page: PageRequest) -> Result<Page<Payout>> {
    let after = page.after.map(|p| p.uuid());
    let rows = rows(
        c,
        "SELECT payout_id, amount, slot, lines, created_at FROM payouts
         WHERE store_id = $1 AND ($2::uuid IS NULL OR payout_id < $2) ORDER BY payout_id DESC LIMIT $3",
        &[&store.uuid(), &after, &page.limit.probe()],
    )
    .await?;
    Ok(Page::from_probe(rows.iter().map(payout_row).collect(), page.limit, |p| p.id.uuid()))
}

pub async fn pay_out<C: GenericClient>(
    c: &C,
    store: StoreId,
    slot: Timestamp,
    now: Timestamp,
) -> Result<Option<Payout>> {
    // One payout run per store at a time: two would sum the same lines.
    lock(c, &format!("payout:{store}")).await?;
    let due = rows(
        c,
        &format!(
            "SELECT l.entry_id, l.amount FROM ledger_lines l
             WHERE l.store_id = $1 AND l.account = 'merchant' AND l.payout_id IS NULL
               AND (l.order_id IS NULL OR l.order_id IN
                    (SELECT order_id FROM orders WHERE store_id = $1 AND status IN {SETTLED_STATUSES}))
             FOR UPDATE OF l"
        ),
        &[&store.uuid()],
    )
    .await?;
    let owed = -due.iter().map(|r| r.get::<_, i64>(1)).sum::<i64>();
    if owed <= 0 {
        return Ok(None);
    }
    let entries: Vec<Uuid> = due.iter().map(|r| r.get(0)).collect();
    let id = PayoutId::generate();
    let made = exec(
        c,
        "INSERT INTO payouts (store_id, payout_id, slot, amount, lines, created_at) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (store_id, slot) DO NOTHING",
        &[&store.uuid(), &id.uuid(), &slot.millis(), &owed, &(due.len() as i64), &now.millis()],
    )
    .await?;
    if made == 0 {
        return Ok(None);
    }
    // Exactly the lines summed: a sale committed since is the next payout's.
    exec(
        c,
        "UPDATE ledger_lines SET payout_id = $2
         WHERE store_id = $1 AND account = 'merchant' AND payout_id IS NULL AND entry_id = ANY($3)",
        &[&store.uuid(), &id.uuid(), &entries],
    )
    .await?;
    post(c, store, &Posting::payout(id, owed), Some(id), now).await?;
    emit(c, store, kinds::PAYOUT_PAID, now, json!({ "payout_id": id, "amount": owed, "slot": slot.millis() })).await?;
    Ok(Some(Payout { id, amount: owed, slot, lines: due.len() as i64, created_at: now }))
}

pub async fn open_payments<C: GenericClient>(c: &C, before: Timestamp, limit: u32) -> Result<Vec<(StoreId, Payment)>> {
    let sql = PAYMENT.replace(" FROM payments", ", store_id FROM payments");
    let rows = rows(
        c,
        &format!("{sql} WHERE state IN ('created', 'authorized') AND updated_at < $1 ORDER BY updated_at LIMIT $2"),
        &[&before.millis(), &i64::from(limit)],
    )
    .await?;
    Ok(rows.iter().map(|r| (StoreId::from_uuid(r.get(12)), payment_row(r))).collect())
}

pub async fn pending_refunds<C: GenericClient>(c: &C, before: Timestamp, limit: u32) -> Result<Vec<(StoreId, Refund)>> {
    let sql = REFUND.replace(" FROM refunds", ", store_id FROM refunds");
    let rows = rows(
        c,
        &format!("{sql} WHERE status = 'pending' AND updated_at < $1 ORDER BY updated_at LIMIT $2"),
        &[&before.millis(), &i64::from(limit)],
    )
    .await?;
    Ok(rows.iter().map(|r| (StoreId::from_uuid(r.get(11)), refund_row(r))).collect())
}

pub async fn stores_with_unpaid_lines<C: GenericClient>(
    c: &C,
    after: Option<StoreId>,
    limit: u32,
) -> Result<Vec<StoreId>> {
    let rows = rows(
        c,
        "SELECT DISTINCT store_id FROM ledger_lines
         WHERE account = 'merchant' AND payout_id IS NULL AND ($1::uuid IS NULL OR store_id > $1)
         ORDER BY store_id LIMIT $2",
        &[&after.map(|s| s.uuid()), &i64::from(limit)],
    )
    .await?;
    Ok(rows.iter().map(|r| StoreId::from_uuid(r.get(0))).collect())
}
