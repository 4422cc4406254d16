//! The money side of an order: online payments, refunds, platform fees, the double-entry ledger
//! every store keeps, and payouts.
//!
//! The ledger has three accounts per store, and every movement ([`Posting`]) is a set of lines
//! that sum to zero (debits positive, credits negative):
//!
//! | movement       | gateway | merchant | fees |
//! |----------------|---------|----------|------|
//! | online sale A  | +A      | −A       |      |
//! | fee F          |         | +F       | −F   |
//! | refund R       | −R      | +R       |      |
//! | payout P       | −P      | +P       |      |
//!
//! `gateway` is the money the platform holds at its payment provider, `merchant` what it owes
//! the store (a credit: the store's balance is minus the account's sum), `fees` what it earned.
//! Cash on delivery never passes through the platform: such an order only owes its fee, taken
//! from the store's balance. Because every posting balances, the platform's books (all lines of
//! all stores) sum to zero, and a store's balance is the sum of its lines, never a counter.

use serde::{Deserialize, Serialize};

use crate::{EntryId, OrderId, PaymentId, PayoutId, RefundId, Timestamp};

/// Where a payment stands, as the platform has recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentState {
    /// Created at the provider; the shopper has not paid.
    Created,
    /// The shopper paid; the money is held at the provider.
    Authorized,
    /// The money is taken: the sale is in the ledger.
    Captured,
    /// Declined, or the shopper gave up.
    Failed,
    /// Cancelled by the platform before capture (the stock hold timed out).
    Cancelled,
}

impl PaymentState {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentState::Created => "created",
            PaymentState::Authorized => "authorized",
            PaymentState::Captured => "captured",
            PaymentState::Failed => "failed",
            PaymentState::Cancelled => "cancelled",
        }
    }

    pub fn from_stored(s: &str) -> Self {
        match s {
            "authorized" => PaymentState::Authorized,
            "captured" => PaymentState::Captured,
            "failed" => PaymentState::Failed,
            "cancelled" => PaymentState::Cancelled,
            _ => PaymentState::Created,
        }
    }

    /// Whether news of `to` moves a payment in this state. Webhooks arrive late, twice and out
    /// of order: a payment only ever moves forward, so stale news changes nothing. A capture
    /// beats everything (the money was taken, whatever we believed); failure and cancellation
    /// only end a payment that has not been captured.
    pub fn may_become(self, to: PaymentState) -> bool {
        use PaymentState::*;
        match (self, to) {
            (Captured, _) => false,
            (_, Captured) => true,
            (Created, Authorized | Failed | Cancelled) => true,
            (Authorized, Failed | Cancelled) => true,
            _ => false,
        }
    }

    /// Still waiting on the shopper or the provider.
    pub fn is_open(self) -> bool {
        matches!(self, PaymentState::Created | PaymentState::Authorized)
    }
}

