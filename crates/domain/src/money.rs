//! Money: integer minor units (paise, cents) with an ISO 4217 currency. Never floating point.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The largest amount accepted anywhere: 10^11 minor units (₹1,00,00,00,000.00). Bounding every
/// input keeps every total (≤ 100 lines × 10,000 units × this) inside an `i64`.
pub const MAX_AMOUNT: i64 = 100_000_000_000;

/// A non-negative amount of minor units, at most [`MAX_AMOUNT`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(transparent)]
#[schema(value_type = i64, minimum = 0, maximum = 100_000_000_000_f64)]
pub struct Amount(i64);

impl Amount {
    pub const ZERO: Amount = Amount(0);

    pub fn parse(minor: i64) -> Result<Self, String> {
        if minor < 0 {
            Err("must not be negative".into())
        } else if minor > MAX_AMOUNT {
            Err(format!("must be at most {MAX_AMOUNT} minor units"))
        } else {
            Ok(Self(minor))
        }
    }

    /// For values read back from storage, which only ever held parsed amounts.
    pub const fn from_stored(minor: i64) -> Self {
        Self(minor)
    }

    pub const fn minor(self) -> i64 {
        self.0
    }
}

/// An ISO 4217 currency the platform can price in, with its number of minor-unit digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: &'static str,
    exponent: u8,
}

/// Currencies kirana prices in. Adding one is a line here; nothing else assumes a currency.
const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2),
    ("AUD", 2),
    ("BDT", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CNY", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("IDR", 2),
    ("INR", 2),
    ("JPY", 0),
    ("KES", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("LKR", 2),
    ("MXN", 2),
    ("MYR", 2),
    ("NGN", 2),
    ("NPR", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PHP", 2),
    ("PKR", 2),
    ("QAR", 2),
    ("SAR", 2),
    ("SGD", 2),
    ("THB", 2),
    ("USD", 2),
    ("VND", 0),
    ("ZAR", 2),
];

impl Currency {
    pub const INR: Currency = Currency { code: "INR", exponent: 2 };

    pub fn parse(raw: &str) -> Result<Self, String> {
        let upper = raw.trim().to_ascii_uppercase();
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == upper)
            .map(|&(code, exponent)| Currency { code, exponent })
            .ok_or_else(|| format!("'{raw}' is not a supported ISO 4217 currency code"))
    }

    pub fn code(self) -> &'static str {
        self.code
    }

    /// Digits after the decimal point (2 for INR, 0 for JPY, 3 for KWD).
    pub fn exponent(self) -> u8 {
        self.exponent
    }

    /// Renders an amount for people, e.g. `INR 1,234.50` → `1234.50 INR`.
    pub fn display(self, minor: i64) -> String {
        let sign = if minor < 0 { "-" } else { "" };
        let m = minor.unsigned_abs();
        if self.exponent == 0 {
            return format!("{sign}{m} {}", self.code);
        }
        let div = 10u64.pow(u32::from(self.exponent));
        format!("{sign}{}.{:0width$} {}", m / div, m % div, self.code, width = usize::from(self.exponent))
    }
}

impl utoipa::PartialSchema for Currency {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let codes: Vec<&str> = CURRENCIES.iter().map(|(c, _)| *c).collect();
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("ISO 4217 currency code"))
            .enum_values(Some(codes))
            .into()
    }
}

impl utoipa::ToSchema for Currency {}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code)
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Currency::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Rounds `numerator / denominator` half away from zero, in integers. Used for tax and percent
/// discounts so that every total is exact and reproducible.
pub fn div_round_half_up(numerator: i128, denominator: i128) -> i128 {
    debug_assert!(denominator > 0);
    let q = numerator / denominator;
    let r = numerator % denominator;
    if r.abs() * 2 >= denominator { q + numerator.signum() } else { q }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_bounded_and_non_negative() {
        assert!(Amount::parse(-1).is_err());
        assert!(Amount::parse(MAX_AMOUNT + 1).is_err());
        assert_eq!(Amount::parse(49_900).map(Amount::minor), Ok(49_900));
    }

    #[test]
    fn currencies_parse_case_insensitively_and_know_their_exponent() {
        assert_eq!(Currency::parse("inr"), Ok(Currency::INR));
        assert_eq!(Currency::parse("JPY").map(Currency::exponent), Ok(0));
        assert_eq!(Currency::parse("KWD").map(Currency::exponent), Ok(3));
        assert!(Currency::parse("XXX").is_err());
    }

    #[test]
    fn amounts_display_with_the_currency_exponent() {
        assert_eq!(Currency::INR.display(123_450), "1234.50 INR");
        assert_eq!(Currency::parse("JPY").unwrap().display(500), "500 JPY");
        assert_eq!(Currency::parse("KWD").unwrap().display(1_005), "1.005 KWD");
    }

    #[test]
    fn rounding_is_half_up() {
        assert_eq!(div_round_half_up(5, 10), 1);
        assert_eq!(div_round_half_up(4, 10), 0);
        assert_eq!(div_round_half_up(15, 10), 2);
        assert_eq!(div_round_half_up(14, 10), 1);
    }
}
