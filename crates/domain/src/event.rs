//! The outbox envelope. Every state change writes one of these in the same transaction as the
//! change itself; a relay (a later capability) publishes them to the durable log, and consumers
//! deduplicate by `id`.

use serde::Serialize;

use crate::{EventId, StoreId, Timestamp};

/// Event types, `resource.verb`. Consumers match on these strings, so they never change meaning;
/// a new payload shape gets a new `version`.
pub mod kinds {
    pub const STORE_CREATED: &str = "store.created";
    pub const STORE_UPDATED: &str = "store.updated";
    pub const CATEGORY_CREATED: &str = "category.created";
    pub const CATEGORY_UPDATED: &str = "category.updated";
    pub const CATEGORY_DELETED: &str = "category.deleted";
    pub const PRODUCT_CREATED: &str = "product.created";
    pub const PRODUCT_UPDATED: &str = "product.updated";
    pub const PRODUCT_DELETED: &str = "product.deleted";
    pub const STOCK_CHANGED: &str = "stock.changed";
    pub const CART_CREATED: &str = "cart.created";
    pub const CART_UPDATED: &str = "cart.updated";
    pub const ORDER_PLACED: &str = "order.placed";
    pub const ORDER_TRANSITIONED: &str = "order.transitioned";
    pub const CUSTOMER_UPSERTED: &str = "customer.upserted";
    pub const COUPON_CREATED: &str = "coupon.created";
    pub const COUPON_UPDATED: &str = "coupon.updated";
    pub const COUPON_REDEEMED: &str = "coupon.redeemed";
    pub const PAYMENT_UPDATED: &str = "payment.updated";
    pub const REFUND_SUCCEEDED: &str = "refund.succeeded";
    pub const PAYOUT_PAID: &str = "payout.paid";
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub id: EventId,
    pub store_id: StoreId,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub occurred_at: Timestamp,
    pub payload: serde_json::Value,
}

impl Event {
    pub fn new(store_id: StoreId, kind: &str, occurred_at: Timestamp, payload: serde_json::Value) -> Self {
        Event { id: EventId::generate(), store_id, kind: kind.to_string(), version: 1, occurred_at, payload }
    }
}
