//! Stores and their settings: what a merchant creates in a minute and tunes afterwards.

use serde::{Deserialize, Deserializer, Serialize};

use crate::text::{self, limits};
use crate::validate::{Checker, Invalid, checked};
use crate::{Amount, Currency, Phone, Slug, StoreId, Timestamp};

/// Basis points: 1800 = 18 %.
pub const MAX_TAX_RATE_BPS: i64 = 10_000;

/// Themes the storefront can render; merchant templates arrive with the storefront capability.
pub const THEMES: &[&str] = &["default"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct Contact {
    pub phone: Option<Phone>,
    pub whatsapp: Option<Phone>,
    pub email: Option<String>,
    pub address: Option<String>,
}

/// Everything about a store a merchant can change besides its name, slug and domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StoreSettings {
    pub currency: Currency,
    pub description: String,
    /// Charged per order, in minor units.
    pub delivery_fee: Amount,
    /// Orders whose goods (after discount) reach this amount deliver free. `null`: never free.
    pub free_delivery_threshold: Option<Amount>,
    /// Tax rate in basis points (1800 = 18 %).
    pub tax_rate_bps: u32,
    /// Whether catalog prices already include tax (usual for Indian MRP) or tax is added on top.
    pub prices_include_tax: bool,
    pub cod_enabled: bool,
    pub online_payment_enabled: bool,
    pub contact: Contact,
    pub logo_url: Option<String>,
    pub theme: String,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            currency: Currency::INR,
            description: String::new(),
            delivery_fee: Amount::ZERO,
            free_delivery_threshold: None,
            tax_rate_bps: 0,
            prices_include_tax: true,
            cod_enabled: true,
            online_payment_enabled: false,
            contact: Contact::default(),
            logo_url: None,
            theme: "default".into(),
        }
    }
}

/// A store as its merchant sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Store {
    pub id: StoreId,
    pub slug: Slug,
    pub name: String,
    #[serde(flatten)]
    pub settings: StoreSettings,
    pub custom_domain: Option<String>,
    /// Where shoppers find the store, relative to the platform's address.
    pub path: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A store as shoppers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PublicStore {
    pub id: StoreId,
    pub slug: Slug,
    pub name: String,
    pub description: String,
    pub currency: Currency,
    pub delivery_fee: Amount,
    pub free_delivery_threshold: Option<Amount>,
    pub tax_rate_bps: u32,
    pub prices_include_tax: bool,
    pub cod_enabled: bool,
    pub online_payment_enabled: bool,
    pub contact: Contact,
    pub logo_url: Option<String>,
}

impl From<&Store> for PublicStore {
    fn from(s: &Store) -> Self {
        PublicStore {
            id: s.id,
            slug: s.slug.clone(),
            name: s.name.clone(),
            description: s.settings.description.clone(),
            currency: s.settings.currency,
            delivery_fee: s.settings.delivery_fee,
            free_delivery_threshold: s.settings.free_delivery_threshold,
            tax_rate_bps: s.settings.tax_rate_bps,
            prices_include_tax: s.settings.prices_include_tax,
            cod_enabled: s.settings.cod_enabled,
            online_payment_enabled: s.settings.online_payment_enabled,
            contact: s.settings.contact.clone(),
            logo_url: s.settings.logo_url.clone(),
        }
    }
}

/// Deserializes a present field, even `null`, as `Some(..)`: lets PATCH tell "set to null"
/// (`Some(None)`) from "leave alone" (`None`).
pub fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactInput {
    pub phone: Option<String>,
    pub whatsapp: Option<String>,
    pub email: Option<String>,
    pub address: Option<String>,
}

/// The body of `POST /stores` (where `name` is required) and `PATCH /stores/{id}`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreInput {
    pub name: Option<String>,
    /// Chosen slug; derived from the name when absent.
    pub slug: Option<String>,
    pub description: Option<String>,
    pub currency: Option<String>,
    pub delivery_fee: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub free_delivery_threshold: Option<Option<i64>>,
    pub tax_rate_bps: Option<i64>,
    pub prices_include_tax: Option<bool>,
    pub cod_enabled: Option<bool>,
    pub online_payment_enabled: Option<bool>,
    pub contact: Option<ContactInput>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub logo_url: Option<Option<String>>,
    pub theme: Option<String>,
    /// A host name shoppers can reach the store at; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub custom_domain: Option<Option<String>>,
}

