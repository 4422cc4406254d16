//! Schemas of the directory and of a shard, as ordered migrations tracked by `user_version`.
//!
//! Rules every shard table follows: `store_id` is the first column of the primary key and of
//! every index, so each query touches one store's rows only, and a store's rows can be copied to
//! another shard with one `WHERE store_id = ?` per table. Ids are 16-byte UUIDv7 blobs; money is
//! INTEGER minor units; times are INTEGER milliseconds since the epoch.

use rusqlite::Connection;

use crate::Result;

pub(crate) type Migration = &'static str;

pub(crate) const DIRECTORY: &[Migration] = &[
    r#"
CREATE TABLE merchants (
    merchant_id BLOB PRIMARY KEY,
    phone       TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;

-- Bearer credentials, stored as SHA-256 of the secret: a leaked table grants nothing.
CREATE TABLE tokens (
    token_hash   BLOB PRIMARY KEY,
    token_id     BLOB NOT NULL UNIQUE,
    merchant_id  BLOB NOT NULL,
    kind         TEXT NOT NULL,
    name         TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    last_used_at INTEGER,
    revoked_at   INTEGER
) WITHOUT ROWID;
CREATE INDEX tokens_by_merchant ON tokens (merchant_id, token_id);

-- Sign-in codes, stored as a keyed hash; only the newest unconsumed one per phone counts.
CREATE TABLE otp_codes (
    phone       TEXT NOT NULL,
    code_id     BLOB NOT NULL,
    code_hash   BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    consumed_at INTEGER,
    PRIMARY KEY (phone, code_id)
) WITHOUT ROWID;

-- The store → shard map. The shard holds everything else about the store.
CREATE TABLE stores (
    store_id   BLOB PRIMARY KEY,
    shard      INTEGER NOT NULL,
    owner_id   BLOB NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX stores_by_owner ON stores (owner_id, store_id);
CREATE INDEX stores_by_shard ON stores (shard, store_id);

-- Every slug a store has had; exactly one per store is current. Old ones keep answering.
CREATE TABLE slugs (
    slug       TEXT PRIMARY KEY,
    store_id   BLOB NOT NULL,
    is_current INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX slugs_by_store ON slugs (store_id, is_current);

CREATE TABLE domains (
    domain   TEXT PRIMARY KEY,
    store_id BLOB NOT NULL UNIQUE
) WITHOUT ROWID;
"#,
    r#"
-- How far `kirana seed` got, so an interrupted seed continues where it stopped.
CREATE TABLE seed_progress (
    name       TEXT PRIMARY KEY,
    plan       TEXT NOT NULL,       -- JSON of the parameters that shape the data
    next_index INTEGER NOT NULL
) WITHOUT ROWID;
"#,
];

pub(crate) const SHARD: &[Migration] = &[
    r#"
CREATE TABLE stores (
    store_id          BLOB PRIMARY KEY,
    owner_id          BLOB NOT NULL,
    name              TEXT NOT NULL,
    settings          TEXT NOT NULL,       -- JSON: kirana_domain::store::StoreSettings
    next_order_number INTEGER NOT NULL DEFAULT 1001,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE categories (
    store_id    BLOB NOT NULL,
    category_id BLOB NOT NULL,
    name        TEXT NOT NULL,
    name_key    TEXT NOT NULL,             -- lower-cased name: unique per store
    description TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (store_id, category_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX categories_by_name ON categories (store_id, name_key);

CREATE TABLE products (
    store_id    BLOB NOT NULL,
    product_id  BLOB NOT NULL,
    title       TEXT NOT NULL,
    description TEXT NOT NULL,
    status      TEXT NOT NULL,
    category_id BLOB,
    images      TEXT NOT NULL,             -- JSON array of URLs
    options     TEXT NOT NULL,             -- JSON array of option names
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (store_id, product_id)
) WITHOUT ROWID;
CREATE INDEX products_by_status ON products (store_id, status, product_id);
CREATE INDEX products_by_status_category ON products (store_id, status, category_id, product_id);
CREATE INDEX products_by_category ON products (store_id, category_id, product_id);

CREATE TABLE variants (
    store_id         BLOB NOT NULL,
    variant_id       BLOB NOT NULL,
    product_id       BLOB NOT NULL,
    position         INTEGER NOT NULL,
    options          TEXT NOT NULL,        -- JSON array of values, one per product option
    sku              TEXT,
    price            INTEGER NOT NULL CHECK (price >= 0),
    compare_at_price INTEGER,
    -- NULL: not tracked. The CHECK is the last line of defence against overselling; the
    -- guarded decrement at checkout is the first.
    stock            INTEGER CHECK (stock IS NULL OR stock >= 0),
    PRIMARY KEY (store_id, variant_id)
) WITHOUT ROWID;
CREATE INDEX variants_by_product ON variants (store_id, product_id, position);
CREATE UNIQUE INDEX variants_by_sku ON variants (store_id, sku) WHERE sku IS NOT NULL;

CREATE TABLE carts (
    store_id   BLOB NOT NULL,
    cart_id    BLOB NOT NULL,
    token_hash BLOB NOT NULL,
    status     TEXT NOT NULL,
    order_id   BLOB,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (store_id, cart_id)
) WITHOUT ROWID;

CREATE TABLE cart_items (
    store_id   BLOB NOT NULL,
    cart_id    BLOB NOT NULL,
    variant_id BLOB NOT NULL,
    quantity   INTEGER NOT NULL CHECK (quantity > 0),
    added_at   INTEGER NOT NULL,
    PRIMARY KEY (store_id, cart_id, variant_id)
) WITHOUT ROWID;

CREATE TABLE customers (
    store_id       BLOB NOT NULL,
    customer_id    BLOB NOT NULL,
    phone          TEXT NOT NULL,
    name           TEXT NOT NULL,
    email          TEXT,
    orders_count   INTEGER NOT NULL,
    total_spent    INTEGER NOT NULL,
    first_order_at INTEGER NOT NULL,
    last_order_at  INTEGER NOT NULL,
    PRIMARY KEY (store_id, customer_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX customers_by_phone ON customers (store_id, phone);

CREATE TABLE coupons (
    store_id     BLOB NOT NULL,
    coupon_id    BLOB NOT NULL,
    code         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    value        INTEGER NOT NULL,
    max_discount INTEGER,
    min_order    INTEGER NOT NULL,
    usage_limit  INTEGER,
    -- Redeemed with a guarded increment; the CHECK backs it up.
    used_count   INTEGER NOT NULL DEFAULT 0 CHECK (usage_limit IS NULL OR used_count <= usage_limit),
    starts_at    INTEGER,
    expires_at   INTEGER,
    active       INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (store_id, coupon_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX coupons_by_code ON coupons (store_id, code);

CREATE TABLE orders (
    store_id        BLOB NOT NULL,
    order_id        BLOB NOT NULL,
    number          INTEGER NOT NULL,
    status          TEXT NOT NULL,
    payment_method  TEXT NOT NULL,
    payment_status  TEXT NOT NULL,
    currency        TEXT NOT NULL,
    customer_id     BLOB NOT NULL,
    customer_name   TEXT NOT NULL,
    customer_phone  TEXT NOT NULL,
    customer_email  TEXT,
    address         TEXT NOT NULL,         -- JSON: kirana_domain::order::Address
    subtotal        INTEGER NOT NULL,
    discount        INTEGER NOT NULL,
    delivery_fee    INTEGER NOT NULL,
    tax             INTEGER NOT NULL,
    total           INTEGER NOT NULL,
    coupon_id       BLOB,
    coupon_code     TEXT,
    note            TEXT,
    tracking        TEXT,
    cart_id         BLOB NOT NULL,
    access_hash     BLOB NOT NULL,         -- hash of the cart token that placed it
    idempotency_key TEXT,
    request_hash    BLOB,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (store_id, order_id)
) WITHOUT ROWID;
-- Every index here is written by every checkout, so only those a query uses exist. Order numbers
-- are unique by construction (the store's counter, taken in the checkout's transaction) and a
-- cart becomes one order because its status is checked and changed in the same transaction.
CREATE UNIQUE INDEX orders_by_idempotency_key ON orders (store_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX orders_by_status ON orders (store_id, status, order_id);

CREATE TABLE order_items (
    store_id      BLOB NOT NULL,
    order_id      BLOB NOT NULL,
    line          INTEGER NOT NULL,
    product_id    BLOB NOT NULL,
    variant_id    BLOB NOT NULL,
    title         TEXT NOT NULL,
    variant_title TEXT NOT NULL,
    sku           TEXT,
    unit_price    INTEGER NOT NULL,
    quantity      INTEGER NOT NULL,
    line_total    INTEGER NOT NULL,
    PRIMARY KEY (store_id, order_id, line)
) WITHOUT ROWID;

CREATE TABLE order_history (
    store_id    BLOB NOT NULL,
    order_id    BLOB NOT NULL,
    seq         INTEGER NOT NULL,
    from_status TEXT,
    to_status   TEXT NOT NULL,
    actor       TEXT NOT NULL,
    note        TEXT,
    tracking    TEXT,
    at          INTEGER NOT NULL,
    PRIMARY KEY (store_id, order_id, seq)
) WITHOUT ROWID;

-- The outbox: the shard's log of events, in commit order. Keyed by position (the relay reads it
-- in order and deletes what it published, so it stays short) rather than by store; each row
-- still names its store. No secondary index: every one would be written by every change. See
-- docs/decisions/0004-outbox.md.
CREATE TABLE outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    store_id    BLOB NOT NULL,
    event_id    BLOB NOT NULL,
    type        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    occurred_at INTEGER NOT NULL,
    payload     TEXT NOT NULL
);
"#,
    r#"
-- A merchant's edits to their theme: one row per overridden template. Only sources that
-- compiled and rendered sample pages are ever stored, so the row is always "the last good one".
CREATE TABLE theme_templates (
    store_id   BLOB NOT NULL,
    name       TEXT NOT NULL,
    source     TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (store_id, name)
) WITHOUT ROWID;

-- Images a store uploaded: the bytes live in object storage under this key.
CREATE TABLE media (
    store_id   BLOB NOT NULL,
    hash       TEXT NOT NULL,             -- hex SHA-256 of the original upload
    width      INTEGER NOT NULL,
    height     INTEGER NOT NULL,
    bytes      INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (store_id, hash)
) WITHOUT ROWID;
"#,
    r#"
-- The event pipeline (docs/decisions/0015-events.md). Positions and dead letters are the
-- shard's own bookkeeping over its outbox; everything consumers produce is store-scoped.
CREATE TABLE consumer_positions (
    consumer   TEXT NOT NULL,
    partition  INTEGER NOT NULL,
    seq        INTEGER NOT NULL,          -- last outbox position applied in this partition
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, partition)
) WITHOUT ROWID;

-- Events each consumer applied: a redelivered event (relay crash, broker redelivery) is
-- recognised by its id and changes nothing.
CREATE TABLE applied_events (
    store_id   BLOB NOT NULL,
    consumer   TEXT NOT NULL,
    event_id   BLOB NOT NULL,
    applied_at INTEGER NOT NULL,
    PRIMARY KEY (store_id, consumer, event_id)
) WITHOUT ROWID;

CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    consumer    TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    store_id    BLOB NOT NULL,
    event_id    BLOB NOT NULL,
    type        TEXT NOT NULL,
    error       TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    parked_at   INTEGER NOT NULL,
    event       TEXT NOT NULL,
    replayed_at INTEGER
);

-- Sales rollups, kept by the analytics consumer: reports cost days, not orders.
CREATE TABLE sales_hourly (
    store_id BLOB NOT NULL,
    hour     INTEGER NOT NULL,            -- epoch ms of the hour's start
    orders   INTEGER NOT NULL,
    revenue  INTEGER NOT NULL,
    units    INTEGER NOT NULL,
    PRIMARY KEY (store_id, hour)
) WITHOUT ROWID;

CREATE TABLE sales_daily (
    store_id BLOB NOT NULL,
    day      INTEGER NOT NULL,            -- days since 1970-01-01, India's calendar
    orders   INTEGER NOT NULL,
    revenue  INTEGER NOT NULL,
    units    INTEGER NOT NULL,
    PRIMARY KEY (store_id, day)
) WITHOUT ROWID;

CREATE TABLE product_sales_daily (
    store_id   BLOB NOT NULL,
    day        INTEGER NOT NULL,
    product_id BLOB NOT NULL,
    title      TEXT NOT NULL,
    units      INTEGER NOT NULL,
    revenue    INTEGER NOT NULL,
    PRIMARY KEY (store_id, day, product_id)
) WITHOUT ROWID;

-- Bumped by the cache-invalidation consumer on every change to a store: cache keys carry it.
CREATE TABLE cache_versions (
    store_id BLOB NOT NULL PRIMARY KEY,
    version  INTEGER NOT NULL
) WITHOUT ROWID;

-- Messages to send through the notifier, queued by the notifications consumer.
CREATE TABLE notifications (
    store_id        BLOB NOT NULL,
    event_id        BLOB NOT NULL,
    recipient       TEXT NOT NULL,
    message         TEXT NOT NULL,
    status          TEXT NOT NULL,        -- pending, sent, failed
    attempts        INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    sent_at         INTEGER,
    PRIMARY KEY (store_id, event_id)
) WITHOUT ROWID;
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'pending';

-- Merchant webhooks: endpoints, and one delivery per (endpoint, event).
CREATE TABLE webhook_endpoints (
    store_id        BLOB NOT NULL,
    endpoint_id     BLOB NOT NULL,
    url             TEXT NOT NULL,
    secret          TEXT NOT NULL,
    event_types     TEXT NOT NULL,        -- JSON array of types; "*" is every type
    active          INTEGER NOT NULL,
    disabled_reason TEXT,
    failing_since   INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (store_id, endpoint_id)
) WITHOUT ROWID;

CREATE TABLE webhook_deliveries (
    store_id        BLOB NOT NULL,
    endpoint_id     BLOB NOT NULL,
    event_id        BLOB NOT NULL,
    event_type      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL,        -- pending, delivered, failed (gave up)
    attempts        INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    last_status     INTEGER,
    last_error      TEXT,
    delivered_at    INTEGER,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (store_id, endpoint_id, event_id)
) WITHOUT ROWID;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';

CREATE TABLE webhook_attempts (
    store_id    BLOB NOT NULL,
    endpoint_id BLOB NOT NULL,
    event_id    BLOB NOT NULL,
    attempt     INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    status_code INTEGER,
    error       TEXT,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (store_id, endpoint_id, event_id, attempt)
) WITHOUT ROWID;
"#,
    r#"
-- The W3C traceparent of the request that wrote the event (NULL when none was traced), so the
-- relay and consumers can join that request's trace (docs/decisions/0022-tracing.md).
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
"#,
    r#"
-- Payments (kirana_domain::payment): one per order paid online. `refunded` counts refunds
-- reserved or done; the CHECK backs up the guarded increment that reserves them.
ALTER TABLE stores ADD COLUMN plan TEXT;     -- the operator's fee plan; NULL: the default

CREATE TABLE payments (
    store_id     BLOB NOT NULL,
    payment_id   BLOB NOT NULL,
    order_id     BLOB NOT NULL,
    provider     TEXT NOT NULL,
    provider_ref TEXT,
    checkout_url TEXT,
    state        TEXT NOT NULL,
    amount       INTEGER NOT NULL,
    currency     TEXT NOT NULL,
    captured     INTEGER NOT NULL DEFAULT 0,
    refunded     INTEGER NOT NULL DEFAULT 0 CHECK (refunded >= 0 AND refunded <= captured),
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (store_id, payment_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX payments_by_order ON payments (store_id, order_id);
-- The reconciler's walk: open payments by age, shard-wide.
CREATE INDEX payments_open ON payments (updated_at) WHERE state IN ('created', 'authorized');

-- Provider events applied, so a webhook delivered twice changes nothing the second time.
CREATE TABLE payment_events (
    store_id    BLOB NOT NULL,
    event_id    TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (store_id, event_id)
) WITHOUT ROWID;

CREATE TABLE refunds (
    store_id     BLOB NOT NULL,
    refund_id    BLOB NOT NULL,
    payment_id   BLOB NOT NULL,
    order_id     BLOB NOT NULL,
    amount       INTEGER NOT NULL CHECK (amount > 0),
    reason       TEXT,
    status       TEXT NOT NULL,
    actor        TEXT NOT NULL,
    provider_ref TEXT,
    error        TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (store_id, refund_id)
) WITHOUT ROWID;
CREATE INDEX refunds_by_order ON refunds (store_id, order_id);
CREATE INDEX refunds_pending ON refunds (updated_at) WHERE status = 'pending';

-- The double-entry ledger: every entry's lines sum to zero; `entry_key` names its cause, once
-- per store. `payout_id` marks merchant lines a payout settled.
CREATE TABLE ledger_lines (
    store_id   BLOB NOT NULL,
    entry_id   BLOB NOT NULL,
    line       INTEGER NOT NULL,
    entry_key  TEXT NOT NULL,
    kind       TEXT NOT NULL,
    account    TEXT NOT NULL,
    amount     INTEGER NOT NULL,
    order_id   BLOB,
    payout_id  BLOB,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (store_id, entry_id, line)
) WITHOUT ROWID;
CREATE UNIQUE INDEX ledger_by_key ON ledger_lines (store_id, entry_key, line);
CREATE INDEX ledger_unpaid ON ledger_lines (store_id, order_id) WHERE account = 'merchant' AND payout_id IS NULL;

CREATE TABLE payouts (
    store_id   BLOB NOT NULL,
    payout_id  BLOB NOT NULL,
    slot       INTEGER NOT NULL,
    amount     INTEGER NOT NULL CHECK (amount > 0),
    lines      INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (store_id, payout_id)
) WITHOUT ROWID;
-- One payout per store per scheduled run, whoever runs it.
CREATE UNIQUE INDEX payouts_by_slot ON payouts (store_id, slot);
"#,
];

/// Applies the migrations the file has not seen, in one transaction.
pub(crate) fn migrate(conn: &Connection, migrations: &[Migration]) -> Result<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = migrations.len() as i64;
    if current > known {
        return Err(crate::StorageError::Internal(format!(
            "database schema version {current} is newer than this kirana knows ({known}); upgrade kirana"
        )));
    }
    if current == known {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let applied = (|| -> rusqlite::Result<()> {
        for sql in &migrations[current as usize..] {
            conn.execute_batch(sql)?;
        }
        conn.pragma_update(None, "user_version", known)?;
        Ok(())
    })();
    match applied {
        Ok(()) => conn.execute_batch("COMMIT")?,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e.into());
        }
    }
    tracing::info!(from = current, to = known, "migrated database schema");
    Ok(())
}

/// The schema version a file is at and the one this build expects.
pub(crate) fn version(conn: &Connection) -> Result<i64> {
    Ok(conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
}
