//! Sending queued notifications. The notifications consumer queues them (once per event);
//! this worker sends them through a [`Messenger`], retrying failures with backoff, and gives up
//! after a day.

use std::sync::Arc;
use std::time::Duration;

use kirana_domain::{Clock, Phone};
use kirana_storage::{Outgoing, Storage, StorageError};
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
    let mut sent = 0;
    for shard in 0..storage.shard_count() {
        sent += send_due_on(storage, shard, messenger, clock).await?;
    }
    Ok(sent)
}

/// How long a notification being sent is kept from other workers: far longer than a send may
/// take (the SMS provider's timeout and one retry). A worker that dies mid-send leaves it to be
/// sent again after this, with the same idempotency key.
const SENDING_LEASE: Duration = Duration::from_secs(60);

/// Sends what is due on one shard once; returns how many were sent.
///
/// Each message is claimed before it is sent (see `ShardLog::claim_notification`) and its
/// outcome recorded where its store lives by then: a store that moves between shards while one
/// of its messages is being sent takes the claim with it, so the message is neither sent again
/// from the new shard nor left pending there.
pub async fn send_due_on(
    storage: &Storage,
    shard: usize,
    messenger: &dyn Messenger,
    clock: &dyn Clock,
) -> kirana_storage::Result<u32> {
    let retry = RetryPolicy { attempts: MAX_ATTEMPTS, base: Duration::from_secs(2), max: Duration::from_secs(3600) };
    let Some(log) = storage.logs().nth(shard) else { return Ok(0) };
    let mut sent = 0;
    for out in log.due_notifications(clock.now(), 100).await? {
        let now = clock.now();
        let until = now.plus_millis(SENDING_LEASE.as_millis() as i64);
        match log.claim_notification(out.store_id, out.event_id, now, until).await {
            Ok(true) => {}
            // Sent or taken meanwhile; or the store is leaving this shard, whose next one sends it.
            Ok(false) | Err(StorageError::Moved { .. }) => continue,
            Err(e) => return Err(e),
        }
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
                let next =
                    (attempt < MAX_ATTEMPTS).then(|| clock.now().plus_millis(retry.delay(attempt).as_millis() as i64));
                tracing::warn!(store_id = %out.store_id, event_id = %out.event_id, attempt, error = %e, "notification failed");
                Err((e, next))
            }
        };
        record(storage, shard, &out, outcome, clock).await;
    }
    Ok(sent)
}

/// Records a send's outcome on the shard that holds the store now: the one it was read from,
/// or, if the store moved meanwhile, its new one (once the move has flipped). Gives up after
/// half a minute of trying: the claim then runs out and the message is sent again, with the same
/// idempotency key, which is better than never.
async fn record(
    storage: &Storage,
    shard: usize,
    out: &Outgoing,
    outcome: Result<(), (String, Option<kirana_domain::Timestamp>)>,
    clock: &dyn Clock,
) {
    let mut on = shard;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let Some(log) = storage.logs().nth(on) else { return };
        let r = log.notification_done(out.store_id, out.event_id, outcome.clone(), clock.now()).await;
        let wait = match r {
            Ok(()) => return,
            Err(StorageError::Moved { .. }) => {
                if let Ok(home) = storage.home_of(out.store_id).await {
                    on = home.0 as usize;
                }
                Duration::from_millis(100)
            }
            Err(e) => {
                tracing::warn!(store_id = %out.store_id, event_id = %out.event_id, error = %e, "could not record a notification's outcome; retrying");
                Duration::from_millis(500)
            }
        };
        if tokio::time::Instant::now() + wait > deadline {
            tracing::error!(store_id = %out.store_id, event_id = %out.event_id,
                "gave up recording a notification's outcome; it will be sent again when its claim runs out");
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

/// The worker of one shard's notifications (run under the lease `notify.shard-N`, so one node
/// sends each message): sends what is due, then waits a little, until shutdown.
pub async fn run_shard(
    storage: Storage,
    shard: usize,
    messenger: Arc<dyn Messenger>,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        let pause = match send_due_on(&storage, shard, &*messenger, &*clock).await {
            Ok(n) if n > 0 => Duration::ZERO,
            Ok(_) => Duration::from_millis(200),
            Err(e) => {
                tracing::error!(shard, error = %e, "notification worker failed; retrying in a second");
                Duration::from_secs(1)
            }
        };
        if !pause.is_zero() {
            // A dropped sender (the node's work torn down) is a stop too.
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                r = shutdown.changed() => if r.is_err() { return },
            }
        }
    }
}

/// Every shard's notifications from this process, without leases (tests, one process alone).
pub async fn run(
    storage: Storage,
    messenger: Arc<dyn Messenger>,
    clock: Arc<dyn Clock>,
    shutdown: watch::Receiver<bool>,
) {
    let workers: Vec<_> = (0..storage.shard_count())
        .map(|shard| {
            tokio::spawn(run_shard(storage.clone(), shard, messenger.clone(), clock.clone(), shutdown.clone()))
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
}
