//! The directory: what is global rather than owned by a store. Merchants, their credentials and
//! sign-in codes, and the map from each store to its shard, slugs and custom domain.
//!
//! It is small and read on every request, so every lookup here is one primary-key read.

use async_trait::async_trait;
use kirana_domain::merchant::{ApiKey, Merchant, TokenKind};
use kirana_domain::page::{Page, PageRequest};
use kirana_domain::{MerchantId, Phone, Slug, StoreId, Timestamp, TokenId};

use crate::Result;
use crate::scope::{ShardId, StoreScope};

/// Where a store lives and who owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub store_id: StoreId,
    pub shard: ShardId,
    pub owner: MerchantId,
    pub slug: Slug,
    pub custom_domain: Option<String>,
    pub created_at: Timestamp,
}

impl DirEntry {
    pub fn scope(&self) -> StoreScope {
        StoreScope::new(self.store_id, self.shard, self.owner, self.slug.clone())
    }
}

/// How sign-in codes are limited.
#[derive(Debug, Clone, Copy)]
pub struct OtpPolicy {
    pub ttl_secs: i64,
    /// Wrong guesses allowed per code before it is burned.
    pub max_attempts: i64,
    /// Codes that may be sent to one phone within `window_secs`.
    pub max_sends: i64,
    pub window_secs: i64,
    /// Least time between two codes to one phone.
    pub min_interval_secs: i64,
}

impl Default for OtpPolicy {
    fn default() -> Self {
        OtpPolicy { ttl_secs: 300, max_attempts: 5, max_sends: 5, window_secs: 3600, min_interval_secs: 30 }
    }
}

/// A live credential, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credential {
    pub merchant: MerchantId,
    pub token: TokenId,
    pub last_used_at: Option<Timestamp>,
}

/// A successful sign-in: the merchant (new or returning) and the session minted for them.
#[derive(Debug, Clone)]
pub struct SignIn {
    pub merchant: Merchant,
    pub session: ApiKey,
    pub created: bool,
}

#[async_trait]
pub trait Directory: Send + Sync {
    /// Records a new sign-in code for `phone`, unless the phone has asked too often.
    async fn otp_issue(&self, phone: &Phone, code_hash: [u8; 32], now: Timestamp, policy: OtpPolicy) -> Result<()>;

    /// Checks a code; on success consumes it, creates the merchant if new and stores a session
    /// credential with `session_hash`. A wrong code counts against the code's attempts.
    async fn otp_sign_in(
        &self,
        phone: &Phone,
        code_hash: [u8; 32],
        session_hash: [u8; 32],
        session_ttl_secs: i64,
        now: Timestamp,
        policy: OtpPolicy,
    ) -> Result<SignIn>;

    /// Finds or creates the merchant with this phone (operators minting tokens).
    async fn merchant_for_phone(&self, phone: &Phone, now: Timestamp) -> Result<(Merchant, bool)>;

    async fn merchant(&self, id: MerchantId) -> Result<Merchant>;

    async fn insert_token(
        &self,
        merchant: MerchantId,
        kind: TokenKind,
        name: &str,
        hash: [u8; 32],
        now: Timestamp,
        expires_at: Option<Timestamp>,
    ) -> Result<ApiKey>;

    /// The merchant a live credential belongs to, and when it was last marked used; `None` for
    /// unknown, expired or revoked.
    async fn authenticate(&self, hash: [u8; 32], now: Timestamp) -> Result<Option<Credential>>;

    /// Records that a credential was used (callers throttle this; it is a write).
    async fn touch_token(&self, id: TokenId, now: Timestamp) -> Result<()>;

    /// The merchant's live credentials (not revoked, not expired), newest first.
    async fn tokens(&self, merchant: MerchantId, page: PageRequest, now: Timestamp) -> Result<Page<ApiKey>>;

    async fn revoke_token(&self, merchant: MerchantId, id: TokenId, now: Timestamp) -> Result<()>;

    /// Records a store's placement and its first free slug among `candidates`, tried in order.
    #[allow(clippy::too_many_arguments)]
    /// Fails with `SlugTaken` when none is free, `DomainTaken` for a claimed domain.
    async fn register_store(
        &self,
        store_id: StoreId,
        shard: ShardId,
        owner: MerchantId,
        candidates: Vec<Slug>,
        custom_domain: Option<String>,
        max_per_owner: i64,
        now: Timestamp,
    ) -> Result<DirEntry>;

    async fn entry(&self, store_id: StoreId) -> Result<Option<DirEntry>>;

    /// The store a slug names, and whether the slug is its current one (an old slug still
    /// answers, so shared links keep working after a rename).
    async fn resolve_slug(&self, slug: &str) -> Result<Option<(DirEntry, bool)>>;

    async fn resolve_domain(&self, host: &str) -> Result<Option<DirEntry>>;

    async fn owned(&self, owner: MerchantId, page: PageRequest) -> Result<Page<DirEntry>>;

    /// Changes a store's public names in one transaction: `slug` becomes its current slug (the
    /// old one stays reserved to the store); `domain` (when given) replaces its custom domain.
    /// Either both apply or, on a conflict, neither.
    async fn rename(
        &self,
        store_id: StoreId,
        slug: Option<&Slug>,
        domain: Option<Option<&str>>,
        now: Timestamp,
    ) -> Result<()>;

    /// How many stores each shard holds (operators, placement).
    async fn shard_counts(&self) -> Result<Vec<(ShardId, i64)>>;

    /// What placement weighs: stores per shard, with -1 for a shard dedicated to one store
    /// (no new store goes there).
    async fn placement_load(&self) -> Result<Vec<(ShardId, i64)>> {
        self.shard_counts().await
    }

    async fn ping(&self) -> Result<()>;
}