/// A validated change to a store. Applied over the current settings by [`StoreChange::apply`].
#[derive(Debug, Clone, Default)]
pub struct StoreChange {
    pub name: Option<String>,
    pub slug: Option<Slug>,
    pub custom_domain: Option<Option<String>>,
    settings: SettingsChange,
}

#[derive(Debug, Clone, Default)]
struct SettingsChange {
    description: Option<String>,
    currency: Option<Currency>,
    delivery_fee: Option<Amount>,
    free_delivery_threshold: Option<Option<Amount>>,
    tax_rate_bps: Option<u32>,
    prices_include_tax: Option<bool>,
    cod_enabled: Option<bool>,
    online_payment_enabled: Option<bool>,
    contact: Option<Contact>,
    logo_url: Option<Option<String>>,
    theme: Option<String>,
}

/// A new store: its name, its slug if chosen, and its starting settings.
#[derive(Debug, Clone)]
pub struct NewStore {
    pub name: String,
    pub slug: Option<Slug>,
    pub custom_domain: Option<String>,
    pub settings: StoreSettings,
}

impl StoreInput {
    pub fn into_new(self) -> Result<NewStore, Invalid> {
        let missing_name = self.name.is_none();
        let change = self.into_change();
        let mut c = Checker::new();
        if missing_name {
            c.fail("name", "is required");
        }
        let change = match change {
            Ok(ch) => Some(ch),
            Err(e) => {
                c.merge("", e);
                None
            }
        };
        c.finish()?;
        let change = checked(change);
        let settings = change.apply_settings(&StoreSettings::default())?;
        Ok(NewStore {
            name: checked(change.name),
            slug: change.slug,
            custom_domain: change.custom_domain.flatten(),
            settings,
        })
    }

    pub fn into_change(self) -> Result<StoreChange, Invalid> {
        let mut c = Checker::new();
        let name = c.check_opt("name", self.name, |n| text::line(&n, 1, limits::NAME));
        let slug = c.check_opt("slug", self.slug, |s| Slug::parse(&s));
        let description = c.check_opt("description", self.description, |d| text::multiline(&d, 5_000));
        let currency = c.check_opt("currency", self.currency, |s| Currency::parse(&s));
        let delivery_fee = c.check_opt("delivery_fee", self.delivery_fee, Amount::parse);
        let free_delivery_threshold =
            c.check_opt("free_delivery_threshold", self.free_delivery_threshold, |v| v.map(Amount::parse).transpose());
        let tax_rate_bps = c.check_opt("tax_rate_bps", self.tax_rate_bps, |v| {
            if (0..=MAX_TAX_RATE_BPS).contains(&v) {
                Ok(v as u32)
            } else {
                Err(format!("must be between 0 and {MAX_TAX_RATE_BPS} basis points"))
            }
        });
        let contact = match self.contact {
            None => Some(None),
            Some(ci) => {
                let phone = c.check_opt("contact.phone", ci.phone, |p| Phone::parse(&p));
                let whatsapp = c.check_opt("contact.whatsapp", ci.whatsapp, |p| Phone::parse(&p));
                let email = c.check_opt("contact.email", ci.email, |e| text::email(&e));
                let address = c.check_opt("contact.address", ci.address, |a| text::multiline(&a, 500));
                match (phone, whatsapp, email, address) {
                    (Some(phone), Some(whatsapp), Some(email), Some(address)) => {
                        Some(Some(Contact { phone, whatsapp, email, address }))
                    }
                    _ => None,
                }
            }
        };
        let logo_url = c.check_opt("logo_url", self.logo_url, |v| v.map(|u| text::url(&u)).transpose());
        let theme = c.check_opt("theme", self.theme, |t| {
            if THEMES.contains(&t.as_str()) { Ok(t) } else { Err(format!("must be one of: {}", THEMES.join(", "))) }
        });
        let custom_domain =
            c.check_opt("custom_domain", self.custom_domain, |v| v.map(|d| text::domain(&d)).transpose());
        c.finish()?;
        Ok(StoreChange {
            name: checked(name),
            slug: checked(slug),
            custom_domain: checked(custom_domain),
            settings: SettingsChange {
                description: checked(description),
                currency: checked(currency),
                delivery_fee: checked(delivery_fee),
                free_delivery_threshold: checked(free_delivery_threshold),
                tax_rate_bps: checked(tax_rate_bps),
                prices_include_tax: self.prices_include_tax,
                cod_enabled: self.cod_enabled,
                online_payment_enabled: self.online_payment_enabled,
                contact: checked(contact),
                logo_url: checked(logo_url),
                theme: checked(theme),
            },
        })
    }
}

