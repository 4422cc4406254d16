//! Webhook endpoints, deliveries and attempts on SQLite.
//!
//! The merchant's side binds the scope's store id in every statement. The worker's side reads
//! the due index shard-wide (`webhook_deliveries_due`, on `next_attempt_at` for pending rows),
//! and writes only the rows of the delivery it names, each change guarded by the state it
//! expects (`status = 'pending'`), so racing workers or a concurrent delete do no harm.

use async_trait::async_trait;
use kirana_domain::page::{Page, PageRequest};
use kirana_domain::{EventId, StoreId, Timestamp};
use rand::Rng;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use uuid::Uuid;

use super::{SqliteShard, placeholders};
use crate::Result;
use crate::error::{ConflictKind, StorageError};
use crate::scope::StoreScope;
use crate::webhooks::{
    Attempt, AttemptRecord, CreatedEndpoint, Delivery, DeliveryKey, DeliveryStatus, DueDelivery, Endpoint, EndpointId,
    MAX_ENDPOINTS_PER_STORE, NewEndpoint, Outcome, RECENT_ATTEMPTS, Recorded, Webhooks,
};

const ENDPOINT: &str = "SELECT endpoint_id, url, event_types, active, disabled_reason, failing_since, created_at,
    updated_at FROM webhook_endpoints";

fn endpoint(r: &Row<'_>) -> rusqlite::Result<Endpoint> {
    let types: String = r.get(2)?;
    Ok(Endpoint {
        id: EndpointId::from_uuid(r.get(0)?),
        url: r.get(1)?,
        event_types: serde_json::from_str(&types).unwrap_or_default(),
        active: r.get(3)?,
        disabled_reason: r.get(4)?,
        failing_since: r.get::<_, Option<i64>>(5)?.map(Timestamp::from_millis),
        created_at: Timestamp::from_millis(r.get(6)?),
        updated_at: Timestamp::from_millis(r.get(7)?),
    })
}

fn get(c: &Connection, store: StoreId, id: EndpointId) -> Result<Endpoint> {
    c.prepare_cached(&format!("{ENDPOINT} WHERE store_id = ?1 AND endpoint_id = ?2"))?
        .query_row(params![store.uuid(), id.uuid()], endpoint)
        .optional()?
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

fn create(c: &Connection, store: StoreId, new: NewEndpoint, now: Timestamp) -> Result<CreatedEndpoint> {
    let count: i64 = c
        .prepare_cached("SELECT count(*) FROM webhook_endpoints WHERE store_id = ?1")?
        .query_row([store.uuid()], |r| r.get(0))?;
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
    c.prepare_cached(
        "INSERT INTO webhook_endpoints (store_id, endpoint_id, url, secret, event_types, active, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?6)",
    )?
    .execute(params![store.uuid(), id.uuid(), new.url.as_str(), secret, types, now.millis()])?;
    Ok(CreatedEndpoint { endpoint: get(c, store, id)?, secret })
}

fn list(c: &Connection, store: StoreId, page: PageRequest) -> Result<Page<Endpoint>> {
    let after = page.after.map(|p| p.uuid());
    let rows = c
        .prepare_cached(&format!(
            "{ENDPOINT} WHERE store_id = ?1 AND (?2 IS NULL OR endpoint_id < ?2) ORDER BY endpoint_id DESC LIMIT ?3"
        ))?
        .query_map(params![store.uuid(), after, page.limit.probe()], endpoint)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Page::from_probe(rows, page.limit, |e| e.id.uuid()))
}

fn delete(c: &Connection, store: StoreId, id: EndpointId) -> Result<()> {
    let n = c
        .prepare_cached("DELETE FROM webhook_endpoints WHERE store_id = ?1 AND endpoint_id = ?2")?
        .execute(params![store.uuid(), id.uuid()])?;
    if n == 0 {
        return Err(StorageError::NotFound);
    }
    // The endpoint's log goes with it: nothing can read it any more, and removing its pending
    // rows is what stops the worker (an attempt in flight then finds its row gone and records
    // nothing).
    for table in ["webhook_deliveries", "webhook_attempts"] {
        c.prepare_cached(&format!("DELETE FROM {table} WHERE store_id = ?1 AND endpoint_id = ?2"))?
            .execute(params![store.uuid(), id.uuid()])?;
    }
    Ok(())
}

