//! Merchants (who sign in with a phone) and the bearer credentials they hold.

use serde::Serialize;

use crate::{MerchantId, Phone, Timestamp, TokenId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Merchant {
    pub id: MerchantId,
    pub phone: Phone,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Issued by OTP sign-in; expires.
    Session,
    /// Created by the merchant (or by `kirana merchant token`); lives until revoked.
    ApiKey,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Session => "session",
            TokenKind::ApiKey => "api_key",
        }
    }

    pub fn from_stored(s: &str) -> Self {
        if s == "api_key" { TokenKind::ApiKey } else { TokenKind::Session }
    }
}

/// A credential as the merchant sees it: never its secret, which is stored only as a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: TokenId,
    pub name: String,
    pub kind: TokenKind,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
}
