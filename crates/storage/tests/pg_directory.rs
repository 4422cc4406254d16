//! The directory's behaviour, checked against both backends: every check below is written once
//! against `&dyn Directory` and run on SQLite (a temporary data directory) and on PostgreSQL (a
//! database of its own on the shared server at 127.0.0.1:5432, dropped at the end), so any
//! difference between the two fails a test. Then the PostgreSQL pool's limits.

#[macro_use]
mod pg_db;

use std::time::{Duration, Instant};

use kirana_domain::merchant::TokenKind;
use kirana_domain::page::{Cursor, Limit, PageRequest};
use kirana_domain::{MerchantId, Phone, Slug, StoreId, Timestamp};
use kirana_storage::postgres::directory::PgDirectory;
use kirana_storage::postgres::pool::{PgPool, PoolRole, PoolSettings};
use kirana_storage::sqlite::{SqliteOptions, Synchronous};
use kirana_storage::{ConflictKind, Directory, OtpPolicy, ShardId, StorageError};
use pg_db::{ADMIN, TempDb, admin};

const T0: Timestamp = Timestamp::from_millis(1_750_000_000_000);

fn settings() -> PoolSettings {
    PoolSettings { max_size: 4, acquire_timeout: Duration::from_secs(5), connect_timeout: Duration::from_secs(5) }
}

/// Runs each named check (an `async fn(&dyn Directory)`) once per backend.
macro_rules! on_both_backends {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $check() {
                    let dir = tempfile::tempdir().unwrap();
                    let opts = super::SqliteOptions { synchronous: super::Synchronous::Normal, ..Default::default() };
                    let storage = kirana_storage::sqlite::open(dir.path(), 1, &opts).unwrap();
                    super::$check(storage.directory()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $check() {
                    let db = super::TempDb::create().await;
                    let directory = super::PgDirectory::connect(&db.url(), super::settings()).await.unwrap();
                    super::$check(&directory).await;
                }
            )*
        }
    };
}

on_both_backends!(
    a_code_signs_in_once_and_creates_the_merchant_only_the_first_time,
    wrong_codes_count_and_the_last_allowed_one_burns_the_code,
    a_code_expires_after_its_ttl,
    sends_are_rate_limited_per_phone_and_a_new_code_replaces_the_old,
    tokens_authenticate_until_they_expire_or_are_revoked,
    tokens_are_listed_newest_first_in_pages,
    registering_takes_the_first_free_slug_candidate,
    a_claimed_domain_and_the_owner_limit_are_refused,
    an_old_slug_still_resolves_after_a_rename,
    a_rename_applies_both_names_or_neither,
    domains_resolve_case_insensitively_and_without_the_trailing_dot,
    owned_stores_come_in_keyset_pages,
    shard_counts_count_stores_per_shard,
    racing_sign_ins_with_one_code_let_exactly_one_in,
    racing_registrations_and_renames_never_share_a_slug,
);

// ---- helpers --------------------------------------------------------------------------------

fn phone(n: u32) -> Phone {
    Phone::parse(&format!("98765{n:05}")).unwrap()
}

fn hash(n: u8) -> [u8; 32] {
    [n; 32]
}

fn slug(s: &str) -> Slug {
    Slug::parse(s).unwrap()
}

fn policy() -> OtpPolicy {
    OtpPolicy::default()
}

fn limit(n: i64) -> Limit {
    Limit::parse(Some(n)).unwrap()
}

fn conflict_kind(e: &StorageError) -> Option<ConflictKind> {
    match e {
        StorageError::Conflict { kind, .. } => Some(*kind),
        _ => None,
    }
}

#[track_caller]
fn assert_invalid_code(r: kirana_storage::Result<kirana_storage::SignIn>) {
    match r {
        Err(StorageError::Invalid(_)) => {}
        other => panic!("expected the code to be refused as invalid, got {other:?}"),
    }
}

async fn merchant(d: &dyn Directory, n: u32) -> MerchantId {
    d.merchant_for_phone(&phone(n), T0).await.unwrap().0.id
}

async fn store(d: &dyn Directory, owner: MerchantId, shard: u32, s: &str, domain: Option<&str>) -> StoreId {
    let id = StoreId::generate();
    d.register_store(id, ShardId(shard), owner, vec![slug(s)], domain.map(str::to_string), 10, T0).await.unwrap();
    id
}

