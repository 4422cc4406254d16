//! Orders and their state machine.
//!
//! ```text
//! pending_payment → placed          (online: once the payment is authorized)
//!   └→ cancelled                    (declined, or not paid in time: stock released)
//! placed → accepted → packed → shipped → delivered → returned
//!   │          │         │
//!   ├→ rejected└→ cancelled (any time before shipped)
//! ```
//! Rejecting, cancelling and returning put the stock back.

use serde::{Deserialize, Serialize};

use crate::pricing::Totals;
use crate::text::{self, limits};
use crate::validate::{Checker, Invalid, checked};
use crate::{Amount, Currency, CustomerId, OrderId, Phone, ProductId, Timestamp, VariantId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Paid online and not yet authorized: the stock is held, the merchant does not see it yet.
    PendingPayment,
    Placed,
    Accepted,
    Packed,
    Shipped,
    Delivered,
    Rejected,
    Cancelled,
    Returned,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 9] = [
        OrderStatus::PendingPayment,
        OrderStatus::Placed,
        OrderStatus::Accepted,
        OrderStatus::Packed,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Rejected,
        OrderStatus::Cancelled,
        OrderStatus::Returned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::PendingPayment => "pending_payment",
            OrderStatus::Placed => "placed",
            OrderStatus::Accepted => "accepted",
            OrderStatus::Packed => "packed",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Returned => "returned",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        OrderStatus::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| {
            let all: Vec<_> = OrderStatus::ALL.iter().map(|s| s.as_str()).collect();
            format!("must be one of: {}", all.join(", "))
        })
    }

    /// The whole state machine.
    pub fn can_become(self, to: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, to),
            // Placing a pending order is the payment's doing (`payment::PaymentState`), never a
            // merchant's step: only cancelling is.
            (PendingPayment, Cancelled)
                | (Placed, Accepted)
                | (Placed, Rejected)
                | (Placed, Cancelled)
                | (Accepted, Packed)
                | (Accepted, Cancelled)
                | (Packed, Shipped)
                | (Packed, Cancelled)
                | (Shipped, Delivered)
                | (Delivered, Returned)
        )
    }

    /// Whether arriving in this state puts the order's units back in stock.
    pub fn restocks(self) -> bool {
        matches!(self, OrderStatus::Rejected | OrderStatus::Cancelled | OrderStatus::Returned)
    }

    /// The states an order may move to from here, for clients that draw buttons.
    pub fn next(self) -> Vec<OrderStatus> {
        OrderStatus::ALL.into_iter().filter(|to| self.can_become(*to)).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    /// Cash on delivery.
    Cod,
    /// Paid online through the store's payment gateway.
    Online,
}

