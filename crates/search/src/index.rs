//! The node's product index: one tantivy index holding every store's products, one document
//! per product. Owns the schema and the analyzer, the single writer (behind a mutex: the
//! indexers and reindexing share it), and the reader that moves on at each commit.
//!
//! It must never answer across stores: every search carries its store as a MUST term, built in
//! [`SearchIndex::search`] rather than left to callers.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use kirana_domain::catalog::{Product, ProductStatus};
use kirana_domain::{CategoryId, ProductId, StoreId};
use tantivy::collector::TopDocs;
use tantivy::directory::MmapDirectory;
use tantivy::schema::{Field, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions, Value};
use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer, StopWordFilter, TextAnalyzer,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::error::{Result, SearchError};
use crate::query::{self, SearchQuery};

/// The analyzer's name in the index; changing the analysis means reindexing.
const ANALYZER: &str = "kirana_en";
/// Memory the writer may buffer before it flushes a segment on its own.
const WRITER_MEMORY: usize = 50_000_000;
/// Results past this many are not worth paging to (and bound the work of deep pages).
pub const MAX_RESULTS: usize = 1_000;

/// The schema's fields.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields {
    store_id: Field,
    product_id: Field,
    category_id: Field,
    status: Field,
    pub(crate) title: Field,
    pub(crate) description: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default().set_tokenizer(ANALYZER).set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        store_id: b.add_text_field("store_id", STRING),
        product_id: b.add_text_field("product_id", STRING | STORED),
        category_id: b.add_text_field("category_id", STRING),
        status: b.add_text_field("status", STRING),
        title: b.add_text_field("title", text.clone()),
        description: b.add_text_field("description", text),
    };
    (b.build(), fields)
}

/// English words as shoppers type them: split on non-alphanumerics, accents folded, lowercased,
/// stop words dropped, stemmed ("Running Shoes" and "run shoe" meet).
pub(crate) fn analyzer() -> TextAnalyzer {
    let builder = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter);
    match StopWordFilter::new(Language::English) {
        Some(stop) => builder.filter(stop).filter(Stemmer::new(Language::English)).build(),
        None => builder.filter(Stemmer::new(Language::English)).build(),
    }
}

/// One search result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub product: ProductId,
    pub score: f32,
}

/// Which products a search may return besides the store's own active ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct SearchFilter {
    pub category: Option<CategoryId>,
}

pub struct SearchIndex {
    index: Index,
    fields: Fields,
    /// The only writer: tantivy allows one per index, and batching commits needs one place
    /// that knows what is pending.
    writer: Mutex<IndexWriter>,
    /// Reloaded explicitly after each commit, so a committed document is searchable at once
    /// (and tests need no sleeps).
    reader: IndexReader,
    /// Documents added or deleted since the last commit.
    pending: AtomicUsize,
}

impl SearchIndex {
    /// Opens (or creates) the index in a directory: `<data-dir>/search` on a node.
    pub fn open(dir: &Path) -> Result<SearchIndex> {
        std::fs::create_dir_all(dir).map_err(|e| SearchError::Index(e.into()))?;
        let (schema, fields) = schema();
        let index = Index::open_or_create(MmapDirectory::open(dir)?, schema)?;
        SearchIndex::with(index, fields)
    }

    /// An index in memory (tests, benchmarks).
    pub fn in_memory() -> Result<SearchIndex> {
        let (schema, fields) = schema();
        SearchIndex::with(Index::create_in_ram(schema), fields)
    }

    fn with(index: Index, fields: Fields) -> Result<SearchIndex> {
        index.tokenizers().register(ANALYZER, analyzer());
        let writer = index.writer_with_num_threads(1, WRITER_MEMORY)?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        Ok(SearchIndex { index, fields, writer: Mutex::new(writer), reader, pending: AtomicUsize::new(0) })
    }