// ---- sign-in codes --------------------------------------------------------------------------

async fn a_code_signs_in_once_and_creates_the_merchant_only_the_first_time(d: &dyn Directory) {
    let p = phone(1);
    d.otp_issue(&p, hash(1), T0, policy()).await.unwrap();
    let now = T0.plus_secs(10);
    let first = d.otp_sign_in(&p, hash(1), hash(100), 3600, now, policy()).await.unwrap();
    assert!(first.created);
    assert_eq!(first.merchant.phone, p);
    assert_eq!(first.session.kind, TokenKind::Session);
    assert_eq!(first.session.expires_at, Some(now.plus_secs(3600)));
    let cred = d.authenticate(hash(100), now).await.unwrap().expect("the session authenticates");
    assert_eq!((cred.merchant, cred.token, cred.last_used_at), (first.merchant.id, first.session.id, None));
    assert_eq!(d.merchant(first.merchant.id).await.unwrap(), first.merchant);

    // The code is single-use.
    assert_invalid_code(d.otp_sign_in(&p, hash(1), hash(101), 3600, now, policy()).await);

    // A returning merchant gets a new session, not a new account.
    let later = T0.plus_secs(60);
    d.otp_issue(&p, hash(2), later, policy()).await.unwrap();
    let second = d.otp_sign_in(&p, hash(2), hash(102), 3600, later, policy()).await.unwrap();
    assert!(!second.created);
    assert_eq!(second.merchant, first.merchant);
    assert_ne!(second.session.id, first.session.id);
    assert_eq!(d.merchant_for_phone(&p, later).await.unwrap(), (first.merchant.clone(), false));

    // No code was ever sent to this phone.
    assert_invalid_code(d.otp_sign_in(&phone(2), hash(1), hash(103), 3600, now, policy()).await);
    assert!(matches!(d.merchant(MerchantId::generate()).await, Err(StorageError::NotFound)));
}

async fn wrong_codes_count_and_the_last_allowed_one_burns_the_code(d: &dyn Directory) {
    let p = phone(1);
    let pol = OtpPolicy { max_attempts: 3, ..policy() };
    d.otp_issue(&p, hash(1), T0, pol).await.unwrap();
    let now = T0.plus_secs(5);
    assert_invalid_code(d.otp_sign_in(&p, hash(9), hash(100), 3600, now, pol).await);
    assert_invalid_code(d.otp_sign_in(&p, hash(9), hash(100), 3600, now, pol).await);
    match d.otp_sign_in(&p, hash(9), hash(100), 3600, now, pol).await {
        Err(StorageError::RateLimited { retry_after_secs }) => assert_eq!(retry_after_secs, pol.min_interval_secs),
        other => panic!("the third wrong code burns the code, got {other:?}"),
    }
    // Burned: even the right code is refused now, and no merchant was created.
    assert_invalid_code(d.otp_sign_in(&p, hash(1), hash(100), 3600, now, pol).await);
    assert!(d.authenticate(hash(100), now).await.unwrap().is_none());

    // Wrong guesses on one code do not carry over to the next.
    let later = T0.plus_secs(60);
    d.otp_issue(&p, hash(2), later, pol).await.unwrap();
    assert_invalid_code(d.otp_sign_in(&p, hash(9), hash(101), 3600, later, pol).await);
    assert!(d.otp_sign_in(&p, hash(2), hash(101), 3600, later, pol).await.unwrap().created);
}

async fn a_code_expires_after_its_ttl(d: &dyn Directory) {
    let p = phone(1);
    let pol = OtpPolicy { ttl_secs: 300, ..policy() };
    d.otp_issue(&p, hash(1), T0, pol).await.unwrap();
    assert_invalid_code(d.otp_sign_in(&p, hash(1), hash(100), 3600, T0.plus_secs(300), pol).await);
    d.otp_issue(&p, hash(2), T0.plus_secs(400), pol).await.unwrap();
    let just_in_time = T0.plus_secs(400).plus_secs(300).plus_millis(-1);
    d.otp_sign_in(&p, hash(2), hash(100), 3600, just_in_time, pol).await.unwrap();
    // The session expires too.
    assert!(d.authenticate(hash(100), just_in_time.plus_secs(3599)).await.unwrap().is_some());
    assert!(d.authenticate(hash(100), just_in_time.plus_secs(3600)).await.unwrap().is_none());
}

