//! The merchant dashboard at `/dashboard`: sign in by phone, run stores from the browser.

use axum::Router;
use kirana_server::AppState;

/// The dashboard's templates, compiled into the binary.
pub static TEMPLATES: &[(&str, &str)] = &[];

pub fn router() -> Router<AppState> {
    Router::new()
}
