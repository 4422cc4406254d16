//! Categories, products and variants.

use std::collections::HashMap;

use kirana_domain::catalog::{
    Category, CategoryChange, NewVariant, Product, ProductChange, ProductStatus, Variant, check_variants, variant_title,
};
use kirana_domain::event::kinds;
use kirana_domain::page::{Page, PageRequest};
use kirana_domain::{Amount, CategoryId, Invalid, ProductId, StoreId, Timestamp, VariantId};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use serde_json::json;
use uuid::Uuid;

use super::{emit, placeholders};
use crate::Result;
use crate::error::{ConflictKind, StorageError};
use crate::shard::ProductFilter;

/// Bounds on what one store may hold, so the largest store stays servable.
pub(super) const MAX_CATEGORIES: i64 = 1_000;
pub(super) const MAX_PRODUCTS: i64 = 100_000;

// ---------------------------------------------------------------------------------------------
// Categories

const CATEGORY_SELECT: &str = "SELECT category_id, name, description, created_at, updated_at FROM categories";

fn category_row(r: &Row<'_>) -> rusqlite::Result<Category> {
    Ok(Category {
        id: CategoryId::from_uuid(r.get(0)?),
        name: r.get(1)?,
        description: r.get(2)?,
        created_at: Timestamp::from_millis(r.get(3)?),
        updated_at: Timestamp::from_millis(r.get(4)?),
    })
}

fn name_taken(c: &Connection, store: StoreId, name: &str, except: Option<CategoryId>) -> Result<bool> {
    let holder: Option<Uuid> = c
        .prepare_cached("SELECT category_id FROM categories WHERE store_id = ?1 AND name_key = ?2")?
        .query_row(params![store.uuid(), name.to_lowercase()], |r| r.get(0))
        .optional()?;
    Ok(holder.is_some_and(|h| Some(CategoryId::from_uuid(h)) != except))
}

pub(super) fn create_category(
    c: &Connection,
    store: StoreId,
    change: CategoryChange,
    now: Timestamp,
) -> Result<Category> {
    let name = change.name.ok_or_else(|| StorageError::invalid("name", "is required"))?;
    let count: i64 = c
        .prepare_cached("SELECT count(*) FROM categories WHERE store_id = ?1")?
        .query_row([store.uuid()], |r| r.get(0))?;
    if count >= MAX_CATEGORIES {
        return Err(StorageError::conflict(
            ConflictKind::TooMany,
            None,
            format!("a store may have at most {MAX_CATEGORIES} categories"),
        ));
    }
    if name_taken(c, store, &name, None)? {
        return Err(StorageError::conflict(ConflictKind::NameTaken, Some("name"), "a category with this name exists"));
    }
    let id = CategoryId::generate();
    c.prepare_cached(
        "INSERT INTO categories (store_id, category_id, name, name_key, description, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
    )?
    .execute(params![
        store.uuid(),
        id.uuid(),
        name,
        name.to_lowercase(),
        change.description.unwrap_or_default(),
        now.millis()
    ])?;
    let cat = category(c, store, id)?;
    emit(c, store, kinds::CATEGORY_CREATED, now, json!(cat))?;
    Ok(cat)
}

/// Categories in the order they were made (menus read top to bottom).
pub(super) fn categories(c: &Connection, store: StoreId, page: PageRequest) -> Result<Page<Category>> {
    let after = page.after.map(|p| p.uuid());
    let mut st = c.prepare_cached(&format!(
        "{CATEGORY_SELECT} WHERE store_id = ?1 AND (?2 IS NULL OR category_id > ?2) ORDER BY category_id LIMIT ?3"
    ))?;
    let rows = st
        .query_map(params![store.uuid(), after, page.limit.probe()], category_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Page::from_probe(rows, page.limit, |c| c.id.uuid()))
}

pub(super) fn category(c: &Connection, store: StoreId, id: CategoryId) -> Result<Category> {
    c.prepare_cached(&format!("{CATEGORY_SELECT} WHERE store_id = ?1 AND category_id = ?2"))?
        .query_row(params![store.uuid(), id.uuid()], category_row)
        .optional()?
        .ok_or(StorageError::NotFound)
}

pub(super) fn update_category(
    c: &Connection,
    store: StoreId,
    id: CategoryId,
    change: CategoryChange,
    now: Timestamp,
) -> Result<Category> {
    let current = category(c, store, id)?;
    let name = change.name.unwrap_or(current.name);
    if name_taken(c, store, &name, Some(id))? {
        return Err(StorageError::conflict(ConflictKind::NameTaken, Some("name"), "a category with this name exists"));
    }
    let description = change.description.unwrap_or(current.description);
    c.prepare_cached(
        "UPDATE categories SET name = ?3, name_key = ?4, description = ?5, updated_at = ?6 WHERE store_id = ?1 AND category_id = ?2",
    )?
    .execute(params![store.uuid(), id.uuid(), name, name.to_lowercase(), description, now.millis()])?;
    let cat = category(c, store, id)?;
    emit(c, store, kinds::CATEGORY_UPDATED, now, json!(cat))?;
    Ok(cat)
}

