//! The PostgreSQL shard's stores and catalog (`postgres::shard::{stores, catalog}`), checked
//! against SQLite: one scenario of writes and reads runs on both backends (SQLite through its
//! public `Shard`, PostgreSQL through the free functions, a transaction per call, in a database
//! of its own on the shared server at 127.0.0.1:5432, dropped at the end), and the two
//! transcripts — every value, every error, every outbox event — must be equal once generated
//! ids are replaced by their order of appearance. Then what only PostgreSQL can get wrong: the
//! outbox rows of each write, and a SKU taken by a concurrent transaction.

#[macro_use]
mod pg_db;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use kirana_domain::catalog::{
    Category, CategoryChange, NewVariant, Product, ProductChange, ProductStatus, VariantPatch,
};
use kirana_domain::page::{Cursor, Limit, Page, PageRequest};
use kirana_domain::store::{NewStore, StoreChange, StoreSettings};
use kirana_domain::{Amount, CategoryId, MerchantId, ProductId, StoreId, Timestamp};
use kirana_storage::postgres::pool::PgPool;
use kirana_storage::postgres::shard::{catalog, stores};
use kirana_storage::sqlite::{SqliteOptions, Synchronous};
use kirana_storage::{ProductFilter, Storage, StorageError, StoreScope};
use pg_db::{at, normalise, pg_shard, record};
use serde_json::{Value, json};

/// The outbox after `seq`: (seq, type, payload).
async fn outbox(pool: &PgPool, after: i64) -> Vec<(i64, String, Value)> {
    let c = pool.get().await.unwrap();
    c.query("SELECT seq, type, payload, version FROM outbox WHERE seq > $1 ORDER BY seq", &[&after])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r.get::<_, i64>(3), 1, "event version");
            (r.get(0), r.get(1), serde_json::from_str(r.get::<_, &str>(2)).unwrap())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The scenario, once per backend

#[async_trait]
trait Catalog: Sync {
    async fn create_category(&self, change: CategoryChange, now: Timestamp) -> Result<Category, StorageError>;
    async fn categories(&self, page: PageRequest) -> Result<Page<Category>, StorageError>;
    async fn category(&self, id: CategoryId) -> Result<Category, StorageError>;
    async fn update_category(
        &self,
        id: CategoryId,
        c: CategoryChange,
        now: Timestamp,
    ) -> Result<Category, StorageError>;
    async fn delete_category(&self, id: CategoryId, now: Timestamp) -> Result<(), StorageError>;
    async fn create_product(&self, change: ProductChange, now: Timestamp) -> Result<Product, StorageError>;
    async fn products(&self, f: ProductFilter, page: PageRequest) -> Result<Page<Product>, StorageError>;
    async fn product(&self, id: ProductId) -> Result<Product, StorageError>;
    async fn update_product(&self, id: ProductId, c: ProductChange, now: Timestamp) -> Result<Product, StorageError>;
    async fn delete_product(&self, id: ProductId, now: Timestamp) -> Result<(), StorageError>;
    /// Every outbox event so far: (type, payload).
    async fn events(&self) -> Vec<(String, Value)>;
}

struct OnSqlite {
    storage: Storage,
    scope: StoreScope,
}

