//! Store slugs: the `mystore` in `kirana.example/mystore`. Unique across the platform, lowercase,
//! and never one of the words the platform's own paths use.

use serde::{Deserialize, Deserializer, Serialize};

pub const MIN_LEN: usize = 3;
pub const MAX_LEN: usize = 48;

/// Words that are paths of the platform itself, or that would mislead shoppers.
const RESERVED: &[&str] = &[
    "about",
    "account",
    "accounts",
    "admin",
    "api",
    "app",
    "apps",
    "assets",
    "auth",
    "billing",
    "blog",
    "cart",
    "checkout",
    "cdn",
    "dashboard",
    "docs",
    "favicon.ico",
    "healthz",
    "help",
    "home",
    "images",
    "img",
    "kirana",
    "legal",
    "login",
    "logout",
    "media",
    "metrics",
    "new",
    "null",
    "openapi",
    "openapi.json",
    "ops",
    "orders",
    "pricing",
    "privacy",
    "readyz",
    "robots.txt",
    "root",
    "search",
    "settings",
    "signin",
    "signup",
    "sitemap.xml",
    "static",
    "status",
    "store",
    "stores",
    "support",
    "system",
    "terms",
    "undefined",
    "uploads",
    "www",
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, example = "sharma-general-store")]
pub struct Slug(String);

impl Slug {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        if s.len() < MIN_LEN || s.len() > MAX_LEN {
            return Err(format!("must be {MIN_LEN} to {MAX_LEN} characters"));
        }
        if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err("may contain only lowercase letters, digits and hyphens".into());
        }
        if s.starts_with('-') || s.ends_with('-') || s.contains("--") {
            return Err("must not start or end with a hyphen or contain two in a row".into());
        }
        if RESERVED.contains(&s) {
            return Err(format!("'{s}' is reserved"));
        }
        Ok(Slug(s.to_string()))
    }

    /// Derives a slug from a store name: `"Sharma's General Store!"` → `sharma-s-general-store`.
    /// `None` when the name has too few ASCII letters or digits (e.g. it is all Devanagari);
    /// the caller then picks a generated one.
    pub fn derive(name: &str) -> Option<Slug> {
        let mut out = String::with_capacity(name.len());
        for c in name.chars() {
            if c.is_ascii_alphanumeric() {
                out.push(c.to_ascii_lowercase());
            } else if !out.ends_with('-') && !out.is_empty() {
                out.push('-');
            }
            if out.len() >= MAX_LEN - 5 {
                break; // room for a "-1234" suffix
            }
        }
        let trimmed = out.trim_matches('-');
        Slug::parse(trimmed).ok()
    }

    /// The same slug with a suffix, for finding a free one (`chai-shop-2`).
    pub fn with_suffix(&self, suffix: &str) -> Option<Slug> {
        let mut base = self.0.clone();
        base.truncate(MAX_LEN.saturating_sub(suffix.len() + 1));
        Slug::parse(&format!("{}-{suffix}", base.trim_end_matches('-'))).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn from_stored(s: String) -> Self {
        Slug(s)
    }
}

impl std::fmt::Display for Slug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Slug {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Slug::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_words_are_never_slugs() {
        for w in ["api", "dashboard", "static", "metrics", "healthz"] {
            assert!(Slug::parse(w).is_err(), "{w}");
        }
    }

    #[test]
    fn malformed_slugs_are_refused() {
        for s in ["ab", "Has-Caps", "-lead", "trail-", "dou--ble", "sp ace", "ünï", &"x".repeat(49)] {
            assert!(Slug::parse(s).is_err(), "{s}");
        }
        assert!(Slug::parse("chai-shop-2").is_ok());
    }

    #[test]
    fn slugs_derive_from_names() {
        assert_eq!(Slug::derive("Sharma's General Store!").unwrap().as_str(), "sharma-s-general-store");
        assert_eq!(Slug::derive("  API  "), None);
        assert_eq!(Slug::derive("किराना"), None);
        let long = Slug::derive(&"word ".repeat(40)).unwrap();
        assert!(long.as_str().len() <= MAX_LEN - 5);
    }

    #[test]
    fn suffixes_keep_slugs_valid() {
        let s = Slug::parse(&"a".repeat(48)).unwrap();
        let t = s.with_suffix("1234").unwrap();
        assert!(t.as_str().len() <= MAX_LEN);
        assert!(t.as_str().ends_with("-1234"));
    }
}
