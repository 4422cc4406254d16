//! Online payments through the configured provider: starting one at checkout, the provider's
//! signed webhooks, refunds, and the two workers — the reconciler, which asks the provider about
//! payments left open so a lost webhook never leaves a paid order unpaid (or a stock hold
//! forever), and the payout run, which settles delivered orders on the operator's schedule.
//!
//! The provider is reached through [`PaymentProvider`], whose implementation bounds every call
//! and sits behind a circuit breaker: while it is open, checkout offers online payment as
//! unavailable (503 naming `payment_method`) and cash on delivery goes on working. Every change
//! to money is applied by storage in one transaction ([`kirana_storage::payments`]); this
//! module only talks to the provider and hands storage what it said.

use std::sync::Arc;
use std::time::Duration;

use kirana_domain::order::Order;
use kirana_domain::payment::{FeePlans, Payment, PaymentState, Refund, RefundStatus};
use kirana_domain::{PaymentId, StoreId, Timestamp};
use kirana_payments::{CreatePayment, PaymentProvider, ProviderError, RemotePayment, RemoteStatus};
use kirana_storage::payments::{NewRefund, PaymentNews};
use kirana_storage::{Storage, StorageError, StoreScope};
use tokio::sync::watch;

use crate::error::ApiError;

/// How payments behave, from the operator's configuration.
#[derive(Debug, Clone)]
pub struct PaymentSettings {
    /// Fees per plan.
    pub fees: FeePlans,
    /// How long an unpaid online order holds its stock.
    pub hold: Duration,
    /// A payment untouched this long is asked about (its webhook may be lost).
    pub reconcile_after: Duration,
    /// How often the reconciler looks.
    pub reconcile_every: Duration,
    /// When payouts run, as minutes after midnight India time (IST, UTC+5:30).
    pub payout_times: Vec<u32>,
    /// The platform's public address: the default return from the provider's page is the
    /// order's page on the storefront here.
    pub public_url: String,
}

impl Default for PaymentSettings {
    fn default() -> Self {
        PaymentSettings {
            fees: FeePlans::default(),
            hold: Duration::from_secs(15 * 60),
            reconcile_after: Duration::from_secs(120),
            reconcile_every: Duration::from_secs(30),
            // 10:00, 15:00 and 20:00 IST: three a day.
            payout_times: vec![600, 900, 1200],
            public_url: "http://localhost:8080".into(),
        }
    }
}

/// The platform's payments: the provider (none configured: online payment is unavailable) and
/// the settings.
#[derive(Clone)]
pub struct Payments {
    provider: Option<Arc<dyn PaymentProvider>>,
    settings: Arc<PaymentSettings>,
}

impl Default for Payments {
    fn default() -> Self {
        Payments { provider: None, settings: Arc::new(PaymentSettings::default()) }
    }
}

/// What one reconciler round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    /// Open payments asked about.
    pub checked: usize,
    /// Of those, how many moved.
    pub moved: usize,
    /// Holds that ran out: payments cancelled and their stock released.
    pub expired: usize,
    /// Pending refunds sent again.
    pub refunds: usize,
}

/// What a webhook did, for its answer and the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    Applied,
    Duplicate,
    /// Stale news (the payment had moved further already).
    Unchanged,
}

const IST_OFFSET_MS: i64 = (5 * 60 + 30) * 60_000;
const DAY_MS: i64 = 24 * 3_600_000;

impl Payments {
    pub fn new(provider: Option<Arc<dyn PaymentProvider>>, settings: PaymentSettings) -> Self {
        Payments { provider, settings: Arc::new(settings) }
    }

    pub fn settings(&self) -> &PaymentSettings {
        &self.settings
    }

    pub fn fees(&self) -> &FeePlans {
        &self.settings.fees
    }

