//! The directory on PostgreSQL: the same behaviour as `sqlite::directory`, checked by the
//! behavioural suite that runs against both (`tests/pg_directory.rs`).
//!
//! SQLite gets its atomicity from one writer thread; here many nodes write at once, so every
//! write that reads before it writes runs in one transaction and serialises with its rivals:
//! per phone, per merchant and per owner with transaction-scoped advisory locks (the rows those
//! checks count may not exist yet, so there is nothing to `FOR UPDATE`), and per slug or domain
//! with the primary keys themselves (`ON CONFLICT DO NOTHING`, a lost race reads as taken).
//! It must never answer differently from SQLite: a difference is a bug in one of the two.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use kirana_domain::merchant::{ApiKey, Merchant, TokenKind};
use kirana_domain::page::{Page, PageRequest};
use kirana_domain::{MerchantId, Phone, Slug, StoreId, Timestamp, TokenId};
use subtle::ConstantTimeEq;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::pool::{PgPool, PoolRole, PoolSettings, query_error};
use super::schema;
use crate::Result;
use crate::directory::{Credential, DirEntry, Directory, OtpPolicy, SignIn};
use crate::error::{ConflictKind, StorageError};
use crate::scope::ShardId;

pub struct PgDirectory {
    pool: PgPool,
}

