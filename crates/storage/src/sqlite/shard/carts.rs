//! Carts: held server-side, opened only by the hash of their token.

use kirana_domain::cart::{CART_TTL_SECS, Cart, CartLine, CartStatus, MAX_CART_LINES, Quantity, Shortage};
use kirana_domain::catalog::{ProductStatus, variant_title};
use kirana_domain::event::kinds;
use kirana_domain::pricing::{self, Terms};
use kirana_domain::store::StoreSettings;
use kirana_domain::{Amount, CartId, OrderId, ProductId, StoreId, Timestamp, VariantId};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::json;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{emit, stores};
use crate::Result;
use crate::error::{ConflictKind, StorageError};

pub(super) struct CartRow {
    pub id: CartId,
    pub status: CartStatus,
    pub order_id: Option<OrderId>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A cart line with what the catalog says of it now.
pub(super) struct LiveLine {
    pub variant_id: VariantId,
    pub product_id: ProductId,
    pub title: String,
    pub variant_title: String,
    pub sku: Option<String>,
    pub image: Option<String>,
    pub price: Amount,
    pub quantity: u32,
    pub stock: Option<i64>,
    pub on_sale: bool,
}

impl LiveLine {
    pub fn full_title(&self) -> String {
        if self.variant_title == "Default" {
            self.title.clone()
        } else {
            format!("{} / {}", self.title, self.variant_title)
        }
    }

    /// How many of this line can be sold right now.
    pub fn available(&self) -> i64 {
        match (self.on_sale, self.stock) {
            (false, _) => 0,
            (true, Some(s)) => s,
            (true, None) => i64::MAX,
        }
    }
}

pub(super) fn terms(s: &StoreSettings) -> Terms {
    Terms {
        delivery_fee: s.delivery_fee,
        free_delivery_threshold: s.free_delivery_threshold,
        tax_rate_bps: s.tax_rate_bps,
        prices_include_tax: s.prices_include_tax,
    }
}

/// The cart if the token opens it and it has not expired; `NotFound` otherwise, so a wrong
/// token and a missing cart look the same.
pub(super) fn open(
    c: &Connection,
    store: StoreId,
    id: CartId,
    token_hash: [u8; 32],
    now: Timestamp,
) -> Result<CartRow> {
    let row = c
        .prepare_cached(
            "SELECT token_hash, status, order_id, created_at, updated_at, expires_at FROM carts WHERE store_id = ?1 AND cart_id = ?2",
        )?
        .query_row(params![store.uuid(), id.uuid()], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                CartRow {
                    id,
                    status: CartStatus::from_stored(&r.get::<_, String>(1)?),
                    order_id: r.get::<_, Option<Uuid>>(2)?.map(OrderId::from_uuid),
                    created_at: Timestamp::from_millis(r.get(3)?),
                    updated_at: Timestamp::from_millis(r.get(4)?),
                    expires_at: Timestamp::from_millis(r.get(5)?),
                },
            ))
        })
        .optional()?;
    match row {
        Some((hash, cart)) if bool::from(hash.as_slice().ct_eq(&token_hash[..])) => {
            if cart.status == CartStatus::Open && cart.expires_at <= now {
                return Err(StorageError::NotFound);
            }
            Ok(cart)
        }
        _ => Err(StorageError::NotFound),
    }
}

