//! The test gateway's books: payments, refunds and the events they produced, in memory, and
//! the state machine that moves a payment along. No I/O and no clock of its own: the caller
//! holds the lock, passes the time, and sends the events this records.
//!
//! A payment goes `created → authorized → captured` (the shopper pays, the platform takes the
//! money), or `created → failed` (the shopper declines), or `created | authorized → cancelled`
//! (the platform gives up). Refunds draw on a captured payment and never exceed what was
//! captured. Every change that tells the platform something records one event.

use std::collections::HashMap;

use crate::gateway::SentEvent;
use crate::provider::{CreatePayment, RemotePayment, RemoteRefund, RemoteStatus, WebhookEvent, WebhookKind};
use crate::signature;

/// Why the books refused a change; the API maps it to a status code once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LedgerError {
    #[error("no payment {0}")]
    NotFound(String),
    /// A request that cannot succeed as written (400).
    #[error("{1}")]
    Invalid(&'static str, String),
    /// A request that contradicts an earlier one with the same key (409).
    #[error("{1}")]
    Conflict(&'static str, String),
}

struct Payment {
    remote: RemotePayment,
    currency: String,
    return_url: String,
}

struct Refund {
    id: String,
    payment_id: String,
    amount: i64,
}

/// A change and the event it produced, if any, to be recorded under the same lock so events
/// are numbered in the order the changes happened.
pub(crate) type Changed<T> = (T, Option<(WebhookKind, RemotePayment)>);

#[derive(Default)]
pub(crate) struct Ledger {
    payments: HashMap<String, Payment>,
    by_reference: HashMap<String, String>,
    /// By the platform's key: a retried refund finds the first one here.
    refunds: HashMap<String, Refund>,
    events: Vec<SentEvent>,
}

/// `<prefix>_<24 hex digits>`: unguessable, so a shopper cannot open someone else's page.
pub(crate) fn new_id(prefix: &str) -> String {
    let mut id = format!("{prefix}_");
    kirana_domain::hex::push(&mut id, &rand::random::<[u8; 12]>());
    id
}

impl Ledger {
    /// Creates a payment, or returns the one created before with the same reference; the flag
    /// says whether it is new.
    pub(crate) fn create(
        &mut self,
        req: CreatePayment,
        public_base: &str,
    ) -> Result<(RemotePayment, bool), LedgerError> {
        if let Some(existing) = self.by_reference.get(&req.reference).and_then(|id| self.payments.get(id)) {
            return Ok((existing.remote.clone(), false));
        }
        if req.reference.is_empty() {
            return Err(invalid("the reference must not be empty"));
        }
        if req.amount <= 0 {
            return Err(invalid("the amount must be more than zero"));
        }
        if req.currency.is_empty() {
            return Err(invalid("the currency must not be empty"));
        }
        if !reqwest::Url::parse(&req.return_url).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
            return Err(invalid("the return_url must be an http:// or https:// URL"));
        }
        let id = new_id("pay");
        let remote = RemotePayment {
            checkout_url: format!("{public_base}/pay/{id}"),
            id: id.clone(),
            reference: req.reference.clone(),
            store_id: req.store_id,
            order_id: req.order_id,
            status: RemoteStatus::Created,
            amount: req.amount,
            captured: 0,
            refunded: 0,
        };
        self.by_reference.insert(req.reference, id.clone());
        self.payments
            .insert(id, Payment { remote: remote.clone(), currency: req.currency, return_url: req.return_url });
        Ok((remote, true))
    }

    pub(crate) fn get(&self, id: &str) -> Result<RemotePayment, LedgerError> {
        self.payments.get(id).map(|p| p.remote.clone()).ok_or_else(|| LedgerError::NotFound(id.to_owned()))
    }

    /// The payment and its currency, for the shopper's page.
    pub(crate) fn checkout(&self, id: &str) -> Result<(RemotePayment, String), LedgerError> {
        let p = self.payments.get(id).ok_or_else(|| LedgerError::NotFound(id.to_owned()))?;
        Ok((p.remote.clone(), p.currency.clone()))
    }

    /// Where the provider's page sends the shopper back to.
    pub(crate) fn return_url(&self, id: &str) -> Result<&str, LedgerError> {
        self.payments.get(id).map(|p| p.return_url.as_str()).ok_or_else(|| LedgerError::NotFound(id.to_owned()))
    }

    fn payment(&mut self, id: &str) -> Result<&mut RemotePayment, LedgerError> {
        self.payments.get_mut(id).map(|p| &mut p.remote).ok_or_else(|| LedgerError::NotFound(id.to_owned()))
    }

    /// The shopper paid. Only a created payment moves; a second click changes nothing.
    pub(crate) fn authorize(&mut self, id: &str) -> Result<Changed<RemotePayment>, LedgerError> {
        self.shopper_decides(id, RemoteStatus::Authorized, WebhookKind::PaymentAuthorized)
    }

    /// The shopper declined. Only a created payment moves.
    pub(crate) fn decline(&mut self, id: &str) -> Result<Changed<RemotePayment>, LedgerError> {
        self.shopper_decides(id, RemoteStatus::Failed, WebhookKind::PaymentFailed)
    }

    fn shopper_decides(
        &mut self,
        id: &str,
        to: RemoteStatus,
        kind: WebhookKind,
    ) -> Result<Changed<RemotePayment>, LedgerError> {
        let p = self.payment(id)?;
        if p.status != RemoteStatus::Created {
            return Ok((p.clone(), None));
        }
        p.status = to;
        Ok((p.clone(), Some((kind, p.clone()))))
    }

    /// Takes `amount` (more than zero, at most the payment's) of an authorized payment. The
    /// same capture again returns the payment as it is.
    pub(crate) fn capture(&mut self, id: &str, amount: i64) -> Result<Changed<RemotePayment>, LedgerError> {
        let p = self.payment(id)?;
        match p.status {
            RemoteStatus::Captured if p.captured == amount => return Ok((p.clone(), None)),
            RemoteStatus::Captured => {
                return Err(invalid_state(format!("payment {id} was already captured for {}", p.captured)));
            }
            RemoteStatus::Authorized => {}
            other => return Err(invalid_state(format!("payment {id} is {}, not authorized", status_str(other)))),
        }
        if amount <= 0 || amount > p.amount {
            return Err(invalid(format!("the capture must be more than zero and at most {}", p.amount)));
        }
        p.status = RemoteStatus::Captured;
        p.captured = amount;
        Ok((p.clone(), Some((WebhookKind::PaymentCaptured, p.clone()))))
    }

    /// Cancels a payment not captured yet; cancelling again returns it as it is. There is no
    /// webhook for it: the platform asked, and has the answer.
    pub(crate) fn cancel(&mut self, id: &str) -> Result<RemotePayment, LedgerError> {
        let p = self.payment(id)?;
        match p.status {
            RemoteStatus::Created | RemoteStatus::Authorized => p.status = RemoteStatus::Cancelled,
            RemoteStatus::Cancelled => {}
            other => {
                return Err(invalid_state(format!("payment {id} is {} and cannot be cancelled", status_str(other))));
            }
        }
        Ok(p.clone())
    }

    /// Refunds `amount` of a captured payment under the platform's `key`: the same key again
    /// returns the first refund (with the payment as it is now) and refunds nothing more.
    pub(crate) fn refund(&mut self, id: &str, amount: i64, key: &str) -> Result<Changed<RemoteRefund>, LedgerError> {
        if let Some(r) = self.refunds.get(key) {
            if r.payment_id != id || r.amount != amount {
                return Err(LedgerError::Conflict(
                    "idempotency_conflict",
                    format!("refund key {key:?} was used for {} of payment {}", r.amount, r.payment_id),
                ));
            }
            let refund = RemoteRefund { id: r.id.clone(), key: key.to_owned(), amount, payment: self.get(id)? };
            return Ok((refund, None));
        }
        if key.is_empty() {
            return Err(invalid("the refund key must not be empty"));
        }
        let p = self.payment(id)?;
        if p.status != RemoteStatus::Captured {
            return Err(invalid_state(format!("payment {id} is {}, not captured", status_str(p.status))));
        }
        if amount <= 0 {
            return Err(invalid("the refund must be more than zero"));
        }
        let refunded = p.refunded.checked_add(amount).filter(|&total| total <= p.captured).ok_or_else(|| {
            LedgerError::Invalid(
                "refund_exceeds_captured",
                format!("{} of {} is refunded already; {amount} more would exceed it", p.refunded, p.captured),
            )
        })?;
        p.refunded = refunded;
        let payment = p.clone();
        let refund_id = new_id("rf");
        self.refunds.insert(key.to_owned(), Refund { id: refund_id.clone(), payment_id: id.to_owned(), amount });
        let refund = RemoteRefund { id: refund_id, key: key.to_owned(), amount, payment: payment.clone() };
        Ok((refund, Some((WebhookKind::RefundProcessed, payment))))
    }

    /// Records an event about `payment`, signed at `now`, and returns its id.
    pub(crate) fn record(&mut self, kind: WebhookKind, payment: RemotePayment, secret: &[u8], now: i64) -> String {
        let event = WebhookEvent { id: new_id("evt"), kind, created_at: now, payment };
        // Plain strings and numbers: serializing cannot fail.
        let body = serde_json::to_vec(&event).expect("an event serializes");
        let signature = signature::sign(secret, now, &body);
        self.events.push(SentEvent { id: event.id.clone(), kind, body, signature, delivered: false, attempts: 0 });
        event.id
    }

    pub(crate) fn events(&self) -> &[SentEvent] {
        &self.events
    }

    pub(crate) fn event_mut(&mut self, id: &str) -> Option<&mut SentEvent> {
        self.events.iter_mut().find(|e| e.id == id)
    }
}