impl PgDirectory {
    /// Builds the pool and brings the control database's schema up to date on one of its
    /// connections; fails with `Unavailable` when the database cannot be reached.
    pub async fn connect(url: &str, settings: PoolSettings) -> Result<PgDirectory> {
        let pool = PgPool::new(url, PoolRole::Directory, settings)?;
        {
            let mut c = pool.get().await?;
            schema::migrate(&mut c, schema::DIRECTORY).await?;
        }
        Ok(PgDirectory { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Dedicates `shard` to `store` (`kirana shard pin`): from now on placement leaves the shard
    /// out. Refused when another store is on the shard or the shard is dedicated to another
    /// store, or the store already has a shard of its own; re-dedicating the same pair is a
    /// no-op. Checks and insert share one transaction, serialised per shard, so two pins cannot
    /// both win. It does not move the store: the caller does that next.
    ///
    /// A node whose placement counts were cached before this commit may still place one new
    /// store here for a few seconds; `kirana doctor` reports a dedicated shard holding others.
    pub async fn dedicate(&self, shard: ShardId, store: StoreId, now: Timestamp) -> Result<()> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await.map_err(pg)?;
        lock(&tx, &format!("dedication:{}", shard.0)).await?;
        let shard_raw = i64::from(shard.0);
        let holder: Option<Uuid> =
            opt(&tx, "SELECT store_id FROM shard_dedications WHERE shard = $1", &[&shard_raw]).await?.map(|r| r.get(0));
        match holder {
            Some(h) if h == store.uuid() => return Ok(()),
            Some(h) => {
                return Err(StorageError::conflict(
                    ConflictKind::TooMany,
                    Some("shard"),
                    format!("shard {} is already dedicated to store {h}; unpin it first", shard.0),
                ));
            }
            None => {}
        }
        let own: Option<i64> = opt(&tx, "SELECT shard FROM shard_dedications WHERE store_id = $1", &[&store.uuid()])
            .await?
            .map(|r| r.get(0));
        if let Some(other) = own {
            return Err(StorageError::conflict(
                ConflictKind::TooMany,
                Some("store_id"),
                format!("store {store} already has shard {other} to itself; unpin that shard first"),
            ));
        }
        let others: i64 =
            one(&tx, "SELECT count(*) FROM stores WHERE shard = $1 AND store_id <> $2", &[&shard_raw, &store.uuid()])
                .await?
                .get(0);
        if others > 0 {
            return Err(StorageError::conflict(
                ConflictKind::TooMany,
                Some("shard"),
                format!(
                    "shard {} holds {others} other store{}; move {} elsewhere first (kirana shard move)",
                    shard.0,
                    if others == 1 { "" } else { "s" },
                    if others == 1 { "it" } else { "them" }
                ),
            ));
        }
        exec(
            &tx,
            "INSERT INTO shard_dedications (shard, store_id, created_at) VALUES ($1, $2, $3)",
            &[&shard_raw, &store.uuid(), &now.millis()],
        )
        .await?;
        tx.commit().await.map_err(pg)
    }

    /// Ends a shard's dedication; returns the store it was dedicated to, if any. The store stays
    /// where it is; the shard takes new stores again.
    pub async fn undedicate(&self, shard: ShardId) -> Result<Option<StoreId>> {
        let c = self.pool.get().await?;
        let gone = opt(&c, "DELETE FROM shard_dedications WHERE shard = $1 RETURNING store_id", &[&i64::from(shard.0)])
            .await?;
        Ok(gone.map(|r| StoreId::from_uuid(r.get(0))))
    }

    /// Every dedicated shard with its store and when it was dedicated, in shard order.
    pub async fn dedications(&self) -> Result<Vec<(ShardId, StoreId, Timestamp)>> {
        let c = self.pool.get().await?;
        let rows = rows(&c, "SELECT shard, store_id, created_at FROM shard_dedications ORDER BY shard", &[]).await?;
        rows.iter()
            .map(|r| Ok((shard_of(r.get(0))?, StoreId::from_uuid(r.get(1)), Timestamp::from_millis(r.get(2)))))
            .collect()
    }
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Errors of the control database. A unique violation the code did not expect is still named
/// after the constraint it broke, as SQLite's would be.
fn pg(e: tokio_postgres::Error) -> StorageError {
    if let Some(db) = e.as_db_error()
        && *db.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
    {
        match db.constraint() {
            Some("slugs_pkey") => return slug_taken(),
            Some("domains_pkey") => return domain_taken(),
            _ => {}
        }
    }
    query_error(PoolRole::Directory, e)
}

fn slug_taken() -> StorageError {
    StorageError::conflict(ConflictKind::SlugTaken, Some("slug"), "this slug is taken; choose another")
}

fn domain_taken() -> StorageError {
    StorageError::conflict(ConflictKind::DomainTaken, Some("custom_domain"), "another store already uses this domain")
}

async fn rows<C: GenericClient>(c: &C, sql: &str, params: Params<'_>) -> Result<Vec<Row>> {
    let st = c.prepare_cached(sql).await.map_err(pg)?;
    c.query(&st, params).await.map_err(pg)
}

async fn opt<C: GenericClient>(c: &C, sql: &str, params: Params<'_>) -> Result<Option<Row>> {
    let st = c.prepare_cached(sql).await.map_err(pg)?;
    c.query_opt(&st, params).await.map_err(pg)
}

async fn one<C: GenericClient>(c: &C, sql: &str, params: Params<'_>) -> Result<Row> {
    let st = c.prepare_cached(sql).await.map_err(pg)?;
    c.query_one(&st, params).await.map_err(pg)
}

async fn exec<C: GenericClient>(c: &C, sql: &str, params: Params<'_>) -> Result<u64> {
    let st = c.prepare_cached(sql).await.map_err(pg)?;
    c.execute(&st, params).await.map_err(pg)
}

/// Serialises this transaction with every other holding the same key, until it ends.
async fn lock<C: GenericClient>(c: &C, key: &str) -> Result<()> {
    exec(c, "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&key]).await?;
    Ok(())
}

const ENTRY_SELECT: &str = "SELECT d.store_id, d.shard, d.owner_id, s.slug, m.domain, d.created_at
     FROM stores d
     JOIN slugs s ON s.store_id = d.store_id AND s.is_current = 1
     LEFT JOIN domains m ON m.store_id = d.store_id";

fn shard_of(raw: i64) -> Result<ShardId> {
    u32::try_from(raw).map(ShardId).map_err(|_| StorageError::Internal(format!("stored shard {raw} is out of range")))
}

fn entry_row(r: &Row) -> Result<DirEntry> {
    Ok(DirEntry {
        store_id: StoreId::from_uuid(r.get(0)),
        shard: shard_of(r.get(1))?,
        owner: MerchantId::from_uuid(r.get(2)),
        slug: Slug::from_stored(r.get(3)),
        custom_domain: r.get(4),
        created_at: Timestamp::from_millis(r.get(5)),
    })
}

fn merchant_row(r: &Row) -> Merchant {
    Merchant {
        id: MerchantId::from_uuid(r.get(0)),
        phone: Phone::from_stored(r.get(1)),
        created_at: Timestamp::from_millis(r.get(2)),
    }
}

fn token_row(r: &Row) -> ApiKey {
    ApiKey {
        id: TokenId::from_uuid(r.get(0)),
        name: r.get(1),
        kind: TokenKind::from_stored(r.get::<_, &str>(2)),
        created_at: Timestamp::from_millis(r.get(3)),
        expires_at: r.get::<_, Option<i64>>(4).map(Timestamp::from_millis),
        last_used_at: r.get::<_, Option<i64>>(5).map(Timestamp::from_millis),
    }
}

async fn find_or_create_merchant<C: GenericClient>(c: &C, phone: &str, now: Timestamp) -> Result<(Merchant, bool)> {
    let m = Merchant { id: MerchantId::generate(), phone: Phone::from_stored(phone.to_string()), created_at: now };
    // A racing sign-in for the same phone makes this wait for its commit, then do nothing; the
    // read below (a new snapshot) then sees the winner's merchant.
    let inserted = exec(
        c,
        "INSERT INTO merchants (merchant_id, phone, created_at) VALUES ($1, $2, $3) ON CONFLICT (phone) DO NOTHING",
        &[&m.id.uuid(), &phone, &now.millis()],
    )
    .await?;
    if inserted == 1 {
        return Ok((m, true));
    }
    let r = one(c, "SELECT merchant_id, phone, created_at FROM merchants WHERE phone = $1", &[&phone]).await?;
    Ok((merchant_row(&r), false))
}

async fn insert_token<C: GenericClient>(
    c: &C,
    merchant: MerchantId,
    kind: TokenKind,
    name: &str,
    hash: [u8; 32],
    now: Timestamp,
    expires_at: Option<Timestamp>,
) -> Result<ApiKey> {
    let key = ApiKey {
        id: TokenId::generate(),
        name: name.to_string(),
        kind,
        created_at: now,
        expires_at,
        last_used_at: None,
    };
    exec(
        c,
        "INSERT INTO tokens (token_hash, token_id, merchant_id, kind, name, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &&hash[..],
            &key.id.uuid(),
            &merchant.uuid(),
            &kind.as_str(),
            &name,
            &now.millis(),
            &expires_at.map(Timestamp::millis),
        ],
    )
    .await?;
    Ok(key)
}

/// What checking a code found. A wrong code's attempt must be committed, so the refusal is
/// carried out of the transaction as a value and raised after the commit.
enum CodeCheck {
    Accepted(SignIn),
    Wrong,
    Burned,
    Missing,
}

#[async_trait]
impl Directory for PgDirectory {
    async fn otp_issue(&self, phone: &Phone, code_hash: [u8; 32], now: Timestamp, policy: OtpPolicy) -> Result<()> {
        let phone = phone.as_str();
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await.map_err(pg)?;
        // Two sends racing for one phone must not both pass the rate limit.
        lock(&tx, &format!("otp:{phone}")).await?;
        let since = now.minus_secs(policy.window_secs).millis();
        let r = one(
            &tx,
            "SELECT count(*), min(created_at), max(created_at) FROM otp_codes WHERE phone = $1 AND created_at > $2",
            &[&phone, &since],
        )
        .await?;
        let (sent, first, last): (i64, Option<i64>, Option<i64>) = (r.get(0), r.get(1), r.get(2));
        if let Some(last) = last {
            let wait = policy.min_interval_secs - (now.millis() - last) / 1000;
            if wait > 0 {
                return Err(StorageError::RateLimited { retry_after_secs: wait });
            }
        }
        if sent >= policy.max_sends {
            // Until the oldest send in the window leaves it.
            let oldest = first.unwrap_or(now.millis());
            let wait = policy.window_secs - (now.millis() - oldest) / 1000;
            return Err(StorageError::RateLimited { retry_after_secs: wait.max(1) });
        }
        // Older codes stop counting the moment a new one is sent.
        exec(
            &tx,
            "UPDATE otp_codes SET consumed_at = $2 WHERE phone = $1 AND consumed_at IS NULL",
            &[&phone, &now.millis()],
        )
        .await?;
        exec(
            &tx,
            "INSERT INTO otp_codes (phone, code_id, code_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
            &[&phone, &Uuid::now_v7(), &&code_hash[..], &now.millis(), &now.plus_secs(policy.ttl_secs).millis()],
        )
        .await?;
        // Codes older than a day are of no use to anyone; keep the table small.
        exec(
            &tx,
            "DELETE FROM otp_codes WHERE phone = $1 AND created_at < $2",
            &[&phone, &now.minus_secs(86_400).millis()],
        )
        .await?;
        tx.commit().await.map_err(pg)
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
        let phone = phone.as_str();
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await.map_err(pg)?;
        // One check per phone at a time: a code is consumed once and every wrong guess counts.
        lock(&tx, &format!("otp:{phone}")).await?;
        let newest = opt(
            &tx,
            "SELECT code_id, code_hash, attempts FROM otp_codes
             WHERE phone = $1 AND consumed_at IS NULL AND expires_at > $2
             ORDER BY created_at DESC LIMIT 1",
            &[&phone, &now.millis()],
        )
        .await?;
        let outcome = match newest {
            None => CodeCheck::Missing,
            Some(r) => {
                let (code_id, stored, attempts): (Uuid, &[u8], i64) = (r.get(0), r.get(1), r.get(2));
                if !bool::from(stored.ct_eq(&code_hash[..])) {
                    let attempts = attempts + 1;
                    let burn = attempts >= policy.max_attempts;
                    let consumed = burn.then_some(now.millis());
                    exec(
                        &tx,
                        "UPDATE otp_codes SET attempts = $3, consumed_at = $4 WHERE phone = $1 AND code_id = $2",
                        &[&phone, &code_id, &attempts, &consumed],
                    )
                    .await?;
                    if burn { CodeCheck::Burned } else { CodeCheck::Wrong }
                } else {
                    exec(
                        &tx,
                        "UPDATE otp_codes SET consumed_at = $3 WHERE phone = $1 AND code_id = $2",
                        &[&phone, &code_id, &now.millis()],
                    )
                    .await?;
                    let (merchant, created) = find_or_create_merchant(&tx, phone, now).await?;
                    let session = insert_token(
                        &tx,
                        merchant.id,
                        TokenKind::Session,
                        "sign-in",
                        session_hash,
                        now,
                        Some(now.plus_secs(session_ttl_secs)),
                    )
                    .await?;
                    CodeCheck::Accepted(SignIn { merchant, session, created })
                }
            }
        };
        tx.commit().await.map_err(pg)?;
        match outcome {
            CodeCheck::Accepted(s) => Ok(s),
            CodeCheck::Wrong | CodeCheck::Missing => {
                Err(StorageError::invalid("code", "is wrong or has expired; request a new code if needed"))
            }
            CodeCheck::Burned => Err(StorageError::RateLimited { retry_after_secs: policy.min_interval_secs }),
        }
    }

    async fn merchant_for_phone(&self, phone: &Phone, now: Timestamp) -> Result<(Merchant, bool)> {
        let c = self.pool.get().await?;
        find_or_create_merchant(&c, phone.as_str(), now).await
    }

    async fn merchant(&self, id: MerchantId) -> Result<Merchant> {
        let c = self.pool.get().await?;
        let r = opt(&c, "SELECT merchant_id, phone, created_at FROM merchants WHERE merchant_id = $1", &[&id.uuid()])
            .await?;
        r.as_ref().map(merchant_row).ok_or(StorageError::NotFound)
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
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await.map_err(pg)?;
        // The 100-key limit holds even when two keys are created at once.
        lock(&tx, &format!("tokens:{}", merchant.uuid())).await?;
        let live: i64 = one(
            &tx,
            "SELECT count(*) FROM tokens WHERE merchant_id = $1 AND kind = 'api_key' AND revoked_at IS NULL",
            &[&merchant.uuid()],
        )
        .await?
        .get(0);
        if kind == TokenKind::ApiKey && live >= 100 {
            return Err(StorageError::conflict(
                ConflictKind::TooMany,
                None,
                "a merchant may hold at most 100 API keys; revoke one first",
            ));
        }
        let key = insert_token(&tx, merchant, kind, name, hash, now, expires_at).await?;
        tx.commit().await.map_err(pg)?;
        Ok(key)
    }

    async fn authenticate(&self, hash: [u8; 32], now: Timestamp) -> Result<Option<Credential>> {
        let c = self.pool.get().await?;
        let r = opt(
            &c,
            "SELECT merchant_id, token_id, last_used_at FROM tokens
             WHERE token_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)",
            &[&&hash[..], &now.millis()],
        )
        .await?;
        Ok(r.map(|r| Credential {
            merchant: MerchantId::from_uuid(r.get(0)),
            token: TokenId::from_uuid(r.get(1)),
            last_used_at: r.get::<_, Option<i64>>(2).map(Timestamp::from_millis),
        }))
    }

    async fn touch_token(&self, id: TokenId, now: Timestamp) -> Result<()> {
        let c = self.pool.get().await?;
        exec(&c, "UPDATE tokens SET last_used_at = $2 WHERE token_id = $1", &[&id.uuid(), &now.millis()]).await?;
        Ok(())
    }

    async fn tokens(&self, merchant: MerchantId, page: PageRequest, now: Timestamp) -> Result<Page<ApiKey>> {
        let after = page.after.map(|c| c.uuid());
        let c = self.pool.get().await?;
        let rows = rows(
            &c,
            "SELECT token_id, name, kind, created_at, expires_at, last_used_at FROM tokens
             WHERE merchant_id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $4)
               AND ($2::uuid IS NULL OR token_id < $2::uuid)
             ORDER BY token_id DESC LIMIT $3",
            &[&merchant.uuid(), &after, &page.limit.probe(), &now.millis()],
        )
        .await?;
        Ok(Page::from_probe(rows.iter().map(token_row).collect(), page.limit, |k| k.id.uuid()))
    }

    async fn revoke_token(&self, merchant: MerchantId, id: TokenId, now: Timestamp) -> Result<()> {
        let c = self.pool.get().await?;
        let n = exec(
            &c,
            "UPDATE tokens SET revoked_at = $3 WHERE merchant_id = $1 AND token_id = $2 AND revoked_at IS NULL",
            &[&merchant.uuid(), &id.uuid(), &now.millis()],
        )
        .await?;
        if n == 0 { Err(StorageError::NotFound) } else { Ok(()) }
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
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await.map_err(pg)?;
        // The per-owner limit holds even when one owner creates two stores at once.
        lock(&tx, &format!("owner:{}", owner.uuid())).await?;
        let owned: i64 = one(&tx, "SELECT count(*) FROM stores WHERE owner_id = $1", &[&owner.uuid()]).await?.get(0);
        if owned >= max_per_owner {
            return Err(StorageError::conflict(
                ConflictKind::TooMany,
                None,
                format!("a merchant may own at most {max_per_owner} stores"),
            ));
        }
        // Claiming a slug is inserting it: a candidate another transaction holds (committed or
        // racing) inserts nothing, and the next candidate is tried.
        let mut chosen = None;
        for slug in &candidates {
            let n = exec(
                &tx,
                "INSERT INTO slugs (slug, store_id, is_current, created_at) VALUES ($1, $2, 1, $3)
                 ON CONFLICT (slug) DO NOTHING",
                &[&slug.as_str(), &store_id.uuid(), &now.millis()],
            )
            .await?;
            if n == 1 {
                chosen = Some(slug.clone());
                break;
            }
        }
        let Some(slug) = chosen else {
            return Err(slug_taken());
        };
        if let Some(d) = &custom_domain {
            claim_domain(&tx, store_id, d).await?;
        }
        exec(
            &tx,
            "INSERT INTO stores (store_id, shard, owner_id, created_at) VALUES ($1, $2, $3, $4)",
            &[&store_id.uuid(), &i64::from(shard.0), &owner.uuid(), &now.millis()],
        )
        .await?;
        tx.commit().await.map_err(pg)?;
        Ok(DirEntry { store_id, shard, owner, slug, custom_domain, created_at: now })
    }

    async fn entry(&self, store_id: StoreId) -> Result<Option<DirEntry>> {
        let c = self.pool.get().await?;
        let sql = format!("{ENTRY_SELECT} WHERE d.store_id = $1");
        opt(&c, &sql, &[&store_id.uuid()]).await?.as_ref().map(entry_row).transpose()
    }

    async fn resolve_slug(&self, slug: &str) -> Result<Option<(DirEntry, bool)>> {
        // PostgreSQL text cannot hold NUL (SQLite's can): no slug has one, so nothing matches.
        if slug.contains('\0') {
            return Ok(None);
        }
        // One statement: this runs on every storefront request.
        let c = self.pool.get().await?;
        let r = opt(
            &c,
            "SELECT d.store_id, d.shard, d.owner_id, cur.slug, m.domain, d.created_at, asked.is_current
             FROM slugs asked
             JOIN stores d ON d.store_id = asked.store_id
             JOIN slugs cur ON cur.store_id = d.store_id AND cur.is_current = 1
             LEFT JOIN domains m ON m.store_id = d.store_id
             WHERE asked.slug = $1",
            &[&slug],
        )
        .await?;
        r.map(|r| Ok((entry_row(&r)?, r.get::<_, i64>(6) != 0))).transpose()
    }

    async fn resolve_domain(&self, host: &str) -> Result<Option<DirEntry>> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.contains('\0') {
            return Ok(None);
        }
        let c = self.pool.get().await?;
        let sql = format!("{ENTRY_SELECT} WHERE m.domain = $1");
        opt(&c, &sql, &[&host]).await?.as_ref().map(entry_row).transpose()
    }

