//! Webhook endpoints, deliveries and attempts: the port of `sqlite::shard::webhooks`, with the
//! same validation, errors and outcomes. `event_types` is a JSONB array here (the log's
//! `Webhooks` effect tests membership with `?`); it is written and read as its JSON text.
//!
//! What SQLite's single writer guarantees, this gets from PostgreSQL:
//! - the per-store limit: creates serialise on a per-store advisory lock before counting;
//! - recording an attempt locks the endpoint's row first (`FOR UPDATE`), so attempts on one
//!   endpoint, its deletion and its disabling run one at a time, always endpoint before
//!   deliveries: two failures cannot both disable it, and an attempt recorded after a disable or
//!   a delete finds its delivery no longer pending (`Gone`), as it would on SQLite;
//! - claiming takes each delivery with `FOR UPDATE SKIP LOCKED`: a delivery whose row another
//!   transaction holds (being claimed or recorded) is not taken by this call, and a claim never
//!   waits, so it cannot deadlock with a record failing the endpoint's whole queue. (SQLite has
//!   no concurrent holder, so there the two answer alike.)
//! - `due` orders ties on `next_attempt_at` by key, where SQLite leaves them to its index.

use deadpool_postgres::GenericClient;
use kirana_domain::page::{Page, PageRequest};
use kirana_domain::{EventId, StoreId, Timestamp};
use rand::Rng;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{exec, lock, one, opt, rows};
use crate::Result;
use crate::error::{ConflictKind, StorageError};
use crate::webhooks::{
    Attempt, AttemptRecord, CreatedEndpoint, Delivery, DeliveryKey, DeliveryStatus, DueDelivery, Endpoint, EndpointId,
    MAX_ENDPOINTS_PER_STORE, NewEndpoint, Outcome, RECENT_ATTEMPTS, Recorded,
};

const ENDPOINT: &str = "SELECT endpoint_id, url, event_types::TEXT, active, disabled_reason, failing_since, created_at,
    updated_at FROM webhook_endpoints";

fn u32_of(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn u16_of(v: Option<i64>) -> Option<u16> {
    v.map(|v| u16::try_from(v).unwrap_or(u16::MAX))
}

fn endpoint(r: &Row) -> Endpoint {
    Endpoint {
        id: EndpointId::from_uuid(r.get(0)),
        url: r.get(1),
        event_types: serde_json::from_str(r.get::<_, &str>(2)).unwrap_or_default(),
        active: r.get::<_, i64>(3) != 0,
        disabled_reason: r.get(4),
        failing_since: r.get::<_, Option<i64>>(5).map(Timestamp::from_millis),
        created_at: Timestamp::from_millis(r.get(6)),
        updated_at: Timestamp::from_millis(r.get(7)),
    }
}

pub async fn get<C: GenericClient>(c: &C, store: StoreId, id: EndpointId) -> Result<Endpoint> {
    opt(c, &format!("{ENDPOINT} WHERE store_id = $1 AND endpoint_id = $2"), &[&store.uuid(), &id.uuid()])
        .await?
        .map(|r| endpoint(&r))
        .ok_or(StorageError::NotFound)
}

/// `whsec_` and 32 random bytes in hex: the key both sides feed to HMAC-SHA256, whole.
fn new_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    let mut s = String::with_capacity(6 + 64);
    s.push_str("whsec_");
    kirana_domain::hex::push(&mut s, &bytes);
    s
}

/// Registers an endpoint; pass a transaction (the count and the insert go together).
pub async fn create<C: GenericClient>(
    c: &C,
    store: StoreId,
    new: &NewEndpoint,
    now: Timestamp,
) -> Result<CreatedEndpoint> {
    lock(c, &format!("webhook_endpoints:{store}")).await?;
    let count: i64 =
        one(c, "SELECT count(*) FROM webhook_endpoints WHERE store_id = $1", &[&store.uuid()]).await?.get(0);
    if count >= MAX_ENDPOINTS_PER_STORE {
        return Err(StorageError::conflict(
            ConflictKind::TooMany,
            None,
            format!("a store may have at most {MAX_ENDPOINTS_PER_STORE} webhook endpoints"),
        ));
    }
    let id = EndpointId::generate();
    let secret = new_secret();
    let types = serde_json::to_string(new.event_types.as_slice())?;
    exec(
        c,
        "INSERT INTO webhook_endpoints (store_id, endpoint_id, url, secret, event_types, active, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5::TEXT::JSONB, 1, $6, $6)",
        &[&store.uuid(), &id.uuid(), &new.url.as_str(), &secret, &types, &now.millis()],
    )
    .await?;
    Ok(CreatedEndpoint { endpoint: get(c, store, id).await?, secret })
}

