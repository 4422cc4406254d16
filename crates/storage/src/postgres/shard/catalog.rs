//! Categories, products and variants: the port of `sqlite::shard::catalog`, with the same
//! validation, errors and events.
//!
//! What SQLite's single writer guarantees, this gets from PostgreSQL:
//! - the per-store limits: creates serialise on a per-store advisory lock before counting;
//! - unique names and SKUs: checked first (for SQLite's exact errors), and backed by the unique
//!   indexes `categories_by_name` and `variants_by_sku`, whose violation by a concurrent writer
//!   maps to the very same error;
//! - read-then-write updates: the row is read `FOR UPDATE`;
//! - a product never points at a deleted category: the category is read `FOR KEY SHARE`, so a
//!   concurrent delete waits (and then uncategorises the product) or has already won (and the
//!   category is unknown).

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use kirana_domain::catalog::{
    Category, CategoryChange, NewVariant, Product, ProductChange, ProductStatus, Variant, check_variants, variant_title,
};
use kirana_domain::event::kinds;
use kirana_domain::page::{Page, PageRequest};
use kirana_domain::{Amount, CategoryId, Invalid, ProductId, StoreId, Timestamp, VariantId};
use serde_json::json;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{emit, exec, exec_raw, lock, one, opt, pg, rows, unique_violation};
use crate::Result;
use crate::error::{ConflictKind, StorageError};
use crate::shard::ProductFilter;

/// Bounds on what one store may hold, so the largest store stays servable (as on SQLite).
pub const MAX_CATEGORIES: i64 = 1_000;
pub const MAX_PRODUCTS: i64 = 100_000;

// ---------------------------------------------------------------------------------------------
// Categories

const CATEGORY_SELECT: &str = "SELECT category_id, name, description, created_at, updated_at FROM categories";

fn category_row(r: &Row) -> Category {
    Category {
        id: CategoryId::from_uuid(r.get(0)),
        name: r.get(1),
        description: r.get(2),
        created_at: Timestamp::from_millis(r.get(3)),
        updated_at: Timestamp::from_millis(r.get(4)),
    }
}

fn name_taken_error() -> StorageError {
    StorageError::conflict(ConflictKind::NameTaken, Some("name"), "a category with this name exists")
}

/// A write to `categories`; a concurrent writer that took the name first reads as taken.
fn category_write_error(e: tokio_postgres::Error) -> StorageError {
    match unique_violation(&e) {
        Some("categories_by_name") => name_taken_error(),
        _ => pg(e),
    }
}

async fn name_taken<C: GenericClient>(c: &C, store: StoreId, name: &str, except: Option<CategoryId>) -> Result<bool> {
    let holder = opt(
        c,
        "SELECT category_id FROM categories WHERE store_id = $1 AND name_key = $2",
        &[&store.uuid(), &name.to_lowercase()],
    )
    .await?;
    Ok(holder.is_some_and(|r| Some(CategoryId::from_uuid(r.get(0))) != except))
}

pub async fn create_category<C: GenericClient>(
    c: &C,
    store: StoreId,
    change: CategoryChange,
    now: Timestamp,
) -> Result<Category> {
    let name = change.name.ok_or_else(|| StorageError::invalid("name", "is required"))?;
    // Rival creates would each count below the limit; one at a time per store counts right.
    lock(c, &format!("categories:{store}")).await?;
    let count: i64 = one(c, "SELECT count(*) FROM categories WHERE store_id = $1", &[&store.uuid()]).await?.get(0);
    if count >= MAX_CATEGORIES {
        return Err(StorageError::conflict(
            ConflictKind::TooMany,
            None,
            format!("a store may have at most {MAX_CATEGORIES} categories"),
        ));
    }
    if name_taken(c, store, &name, None).await? {
        return Err(name_taken_error());
    }
    let id = CategoryId::generate();
    exec_raw(
        c,
        "INSERT INTO categories (store_id, category_id, name, name_key, description, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
        &[
            &store.uuid(),
            &id.uuid(),
            &name,
            &name.to_lowercase(),
            &change.description.unwrap_or_default(),
            &now.millis(),
        ],
    )
    .await
    .map_err(category_write_error)?;
    let cat = category(c, store, id).await?;
    emit(c, store, kinds::CATEGORY_CREATED, now, json!(cat)).await?;
    Ok(cat)
}