async fn sends_are_rate_limited_per_phone_and_a_new_code_replaces_the_old(d: &dyn Directory) {
    let p = phone(1);
    let pol = OtpPolicy { max_sends: 3, window_secs: 3600, min_interval_secs: 30, ..policy() };
    d.otp_issue(&p, hash(1), T0, pol).await.unwrap();
    match d.otp_issue(&p, hash(2), T0.plus_secs(10), pol).await {
        Err(StorageError::RateLimited { retry_after_secs }) => assert_eq!(retry_after_secs, 20),
        other => panic!("a second send within 30 s is refused, got {other:?}"),
    }
    // Another phone is not affected.
    d.otp_issue(&phone(2), hash(3), T0.plus_secs(10), pol).await.unwrap();

    d.otp_issue(&p, hash(4), T0.plus_secs(30), pol).await.unwrap();
    // The first code stopped counting when the second was sent.
    assert_invalid_code(d.otp_sign_in(&p, hash(1), hash(100), 3600, T0.plus_secs(31), pol).await);
    d.otp_issue(&p, hash(5), T0.plus_secs(60), pol).await.unwrap();
    match d.otp_issue(&p, hash(6), T0.plus_secs(100), pol).await {
        Err(StorageError::RateLimited { retry_after_secs }) => assert_eq!(retry_after_secs, 3500),
        other => panic!("a fourth send within the hour is refused, got {other:?}"),
    }
    // Once the first send leaves the window, one more is allowed.
    d.otp_issue(&p, hash(7), T0.plus_secs(3600), pol).await.unwrap();
    d.otp_sign_in(&p, hash(7), hash(101), 3600, T0.plus_secs(3601), pol).await.unwrap();
}

// ---- credentials ----------------------------------------------------------------------------

async fn tokens_authenticate_until_they_expire_or_are_revoked(d: &dyn Directory) {
    let m = merchant(d, 1).await;
    let other = merchant(d, 2).await;
    let key = d.insert_token(m, TokenKind::ApiKey, "ci", hash(1), T0, None).await.unwrap();
    let short = d.insert_token(m, TokenKind::Session, "s", hash(2), T0, Some(T0.plus_secs(60))).await.unwrap();
    assert_eq!((key.name.as_str(), key.kind, key.created_at), ("ci", TokenKind::ApiKey, T0));

    let cred = d.authenticate(hash(1), T0).await.unwrap().unwrap();
    assert_eq!((cred.merchant, cred.token, cred.last_used_at), (m, key.id, None));
    d.touch_token(key.id, T0.plus_secs(5)).await.unwrap();
    assert_eq!(d.authenticate(hash(1), T0.plus_secs(6)).await.unwrap().unwrap().last_used_at, Some(T0.plus_secs(5)));
    assert!(d.authenticate(hash(3), T0).await.unwrap().is_none(), "an unknown hash");

    assert_eq!(d.authenticate(hash(2), T0.plus_secs(59)).await.unwrap().unwrap().token, short.id);
    assert!(d.authenticate(hash(2), T0.plus_secs(60)).await.unwrap().is_none(), "expired");

    assert!(matches!(d.revoke_token(other, key.id, T0).await, Err(StorageError::NotFound)), "not theirs");
    d.revoke_token(m, key.id, T0.plus_secs(10)).await.unwrap();
    assert!(d.authenticate(hash(1), T0.plus_secs(10)).await.unwrap().is_none(), "revoked");
    assert!(matches!(d.revoke_token(m, key.id, T0).await, Err(StorageError::NotFound)), "already revoked");
}