/// Deleting a category leaves its products uncategorised, never deletes them.
pub(super) fn delete_category(c: &Connection, store: StoreId, id: CategoryId, now: Timestamp) -> Result<()> {
    let n = c
        .prepare_cached("DELETE FROM categories WHERE store_id = ?1 AND category_id = ?2")?
        .execute(params![store.uuid(), id.uuid()])?;
    if n == 0 {
        return Err(StorageError::NotFound);
    }
    c.prepare_cached(
        "UPDATE products SET category_id = NULL, updated_at = ?3 WHERE store_id = ?1 AND category_id = ?2",
    )?
    .execute(params![store.uuid(), id.uuid(), now.millis()])?;
    emit(c, store, kinds::CATEGORY_DELETED, now, json!({ "id": id }))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Products

const PRODUCT_SELECT: &str =
    "SELECT product_id, title, description, status, category_id, images, options, created_at, updated_at FROM products";

struct ProductRow {
    product: Product,
}

fn product_row(r: &Row<'_>) -> rusqlite::Result<(ProductRow, String, String)> {
    Ok((
        ProductRow {
            product: Product {
                id: ProductId::from_uuid(r.get(0)?),
                title: r.get(1)?,
                description: r.get(2)?,
                status: ProductStatus::parse(&r.get::<_, String>(3)?).unwrap_or(ProductStatus::Draft),
                category_id: r.get::<_, Option<Uuid>>(4)?.map(CategoryId::from_uuid),
                images: vec![],
                options: vec![],
                variants: vec![],
                created_at: Timestamp::from_millis(r.get(7)?),
                updated_at: Timestamp::from_millis(r.get(8)?),
            },
        },
        r.get(5)?,
        r.get(6)?,
    ))
}

const VARIANT_SELECT: &str =
    "SELECT product_id, variant_id, options, sku, price, compare_at_price, stock FROM variants";

fn variant_row(r: &Row<'_>) -> rusqlite::Result<(Uuid, Variant, String)> {
    Ok((
        r.get(0)?,
        Variant {
            id: VariantId::from_uuid(r.get(1)?),
            title: String::new(),
            options: vec![],
            sku: r.get(3)?,
            price: Amount::from_stored(r.get(4)?),
            compare_at_price: r.get::<_, Option<i64>>(5)?.map(Amount::from_stored),
            stock: r.get(6)?,
        },
        r.get(2)?,
    ))
}

/// Attaches variants to products with one query for the whole page (never one per product).
fn with_variants(c: &Connection, store: StoreId, rows: Vec<(ProductRow, String, String)>) -> Result<Vec<Product>> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let mut products = Vec::with_capacity(rows.len());
    let mut index = HashMap::with_capacity(rows.len());
    for (i, (row, images, options)) in rows.into_iter().enumerate() {
        let mut p = row.product;
        p.images = serde_json::from_str(&images)?;
        p.options = serde_json::from_str(&options)?;
        index.insert(p.id.uuid(), i);
        products.push(p);
    }
    let sql = format!(
        "{VARIANT_SELECT} WHERE store_id = ?1 AND product_id IN ({}) ORDER BY product_id, position",
        placeholders(2, products.len())
    );
    let mut st = c.prepare_cached(&sql)?;
    let mut args: Vec<Value> = vec![Value::Blob(store.uuid().as_bytes().to_vec())];
    args.extend(products.iter().map(|p| Value::Blob(p.id.uuid().as_bytes().to_vec())));
    let rows = st.query_map(params_from_iter(args), variant_row)?;
    for row in rows {
        let (pid, mut v, options) = row?;
        v.options = serde_json::from_str(&options)?;
        v.title = variant_title(&v.options);
        if let Some(&i) = index.get(&pid) {
            products[i].variants.push(v);
        }
    }
    Ok(products)
}

pub(super) fn product(c: &Connection, store: StoreId, id: ProductId) -> Result<Product> {
    let row = c
        .prepare_cached(&format!("{PRODUCT_SELECT} WHERE store_id = ?1 AND product_id = ?2"))?
        .query_row(params![store.uuid(), id.uuid()], product_row)
        .optional()?
        .ok_or(StorageError::NotFound)?;
    Ok(with_variants(c, store, vec![row])?.remove(0))
}

