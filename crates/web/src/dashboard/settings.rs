//! Store settings, coupons, and the theme editor (with a preview, and saving only a theme that
//! compiles and renders).

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::response::Response;
use kirana_domain::CouponId;
use kirana_domain::coupon::{Coupon, CouponInput, CouponKind};
use kirana_domain::store::{ContactInput, StoreInput};
use kirana_domain::validate::Checker;
use kirana_server::AppState;
use serde::{Deserialize, Serialize};

use super::form::{Errors, Submitted, form_errors, parse_amount, show_amount};
use super::{Chrome, Owned, first_page, page, see_other, unprocessable};
use crate::csrf::Csrf;
use crate::error::{WebError, WebResult};
use crate::theme::EDITABLE;

#[derive(Serialize)]
struct SettingsPage {
    d: Chrome,
    v: BTreeMap<String, String>,
    errors: Errors,
    saved: bool,
}

#[derive(Deserialize)]
pub struct SavedQuery {
    saved: Option<String>,
}

/// The settings form's values, from the stored store.
fn settings_values(o: &Owned) -> BTreeMap<String, String> {
    let st = &o.store;
    let s = &st.settings;
    let exp = s.currency.exponent();
    let yes = |b: bool| if b { "on".to_string() } else { String::new() };
    let c = &s.contact;
    BTreeMap::from([
        ("name".into(), st.name.clone()),
        ("slug".into(), st.slug.to_string()),
        ("description".into(), s.description.clone()),
        ("currency".into(), s.currency.code().into()),
        ("delivery_fee".into(), show_amount(s.delivery_fee.minor(), exp)),
        (
            "free_delivery_threshold".into(),
            s.free_delivery_threshold.map(|a| show_amount(a.minor(), exp)).unwrap_or_default(),
        ),
        ("tax_rate".into(), show_amount(i64::from(s.tax_rate_bps), 2)),
        ("prices_include_tax".into(), yes(s.prices_include_tax)),
        ("cod_enabled".into(), yes(s.cod_enabled)),
        ("online_payment_enabled".into(), yes(s.online_payment_enabled)),
        ("contact_phone".into(), c.phone.as_ref().map(|p| p.as_str().to_string()).unwrap_or_default()),
        ("contact_whatsapp".into(), c.whatsapp.as_ref().map(|p| p.as_str().to_string()).unwrap_or_default()),
        ("contact_email".into(), c.email.clone().unwrap_or_default()),
        ("contact_address".into(), c.address.clone().unwrap_or_default()),
        ("logo_url".into(), s.logo_url.clone().unwrap_or_default()),
        ("custom_domain".into(), st.custom_domain.clone().unwrap_or_default()),
    ])
}

pub async fn form(o: Owned, csrf: Csrf, Query(q): Query<SavedQuery>) -> WebResult<Response> {
    let ctx = SettingsPage {
        d: o.chrome(&csrf, "settings"),
        v: settings_values(&o),
        errors: Errors::new(),
        saved: q.saved.is_some(),
    };
    page(&o.session.web, "dashboard/settings.html", ctx, csrf.jar)
}

/// Form field names that differ from the API's.
fn api_field(name: &str) -> String {
    match name {
        "tax_rate_bps" => "tax_rate".into(),
        n if n.starts_with("contact.") => n.replacen('.', "_", 1),
        n => n.into(),
    }
}

fn store_input(form: &Submitted, exp: u8, logo: Option<String>) -> Result<StoreInput, kirana_domain::Invalid> {
    let mut c = Checker::new();
    let delivery_fee = c.check(
        "delivery_fee",
        parse_amount(if form.text("delivery_fee").is_empty() { "0" } else { form.text("delivery_fee") }, exp),
    );
    let threshold = match form.opt("free_delivery_threshold") {
        None => Some(None),
        Some(raw) => c.check("free_delivery_threshold", parse_amount(&raw, exp)).map(Some),
    };
    let tax = c
        .check("tax_rate", parse_amount(if form.text("tax_rate").is_empty() { "0" } else { form.text("tax_rate") }, 2));
    c.finish()?;
    Ok(StoreInput {
        name: Some(form.text("name").to_string()),
        slug: Some(form.text("slug").to_ascii_lowercase()),
        description: Some(form.raw("description").unwrap_or_default().to_string()),
        currency: None,
        delivery_fee,
        free_delivery_threshold: threshold,
        tax_rate_bps: tax,
        prices_include_tax: Some(form.ticked("prices_include_tax")),
        cod_enabled: Some(form.ticked("cod_enabled")),
        online_payment_enabled: Some(form.ticked("online_payment_enabled")),
        contact: Some(ContactInput {
            phone: form.opt("contact_phone"),
            whatsapp: form.opt("contact_whatsapp"),
            email: form.opt("contact_email"),
            address: form.opt("contact_address"),
        }),
        logo_url: Some(logo),
        theme: None,
        custom_domain: Some(form.opt("custom_domain").map(|d| d.to_ascii_lowercase())),
    })
}

