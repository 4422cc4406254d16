//! Carts: the port of `sqlite::shard::carts`, with the same validation, errors and events.
//! Held server-side, opened only by the hash of their token.
//!
//! What SQLite's single writer guarantees, this gets from PostgreSQL: a write opens the cart
//! `FOR UPDATE`, so changes to one cart (and its checkout, which opens it the same way) apply
//! one after the other, each seeing the other's result: the line limit counts right, and a
//! cart that was checked out takes no more items.

use deadpool_postgres::GenericClient;
use kirana_domain::cart::{CART_TTL_SECS, Cart, CartLine, CartStatus, MAX_CART_LINES, Quantity, Shortage};
use kirana_domain::catalog::{ProductStatus, variant_title};
use kirana_domain::event::kinds;
use kirana_domain::pricing::{self, Terms};
use kirana_domain::store::StoreSettings;
use kirana_domain::{Amount, CartId, OrderId, ProductId, StoreId, Timestamp, VariantId};
use serde_json::json;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{emit, exec, one, opt, rows, stores};
use crate::Result;
use crate::error::{ConflictKind, StorageError};

pub(crate) struct CartRow {
    pub id: CartId,
    pub status: CartStatus,
    pub order_id: Option<OrderId>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A cart line with what the catalog says of it now.
pub(crate) struct LiveLine {
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

pub(crate) fn terms(s: &StoreSettings) -> Terms {
    Terms {
        delivery_fee: s.delivery_fee,
        free_delivery_threshold: s.free_delivery_threshold,
        tax_rate_bps: s.tax_rate_bps,
        prices_include_tax: s.prices_include_tax,
    }
}

/// Stored quantities are BIGINT; they were written from a `u32`.
pub(crate) fn quantity(q: i64) -> u32 {
    u32::try_from(q).unwrap_or(u32::MAX)
}

/// The cart if the token opens it and it has not expired; `NotFound` otherwise, so a wrong
/// token and a missing cart look the same. With `for_update` the row stays locked until the
/// transaction ends (every write to a cart opens it so).
pub(crate) async fn open<C: GenericClient>(
    c: &C,
    store: StoreId,
    id: CartId,
    token_hash: [u8; 32],
    now: Timestamp,
    for_update: bool,
) -> Result<CartRow> {
    let sql = if for_update {
        "SELECT token_hash, status, order_id, created_at, updated_at, expires_at FROM carts
         WHERE store_id = $1 AND cart_id = $2 FOR UPDATE"
    } else {
        "SELECT token_hash, status, order_id, created_at, updated_at, expires_at FROM carts
         WHERE store_id = $1 AND cart_id = $2"
    };
    let row = opt(c, sql, &[&store.uuid(), &id.uuid()]).await?;
    let Some(r) = row else {
        return Err(StorageError::NotFound);
    };
    let hash: &[u8] = r.get(0);
    if !bool::from(hash.ct_eq(&token_hash[..])) {
        return Err(StorageError::NotFound);
    }
    let cart = CartRow {
        id,
        status: CartStatus::from_stored(r.get::<_, &str>(1)),
        order_id: r.get::<_, Option<Uuid>>(2).map(OrderId::from_uuid),
        created_at: Timestamp::from_millis(r.get(3)),
        updated_at: Timestamp::from_millis(r.get(4)),
        expires_at: Timestamp::from_millis(r.get(5)),
    };
    if cart.status == CartStatus::Open && cart.expires_at <= now {
        return Err(StorageError::NotFound);
    }
    Ok(cart)
}

/// The cart's lines joined with the catalog, in the order they were added. Lines whose variant
/// was deleted are left out: the shopper can neither see nor buy them.
pub(crate) async fn lines<C: GenericClient>(c: &C, store: StoreId, cart: CartId) -> Result<Vec<LiveLine>> {
    let rows = rows(
        c,
        "SELECT ci.variant_id, v.product_id, p.title, v.options, p.images, v.price, ci.quantity, v.stock, p.status, v.sku
         FROM cart_items ci
         JOIN variants v ON v.store_id = ci.store_id AND v.variant_id = ci.variant_id
         JOIN products p ON p.store_id = v.store_id AND p.product_id = v.product_id
         WHERE ci.store_id = $1 AND ci.cart_id = $2
         ORDER BY ci.added_at, ci.variant_id",
        &[&store.uuid(), &cart.uuid()],
    )
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let options: Vec<String> = serde_json::from_str(r.get::<_, &str>(3))?;
        let images: Vec<String> = serde_json::from_str(r.get::<_, &str>(4))?;
        out.push(LiveLine {
            variant_id: VariantId::from_uuid(r.get(0)),
            product_id: ProductId::from_uuid(r.get(1)),
            title: r.get(2),
            variant_title: variant_title(&options),
            sku: r.get(9),
            image: images.into_iter().next(),
            price: Amount::from_stored(r.get(5)),
            quantity: quantity(r.get(6)),
            stock: r.get(7),
            on_sale: r.get::<_, &str>(8) == ProductStatus::Active.as_str(),
        });
    }
    Ok(out)
}

pub(crate) async fn view<C: GenericClient>(c: &C, store: StoreId, cart: &CartRow) -> Result<Cart> {
    let settings = stores::get(c, store).await?.settings;
    let lines = lines(c, store, cart.id).await?;
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

pub async fn create<C: GenericClient>(c: &C, store: StoreId, token_hash: [u8; 32], now: Timestamp) -> Result<Cart> {
    let id = CartId::generate();
    let expires = now.plus_secs(CART_TTL_SECS);
    exec(
        c,
        "INSERT INTO carts (store_id, cart_id, token_hash, status, created_at, updated_at, expires_at)
         VALUES ($1, $2, $3, 'open', $4, $4, $5)",
        &[&store.uuid(), &id.uuid(), &&token_hash[..], &now.millis(), &expires.millis()],
    )
    .await?;
    emit(c, store, kinds::CART_CREATED, now, json!({ "cart_id": id })).await?;
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
    .await
}

pub async fn get<C: GenericClient>(
    c: &C,
    store: StoreId,
    id: CartId,
    token_hash: [u8; 32],
    now: Timestamp,
) -> Result<Cart> {
    let row = open(c, store, id, token_hash, now, false).await?;
    view(c, store, &row).await
}

#[allow(clippy::too_many_arguments)]
pub async fn set_item<C: GenericClient>(
    c: &C,
    store: StoreId,
    id: CartId,
    token_hash: [u8; 32],
    variant: VariantId,
    quantity: Quantity,
    now: Timestamp,
) -> Result<Cart> {
    let mut cart = open(c, store, id, token_hash, now, true).await?;
    if cart.status != CartStatus::Open {
        return Err(StorageError::conflict(
            ConflictKind::CartClosed,
            None,
            "this cart has been checked out; start a new cart",
        ));
    }
    let q = quantity.get();
    if q == 0 {
        exec(
            c,
            "DELETE FROM cart_items WHERE store_id = $1 AND cart_id = $2 AND variant_id = $3",
            &[&store.uuid(), &id.uuid(), &variant.uuid()],
        )
        .await?;
    } else {
        let found = opt(
            c,
            "SELECT p.title, v.options, v.stock, p.status FROM variants v
             JOIN products p ON p.store_id = v.store_id AND p.product_id = v.product_id
             WHERE v.store_id = $1 AND v.variant_id = $2",
            &[&store.uuid(), &variant.uuid()],
        )
        .await?;
        let Some(r) = found else {
            return Err(StorageError::invalid("variant_id", "is not a product variant of this store"));
        };
        let (title, options, stock, status): (String, String, Option<i64>, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
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
        let updated = exec(
            c,
            "UPDATE cart_items SET quantity = $4 WHERE store_id = $1 AND cart_id = $2 AND variant_id = $3",
            &[&store.uuid(), &id.uuid(), &variant.uuid(), &i64::from(q)],
        )
        .await?;
        if updated == 0 {
            let count: i64 = one(
                c,
                "SELECT count(*) FROM cart_items WHERE store_id = $1 AND cart_id = $2",
                &[&store.uuid(), &id.uuid()],
            )
            .await?
            .get(0);
            if count >= MAX_CART_LINES as i64 {
                return Err(StorageError::invalid(
                    "variant_id",
                    &format!("a cart holds at most {MAX_CART_LINES} different items"),
                ));
            }
            exec(
                c,
                "INSERT INTO cart_items (store_id, cart_id, variant_id, quantity, added_at) VALUES ($1, $2, $3, $4, $5)",
                &[&store.uuid(), &id.uuid(), &variant.uuid(), &i64::from(q), &now.millis()],
            )
            .await?;
        }
    }
    cart.updated_at = now;
    cart.expires_at = now.plus_secs(CART_TTL_SECS);
    exec(
        c,
        "UPDATE carts SET updated_at = $3, expires_at = $4 WHERE store_id = $1 AND cart_id = $2",
        &[&store.uuid(), &id.uuid(), &now.millis(), &cart.expires_at.millis()],
    )
    .await?;
    emit(c, store, kinds::CART_UPDATED, now, json!({ "cart_id": id, "variant_id": variant, "quantity": q })).await?;
    view(c, store, &cart).await
}
