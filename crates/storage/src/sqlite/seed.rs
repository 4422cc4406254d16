//! `kirana seed`: realistic stores written straight into the SQLite files, fast and restartable.
//!
//! Data is generated per store from a seeded RNG (the store's index mixed with the plan's seed),
//! so the same plan always yields the same rows, ids included. Stores are written in chunks: each
//! chunk's rows go to their shards first, then its directory entries and the progress marker in
//! one directory transaction. An interrupted seed re-runs at most one chunk (its shard rows are
//! inserted with `OR IGNORE`, and are identical) and continues.
//!
//! Seeding is a bulk import, not a stream of changes: it writes no outbox events. It runs with
//! `synchronous=OFF` (a power cut mid-seed may need a fresh data directory; a killed process only
//! needs a re-run) and in large transactions.
//!
//! The shape of the data:
//! - products per store: log-normal (σ = 1.4) with the requested mean, capped — most stores have
//!   a handful, a few have thousands;
//! - variants per product: one for 70 %, two or three sizes for 20 %, size × colour for 10 %;
//! - stock: tracked for 80 % of variants (mostly in stock), untracked for the rest;
//! - orders: proportional to store size with noise, over the 90 days before the seed's epoch,
//!   with a realistic status mix and full history; customers and their totals consistent.

use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use kirana_domain::order::{Address, OrderStatus};
use kirana_domain::store::StoreSettings;
use kirana_domain::{Amount, Currency, StoreId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Result;
use crate::error::StorageError;
use crate::storage::placement;

/// What to seed.
#[derive(Debug, Clone)]
pub struct SeedPlan {
    pub stores: u64,
    /// Mean products per store.
    pub products_mean: f64,
    /// Mean orders per store.
    pub orders_mean: f64,
    pub max_products: u32,
    pub seed: u64,
    /// Stores per chunk (one transaction per shard and one in the directory).
    pub chunk: u64,
}

impl Default for SeedPlan {
    fn default() -> Self {
        SeedPlan { stores: 1000, products_mean: 10.0, orders_mean: 5.0, max_products: 5000, seed: 42, chunk: 2000 }
    }
}

/// The parameters that shape the data: a resumed seed must use the same ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Shape {
    products_mean: f64,
    orders_mean: f64,
    max_products: u32,
    seed: u64,
    shards: u32,
}

/// Slugs of seeded stores: `seed-0`, `seed-1`, … (index 0 is the first store made).
pub const SLUG_PREFIX: &str = "seed-";

/// Words product titles are made of; the load generator searches for them.
pub const SEARCH_TERMS: &[&str] = &[
    "chai",
    "coffee",
    "rice",
    "atta",
    "dal",
    "ghee",
    "honey",
    "masala",
    "pickle",
    "papad",
    "namkeen",
    "biscuits",
    "jam",
    "juice",
    "oil",
    "soap",
    "shampoo",
    "towel",
    "bedsheet",
    "kurta",
    "saree",
    "dupatta",
    "shirt",
    "jeans",
    "bangles",
    "earrings",
    "candles",
    "incense",
    "diya",
    "notebook",
    "pen",
    "charger",
    "earphones",
    "toys",
];
const ADJECTIVES: &[&str] = &[
    "Organic", "Fresh", "Premium", "Classic", "Handmade", "Cotton", "Silk", "Spicy", "Homemade", "Royal", "Golden",
    "Pure",
];
const PACKS: &[&str] = &["250 g", "500 g", "1 kg", "Pack of 2", "Pack of 6", "Large", "Small", "Family Pack"];
const FAMILY: &[&str] =
    &["Sharma", "Gupta", "Lakshmi", "Ganesh", "Sai", "Patel", "Khan", "Singh", "Reddy", "Iyer", "Das", "Bose"];
const KIND: &[&str] = &[
    "Kirana",
    "General Store",
    "Textiles",
    "Mobiles",
    "Sweets",
    "Boutique",
    "Stores",
    "Traders",
    "Emporium",
    "Bazaar",
];
const CATEGORIES: &[&str] = &[
    "Groceries",
    "Snacks",
    "Beverages",
    "Personal Care",
    "Home",
    "Clothing",
    "Accessories",
    "Electronics",
    "Stationery",
    "Festive",
    "Gifts",
    "Daily Needs",
];
const SIZES: &[&str] = &["S", "M", "L", "XL", "XXL", "Free Size"];
const COLOURS: &[&str] = &["Red", "Blue", "Green", "Black", "White", "Yellow"];

