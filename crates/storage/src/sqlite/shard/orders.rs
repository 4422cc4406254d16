//! Orders (read, and moved through their state machine) and the customers they record.

use std::collections::HashMap;

use kirana_domain::customer::Customer;
use kirana_domain::event::kinds;
use kirana_domain::order::{
    Order, OrderCustomer, OrderItem, OrderStatus, PaymentMethod, PaymentStatus, Transition, TransitionRequest,
};
use kirana_domain::page::{Page, PageRequest};
use kirana_domain::pricing::Totals;
use kirana_domain::{Amount, Currency, CustomerId, OrderId, Phone, ProductId, StoreId, Timestamp, VariantId};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use serde_json::json;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{emit, placeholders};
use crate::Result;
use crate::error::StorageError;

const ORDER_SELECT: &str = "SELECT order_id, number, status, payment_method, payment_status, currency,
    customer_id, customer_name, customer_phone, customer_email, address,
    subtotal, discount, delivery_fee, tax, total, coupon_code, note, tracking, created_at, updated_at
    FROM orders";

fn order_row(r: &Row<'_>) -> rusqlite::Result<(Order, String)> {
    let status = OrderStatus::parse(&r.get::<_, String>(2)?).unwrap_or(OrderStatus::Placed);
    Ok((
        Order {
            id: OrderId::from_uuid(r.get(0)?),
            number: r.get(1)?,
            status,
            next_statuses: status.next(),
            payment_method: PaymentMethod::from_stored(&r.get::<_, String>(3)?),
            payment_status: PaymentStatus::from_stored(&r.get::<_, String>(4)?),
            currency: Currency::parse(&r.get::<_, String>(5)?).unwrap_or(Currency::INR),
            customer: OrderCustomer {
                id: CustomerId::from_uuid(r.get(6)?),
                name: r.get(7)?,
                phone: Phone::from_stored(r.get(8)?),
                email: r.get(9)?,
            },
            address: kirana_domain::order::Address {
                line1: String::new(),
                line2: None,
                landmark: None,
                city: String::new(),
                state: None,
                postal_code: String::new(),
                country: String::new(),
            },
            items: vec![],
            totals: Totals {
                subtotal: r.get(11)?,
                discount: r.get(12)?,
                delivery_fee: r.get(13)?,
                tax: r.get(14)?,
                total: r.get(15)?,
            },
            coupon_code: r.get(16)?,
            note: r.get(17)?,
            tracking: r.get(18)?,
            history: vec![],
            created_at: Timestamp::from_millis(r.get(19)?),
            updated_at: Timestamp::from_millis(r.get(20)?),
        },
        r.get(10)?,
    ))
}

