//! Orders (read, and moved through their state machine) and the customers they record: the
//! port of `sqlite::shard::orders`, with the same errors and events.
//!
//! What SQLite's single writer guarantees, this gets from PostgreSQL: a transition reads the
//! order `FOR UPDATE`, so it judges the status it will change (a rival transition waits, then
//! is judged from the status the first left), and restocks variants in id order, the order
//! checkout takes them in, so the two never deadlock.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use kirana_domain::customer::Customer;
use kirana_domain::event::kinds;
use kirana_domain::order::{
    Order, OrderCustomer, OrderItem, OrderStatus, PaymentMethod, PaymentStatus, Transition, TransitionRequest,
};
use kirana_domain::page::{Page, PageRequest};
use kirana_domain::pricing::Totals;
use kirana_domain::{Amount, Currency, CustomerId, OrderId, Phone, ProductId, StoreId, Timestamp, VariantId};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio_postgres::Row;
use uuid::Uuid;

use super::carts::quantity;
use super::{emit, exec, opt, rows};
use crate::Result;
use crate::error::StorageError;

const ORDER_SELECT: &str = "SELECT order_id, number, status, payment_method, payment_status, currency,
    customer_id, customer_name, customer_phone, customer_email, address,
    subtotal, discount, delivery_fee, tax, total, coupon_code, note, tracking, created_at, updated_at
    FROM orders";

fn order_row(r: &Row) -> Result<Order> {
    let status = OrderStatus::parse(r.get::<_, &str>(2)).unwrap_or(OrderStatus::Placed);
    Ok(Order {
        id: OrderId::from_uuid(r.get(0)),
        number: r.get(1),
        status,
        next_statuses: status.next(),
        payment_method: PaymentMethod::from_stored(r.get::<_, &str>(3)),
        payment_status: PaymentStatus::from_stored(r.get::<_, &str>(4)),
        currency: Currency::parse(r.get::<_, &str>(5)).unwrap_or(Currency::INR),
        customer: OrderCustomer {
            id: CustomerId::from_uuid(r.get(6)),
            name: r.get(7),
            phone: Phone::from_stored(r.get(8)),
            email: r.get(9),
        },
        address: serde_json::from_str(r.get::<_, &str>(10))?,
        items: vec![],
        totals: Totals {
            subtotal: r.get(11),
            discount: r.get(12),
            delivery_fee: r.get(13),
            tax: r.get(14),
            total: r.get(15),
        },
        coupon_code: r.get(16),
        note: r.get(17),
        tracking: r.get(18),
        history: vec![],
        created_at: Timestamp::from_millis(r.get(19)),
        updated_at: Timestamp::from_millis(r.get(20)),
    })
}

fn parse_status(s: &str) -> OrderStatus {
    OrderStatus::parse(s).unwrap_or(OrderStatus::Placed)
}

/// Fills items and history for a page of orders: two queries for the page, not two per order.
async fn complete<C: GenericClient>(c: &C, store: StoreId, rows_: Vec<Row>) -> Result<Vec<Order>> {
    if rows_.is_empty() {
        return Ok(vec![]);
    }
    let mut orders = Vec::with_capacity(rows_.len());
    let mut index = HashMap::with_capacity(rows_.len());
    for (i, r) in rows_.iter().enumerate() {
        let o = order_row(r)?;
        index.insert(o.id.uuid(), i);
        orders.push(o);
    }
    let ids: Vec<Uuid> = orders.iter().map(|o| o.id.uuid()).collect();

    let items = rows(
        c,
        "SELECT order_id, product_id, variant_id, title, variant_title, sku, unit_price, quantity, line_total
         FROM order_items WHERE store_id = $1 AND order_id = ANY($2) ORDER BY order_id, line",
        &[&store.uuid(), &ids],
    )
    .await?;
    for r in &items {
        if let Some(&i) = index.get(&r.get::<_, Uuid>(0)) {
            orders[i].items.push(OrderItem {
                product_id: ProductId::from_uuid(r.get(1)),
                variant_id: VariantId::from_uuid(r.get(2)),
                title: r.get(3),
                variant_title: r.get(4),
                sku: r.get(5),
                unit_price: Amount::from_stored(r.get(6)),
                quantity: quantity(r.get(7)),
                line_total: r.get(8),
            });
        }
    }

    let steps = rows(
        c,
        "SELECT order_id, from_status, to_status, actor, note, tracking, at
         FROM order_history WHERE store_id = $1 AND order_id = ANY($2) ORDER BY order_id, seq",
        &[&store.uuid(), &ids],
    )
    .await?;
    for r in &steps {
        if let Some(&i) = index.get(&r.get::<_, Uuid>(0)) {
            orders[i].history.push(Transition {
                from: r.get::<_, Option<&str>>(1).map(parse_status),
                to: parse_status(r.get(2)),
                actor: r.get(3),
                note: r.get(4),
                tracking: r.get(5),
                at: Timestamp::from_millis(r.get(6)),
            });
        }
    }
    Ok(orders)
}

