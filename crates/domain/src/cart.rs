//! Carts (held server-side behind an unguessable token) and the checkout request that turns one
//! into an order.

use serde::{Deserialize, Serialize};

use crate::order::{Address, PaymentMethod};
use crate::pricing::Totals;
use crate::text::{self, limits};
use crate::validate::{Checker, Invalid, checked};
use crate::{Amount, CartId, Currency, Phone, ProductId, Timestamp, VariantId};

/// Most units of one variant a cart line may hold.
pub const MAX_LINE_QUANTITY: i64 = 10_000;
/// Most lines a cart may hold.
pub const MAX_CART_LINES: usize = 100;
/// A cart untouched this long is gone.
pub const CART_TTL_SECS: i64 = 30 * 24 * 3600;

/// A line quantity, `0..=10_000`; 0 removes the line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity(u32);

impl Quantity {
    pub fn parse(n: i64) -> Result<Self, String> {
        if (0..=MAX_LINE_QUANTITY).contains(&n) {
            Ok(Quantity(n as u32))
        } else {
            Err(format!("must be between 0 and {MAX_LINE_QUANTITY} (0 removes the item)"))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CartStatus {
    Open,
    /// Became an order; it can no longer change.
    CheckedOut,
}

impl CartStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CartStatus::Open => "open",
            CartStatus::CheckedOut => "checked_out",
        }
    }

    pub fn from_stored(s: &str) -> Self {
        if s == "checked_out" { CartStatus::CheckedOut } else { CartStatus::Open }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CartLine {
    pub variant_id: VariantId,
    pub product_id: ProductId,
    pub title: String,
    pub variant_title: String,
    pub image: Option<String>,
    /// The current catalog price; checkout prices again, at the moment of the order.
    pub unit_price: Amount,
    pub quantity: u32,
    pub line_total: i64,
    /// False when the variant is sold out or no longer on sale.
    pub available: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Cart {
    pub id: CartId,
    pub status: CartStatus,
    pub currency: Currency,
    pub items: Vec<CartLine>,
    /// Totals before any coupon, as checkout would charge them now.
    pub totals: Totals,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub expires_at: Timestamp,
}

/// The body of `PUT /carts/{id}/items`: sets a line's quantity (0 removes it).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CartItemInput {
    pub variant_id: String,
    pub quantity: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerInput {
    pub name: String,
    pub phone: String,
    pub email: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressInput {
    pub line1: String,
    pub line2: Option<String>,
    pub landmark: Option<String>,
    pub city: String,
    pub state: Option<String>,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2; IN when absent.
    pub country: Option<String>,
}

/// The body of `POST /carts/{id}/checkout`. Prices are never part of it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutInput {
    pub customer: CustomerInput,
    pub address: AddressInput,
    pub payment_method: PaymentMethod,
    pub coupon: Option<String>,
    pub note: Option<String>,
    /// For online payment: where the provider sends the shopper back (`https://…`). Defaults
    /// to the order's page on this platform's storefront.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutCustomer {
    pub name: String,
    pub phone: Phone,
    pub email: Option<String>,
}

/// A validated checkout request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    pub customer: CheckoutCustomer,
    pub address: Address,
    pub payment_method: PaymentMethod,
    pub coupon_code: Option<String>,
    pub note: Option<String>,
}

impl CheckoutInput {
    pub fn parse(self) -> Result<Checkout, Invalid> {
        let mut c = Checker::new();
        let name = c.check("customer.name", text::line(&self.customer.name, 1, limits::NAME));
        let phone = c.check("customer.phone", Phone::parse(&self.customer.phone));
        let email = c.check_opt("customer.email", self.customer.email, |e| text::email(&e));
        let a = self.address;
        let line1 = c.check("address.line1", text::line(&a.line1, 1, limits::ADDRESS_LINE));
        let line2 = c.check_opt("address.line2", a.line2, |s| text::line(&s, 0, limits::ADDRESS_LINE));
        let landmark = c.check_opt("address.landmark", a.landmark, |s| text::line(&s, 0, limits::ADDRESS_LINE));
        let city = c.check("address.city", text::line(&a.city, 1, limits::SHORT));
        let state = c.check_opt("address.state", a.state, |s| text::line(&s, 0, limits::SHORT));
        let country = c.check("address.country", {
            let raw = a.country.unwrap_or_else(|| "IN".into()).trim().to_ascii_uppercase();
            if raw.len() == 2 && raw.bytes().all(|b| b.is_ascii_uppercase()) {
                Ok(raw)
            } else {
                Err("must be a two-letter country code such as IN".into())
            }
        });
        let postal_code = c.check("address.postal_code", {
            let p: String = a.postal_code.trim().chars().filter(|ch| *ch != ' ').collect();
            let india = country.as_deref().is_none_or(|c| c == "IN");
            if india && !(p.len() == 6 && p.bytes().all(|b| b.is_ascii_digit()) && !p.starts_with('0')) {
                Err("must be a 6-digit PIN code".into())
            } else if !(3..=10).contains(&p.len()) || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                Err("must be a postal code".into())
            } else {
                Ok(p.to_ascii_uppercase())
            }
        });
        let coupon_code =
            c.check_opt("coupon", self.coupon.filter(|s| !s.trim().is_empty()), |s| crate::coupon::parse_code(&s));
        let note = c.check_opt("note", self.note, |n| text::multiline(&n, limits::NOTE));
        c.finish()?;
        Ok(Checkout {
            customer: CheckoutCustomer { name: checked(name), phone: checked(phone), email: checked(email) },
            address: Address {
                line1: checked(line1),
                line2: checked(line2).filter(|s| !s.is_empty()),
                landmark: checked(landmark).filter(|s| !s.is_empty()),
                city: checked(city),
                state: checked(state).filter(|s| !s.is_empty()),
                postal_code: checked(postal_code),
                country: checked(country),
            },
            payment_method: self.payment_method,
            coupon_code: checked(coupon_code),
            note: checked(note).filter(|s| !s.is_empty()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_bounded() {
        assert!(Quantity::parse(-1).is_err());
        assert!(Quantity::parse(MAX_LINE_QUANTITY + 1).is_err());
        assert_eq!(Quantity::parse(0).unwrap().get(), 0);
    }

    #[test]
    fn a_checkout_names_every_bad_field() {
        let input: CheckoutInput = serde_json::from_str(
            r#"{"customer":{"name":"","phone":"123"},"address":{"line1":"","city":"Pune","postal_code":"12"},"payment_method":"cod","coupon":"!"}"#,
        )
        .unwrap();
        let e = input.parse().unwrap_err();
        let fields: Vec<_> = e.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["customer.name", "customer.phone", "address.line1", "address.postal_code", "coupon"]);
    }

    #[test]
    fn a_good_checkout_parses() {
        let input: CheckoutInput = serde_json::from_str(
            r#"{"customer":{"name":"Asha","phone":"98765 43210"},"address":{"line1":"12 MG Road","city":"Pune","postal_code":"411 001"},"payment_method":"cod","coupon":"  "}"#,
        )
        .unwrap();
        let c = input.parse().unwrap();
        assert_eq!(c.customer.phone.as_str(), "+919876543210");
        assert_eq!(c.address.postal_code, "411001");
        assert_eq!(c.coupon_code, None);
    }
}

/// A unit shortfall found at checkout (or when adding to a cart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Shortage {
    pub variant_id: VariantId,
    /// Product and variant title, e.g. "Masala Chai / 250 g".
    pub title: String,
    pub requested: u32,
    pub available: i64,
}
