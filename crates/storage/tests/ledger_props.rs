//! The money side of a shard as a property: any sequence of checkouts (cash on delivery and
//! online), provider news (late, repeated, out of order, with repeated event ids), merchant
//! steps, refunds (succeeding, refused by the provider, left pending), fee-plan changes and
//! payouts keeps every store's ledger balanced and the platform's books summing to zero.
//!
//! The test keeps its own model of what should have happened — order statuses, payment states,
//! the amount reserved for refunds, the fee of the plan in force when it was charged, stock,
//! payout slots used — and after every operation checks the storage against that model and
//! against its own books:
//!
//! - every entry's lines sum to zero, and all lines of all stores sum to zero;
//! - a store's balance (and each of its figures) is the sum of its ledger lines, and is what the
//!   model expects (sales − fees − refunds − payouts);
//! - the ledger only grows: an entry once written never changes, a line once settled by a payout
//!   stays settled by that payout, and only the payout just made settles anything;
//! - refunds never exceed the capture (reserved, and succeeded);
//! - a store gets at most one payout per slot; paid out == the payout entries == the payouts;
//!   a payout settles exactly what `available` showed, leaving it at zero;
//! - stock is the starting stock less the units of orders still holding it, never negative;
//! - the shard-wide lists (open payments, pending refunds, stores with unpaid lines) agree.
//!
//! Two shards, on embedded SQLite and on PostgreSQL (the shared server, databases of the test's
//! own). Outcomes are predicted exactly: a refusal the model does not expect fails the test as
//! surely as a success it does not expect.

use std::collections::{BTreeSet, HashMap, HashSet};

use kirana_domain::cart::{Checkout, CheckoutCustomer, Quantity};
use kirana_domain::catalog::{NewVariant, ProductChange, ProductStatus};
use kirana_domain::order::{Address, OrderStatus, PaymentMethod, TransitionRequest};
use kirana_domain::page::{Cursor, Limit, PageRequest};
use kirana_domain::payment::{
    Account, EntryKind, FeePlan, FeePlans, LedgerEntry, LedgerLine, PaymentState, Payout, RefundStatus,
};
use kirana_domain::store::{NewStore, StoreSettings};
use kirana_domain::{
    Amount, EntryId, MerchantId, OrderId, PaymentId, PayoutId, Phone, ProductId, RefundId, StoreId, Timestamp,
    VariantId,
};
use kirana_storage::payments::{NewRefund, PaymentNews};
use kirana_storage::sqlite::{SqliteOptions, Synchronous};
use kirana_storage::{Storage, StorageError, StoreScope};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{TestCaseError, TestRunner};

type Check = Result<(), TestCaseError>;

const BASE: i64 = 1_750_000_000_000;
const SHARDS: u32 = 2;
const STORES: usize = 3;
/// ₹123.45 (fees that round), ₹999.99 (2 % reaches the ₹20 cap at one unit), ₹1.49 (fees of
/// a few paise).
const PRICES: [i64; STORES] = [12_345, 99_999, 149];
const STOCK: i64 = 9;
/// Payout runs: few, so they are reused often.
const SLOTS: i64 = 4;
/// `None` is the default plan; `retired` is a plan no longer offered (charged as the default).
const PLAN_CHOICES: [Option<&str>; 4] = [None, Some("standard"), Some("pro"), Some("retired")];
const SETTLED: [OrderStatus; 4] =
    [OrderStatus::Delivered, OrderStatus::Returned, OrderStatus::Cancelled, OrderStatus::Rejected];

fn fee_plans() -> FeePlans {
    FeePlans {
        default: "standard".into(),
        plans: [
            ("standard".to_string(), FeePlan { percent_bps: 200, cap: Some(2_000) }),
            ("pro".to_string(), FeePlan { percent_bps: 100, cap: None }),
        ]
        .into(),
    }
}

fn unexpected(what: &str, e: StorageError) -> TestCaseError {
    TestCaseError::fail(format!("{what}: unexpected storage error: {e:?}"))
}

fn page(after: Option<String>, limit: i64) -> PageRequest {
    PageRequest {
        after: after.map(|c| Cursor::parse(&c).expect("a cursor the storage made")),
        limit: Limit::parse(Some(limit)).unwrap(),
    }
}

/// The field an `Invalid` refusal names, if it is one.
fn invalid_field(r: &Result<impl std::fmt::Debug, StorageError>) -> Option<String> {
    match r {
        Err(StorageError::Invalid(inv)) => inv.0.first().map(|f| f.field.clone()),
        _ => None,
    }
}

