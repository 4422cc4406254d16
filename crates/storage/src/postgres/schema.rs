//! The PostgreSQL schemas of the control database (the directory) and of a shard, as ordered
//! migrations — the same tables, keys and rules as the SQLite schemas (`sqlite::schema`), in
//! PostgreSQL's types: ids are `UUID`, secrets' hashes `BYTEA`, money and times `BIGINT`
//! (minor units; milliseconds since the epoch), JSON documents `TEXT` except where a query
//! looks inside (`JSONB`). Every shard table keeps `store_id` first in its keys, so moving a store
//! is one `WHERE store_id = $1` per table.
//!
//! A shard's tables live in the database named by its URL; its migrations are applied in order
//! and recorded in `kirana_schema`, one row per applied migration.

/// One migration: SQL run in one transaction.
pub type Migration = &'static str;

pub const DIRECTORY: &[Migration] = &[
    r#"
CREATE TABLE merchants (
    merchant_id UUID PRIMARY KEY,
    phone       TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

-- Bearer credentials, stored as SHA-256 of the secret: a leaked table grants nothing.
CREATE TABLE tokens (
    token_hash   BYTEA PRIMARY KEY,
    token_id     UUID NOT NULL UNIQUE,
    merchant_id  UUID NOT NULL,
    kind         TEXT NOT NULL,
    name         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    last_used_at BIGINT,
    revoked_at   BIGINT
);
CREATE INDEX tokens_by_merchant ON tokens (merchant_id, token_id);

-- Sign-in codes, stored as a keyed hash; only the newest unconsumed one per phone counts.
CREATE TABLE otp_codes (
    phone       TEXT NOT NULL,
    code_id     UUID NOT NULL,
    code_hash   BYTEA NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    attempts    BIGINT NOT NULL DEFAULT 0,
    consumed_at BIGINT,
    PRIMARY KEY (phone, code_id)
);

-- The store → shard map. The shard holds everything else about the store.
CREATE TABLE stores (
    store_id   UUID PRIMARY KEY,
    shard      BIGINT NOT NULL,
    owner_id   UUID NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX stores_by_owner ON stores (owner_id, store_id);
CREATE INDEX stores_by_shard ON stores (shard, store_id);

-- Every slug a store has had; exactly one per store is current. Old ones keep answering.
CREATE TABLE slugs (
    slug       TEXT PRIMARY KEY,
    store_id   UUID NOT NULL,
    is_current BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX slugs_by_store ON slugs (store_id, is_current);

CREATE TABLE domains (
    domain   TEXT PRIMARY KEY,
    store_id UUID NOT NULL UNIQUE
);
"#,
    r#"
-- How far `kirana seed` got, so an interrupted seed continues where it stopped.
CREATE TABLE seed_progress (
    name       TEXT PRIMARY KEY,
    plan       TEXT NOT NULL,       -- JSON of the parameters that shape the data
    next_index BIGINT NOT NULL
);
"#,
    // PostgreSQL only from here: store moves (docs/decisions/0017-store-moves.md).
    r#"
-- The journal of store moves between shards, one row per store (its latest move), so a move
-- that stopped half-way (crash, deploy) is resumed from the step it reached. `state` goes
-- copying -> catching_up -> frozen -> flipped -> cleaned; the flip to `flipped` commits in the
-- same transaction as the directory's `stores.shard`.
CREATE TABLE store_moves (
    store_id    UUID PRIMARY KEY,
    from_shard  BIGINT NOT NULL,
    to_shard    BIGINT NOT NULL,
    state       TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    rows_copied BIGINT NOT NULL DEFAULT 0,
    cutover_ms  BIGINT,                  -- from the freeze's start to the flip's commit
    error       TEXT                     -- the last failure, cleared when the move goes on
);
"#,
    r#"
-- Shards given to one store (`kirana shard pin`): placement never puts a new store there
-- (PgDirectory::placement_load reports them as -1), and one store holds at most one.
CREATE TABLE shard_dedications (
    shard      BIGINT PRIMARY KEY,
    store_id   UUID NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
"#,
    r#"
-- Background work that runs on one node at a time (a shard's relay, the consumers of an event
-- partition, a shard's notification sender), leased by the node running it; and the nodes that
-- share it, each renewing its row (storage::lease, decision 0025). Times are this database's
-- clock, so nodes' clocks need not agree.
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    epoch       BIGINT NOT NULL,          -- raised each time the lease changes hands
    acquired_at TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE TABLE lease_nodes (
    node       TEXT PRIMARY KEY,
    started_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
"#,
];

pub const SHARD: &[Migration] = &[
    r#"
CREATE TABLE stores (
    store_id          UUID PRIMARY KEY,
    owner_id          UUID NOT NULL,
    name              TEXT NOT NULL,
    settings          TEXT NOT NULL,       -- JSON: kirana_domain::store::StoreSettings
    next_order_number BIGINT NOT NULL DEFAULT 1001,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);

CREATE TABLE categories (
    store_id    UUID NOT NULL,
    category_id UUID NOT NULL,
    name        TEXT NOT NULL,
    name_key    TEXT NOT NULL,             -- lower-cased name: unique per store
    description TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (store_id, category_id)
);
CREATE UNIQUE INDEX categories_by_name ON categories (store_id, name_key);

CREATE TABLE products (
    store_id    UUID NOT NULL,
    product_id  UUID NOT NULL,
    title       TEXT NOT NULL,
    description TEXT NOT NULL,
    status      TEXT NOT NULL,
    category_id UUID,
    images      TEXT NOT NULL,             -- JSON array of URLs
    options     TEXT NOT NULL,             -- JSON array of option names
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (store_id, product_id)
);
CREATE INDEX products_by_status ON products (store_id, status, product_id);
CREATE INDEX products_by_status_category ON products (store_id, status, category_id, product_id);
CREATE INDEX products_by_category ON products (store_id, category_id, product_id);

CREATE TABLE variants (
    store_id         UUID NOT NULL,
    variant_id       UUID NOT NULL,
    product_id       UUID NOT NULL,
    position         BIGINT NOT NULL,
    options          TEXT NOT NULL,        -- JSON array of values, one per product option
    sku              TEXT,
    price            BIGINT NOT NULL CHECK (price >= 0),
    compare_at_price BIGINT,
    -- NULL: not tracked. The CHECK is the last line of defence against overselling; the
    -- guarded decrement at checkout is the first.
    stock            BIGINT CHECK (stock IS NULL OR stock >= 0),
    PRIMARY KEY (store_id, variant_id)
);
CREATE INDEX variants_by_product ON variants (store_id, product_id, position);
CREATE UNIQUE INDEX variants_by_sku ON variants (store_id, sku) WHERE sku IS NOT NULL;

CREATE TABLE carts (
    store_id   UUID NOT NULL,
    cart_id    UUID NOT NULL,
    token_hash BYTEA NOT NULL,
    status     TEXT NOT NULL,
    order_id   UUID,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (store_id, cart_id)
);

CREATE TABLE cart_items (
    store_id   UUID NOT NULL,
    cart_id    UUID NOT NULL,
    variant_id UUID NOT NULL,
    quantity   BIGINT NOT NULL CHECK (quantity > 0),
    added_at   BIGINT NOT NULL,
    PRIMARY KEY (store_id, cart_id, variant_id)
);

CREATE TABLE customers (
    store_id       UUID NOT NULL,
    customer_id    UUID NOT NULL,
    phone          TEXT NOT NULL,
    name           TEXT NOT NULL,
    email          TEXT,
    orders_count   BIGINT NOT NULL,
    total_spent    BIGINT NOT NULL,
    first_order_at BIGINT NOT NULL,
    last_order_at  BIGINT NOT NULL,
    PRIMARY KEY (store_id, customer_id)
);
CREATE UNIQUE INDEX customers_by_phone ON customers (store_id, phone);

CREATE TABLE coupons (
    store_id     UUID NOT NULL,
    coupon_id    UUID NOT NULL,
    code         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    value        BIGINT NOT NULL,
    max_discount BIGINT,
    min_order    BIGINT NOT NULL,
    usage_limit  BIGINT,
    -- Redeemed with a guarded increment; the CHECK backs it up.
    used_count   BIGINT NOT NULL DEFAULT 0 CHECK (usage_limit IS NULL OR used_count <= usage_limit),
    starts_at    BIGINT,
    expires_at   BIGINT,
    active       BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (store_id, coupon_id)
);
CREATE UNIQUE INDEX coupons_by_code ON coupons (store_id, code);

CREATE TABLE orders (
    store_id        UUID NOT NULL,
    order_id        UUID NOT NULL,
    number          BIGINT NOT NULL,
    status          TEXT NOT NULL,
    payment_method  TEXT NOT NULL,
    payment_status  TEXT NOT NULL,
    currency        TEXT NOT NULL,
    customer_id     UUID NOT NULL,
    customer_name   TEXT NOT NULL,
    customer_phone  TEXT NOT NULL,
    customer_email  TEXT,
    address         TEXT NOT NULL,         -- JSON: kirana_domain::order::Address
    subtotal        BIGINT NOT NULL,
    discount        BIGINT NOT NULL,
    delivery_fee    BIGINT NOT NULL,
    tax             BIGINT NOT NULL,
    total           BIGINT NOT NULL,
    coupon_id       UUID,
    coupon_code     TEXT,
    note            TEXT,
    tracking        TEXT,
    cart_id         UUID NOT NULL,
    access_hash     BYTEA NOT NULL,         -- hash of the cart token that placed it
    idempotency_key TEXT,
    request_hash    BYTEA,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (store_id, order_id)
);
-- Every index here is written by every checkout, so only those a query uses exist. Order numbers
-- are unique by construction (the store's counter, taken in the checkout's transaction) and a
-- cart becomes one order because its status is checked and changed in the same transaction.
CREATE UNIQUE INDEX orders_by_idempotency_key ON orders (store_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX orders_by_status ON orders (store_id, status, order_id);

CREATE TABLE order_items (
    store_id      UUID NOT NULL,
    order_id      UUID NOT NULL,
    line          BIGINT NOT NULL,
    product_id    UUID NOT NULL,
    variant_id    UUID NOT NULL,
    title         TEXT NOT NULL,
    variant_title TEXT NOT NULL,
    sku           TEXT,
    unit_price    BIGINT NOT NULL,
    quantity      BIGINT NOT NULL,
    line_total    BIGINT NOT NULL,
    PRIMARY KEY (store_id, order_id, line)
);

CREATE TABLE order_history (
    store_id    UUID NOT NULL,
    order_id    UUID NOT NULL,
    seq         BIGINT NOT NULL,
    from_status TEXT,
    to_status   TEXT NOT NULL,
    actor       TEXT NOT NULL,
    note        TEXT,
    tracking    TEXT,
    at          BIGINT NOT NULL,
    PRIMARY KEY (store_id, order_id, seq)
);

-- The outbox: the shard's log of events, in commit order. Keyed by position (the relay reads it
-- in order and deletes what it published, so it stays short) rather than by store; each row
-- still names its store. No secondary index: every one would be written by every change. See
-- docs/decisions/0004-outbox.md.
CREATE TABLE outbox (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    store_id    UUID NOT NULL,
    event_id    UUID NOT NULL,
    type        TEXT NOT NULL,
    version     BIGINT NOT NULL,
    occurred_at BIGINT NOT NULL,
    payload     TEXT NOT NULL
);
"#,
    r#"
-- A merchant's edits to their theme: one row per overridden template. Only sources that
-- compiled and rendered sample pages are ever stored, so the row is always "the last good one".
CREATE TABLE theme_templates (
    store_id   UUID NOT NULL,
    name       TEXT NOT NULL,
    source     TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (store_id, name)
);

-- Images a store uploaded: the bytes live in object storage under this key.
CREATE TABLE media (
    store_id   UUID NOT NULL,
    hash       TEXT NOT NULL,             -- hex SHA-256 of the original upload
    width      BIGINT NOT NULL,
    height     BIGINT NOT NULL,
    bytes      BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (store_id, hash)
);
"#,
    r#"
-- The event pipeline (docs/decisions/0015-events.md). Positions and dead letters are the
-- shard's own bookkeeping over its outbox; everything consumers produce is store-scoped.
CREATE TABLE consumer_positions (
    consumer   TEXT NOT NULL,
    partition  BIGINT NOT NULL,
    seq        BIGINT NOT NULL,          -- last outbox position applied in this partition
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, partition)
);

-- Events each consumer applied: a redelivered event (relay crash, broker redelivery) is
-- recognised by its id and changes nothing.
CREATE TABLE applied_events (
    store_id   UUID NOT NULL,
    consumer   TEXT NOT NULL,
    event_id   UUID NOT NULL,
    applied_at BIGINT NOT NULL,
    PRIMARY KEY (store_id, consumer, event_id)
);

CREATE TABLE dead_letters (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer    TEXT NOT NULL,
    partition   BIGINT NOT NULL,
    seq         BIGINT NOT NULL,
    store_id    UUID NOT NULL,
    event_id    UUID NOT NULL,
    type        TEXT NOT NULL,
    error       TEXT NOT NULL,
    attempts    BIGINT NOT NULL,
    parked_at   BIGINT NOT NULL,
    event       TEXT NOT NULL,
    replayed_at BIGINT
);

-- Sales rollups, kept by the analytics consumer: reports cost days, not orders.
CREATE TABLE sales_hourly (
    store_id UUID NOT NULL,
    hour     BIGINT NOT NULL,            -- epoch ms of the hour's start
    orders   BIGINT NOT NULL,
    revenue  BIGINT NOT NULL,
    units    BIGINT NOT NULL,
    PRIMARY KEY (store_id, hour)
);

CREATE TABLE sales_daily (
    store_id UUID NOT NULL,
    day      BIGINT NOT NULL,            -- days since 1970-01-01, India's calendar
    orders   BIGINT NOT NULL,
    revenue  BIGINT NOT NULL,
    units    BIGINT NOT NULL,
    PRIMARY KEY (store_id, day)
);

CREATE TABLE product_sales_daily (
    store_id   UUID NOT NULL,
    day        BIGINT NOT NULL,
    product_id UUID NOT NULL,
    title      TEXT NOT NULL,
    units      BIGINT NOT NULL,
    revenue    BIGINT NOT NULL,
    PRIMARY KEY (store_id, day, product_id)
);

-- Bumped by the cache-invalidation consumer on every change to a store: cache keys carry it.
CREATE TABLE cache_versions (
    store_id UUID NOT NULL PRIMARY KEY,
    version  BIGINT NOT NULL
);

-- Messages to send through the notifier, queued by the notifications consumer.
CREATE TABLE notifications (
    store_id        UUID NOT NULL,
    event_id        UUID NOT NULL,
    recipient       TEXT NOT NULL,
    message         TEXT NOT NULL,
    status          TEXT NOT NULL,        -- pending, sent, failed
    attempts        BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    sent_at         BIGINT,
    PRIMARY KEY (store_id, event_id)
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE status = 'pending';

-- Merchant webhooks: endpoints, and one delivery per (endpoint, event).
CREATE TABLE webhook_endpoints (
    store_id        UUID NOT NULL,
    endpoint_id     UUID NOT NULL,
    url             TEXT NOT NULL,
    secret          TEXT NOT NULL,
    event_types     JSONB NOT NULL,       -- array of types; "*" is every type
    active          BIGINT NOT NULL,
    disabled_reason TEXT,
    failing_since   BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (store_id, endpoint_id)
);

CREATE TABLE webhook_deliveries (
    store_id        UUID NOT NULL,
    endpoint_id     UUID NOT NULL,
    event_id        UUID NOT NULL,
    event_type      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    status          TEXT NOT NULL,        -- pending, delivered, failed (gave up)
    attempts        BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_status     BIGINT,
    last_error      TEXT,
    delivered_at    BIGINT,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (store_id, endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';

CREATE TABLE webhook_attempts (
    store_id    UUID NOT NULL,
    endpoint_id UUID NOT NULL,
    event_id    UUID NOT NULL,
    attempt     BIGINT NOT NULL,
    at          BIGINT NOT NULL,
    status_code BIGINT,
    error       TEXT,
    duration_ms BIGINT NOT NULL,
    PRIMARY KEY (store_id, endpoint_id, event_id, attempt)
);
"#,
    // PostgreSQL only from here: store moves (docs/decisions/0017-store-moves.md).
    r#"
-- Set on the source shard when a store's move freezes it: every write transaction of a store
-- starts by reading this column under FOR KEY SHARE and is refused once it is set (the node
-- re-reads the directory and the client retries on the new shard).
ALTER TABLE stores ADD COLUMN moved_to BIGINT;
"#,
    r#"
-- Change capture for store moves (postgres::moves). While a store is in `moving_stores`, every
-- write to one of its rows leaves the row's table and primary key in `move_changes`; the mover
-- re-reads the current row by that key and replays it on the target. Only keys are kept, not
-- values, so a change is replayed by its latest state, in any order, any number of times.
CREATE TABLE moving_stores (
    store_id   UUID PRIMARY KEY,
    target     BIGINT NOT NULL,
    started_at BIGINT NOT NULL
);

CREATE TABLE move_changes (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    store_id UUID NOT NULL,
    tbl      TEXT NOT NULL,
    key      JSONB NOT NULL
);
CREATE INDEX move_changes_by_store ON move_changes (store_id, id);

-- The arguments are the table's primary-key columns. A store that is not moving costs one probe
-- of `moving_stores`, which is empty but for the few stores moving right now.
CREATE FUNCTION capture_move() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    store UUID;
    r     JSONB;
    k     JSONB;
    old_k JSONB;
    i     INT;
BEGIN
    IF TG_OP = 'DELETE' THEN
        store := OLD.store_id;
    ELSE
        store := NEW.store_id;
    END IF;
    PERFORM 1 FROM moving_stores WHERE store_id = store;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        r := to_jsonb(NEW);
        k := '{}';
        FOR i IN 0 .. TG_NARGS - 1 LOOP
            k := k || jsonb_build_object(TG_ARGV[i], r -> TG_ARGV[i]);
        END LOOP;
        INSERT INTO move_changes (store_id, tbl, key) VALUES (store, TG_TABLE_NAME, k);
    END IF;
    IF TG_OP <> 'INSERT' THEN
        r := to_jsonb(OLD);
        old_k := '{}';
        FOR i IN 0 .. TG_NARGS - 1 LOOP
            old_k := old_k || jsonb_build_object(TG_ARGV[i], r -> TG_ARGV[i]);
        END LOOP;
        -- An update that kept its key is already recorded under the new one.
        IF k IS DISTINCT FROM old_k THEN
            INSERT INTO move_changes (store_id, tbl, key) VALUES (store, TG_TABLE_NAME, old_k);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

-- Every table holding a store's rows, except `dead_letters` (the shard's own bookkeeping about
-- its outbox, which stays with the shard). postgres::moves::STORE_TABLES is the same list.
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON stores FOR EACH ROW EXECUTE FUNCTION capture_move('store_id');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON categories FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'category_id');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON products FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'product_id');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON variants FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'variant_id');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON carts FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'cart_id');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON cart_items FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'cart_id', 'variant_id');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON customers FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'customer_id');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON coupons FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'coupon_id');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON orders FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'order_id');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON order_items FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'order_id', 'line');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON order_history FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'order_id', 'seq');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON outbox FOR EACH ROW EXECUTE FUNCTION capture_move('seq');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON theme_templates FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'name');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON media FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'hash');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON applied_events FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'consumer', 'event_id');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON sales_hourly FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'hour');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON sales_daily FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'day');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON product_sales_daily FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'day', 'product_id');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON cache_versions FOR EACH ROW EXECUTE FUNCTION capture_move('store_id');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON notifications FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'event_id');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON webhook_endpoints FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'endpoint_id');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON webhook_deliveries FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'endpoint_id', 'event_id');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON webhook_attempts FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'endpoint_id', 'event_id', 'attempt');
"#,
    r#"