async fn tokens_are_listed_newest_first_in_pages(d: &dyn Directory) {
    let m = merchant(d, 1).await;
    let other = merchant(d, 2).await;
    let mut ids = Vec::new();
    for i in 0..5u8 {
        ids.push(d.insert_token(m, TokenKind::ApiKey, &format!("k{i}"), hash(i), T0, None).await.unwrap().id);
    }
    d.insert_token(other, TokenKind::ApiKey, "theirs", hash(50), T0, None).await.unwrap();
    d.insert_token(m, TokenKind::Session, "gone", hash(60), T0, Some(T0.plus_secs(1))).await.unwrap();
    d.revoke_token(m, ids[2], T0).await.unwrap();
    let mut live: Vec<_> = ids.iter().copied().filter(|id| *id != ids[2]).collect();
    live.sort_by_key(|id| std::cmp::Reverse(id.uuid()));

    let now = T0.plus_secs(10);
    let first = d.tokens(m, PageRequest { after: None, limit: limit(3) }, now).await.unwrap();
    assert_eq!(first.items.iter().map(|k| k.id).collect::<Vec<_>>(), live[..3]);
    let cursor = Cursor::parse(first.next_cursor.as_deref().expect("a second page")).unwrap();
    let second = d.tokens(m, PageRequest { after: Some(cursor), limit: limit(3) }, now).await.unwrap();
    assert_eq!(second.items.iter().map(|k| k.id).collect::<Vec<_>>(), live[3..]);
    assert_eq!(second.next_cursor, None);
    assert_eq!(second.items[0].name, format!("k{}", ids.iter().position(|i| *i == live[3]).unwrap()));
}

// ---- stores: placement, slugs, domains ------------------------------------------------------

async fn registering_takes_the_first_free_slug_candidate(d: &dyn Directory) {
    let owner = merchant(d, 1).await;
    let a = store(d, owner, 0, "sharma-store", None).await;
    let b = StoreId::generate();
    let candidates = vec![slug("sharma-store"), slug("sharma-store-2"), slug("sharma-store-3")];
    let e = d.register_store(b, ShardId(0), owner, candidates.clone(), None, 10, T0).await.unwrap();
    assert_eq!(e.slug, slug("sharma-store-2"));
    assert_eq!(d.entry(b).await.unwrap(), Some(e.clone()));
    assert_eq!(d.entry(StoreId::generate()).await.unwrap(), None);

    // An old slug of another store is taken too.
    d.rename(a, Some(&slug("sharma-new")), None, T0).await.unwrap();
    let c = StoreId::generate();
    let e = d.register_store(c, ShardId(0), owner, candidates.clone(), None, 10, T0).await.unwrap();
    assert_eq!(e.slug, slug("sharma-store-3"));

    let err = d.register_store(StoreId::generate(), ShardId(0), owner, candidates, None, 10, T0).await.unwrap_err();
    assert_eq!(conflict_kind(&err), Some(ConflictKind::SlugTaken), "{err:?}");
    assert_eq!(d.owned(owner, PageRequest::default()).await.unwrap().items.len(), 3, "nothing half-registered");
}

async fn a_claimed_domain_and_the_owner_limit_are_refused(d: &dyn Directory) {
    let owner = merchant(d, 1).await;
    let other = merchant(d, 2).await;
    store(d, owner, 0, "first-shop", Some("shop.example.com")).await;
    let err = d
        .register_store(
            StoreId::generate(),
            ShardId(0),
            other,
            vec![slug("second-shop")],
            Some("shop.example.com".into()),
            10,
            T0,
        )
        .await
        .unwrap_err();
    assert_eq!(conflict_kind(&err), Some(ConflictKind::DomainTaken), "{err:?}");
    // The refused store took nothing: its slug is still free.
    assert_eq!(d.resolve_slug("second-shop").await.unwrap(), None);
    store(d, other, 0, "second-shop", None).await;

    store(d, owner, 0, "third-shop", None).await;
    let err = d
        .register_store(StoreId::generate(), ShardId(0), owner, vec![slug("fourth-shop")], None, 2, T0)
        .await
        .unwrap_err();
    assert_eq!(conflict_kind(&err), Some(ConflictKind::TooMany), "{err:?}");
    assert_eq!(d.resolve_slug("fourth-shop").await.unwrap(), None);
}

