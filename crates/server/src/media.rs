//! Product images: checked on upload, resized once to a few widths, stored through
//! `object_store` (local files in the embedded default), and served at content-hashed URLs that
//! never change, so browsers and CDNs may keep them for a year.
//!
//! An image's URL is `/media/<store id>/<sha256>_<W>x<H>`; its variants are `…/<width>.jpg`.
//! The original's size is in the name so pages can set `width`/`height` without a lookup.

use std::sync::Arc;

use axum::body::Bytes;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use kirana_domain::StoreId;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};

/// Widths variants are generated at (never larger than the original).
pub const IMAGE_WIDTHS: [u32; 3] = [320, 640, 1280];
/// Largest upload accepted.
pub const MAX_UPLOAD_BYTES: usize = 8 * 1024 * 1024;
/// Largest side accepted; bigger images are refused before decoding.
pub const MAX_SIDE: u32 = 8_000;

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("the file is larger than {} MiB", MAX_UPLOAD_BYTES / 1024 / 1024)]
    TooLarge,
    #[error("the file is not a JPEG, PNG or WebP image")]
    NotAnImage,
    #[error("the image could not be read: {0}")]
    Corrupt(String),
    #[error("the image is larger than {MAX_SIDE}×{MAX_SIDE} pixels")]
    TooManyPixels,
    #[error("image storage failed: {0}")]
    Storage(String),
}

/// An image as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Uploaded {
    /// Use this in a product's `images`; variants are `<url>/<width>.jpg`.
    pub url: String,
    pub hash: String,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
    /// The variant URLs that exist, smallest first.
    pub variants: Vec<String>,
}

/// Where images live.
#[derive(Clone, Debug)]
pub struct MediaStore {
    store: Arc<dyn ObjectStore>,
}

