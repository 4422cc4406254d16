//! Secrets: bearer tokens, cart tokens and sign-in codes, and how codes reach merchants.
//!
//! Every secret is random, shown once, and stored only as a hash: tokens (32 random bytes) as
//! SHA-256, sign-in codes (6 digits, so guessable offline) as HMAC-SHA256 under a server key.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use kirana_domain::{Phone, Timestamp};
use rand::Rng;
use sha2::{Digest, Sha256};

/// A new secret token, e.g. `kir_…` for merchants, `cart_…` for carts.
pub fn new_token(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("{prefix}_{}", URL_SAFE_NO_PAD.encode(bytes))
}

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A six-digit sign-in code.
pub fn new_code() -> String {
    format!("{:06}", rand::rng().random_range(0..1_000_000u32))
}

/// The stored form of a code: keyed, so a copy of the database cannot be brute-forced offline.
pub fn hash_code(key: &[u8; 32], phone: &Phone, code: &str) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(phone.as_str().as_bytes());
    mac.update(b":");
    mac.update(code.trim().as_bytes());
    mac.finalize().into_bytes().into()
}

/// Reads the server's secret key from `path`, creating it (32 random bytes, hex) on first use.
/// Every node of one deployment must share it; set it in configuration at scale.
pub fn load_or_create_key(path: &std::path::Path) -> std::io::Result<[u8; 32]> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_key(text.trim()).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} must hold 64 hex digits", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::rng().random();
            let hex = kirana_domain::hex::encode(&key);
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(path)?;
            writeln!(f, "{hex}")?;
            f.sync_all()?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

/// Parses 64 hex digits into a key.
pub fn parse_key(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        key[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(key)
}

/// Delivers sign-in codes. An SMS gateway at scale; the log and a file in the embedded default.
#[async_trait::async_trait]
pub trait Notifier: Send + Sync + 'static {
    async fn send_code(&self, phone: &Phone, code: &str, expires_at: Timestamp) -> Result<(), SendFailure>;

    /// How long codes are known to be undeliverable (the provider's breaker is open): sign-in
    /// then answers 503 at once instead of issuing a code nobody can receive.
    fn unavailable_for(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Why a code was not sent, and when to try again if that is known.
#[derive(Debug, Clone)]
pub struct SendFailure {
    pub message: String,
    pub retry_after: Option<std::time::Duration>,
}

impl From<String> for SendFailure {
    fn from(message: String) -> Self {
        SendFailure { message, retry_after: None }
    }
}

/// Codes by SMS through the configured provider, each with a key of its own.
#[async_trait::async_trait]
impl Notifier for kirana_events::sms::HttpSms {
    async fn send_code(&self, phone: &Phone, code: &str, _expires_at: Timestamp) -> Result<(), SendFailure> {
        let message = format!("{code} is your kirana sign-in code. Do not share it with anyone.");
        let key = new_token("otp");
        self.send(phone, &message, &key).await.map_err(|e| match e {
            kirana_events::sms::SmsError::Unavailable { message, retry_after } => SendFailure { message, retry_after },
            rejected => SendFailure { message: rejected.to_string(), retry_after: None },
        })
    }

    fn unavailable_for(&self) -> Option<std::time::Duration> {
        kirana_events::sms::HttpSms::unavailable_for(self)
    }
}

/// The embedded default: appends each code as a JSON line to `<data-dir>/dev-outbox.jsonl`, so
/// a developer can sign in without an SMS provider. The log only says where to look: a code in
/// the log would be a credential in every log shipper downstream.
pub struct DevOutbox {
    path: PathBuf,
    lock: Mutex<()>,
}

impl DevOutbox {
    pub fn new(path: PathBuf) -> Self {
        DevOutbox { path, lock: Mutex::new(()) }
    }
}

#[async_trait::async_trait]
impl Notifier for DevOutbox {
    async fn send_code(&self, phone: &Phone, code: &str, expires_at: Timestamp) -> Result<(), SendFailure> {
        tracing::info!(
            outbox = %self.path.display(),
            "a sign-in code was written to the dev outbox (configure an SMS provider for production)"
        );
        let line = serde_json::json!({
            "kind": "otp",
            "phone": phone.as_str(),
            "code": code,
            "expires_at": expires_at,
        });
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| format!("cannot open {}: {e}", self.path.display()))?;
        Ok(writeln!(f, "{line}").map_err(|e| format!("cannot write {}: {e}", self.path.display()))?)
    }
}

/// Notifications from the event pipeline go to the same development outbox as codes.
#[async_trait::async_trait]
impl kirana_events::notify::Messenger for DevOutbox {
    async fn send(&self, to: &Phone, message: &str, key: &str) -> Result<(), String> {
        tracing::info!(phone = %to.masked(), key, "message (dev outbox; configure an SMS provider for production)");
        let line = serde_json::json!({ "kind": "message", "phone": to.as_str(), "message": message, "key": key });
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| format!("cannot open {}: {e}", self.path.display()))?;
        writeln!(f, "{line}").map_err(|e| format!("cannot write {}: {e}", self.path.display()))
    }
}