fn buyer(method: PaymentMethod) -> Checkout {
    Checkout {
        customer: CheckoutCustomer { name: "Asha".into(), phone: Phone::parse("+919876543210").unwrap(), email: None },
        address: Address {
            line1: "12 MG Road".into(),
            line2: None,
            landmark: None,
            city: "Bengaluru".into(),
            state: Some("KA".into()),
            postal_code: "560001".into(),
            country: "IN".into(),
        },
        payment_method: method,
        coupon_code: None,
        note: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Operations

#[derive(Debug, Clone, Copy)]
enum EventName {
    /// A webhook with an id never seen.
    Fresh,
    /// A webhook redelivered: an id this store has already recorded (any payment's).
    Again(Index),
    /// News from polling or a capture call: no event id.
    Unnamed,
}

/// Which order an operation is about: recent orders are picked most, so that orders get far
/// along their lives instead of many orders each taking a step.
#[derive(Debug, Clone, Copy)]
enum Pick {
    /// The k-th newest.
    Newest(usize),
    Any(Index),
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Succeeds,
    Fails,
    /// The provider could not be reached: the refund stays pending.
    Pending,
}

#[derive(Debug, Clone)]
enum Op {
    Checkout {
        store: usize,
        qty: u32,
        online: bool,
    },
    /// Provider news of an online order's payment; `captured_pct` of the amount is reported
    /// captured.
    News {
        order: Pick,
        state: PaymentState,
        captured_pct: i64,
        event: EventName,
    },
    /// The merchant moves an order a step: forward along pending → placed → … → delivered →
    /// returned, or to another step its state allows (reject, cancel).
    Step {
        order: Pick,
        forward: bool,
        choice: Index,
    },
    /// The merchant asks for any status (mostly refused).
    Jump {
        order: Pick,
        to: OrderStatus,
    },
    /// A refund of `pct` % of the capture (of the total when nothing was captured), of an
    /// online order, or (`cod`) of any order.
    Refund {
        order: Pick,
        cod: bool,
        pct: i64,
        outcome: Outcome,
    },
    /// The provider's answer for a refund (pending or already settled).
    FinishRefund {
        refund: Index,
        succeeds: bool,
    },
    PayOut {
        store: usize,
        slot: i64,
    },
    SetPlan {
        store: usize,
        plan: usize,
    },
}

fn event_name() -> impl Strategy<Value = EventName> {
    prop_oneof![
        3 => Just(EventName::Fresh),
        2 => any::<Index>().prop_map(EventName::Again),
        2 => Just(EventName::Unnamed),
    ]
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        3 => Just(Pick::Newest(0)),
        2 => Just(Pick::Newest(1)),
        1 => Just(Pick::Newest(2)),
        2 => any::<Index>().prop_map(Pick::Any),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    use PaymentState::*;
    prop_oneof![
        5 => (0..STORES, 1..=3u32, prop::bool::weighted(0.65)).prop_map(|(store, qty, online)| Op::Checkout { store, qty, online }),
        8 => (
            pick(),
            prop_oneof![2 => Just(Authorized), 5 => Just(Captured), 1 => Just(Failed), 1 => Just(Cancelled), 1 => Just(Created)],
            prop_oneof![8 => Just(100i64), 1 => Just(50), 1 => Just(0), 1 => Just(250)],
            event_name(),
        )
            .prop_map(|(order, state, captured_pct, event)| Op::News { order, state, captured_pct, event }),
        12 => (pick(), prop::bool::weighted(0.8), any::<Index>())
            .prop_map(|(order, forward, choice)| Op::Step { order, forward, choice }),
        1 => (pick(), proptest::sample::select(OrderStatus::ALL.to_vec()))
            .prop_map(|(order, to)| Op::Jump { order, to }),
        4 => (
            pick(),
            prop::bool::weighted(0.1),
            prop_oneof![1 => Just(0i64), 8 => 1..=70i64, 2 => Just(100i64), 1 => 101..=150i64],
            prop_oneof![3 => Just(Outcome::Succeeds), 1 => Just(Outcome::Fails), 2 => Just(Outcome::Pending)],
        )
            .prop_map(|(order, cod, pct, outcome)| Op::Refund { order, cod, pct, outcome }),
        2 => (any::<Index>(), any::<bool>()).prop_map(|(refund, succeeds)| Op::FinishRefund { refund, succeeds }),
        4 => (0..STORES, 0..SLOTS).prop_map(|(store, slot)| Op::PayOut { store, slot }),
        1 => (0..STORES, 0..PLAN_CHOICES.len()).prop_map(|(store, plan)| Op::SetPlan { store, plan }),
    ]
}

// ---------------------------------------------------------------------------------------------
// The model

struct StoreM {
    scope: StoreScope,
    product: ProductId,
    variant: VariantId,
    plan: Option<&'static str>,
    /// Provider event ids this store has recorded.
    events: Vec<String>,
    /// Payout slots used.
    slots: BTreeSet<i64>,
    // What the ledger must add up to.
    sales: i64,
    fees: i64,
    refunded: i64,
    paid_out: i64,
    /// Every entry read so far, as it was read: the ledger only grows, and a settled line stays
    /// settled by the same payout.
    seen: HashMap<EntryId, LedgerEntry>,
    /// The ledger as last read, newest first.
    ledger: Vec<LedgerEntry>,
}

#[derive(Debug, Clone)]
struct PaymentM {
    id: PaymentId,
    amount: i64,
    state: PaymentState,
    captured: i64,
    /// Refunds pending or succeeded.
    reserved: i64,
}

#[derive(Debug)]
struct OrderM {
    store: usize,
    id: OrderId,
    qty: i64,
    total: i64,
    online: bool,
    status: OrderStatus,
    payment: Option<PaymentM>,
}

#[derive(Debug)]
struct RefundM {
    order: usize,
    id: RefundId,
    amount: i64,
    status: RefundStatus,
}

/// Which storage a case runs on: the embedded default, or PostgreSQL shards (concurrent
/// writers, so locks and unique keys do the work SQLite's single writer does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh storage of `SHARDS` shards, and what must live as long as it (temp dir, databases).
async fn open_storage(backend: Backend) -> (Storage, Box<dyn std::any::Any + Send + Sync>) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let opts = SqliteOptions { synchronous: Synchronous::Normal, ..SqliteOptions::default() };
            let storage = kirana_storage::sqlite::open(dir.path(), SHARDS, &opts).unwrap();
            (storage, Box::new(dir))
        }
        Backend::Postgres => {
            use kirana_storage::postgres::cluster::{PgConfig, ShardUrls, open};
            use kirana_storage::postgres::testing::TempDb;
            let control = TempDb::create().await;
            let mut shards = Vec::new();
            for _ in 0..SHARDS {
                shards.push(TempDb::create().await);
            }
            let urls = shards.iter().map(|d| ShardUrls { primary: d.url(), replicas: vec![] }).collect();
            let mut config = PgConfig::new(control.url(), urls);
            // Placement reads the stores per shard afresh, so the stores made spread at once.
            config.directory_ttl = std::time::Duration::from_millis(1);
            let cluster = open(&config).await.expect("open the PostgreSQL backend");
            (cluster.storage.clone(), Box::new((cluster, shards, control)))
        }
    }
}

