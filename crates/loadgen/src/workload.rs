//! What a session does, decided before it starts: which store (Zipf: a few hot stores and a long
//! tail), whether it is a shopper or a merchant, how many pages it browses, whether it searches,
//! fills a cart and checks out. Pure and seeded: the same seed draws the same sessions, so the
//! ratios can be tested without a server. Choices that depend on what the server answers (which
//! category, which product) are made later, by the session, with the session's own RNG.

use rand::Rng;
use rand_distr::{Distribution, Zipf};

/// The session mix; each ratio is a probability in `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Mix {
    /// Of all sessions: merchants opening their dashboard.
    pub merchant: f64,
    /// Of shopper sessions: those that search once.
    pub search: f64,
    /// Of shopper sessions: those that open a cart.
    pub cart: f64,
    /// Of sessions with a cart: those that check out.
    pub checkout: f64,
    /// Of shopper sessions: those that arrive on a product page from a shared link (only once
    /// an earlier session has discovered a product of that store).
    pub landing: f64,
    pub min_browse: u32,
    pub max_browse: u32,
    pub max_cart_items: u32,
}

impl Mix {
    pub fn check(&self) -> anyhow::Result<()> {
        for (name, p) in [
            ("--merchant-ratio", self.merchant),
            ("--search-ratio", self.search),
            ("--cart-ratio", self.cart),
            ("--checkout-ratio", self.checkout),
            ("--landing-ratio", self.landing),
        ] {
            anyhow::ensure!((0.0..=1.0).contains(&p), "{name} must be between 0 and 1, not {p}");
        }
        anyhow::ensure!(
            self.min_browse <= self.max_browse,
            "--min-browse ({}) must not exceed --max-browse ({})",
            self.min_browse,
            self.max_browse
        );
        anyhow::ensure!(self.max_browse <= 100, "--max-browse must be at most 100");
        anyhow::ensure!((1..=10).contains(&self.max_cart_items), "--max-cart-items must be between 1 and 10");
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Session {
    Shopper(ShopperPlan),
    /// Index into the manifest's merchants (0 = the most popular store's).
    Merchant(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ShopperPlan {
    pub store: u64,
    pub landing: bool,
    /// Category list → product page, this many times.
    pub browses: u32,
    /// Index into the manifest's search terms.
    pub search: Option<usize>,
    pub cart: Option<CartPlan>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CartPlan {
    pub items: u32,
    pub checkout: bool,
}

/// Zipf over `n` ranks as 0-based indexes: index 0 is rank 1, the most popular. With a skipped
/// index, the others keep their order and close up (the next one takes its rank).
#[derive(Debug, Clone)]
pub(crate) struct Popularity {
    zipf: Zipf<f64>,
    /// Ranks drawn from: `n`, or `n - 1` with an index skipped.
    ranks: u64,
    skip: Option<u64>,
}

impl Popularity {
    #[cfg(test)]
    pub fn new(n: u64, s: f64) -> anyhow::Result<Popularity> {
        Popularity::skipping(n, s, None)
    }

    /// Never picks `skip` (an index below `n`).
    pub fn skipping(n: u64, s: f64, skip: Option<u64>) -> anyhow::Result<Popularity> {
        let ranks = n.saturating_sub(u64::from(skip.is_some_and(|k| k < n)));
        anyhow::ensure!(ranks >= 1, "cannot choose among zero items");
        anyhow::ensure!(s.is_finite() && s >= 0.0, "--zipf-s must be a finite number ≥ 0, not {s}");
        let zipf = Zipf::new(ranks as f64, s).map_err(|e| anyhow::anyhow!("zipf over {ranks} items, s = {s}: {e}"))?;
        Ok(Popularity { zipf, ranks, skip: skip.filter(|k| *k < n) })
    }

    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        // Zipf yields whole numbers in [1, ranks] as floats.
        let i = (self.zipf.sample(rng) as u64).clamp(1, self.ranks) - 1;
        match self.skip {
            Some(k) if i >= k => i + 1,
            _ => i,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Workload {
    mix: Mix,
    stores: Popularity,
    merchants: Option<Popularity>,
    search_terms: usize,
}

impl Workload {
    #[cfg(test)]
    pub fn new(mix: Mix, stores: u64, merchants: usize, search_terms: usize, zipf_s: f64) -> anyhow::Result<Workload> {
        Workload::sparing(mix, stores, merchants, search_terms, zipf_s, None)
    }

    /// A workload that never visits store `spare` (an index), nor lets merchant `spare.1` (an
    /// index into the manifest's merchants, that store's) open a dashboard: the flash store while
    /// `--flash-during-browse` measures everyone else.
    pub fn sparing(
        mix: Mix,
        stores: u64,
        merchants: usize,
        search_terms: usize,
        zipf_s: f64,
        spare: Option<(u64, Option<usize>)>,
    ) -> anyhow::Result<Workload> {
        mix.check()?;
        let (spare_store, spare_merchant) = match spare {
            Some((store, merchant)) => (Some(store), merchant.map(|m| m as u64)),
            None => (None, None),
        };
        let merchants_left = merchants - usize::from(spare_merchant.is_some_and(|m| m < merchants as u64));
        anyhow::ensure!(
            mix.merchant == 0.0 || merchants_left > 0,
            "the manifest has no merchant keys{}, so there can be no dashboard sessions: pass --merchant-ratio 0",
            if merchants > 0 { " but the flash store's" } else { "" }
        );
        anyhow::ensure!(
            spare_store.is_none() || stores >= 2,
            "the flash store is the manifest's only store: there is no other store to browse"
        );
        anyhow::ensure!(
            mix.search == 0.0 || search_terms > 0,
            "the manifest has no search terms: pass --search-ratio 0"
        );
        let merchants = if merchants_left > 0 {
            Some(Popularity::skipping(merchants as u64, zipf_s, spare_merchant)?)
        } else {
            None
        };
        Ok(Workload { stores: Popularity::skipping(stores, zipf_s, spare_store)?, merchants, search_terms, mix })
    }

    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R) -> Session {
        let m = &self.mix;
        if let Some(merchants) = &self.merchants
            && rng.random_bool(m.merchant)
        {
            return Session::Merchant(merchants.pick(rng) as usize);
        }
        let store = self.stores.pick(rng);
        let landing = rng.random_bool(m.landing);
        let browses = rng.random_range(m.min_browse..=m.max_browse);
        let search = rng.random_bool(m.search).then(|| rng.random_range(0..self.search_terms.max(1)));
        let cart = rng
            .random_bool(m.cart)
            .then(|| CartPlan { items: rng.random_range(1..=m.max_cart_items), checkout: rng.random_bool(m.checkout) });
        Session::Shopper(ShopperPlan { store, landing, browses, search, cart })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    pub(crate) fn default_mix() -> Mix {
        Mix {
            merchant: 0.05,
            search: 0.2,
            cart: 0.2,
            checkout: 0.5,
            landing: 0.0,
            min_browse: 1,
            max_browse: 3,
            max_cart_items: 2,
        }
    }

    #[test]
    fn zipf_choice_makes_the_first_store_the_most_popular_and_still_reaches_the_long_tail() {
        let n = 1000;
        let p = Popularity::new(n, 1.0).unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = vec![0u64; n as usize];
        for _ in 0..200_000 {
            counts[p.pick(&mut rng) as usize] += 1;
        }
        let max_at = counts.iter().enumerate().max_by_key(|(_, c)| **c).unwrap().0;
        assert_eq!(max_at, 0, "index 0 is the most chosen");
        // s = 1: rank 1 is twice as likely as rank 2 and ten times rank 10.
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!((1.8..2.2).contains(&ratio), "rank 1 / rank 2 = {ratio}");
        let ratio = counts[0] as f64 / counts[9] as f64;
        assert!((8.0..12.5).contains(&ratio), "rank 1 / rank 10 = {ratio}");
        let top10: u64 = counts[..10].iter().sum();
        let tail: u64 = counts[500..].iter().sum();
        assert!(top10 > tail, "a few hot stores draw more than the whole back half");
        assert!(tail > 0 && counts[900..].iter().any(|c| *c > 0), "the long tail is reached");
        assert!(counts.iter().filter(|c| **c > 0).count() > 900, "almost every store is visited");
    }

    #[test]
    fn a_skipped_index_is_never_picked_and_the_next_takes_its_rank() {
        let p = Popularity::skipping(10, 1.0, Some(0)).unwrap();
        let mut rng = SmallRng::seed_from_u64(11);
        let mut counts = [0u64; 10];
        for _ in 0..100_000 {
            counts[p.pick(&mut rng) as usize] += 1;
        }
        assert_eq!(counts[0], 0);
        let max_at = counts.iter().enumerate().max_by_key(|(_, c)| **c).unwrap().0;
        assert_eq!(max_at, 1, "{counts:?}");
        assert!(counts[9] > 0, "the last index is still reached");
        let middle = Popularity::skipping(3, 0.0, Some(1)).unwrap();
        assert!((0..1000).map(|_| middle.pick(&mut rng)).all(|i| i == 0 || i == 2));
        assert!(Popularity::skipping(1, 1.0, Some(0)).is_err(), "nothing left to pick");
    }

    #[test]
    fn a_workload_sparing_the_flash_store_never_visits_it_nor_opens_its_dashboard() {
        let w = Workload::sparing(default_mix(), 20, 5, 4, 1.0, Some((0, Some(0)))).unwrap();
        let mut rng = SmallRng::seed_from_u64(3);
        let (mut shoppers, mut merchants) = (0, 0);
        for _ in 0..20_000 {
            match w.draw(&mut rng) {
                Session::Shopper(s) => {
                    assert_ne!(s.store, 0);
                    shoppers += 1;
                }
                Session::Merchant(m) => {
                    assert_ne!(m, 0);
                    merchants += 1;
                }
            }
        }
        assert!(shoppers > 0 && merchants > 0);
        let e = Workload::sparing(default_mix(), 20, 1, 4, 1.0, Some((0, Some(0)))).unwrap_err().to_string();
        assert!(e.contains("--merchant-ratio 0"), "{e}");
        assert!(Workload::sparing(default_mix(), 1, 0, 4, 1.0, Some((0, None))).is_err());
    }

    #[test]
    fn zipf_with_exponent_zero_is_uniform() {
        let p = Popularity::new(10, 0.0).unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut counts = [0u64; 10];
        for _ in 0..100_000 {
            counts[p.pick(&mut rng) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (9_000..11_000).contains(c)), "{counts:?}");
    }

    #[test]
    fn a_single_store_is_always_chosen() {
        let p = Popularity::new(1, 1.0).unwrap();
        let mut rng = SmallRng::seed_from_u64(3);
        assert!((0..1000).all(|_| p.pick(&mut rng) == 0));
    }

    #[test]
    fn session_ratios_match_the_mix_within_tolerance() {
        let w = Workload::new(default_mix(), 100, 10, 4, 1.0).unwrap();
        let mut rng = SmallRng::seed_from_u64(42);
        let n = 100_000;
        let (mut merchant, mut shopper, mut search, mut cart, mut checkout) = (0, 0, 0, 0, 0);
        let mut browses = [0u64; 4];
        let mut items = [0u64; 3];
        for _ in 0..n {
            match w.draw(&mut rng) {
                Session::Merchant(i) => {
                    assert!(i < 10);
                    merchant += 1;
                }
                Session::Shopper(s) => {
                    shopper += 1;
                    assert!(s.store < 100 && !s.landing);
                    browses[s.browses as usize] += 1;
                    search += u64::from(s.search.is_some());
                    if let Some(c) = s.cart {
                        cart += 1;
                        items[c.items as usize] += 1;
                        checkout += u64::from(c.checkout);
                    }
                }
            }
        }
        let near = |got: u64, of: u64, want: f64| {
            let r = got as f64 / of as f64;
            assert!((r - want).abs() < 0.01, "ratio {r} is not near {want}");
        };
        near(merchant, n, 0.05);
        near(search, shopper, 0.2);
        near(cart, shopper, 0.2);
        near(checkout, cart, 0.5);
        assert_eq!(browses[0], 0, "every shopper browses at least once");
        for count in &browses[1..] {
            near(*count, shopper, 1.0 / 3.0);
        }
        assert_eq!(items[0], 0);
        near(items[1], cart, 0.5);
    }

    #[test]
    fn the_same_seed_draws_the_same_sessions() {
        let w = Workload::new(default_mix(), 50, 3, 2, 1.1).unwrap();
        let draw = |seed| {
            let mut rng = SmallRng::seed_from_u64(seed);
            (0..100).map(|_| w.draw(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(9), draw(9));
        assert_ne!(draw(9), draw(10));
    }

    #[test]
    fn a_mix_the_manifest_cannot_serve_is_refused_with_the_flag_to_change() {
        let e = Workload::new(default_mix(), 10, 0, 4, 1.0).unwrap_err().to_string();
        assert!(e.contains("--merchant-ratio 0"), "{e}");
        let e = Workload::new(default_mix(), 10, 1, 0, 1.0).unwrap_err().to_string();
        assert!(e.contains("--search-ratio 0"), "{e}");
        let bad = Mix { cart: 1.5, ..default_mix() };
        assert!(Workload::new(bad, 10, 1, 1, 1.0).is_err());
        assert!(Workload::new(default_mix(), 10, 1, 1, -1.0).is_err());
    }
}