impl StoreChange {
    /// The settings after this change, checked as a whole (a store must take some payment).
    pub fn apply_settings(&self, current: &StoreSettings) -> Result<StoreSettings, Invalid> {
        let ch = &self.settings;
        let mut s = current.clone();
        if let Some(v) = &ch.description {
            s.description = v.clone();
        }
        if let Some(v) = ch.currency {
            s.currency = v;
        }
        if let Some(v) = ch.delivery_fee {
            s.delivery_fee = v;
        }
        if let Some(v) = ch.free_delivery_threshold {
            s.free_delivery_threshold = v;
        }
        if let Some(v) = ch.tax_rate_bps {
            s.tax_rate_bps = v;
        }
        if let Some(v) = ch.prices_include_tax {
            s.prices_include_tax = v;
        }
        if let Some(v) = ch.cod_enabled {
            s.cod_enabled = v;
        }
        if let Some(v) = ch.online_payment_enabled {
            s.online_payment_enabled = v;
        }
        if let Some(v) = &ch.contact {
            s.contact = v.clone();
        }
        if let Some(v) = &ch.logo_url {
            s.logo_url = v.clone();
        }
        if let Some(v) = &ch.theme {
            s.theme = v.clone();
        }
        if !s.cod_enabled && !s.online_payment_enabled {
            return Err(Invalid::field("cod_enabled", "a store must accept cash on delivery or online payment"));
        }
        Ok(s)
    }

    pub fn touches_settings(&self) -> bool {
        let ch = &self.settings;
        ch.description.is_some()
            || ch.currency.is_some()
            || ch.delivery_fee.is_some()
            || ch.free_delivery_threshold.is_some()
            || ch.tax_rate_bps.is_some()
            || ch.prices_include_tax.is_some()
            || ch.cod_enabled.is_some()
            || ch.online_payment_enabled.is_some()
            || ch.contact.is_some()
            || ch.logo_url.is_some()
            || ch.theme.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(json: &str) -> StoreInput {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_store_needs_only_a_name() {
        let s = input(r#"{"name":"Sharma General Store"}"#).into_new().unwrap();
        assert_eq!(s.name, "Sharma General Store");
        assert_eq!(s.settings.currency, Currency::INR);
        assert!(s.settings.cod_enabled);
    }

    #[test]
    fn every_bad_field_is_named() {
        let e = input(
            r#"{"name":"","currency":"XYZ","delivery_fee":-1,"tax_rate_bps":20000,"slug":"API","contact":{"phone":"12"}}"#,
        )
        .into_new()
        .unwrap_err();
        let fields: Vec<_> = e.0.iter().map(|f| f.field.as_str()).collect();
        for f in ["name", "slug", "currency", "delivery_fee", "tax_rate_bps", "contact.phone"] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
    }

    #[test]
    fn a_store_must_take_some_payment() {
        let e = input(r#"{"name":"x","cod_enabled":false}"#).into_new().unwrap_err();
        assert_eq!(e.0[0].field, "cod_enabled");
    }

    #[test]
    fn null_clears_and_absent_keeps() {
        let current =
            StoreSettings { free_delivery_threshold: Some(Amount::parse(50_000).unwrap()), ..StoreSettings::default() };
        let keep = input(r#"{"delivery_fee":4000}"#).into_change().unwrap();
        assert_eq!(keep.apply_settings(&current).unwrap().free_delivery_threshold, current.free_delivery_threshold);
        let clear = input(r#"{"free_delivery_threshold":null}"#).into_change().unwrap();
        assert_eq!(clear.apply_settings(&current).unwrap().free_delivery_threshold, None);
    }
}
