//! Checkout: a cart becomes an order in one transaction. The port of `sqlite::shard::checkout`,
//! with the same validation, errors and events.
//!
//! Order of work, all inside the caller's transaction (any refusal rolls back everything):
//! 1. an `Idempotency-Key` seen before answers with its order (or refuses a different request);
//! 2. the cart opens with its token and is still open;
//! 3. every line is priced from the catalog and its stock taken with a guarded decrement
//!    (`stock = stock - n WHERE stock >= n`): a line that cannot be had is reported by name;
//! 4. the coupon is redeemed with a guarded increment of its use count;
//! 5. the customer is recorded, the order written with its lines and first history step, the
//!    cart closed, and the `order.placed` event appended to the outbox (for an order paid
//!    online, when the provider authorizes its payment: it starts `pending_payment`).
//!
//! Concurrent checkouts on PostgreSQL, and what keeps each answer the one SQLite would give:
//! - the same `Idempotency-Key`: a transaction-scoped advisory lock on the key is taken before
//!   it is looked up, so the second sees the first's order once the first commits;
//! - the same cart: it is opened `FOR UPDATE`, so the second sees it checked out;
//! - the same variants: their rows are locked in id order before the lines are read (so the
//!   prices and stock checked are the ones sold, and two carts never deadlock), and the
//!   guarded decrement is still what refuses a sale the stock cannot cover (the table's CHECK
//!   backs it);
//! - the same coupon: its row is read `FOR UPDATE` and redeemed with the guarded increment;
//! - the same customer: an upsert on `customers_by_phone`;
//! - the order number: the store's counter, whose row lock holds rival checkouts of the store
//!   until this one ends (so numbers are gap-free among committed orders).
//!
//! Locks are always taken in that order (key, cart, variants, coupon, customer, store), and
//! transitions take an order and then its variants in id order, so no two wait in a cycle.

use deadpool_postgres::GenericClient;
use kirana_domain::cart::{CartStatus, Checkout, Shortage};
use kirana_domain::coupon::CouponRejection;
use kirana_domain::event::kinds;
use kirana_domain::order::{Order, OrderStatus, PaymentMethod, PaymentStatus};
use kirana_domain::pricing;
use kirana_domain::{CartId, CustomerId, OrderId, StoreId, Timestamp};
use serde_json::json;
use uuid::Uuid;

use super::carts::{self, terms};
use super::{coupons, emit, exec, lock, one, opt, orders, stores};
use crate::Result;
use crate::error::{ConflictKind, StorageError};
use crate::shard::IdempotencyKey;