    /// The configured provider's name, as its webhook path carries it.
    pub fn provider_name(&self) -> Option<&'static str> {
        self.provider.as_ref().map(|p| p.name())
    }

    /// Whether checkout may offer online payment now.
    pub fn available(&self) -> bool {
        self.provider.as_ref().is_some_and(|p| p.available())
    }

    fn provider(&self) -> Result<&dyn PaymentProvider, ApiError> {
        match &self.provider {
            Some(p) if p.available() => Ok(p.as_ref()),
            Some(_) => Err(unavailable("the payment provider is not answering")),
            None => Err(unavailable("online payment is not set up on this platform")),
        }
    }

    /// Refuses an online checkout before it takes stock, when the provider cannot be reached.
    pub fn check_online(&self) -> Result<(), ApiError> {
        self.provider().map(|_| ())
    }

    /// Creates the provider's side of an order's payment (idempotent: the payment's id is the
    /// reference) and records where the shopper pays. When the provider cannot, the order is
    /// cancelled at once (its stock released) and the shopper told to pay another way.
    pub async fn start(
        &self,
        storage: &Storage,
        scope: &StoreScope,
        order: &Order,
        return_url: &str,
        now: Timestamp,
    ) -> Result<Payment, ApiError> {
        let shard = storage.shard(scope);
        let payment = shard.payments().payment_for_order(scope, order.id).await?;
        if payment.checkout_url.is_some() {
            return Ok(payment);
        }
        let provider = self.provider()?;
        let remote = provider
            .create(&CreatePayment {
                reference: payment.id.to_string(),
                amount: payment.amount,
                currency: payment.currency.clone(),
                store_id: scope.store_id().to_string(),
                order_id: order.id.to_string(),
                return_url: return_url.to_string(),
            })
            .await;
        let remote = match remote {
            Ok(r) => r,
            Err(e) => {
                // The shopper cannot pay: the order ends now and its stock goes back, rather
                // than waiting out the hold. (A payment the provider did create after all is
                // refunded if it is ever captured.)
                tracing::warn!(order = %order.id, error = %e, "the provider could not create a payment");
                self.cancel_here(storage, scope, payment.id, now).await?;
                let why = match e {
                    ProviderError::Unavailable(why) | ProviderError::Rejected(why) | ProviderError::NotFound(why) => {
                        why
                    }
                };
                return Err(unavailable(&why));
            }
        };
        Ok(shard
            .payments()
            .attach_provider(scope, payment.id, provider.name(), &remote.id, &remote.checkout_url, now)
            .await?)
    }

    /// A provider webhook: signature and age checked, then applied once.
    pub async fn on_webhook(
        &self,
        storage: &Storage,
        signature: Option<&str>,
        body: &[u8],
        now: Timestamp,
    ) -> Result<WebhookOutcome, ApiError> {
        let provider = self.provider.as_ref().ok_or(ApiError::NotFound)?;
        let event = provider
            .verify_webhook(signature, body, now.millis() / 1000)
            .map_err(|e| ApiError::Unauthorized(webhook_refusal(&e)))?;
        let (scope, id) = self.locate(storage, &event.payment).await?;
        let applied = self.apply(storage, &scope, id, &event.payment, Some(event.id.clone()), now).await?;
        Ok(match applied {
            Some(true) => WebhookOutcome::Applied,
            Some(false) => WebhookOutcome::Unchanged,
            None => WebhookOutcome::Duplicate,
        })
    }

    /// The store and payment a provider's payment belongs to, from the references we gave it.
    async fn locate(&self, storage: &Storage, remote: &RemotePayment) -> Result<(StoreScope, PaymentId), ApiError> {
        let store = StoreId::parse(&remote.store_id).ok_or(ApiError::NotFound)?;
        let id = PaymentId::parse(&remote.reference).ok_or(ApiError::NotFound)?;
        let scope = storage.scope_for_platform(store).await?;
        Ok((scope, id))
    }

    /// Applies what the provider says; an authorization is captured at once (the platform
    /// captures automatically, as most stores do), and money that arrived for an order that had
    /// ended goes straight back. `Some(moved)`, or `None` for an event seen before.
    async fn apply(
        &self,
        storage: &Storage,
        scope: &StoreScope,
        id: PaymentId,
        remote: &RemotePayment,
        event: Option<String>,
        now: Timestamp,
    ) -> Result<Option<bool>, ApiError> {
        let payments = storage.shard(scope).payments();
        let ours = payments.payment(scope, id).await?;
        if remote.order_id != ours.order_id.to_string() || remote.amount != ours.amount {
            tracing::error!(payment = %id, provider_ref = %remote.id, "provider news does not match the payment; ignored");
            return Err(ApiError::Invalid(kirana_domain::Invalid::field(
                "payment",
                "does not match the order it names",
            )));
        }
        let news = PaymentNews { state: state_of(remote.status), captured: remote.captured, event_id: event };
        let applied = payments.apply_payment_news(scope, id, news, self.fees(), now).await?;
        if applied.duplicate {
            return Ok(None);
        }
        if applied.moved {
            metrics::counter!("kirana_payments_total", "state" => applied.payment.state.as_str()).increment(1);
        }
        if let Some(refund) = applied.refund {
            self.send_refund(storage, scope, refund, now).await?;
        }
        if applied.payment.state == PaymentState::Authorized {
            self.capture(storage, scope, &applied.payment, now).await?;
        }
        if remote.status == RemoteStatus::Authorized
            && matches!(applied.payment.state, PaymentState::Cancelled | PaymentState::Failed)
        {
            // The shopper paid a payment whose hold had already ended: the money is only held,
            // so it is released rather than taken and refunded.
            match self.provider()?.cancel(&remote.id).await {
                Ok(_) => tracing::info!(payment = %id, "voided a payment authorized after its order ended"),
                Err(e) => tracing::warn!(payment = %id, error = %e, "could not void a late authorization"),
            }
        }
        Ok(Some(applied.moved))
    }

    async fn capture(
        &self,
        storage: &Storage,
        scope: &StoreScope,
        p: &Payment,
        now: Timestamp,
    ) -> Result<(), ApiError> {
        let Some(reference) = &p.provider_ref else { return Ok(()) };
        // A capture that fails leaves the payment authorized; the reconciler captures it later.
        let remote = match self.provider()?.capture(reference, p.amount).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(payment = %p.id, error = %e, "capture failed; the reconciler will retry");
                return Ok(());
            }
        };
        let news = PaymentNews { state: state_of(remote.status), captured: remote.captured, event_id: None };
        let applied = storage.shard(scope).payments().apply_payment_news(scope, p.id, news, self.fees(), now).await?;
        if let Some(refund) = applied.refund {
            self.send_refund(storage, scope, refund, now).await?;
        }
        Ok(())
    }

    /// Asks the provider about a payment and applies the answer (the shopper's return from the
    /// provider's page does this, so the order page is right even before the webhook).
    pub async fn refresh(
        &self,
        storage: &Storage,
        scope: &StoreScope,
        p: &Payment,
        now: Timestamp,
    ) -> Result<(), ApiError> {
        let Some(reference) = &p.provider_ref else { return Ok(()) };
        let remote = self.provider()?.fetch(reference).await.map_err(provider_error)?;
        self.apply(storage, scope, p.id, &remote, None, now).await?;
        Ok(())
    }

    /// Reserves a refund and sends it. A provider that is down leaves it pending (202 for the
    /// caller); the reconciler sends it again with the same key.
    pub async fn refund(
        &self,
        storage: &Storage,
        scope: &StoreScope,
        new: NewRefund,
        now: Timestamp,
    ) -> Result<Refund, ApiError> {
        let refund = storage.shard(scope).payments().begin_refund(scope, new, now).await?;
        self.send_refund(storage, scope, refund, now).await
    }

    async fn send_refund(
        &self,
        storage: &Storage,
        scope: &StoreScope,
        refund: Refund,
        now: Timestamp,
    ) -> Result<Refund, ApiError> {
        let payments = storage.shard(scope).payments();
        let payment = payments.payment(scope, refund.payment_id).await?;
        let (Some(reference), Some(provider)) = (&payment.provider_ref, &self.provider) else {
            return Ok(refund);
        };
        if !provider.available() {
            return Ok(refund);
        }
        let outcome = match provider.refund(reference, refund.amount, &refund.id.to_string()).await {
            Ok(r) => Ok(r.id),
            Err(ProviderError::Rejected(why)) | Err(ProviderError::NotFound(why)) => Err(why),
            Err(ProviderError::Unavailable(why)) => {
                tracing::warn!(refund = %refund.id, error = %why, "refund not sent; the reconciler will retry");
                return Ok(refund);
            }
        };
        let done = payments.finish_refund(scope, refund.id, outcome, now).await?;
        metrics::counter!("kirana_refunds_total", "status" => done.status.as_str()).increment(1);
        Ok(done)
    }

    /// One reconciler round over every shard: open payments untouched for a while are asked
    /// about; holds past their time are cancelled (at the provider when it answers, here in any
    /// case, so stock is never held forever); pending refunds are sent again.
    pub async fn reconcile_once(&self, storage: &Storage, now: Timestamp) -> Result<Reconciled, ApiError> {
        let mut done = Reconciled::default();
        let before = Timestamp::from_millis(now.millis() - self.settings.reconcile_after.as_millis() as i64);
        let hold_ms = self.settings.hold.as_millis() as i64;
        for shard in storage.all_shards() {
            for (store, p) in shard.payments().open_payments(before, 200).await? {
                done.checked += 1;
                let Ok(scope) = storage.scope_for_platform(store).await else { continue };
                // Only an unpaid payment's hold runs out: an authorized one is a placed order
                // whose capture is still to be made, and waits for the provider.
                let expired = p.state == PaymentState::Created && now.millis() - p.created_at.millis() > hold_ms;
                match self.reconcile(storage, &scope, &p, expired, now).await {
                    Ok((moved, cancelled)) => {
                        done.moved += usize::from(moved);
                        done.expired += usize::from(cancelled);
                    }
                    Err(e) => tracing::warn!(payment = %p.id, error = %e, "could not reconcile a payment"),
                }
            }
            let stale = Timestamp::from_millis(now.millis() - 60_000);
            for (store, refund) in shard.payments().pending_refunds(stale, 100).await? {
                let Ok(scope) = storage.scope_for_platform(store).await else { continue };
                if let Ok(r) = self.send_refund(storage, &scope, refund, now).await
                    && r.status != RefundStatus::Pending
                {
                    done.refunds += 1;
                }
            }
        }
        Ok(done)
    }

    /// `(moved, expired)` for one open payment.
    async fn reconcile(
        &self,
        storage: &Storage,
        scope: &StoreScope,
        p: &Payment,
        expired: bool,
        now: Timestamp,
    ) -> Result<(bool, bool), ApiError> {
        let remote = match (&p.provider_ref, self.provider()) {
            (Some(reference), Ok(provider)) => match provider.fetch(reference).await {
                Ok(r) => Some(r),
                Err(e) if expired => {
                    tracing::warn!(payment = %p.id, error = %e, "the provider did not answer for an expired hold");
                    None
                }
                Err(e) => return Err(provider_error(e)),
            },
            (None, _) | (_, Err(_)) if expired => None,
            (_, Err(e)) => return Err(e),
            (None, Ok(_)) => return Ok((false, false)),
        };
        if let Some(mut remote) = remote {
            if expired && remote.status == RemoteStatus::Created {
                // The shopper never paid: cancel at the provider so a late payment is refused.
                if let Ok(cancelled) = self.provider()?.cancel(&remote.id).await {
                    remote = cancelled;
                }
            }
            let moved = self.apply(storage, scope, p.id, &remote, None, now).await?.unwrap_or(false);
            let still_open = remote.status == RemoteStatus::Created && expired;
            if !still_open {
                let ended = matches!(remote.status, RemoteStatus::Failed | RemoteStatus::Cancelled);
                return Ok((moved, expired && moved && ended));
            }
        }
        // The provider cannot say, or would not cancel: the hold ends here. Should the money
        // arrive after all, the capture refunds it at once.
        let moved = self.cancel_here(storage, scope, p.id, now).await?;
        Ok((moved, moved))
    }

    /// Cancels a payment on the platform's side alone (its order, if pending, with it);
    /// whether it moved.
    async fn cancel_here(
        &self,
        storage: &Storage,
        scope: &StoreScope,
        id: PaymentId,
        now: Timestamp,
    ) -> Result<bool, ApiError> {
        let news = PaymentNews { state: PaymentState::Cancelled, captured: 0, event_id: None };
        Ok(storage.shard(scope).payments().apply_payment_news(scope, id, news, self.fees(), now).await?.moved)
    }

    /// The payout run of `slot` over every store owed money on every shard; how many stores
    /// were paid. Safe to run twice, or on two nodes at once: a store gets one payout per slot.
    pub async fn pay_out_once(&self, storage: &Storage, slot: Timestamp, now: Timestamp) -> Result<usize, ApiError> {
        let mut paid = 0;
        for shard in storage.all_shards() {
            let mut after = None;
            loop {
                let stores = shard.payments().stores_with_unpaid_lines(after, 200).await?;
                let Some(last) = stores.last().copied() else { break };
                for store in stores {
                    let Ok(scope) = storage.scope_for_platform(store).await else { continue };
                    match storage.shard(&scope).payments().pay_out(&scope, slot, now).await {
                        Ok(Some(p)) => {
                            paid += 1;
                            metrics::counter!("kirana_payouts_total").increment(1);
                            tracing::info!(store_id = %store, amount = p.amount, "paid out");
                        }
                        Ok(None) => {}
                        Err(StorageError::Moved { .. }) => {}
                        Err(e) => tracing::warn!(store_id = %store, error = %e, "payout failed; next run retries"),
                    }
                }
                after = Some(last);
            }
        }
        Ok(paid)
    }

    /// The first scheduled payout time after `now`.
    pub fn next_payout(&self, now: Timestamp) -> Option<Timestamp> {
        let local = now.millis() + IST_OFFSET_MS;
        let midnight = local - local.rem_euclid(DAY_MS);
        let mut times: Vec<i64> = self.settings.payout_times.iter().map(|m| i64::from(*m) * 60_000).collect();
        times.sort_unstable();
        let next = times
            .iter()
            .map(|t| midnight + t)
            .find(|t| *t > local)
            .or_else(|| times.first().map(|t| midnight + DAY_MS + t))?;
        Some(Timestamp::from_millis(next - IST_OFFSET_MS))
    }
}

