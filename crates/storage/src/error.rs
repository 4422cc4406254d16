//! The storage layer's one error type. The HTTP edge maps it to problem+json exactly once.

use kirana_domain::Invalid;
use kirana_domain::coupon::CouponRejection;
use kirana_domain::order::OrderStatus;

pub use kirana_domain::cart::Shortage;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictKind {
    SlugTaken,
    DomainTaken,
    CartClosed,
    IdempotencyKeyReused,
    CodeTaken,
    NameTaken,
    SkuTaken,
    TooMany,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Missing, or belonging to another store: callers cannot tell the two apart.
    #[error("not found")]
    NotFound,
    /// Input that only storage could judge (an unknown category id, a SKU already in use…).
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("conflict: {message}")]
    Conflict { kind: ConflictKind, field: Option<&'static str>, message: String },
    #[error("insufficient stock for {} item(s)", .0.len())]
    InsufficientStock(Vec<Shortage>),
    #[error("an order cannot move from {} to {}", .from.as_str(), .to.as_str())]
    InvalidTransition { from: OrderStatus, to: OrderStatus },
    #[error("coupon refused: {0}")]
    Coupon(CouponRejection),
    #[error("too many attempts; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: i64 },
    /// The store moved to another shard while this node still routed to the old one: nothing
    /// was written; the directory entry is refreshed and a retry goes to the new shard.
    #[error("store {store} has moved to shard {}; retry", .to.0)]
    Moved { store: kirana_domain::StoreId, to: crate::scope::ShardId },
    /// The storage cannot serve right now (shutting down, disk gone): retryable.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A bug or a broken database. Logged in full; the client sees only that it happened.
    #[error("storage failure: {0}")]
    Internal(String),
}

impl StorageError {
    pub fn conflict(kind: ConflictKind, field: Option<&'static str>, message: impl Into<String>) -> Self {
        StorageError::Conflict { kind, field, message: message.into() }
    }

    pub fn invalid(field: &str, message: &str) -> Self {
        StorageError::Invalid(Invalid::field(field, message))
    }
}

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ffi::ErrorCode;
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StorageError::Unavailable(e.to_string()),
            Some(ErrorCode::DiskFull | ErrorCode::CannotOpen | ErrorCode::ReadOnly) => {
                StorageError::Unavailable(e.to_string())
            }
            _ => StorageError::Internal(e.to_string()),
        }
    }
}

impl From<serde_json::Error> for StorageError {
    fn from(e: serde_json::Error) -> Self {
        StorageError::Internal(format!("stored JSON: {e}"))
    }
}
