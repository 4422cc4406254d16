//! Kirana's domain: the things a merchant or a shopper would name, and the rules between them.
//!
//! Nothing here does I/O. Every type that crosses the edge is parsed once into a newtype whose
//! only constructor validates (`Slug`, `Phone`, `Currency`, `Amount`, `Quantity`), so the storage
//! and HTTP layers never see garbage.
//!
//! A tour:
//! - [`id`]: time-ordered global identifiers (UUIDv7), one newtype per kind of thing.
//! - [`clock`]: timestamps and the injectable clock every time-dependent rule reads.
//! - [`validate`]: field errors, collected so a client learns every mistake at once.
//! - [`money`]: integer minor units and ISO 4217 currencies; never floating point.
//! - [`phone`], [`slug`], [`text`]: the small parsers for merchant and shopper input.
//! - [`store`], [`catalog`], [`cart`], [`coupon`], [`customer`], [`order`]: the resources.
//! - [`payment`]: online payments, refunds, platform fees, the double-entry ledger, payouts.
//! - [`pricing`]: server-side totals (items, coupon, delivery, tax).
//! - [`event`]: the outbox envelope every state change writes.
//! - [`hex`]: lowercase hex, the one encoding of bytes shown anywhere.

pub mod analytics;
pub mod cart;
pub mod catalog;
pub mod clock;
pub mod coupon;
pub mod customer;
pub mod event;
pub mod hex;
pub mod id;
pub mod merchant;
pub mod money;
pub mod order;
pub mod page;
pub mod payment;
pub mod phone;
pub mod pricing;
pub mod slug;
pub mod store;
pub mod text;
pub mod validate;

pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use id::*;
pub use money::{Amount, Currency};
pub use phone::Phone;
pub use slug::Slug;
pub use validate::{FieldError, Invalid};
