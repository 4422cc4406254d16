//! Signing in and out, the merchant's stores, and a store's home page with today's numbers.

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use kirana_domain::store::StoreInput;
use kirana_domain::{Phone, Timestamp};
use kirana_server::AppState;
use kirana_server::extract::ClientIp;
use kirana_server::routes::auth as api_auth;
use kirana_storage::DashboardStats;
use serde::{Deserialize, Serialize};

use super::form::{Errors, Submitted, form_errors};
use super::{Chrome, Owned, Session, first_page, page, private, see_other, unprocessable};
use crate::cookies;
use crate::csrf::Csrf;
use crate::error::{WebError, WebResult};

#[derive(Serialize)]
struct SignInPage {
    d: Chrome,
    phone: String,
    errors: Errors,
}

pub async fn sign_in_form(session: Option<Session>, csrf: Csrf) -> WebResult<Response> {
    if session.is_some() {
        return Ok(see_other(csrf.jar, "/dashboard"));
    }
    let web = csrf.web.clone();
    let ctx = SignInPage { d: Chrome::bare(&csrf), phone: String::new(), errors: Errors::new() };
    page(&web, "dashboard/sign_in.html", ctx, csrf.jar)
}

pub async fn send_code(State(s): State<AppState>, ip: ClientIp, form: Submitted) -> WebResult<Response> {
    let web = form.csrf.web.clone();
    let raw = form.text("phone").to_string();
    match api_auth::send_code(&s, ip, &raw).await.map_err(WebError::from) {
        Ok(_) => {
            let phone = Phone::parse(&raw).map_err(WebError::BadRequest)?;
            let to = format!("/dashboard/sign-in/code?phone={}", urlencode(phone.as_str()));
            Ok(see_other(form.csrf.jar, &to))
        }
        Err(e) => {
            let errors = form_errors(e)?;
            let ctx = SignInPage { d: Chrome::bare(&form.csrf), phone: raw, errors };
            Ok(unprocessable(page(&web, "dashboard/sign_in.html", ctx, form.csrf.jar)?))
        }
    }
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[derive(Deserialize)]
pub struct CodeQuery {
    phone: Option<String>,
}

#[derive(Serialize)]
struct CodePage {
    d: Chrome,
    phone: String,
    errors: Errors,
}

pub async fn code_form(csrf: Csrf, Query(q): Query<CodeQuery>) -> WebResult<Response> {
    let web = csrf.web.clone();
    let Some(phone) = q.phone.as_deref().and_then(|p| Phone::parse(p).ok()) else {
        return Ok(see_other(csrf.jar, "/dashboard/sign-in"));
    };
    let ctx = CodePage { d: Chrome::bare(&csrf), phone: phone.as_str().to_string(), errors: Errors::new() };
    page(&web, "dashboard/code.html", ctx, csrf.jar)
}

pub async fn verify(State(s): State<AppState>, ip: ClientIp, form: Submitted) -> WebResult<Response> {
    let web = form.csrf.web.clone();
    let phone = form.text("phone").to_string();
    match api_auth::sign_in(&s, ip, &phone, form.text("code")).await.map_err(WebError::from) {
        Ok(signed) => {
            let max_age = time::Duration::seconds(s.config.session_ttl_secs);
            let cookie = cookies::build(&web, cookies::SESSION, signed.token, "/dashboard", Some(max_age));
            tracing::info!(merchant = %signed.merchant.id, "dashboard sign-in");
            Ok(see_other(form.csrf.jar.clone().add(cookie), "/dashboard"))
        }
        // A wrong or expired code is the merchant's to fix; show it beside the code.
        Err(e) => {
            let errors = form_errors(e)?;
            let ctx = CodePage { d: Chrome::bare(&form.csrf), phone, errors };
            Ok(unprocessable(page(&web, "dashboard/code.html", ctx, form.csrf.jar)?))
        }
    }
}

pub async fn sign_out(State(s): State<AppState>, session: Session, form: Submitted) -> WebResult<Response> {
    if let Err(e) = s.storage.directory().revoke_token(session.merchant.id, session.merchant.token, s.clock.now()).await
    {
        tracing::warn!(error = %e, "could not revoke a dashboard session on sign-out");
    }
    let jar = form.csrf.jar.add(cookies::removal(&session.web, cookies::SESSION, "/dashboard"));
    Ok(see_other(jar, "/dashboard/sign-in"))
}

#[derive(Serialize)]
struct StoresPage {
    d: Chrome,
    stores: Vec<kirana_domain::store::Store>,
}

/// `/dashboard`: a new merchant goes to create a store, one with a single store to its home.
pub async fn index(State(s): State<AppState>, session: Session, csrf: Csrf) -> WebResult<Response> {
    let stores = s.storage.stores_of(session.merchant.id, first_page(100)?).await?.items;
    match stores.as_slice() {
        [] => Ok(see_other(csrf.jar, "/dashboard/stores/new")),
        [one] => Ok(see_other(csrf.jar, &format!("/dashboard/stores/{}", one.id))),
        _ => page(&session.web, "dashboard/stores.html", StoresPage { d: Chrome::bare(&csrf), stores }, csrf.jar),
    }
}

#[derive(Serialize)]
struct NewStorePage {
    d: Chrome,
    values: std::collections::BTreeMap<String, String>,
    errors: Errors,
}

pub async fn new_store_form(session: Session, csrf: Csrf) -> WebResult<Response> {
    let ctx = NewStorePage { d: Chrome::bare(&csrf), values: Default::default(), errors: Errors::new() };
    page(&session.web, "dashboard/new_store.html", ctx, csrf.jar)
}

pub async fn create_store(State(s): State<AppState>, session: Session, form: Submitted) -> WebResult<Response> {
    let input =
        StoreInput { name: Some(form.text("name").to_string()), slug: form.opt("slug"), ..StoreInput::default() };
    let created = match input.into_new() {
        Ok(new) => s.storage.create_store(session.merchant.id, new, s.clock.now()).await.map_err(WebError::from),
        Err(i) => Err(WebError::Invalid(i)),
    };
    match created {
        Ok(store) => {
            tracing::info!(store_id = %store.id, slug = %store.slug, "store created from the dashboard");
            Ok(see_other(form.csrf.jar, &format!("/dashboard/stores/{}?created=1", store.id)))
        }
        Err(e) => {
            let errors = form_errors(e)?;
            let ctx = NewStorePage { d: Chrome::bare(&form.csrf), values: form.values(), errors };
            Ok(unprocessable(page(&session.web, "dashboard/new_store.html", ctx, form.csrf.jar)?))
        }
    }
}

/// Midnight in India, where kirana's merchants keep their day.
fn start_of_day(now: Timestamp) -> Timestamp {
    const IST_MS: i64 = 19_800_000;
    const DAY_MS: i64 = 86_400_000;
    let local = now.millis() + IST_MS;
    Timestamp::from_millis(local - local.rem_euclid(DAY_MS) - IST_MS)
}

#[derive(Serialize)]
struct HomePage {
    d: Chrome,
    stats: DashboardStats,
    /// The last seven days' sales from the analytics rollups, with each day's share of the best
    /// day for the bars.
    week: Vec<(kirana_domain::analytics::DaySales, u32)>,
    waiting: Vec<kirana_domain::order::Order>,
    products: usize,
    created: bool,
}

#[derive(Deserialize)]
pub struct HomeQuery {
    created: Option<String>,
}

pub async fn store_home(
    State(s): State<AppState>,
    o: Owned,
    csrf: Csrf,
    Query(q): Query<HomeQuery>,
) -> WebResult<Response> {
    let shard = s.storage.shard(&o.scope);
    let stats = shard.dashboard_stats(&o.scope, start_of_day(s.clock.now())).await?;
    let waiting = shard.orders(&o.scope, Some(kirana_domain::order::OrderStatus::Placed), first_page(10)?).await?.items;
    let products =
        shard.products(&o.scope, kirana_storage::ProductFilter::default(), first_page(1)?).await?.items.len();
    let today = kirana_domain::analytics::day_of(s.clock.now().millis());
    let days = shard.analytics(&o.scope, today - 6, today).await?.days;
    let best = days.iter().map(|d| d.revenue).max().unwrap_or(0).max(1);
    let week = days.into_iter().map(|d| (d.clone(), (d.revenue * 100 / best) as u32)).collect();
    let ctx = HomePage { d: o.chrome(&csrf, "home"), stats, week, waiting, products, created: q.created.is_some() };
    page(&o.session.web, "dashboard/home.html", ctx, csrf.jar)
}

#[derive(Serialize)]
pub struct Stats {
    orders_today: i64,
    revenue_today: i64,
    revenue_today_text: String,
    waiting: i64,
}

/// The home page's numbers, polled by its script so they refresh without a reload.
pub async fn stats(State(s): State<AppState>, o: Owned) -> WebResult<Response> {
    let st = s.storage.shard(&o.scope).dashboard_stats(&o.scope, start_of_day(s.clock.now())).await?;
    let text = crate::render::money(st.revenue_today, Some(o.store.settings.currency.code().to_string()));
    let body = Stats {
        orders_today: st.orders_today,
        revenue_today: st.revenue_today,
        revenue_today_text: text,
        waiting: st.waiting,
    };
    Ok(private(Json(body).into_response()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_day_starts_at_midnight_in_india() {
        // 2026-11-25T20:00:00Z is 01:30 on the 26th in India; that day began at 18:30Z on the 25th.
        let t = Timestamp::from_millis(1_795_636_800_000);
        assert_eq!(start_of_day(t).millis(), 1_795_636_800_000 - 90 * 60 * 1000);
    }
}
