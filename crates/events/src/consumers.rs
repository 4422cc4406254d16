//! The consumers: what each does with an event, as a pure function from the event to the
//! storage effects it causes. Storage applies them in one transaction with the consumer's
//! record of the event's id, so redelivery changes nothing (exactly once in effect).

use kirana_domain::analytics::{day_of, hour_of};
use kirana_domain::event::{Event, kinds};
use kirana_domain::{Currency, ProductId, StoreId};
use kirana_storage::{Effect, ProductSale};
use serde_json::Value;

/// A consumer of the event log. `effects` is pure and may fail on an event it cannot read (a
/// poison event): the pipeline retries it with backoff, then parks it in the dead letters.
pub trait Consumer: Send + Sync + 'static {
    /// Stable: positions and applied-event records are kept under it.
    fn name(&self) -> &'static str;
    fn effects(&self, event: &Event) -> Result<Vec<Effect>, String>;

    /// Called once a batch's effects are committed, with the stores of the events that had
    /// any. For telling this node at once (its read cache forgets a bumped version); effects that
    /// must survive a crash belong in `effects`.
    fn applied(&self, _stores: &[StoreId]) {}
}

/// The stores whose events in `batch` had effects, for [`Consumer::applied`].
pub(crate) fn touched<'a>(batch: impl IntoIterator<Item = &'a kirana_storage::Applied>) -> Vec<StoreId> {
    let mut stores: Vec<StoreId> =
        batch.into_iter().filter(|a| !a.effects.is_empty()).map(|a| a.event.store_id).collect();
    stores.sort_unstable();
    stores.dedup();
    stores
}

/// Computes `consumer`'s effects of `event` inside a span `event` in the trace of the request
/// that wrote it (`traceparent` from its outbox row or NATS header), so a consumer's work and
/// logs join that request's trace.
pub(crate) fn effects_in_trace(
    consumer: &dyn Consumer,
    event: &Event,
    traceparent: Option<&kirana_storage::trace::TraceParent>,
) -> Result<Vec<Effect>, String> {
    let span = tracing::info_span!(
        "event",
        consumer = consumer.name(),
        event_id = %event.id,
        event_type = %event.kind,
        store_id = %event.store_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    kirana_storage::trace::join(&span, traceparent);
    span.in_scope(|| {
        let effects = consumer.effects(event);
        match &effects {
            Ok(e) => tracing::debug!(effects = e.len(), "event handled"),
            Err(error) => tracing::debug!(%error, "event refused"),
        }
        effects
    })
}

/// Whether a store's pages can look different after `event`: the store, its categories and
/// products, a variant selling out (`stock.changed`), an order cancelled back into stock. An order
/// otherwise changes no page (a page shows availability, a yes or no, which only selling out or
/// restocking flips), so a store taking orders keeps its cached pages.
pub fn changes_pages(event: &Event) -> bool {
    let kind = event.kind.as_str();
    kind.starts_with("store.")
        || kind.starts_with("category.")
        || kind.starts_with("product.")
        || kind == kinds::STOCK_CHANGED
        || (kind == kinds::ORDER_TRANSITIONED && event.payload.get("restocked").and_then(Value::as_bool) == Some(true))
}

/// Carts are the shopper's business; everything else about a store is the merchant's.
fn for_merchants(kind: &str) -> bool {
    !kind.starts_with("cart.")
}

/// Bumps the store's cache version on every change to what its pages show: one write
/// invalidates every cached page of the store at once.
pub struct CacheInvalidation;

impl Consumer for CacheInvalidation {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn effects(&self, event: &Event) -> Result<Vec<Effect>, String> {
        Ok(if changes_pages(event) { vec![Effect::BumpCacheVersion] } else { vec![] })
    }
}

/// [`CacheInvalidation`] that also tells this node the moment a bump commits, so the node's
/// read cache reads the new version on its next request instead of up to a second later.
/// Other nodes learn it when their remembered version expires.
pub struct CacheInvalidationNotifying(pub std::sync::Arc<dyn Fn(StoreId) + Send + Sync>);

impl Consumer for CacheInvalidationNotifying {
    fn name(&self) -> &'static str {
        CacheInvalidation.name()
    }

    fn effects(&self, event: &Event) -> Result<Vec<Effect>, String> {
        CacheInvalidation.effects(event)
    }

    fn applied(&self, stores: &[StoreId]) {
        for store in stores {
            (self.0)(*store);
        }
    }
}

