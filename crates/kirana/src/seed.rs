//! `kirana seed`: bulk-load realistic stores, then prepare what `kirana bench` needs — merchant
//! credentials for the most popular stores, a flash-sale product — and describe it all in
//! `<data-dir>/seed-manifest.json`.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use kirana_domain::catalog::ProductInput;
use kirana_domain::merchant::TokenKind;
use kirana_domain::page::{Limit, PageRequest};
use kirana_domain::{Clock, SystemClock};
use kirana_server::auth::{hash_token, new_token};
use kirana_storage::ProductFilter;
use kirana_storage::sqlite::seed::{self, SEARCH_TERMS, SLUG_PREFIX, SeedPlan};
use serde::Serialize;

use crate::config::Config;

#[derive(Debug, Clone, Args)]
pub struct SeedArgs {
    /// How many stores in all (a re-run with a larger number adds the missing ones).
    #[arg(long)]
    pub stores: u64,
    /// Mean products per store (sizes are heavy-tailed around it).
    #[arg(long, default_value_t = 10.0)]
    pub products_per_store: f64,
    /// Mean orders of history per store (proportional to store size).
    #[arg(long, default_value_t = 5.0)]
    pub orders_per_store: f64,
    /// Largest store, in products.
    #[arg(long, default_value_t = 5000)]
    pub max_products: u32,
    /// RNG seed: the same seed and sizes give the same data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Stores written per transaction.
    #[arg(long, default_value_t = 2000)]
    pub chunk: u64,
    /// Merchant API keys minted for the most popular stores (for dashboard load).
    #[arg(long, default_value_t = 100)]
    pub merchant_tokens: u64,
    /// Units of the flash-sale product in store 0 (reset on every run).
    #[arg(long, default_value_t = 500)]
    pub flash_stock: i64,
}

/// The contract with `kirana bench` (see crates/loadgen).
#[derive(Debug, Serialize)]
struct Manifest {
    version: u32,
    stores: u64,
    slug_prefix: &'static str,
    search_terms: &'static [&'static str],
    merchants: Vec<ManifestMerchant>,
    flash_sale: Option<FlashSale>,
}

#[derive(Debug, Serialize)]
struct ManifestMerchant {
    store_index: u64,
    store_id: String,
    token: String,
}

#[derive(Debug, Serialize)]
struct FlashSale {
    store_index: u64,
    product_id: String,
    variant_id: String,
    stock: i64,
}

pub async fn run(config: &Config, args: &SeedArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.stores > 0, "--stores must be at least 1");
    anyhow::ensure!((0..=1_000_000).contains(&args.flash_stock), "--flash-stock must be between 0 and 1000000");
    // The bulk loader writes SQLite files directly (that is what makes it fast).
    anyhow::ensure!(
        config.postgres.is_none(),
        "seed is not supported on PostgreSQL yet: it bulk-loads the embedded SQLite files; run it without \
         --postgres/--pg-shard (or [postgres])"
    );
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
    let plan = SeedPlan {
        stores: args.stores,
        products_mean: args.products_per_store,
        orders_mean: args.orders_per_store,
        max_products: args.max_products,
        seed: args.seed,
        chunk: args.chunk,
    };
    let (data_dir, shards) = (config.data_dir.clone(), config.shards);
    let summary = tokio::task::spawn_blocking(move || {
        let mut last_print: Option<std::time::Instant> = None;
        seed::seed(&data_dir, shards, &plan, &mut |p| {
            let finished = p.stores_done >= p.stores_total;
            if !finished && last_print.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                return;
            }
            last_print = Some(std::time::Instant::now());
            let rate = p.stores_done.saturating_sub(p.resumed_from) as f64 / p.elapsed.as_secs_f64().max(0.001);
            let left = p.stores_total.saturating_sub(p.stores_done) as f64 / rate.max(1.0);
            eprint!(
                "\rseed: {}/{} stores ({:.1}%), {:.1}M rows, {:.0} stores/s, {} elapsed, eta {}   ",
                p.stores_done,
                p.stores_total,
                100.0 * p.stores_done as f64 / p.stores_total.max(1) as f64,
                p.rows as f64 / 1e6,
                rate,
                human(p.elapsed),
                human(Duration::from_secs_f64(left)),
            );
            let _ = std::io::stderr().flush();
        })
    })
    .await??;
    eprintln!();
    if summary.resumed_from > 0 {
        eprintln!("seed: resumed at store {}", summary.resumed_from);
    }
    eprintln!("seed: {} stores, {} rows written in {}", summary.stores, summary.rows, human(summary.elapsed));

    let storage = crate::backend::open_storage(config).await?;
    let now = SystemClock.now();
    let mut merchants = Vec::new();
    for index in 0..args.merchant_tokens.min(args.stores) {
        let (scope, _) = storage.scope_for_slug(&format!("{SLUG_PREFIX}{index}")).await?;
        let dir = storage.directory();
        // Earlier runs' bench keys go; a fresh one is minted.
        let page = PageRequest { after: None, limit: Limit::parse(Some(100)).map_err(anyhow::Error::msg)? };
        for key in dir.tokens(scope.owner(), page, now).await?.items {
            if key.name == "seed-bench" {
                dir.revoke_token(scope.owner(), key.id, now).await?;
            }
        }
        let token = new_token("kir");
        dir.insert_token(scope.owner(), TokenKind::ApiKey, "seed-bench", hash_token(&token), now, None).await?;
        merchants.push(ManifestMerchant { store_index: index, store_id: scope.store_id().to_string(), token });
    }

    let (scope, _) = storage.scope_for_slug(&format!("{SLUG_PREFIX}0")).await?;
    let shard = storage.shard(&scope);
    let filter = ProductFilter { query: Some("flash sale deal".into()), ..ProductFilter::default() };
    let existing = shard.products(&scope, filter, PageRequest::default()).await?.items.into_iter().next();
    let stock = args.flash_stock;
    let product = match existing {
        Some(p) => {
            let change =
                serde_json::from_value::<ProductInput>(serde_json::json!({ "stock": stock, "status": "active" }))?
                    .into_change(false)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            shard.update_product(&scope, p.id, change, now).await?
        }
        None => {
            let change = serde_json::from_value::<ProductInput>(serde_json::json!({
                "title": "Flash Sale Deal", "price": 99_900, "stock": stock, "sku": "FLASH-DEAL",
                "description": "Limited units, one day only."
            }))?
            .into_change(true)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            shard.create_product(&scope, change, now).await?
        }
    };
    let manifest = Manifest {
        version: 1,
        stores: args.stores,
        slug_prefix: SLUG_PREFIX,
        search_terms: SEARCH_TERMS,
        merchants,
        flash_sale: Some(FlashSale {
            store_index: 0,
            product_id: product.id.to_string(),
            variant_id: product.variants[0].id.to_string(),
            stock,
        }),
    };
    let path = config.data_dir.join("seed-manifest.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest)?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("seed: manifest for `kirana bench` written to {}", path.display());
    Ok(())
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
