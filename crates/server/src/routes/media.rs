//! Images: a merchant uploads one (it is checked and resized), shoppers' browsers fetch its
//! variants at content-hashed URLs cached for a year.

use axum::Json;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kirana_domain::{Invalid, StoreId};
use kirana_storage::{MediaRecord, StoreScope};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{PathIds, StoreAccess};
use crate::media::{MAX_UPLOAD_BYTES, MediaError, Uploaded};
use crate::state::AppState;

/// Images one store may hold.
pub const MAX_IMAGES_PER_STORE: i64 = 20_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload))
        // Uploads may be larger than the API's usual body limit; this route alone allows it.
        .layer(DefaultBodyLimit::max(MAX_UPLOAD_BYTES + 64 * 1024))
        .merge(OpenApiRouter::new().routes(routes!(serve)))
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct UploadForm {
    /// A JPEG, PNG or WebP image, at most 8 MiB and 8000×8000 pixels.
    #[schema(format = Binary, content_media_type = "application/octet-stream")]
    file: String,
}

impl From<MediaError> for ApiError {
    fn from(e: MediaError) -> Self {
        match e {
            MediaError::TooLarge => ApiError::PayloadTooLarge,
            MediaError::Storage(m) => ApiError::Unavailable(m),
            other => ApiError::Invalid(Invalid::field("file", other.to_string())),
        }
    }
}

/// Reads the `file` part of a multipart upload, bounded.
pub async fn read_file(mut form: Multipart) -> ApiResult<axum::body::Bytes> {
    while let Some(field) = form.next_field().await.map_err(|e| ApiError::Malformed(e.body_text()))? {
        if field.name() == Some("file") {
            let bytes = field.bytes().await.map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::Malformed(e.body_text())
                }
            })?;
            if bytes.is_empty() {
                return Err(ApiError::Invalid(Invalid::field("file", "is empty")));
            }
            return Ok(bytes);
        }
    }
    Err(ApiError::Invalid(Invalid::field("file", "is required (multipart/form-data with a `file` part)")))
}

/// Stores an uploaded image for the store and records it; shared by the API and the dashboard.
pub async fn store_image(state: &AppState, scope: &StoreScope, bytes: axum::body::Bytes) -> ApiResult<Uploaded> {
    let shard = state.storage.shard(scope);
    let (count, _) = shard.media_usage(scope).await?;
    if count >= MAX_IMAGES_PER_STORE {
        return Err(ApiError::Invalid(Invalid::field(
            "file",
            format!("a store may hold at most {MAX_IMAGES_PER_STORE} images"),
        )));
    }
    let up = state.media.put_image(scope.store_id(), bytes).await?;
    let record = MediaRecord { hash: up.hash.clone(), width: up.width, height: up.height, bytes: up.bytes };
    shard.record_media(scope, record, state.clock.now()).await?;
    Ok(up)
}

/// Uploads an image. Put the returned `url` in a product's `images`.
#[utoipa::path(post, path = "/api/v1/stores/{store_id}/media", tag = "catalog", security(("merchant" = [])),
    params(("store_id" = String, Path)),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses((status = 201, body = Uploaded), (status = "4XX", body = Problem, content_type = "application/problem+json")))]
async fn upload(
    State(s): State<AppState>,
    access: StoreAccess,
    form: Multipart,
) -> ApiResult<(StatusCode, Json<Uploaded>)> {
    let bytes = read_file(form).await?;
    let up = store_image(&s, &access.scope, bytes).await?;
    Ok((StatusCode::CREATED, Json(up)))
}

/// An image variant. The URL names the content, so it is cached for a year.
#[utoipa::path(get, path = "/media/{store_id}/{name}/{file}", tag = "storefront",
    params(("store_id" = String, Path), ("name" = String, Path), ("file" = String, Path)),
    responses((status = 200, description = "JPEG image", content_type = "image/jpeg"), (status = 404, body = Problem, content_type = "application/problem+json")))]
async fn serve(State(s): State<AppState>, path: PathIds) -> ApiResult<Response> {
    let store = path.id("store_id", StoreId::parse)?;
    let (name, file) = (path.raw("name").unwrap_or(""), path.raw("file").unwrap_or(""));
    let bytes = s.media.get(store, name, file).await?.ok_or(ApiError::NotFound)?;
    let mut res = bytes.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    Ok(res)
}
