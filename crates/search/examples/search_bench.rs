//! Search latency for one store with 50,000 products: the index (ids only, and the full
//! facade that loads a page of products) against the database's title query on the same
//! store, for the same queries, in the same run.
//!
//! `cargo run --release -p kirana-search --example search_bench [-- PRODUCTS QUERIES]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use kirana_domain::catalog::ProductInput;
use kirana_domain::page::{Limit, PageRequest};
use kirana_domain::store::StoreInput;
use kirana_domain::{Clock, Phone, SystemClock};
use kirana_search::{Indexer, IndexerConfig, ProductSearch, Readiness, SearchFilter, SearchIndex, SearchQuery};
use kirana_storage::ProductFilter;
use kirana_storage::sqlite::{SqliteOptions, Synchronous};

const ADJECTIVES: &[&str] = &[
    "Organic",
    "Premium",
    "Fresh",
    "Classic",
    "Spicy",
    "Sweet",
    "Roasted",
    "Handmade",
    "Natural",
    "Crunchy",
    "Golden",
    "Royal",
    "Pure",
    "Homestyle",
    "Smoked",
    "Tangy",
    "Creamy",
    "Instant",
    "Whole",
    "Light",
];
const BRANDS: &[&str] = &[
    "Amrit",
    "Desi Farms",
    "Ganga",
    "Himalaya",
    "Kesar",
    "Lakshmi",
    "Nandini",
    "Patanjali",
    "Rasoi",
    "Shakti",
    "Tata",
    "Vasant",
    "Annapurna",
    "Bharat",
    "Chandan",
    "Dhara",
    "Everest",
    "Gokul",
    "Haldi",
    "Jyoti",
];
const NOUNS: &[&str] = &[
    "Basmati Rice",
    "Masala Chai",
    "Toor Dal",
    "Moong Dal",
    "Chana Dal",
    "Atta",
    "Ghee",
    "Mustard Oil",
    "Garam Masala",
    "Turmeric Powder",
    "Red Chilli Powder",
    "Jaggery",
    "Cashews",
    "Almonds",
    "Raisins",
    "Mango Pickle",
    "Lime Pickle",
    "Papad",
    "Poha",
    "Sooji",
    "Besan",
    "Green Tea",
    "Coffee Powder",
    "Biscuits",
    "Namkeen",
    "Bhujia",
    "Honey",
    "Saffron",
    "Cardamom",
    "Cumin Seeds",
    "Running Shoes",
    "Cotton Kurta",
    "Steel Tumbler",
    "Copper Bottle",
    "Incense Sticks",
    "Coconut Oil",
    "Soap Bar",
    "Shampoo",
    "Toothpaste",
    "Notebook",
];
const SIZES: &[&str] = &["100g", "250g", "500g", "1kg", "5kg", "200ml", "500ml", "1L", "Pack of 2", "Pack of 6"];
const PHRASES: &[&str] = &[
    "sourced from small farms",
    "stone ground the old way",
    "no added preservatives",
    "perfect for everyday cooking",
    "a family favourite",
    "rich aroma and taste",
    "carefully cleaned and sorted",
    "sealed for freshness",
];

/// Queries shoppers type: single words, two words, and typo'd words.
const QUERIES: &[&str] = &[
    "rice",
    "chai",
    "dal",
    "ghee",
    "pickle",
    "masala",
    "almonds",
    "honey",
    "saffron",
    "shoes",
    "kurta",
    "oil",
    "basmati rice",
    "masala chai",
    "mango pickle",
    "green tea",
    "coconut oil",
    "toor dal",
    "organic honey",
    "running shoes",
    "copper bottle",
    "garam masala",
    "basmti",
    "masla chai",
    "cardamon",
    "turmerik",
    "almods",
    "biscits",
    "shampo",
    "kesar saffron",
];

fn pick<'a>(list: &[&'a str], n: usize) -> &'a str {
    list[n % list.len()]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

struct Row {
    name: &'static str,
    p50: Duration,
    p99: Duration,
}

