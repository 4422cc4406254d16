//! The PostgreSQL shard's carts, checkout, orders and coupons
//! (`postgres::shard::{carts, checkout, orders, coupons}`), checked against SQLite as
//! `pg_catalog.rs` does: one scenario runs on both backends (SQLite through its public `Shard`,
//! PostgreSQL through the free functions, a transaction per call, in a database of its own on
//! the shared server at 127.0.0.1:5432, dropped at the end), and the two transcripts — every
//! value, every error, every outbox event — must be equal once generated ids are replaced by
//! their order of appearance. Then what only PostgreSQL can get wrong: checkouts racing for
//! the last units, for a coupon's last uses, and for one idempotency key.

#[macro_use]
mod pg_db;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use kirana_domain::cart::{CART_TTL_SECS, Cart, Checkout, CheckoutCustomer, Quantity};
use kirana_domain::catalog::{NewVariant, Product, ProductChange, ProductStatus};
use kirana_domain::coupon::{Coupon, CouponChange, CouponKind};
use kirana_domain::customer::Customer;
use kirana_domain::order::{Address, Order, OrderStatus, PaymentMethod, TransitionRequest};
use kirana_domain::page::{Cursor, Limit, Page, PageRequest};
use kirana_domain::store::{NewStore, StoreSettings};
use kirana_domain::{
    Amount, CartId, CouponId, CustomerId, MerchantId, OrderId, Phone, ProductId, StoreId, Timestamp, VariantId,
};
use kirana_storage::postgres::pool::PgPool;
use kirana_storage::postgres::shard::{carts, catalog, checkout, coupons, orders, stores};
use kirana_storage::sqlite::{SqliteOptions, Synchronous};
use kirana_storage::{ConflictKind, IdempotencyKey, Storage, StorageError, StoreScope};
use pg_db::{at, normalise, pg_shard, record};
use serde_json::{Value, json};

/// The outbox: (type, payload).
async fn outbox(pool: &PgPool) -> Vec<(String, Value)> {
    let c = pool.get().await.unwrap();
    c.query("SELECT type, payload, version FROM outbox ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r.get::<_, i64>(2), 1, "event version");
            (r.get(0), serde_json::from_str(r.get::<_, &str>(1)).unwrap())
        })
        .collect()
}