-- The W3C traceparent of the request that wrote the event (NULL when none was traced), so the
-- relay and consumers can join that request's trace (docs/decisions/0022-tracing.md).
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
"#,
    r#"
-- Payments, refunds, the ledger and payouts (kirana_domain::payment), as on SQLite.
ALTER TABLE stores ADD COLUMN plan TEXT;     -- the operator's fee plan; NULL: the default

CREATE TABLE payments (
    store_id     UUID NOT NULL,
    payment_id   UUID NOT NULL,
    order_id     UUID NOT NULL,
    provider     TEXT NOT NULL,
    provider_ref TEXT,
    checkout_url TEXT,
    state        TEXT NOT NULL,
    amount       BIGINT NOT NULL,
    currency     TEXT NOT NULL,
    captured     BIGINT NOT NULL DEFAULT 0,
    refunded     BIGINT NOT NULL DEFAULT 0 CHECK (refunded >= 0 AND refunded <= captured),
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (store_id, payment_id)
);
CREATE UNIQUE INDEX payments_by_order ON payments (store_id, order_id);
CREATE INDEX payments_open ON payments (updated_at) WHERE state IN ('created', 'authorized');

CREATE TABLE payment_events (
    store_id    UUID NOT NULL,
    event_id    TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (store_id, event_id)
);

