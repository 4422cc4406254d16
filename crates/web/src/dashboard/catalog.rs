//! Products (with variants and an image) and categories, from the dashboard.
//!
//! The product form has two shapes: a simple product (one price, stock and SKU) and a product
//! with options ("Size, Colour"), one row per variant. Both become the API's product input, so
//! the rules are the same ones the API applies.

use axum::extract::{Query, State};
use axum::response::Response;
use kirana_domain::catalog::{CategoryInput, Product, ProductInput, VariantInput};
use kirana_domain::page::{Cursor, Limit, PageRequest};
use kirana_domain::validate::Checker;
use kirana_domain::{Invalid, ProductId};
use kirana_server::AppState;
use kirana_storage::ProductFilter;
use serde::{Deserialize, Serialize};

use super::form::{Errors, Submitted, form_errors, parse_amount, show_amount};
use super::{Chrome, Owned, page, see_other};
use crate::csrf::Csrf;
use crate::error::{WebError, WebResult};

#[derive(Deserialize)]
pub struct ListQuery {
    q: Option<String>,
    after: Option<String>,
    saved: Option<String>,
}

#[derive(Serialize)]
struct ListPage {
    d: Chrome,
    products: Vec<Product>,
    categories: Vec<kirana_domain::catalog::Category>,
    next: Option<String>,
    q: String,
    saved: bool,
    errors: Errors,
}

pub async fn list(State(s): State<AppState>, o: Owned, csrf: Csrf, Query(q): Query<ListQuery>) -> WebResult<Response> {
    let query = q.q.as_deref().map(str::trim).filter(|q| !q.is_empty() && q.chars().count() <= 100);
    let after = q.after.as_deref().and_then(|c| Cursor::parse(c).ok());
    let filter = ProductFilter { query: query.map(str::to_string), ..ProductFilter::default() };
    let shard = s.storage.shard(&o.scope);
    let found = shard
        .products(&o.scope, filter, PageRequest { after, limit: Limit::parse(Some(50)).map_err(WebError::Internal)? })
        .await?;
    let categories = shard.categories(&o.scope, super::first_page(100)?).await?.items;
    let ctx = ListPage {
        d: o.chrome(&csrf, "products"),
        products: found.items,
        categories,
        next: found.next_cursor,
        q: query.unwrap_or("").to_string(),
        saved: q.saved.is_some(),
        errors: Errors::new(),
    };
    page(&o.session.web, "dashboard/products.html", ctx, csrf.jar)
}

pub async fn create_category(State(s): State<AppState>, o: Owned, form: Submitted) -> WebResult<Response> {
    let input = CategoryInput { name: Some(form.text("name").to_string()), description: None };
    let made = match input.into_change(true) {
        Ok(change) => {
            s.storage.shard(&o.scope).create_category(&o.scope, change, s.clock.now()).await.map_err(WebError::from)
        }
        Err(i) => Err(WebError::Invalid(i)),
    };
    match made {
        Ok(_) => Ok(see_other(form.csrf.jar, &format!("{}/products?saved=category", o.base()))),
        Err(e) => {
            let errors = form_errors(e)?;
            let ctx = ListPage {
                d: o.chrome(&form.csrf, "products"),
                products: vec![],
                categories: vec![],
                next: None,
                q: String::new(),
                saved: false,
                errors,
            };
            Ok(super::unprocessable(page(&o.session.web, "dashboard/products.html", ctx, form.csrf.jar)?))
        }
    }
}

/// One row of the variant table, as the form shows it.
#[derive(Serialize, Default, Clone)]
struct Row {
    id: String,
    options: String,
    price: String,
    compare: String,
    stock: String,
    sku: String,
}

/// The product form's contents: from a stored product, or as the merchant last posted them.
#[derive(Serialize, Default)]
struct Fields {
    title: String,
    description: String,
    status: String,
    category_id: String,
    images: Vec<String>,
    options: String,
    /// The simple product's one variant.
    single: Row,
    rows: Vec<Row>,
}

/// Empty variant rows offered below the filled ones.
const SPARE_ROWS: usize = 3;

impl Fields {
    fn blank() -> Fields {
        Fields { status: "active".into(), rows: vec![Row::default(); SPARE_ROWS], ..Fields::default() }
    }

    fn of(p: &Product, exp: u8) -> Fields {
        let row = |v: &kirana_domain::catalog::Variant| Row {
            id: v.id.to_string(),
            options: v.options.join(" / "),
            price: show_amount(v.price.minor(), exp),
            compare: v.compare_at_price.map(|a| show_amount(a.minor(), exp)).unwrap_or_default(),
            stock: v.stock.map(|n| n.to_string()).unwrap_or_default(),
            sku: v.sku.clone().unwrap_or_default(),
        };
        let simple = p.options.is_empty();
        let mut rows: Vec<Row> = if simple { vec![] } else { p.variants.iter().map(row).collect() };
        rows.extend(std::iter::repeat_n(Row::default(), SPARE_ROWS));
        Fields {
            title: p.title.clone(),
            description: p.description.clone(),
            status: p.status.as_str().into(),
            category_id: p.category_id.map(|c| c.to_string()).unwrap_or_default(),
            images: p.images.clone(),
            options: p.options.join(", "),
            single: if simple { p.variants.first().map(row).unwrap_or_default() } else { Row::default() },
            rows,
        }
    }