struct World {
    storage: Storage,
    /// The databases behind `storage`, dropped with the world.
    _keep: Box<dyn std::any::Any + Send + Sync>,
    fees: FeePlans,
    stores: Vec<StoreM>,
    orders: Vec<OrderM>,
    by_id: HashMap<OrderId, usize>,
    refunds: Vec<RefundM>,
    clock: i64,
    serial: u64,
    /// The payout the current operation made, the only one allowed to settle new lines.
    new_payout: Option<PayoutId>,
}

impl World {
    async fn open(backend: Backend, stores: usize) -> World {
        let (storage, keep) = open_storage(backend).await;
        let now = Timestamp::from_millis(BASE);
        let mut made: Vec<StoreM> = Vec::new();
        // Stores land on a shard by their id: keep drawing until the ones kept cover both shards.
        let mut attempts = 0;
        while made.len() < stores {
            attempts += 1;
            assert!(attempts < 200, "could not place stores on both shards");
            let i = made.len();
            let settings = StoreSettings {
                online_payment_enabled: true,
                // The first store charges delivery below ₹500, so its totals are not price × units.
                delivery_fee: Amount::from_stored(if i == 0 { 4_000 } else { 0 }),
                free_delivery_threshold: (i == 0).then(|| Amount::from_stored(50_000)),
                ..StoreSettings::default()
            };
            let owner = MerchantId::generate();
            let new = NewStore { name: format!("Store {i}"), slug: None, custom_domain: None, settings };
            let s = storage.create_store(owner, new, now).await.unwrap();
            let scope = storage.scope_for_owner(owner, s.id).await.unwrap();
            let shards: HashSet<u32> = made.iter().map(|m| m.scope.shard().0).chain([scope.shard().0]).collect();
            let missing = (SHARDS.min(stores as u32) as usize).saturating_sub(shards.len());
            if stores - (i + 1) < missing {
                continue; // an unused store: no rows beyond its own, so no effect on the checks
            }
            let change = ProductChange {
                title: Some(format!("Chai {i}")),
                status: Some(ProductStatus::Active),
                variants: Some(vec![NewVariant {
                    id: None,
                    options: vec![],
                    sku: None,
                    price: Amount::from_stored(PRICES[i % PRICES.len()]),
                    compare_at_price: None,
                    stock: Some(STOCK),
                }]),
                ..Default::default()
            };
            let product = storage.shard(&scope).create_product(&scope, change, now).await.unwrap();
            made.push(StoreM {
                scope,
                product: product.id,
                variant: product.variants[0].id,
                plan: None,
                events: vec![],
                slots: BTreeSet::new(),
                sales: 0,
                fees: 0,
                refunded: 0,
                paid_out: 0,
                seen: HashMap::new(),
                ledger: vec![],
            });
        }
        World {
            storage,
            _keep: keep,
            fees: fee_plans(),
            stores: made,
            orders: vec![],
            by_id: HashMap::new(),
            refunds: vec![],
            clock: BASE,
            serial: 0,
            new_payout: None,
        }
    }

    /// The order a pick names, among all orders or the online ones.
    fn pick(&self, pick: Pick, online: bool) -> Option<usize> {
        let among: Vec<usize> = (0..self.orders.len()).filter(|&i| !online || self.orders[i].online).collect();
        if among.is_empty() {
            return None;
        }
        Some(match pick {
            Pick::Newest(k) => among[among.len() - 1 - k.min(among.len() - 1)],
            Pick::Any(ix) => among[ix.index(among.len())],
        })
    }

    fn tick(&mut self) -> Timestamp {
        self.clock += 1_000;
        Timestamp::from_millis(self.clock)
    }

    fn fee(&self, store: usize, amount: i64) -> i64 {
        self.fees.for_store(self.stores[store].plan).fee(amount)
    }

    fn held_units(&self, store: usize) -> i64 {
        self.orders.iter().filter(|o| o.store == store && !o.status.restocks()).map(|o| o.qty).sum()
    }

    /// What the next payout of `store` settles, by the ledger as last read and the model's
    /// order statuses: (amount owed, merchant lines).
    fn due(&self, store: usize) -> (i64, i64) {
        let (mut sum, mut lines) = (0, 0);
        for e in &self.stores[store].ledger {
            if e.payout_id.is_some() {
                continue;
            }
            let ended = e.order_id.is_none_or(|o| SETTLED.contains(&self.orders[self.by_id[&o]].status));
            if ended {
                sum += merchant_line(e);
                lines += 1;
            }
        }
        (-sum, lines)
    }

