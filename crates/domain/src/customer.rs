//! Customers: recorded from the orders shoppers place, one per phone number per store.

use serde::Serialize;

use crate::{CustomerId, Phone, Timestamp};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Customer {
    pub id: CustomerId,
    pub phone: Phone,
    pub name: String,
    pub email: Option<String>,
    pub orders_count: i64,
    /// Sum of order totals, in the store's currency's minor units.
    pub total_spent: i64,
    pub first_order_at: Timestamp,
    pub last_order_at: Timestamp,
}