/// The store's products among `ids` (missing ones left out), in no particular order: one query
/// for the products and one for their variants, however many ids (at most 100).
pub(super) fn products_by_ids(c: &Connection, store: StoreId, ids: &[ProductId]) -> Result<Vec<Product>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let ids = &ids[..ids.len().min(100)];
    let sql = format!("{PRODUCT_SELECT} WHERE store_id = ?1 AND product_id IN ({})", placeholders(2, ids.len()));
    let mut args: Vec<Value> = vec![Value::Blob(store.uuid().as_bytes().to_vec())];
    args.extend(ids.iter().map(|id| Value::Blob(id.uuid().as_bytes().to_vec())));
    let rows = c
        .prepare_cached(&sql)?
        .query_map(params_from_iter(args), product_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    with_variants(c, store, rows)
}

/// Products newest first, filtered. Every filter combination is served by an index whose
/// leading columns are (store_id, status[, category_id]) or (store_id, category_id).
pub(super) fn products(c: &Connection, store: StoreId, f: &ProductFilter, page: PageRequest) -> Result<Page<Product>> {
    let mut sql = format!("{PRODUCT_SELECT} WHERE store_id = ?1");
    let mut args: Vec<Value> = vec![Value::Blob(store.uuid().as_bytes().to_vec())];
    if let Some(s) = f.status {
        args.push(Value::Text(s.as_str().into()));
        sql.push_str(&format!(" AND status = ?{}", args.len()));
    }
    if let Some(cat) = f.category {
        args.push(Value::Blob(cat.uuid().as_bytes().to_vec()));
        sql.push_str(&format!(" AND category_id = ?{}", args.len()));
    }
    if let Some(q) = &f.query {
        for word in q.split_whitespace().take(8) {
            // SQLite's LIKE ignores ASCII case; the search capability brings real matching.
            args.push(Value::Text(format!("%{}%", escape_like(word))));
            sql.push_str(&format!(" AND title LIKE ?{} ESCAPE '\\'", args.len()));
        }
    }
    if let Some(after) = page.after {
        args.push(Value::Blob(after.uuid().as_bytes().to_vec()));
        sql.push_str(&format!(" AND product_id < ?{}", args.len()));
    }
    args.push(Value::Integer(page.limit.probe()));
    sql.push_str(&format!(" ORDER BY product_id DESC LIMIT ?{}", args.len()));
    let rows = c
        .prepare_cached(&sql)?
        .query_map(params_from_iter(args), product_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let products = with_variants(c, store, rows)?;
    Ok(Page::from_probe(products, page.limit, |p| p.id.uuid()))
}

fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

fn check_category(c: &Connection, store: StoreId, id: Option<CategoryId>) -> Result<()> {
    if let Some(id) = id {
        let exists: bool = c
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM categories WHERE store_id = ?1 AND category_id = ?2)")?
            .query_row(params![store.uuid(), id.uuid()], |r| r.get(0))?;
        if !exists {
            return Err(StorageError::invalid("category_id", "is not a category of this store"));
        }
    }
    Ok(())
}

/// SKUs are unique within a store: a merchant's stock system keys on them.
fn check_skus(c: &Connection, store: StoreId, product: ProductId, variants: &[NewVariant]) -> Result<()> {
    for (i, v) in variants.iter().enumerate() {
        if let Some(sku) = &v.sku {
            let holder: Option<Uuid> = c
                .prepare_cached("SELECT product_id FROM variants WHERE store_id = ?1 AND sku = ?2")?
                .query_row(params![store.uuid(), sku], |r| r.get(0))
                .optional()?;
            if holder.is_some_and(|h| h != product.uuid()) {
                return Err(StorageError::Invalid(Invalid::field(
                    format!("variants[{i}].sku"),
                    format!("'{sku}' is already used by another product"),
                )));
            }
        }
    }
    Ok(())
}

fn insert_variant(
    c: &Connection,
    store: StoreId,
    product: ProductId,
    id: VariantId,
    position: usize,
    v: &NewVariant,
) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO variants (store_id, variant_id, product_id, position, options, sku, price, compare_at_price, stock)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        store.uuid(),
        id.uuid(),
        product.uuid(),
        position as i64,
        serde_json::to_string(&v.options)?,
        v.sku,
        v.price.minor(),
        v.compare_at_price.map(Amount::minor),
        v.stock
    ])?;
    Ok(())
}

