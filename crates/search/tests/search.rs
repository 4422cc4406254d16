//! Search over a real tantivy index and a real SQLite storage: relevance, typo tolerance,
//! isolation between stores, and the indexer following the product events.

use std::sync::Arc;

use kirana_domain::catalog::{Product, ProductInput};
use kirana_domain::page::{Limit, PageRequest};
use kirana_domain::store::StoreInput;
use kirana_domain::{Clock, Phone, ProductId, SystemClock};
use kirana_search::{Indexer, IndexerConfig, ProductSearch, Readiness, SearchFilter, SearchIndex, SearchQuery};
use kirana_storage::sqlite::{SqliteOptions, Synchronous};
use kirana_storage::{Storage, StoreScope};
use serde_json::json;

struct World {
    storage: Storage,
    clock: Arc<dyn Clock>,
    index: Arc<SearchIndex>,
    _dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteOptions { synchronous: Synchronous::Normal, ..SqliteOptions::default() };
        let storage = kirana_storage::sqlite::open(dir.path(), 1, &opts).unwrap();
        World { storage, clock: Arc::new(SystemClock), index: Arc::new(SearchIndex::in_memory().unwrap()), _dir: dir }
    }

    async fn store(&self, n: u32) -> StoreScope {
        let phone = Phone::parse(&format!("+9198{n:08}")).unwrap();
        let (m, _) = self.storage.directory().merchant_for_phone(&phone, self.clock.now()).await.unwrap();
        let new = StoreInput { name: Some(format!("Store {n}")), ..StoreInput::default() }.into_new().unwrap();
        let store = self.storage.create_store(m.id, new, self.clock.now()).await.unwrap();
        self.storage.scope_for_owner(m.id, store.id).await.unwrap()
    }

    async fn product(&self, scope: &StoreScope, title: &str, description: &str, status: &str) -> Product {
        let input: ProductInput = serde_json::from_value(
            json!({ "title": title, "description": description, "status": status, "price": 10_000, "stock": 5 }),
        )
        .unwrap();
        self.storage
            .shard(scope)
            .create_product(scope, input.into_change(true).unwrap(), self.clock.now())
            .await
            .unwrap()
    }

    async fn edit(&self, scope: &StoreScope, id: ProductId, change: serde_json::Value) {
        let input: ProductInput = serde_json::from_value(change).unwrap();
        self.storage
            .shard(scope)
            .update_product(scope, id, input.into_change(false).unwrap(), self.clock.now())
            .await
            .unwrap();
    }

    fn indexer(&self) -> Indexer {
        self.indexer_on(self.index.clone(), Readiness::new(1))
    }

    fn indexer_on(&self, index: Arc<SearchIndex>, ready: Readiness) -> Indexer {
        Indexer::new(index, self.storage.clone(), 0, IndexerConfig::default(), self.clock.clone(), ready)
    }

    fn ids(&self, scope: &StoreScope, q: &str) -> Vec<ProductId> {
        let q = SearchQuery::parse(q).unwrap();
        self.index
            .search(scope.store_id(), &q, SearchFilter::default(), 20, 0)
            .unwrap()
            .into_iter()
            .map(|h| h.product)
            .collect()
    }
}

#[tokio::test]
async fn stemming_finds_run_shoe_for_running_shoes() {
    let w = World::new();
    let s = w.store(1).await;
    let shoe = w.product(&s, "Run Shoe", "light and quick", "active").await;
    w.product(&s, "Masala Chai", "spiced tea", "active").await;
    w.indexer().catch_up().await.unwrap();
    assert_eq!(w.ids(&s, "running shoes"), vec![shoe.id]);
}

#[tokio::test]
async fn a_typo_still_finds_masala_chai() {
    let w = World::new();
    let s = w.store(1).await;
    let chai = w.product(&s, "Masala Chai", "spiced tea from Assam", "active").await;
    w.product(&s, "Basmati Rice", "long grain", "active").await;
    w.indexer().catch_up().await.unwrap();
    assert_eq!(w.ids(&s, "masla chai"), vec![chai.id]);
    assert_eq!(w.ids(&s, "Basmatti"), w.ids(&s, "basmati"), "distance 2 for long words");
    assert!(w.ids(&s, "tee").is_empty(), "three-letter words get no typo tolerance (\"tea\" is there)");
    assert_eq!(w.ids(&s, "tea"), vec![chai.id]);
}

#[tokio::test]
async fn a_title_match_ranks_above_a_description_only_match() {
    let w = World::new();
    let s = w.store(1).await;
    let in_description = w.product(&s, "Morning Blend", "a strong ginger tea", "active").await;
    let in_title = w.product(&s, "Ginger Tea", "warming", "active").await;
    let fuzzy = w.product(&s, "Gingar Biscuits", "crisp", "active").await;
    w.indexer().catch_up().await.unwrap();
    let ids = w.ids(&s, "ginger");
    assert_eq!(ids.first(), Some(&in_title.id));
    assert!(ids.contains(&in_description.id) && ids.contains(&fuzzy.id), "{ids:?}");
}