    async fn owned(&self, owner: MerchantId, page: PageRequest) -> Result<Page<DirEntry>> {
        let after = page.after.map(|c| c.uuid());
        let c = self.pool.get().await?;
        let sql = format!(
            "{ENTRY_SELECT} WHERE d.owner_id = $1 AND ($2::uuid IS NULL OR d.store_id < $2::uuid)
             ORDER BY d.store_id DESC LIMIT $3"
        );
        let rows = rows(&c, &sql, &[&owner.uuid(), &after, &page.limit.probe()]).await?;
        let entries = rows.iter().map(entry_row).collect::<Result<Vec<_>>>()?;
        Ok(Page::from_probe(entries, page.limit, |e| e.store_id.uuid()))
    }

    async fn rename(
        &self,
        store_id: StoreId,
        slug: Option<&Slug>,
        domain: Option<Option<&str>>,
        now: Timestamp,
    ) -> Result<()> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await.map_err(pg)?;
        // Renames of one store run one at a time: "exactly one current slug" and the limit on
        // kept slugs are checked and changed together.
        lock(&tx, &format!("store:{}", store_id.uuid())).await?;
        if let Some(slug) = slug {
            change_slug(&tx, store_id, slug, now).await?;
        }
        if let Some(domain) = domain {
            exec(&tx, "DELETE FROM domains WHERE store_id = $1", &[&store_id.uuid()]).await?;
            if let Some(d) = domain {
                claim_domain(&tx, store_id, d).await?;
            }
        }
        tx.commit().await.map_err(pg)
    }

    async fn shard_counts(&self) -> Result<Vec<(ShardId, i64)>> {
        let c = self.pool.get().await?;
        let rows = rows(&c, "SELECT shard, count(*) FROM stores GROUP BY shard ORDER BY shard", &[]).await?;
        rows.iter().map(|r| Ok((shard_of(r.get(0))?, r.get(1)))).collect()
    }

    /// Stores per shard, but -1 for a dedicated shard, which placement must skip. Every shard
    /// that holds a store or is dedicated appears; the others hold none.
    async fn placement_load(&self) -> Result<Vec<(ShardId, i64)>> {
        let c = self.pool.get().await?;
        let rows = rows(
            &c,
            "SELECT s.shard, CASE WHEN d.shard IS NULL THEN coalesce(n.stores, 0) ELSE -1 END
             FROM (SELECT shard FROM stores UNION SELECT shard FROM shard_dedications) s
             LEFT JOIN (SELECT shard, count(*) AS stores FROM stores GROUP BY shard) n ON n.shard = s.shard
             LEFT JOIN shard_dedications d ON d.shard = s.shard
             ORDER BY s.shard",
            &[],
        )
        .await?;
        rows.iter().map(|r| Ok((shard_of(r.get(0))?, r.get(1)))).collect()
    }

    async fn ping(&self) -> Result<()> {
        let c = self.pool.get().await?;
        one(&c, "SELECT 1", &[]).await?;
        Ok(())
    }
}