async fn an_old_slug_still_resolves_after_a_rename(d: &dyn Directory) {
    let owner = merchant(d, 1).await;
    let id = store(d, owner, 0, "old-name", None).await;
    d.rename(id, Some(&slug("new-name")), None, T0.plus_secs(1)).await.unwrap();
    let (cur, is_current) = d.resolve_slug("new-name").await.unwrap().unwrap();
    assert!(is_current);
    assert_eq!((cur.store_id, cur.slug.clone()), (id, slug("new-name")));
    let (old, is_current) = d.resolve_slug("old-name").await.unwrap().unwrap();
    assert!(!is_current);
    assert_eq!(old, cur, "an old slug answers with the store's current entry");
    assert_eq!(d.resolve_slug("never-used").await.unwrap(), None);

    // Going back to an old slug of its own makes it current again.
    d.rename(id, Some(&slug("old-name")), None, T0.plus_secs(2)).await.unwrap();
    assert!(d.resolve_slug("old-name").await.unwrap().unwrap().1);
    assert!(!d.resolve_slug("new-name").await.unwrap().unwrap().1);
    assert_eq!(d.entry(id).await.unwrap().unwrap().slug, slug("old-name"));

    // Another store's slug, current or old, is taken.
    let other = store(d, owner, 0, "other-shop", None).await;
    for taken in ["old-name", "new-name"] {
        let err = d.rename(other, Some(&slug(taken)), None, T0).await.unwrap_err();
        assert_eq!(conflict_kind(&err), Some(ConflictKind::SlugTaken), "{taken}: {err:?}");
    }

    // A store keeps at most ten slugs: nine renames to new ones, then no more (going back to
    // one of its own is still allowed).
    for i in 2..=10 {
        d.rename(other, Some(&slug(&format!("other-shop-{i}"))), None, T0).await.unwrap();
    }
    let err = d.rename(other, Some(&slug("other-shop-11")), None, T0).await.unwrap_err();
    assert_eq!(conflict_kind(&err), Some(ConflictKind::TooMany), "{err:?}");
    assert_eq!(d.entry(other).await.unwrap().unwrap().slug, slug("other-shop-10"));
    d.rename(other, Some(&slug("other-shop")), None, T0).await.unwrap();
    assert!(d.resolve_slug("other-shop").await.unwrap().unwrap().1);
}

async fn a_rename_applies_both_names_or_neither(d: &dyn Directory) {
    let owner = merchant(d, 1).await;
    let a = store(d, owner, 0, "shop-a", Some("a.example.com")).await;
    let b = store(d, owner, 0, "shop-b", Some("b.example.com")).await;

    // The slug is free but the domain is b's: nothing changes.
    let err = d.rename(a, Some(&slug("shop-a-2")), Some(Some("b.example.com")), T0).await.unwrap_err();
    assert_eq!(conflict_kind(&err), Some(ConflictKind::DomainTaken), "{err:?}");
    let e = d.entry(a).await.unwrap().unwrap();
    assert_eq!((e.slug, e.custom_domain.as_deref()), (slug("shop-a"), Some("a.example.com")));
    assert_eq!(d.resolve_slug("shop-a-2").await.unwrap(), None);

    // The domain is free but the slug is b's: nothing changes either.
    let err = d.rename(a, Some(&slug("shop-b")), Some(Some("new.example.com")), T0).await.unwrap_err();
    assert_eq!(conflict_kind(&err), Some(ConflictKind::SlugTaken), "{err:?}");
    assert_eq!(d.entry(a).await.unwrap().unwrap().custom_domain.as_deref(), Some("a.example.com"));
    assert_eq!(d.resolve_domain("new.example.com").await.unwrap(), None);

    // Both free: both apply; the old domain is released.
    d.rename(a, Some(&slug("shop-a-2")), Some(Some("new.example.com")), T0).await.unwrap();
    let e = d.entry(a).await.unwrap().unwrap();
    assert_eq!((e.slug, e.custom_domain.as_deref()), (slug("shop-a-2"), Some("new.example.com")));
    assert_eq!(d.resolve_domain("a.example.com").await.unwrap(), None);
    // Its own domain again is no conflict; then b may take a's released one.
    d.rename(a, None, Some(Some("new.example.com")), T0).await.unwrap();
    d.rename(b, None, Some(Some("a.example.com")), T0).await.unwrap();
    assert_eq!(d.resolve_domain("a.example.com").await.unwrap().unwrap().store_id, b);

    // Removing a domain.
    d.rename(a, None, Some(None), T0).await.unwrap();
    assert_eq!(d.entry(a).await.unwrap().unwrap().custom_domain, None);
    assert_eq!(d.resolve_domain("new.example.com").await.unwrap(), None);
}