/// 2026-11-01T00:00:00Z: seeded stores were created over the two years before it; orders fall in
/// its last 90 days.
const EPOCH_MS: i64 = 1_793_491_200_000;
const TWO_YEARS_MS: i64 = 2 * 365 * 24 * 3600 * 1000;
const NINETY_DAYS_MS: i64 = 90 * 24 * 3600 * 1000;

/// How far a seed has got, reported after every chunk.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub stores_done: u64,
    pub stores_total: u64,
    pub resumed_from: u64,
    pub rows: u64,
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub stores: u64,
    pub resumed_from: u64,
    pub rows: u64,
    pub elapsed: Duration,
}

/// Seeds `plan.stores` stores into the data directory (creating and migrating it as needed),
/// continuing an earlier, interrupted or smaller seed with the same shape.
pub fn seed(data_dir: &Path, shards: u32, plan: &SeedPlan, on_progress: &mut dyn FnMut(&Progress)) -> Result<Summary> {
    let started = Instant::now();
    let shape = Shape {
        products_mean: plan.products_mean,
        orders_mean: plan.orders_mean,
        max_products: plan.max_products,
        seed: plan.seed,
        shards,
    };
    if !(plan.products_mean >= 1.0 && plan.products_mean <= plan.max_products as f64) {
        return Err(StorageError::invalid("products-per-store", "must be at least 1 and at most --max-products"));
    }
    if !(0.0..=10_000.0).contains(&plan.orders_mean) {
        return Err(StorageError::invalid("orders-per-store", "must be between 0 and 10000"));
    }
    // Opening through the normal path creates and migrates every file.
    drop(super::open(data_dir, shards, &super::SqliteOptions::default())?);
    let dir = bulk_connection(&data_dir.join("directory.db"))?;
    let shard_conns: Vec<Connection> = (0..shards)
        .map(|i| bulk_connection(&data_dir.join("shards").join(format!("shard-{i:04}.db"))))
        .collect::<Result<_>>()?;

    let start = resume_point(&dir, &shape)?;
    let mut progress = Progress {
        stores_done: start,
        stores_total: plan.stores,
        resumed_from: start,
        rows: 0,
        elapsed: Duration::ZERO,
    };
    on_progress(&progress);
    if start >= plan.stores {
        return Ok(Summary { stores: plan.stores, resumed_from: start, rows: 0, elapsed: started.elapsed() });
    }

    // Generation and writing overlap: one thread makes chunks, this one writes them.
    let (tx, rx): (SyncSender<Vec<StoreData>>, Receiver<Vec<StoreData>>) = sync_channel(2);
    let gen_plan = plan.clone();
    let generator = std::thread::Builder::new()
        .name("kirana-seed-gen".into())
        .spawn(move || {
            let mut i = start;
            while i < gen_plan.stores {
                let end = (i + gen_plan.chunk.max(1)).min(gen_plan.stores);
                let chunk: Vec<StoreData> = (i..end).map(|k| generate(k, &gen_plan, shards)).collect();
                if tx.send(chunk).is_err() {
                    return; // the writer stopped on an error
                }
                i = end;
            }
        })
        .map_err(|e| StorageError::Internal(format!("cannot start the generator: {e}")))?;

    for chunk in rx {
        let next_index = chunk.last().map(|s| s.index + 1).unwrap_or(progress.stores_done);
        progress.rows += write_chunk(&dir, &shard_conns, &chunk, &shape, next_index)?;
        progress.stores_done = next_index;
        progress.elapsed = started.elapsed();
        on_progress(&progress);
    }
    generator.join().map_err(|_| StorageError::Internal("the seed generator panicked".into()))?;
    for c in shard_conns.iter().chain(std::iter::once(&dir)) {
        // A bounded sample keeps `optimize` from reading the whole file after a large seed.
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA analysis_limit = 1000; PRAGMA optimize;")?;
    }
    Ok(Summary { stores: plan.stores, resumed_from: start, rows: progress.rows, elapsed: started.elapsed() })
}