fn invalid(message: impl Into<String>) -> LedgerError {
    LedgerError::Invalid("invalid_request", message.into())
}

fn invalid_state(message: String) -> LedgerError {
    LedgerError::Invalid("invalid_state", message)
}

/// The status as it is spelled on the wire.
pub(crate) fn status_str(status: RemoteStatus) -> &'static str {
    match status {
        RemoteStatus::Created => "created",
        RemoteStatus::Authorized => "authorized",
        RemoteStatus::Captured => "captured",
        RemoteStatus::Failed => "failed",
        RemoteStatus::Cancelled => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "http://gw.test";

    fn request(reference: &str, amount: i64) -> CreatePayment {
        CreatePayment {
            reference: reference.into(),
            amount,
            currency: "INR".into(),
            store_id: "st_1".into(),
            order_id: "ord_1".into(),
            return_url: "http://shop.test/orders/ord_1".into(),
        }
    }

    fn captured(ledger: &mut Ledger, reference: &str, amount: i64) -> String {
        let (p, _) = ledger.create(request(reference, amount), BASE).expect("created");
        ledger.authorize(&p.id).expect("authorized");
        ledger.capture(&p.id, amount).expect("captured");
        p.id
    }

    #[test]
    fn the_wire_spelling_of_a_status_is_serdes() {
        for s in [
            RemoteStatus::Created,
            RemoteStatus::Authorized,
            RemoteStatus::Captured,
            RemoteStatus::Failed,
            RemoteStatus::Cancelled,
        ] {
            assert_eq!(serde_json::to_value(s).expect("serializes"), status_str(s));
        }
    }

    #[test]
    fn a_reference_seen_before_returns_the_first_payment() {
        let mut ledger = Ledger::default();
        let (first, new) = ledger.create(request("ref_1", 500), BASE).expect("created");
        assert!(new);
        assert_eq!(first.status, RemoteStatus::Created);
        assert_eq!(first.checkout_url, format!("{BASE}/pay/{}", first.id));
        let (again, new) = ledger.create(request("ref_1", 500), BASE).expect("the same");
        assert!(!new);
        assert_eq!(again, first);
    }

    #[test]
    fn a_creation_without_an_amount_or_a_return_url_is_refused() {
        let mut ledger = Ledger::default();
        assert!(matches!(ledger.create(request("ref_1", 0), BASE), Err(LedgerError::Invalid("invalid_request", _))));
        let mut bad = request("ref_2", 10);
        bad.return_url = "javascript:alert(1)".into();
        assert!(matches!(ledger.create(bad, BASE), Err(LedgerError::Invalid(..))));
    }

    #[test]
    fn only_a_created_payment_follows_the_shoppers_click() {
        let mut ledger = Ledger::default();
        let (p, _) = ledger.create(request("ref_1", 500), BASE).expect("created");
        let (after, event) = ledger.authorize(&p.id).expect("known");
        assert_eq!(after.status, RemoteStatus::Authorized);
        assert_eq!(event.map(|(k, _)| k), Some(WebhookKind::PaymentAuthorized));
        let (after, event) = ledger.decline(&p.id).expect("known");
        assert_eq!(after.status, RemoteStatus::Authorized, "a late decline changes nothing");
        assert!(event.is_none());
        assert_eq!(ledger.authorize("pay_nope"), Err(LedgerError::NotFound("pay_nope".into())));
    }

    #[test]
    fn capture_needs_an_authorized_payment_and_repeats_harmlessly() {
        let mut ledger = Ledger::default();
        let (p, _) = ledger.create(request("ref_1", 500), BASE).expect("created");
        assert!(matches!(ledger.capture(&p.id, 500), Err(LedgerError::Invalid("invalid_state", _))));
        ledger.authorize(&p.id).expect("authorized");
        assert!(matches!(ledger.capture(&p.id, 501), Err(LedgerError::Invalid("invalid_request", _))));
        assert!(matches!(ledger.capture(&p.id, 0), Err(LedgerError::Invalid("invalid_request", _))));
        let (after, event) = ledger.capture(&p.id, 500).expect("captured");
        assert_eq!((after.status, after.captured), (RemoteStatus::Captured, 500));
        assert!(event.is_some());
        let (again, event) = ledger.capture(&p.id, 500).expect("the same capture");
        assert_eq!(again, after);
        assert!(event.is_none(), "no second webhook");
        assert!(matches!(ledger.capture(&p.id, 400), Err(LedgerError::Invalid("invalid_state", _))));
    }

    #[test]
    fn cancel_stops_an_uncaptured_payment_only() {
        let mut ledger = Ledger::default();
        let (p, _) = ledger.create(request("ref_1", 500), BASE).expect("created");
        assert_eq!(ledger.cancel(&p.id).expect("cancelled").status, RemoteStatus::Cancelled);
        assert_eq!(ledger.cancel(&p.id).expect("again").status, RemoteStatus::Cancelled);
        let id = captured(&mut ledger, "ref_2", 500);
        assert!(matches!(ledger.cancel(&id), Err(LedgerError::Invalid("invalid_state", _))));
    }

    #[test]
    fn refunds_never_exceed_the_captured_amount() {
        let mut ledger = Ledger::default();
        let id = captured(&mut ledger, "ref_1", 500);
        ledger.refund(&id, 300, "r1").expect("first");
        ledger.refund(&id, 200, "r2").expect("second");
        assert!(matches!(ledger.refund(&id, 1, "r3"), Err(LedgerError::Invalid("refund_exceeds_captured", _))));
        assert!(matches!(ledger.refund(&id, i64::MAX, "r4"), Err(LedgerError::Invalid("refund_exceeds_captured", _))));
        assert_eq!(ledger.get(&id).expect("known").refunded, 500);
    }

    #[test]
    fn a_refund_key_used_again_returns_the_first_refund() {
        let mut ledger = Ledger::default();
        let id = captured(&mut ledger, "ref_1", 500);
        let (first, event) = ledger.refund(&id, 100, "r1").expect("refunded");
        assert!(event.is_some());
        let (again, event) = ledger.refund(&id, 100, "r1").expect("the same");
        assert_eq!(again.id, first.id);
        assert!(event.is_none());
        assert_eq!(ledger.get(&id).expect("known").refunded, 100, "refunded once");
        assert!(matches!(ledger.refund(&id, 200, "r1"), Err(LedgerError::Conflict("idempotency_conflict", _))));
    }

    #[test]
    fn refunds_need_a_captured_payment() {
        let mut ledger = Ledger::default();
        let (p, _) = ledger.create(request("ref_1", 500), BASE).expect("created");
        assert!(matches!(ledger.refund(&p.id, 100, "r1"), Err(LedgerError::Invalid("invalid_state", _))));
        assert_eq!(ledger.refund("pay_nope", 100, "r2").map(|_| ()), Err(LedgerError::NotFound("pay_nope".into())));
    }

    #[test]
    fn a_recorded_event_is_signed_json() {
        let mut ledger = Ledger::default();
        let (p, _) = ledger.create(request("ref_1", 500), BASE).expect("created");
        let id = ledger.record(WebhookKind::PaymentAuthorized, p.clone(), b"secret", 1_700_000_000);
        let sent = &ledger.events()[0];
        assert_eq!(sent.id, id);
        assert_eq!(signature::verify(b"secret", Some(&sent.signature), &sent.body, 1_700_000_000, 300), Ok(()));
        let event: WebhookEvent = serde_json::from_slice(&sent.body).expect("an event");
        assert_eq!((event.kind, event.payment), (WebhookKind::PaymentAuthorized, p));
    }
}
