//! The directory on SQLite.

use async_trait::async_trait;
use kirana_domain::merchant::{ApiKey, Merchant, TokenKind};
use kirana_domain::page::{Page, PageRequest};
use kirana_domain::{MerchantId, Phone, Slug, StoreId, Timestamp, TokenId};
use rusqlite::{Connection, OptionalExtension, Row, params};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::db::Db;
use crate::Result;
use crate::directory::{Credential, DirEntry, Directory, OtpPolicy, SignIn};
use crate::error::{ConflictKind, StorageError};
use crate::scope::ShardId;

pub(crate) struct SqliteDirectory {
    db: Db,
}

impl SqliteDirectory {
    pub(crate) fn new(db: Db) -> Self {
        SqliteDirectory { db }
    }
}

const ENTRY_SELECT: &str = "SELECT d.store_id, d.shard, d.owner_id, s.slug, m.domain, d.created_at
     FROM stores d
     JOIN slugs s ON s.store_id = d.store_id AND s.is_current = 1
     LEFT JOIN domains m ON m.store_id = d.store_id";

fn entry_row(r: &Row<'_>) -> rusqlite::Result<DirEntry> {
    Ok(DirEntry {
        store_id: StoreId::from_uuid(r.get(0)?),
        shard: ShardId(r.get(1)?),
        owner: MerchantId::from_uuid(r.get(2)?),
        slug: Slug::from_stored(r.get(3)?),
        custom_domain: r.get(4)?,
        created_at: Timestamp::from_millis(r.get(5)?),
    })
}

fn merchant_row(r: &Row<'_>) -> rusqlite::Result<Merchant> {
    Ok(Merchant {
        id: MerchantId::from_uuid(r.get(0)?),
        phone: Phone::from_stored(r.get(1)?),
        created_at: Timestamp::from_millis(r.get(2)?),
    })
}

fn token_row(r: &Row<'_>) -> rusqlite::Result<ApiKey> {
    Ok(ApiKey {
        id: TokenId::from_uuid(r.get(0)?),
        name: r.get(1)?,
        kind: TokenKind::from_stored(&r.get::<_, String>(2)?),
        created_at: Timestamp::from_millis(r.get(3)?),
        expires_at: r.get::<_, Option<i64>>(4)?.map(Timestamp::from_millis),
        last_used_at: r.get::<_, Option<i64>>(5)?.map(Timestamp::from_millis),
    })
}

fn find_or_create_merchant(c: &Connection, phone: &str, now: Timestamp) -> Result<(Merchant, bool)> {
    let existing = c
        .prepare_cached("SELECT merchant_id, phone, created_at FROM merchants WHERE phone = ?1")?
        .query_row([phone], merchant_row)
        .optional()?;
    if let Some(m) = existing {
        return Ok((m, false));
    }
    let m = Merchant { id: MerchantId::generate(), phone: Phone::from_stored(phone.to_string()), created_at: now };
    c.prepare_cached("INSERT INTO merchants (merchant_id, phone, created_at) VALUES (?1, ?2, ?3)")?
        .execute(params![m.id.uuid(), phone, now.millis()])?;
    Ok((m, true))
}

fn insert_token(
    c: &Connection,
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
    c.prepare_cached(
        "INSERT INTO tokens (token_hash, token_id, merchant_id, kind, name, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        &hash[..],
        key.id.uuid(),
        merchant.uuid(),
        kind.as_str(),
        name,
        now.millis(),
        expires_at.map(Timestamp::millis)
    ])?;
    Ok(key)
}

/// What checking a code found. A wrong code is not an error to the writer: its attempt must be
/// committed, so the refusal is carried out as a value and raised after the commit.
enum CodeCheck {
    Accepted(SignIn),
    Wrong,
    Burned,
    Missing,
}

