//! Coupons: percent or flat discounts with a minimum order, an optional cap, a validity window
//! and a usage limit that storage enforces atomically with the order that redeems it.

use serde::{Deserialize, Serialize};

use crate::money::div_round_half_up;
use crate::store::present;
use crate::validate::{Checker, Invalid, checked};
use crate::{Amount, CouponId, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CouponKind {
    /// `value` is a percentage, 1–100.
    Percent,
    /// `value` is an amount in minor units.
    Flat,
}

impl CouponKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CouponKind::Percent => "percent",
            CouponKind::Flat => "flat",
        }
    }

    pub fn from_stored(s: &str) -> Self {
        if s == "flat" { CouponKind::Flat } else { CouponKind::Percent }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Coupon {
    pub id: CouponId,
    /// What shoppers type, upper-case (matched case-insensitively).
    pub code: String,
    pub kind: CouponKind,
    pub value: i64,
    /// Caps a percent discount ("20 % off, up to ₹100").
    pub max_discount: Option<Amount>,
    /// The subtotal an order must reach.
    pub min_order: Amount,
    /// How many orders may redeem it in all; `null` for no limit.
    pub usage_limit: Option<i64>,
    pub used_count: i64,
    pub starts_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub active: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Why a coupon does not apply, in words for the shopper.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CouponRejection {
    #[error("this coupon is not valid in this store")]
    Unknown,
    #[error("this coupon is no longer active")]
    Inactive,
    #[error("this coupon is not valid yet")]
    NotStarted,
    #[error("this coupon has expired")]
    Expired,
    #[error("this coupon needs an order of at least {0} (minor units)")]
    MinimumNotMet(i64),
    #[error("this coupon has been used up")]
    UsedUp,
}

impl Coupon {
    /// The discount this coupon gives on `subtotal` at `now`, or why it gives none. The usage
    /// limit is checked here for a clear message and again by the guarded update that redeems it.
    pub fn discount(&self, subtotal: i64, now: Timestamp) -> Result<i64, CouponRejection> {
        if !self.active {
            return Err(CouponRejection::Inactive);
        }
        if self.starts_at.is_some_and(|s| now < s) {
            return Err(CouponRejection::NotStarted);
        }
        if self.expires_at.is_some_and(|e| now >= e) {
            return Err(CouponRejection::Expired);
        }
        if self.usage_limit.is_some_and(|l| self.used_count >= l) {
            return Err(CouponRejection::UsedUp);
        }
        if subtotal < self.min_order.minor() {
            return Err(CouponRejection::MinimumNotMet(self.min_order.minor()));
        }
        let raw = match self.kind {
            CouponKind::Percent => div_round_half_up(i128::from(subtotal) * i128::from(self.value), 100) as i64,
            CouponKind::Flat => self.value,
        };
        let capped = self.max_discount.map_or(raw, |m| raw.min(m.minor()));
        Ok(capped.clamp(0, subtotal))
    }
}

pub fn parse_code(raw: &str) -> Result<String, String> {
    let s = raw.trim().to_ascii_uppercase();
    if !(3..=32).contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err("must be 3 to 32 letters, digits, '-' or '_'".into());
    }
    Ok(s)
}

/// The body of `POST /coupons` and `PATCH /coupons/{id}`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CouponInput {
    pub code: Option<String>,
    pub kind: Option<CouponKind>,
    pub value: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub max_discount: Option<Option<i64>>,
    pub min_order: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub usage_limit: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub starts_at: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Option<String>>,
    pub active: Option<bool>,
}

#[derive(Debug, Clone, Default)]
pub struct CouponChange {
    pub code: Option<String>,
    pub kind: Option<CouponKind>,
    pub value: Option<i64>,
    pub max_discount: Option<Option<Amount>>,
    pub min_order: Option<Amount>,
    pub usage_limit: Option<Option<i64>>,
    pub starts_at: Option<Option<Timestamp>>,
    pub expires_at: Option<Option<Timestamp>>,
    pub active: Option<bool>,
}