pub async fn get<C: GenericClient>(c: &C, store: StoreId, id: OrderId) -> Result<Order> {
    let row = opt(c, &format!("{ORDER_SELECT} WHERE store_id = $1 AND order_id = $2"), &[&store.uuid(), &id.uuid()])
        .await?
        .ok_or(StorageError::NotFound)?;
    Ok(complete(c, store, vec![row]).await?.remove(0))
}

pub async fn get_for_shopper<C: GenericClient>(
    c: &C,
    store: StoreId,
    id: OrderId,
    token_hash: [u8; 32],
) -> Result<Order> {
    let hash =
        opt(c, "SELECT access_hash FROM orders WHERE store_id = $1 AND order_id = $2", &[&store.uuid(), &id.uuid()])
            .await?;
    match hash {
        Some(h) if bool::from(h.get::<_, &[u8]>(0).ct_eq(&token_hash[..])) => get(c, store, id).await,
        _ => Err(StorageError::NotFound),
    }
}

/// Orders newest first, optionally of one status (served by `orders_by_status`).
pub async fn list<C: GenericClient>(
    c: &C,
    store: StoreId,
    status: Option<OrderStatus>,
    page: PageRequest,
) -> Result<Page<Order>> {
    let after = page.after.map(|p| p.uuid());
    let rows = rows(
        c,
        &format!(
            "{ORDER_SELECT} WHERE store_id = $1 AND ($2::text IS NULL OR status = $2) AND ($3::uuid IS NULL OR order_id < $3)
             ORDER BY order_id DESC LIMIT $4"
        ),
        &[&store.uuid(), &status.map(OrderStatus::as_str), &after, &page.limit.probe()],
    )
    .await?;
    let orders = complete(c, store, rows).await?;
    Ok(Page::from_probe(orders, page.limit, |o| o.id.uuid()))
}

/// Appends a step to the order's history. The caller holds the order (a new one, or one read
/// `FOR UPDATE`), so the next `seq` is its own.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn record_step<C: GenericClient>(
    c: &C,
    store: StoreId,
    order: OrderId,
    from: Option<OrderStatus>,
    to: OrderStatus,
    actor: &str,
    note: Option<&str>,
    tracking: Option<&str>,
    now: Timestamp,
) -> Result<()> {
    exec(
        c,
        "INSERT INTO order_history (store_id, order_id, seq, from_status, to_status, actor, note, tracking, at)
         VALUES ($1, $2, (SELECT coalesce(max(seq), 0) + 1 FROM order_history WHERE store_id = $1 AND order_id = $2),
                 $3, $4, $5, $6, $7, $8)",
        &[
            &store.uuid(),
            &order.uuid(),
            &from.map(OrderStatus::as_str),
            &to.as_str(),
            &actor,
            &note,
            &tracking,
            &now.millis(),
        ],
    )
    .await?;
    Ok(())
}