/// Keeps codes and messages in memory: for tests, which read what a phone would have received.
#[derive(Default)]
pub struct MemoryNotifier {
    sent: Mutex<Vec<(String, String)>>,
    messages: Mutex<Vec<(String, String)>>,
}

#[async_trait::async_trait]
impl kirana_events::notify::Messenger for MemoryNotifier {
    async fn send(&self, to: &Phone, message: &str, _key: &str) -> Result<(), String> {
        self.messages.lock().unwrap_or_else(|p| p.into_inner()).push((to.as_str().to_string(), message.to_string()));
        Ok(())
    }
}

impl MemoryNotifier {
    /// Messages sent to `phone`, oldest first.
    pub fn messages_to(&self, phone: &str) -> Vec<String> {
        let sent = self.messages.lock().unwrap_or_else(|p| p.into_inner());
        sent.iter().filter(|(p, _)| p == phone).map(|(_, m)| m.clone()).collect()
    }

    /// The last code sent to `phone`.
    pub fn last_code(&self, phone: &str) -> Option<String> {
        let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.iter().rev().find(|(p, _)| p == phone).map(|(_, c)| c.clone())
    }
}

#[async_trait::async_trait]
impl Notifier for MemoryNotifier {
    async fn send_code(&self, phone: &Phone, code: &str, _: Timestamp) -> Result<(), SendFailure> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).push((phone.as_str().to_string(), code.to_string()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_created_once_and_read_back() {
        let dir = std::env::temp_dir().join(format!("kirana-key-{}", new_token("t")));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret.key");
        let a = load_or_create_key(&path).unwrap();
        let b = load_or_create_key(&path).unwrap();
        assert_eq!(a, b);
        std::fs::write(&path, "nothex").unwrap();
        assert!(load_or_create_key(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tokens_are_unique_and_hash_stably() {
        let a = new_token("kir");
        let b = new_token("kir");
        assert_ne!(a, b);
        assert!(a.starts_with("kir_") && a.len() > 40);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
    }

    #[test]
    fn codes_are_six_digits_and_their_hash_depends_on_key_and_phone() {
        let code = new_code();
        assert_eq!(code.len(), 6);
        assert!(code.bytes().all(|b| b.is_ascii_digit()));
        let p1 = Phone::parse("+919876543210").unwrap();
        let p2 = Phone::parse("+919876543211").unwrap();
        let k1 = [1u8; 32];
        let k2 = [2u8; 32];
        assert_eq!(hash_code(&k1, &p1, "123456"), hash_code(&k1, &p1, " 123456 "));
        assert_ne!(hash_code(&k1, &p1, "123456"), hash_code(&k2, &p1, "123456"));
        assert_ne!(hash_code(&k1, &p1, "123456"), hash_code(&k1, &p2, "123456"));
    }
}