    async fn apply(&mut self, op: &Op) -> Check {
        self.new_payout = None;
        let now = self.tick();
        match *op {
            Op::Checkout { store, qty, online } => self.checkout(store, qty, online, now).await,
            Op::News { order, state, captured_pct, event } => match self.pick(order, true) {
                Some(i) => self.news(i, state, captured_pct, event, now).await,
                None => Ok(()),
            },
            Op::Step { order, forward, choice } => {
                let Some(i) = self.pick(order, false) else { return Ok(()) };
                // `next()` lists steps in the order of `OrderStatus::ALL`: the forward one first.
                let next = self.orders[i].status.next();
                let to = match next.len() {
                    0 => OrderStatus::Placed, // an ended order: refused
                    _ if forward => next[0],
                    n => next[choice.index(n)],
                };
                self.transition(i, to, now).await
            }
            Op::Jump { order, to } => match self.pick(order, false) {
                Some(i) => self.transition(i, to, now).await,
                None => Ok(()),
            },
            Op::Refund { order, cod, pct, outcome } => match self.pick(order, !cod) {
                Some(i) => self.refund(i, pct, outcome, now).await,
                None => Ok(()),
            },
            Op::FinishRefund { refund, succeeds } => {
                if self.refunds.is_empty() {
                    return Ok(());
                }
                self.finish(refund.index(self.refunds.len()), succeeds, now).await
            }
            Op::PayOut { store, slot } => self.pay_out(store, slot, now).await,
            Op::SetPlan { store, plan } => {
                let plan = PLAN_CHOICES[plan];
                let scope = &self.stores[store].scope;
                let payments = self.storage.shard(scope).payments();
                payments.set_plan(scope, plan, now).await.map_err(|e| unexpected("set_plan", e))?;
                let stored = payments.plan(scope).await.map_err(|e| unexpected("plan", e))?;
                prop_assert_eq!(stored.as_deref(), plan);
                self.stores[store].plan = plan;
                Ok(())
            }
        }
    }

    async fn checkout(&mut self, store: usize, qty: u32, online: bool, now: Timestamp) -> Check {
        self.serial += 1;
        let mut token = [7u8; 32];
        token[..8].copy_from_slice(&self.serial.to_le_bytes());
        let left = STOCK - self.held_units(store);
        let s = &self.stores[store];
        let shard = self.storage.shard(&s.scope);
        let cart = shard.create_cart(&s.scope, token, now).await.map_err(|e| unexpected("create_cart", e))?;
        let set =
            shard.set_cart_item(&s.scope, cart.id, token, s.variant, Quantity::parse(qty.into()).unwrap(), now).await;
        if i64::from(qty) > left {
            prop_assert!(matches!(set, Err(StorageError::InsufficientStock(_))), "{qty} of {left} left: {set:?}");
            return Ok(());
        }
        set.map_err(|e| unexpected("set_cart_item", e))?;
        let method = if online { PaymentMethod::Online } else { PaymentMethod::Cod };
        let (order, replay) = shard
            .checkout(&s.scope, cart.id, token, buyer(method), None, now)
            .await
            .map_err(|e| unexpected("checkout", e))?;
        prop_assert!(!replay);
        prop_assert_eq!(order.status, method.first_status());
        prop_assert!(order.totals.total > 0);
        let found = shard.payments().payment_for_order(&s.scope, order.id).await;
        let payment = if online {
            let p = found.map_err(|e| unexpected("payment_for_order", e))?;
            prop_assert_eq!(p.state, PaymentState::Created);
            prop_assert_eq!(p.amount, order.totals.total);
            prop_assert_eq!((p.captured, p.refunded), (0, 0));
            Some(PaymentM { id: p.id, amount: p.amount, state: p.state, captured: 0, reserved: 0 })
        } else {
            prop_assert!(matches!(found, Err(StorageError::NotFound)), "a cash order has no payment: {found:?}");
            None
        };
        self.by_id.insert(order.id, self.orders.len());
        self.orders.push(OrderM {
            store,
            id: order.id,
            qty: qty.into(),
            total: order.totals.total,
            online,
            status: order.status,
            payment,
        });
        Ok(())
    }

    async fn news(
        &mut self,
        i: usize,
        state: PaymentState,
        captured_pct: i64,
        event: EventName,
        now: Timestamp,
    ) -> Check {
        let (store, order_id) = (self.orders[i].store, self.orders[i].id);
        let Some(before) = self.orders[i].payment.clone() else {
            return Ok(()); // cash on delivery: no payment to have news of
        };
        let event_id = match event {
            EventName::Again(ix) if !self.stores[store].events.is_empty() => {
                let seen = &self.stores[store].events;
                Some(seen[ix.index(seen.len())].clone())
            }
            EventName::Unnamed => None,
            EventName::Fresh | EventName::Again(_) => {
                self.serial += 1;
                Some(format!("evt_{}", self.serial))
            }
        };
        let duplicate = event_id.as_ref().is_some_and(|e| self.stores[store].events.contains(e));
        let news = PaymentNews { state, captured: before.amount * captured_pct / 100, event_id: event_id.clone() };
        let scope = self.stores[store].scope.clone();
        let applied = self
            .storage
            .shard(&scope)
            .payments()
            .apply_payment_news(&scope, before.id, news.clone(), &self.fees, now)
            .await
            .map_err(|e| unexpected("apply_payment_news", e))?;
        prop_assert_eq!(applied.duplicate, duplicate, "{:?}", news);
        if let Some(e) = event_id
            && !duplicate
        {
            self.stores[store].events.push(e);
        }
        let moves = !duplicate && before.state.may_become(state);
        prop_assert_eq!(applied.moved, moves, "{:?} → {:?}", before.state, state);
        let mut auto_refund = false;
        if moves {
            let o = &mut self.orders[i];
            match state {
                PaymentState::Authorized | PaymentState::Captured if o.status == OrderStatus::PendingPayment => {
                    o.status = OrderStatus::Placed;
                }
                PaymentState::Failed | PaymentState::Cancelled if o.status == OrderStatus::PendingPayment => {
                    o.status = OrderStatus::Cancelled;
                }
                _ => {}
            }
            let status = o.status;
            let p = o.payment.as_mut().unwrap();
            p.state = state;
            if state == PaymentState::Captured {
                // A capture is of the whole payment: none reported, or more, reads as the whole.
                let captured =
                    if news.captured <= 0 || news.captured > before.amount { before.amount } else { news.captured };
                p.captured = captured;
                let ended = matches!(status, OrderStatus::Cancelled | OrderStatus::Rejected);
                if ended {
                    p.reserved += captured;
                    auto_refund = true;
                }
                // No fee on money that goes straight back for an order that had ended.
                let fee = if ended { 0 } else { self.fee(store, captured) };
                let s = &mut self.stores[store];
                s.sales += captured;
                s.fees += fee;
            }
        }
        let o = &self.orders[i];
        let p = o.payment.as_ref().unwrap();
        prop_assert_eq!(applied.payment.state, p.state);
        prop_assert_eq!(applied.payment.captured, p.captured);
        prop_assert_eq!(applied.payment.refunded, p.reserved);
        prop_assert_eq!(applied.order_status, o.status);
        prop_assert_eq!(applied.refund.is_some(), auto_refund, "{:?}", applied.refund);
        if let Some(r) = applied.refund {
            prop_assert_eq!(r.status, RefundStatus::Pending);
            prop_assert_eq!(r.amount, p.captured);
            prop_assert_eq!(r.order_id, order_id);
            self.refunds.push(RefundM { order: i, id: r.id, amount: r.amount, status: r.status });
        }
        Ok(())
    }