#[allow(clippy::too_many_arguments)]
pub async fn checkout<C: GenericClient>(
    c: &C,
    store: StoreId,
    cart_id: CartId,
    token_hash: [u8; 32],
    req: &Checkout,
    idem: Option<&IdempotencyKey>,
    now: Timestamp,
) -> Result<(Order, bool)> {
    if let Some(k) = idem {
        lock(c, &format!("idempotency:{store}:{}", k.key)).await?;
    }
    let cart = carts::open(c, store, cart_id, token_hash, now, true).await?;
    if let Some(k) = idem {
        let seen = opt(
            c,
            "SELECT order_id, request_hash FROM orders WHERE store_id = $1 AND idempotency_key = $2",
            &[&store.uuid(), &k.key],
        )
        .await?;
        if let Some(r) = seen {
            let fingerprint: Option<&[u8]> = r.get(1);
            if fingerprint != Some(&k.fingerprint[..]) {
                return Err(StorageError::conflict(
                    ConflictKind::IdempotencyKeyReused,
                    Some("Idempotency-Key"),
                    "this Idempotency-Key was used for a different request",
                ));
            }
            return Ok((orders::get(c, store, OrderId::from_uuid(r.get(0))).await?, true));
        }
    }
    if cart.status == CartStatus::CheckedOut {
        let number = match cart.order_id {
            Some(o) => match orders::get(c, store, o).await {
                Ok(o) => format!(" as order #{}", o.number),
                Err(StorageError::NotFound) => String::new(),
                Err(e) => return Err(e),
            },
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

    let store_row = stores::get(c, store).await?;
    let settings = &store_row.settings;
    let allowed = match req.payment_method {
        PaymentMethod::Cod => settings.cod_enabled,
        PaymentMethod::Online => settings.online_payment_enabled,
    };
    if !allowed {
        return Err(StorageError::invalid("payment_method", "is not accepted by this store"));
    }

    // The cart's variants, locked in id order until this transaction ends; the lines read next
    // see them as they are now, not as the transaction's first statement did.
    exec(
        c,
        "SELECT v.variant_id FROM cart_items ci
         JOIN variants v ON v.store_id = ci.store_id AND v.variant_id = ci.variant_id
         WHERE ci.store_id = $1 AND ci.cart_id = $2
         ORDER BY v.variant_id FOR UPDATE OF v",
        &[&store.uuid(), &cart_id.uuid()],
    )
    .await?;
    let lines = carts::lines(c, store, cart_id).await?;
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
    let mut tracked: Vec<&carts::LiveLine> = lines.iter().filter(|l| l.stock.is_some()).collect();
    tracked.sort_by_key(|l| l.variant_id.uuid());
    for l in tracked {
        // The oversell protection that does not depend on the locks above: a sale the stock
        // cannot cover changes no row.
        let taken = exec(
            c,
            "UPDATE variants SET stock = stock - $3
             WHERE store_id = $1 AND variant_id = $2 AND stock IS NOT NULL AND stock >= $3",
            &[&store.uuid(), &l.variant_id.uuid(), &i64::from(l.quantity)],
        )
        .await?;
        if taken == 0 {
            let left: Option<i64> = opt(
                c,
                "SELECT stock FROM variants WHERE store_id = $1 AND variant_id = $2",
                &[&store.uuid(), &l.variant_id.uuid()],
            )
            .await?
            .and_then(|r| r.get(0));
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
        let coupon =
            coupons::by_code_for_update(c, store, code).await?.ok_or(StorageError::Coupon(CouponRejection::Unknown))?;
        discount = coupon.discount(subtotal, now).map_err(StorageError::Coupon)?;
        let redeemed = exec(
            c,
            "UPDATE coupons SET used_count = used_count + 1, updated_at = $3
             WHERE store_id = $1 AND coupon_id = $2 AND (usage_limit IS NULL OR used_count < usage_limit)",
            &[&store.uuid(), &coupon.id.uuid(), &now.millis()],
        )
        .await?;
        if redeemed == 0 {
            return Err(StorageError::Coupon(CouponRejection::UsedUp));
        }
        coupon_used = Some(coupon);
    }
    let totals = pricing::totals(subtotal, discount, &terms(settings));

    let customer_id = upsert_customer(c, store, req, totals.total, now).await?;
    let number = stores::next_order_number(c, store).await?;
    let order_id = OrderId::generate();
    let status = req.payment_method.first_status();
    exec(
        c,
        "INSERT INTO orders (store_id, order_id, number, status, payment_method, payment_status, currency,
            customer_id, customer_name, customer_phone, customer_email, address,
            subtotal, discount, delivery_fee, tax, total, coupon_id, coupon_code, note,
            cart_id, access_hash, idempotency_key, request_hash, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
            $21, $22, $23, $24, $25, $25)",
        &[
            &store.uuid(),
            &order_id.uuid(),
            &number,
            &status.as_str(),
            &req.payment_method.as_str(),
            &PaymentStatus::Pending.as_str(),
            &settings.currency.code(),
            &customer_id.uuid(),
            &req.customer.name,
            &req.customer.phone.as_str(),
            &req.customer.email,
            &serde_json::to_string(&req.address)?,
            &totals.subtotal,
            &totals.discount,
            &totals.delivery_fee,
            &totals.tax,
            &totals.total,
            &coupon_used.as_ref().map(|c| c.id.uuid()),
            &coupon_used.as_ref().map(|c| c.code.clone()),
            &req.note,
            &cart_id.uuid(),
            &&token_hash[..],
            &idem.map(|k| k.key.clone()),
            &idem.map(|k| k.fingerprint.to_vec()),
            &now.millis(),
        ],
    )
    .await?;
    for (i, l) in lines.iter().enumerate() {
        exec(
            c,
            "INSERT INTO order_items (store_id, order_id, line, product_id, variant_id, title, variant_title, sku,
                unit_price, quantity, line_total)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                &store.uuid(),
                &order_id.uuid(),
                &(i as i64),
                &l.product_id.uuid(),
                &l.variant_id.uuid(),
                &l.title,
                &l.variant_title,
                &l.sku,
                &l.price.minor(),
                &i64::from(l.quantity),
                &(l.price.minor() * i64::from(l.quantity)),
            ],
        )
        .await?;
    }
    orders::record_step(c, store, order_id, None, status, "shopper", None, None, now).await?;
    if req.payment_method == PaymentMethod::Online {
        super::payments::open(c, store, order_id, totals.total, settings.currency.code(), now).await?;
    }
    exec(
        c,
        "UPDATE carts SET status = 'checked_out', order_id = $3, updated_at = $4 WHERE store_id = $1 AND cart_id = $2",
        &[&store.uuid(), &cart_id.uuid(), &order_id.uuid(), &now.millis()],
    )
    .await?;
    let order = orders::get(c, store, order_id).await?;
    if status == OrderStatus::Placed {
        emit(c, store, kinds::ORDER_PLACED, now, json!(order)).await?;
    }
    // The locks above make each line's stock the one this sale took from.
    for l in lines.iter().filter(|l| l.stock == Some(i64::from(l.quantity))) {
        emit(c, store, kinds::STOCK_CHANGED, now, crate::log::sold_out(l.product_id, l.variant_id)).await?;
    }
    Ok((order, false))
}

/// One customer per phone per store; each order refreshes their name and e-mail. An upsert on
/// `customers_by_phone`, so two first orders from one phone at once make one customer.
async fn upsert_customer<C: GenericClient>(
    c: &C,
    store: StoreId,
    req: &Checkout,
    total: i64,
    now: Timestamp,
) -> Result<CustomerId> {
    let phone = req.customer.phone.as_str();
    let id: Uuid = one(
        c,
        "INSERT INTO customers (store_id, customer_id, phone, name, email, orders_count, total_spent, first_order_at, last_order_at)
         VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $7)
         ON CONFLICT (store_id, phone) DO UPDATE SET
            name = EXCLUDED.name, email = coalesce(EXCLUDED.email, customers.email),
            orders_count = customers.orders_count + 1, total_spent = customers.total_spent + EXCLUDED.total_spent,
            last_order_at = EXCLUDED.last_order_at
         RETURNING customer_id",
        &[&store.uuid(), &CustomerId::generate().uuid(), &phone, &req.customer.name, &req.customer.email, &total, &now.millis()],
    )
    .await?
    .get(0);
    let id = CustomerId::from_uuid(id);
    emit(c, store, kinds::CUSTOMER_UPSERTED, now, json!({ "id": id, "phone": phone, "name": req.customer.name }))
        .await?;
    Ok(id)
}