/// Categories in the order they were made (menus read top to bottom).
pub async fn categories<C: GenericClient>(c: &C, store: StoreId, page: PageRequest) -> Result<Page<Category>> {
    let after = page.after.map(|p| p.uuid());
    let rows = rows(
        c,
        &format!(
            "{CATEGORY_SELECT} WHERE store_id = $1 AND ($2::uuid IS NULL OR category_id > $2)
             ORDER BY category_id LIMIT $3"
        ),
        &[&store.uuid(), &after, &page.limit.probe()],
    )
    .await?;
    Ok(Page::from_probe(rows.iter().map(category_row).collect(), page.limit, |c| c.id.uuid()))
}

pub async fn category<C: GenericClient>(c: &C, store: StoreId, id: CategoryId) -> Result<Category> {
    opt(c, &format!("{CATEGORY_SELECT} WHERE store_id = $1 AND category_id = $2"), &[&store.uuid(), &id.uuid()])
        .await?
        .map(|r| category_row(&r))
        .ok_or(StorageError::NotFound)
}

pub async fn update_category<C: GenericClient>(
    c: &C,
    store: StoreId,
    id: CategoryId,
    change: CategoryChange,
    now: Timestamp,
) -> Result<Category> {
    let current = opt(
        c,
        &format!("{CATEGORY_SELECT} WHERE store_id = $1 AND category_id = $2 FOR UPDATE"),
        &[&store.uuid(), &id.uuid()],
    )
    .await?
    .map(|r| category_row(&r))
    .ok_or(StorageError::NotFound)?;
    let name = change.name.unwrap_or(current.name);
    if name_taken(c, store, &name, Some(id)).await? {
        return Err(name_taken_error());
    }
    let description = change.description.unwrap_or(current.description);
    exec_raw(
        c,
        "UPDATE categories SET name = $3, name_key = $4, description = $5, updated_at = $6
         WHERE store_id = $1 AND category_id = $2",
        &[&store.uuid(), &id.uuid(), &name, &name.to_lowercase(), &description, &now.millis()],
    )
    .await
    .map_err(category_write_error)?;
    let cat = category(c, store, id).await?;
    emit(c, store, kinds::CATEGORY_UPDATED, now, json!(cat)).await?;
    Ok(cat)
}

