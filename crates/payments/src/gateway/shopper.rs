//! The pages a shopper sees at the test gateway: the payment page with "Pay" and "Decline",
//! and the two form posts that decide a created payment and send the shopper back to the
//! shop. No key: the payment's unguessable id is the shopper's only credential, as on a real
//! provider's hosted page.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};

use super::Shared;
use super::ledger::{LedgerError, status_str};
use crate::provider::{RemotePayment, RemoteStatus};

pub(super) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route("/pay/{id}", get(page))
        .route("/pay/{id}/authorize", post(authorize))
        .route("/pay/{id}/decline", post(decline))
}

async fn page(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let found = shared.ledger().checkout(&id);
    match found {
        Ok((payment, currency)) => Html(render(&payment, &currency)).into_response(),
        Err(_) => not_found(),
    }
}

async fn authorize(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let decided = shared.change(|l| l.authorize(&id));
    back_to_shop(&shared, decided)
}

async fn decline(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let decided = shared.change(|l| l.decline(&id));
    back_to_shop(&shared, decided)
}

/// 303 to the payment's `return_url` with `payment` and `status` added to its query.
fn back_to_shop(shared: &Shared, decided: Result<RemotePayment, LedgerError>) -> Response {
    let Ok(payment) = decided else { return not_found() };
    tracing::info!(payment = %payment.id, status = status_str(payment.status), "the shopper decided");
    let return_url = shared.ledger().return_url(&payment.id).map(str::to_owned);
    // The return URL was checked at creation; a payment without one cannot exist.
    let Some(mut url) = return_url.ok().and_then(|u| reqwest::Url::parse(&u).ok()) else { return not_found() };
    url.query_pairs_mut().append_pair("payment", &payment.id).append_pair("status", status_str(payment.status));
    (StatusCode::SEE_OTHER, [(header::LOCATION, url.to_string())]).into_response()
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Html("<!doctype html><title>Not found</title><p>No such payment.</p>")).into_response()
}

/// The amount in major units: two decimals, right for the rupee; a test page needs no more.
fn render(p: &RemotePayment, currency: &str) -> String {
    let amount = format!("{} {}.{:02}", escape(currency), p.amount / 100, (p.amount % 100).abs());
    let id = escape(&p.id);
    let body = if p.status == RemoteStatus::Created {
        format!(
            r#"<form method="post" action="/pay/{id}/authorize"><button>Pay</button></form>
<form method="post" action="/pay/{id}/decline"><button>Decline</button></form>"#
        )
    } else {
        format!("<p>This payment is {}.</p>", status_str(p.status))
    };
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Test gateway: pay {amount}</title></head>
<body><h1>Test payment gateway</h1>
<p>Order {order} at store {store}: <strong>{amount}</strong></p>
{body}
</body></html>"#,
        order = escape(&p.order_id),
        store = escape(&p.store_id),
    )
}

/// The platform's ids are data from a client: escaped before they reach HTML.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_what_the_platform_sent() {
        let p = RemotePayment {
            id: "pay_1".into(),
            reference: "r".into(),
            store_id: "<script>".into(),
            order_id: "o\"1".into(),
            status: RemoteStatus::Created,
            amount: 12_345,
            captured: 0,
            refunded: 0,
            checkout_url: String::new(),
        };
        let html = render(&p, "INR");
        assert!(!html.contains("<script>") && html.contains("&lt;script&gt;"));
        assert!(html.contains("INR 123.45"));
        assert!(html.contains(r#"action="/pay/pay_1/authorize""#));
    }
}
