//! Webhook signatures, shared by the side that signs (the test gateway) and the side that
//! verifies (the HTTP provider): one implementation, so the two cannot drift apart.
//!
//! Wire format: every webhook carries
//! `X-Kirana-Gateway-Signature: t=<unix seconds>,v1=<hex>` where `<hex>` is the lowercase hex
//! of HMAC-SHA256 keyed with the webhook secret over `"<t>.<body>"`, the body being exactly the
//! bytes sent. A receiver checks the signature over the bytes it received (before any JSON
//! parsing), in constant time, and refuses a `t` more than its window away from its own clock
//! in either direction, so a captured request cannot be replayed later. While a secret is being
//! rotated the header may carry several `v1=` entries (one per secret); one match is enough.
//! Entries of other schemes are ignored, so a future `v2=` does not break today's receivers.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::provider::WebhookError;

/// The header the signature travels in.
pub const SIGNATURE_HEADER: &str = "X-Kirana-Gateway-Signature";

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of every length (long ones are hashed first): this cannot fail.
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m
}

/// The header value for `body` sent at `timestamp` (Unix seconds): `t=<timestamp>,v1=<hex>`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    let mut out = format!("t={timestamp},v1=");
    kirana_domain::hex::push(&mut out, &tag);
    out
}

/// Checks a received webhook: `header` as received (`None` when absent), `body` the exact bytes
/// received, `now` the receiver's clock in Unix seconds, `window_secs` how far `t` may be from
/// it either way.
///
/// The age is checked before the signature: it is the cheap test, and a stale request is
/// refused whatever it carries.
pub fn verify(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now: i64,
    window_secs: i64,
) -> Result<(), WebhookError> {
    let parsed = parse(header.ok_or(WebhookError::MissingSignature)?)?;
    // `abs_diff` cannot overflow, whatever `t` an attacker writes.
    if now.abs_diff(parsed.timestamp) > window_secs.max(0).unsigned_abs() {
        return Err(WebhookError::Stale);
    }
    for candidate in parsed.v1 {
        if let Some(tag) = unhex(candidate)
            && mac(secret, parsed.timestamp, body).verify_slice(&tag).is_ok()
        {
            return Ok(());
        }
    }
    Err(WebhookError::BadSignature)
}

struct Parsed<'a> {
    timestamp: i64,
    v1: Vec<&'a str>,
}

/// Exactly one `t=` and at least one `v1=`, or the header is malformed.
fn parse(header: &str) -> Result<Parsed<'_>, WebhookError> {
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for entry in header.split(',').map(str::trim) {
        if let Some(t) = entry.strip_prefix("t=") {
            let t: i64 = t.parse().map_err(|_| WebhookError::MissingSignature)?;
            // Two timestamps would leave it to us to pick the one the signature was made with.
            if timestamp.replace(t).is_some() {
                return Err(WebhookError::MissingSignature);
            }
        } else if let Some(sig) = entry.strip_prefix("v1=") {
            v1.push(sig);
        }
    }
    match timestamp {
        Some(timestamp) if !v1.is_empty() => Ok(Parsed { timestamp, v1 }),
        _ => Err(WebhookError::MissingSignature),
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test";
    const BODY: &[u8] = br#"{"id":"evt_1","type":"payment.authorized"}"#;
    const NOW: i64 = 1_700_000_000;
    const WINDOW: i64 = 300;

    #[test]
    fn the_header_carries_the_time_and_a_lowercase_hex_hmac() {
        let header = sign(SECRET, NOW, BODY);
        let hex = header.strip_prefix("t=1700000000,v1=").expect("t then v1");
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    #[test]
    fn a_fresh_signature_over_the_same_body_verifies() {
        let header = sign(SECRET, NOW, BODY);
        assert_eq!(verify(SECRET, Some(&header), BODY, NOW, WINDOW), Ok(()));
        assert_eq!(verify(SECRET, Some(&header), BODY, NOW + WINDOW, WINDOW), Ok(()), "the window's edge");
    }

    #[test]
    fn a_tampered_body_is_refused() {
        let header = sign(SECRET, NOW, BODY);
        let tampered = br#"{"id":"evt_1","type":"payment.captured"}"#;
        assert_eq!(verify(SECRET, Some(&header), tampered, NOW, WINDOW), Err(WebhookError::BadSignature));
    }

    #[test]
    fn a_signature_made_with_another_secret_is_refused() {
        let header = sign(b"whsec_other", NOW, BODY);
        assert_eq!(verify(SECRET, Some(&header), BODY, NOW, WINDOW), Err(WebhookError::BadSignature));
    }

    #[test]
    fn a_timestamp_changed_after_signing_is_refused() {
        let header = sign(SECRET, NOW, BODY).replace("t=1700000000", "t=1700000001");
        assert_eq!(verify(SECRET, Some(&header), BODY, NOW, WINDOW), Err(WebhookError::BadSignature));
    }

    #[test]
    fn a_signature_older_than_the_window_is_stale() {
        let header = sign(SECRET, NOW - WINDOW - 1, BODY);
        assert_eq!(verify(SECRET, Some(&header), BODY, NOW, WINDOW), Err(WebhookError::Stale));
    }

    #[test]
    fn a_signature_from_the_future_beyond_the_window_is_stale() {
        let header = sign(SECRET, NOW + WINDOW + 1, BODY);
        assert_eq!(verify(SECRET, Some(&header), BODY, NOW, WINDOW), Err(WebhookError::Stale));
        let far = sign(SECRET, i64::MAX, BODY);
        assert_eq!(verify(SECRET, Some(&far), BODY, i64::MIN, WINDOW), Err(WebhookError::Stale), "no overflow");
    }

    #[test]
    fn a_missing_or_malformed_header_is_refused_as_missing() {
        let good = sign(SECRET, NOW, BODY);
        let hex = good.split_once("v1=").map(|(_, h)| h).unwrap_or_default();
        for header in [
            None,
            Some(""),
            Some("garbage"),
            Some("t=1700000000"),
            Some(&format!("v1={hex}")),
            Some(&format!("t=soon,v1={hex}")),
            Some(&format!("t=1700000000,t=1700000000,v1={hex}")),
        ] {
            assert_eq!(verify(SECRET, header, BODY, NOW, WINDOW), Err(WebhookError::MissingSignature), "{header:?}");
        }
    }

    #[test]
    fn a_v1_entry_that_is_not_hex_does_not_match() {
        for sig in ["zz", "abc", "é0", ""] {
            let header = format!("t={NOW},v1={sig}");
            assert_eq!(verify(SECRET, Some(&header), BODY, NOW, WINDOW), Err(WebhookError::BadSignature), "{sig:?}");
        }
    }

    #[test]
    fn during_a_secret_rotation_any_v1_entry_may_match() {
        let old = sign(b"whsec_old", NOW, BODY);
        let new = sign(SECRET, NOW, BODY);
        let old_hex = old.split_once("v1=").map(|(_, h)| h).unwrap_or_default();
        let new_hex = new.split_once("v1=").map(|(_, h)| h).unwrap_or_default();
        let header = format!("t={NOW}, v1={old_hex}, v2=future, v1={new_hex}");
        assert_eq!(verify(SECRET, Some(&header), BODY, NOW, WINDOW), Ok(()));
        assert_eq!(verify(b"whsec_old", Some(&header), BODY, NOW, WINDOW), Ok(()));
        assert_eq!(verify(b"whsec_third", Some(&header), BODY, NOW, WINDOW), Err(WebhookError::BadSignature));
    }
}
