//! Checkout: a cart becomes an order in one transaction.
//!
//! Order of work, all inside the caller's savepoint (any refusal undoes everything):
//! 1. an `Idempotency-Key` seen before answers with its order (or refuses a different request);
//! 2. the cart opens with its token and is still open;
//! 3. every line is priced from the catalog and its stock taken with a guarded decrement
//!    (`stock = stock - n WHERE stock >= n`): a line that cannot be had is reported by name;
//! 4. the coupon is redeemed with a guarded increment of its use count;
//! 5. the customer is recorded, the order written with its lines and first history step, the
//!    cart closed, and the `order.placed` event appended to the outbox.
//!
//! An order paid online starts `pending_payment` with its payment row (`created`), holding its
//! stock; it is placed, and `order.placed` written, when the provider authorizes the payment
//! (`payments::apply_news`).

use kirana_domain::cart::{CartStatus, Checkout, Shortage};
use kirana_domain::coupon::CouponRejection;
use kirana_domain::event::kinds;
use kirana_domain::order::{Order, OrderStatus, PaymentMethod, PaymentStatus};
use kirana_domain::pricing;
use kirana_domain::{CartId, CustomerId, OrderId, StoreId, Timestamp};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;
use uuid::Uuid;

use super::carts::{self, terms};
use super::{coupons, emit, orders, stores};
use crate::Result;
use crate::error::{ConflictKind, StorageError};
use crate::shard::IdempotencyKey;

pub(super) fn checkout(
    c: &Connection,
    store: StoreId,
    cart_id: CartId,
    token_hash: [u8; 32],
    req: &Checkout,
    idem: Option<&IdempotencyKey>,
    now: Timestamp,
) -> Result<(Order, bool)> {
    let cart = carts::open(c, store, cart_id, token_hash, now)?;
    if let Some(k) = idem {
        let seen = c
            .prepare_cached("SELECT order_id, request_hash FROM orders WHERE store_id = ?1 AND idempotency_key = ?2")?
            .query_row(params![store.uuid(), k.key], |r| Ok((r.get::<_, Uuid>(0)?, r.get::<_, Option<Vec<u8>>>(1)?)))
            .optional()?;
        if let Some((order_id, fingerprint)) = seen {
            if fingerprint.as_deref() != Some(&k.fingerprint[..]) {
                return Err(StorageError::conflict(
                    ConflictKind::IdempotencyKeyReused,
                    Some("Idempotency-Key"),
                    "this Idempotency-Key was used for a different request",
                ));
            }
            return Ok((orders::get(c, store, OrderId::from_uuid(order_id))?, true));
        }
    }
    if cart.status == CartStatus::CheckedOut {
        let number = match cart.order_id {
            Some(o) => orders::get(c, store, o).map(|o| format!(" as order #{}", o.number)).unwrap_or_default(),
            None => String::new(),
        };
        return Err(StorageError::conflict(
            ConflictKind::CartClosed,
            None,
            format!(
                "this cart was already checked out{number}; repeat a checkout with the same Idempotency-Key to get its order back"
            ),
        ));
    }

    let store_row = stores::get(c, store)?;
    let settings = &store_row.settings;
    let allowed = match req.payment_method {
        PaymentMethod::Cod => settings.cod_enabled,
        PaymentMethod::Online => settings.online_payment_enabled,
    };
    if !allowed {
        return Err(StorageError::invalid("payment_method", "is not accepted by this store"));
    }

    let lines = carts::lines(c, store, cart_id)?;
    if lines.is_empty() {
        return Err(StorageError::invalid("cart", "is empty; add items before checking out"));
    }
    let shortages: Vec<Shortage> = lines
        .iter()
        .filter(|l| l.available() < i64::from(l.quantity))
        .map(|l| Shortage {
            variant_id: l.variant_id,
            title: l.full_title(),
            requested: l.quantity,
            available: l.available(),
        })
        .collect();
    if !shortages.is_empty() {
        return Err(StorageError::InsufficientStock(shortages));
    }
    for l in lines.iter().filter(|l| l.stock.is_some()) {
        // The guard is the oversell protection that does not depend on this writer being alone:
        // the same statement is correct on a database with concurrent writers.
        let taken = c
            .prepare_cached(
                "UPDATE variants SET stock = stock - ?3 WHERE store_id = ?1 AND variant_id = ?2 AND stock IS NOT NULL AND stock >= ?3",
            )?
            .execute(params![store.uuid(), l.variant_id.uuid(), l.quantity])?;
        if taken == 0 {
            let left: Option<i64> = c
                .prepare_cached("SELECT stock FROM variants WHERE store_id = ?1 AND variant_id = ?2")?
                .query_row(params![store.uuid(), l.variant_id.uuid()], |r| r.get(0))
                .optional()?
                .flatten();
            return Err(StorageError::InsufficientStock(vec![Shortage {
                variant_id: l.variant_id,
                title: l.full_title(),
                requested: l.quantity,
                available: left.unwrap_or(0),
            }]));
        }
    }

    let subtotal = pricing::subtotal(lines.iter().map(|l| (l.price, l.quantity)))
        .ok_or_else(|| StorageError::invalid("cart", "is too large to price"))?;
    let mut coupon_used = None;
    let mut discount = 0;
    if let Some(code) = &req.coupon_code {
        let coupon = coupons::by_code(c, store, code)?.ok_or(StorageError::Coupon(CouponRejection::Unknown))?;
        discount = coupon.discount(subtotal, now).map_err(StorageError::Coupon)?;
        let redeemed = c
            .prepare_cached(
                "UPDATE coupons SET used_count = used_count + 1, updated_at = ?3
                 WHERE store_id = ?1 AND coupon_id = ?2 AND (usage_limit IS NULL OR used_count < usage_limit)",
            )?
            .execute(params![store.uuid(), coupon.id.uuid(), now.millis()])?;
        if redeemed == 0 {
            return Err(StorageError::Coupon(CouponRejection::UsedUp));
        }
        coupon_used = Some(coupon);
    }
    let totals = pricing::totals(subtotal, discount, &terms(settings));

    let customer_id = upsert_customer(c, store, req, totals.total, now)?;
    let number: i64 = c
        .prepare_cached("UPDATE stores SET next_order_number = next_order_number + 1 WHERE store_id = ?1 RETURNING next_order_number - 1")?
        .query_row([store.uuid()], |r| r.get(0))?;
    let order_id = OrderId::generate();
    let status = req.payment_method.first_status();
    c.prepare_cached(
        "INSERT INTO orders (store_id, order_id, number, status, payment_method, payment_status, currency,
            customer_id, customer_name, customer_phone, customer_email, address,
            subtotal, discount, delivery_fee, tax, total, coupon_id, coupon_code, note,
            cart_id, access_hash, idempotency_key, request_hash, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?25)",
    )?
    .execute(params![
        store.uuid(),
        order_id.uuid(),
        number,
        status.as_str(),
        req.payment_method.as_str(),
        PaymentStatus::Pending.as_str(),
        settings.currency.code(),
        customer_id.uuid(),
        req.customer.name,
        req.customer.phone.as_str(),
        req.customer.email,
        serde_json::to_string(&req.address)?,
        totals.subtotal,
        totals.discount,
        totals.delivery_fee,
        totals.tax,
        totals.total,
        coupon_used.as_ref().map(|c| c.id.uuid()),
        coupon_used.as_ref().map(|c| c.code.clone()),
        req.note,
        cart_id.uuid(),
        &token_hash[..],
        idem.map(|k| k.key.clone()),
        idem.map(|k| k.fingerprint.to_vec()),
        now.millis()
    ])?;
    for (i, l) in lines.iter().enumerate() {
        c.prepare_cached(
            "INSERT INTO order_items (store_id, order_id, line, product_id, variant_id, title, variant_title, sku, unit_price, quantity, line_total)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?
        .execute(params![
            store.uuid(),
            order_id.uuid(),
            i as i64,
            l.product_id.uuid(),
            l.variant_id.uuid(),
            l.title,
            l.variant_title,
            l.sku,
            l.price.minor(),
            l.quantity,
            l.price.minor() * i64::from(l.quantity)
        ])?;
    }
    orders::record_step(c, store, order_id, None, status, "shopper", None, None, now)?;
    if req.payment_method == PaymentMethod::Online {
        super::payments::open(c, store, order_id, totals.total, settings.currency.code(), now)?;
    }
    c.prepare_cached(
        "UPDATE carts SET status = 'checked_out', order_id = ?3, updated_at = ?4 WHERE store_id = ?1 AND cart_id = ?2",
    )?
    .execute(params![store.uuid(), cart_id.uuid(), order_id.uuid(), now.millis()])?;
    let order = orders::get(c, store, order_id)?;
    if status == OrderStatus::Placed {
        emit(c, store, kinds::ORDER_PLACED, now, json!(order))?;
    }
    // One writer: each line's stock is the one this sale took from.
    for l in lines.iter().filter(|l| l.stock == Some(i64::from(l.quantity))) {
        emit(c, store, kinds::STOCK_CHANGED, now, crate::log::sold_out(l.product_id, l.variant_id))?;
    }
    Ok((order, false))
}