impl CouponInput {
    pub fn into_change(self, creating: bool) -> Result<CouponChange, Invalid> {
        let mut c = Checker::new();
        if creating {
            for (present, f) in
                [(self.code.is_some(), "code"), (self.kind.is_some(), "kind"), (self.value.is_some(), "value")]
            {
                if !present {
                    c.fail(f, "is required");
                }
            }
        }
        let code = c.check_opt("code", self.code, |s| parse_code(&s));
        let value = match (self.kind, self.value) {
            (_, None) => Some(None),
            (Some(CouponKind::Percent), Some(v)) => c.check(
                "value",
                if (1..=100).contains(&v) {
                    Ok(Some(v))
                } else {
                    Err("a percent coupon's value must be 1 to 100".into())
                },
            ),
            (Some(CouponKind::Flat), Some(v)) => c.check(
                "value",
                Amount::parse(v)
                    .and_then(|a| if a.minor() == 0 { Err("must be more than 0".into()) } else { Ok(Some(a.minor())) }),
            ),
            (None, Some(_)) => {
                c.fail("kind", "must be given with value");
                None
            }
        };
        let max_discount = c.check_opt("max_discount", self.max_discount, |v| v.map(Amount::parse).transpose());
        let min_order = c.check_opt("min_order", self.min_order, Amount::parse);
        let usage_limit = c.check_opt("usage_limit", self.usage_limit, |v| match v {
            Some(n) if !(1..=1_000_000_000).contains(&n) => Err("must be between 1 and 1000000000, or null".into()),
            other => Ok(other),
        });
        let starts_at =
            c.check_opt("starts_at", self.starts_at, |v| v.map(|s| Timestamp::parse_rfc3339(&s)).transpose());
        let expires_at =
            c.check_opt("expires_at", self.expires_at, |v| v.map(|s| Timestamp::parse_rfc3339(&s)).transpose());
        if let (Some(Some(Some(s))), Some(Some(Some(e)))) = (starts_at, expires_at)
            && e <= s
        {
            c.fail("expires_at", "must be after starts_at");
        }
        c.finish()?;
        Ok(CouponChange {
            code: checked(code),
            kind: self.kind,
            value: checked(value),
            max_discount: checked(max_discount),
            min_order: checked(min_order),
            usage_limit: checked(usage_limit),
            starts_at: checked(starts_at),
            expires_at: checked(expires_at),
            active: self.active,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coupon(kind: CouponKind, value: i64) -> Coupon {
        Coupon {
            id: CouponId::generate(),
            code: "SAVE".into(),
            kind,
            value,
            max_discount: None,
            min_order: Amount::ZERO,
            usage_limit: None,
            used_count: 0,
            starts_at: None,
            expires_at: None,
            active: true,
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
        }
    }

    #[test]
    fn percent_discounts_round_half_up_and_respect_the_cap() {
        let mut c = coupon(CouponKind::Percent, 15);
        assert_eq!(c.discount(1_010, Timestamp::from_millis(1)), Ok(152)); // 151.5 → 152
        c.max_discount = Some(Amount::parse(100).unwrap());
        assert_eq!(c.discount(1_010, Timestamp::from_millis(1)), Ok(100));
    }

    #[test]
    fn flat_discounts_never_exceed_the_subtotal() {
        assert_eq!(coupon(CouponKind::Flat, 5_000).discount(3_000, Timestamp::from_millis(1)), Ok(3_000));
    }

    #[test]
    fn coupons_are_refused_outside_their_window_limit_and_minimum() {
        let now = Timestamp::from_millis(10_000);
        let c = coupon(CouponKind::Flat, 100);
        assert_eq!(Coupon { active: false, ..c.clone() }.discount(500, now), Err(CouponRejection::Inactive));
        assert_eq!(
            Coupon { starts_at: Some(now.plus_secs(1)), ..c.clone() }.discount(500, now),
            Err(CouponRejection::NotStarted)
        );
        assert_eq!(Coupon { expires_at: Some(now), ..c.clone() }.discount(500, now), Err(CouponRejection::Expired));
        assert_eq!(
            Coupon { usage_limit: Some(2), used_count: 2, ..c.clone() }.discount(500, now),
            Err(CouponRejection::UsedUp)
        );
        assert_eq!(
            Coupon { min_order: Amount::parse(1_000).unwrap(), ..c }.discount(500, now),
            Err(CouponRejection::MinimumNotMet(1_000))
        );
    }

    #[test]
    fn coupon_input_is_checked_whole() {
        let e: Invalid =
            serde_json::from_str::<CouponInput>(r#"{"code":"x","kind":"percent","value":150,"usage_limit":0}"#)
                .unwrap()
                .into_change(true)
                .unwrap_err();
        let fields: Vec<_> = e.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["code", "value", "usage_limit"]);
    }
}