pub(super) fn create_product(c: &Connection, store: StoreId, change: ProductChange, now: Timestamp) -> Result<Product> {
    let count: i64 = c
        .prepare_cached("SELECT count(*) FROM products WHERE store_id = ?1")?
        .query_row([store.uuid()], |r| r.get(0))?;
    if count >= MAX_PRODUCTS {
        return Err(StorageError::conflict(
            ConflictKind::TooMany,
            None,
            format!("a store may have at most {MAX_PRODUCTS} products"),
        ));
    }
    let category = change.category_id.flatten();
    check_category(c, store, category)?;
    let id = ProductId::generate();
    let variants = change.variants.unwrap_or_default();
    check_skus(c, store, id, &variants)?;
    let title = change.title.unwrap_or_default();
    c.prepare_cached(
        "INSERT INTO products (store_id, product_id, title, description, status, category_id, images, options, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
    )?
    .execute(params![
        store.uuid(),
        id.uuid(),
        title,
        change.description.unwrap_or_default(),
        change.status.unwrap_or(ProductStatus::Active).as_str(),
        category.map(|c| c.uuid()),
        serde_json::to_string(&change.images.unwrap_or_default())?,
        serde_json::to_string(&change.options.unwrap_or_default())?,
        now.millis()
    ])?;
    for (i, v) in variants.iter().enumerate() {
        insert_variant(c, store, id, VariantId::generate(), i, v)?;
    }
    let p = product(c, store, id)?;
    emit(c, store, kinds::PRODUCT_CREATED, now, json!(p))?;
    Ok(p)
}

pub(super) fn update_product(
    c: &Connection,
    store: StoreId,
    id: ProductId,
    change: ProductChange,
    now: Timestamp,
) -> Result<Product> {
    let current = product(c, store, id)?;
    if let Some(cat) = change.category_id {
        check_category(c, store, cat)?;
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
        check_skus(c, store, id, variants)?;
        // Variants not listed go; listed ones are rewritten in the order given. SKUs are freed
        // first so two variants may swap SKUs in one change.
        c.prepare_cached("UPDATE variants SET sku = NULL WHERE store_id = ?1 AND product_id = ?2")?
            .execute(params![store.uuid(), id.uuid()])?;
        for old in &current.variants {
            if !variants.iter().any(|v| v.id == Some(old.id)) {
                c.prepare_cached("DELETE FROM variants WHERE store_id = ?1 AND variant_id = ?2")?
                    .execute(params![store.uuid(), old.id.uuid()])?;
            }
        }
        for (i, v) in variants.iter().enumerate() {
            match v.id {
                Some(vid) => {
                    c.prepare_cached(
                        "UPDATE variants SET position = ?3, options = ?4, sku = ?5, price = ?6, compare_at_price = ?7, stock = ?8
                         WHERE store_id = ?1 AND variant_id = ?2",
                    )?
                    .execute(params![
                        store.uuid(),
                        vid.uuid(),
                        i as i64,
                        serde_json::to_string(&v.options)?,
                        v.sku,
                        v.price.minor(),
                        v.compare_at_price.map(Amount::minor),
                        v.stock
                    ])?;
                }
                None => insert_variant(c, store, id, VariantId::generate(), i, v)?,
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
        check_skus(c, store, id, std::slice::from_ref(&merged))
            .map_err(|_| StorageError::invalid("sku", "is already used by another product"))?;
        c.prepare_cached(
            "UPDATE variants SET sku = ?3, price = ?4, compare_at_price = ?5, stock = ?6 WHERE store_id = ?1 AND variant_id = ?2",
        )?
        .execute(params![
            store.uuid(),
            only.id.uuid(),
            merged.sku,
            merged.price.minor(),
            merged.compare_at_price.map(Amount::minor),
            merged.stock
        ])?;
    }
    let title = change.title.unwrap_or(current.title);
    c.prepare_cached(
        "UPDATE products SET title = ?3, description = ?4, status = ?5, category_id = ?6, images = ?7, options = ?8, updated_at = ?9
         WHERE store_id = ?1 AND product_id = ?2",
    )?
    .execute(params![
        store.uuid(),
        id.uuid(),
        title,
        change.description.unwrap_or(current.description),
        change.status.unwrap_or(current.status).as_str(),
        change.category_id.unwrap_or(current.category_id).map(|c| c.uuid()),
        serde_json::to_string(&change.images.unwrap_or(current.images))?,
        serde_json::to_string(&options)?,
        now.millis()
    ])?;
    let p = product(c, store, id)?;
    emit(c, store, kinds::PRODUCT_UPDATED, now, json!(p))?;
    Ok(p)
}

/// Deletes a product and its variants. Orders keep their own copy of what was sold; carts
/// holding a deleted variant simply stop showing it.
pub(super) fn delete_product(c: &Connection, store: StoreId, id: ProductId, now: Timestamp) -> Result<()> {
    let n = c
        .prepare_cached("DELETE FROM products WHERE store_id = ?1 AND product_id = ?2")?
        .execute(params![store.uuid(), id.uuid()])?;
    if n == 0 {
        return Err(StorageError::NotFound);
    }
    c.prepare_cached("DELETE FROM variants WHERE store_id = ?1 AND product_id = ?2")?
        .execute(params![store.uuid(), id.uuid()])?;
    emit(c, store, kinds::PRODUCT_DELETED, now, json!({ "id": id }))?;
    Ok(())
}
