//! What is cached: bytes (rendered HTML or JSON) with their content type and an ETag, and how long
//! they stay fresh and then servable-but-stale. Also the layout an entry has in Redis.
//!
//! Freshness is on tokio time (`tokio::time::Instant`), so tests pause and advance the clock. In
//! Redis no instant is stored at all: only the length of the stale window, and Redis's own `PTTL`
//! says how much of the horizon is left. Nodes therefore never compare clocks.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// A cached body and the little that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub body: Bytes,
    pub content_type: String,
    /// A strong validator for `If-None-Match`, derived from the body, so every node that holds the
    /// same bytes answers with the same ETag.
    pub etag: String,
}

impl Value {
    pub fn new(content_type: impl Into<String>, body: impl Into<Bytes>) -> Self {
        let body = body.into();
        let digest = Sha256::digest(&body);
        let hex = kirana_domain::hex::encode(&digest[..8]);
        Self { body, content_type: content_type.into(), etag: format!("\"{hex}\"") }
    }

    /// Bytes this value holds, for the L1 size bound.
    pub(crate) fn weight(&self) -> usize {
        self.body.len() + self.content_type.len() + self.etag.len()
    }
}

/// How long a loaded value is served: `fresh` as is, then `stale` more while a refresh runs or
/// while the loader (the database) fails. After `fresh + stale` it is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl {
    pub fresh: Duration,
    pub stale: Duration,
}

impl Ttl {
    pub const fn new(fresh: Duration, stale: Duration) -> Self {
        Self { fresh, stale }
    }
}

/// A value with its horizons, as both levels hold it.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub value: Arc<Value>,
    pub fresh_until: Instant,
    pub stale_until: Instant,
    /// When the last refresh of this (stale) entry failed: later stale serves are counted as
    /// `loader_error`, and the next refresh waits `Config::refresh_retry` so a down database is
    /// not asked once per request.
    pub refresh_failed_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    Fresh,
    Stale,
    Expired,
}

impl Stored {
    pub fn new(value: Arc<Value>, ttl: Ttl, now: Instant) -> Self {
        let fresh_until = now + ttl.fresh;
        Self { value, fresh_until, stale_until: fresh_until + ttl.stale, refresh_failed_at: None }
    }

    pub fn freshness(&self, now: Instant) -> Freshness {
        if now < self.fresh_until {
            Freshness::Fresh
        } else if now < self.stale_until {
            Freshness::Stale
        } else {
            Freshness::Expired
        }
    }

    /// Serialises for Redis. The key's `PX` is the time left to `stale_until`; the entry itself
    /// carries the stale window's length, so a reader computes what is left of freshness as
    /// `PTTL - stale window`.
    pub fn encode(&self, now: Instant) -> Option<(Vec<u8>, u64)> {
        let horizon = self.stale_until.checked_duration_since(now)?;
        let horizon_ms = u64::try_from(horizon.as_millis()).ok().filter(|ms| *ms > 0)?;
        let window_ms = u64::try_from((self.stale_until - self.fresh_until).as_millis()).unwrap_or(u64::MAX);
        let v = &self.value;
        let ct = v.content_type.as_bytes();
        let etag = v.etag.as_bytes();
        let mut buf = BytesMut::with_capacity(MAGIC.len() + 8 + 4 + ct.len() + etag.len() + v.body.len());
        buf.put_slice(MAGIC);
        buf.put_u64(window_ms);
        buf.put_u16(u16::try_from(ct.len()).ok()?);
        buf.put_slice(ct);
        buf.put_u16(u16::try_from(etag.len()).ok()?);
        buf.put_slice(etag);
        buf.put_slice(&v.body);
        Some((buf.to_vec(), horizon_ms))
    }

    /// The inverse of [`Stored::encode`], given Redis's `PTTL` for the key. `None` for anything
    /// malformed, or a key without a positive TTL: such an entry is treated as a miss.
    pub fn decode(bytes: Vec<u8>, pttl_ms: i64, now: Instant) -> Option<Self> {
        let pttl = Duration::from_millis(u64::try_from(pttl_ms).ok().filter(|ms| *ms > 0)?);
        let mut b = Bytes::from(bytes);
        if b.len() < MAGIC.len() + 8 + 2 || &b[..MAGIC.len()] != MAGIC {
            return None;
        }
        b.advance(MAGIC.len());
        let window = Duration::from_millis(b.get_u64());
        let ct = take_str(&mut b)?;
        let etag = take_str(&mut b)?;
        let value = Value { body: b, content_type: ct, etag };
        let stale_until = now + pttl;
        let fresh_until = now + pttl.saturating_sub(window);
        Some(Self { value: Arc::new(value), fresh_until, stale_until, refresh_failed_at: None })
    }
}

const MAGIC: &[u8] = b"kc1";

fn take_str(b: &mut Bytes) -> Option<String> {
    if b.remaining() < 2 {
        return None;
    }
    let len = usize::from(b.get_u16());
    if b.remaining() < len {
        return None;
    }
    String::from_utf8(b.split_to(len).to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_entry_is_fresh_then_stale_then_expired() {
        let now = Instant::now();
        let s = Stored::new(
            Arc::new(Value::new("text/html", "hi")),
            Ttl::new(Duration::from_secs(10), Duration::from_secs(20)),
            now,
        );
        assert_eq!(s.freshness(now), Freshness::Fresh);
        assert_eq!(s.freshness(now + Duration::from_secs(10)), Freshness::Stale);
        assert_eq!(s.freshness(now + Duration::from_secs(29)), Freshness::Stale);
        assert_eq!(s.freshness(now + Duration::from_secs(30)), Freshness::Expired);
    }

    #[tokio::test(start_paused = true)]
    async fn the_redis_layout_round_trips_with_the_ttl_redis_reports() {
        let now = Instant::now();
        let s = Stored::new(
            Arc::new(Value::new("application/json", "{\"a\":1}")),
            Ttl::new(Duration::from_secs(10), Duration::from_secs(20)),
            now,
        );
        let (bytes, px) = s.encode(now).unwrap();
        assert_eq!(px, 30_000);
        // Read 4 s later on another node: Redis reports 26 s left, so 6 s of freshness remain.
        let later = now + Duration::from_secs(4);
        let back = Stored::decode(bytes.clone(), 26_000, later).unwrap();
        assert_eq!(back.value, s.value);
        assert_eq!(back.fresh_until, later + Duration::from_secs(6));
        assert_eq!(back.stale_until, later + Duration::from_secs(26));
        // Past freshness, the entry arrives stale.
        let back = Stored::decode(bytes.clone(), 5_000, later).unwrap();
        assert_eq!(back.freshness(later), Freshness::Stale);
        // No TTL (or a vanished key) and garbage are misses.
        assert!(Stored::decode(bytes.clone(), -1, later).is_none());
        assert!(Stored::decode(bytes, -2, later).is_none());
        assert!(Stored::decode(b"kc1\0".to_vec(), 1000, later).is_none());
    }

    #[test]
    fn the_same_bytes_get_the_same_etag() {
        assert_eq!(Value::new("text/html", "a").etag, Value::new("text/plain", "a").etag);
        assert_ne!(Value::new("text/html", "a").etag, Value::new("text/html", "b").etag);
    }
}