    async fn transition(&mut self, i: usize, to: OrderStatus, now: Timestamp) -> Check {
        let (store, id, from) = (self.orders[i].store, self.orders[i].id, self.orders[i].status);
        let scope = self.stores[store].scope.clone();
        let req = TransitionRequest { to, note: None, tracking: None };
        let r =
            self.storage.shard(&scope).transition_order(&scope, id, req, "merchant:prop".into(), &self.fees, now).await;
        if !from.can_become(to) {
            prop_assert!(
                matches!(&r, Err(StorageError::InvalidTransition { from: f, to: t }) if *f == from && *t == to),
                "{from:?} → {to:?}: {r:?}"
            );
            return Ok(());
        }
        let order = r.map_err(|e| unexpected("transition_order", e))?;
        prop_assert_eq!(order.status, to);
        if to == OrderStatus::Delivered && !self.orders[i].online {
            let fee = self.fee(store, self.orders[i].total);
            self.stores[store].fees += fee;
        }
        self.orders[i].status = to;
        Ok(())
    }

    async fn refund(&mut self, i: usize, pct: i64, outcome: Outcome, now: Timestamp) -> Check {
        let (store, o) = (self.orders[i].store, &self.orders[i]);
        let base = o.payment.as_ref().map_or(0, |p| p.captured).max(0);
        let amount = if base > 0 { base } else { o.total } * pct / 100;
        let scope = self.stores[store].scope.clone();
        let new = NewRefund { order_id: o.id, amount, reason: Some("prop".into()), actor: "merchant:prop".into() };
        let r = self.storage.shard(&scope).payments().begin_refund(&scope, new, now).await;
        let refused = if amount <= 0 {
            Some("amount")
        } else {
            match &o.payment {
                None => Some("order"),
                Some(p) if p.state != PaymentState::Captured => Some("order"),
                Some(p) if p.reserved + amount > p.captured => Some("amount"),
                Some(_) => None,
            }
        };
        if let Some(field) = refused {
            let named = invalid_field(&r);
            prop_assert_eq!(named.as_deref(), Some(field), "{:?}", r);
            return Ok(());
        }
        let refund = r.map_err(|e| unexpected("begin_refund", e))?;
        prop_assert_eq!(refund.status, RefundStatus::Pending);
        prop_assert_eq!(refund.amount, amount);
        self.orders[i].payment.as_mut().unwrap().reserved += amount;
        self.refunds.push(RefundM { order: i, id: refund.id, amount, status: RefundStatus::Pending });
        let ri = self.refunds.len() - 1;
        match outcome {
            Outcome::Succeeds => self.finish(ri, true, now).await,
            Outcome::Fails => self.finish(ri, false, now).await,
            Outcome::Pending => Ok(()),
        }
    }

    async fn finish(&mut self, ri: usize, succeeds: bool, now: Timestamp) -> Check {
        let (i, id, amount, status) = {
            let r = &self.refunds[ri];
            (r.order, r.id, r.amount, r.status)
        };
        let store = self.orders[i].store;
        let scope = self.stores[store].scope.clone();
        self.serial += 1;
        let outcome = if succeeds { Ok(format!("rf_{}", self.serial)) } else { Err("declined by the bank".into()) };
        let done = self
            .storage
            .shard(&scope)
            .payments()
            .finish_refund(&scope, id, outcome, now)
            .await
            .map_err(|e| unexpected("finish_refund", e))?;
        if status == RefundStatus::Pending {
            let settled = if succeeds { RefundStatus::Succeeded } else { RefundStatus::Failed };
            self.refunds[ri].status = settled;
            if succeeds {
                self.stores[store].refunded += amount;
            } else {
                self.orders[i].payment.as_mut().unwrap().reserved -= amount;
            }
        }
        prop_assert_eq!(done.status, self.refunds[ri].status, "a settled refund is returned unchanged");
        prop_assert_eq!(done.amount, amount);
        Ok(())
    }