/// An online payment for one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Payment {
    pub id: PaymentId,
    pub order_id: OrderId,
    /// The provider's name (`testgw`).
    pub provider: String,
    /// The provider's id, once the provider has the payment.
    pub provider_ref: Option<String>,
    /// The provider's page the shopper pays on.
    pub checkout_url: Option<String>,
    pub state: PaymentState,
    /// Minor units.
    pub amount: i64,
    pub currency: String,
    /// Taken so far (all or nothing in practice).
    pub captured: i64,
    /// Refunded or being refunded: never more than `captured`.
    pub refunded: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    /// Reserved against the payment, not yet confirmed by the provider.
    Pending,
    Succeeded,
    /// The provider refused it; the amount is free to refund again.
    Failed,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Pending => "pending",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "failed",
        }
    }

    pub fn from_stored(s: &str) -> Self {
        match s {
            "succeeded" => RefundStatus::Succeeded,
            "failed" => RefundStatus::Failed,
            _ => RefundStatus::Pending,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Refund {
    pub id: RefundId,
    pub payment_id: PaymentId,
    pub order_id: OrderId,
    pub amount: i64,
    pub reason: Option<String>,
    pub status: RefundStatus,
    /// Who asked: `merchant:<id>` or `system`.
    pub actor: String,
    pub provider_ref: Option<String>,
    /// Why the provider refused it.
    pub error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A platform plan's fee on each order: a percentage with a per-order cap, set by the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeePlan {
    /// Basis points of the order total (200 = 2 %).
    pub percent_bps: u32,
    /// The most one order pays, in minor units; `None`: uncapped.
    pub cap: Option<i64>,
}

impl FeePlan {
    /// The fee on an order of `amount` minor units, rounded half up to the minor unit.
    pub fn fee(&self, amount: i64) -> i64 {
        if amount <= 0 {
            return 0;
        }
        let raw = (i128::from(amount) * i128::from(self.percent_bps) + 5_000) / 10_000;
        let raw = i64::try_from(raw).unwrap_or(i64::MAX);
        self.cap.map_or(raw, |cap| raw.min(cap.max(0)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Account {
    /// The platform's money at its payment provider.
    Gateway,
    /// What the platform owes the store (credit-normal).
    Merchant,
    /// What the platform earned.
    Fees,
}

impl Account {
    pub fn as_str(self) -> &'static str {
        match self {
            Account::Gateway => "gateway",
            Account::Merchant => "merchant",
            Account::Fees => "fees",
        }
    }

    pub fn from_stored(s: &str) -> Self {
        match s {
            "gateway" => Account::Gateway,
            "fees" => Account::Fees,
            _ => Account::Merchant,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Sale,
    Fee,
    Refund,
    Payout,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Sale => "sale",
            EntryKind::Fee => "fee",
            EntryKind::Refund => "refund",
            EntryKind::Payout => "payout",
        }
    }

    pub fn from_stored(s: &str) -> Self {
        match s {
            "sale" => EntryKind::Sale,
            "fee" => EntryKind::Fee,
            "refund" => EntryKind::Refund,
            _ => EntryKind::Payout,
        }
    }
}

/// One balanced movement, before it is written. `key` names what caused it (`sale:<payment>`,
/// `fee:<order>`, `refund:<refund>`, `payout:<payout>`); a store has at most one posting per
/// key, which is what makes applying the same news twice harmless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    pub kind: EntryKind,
    pub key: String,
    pub order_id: Option<OrderId>,
    pub lines: Vec<(Account, i64)>,
}

impl Posting {
    pub fn sale(payment: PaymentId, order: OrderId, amount: i64) -> Posting {
        Posting {
            kind: EntryKind::Sale,
            key: format!("sale:{payment}"),
            order_id: Some(order),
            lines: vec![(Account::Gateway, amount), (Account::Merchant, -amount)],
        }
    }

    /// The platform's fee on an order (one per order, whatever the payment method).
    pub fn fee(order: OrderId, fee: i64) -> Posting {
        Posting {
            kind: EntryKind::Fee,
            key: format!("fee:{order}"),
            order_id: Some(order),
            lines: vec![(Account::Merchant, fee), (Account::Fees, -fee)],
        }
    }

    pub fn refund(refund: RefundId, order: OrderId, amount: i64) -> Posting {
        Posting {
            kind: EntryKind::Refund,
            key: format!("refund:{refund}"),
            order_id: Some(order),
            lines: vec![(Account::Merchant, amount), (Account::Gateway, -amount)],
        }
    }

    pub fn payout(payout: PayoutId, amount: i64) -> Posting {
        Posting {
            kind: EntryKind::Payout,
            key: format!("payout:{payout}"),
            order_id: None,
            lines: vec![(Account::Merchant, amount), (Account::Gateway, -amount)],
        }
    }

    pub fn is_balanced(&self) -> bool {
        self.lines.iter().map(|(_, a)| i128::from(*a)).sum::<i128>() == 0
    }
}

/// A written movement of a store's ledger, with its balanced lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LedgerEntry {
    pub id: EntryId,
    pub kind: EntryKind,
    /// What caused it (see [`Posting`]).
    pub key: String,
    pub order_id: Option<OrderId>,
    /// The payout that settled this entry's merchant line, if any.
    pub payout_id: Option<PayoutId>,
    pub lines: Vec<LedgerLine>,
    pub at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LedgerLine {
    pub account: Account,
    /// Debit positive, credit negative, minor units.
    pub amount: i64,
}

/// The operator's plans and the one a store without its own is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeePlans {
    pub default: String,
    pub plans: std::collections::BTreeMap<String, FeePlan>,
}

impl Default for FeePlans {
    /// One plan, `standard`: 2 % capped at ₹20 an order.
    fn default() -> Self {
        FeePlans {
            default: "standard".into(),
            plans: [("standard".to_string(), FeePlan { percent_bps: 200, cap: Some(2_000) })].into(),
        }
    }
}

impl FeePlans {
    /// The plan a store on `plan` pays (the default plan for none, or one no longer offered).
    pub fn for_store(&self, plan: Option<&str>) -> FeePlan {
        plan.and_then(|p| self.plans.get(p))
            .or_else(|| self.plans.get(&self.default))
            .cloned()
            .unwrap_or(FeePlan { percent_bps: 0, cap: None })
    }
}

/// A store's position, every figure a sum of its ledger lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Balance {
    /// What the platform owes the store now (negative: the store owes fees).
    pub balance: i64,
    /// The part of `balance` the next payout settles: lines of orders that reached their end
    /// (delivered, returned, cancelled, rejected) and not yet paid out.
    pub available: i64,
    /// The part still waiting for its orders to be delivered.
    pub held: i64,
    /// Fees charged, all time.
    pub fees: i64,
    /// Paid out, all time.
    pub paid_out: i64,
    /// Online sales, all time.
    pub sales: i64,
    /// Refunded, all time.
    pub refunded: i64,
}

/// Money sent to the store's bank account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Payout {
    pub id: PayoutId,
    pub amount: i64,
    /// The scheduled run that made it; a store gets at most one payout per run.
    pub slot: Timestamp,
    /// How many ledger lines it settled.
    pub lines: i64,
    pub created_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fees_round_half_up_and_stop_at_the_cap() {
        let plan = FeePlan { percent_bps: 200, cap: Some(2_000) };
        assert_eq!(plan.fee(10_000), 200);
        assert_eq!(plan.fee(125), 3, "2.5 paise rounds up");
        assert_eq!(plan.fee(124), 2);
        assert_eq!(plan.fee(1_000_000), 2_000, "capped at ₹20");
        assert_eq!(plan.fee(0), 0);
        assert_eq!(FeePlan { percent_bps: 200, cap: None }.fee(1_000_000), 20_000);
        assert_eq!(FeePlan { percent_bps: 10_000, cap: None }.fee(i64::MAX), i64::MAX);
    }

    #[test]
    fn a_payment_only_moves_forward_and_a_capture_wins() {
        use PaymentState::*;
        assert!(Created.may_become(Authorized));
        assert!(!Authorized.may_become(Created) && !Authorized.may_become(Authorized));
        assert!(Failed.may_become(Captured) && Cancelled.may_become(Captured), "money taken is money taken");
        assert!(!Captured.may_become(Failed) && !Captured.may_become(Cancelled));
        assert!(!Failed.may_become(Authorized) && !Cancelled.may_become(Failed));
    }

    #[test]
    fn every_posting_balances() {
        let (p, o, r, y) = (PaymentId::generate(), OrderId::generate(), RefundId::generate(), PayoutId::generate());
        for posting in
            [Posting::sale(p, o, 999), Posting::fee(o, 20), Posting::refund(r, o, 5), Posting::payout(y, 974)]
        {
            assert!(posting.is_balanced(), "{posting:?}");
        }
    }
}