async fn domains_resolve_case_insensitively_and_without_the_trailing_dot(d: &dyn Directory) {
    let owner = merchant(d, 1).await;
    let id = store(d, owner, 3, "domain-shop", Some("shop.example.in")).await;
    for host in ["shop.example.in", "Shop.Example.IN", "shop.example.in."] {
        let e = d.resolve_domain(host).await.unwrap().unwrap_or_else(|| panic!("{host} resolves"));
        assert_eq!((e.store_id, e.shard, e.owner, e.created_at), (id, ShardId(3), owner, T0));
        assert_eq!((e.slug.clone(), e.custom_domain.as_deref()), (slug("domain-shop"), Some("shop.example.in")));
        assert_eq!(e.scope().store_id(), id);
    }
    assert_eq!(d.resolve_domain("other.example.in").await.unwrap(), None);
}

async fn owned_stores_come_in_keyset_pages(d: &dyn Directory) {
    let owner = merchant(d, 1).await;
    let other = merchant(d, 2).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(store(d, owner, i % 2, &format!("owned-{i}"), None).await);
    }
    store(d, other, 0, "not-mine", None).await;
    ids.sort_by_key(|id| std::cmp::Reverse(id.uuid()));

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = d.owned(owner, PageRequest { after, limit: limit(2) }).await.unwrap();
        assert!(page.items.len() <= 2);
        assert!(page.items.iter().all(|e| e.owner == owner));
        seen.extend(page.items.iter().map(|e| e.store_id));
        match page.next_cursor {
            Some(c) => after = Some(Cursor::parse(&c).unwrap()),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every store once, newest id first");
    let empty = d.owned(MerchantId::generate(), PageRequest::default()).await.unwrap();
    assert!(empty.items.is_empty() && empty.next_cursor.is_none());
}

async fn shard_counts_count_stores_per_shard(d: &dyn Directory) {
    d.ping().await.unwrap();
    assert_eq!(d.shard_counts().await.unwrap(), vec![]);
    let owner = merchant(d, 1).await;
    for (i, shard) in [2u32, 0, 2, 2, 7].into_iter().enumerate() {
        store(d, owner, shard, &format!("counted-{i}"), None).await;
    }
    assert_eq!(d.shard_counts().await.unwrap(), vec![(ShardId(0), 1), (ShardId(2), 3), (ShardId(7), 1)]);
}

// ---- races: on PostgreSQL these run on two connections at once -----------------------------

async fn racing_sign_ins_with_one_code_let_exactly_one_in(d: &dyn Directory) {
    let p = phone(1);
    d.otp_issue(&p, hash(1), T0, policy()).await.unwrap();
    let now = T0.plus_secs(1);
    let (a, b) = tokio::join!(
        d.otp_sign_in(&p, hash(1), hash(100), 3600, now, policy()),
        d.otp_sign_in(&p, hash(1), hash(101), 3600, now, policy()),
    );
    assert_eq!(a.is_ok() as u8 + b.is_ok() as u8, 1, "one code, one session: {a:?} / {b:?}");
    assert!(matches!(a.as_ref().err().or(b.as_ref().err()), Some(StorageError::Invalid(_))));

    // Wrong guesses racing each other all count.
    let pol = OtpPolicy { max_attempts: 2, ..policy() };
    d.otp_issue(&p, hash(2), T0.plus_secs(60), pol).await.unwrap();
    let later = T0.plus_secs(61);
    let (a, b) = tokio::join!(
        d.otp_sign_in(&p, hash(9), hash(102), 3600, later, pol),
        d.otp_sign_in(&p, hash(8), hash(103), 3600, later, pol),
    );
    assert!(a.is_err() && b.is_err());
    assert_invalid_code(d.otp_sign_in(&p, hash(2), hash(104), 3600, later, pol).await);
}