async fn change_slug<C: GenericClient>(c: &C, store_id: StoreId, slug: &Slug, now: Timestamp) -> Result<()> {
    let holder: Option<Uuid> =
        opt(c, "SELECT store_id FROM slugs WHERE slug = $1", &[&slug.as_str()]).await?.map(|r| r.get(0));
    match holder {
        Some(h) if h != store_id.uuid() => Err(slug_taken()),
        Some(_) => {
            // One of the store's own old slugs: make it current again.
            exec(c, "UPDATE slugs SET is_current = 0 WHERE store_id = $1", &[&store_id.uuid()]).await?;
            exec(c, "UPDATE slugs SET is_current = 1 WHERE slug = $1", &[&slug.as_str()]).await?;
            Ok(())
        }
        None => {
            let kept: i64 = one(c, "SELECT count(*) FROM slugs WHERE store_id = $1", &[&store_id.uuid()]).await?.get(0);
            if kept >= 10 {
                return Err(StorageError::conflict(
                    ConflictKind::TooMany,
                    Some("slug"),
                    "a store may change its slug at most 9 times",
                ));
            }
            exec(c, "UPDATE slugs SET is_current = 0 WHERE store_id = $1", &[&store_id.uuid()]).await?;
            // Another store may have claimed it since the read above: then it is taken.
            let n = exec(
                c,
                "INSERT INTO slugs (slug, store_id, is_current, created_at) VALUES ($1, $2, 1, $3)
                 ON CONFLICT (slug) DO NOTHING",
                &[&slug.as_str(), &store_id.uuid(), &now.millis()],
            )
            .await?;
            if n == 0 { Err(slug_taken()) } else { Ok(()) }
        }
    }
}

async fn claim_domain<C: GenericClient>(c: &C, store_id: StoreId, domain: &str) -> Result<()> {
    // The store's own earlier claim is replaced (SQLite's INSERT OR REPLACE); another store's,
    // committed or racing, makes the domain taken.
    exec(c, "DELETE FROM domains WHERE store_id = $1", &[&store_id.uuid()]).await?;
    let n = exec(
        c,
        "INSERT INTO domains (domain, store_id) VALUES ($1, $2) ON CONFLICT (domain) DO NOTHING",
        &[&domain, &store_id.uuid()],
    )
    .await?;
    if n == 0 { Err(domain_taken()) } else { Ok(()) }
}