pub async fn save(State(s): State<AppState>, o: Owned, form: Submitted) -> WebResult<Response> {
    let result = async {
        let logo = match form.file.clone() {
            Some(bytes) => Some(kirana_server::routes::media::store_image(&s, &o.scope, bytes).await?.url),
            None if form.ticked("remove_logo") => None,
            None => form.opt("logo_url"),
        };
        let input = store_input(&form, o.store.settings.currency.exponent(), logo)?;
        let change = input.into_change()?;
        Ok::<_, WebError>(s.storage.update_store(&o.scope, change, s.clock.now()).await?)
    }
    .await;
    match result {
        Ok(_) => Ok(see_other(form.csrf.jar, &format!("{}/settings?saved=1", o.base()))),
        Err(e) => {
            let errors = form_errors(e)?.into_iter().map(|(k, v)| (api_field(&k), v)).collect();
            let mut v = form.values();
            v.entry("currency".into()).or_insert_with(|| o.store.settings.currency.code().into());
            let ctx = SettingsPage { d: o.chrome(&form.csrf, "settings"), v, errors, saved: false };
            Ok(unprocessable(page(&o.session.web, "dashboard/settings.html", ctx, form.csrf.jar)?))
        }
    }
}

#[derive(Serialize)]
struct CouponsPage {
    d: Chrome,
    coupons: Vec<Coupon>,
    v: BTreeMap<String, String>,
    errors: Errors,
}

async fn render_coupons(
    s: &AppState,
    o: &Owned,
    csrf: Csrf,
    v: BTreeMap<String, String>,
    errors: Errors,
) -> WebResult<Response> {
    let coupons = s.storage.shard(&o.scope).coupons(&o.scope, first_page(100)?).await?.items;
    let failed = !errors.is_empty();
    let res = page(
        &o.session.web,
        "dashboard/coupons.html",
        CouponsPage { d: o.chrome(&csrf, "coupons"), coupons, v, errors },
        csrf.jar,
    )?;
    Ok(if failed { unprocessable(res) } else { res })
}

pub async fn coupons(State(s): State<AppState>, o: Owned, csrf: Csrf) -> WebResult<Response> {
    render_coupons(&s, &o, csrf, BTreeMap::new(), Errors::new()).await
}

/// A date from a date input, as the end of that day in India (a coupon "valid until" a date
/// is valid all that day).
fn end_of_day(date: &str) -> Result<String, String> {
    let ok = date.len() == 10 && date.as_bytes()[4] == b'-' && date.as_bytes()[7] == b'-';
    if !ok {
        return Err("must be a date such as 2026-12-31".into());
    }
    Ok(format!("{date}T23:59:59+05:30"))
}

fn coupon_input(form: &Submitted, exp: u8) -> Result<CouponInput, kirana_domain::Invalid> {
    let mut c = Checker::new();
    let kind = match form.text("kind") {
        "percent" => Some(CouponKind::Percent),
        "flat" => Some(CouponKind::Flat),
        _ => {
            c.fail("kind", "choose percent or flat");
            None
        }
    };
    let value = match kind {
        Some(CouponKind::Flat) => c.check("value", parse_amount(form.text("value"), exp)),
        _ => c.check(
            "value",
            form.text("value").parse::<i64>().map_err(|_| "must be a whole percentage, 1 to 100".to_string()),
        ),
    };
    let money = |c: &mut Checker, name: &str| match form.opt(name) {
        None => Some(None),
        Some(raw) => c.check(name.to_string(), parse_amount(&raw, exp)).map(Some),
    };
    let max_discount = money(&mut c, "max_discount");
    let min_order = money(&mut c, "min_order");
    let usage_limit = match form.opt("usage_limit") {
        None => Some(None),
        Some(raw) => {
            c.check("usage_limit", raw.parse::<i64>().map_err(|_| "must be a whole number".to_string())).map(Some)
        }
    };
    let expires_at = match form.opt("expires_at") {
        None => Some(None),
        Some(raw) => c.check("expires_at", end_of_day(&raw)).map(Some),
    };
    c.finish()?;
    Ok(CouponInput {
        code: Some(form.text("code").to_string()),
        kind,
        value,
        max_discount: max_discount.flatten().map(Some),
        min_order: min_order.flatten(),
        usage_limit,
        starts_at: None,
        expires_at,
        active: Some(true),
    })
}

pub async fn create_coupon(State(s): State<AppState>, o: Owned, form: Submitted) -> WebResult<Response> {
    let made = async {
        let change = coupon_input(&form, o.store.settings.currency.exponent())?.into_change(true)?;
        Ok::<_, WebError>(s.storage.shard(&o.scope).create_coupon(&o.scope, change, s.clock.now()).await?)
    }
    .await;
    match made {
        Ok(_) => Ok(see_other(form.csrf.jar, &format!("{}/coupons", o.base()))),
        Err(e) => {
            let errors = form_errors(e)?;
            let v = form.values();
            render_coupons(&s, &o, form.csrf, v, errors).await
        }
    }
}

