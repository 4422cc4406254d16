//! Sending the test gateway's webhooks: one task per event, retried with backoff as a real
//! gateway does, each attempt freshly signed over the same body. Deliveries never hold up the
//! API call that produced them, and they give up when the gateway stops.

use std::sync::Arc;
use std::time::Duration;

use super::{Shared, unix_now};
use crate::signature;

/// The pauses before the second to the sixth attempt.
const BACKOFF: [Duration; 5] = [
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
];

/// Why an attempt did not deliver an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    #[error("no event {0}")]
    UnknownEvent(String),
    #[error("no webhook URL is set")]
    NoWebhookUrl,
    #[error("the receiver did not take the event: {0}")]
    Failed(String),
}

/// Delivers an event, retrying until it is taken, the attempts run out, drop mode is turned
/// on, or the gateway stops.
pub(super) async fn deliver(shared: Arc<Shared>, event_id: String) {
    let mut stop = shared.stop.subscribe();
    for attempt in 0..=BACKOFF.len() {
        if let Some(pause) = attempt.checked_sub(1).map(|i| BACKOFF[i]) {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
        }
        if shared.stopped() {
            return;
        }
        if shared.dropping() {
            tracing::info!(event = %event_id, "drop mode: the event's delivery stops");
            return;
        }
        let outcome = tokio::select! {
            outcome = self::attempt(&shared, &event_id) => outcome,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        match outcome {
            Ok(()) => return,
            Err(DeliveryError::Failed(why)) => {
                tracing::info!(event = %event_id, attempt = attempt + 1, error = %why, "webhook delivery failed");
            }
            // Nowhere to send it (retries would not change that), or it vanished.
            Err(e) => {
                tracing::info!(event = %event_id, error = %e, "webhook not sent");
                return;
            }
        }
    }
    tracing::warn!(event = %event_id, attempts = BACKOFF.len() + 1, "webhook delivery gave up");
}

/// One attempt: signs the event's body now, posts it, and records the attempt and whether it
/// was taken (any 2xx).
pub(super) async fn attempt(shared: &Shared, event_id: &str) -> Result<(), DeliveryError> {
    let url = shared.webhook_url().ok_or(DeliveryError::NoWebhookUrl)?;
    let (body, signature) = {
        let mut ledger = shared.ledger();
        let event = ledger.event_mut(event_id).ok_or_else(|| DeliveryError::UnknownEvent(event_id.to_owned()))?;
        event.signature = signature::sign(shared.secret.as_bytes(), unix_now(), &event.body);
        event.attempts += 1;
        (event.body.clone(), event.signature.clone())
    };
    let sent = shared
        .client
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(signature::SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await;
    let outcome = match sent {
        Ok(res) if res.status().is_success() => Ok(()),
        Ok(res) => Err(DeliveryError::Failed(format!("HTTP {}", res.status()))),
        Err(e) => Err(DeliveryError::Failed(e.to_string())),
    };
    if outcome.is_ok() {
        if let Some(event) = shared.ledger().event_mut(event_id) {
            event.delivered = true;
        }
        tracing::info!(event = %event_id, "webhook delivered");
    }
    outcome
}