fn settings() -> StoreSettings {
    StoreSettings {
        delivery_fee: Amount::from_stored(4_000),
        free_delivery_threshold: Some(Amount::from_stored(100_000)),
        tax_rate_bps: 500,
        prices_include_tax: false,
        cod_enabled: true,
        online_payment_enabled: false,
        ..StoreSettings::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The scenario, once per backend

#[async_trait]
trait Orders: Sync {
    async fn create_product(&self, change: ProductChange, now: Timestamp) -> Result<Product, StorageError>;
    async fn product(&self, id: ProductId) -> Result<Product, StorageError>;
    async fn create_cart(&self, token: [u8; 32], now: Timestamp) -> Result<Cart, StorageError>;
    async fn cart(&self, id: CartId, token: [u8; 32], now: Timestamp) -> Result<Cart, StorageError>;
    async fn set_item(
        &self,
        id: CartId,
        token: [u8; 32],
        variant: VariantId,
        q: Quantity,
        now: Timestamp,
    ) -> Result<Cart, StorageError>;
    async fn checkout(
        &self,
        id: CartId,
        token: [u8; 32],
        req: Checkout,
        idem: Option<IdempotencyKey>,
        now: Timestamp,
    ) -> Result<(Order, bool), StorageError>;
    async fn orders(&self, status: Option<OrderStatus>, page: PageRequest) -> Result<Page<Order>, StorageError>;
    async fn order(&self, id: OrderId) -> Result<Order, StorageError>;
    async fn order_for_shopper(&self, id: OrderId, token: [u8; 32]) -> Result<Order, StorageError>;
    async fn transition(
        &self,
        id: OrderId,
        req: TransitionRequest,
        actor: &str,
        now: Timestamp,
    ) -> Result<Order, StorageError>;
    async fn customers(&self, page: PageRequest) -> Result<Page<Customer>, StorageError>;
    async fn customer(&self, id: CustomerId) -> Result<Customer, StorageError>;
    async fn create_coupon(&self, ch: CouponChange, now: Timestamp) -> Result<Coupon, StorageError>;
    async fn coupons(&self, page: PageRequest) -> Result<Page<Coupon>, StorageError>;
    async fn coupon(&self, id: CouponId) -> Result<Coupon, StorageError>;
    async fn update_coupon(&self, id: CouponId, ch: CouponChange, now: Timestamp) -> Result<Coupon, StorageError>;
    /// Every outbox event so far: (type, payload).
    async fn events(&self) -> Vec<(String, Value)>;
}

struct OnSqlite {
    storage: Storage,
    scope: StoreScope,
}

#[async_trait]
impl Orders for OnSqlite {
    async fn create_product(&self, change: ProductChange, now: Timestamp) -> Result<Product, StorageError> {
        self.storage.shard(&self.scope).create_product(&self.scope, change, now).await
    }
    async fn product(&self, id: ProductId) -> Result<Product, StorageError> {
        self.storage.shard(&self.scope).product(&self.scope, id).await
    }
    async fn create_cart(&self, token: [u8; 32], now: Timestamp) -> Result<Cart, StorageError> {
        self.storage.shard(&self.scope).create_cart(&self.scope, token, now).await
    }
    async fn cart(&self, id: CartId, token: [u8; 32], now: Timestamp) -> Result<Cart, StorageError> {
        self.storage.shard(&self.scope).cart(&self.scope, id, token, now).await
    }
    async fn set_item(
        &self,
        id: CartId,
        token: [u8; 32],
        variant: VariantId,
        q: Quantity,
        now: Timestamp,
    ) -> Result<Cart, StorageError> {
        self.storage.shard(&self.scope).set_cart_item(&self.scope, id, token, variant, q, now).await
    }
    async fn checkout(
        &self,
        id: CartId,
        token: [u8; 32],
        req: Checkout,
        idem: Option<IdempotencyKey>,
        now: Timestamp,
    ) -> Result<(Order, bool), StorageError> {
        self.storage.shard(&self.scope).checkout(&self.scope, id, token, req, idem, now).await
    }
    async fn orders(&self, status: Option<OrderStatus>, page: PageRequest) -> Result<Page<Order>, StorageError> {
        self.storage.shard(&self.scope).orders(&self.scope, status, page).await
    }
    async fn order(&self, id: OrderId) -> Result<Order, StorageError> {
        self.storage.shard(&self.scope).order(&self.scope, id).await
    }
    async fn order_for_shopper(&self, id: OrderId, token: [u8; 32]) -> Result<Order, StorageError> {
        self.storage.shard(&self.scope).order_for_shopper(&self.scope, id, token).await
    }
    async fn transition(
        &self,
        id: OrderId,
        req: TransitionRequest,
        actor: &str,
        now: Timestamp,
    ) -> Result<Order, StorageError> {
        self.storage
            .shard(&self.scope)
            .transition_order(&self.scope, id, req, actor.to_string(), &Default::default(), now)
            .await
    }
    async fn customers(&self, page: PageRequest) -> Result<Page<Customer>, StorageError> {
        self.storage.shard(&self.scope).customers(&self.scope, page).await
    }
    async fn customer(&self, id: CustomerId) -> Result<Customer, StorageError> {
        self.storage.shard(&self.scope).customer(&self.scope, id).await
    }
    async fn create_coupon(&self, ch: CouponChange, now: Timestamp) -> Result<Coupon, StorageError> {
        self.storage.shard(&self.scope).create_coupon(&self.scope, ch, now).await
    }
    async fn coupons(&self, page: PageRequest) -> Result<Page<Coupon>, StorageError> {
        self.storage.shard(&self.scope).coupons(&self.scope, page).await
    }
    async fn coupon(&self, id: CouponId) -> Result<Coupon, StorageError> {
        self.storage.shard(&self.scope).coupon(&self.scope, id).await
    }
    async fn update_coupon(&self, id: CouponId, ch: CouponChange, now: Timestamp) -> Result<Coupon, StorageError> {
        self.storage.shard(&self.scope).update_coupon(&self.scope, id, ch, now).await
    }
    async fn events(&self) -> Vec<(String, Value)> {
        let events = self.storage.shard(&self.scope).events(&self.scope, 0, 10_000).await.unwrap();
        events.into_iter().map(|(_, e)| (e.kind, e.payload)).collect()
    }
}

struct OnPostgres {
    pool: PgPool,
    store: StoreId,
}

#[async_trait]
impl Orders for OnPostgres {
    async fn create_product(&self, change: ProductChange, now: Timestamp) -> Result<Product, StorageError> {
        in_tx!(self.pool, |t| catalog::create_product(&t, self.store, change, now).await)
    }
    async fn product(&self, id: ProductId) -> Result<Product, StorageError> {
        catalog::product(&self.pool.get().await.unwrap(), self.store, id).await
    }
    async fn create_cart(&self, token: [u8; 32], now: Timestamp) -> Result<Cart, StorageError> {
        in_tx!(self.pool, |t| carts::create(&t, self.store, token, now).await)
    }
    async fn cart(&self, id: CartId, token: [u8; 32], now: Timestamp) -> Result<Cart, StorageError> {
        carts::get(&self.pool.get().await.unwrap(), self.store, id, token, now).await
    }
    async fn set_item(
        &self,
        id: CartId,
        token: [u8; 32],
        variant: VariantId,
        q: Quantity,
        now: Timestamp,
    ) -> Result<Cart, StorageError> {
        in_tx!(self.pool, |t| carts::set_item(&t, self.store, id, token, variant, q, now).await)
    }
    async fn checkout(
        &self,
        id: CartId,
        token: [u8; 32],
        req: Checkout,
        idem: Option<IdempotencyKey>,
        now: Timestamp,
    ) -> Result<(Order, bool), StorageError> {
        in_tx!(self.pool, |t| checkout::checkout(&t, self.store, id, token, &req, idem.as_ref(), now).await)
    }
    async fn orders(&self, status: Option<OrderStatus>, page: PageRequest) -> Result<Page<Order>, StorageError> {
        orders::list(&self.pool.get().await.unwrap(), self.store, status, page).await
    }
    async fn order(&self, id: OrderId) -> Result<Order, StorageError> {
        orders::get(&self.pool.get().await.unwrap(), self.store, id).await
    }
    async fn order_for_shopper(&self, id: OrderId, token: [u8; 32]) -> Result<Order, StorageError> {
        orders::get_for_shopper(&self.pool.get().await.unwrap(), self.store, id, token).await
    }
    async fn transition(
        &self,
        id: OrderId,
        req: TransitionRequest,
        actor: &str,
        now: Timestamp,
    ) -> Result<Order, StorageError> {
        in_tx!(self.pool, |t| orders::transition(&t, self.store, id, &req, actor, &Default::default(), now).await)
    }
    async fn customers(&self, page: PageRequest) -> Result<Page<Customer>, StorageError> {
        orders::customers(&self.pool.get().await.unwrap(), self.store, page).await
    }
    async fn customer(&self, id: CustomerId) -> Result<Customer, StorageError> {
        orders::customer(&self.pool.get().await.unwrap(), self.store, id).await
    }
    async fn create_coupon(&self, ch: CouponChange, now: Timestamp) -> Result<Coupon, StorageError> {
        in_tx!(self.pool, |t| coupons::create(&t, self.store, ch, now).await)
    }
    async fn coupons(&self, page: PageRequest) -> Result<Page<Coupon>, StorageError> {
        coupons::list(&self.pool.get().await.unwrap(), self.store, page).await
    }
    async fn coupon(&self, id: CouponId) -> Result<Coupon, StorageError> {
        coupons::get(&self.pool.get().await.unwrap(), self.store, id).await
    }
    async fn update_coupon(&self, id: CouponId, ch: CouponChange, now: Timestamp) -> Result<Coupon, StorageError> {
        in_tx!(self.pool, |t| coupons::update(&t, self.store, id, ch, now).await)
    }
    async fn events(&self) -> Vec<(String, Value)> {
        outbox(&self.pool).await
    }
}

fn variant(options: &[&str], sku: Option<&str>, price: i64, stock: Option<i64>) -> NewVariant {
    NewVariant {
        id: None,
        options: options.iter().map(|o| o.to_string()).collect(),
        sku: sku.map(Into::into),
        price: Amount::from_stored(price),
        compare_at_price: None,
        stock,
    }
}

fn product(title: &str, options: &[&str], variants: Vec<NewVariant>) -> ProductChange {
    ProductChange {
        title: Some(title.into()),
        images: Some(vec![format!("https://img.example/{}.jpg", title.to_lowercase())]),
        options: Some(options.iter().map(|o| o.to_string()).collect()),
        variants: Some(variants),
        ..Default::default()
    }
}

fn page(limit: i64, after: Option<&str>) -> PageRequest {
    PageRequest { after: after.map(|a| Cursor::parse(a).unwrap()), limit: Limit::parse(Some(limit)).unwrap() }
}

fn q(n: i64) -> Quantity {
    Quantity::parse(n).unwrap()
}

fn buyer(name: &str, phone: &str, email: Option<&str>, coupon: Option<&str>) -> Checkout {
    Checkout {
        customer: CheckoutCustomer {
            name: name.into(),
            phone: Phone::parse(phone).unwrap(),
            email: email.map(Into::into),
        },
        address: Address {
            line1: "12 MG Road".into(),
            line2: None,
            landmark: Some("Near the temple".into()),
            city: "Bengaluru".into(),
            state: Some("KA".into()),
            postal_code: "560001".into(),
            country: "IN".into(),
        },
        payment_method: PaymentMethod::Cod,
        coupon_code: coupon.map(Into::into),
        note: Some("ring twice".into()),
    }
}

fn key(k: &str, fingerprint: u8) -> Option<IdempotencyKey> {
    Some(IdempotencyKey { key: k.into(), fingerprint: [fingerprint; 32] })
}

fn to(status: OrderStatus, note: Option<&str>, tracking: Option<&str>) -> TransitionRequest {
    TransitionRequest { to: status, note: note.map(Into::into), tracking: tracking.map(Into::into) }
}

fn coupon(code: &str, kind: CouponKind, value: i64) -> CouponChange {
    CouponChange { code: Some(code.into()), kind: Some(kind), value: Some(value), ..Default::default() }
}

/// Walks every page of a list, recording each.
async fn all_pages<T: serde::Serialize, F, Fut>(log: &mut Vec<Value>, step: &str, limit: i64, mut f: F) -> Vec<T>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: std::future::Future<Output = Result<Page<T>, StorageError>>,
{
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for n in 0.. {
        let r = f(page(limit, cursor.as_deref())).await;
        record(log, &format!("{step} page {n}"), &r);
        let p = r.unwrap();
        out.extend(p.items);
        match p.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(n < 100, "{step}: paging does not end");
    }
    out
}

/// The scenario. Returns its transcript; asserts what must hold on any backend.
async fn scenario(b: &dyn Orders) -> Vec<Value> {
    let mut log = Vec::new();
    let l = &mut log;

    // The catalog: chai in two sizes (one tracked), a tracked biscuit, a draft.
    let chai = b
        .create_product(
            product(
                "Chai",
                &["Size"],
                vec![variant(&["250 g"], Some("CHAI-250"), 20_000, Some(5)), variant(&["500 g"], None, 35_000, None)],
            ),
            at(1),
        )
        .await
        .unwrap();
    let (chai_s, chai_l) = (chai.variants[0].id, chai.variants[1].id);
    let biscuit = b
        .create_product(product("Biscuit", &[], vec![variant(&[], Some("BIS"), 1_000, Some(3))]), at(2))
        .await
        .unwrap();
    let bis = biscuit.variants[0].id;
    let draft = b
        .create_product(
            ProductChange {
                status: Some(ProductStatus::Draft),
                ..product("Draft", &[], vec![variant(&[], None, 500, Some(10))])
            },
            at(3),
        )
        .await
        .unwrap();

    // Coupons: create, refusals, list, get, updates and their refusals.
    let save = b
        .create_coupon(
            CouponChange {
                max_discount: Some(Some(Amount::from_stored(5_000))),
                usage_limit: Some(Some(2)),
                ..coupon("SAVE10", CouponKind::Percent, 10)
            },
            at(4),
        )
        .await;
    record(l, "create SAVE10", &save);
    let save = save.unwrap();
    let flat = b
        .create_coupon(
            CouponChange { min_order: Some(Amount::from_stored(100_000)), ..coupon("FLAT50", CouponKind::Flat, 5_000) },
            at(5),
        )
        .await
        .unwrap();
    let off = b
        .create_coupon(CouponChange { active: Some(false), ..coupon("OFF", CouponKind::Flat, 100) }, at(6))
        .await
        .unwrap();
    let later = b
        .create_coupon(
            CouponChange { starts_at: Some(Some(at(10_000))), ..coupon("LATER", CouponKind::Flat, 100) },
            at(6),
        )
        .await
        .unwrap();
    let dup = b.create_coupon(coupon("SAVE10", CouponKind::Flat, 1), at(7)).await;
    record(l, "duplicate code", &dup);
    assert!(matches!(dup, Err(StorageError::Conflict { kind: ConflictKind::CodeTaken, .. })));
    record(l, "missing fields", &b.create_coupon(CouponChange::default(), at(7)).await);
    all_pages(l, "coupons", 3, |p| b.coupons(p)).await;
    record(l, "get FLAT50", &b.coupon(flat.id).await);
    record(l, "get missing coupon", &b.coupon(CouponId::generate()).await);
    record(
        l,
        "rename to a taken code",
        &b.update_coupon(off.id, CouponChange { code: Some("FLAT50".into()), ..Default::default() }, at(8)).await,
    );
    record(
        l,
        "kind without value",
        &b.update_coupon(off.id, CouponChange { kind: Some(CouponKind::Percent), ..Default::default() }, at(8)).await,
    );
    record(
        l,
        "expires before it starts",
        &b.update_coupon(later.id, CouponChange { expires_at: Some(Some(at(9_000))), ..Default::default() }, at(8))
            .await,
    );
    record(l, "update missing coupon", &b.update_coupon(CouponId::generate(), CouponChange::default(), at(8)).await);
    let renamed = b
        .update_coupon(
            later.id,
            CouponChange {
                code: Some("LATER2".into()),
                value: Some(200),
                kind: Some(CouponKind::Flat),
                ..Default::default()
            },
            at(9),
        )
        .await;
    record(l, "update LATER", &renamed);
    assert_eq!(renamed.unwrap().created_at, at(6));

    // Cart A: tokens, items, refusals.
    let (ta, tb, tc, td, tf) = ([1u8; 32], [2u8; 32], [3u8; 32], [4u8; 32], [6u8; 32]);
    let a = b.create_cart(ta, at(10)).await;
    record(l, "create cart A", &a);
    let a = a.unwrap().id;
    record(l, "cart A with a wrong token", &b.cart(a, tb, at(10)).await);
    record(l, "missing cart", &b.cart(CartId::generate(), ta, at(10)).await);
    record(l, "A: 2 chai 250 g", &b.set_item(a, ta, chai_s, q(2), at(11)).await);
    record(l, "A: 1 chai 500 g", &b.set_item(a, ta, chai_l, q(1), at(12)).await);
    record(l, "A: 4 biscuits (3 in stock)", &b.set_item(a, ta, bis, q(4), at(13)).await);
    record(l, "A: a draft", &b.set_item(a, ta, draft.variants[0].id, q(1), at(13)).await);
    record(l, "A: an unknown variant", &b.set_item(a, ta, VariantId::generate(), q(1), at(13)).await);
    record(l, "A: wrong token", &b.set_item(a, tb, bis, q(1), at(13)).await);
    record(l, "A: 2 biscuits", &b.set_item(a, ta, bis, q(2), at(14)).await);
    record(l, "A: 3 biscuits", &b.set_item(a, ta, bis, q(3), at(15)).await);
    record(l, "A: drop chai 500 g", &b.set_item(a, ta, chai_l, q(0), at(16)).await);
    record(l, "A: drop what is not there", &b.set_item(a, ta, chai_l, q(0), at(16)).await);
    record(l, "get A", &b.cart(a, ta, at(17)).await);

    // Cart F wants 5 chai while there are 5; A will take 2 first.
    let f = b.create_cart(tf, at(18)).await.unwrap().id;
    record(l, "F: 5 chai 250 g", &b.set_item(f, tf, chai_s, q(5), at(18)).await);

    // Checkout A with a coupon and a key; replays.
    let placed = b
        .checkout(a, ta, buyer("Asha", "+919876543210", Some("asha@example.com"), Some("save10")), key("k1", 1), at(20))
        .await;
    record(l, "checkout A", &placed);
    let (order_a, replayed) = placed.unwrap();
    assert!(!replayed);
    assert_eq!(order_a.number, 1001);
    let again = b.checkout(a, ta, buyer("Asha", "+919876543210", None, Some("save10")), key("k1", 1), at(21)).await;
    record(l, "replay A", &again);
    assert_eq!(again.as_ref().unwrap().0.id, order_a.id);
    assert!(again.unwrap().1);
    let reused = b.checkout(a, ta, buyer("Asha", "+919876543210", None, None), key("k1", 9), at(21)).await;
    record(l, "same key, different request", &reused);
    assert!(matches!(reused, Err(StorageError::Conflict { kind: ConflictKind::IdempotencyKeyReused, .. })));
    let closed = b.checkout(a, ta, buyer("Asha", "+919876543210", None, None), None, at(21)).await;
    record(l, "A again without a key", &closed);
    assert!(matches!(closed, Err(StorageError::Conflict { kind: ConflictKind::CartClosed, .. })));
    record(
        l,
        "A again with a new key",
        &b.checkout(a, ta, buyer("A", "+919876543210", None, None), key("k2", 2), at(21)).await,
    );
    record(l, "A: add after checkout", &b.set_item(a, ta, bis, q(1), at(22)).await);
    record(l, "get A after checkout", &b.cart(a, ta, at(22)).await);
    record(
        l,
        "A with a wrong token at checkout",
        &b.checkout(a, tb, buyer("A", "+919876543210", None, None), key("k1", 1), at(22)).await,
    );

    // F: the stock went meanwhile.
    let short = b.checkout(f, tf, buyer("Farah", "+919800000006", None, None), None, at(23)).await;
    record(l, "F: 5 wanted, 3 left", &short);
    assert!(matches!(&short, Err(StorageError::InsufficientStock(s)) if s.len() == 1 && s[0].available == 3));

    // Cart B: refusals at checkout, then the coupon's last use, same phone as A.
    let bb = b.create_cart(tb, at(30)).await.unwrap().id;
    record(l, "B: a biscuit (none left)", &b.set_item(bb, tb, bis, q(1), at(30)).await);
    record(l, "B: 3 chai 250 g", &b.set_item(bb, tb, chai_s, q(3), at(31)).await);
    for (step, code) in [
        ("B: unknown coupon", "NOPE"),
        ("B: inactive coupon", "off"),
        ("B: minimum not met", "FLAT50"),
        ("B: coupon not started", "LATER2"),
    ] {
        record(l, step, &b.checkout(bb, tb, buyer("Asha K", "+919876543210", None, Some(code)), None, at(32)).await);
    }
    let mut online = buyer("Asha K", "+919876543210", None, None);
    online.payment_method = PaymentMethod::Online;
    record(l, "B: online payment not accepted", &b.checkout(bb, tb, online, None, at(32)).await);
    let c = b.create_cart(tc, at(32)).await.unwrap().id;
    record(l, "C: empty", &b.checkout(c, tc, buyer("C", "+919800000003", None, None), None, at(32)).await);
    let order_b =
        b.checkout(bb, tb, buyer("Asha K", "+919876543210", None, Some("SAVE10")), key("k2", 2), at(33)).await;
    record(l, "checkout B", &order_b);
    let order_b = order_b.unwrap().0;
    assert_eq!(order_b.number, 1002);
    record(l, "SAVE10 after two uses", &b.coupon(save.id).await);

    // Cart D: untracked stock; the coupon is used up.
    let d = b.create_cart(td, at(40)).await.unwrap().id;
    record(l, "D: 2 chai 500 g", &b.set_item(d, td, chai_l, q(2), at(40)).await);
    record(
        l,
        "D: SAVE10 used up",
        &b.checkout(d, td, buyer("Dev", "+919800000004", None, Some("SAVE10")), None, at(41)).await,
    );
    let order_d = b.checkout(d, td, buyer("Dev", "+919800000004", Some("dev@example.com"), None), None, at(42)).await;
    record(l, "checkout D", &order_d);
    let order_d = order_d.unwrap().0;
    record(
        l,
        "SAVE10 limit below its uses",
        &b.update_coupon(save.id, CouponChange { usage_limit: Some(Some(1)), ..Default::default() }, at(43)).await,
    );
    record(
        l,
        "SAVE10 limit raised",
        &b.update_coupon(save.id, CouponChange { usage_limit: Some(Some(3)), ..Default::default() }, at(43)).await,
    );

    // Transitions, valid and not, with restocking.
    record(
        l,
        "A: placed to delivered",
        &b.transition(order_a.id, to(OrderStatus::Delivered, None, None), "owner", at(50)).await,
    );
    record(
        l,
        "A: accept",
        &b.transition(order_a.id, to(OrderStatus::Accepted, Some("ok"), None), "owner", at(51)).await,
    );
    record(l, "A: pack", &b.transition(order_a.id, to(OrderStatus::Packed, None, None), "staff", at(52)).await);
    record(
        l,
        "A: ship",
        &b.transition(order_a.id, to(OrderStatus::Shipped, None, Some("TRK-1")), "staff", at(53)).await,
    );
    record(
        l,
        "A: cancel after shipping",
        &b.transition(order_a.id, to(OrderStatus::Cancelled, None, None), "owner", at(54)).await,
    );
    record(l, "A: deliver", &b.transition(order_a.id, to(OrderStatus::Delivered, None, None), "staff", at(55)).await);
    record(
        l,
        "A: return",
        &b.transition(order_a.id, to(OrderStatus::Returned, Some("damaged"), None), "owner", at(56)).await,
    );
    record(l, "stock after A's return", &b.product(chai.id).await);
    record(l, "biscuits after A's return", &b.product(biscuit.id).await);
    record(l, "B: reject", &b.transition(order_b.id, to(OrderStatus::Rejected, None, None), "owner", at(57)).await);
    record(
        l,
        "B: reject again",
        &b.transition(order_b.id, to(OrderStatus::Rejected, None, None), "owner", at(58)).await,
    );
    record(l, "D: cancel", &b.transition(order_d.id, to(OrderStatus::Cancelled, None, None), "owner", at(59)).await);
    record(
        l,
        "missing order",
        &b.transition(OrderId::generate(), to(OrderStatus::Accepted, None, None), "owner", at(59)).await,
    );
    let stock = b.product(chai.id).await.unwrap();
    record(l, "chai at the end", &Ok::<_, StorageError>(&stock));
    assert_eq!((stock.variants[0].stock, stock.variants[1].stock), (Some(5), None));
    assert_eq!(b.product(biscuit.id).await.unwrap().variants[0].stock, Some(3));

    // Reads: orders, for the shopper, customers; an expired cart.
    record(l, "order A", &b.order(order_a.id).await);
    record(l, "missing order", &b.order(OrderId::generate()).await);
    record(l, "A for its shopper", &b.order_for_shopper(order_a.id, ta).await);
    record(l, "A for another token", &b.order_for_shopper(order_a.id, tb).await);
    all_pages(l, "orders", 2, |p| b.orders(None, p)).await;
    all_pages(l, "returned orders", 2, |p| b.orders(Some(OrderStatus::Returned), p)).await;
    all_pages(l, "placed orders", 2, |p| b.orders(Some(OrderStatus::Placed), p)).await;
    let customers = all_pages(l, "customers", 1, |p| b.customers(p)).await;
    assert_eq!(customers.len(), 2, "one customer per phone");
    let asha = customers.iter().find(|c| c.phone.as_str() == "+919876543210").unwrap();
    assert_eq!((asha.orders_count, asha.name.as_str(), asha.email.as_deref()), (2, "Asha K", Some("asha@example.com")));
    record(l, "customer Asha", &b.customer(asha.id).await);
    record(l, "missing customer", &b.customer(CustomerId::generate()).await);
    let e = b.create_cart([5; 32], at(60)).await.unwrap().id;
    record(l, "E before it expires", &b.cart(e, [5; 32], at(60 + CART_TTL_SECS - 1)).await);
    record(l, "E expired", &b.cart(e, [5; 32], at(60 + CART_TTL_SECS)).await);
    record(l, "E: add when expired", &b.set_item(e, [5; 32], chai_s, q(1), at(60 + CART_TTL_SECS)).await);

    let events = b.events().await;
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    let cart = |n| std::iter::once("cart.created").chain(std::iter::repeat_n("cart.updated", n));
    let placed = ["customer.upserted", "order.placed"];
    let expected: Vec<&str> = ["store.created", "product.created", "product.created", "product.created"]
        .into_iter()
        .chain(["coupon.created"; 4])
        .chain(["coupon.updated"])
        .chain(cart(6)) // A: five accepted changes and one removal of nothing
        .chain(cart(1)) // F
        .chain(placed) // A
        .chain(["stock.changed"]) // A took a variant's last unit
        .chain(cart(1)) // B
        .chain(cart(0)) // C
        .chain(placed) // B
        .chain(["stock.changed"]) // and so did B
        .chain(cart(1)) // D
        .chain(placed) // D
        .chain(["coupon.updated"])
        .chain(["order.transitioned"; 7])
        .chain(cart(0)) // E
        .collect();
    assert_eq!(kinds, expected, "exactly one event per successful write, none for a refused one");
    log.push(json!({ "events": events }));
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_behave_as_on_sqlite() {
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

// ---------------------------------------------------------------------------------------------
// Races

/// A store with one product of one variant, and `n` carts holding `per_cart` of it each.
async fn racing_carts(
    pool: &PgPool,
    stock: Option<i64>,
    n: usize,
    per_cart: i64,
) -> (StoreId, ProductId, Vec<(CartId, [u8; 32])>) {
    let store = StoreId::generate();
    in_tx!(pool, |t| stores::insert(&t, store, MerchantId::generate(), "Race", &settings(), at(0)).await).unwrap();
    let p = in_tx!(pool, |t| catalog::create_product(
        &t,
        store,
        product("Tea", &[], vec![variant(&[], None, 10_000, stock)]),
        at(1)
    )
    .await)
    .unwrap();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut token = [0u8; 32];
        token[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let cart = in_tx!(pool, |t| carts::create(&t, store, token, at(2)).await).unwrap().id;
        in_tx!(pool, |t| carts::set_item(&t, store, cart, token, p.variants[0].id, q(per_cart), at(3)).await).unwrap();
        out.push((cart, token));
    }
    (store, p.id, out)
}

/// Checks out every cart at once, each on a connection of its own from the pool.
async fn race(
    pool: &Arc<PgPool>,
    store: StoreId,
    carts: Vec<(CartId, [u8; 32])>,
    coupon: Option<&str>,
) -> Vec<Result<(Order, bool), StorageError>> {
    let tasks: Vec<_> = carts
        .into_iter()
        .enumerate()
        .map(|(i, (cart, token))| {
            let pool = pool.clone();
            let req = buyer("Racer", &format!("+9198000{:05}", i), None, coupon);
            tokio::spawn(async move {
                in_tx!(pool, |t| checkout::checkout(&t, store, cart, token, &req, None, at(10)).await)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_checkouts_for_twenty_units_sell_twenty() {
    let (_db, pool) = pg_shard(10).await;
    let (store, product_id, carts) = racing_carts(&pool, Some(20), 50, 1).await;
    let pool = Arc::new(pool);
    let results = race(&pool, store, carts, None).await;

    let mut numbers = vec![];
    let mut short = 0;
    for r in &results {
        match r {
            Ok((o, false)) => numbers.push(o.number),
            Err(StorageError::InsufficientStock(s)) => {
                assert_eq!(s.len(), 1);
                assert_eq!((s[0].title.as_str(), s[0].requested, s[0].available), ("Tea", 1, 0));
                short += 1;
            }
            other => panic!("unexpected: {other:?}"),
        }
    }
    numbers.sort();
    assert_eq!(numbers, (1001..1021).collect::<Vec<_>>(), "20 orders, numbered without gaps");
    assert_eq!(short, 30);
    let c = pool.get().await.unwrap();
    assert_eq!(catalog::product(&c, store, product_id).await.unwrap().variants[0].stock, Some(0));
    let placed: i64 = c.query_one("SELECT count(*) FROM outbox WHERE type = 'order.placed'", &[]).await.unwrap().get(0);
    assert_eq!(placed, 20);
    let orders: i64 = c.query_one("SELECT count(*) FROM orders", &[]).await.unwrap().get(0);
    assert_eq!(orders, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coupon_for_five_is_redeemed_five_times() {
    let (_db, pool) = pg_shard(10).await;
    let (store, _, carts) = racing_carts(&pool, None, 20, 1).await;
    let limited = CouponChange { usage_limit: Some(Some(5)), ..coupon("FIVE", CouponKind::Percent, 10) };
    let c5 = in_tx!(pool, |t| coupons::create(&t, store, limited, at(4)).await).unwrap();
    let pool = Arc::new(pool);
    let results = race(&pool, store, carts, Some("five")).await;

    let ok = results.iter().filter(|r| r.is_ok()).count();
    for r in &results {
        match r {
            Ok((o, _)) => assert_eq!((o.coupon_code.as_deref(), o.totals.discount), (Some("FIVE"), 1_000)),
            Err(StorageError::Coupon(kirana_domain::coupon::CouponRejection::UsedUp)) => {}
            other => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!(ok, 5);
    let c = pool.get().await.unwrap();
    assert_eq!(coupons::get(&c, store, c5.id).await.unwrap().used_count, 5);
    let orders: i64 = c.query_one("SELECT count(*) FROM orders", &[]).await.unwrap().get(0);
    assert_eq!(orders, 5);
}

/// The same checkout sent ten times at once (a client retrying): one order, nine replays of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_raced_makes_one_order() {
    let (_db, pool) = pg_shard(10).await;
    let (store, product_id, carts) = racing_carts(&pool, Some(5), 1, 2).await;
    let (cart, token) = carts[0];
    let pool = Arc::new(pool);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let pool = pool.clone();
            let req = buyer("Retry", "+919811111111", None, None);
            tokio::spawn(async move {
                in_tx!(pool, |t| checkout::checkout(&t, store, cart, token, &req, key("retry", 7).as_ref(), at(10))
                    .await)
            })
        })
        .collect();
    let mut ids = vec![];
    let mut fresh = 0;
    for t in tasks {
        let (o, replayed) = t.await.unwrap().unwrap();
        ids.push(o.id);
        fresh += usize::from(!replayed);
    }
    assert_eq!(fresh, 1);
    ids.dedup();
    assert_eq!(ids.len(), 1);
    let c = pool.get().await.unwrap();
    assert_eq!(catalog::product(&c, store, product_id).await.unwrap().variants[0].stock, Some(3));
}

/// A merchant editing a product's price while shoppers check it out: the edit must not write
/// back the stock it read (checkouts decrement the variant without the product's lock, so that
/// would give sold units back: the fleet test caught it, 30–40 units per store in a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_edit_racing_checkouts_never_gives_sold_units_back() {
    use kirana_domain::catalog::VariantPatch;
    let (_db, pool) = pg_shard(10).await;
    let (store, product_id, carts) = racing_carts(&pool, Some(1_000), 60, 2).await;
    let pool = Arc::new(pool);
    let editor = {
        let pool = pool.clone();
        tokio::spawn(async move {
            for k in 0..60 {
                let change = ProductChange {
                    single_variant: Some(VariantPatch {
                        price: Some(kirana_domain::Amount::parse(10_000 + k).unwrap()),
                        ..VariantPatch::default()
                    }),
                    ..ProductChange::default()
                };
                in_tx!(pool, |t| catalog::update_product(&t, store, product_id, change.clone(), at(11)).await).unwrap();
            }
        })
    };
    let results = race(&pool, store, carts, None).await;
    editor.await.unwrap();
    let sold: i64 = results.iter().map(|r| if r.is_ok() { 2 } else { 0 }).sum();
    assert_eq!(sold, 120, "{results:?}");
    let c = pool.get().await.unwrap();
    let p = catalog::product(&c, store, product_id).await.unwrap();
    assert_eq!(p.variants[0].stock, Some(1_000 - sold), "every unit sold stays sold");
    assert_eq!(p.variants[0].price.minor(), 10_059, "and the last edit is the price");
}