impl MediaStore {
    /// Local files under `dir` (created if missing): the embedded default.
    pub fn local(dir: &std::path::Path) -> Result<Self, MediaError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| MediaError::Storage(format!("cannot create {}: {e}", dir.display())))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| MediaError::Storage(e.to_string()))?;
        Ok(MediaStore { store: Arc::new(fs) })
    }

    /// In memory: tests.
    pub fn memory() -> Self {
        MediaStore { store: Arc::new(object_store::memory::InMemory::new()) }
    }

    /// A store named by URL: `s3://bucket/prefix` (S3 and S3-compatible stores such as MinIO or
    /// R2; `options` are object_store's keys such as `aws_endpoint`, `aws_access_key_id`,
    /// `aws_region`), `file:///dir` or `memory://`.
    pub fn from_url(raw: &str, options: impl IntoIterator<Item = (String, String)>) -> Result<Self, MediaError> {
        let url = url::Url::parse(raw).map_err(|e| MediaError::Storage(format!("media URL {raw}: {e}")))?;
        if url.scheme() == "file" {
            let dir =
                url.to_file_path().map_err(|_| MediaError::Storage(format!("media URL {raw}: not a local path")))?;
            return Self::local(&dir);
        }
        let (store, prefix) = object_store::parse_url_opts(&url, options)
            .map_err(|e| MediaError::Storage(format!("media URL {raw}: {e}")))?;
        let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
            Arc::from(store)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
        };
        Ok(MediaStore { store })
    }

    /// Any `object_store` backend.
    pub fn with(store: Arc<dyn ObjectStore>) -> Self {
        MediaStore { store }
    }

    fn key(store: StoreId, name: &str, file: &str) -> ObjectPath {
        ObjectPath::from(format!("stores/{store}/{name}/{file}"))
    }

    /// Checks, resizes and stores an upload. Idempotent: the same bytes give the same URL.
    pub async fn put_image(&self, store: StoreId, bytes: Bytes) -> Result<Uploaded, MediaError> {
        if bytes.len() > MAX_UPLOAD_BYTES {
            return Err(MediaError::TooLarge);
        }
        let hash = hex(&Sha256::digest(&bytes));
        let size = bytes.len() as u64;
        // Decoding and resizing are CPU work: keep them off the async workers.
        let (width, height, variants) = tokio::task::spawn_blocking(move || process(&bytes))
            .await
            .map_err(|e| MediaError::Corrupt(format!("processing stopped: {e}")))??;
        let name = format!("{hash}_{width}x{height}");
        let mut urls = Vec::with_capacity(variants.len());
        for (w, jpeg) in variants {
            self.store
                .put(&Self::key(store, &name, &format!("{w}.jpg")), PutPayload::from(jpeg))
                .await
                .map_err(|e| MediaError::Storage(e.to_string()))?;
            urls.push(format!("/media/{store}/{name}/{w}.jpg"));
        }
        Ok(Uploaded { url: format!("/media/{store}/{name}"), hash, width, height, bytes: size, variants: urls })
    }

    /// A stored variant's bytes; `None` when there is no such object.
    pub async fn get(&self, store: StoreId, name: &str, file: &str) -> Result<Option<Bytes>, MediaError> {
        if !valid_name(name) || !valid_file(file) {
            return Ok(None);
        }
        match self.store.get(&Self::key(store, name, file)).await {
            Ok(r) => r.bytes().await.map(Some).map_err(|e| MediaError::Storage(e.to_string())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(MediaError::Storage(e.to_string())),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    kirana_domain::hex::encode(bytes)
}

/// Encoded variants of one image: (width, JPEG bytes), smallest first.
type Variants = Vec<(u32, Vec<u8>)>;

/// The variant files an image `w` pixels wide has, by name: every standard width it reaches,
/// plus the next one up holding the original size (a 500-px photo has `320` and `640`, the
/// latter 500 px wide), so pages can always show an image at its own size. Never upscaled.
pub fn variant_widths(w: u32) -> Vec<u32> {
    let mut out: Vec<u32> = IMAGE_WIDTHS.iter().copied().filter(|t| *t <= w).collect();
    if out.last() != Some(&w)
        && let Some(next) = IMAGE_WIDTHS.iter().copied().find(|t| *t > w)
    {
        out.push(next);
    }
    out
}

/// Decodes (JPEG, PNG or WebP only, with size limits), then encodes each variant as JPEG.
fn process(bytes: &[u8]) -> Result<(u32, u32, Variants), MediaError> {
    let format = image::guess_format(bytes).map_err(|_| MediaError::NotAnImage)?;
    if !matches!(format, ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP) {
        return Err(MediaError::NotAnImage);
    }
    let mut reader = ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(512 * 1024 * 1024);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => MediaError::TooManyPixels,
        other => MediaError::Corrupt(other.to_string()),
    })?;
    let (w, h) = (img.width(), img.height());
    if w == 0 || h == 0 {
        return Err(MediaError::Corrupt("the image is empty".into()));
    }
    // Flatten transparency onto white: JPEG has no alpha.
    let rgb = DynamicImage::ImageRgb8(flatten(&img));
    let mut out = Vec::new();
    for target in variant_widths(w) {
        let resized =
            if target >= w { rgb.clone() } else { rgb.resize(target, u32::MAX, image::imageops::FilterType::Triangle) };
        let mut jpeg = Vec::new();
        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80);
        resized.write_with_encoder(enc).map_err(|e| MediaError::Corrupt(e.to_string()))?;
        out.push((target, jpeg));
    }
    Ok((w, h, out))
}

fn flatten(img: &DynamicImage) -> image::RgbImage {
    let rgba = img.to_rgba8();
    let mut rgb = image::RgbImage::new(rgba.width(), rgba.height());
    for (x, y, p) in rgba.enumerate_pixels() {
        let a = u32::from(p[3]);
        let mix = |c: u8| ((u32::from(c) * a + 255 * (255 - a)) / 255) as u8;
        rgb.put_pixel(x, y, image::Rgb([mix(p[0]), mix(p[1]), mix(p[2])]));
    }
    rgb
}

/// `<64 hex>_<W>x<H>`.
fn valid_name(name: &str) -> bool {
    let Some((hash, dims)) = name.split_once('_') else { return false };
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) && parse_dims(dims).is_some()
}

/// `<width>.jpg`.
fn valid_file(file: &str) -> bool {
    file.strip_suffix(".jpg").and_then(|w| w.parse::<u32>().ok()).is_some_and(|w| IMAGE_WIDTHS.contains(&w))
}

fn parse_dims(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once('x')?;
    Some((w.parse().ok()?, h.parse().ok()?))
}