/// A client's return address for the provider's page: an absolute `http(s)` URL of bounded size.
pub fn check_return_url(url: &str) -> Result<(), ApiError> {
    let ok = url.len() <= 2048
        && url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "https" | "http") && u.host().is_some());
    if ok {
        Ok(())
    } else {
        Err(ApiError::Invalid(kirana_domain::Invalid::field(
            "return_url",
            "must be an http(s) URL of at most 2048 characters",
        )))
    }
}

fn state_of(s: RemoteStatus) -> PaymentState {
    match s {
        RemoteStatus::Created => PaymentState::Created,
        RemoteStatus::Authorized => PaymentState::Authorized,
        RemoteStatus::Captured => PaymentState::Captured,
        RemoteStatus::Failed => PaymentState::Failed,
        RemoteStatus::Cancelled => PaymentState::Cancelled,
    }
}

fn unavailable(why: &str) -> ApiError {
    ApiError::DependencyDown {
        detail: format!(
            "payment_method: online payment is unavailable right now ({why}); pay cash on delivery or try again shortly"
        ),
        retry_after_secs: 30,
    }
}

fn provider_error(e: ProviderError) -> ApiError {
    match e {
        ProviderError::Unavailable(why) => unavailable(&why),
        ProviderError::Rejected(why) | ProviderError::NotFound(why) => {
            ApiError::Internal(format!("the payment provider refused a request: {why}"))
        }
    }
}