fn field<'a>(v: &'a Value, path: &str) -> Result<&'a Value, String> {
    path.split('.').try_fold(v, |v, k| v.get(k)).ok_or_else(|| format!("the payload has no {path}"))
}

fn int(v: &Value, path: &str) -> Result<i64, String> {
    field(v, path)?.as_i64().ok_or_else(|| format!("{path} is not an integer"))
}

/// Keeps sales rollups per store per hour and day, and per product per day, from placed
/// orders; reports then cost the days they cover, whatever the number of orders.
pub struct SalesAnalytics;

impl Consumer for SalesAnalytics {
    fn name(&self) -> &'static str {
        "analytics"
    }

    fn effects(&self, event: &Event) -> Result<Vec<Effect>, String> {
        if event.kind != kinds::ORDER_PLACED {
            return Ok(vec![]);
        }
        let order = &event.payload;
        let items = field(order, "items")?.as_array().ok_or("items is not a list")?;
        let mut products: Vec<ProductSale> = Vec::with_capacity(items.len());
        let mut units = 0;
        for item in items {
            let product_id = field(item, "product_id")?
                .as_str()
                .and_then(ProductId::parse)
                .ok_or("an item's product_id is not an id")?;
            let quantity = int(item, "quantity")?;
            let revenue = int(item, "line_total")?;
            units += quantity;
            let title = field(item, "title")?.as_str().unwrap_or_default().to_string();
            match products.iter_mut().find(|p| p.product_id == product_id) {
                Some(p) => {
                    p.units += quantity;
                    p.revenue += revenue;
                }
                None => products.push(ProductSale { product_id, title, units: quantity, revenue }),
            }
        }
        let at = event.occurred_at.millis();
        Ok(vec![Effect::Sales {
            hour: hour_of(at),
            day: day_of(at),
            orders: 1,
            revenue: int(order, "totals.total")?,
            units,
            products,
        }])
    }
}

/// The recipient that stands for "the store's owner": the notifier's worker looks up their
/// phone when it sends, so a merchant who changes number gets the next message on the new one.
pub const STORE_OWNER: &str = "owner";

fn money(minor: i64, currency: Option<&str>) -> String {
    let c = currency.and_then(|c| Currency::parse(c).ok()).unwrap_or(Currency::INR);
    c.display(minor)
}

/// Tells the merchant about a new order and the shopper about each step of theirs.
pub struct Notifications;

impl Consumer for Notifications {
    fn name(&self) -> &'static str {
        "notifications"
    }

    fn effects(&self, event: &Event) -> Result<Vec<Effect>, String> {
        let p = &event.payload;
        match event.kind.as_str() {
            kinds::ORDER_PLACED => {
                let number = int(p, "number")?;
                let total = money(int(p, "totals.total")?, p.get("currency").and_then(Value::as_str));
                let name = field(p, "customer.name")?.as_str().unwrap_or("a shopper");
                Ok(vec![Effect::Notify {
                    recipient: STORE_OWNER.into(),
                    message: format!("New order #{number}: {total} from {name}."),
                }])
            }
            kinds::ORDER_TRANSITIONED => {
                let number = int(p, "number")?;
                let to = field(p, "to")?.as_str().ok_or("to is not a status")?;
                let Some(phone) = p.get("customer_phone").and_then(Value::as_str) else {
                    return Ok(vec![]);
                };
                let tracking = p
                    .get("tracking")
                    .and_then(Value::as_str)
                    .map(|t| format!(" Tracking number: {t}."))
                    .unwrap_or_default();
                Ok(vec![Effect::Notify {
                    recipient: phone.to_string(),
                    message: format!("Your order #{number} is now {to}.{tracking}"),
                }])
            }
            _ => Ok(vec![]),
        }
    }
}

/// Fans each event out to the store's webhook endpoints subscribed to its type; the webhook
/// worker delivers them.
pub struct Webhooks;

impl Consumer for Webhooks {
    fn name(&self) -> &'static str {
        "webhooks"
    }

    fn effects(&self, event: &Event) -> Result<Vec<Effect>, String> {
        Ok(if for_merchants(&event.kind) { vec![Effect::Webhooks] } else { vec![] })
    }
}

/// The consumers a node runs.
pub fn all_consumers() -> Vec<std::sync::Arc<dyn Consumer>> {
    vec![
        std::sync::Arc::new(CacheInvalidation),
        std::sync::Arc::new(SalesAnalytics),
        std::sync::Arc::new(Notifications),
        std::sync::Arc::new(Webhooks),
    ]
}