pub async fn toggle_coupon(State(s): State<AppState>, o: Owned, form: Submitted) -> WebResult<Response> {
    let id = o.id("coupon_id", CouponId::parse)?;
    let input = CouponInput { active: Some(form.text("active") == "true"), ..CouponInput::default() };
    let change = input.into_change(false)?;
    s.storage.shard(&o.scope).update_coupon(&o.scope, id, change, s.clock.now()).await?;
    Ok(see_other(form.csrf.jar, &format!("{}/coupons", o.base())))
}

#[derive(Deserialize)]
pub struct ThemeQuery {
    t: Option<String>,
    saved: Option<String>,
}

#[derive(Serialize)]
struct ThemePage {
    d: Chrome,
    templates: &'static [&'static str],
    name: String,
    source: String,
    customised: Vec<String>,
    error: Option<String>,
    preview: Option<String>,
    saved: bool,
}

fn editable(name: Option<&str>) -> &'static str {
    name.and_then(|n| EDITABLE.iter().find(|e| **e == n)).copied().unwrap_or("product.html")
}

/// The built-in source of a storefront template, to start editing from.
fn default_source(name: &str) -> String {
    let full = format!("storefront/{name}");
    crate::theme::DEFAULT_THEME.iter().find(|(n, _)| *n == full).map(|(_, s)| s.to_string()).unwrap_or_default()
}

pub async fn theme(
    State(s): State<AppState>,
    o: Owned,
    csrf: Csrf,
    Query(q): Query<ThemeQuery>,
) -> WebResult<Response> {
    let name = editable(q.t.as_deref());
    let overrides = s.storage.shard(&o.scope).theme_templates(&o.scope).await?;
    let source =
        overrides.iter().find(|(n, _)| n == name).map(|(_, src)| src.clone()).unwrap_or_else(|| default_source(name));
    let ctx = ThemePage {
        d: o.chrome(&csrf, "theme"),
        templates: EDITABLE,
        name: name.to_string(),
        source,
        customised: overrides.into_iter().map(|(n, _)| n).collect(),
        error: None,
        preview: None,
        saved: q.saved.is_some(),
    };
    page(&o.session.web, "dashboard/theme.html", ctx, csrf.jar)
}

/// Previews, saves or resets one template. A theme is saved only when every page renders the
/// sample pages within the sandbox's limits; otherwise the merchant sees the line and reason,
/// and the storefront keeps the last good version.
pub async fn save_theme(State(s): State<AppState>, o: Owned, form: Submitted) -> WebResult<Response> {
    let name = EDITABLE
        .iter()
        .copied()
        .find(|e| *e == form.text("name"))
        .ok_or_else(|| WebError::BadRequest(format!("a theme has these templates: {}", EDITABLE.join(", "))))?;
    let shard = s.storage.shard(&o.scope);
    let action = form.text("action");
    if action == "reset" {
        shard.set_theme_template(&o.scope, name, None, s.clock.now()).await?;
        return Ok(see_other(form.csrf.jar, &format!("{}/theme?t={name}&saved=1", o.base())));
    }
    // Browsers send textarea line breaks as CRLF; templates keep the merchant's lines as typed.
    let source = form.raw("source").unwrap_or_default().replace("\r\n", "\n");
    let mut overrides = shard.theme_templates(&o.scope).await?;
    overrides.retain(|(n, _)| n != name);
    overrides.push((name.to_string(), source.clone()));
    let samples = crate::storefront::sample_contexts(&o.store);
    let web = o.session.web.clone();
    let checked = web.themes.validate(&overrides, &samples);
    if checked.is_ok() && action == "save" {
        shard.set_theme_template(&o.scope, name, Some(source), s.clock.now()).await?;
        tracing::info!(store_id = %o.store.id, template = name, "theme template saved");
        return Ok(see_other(form.csrf.jar, &format!("{}/theme?t={name}&saved=1", o.base())));
    }
    // The preview shows the edited page (a layout change shows on the product page).
    let shown = if name == "layout.html" { "product.html" } else { name };
    let preview = match &checked {
        Ok(()) => samples
            .iter()
            .find(|(n, _)| *n == shown)
            .map(|(_, ctx)| web.themes.preview(&overrides, shown, ctx))
            .transpose()
            .map_err(WebError::Template)?,
        Err(_) => None,
    };
    let error = checked.err();
    let failed = error.is_some();
    let ctx = ThemePage {
        d: o.chrome(&form.csrf, "theme"),
        templates: EDITABLE,
        name: name.to_string(),
        source,
        customised: overrides.iter().map(|(n, _)| n.clone()).collect(),
        error,
        preview,
        saved: false,
    };
    let res = page(&web, "dashboard/theme.html", ctx, form.csrf.jar)?;
    Ok(if failed { unprocessable(res) } else { res })
}