/// Fills items and history for a page of orders: two queries for the page, not two per order.
fn complete(c: &Connection, store: StoreId, rows: Vec<(Order, String)>) -> Result<Vec<Order>> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let mut orders = Vec::with_capacity(rows.len());
    let mut index = HashMap::with_capacity(rows.len());
    for (i, (mut o, address)) in rows.into_iter().enumerate() {
        o.address = serde_json::from_str(&address)?;
        index.insert(o.id.uuid(), i);
        orders.push(o);
    }
    let mut args: Vec<Value> = vec![Value::Blob(store.uuid().as_bytes().to_vec())];
    args.extend(orders.iter().map(|o| Value::Blob(o.id.uuid().as_bytes().to_vec())));
    let list = placeholders(2, orders.len());

    let mut st = c.prepare_cached(&format!(
        "SELECT order_id, product_id, variant_id, title, variant_title, sku, unit_price, quantity, line_total
         FROM order_items WHERE store_id = ?1 AND order_id IN ({list}) ORDER BY order_id, line"
    ))?;
    let items = st.query_map(params_from_iter(args.iter()), |r| {
        Ok((
            r.get::<_, Uuid>(0)?,
            OrderItem {
                product_id: ProductId::from_uuid(r.get(1)?),
                variant_id: VariantId::from_uuid(r.get(2)?),
                title: r.get(3)?,
                variant_title: r.get(4)?,
                sku: r.get(5)?,
                unit_price: Amount::from_stored(r.get(6)?),
                quantity: r.get(7)?,
                line_total: r.get(8)?,
            },
        ))
    })?;
    for item in items {
        let (oid, item) = item?;
        if let Some(&i) = index.get(&oid) {
            orders[i].items.push(item);
        }
    }

    let mut st = c.prepare_cached(&format!(
        "SELECT order_id, from_status, to_status, actor, note, tracking, at
         FROM order_history WHERE store_id = ?1 AND order_id IN ({list}) ORDER BY order_id, seq"
    ))?;
    let steps = st.query_map(params_from_iter(args.iter()), |r| {
        let parse = |s: String| OrderStatus::parse(&s).unwrap_or(OrderStatus::Placed);
        Ok((
            r.get::<_, Uuid>(0)?,
            Transition {
                from: r.get::<_, Option<String>>(1)?.map(parse),
                to: parse(r.get(2)?),
                actor: r.get(3)?,
                note: r.get(4)?,
                tracking: r.get(5)?,
                at: Timestamp::from_millis(r.get(6)?),
            },
        ))
    })?;
    for step in steps {
        let (oid, step) = step?;
        if let Some(&i) = index.get(&oid) {
            orders[i].history.push(step);
        }
    }
    Ok(orders)
}

pub(super) fn get(c: &Connection, store: StoreId, id: OrderId) -> Result<Order> {
    let row = c
        .prepare_cached(&format!("{ORDER_SELECT} WHERE store_id = ?1 AND order_id = ?2"))?
        .query_row(params![store.uuid(), id.uuid()], order_row)
        .optional()?
        .ok_or(StorageError::NotFound)?;
    Ok(complete(c, store, vec![row])?.remove(0))
}

pub(super) fn get_for_shopper(c: &Connection, store: StoreId, id: OrderId, token_hash: [u8; 32]) -> Result<Order> {
    let hash: Option<Vec<u8>> = c
        .prepare_cached("SELECT access_hash FROM orders WHERE store_id = ?1 AND order_id = ?2")?
        .query_row(params![store.uuid(), id.uuid()], |r| r.get(0))
        .optional()?;
    match hash {
        Some(h) if bool::from(h.as_slice().ct_eq(&token_hash[..])) => get(c, store, id),
        _ => Err(StorageError::NotFound),
    }
}

