//! What the bench has learnt about each store's catalog from the server's answers: products,
//! their variants and whether each can be bought. Sessions read it to land
//! straight on a product page and to find something in stock for a cart. It holds only ids seen
//! in responses (nothing is invented) and a bounded number per store, so memory stays small at
//! a million stores. Striped locks: sessions of different stores rarely meet.

use std::collections::HashMap;
use std::sync::Mutex;

use rand::Rng;
use rand::seq::IndexedRandom;
use serde::Deserialize;

/// Products remembered per store; enough variety for carts without growing with the catalog.
const PRODUCTS_PER_STORE: usize = 32;
const STRIPES: usize = 64;

/// A product as the storefront lists and shows it (only what the bench needs).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ProductCard {
    pub id: String,
    #[serde(default)]
    pub variants: Vec<VariantCard>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct VariantCard {
    pub id: String,
    pub available: bool,
}

#[derive(Debug, Default)]
struct StoreCatalog {
    products: Vec<ProductCard>,
}

pub(crate) struct Catalog {
    stripes: Vec<Mutex<HashMap<u64, StoreCatalog>>>,
}

impl Catalog {
    pub fn new() -> Catalog {
        Catalog { stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect() }
    }

    fn with<T>(&self, store: u64, f: impl FnOnce(&mut StoreCatalog) -> T) -> T {
        let mut stripe = self.stripes[(store % STRIPES as u64) as usize].lock().expect("catalog lock");
        f(stripe.entry(store).or_default())
    }

    /// Adds or refreshes products (a later answer knows better what is in stock).
    pub fn remember(&self, store: u64, products: &[ProductCard]) {
        self.with(store, |c| {
            for p in products {
                if let Some(known) = c.products.iter_mut().find(|k| k.id == p.id) {
                    known.variants.clone_from(&p.variants);
                } else if c.products.len() < PRODUCTS_PER_STORE {
                    c.products.push(p.clone());
                }
            }
        });
    }

    pub fn random_product<R: Rng + ?Sized>(&self, store: u64, rng: &mut R) -> Option<String> {
        self.with(store, |c| c.products.choose(rng).map(|p| p.id.clone()))
    }

    /// Variants believed in stock, except `exclude` (the flash-sale item, kept for its phase).
    pub fn available_variants(&self, store: u64, exclude: Option<&str>) -> Vec<String> {
        self.with(store, |c| {
            c.products
                .iter()
                .flat_map(|p| &p.variants)
                .filter(|v| v.available && Some(v.id.as_str()) != exclude)
                .map(|v| v.id.clone())
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn card(id: &str, variants: &[(&str, bool)]) -> ProductCard {
        ProductCard {
            id: id.into(),
            variants: variants.iter().map(|(v, a)| VariantCard { id: (*v).into(), available: *a }).collect(),
        }
    }

    #[test]
    fn later_answers_refresh_availability_and_the_excluded_variant_is_never_offered() {
        let c = Catalog::new();
        c.remember(1, &[card("p1", &[("v1", true), ("v2", true)]), card("flash", &[("fv", true)])]);
        c.remember(1, &[card("p1", &[("v1", false), ("v2", true)])]);
        assert_eq!(c.available_variants(1, Some("fv")), vec!["v2".to_string()]);
        assert!(c.available_variants(2, None).is_empty(), "stores do not share catalogs");
    }

    #[test]
    fn a_store_remembers_a_bounded_number_of_products() {
        let c = Catalog::new();
        let many: Vec<_> = (0..100).map(|i| card(&format!("p{i}"), &[("v", true)])).collect();
        c.remember(5, &many);
        let mut rng = SmallRng::seed_from_u64(1);
        let picked: std::collections::HashSet<_> = (0..500).filter_map(|_| c.random_product(5, &mut rng)).collect();
        assert_eq!(picked.len(), PRODUCTS_PER_STORE);
        assert!(c.random_product(6, &mut rng).is_none());
    }
}