/// Deleting a category leaves its products uncategorised, never deletes them.
pub async fn delete_category<C: GenericClient>(c: &C, store: StoreId, id: CategoryId, now: Timestamp) -> Result<()> {
    let n = exec(c, "DELETE FROM categories WHERE store_id = $1 AND category_id = $2", &[&store.uuid(), &id.uuid()])
        .await?;
    if n == 0 {
        return Err(StorageError::NotFound);
    }
    exec(
        c,
        "UPDATE products SET category_id = NULL, updated_at = $3 WHERE store_id = $1 AND category_id = $2",
        &[&store.uuid(), &id.uuid(), &now.millis()],
    )
    .await?;
    emit(c, store, kinds::CATEGORY_DELETED, now, json!({ "id": id })).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Products

const PRODUCT_SELECT: &str =
    "SELECT product_id, title, description, status, category_id, images, options, created_at, updated_at FROM products";

fn product_row(r: &Row) -> Result<Product> {
    Ok(Product {
        id: ProductId::from_uuid(r.get(0)),
        title: r.get(1),
        description: r.get(2),
        status: ProductStatus::parse(r.get::<_, &str>(3)).unwrap_or(ProductStatus::Draft),
        category_id: r.get::<_, Option<Uuid>>(4).map(CategoryId::from_uuid),
        images: serde_json::from_str(r.get::<_, &str>(5))?,
        options: serde_json::from_str(r.get::<_, &str>(6))?,
        variants: vec![],
        created_at: Timestamp::from_millis(r.get(7)),
        updated_at: Timestamp::from_millis(r.get(8)),
    })
}

const VARIANT_SELECT: &str =
    "SELECT product_id, variant_id, options, sku, price, compare_at_price, stock FROM variants";

fn variant_row(r: &Row) -> Result<(Uuid, Variant)> {
    let options: Vec<String> = serde_json::from_str(r.get::<_, &str>(2))?;
    Ok((
        r.get(0),
        Variant {
            id: VariantId::from_uuid(r.get(1)),
            title: variant_title(&options),
            options,
            sku: r.get(3),
            price: Amount::from_stored(r.get(4)),
            compare_at_price: r.get::<_, Option<i64>>(5).map(Amount::from_stored),
            stock: r.get(6),
        },
    ))
}

/// Attaches variants to products with one query for the whole page (never one per product).
async fn with_variants<C: GenericClient>(c: &C, store: StoreId, rows: Vec<Row>) -> Result<Vec<Product>> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let mut products = Vec::with_capacity(rows.len());
    let mut index = HashMap::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let p = product_row(r)?;
        index.insert(p.id.uuid(), i);
        products.push(p);
    }
    let ids: Vec<Uuid> = products.iter().map(|p| p.id.uuid()).collect();
    let variants = super::rows(
        c,
        &format!("{VARIANT_SELECT} WHERE store_id = $1 AND product_id = ANY($2) ORDER BY product_id, position"),
        &[&store.uuid(), &ids],
    )
    .await?;
    for r in &variants {
        let (pid, v) = variant_row(r)?;
        if let Some(&i) = index.get(&pid) {
            products[i].variants.push(v);
        }
    }
    Ok(products)
}

pub async fn product<C: GenericClient>(c: &C, store: StoreId, id: ProductId) -> Result<Product> {
    let row =
        opt(c, &format!("{PRODUCT_SELECT} WHERE store_id = $1 AND product_id = $2"), &[&store.uuid(), &id.uuid()])
            .await?
            .ok_or(StorageError::NotFound)?;
    Ok(with_variants(c, store, vec![row]).await?.remove(0))
}

/// The store's products among `ids` (missing ones left out), in no particular order: one query
/// for the products and one for their variants (at most 100 ids).
pub async fn products_by_ids<C: GenericClient>(c: &C, store: StoreId, ids: &[ProductId]) -> Result<Vec<Product>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let ids: Vec<uuid::Uuid> = ids.iter().take(100).map(|id| id.uuid()).collect();
    let found =
        rows(c, &format!("{PRODUCT_SELECT} WHERE store_id = $1 AND product_id = ANY($2)"), &[&store.uuid(), &ids])
            .await?;
    with_variants(c, store, found).await
}

