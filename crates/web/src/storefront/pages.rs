//! Browsing: home, category, product, search, and what crawlers read (sitemap, robots).

use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use kirana_domain::catalog::{Category, ProductStatus, PublicProduct};
use kirana_domain::page::{Cursor, Limit, PageRequest};
use kirana_domain::{CategoryId, ProductId};
use kirana_server::AppState;
use kirana_storage::ProductFilter;
use serde::{Deserialize, Serialize};

use super::{Meta, Resolve, Site, found};
use crate::error::{WebError, WebResult};

/// Products per page on lists: a phone's first screens.
const PER_PAGE: i64 = 24;

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    q: Option<String>,
    after: Option<String>,
}

#[derive(Serialize)]
struct ListPage {
    site: Site,
    category: Option<Category>,
    q: Option<String>,
    products: Vec<PublicProduct>,
    /// Query string of the next page, if any.
    next: Option<String>,
}

fn page_request(after: Option<&str>) -> WebResult<PageRequest> {
    Ok(PageRequest {
        after: after.map(Cursor::parse).transpose().map_err(|_| WebError::NotFound)?,
        limit: Limit::parse(Some(PER_PAGE)).map_err(WebError::Internal)?,
    })
}

fn describe(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

pub async fn home(State(state): State<AppState>, r: Resolve, Query(q): Query<ListQuery>) -> WebResult<Response> {
    let f = found!(r);
    let filter = ProductFilter { status: Some(ProductStatus::Active), ..Default::default() };
    let page = state.storage.shard(&f.scope).products(&f.scope, filter, page_request(q.after.as_deref())?).await?;
    let store = &f.store;
    let image = store.settings.logo_url.clone().or_else(|| page.items.iter().find_map(|p| p.images.first().cloned()));
    let meta = Meta {
        path: String::new(),
        title: store.name.clone(),
        description: if store.settings.description.is_empty() {
            format!("Shop {} online: order for delivery, pay cash on delivery.", store.name)
        } else {
            describe(&store.settings.description, 160)
        },
        image,
        kind: "website",
    };
    let site = f.site(&state, meta).await?;
    let next = page.next_cursor.map(|c| format!("after={c}"));
    let ctx = ListPage {
        site,
        category: None,
        q: None,
        products: page.items.into_iter().map(PublicProduct::from).collect(),
        next,
    };
    f.page("home.html", ctx)
}

pub async fn category(State(state): State<AppState>, r: Resolve, Query(q): Query<ListQuery>) -> WebResult<Response> {
    let f = found!(r);
    let id = f.param("category_id").and_then(CategoryId::parse).ok_or(WebError::NotFound)?;
    let shard = state.storage.shard(&f.scope);
    let category = shard.category(&f.scope, id).await?;
    let filter = ProductFilter { status: Some(ProductStatus::Active), category: Some(id), ..Default::default() };
    let page = shard.products(&f.scope, filter, page_request(q.after.as_deref())?).await?;
    let meta = Meta {
        path: format!("/category/{id}"),
        title: format!("{} · {}", category.name, f.store.name),
        description: if category.description.is_empty() {
            format!("{} at {}", category.name, f.store.name)
        } else {
            describe(&category.description, 160)
        },
        image: page.items.iter().find_map(|p| p.images.first().cloned()),
        kind: "website",
    };
    let site = f.site(&state, meta).await?;
    let next = page.next_cursor.map(|c| format!("after={c}"));
    let ctx = ListPage {
        site,
        category: Some(category),
        q: None,
        products: page.items.into_iter().map(PublicProduct::from).collect(),
        next,
    };
    f.page("category.html", ctx)
}

#[derive(Serialize)]
struct ProductPage {
    site: Site,
    product: PublicProduct,
    /// The variant preselected in the form: the first one that can be bought.
    selected: Option<String>,
    added: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct ProductQuery {
    added: Option<String>,
}

pub async fn product(State(state): State<AppState>, r: Resolve, Query(q): Query<ProductQuery>) -> WebResult<Response> {
    let f = found!(r);
    let id = f.param("product_id").and_then(ProductId::parse).ok_or(WebError::NotFound)?;
    let p = state.storage.shard(&f.scope).product(&f.scope, id).await?;
    if p.status != ProductStatus::Active {
        return Err(WebError::NotFound);
    }
    let product = PublicProduct::from(p);
    let currency = f.store.settings.currency;
    let meta = Meta {
        path: format!("/product/{id}"),
        title: format!("{} · {}", product.title, f.store.name),
        description: if product.description.is_empty() {
            format!("{} for {} at {}", product.title, currency.display(product.price_from.minor()), f.store.name)
        } else {
            describe(&product.description, 160)
        },
        image: product.images.first().cloned(),
        kind: "product",
    };
    let site = f.site(&state, meta).await?;
    let selected = product.variants.iter().find(|v| v.available).map(|v| v.id.to_string());
    let ctx = ProductPage { site, product, selected, added: q.added.is_some() };
    f.page("product.html", ctx)
}

pub async fn search(State(state): State<AppState>, r: Resolve, Query(q): Query<ListQuery>) -> WebResult<Response> {
    let f = found!(r);
    let query =
        q.q.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(|s| s.chars().take(100).collect::<String>());
    let (products, next) = match &query {
        Some(words) => {
            let request = page_request(q.after.as_deref())?;
            // Through the node's index when it has one (relevance order, offset cursors);
            // otherwise the database's title query.
            let page = match &state.search {
                Some(search) => search.search(&f.scope, words, None, request).await?,
                None => {
                    let filter = ProductFilter {
                        status: Some(ProductStatus::Active),
                        query: Some(words.clone()),
                        ..Default::default()
                    };
                    state.storage.shard(&f.scope).products(&f.scope, filter, request).await?
                }
            };
            let next = page.next_cursor.map(|c| {
                let enc: String = form_urlencoded::byte_serialize(words.as_bytes()).collect();
                format!("q={enc}&after={c}")
            });
            (page.items.into_iter().map(PublicProduct::from).collect(), next)
        }
        None => (vec![], None),
    };
    let meta = Meta {
        path: "/search".into(),
        title: match &query {
            Some(w) => format!("“{w}” · {}", f.store.name),
            None => format!("Search · {}", f.store.name),
        },
        description: format!("Search {}", f.store.name),
        image: None,
        kind: "website",
    };
    let site = f.site(&state, meta).await?;
    let ctx = ListPage { site, category: None, q: query, products, next };
    f.page("search.html", ctx)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

/// Products listed in a sitemap, at most (the sitemap protocol allows 50,000 URLs per file).
const SITEMAP_PRODUCTS: usize = 20_000;

pub async fn sitemap(State(state): State<AppState>, r: Resolve) -> WebResult<Response> {
    let f = found!(r);
    let shard = state.storage.shard(&f.scope);
    let mut urls = vec![(f.origin.clone(), f.store.updated_at)];
    let cats = shard
        .categories(&f.scope, PageRequest { after: None, limit: Limit::parse(Some(100)).map_err(WebError::Internal)? })
        .await?;
    for c in cats.items {
        urls.push((format!("{}/category/{}", f.origin, c.id), c.updated_at));
    }
    let mut after = None;
    let mut listed = 0;
    loop {
        let filter = ProductFilter { status: Some(ProductStatus::Active), ..Default::default() };
        let page = shard
            .products(
                &f.scope,
                filter,
                PageRequest { after, limit: Limit::parse(Some(100)).map_err(WebError::Internal)? },
            )
            .await?;
        for p in &page.items {
            urls.push((format!("{}/product/{}", f.origin, p.id), p.updated_at));
        }
        listed += page.items.len();
        match page.next_cursor.and_then(|c| Cursor::parse(&c).ok()) {
            Some(c) if listed < SITEMAP_PRODUCTS => after = Some(c),
            _ => break,
        }
    }
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<urlset xmlns=\"http://www.sitemaps.org/schemas/sitemap/0.9\">\n",
    );
    for (loc, at) in urls {
        let day = at.to_rfc3339().chars().take(10).collect::<String>();
        xml.push_str(&format!("<url><loc>{}</loc><lastmod>{day}</lastmod></url>\n", xml_escape(&loc)));
    }
    xml.push_str("</urlset>\n");
    let mut res = xml.into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml; charset=utf-8"));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    Ok(res)
}

const ROBOTS: &str = "User-agent: *\nDisallow: /dashboard\nDisallow: /api/\nDisallow: /*/cart\nDisallow: /*/checkout\nDisallow: /*/order/\n";

fn text(body: String) -> Response {
    let mut res = body.into_response();
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    res
}

/// The platform's robots.txt: stores' pages are open to crawlers; carts, checkouts, orders,
/// the dashboard and the API are not.
pub async fn platform_robots() -> Response {
    text(ROBOTS.to_string())
}

/// A store's robots.txt (what its custom domain serves), pointing at its sitemap.
pub async fn store_robots(r: Resolve) -> WebResult<Response> {
    let f = found!(r);
    let rules = if f.base.is_empty() {
        "User-agent: *\nDisallow: /cart\nDisallow: /checkout\nDisallow: /order/\n".to_string()
    } else {
        ROBOTS.to_string()
    };
    Ok(text(format!("{rules}Sitemap: {}/sitemap.xml\n", f.origin)))
}
