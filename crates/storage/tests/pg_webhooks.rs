//! The PostgreSQL shard's webhooks (`postgres::shard::webhooks`), checked against SQLite as
//! `pg_log.rs` does: one scenario runs on both backends (SQLite through its public `Shard`,
//! `Webhooks` and `ShardLog`, PostgreSQL through the free functions, a transaction per write, in
//! a database of its own on the shared server at 127.0.0.1:5432, dropped at the end), and the
//! two transcripts must be equal once generated ids are replaced by their order of appearance.

#[macro_use]
mod pg_db;

use std::collections::HashMap;

use async_trait::async_trait;
use kirana_domain::event::Event;
use kirana_domain::page::{Cursor, Limit, Page, PageRequest};
use kirana_domain::store::{NewStore, StoreSettings};
use kirana_domain::{MerchantId, StoreId, Timestamp};
use kirana_storage::postgres::pool::PgPool;
use kirana_storage::postgres::shard::{log, stores, webhooks};
use kirana_storage::sqlite::{SqliteOptions, Synchronous};
use kirana_storage::{
    Applied, AttemptRecord, Delivery, DeliveryKey, DueDelivery, Effect, Endpoint, EndpointId, NewEndpoint, Outcome,
    Outgoing, Recorded, StorageError, StoreScope,
};
use pg_db::{at, normalise, pg_shard, record, record_dbg};
use serde_json::{Value, json};

const DAY_MS: i64 = 86_400_000;

fn settings() -> StoreSettings {
    StoreSettings { cod_enabled: true, online_payment_enabled: false, ..StoreSettings::default() }
}

fn endpoint(url: &str, types: &[&str]) -> NewEndpoint {
    NewEndpoint::parse(url, &types.iter().map(|t| t.to_string()).collect::<Vec<_>>()).unwrap()
}

fn page(limit: i64, after: Option<Cursor>) -> PageRequest {
    PageRequest { after, limit: Limit::parse(Some(limit)).unwrap() }
}

// ---------------------------------------------------------------------------------------------
// The scenario, once per backend

