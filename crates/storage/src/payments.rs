//! Payments, refunds, the ledger and payouts as a shard keeps them.
//!
//! The API and the provider's callbacks work on one store at a time (a [`StoreScope`]); the
//! reconciler and the payout run list work shard-wide and then take each store's scope. Every
//! change is one transaction that moves the payment, the order, the stock and the ledger
//! together, so there is no moment at which a captured payment has no sale in the ledger or a
//! declined one still holds stock.
//!
//! Applying the same news twice is harmless by construction: a provider event id is recorded
//! once per store (`payment_events`), a payment only moves forward
//! ([`PaymentState::may_become`]), and a store has at most one ledger posting per cause
//! ([`Posting::key`](kirana_domain::payment::Posting)).

use async_trait::async_trait;
use kirana_domain::order::OrderStatus;
use kirana_domain::page::{Page, PageRequest};
use kirana_domain::payment::{Balance, FeePlans, LedgerEntry, Payment, PaymentState, Payout, Refund};
use kirana_domain::{OrderId, PaymentId, RefundId, StoreId, Timestamp};

use crate::Result;
use crate::scope::StoreScope;

/// What the provider says of a payment (from a webhook, or when asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentNews {
    pub state: PaymentState,
    /// Taken so far, as the provider reports it.
    pub captured: i64,
    /// The provider's event id when the news came by webhook: recorded once per store.
    pub event_id: Option<String>,
}

/// What applying news did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewsApplied {
    /// The event id was seen before: nothing was changed.
    pub duplicate: bool,
    /// Whether the payment moved.
    pub moved: bool,
    pub payment: Payment,
    /// The order's status afterwards.
    pub order_status: OrderStatus,
    /// A refund the platform owes at once (money captured for an order that had already ended),
    /// reserved and waiting to be sent.
    pub refund: Option<Refund>,
}

/// A refund to reserve against an order's payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRefund {
    pub order_id: OrderId,
    pub amount: i64,
    pub reason: Option<String>,
    /// `merchant:<id>` or `system`.
    pub actor: String,
}

#[async_trait]
pub trait Payments: Send + Sync {
    /// The payment of an order paid online (`NotFound` for a cash-on-delivery order).
    async fn payment_for_order(&self, scope: &StoreScope, order: OrderId) -> Result<Payment>;
    async fn payment(&self, scope: &StoreScope, id: PaymentId) -> Result<Payment>;
    /// Records the provider's id and page for a payment the provider has just created.
    async fn attach_provider(
        &self,
        scope: &StoreScope,
        id: PaymentId,
        provider: &str,
        provider_ref: &str,
        checkout_url: &str,
        now: Timestamp,
    ) -> Result<Payment>;
    /// Applies the provider's news of a payment in one transaction: the payment moves forward
    /// only; an authorization or capture places a pending order (`order.placed`); a failure or
    /// cancellation cancels it and releases its stock; a capture writes the sale and the
    /// store's fee to the ledger, and for an order that had already ended reserves a full
    /// refund ([`NewsApplied::refund`]).
    async fn apply_payment_news(
        &self,
        scope: &StoreScope,
        id: PaymentId,
        news: PaymentNews,
        fees: &FeePlans,
        now: Timestamp,
    ) -> Result<NewsApplied>;

    /// Reserves a refund against the order's captured payment (a guarded increment: the sum of
    /// refunds never exceeds the capture, however many race) and records it `pending`.
    async fn begin_refund(&self, scope: &StoreScope, refund: NewRefund, now: Timestamp) -> Result<Refund>;
    /// Settles a pending refund with the provider's answer: `Ok(provider id)` writes it to the
    /// ledger; `Err(reason)` frees its amount. A settled refund is returned unchanged.
    async fn finish_refund(
        &self,
        scope: &StoreScope,
        id: RefundId,
        outcome: std::result::Result<String, String>,
        now: Timestamp,
    ) -> Result<Refund>;
    async fn refunds(&self, scope: &StoreScope, order: OrderId) -> Result<Vec<Refund>>;

    /// Puts the store on one of the operator's fee plans (`None`: the default plan).
    async fn set_plan(&self, scope: &StoreScope, plan: Option<&str>, now: Timestamp) -> Result<()>;
    /// The store's plan, `None` when it is on the default.
    async fn plan(&self, scope: &StoreScope) -> Result<Option<String>>;

    /// The store's balance, every figure a sum of its ledger lines.
    async fn balance(&self, scope: &StoreScope) -> Result<Balance>;
    /// The store's ledger, newest entry first.
    async fn ledger(&self, scope: &StoreScope, page: PageRequest) -> Result<Page<LedgerEntry>>;
    async fn payouts(&self, scope: &StoreScope, page: PageRequest) -> Result<Page<Payout>>;
    /// Settles what the store is owed for orders that reached their end, as the payout of the
    /// scheduled run `slot`: `None` when nothing is owed, or the store already has this run's
    /// payout.
    async fn pay_out(&self, scope: &StoreScope, slot: Timestamp, now: Timestamp) -> Result<Option<Payout>>;

    /// Payments still open (created or authorized) last touched before `before`, shard-wide,
    /// oldest first: the reconciler asks the provider about each.
    async fn open_payments(&self, before: Timestamp, limit: u32) -> Result<Vec<(StoreId, Payment)>>;
    /// Refunds still pending since before `before`, shard-wide: sent again with the same key.
    async fn pending_refunds(&self, before: Timestamp, limit: u32) -> Result<Vec<(StoreId, Refund)>>;
    /// Stores with ledger lines not yet paid out, shard-wide, after `after` in id order.
    async fn stores_with_unpaid_lines(&self, after: Option<StoreId>, limit: u32) -> Result<Vec<StoreId>>;
}
