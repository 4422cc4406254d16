//! Every route of the API, each module owning its own. They are registered only through
//! `utoipa_axum::routes!`, so a route cannot exist without its OpenAPI description, and the
//! tenant-isolation test can walk every route from `/openapi.json`.

pub mod analytics;
pub mod auth;
pub mod catalog;
pub mod coupons;
pub mod health;
pub mod media;
pub mod orders;
pub mod payments;
pub mod storefront;
pub mod stores;
pub mod webhooks;

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::error::Problem;
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kirana",
        description = "Online stores for a million merchants. Merchant endpoints take `Authorization: Bearer <token>` (from phone sign-in or an API key); shopper cart endpoints take `X-Cart-Token`. Money is integer minor units of the store's currency. Errors are application/problem+json. Lists are keyset-paginated: pass `next_cursor` back as `cursor`.",
        license(name = "Apache-2.0")
    ),
    components(schemas(Problem)),
    modifiers(&Security),
    tags(
        (name = "auth", description = "Phone sign-in, the merchant, API keys"),
        (name = "stores", description = "A merchant's stores and settings"),
        (name = "catalog", description = "Categories, products, variants and stock"),
        (name = "orders", description = "Orders and their state machine"),
        (name = "payments", description = "Online payments, refunds, the store's ledger and payouts"),
        (name = "customers", description = "Customers recorded from orders"),
        (name = "coupons", description = "Discount codes"),
        (name = "webhooks", description = "Merchant webhooks: endpoints, signed deliveries, the delivery log"),
        (name = "analytics", description = "Sales per day and best sellers, from the event pipeline"),
        (name = "storefront", description = "The shopper's API: catalog, cart, checkout, order status"),
        (name = "operations", description = "Health and readiness")
    )
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "merchant",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A session token from /api/v1/auth/verify or an API key"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "cart_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Cart-Token"))),
        );
    }
}

pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(auth::router())
        .merge(stores::router())
        .merge(catalog::router())
        .merge(orders::router())
        .merge(coupons::router())
        .merge(storefront::router())
        .merge(health::router())
        .merge(media::router())
        .merge(analytics::router())
        .merge(webhooks::router())
        .merge(payments::router())
}