/// The original size of an uploaded image, from its URL (`None` for any other URL).
pub fn dimensions(url: &str) -> Option<(u32, u32)> {
    let rest = url.strip_prefix("/media/")?;
    let mut parts = rest.split('/');
    let (_store, name) = (parts.next()?, parts.next()?);
    if parts.next().is_some() || !valid_name(name) {
        return None;
    }
    parse_dims(name.split_once('_')?.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_image_has_a_variant_at_its_own_size() {
        assert_eq!(variant_widths(200), vec![320]);
        assert_eq!(variant_widths(320), vec![320]);
        assert_eq!(variant_widths(500), vec![320, 640]);
        assert_eq!(variant_widths(640), vec![320, 640]);
        assert_eq!(variant_widths(900), vec![320, 640, 1280]);
        assert_eq!(variant_widths(4000), vec![320, 640, 1280]);
    }

    #[test]
    fn media_urls_name_their_backend() {
        let opts = || {
            [
                ("aws_endpoint", "http://127.0.0.1:9"),
                ("aws_region", "auto"),
                ("aws_access_key_id", "k"),
                ("aws_secret_access_key", "s"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        };
        assert!(MediaStore::from_url("s3://bucket/kirana/media", opts()).is_ok());
        assert!(MediaStore::from_url("memory://", []).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let file_url = url::Url::from_directory_path(dir.path().join("m")).unwrap();
        assert!(MediaStore::from_url(file_url.as_str(), []).is_ok());
        assert!(dir.path().join("m").is_dir(), "a local media directory is created");
        assert!(matches!(MediaStore::from_url("ftp://x/y", []), Err(MediaError::Storage(_))));
        assert!(matches!(MediaStore::from_url("not a url", []), Err(MediaError::Storage(_))));
    }

    fn png(w: u32, h: u32) -> Bytes {
        let img = image::RgbaImage::from_pixel(w, h, image::Rgba([200, 30, 30, 128]));
        let mut out = std::io::Cursor::new(Vec::new());
        DynamicImage::ImageRgba8(img).write_to(&mut out, ImageFormat::Png).unwrap();
        Bytes::from(out.into_inner())
    }

    #[tokio::test]
    async fn an_upload_is_resized_to_the_widths_below_its_own_plus_its_own_size_and_served_back() {
        let m = MediaStore::memory();
        let store = StoreId::generate();
        let up = m.put_image(store, png(900, 600)).await.unwrap();
        assert_eq!((up.width, up.height), (900, 600));
        assert_eq!(up.variants.len(), 3, "320, 640, and 1280 holding the original 900: {:?}", up.variants);
        assert_eq!(dimensions(&up.url), Some((900, 600)));
        let name = up.url.rsplit('/').next().unwrap();
        let bytes = m.get(store, name, "320.jpg").await.unwrap().unwrap();
        let small = image::load_from_memory(&bytes).unwrap();
        assert_eq!((small.width(), small.height()), (320, 213));
        let own = image::load_from_memory(&m.get(store, name, "1280.jpg").await.unwrap().unwrap()).unwrap();
        assert_eq!((own.width(), own.height()), (900, 600), "never upscaled");
        // Another store's path does not reach it.
        assert!(m.get(StoreId::generate(), name, "320.jpg").await.unwrap().is_none());
        // The same bytes give the same URL.
        assert_eq!(m.put_image(store, png(900, 600)).await.unwrap().url, up.url);
    }

    #[tokio::test]
    async fn non_images_and_oversized_ones_are_refused() {
        let m = MediaStore::memory();
        let s = StoreId::generate();
        assert!(matches!(m.put_image(s, Bytes::from_static(b"GIF89a....")).await, Err(MediaError::NotAnImage)));
        assert!(matches!(m.put_image(s, Bytes::from_static(b"<svg></svg>")).await, Err(MediaError::NotAnImage)));
        assert!(matches!(
            m.put_image(s, Bytes::from(vec![0u8; MAX_UPLOAD_BYTES + 1])).await,
            Err(MediaError::TooLarge)
        ));
        let mut truncated = png(50, 50).to_vec();
        truncated.truncate(40);
        assert!(matches!(m.put_image(s, Bytes::from(truncated)).await, Err(MediaError::Corrupt(_))));
    }

    #[test]
    fn only_well_formed_names_reach_storage() {
        assert!(!valid_name("../../etc"));
        assert!(!valid_file("320.png"));
        assert!(!valid_file("999.jpg"));
        assert_eq!(dimensions("https://cdn.example.com/a.jpg"), None);
        assert_eq!(dimensions(&format!("/media/{}/{}_10x20", StoreId::generate(), "a".repeat(64))), Some((10, 20)));
    }
}