/// The cart's lines joined with the catalog, in the order they were added. Lines whose variant
/// was deleted are left out: the shopper can neither see nor buy them.
pub(super) fn lines(c: &Connection, store: StoreId, cart: CartId) -> Result<Vec<LiveLine>> {
    let mut st = c.prepare_cached(
        "SELECT ci.variant_id, v.product_id, p.title, v.options, p.images, v.price, ci.quantity, v.stock, p.status, v.sku
         FROM cart_items ci
         JOIN variants v ON v.store_id = ci.store_id AND v.variant_id = ci.variant_id
         JOIN products p ON p.store_id = v.store_id AND p.product_id = v.product_id
         WHERE ci.store_id = ?1 AND ci.cart_id = ?2
         ORDER BY ci.added_at, ci.variant_id",
    )?;
    let rows = st.query_map(params![store.uuid(), cart.uuid()], |r| {
        Ok((
            r.get::<_, Uuid>(0)?,
            r.get::<_, Uuid>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, u32>(6)?,
            r.get::<_, Option<i64>>(7)?,
            r.get::<_, String>(8)?,
            r.get::<_, Option<String>>(9)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (vid, pid, title, options, images, price, quantity, stock, status, sku) = row?;
        let options: Vec<String> = serde_json::from_str(&options)?;
        let images: Vec<String> = serde_json::from_str(&images)?;
        out.push(LiveLine {
            variant_id: VariantId::from_uuid(vid),
            product_id: ProductId::from_uuid(pid),
            title,
            variant_title: variant_title(&options),
            sku,
            image: images.into_iter().next(),
            price: Amount::from_stored(price),
            quantity,
            stock,
            on_sale: status == ProductStatus::Active.as_str(),
        });
    }
    Ok(out)
}

pub(super) fn view(c: &Connection, store: StoreId, cart: &CartRow) -> Result<Cart> {
    let settings = stores::get(c, store)?.settings;
    let lines = lines(c, store, cart.id)?;
    let subtotal = pricing::subtotal(lines.iter().map(|l| (l.price, l.quantity)))
        .ok_or_else(|| StorageError::Internal("cart subtotal overflowed".into()))?;
    let totals = pricing::totals(subtotal, 0, &terms(&settings));
    Ok(Cart {
        id: cart.id,
        status: cart.status,
        currency: settings.currency,
        items: lines
            .into_iter()
            .map(|l| CartLine {
                available: l.available() >= i64::from(l.quantity),
                line_total: l.price.minor() * i64::from(l.quantity),
                variant_id: l.variant_id,
                product_id: l.product_id,
                title: l.title,
                variant_title: l.variant_title,
                image: l.image,
                unit_price: l.price,
                quantity: l.quantity,
            })
            .collect(),
        totals,
        created_at: cart.created_at,
        updated_at: cart.updated_at,
        expires_at: cart.expires_at,
    })
}

pub(super) fn create(c: &Connection, store: StoreId, token_hash: [u8; 32], now: Timestamp) -> Result<Cart> {
    let id = CartId::generate();
    let expires = now.plus_secs(CART_TTL_SECS);
    c.prepare_cached(
        "INSERT INTO carts (store_id, cart_id, token_hash, status, created_at, updated_at, expires_at) VALUES (?1, ?2, ?3, 'open', ?4, ?4, ?5)",
    )?
    .execute(params![store.uuid(), id.uuid(), &token_hash[..], now.millis(), expires.millis()])?;
    emit(c, store, kinds::CART_CREATED, now, json!({ "cart_id": id }))?;
    view(
        c,
        store,
        &CartRow {
            id,
            status: CartStatus::Open,
            order_id: None,
            created_at: now,
            updated_at: now,
            expires_at: expires,
        },
    )
}

pub(super) fn get(c: &Connection, store: StoreId, id: CartId, token_hash: [u8; 32], now: Timestamp) -> Result<Cart> {
    let row = open(c, store, id, token_hash, now)?;
    view(c, store, &row)
}

pub(super) fn set_item(
    c: &Connection,
    store: StoreId,
    id: CartId,
    token_hash: [u8; 32],
    variant: VariantId,
    quantity: Quantity,
    now: Timestamp,
) -> Result<Cart> {
    let mut cart = open(c, store, id, token_hash, now)?;
    if cart.status != CartStatus::Open {
        return Err(StorageError::conflict(
            ConflictKind::CartClosed,
            None,
            "this cart has been checked out; start a new cart",
        ));
    }
    let q = quantity.get();
    if q == 0 {
        c.prepare_cached("DELETE FROM cart_items WHERE store_id = ?1 AND cart_id = ?2 AND variant_id = ?3")?
            .execute(params![store.uuid(), id.uuid(), variant.uuid()])?;
    } else {
        let found = c
            .prepare_cached(
                "SELECT p.title, v.options, v.stock, p.status FROM variants v
                 JOIN products p ON p.store_id = v.store_id AND p.product_id = v.product_id
                 WHERE v.store_id = ?1 AND v.variant_id = ?2",
            )?
            .query_row(params![store.uuid(), variant.uuid()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .optional()?;
        let Some((title, options, stock, status)) = found else {
            return Err(StorageError::invalid("variant_id", "is not a product variant of this store"));
        };
        if status != ProductStatus::Active.as_str() {
            return Err(StorageError::invalid("variant_id", "is not on sale"));
        }
        if let Some(s) = stock
            && i64::from(q) > s
        {
            let options: Vec<String> = serde_json::from_str(&options)?;
            let vt = variant_title(&options);
            let title = if vt == "Default" { title } else { format!("{title} / {vt}") };
            return Err(StorageError::InsufficientStock(vec![Shortage {
                variant_id: variant,
                title,
                requested: q,
                available: s,
            }]));
        }
        let exists: bool = c
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM cart_items WHERE store_id = ?1 AND cart_id = ?2 AND variant_id = ?3)",
            )?
            .query_row(params![store.uuid(), id.uuid(), variant.uuid()], |r| r.get(0))?;
        if exists {
            c.prepare_cached(
                "UPDATE cart_items SET quantity = ?4 WHERE store_id = ?1 AND cart_id = ?2 AND variant_id = ?3",
            )?
            .execute(params![store.uuid(), id.uuid(), variant.uuid(), q])?;
        } else {
            let count: i64 = c
                .prepare_cached("SELECT count(*) FROM cart_items WHERE store_id = ?1 AND cart_id = ?2")?
                .query_row(params![store.uuid(), id.uuid()], |r| r.get(0))?;
            if count >= MAX_CART_LINES as i64 {
                return Err(StorageError::invalid(
                    "variant_id",
                    &format!("a cart holds at most {MAX_CART_LINES} different items"),
                ));
            }
            c.prepare_cached("INSERT INTO cart_items (store_id, cart_id, variant_id, quantity, added_at) VALUES (?1, ?2, ?3, ?4, ?5)")?
                .execute(params![store.uuid(), id.uuid(), variant.uuid(), q, now.millis()])?;
        }
    }
    cart.updated_at = now;
    cart.expires_at = now.plus_secs(CART_TTL_SECS);
    c.prepare_cached("UPDATE carts SET updated_at = ?3, expires_at = ?4 WHERE store_id = ?1 AND cart_id = ?2")?
        .execute(params![store.uuid(), id.uuid(), now.millis(), cart.expires_at.millis()])?;
    emit(c, store, kinds::CART_UPDATED, now, json!({ "cart_id": id, "variant_id": variant, "quantity": q }))?;
    view(c, store, &cart)
}