/// The store's endpoints, newest first.
pub async fn list<C: GenericClient>(c: &C, store: StoreId, page: PageRequest) -> Result<Page<Endpoint>> {
    let after = page.after.map(|p| p.uuid());
    let found = rows(
        c,
        &format!(
            "{ENDPOINT} WHERE store_id = $1 AND ($2::UUID IS NULL OR endpoint_id < $2) ORDER BY endpoint_id DESC LIMIT $3"
        ),
        &[&store.uuid(), &after, &page.limit.probe()],
    )
    .await?;
    Ok(Page::from_probe(found.iter().map(endpoint).collect(), page.limit, |e| e.id.uuid()))
}

/// Removes an endpoint with its deliveries and attempts; pass a transaction.
pub async fn delete<C: GenericClient>(c: &C, store: StoreId, id: EndpointId) -> Result<()> {
    let n =
        exec(c, "DELETE FROM webhook_endpoints WHERE store_id = $1 AND endpoint_id = $2", &[&store.uuid(), &id.uuid()])
            .await?;
    if n == 0 {
        return Err(StorageError::NotFound);
    }
    // The endpoint's log goes with it: nothing can read it any more, and removing its pending
    // rows is what stops the worker (an attempt in flight then finds its row gone and records
    // nothing).
    for table in ["webhook_deliveries", "webhook_attempts"] {
        exec(c, &format!("DELETE FROM {table} WHERE store_id = $1 AND endpoint_id = $2"), &[&store.uuid(), &id.uuid()])
            .await?;
    }
    Ok(())
}

/// An endpoint's delivery log, newest event first, each with its latest attempts.
pub async fn deliveries<C: GenericClient>(
    c: &C,
    store: StoreId,
    id: EndpointId,
    page: PageRequest,
) -> Result<Page<Delivery>> {
    get(c, store, id).await?;
    let after = page.after.map(|p| p.uuid());
    let found = rows(
        c,
        "SELECT event_id, event_type, status, attempts, next_attempt_at, last_status, last_error, delivered_at,
                created_at
         FROM webhook_deliveries
         WHERE store_id = $1 AND endpoint_id = $2 AND ($3::UUID IS NULL OR event_id < $3)
         ORDER BY event_id DESC LIMIT $4",
        &[&store.uuid(), &id.uuid(), &after, &page.limit.probe()],
    )
    .await?;
    let items = found
        .iter()
        .map(|r| {
            let status = DeliveryStatus::from_stored(r.get::<_, &str>(2));
            Delivery {
                event_id: EventId::from_uuid(r.get(0)),
                event_type: r.get(1),
                status,
                attempts: u32_of(r.get(3)),
                next_attempt_at: (status == DeliveryStatus::Pending).then(|| Timestamp::from_millis(r.get(4))),
                last_status: u16_of(r.get(5)),
                last_error: r.get(6),
                delivered_at: r.get::<_, Option<i64>>(7).map(Timestamp::from_millis),
                created_at: Timestamp::from_millis(r.get(8)),
                recent_attempts: vec![],
            }
        })
        .collect();
    let mut page = Page::from_probe(items, page.limit, |d| d.event_id.uuid());
    if page.items.is_empty() {
        return Ok(page);
    }
    // The page's attempts in one query (the latest few per delivery), not one per delivery.
    let ids: Vec<Uuid> = page.items.iter().map(|d| d.event_id.uuid()).collect();
    let attempts = rows(
        c,
        &format!(
            "SELECT event_id, attempt, at, status_code, error, duration_ms FROM (
               SELECT *, row_number() OVER (PARTITION BY event_id ORDER BY attempt DESC) AS n
               FROM webhook_attempts WHERE store_id = $1 AND endpoint_id = $2 AND event_id = ANY($3)
             ) a WHERE n <= {RECENT_ATTEMPTS} ORDER BY event_id, attempt DESC"
        ),
        &[&store.uuid(), &id.uuid(), &ids],
    )
    .await?;
    for r in &attempts {
        let event = EventId::from_uuid(r.get(0));
        if let Some(d) = page.items.iter_mut().find(|d| d.event_id == event) {
            d.recent_attempts.push(Attempt {
                attempt: u32_of(r.get(1)),
                at: Timestamp::from_millis(r.get(2)),
                status_code: u16_of(r.get(3)),
                error: r.get(4),
                duration_ms: r.get(5),
            });
        }
    }
    Ok(page)
}

