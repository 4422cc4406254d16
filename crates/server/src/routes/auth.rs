//! Sign-in by phone and code, the merchant's own profile, and their API keys.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use kirana_domain::merchant::{ApiKey, Merchant as MerchantView, TokenKind};
use kirana_domain::page::Page;
use kirana_domain::text;
use kirana_domain::{Invalid, Phone, Timestamp, TokenId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{hash_code, hash_token, new_code, new_token};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{Body, ClientIp, Merchant, Params, PathIds};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(request_code))
        .routes(routes!(verify_code))
        .routes(routes!(me))
        .routes(routes!(create_key, list_keys))
        .routes(routes!(revoke_key))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeRequest {
    /// E.164, or a 10-digit Indian mobile number.
    pub phone: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CodeSent {
    pub sent: bool,
    pub expires_in_secs: i64,
}

/// Sends a six-digit sign-in code to a phone. Limited per phone and per client address.
#[utoipa::path(post, path = "/api/v1/auth/otp", tag = "auth", request_body = CodeRequest,
    responses((status = 202, body = CodeSent), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn request_code(
    State(s): State<AppState>,
    ip: ClientIp,
    Body(req): Body<CodeRequest>,
) -> ApiResult<(StatusCode, Json<CodeSent>)> {
    Ok((StatusCode::ACCEPTED, Json(send_code(&s, ip, &req.phone).await?)))
}

/// Sends a sign-in code: the API's and the dashboard's one way to do it.
pub async fn send_code(s: &AppState, ip: ClientIp, phone: &str) -> ApiResult<CodeSent> {
    let phone = Phone::parse(phone).map_err(|m| Invalid::field("phone", m))?;
    if s.otp_limiter.check_key(&ip.0).is_err() {
        return Err(ApiError::RateLimited { retry_after_secs: 60 });
    }
    // Before a code is issued: one nobody can receive would only use up the phone's quota.
    if let Some(wait) = s.notifier.unavailable_for() {
        return Err(ApiError::DependencyDown {
            detail: "sign-in codes cannot be sent right now; try again shortly".into(),
            retry_after_secs: retry_secs(wait),
        });
    }
    let code = new_code();
    let now = s.clock.now();
    let policy = s.config.otp;
    s.storage.directory().otp_issue(&phone, hash_code(&s.config.otp_key, &phone, &code), now, policy).await?;
    s.notifier.send_code(&phone, &code, now.plus_secs(policy.ttl_secs)).await.map_err(|e| {
        tracing::warn!(phone = %phone.masked(), error = %e.message, "a sign-in code could not be sent");
        ApiError::DependencyDown {
            detail: "the sign-in code could not be sent; try again shortly".into(),
            retry_after_secs: e.retry_after.map_or(1, retry_secs),
        }
    })?;
    tracing::info!(phone = %phone.masked(), "sign-in code sent");
    Ok(CodeSent { sent: true, expires_in_secs: policy.ttl_secs })
}

/// Whole seconds for a `Retry-After`, at least one.
fn retry_secs(wait: std::time::Duration) -> i64 {
    wait.as_secs_f64().ceil().max(1.0) as i64
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    pub phone: String,
    pub code: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SignedIn {
    /// Send as `Authorization: Bearer <token>`. Shown once.
    pub token: String,
    pub expires_at: Option<Timestamp>,
    pub merchant: MerchantView,
    /// True when this sign-in created the merchant.
    pub new_merchant: bool,
}

/// Exchanges a sign-in code for a session token, creating the merchant on first sign-in.
#[utoipa::path(post, path = "/api/v1/auth/verify", tag = "auth", request_body = VerifyRequest,
    responses((status = 200, body = SignedIn), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn verify_code(
    State(s): State<AppState>,
    ip: ClientIp,
    Body(req): Body<VerifyRequest>,
) -> ApiResult<Json<SignedIn>> {
    Ok(Json(sign_in(&s, ip, &req.phone, &req.code).await?))
}

/// Exchanges a code for a new session: the API's and the dashboard's one way to sign in.
pub async fn sign_in(s: &AppState, ip: ClientIp, phone: &str, code: &str) -> ApiResult<SignedIn> {
    let mut c = kirana_domain::validate::Checker::new();
    let phone = c.check("phone", Phone::parse(phone));
    let code = code.trim().to_string();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        c.fail("code", "must be the 6-digit code that was sent");
    }
    c.finish()?;
    let phone = kirana_domain::validate::checked(phone);
    if s.verify_limiter.check_key(&ip.0).is_err() {
        return Err(ApiError::RateLimited { retry_after_secs: 60 });
    }
    let token = new_token("kir");
    let signed = s
        .storage
        .directory()
        .otp_sign_in(
            &phone,
            hash_code(&s.config.otp_key, &phone, &code),
            hash_token(&token),
            s.config.session_ttl_secs,
            s.clock.now(),
            s.config.otp,
        )
        .await?;
    Ok(SignedIn {
        token,
        expires_at: signed.session.expires_at,
        merchant: signed.merchant,
        new_merchant: signed.created,
    })
}

/// The signed-in merchant.
#[utoipa::path(get, path = "/api/v1/me", tag = "auth", security(("merchant" = [])),
    responses((status = 200, body = MerchantView), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn me(State(s): State<AppState>, m: Merchant) -> ApiResult<Json<MerchantView>> {
    Ok(Json(s.storage.directory().merchant(m.id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// What the key is for, e.g. "inventory sync".
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    pub key: ApiKey,
    /// The secret, shown this once.
    pub token: String,
}

/// Creates a long-lived API key.
#[utoipa::path(post, path = "/api/v1/api-keys", tag = "auth", security(("merchant" = [])), request_body = NewKey,
    responses((status = 201, body = CreatedKey), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn create_key(
    State(s): State<AppState>,
    m: Merchant,
    Body(req): Body<NewKey>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    let name = text::line(&req.name, 1, text::limits::NAME).map_err(|e| Invalid::field("name", e))?;
    let token = new_token("kir");
    let key = s
        .storage
        .directory()
        .insert_token(m.id, TokenKind::ApiKey, &name, hash_token(&token), s.clock.now(), None)
        .await?;
    Ok((StatusCode::CREATED, Json(CreatedKey { key, token })))
}

/// The merchant's live credentials (sessions and API keys), newest first.
#[utoipa::path(get, path = "/api/v1/api-keys", tag = "auth", security(("merchant" = [])),
    params(("cursor" = Option<String>, Query), ("limit" = Option<u32>, Query, maximum = 100)),
    responses((status = 200, body = Page<ApiKey>), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn list_keys(State(s): State<AppState>, m: Merchant, p: Params) -> ApiResult<Json<Page<ApiKey>>> {
    Ok(Json(s.storage.directory().tokens(m.id, p.page()?, s.clock.now()).await?))
}

/// Revokes a credential at once.
#[utoipa::path(delete, path = "/api/v1/api-keys/{key_id}", tag = "auth", security(("merchant" = [])),
    params(("key_id" = String, Path)),
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn revoke_key(State(s): State<AppState>, m: Merchant, path: PathIds) -> ApiResult<StatusCode> {
    let id = path.id("key_id", TokenId::parse)?;
    s.storage.directory().revoke_token(m.id, id, s.clock.now()).await?;
    Ok(StatusCode::NO_CONTENT)
}