/// Orders newest first, optionally of one status (served by `orders_by_status`).
pub(super) fn list(
    c: &Connection,
    store: StoreId,
    status: Option<OrderStatus>,
    page: PageRequest,
) -> Result<Page<Order>> {
    let after = page.after.map(|p| p.uuid());
    let rows = c
        .prepare_cached(&format!(
            "{ORDER_SELECT} WHERE store_id = ?1 AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR order_id < ?3)
             ORDER BY order_id DESC LIMIT ?4"
        ))?
        .query_map(params![store.uuid(), status.map(OrderStatus::as_str), after, page.limit.probe()], order_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let orders = complete(c, store, rows)?;
    Ok(Page::from_probe(orders, page.limit, |o| o.id.uuid()))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn record_step(
    c: &Connection,
    store: StoreId,
    order: OrderId,
    from: Option<OrderStatus>,
    to: OrderStatus,
    actor: &str,
    note: Option<&str>,
    tracking: Option<&str>,
    now: Timestamp,
) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO order_history (store_id, order_id, seq, from_status, to_status, actor, note, tracking, at)
         VALUES (?1, ?2, (SELECT coalesce(max(seq), 0) + 1 FROM order_history WHERE store_id = ?1 AND order_id = ?2), ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![store.uuid(), order.uuid(), from.map(OrderStatus::as_str), to.as_str(), actor, note, tracking, now.millis()])?;
    Ok(())
}

/// Moves an order one step. Refused with `InvalidTransition` unless the state machine allows
/// it; ending states put every tracked unit back in stock in the same transaction.
pub(super) fn transition(
    c: &Connection,
    store: StoreId,
    id: OrderId,
    req: &TransitionRequest,
    actor: &str,
    fees: &kirana_domain::payment::FeePlans,
    now: Timestamp,
) -> Result<Order> {
    let order = get(c, store, id)?;
    let from = order.status;
    if !from.can_become(req.to) {
        return Err(StorageError::InvalidTransition { from, to: req.to });
    }
    // Guarded on the status we read, so the step applies to exactly the order we judged.
    let payment = order.payment_status.after(order.payment_method, req.to);
    let moved = c
        .prepare_cached(
            "UPDATE orders SET status = ?4, payment_status = ?5, tracking = coalesce(?6, tracking), updated_at = ?7
             WHERE store_id = ?1 AND order_id = ?2 AND status = ?3",
        )?
        .execute(params![
            store.uuid(),
            id.uuid(),
            from.as_str(),
            req.to.as_str(),
            payment.as_str(),
            req.tracking,
            now.millis()
        ])?;
    if moved == 0 {
        return Err(StorageError::InvalidTransition { from, to: req.to });
    }
    if req.to.restocks() {
        for item in &order.items {
            // Untracked variants stay untracked; deleted ones have nothing to restock.
            c.prepare_cached(
                "UPDATE variants SET stock = stock + ?3 WHERE store_id = ?1 AND variant_id = ?2 AND stock IS NOT NULL",
            )?
            .execute(params![store.uuid(), item.variant_id.uuid(), item.quantity])?;
        }
    }
    if req.to == OrderStatus::Delivered && order.payment_method == PaymentMethod::Cod {
        super::payments::charge_fee(c, store, id, order.totals.total, fees, now)?;
    }
    record_step(c, store, id, Some(from), req.to, actor, req.note.as_deref(), req.tracking.as_deref(), now)?;
    let order = get(c, store, id)?;
    emit(
        c,
        store,
        kinds::ORDER_TRANSITIONED,
        now,
        json!({ "order_id": id, "number": order.number, "from": from, "to": req.to, "restocked": req.to.restocks(), "tracking": req.tracking, "payment_status": order.payment_status, "customer_phone": order.customer.phone, "total": order.totals.total, "currency": order.currency }),
    )?;
    Ok(order)
}

const CUSTOMER_SELECT: &str =
    "SELECT customer_id, phone, name, email, orders_count, total_spent, first_order_at, last_order_at FROM customers";

fn customer_row(r: &Row<'_>) -> rusqlite::Result<Customer> {
    Ok(Customer {
        id: CustomerId::from_uuid(r.get(0)?),
        phone: Phone::from_stored(r.get(1)?),
        name: r.get(2)?,
        email: r.get(3)?,
        orders_count: r.get(4)?,
        total_spent: r.get(5)?,
        first_order_at: Timestamp::from_millis(r.get(6)?),
        last_order_at: Timestamp::from_millis(r.get(7)?),
    })
}

pub(super) fn customers(c: &Connection, store: StoreId, page: PageRequest) -> Result<Page<Customer>> {
    let after = page.after.map(|p| p.uuid());
    let rows = c
        .prepare_cached(&format!(
            "{CUSTOMER_SELECT} WHERE store_id = ?1 AND (?2 IS NULL OR customer_id < ?2) ORDER BY customer_id DESC LIMIT ?3"
        ))?
        .query_map(params![store.uuid(), after, page.limit.probe()], customer_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Page::from_probe(rows, page.limit, |c| c.id.uuid()))
}

pub(super) fn customer(c: &Connection, store: StoreId, id: CustomerId) -> Result<Customer> {
    c.prepare_cached(&format!("{CUSTOMER_SELECT} WHERE store_id = ?1 AND customer_id = ?2"))?
        .query_row(params![store.uuid(), id.uuid()], customer_row)
        .optional()?
        .ok_or(StorageError::NotFound)
}