#[async_trait]
impl Catalog for OnSqlite {
    async fn create_category(&self, change: CategoryChange, now: Timestamp) -> Result<Category, StorageError> {
        self.storage.shard(&self.scope).create_category(&self.scope, change, now).await
    }
    async fn categories(&self, page: PageRequest) -> Result<Page<Category>, StorageError> {
        self.storage.shard(&self.scope).categories(&self.scope, page).await
    }
    async fn category(&self, id: CategoryId) -> Result<Category, StorageError> {
        self.storage.shard(&self.scope).category(&self.scope, id).await
    }
    async fn update_category(
        &self,
        id: CategoryId,
        c: CategoryChange,
        now: Timestamp,
    ) -> Result<Category, StorageError> {
        self.storage.shard(&self.scope).update_category(&self.scope, id, c, now).await
    }
    async fn delete_category(&self, id: CategoryId, now: Timestamp) -> Result<(), StorageError> {
        self.storage.shard(&self.scope).delete_category(&self.scope, id, now).await
    }
    async fn create_product(&self, change: ProductChange, now: Timestamp) -> Result<Product, StorageError> {
        self.storage.shard(&self.scope).create_product(&self.scope, change, now).await
    }
    async fn products(&self, f: ProductFilter, page: PageRequest) -> Result<Page<Product>, StorageError> {
        self.storage.shard(&self.scope).products(&self.scope, f, page).await
    }
    async fn product(&self, id: ProductId) -> Result<Product, StorageError> {
        self.storage.shard(&self.scope).product(&self.scope, id).await
    }
    async fn update_product(&self, id: ProductId, c: ProductChange, now: Timestamp) -> Result<Product, StorageError> {
        self.storage.shard(&self.scope).update_product(&self.scope, id, c, now).await
    }
    async fn delete_product(&self, id: ProductId, now: Timestamp) -> Result<(), StorageError> {
        self.storage.shard(&self.scope).delete_product(&self.scope, id, now).await
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
impl Catalog for OnPostgres {
    async fn create_category(&self, change: CategoryChange, now: Timestamp) -> Result<Category, StorageError> {
        in_tx!(self.pool, |t| catalog::create_category(&t, self.store, change, now).await)
    }
    async fn categories(&self, page: PageRequest) -> Result<Page<Category>, StorageError> {
        catalog::categories(&self.pool.get().await.unwrap(), self.store, page).await
    }
    async fn category(&self, id: CategoryId) -> Result<Category, StorageError> {
        catalog::category(&self.pool.get().await.unwrap(), self.store, id).await
    }
    async fn update_category(
        &self,
        id: CategoryId,
        c: CategoryChange,
        now: Timestamp,
    ) -> Result<Category, StorageError> {
        in_tx!(self.pool, |t| catalog::update_category(&t, self.store, id, c, now).await)
    }
    async fn delete_category(&self, id: CategoryId, now: Timestamp) -> Result<(), StorageError> {
        in_tx!(self.pool, |t| catalog::delete_category(&t, self.store, id, now).await)
    }
    async fn create_product(&self, change: ProductChange, now: Timestamp) -> Result<Product, StorageError> {
        in_tx!(self.pool, |t| catalog::create_product(&t, self.store, change, now).await)
    }
    async fn products(&self, f: ProductFilter, page: PageRequest) -> Result<Page<Product>, StorageError> {
        catalog::products(&self.pool.get().await.unwrap(), self.store, &f, page).await
    }
    async fn product(&self, id: ProductId) -> Result<Product, StorageError> {
        catalog::product(&self.pool.get().await.unwrap(), self.store, id).await
    }
    async fn update_product(&self, id: ProductId, c: ProductChange, now: Timestamp) -> Result<Product, StorageError> {
        in_tx!(self.pool, |t| catalog::update_product(&t, self.store, id, c, now).await)
    }
    async fn delete_product(&self, id: ProductId, now: Timestamp) -> Result<(), StorageError> {
        in_tx!(self.pool, |t| catalog::delete_product(&t, self.store, id, now).await)
    }
    async fn events(&self) -> Vec<(String, Value)> {
        outbox(&self.pool, 0).await.into_iter().map(|(_, k, p)| (k, p)).collect()
    }
}

fn cat(name: &str, description: Option<&str>) -> CategoryChange {
    CategoryChange { name: Some(name.into()), description: description.map(Into::into) }
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

fn page(limit: i64, after: Option<&str>) -> PageRequest {
    PageRequest { after: after.map(|a| Cursor::parse(a).unwrap()), limit: Limit::parse(Some(limit)).unwrap() }
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
async fn scenario(b: &dyn Catalog) -> Vec<Value> {
    let mut log = Vec::new();
    let l = &mut log;

    // Categories: create, a name taken case-insensitively, list in pages, update, rename clash.
    let fruits = b.create_category(cat("Fruits", Some("Fresh")), at(1)).await;
    record(l, "create fruits", &fruits);
    let fruits = fruits.unwrap();
    let veg = b.create_category(cat("Vegetables", None), at(2)).await.unwrap();
    let dairy = b.create_category(cat("Dairy", None), at(3)).await.unwrap();
    let dup = b.create_category(cat("fruits", None), at(4)).await;
    record(l, "duplicate name", &dup);
    assert!(matches!(dup, Err(StorageError::Conflict { kind: kirana_storage::ConflictKind::NameTaken, .. })));
    let missing_name = b.create_category(CategoryChange::default(), at(4)).await;
    record(l, "no name", &missing_name);
    let listed = all_pages(l, "categories", 2, |p| b.categories(p)).await;
    assert_eq!(listed.iter().map(|c| c.id).collect::<Vec<_>>(), vec![fruits.id, veg.id, dairy.id]);
    let greens = b.update_category(veg.id, cat("Greens", Some("Leafy")), at(5)).await;
    record(l, "rename veg", &greens);
    assert_eq!(greens.unwrap().created_at, at(2));
    let clash = b.update_category(dairy.id, cat("FRUITS", None), at(6)).await;
    record(l, "rename clash", &clash);
    let same = b.update_category(fruits.id, cat("fruits", None), at(6)).await;
    record(l, "rename to own name in other case", &same);
    record(l, "get dairy", &b.category(dairy.id).await);
    record(l, "update missing category", &b.update_category(CategoryId::generate(), cat("X", None), at(6)).await);

    // Products with variants.
    let shirt = b
        .create_product(
            ProductChange {
                title: Some("Cotton Shirt".into()),
                description: Some("Soft".into()),
                category_id: Some(Some(fruits.id)),
                images: Some(vec!["https://img.example/shirt.jpg".into()]),
                options: Some(vec!["Size".into()]),
                variants: Some(vec![
                    variant(&["S"], Some("SHIRT-S"), 49_900, Some(10)),
                    variant(&["M"], Some("SHIRT-M"), 49_900, None),
                ]),
                ..Default::default()
            },
            at(10),
        )
        .await;
    record(l, "create shirt", &shirt);
    let shirt = shirt.unwrap();
    let apple = b
        .create_product(
            ProductChange {
                title: Some("Apple".into()),
                category_id: Some(Some(fruits.id)),
                variants: Some(vec![variant(&[], Some("APPLE"), 12_000, Some(5))]),
                ..Default::default()
            },
            at(11),
        )
        .await
        .unwrap();
    let tea = b
        .create_product(
            ProductChange {
                title: Some("Green Tea_100%".into()),
                status: Some(ProductStatus::Draft),
                category_id: Some(Some(dairy.id)),
                variants: Some(vec![variant(&[], None, 30_000, None)]),
                ..Default::default()
            },
            at(12),
        )
        .await
        .unwrap();
    let taken = b
        .create_product(
            ProductChange {
                title: Some("Copy".into()),
                variants: Some(vec![variant(&[], Some("NEW"), 1, None), variant(&[], Some("SHIRT-M"), 1, None)]),
                ..Default::default()
            },
            at(13),
        )
        .await;
    record(l, "create with a taken SKU", &taken);
    assert!(matches!(&taken, Err(StorageError::Invalid(_))), "{taken:?}");
    let unknown_cat = b
        .create_product(
            ProductChange {
                title: Some("Nowhere".into()),
                category_id: Some(Some(CategoryId::generate())),
                ..Default::default()
            },
            at(13),
        )
        .await;
    record(l, "create in an unknown category", &unknown_cat);

    // Lists: newest first, in pages, filtered.
    let all = all_pages(l, "products", 2, |p| b.products(ProductFilter::default(), p)).await;
    assert_eq!(all.iter().map(|p| p.id).collect::<Vec<_>>(), vec![tea.id, apple.id, shirt.id]);
    for (name, f) in [
        ("draft", ProductFilter { status: Some(ProductStatus::Draft), ..Default::default() }),
        (
            "active fruits",
            ProductFilter { status: Some(ProductStatus::Active), category: Some(fruits.id), query: None },
        ),
        ("in fruits", ProductFilter { category: Some(fruits.id), ..Default::default() }),
        ("query tea", ProductFilter { query: Some("TEA".into()), ..Default::default() }),
        ("query with like metacharacters", ProductFilter { query: Some("a_1 0%".into()), ..Default::default() }),
        ("query no match", ProductFilter { query: Some("shirt apple".into()), ..Default::default() }),
    ] {
        all_pages(l, name, 1, |p| b.products(f.clone(), p)).await;
    }

    // Replacing variants: M kept (takes S's SKU), S dropped, L added.
    let m = shirt.variants[1].id;
    let replaced = b
        .update_product(
            shirt.id,
            ProductChange {
                variants: Some(vec![
                    NewVariant { id: Some(m), ..variant(&["M"], Some("SHIRT-S"), 55_000, Some(3)) },
                    variant(&["L"], Some("SHIRT-L"), 59_900, Some(1)),
                ]),
                ..Default::default()
            },
            at(20),
        )
        .await;
    record(l, "replace variants", &replaced);
    let replaced = replaced.unwrap();
    assert_eq!(replaced.variants.len(), 2);
    assert_eq!(replaced.variants[0].id, m, "a listed variant keeps its id");
    assert_ne!(replaced.variants[1].id, shirt.variants[0].id, "an unlisted one goes");
    assert_eq!(replaced.created_at, at(10));
    let foreign = b
        .update_product(
            shirt.id,
            ProductChange {
                variants: Some(vec![NewVariant { id: Some(apple.variants[0].id), ..variant(&["S"], None, 1, None) }]),
                ..Default::default()
            },
            at(21),
        )
        .await;
    record(l, "another product's variant id", &foreign);
    let bad_shape = b
        .update_product(
            shirt.id,
            ProductChange { variants: Some(vec![variant(&[], None, 1, None)]), ..Default::default() },
            at(21),
        )
        .await;
    record(l, "variants not matching options", &bad_shape);
    let sku_clash = b
        .update_product(
            apple.id,
            ProductChange { variants: Some(vec![variant(&[], Some("SHIRT-L"), 1, None)]), ..Default::default() },
            at(21),
        )
        .await;
    record(l, "update to a taken SKU", &sku_clash);

    // The single-variant patch.
    let patched = b
        .update_product(
            apple.id,
            ProductChange {
                title: Some("Red Apple".into()),
                category_id: Some(None),
                single_variant: Some(VariantPatch {
                    price: Some(Amount::from_stored(15_000)),
                    compare_at_price: Some(Some(Amount::from_stored(18_000))),
                    sku: None,
                    stock: Some(None),
                }),
                ..Default::default()
            },
            at(22),
        )
        .await;
    record(l, "patch the only variant", &patched);
    let patched = patched.unwrap();
    assert_eq!(patched.variants[0].id, apple.variants[0].id);
    assert_eq!(patched.variants[0].stock, None);
    let many = b
        .update_product(
            shirt.id,
            ProductChange {
                single_variant: Some(VariantPatch { price: Some(Amount::from_stored(1)), ..Default::default() }),
                ..Default::default()
            },
            at(23),
        )
        .await;
    record(l, "patch a product with several variants", &many);
    let patch_taken = b
        .update_product(
            apple.id,
            ProductChange {
                single_variant: Some(VariantPatch { sku: Some(Some("SHIRT-L".into())), ..Default::default() }),
                ..Default::default()
            },
            at(23),
        )
        .await;
    record(l, "patch to a taken SKU", &patch_taken);
    record(
        l,
        "update missing product",
        &b.update_product(ProductId::generate(), ProductChange::default(), at(23)).await,
    );

    // Deleting a category uncategorises its products; deleting a product twice.
    record(l, "delete fruits", &b.delete_category(fruits.id, at(30)).await);
    let shirt_now = b.product(shirt.id).await;
    record(l, "shirt after its category went", &shirt_now);
    assert_eq!(shirt_now.unwrap().category_id, None);
    record(l, "delete fruits again", &b.delete_category(fruits.id, at(31)).await);
    record(l, "delete tea", &b.delete_product(tea.id, at(32)).await);
    record(l, "delete tea again", &b.delete_product(tea.id, at(33)).await);
    record(l, "get tea", &b.product(tea.id).await);
    all_pages(l, "products at the end", 10, |p| b.products(ProductFilter::default(), p)).await;
    all_pages(l, "categories at the end", 10, |p| b.categories(p)).await;

    let events = b.events().await;
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "store.created",
            "category.created",
            "category.created",
            "category.created",
            "category.updated",
            "category.updated",
            "product.created",
            "product.created",
            "product.created",
            "product.updated",
            "product.updated",
            "category.deleted",
            "product.deleted",
        ],
        "exactly one event per successful write, none for a refused one"
    );
    log.push(json!({ "events": events }));
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_behaves_as_on_sqlite() {
    let owner = MerchantId::generate();
    let settings = StoreSettings::default();

    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteOptions { synchronous: Synchronous::Normal, ..Default::default() };
    let storage = kirana_storage::sqlite::open(dir.path(), 1, &opts).unwrap();
    let new = NewStore { name: "Corner Shop".into(), slug: None, custom_domain: None, settings: settings.clone() };
    let store = storage.create_store(owner, new, at(0)).await.unwrap();
    let scope = storage.scope_for_owner(owner, store.id).await.unwrap();
    let sqlite = OnSqlite { storage, scope };
    let mut on_sqlite = Value::Array(scenario(&sqlite).await);

    let (_db, pool) = pg_shard(4).await;
    let id = StoreId::generate();
    let row = in_tx!(pool, |t| stores::insert(&t, id, owner, "Corner Shop", &settings, at(0)).await).unwrap();
    assert_eq!((row.name.as_str(), row.owner, row.created_at), ("Corner Shop", owner, at(0)));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_leaves_its_outbox_row_and_refusals_none() {
    let (_db, pool) = pg_shard(4).await;
    let (id, owner) = (StoreId::generate(), MerchantId::generate());
    let mut seen = 0;
    let mut expect = async |kinds: &[&str], pool: &PgPool| {
        let rows = outbox(pool, seen).await;
        assert_eq!(rows.iter().map(|(_, k, _)| k.as_str()).collect::<Vec<_>>(), kinds);
        if let Some((s, _, _)) = rows.last() {
            seen = *s;
        }
        rows.into_iter().map(|(_, _, p)| p).collect::<Vec<_>>()
    };

    let row = in_tx!(pool, |t| stores::insert(&t, id, owner, "Shop", &StoreSettings::default(), at(0)).await).unwrap();
    let p = expect(&["store.created"], &pool).await;
    assert_eq!(p[0]["name"], "Shop");
    assert_eq!(p[0]["owner_id"], json!(owner));

    let c = pool.get().await.unwrap();
    assert_eq!(stores::get(&c, id).await.unwrap(), row);
    assert_eq!(stores::get_many(&c, &[id, StoreId::generate()]).await.unwrap(), vec![row.clone()]);
    assert!(stores::get_many(&c, &[]).await.unwrap().is_empty());
    assert!(matches!(stores::get(&c, StoreId::generate()).await, Err(StorageError::NotFound)));
    drop(c);

    let mut change = StoreChange::default();
    change.name = Some("Shop Two".into());
    let updated = in_tx!(pool, |t| stores::update(&t, id, &change, at(1)).await).unwrap();
    assert_eq!((updated.name.as_str(), updated.created_at, updated.updated_at), ("Shop Two", at(0), at(1)));
    let p = expect(&["store.updated"], &pool).await;
    assert_eq!(p[0]["name"], "Shop Two");
    assert!(matches!(
        in_tx!(pool, |t| stores::update(&t, StoreId::generate(), &change, at(1)).await),
        Err(StorageError::NotFound)
    ));

    let n1 = in_tx!(pool, |t| stores::next_order_number(&t, id).await).unwrap();
    let n2 = in_tx!(pool, |t| stores::next_order_number(&t, id).await).unwrap();
    assert_eq!((n1, n2), (1001, 1002));
    expect(&[], &pool).await;

    let c1 = in_tx!(pool, |t| catalog::create_category(&t, id, cat("A", None), at(2)).await).unwrap();
    let p = expect(&["category.created"], &pool).await;
    assert_eq!(p[0], json!(c1));
    assert!(in_tx!(pool, |t| catalog::create_category(&t, id, cat("a", None), at(3)).await).is_err());
    expect(&[], &pool).await;
    let prod = in_tx!(pool, |t| catalog::create_product(
        &t,
        id,
        ProductChange {
            title: Some("P".into()),
            category_id: Some(Some(c1.id)),
            variants: Some(vec![variant(&[], Some("P-1"), 100, Some(2))]),
            ..Default::default()
        },
        at(4)
    )
    .await)
    .unwrap();
    let p = expect(&["product.created"], &pool).await;
    assert_eq!(p[0], json!(prod));
    in_tx!(pool, |t| catalog::delete_category(&t, id, c1.id, at(5)).await).unwrap();
    let p = expect(&["category.deleted"], &pool).await;
    assert_eq!(p[0], json!({ "id": c1.id }));
    let after = catalog::product(&pool.get().await.unwrap(), id, prod.id).await.unwrap();
    assert_eq!((after.category_id, after.updated_at), (None, at(5)));
    in_tx!(pool, |t| catalog::delete_product(&t, id, prod.id, at(6)).await).unwrap();
    let p = expect(&["product.deleted"], &pool).await;
    assert_eq!(p[0], json!({ "id": prod.id }));
    let c = pool.get().await.unwrap();
    let left: i64 = c.query_one("SELECT count(*) FROM variants", &[]).await.unwrap().get(0);
    assert_eq!(left, 0, "a deleted product's variants go with it");
    drop(c);

    // A store that never came to be takes its events with it.
    in_tx!(pool, |t| stores::discard(&t, id).await).unwrap();
    assert!(outbox(&pool, 0).await.is_empty());
}

/// Two transactions that both pass the SKU check: the second to write gets SQLite's error, from
/// the unique index, not a database error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sku_taken_by_a_concurrent_writer_is_the_same_error() {
    let (_db, pool) = pg_shard(4).await;
    let (id, owner) = (StoreId::generate(), MerchantId::generate());
    in_tx!(pool, |t| stores::insert(&t, id, owner, "Shop", &StoreSettings::default(), at(0)).await).unwrap();
    let mut products = vec![];
    for (i, title) in ["One", "Two"].iter().enumerate() {
        let change = ProductChange {
            title: Some(title.to_string()),
            variants: Some(vec![variant(&[], None, 100, None)]),
            ..Default::default()
        };
        products.push(in_tx!(pool, |t| catalog::create_product(&t, id, change, at(i as i64)).await).unwrap());
    }
    let sku = |p: &Product| ProductChange {
        variants: Some(vec![NewVariant { id: Some(p.variants[0].id), ..variant(&[], Some("SAME"), 100, None) }]),
        ..Default::default()
    };

    let pool = std::sync::Arc::new(pool);
    let mut first = pool.get().await.unwrap();
    let t1 = first.transaction().await.unwrap();
    catalog::update_product(&t1, id, products[0].id, sku(&products[0]), at(5)).await.unwrap();
    let (p2, c2) = (products[1].clone(), sku(&products[1]));
    let rival = {
        let pool = pool.clone();
        tokio::spawn(async move { in_tx!(pool, |t| catalog::update_product(&t, id, p2.id, c2, at(6)).await) })
    };
    // The rival passes its check (the first's row is not committed) and waits on the index.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!rival.is_finished(), "the rival should be waiting on the unique index");
    t1.commit().await.unwrap();
    let e = rival.await.unwrap().unwrap_err();
    match &e {
        StorageError::Invalid(inv) => {
            let text = format!("{inv:?}");
            assert!(
                text.contains("variants[0].sku") && text.contains("'SAME' is already used by another product"),
                "{text}"
            );
        }
        other => panic!("expected SQLite's Invalid, got {other:?}"),
    }
    let kinds: Vec<String> = outbox(&pool, 0).await.into_iter().map(|(_, k, _)| k).collect();
    assert_eq!(kinds, ["store.created", "product.created", "product.created", "product.updated"]);
}