fn bulk_connection(path: &Path) -> Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(Duration::from_secs(30))?;
    c.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    c.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF; PRAGMA cache_size = -262144; PRAGMA temp_store = MEMORY;",
    )?;
    c.set_prepared_statement_cache_capacity(64);
    Ok(c)
}

fn resume_point(dir: &Connection, shape: &Shape) -> Result<u64> {
    let row: Option<(String, i64)> = dir
        .query_row("SELECT plan, next_index FROM seed_progress WHERE name = 'default'", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    match row {
        None => {
            let stores: i64 = dir.query_row("SELECT count(*) FROM stores", [], |r| r.get(0))?;
            if stores > 0 {
                return Err(StorageError::invalid(
                    "data-dir",
                    "already holds stores that were not seeded; seed into a fresh data directory",
                ));
            }
            Ok(0)
        }
        Some((plan, next)) => {
            let earlier: Shape = serde_json::from_str(&plan)?;
            if &earlier != shape {
                return Err(StorageError::invalid(
                    "seed",
                    &format!(
                        "this data directory was seeded with a different shape ({plan}); use the same --products-per-store, --orders-per-store, --max-products, --seed and --shards, or a fresh directory"
                    ),
                ));
            }
            Ok(next as u64)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Generation

struct StoreData {
    index: u64,
    id: Uuid,
    merchant: Uuid,
    shard: u32,
    created: i64,
    name: String,
    settings: String,
    next_order_number: i64,
    categories: Vec<(Uuid, String)>,
    products: Vec<ProductData>,
    customers: Vec<CustomerData>,
    orders: Vec<OrderData>,
}

struct ProductData {
    id: Uuid,
    title: String,
    status: &'static str,
    category: Option<Uuid>,
    options: &'static str,
    variants: Vec<VariantData>,
}

struct VariantData {
    id: Uuid,
    options: String,
    title: String,
    sku: Option<String>,
    price: i64,
    compare_at: Option<i64>,
    stock: Option<i64>,
}

struct CustomerData {
    id: Uuid,
    phone: String,
    name: String,
    orders: i64,
    spent: i64,
    first: i64,
    last: i64,
}

struct OrderData {
    id: Uuid,
    number: i64,
    status: OrderStatus,
    customer: usize,
    created: i64,
    items: Vec<(usize, usize, u32)>, // (product, variant, quantity)
    subtotal: i64,
    delivery: i64,
    total: i64,
    cart: Uuid,
    access: [u8; 32],
}

fn rng_for(seed: u64, index: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17))
}

fn uuid_at(rng: &mut StdRng, ms: i64) -> Uuid {
    let mut bytes = [0u8; 10];
    rng.fill(&mut bytes);
    uuid::Builder::from_unix_timestamp_millis(ms.max(0) as u64, &bytes).into_uuid()
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// A log-normal draw with the given mean and shape.
fn lognormal(rng: &mut StdRng, mean: f64, sigma: f64) -> f64 {
    let mu = mean.ln() - sigma * sigma / 2.0;
    (mu + sigma * normal(rng)).exp()
}

fn pick<'a>(rng: &mut StdRng, list: &[&'a str]) -> &'a str {
    list[rng.random_range(0..list.len())]
}

/// The path of states an order went through to reach `status`.
fn path_to(status: OrderStatus) -> &'static [OrderStatus] {
    use OrderStatus::*;
    match status {
        PendingPayment => &[PendingPayment],
        Placed => &[Placed],
        Accepted => &[Placed, Accepted],
        Packed => &[Placed, Accepted, Packed],
        Shipped => &[Placed, Accepted, Packed, Shipped],
        Delivered => &[Placed, Accepted, Packed, Shipped, Delivered],
        Rejected => &[Placed, Rejected],
        Cancelled => &[Placed, Accepted, Cancelled],
        Returned => &[Placed, Accepted, Packed, Shipped, Delivered, Returned],
    }
}

fn order_status(rng: &mut StdRng) -> OrderStatus {
    use OrderStatus::*;
    match rng.random_range(0..100) {
        0..60 => Delivered,
        60..70 => Shipped,
        70..78 => Placed,
        78..85 => Accepted,
        85..90 => Packed,
        90..95 => Cancelled,
        95..98 => Rejected,
        _ => Returned,
    }
}