/// Products newest first, filtered. Every filter combination is served by an index whose
/// leading columns are (store_id, status[, category_id]) or (store_id, category_id).
///
/// Title words match with `ILIKE`, case-insensitively in any script; SQLite's `LIKE` folds only
/// ASCII (the filter promises case-insensitive matching; the search capability brings more).
pub async fn products<C: GenericClient>(
    c: &C,
    store: StoreId,
    f: &ProductFilter,
    page: PageRequest,
) -> Result<Page<Product>> {
    let store_id = store.uuid();
    let status = f.status.map(ProductStatus::as_str);
    let category = f.category.map(|c| c.uuid());
    let words: Vec<String> = f
        .query
        .as_deref()
        .map(|q| q.split_whitespace().take(8).map(|w| format!("%{}%", escape_like(w))).collect())
        .unwrap_or_default();
    // PostgreSQL text cannot hold NUL; no title has one, so such a word matches nothing.
    if words.iter().any(|w| w.contains('\0')) {
        return Ok(Page { items: Vec::new(), next_cursor: None });
    }
    let after = page.after.map(|a| a.uuid());
    let probe = page.limit.probe();

    let mut sql = format!("{PRODUCT_SELECT} WHERE store_id = $1");
    let mut args: Vec<&(dyn ToSql + Sync)> = vec![&store_id];
    if let Some(s) = &status {
        args.push(s);
        sql.push_str(&format!(" AND status = ${}", args.len()));
    }
    if let Some(cat) = &category {
        args.push(cat);
        sql.push_str(&format!(" AND category_id = ${}", args.len()));
    }
    for word in &words {
        args.push(word);
        sql.push_str(&format!(" AND title ILIKE ${} ESCAPE '\\'", args.len()));
    }
    if let Some(after) = &after {
        args.push(after);
        sql.push_str(&format!(" AND product_id < ${}", args.len()));
    }
    args.push(&probe);
    sql.push_str(&format!(" ORDER BY product_id DESC LIMIT ${}", args.len()));
    let rows = rows(c, &sql, &args).await?;
    let products = with_variants(c, store, rows).await?;
    Ok(Page::from_probe(products, page.limit, |p| p.id.uuid()))
}

fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

/// The category must be this store's; it stays so until this transaction ends (`FOR KEY SHARE`
/// makes a concurrent delete wait).
async fn check_category<C: GenericClient>(c: &C, store: StoreId, id: Option<CategoryId>) -> Result<()> {
    if let Some(id) = id {
        let held = opt(
            c,
            "SELECT 1 FROM categories WHERE store_id = $1 AND category_id = $2 FOR KEY SHARE",
            &[&store.uuid(), &id.uuid()],
        )
        .await?;
        if held.is_none() {
            return Err(StorageError::invalid("category_id", "is not a category of this store"));
        }
    }
    Ok(())
}

fn sku_taken(i: usize, sku: &str) -> StorageError {
    StorageError::Invalid(Invalid::field(
        format!("variants[{i}].sku"),
        format!("'{sku}' is already used by another product"),
    ))
}

/// SKUs are unique within a store: a merchant's stock system keys on them.
async fn check_skus<C: GenericClient>(
    c: &C,
    store: StoreId,
    product: ProductId,
    variants: &[NewVariant],
) -> Result<()> {
    for (i, v) in variants.iter().enumerate() {
        if let Some(sku) = &v.sku {
            let holder =
                opt(c, "SELECT product_id FROM variants WHERE store_id = $1 AND sku = $2", &[&store.uuid(), sku])
                    .await?;
            if holder.is_some_and(|r| r.get::<_, Uuid>(0) != product.uuid()) {
                return Err(sku_taken(i, sku));
            }
        }
    }
    Ok(())
}

/// A write of variant `i`: a concurrent writer that took its SKU after `check_skus` reads as
/// the same error `check_skus` gives.
fn variant_write_error(i: usize, v: &NewVariant) -> impl FnOnce(tokio_postgres::Error) -> StorageError + '_ {
    move |e| match (unique_violation(&e), &v.sku) {
        (Some("variants_by_sku"), Some(sku)) => sku_taken(i, sku),
        _ => pg(e),
    }
}

async fn insert_variant<C: GenericClient>(
    c: &C,
    store: StoreId,
    product: ProductId,
    id: VariantId,
    position: usize,
    v: &NewVariant,
) -> Result<()> {
    exec_raw(
        c,
        "INSERT INTO variants (store_id, variant_id, product_id, position, options, sku, price, compare_at_price, stock)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &store.uuid(),
            &id.uuid(),
            &product.uuid(),
            &(position as i64),
            &serde_json::to_string(&v.options)?,
            &v.sku,
            &v.price.minor(),
            &v.compare_at_price.map(Amount::minor),
            &v.stock,
        ],
    )
    .await
    .map_err(variant_write_error(position, v))?;
    Ok(())
}