    fn writer(&self) -> MutexGuard<'_, IndexWriter> {
        // A panic while holding the lock leaves nothing half-done that matters here: tantivy's
        // own state is consistent between calls, and uncommitted work is replayed from events.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the product's document (delete by id, then add): replays change nothing.
    pub fn upsert(&self, store: StoreId, p: &Product) -> Result<()> {
        let f = self.fields;
        let mut doc = TantivyDocument::default();
        doc.add_text(f.store_id, store.uuid().to_string());
        doc.add_text(f.product_id, p.id.uuid().to_string());
        if let Some(c) = p.category_id {
            doc.add_text(f.category_id, c.uuid().to_string());
        }
        doc.add_text(f.status, p.status.as_str());
        doc.add_text(f.title, &p.title);
        doc.add_text(f.description, &p.description);
        let w = self.writer();
        w.delete_term(Term::from_field_text(f.product_id, &p.id.uuid().to_string()));
        w.add_document(doc)?;
        self.pending.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Removes a product's document (nothing happens if there is none).
    pub fn remove(&self, product: ProductId) -> Result<()> {
        self.writer().delete_term(Term::from_field_text(self.fields.product_id, &product.uuid().to_string()));
        self.pending.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Removes every document of a store (before rebuilding it).
    pub fn remove_store(&self, store: StoreId) -> Result<()> {
        self.writer().delete_term(Term::from_field_text(self.fields.store_id, &store.uuid().to_string()));
        self.pending.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Changes made since the last commit.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Makes every change so far durable and searchable. Blocking (a commit writes segments
    /// and syncs): async callers go through `spawn_blocking`.
    pub fn commit(&self) -> Result<()> {
        let mut w = self.writer();
        let before = self.pending.load(Ordering::Relaxed);
        w.commit()?;
        self.pending.fetch_sub(before.min(self.pending.load(Ordering::Relaxed)), Ordering::Relaxed);
        drop(w);
        self.reader.reload()?;
        Ok(())
    }

    /// Active products of `store` matching `q`, best first: `limit` of them after `offset`.
    pub fn search(
        &self,
        store: StoreId,
        q: &SearchQuery,
        filter: SearchFilter,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<Hit>> {
        if offset >= MAX_RESULTS || limit == 0 {
            return Ok(vec![]);
        }
        let limit = limit.min(MAX_RESULTS - offset);
        let f = self.fields;
        let mut analyzer = self.index.tokenizers().get(ANALYZER).unwrap_or_else(analyzer);
        let words = query::analyse(&mut analyzer, q);
        if words.is_empty() {
            // Only stop words or punctuation: nothing can match.
            return Ok(vec![]);
        }
        let mut filters = vec![
            Term::from_field_text(f.store_id, &store.uuid().to_string()),
            Term::from_field_text(f.status, ProductStatus::Active.as_str()),
        ];
        if let Some(c) = filter.category {
            filters.push(Term::from_field_text(f.category_id, &c.uuid().to_string()));
        }
        let query = query::build(&f, &words, filters);
        let searcher = self.reader.searcher();
        let top = searcher.search(&*query, &TopDocs::with_limit(limit).and_offset(offset).order_by_score())?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let doc: TantivyDocument = searcher.doc(addr)?;
            let id =
                doc.get_first(f.product_id).and_then(|v| v.as_str()).and_then(ProductId::parse).ok_or_else(|| {
                    SearchError::Index(tantivy::TantivyError::InternalError("a document without a product id".into()))
                })?;
            hits.push(Hit { product: id, score });
        }
        Ok(hits)
    }

    /// Documents searchable now (all stores).
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Segments searched now (each commit adds one until background merges join them).
    pub fn segments(&self) -> usize {
        self.reader.searcher().segment_readers().len()
    }

    /// Reloads the reader without a commit: picks up segments that background merges finished.
    pub fn refresh(&self) -> Result<()> {
        Ok(self.reader.reload()?)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