/// Shard-wide: deliveries of active endpoints due at `now`, earliest first, leaving out the
/// endpoints in `skip`.
pub async fn due<C: GenericClient>(c: &C, now: Timestamp, limit: u32, skip: &[EndpointId]) -> Result<Vec<DueDelivery>> {
    // Served by the partial index on pending rows' `next_attempt_at`; a store-less scan is the
    // point (the worker serves the whole shard). Busy endpoints are left out in the query, not
    // after it, so their backlog cannot fill the page and starve the others.
    let skip: Vec<Uuid> = skip.iter().map(|e| e.uuid()).collect();
    let found = rows(
        c,
        "SELECT d.store_id, d.endpoint_id, d.event_id, d.event_type, d.payload, d.attempts, d.created_at, e.url, e.secret
         FROM webhook_deliveries d
         JOIN webhook_endpoints e ON e.store_id = d.store_id AND e.endpoint_id = d.endpoint_id
         WHERE d.status = 'pending' AND d.next_attempt_at <= $1 AND e.active = 1
           AND NOT (d.endpoint_id = ANY($3))
         ORDER BY d.next_attempt_at, d.store_id, d.endpoint_id, d.event_id LIMIT $2",
        &[&now.millis(), &i64::from(limit), &skip],
    )
    .await?;
    Ok(found
        .iter()
        .map(|r| DueDelivery {
            key: DeliveryKey {
                store_id: StoreId::from_uuid(r.get(0)),
                endpoint_id: EndpointId::from_uuid(r.get(1)),
                event_id: EventId::from_uuid(r.get(2)),
            },
            event_type: r.get(3),
            payload: r.get(4),
            attempts: u32_of(r.get(5)),
            created_at: Timestamp::from_millis(r.get(6)),
            url: r.get(7),
            secret: r.get(8),
        })
        .collect())
}

/// Leases each delivery still due at `now` until `until`; returns the keys taken, in the order
/// given. A delivery another transaction holds right now is not taken (see the module notes).
pub async fn claim<C: GenericClient>(
    c: &C,
    keys: &[DeliveryKey],
    now: Timestamp,
    until: Timestamp,
) -> Result<Vec<DeliveryKey>> {
    let mut taken = Vec::with_capacity(keys.len());
    for k in keys {
        let n = exec(
            c,
            "UPDATE webhook_deliveries SET next_attempt_at = $4
             WHERE (store_id, endpoint_id, event_id) IN (
               SELECT store_id, endpoint_id, event_id FROM webhook_deliveries
               WHERE store_id = $1 AND endpoint_id = $2 AND event_id = $3 AND status = 'pending'
                 AND next_attempt_at <= $5
               FOR UPDATE SKIP LOCKED)",
            &[&k.store_id.uuid(), &k.endpoint_id.uuid(), &k.event_id.uuid(), &until.millis(), &now.millis()],
        )
        .await?;
        if n == 1 {
            taken.push(*k);
        }
    }
    Ok(taken)
}

/// How a disabled endpoint's merchant is told: through the notifications queue, to the store's
/// owner (the notifier resolves `owner` to their phone when it sends).
const STORE_OWNER: &str = "owner";