pub async fn create_product<C: GenericClient>(
    c: &C,
    store: StoreId,
    change: ProductChange,
    now: Timestamp,
) -> Result<Product> {
    lock(c, &format!("products:{store}")).await?;
    let count: i64 = one(c, "SELECT count(*) FROM products WHERE store_id = $1", &[&store.uuid()]).await?.get(0);
    if count >= MAX_PRODUCTS {
        return Err(StorageError::conflict(
            ConflictKind::TooMany,
            None,
            format!("a store may have at most {MAX_PRODUCTS} products"),
        ));
    }
    let category = change.category_id.flatten();
    check_category(c, store, category).await?;
    let id = ProductId::generate();
    let variants = change.variants.unwrap_or_default();
    check_skus(c, store, id, &variants).await?;
    let title = change.title.unwrap_or_default();
    exec(
        c,
        "INSERT INTO products (store_id, product_id, title, description, status, category_id, images, options, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        &[
            &store.uuid(),
            &id.uuid(),
            &title,
            &change.description.unwrap_or_default(),
            &change.status.unwrap_or(ProductStatus::Active).as_str(),
            &category.map(|c| c.uuid()),
            &serde_json::to_string(&change.images.unwrap_or_default())?,
            &serde_json::to_string(&change.options.unwrap_or_default())?,
            &now.millis(),
        ],
    )
    .await?;
    for (i, v) in variants.iter().enumerate() {
        insert_variant(c, store, id, VariantId::generate(), i, v).await?;
    }
    let p = product(c, store, id).await?;
    emit(c, store, kinds::PRODUCT_CREATED, now, json!(p)).await?;
    Ok(p)
}