    fn posted(form: &Submitted, images: Vec<String>) -> Fields {
        let col = |name: &str| form.all(name).into_iter().map(str::to_string).collect::<Vec<_>>();
        let (ids, opts, prices, compares, stocks, skus) = (
            col("variant_id"),
            col("variant_options"),
            col("variant_price"),
            col("variant_compare"),
            col("variant_stock"),
            col("variant_sku"),
        );
        let at = |v: &Vec<String>, i: usize| v.get(i).cloned().unwrap_or_default();
        let rows = (0..opts.len())
            .map(|i| Row {
                id: at(&ids, i),
                options: at(&opts, i),
                price: at(&prices, i),
                compare: at(&compares, i),
                stock: at(&stocks, i),
                sku: at(&skus, i),
            })
            .collect();
        Fields {
            title: form.text("title").into(),
            description: form.raw("description").unwrap_or_default().into(),
            status: form.text("status").into(),
            category_id: form.text("category_id").into(),
            images,
            options: form.text("options").into(),
            single: Row {
                id: form.text("single_id").into(),
                options: String::new(),
                price: form.text("price").into(),
                compare: form.text("compare_at_price").into(),
                stock: form.text("stock").into(),
                sku: form.text("sku").into(),
            },
            rows,
        }
    }
}

#[derive(Serialize)]
struct FormPage {
    d: Chrome,
    product: Option<Product>,
    storefront_url: Option<String>,
    f: Fields,
    categories: Vec<kirana_domain::catalog::Category>,
    errors: Errors,
    saved: bool,
}

async fn render_form(
    s: &AppState,
    o: &Owned,
    csrf: Csrf,
    product: Option<Product>,
    f: Fields,
    errors: Errors,
    saved: bool,
) -> WebResult<Response> {
    let categories = s.storage.shard(&o.scope).categories(&o.scope, super::first_page(100)?).await?.items;
    let failed = !errors.is_empty();
    let storefront_url = product.as_ref().map(|p| format!("{}/product/{}", o.storefront(), p.id));
    let ctx = FormPage { d: o.chrome(&csrf, "products"), product, storefront_url, f, categories, errors, saved };
    let res = page(&o.session.web, "dashboard/product.html", ctx, csrf.jar)?;
    Ok(if failed { super::unprocessable(res) } else { res })
}

pub async fn new_form(State(s): State<AppState>, o: Owned, csrf: Csrf) -> WebResult<Response> {
    render_form(&s, &o, csrf, None, Fields::blank(), Errors::new(), false).await
}

#[derive(Deserialize)]
pub struct EditQuery {
    saved: Option<String>,
}

pub async fn edit_form(
    State(s): State<AppState>,
    o: Owned,
    csrf: Csrf,
    Query(q): Query<EditQuery>,
) -> WebResult<Response> {
    let id = o.id("product_id", ProductId::parse)?;
    let product = s.storage.shard(&o.scope).product(&o.scope, id).await?;
    let f = Fields::of(&product, o.store.settings.currency.exponent());
    render_form(&s, &o, csrf, Some(product), f, Errors::new(), q.saved.is_some()).await
}