#[async_trait]
impl Directory for SqliteDirectory {
    async fn otp_issue(&self, phone: &Phone, code_hash: [u8; 32], now: Timestamp, policy: OtpPolicy) -> Result<()> {
        let phone = phone.as_str().to_string();
        self.db
            .write(move |c| {
                let since = now.minus_secs(policy.window_secs).millis();
                let (sent, first, last): (i64, Option<i64>, Option<i64>) = c
                    .prepare_cached("SELECT count(*), min(created_at), max(created_at) FROM otp_codes WHERE phone = ?1 AND created_at > ?2")?
                    .query_row(params![phone, since], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
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
                c.prepare_cached("UPDATE otp_codes SET consumed_at = ?2 WHERE phone = ?1 AND consumed_at IS NULL")?
                    .execute(params![phone, now.millis()])?;
                c.prepare_cached(
                    "INSERT INTO otp_codes (phone, code_id, code_hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![phone, Uuid::now_v7(), &code_hash[..], now.millis(), now.plus_secs(policy.ttl_secs).millis()])?;
                // Codes older than a day are of no use to anyone; keep the table small.
                c.prepare_cached("DELETE FROM otp_codes WHERE phone = ?1 AND created_at < ?2")?
                    .execute(params![phone, now.minus_secs(86_400).millis()])?;
                Ok(())
            })
            .await
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
        let phone = phone.as_str().to_string();
        let outcome = self
            .db
            .write(move |c| {
                let newest = c
                    .prepare_cached(
                        "SELECT code_id, code_hash, attempts FROM otp_codes
                         WHERE phone = ?1 AND consumed_at IS NULL AND expires_at > ?2
                         ORDER BY created_at DESC LIMIT 1",
                    )?
                    .query_row(params![phone, now.millis()], |r| {
                        Ok((r.get::<_, Uuid>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, i64>(2)?))
                    })
                    .optional()?;
                let Some((code_id, stored, attempts)) = newest else {
                    return Ok(CodeCheck::Missing);
                };
                if !bool::from(stored.as_slice().ct_eq(&code_hash[..])) {
                    let attempts = attempts + 1;
                    let burn = attempts >= policy.max_attempts;
                    c.prepare_cached("UPDATE otp_codes SET attempts = ?3, consumed_at = CASE WHEN ?4 THEN ?5 ELSE NULL END WHERE phone = ?1 AND code_id = ?2")?
                        .execute(params![phone, code_id, attempts, burn, now.millis()])?;
                    return Ok(if burn { CodeCheck::Burned } else { CodeCheck::Wrong });
                }
                c.prepare_cached("UPDATE otp_codes SET consumed_at = ?3 WHERE phone = ?1 AND code_id = ?2")?
                    .execute(params![phone, code_id, now.millis()])?;
                let (merchant, created) = find_or_create_merchant(c, &phone, now)?;
                let session = insert_token(
                    c,
                    merchant.id,
                    TokenKind::Session,
                    "sign-in",
                    session_hash,
                    now,
                    Some(now.plus_secs(session_ttl_secs)),
                )?;
                Ok(CodeCheck::Accepted(SignIn { merchant, session, created }))
            })
            .await?;
        match outcome {
            CodeCheck::Accepted(s) => Ok(s),
            CodeCheck::Wrong | CodeCheck::Missing => {
                Err(StorageError::invalid("code", "is wrong or has expired; request a new code if needed"))
            }
            CodeCheck::Burned => Err(StorageError::RateLimited { retry_after_secs: policy.min_interval_secs }),
        }
    }

    async fn merchant_for_phone(&self, phone: &Phone, now: Timestamp) -> Result<(Merchant, bool)> {
        let phone = phone.as_str().to_string();
        self.db.write(move |c| find_or_create_merchant(c, &phone, now)).await
    }

    async fn merchant(&self, id: MerchantId) -> Result<Merchant> {
        self.db.read(|c| {
            c.prepare_cached("SELECT merchant_id, phone, created_at FROM merchants WHERE merchant_id = ?1")?
                .query_row([id.uuid()], merchant_row)
                .optional()?
                .ok_or(StorageError::NotFound)
        })
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
        let name = name.to_string();
        self.db
            .write(move |c| {
                let live: i64 = c
                    .prepare_cached("SELECT count(*) FROM tokens WHERE merchant_id = ?1 AND kind = 'api_key' AND revoked_at IS NULL")?
                    .query_row([merchant.uuid()], |r| r.get(0))?;
                if kind == TokenKind::ApiKey && live >= 100 {
                    return Err(StorageError::conflict(ConflictKind::TooMany, None, "a merchant may hold at most 100 API keys; revoke one first"));
                }
                insert_token(c, merchant, kind, &name, hash, now, expires_at)
            })
            .await
    }

    async fn authenticate(&self, hash: [u8; 32], now: Timestamp) -> Result<Option<Credential>> {
        self.db.read(|c| {
            Ok(c.prepare_cached(
                "SELECT merchant_id, token_id, last_used_at FROM tokens
                 WHERE token_hash = ?1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?2)",
            )?
            .query_row(params![&hash[..], now.millis()], |r| {
                Ok(Credential {
                    merchant: MerchantId::from_uuid(r.get(0)?),
                    token: TokenId::from_uuid(r.get(1)?),
                    last_used_at: r.get::<_, Option<i64>>(2)?.map(Timestamp::from_millis),
                })
            })
            .optional()?)
        })
    }

    async fn touch_token(&self, id: TokenId, now: Timestamp) -> Result<()> {
        self.db
            .write(move |c| {
                c.prepare_cached("UPDATE tokens SET last_used_at = ?2 WHERE token_id = ?1")?
                    .execute(params![id.uuid(), now.millis()])?;
                Ok(())
            })
            .await
    }

    async fn tokens(&self, merchant: MerchantId, page: PageRequest, now: Timestamp) -> Result<Page<ApiKey>> {
        let after = page.after.map(|c| c.uuid());
        let rows = self.db.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT token_id, name, kind, created_at, expires_at, last_used_at FROM tokens
                 WHERE merchant_id = ?1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?4)
                   AND (?2 IS NULL OR token_id < ?2)
                 ORDER BY token_id DESC LIMIT ?3",
            )?;
            let rows = st.query_map(params![merchant.uuid(), after, page.limit.probe(), now.millis()], token_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })?;
        Ok(Page::from_probe(rows, page.limit, |k| k.id.uuid()))
    }

    async fn revoke_token(&self, merchant: MerchantId, id: TokenId, now: Timestamp) -> Result<()> {
        self.db
            .write(move |c| {
                let n = c
                    .prepare_cached("UPDATE tokens SET revoked_at = ?3 WHERE merchant_id = ?1 AND token_id = ?2 AND revoked_at IS NULL")?
                    .execute(params![merchant.uuid(), id.uuid(), now.millis()])?;
                if n == 0 { Err(StorageError::NotFound) } else { Ok(()) }
            })
            .await
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
        self.db
            .write(move |c| {
                let owned: i64 = c
                    .prepare_cached("SELECT count(*) FROM stores WHERE owner_id = ?1")?
                    .query_row([owner.uuid()], |r| r.get(0))?;
                if owned >= max_per_owner {
                    return Err(StorageError::conflict(
                        ConflictKind::TooMany,
                        None,
                        format!("a merchant may own at most {max_per_owner} stores"),
                    ));
                }
                let mut chosen = None;
                for slug in &candidates {
                    let taken: bool = c
                        .prepare_cached("SELECT EXISTS (SELECT 1 FROM slugs WHERE slug = ?1)")?
                        .query_row([slug.as_str()], |r| r.get(0))?;
                    if !taken {
                        chosen = Some(slug.clone());
                        break;
                    }
                }
                let Some(slug) = chosen else {
                    return Err(StorageError::conflict(
                        ConflictKind::SlugTaken,
                        Some("slug"),
                        "this slug is taken; choose another",
                    ));
                };
                if let Some(d) = &custom_domain {
                    claim_domain(c, store_id, d)?;
                }
                c.prepare_cached("INSERT INTO stores (store_id, shard, owner_id, created_at) VALUES (?1, ?2, ?3, ?4)")?
                    .execute(params![store_id.uuid(), shard.0, owner.uuid(), now.millis()])?;
                c.prepare_cached("INSERT INTO slugs (slug, store_id, is_current, created_at) VALUES (?1, ?2, 1, ?3)")?
                    .execute(params![slug.as_str(), store_id.uuid(), now.millis()])?;
                Ok(DirEntry { store_id, shard, owner, slug, custom_domain, created_at: now })
            })
            .await
    }

    async fn entry(&self, store_id: StoreId) -> Result<Option<DirEntry>> {
        self.db.read(|c| {
            Ok(c.prepare_cached(&format!("{ENTRY_SELECT} WHERE d.store_id = ?1"))?
                .query_row([store_id.uuid()], entry_row)
                .optional()?)
        })
    }

    async fn resolve_slug(&self, slug: &str) -> Result<Option<(DirEntry, bool)>> {
        // One statement: this runs on every storefront request.
        self.db.read(|c| {
            Ok(c.prepare_cached(
                "SELECT d.store_id, d.shard, d.owner_id, cur.slug, m.domain, d.created_at, asked.is_current
                 FROM slugs asked
                 JOIN stores d ON d.store_id = asked.store_id
                 JOIN slugs cur ON cur.store_id = d.store_id AND cur.is_current = 1
                 LEFT JOIN domains m ON m.store_id = d.store_id
                 WHERE asked.slug = ?1",
            )?
            .query_row([slug], |r| Ok((entry_row(r)?, r.get::<_, bool>(6)?)))
            .optional()?)
        })
    }

    async fn resolve_domain(&self, host: &str) -> Result<Option<DirEntry>> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.db.read(|c| {
            Ok(c.prepare_cached(&format!("{ENTRY_SELECT} WHERE m.domain = ?1"))?
                .query_row([&host], entry_row)
                .optional()?)
        })
    }

    async fn owned(&self, owner: MerchantId, page: PageRequest) -> Result<Page<DirEntry>> {
        let after = page.after.map(|c| c.uuid());
        let rows = self.db.read(|c| {
            let mut st = c.prepare_cached(&format!(
                "{ENTRY_SELECT} WHERE d.owner_id = ?1 AND (?2 IS NULL OR d.store_id < ?2) ORDER BY d.store_id DESC LIMIT ?3"
            ))?;
            let rows = st.query_map(params![owner.uuid(), after, page.limit.probe()], entry_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })?;
        Ok(Page::from_probe(rows, page.limit, |e| e.store_id.uuid()))
    }

    async fn rename(
        &self,
        store_id: StoreId,
        slug: Option<&Slug>,
        domain: Option<Option<&str>>,
        now: Timestamp,
    ) -> Result<()> {
        let slug = slug.cloned();
        let domain = domain.map(|d| d.map(str::to_string));
        self.db
            .write(move |c| {
                if let Some(slug) = &slug {
                    change_slug(c, store_id, slug, now)?;
                }
                if let Some(domain) = &domain {
                    c.prepare_cached("DELETE FROM domains WHERE store_id = ?1")?.execute([store_id.uuid()])?;
                    if let Some(d) = domain {
                        claim_domain(c, store_id, d)?;
                    }
                }
                Ok(())
            })
            .await
    }

    async fn shard_counts(&self) -> Result<Vec<(ShardId, i64)>> {
        self.db.read(|c| {
            let mut st = c.prepare_cached("SELECT shard, count(*) FROM stores GROUP BY shard ORDER BY shard")?;
            let rows = st.query_map([], |r| Ok((ShardId(r.get(0)?), r.get(1)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    async fn ping(&self) -> Result<()> {
        self.db.read(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
    }
}

fn change_slug(c: &Connection, store_id: StoreId, slug: &Slug, now: Timestamp) -> Result<()> {
    let holder: Option<Uuid> = c
        .prepare_cached("SELECT store_id FROM slugs WHERE slug = ?1")?
        .query_row([slug.as_str()], |r| r.get(0))
        .optional()?;
    match holder {
        Some(h) if h != store_id.uuid() => {
            Err(StorageError::conflict(ConflictKind::SlugTaken, Some("slug"), "this slug is taken; choose another"))
        }
        Some(_) => {
            // One of the store's own old slugs: make it current again.
            c.prepare_cached("UPDATE slugs SET is_current = 0 WHERE store_id = ?1")?.execute([store_id.uuid()])?;
            c.prepare_cached("UPDATE slugs SET is_current = 1 WHERE slug = ?1")?.execute([slug.as_str()])?;
            Ok(())
        }
        None => {
            let kept: i64 = c
                .prepare_cached("SELECT count(*) FROM slugs WHERE store_id = ?1")?
                .query_row([store_id.uuid()], |r| r.get(0))?;
            if kept >= 10 {
                return Err(StorageError::conflict(
                    ConflictKind::TooMany,
                    Some("slug"),
                    "a store may change its slug at most 9 times",
                ));
            }
            c.prepare_cached("UPDATE slugs SET is_current = 0 WHERE store_id = ?1")?.execute([store_id.uuid()])?;
            c.prepare_cached("INSERT INTO slugs (slug, store_id, is_current, created_at) VALUES (?1, ?2, 1, ?3)")?
                .execute(params![slug.as_str(), store_id.uuid(), now.millis()])?;
            Ok(())
        }
    }
}

fn claim_domain(c: &Connection, store_id: StoreId, domain: &str) -> Result<()> {
    let holder: Option<Uuid> = c
        .prepare_cached("SELECT store_id FROM domains WHERE domain = ?1")?
        .query_row([domain], |r| r.get(0))
        .optional()?;
    if holder.is_some_and(|h| h != store_id.uuid()) {
        return Err(StorageError::conflict(
            ConflictKind::DomainTaken,
            Some("custom_domain"),
            "another store already uses this domain",
        ));
    }
    c.prepare_cached("INSERT OR REPLACE INTO domains (domain, store_id) VALUES (?1, ?2)")?
        .execute(params![domain, store_id.uuid()])?;
    Ok(())
}