pub async fn update_product<C: GenericClient>(
    c: &C,
    store: StoreId,
    id: ProductId,
    change: ProductChange,
    now: Timestamp,
) -> Result<Product> {
    // Rival updates of one product apply one after the other, each to the other's result.
    opt(c, "SELECT 1 FROM products WHERE store_id = $1 AND product_id = $2 FOR UPDATE", &[&store.uuid(), &id.uuid()])
        .await?
        .ok_or(StorageError::NotFound)?;
    let current = product(c, store, id).await?;
    if let Some(cat) = change.category_id {
        check_category(c, store, cat).await?;
    }
    let options = change.options.clone().unwrap_or_else(|| current.options.clone());
    if let Some(variants) = &change.variants {
        for (i, v) in variants.iter().enumerate() {
            if let Some(vid) = v.id
                && !current.variants.iter().any(|cv| cv.id == vid)
            {
                return Err(StorageError::Invalid(Invalid::field(
                    format!("variants[{i}].id"),
                    "is not a variant of this product",
                )));
            }
        }
        check_variants(&options, variants)?;
        check_skus(c, store, id, variants).await?;
        // Variants not listed go; listed ones are rewritten in the order given. SKUs are freed
        // first so two variants may swap SKUs in one change.
        exec(c, "UPDATE variants SET sku = NULL WHERE store_id = $1 AND product_id = $2", &[&store.uuid(), &id.uuid()])
            .await?;
        for old in &current.variants {
            if !variants.iter().any(|v| v.id == Some(old.id)) {
                exec(
                    c,
                    "DELETE FROM variants WHERE store_id = $1 AND variant_id = $2",
                    &[&store.uuid(), &old.id.uuid()],
                )
                .await?;
            }
        }
        for (i, v) in variants.iter().enumerate() {
            match v.id {
                Some(vid) => {
                    exec_raw(
                        c,
                        "UPDATE variants SET position = $3, options = $4, sku = $5, price = $6, compare_at_price = $7, stock = $8
                         WHERE store_id = $1 AND variant_id = $2",
                        &[
                            &store.uuid(),
                            &vid.uuid(),
                            &(i as i64),
                            &serde_json::to_string(&v.options)?,
                            &v.sku,
                            &v.price.minor(),
                            &v.compare_at_price.map(Amount::minor),
                            &v.stock,
                        ],
                    )
                    .await
                    .map_err(variant_write_error(i, v))?;
                }
                None => insert_variant(c, store, id, VariantId::generate(), i, v).await?,
            }
        }
    }
    if let Some(patch) = &change.single_variant {
        let [only] = current.variants.as_slice() else {
            return Err(StorageError::invalid(
                "price",
                &format!("this product has {} variants; change them through `variants`", current.variants.len()),
            ));
        };
        let merged = NewVariant {
            id: Some(only.id),
            options: only.options.clone(),
            sku: patch.sku.clone().unwrap_or_else(|| only.sku.clone()),
            price: patch.price.unwrap_or(only.price),
            compare_at_price: patch.compare_at_price.unwrap_or(only.compare_at_price),
            stock: patch.stock.unwrap_or(only.stock),
        };
        let sku_taken = || StorageError::invalid("sku", "is already used by another product");
        check_skus(c, store, id, std::slice::from_ref(&merged)).await.map_err(|_| sku_taken())?;
        // Stock is written only when the patch sets it: the variant row is not locked here, and
        // checkouts decrement it meanwhile (guarded, without the product's lock). Writing back
        // the stock read above would undo their decrements (seen in the fleet test: units sold
        // came back, the way to an oversell).
        exec_raw(
            c,
            "UPDATE variants SET sku = $3, price = $4, compare_at_price = $5,
               stock = CASE WHEN $7 THEN $6 ELSE stock END
             WHERE store_id = $1 AND variant_id = $2",
            &[
                &store.uuid(),
                &only.id.uuid(),
                &merged.sku,
                &merged.price.minor(),
                &merged.compare_at_price.map(Amount::minor),
                &merged.stock,
                &patch.stock.is_some(),
            ],
        )
        .await
        .map_err(|e| match unique_violation(&e) {
            Some("variants_by_sku") => sku_taken(),
            _ => pg(e),
        })?;
    }
    let title = change.title.unwrap_or(current.title);
    exec(
        c,
        "UPDATE products SET title = $3, description = $4, status = $5, category_id = $6, images = $7, options = $8, updated_at = $9
         WHERE store_id = $1 AND product_id = $2",
        &[
            &store.uuid(),
            &id.uuid(),
            &title,
            &change.description.unwrap_or(current.description),
            &change.status.unwrap_or(current.status).as_str(),
            &change.category_id.unwrap_or(current.category_id).map(|c| c.uuid()),
            &serde_json::to_string(&change.images.unwrap_or(current.images))?,
            &serde_json::to_string(&options)?,
            &now.millis(),
        ],
    )
    .await?;
    let p = product(c, store, id).await?;
    emit(c, store, kinds::PRODUCT_UPDATED, now, json!(p)).await?;
    Ok(p)
}

/// Deletes a product and its variants. Orders keep their own copy of what was sold; carts
/// holding a deleted variant simply stop showing it.
pub async fn delete_product<C: GenericClient>(c: &C, store: StoreId, id: ProductId, now: Timestamp) -> Result<()> {
    let n =
        exec(c, "DELETE FROM products WHERE store_id = $1 AND product_id = $2", &[&store.uuid(), &id.uuid()]).await?;
    if n == 0 {
        return Err(StorageError::NotFound);
    }
    exec(c, "DELETE FROM variants WHERE store_id = $1 AND product_id = $2", &[&store.uuid(), &id.uuid()]).await?;
    emit(c, store, kinds::PRODUCT_DELETED, now, json!({ "id": id })).await?;
    Ok(())
}