fn webhook_refusal(e: &kirana_payments::WebhookError) -> &'static str {
    use kirana_payments::WebhookError::*;
    match e {
        MissingSignature => "the webhook has no valid signature header",
        BadSignature => "the webhook signature does not match",
        Stale => "the webhook is outside the replay window",
        Malformed(_) => "the webhook body is not an event",
    }
}

/// Runs the reconciler every `reconcile_every` until shutdown.
pub async fn run_reconciler(state: crate::AppState, mut shutdown: watch::Receiver<bool>) {
    let every = state.payments.settings().reconcile_every;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
        match state.payments.reconcile_once(&state.storage, state.clock.now()).await {
            Ok(r) if r != Reconciled::default() => tracing::info!(?r, "payments reconciled"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "payment reconciliation failed; next round retries"),
        }
    }
}

/// Runs the payout schedule until shutdown.
pub async fn run_payouts(state: crate::AppState, mut shutdown: watch::Receiver<bool>) {
    loop {
        let now = state.clock.now();
        let Some(slot) = state.payments.next_payout(now) else { return };
        let wait = Duration::from_millis((slot.millis() - now.millis()).max(0) as u64);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        match state.payments.pay_out_once(&state.storage, slot, state.clock.now()).await {
            Ok(n) => tracing::info!(stores = n, slot = %slot.to_rfc3339(), "payout run done"),
            Err(e) => tracing::warn!(error = %e, "payout run failed; the next run settles what this one did not"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payouts_run_at_the_scheduled_india_times() {
        let p = Payments::default();
        // 2026-11-26 04:00 UTC = 09:30 IST: next is 10:00 IST = 04:30 UTC.
        let now = Timestamp::parse_rfc3339("2026-11-26T04:00:00Z").unwrap();
        assert_eq!(p.next_payout(now).unwrap().to_rfc3339(), "2026-11-26T04:30:00Z");
        // 21:00 IST: next is 10:00 IST tomorrow.
        let late = Timestamp::parse_rfc3339("2026-11-26T15:30:00Z").unwrap();
        assert_eq!(p.next_payout(late).unwrap().to_rfc3339(), "2026-11-27T04:30:00Z");
        // Exactly at a slot: the next one, never the same slot twice.
        let at = Timestamp::parse_rfc3339("2026-11-26T09:30:00Z").unwrap();
        assert_eq!(p.next_payout(at).unwrap().to_rfc3339(), "2026-11-26T14:30:00Z");
    }
}