/// Reads the product form into the API's input. Amounts are typed in rupees (or the store's
/// currency); the rules then see minor units, exactly as from the API.
fn product_input(form: &Submitted, exp: u8, images: Vec<String>) -> Result<ProductInput, Invalid> {
    let mut c = Checker::new();
    if form.text("title").is_empty() {
        c.fail("title", "is required");
    }
    let amount = |c: &mut Checker, field: String, raw: &str| -> Option<Option<i64>> {
        if raw.is_empty() { Some(None) } else { c.check(field, parse_amount(raw, exp)).map(Some) }
    };
    let count = |c: &mut Checker, field: String, raw: &str| -> Option<Option<i64>> {
        if raw.is_empty() {
            Some(None)
        } else {
            c.check(field, raw.parse::<i64>().map_err(|_| "must be a whole number, or empty for untracked".to_string()))
                .map(Some)
        }
    };
    let options: Vec<String> =
        form.text("options").split(',').map(str::trim).filter(|o| !o.is_empty()).map(str::to_string).collect();
    let mut variants = Vec::new();
    if options.is_empty() {
        let price = amount(&mut c, "price".into(), form.text("price"));
        if matches!(price, Some(None)) {
            c.fail("price", "is required");
        }
        variants.push(VariantInput {
            id: form.opt("single_id"),
            options: vec![],
            sku: Some(form.opt("sku")),
            price: price.flatten(),
            compare_at_price: amount(&mut c, "compare_at_price".into(), form.text("compare_at_price")),
            stock: count(&mut c, "stock".into(), form.text("stock")),
        });
    } else {
        let f = Fields::posted(form, vec![]);
        for (i, r) in f.rows.iter().enumerate() {
            if r.options.is_empty() && r.price.is_empty() && r.stock.is_empty() && r.sku.is_empty() {
                continue;
            }
            let at = |name: &str| format!("variants[{i}].{name}");
            let price = amount(&mut c, at("price"), &r.price);
            if matches!(price, Some(None)) {
                c.fail(at("price"), "is required");
            }
            variants.push(VariantInput {
                id: Some(r.id.clone()).filter(|v| !v.is_empty()),
                options: r.options.split('/').map(str::trim).map(str::to_string).collect(),
                sku: Some(Some(r.sku.clone()).filter(|v| !v.is_empty())),
                price: price.flatten(),
                compare_at_price: amount(&mut c, at("compare"), &r.compare),
                stock: count(&mut c, at("stock"), &r.stock),
            });
        }
        if variants.is_empty() {
            c.fail("options", "fill at least one variant row, or clear the options for a simple product");
        }
    }
    c.finish()?;
    Ok(ProductInput {
        title: Some(form.text("title").to_string()),
        description: Some(form.raw("description").unwrap_or_default().to_string()),
        status: Some(form.opt("status").unwrap_or_else(|| "active".into())),
        category_id: Some(form.opt("category_id")),
        images: Some(images),
        options: Some(options),
        variants: Some(variants),
        ..ProductInput::default()
    })
}

/// The simple form's fields are the one variant's: show their errors where the merchant typed.
fn simple_field_names(mut errors: Errors, simple: bool) -> Errors {
    if simple {
        errors =
            errors.into_iter().map(|(k, v)| (k.strip_prefix("variants[0].").unwrap_or(&k).to_string(), v)).collect();
    }
    if let Some(m) = errors.remove("file") {
        errors.insert("image".into(), m);
    }
    errors
}

/// Stores the posted image, if any, and returns the product's image list with it added.
async fn with_upload(s: &AppState, o: &Owned, form: &Submitted, mut images: Vec<String>) -> WebResult<Vec<String>> {
    if let Some(bytes) = form.file.clone() {
        let up = kirana_server::routes::media::store_image(s, &o.scope, bytes).await?;
        if !images.contains(&up.url) {
            images.push(up.url);
        }
    }
    Ok(images)
}

async fn save(s: &AppState, o: &Owned, form: &Submitted, existing: Option<&Product>) -> WebResult<Product> {
    // Images kept are those still ticked on the form; a new upload is added after them.
    let kept: Vec<String> = match existing {
        Some(p) => {
            let ticked = form.all("keep_image");
            p.images.iter().filter(|u| ticked.contains(&u.as_str())).cloned().collect()
        }
        None => vec![],
    };
    let input = product_input(form, o.store.settings.currency.exponent(), kept.clone())?;
    let images = with_upload(s, o, form, kept).await?;
    let input = ProductInput { images: Some(images), ..input };
    let shard = s.storage.shard(&o.scope);
    let now = s.clock.now();
    Ok(match existing {
        None => shard.create_product(&o.scope, input.into_change(true)?, now).await?,
        Some(p) => shard.update_product(&o.scope, p.id, input.into_change(false)?, now).await?,
    })
}

pub async fn create(State(s): State<AppState>, o: Owned, form: Submitted) -> WebResult<Response> {
    match save(&s, &o, &form, None).await {
        Ok(p) => {
            tracing::info!(store_id = %o.store.id, product = %p.id, "product created from the dashboard");
            Ok(see_other(form.csrf.jar, &format!("{}/products/{}?saved=1", o.base(), p.id)))
        }
        Err(e) => {
            let errors = simple_field_names(form_errors(e)?, form.text("options").is_empty());
            let f = Fields::posted(&form, vec![]);
            render_form(&s, &o, form.csrf, None, f, errors, false).await
        }
    }
}

pub async fn update(State(s): State<AppState>, o: Owned, form: Submitted) -> WebResult<Response> {
    let id = o.id("product_id", ProductId::parse)?;
    let product = s.storage.shard(&o.scope).product(&o.scope, id).await?;
    if form.text("action") == "delete" {
        s.storage.shard(&o.scope).delete_product(&o.scope, id, s.clock.now()).await?;
        return Ok(see_other(form.csrf.jar, &format!("{}/products?saved=deleted", o.base())));
    }
    match save(&s, &o, &form, Some(&product)).await {
        Ok(p) => Ok(see_other(form.csrf.jar, &format!("{}/products/{}?saved=1", o.base(), p.id))),
        Err(e) => {
            let errors = simple_field_names(form_errors(e)?, form.text("options").is_empty());
            let f = Fields::posted(&form, product.images.clone());
            render_form(&s, &o, form.csrf, Some(product), f, errors, false).await
        }
    }
}