fn generate(index: u64, plan: &SeedPlan, shards: u32) -> StoreData {
    let mut rng = rng_for(plan.seed, index);
    let created = EPOCH_MS - TWO_YEARS_MS + (index as i64 * TWO_YEARS_MS / plan.stores.max(1) as i64);
    let id = uuid_at(&mut rng, created);
    let merchant = uuid_at(&mut rng, created);
    let shard = placement(StoreId::from_uuid(id), shards as usize).0;
    let name = format!("{} {}", pick(&mut rng, FAMILY), pick(&mut rng, KIND));
    let settings = StoreSettings {
        currency: Currency::INR,
        delivery_fee: Amount::from_stored([0, 2_000, 3_000, 4_000, 5_000][rng.random_range(0..5)]),
        free_delivery_threshold: [None, Some(30_000), Some(50_000), Some(99_900)][rng.random_range(0..4)]
            .map(Amount::from_stored),
        tax_rate_bps: [0, 500, 1_200, 1_800][rng.random_range(0..4)],
        online_payment_enabled: rng.random_bool(0.3),
        ..StoreSettings::default()
    };

    let n_products =
        (lognormal(&mut rng, plan.products_mean, 1.4).round() as i64).clamp(1, i64::from(plan.max_products)) as usize;
    let n_categories = (1 + n_products / 20).min(CATEGORIES.len() * 4);
    let categories: Vec<(Uuid, String)> = (0..n_categories)
        .map(|c| {
            let base = CATEGORIES[(c + index as usize) % CATEGORIES.len()];
            let name =
                if c < CATEGORIES.len() { base.to_string() } else { format!("{base} {}", c / CATEGORIES.len() + 1) };
            (uuid_at(&mut rng, created + c as i64), name)
        })
        .collect();

    let mut products = Vec::with_capacity(n_products);
    for p in 0..n_products {
        let at = created + 1_000 + p as i64;
        let pid = uuid_at(&mut rng, at);
        let term = pick(&mut rng, SEARCH_TERMS);
        let mut title = format!("{} {} {}", pick(&mut rng, ADJECTIVES), capitalise(term), pick(&mut rng, PACKS));
        if p >= 50 {
            title.push_str(&format!(" #{p}"));
        }
        let status = match rng.random_range(0..100) {
            0..90 => "active",
            90..97 => "draft",
            _ => "archived",
        };
        let (options, combos): (&'static str, Vec<Vec<&str>>) = match rng.random_range(0..10) {
            0..7 => ("[]", vec![vec![]]),
            7..9 => {
                let k = rng.random_range(2..=3);
                let start = rng.random_range(0..SIZES.len() - k);
                (r#"["Size"]"#, SIZES[start..start + k].iter().map(|s| vec![*s]).collect())
            }
            _ => {
                let mut v = vec![];
                for s in &SIZES[1..3] {
                    for c in &COLOURS[..rng.random_range(2..=3)] {
                        v.push(vec![*s, *c]);
                    }
                }
                (r#"["Size","Colour"]"#, v)
            }
        };
        let base_price = (lognormal(&mut rng, 40_000.0, 1.0) as i64 / 100 * 100 - 1).clamp(900, 50_000_000);
        let variants = combos
            .into_iter()
            .enumerate()
            .map(|(v, opts)| {
                let tracked = rng.random_bool(0.8);
                let stock = tracked.then(|| if rng.random_bool(0.08) { 0 } else { rng.random_range(5..=500) });
                VariantData {
                    id: uuid_at(&mut rng, at),
                    title: if opts.is_empty() { "Default".into() } else { opts.join(" / ") },
                    options: serde_json::to_string(&opts).unwrap_or_else(|_| "[]".into()),
                    sku: rng.random_bool(0.5).then(|| format!("SKU-{index}-{p}-{v}")),
                    price: base_price + v as i64 * 1_000,
                    compare_at: rng.random_bool(0.25).then(|| base_price * 5 / 4),
                    stock,
                }
            })
            .collect();
        let category = (!categories.is_empty() && rng.random_bool(0.85))
            .then(|| categories[rng.random_range(0..categories.len())].0);
        products.push(ProductData { id: pid, title, status, category, options, variants });
    }

    // Orders: proportional to size, with noise; over the last 90 days.
    let sellable: Vec<(usize, usize)> = products
        .iter()
        .enumerate()
        .filter(|(_, p)| p.status == "active")
        .flat_map(|(pi, p)| (0..p.variants.len()).map(move |vi| (pi, vi)))
        .collect();
    let expected = plan.orders_mean * n_products as f64 / plan.products_mean;
    let n_orders = if sellable.is_empty() || plan.orders_mean == 0.0 {
        0
    } else {
        (lognormal(&mut rng, expected.max(0.01), 0.5).round() as usize).min(5_000)
    };
    let n_customers = n_orders.div_ceil(2).max(usize::from(n_orders > 0));
    let mut customers: Vec<CustomerData> = (0..n_customers)
        .map(|k| CustomerData {
            id: uuid_at(&mut rng, EPOCH_MS - NINETY_DAYS_MS),
            phone: format!("+918{:09}", k),
            name: format!(
                "{} {}",
                pick(&mut rng, &["Asha", "Ravi", "Meera", "Arjun", "Fatima", "John"]),
                pick(&mut rng, FAMILY)
            ),
            orders: 0,
            spent: 0,
            first: i64::MAX,
            last: 0,
        })
        .collect();
    let mut order_times: Vec<i64> =
        (0..n_orders).map(|_| EPOCH_MS - NINETY_DAYS_MS + rng.random_range(0..NINETY_DAYS_MS)).collect();
    order_times.sort_unstable();
    let delivery_fee = settings.delivery_fee.minor();
    let threshold = settings.free_delivery_threshold.map(Amount::minor);
    let mut orders = Vec::with_capacity(n_orders);
    for (o, at) in order_times.into_iter().enumerate() {
        let lines = rng.random_range(1..=3).min(sellable.len());
        let mut items: Vec<(usize, usize, u32)> = Vec::with_capacity(lines);
        while items.len() < lines {
            let (pi, vi) = sellable[rng.random_range(0..sellable.len())];
            if !items.iter().any(|(p, v, _)| (*p, *v) == (pi, vi)) {
                items.push((pi, vi, rng.random_range(1..=3)));
            }
        }
        let subtotal: i64 = items.iter().map(|(pi, vi, q)| products[*pi].variants[*vi].price * i64::from(*q)).sum();
        let delivery = if threshold.is_some_and(|t| subtotal >= t) { 0 } else { delivery_fee };
        let customer = rng.random_range(0..n_customers);
        let total = subtotal + delivery;
        let c = &mut customers[customer];
        c.orders += 1;
        c.spent += total;
        c.first = c.first.min(at);
        c.last = c.last.max(at);
        let mut access = [0u8; 32];
        rng.fill(&mut access);
        orders.push(OrderData {
            id: uuid_at(&mut rng, at),
            number: 1001 + o as i64,
            status: order_status(&mut rng),
            customer,
            created: at,
            items,
            subtotal,
            delivery,
            total,
            cart: uuid_at(&mut rng, at),
            access,
        });
    }
    // Keep only customers who ordered, and point orders at their new positions.
    let mut remap = vec![usize::MAX; n_customers];
    let mut kept = Vec::with_capacity(n_customers);
    for (old, c) in customers.into_iter().enumerate() {
        if c.orders > 0 {
            remap[old] = kept.len();
            kept.push(c);
        }
    }
    for o in &mut orders {
        o.customer = remap[o.customer];
    }
    let customers = kept;

    StoreData {
        index,
        id,
        merchant,
        shard,
        created,
        name,
        settings: serde_json::to_string(&settings).unwrap_or_default(),
        next_order_number: 1001 + orders.len() as i64,
        categories,
        products,
        customers,
        orders,
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Writing

fn write_chunk(
    dir: &Connection,
    shards: &[Connection],
    chunk: &[StoreData],
    shape: &Shape,
    next_index: u64,
) -> Result<u64> {
    let mut rows = 0u64;
    for (i, conn) in shards.iter().enumerate() {
        let mine: Vec<&StoreData> = chunk.iter().filter(|s| s.shard as usize == i).collect();
        if mine.is_empty() {
            continue;
        }
        conn.execute_batch("BEGIN")?;
        let written = mine.iter().try_fold(0u64, |n, s| Ok::<_, StorageError>(n + write_store(conn, s)?));
        match written {
            Ok(n) => {
                conn.execute_batch("COMMIT")?;
                rows += n;
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
    // The directory is the commit point: stores become reachable, and progress moves, together.
    dir.execute_batch("BEGIN")?;
    let result = (|| -> Result<u64> {
        let mut merchant =
            dir.prepare_cached("INSERT OR IGNORE INTO merchants (merchant_id, phone, created_at) VALUES (?1, ?2, ?3)")?;
        let mut store = dir.prepare_cached(
            "INSERT OR IGNORE INTO stores (store_id, shard, owner_id, created_at) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut slug = dir.prepare_cached(
            "INSERT OR IGNORE INTO slugs (slug, store_id, is_current, created_at) VALUES (?1, ?2, 1, ?3)",
        )?;
        for s in chunk {
            merchant.execute(params![s.merchant, format!("+919{:09}", s.index), s.created])?;
            store.execute(params![s.id, s.shard, s.merchant, s.created])?;
            slug.execute(params![format!("{SLUG_PREFIX}{}", s.index), s.id, s.created])?;
        }
        dir.prepare_cached(
            "INSERT INTO seed_progress (name, plan, next_index) VALUES ('default', ?1, ?2)
             ON CONFLICT (name) DO UPDATE SET next_index = excluded.next_index",
        )?
        .execute(params![serde_json::to_string(shape)?, next_index as i64])?;
        Ok(chunk.len() as u64 * 3)
    })();
    match result {
        Ok(n) => {
            dir.execute_batch("COMMIT")?;
            Ok(rows + n)
        }
        Err(e) => {
            let _ = dir.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn write_store(c: &Connection, s: &StoreData) -> Result<u64> {
    let mut rows = 1u64;
    c.prepare_cached(
        "INSERT OR IGNORE INTO stores (store_id, owner_id, name, settings, next_order_number, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
    )?
    .execute(params![s.id, s.merchant, s.name, s.settings, s.next_order_number, s.created])?;
    let mut cat = c.prepare_cached(
        "INSERT OR IGNORE INTO categories (store_id, category_id, name, name_key, description, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, '', ?5, ?5)",
    )?;
    for (id, name) in &s.categories {
        cat.execute(params![s.id, id, name, name.to_lowercase(), s.created])?;
        rows += 1;
    }
    let mut product = c.prepare_cached(
        "INSERT OR IGNORE INTO products (store_id, product_id, title, description, status, category_id, images, options, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
    )?;
    let mut variant = c.prepare_cached(
        "INSERT OR IGNORE INTO variants (store_id, variant_id, product_id, position, options, sku, price, compare_at_price, stock)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for p in &s.products {
        let images = format!(r#"["https://img.kirana.example/{}.jpg"]"#, p.id.simple());
        product.execute(params![
            s.id,
            p.id,
            p.title,
            "Freshly stocked and delivered from our store.",
            p.status,
            p.category,
            images,
            p.options,
            s.created
        ])?;
        rows += 1;
        for (i, v) in p.variants.iter().enumerate() {
            variant.execute(params![s.id, v.id, p.id, i as i64, v.options, v.sku, v.price, v.compare_at, v.stock])?;
            rows += 1;
        }
    }
    let mut customer = c.prepare_cached(
        "INSERT OR IGNORE INTO customers (store_id, customer_id, phone, name, email, orders_count, total_spent, first_order_at, last_order_at)
         VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6, ?7, ?8)",
    )?;
    for k in &s.customers {
        customer.execute(params![s.id, k.id, k.phone, k.name, k.orders, k.spent, k.first, k.last])?;
        rows += 1;
    }
    let address = serde_json::to_string(&Address {
        line1: "12 MG Road".into(),
        line2: None,
        landmark: None,
        city: "Pune".into(),
        state: Some("Maharashtra".into()),
        postal_code: "411001".into(),
        country: "IN".into(),
    })?;
    let mut order = c.prepare_cached(
        "INSERT OR IGNORE INTO orders (store_id, order_id, number, status, payment_method, payment_status, currency,
            customer_id, customer_name, customer_phone, customer_email, address,
            subtotal, discount, delivery_fee, tax, total, coupon_id, coupon_code, note, tracking,
            cart_id, access_hash, idempotency_key, request_hash, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, 'cod', ?5, 'INR', ?6, ?7, ?8, NULL, ?9, ?10, 0, ?11, 0, ?12, NULL, NULL, NULL, ?13, ?14, ?15, NULL, NULL, ?16, ?17)",
    )?;
    let mut item = c.prepare_cached(
        "INSERT OR IGNORE INTO order_items (store_id, order_id, line, product_id, variant_id, title, variant_title, sku, unit_price, quantity, line_total)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    let mut step = c.prepare_cached(
        "INSERT OR IGNORE INTO order_history (store_id, order_id, seq, from_status, to_status, actor, note, tracking, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, ?7, ?8)",
    )?;
    for o in &s.orders {
        let cust = &s.customers[o.customer];
        let path = path_to(o.status);
        let payment = path.iter().fold(kirana_domain::order::PaymentStatus::Pending, |p, st| {
            p.after(kirana_domain::order::PaymentMethod::Cod, *st)
        });
        let tracking = path.contains(&OrderStatus::Shipped).then(|| format!("AWB{}{}", s.index, o.number));
        let updated = o.created + (path.len() as i64 - 1) * 3_600_000;
        order.execute(params![
            s.id,
            o.id,
            o.number,
            o.status.as_str(),
            payment.as_str(),
            cust.id,
            cust.name,
            cust.phone,
            address,
            o.subtotal,
            o.delivery,
            o.total,
            tracking,
            o.cart,
            &o.access[..],
            o.created,
            updated
        ])?;
        rows += 1;
        for (line, (pi, vi, q)) in o.items.iter().enumerate() {
            let p = &s.products[*pi];
            let v = &p.variants[*vi];
            item.execute(params![
                s.id,
                o.id,
                line as i64,
                p.id,
                v.id,
                p.title,
                v.title,
                v.sku,
                v.price,
                q,
                v.price * i64::from(*q)
            ])?;
            rows += 1;
        }
        for (k, st) in path.iter().enumerate() {
            let from = (k > 0).then(|| path[k - 1].as_str());
            let actor = if k == 0 { "shopper".to_string() } else { format!("merchant:{}", s.merchant) };
            let t = (*st == OrderStatus::Shipped).then_some(tracking.as_deref()).flatten();
            step.execute(params![
                s.id,
                o.id,
                k as i64 + 1,
                from,
                st.as_str(),
                actor,
                t,
                o.created + k as i64 * 3_600_000
            ])?;
            rows += 1;
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_per_store() {
        let plan = SeedPlan { stores: 100, ..SeedPlan::default() };
        let a = generate(7, &plan, 2);
        let b = generate(7, &plan, 2);
        assert_eq!(a.id, b.id);
        assert_eq!(a.products.len(), b.products.len());
        assert_eq!(
            a.orders.iter().map(|o| o.total).collect::<Vec<_>>(),
            b.orders.iter().map(|o| o.total).collect::<Vec<_>>()
        );
        assert_ne!(generate(8, &plan, 2).id, a.id);
    }

    #[test]
    fn store_sizes_are_heavy_tailed_with_the_requested_mean() {
        let plan = SeedPlan { stores: 20_000, products_mean: 10.0, ..SeedPlan::default() };
        let mut rng = rng_for(1, 1);
        let mut sizes: Vec<f64> =
            (0..200_000).map(|_| lognormal(&mut rng, plan.products_mean, 1.4).round().clamp(1.0, 5000.0)).collect();
        sizes.sort_by(f64::total_cmp);
        let mean = sizes.iter().sum::<f64>() / sizes.len() as f64;
        let median = sizes[sizes.len() / 2];
        assert!((mean - 10.0).abs() < 1.0, "mean {mean}");
        assert!(median <= 5.0, "most stores have a handful: median {median}");
        assert!(sizes[sizes.len() - 1] > 500.0, "a few have hundreds or thousands: max {}", sizes[sizes.len() - 1]);
    }

    #[test]
    fn order_totals_and_customers_agree() {
        let plan = SeedPlan { stores: 10, products_mean: 40.0, orders_mean: 30.0, ..SeedPlan::default() };
        for i in 0..10 {
            let s = generate(i, &plan, 1);
            let spent: i64 = s.customers.iter().map(|c| c.spent).sum();
            let totals: i64 = s.orders.iter().map(|o| o.total).sum();
            assert_eq!(spent, totals);
            assert_eq!(s.customers.iter().map(|c| c.orders).sum::<i64>(), s.orders.len() as i64);
            assert_eq!(s.next_order_number, 1001 + s.orders.len() as i64);
        }
    }
}
