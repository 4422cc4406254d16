//! `kirana bench` and `kirana capacity`: measure a running kirana the way its users load it, and
//! turn the measurement into a plan of machines and money.
//!
//! A tour, in the order a run uses them:
//! - [`manifest`]: the seed manifest, the contract with `kirana seed` (stores by slug, merchant
//!   keys, the flash-sale product).
//! - `workload`: what each session will do (Zipf store choice, the shopper/merchant mix), drawn
//!   from a seeded RNG.
//! - `driver`: when sessions start (open loop on a fixed schedule, or closed loop).
//! - `session`: one visit over HTTP, request by request, discovering the catalog as it goes
//!   (with `catalog` remembering what was found per store).
//! - `stats`: the live per-type HDR histograms and outcome counts, bounded to the measured window.
//! - `probe`: server CPU and memory from `/proc`.
//! - [`report`]: the table and the JSON report (its schema is documented on [`Report`]).
//! - `flash_browse`: `--flash-during-browse`, the flash sale inside the main run: its buyers,
//!   the quiet and contended windows, and the check of the sale on the server.
//! - `bench`: the flags and one run end to end; `capacity`: the capacity and cost model.
//!
//! Both commands run on the caller's tokio runtime and print nothing but their results (the
//! bench's progress line goes to stderr).

mod bench;
mod capacity;
mod catalog;
mod driver;
mod flash_browse;
pub mod manifest;
mod probe;
pub mod report;
mod session;
mod stats;
mod workload;

pub use bench::{BenchArgs, bench, parse_duration};
pub use capacity::{CapacityArgs, capacity};
pub use manifest::Manifest;
pub use report::Report;
