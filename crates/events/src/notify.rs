//! Sending queued notifications. The notifications consumer queues them (once per event);
//! this worker sends them through a [`Messenger`], retrying failures with backoff, and gives up
//! after a day.

use std::sync::Arc;
use std::time::Duration;

use kirana_domain::{Clock, Phone};
use kirana_storage::{Outgoing, Storage};
use tokio::sync::watch;

use crate::consumers::STORE_OWNER;
use crate::embedded::RetryPolicy;

/// Whatever delivers a text message (SMS, WhatsApp; a file in development).
#[async_trait::async_trait]
pub trait Messenger: Send + Sync + 'static {
    /// `key` identifies the message: a provider that supports idempotency keys gets it, so a
    /// retry after an unclear failure is not a second message.
    async fn send(&self, to: &Phone, message: &str, key: &str) -> Result<(), String>;
}

#[async_trait::async_trait]
impl Messenger for crate::sms::HttpSms {
    async fn send(&self, to: &Phone, message: &str, key: &str) -> Result<(), String> {
        crate::sms::HttpSms::send(self, to, message, key).await.map_err(|e| e.to_string())
    }
}

/// Stops retrying a message after this many attempts (about a day with the backoff below).
const MAX_ATTEMPTS: u32 = 20;

async fn recipient(storage: &Storage, out: &Outgoing) -> Result<Phone, String> {
    if out.recipient == STORE_OWNER {
        let entry =
            storage.directory().entry(out.store_id).await.map_err(|e| e.to_string())?.ok_or("the store is gone")?;
        let merchant = storage.directory().merchant(entry.owner).await.map_err(|e| e.to_string())?;
        return Ok(merchant.phone);
    }
    Phone::parse(&out.recipient)
}

/// Sends what is due on every shard once; returns how many were sent.
pub async fn send_due(storage: &Storage, messenger: &dyn Messenger, clock: &dyn Clock) -> kirana_storage::Result<u32> {
    let retry = RetryPolicy { attempts: MAX_ATTEMPTS, base: Duration::from_secs(2), max: Duration::from_secs(3600) };
    let mut sent = 0;
    for log in storage.logs() {
        for out in log.due_notifications(clock.now(), 100).await? {
            let result = match recipient(storage, &out).await {
                Ok(to) => messenger.send(&to, &out.message, &out.event_id.to_string()).await,
                Err(e) => Err(e),
            };
            let outcome = match result {
                Ok(()) => {
                    sent += 1;
                    Ok(())
                }
                Err(e) => {
                    let attempt = out.attempts + 1;
                    let next = (attempt < MAX_ATTEMPTS)
                        .then(|| clock.now().plus_millis(retry.delay(attempt).as_millis() as i64));
                    tracing::warn!(store_id = %out.store_id, event_id = %out.event_id, attempt, error = %e, "notification failed");
                    Err((e, next))
                }
            };
            log.notification_done(out.store_id, out.event_id, outcome, clock.now()).await?;
        }
    }
    Ok(sent)
}

/// The worker: sends what is due, then waits a little, until shutdown.
pub async fn run(
    storage: Storage,
    messenger: Arc<dyn Messenger>,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        let pause = match send_due(&storage, &*messenger, &*clock).await {
            Ok(n) if n > 0 => Duration::ZERO,
            Ok(_) => Duration::from_millis(200),
            Err(e) => {
                tracing::error!(error = %e, "notification worker failed; retrying in a second");
                Duration::from_secs(1)
            }
        };
        if !pause.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}