impl PaymentMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentMethod::Cod => "cod",
            PaymentMethod::Online => "online",
        }
    }

    pub fn from_stored(s: &str) -> Self {
        if s == "online" { PaymentMethod::Online } else { PaymentMethod::Cod }
    }

    /// Where a new order starts: cash on delivery is placed at once; an online payment holds
    /// the stock until the provider authorizes it.
    pub fn first_status(self) -> OrderStatus {
        match self {
            PaymentMethod::Cod => OrderStatus::Placed,
            PaymentMethod::Online => OrderStatus::PendingPayment,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Not yet collected (cash on delivery before delivery, or online payment awaited).
    Pending,
    Paid,
    /// The order ended before any money changed hands.
    Voided,
    /// Money was collected and the order came back: the merchant owes a refund.
    RefundDue,
    /// Part of an online payment went back to the shopper.
    PartiallyRefunded,
    /// All of an online payment went back to the shopper.
    Refunded,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Paid => "paid",
            PaymentStatus::Voided => "voided",
            PaymentStatus::RefundDue => "refund_due",
            PaymentStatus::PartiallyRefunded => "partially_refunded",
            PaymentStatus::Refunded => "refunded",
        }
    }

    pub fn from_stored(s: &str) -> Self {
        match s {
            "paid" => PaymentStatus::Paid,
            "voided" => PaymentStatus::Voided,
            "refund_due" => PaymentStatus::RefundDue,
            "partially_refunded" => PaymentStatus::PartiallyRefunded,
            "refunded" => PaymentStatus::Refunded,
            _ => PaymentStatus::Pending,
        }
    }

    /// What a status change does to the payment. Cash is collected on delivery.
    pub fn after(self, method: PaymentMethod, to: OrderStatus) -> PaymentStatus {
        match (self, to) {
            (PaymentStatus::Pending, OrderStatus::Delivered) if method == PaymentMethod::Cod => PaymentStatus::Paid,
            (PaymentStatus::Pending, OrderStatus::Rejected | OrderStatus::Cancelled) => PaymentStatus::Voided,
            (
                PaymentStatus::Paid | PaymentStatus::PartiallyRefunded,
                OrderStatus::Rejected | OrderStatus::Cancelled | OrderStatus::Returned,
            ) => PaymentStatus::RefundDue,
            (s, _) => s,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Address {
    pub line1: String,
    pub line2: Option<String>,
    pub landmark: Option<String>,
    pub city: String,
    pub state: Option<String>,
    pub postal_code: String,
    pub country: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OrderCustomer {
    pub id: CustomerId,
    pub name: String,
    pub phone: Phone,
    pub email: Option<String>,
}

/// A line of an order: the catalog's words and price copied at the moment of checkout, so later
/// edits to the product never change what was sold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OrderItem {
    pub product_id: ProductId,
    pub variant_id: VariantId,
    pub title: String,
    pub variant_title: String,
    pub sku: Option<String>,
    pub unit_price: Amount,
    pub quantity: u32,
    pub line_total: i64,
}

/// One step in an order's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Transition {
    pub from: Option<OrderStatus>,
    pub to: OrderStatus,
    /// Who made the change: `shopper`, `merchant:<id>` or `system`.
    pub actor: String,
    pub note: Option<String>,
    pub tracking: Option<String>,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Order {
    pub id: OrderId,
    /// The store's own running number, for people (#1001, #1002…).
    pub number: i64,
    pub status: OrderStatus,
    /// Where it may go next.
    pub next_statuses: Vec<OrderStatus>,
    pub payment_method: PaymentMethod,
    pub payment_status: PaymentStatus,
    pub currency: Currency,
    pub customer: OrderCustomer,
    pub address: Address,
    pub items: Vec<OrderItem>,
    pub totals: Totals,
    pub coupon_code: Option<String>,
    pub note: Option<String>,
    pub tracking: Option<String>,
    pub history: Vec<Transition>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A status step as the shopper sees it: no internal notes or staff names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PublicTransition {
    pub to: OrderStatus,
    pub tracking: Option<String>,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PublicOrder {
    pub id: OrderId,
    pub number: i64,
    pub status: OrderStatus,
    pub payment_method: PaymentMethod,
    pub payment_status: PaymentStatus,
    pub currency: Currency,
    pub items: Vec<OrderItem>,
    pub totals: Totals,
    pub coupon_code: Option<String>,
    pub address: Address,
    pub tracking: Option<String>,
    pub history: Vec<PublicTransition>,
    pub created_at: Timestamp,
    /// While the order awaits online payment: the provider's page the shopper pays on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_url: Option<String>,
}

impl From<Order> for PublicOrder {
    fn from(o: Order) -> Self {
        PublicOrder {
            id: o.id,
            number: o.number,
            status: o.status,
            payment_method: o.payment_method,
            payment_status: o.payment_status,
            currency: o.currency,
            items: o.items,
            totals: o.totals,
            coupon_code: o.coupon_code,
            address: o.address,
            tracking: o.tracking,
            history: o
                .history
                .into_iter()
                .map(|t| PublicTransition { to: t.to, tracking: t.tracking, at: t.at })
                .collect(),
            created_at: o.created_at,
            payment_url: None,
        }
    }
}

/// The body of `POST /orders/{id}/transitions`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionInput {
    pub to: String,
    pub note: Option<String>,
    /// The carrier's tracking number; only when moving to `shipped`.
    pub tracking: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionRequest {
    pub to: OrderStatus,
    pub note: Option<String>,
    pub tracking: Option<String>,
}

impl TransitionInput {
    pub fn parse(self) -> Result<TransitionRequest, Invalid> {
        let mut c = Checker::new();
        let to = c.check("to", OrderStatus::parse(&self.to));
        let note = c.check_opt("note", self.note, |n| text::multiline(&n, limits::NOTE));
        let tracking = c.check_opt("tracking", self.tracking, |t| text::line(&t, 1, 100));
        if let (Some(to), Some(Some(_))) = (to, &tracking)
            && to != OrderStatus::Shipped
        {
            c.fail("tracking", "can only be given when the order moves to shipped");
        }
        c.finish()?;
        Ok(TransitionRequest {
            to: checked(to),
            note: checked(note).filter(|n| !n.is_empty()),
            tracking: checked(tracking),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus::*;

    #[test]
    fn the_happy_path_is_allowed() {
        for (a, b) in
            [(Placed, Accepted), (Accepted, Packed), (Packed, Shipped), (Shipped, Delivered), (Delivered, Returned)]
        {
            assert!(a.can_become(b), "{a:?} → {b:?}");
        }
    }

    #[test]
    fn cancelling_is_possible_only_before_shipping_and_rejecting_only_when_placed() {
        for s in OrderStatus::ALL {
            assert_eq!(s.can_become(Cancelled), matches!(s, PendingPayment | Placed | Accepted | Packed), "{s:?}");
            assert_eq!(s.can_become(Rejected), s == Placed, "{s:?}");
        }
    }

    #[test]
    fn terminal_states_go_nowhere() {
        for s in [Rejected, Cancelled, Returned] {
            assert!(s.next().is_empty(), "{s:?}");
        }
        // Ten edges in all: anything else is refused.
        let edges = OrderStatus::ALL.iter().map(|s| s.next().len()).sum::<usize>();
        assert_eq!(edges, 10);
    }

    #[test]
    fn an_unpaid_order_can_only_be_cancelled_by_hand() {
        assert_eq!(PendingPayment.next(), [Cancelled], "placing it is the payment's doing");
        assert_eq!(PaymentMethod::Online.first_status(), PendingPayment);
        assert_eq!(PaymentMethod::Cod.first_status(), Placed);
    }

    #[test]
    fn only_ending_states_restock() {
        let restocking: Vec<_> = OrderStatus::ALL.into_iter().filter(|s| s.restocks()).collect();
        assert_eq!(restocking, [Rejected, Cancelled, Returned]);
    }

    #[test]
    fn cash_is_paid_on_delivery_and_owed_back_on_return() {
        let p = PaymentStatus::Pending.after(PaymentMethod::Cod, Delivered);
        assert_eq!(p, PaymentStatus::Paid);
        assert_eq!(p.after(PaymentMethod::Cod, Returned), PaymentStatus::RefundDue);
        assert_eq!(PaymentStatus::Pending.after(PaymentMethod::Cod, Cancelled), PaymentStatus::Voided);
        assert_eq!(PaymentStatus::Pending.after(PaymentMethod::Online, Delivered), PaymentStatus::Pending);
    }

    #[test]
    fn tracking_belongs_to_shipping() {
        let bad = TransitionInput { to: "accepted".into(), note: None, tracking: Some("AWB1".into()) };
        assert_eq!(bad.parse().unwrap_err().0[0].field, "tracking");
        let unknown = TransitionInput { to: "teleported".into(), note: None, tracking: None };
        assert_eq!(unknown.parse().unwrap_err().0[0].field, "to");
    }
}