/// The consumers a node runs, its cache consumer calling `on_bump` for every store whose
/// version it bumped (see [`CacheInvalidationNotifying`]).
pub fn all_consumers_notifying(
    on_bump: std::sync::Arc<dyn Fn(StoreId) + Send + Sync>,
) -> Vec<std::sync::Arc<dyn Consumer>> {
    let mut all = all_consumers();
    for c in &mut all {
        if c.name() == CacheInvalidation.name() {
            *c = std::sync::Arc::new(CacheInvalidationNotifying(on_bump.clone()));
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use kirana_domain::{StoreId, Timestamp};
    use serde_json::json;

    use super::*;

    fn placed(payload: Value) -> Event {
        Event::new(StoreId::generate(), kinds::ORDER_PLACED, Timestamp::from_millis(1_795_633_200_000), payload)
    }

    #[test]
    fn a_placed_order_adds_to_sales_once_per_product() {
        let p = ProductId::generate();
        let e = placed(json!({
            "number": 1001, "currency": "INR", "customer": { "name": "Asha" },
            "totals": { "total": 54_000 },
            "items": [
                { "product_id": p, "title": "Chai", "quantity": 2, "line_total": 50_000 },
                { "product_id": p, "title": "Chai", "quantity": 1, "line_total": 4_000 }
            ]
        }));
        let fx = SalesAnalytics.effects(&e).unwrap();
        let Effect::Sales { orders, revenue, units, products, day, .. } = &fx[0] else { panic!("{fx:?}") };
        assert_eq!((*orders, *revenue, *units), (1, 54_000, 3));
        assert_eq!(products.len(), 1);
        assert_eq!((products[0].units, products[0].revenue), (3, 54_000));
        assert_eq!(kirana_domain::analytics::day_label(*day), "2026-11-26");
        let note = Notifications.effects(&e).unwrap();
        assert_eq!(
            note,
            vec![Effect::Notify {
                recipient: STORE_OWNER.into(),
                message: "New order #1001: 540.00 INR from Asha.".into()
            }]
        );
    }

    #[test]
    fn an_unreadable_order_is_an_error_not_a_zero() {
        assert!(SalesAnalytics.effects(&placed(json!({ "items": "nope" }))).is_err());
        assert!(SalesAnalytics.effects(&placed(json!({ "items": [], "totals": {} }))).is_err());
    }

    #[test]
    fn carts_do_not_invalidate_pages_or_reach_webhooks() {
        let cart = Event::new(StoreId::generate(), kinds::CART_UPDATED, Timestamp::from_millis(0), json!({}));
        assert!(CacheInvalidation.effects(&cart).unwrap().is_empty());
        assert!(Webhooks.effects(&cart).unwrap().is_empty());
        let product = Event::new(StoreId::generate(), kinds::PRODUCT_UPDATED, Timestamp::from_millis(0), json!({}));
        assert_eq!(CacheInvalidation.effects(&product).unwrap(), vec![Effect::BumpCacheVersion]);
    }

    #[test]
    fn orders_invalidate_pages_only_when_they_flip_availability() {
        let event =
            |kind: &str, payload: Value| Event::new(StoreId::generate(), kind, Timestamp::from_millis(0), payload);
        let bumps = |e: &Event| CacheInvalidation.effects(e).unwrap() == vec![Effect::BumpCacheVersion];
        assert!(!bumps(&placed(json!({}))), "an order alone changes no page");
        assert!(!bumps(&event(kinds::CUSTOMER_UPSERTED, json!({}))));
        assert!(!bumps(&event(kinds::COUPON_REDEEMED, json!({}))));
        assert!(bumps(&event(kinds::STOCK_CHANGED, json!({ "stock": 0 }))), "a variant sold out");
        assert!(bumps(&event(kinds::ORDER_TRANSITIONED, json!({ "to": "cancelled", "restocked": true }))));
        assert!(!bumps(&event(kinds::ORDER_TRANSITIONED, json!({ "to": "shipped", "restocked": false }))));
        assert!(bumps(&event(kinds::STORE_UPDATED, json!({}))) && bumps(&event(kinds::CATEGORY_DELETED, json!({}))));
        // Webhooks still hear of every order.
        assert_eq!(Webhooks.effects(&placed(json!({}))).unwrap(), vec![Effect::Webhooks]);
    }
}