#[tokio::test]
async fn another_stores_identical_product_is_never_returned() {
    let w = World::new();
    let (a, b) = (w.store(1).await, w.store(2).await);
    let mine = w.product(&a, "Masala Chai", "spiced tea", "active").await;
    let theirs = w.product(&b, "Masala Chai", "spiced tea", "active").await;
    w.indexer().catch_up().await.unwrap();
    for q in ["masala chai", "masla", "tea", "spiced", "chai masala tea spiced"] {
        assert_eq!(w.ids(&a, q), vec![mine.id], "{q}");
        assert_eq!(w.ids(&b, q), vec![theirs.id], "{q}");
    }
}

#[tokio::test]
async fn drafts_and_archived_products_are_not_found() {
    let w = World::new();
    let s = w.store(1).await;
    w.product(&s, "Secret Saffron", "coming soon", "draft").await;
    let old = w.product(&s, "Old Saffron", "gone", "active").await;
    w.edit(&s, old.id, json!({ "status": "archived" })).await;
    w.indexer().catch_up().await.unwrap();
    assert!(w.ids(&s, "saffron").is_empty());
}

#[tokio::test]
async fn the_indexer_follows_creates_updates_and_deletes() {
    let w = World::new();
    let s = w.store(1).await;
    let mut indexer = w.indexer();
    let p = w.product(&s, "Cardamom Pods", "green", "active").await;
    indexer.catch_up().await.unwrap();
    assert_eq!(w.ids(&s, "cardamom"), vec![p.id]);

    w.edit(&s, p.id, json!({ "title": "Clove Buds" })).await;
    indexer.catch_up().await.unwrap();
    assert!(w.ids(&s, "cardamom").is_empty(), "the old title's words no longer match");
    assert_eq!(w.ids(&s, "clove"), vec![p.id]);

    w.storage.shard(&s).delete_product(&s, p.id, w.clock.now()).await.unwrap();
    indexer.catch_up().await.unwrap();
    assert!(w.ids(&s, "clove").is_empty());
    assert_eq!(w.index.len(), 0);
}

#[tokio::test]
async fn a_restarted_indexer_resumes_from_its_recorded_position() {
    let w = World::new();
    let s = w.store(1).await;
    for i in 0..5 {
        w.product(&s, &format!("Pickle {i}"), "tangy", "active").await;
    }
    let mut first = w.indexer();
    let read = first.catch_up().await.unwrap();
    assert!(read >= 5);
    let recorded = first.position();
    assert!(recorded > 0);
    drop(first);

    w.product(&s, "Mango Pickle", "sweet", "active").await;
    let mut second = w.indexer();
    let read_again = second.catch_up().await.unwrap();
    assert_eq!(read_again, 1, "only the new event is read, not the whole outbox");
    assert!(second.position() > recorded);
    assert_eq!(w.ids(&s, "mango").len(), 1);
    assert_eq!(w.ids(&s, "pickle").len(), 6);
}

fn first_page() -> PageRequest {
    PageRequest { after: None, limit: Limit::parse(Some(10)).unwrap() }
}

#[tokio::test]
async fn without_a_ready_index_search_answers_from_the_database() {
    let w = World::new();
    let s = w.store(1).await;
    let chai = w.product(&s, "Masala Chai", "spiced", "active").await;

    // No index on this node at all.
    let page = ProductSearch::database_only(w.storage.clone()).search(&s, "chai", None, first_page()).await.unwrap();
    assert_eq!(page.items.iter().map(|p| p.id).collect::<Vec<_>>(), vec![chai.id]);

    // An index that never caught up (empty): the database answers, not "nothing found".
    let search = ProductSearch::new(w.storage.clone(), w.index.clone(), Readiness::new(1));
    let page = search.search(&s, "chai", None, first_page()).await.unwrap();
    assert_eq!(page.items.len(), 1);

    // Once the indexer caught up, the index answers, typos included (the database would not).
    let ready = Readiness::new(1);
    w.indexer_on(w.index.clone(), ready.clone()).catch_up().await.unwrap();
    let search = ProductSearch::new(w.storage.clone(), w.index.clone(), ready);
    let page = search.search(&s, "masla", None, first_page()).await.unwrap();
    assert_eq!(page.items.iter().map(|p| p.id).collect::<Vec<_>>(), vec![chai.id]);
}

#[tokio::test]
async fn search_results_page_by_offset_cursor() {
    let w = World::new();
    let s = w.store(1).await;
    for i in 0..25 {
        w.product(&s, &format!("Tea number {i}"), "", "active").await;
    }
    let ready = Readiness::new(1);
    w.indexer_on(w.index.clone(), ready.clone()).catch_up().await.unwrap();
    for search in [
        ProductSearch::new(w.storage.clone(), w.index.clone(), ready.clone()),
        ProductSearch::database_only(w.storage.clone()),
    ] {
        let mut seen = std::collections::HashSet::new();
        let mut page = first_page();
        loop {
            let got = search.search(&s, "tea", None, page).await.unwrap();
            for p in &got.items {
                assert!(seen.insert(p.id), "no product twice");
            }
            match got.next_cursor {
                Some(c) => page.after = Some(kirana_domain::page::Cursor::parse(&c).unwrap()),
                None => break,
            }
        }
        assert_eq!(seen.len(), 25);
    }
}