#[async_trait]
trait Backend: Sync {
    fn store(&self) -> StoreId;
    /// The endpoint and its secret's shape (the secret itself is random).
    async fn create(&self, new: NewEndpoint, now: Timestamp) -> Result<(Endpoint, String), StorageError>;
    async fn list(&self, page: PageRequest) -> Result<Page<Endpoint>, StorageError>;
    async fn get(&self, id: EndpointId) -> Result<Endpoint, StorageError>;
    async fn delete(&self, id: EndpointId) -> Result<(), StorageError>;
    async fn deliveries(&self, id: EndpointId, page: PageRequest) -> Result<Page<Delivery>, StorageError>;
    async fn due(&self, now: Timestamp, limit: u32, skip: &[EndpointId]) -> Result<Vec<DueDelivery>, StorageError>;
    async fn claim(
        &self,
        keys: Vec<DeliveryKey>,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<DeliveryKey>, StorageError>;
    async fn record(&self, record: AttemptRecord) -> Result<Recorded, StorageError>;
    async fn apply(&self, batch: Vec<Applied>, positions: Vec<(u32, i64)>, now: Timestamp)
    -> Result<u32, StorageError>;
    async fn due_notifications(&self, now: Timestamp, limit: u32) -> Result<Vec<Outgoing>, StorageError>;
}

fn secret_shape(s: &str) -> String {
    let hex = s.strip_prefix("whsec_").unwrap_or("");
    let ok = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    format!("whsec_ + 64 hex: {ok}")
}

struct OnSqlite {
    storage: kirana_storage::Storage,
    scope: StoreScope,
}

impl OnSqlite {
    fn shard(&self) -> &dyn kirana_storage::Shard {
        self.storage.shard(&self.scope)
    }
    fn hooks(&self) -> &dyn kirana_storage::Webhooks {
        self.shard().webhooks()
    }
}

#[async_trait]
impl Backend for OnSqlite {
    fn store(&self) -> StoreId {
        self.scope.store_id()
    }
    async fn create(&self, new: NewEndpoint, now: Timestamp) -> Result<(Endpoint, String), StorageError> {
        self.hooks().create_webhook(&self.scope, new, now).await.map(|c| (c.endpoint, secret_shape(&c.secret)))
    }
    async fn list(&self, page: PageRequest) -> Result<Page<Endpoint>, StorageError> {
        self.hooks().list_webhooks(&self.scope, page).await
    }
    async fn get(&self, id: EndpointId) -> Result<Endpoint, StorageError> {
        self.hooks().get_webhook(&self.scope, id).await
    }
    async fn delete(&self, id: EndpointId) -> Result<(), StorageError> {
        self.hooks().delete_webhook(&self.scope, id).await
    }
    async fn deliveries(&self, id: EndpointId, page: PageRequest) -> Result<Page<Delivery>, StorageError> {
        self.hooks().webhook_deliveries(&self.scope, id, page).await
    }
    async fn due(&self, now: Timestamp, limit: u32, skip: &[EndpointId]) -> Result<Vec<DueDelivery>, StorageError> {
        self.hooks().due_webhook_deliveries(now, limit, skip).await
    }
    async fn claim(
        &self,
        keys: Vec<DeliveryKey>,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<DeliveryKey>, StorageError> {
        self.hooks().claim_webhook_deliveries(keys, now, until).await
    }
    async fn record(&self, record: AttemptRecord) -> Result<Recorded, StorageError> {
        self.hooks().record_webhook_attempt(record).await
    }
    async fn apply(
        &self,
        batch: Vec<Applied>,
        positions: Vec<(u32, i64)>,
        now: Timestamp,
    ) -> Result<u32, StorageError> {
        self.shard().log().apply("webhooks", batch, positions, now).await
    }
    async fn due_notifications(&self, now: Timestamp, limit: u32) -> Result<Vec<Outgoing>, StorageError> {
        self.shard().log().due_notifications(now, limit).await
    }
}

struct OnPostgres {
    pool: PgPool,
    store: StoreId,
}

#[async_trait]
impl Backend for OnPostgres {
    fn store(&self) -> StoreId {
        self.store
    }
    async fn create(&self, new: NewEndpoint, now: Timestamp) -> Result<(Endpoint, String), StorageError> {
        in_tx!(self.pool, |t| webhooks::create(&t, self.store, &new, now).await)
            .map(|c| (c.endpoint, secret_shape(&c.secret)))
    }
    async fn list(&self, page: PageRequest) -> Result<Page<Endpoint>, StorageError> {
        webhooks::list(&self.pool.get().await.unwrap(), self.store, page).await
    }
    async fn get(&self, id: EndpointId) -> Result<Endpoint, StorageError> {
        webhooks::get(&self.pool.get().await.unwrap(), self.store, id).await
    }
    async fn delete(&self, id: EndpointId) -> Result<(), StorageError> {
        in_tx!(self.pool, |t| webhooks::delete(&t, self.store, id).await)
    }
    async fn deliveries(&self, id: EndpointId, page: PageRequest) -> Result<Page<Delivery>, StorageError> {
        webhooks::deliveries(&self.pool.get().await.unwrap(), self.store, id, page).await
    }
    async fn due(&self, now: Timestamp, limit: u32, skip: &[EndpointId]) -> Result<Vec<DueDelivery>, StorageError> {
        webhooks::due(&self.pool.get().await.unwrap(), now, limit, skip).await
    }
    async fn claim(
        &self,
        keys: Vec<DeliveryKey>,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<DeliveryKey>, StorageError> {
        in_tx!(self.pool, |t| webhooks::claim(&t, &keys, now, until).await)
    }
    async fn record(&self, record: AttemptRecord) -> Result<Recorded, StorageError> {
        in_tx!(self.pool, |t| webhooks::record(&t, &record).await)
    }
    async fn apply(
        &self,
        batch: Vec<Applied>,
        positions: Vec<(u32, i64)>,
        now: Timestamp,
    ) -> Result<u32, StorageError> {
        in_tx!(self.pool, |t| log::apply(&t, "webhooks", &batch, &positions, now).await)
    }
    async fn due_notifications(&self, now: Timestamp, limit: u32) -> Result<Vec<Outgoing>, StorageError> {
        log::due_notifications(&self.pool.get().await.unwrap(), now, limit).await
    }
}

fn due_json(d: &DueDelivery) -> Value {
    json!({
        "key": format!("{:?}", d.key),
        "event_type": d.event_type,
        "payload": serde_json::from_str::<Value>(&d.payload).unwrap(),
        "attempts": d.attempts,
        "created_at": d.created_at.millis(),
        "url": d.url,
        "secret": secret_shape(&d.secret),
    })
}

/// Due deliveries, as the transcript keeps them. Deliveries queued together are due at the same
/// moment, and SQLite leaves the order of such ties to its index: they are sorted here by key
/// (the order PostgreSQL gives them), so the comparison checks which ones, not the tie order.
async fn due(
    b: &dyn Backend,
    log: &mut Vec<Value>,
    step: &str,
    now: Timestamp,
    limit: u32,
    skip: &[EndpointId],
) -> Vec<DueDelivery> {
    let found = b.due(now, limit, skip).await;
    let mut found = found.unwrap();
    let key = |d: &DueDelivery| (d.key.store_id, d.key.endpoint_id, d.key.event_id);
    // Only runs queued together (same `created_at` and attempts, so the same due time) are
    // sorted; the order between runs is the due order each backend gave.
    let mut i = 0;
    while i < found.len() {
        let run = found[i..]
            .iter()
            .take_while(|d| (d.created_at, d.attempts) == (found[i].created_at, found[i].attempts))
            .count();
        found[i..i + run].sort_by_key(key);
        i += run;
    }
    log.push(json!({ "step": step, "result": found.iter().map(due_json).collect::<Vec<_>>() }));
    found
}

fn attempt(key: DeliveryKey, k: i64, status: Option<u16>, error: Option<&str>, outcome: Outcome) -> AttemptRecord {
    AttemptRecord {
        key,
        at: at(k),
        duration_ms: 120 + k,
        status_code: status,
        error: error.map(String::from),
        outcome,
        disable_after_ms: DAY_MS,
    }
}

fn event(b: &dyn Backend, kind: &str, k: i64, n: i64) -> Applied {
    Applied { event: Event::new(b.store(), kind, at(k), json!({ "n": n })), effects: vec![Effect::Webhooks] }
}

fn find(due: &[DueDelivery], endpoint: EndpointId, kind: &str) -> DeliveryKey {
    due.iter().find(|d| d.key.endpoint_id == endpoint && d.event_type == kind).expect("queued").key
}

/// The scenario. Returns its transcript; asserts what must hold on any backend.
async fn scenario(b: &dyn Backend) -> Vec<Value> {
    let mut log = Vec::new();
    let l = &mut log;

    // Endpoints: create, the per-store limit, list paging, get, delete.
    record(l, "list when empty", &b.list(page(10, None)).await);
    let bad = NewEndpoint::parse("http://example.com/h", &["order.placed".into(), "cart.updated".into()]);
    l.push(json!({ "step": "invalid endpoint", "result": format!("{bad:?}") }));
    let made = b.create(endpoint("https://a.example.com/hook", &["order.placed"]), at(10)).await;
    record(l, "create a", &made);
    let a = made.unwrap().0.id;
    let made = b.create(endpoint("https://b.example.com/hook", &["*", "order.placed"]), at(11)).await;
    record(l, "create b", &made);
    let bb = made.unwrap().0.id;
    let made = b.create(endpoint("https://c.example.com/hook", &["product.created", "product.updated"]), at(12)).await;
    record(l, "create c", &made);
    let c = made.unwrap().0.id;
    let mut fillers = Vec::new();
    for i in 3..20 {
        let made = b.create(endpoint(&format!("https://f{i}.example.com/"), &["store.updated"]), at(20 + i)).await;
        fillers.push(made.unwrap().0.id);
    }
    record(l, "create past the limit", &b.create(endpoint("https://x.example.com/", &["*"]), at(50)).await);
    let mut cursor = None;
    for n in 0..4 {
        let p = b.list(page(7, cursor)).await;
        record(l, &format!("list page {n}"), &p);
        match p.unwrap().next_cursor {
            Some(next) => cursor = Some(Cursor::parse(&next).unwrap()),
            None => break,
        }
    }
    for f in &fillers {
        b.delete(*f).await.unwrap();
    }
    record(l, "delete again", &b.delete(fillers[0]).await);
    record(l, "get deleted", &b.get(fillers[0]).await);
    record(l, "deliveries of deleted", &b.deliveries(fillers[0], page(10, None)).await);
    record(l, "get b", &b.get(bb).await);
    record(l, "list after deletes", &b.list(page(10, None)).await);
    let made = b.create(endpoint("https://d.example.com/hook", &["*"]), at(150)).await;
    record(l, "create d, after the events it misses", &made);
    let d = made.unwrap().0.id;

    // Deliveries, queued by the log's Webhooks effect (once per endpoint and event).
    let batch = vec![
        event(b, "order.placed", 100, 1),
        event(b, "product.created", 101, 2),
        event(b, "product.created", 102, 3),
        event(b, "product.created", 103, 4),
    ];
    record(l, "apply", &b.apply(batch.clone(), vec![(0, 4)], at(200)).await);
    record(l, "apply again", &b.apply(batch, vec![(0, 4)], at(201)).await);
    let later = vec![event(b, "store.updated", 160, 5)];
    record(l, "apply after d", &b.apply(later, vec![(0, 5)], at(202)).await);
    record(l, "deliveries of a", &b.deliveries(a, page(10, None)).await);
    let mut cursor = None;
    for n in 0..5 {
        let p = b.deliveries(c, page(1, cursor)).await;
        record(l, &format!("deliveries of c, page {n}"), &p);
        match p.unwrap().next_cursor {
            Some(next) => cursor = Some(Cursor::parse(&next).unwrap()),
            None => break,
        }
    }
    due(b, l, "due before", at(199), 100, &[]).await;
    let all = due(b, l, "due", at(202), 100, &[]).await;
    due(b, l, "due, skipping b and c", at(202), 100, &[bb, c]).await;
    due(b, l, "due, skipping all", at(202), 100, &[a, bb, c, d]).await;
    due(b, l, "due, limit 1", at(300), 1, &[bb, c, d]).await;

    // Claims lease what is still due.
    let keys: Vec<DeliveryKey> = all.iter().map(|d| d.key).collect();
    let gone = DeliveryKey { event_id: kirana_domain::EventId::generate(), ..keys[0] };
    let mut ask = keys.clone();
    ask.push(gone);
    record_dbg(l, "claim all", &b.claim(ask, at(203), at(263)).await);
    record_dbg(l, "claim again while leased", &b.claim(keys.clone(), at(204), at(264)).await);
    due(b, l, "due while leased", at(210), 100, &[]).await;
    record_dbg(l, "claim after the lease", &b.claim(keys[..2].to_vec(), at(263), at(323)).await);
    record_dbg(l, "claim nothing", &b.claim(vec![], at(263), at(323)).await);
    due(b, l, "due after the lease", at(400), 100, &[]).await;

    // Attempts: success, retries, giving up, disabling.
    let a1 = find(&all, a, "order.placed");
    record_dbg(l, "a delivered", &b.record(attempt(a1, 210, Some(204), None, Outcome::Delivered)).await);
    record_dbg(l, "a delivered twice", &b.record(attempt(a1, 211, Some(200), None, Outcome::Delivered)).await);

    let b1 = find(&all, bb, "order.placed");
    let long = "x".repeat(600);
    record_dbg(l, "b fails", &b.record(attempt(b1, 220, Some(500), None, Outcome::RetryAt(at(280)))).await);
    record(l, "b failing", &b.get(bb).await);
    record_dbg(l, "b fails again", &b.record(attempt(b1, 281, None, Some(&long), Outcome::RetryAt(at(400)))).await);
    for k in 0..10 {
        let r = b.record(attempt(b1, 400 + k, Some(503), Some("busy"), Outcome::RetryAt(at(401 + k)))).await;
        assert_eq!(r.unwrap(), Recorded::WillRetry);
    }
    record_dbg(l, "b delivered", &b.record(attempt(b1, 500, Some(200), None, Outcome::Delivered)).await);
    record(l, "b healthy", &b.get(bb).await);
    let b2 = all.iter().find(|x| x.key.endpoint_id == bb && x.event_type == "product.created").unwrap().key;
    record_dbg(l, "b gives up", &b.record(attempt(b2, 510, Some(410), Some(&long), Outcome::GiveUp)).await);
    record(l, "deliveries of b", &b.deliveries(bb, page(10, None)).await);

    let mut c_keys: Vec<DeliveryKey> = all.iter().filter(|x| x.key.endpoint_id == c).map(|x| x.key).collect();
    c_keys.sort_by_key(|k| k.event_id);
    record_dbg(l, "c fails", &b.record(attempt(c_keys[0], 600, Some(502), None, Outcome::RetryAt(at(700)))).await);
    record_dbg(
        l,
        "c fails on another",
        &b.record(attempt(c_keys[1], 601, None, Some("refused"), Outcome::RetryAt(at(700)))).await,
    );
    let day = DAY_MS / 1000;
    record_dbg(
        l,
        "c fails within the day",
        &b.record(attempt(c_keys[0], 600 + day - 1, Some(502), None, Outcome::RetryAt(at(700 + day)))).await,
    );
    record_dbg(
        l,
        "c fails for a day",
        &b.record(attempt(c_keys[0], 600 + day, Some(502), None, Outcome::RetryAt(at(800 + day)))).await,
    );
    record(l, "c disabled", &b.get(c).await);
    record(l, "deliveries of c", &b.deliveries(c, page(10, None)).await);
    record_dbg(
        l,
        "c attempt after disable",
        &b.record(attempt(c_keys[2], 601 + day, Some(500), None, Outcome::GiveUp)).await,
    );
    record_dbg(l, "owner told", &b.due_notifications(at(1000 + day), 10).await);
    due(b, l, "due without c", at(1000 + day), 100, &[]).await;
    let more = vec![event(b, "product.created", 900 + day, 6)];
    record(l, "apply for a disabled endpoint", &b.apply(more, vec![(0, 6)], at(901 + day)).await);
    record(l, "deliveries of c after", &b.deliveries(c, page(10, None)).await);

    // Deleting an endpoint drops its queue: an attempt in flight records nothing.
    let d1 = find(&all, d, "store.updated");
    record(l, "delete d", &b.delete(d).await);
    record_dbg(
        l,
        "d attempt after delete",
        &b.record(attempt(d1, 1000 + day, Some(200), None, Outcome::Delivered)).await,
    );
    record_dbg(l, "claim d after delete", &b.claim(vec![d1], at(1000 + day), at(1060 + day)).await);
    due(b, l, "due at the end", at(10 * day), 100, &[]).await;
    record(l, "list at the end", &b.list(page(10, None)).await);

    // What must hold on any backend, beyond agreeing with each other.
    let said = |step: &str| log.iter().find(|e| e["step"] == step).map(|e| e["result"].to_string()).unwrap();
    assert!(said("create past the limit").contains("TooMany"));
    assert!(said("a delivered twice").contains("Gone"));
    assert!(said("b gives up").contains("GaveUp"));
    assert!(said("deliveries of b").contains(&format!("{}…", "x".repeat(500))), "errors are cut at 500 characters");
    assert!(said("c fails within the day").contains("WillRetry"));
    assert!(said("c fails for a day").contains("Disabled"));
    assert!(said("c attempt after disable").contains("Gone"));
    assert!(said("owner told").contains("was disabled"));
    assert!(said("d attempt after delete").contains("Gone"));
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_behave_as_on_sqlite() {
    let owner = MerchantId::generate();

    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteOptions { synchronous: Synchronous::Normal, ..Default::default() };
    let storage = kirana_storage::sqlite::open(dir.path(), 1, &opts).unwrap();
    let new = NewStore { name: "Corner Shop".into(), slug: None, custom_domain: None, settings: settings() };
    let store = storage.create_store(owner, new, at(0)).await.unwrap();
    let scope = storage.scope_for_owner(owner, store.id).await.unwrap();
    let sqlite = OnSqlite { storage, scope };
    let mut on_sqlite = Value::Array(scenario(&sqlite).await);

    let (_db, pool) = pg_shard(4).await;
    let id = StoreId::generate();
    in_tx!(pool, |t| stores::insert(&t, id, owner, "Corner Shop", &settings(), at(0)).await).unwrap();
    let postgres = OnPostgres { pool, store: id };
    let mut on_postgres = Value::Array(scenario(&postgres).await);

    normalise(&mut on_sqlite, &mut HashMap::new());
    normalise(&mut on_postgres, &mut HashMap::new());
    let (a, b) = (on_sqlite.as_array().unwrap(), on_postgres.as_array().unwrap());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x, y, "SQLite (left) and PostgreSQL (right) differ");
    }
}