/// One customer per phone per store; each order refreshes their name and e-mail.
fn upsert_customer(c: &Connection, store: StoreId, req: &Checkout, total: i64, now: Timestamp) -> Result<CustomerId> {
    let phone = req.customer.phone.as_str();
    let existing: Option<Uuid> = c
        .prepare_cached("SELECT customer_id FROM customers WHERE store_id = ?1 AND phone = ?2")?
        .query_row(params![store.uuid(), phone], |r| r.get(0))
        .optional()?;
    let id = match existing {
        Some(id) => {
            c.prepare_cached(
                "UPDATE customers SET name = ?3, email = coalesce(?4, email), orders_count = orders_count + 1,
                    total_spent = total_spent + ?5, last_order_at = ?6
                 WHERE store_id = ?1 AND customer_id = ?2",
            )?
            .execute(params![
                store.uuid(),
                id,
                req.customer.name,
                req.customer.email,
                total,
                now.millis()
            ])?;
            CustomerId::from_uuid(id)
        }
        None => {
            let id = CustomerId::generate();
            c.prepare_cached(
                "INSERT INTO customers (store_id, customer_id, phone, name, email, orders_count, total_spent, first_order_at, last_order_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?7, ?7)",
            )?
            .execute(params![store.uuid(), id.uuid(), phone, req.customer.name, req.customer.email, total, now.millis()])?;
            id
        }
    };
    emit(c, store, kinds::CUSTOMER_UPSERTED, now, json!({ "id": id, "phone": phone, "name": req.customer.name }))?;
    Ok(id)
}