async fn racing_registrations_and_renames_never_share_a_slug(d: &dyn Directory) {
    let (m1, m2) = (merchant(d, 1).await, merchant(d, 2).await);
    let (a, b) = (StoreId::generate(), StoreId::generate());
    let (ra, rb) = tokio::join!(
        d.register_store(a, ShardId(0), m1, vec![slug("contested")], None, 10, T0),
        d.register_store(b, ShardId(1), m2, vec![slug("contested")], None, 10, T0),
    );
    assert_eq!(ra.is_ok() as u8 + rb.is_ok() as u8, 1, "{ra:?} / {rb:?}");
    let loser = ra.as_ref().err().or(rb.as_ref().err()).unwrap();
    assert_eq!(conflict_kind(loser), Some(ConflictKind::SlugTaken), "{loser:?}");
    assert_eq!(d.shard_counts().await.unwrap().iter().map(|(_, n)| n).sum::<i64>(), 1);

    // Two stores renaming to the same new slug at once.
    let x = store(d, m1, 0, "shop-x", None).await;
    let y = store(d, m2, 0, "shop-y", None).await;
    let wanted = slug("wanted");
    let (rx, ry) = tokio::join!(d.rename(x, Some(&wanted), None, T0), d.rename(y, Some(&wanted), None, T0));
    assert_eq!(rx.is_ok() as u8 + ry.is_ok() as u8, 1, "{rx:?} / {ry:?}");
    let winner = if rx.is_ok() { x } else { y };
    assert_eq!(d.resolve_slug("wanted").await.unwrap().unwrap(), (d.entry(winner).await.unwrap().unwrap(), true));
    let loser = if rx.is_ok() { y } else { x };
    assert_ne!(d.entry(loser).await.unwrap().unwrap().slug, slug("wanted"));
}

// ---- the PostgreSQL pool --------------------------------------------------------------------

#[tokio::test]
async fn an_exhausted_pool_answers_unavailable_within_its_acquire_timeout() {
    drop(admin().await); // fails with the start hint when the server is down
    let acquire = Duration::from_millis(300);
    let pool = PgPool::new(
        ADMIN,
        PoolRole::Primary(ShardId(4)),
        PoolSettings { max_size: 1, acquire_timeout: acquire, connect_timeout: Duration::from_secs(5) },
    )
    .unwrap();
    let held = pool.get().await.unwrap();
    held.query_one("SELECT 1", &[]).await.unwrap();
    let status = pool.status();
    assert_eq!((status.size, status.available, status.max_size), (1, 0, 1));

    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), pool.get())
        .await
        .expect("get() must give up on its own, not hang")
        .map(|_| ())
        .unwrap_err();
    let waited = started.elapsed();
    match &err {
        StorageError::Unavailable(msg) => assert!(msg.contains("shard 4 primary"), "names the pool: {msg}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(waited >= acquire - Duration::from_millis(20) && waited < Duration::from_secs(3), "waited {waited:?}");

    // Released, the connection is handed out again (and its statement cache kept).
    drop(held);
    let again = pool.get().await.unwrap();
    let st = again.prepare_cached("SELECT 2::bigint").await.unwrap();
    assert_eq!(again.query_one(&st, &[]).await.unwrap().get::<_, i64>(0), 2);
    assert_eq!(pool.status().size, 1);
}

#[tokio::test]
async fn a_pool_to_a_closed_port_is_built_lazily_and_fails_unavailable_naming_itself() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let pool = PgPool::new(
        &url,
        PoolRole::Replica(ShardId(3), 1),
        PoolSettings { max_size: 2, acquire_timeout: Duration::from_secs(1), connect_timeout: Duration::from_secs(1) },
    )
    .expect("a pool is built while its server is down");
    assert_eq!(pool.status().size, 0);
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), pool.get())
        .await
        .expect("get() must give up on its own, not hang")
        .map(|_| ())
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    match &err {
        StorageError::Unavailable(msg) => assert!(msg.contains("shard 3 replica 1"), "names the pool: {msg}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // A directory behind it cannot start either, and says so the same way.
    match PgDirectory::connect(&url, PoolSettings { max_size: 1, ..settings() }).await {
        Err(StorageError::Unavailable(msg)) => assert!(msg.contains("directory"), "{msg}"),
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(_) => panic!("nothing listens on port {port}"),
    }
}
