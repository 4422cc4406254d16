//! The seed manifest: the contract between `kirana seed` (which writes
//! `<data-dir>/seed-manifest.json`) and `kirana bench` (which reads it here). It names the stores
//! by slug, the merchant keys for dashboard traffic and the flash-sale product; everything else
//! (categories, products, variants) the bench discovers through the API like any client. This
//! module reads and checks the file; it never writes one and never talks to the server.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The manifest format this bench understands.
pub const MANIFEST_VERSION: u32 = 1;

/// ```json
/// { "version": 1, "stores": 1000, "slug_prefix": "seed-", "search_terms": ["chai"],
///   "merchants": [ { "store_index": 0, "store_id": "<uuid>", "token": "kir_..." } ],
///   "flash_sale": { "store_index": 0, "product_id": "<uuid>", "variant_id": "<uuid>", "stock": 500 } }
/// ```
/// Store `i` (`0 ≤ i < stores`) has slug `{slug_prefix}{i}`; store 0 is the most popular.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub stores: u64,
    pub slug_prefix: String,
    #[serde(default)]
    pub search_terms: Vec<String>,
    /// Keys for the most popular stores, for dashboard traffic.
    #[serde(default)]
    pub merchants: Vec<MerchantKey>,
    #[serde(default)]
    pub flash_sale: Option<FlashSale>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MerchantKey {
    pub store_index: u64,
    pub store_id: String,
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlashSale {
    pub store_index: u64,
    pub product_id: String,
    pub variant_id: String,
    /// Units on hand when the manifest was written; no run may sell more.
    pub stock: i64,
}

impl Manifest {
    pub fn load(path: &Path) -> anyhow::Result<Manifest> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("cannot read the seed manifest {} (run `kirana seed` first, or pass --manifest)", path.display())
        })?;
        Manifest::parse(&text).with_context(|| format!("bad seed manifest {}", path.display()))
    }

    /// Parses and checks; merchants come back ordered by popularity (store index), which is
    /// what the Zipf choice among them assumes.
    pub fn parse(text: &str) -> anyhow::Result<Manifest> {
        let mut m: Manifest = serde_json::from_str(text)?;
        anyhow::ensure!(
            m.version == MANIFEST_VERSION,
            "manifest version {} is not supported (this bench reads version {MANIFEST_VERSION})",
            m.version
        );
        anyhow::ensure!(m.stores >= 1, "`stores` must be at least 1");
        anyhow::ensure!(!m.slug_prefix.is_empty(), "`slug_prefix` must not be empty");
        for k in &m.merchants {
            anyhow::ensure!(k.store_index < m.stores, "merchant store_index {} is not below `stores`", k.store_index);
            anyhow::ensure!(
                !k.token.is_empty() && !k.store_id.is_empty(),
                "a merchant entry lacks its token or store_id"
            );
        }
        if let Some(f) = &m.flash_sale {
            anyhow::ensure!(f.store_index < m.stores, "flash_sale.store_index {} is not below `stores`", f.store_index);
            anyhow::ensure!(f.stock >= 0, "flash_sale.stock must not be negative");
        }
        m.search_terms.retain(|t| !t.trim().is_empty());
        m.merchants.sort_by_key(|k| k.store_index);
        Ok(m)
    }

    pub fn slug(&self, index: u64) -> String {
        format!("{}{index}", self.slug_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_as_seed_writes_it_parses_with_merchants_in_popularity_order() {
        let m = Manifest::parse(
            r#"{"version":1,"stores":3,"slug_prefix":"seed-","search_terms":["chai",""],
                "merchants":[{"store_index":2,"store_id":"b","token":"kir_2"},{"store_index":0,"store_id":"a","token":"kir_0"}],
                "flash_sale":{"store_index":0,"product_id":"p","variant_id":"v","stock":5}}"#,
        )
        .unwrap();
        assert_eq!(m.slug(2), "seed-2");
        assert_eq!(m.search_terms, vec!["chai"]);
        assert_eq!(m.merchants.iter().map(|k| k.store_index).collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(m.flash_sale.unwrap().stock, 5);
    }

    #[test]
    fn optional_parts_may_be_missing() {
        let m = Manifest::parse(r#"{"version":1,"stores":1,"slug_prefix":"s-"}"#).unwrap();
        assert!(m.merchants.is_empty() && m.flash_sale.is_none() && m.search_terms.is_empty());
    }

    #[test]
    fn a_manifest_that_points_outside_its_stores_or_has_another_version_is_refused() {
        for bad in [
            r#"{"version":2,"stores":1,"slug_prefix":"s-"}"#,
            r#"{"version":1,"stores":0,"slug_prefix":"s-"}"#,
            r#"{"version":1,"stores":1,"slug_prefix":"s-","merchants":[{"store_index":1,"store_id":"a","token":"t"}]}"#,
            r#"{"version":1,"stores":1,"slug_prefix":"s-","flash_sale":{"store_index":0,"product_id":"p","variant_id":"v","stock":-1}}"#,
        ] {
            assert!(Manifest::parse(bad).is_err(), "accepted {bad}");
        }
    }
}