CREATE TABLE refunds (
    store_id     UUID NOT NULL,
    refund_id    UUID NOT NULL,
    payment_id   UUID NOT NULL,
    order_id     UUID NOT NULL,
    amount       BIGINT NOT NULL CHECK (amount > 0),
    reason       TEXT,
    status       TEXT NOT NULL,
    actor        TEXT NOT NULL,
    provider_ref TEXT,
    error        TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (store_id, refund_id)
);
CREATE INDEX refunds_by_order ON refunds (store_id, order_id);
CREATE INDEX refunds_pending ON refunds (updated_at) WHERE status = 'pending';

CREATE TABLE ledger_lines (
    store_id   UUID NOT NULL,
    entry_id   UUID NOT NULL,
    line       BIGINT NOT NULL,
    entry_key  TEXT NOT NULL,
    kind       TEXT NOT NULL,
    account    TEXT NOT NULL,
    amount     BIGINT NOT NULL,
    order_id   UUID,
    payout_id  UUID,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (store_id, entry_id, line)
);
CREATE UNIQUE INDEX ledger_by_key ON ledger_lines (store_id, entry_key, line);
CREATE INDEX ledger_unpaid ON ledger_lines (store_id, order_id) WHERE account = 'merchant' AND payout_id IS NULL;

CREATE TABLE payouts (
    store_id   UUID NOT NULL,
    payout_id  UUID NOT NULL,
    slot       BIGINT NOT NULL,
    amount     BIGINT NOT NULL CHECK (amount > 0),
    lines      BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (store_id, payout_id)
);
CREATE UNIQUE INDEX payouts_by_slot ON payouts (store_id, slot);

CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON payments FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'payment_id');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON payment_events FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'event_id');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON refunds FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'refund_id');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON ledger_lines FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'entry_id', 'line');
CREATE TRIGGER capture_move AFTER INSERT OR UPDATE OR DELETE ON payouts FOR EACH ROW EXECUTE FUNCTION capture_move('store_id', 'payout_id');
"#,
    r#"
-- A store a move is copying here: set on this shard's copy of its row until the move's final
-- drain, so nothing but the mover writes the store here before the directory flips (a writer
-- or consumer with a stale directory is refused by the fence, as `moved_to` refuses on the
-- source). Without it, effects applied here during the catch-up were overwritten by it (lost)
-- and could deadlock with it.
ALTER TABLE stores ADD COLUMN arriving_from BIGINT;
"#,
];

/// Applies the migrations the database has not seen, each in its own transaction, under an
/// advisory lock so two nodes starting at once do not race. Returns the schema version.
pub async fn migrate(client: &mut tokio_postgres::Client, migrations: &[Migration]) -> crate::Result<i64> {
    let err = |e: tokio_postgres::Error| crate::StorageError::Unavailable(format!("migrating: {e}"));
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS kirana_schema (
                 version    BIGINT PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(err)?;
    let known = migrations.len() as i64;
    loop {
        let tx = client.transaction().await.map_err(err)?;
        // One migrator at a time per database; the lock ends with the transaction.
        tx.execute("SELECT pg_advisory_xact_lock(7163921)", &[]).await.map_err(err)?;
        let current: i64 =
            tx.query_one("SELECT coalesce(max(version), 0) FROM kirana_schema", &[]).await.map_err(err)?.get(0);
        if current > known {
            return Err(crate::StorageError::Internal(format!(
                "schema version {current} is newer than this kirana knows ({known}); upgrade kirana"
            )));
        }
        if current == known {
            tx.commit().await.map_err(err)?;
            return Ok(current);
        }
        tx.batch_execute(migrations[current as usize]).await.map_err(err)?;
        tx.execute("INSERT INTO kirana_schema (version) VALUES ($1)", &[&(current + 1)]).await.map_err(err)?;
        tx.commit().await.map_err(err)?;
        tracing::info!(from = current, to = current + 1, "migrated a PostgreSQL schema");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sqlite_migration_has_its_postgres_twin() {
        // Both may have PostgreSQL-only migrations after the shared ones (store moves).
        assert!(DIRECTORY.len() >= crate::sqlite::schema::DIRECTORY.len());
        assert!(SHARD.len() >= crate::sqlite::schema::SHARD.len());
        for m in DIRECTORY.iter().chain(SHARD) {
            assert!(!m.contains("BLOB") && !m.contains("WITHOUT ROWID") && !m.contains("AUTOINCREMENT"), "{m}");
        }
    }
}
