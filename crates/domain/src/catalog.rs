//! The catalog: categories, products and their variants, with stock.
//!
//! A product has up to three option names (Size, Colour…) and one variant per combination of
//! option values. Each variant has its own price and stock; `stock: null` means the merchant does
//! not track it and it never runs out.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::store::present;
use crate::text::{self, limits};
use crate::validate::{Checker, Invalid, checked};
use crate::{Amount, CategoryId, ProductId, Timestamp, VariantId};

/// Largest stock count a variant may hold.
pub const MAX_STOCK: i64 = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProductStatus {
    /// Being prepared; invisible to shoppers.
    Draft,
    /// On sale.
    Active,
    /// Withdrawn; kept for the record, invisible to shoppers.
    Archived,
}

impl ProductStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ProductStatus::Draft => "draft",
            ProductStatus::Active => "active",
            ProductStatus::Archived => "archived",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "draft" => Ok(ProductStatus::Draft),
            "active" => Ok(ProductStatus::Active),
            "archived" => Ok(ProductStatus::Archived),
            _ => Err("must be one of: draft, active, archived".into()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Category {
    pub id: CategoryId,
    pub name: String,
    pub description: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CategoryInput {
    pub name: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct CategoryChange {
    pub name: Option<String>,
    pub description: Option<String>,
}

impl CategoryInput {
    pub fn into_change(self, creating: bool) -> Result<CategoryChange, Invalid> {
        let mut c = Checker::new();
        if creating && self.name.is_none() {
            c.fail("name", "is required");
        }
        let name = c.check_opt("name", self.name, |n| text::line(&n, 1, limits::NAME));
        let description = c.check_opt("description", self.description, |d| text::multiline(&d, 5_000));
        c.finish()?;
        Ok(CategoryChange { name: checked(name), description: checked(description) })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Variant {
    pub id: VariantId,
    /// The option values joined, e.g. "M / Red"; "Default" for a product without options.
    pub title: String,
    pub options: Vec<String>,
    pub sku: Option<String>,
    pub price: Amount,
    pub compare_at_price: Option<Amount>,
    /// Units on hand; `null` when the merchant does not track stock.
    pub stock: Option<i64>,
}

impl Variant {
    pub fn available(&self) -> bool {
        self.stock.is_none_or(|s| s > 0)
    }
}

pub fn variant_title(options: &[String]) -> String {
    if options.is_empty() { "Default".into() } else { options.join(" / ") }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Product {
    pub id: ProductId,
    pub title: String,
    pub description: String,
    pub status: ProductStatus,
    pub category_id: Option<CategoryId>,
    pub images: Vec<String>,
    /// Option names, e.g. ["Size", "Colour"]; each variant has one value per name.
    pub options: Vec<String>,
    pub variants: Vec<Variant>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A variant as shoppers see it: whether it can be bought, not how many are left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PublicVariant {
    pub id: VariantId,
    pub title: String,
    pub options: Vec<String>,
    pub price: Amount,
    pub compare_at_price: Option<Amount>,
    pub available: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PublicProduct {
    pub id: ProductId,
    pub title: String,
    pub description: String,
    pub category_id: Option<CategoryId>,
    pub images: Vec<String>,
    pub options: Vec<String>,
    pub variants: Vec<PublicVariant>,
    /// The lowest variant price, for product cards.
    pub price_from: Amount,
    pub available: bool,
}

impl From<Product> for PublicProduct {
    fn from(p: Product) -> Self {
        let price_from = p.variants.iter().map(|v| v.price).min().unwrap_or(Amount::ZERO);
        let available = p.variants.iter().any(Variant::available);
        PublicProduct {
            id: p.id,
            title: p.title,
            description: p.description,
            category_id: p.category_id,
            images: p.images,
            options: p.options,
            variants: p
                .variants
                .into_iter()
                .map(|v| PublicVariant {
                    available: v.available(),
                    id: v.id,
                    title: v.title,
                    options: v.options,
                    price: v.price,
                    compare_at_price: v.compare_at_price,
                })
                .collect(),
            price_from,
            available,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VariantInput {
    /// Present to update an existing variant (PATCH); absent to create one.
    pub id: Option<String>,
    #[serde(default)]
    pub options: Vec<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub sku: Option<Option<String>>,
    pub price: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub compare_at_price: Option<Option<i64>>,
    /// Units on hand; `null` or absent: not tracked.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub stock: Option<Option<i64>>,
}

/// The body of `POST /products` and `PATCH /products/{id}`.
///
/// A simple product can skip `variants` and give `price` (and `stock`, `sku`) directly; it then
/// has one default variant. On PATCH, `variants` replaces the whole list: entries with an `id`
/// update that variant, entries without one are created, and variants not listed are removed.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductInput {
    pub title: Option<String>,
    pub description: Option<String>,
    pub status: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub category_id: Option<Option<String>>,
    pub images: Option<Vec<String>>,
    pub options: Option<Vec<String>>,
    pub variants: Option<Vec<VariantInput>>,
    pub price: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub compare_at_price: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub sku: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub stock: Option<Option<i64>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVariant {
    pub id: Option<VariantId>,
    pub options: Vec<String>,
    pub sku: Option<String>,
    pub price: Amount,
    pub compare_at_price: Option<Amount>,
    pub stock: Option<i64>,
}

/// A change to the one variant of a simple product, given as top-level `price`, `stock`…
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VariantPatch {
    pub price: Option<Amount>,
    pub compare_at_price: Option<Option<Amount>>,
    pub sku: Option<Option<String>>,
    pub stock: Option<Option<i64>>,
}

/// A validated product change. On create every field is set; on PATCH only those given.
#[derive(Debug, Clone, Default)]
pub struct ProductChange {
    pub title: Option<String>,
    pub description: Option<String>,
    pub status: Option<ProductStatus>,
    pub category_id: Option<Option<CategoryId>>,
    pub images: Option<Vec<String>>,
    pub options: Option<Vec<String>>,
    pub variants: Option<Vec<NewVariant>>,
    /// PATCH of a single-variant product through top-level fields: that variant keeps its id.
    pub single_variant: Option<VariantPatch>,
}

fn parse_variant(c: &mut Checker, prefix: &str, v: VariantInput, creating: bool) -> Option<NewVariant> {
    let id = match v.id {
        None => Some(None),
        Some(_) if creating => {
            c.fail(format!("{prefix}id"), "must not be given when creating a product");
            None
        }
        Some(raw) => c.check(
            format!("{prefix}id"),
            VariantId::parse(&raw).map(Some).ok_or_else(|| "is not a variant of this product".to_string()),
        ),
    };
    let mut options = Vec::with_capacity(v.options.len());
    let mut ok = true;
    for (i, o) in v.options.iter().enumerate() {
        match c.check(format!("{prefix}options[{i}]"), text::line(o, 1, limits::SHORT)) {
            Some(o) => options.push(o),
            None => ok = false,
        }
    }
    let sku = c.check_opt(format!("{prefix}sku"), v.sku.flatten(), |s| text::line(&s, 1, limits::SKU));
    let price = match v.price {
        None => {
            c.fail(format!("{prefix}price"), "is required");
            None
        }
        Some(p) => c.check(format!("{prefix}price"), Amount::parse(p)),
    };
    let compare = c.check_opt(format!("{prefix}compare_at_price"), v.compare_at_price.flatten(), Amount::parse);
    let stock = c.check_opt(format!("{prefix}stock"), v.stock.flatten(), parse_stock);
    Some(NewVariant {
        id: id?,
        options: if ok { options } else { return None },
        sku: sku?,
        price: price?,
        compare_at_price: compare?,
        stock: stock?,
    })
}

pub fn parse_stock(n: i64) -> Result<i64, String> {
    if (0..=MAX_STOCK).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be between 0 and {MAX_STOCK}, or null for untracked stock"))
    }
}

impl ProductInput {
    pub fn into_change(self, creating: bool) -> Result<ProductChange, Invalid> {
        let mut c = Checker::new();
        if creating && self.title.is_none() {
            c.fail("title", "is required");
        }
        let title = c.check_opt("title", self.title, |t| text::line(&t, 1, limits::TITLE));
        let description = c.check_opt("description", self.description, |d| text::multiline(&d, limits::DESCRIPTION));
        let status = c.check_opt("status", self.status, |s| ProductStatus::parse(&s));
        let category_id = c.check_opt("category_id", self.category_id, |v| match v {
            None => Ok(None),
            Some(raw) => CategoryId::parse(&raw).map(Some).ok_or_else(|| "is not a category of this store".to_string()),
        });
        let images = c.check_opt("images", self.images, |imgs| {
            if imgs.len() > limits::IMAGES {
                return Err(format!("must list at most {} images", limits::IMAGES));
            }
            Ok(imgs)
        });
        let images = images.map(|o| {
            o.map(|imgs| {
                imgs.into_iter()
                    .enumerate()
                    .filter_map(|(i, u)| c.check(format!("images[{i}]"), text::url(&u)))
                    .collect::<Vec<_>>()
            })
        });
        let options = c.check_opt("options", self.options, |opts| {
            if opts.len() > limits::OPTIONS {
                return Err(format!("must list at most {} option names", limits::OPTIONS));
            }
            let mut out = Vec::new();
            for o in opts {
                let o = text::line(&o, 1, limits::SHORT)?;
                if out.iter().any(|x: &String| x.eq_ignore_ascii_case(&o)) {
                    return Err(format!("lists '{o}' twice"));
                }
                out.push(o);
            }
            Ok(out)
        });

        let mut single = None;
        let simple_given =
            self.price.is_some() || self.compare_at_price.is_some() || self.sku.is_some() || self.stock.is_some();
        let variants = match (self.variants, simple_given) {
            (Some(_), true) => {
                c.fail("price", "give either variants or price/sku/stock, not both");
                None
            }
            (Some(list), false) => {
                if list.is_empty() || list.len() > limits::VARIANTS {
                    c.fail("variants", format!("must list 1 to {} variants", limits::VARIANTS));
                    None
                } else {
                    let parsed: Vec<_> = list
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| parse_variant(&mut c, &format!("variants[{i}]."), v, creating))
                        .collect();
                    parsed.into_iter().collect::<Option<Vec<_>>>().map(Some)
                }
            }
            (None, true) if !creating => {
                single = Some(VariantPatch {
                    price: c.check_opt("price", self.price, Amount::parse).flatten(),
                    compare_at_price: c
                        .check_opt("compare_at_price", self.compare_at_price, |v| v.map(Amount::parse).transpose())
                        .flatten(),
                    sku: c
                        .check_opt("sku", self.sku, |v| v.map(|s| text::line(&s, 1, limits::SKU)).transpose())
                        .flatten(),
                    stock: c.check_opt("stock", self.stock, |v| v.map(parse_stock).transpose()).flatten(),
                });
                Some(None)
            }
            (None, true) => {
                let v = VariantInput {
                    id: None,
                    options: vec![],
                    sku: self.sku,
                    price: self.price,
                    compare_at_price: self.compare_at_price,
                    stock: self.stock,
                };
                parse_variant(&mut c, "", v, true).map(|v| Some(vec![v]))
            }
            (None, false) if creating => {
                c.fail("price", "is required (or give variants)");
                None
            }
            (None, false) => Some(None),
        };
        let options_changed = matches!(options, Some(Some(_)));
        if options_changed && matches!(variants, Some(None)) {
            c.fail("variants", "must be given when options change");
        }
        c.finish()?;
        let change = ProductChange {
            title: checked(title),
            description: checked(description),
            status: checked(status),
            category_id: checked(category_id),
            images: checked(images),
            options: checked(options),
            variants: checked(variants),
            single_variant: single,
        };
        if creating {
            check_variants(change.options.as_deref().unwrap_or(&[]), change.variants.as_deref().unwrap_or(&[]))?;
        }
        Ok(change)
    }
}

/// Checks variants against the product's option names: one value per name, each combination
/// once, SKUs unique within the product. Run again by storage after a PATCH is merged.
pub fn check_variants(options: &[String], variants: &[NewVariant]) -> Result<(), Invalid> {
    let mut c = Checker::new();
    if variants.is_empty() {
        c.fail("variants", "a product needs at least one variant");
    }
    if options.is_empty() && variants.len() > 1 {
        c.fail("options", "name the options (e.g. Size) that tell several variants apart");
    }
    let mut combos = HashSet::new();
    let mut skus = HashSet::new();
    let mut ids = HashSet::new();
    for (i, v) in variants.iter().enumerate() {
        if v.options.len() != options.len() {
            c.fail(
                format!("variants[{i}].options"),
                format!("must give {} value(s), one per option name", options.len()),
            );
        }
        let key: Vec<String> = v.options.iter().map(|o| o.to_lowercase()).collect();
        if !combos.insert(key) {
            c.fail(format!("variants[{i}].options"), "repeats another variant's options");
        }
        if let Some(sku) = &v.sku
            && !skus.insert(sku.clone())
        {
            c.fail(format!("variants[{i}].sku"), "repeats another variant's SKU");
        }
        if let Some(id) = v.id
            && !ids.insert(id)
        {
            c.fail(format!("variants[{i}].id"), "lists the same variant twice");
        }
    }
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(json: &str) -> Result<ProductChange, Invalid> {
        serde_json::from_str::<ProductInput>(json).unwrap().into_change(true)
    }

    #[test]
    fn a_simple_product_gets_one_default_variant() {
        let p = create(r#"{"title":"Chai","price":2500,"stock":10}"#).unwrap();
        let v = p.variants.unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].price.minor(), 2500);
        assert_eq!(v[0].stock, Some(10));
    }

    #[test]
    fn variants_must_match_the_option_names() {
        let e = create(r#"{"title":"Tee","options":["Size"],"variants":[{"options":["M"],"price":1},{"options":["M"],"price":1},{"options":[],"price":1}]}"#).unwrap_err();
        let fields: Vec<_> = e.0.iter().map(|f| f.field.as_str()).collect();
        assert!(fields.contains(&"variants[1].options"), "{fields:?}");
        assert!(fields.contains(&"variants[2].options"), "{fields:?}");
    }

    #[test]
    fn negative_and_huge_numbers_are_named() {
        let e = create(r#"{"title":"x","variants":[{"price":-1,"stock":-3},{"price":1000000000000000}]}"#).unwrap_err();
        let fields: Vec<_> = e.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["variants[0].price", "variants[0].stock", "variants[1].price"]);
    }

    #[test]
    fn a_product_needs_a_title_and_a_price() {
        let e = create(r#"{}"#).unwrap_err();
        let fields: Vec<_> = e.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["title", "price"]);
    }

    #[test]
    fn patching_options_requires_variants() {
        let e =
            serde_json::from_str::<ProductInput>(r#"{"options":["Size"]}"#).unwrap().into_change(false).unwrap_err();
        assert_eq!(e.0[0].field, "variants");
    }

    #[test]
    fn patching_a_simple_products_price_changes_its_one_variant() {
        let ch =
            serde_json::from_str::<ProductInput>(r#"{"price":3000,"stock":null}"#).unwrap().into_change(false).unwrap();
        assert!(ch.variants.is_none());
        let patch = ch.single_variant.unwrap();
        assert_eq!(patch.price.map(Amount::minor), Some(3000));
        assert_eq!(patch.stock, Some(None));
        assert_eq!(patch.sku, None);
    }

    #[test]
    fn untracked_variants_are_always_available() {
        let v = Variant {
            id: VariantId::generate(),
            title: "Default".into(),
            options: vec![],
            sku: None,
            price: Amount::ZERO,
            compare_at_price: None,
            stock: None,
        };
        assert!(v.available());
        assert!(!Variant { stock: Some(0), ..v.clone() }.available());
    }
}