/// Moves an order one step. Refused with `InvalidTransition` unless the state machine allows
/// it; ending states put every tracked unit back in stock in the same transaction.
pub async fn transition<C: GenericClient>(
    c: &C,
    store: StoreId,
    id: OrderId,
    req: &TransitionRequest,
    actor: &str,
    fees: &kirana_domain::payment::FeePlans,
    now: Timestamp,
) -> Result<Order> {
    // Lock first, then read: the status judged is the one this transaction changes.
    opt(c, "SELECT 1 FROM orders WHERE store_id = $1 AND order_id = $2 FOR UPDATE", &[&store.uuid(), &id.uuid()])
        .await?
        .ok_or(StorageError::NotFound)?;
    let order = get(c, store, id).await?;
    let from = order.status;
    if !from.can_become(req.to) {
        return Err(StorageError::InvalidTransition { from, to: req.to });
    }
    let payment = order.payment_status.after(order.payment_method, req.to);
    let moved = exec(
        c,
        "UPDATE orders SET status = $4, payment_status = $5, tracking = coalesce($6, tracking), updated_at = $7
         WHERE store_id = $1 AND order_id = $2 AND status = $3",
        &[&store.uuid(), &id.uuid(), &from.as_str(), &req.to.as_str(), &payment.as_str(), &req.tracking, &now.millis()],
    )
    .await?;
    if moved == 0 {
        return Err(StorageError::InvalidTransition { from, to: req.to });
    }
    if req.to.restocks() {
        // In variant order, as checkout takes them: two transactions never wait on each other
        // in a cycle.
        let mut items: Vec<&OrderItem> = order.items.iter().collect();
        items.sort_by_key(|i| i.variant_id.uuid());
        for item in items {
            // Untracked variants stay untracked; deleted ones have nothing to restock.
            exec(
                c,
                "UPDATE variants SET stock = stock + $3 WHERE store_id = $1 AND variant_id = $2 AND stock IS NOT NULL",
                &[&store.uuid(), &item.variant_id.uuid(), &i64::from(item.quantity)],
            )
            .await?;
        }
    }
    if req.to == OrderStatus::Delivered && order.payment_method == kirana_domain::order::PaymentMethod::Cod {
        super::payments::charge_fee(c, store, id, order.totals.total, fees, now).await?;
    }
    record_step(c, store, id, Some(from), req.to, actor, req.note.as_deref(), req.tracking.as_deref(), now).await?;
    let order = get(c, store, id).await?;
    emit(
        c,
        store,
        kinds::ORDER_TRANSITIONED,
        now,
        json!({ "order_id": id, "number": order.number, "from": from, "to": req.to, "restocked": req.to.restocks(), "tracking": req.tracking, "payment_status": order.payment_status, "customer_phone": order.customer.phone, "total": order.totals.total, "currency": order.currency }),
    )
    .await?;
    Ok(order)
}

const CUSTOMER_SELECT: &str =
    "SELECT customer_id, phone, name, email, orders_count, total_spent, first_order_at, last_order_at FROM customers";

fn customer_row(r: &Row) -> Customer {
    Customer {
        id: CustomerId::from_uuid(r.get(0)),
        phone: Phone::from_stored(r.get(1)),
        name: r.get(2),
        email: r.get(3),
        orders_count: r.get(4),
        total_spent: r.get(5),
        first_order_at: Timestamp::from_millis(r.get(6)),
        last_order_at: Timestamp::from_millis(r.get(7)),
    }
}

pub async fn customers<C: GenericClient>(c: &C, store: StoreId, page: PageRequest) -> Result<Page<Customer>> {
    let after = page.after.map(|p| p.uuid());
    let rows = rows(
        c,
        &format!(
            "{CUSTOMER_SELECT} WHERE store_id = $1 AND ($2::uuid IS NULL OR customer_id < $2)
             ORDER BY customer_id DESC LIMIT $3"
        ),
        &[&store.uuid(), &after, &page.limit.probe()],
    )
    .await?;
    Ok(Page::from_probe(rows.iter().map(customer_row).collect(), page.limit, |c| c.id.uuid()))
}

pub async fn customer<C: GenericClient>(c: &C, store: StoreId, id: CustomerId) -> Result<Customer> {
    opt(c, &format!("{CUSTOMER_SELECT} WHERE store_id = $1 AND customer_id = $2"), &[&store.uuid(), &id.uuid()])
        .await?
        .map(|r| customer_row(&r))
        .ok_or(StorageError::NotFound)
}
