//! A deadline on every call the application makes to the control database (the directory).
//!
//! Its pool bounds getting a connection, not using one: a control database that stops
//! answering on a connection already open (a partition, a blackholed link) would leave sign-in,
//! store creation and every uncached slug lookup waiting for TCP to give up, many minutes. Past
//! the deadline the caller gets `Unavailable` (503 + `Retry-After`), and the server's layers
//! that remember slugs, domains and pages serve on from what they last saw.
//!
//! Operators' tools (moves, `kirana doctor`) use the directory without this bound: their
//! transactions may legitimately be long.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kirana_domain::merchant::{ApiKey, Merchant, TokenKind};
use kirana_domain::page::{Page, PageRequest};
use kirana_domain::{MerchantId, Phone, Slug, StoreId, Timestamp, TokenId};

use crate::directory::{Credential, DirEntry, Directory, OtpPolicy, SignIn};
use crate::scope::ShardId;
use crate::{Result, StorageError};

/// A directory whose every call ends within `deadline`.
pub struct Bounded {
    inner: Arc<dyn Directory>,
    deadline: Duration,
}

impl Bounded {
    pub fn new(inner: Arc<dyn Directory>, deadline: Duration) -> Self {
        Bounded { inner, deadline }
    }

    async fn run<T>(&self, what: &str, call: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.deadline, call).await {
            Ok(r) => r,
            Err(_) => Err(StorageError::Unavailable(format!(
                "the control database did not answer {what} within {:?}",
                self.deadline
            ))),
        }
    }
}

#[async_trait]
impl Directory for Bounded {
    async fn otp_issue(&self, phone: &Phone, code_hash: [u8; 32], now: Timestamp, policy: OtpPolicy) -> Result<()> {
        self.run("otp_issue", self.inner.otp_issue(phone, code_hash, now, policy)).await
    }

    async fn otp_sign_in(
        &self,
        phone: &Phone,
        code_hash: [u8; 32],
        session_hash: [u8; 32],
        session_ttl_secs: i64,
        now: Timestamp,
        policy: OtpPolicy,
    ) -> Result<SignIn> {
        let call = self.inner.otp_sign_in(phone, code_hash, session_hash, session_ttl_secs, now, policy);
        self.run("otp_sign_in", call).await
    }

    async fn merchant_for_phone(&self, phone: &Phone, now: Timestamp) -> Result<(Merchant, bool)> {
        self.run("merchant_for_phone", self.inner.merchant_for_phone(phone, now)).await
    }

    async fn merchant(&self, id: MerchantId) -> Result<Merchant> {
        self.run("merchant", self.inner.merchant(id)).await
    }

    async fn insert_token(
        &self,
        merchant: MerchantId,
        kind: TokenKind,
        name: &str,
        hash: [u8; 32],
        now: Timestamp,
        expires_at: Option<Timestamp>,
    ) -> Result<ApiKey> {
        self.run("insert_token", self.inner.insert_token(merchant, kind, name, hash, now, expires_at)).await
    }

    async fn authenticate(&self, hash: [u8; 32], now: Timestamp) -> Result<Option<Credential>> {
        self.run("authenticate", self.inner.authenticate(hash, now)).await
    }

    async fn touch_token(&self, id: TokenId, now: Timestamp) -> Result<()> {
        self.run("touch_token", self.inner.touch_token(id, now)).await
    }

    async fn tokens(&self, merchant: MerchantId, page: PageRequest, now: Timestamp) -> Result<Page<ApiKey>> {
        self.run("tokens", self.inner.tokens(merchant, page, now)).await
    }

    async fn revoke_token(&self, merchant: MerchantId, id: TokenId, now: Timestamp) -> Result<()> {
        self.run("revoke_token", self.inner.revoke_token(merchant, id, now)).await
    }

    async fn register_store(
        &self,
        store_id: StoreId,
        shard: ShardId,
        owner: MerchantId,
        candidates: Vec<Slug>,
        custom_domain: Option<String>,
        max_per_owner: i64,
        now: Timestamp,
    ) -> Result<DirEntry> {
        let call = self.inner.register_store(store_id, shard, owner, candidates, custom_domain, max_per_owner, now);
        self.run("register_store", call).await
    }

    async fn entry(&self, store_id: StoreId) -> Result<Option<DirEntry>> {
        self.run("entry", self.inner.entry(store_id)).await
    }

    async fn resolve_slug(&self, slug: &str) -> Result<Option<(DirEntry, bool)>> {
        self.run("resolve_slug", self.inner.resolve_slug(slug)).await
    }

    async fn resolve_domain(&self, host: &str) -> Result<Option<DirEntry>> {
        self.run("resolve_domain", self.inner.resolve_domain(host)).await
    }

    async fn owned(&self, owner: MerchantId, page: PageRequest) -> Result<Page<DirEntry>> {
        self.run("owned", self.inner.owned(owner, page)).await
    }

    async fn rename(
        &self,
        store_id: StoreId,
        slug: Option<&Slug>,
        domain: Option<Option<&str>>,
        now: Timestamp,
    ) -> Result<()> {
        self.run("rename", self.inner.rename(store_id, slug, domain, now)).await
    }

    async fn shard_counts(&self) -> Result<Vec<(ShardId, i64)>> {
        self.run("shard_counts", self.inner.shard_counts()).await
    }

    async fn placement_load(&self) -> Result<Vec<(ShardId, i64)>> {
        self.run("placement_load", self.inner.placement_load()).await
    }

    async fn ping(&self) -> Result<()> {
        self.run("ping", self.inner.ping()).await
    }
}