/// Logs an attempt and moves the delivery on; keeps the endpoint's `failing_since` and disables
/// it after failing for `disable_after_ms`. Pass a transaction.
pub async fn record<C: GenericClient>(c: &C, r: &AttemptRecord) -> Result<Recorded> {
    let k = &r.key;
    let (store, endpoint, event) = (k.store_id.uuid(), k.endpoint_id.uuid(), k.event_id.uuid());
    let error = r.error.as_deref().map(|e| truncate(e, 500));
    let status_code = r.status_code.map(i64::from);
    // Everything below, for this endpoint, one transaction at a time (endpoint before
    // deliveries, as `delete` takes them).
    opt(c, "SELECT 1 FROM webhook_endpoints WHERE store_id = $1 AND endpoint_id = $2 FOR UPDATE", &[&store, &endpoint])
        .await?;
    // The attempt is logged only while the delivery is still pending: a row deleted with its
    // endpoint, or finished by another worker, keeps no stray attempt.
    let logged = exec(
        c,
        "INSERT INTO webhook_attempts (store_id, endpoint_id, event_id, attempt, at, status_code, error, duration_ms)
         SELECT store_id, endpoint_id, event_id, attempts + 1, $4, $5, $6, $7 FROM webhook_deliveries
         WHERE store_id = $1 AND endpoint_id = $2 AND event_id = $3 AND status = 'pending'
         ON CONFLICT DO NOTHING",
        &[&store, &endpoint, &event, &r.at.millis(), &status_code, &error, &r.duration_ms],
    )
    .await?;
    if logged == 0 {
        return Ok(Recorded::Gone);
    }
    if r.outcome == Outcome::Delivered {
        exec(
            c,
            "UPDATE webhook_deliveries SET status = 'delivered', attempts = attempts + 1, last_status = $4,
               last_error = NULL, delivered_at = $5
             WHERE store_id = $1 AND endpoint_id = $2 AND event_id = $3",
            &[&store, &endpoint, &event, &status_code, &r.at.millis()],
        )
        .await?;
        exec(
            c,
            "UPDATE webhook_endpoints SET failing_since = NULL
             WHERE store_id = $1 AND endpoint_id = $2 AND failing_since IS NOT NULL",
            &[&store, &endpoint],
        )
        .await?;
        return Ok(Recorded::Delivered);
    }
    let retry_at = match r.outcome {
        Outcome::RetryAt(t) => Some(t.millis()),
        _ => None,
    };
    exec(
        c,
        "UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = $4, last_error = $5,
           status = CASE WHEN $6::BIGINT IS NULL THEN 'failed' ELSE 'pending' END,
           next_attempt_at = coalesce($6, next_attempt_at)
         WHERE store_id = $1 AND endpoint_id = $2 AND event_id = $3",
        &[&store, &endpoint, &event, &status_code, &error, &retry_at],
    )
    .await?;
    let found = opt(
        c,
        "UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, $3)
         WHERE store_id = $1 AND endpoint_id = $2
         RETURNING active, failing_since, url",
        &[&store, &endpoint, &r.at.millis()],
    )
    .await?
    .map(|row| (row.get::<_, i64>(0) != 0, row.get::<_, Option<i64>>(1), row.get::<_, String>(2)));
    let Some((true, Some(since), url)) = found else {
        return Ok(if retry_at.is_some() { Recorded::WillRetry } else { Recorded::GaveUp });
    };
    if r.at.millis() - since < r.disable_after_ms {
        return Ok(if retry_at.is_some() { Recorded::WillRetry } else { Recorded::GaveUp });
    }
    let hours = r.disable_after_ms as f64 / 3_600_000.0;
    let reason = format!(
        "disabled after failing every delivery attempt for {} (since {}); last error: {}",
        if hours >= 1.0 { format!("{hours:.0} h") } else { format!("{} s", r.disable_after_ms / 1000) },
        Timestamp::from_millis(since).to_rfc3339(),
        error.as_deref().map(String::from).unwrap_or_else(|| format!("HTTP {}", r.status_code.unwrap_or(0)))
    );
    exec(
        c,
        "UPDATE webhook_endpoints SET active = 0, disabled_reason = $3, updated_at = $4
         WHERE store_id = $1 AND endpoint_id = $2",
        &[&store, &endpoint, &reason, &r.at.millis()],
    )
    .await?;
    // Nothing more is sent to a disabled endpoint: its queue fails now, visibly, rather than
    // waiting out its retries.
    exec(
        c,
        "UPDATE webhook_deliveries SET status = 'failed', last_error = 'not sent: the endpoint was disabled'
         WHERE store_id = $1 AND endpoint_id = $2 AND status = 'pending' AND attempts = 0",
        &[&store, &endpoint],
    )
    .await?;
    exec(
        c,
        "UPDATE webhook_deliveries SET status = 'failed' WHERE store_id = $1 AND endpoint_id = $2 AND status = 'pending'",
        &[&store, &endpoint],
    )
    .await?;
    let message = format!(
        "Your webhook {} was disabled after failing for a day. Fix it, then add it again.",
        truncate(&url, 200)
    );
    exec(
        c,
        "INSERT INTO notifications (store_id, event_id, recipient, message, status, attempts, next_attempt_at, created_at)
         VALUES ($1, $2, $3, $4, 'pending', 0, $5, $5)
         ON CONFLICT DO NOTHING",
        &[&store, &Uuid::now_v7(), &STORE_OWNER, &message, &r.at.millis()],
    )
    .await?;
    Ok(Recorded::Disabled(reason))
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}