async fn measure<F, Fut>(name: &'static str, queries: usize, mut run: F) -> Row
where
    F: FnMut(&'static str) -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let mut times = Vec::with_capacity(queries);
    let mut found = 0;
    for i in 0..queries {
        let q = QUERIES[i % QUERIES.len()];
        let start = Instant::now();
        found += run(q).await;
        times.push(start.elapsed());
    }
    times.sort();
    let row = Row { name, p50: percentile(&times, 0.50), p99: percentile(&times, 0.99) };
    println!("{name}: p50 {:?} p99 {:?} ({} results in all)", row.p50, row.p99, found);
    row
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let products: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let queries: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2_000);

    let dir = tempfile::tempdir().expect("temp dir");
    let opts = SqliteOptions { synchronous: Synchronous::Normal, ..SqliteOptions::default() };
    let storage = kirana_storage::sqlite::open(dir.path(), 1, &opts).expect("open storage");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let phone = Phone::parse("+919800000001").expect("phone");
    let (m, _) = storage.directory().merchant_for_phone(&phone, clock.now()).await.expect("merchant");
    let new = StoreInput { name: Some("Bench Kirana".into()), ..StoreInput::default() }.into_new().expect("store");
    let store = storage.create_store(m.id, new, clock.now()).await.expect("create store");
    let scope = storage.scope_for_owner(m.id, store.id).await.expect("scope");

    let start = Instant::now();
    for n in 0..products {
        let title =
            format!("{} {} {} {}", pick(BRANDS, n / 7), pick(ADJECTIVES, n / 3), pick(NOUNS, n), pick(SIZES, n / 11));
        let description =
            format!("{} {}, {}.", pick(ADJECTIVES, n / 5), pick(NOUNS, n / 13).to_lowercase(), pick(PHRASES, n / 17));
        let input: ProductInput = serde_json::from_value(serde_json::json!({
            "title": title, "description": description, "status": "active", "price": 10_000 + (n % 500) as i64 * 100, "stock": 50,
        }))
        .expect("product input");
        let change = input.into_change(true).expect("valid product");
        storage.shard(&scope).create_product(&scope, change, clock.now()).await.expect("create product");
    }
    println!("created {products} products in {:?}", start.elapsed());

    let index = Arc::new(SearchIndex::in_memory().expect("index"));
    let ready = Readiness::new(1);
    let start = Instant::now();
    let mut indexer =
        Indexer::new(index.clone(), storage.clone(), 0, IndexerConfig::default(), clock.clone(), ready.clone());
    let read = indexer.catch_up().await.expect("index");
    let took = start.elapsed();
    println!(
        "indexer: {read} outbox rows, {} documents in {took:?} ({:.0} products/s, read back from the database)",
        index.len(),
        products as f64 / took.as_secs_f64()
    );

    // Each commit of 500 left a segment; tantivy merges them in the background, as it does on
    // a serving node. Measure the settled index, as shoppers would meet it.
    let before = index.segments();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        index.refresh().expect("reload");
        if index.segments() <= 8 {
            break;
        }
    }
    println!("segments: {before} after indexing, {} after merges settled", index.segments());

    let page = PageRequest { after: None, limit: Limit::parse(Some(24)).expect("limit") };
    let search = ProductSearch::new(storage.clone(), index.clone(), ready);
    let shard = storage.shard(&scope);

    // Warm both paths once.
    for q in QUERIES {
        let _ = index.search(scope.store_id(), &SearchQuery::parse(q).expect("query"), SearchFilter::default(), 24, 0);
    }
    let ids = measure("index (24 ids)", queries, |q| {
        let hits = index
            .search(scope.store_id(), &SearchQuery::parse(q).expect("query"), SearchFilter::default(), 24, 0)
            .expect("search");
        async move { hits.len() }
    })
    .await;
    let full = measure("index + 24 products loaded (ProductSearch)", queries, |q| {
        let (search, scope) = (&search, &scope);
        async move { search.search(scope, q, None, page).await.expect("search").items.len() }
    })
    .await;
    let db = measure("database title query (ILIKE, Shard::products)", queries, |q| {
        let scope = &scope;
        async move {
            let filter = ProductFilter {
                status: Some(kirana_domain::catalog::ProductStatus::Active),
                query: Some(q.to_owned()),
                ..Default::default()
            };
            shard.products(scope, filter, page).await.expect("products").items.len()
        }
    })
    .await;

    println!();
    println!("| path ({products} products, {queries} queries) | p50 | p99 |");
    println!("|---|---|---|");
    for r in [&ids, &full, &db] {
        println!("| {} | {:.3} ms | {:.3} ms |", r.name, r.p50.as_secs_f64() * 1e3, r.p99.as_secs_f64() * 1e3);
    }
    println!(
        "database ÷ index+load: p50 {:.1}×, p99 {:.1}×",
        db.p50.as_secs_f64() / full.p50.as_secs_f64(),
        db.p99.as_secs_f64() / full.p99.as_secs_f64()
    );
}