    async fn pay_out(&mut self, store: usize, slot: i64, now: Timestamp) -> Check {
        let (due, lines) = self.due(store);
        let slot_at = Timestamp::from_millis(BASE + slot * 3_600_000);
        let scope = self.stores[store].scope.clone();
        let paid = self
            .storage
            .shard(&scope)
            .payments()
            .pay_out(&scope, slot_at, now)
            .await
            .map_err(|e| unexpected("pay_out", e))?;
        let used = self.stores[store].slots.contains(&slot);
        if used || due <= 0 {
            prop_assert!(paid.is_none(), "slot used: {used}, due {due}: {paid:?}");
            return Ok(());
        }
        let Some(p) = paid else {
            return Err(TestCaseError::fail(format!(
                "{due} was due over {lines} lines and slot {slot} was free: no payout"
            )));
        };
        prop_assert_eq!((p.amount, p.lines, p.slot), (due, lines, slot_at));
        let s = &mut self.stores[store];
        s.slots.insert(slot);
        s.paid_out += due;
        self.new_payout = Some(p.id);
        let b = self.storage.shard(&scope).payments().balance(&scope).await.map_err(|e| unexpected("balance", e))?;
        prop_assert_eq!(b.available, 0, "a payout settles everything available: {:?}", b);
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // The invariants

    async fn check(&mut self) -> Check {
        let mut books: i128 = 0;
        for si in 0..self.stores.len() {
            books += self.check_store(si).await?;
        }
        prop_assert_eq!(books, 0, "the platform's books (all lines of all stores) sum to zero");
        self.check_shards().await
    }

    /// Checks one store; returns the sum of all its lines.
    async fn check_store(&mut self, si: usize) -> Result<i128, TestCaseError> {
        let scope = self.stores[si].scope.clone();
        let payments = self.storage.shard(&scope).payments();

        // The whole ledger, in small pages: newest first, no entry twice.
        let mut ledger: Vec<LedgerEntry> = Vec::new();
        let mut cursor = None;
        loop {
            let p = payments.ledger(&scope, page(cursor, 7)).await.map_err(|e| unexpected("ledger", e))?;
            ledger.extend(p.items);
            match p.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        for w in ledger.windows(2) {
            prop_assert!(w[0].id > w[1].id, "the ledger pages newest first, each entry once");
        }

        let mut keys = HashSet::new();
        let mut total: i128 = 0;
        let (mut merchant, mut sales, mut fees, mut refunds, mut payouts) = (0i64, 0i64, 0i64, 0i64, 0i64);
        for e in &ledger {
            let sum: i128 = e.lines.iter().map(|l| i128::from(l.amount)).sum();
            prop_assert_eq!(sum, 0, "an entry that does not balance: {:?}", e);
            total += sum;
            prop_assert!(keys.insert(e.key.clone()), "two entries for one cause: {}", e.key);
            let m: Vec<&LedgerLine> = e.lines.iter().filter(|l| l.account == Account::Merchant).collect();
            prop_assert_eq!(m.len(), 1, "every movement has one merchant line: {:?}", e);
            let prefix = match e.kind {
                EntryKind::Sale => "sale:",
                EntryKind::Fee => "fee:",
                EntryKind::Refund => "refund:",
                EntryKind::Payout => "payout:",
            };
            prop_assert!(e.key.starts_with(prefix), "{:?} keyed {}", e.kind, e.key);
            prop_assert_eq!(e.order_id.is_none(), e.kind == EntryKind::Payout, "{:?}", e);
            if let Some(o) = e.order_id {
                prop_assert!(
                    self.by_id.get(&o).is_some_and(|&i| self.orders[i].store == si),
                    "a line of another order"
                );
            }
            let amount = m[0].amount;
            merchant += amount;
            match e.kind {
                EntryKind::Sale => {
                    prop_assert!(amount < 0);
                    sales -= amount;
                }
                EntryKind::Fee => {
                    prop_assert!(amount > 0);
                    fees += amount;
                }
                EntryKind::Refund => {
                    prop_assert!(amount > 0);
                    refunds += amount;
                }
                EntryKind::Payout => {
                    prop_assert!(amount > 0);
                    payouts += amount;
                    prop_assert_eq!(e.payout_id.map(|p| format!("payout:{p}")), Some(e.key.clone()), "settles itself");
                }
            }
            // Append-only; settled once, by one payout; only the payout just made settles.
            match self.stores[si].seen.get(&e.id) {
                Some(old) => {
                    prop_assert_eq!(&old.lines, &e.lines, "an entry changed: {}", e.key);
                    prop_assert_eq!(&old.key, &e.key);
                    if old.payout_id.is_some() {
                        prop_assert_eq!(old.payout_id, e.payout_id, "a settled line was settled again: {}", e.key);
                    } else if e.payout_id.is_some() {
                        prop_assert_eq!(e.payout_id, self.new_payout, "settled by a payout not made now: {}", e.key);
                    }
                }
                None => {
                    if e.payout_id.is_some() {
                        prop_assert_eq!(e.payout_id, self.new_payout, "a new line already settled: {}", e.key);
                    }
                }
            }
        }
        {
            let s = &self.stores[si];
            let now_ids: HashSet<EntryId> = ledger.iter().map(|e| e.id).collect();
            prop_assert!(s.seen.keys().all(|id| now_ids.contains(id)), "a ledger entry disappeared");
        }

        // The balance is the sum of the lines, and what the model says happened.
        let b = payments.balance(&scope).await.map_err(|e| unexpected("balance", e))?;
        let s = &self.stores[si];
        prop_assert_eq!(b.balance, -merchant, "balance vs lines: {:?}", b);
        prop_assert_eq!((b.sales, b.fees, b.refunded, b.paid_out), (sales, fees, refunds, payouts), "figures vs lines");
        prop_assert_eq!(
            (b.sales, b.fees, b.refunded, b.paid_out),
            (s.sales, s.fees, s.refunded, s.paid_out),
            "figures vs the model (sales, fees, refunded, paid out)"
        );
        prop_assert_eq!(b.balance, s.sales - s.fees - s.refunded - s.paid_out);
        prop_assert_eq!(b.available + b.held, b.balance, "{:?}", b);

        // Payouts: one per slot, each settling lines that net to nothing with its own.
        let mut all: Vec<Payout> = Vec::new();
        let mut cursor = None;
        loop {
            let p = payments.payouts(&scope, page(cursor, 3)).await.map_err(|e| unexpected("payouts", e))?;
            all.extend(p.items);
            match p.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let slots: Vec<i64> = all.iter().map(|p| (p.slot.millis() - BASE) / 3_600_000).collect();
        let unique: BTreeSet<i64> = slots.iter().copied().collect();
        prop_assert_eq!(unique.len(), slots.len(), "two payouts in one slot: {:?}", slots);
        prop_assert_eq!(&unique, &s.slots);
        prop_assert_eq!(all.iter().map(|p| p.amount).sum::<i64>(), b.paid_out, "payouts vs paid out");
        for p in &all {
            prop_assert!(p.amount > 0);
            let settled: Vec<&LedgerEntry> = ledger.iter().filter(|e| e.payout_id == Some(p.id)).collect();
            prop_assert_eq!(settled.len() as i64, p.lines + 1, "lines settled by {:?}", p);
            prop_assert_eq!(settled.iter().map(|e| merchant_line(e)).sum::<i64>(), 0, "{:?} nets its lines", p);
            let own = format!("payout:{}", p.id);
            prop_assert!(settled.iter().any(|e| e.key == own), "{} has no entry of its own", own);
        }

        let s = &mut self.stores[si];
        s.seen.extend(ledger.iter().map(|e| (e.id, e.clone())));
        s.ledger = ledger;
        let (due, _) = self.due(si);
        prop_assert_eq!(b.available, due, "available vs the lines of ended orders not yet paid out");

        // Orders and payments as the model has them; refunds within the capture.
        let shard = self.storage.shard(&scope);
        let listed = shard.orders(&scope, None, page(None, 100)).await.map_err(|e| unexpected("orders", e))?;
        let mine: Vec<&OrderM> = self.orders.iter().filter(|o| o.store == si).collect();
        prop_assert_eq!(listed.items.len(), mine.len());
        for o in &listed.items {
            let m = &self.orders[self.by_id[&o.id]];
            prop_assert_eq!(o.status, m.status, "order {}", o.number);
        }
        for (oi, m) in self.orders.iter().enumerate().filter(|(_, o)| o.store == si) {
            let Some(pm) = &m.payment else { continue };
            let p = payments.payment_for_order(&scope, m.id).await.map_err(|e| unexpected("payment_for_order", e))?;
            prop_assert_eq!((p.state, p.captured, p.refunded), (pm.state, pm.captured, pm.reserved), "payment");
            prop_assert!(0 <= p.refunded && p.refunded <= p.captured, "refunded beyond the capture: {:?}", p);
            let ours: Vec<&RefundM> = self.refunds.iter().filter(|r| r.order == oi).collect();
            if ours.is_empty() {
                continue;
            }
            let rs = payments.refunds(&scope, m.id).await.map_err(|e| unexpected("refunds", e))?;
            prop_assert_eq!(rs.len(), ours.len());
            let by = |st: RefundStatus| rs.iter().filter(|r| r.status == st).map(|r| r.amount).sum::<i64>();
            let (ok, pending) = (by(RefundStatus::Succeeded), by(RefundStatus::Pending));
            prop_assert!(ok <= p.captured, "refunds succeeded beyond the capture");
            prop_assert_eq!(ok + pending, p.refunded, "reserved = pending + succeeded");
            for r in ours {
                let got = rs.iter().find(|x| x.id == r.id).map(|x| x.status);
                prop_assert_eq!(got, Some(r.status));
            }
        }

        // Stock: the starting units less those orders still hold; never negative.
        let product = shard.product(&scope, self.stores[si].product).await.map_err(|e| unexpected("product", e))?;
        let stock = product.variants[0].stock;
        prop_assert_eq!(stock, Some(STOCK - self.held_units(si)), "stock");
        prop_assert!(stock.unwrap_or(0) >= 0);
        Ok(total)
    }

    /// The shard-wide walks (the reconciler's and the payout run's) agree with the stores.
    async fn check_shards(&self) -> Check {
        let far = Timestamp::from_millis(i64::MAX / 2);
        for (shard_no, shard) in self.storage.all_shards().enumerate() {
            let here: Vec<usize> =
                (0..self.stores.len()).filter(|&i| self.stores[i].scope.shard().0 as usize == shard_no).collect();
            let ids: HashSet<StoreId> = here.iter().map(|&i| self.stores[i].scope.store_id()).collect();
            let payments = shard.payments();

            let open: HashSet<PaymentId> = payments
                .open_payments(far, 1_000)
                .await
                .map_err(|e| unexpected("open_payments", e))?
                .into_iter()
                .filter(|(s, _)| ids.contains(s))
                .map(|(_, p)| p.id)
                .collect();
            let expected: HashSet<PaymentId> = self
                .orders
                .iter()
                .filter(|o| here.contains(&o.store))
                .filter_map(|o| o.payment.as_ref())
                .filter(|p| p.state.is_open())
                .map(|p| p.id)
                .collect();
            prop_assert_eq!(open, expected, "open payments on shard {}", shard_no);

            let pending: HashSet<RefundId> = payments
                .pending_refunds(far, 1_000)
                .await
                .map_err(|e| unexpected("pending_refunds", e))?
                .into_iter()
                .filter(|(s, _)| ids.contains(s))
                .map(|(_, r)| r.id)
                .collect();
            let expected: HashSet<RefundId> = self
                .refunds
                .iter()
                .filter(|r| here.contains(&self.orders[r.order].store) && r.status == RefundStatus::Pending)
                .map(|r| r.id)
                .collect();
            prop_assert_eq!(pending, expected, "pending refunds on shard {}", shard_no);

            let unpaid: HashSet<StoreId> = payments
                .stores_with_unpaid_lines(None, 100)
                .await
                .map_err(|e| unexpected("stores_with_unpaid_lines", e))?
                .into_iter()
                .filter(|s| ids.contains(s))
                .collect();
            let expected: HashSet<StoreId> = here
                .iter()
                .filter(|&&i| self.stores[i].ledger.iter().any(|e| e.payout_id.is_none()))
                .map(|&i| self.stores[i].scope.store_id())
                .collect();
            prop_assert_eq!(unpaid, expected, "stores with unpaid lines on shard {}", shard_no);
        }
        Ok(())
    }
}

fn merchant_line(e: &LedgerEntry) -> i64 {
    e.lines.iter().filter(|l| l.account == Account::Merchant).map(|l| l.amount).sum()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn run(backend: Backend, ops: Vec<Op>) -> Check {
    let mut w = World::open(backend, STORES).await;
    w.check().await?;
    for (n, op) in ops.iter().enumerate() {
        w.apply(op).await.map_err(|e| TestCaseError::fail(format!("op {n} {op:?}: {e}")))?;
        w.check().await.map_err(|e| TestCaseError::fail(format!("after op {n} {op:?}: {e}")))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        // Each case opens fresh databases; keep shrinking bounded.
        max_shrink_iters: 256,
        // Failures are reported in the output, not written next to the sources.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_sequence_keeps_the_books_balanced(ops in proptest::collection::vec(op(), 1..80)) {
        runtime().block_on(run(Backend::Sqlite, ops))?;
    }
}

proptest! {
    // Fewer, shorter cases: each opens three PostgreSQL databases.
    #![proptest_config(ProptestConfig {
        cases: 12,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_sequence_keeps_the_books_balanced_on_postgres(ops in proptest::collection::vec(op(), 1..50)) {
        runtime().block_on(run(Backend::Postgres, ops))?;
    }
}

/// Two refunds raced against one capture, each for 60 %: the guarded reservation lets exactly
/// one through; the other is refused on `amount`, and nothing is reserved twice.
#[test]
fn racing_refunds_cannot_both_take_sixty_percent() {
    racing_refunds(Backend::Sqlite);
}

/// The same race where writers really run at once.
#[test]
fn racing_refunds_cannot_both_take_sixty_percent_on_postgres() {
    racing_refunds(Backend::Postgres);
}

fn racing_refunds(backend: Backend) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut w = World::open(backend, 1).await;
        w.apply(&Op::Checkout { store: 0, qty: 2, online: true }).await.unwrap();
        // With one order and one refund, any index picks it.
        let first = any::<Index>().new_tree(&mut TestRunner::deterministic()).unwrap().current();
        let order = Pick::Any(first);
        w.apply(&Op::News { order, state: PaymentState::Captured, captured_pct: 100, event: EventName::Fresh })
            .await
            .unwrap();
        w.check().await.unwrap();
        let (scope, order) = (w.stores[0].scope.clone(), w.orders[0].id);
        let captured = w.orders[0].payment.as_ref().unwrap().captured;
        assert!(captured > 0);
        let sixty = captured * 60 / 100;
        let payments = w.storage.shard(&scope).payments();
        let ask = || NewRefund { order_id: order, amount: sixty, reason: None, actor: "merchant:race".into() };
        let now = Timestamp::from_millis(BASE + 60_000);
        let (a, b) = tokio::join!(payments.begin_refund(&scope, ask(), now), payments.begin_refund(&scope, ask(), now));
        let (won, lost) = match (a, b) {
            (Ok(r), Err(e)) | (Err(e), Ok(r)) => (r, Err::<(), _>(e)),
            other => panic!("exactly one of two 60 % refunds must pass: {other:?}"),
        };
        assert_eq!(invalid_field(&lost).as_deref(), Some("amount"), "{lost:?}");
        assert_eq!((won.amount, won.status), (sixty, RefundStatus::Pending));
        let p = payments.payment_for_order(&scope, order).await.unwrap();
        assert_eq!((p.captured, p.refunded), (captured, sixty));
        let listed = payments.refunds(&scope, order).await.unwrap();
        assert_eq!(listed.len(), 1, "the refused refund left no row: {listed:?}");

        // The model agrees, and the books still balance once the winner settles.
        w.orders[0].payment.as_mut().unwrap().reserved += sixty;
        w.refunds.push(RefundM { order: 0, id: won.id, amount: sixty, status: RefundStatus::Pending });
        w.check().await.unwrap();
        w.apply(&Op::FinishRefund { refund: first, succeeds: true }).await.unwrap();
        w.check().await.unwrap();
        let again = w.storage.shard(&scope).payments().begin_refund(&scope, ask(), now).await;
        assert_eq!(invalid_field(&again).as_deref(), Some("amount"), "{again:?}");
    });
}