fn deliveries(c: &Connection, store: StoreId, id: EndpointId, page: PageRequest) -> Result<Page<Delivery>> {
    get(c, store, id)?;
    let after = page.after.map(|p| p.uuid());
    let rows = c
        .prepare_cached(
            "SELECT event_id, event_type, status, attempts, next_attempt_at, last_status, last_error, delivered_at,
                    created_at
             FROM webhook_deliveries
             WHERE store_id = ?1 AND endpoint_id = ?2 AND (?3 IS NULL OR event_id < ?3)
             ORDER BY event_id DESC LIMIT ?4",
        )?
        .query_map(params![store.uuid(), id.uuid(), after, page.limit.probe()], |r| {
            let status = DeliveryStatus::from_stored(&r.get::<_, String>(2)?);
            Ok(Delivery {
                event_id: EventId::from_uuid(r.get(0)?),
                event_type: r.get(1)?,
                status,
                attempts: r.get(3)?,
                next_attempt_at: (status == DeliveryStatus::Pending)
                    .then(|| Timestamp::from_millis(r.get(4).unwrap_or_default())),
                last_status: r.get(5)?,
                last_error: r.get(6)?,
                delivered_at: r.get::<_, Option<i64>>(7)?.map(Timestamp::from_millis),
                created_at: Timestamp::from_millis(r.get(8)?),
                recent_attempts: vec![],
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut page = Page::from_probe(rows, page.limit, |d| d.event_id.uuid());
    if page.items.is_empty() {
        return Ok(page);
    }
    // The page's attempts in one query (the latest few per delivery), not one per delivery.
    let ids: Vec<Uuid> = page.items.iter().map(|d| d.event_id.uuid()).collect();
    let sql = format!(
        "SELECT event_id, attempt, at, status_code, error, duration_ms FROM (
           SELECT *, row_number() OVER (PARTITION BY event_id ORDER BY attempt DESC) AS n
           FROM webhook_attempts WHERE store_id = ?1 AND endpoint_id = ?2 AND event_id IN ({})
         ) WHERE n <= {RECENT_ATTEMPTS} ORDER BY event_id, attempt DESC",
        placeholders(3, ids.len())
    );
    let mut st = c.prepare(&sql)?;
    let mut bind: Vec<Uuid> = vec![store.uuid(), id.uuid()];
    bind.extend(ids);
    let attempts = st.query_map(params_from_iter(bind), |r| {
        Ok((
            EventId::from_uuid(r.get(0)?),
            Attempt {
                attempt: r.get(1)?,
                at: Timestamp::from_millis(r.get(2)?),
                status_code: r.get(3)?,
                error: r.get(4)?,
                duration_ms: r.get(5)?,
            },
        ))
    })?;
    for a in attempts {
        let (event, attempt) = a?;
        if let Some(d) = page.items.iter_mut().find(|d| d.event_id == event) {
            d.recent_attempts.push(attempt);
        }
    }
    Ok(page)
}

fn due(c: &Connection, now: Timestamp, limit: u32, skip: &[EndpointId]) -> Result<Vec<DueDelivery>> {
    // Served by the partial index on pending rows' `next_attempt_at`; a store-less scan is the
    // point (the worker serves the whole shard). Busy endpoints are left out in the query, not
    // after it, so their backlog cannot fill the page and starve the others.
    let skip_clause = if skip.is_empty() {
        String::new()
    } else {
        format!("AND d.endpoint_id NOT IN ({})", placeholders(3, skip.len()))
    };
    let sql = format!(
        "SELECT d.store_id, d.endpoint_id, d.event_id, d.event_type, d.payload, d.attempts, d.created_at, e.url, e.secret
         FROM webhook_deliveries d
         JOIN webhook_endpoints e ON e.store_id = d.store_id AND e.endpoint_id = d.endpoint_id
         WHERE d.status = 'pending' AND d.next_attempt_at <= ?1 AND e.active = 1 {skip_clause}
         ORDER BY d.next_attempt_at LIMIT ?2"
    );
    let mut bind: Vec<rusqlite::types::Value> = vec![now.millis().into(), i64::from(limit).into()];
    bind.extend(skip.iter().map(|e| rusqlite::types::Value::Blob(e.uuid().as_bytes().to_vec())));
    let mut st = c.prepare_cached(&sql)?;
    let rows = st.query_map(params_from_iter(bind), |r| {
        Ok(DueDelivery {
            key: DeliveryKey {
                store_id: StoreId::from_uuid(r.get(0)?),
                endpoint_id: EndpointId::from_uuid(r.get(1)?),
                event_id: EventId::from_uuid(r.get(2)?),
            },
            event_type: r.get(3)?,
            payload: r.get(4)?,
            attempts: r.get(5)?,
            created_at: Timestamp::from_millis(r.get(6)?),
            url: r.get(7)?,
            secret: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

fn claim(c: &Connection, keys: &[DeliveryKey], now: Timestamp, until: Timestamp) -> Result<Vec<DeliveryKey>> {
    let mut taken = Vec::with_capacity(keys.len());
    let mut st = c.prepare_cached(
        "UPDATE webhook_deliveries SET next_attempt_at = ?4
         WHERE store_id = ?1 AND endpoint_id = ?2 AND event_id = ?3 AND status = 'pending' AND next_attempt_at <= ?5",
    )?;
    for k in keys {
        let n = st.execute(params![
            k.store_id.uuid(),
            k.endpoint_id.uuid(),
            k.event_id.uuid(),
            until.millis(),
            now.millis()
        ])?;
        if n == 1 {
            taken.push(*k);
        }
    }
    Ok(taken)
}

/// How a disabled endpoint's merchant is told: through the notifications queue, to the store's
/// owner (the notifier resolves `owner` to their phone when it sends).
const STORE_OWNER: &str = "owner";

fn record(c: &Connection, r: &AttemptRecord) -> Result<Recorded> {
    let k = &r.key;
    let (store, endpoint, event) = (k.store_id.uuid(), k.endpoint_id.uuid(), k.event_id.uuid());
    let error = r.error.as_deref().map(|e| truncate(e, 500));
    // The attempt is logged only while the delivery is still pending: a row deleted with its
    // endpoint, or finished by another worker, keeps no stray attempt.
    let logged = c
        .prepare_cached(
            "INSERT OR IGNORE INTO webhook_attempts
               (store_id, endpoint_id, event_id, attempt, at, status_code, error, duration_ms)
             SELECT store_id, endpoint_id, event_id, attempts + 1, ?4, ?5, ?6, ?7 FROM webhook_deliveries
             WHERE store_id = ?1 AND endpoint_id = ?2 AND event_id = ?3 AND status = 'pending'",
        )?
        .execute(params![store, endpoint, event, r.at.millis(), r.status_code, error, r.duration_ms])?;
    if logged == 0 {
        return Ok(Recorded::Gone);
    }
    if r.outcome == Outcome::Delivered {
        c.prepare_cached(
            "UPDATE webhook_deliveries SET status = 'delivered', attempts = attempts + 1, last_status = ?4,
               last_error = NULL, delivered_at = ?5
             WHERE store_id = ?1 AND endpoint_id = ?2 AND event_id = ?3",
        )?
        .execute(params![store, endpoint, event, r.status_code, r.at.millis()])?;
        c.prepare_cached(
            "UPDATE webhook_endpoints SET failing_since = NULL
             WHERE store_id = ?1 AND endpoint_id = ?2 AND failing_since IS NOT NULL",
        )?
        .execute(params![store, endpoint])?;
        return Ok(Recorded::Delivered);
    }
    let retry_at = match r.outcome {
        Outcome::RetryAt(t) => Some(t.millis()),
        _ => None,
    };
    c.prepare_cached(
        "UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = ?4, last_error = ?5,
           status = CASE WHEN ?6 IS NULL THEN 'failed' ELSE 'pending' END,
           next_attempt_at = coalesce(?6, next_attempt_at)
         WHERE store_id = ?1 AND endpoint_id = ?2 AND event_id = ?3",
    )?
    .execute(params![store, endpoint, event, r.status_code, error, retry_at])?;
    c.prepare_cached(
        "UPDATE webhook_endpoints SET failing_since = coalesce(failing_since, ?3)
         WHERE store_id = ?1 AND endpoint_id = ?2",
    )?
    .execute(params![store, endpoint, r.at.millis()])?;
    let found: Option<(bool, Option<i64>, String)> = c
        .prepare_cached(
            "SELECT active, failing_since, url FROM webhook_endpoints WHERE store_id = ?1 AND endpoint_id = ?2",
        )?
        .query_row(params![store, endpoint], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .optional()?;
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
    c.prepare_cached(
        "UPDATE webhook_endpoints SET active = 0, disabled_reason = ?3, updated_at = ?4
         WHERE store_id = ?1 AND endpoint_id = ?2",
    )?
    .execute(params![store, endpoint, reason, r.at.millis()])?;
    // Nothing more is sent to a disabled endpoint: its queue fails now, visibly, rather than
    // waiting out its retries.
    c.prepare_cached(
        "UPDATE webhook_deliveries SET status = 'failed', last_error = 'not sent: the endpoint was disabled'
         WHERE store_id = ?1 AND endpoint_id = ?2 AND status = 'pending' AND attempts = 0",
    )?
    .execute(params![store, endpoint])?;
    c.prepare_cached(
        "UPDATE webhook_deliveries SET status = 'failed'
         WHERE store_id = ?1 AND endpoint_id = ?2 AND status = 'pending'",
    )?
    .execute(params![store, endpoint])?;
    c.prepare_cached(
        "INSERT OR IGNORE INTO notifications
           (store_id, event_id, recipient, message, status, attempts, next_attempt_at, created_at)
         VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?5)",
    )?
    .execute(params![
        store,
        Uuid::now_v7(),
        STORE_OWNER,
        format!(
            "Your webhook {} was disabled after failing for a day. Fix it, then add it again.",
            truncate(&url, 200)
        ),
        r.at.millis()
    ])?;
    Ok(Recorded::Disabled(reason))
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[async_trait]
impl Webhooks for SqliteShard {
    async fn create_webhook(&self, scope: &StoreScope, new: NewEndpoint, now: Timestamp) -> Result<CreatedEndpoint> {
        let s = scope.store_id();
        self.db.write(move |c| create(c, s, new, now)).await
    }

    async fn list_webhooks(&self, scope: &StoreScope, page: PageRequest) -> Result<Page<Endpoint>> {
        self.db.read(|c| list(c, scope.store_id(), page))
    }

    async fn get_webhook(&self, scope: &StoreScope, id: EndpointId) -> Result<Endpoint> {
        self.db.read(|c| get(c, scope.store_id(), id))
    }

    async fn delete_webhook(&self, scope: &StoreScope, id: EndpointId) -> Result<()> {
        let s = scope.store_id();
        self.db.write(move |c| delete(c, s, id)).await
    }

    async fn webhook_deliveries(
        &self,
        scope: &StoreScope,
        id: EndpointId,
        page: PageRequest,
    ) -> Result<Page<Delivery>> {
        self.db.read(|c| deliveries(c, scope.store_id(), id, page))
    }

    async fn due_webhook_deliveries(
        &self,
        now: Timestamp,
        limit: u32,
        skip: &[EndpointId],
    ) -> Result<Vec<DueDelivery>> {
        self.db.read(|c| due(c, now, limit, skip))
    }

    async fn claim_webhook_deliveries(
        &self,
        keys: Vec<DeliveryKey>,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<DeliveryKey>> {
        if keys.is_empty() {
            return Ok(keys);
        }
        self.db.write(move |c| claim(c, &keys, now, until)).await
    }

    async fn record_webhook_attempt(&self, record: AttemptRecord) -> Result<Recorded> {
        self.db.write(move |c| self::record(c, &record)).await
    }
}
