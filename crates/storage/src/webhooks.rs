//! Merchant webhooks, as storage keeps them: a store's endpoints, one delivery per (endpoint,
//! event), and every attempt to deliver it.
//!
//! Two audiences with different reach:
//! - The merchant API, through a [`StoreScope`]: create, list, read and delete endpoints, and read
//!   an endpoint's delivery log. Every statement binds the scope's store id.
//! - The delivery worker, shard-wide like [`ShardLog`](crate::log::ShardLog): which deliveries are
//!   due, taking them for sending, and recording how each attempt went. It walks every store of
//!   the shard, but only ever writes rows named by the delivery it was handed.
//!
//! The deliveries themselves are queued by the `webhooks` consumer's
//! [`Effect::Webhooks`](crate::log::Effect::Webhooks), exactly once per (endpoint, event).
//!
//! Input is parsed here once ([`WebhookUrl`], [`EventTypes`], [`NewEndpoint`]) so the SQL below
//! never sees an unchecked URL or an event type no consumer emits.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use async_trait::async_trait;
use kirana_domain::event::kinds;
use kirana_domain::page::{Page, PageRequest};
use kirana_domain::text;
use kirana_domain::validate::{Checker, checked};
use kirana_domain::{EventId, Invalid, StoreId, Timestamp};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Result;
use crate::scope::StoreScope;

/// Most endpoints one store may register: each event is sent once per endpoint, so this bounds
/// the fan-out of every change a store makes.
pub const MAX_ENDPOINTS_PER_STORE: i64 = 20;

/// Subscribes an endpoint to every event type, including types added later.
pub const ALL_EVENTS: &str = "*";

/// The event types an endpoint may subscribe to: everything the outbox carries except carts,
/// which change with every shopper's click and are never sent (see the `webhooks` consumer).
/// A new event kind must be added here to be subscribable by name (`"*"` gets it regardless).
pub const EVENT_TYPES: &[&str] = &[
    kinds::STORE_CREATED,
    kinds::STORE_UPDATED,
    kinds::CATEGORY_CREATED,
    kinds::CATEGORY_UPDATED,
    kinds::CATEGORY_DELETED,
    kinds::PRODUCT_CREATED,
    kinds::PRODUCT_UPDATED,
    kinds::PRODUCT_DELETED,
    kinds::STOCK_CHANGED,
    kinds::ORDER_PLACED,
    kinds::ORDER_TRANSITIONED,
    kinds::CUSTOMER_UPSERTED,
    kinds::COUPON_CREATED,
    kinds::COUPON_UPDATED,
    kinds::COUPON_REDEEMED,
    kinds::PAYMENT_UPDATED,
    kinds::REFUND_SUCCEEDED,
    kinds::PAYOUT_PAID,
];

/// A webhook endpoint. UUIDv7 like every other id, so lists page by it in creation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EndpointId(Uuid);

impl EndpointId {
    pub fn generate() -> Self {
        EndpointId(Uuid::now_v7())
    }

    pub const fn from_uuid(uuid: Uuid) -> Self {
        EndpointId(uuid)
    }

    pub const fn uuid(&self) -> Uuid {
        self.0
    }

    /// `None` for anything that is not a UUID; callers answer 404, as for a missing endpoint.
    pub fn parse(s: &str) -> Option<Self> {
        Uuid::try_parse(s).ok().map(EndpointId)
    }
}

impl std::fmt::Display for EndpointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Where an endpoint receives events: an absolute `https://` URL to a public host. Plain
/// `http://` is accepted only for the local machine (`localhost`, `127.0.0.1`, `[::1]`), for
/// development and tests; the delivery worker refuses non-public addresses again after DNS
/// resolution, unless its operator allows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(String);

impl WebhookUrl {
    pub fn parse(raw: &str) -> std::result::Result<Self, String> {
        const SHAPE: &str = "must be an https:// URL, e.g. https://example.com/webhooks";
        let s = text::line(raw, 1, text::limits::URL)?;
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain spaces".into());
        }
        let (scheme, rest) = s.split_once("://").ok_or(SHAPE)?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "https" && scheme != "http" {
            return Err(SHAPE.into());
        }
        if rest.contains('#') {
            return Err("must not have a #fragment".into());
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(split);
        if authority.contains('@') {
            return Err("must not contain a user name or password; authenticate with the signature".into());
        }
        let (host, port) = split_host_port(authority).ok_or(SHAPE)?;
        let host = host.to_ascii_lowercase();
        if let Some(p) = port
            && !matches!(p.parse::<u16>(), Ok(n) if n > 0)
        {
            return Err("has an invalid port".into());
        }
        let ip = host_ip(&host);
        let local = host == "localhost" || ip.is_some_and(|ip| ip.is_loopback());
        if scheme == "http" && !local {
            return Err("must use https:// (plain http:// is allowed only for localhost)".into());
        }
        if !local {
            match ip {
                Some(ip) if !is_public(ip) => return Err("must point at a public address".into()),
                Some(_) => {}
                None => {
                    let label_ok = |l: &str| {
                        !l.is_empty()
                            && l.len() <= 63
                            && !l.starts_with('-')
                            && !l.ends_with('-')
                            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    };
                    let name = host.strip_suffix('.').unwrap_or(&host);
                    // A top-level label starting with a digit would be read as an IPv4 address
                    // (`0x7f.1` is 127.0.0.1 to a URL parser); no real TLD does.
                    let tld_ok =
                        name.rsplit('.').next().is_some_and(|t| t.starts_with(|c: char| c.is_ascii_alphabetic()));
                    if name.len() > 253 || !name.contains('.') || !tld_ok || !name.split('.').all(label_ok) {
                        return Err("must name a public host, e.g. https://example.com/webhooks".into());
                    }
                }
            }
        }
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        Ok(WebhookUrl(format!("{scheme}://{host}{port}{tail}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `host[:port]` or `[v6][:port]`; `None` when neither shape fits.
fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        return Some((&authority[..v6.len() + 2], port));
    }
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    (!host.is_empty()).then_some((host, port))
}

/// The address a URL host names literally (`10.0.0.1`, `[::1]`), if it is one.
pub fn host_ip(host: &str) -> Option<IpAddr> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.parse().ok()
}

/// Whether an address is on the public internet: not loopback, private, link-local (cloud
/// metadata lives at 169.254.169.254), carrier-grade NAT, unspecified, multicast, broadcast or
/// documentation. The worker uses it on every resolved address, so a merchant cannot aim
/// kirana's deliveries at its own network.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.segments()[..6] == [0; 6] // IPv4-compatible (`::127.0.0.1`), deprecated
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || first == 0x2001 && v6.segments()[1] == 0x0db8 // documentation
                || first == 0x0064 && v6.segments()[1] == 0xff9b) // NAT64 onto any v4, private included
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240)
}

/// The event types an endpoint subscribes to: known types (see [`EVENT_TYPES`]) without
/// repeats, or `["*"]` for all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTypes(Vec<String>);

impl EventTypes {
    pub fn parse(raw: &[String]) -> std::result::Result<Self, Invalid> {
        let mut c = Checker::new();
        if raw.is_empty() {
            c.fail("event_types", "must name at least one event type, or \"*\" for all");
        }
        if raw.len() > EVENT_TYPES.len() + 1 {
            c.fail("event_types", format!("must name at most {} event types", EVENT_TYPES.len()));
        }
        let mut types: Vec<String> = Vec::new();
        for (i, t) in raw.iter().enumerate() {
            let t = t.trim();
            if t == ALL_EVENTS || EVENT_TYPES.contains(&t) {
                if !types.iter().any(|k| k == t) {
                    types.push(t.to_string());
                }
            } else if t.starts_with("cart.") {
                c.fail(format!("event_types[{i}]"), "cart events are not sent to webhooks");
            } else {
                c.fail(
                    format!("event_types[{i}]"),
                    format!("is not an event type; use \"*\" or one of: {}", EVENT_TYPES.join(", ")),
                );
            }
        }
        c.finish()?;
        if types.iter().any(|t| t == ALL_EVENTS) {
            types = vec![ALL_EVENTS.to_string()];
        }
        Ok(EventTypes(types))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// A checked request for a new endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEndpoint {
    pub url: WebhookUrl,
    pub event_types: EventTypes,
}

impl NewEndpoint {
    /// Checks the whole request, reporting every bad field at once.
    pub fn parse(url: &str, event_types: &[String]) -> std::result::Result<Self, Invalid> {
        let mut c = Checker::new();
        let url = c.check("url", WebhookUrl::parse(url));
        let types = match EventTypes::parse(event_types) {
            Ok(t) => Some(t),
            Err(inv) => {
                c.merge("", inv);
                None
            }
        };
        c.finish()?;
        Ok(NewEndpoint { url: checked(url), event_types: checked(types) })
    }
}

/// An endpoint as the merchant sees it. The signing secret is not here: it is shown once, in
/// [`CreatedEndpoint`], and afterwards only the delivery worker reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub id: EndpointId,
    pub url: String,
    pub event_types: Vec<String>,
    /// False once the endpoint was disabled for failing; nothing is queued for it then.
    pub active: bool,
    pub disabled_reason: Option<String>,
    /// When the endpoint began failing without a success since (`None` when healthy).
    pub failing_since: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A new endpoint and its signing secret, which is never shown again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedEndpoint {
    pub endpoint: Endpoint,
    pub secret: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Not yet delivered; retried until it is, or until its window closes.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Given up: the retry window closed, or the endpoint was disabled.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn from_stored(s: &str) -> Self {
        match s {
            "delivered" => DeliveryStatus::Delivered,
            "failed" => DeliveryStatus::Failed,
            _ => DeliveryStatus::Pending,
        }
    }
}

/// One try at delivering an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    /// 1 for the first try.
    pub attempt: u32,
    pub at: Timestamp,
    /// The endpoint's HTTP status; `None` when no answer came (timeout, refused connection).
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

/// An entry of an endpoint's delivery log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    pub event_id: EventId,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    /// When the next try is due (pending deliveries only).
    pub next_attempt_at: Option<Timestamp>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub delivered_at: Option<Timestamp>,
    pub created_at: Timestamp,
    /// The latest tries, newest first (at most [`RECENT_ATTEMPTS`]).
    pub recent_attempts: Vec<Attempt>,
}

/// How many of a delivery's attempts its log entry carries.
pub const RECENT_ATTEMPTS: u32 = 10;

/// Names one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeliveryKey {
    pub store_id: StoreId,
    pub endpoint_id: EndpointId,
    pub event_id: EventId,
}

/// A delivery the worker should send now, with what it needs to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueDelivery {
    pub key: DeliveryKey,
    pub event_type: String,
    /// The event as JSON, exactly the bytes to send and sign.
    pub payload: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the delivery was queued: its retry window counts from here.
    pub created_at: Timestamp,
    pub url: String,
    pub secret: String,
}

/// What the worker decided after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered 2xx.
    Delivered,
    /// It failed; try again at this time.
    RetryAt(Timestamp),
    /// It failed and the retry window is over.
    GiveUp,
}

/// One attempt, for [`Webhooks::record_webhook_attempt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub key: DeliveryKey,
    /// When the attempt ended.
    pub at: Timestamp,
    pub duration_ms: i64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub outcome: Outcome,
    /// An endpoint that has failed every attempt for this long (no 2xx since it began failing)
    /// is disabled.
    pub disable_after_ms: i64,
}

/// What recording an attempt changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    Delivered,
    WillRetry,
    GaveUp,
    /// The failure disabled the endpoint (for this reason); its pending deliveries failed.
    Disabled(String),
    /// The delivery is no longer pending (its endpoint was deleted meanwhile, or another worker
    /// finished it): nothing was recorded.
    Gone,
}

#[async_trait]
pub trait Webhooks: Send + Sync {
    /// Registers an endpoint with a fresh signing secret (`whsec_…`), returned only here.
    async fn create_webhook(&self, scope: &StoreScope, new: NewEndpoint, now: Timestamp) -> Result<CreatedEndpoint>;
    /// The store's endpoints, newest first.
    async fn list_webhooks(&self, scope: &StoreScope, page: PageRequest) -> Result<Page<Endpoint>>;
    async fn get_webhook(&self, scope: &StoreScope, id: EndpointId) -> Result<Endpoint>;
    /// Removes an endpoint with its deliveries and attempts: nothing more is sent to it.
    async fn delete_webhook(&self, scope: &StoreScope, id: EndpointId) -> Result<()>;
    /// An endpoint's delivery log, newest event first.
    async fn webhook_deliveries(&self, scope: &StoreScope, id: EndpointId, page: PageRequest)
    -> Result<Page<Delivery>>;

    /// Shard-wide, for the worker: deliveries of active endpoints due at `now`, earliest due
    /// first, leaving out the endpoints in `skip` (those already as busy as allowed), so one
    /// endpoint's backlog cannot fill the page.
    async fn due_webhook_deliveries(&self, now: Timestamp, limit: u32, skip: &[EndpointId])
    -> Result<Vec<DueDelivery>>;
    /// Takes deliveries for sending: each one still due at `now` is leased until `until` (no
    /// other poll or node sends it meanwhile; if this one dies, it is sent again then). Returns
    /// the keys taken.
    async fn claim_webhook_deliveries(
        &self,
        keys: Vec<DeliveryKey>,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<DeliveryKey>>;
    /// Logs an attempt and moves the delivery on (delivered, retry, or failed); keeps the
    /// endpoint's `failing_since`, and disables it after failing for `disable_after_ms`.
    async fn record_webhook_attempt(&self, record: AttemptRecord) -> Result<Recorded>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_to_a_public_host() {
        let ok = |s: &str| WebhookUrl::parse(s).map(|u| u.0);
        assert_eq!(ok("https://Example.COM/hooks?x=1").unwrap(), "https://example.com/hooks?x=1");
        assert_eq!(ok("HTTPS://shop.example.in:8443").unwrap(), "https://shop.example.in:8443");
        assert!(ok("http://127.0.0.1:9000/h").is_ok());
        assert!(ok("http://localhost:9000/h").is_ok());
        assert!(ok("http://[::1]:9000/h").is_ok());
        for bad in [
            "http://example.com/h",
            "ftp://example.com",
            "https://",
            "example.com/h",
            "https://user:pw@example.com/",
            "https://10.1.2.3/h",
            "https://169.254.169.254/latest",
            "https://[fd00::1]/h",
            "https://192.168.1.5:8443/",
            "https://intranet/h",
            "https://example.com:0/",
            "https://example.com:99999/",
            "https://exa mple.com/",
            "https://0x7f.0.0.1/",
            "https://127.1/",
            "https://example.com/#x",
            "",
        ] {
            assert!(ok(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn public_addresses_are_told_from_private_ones() {
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0"] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["::1", "::", "fe80::1", "fc00::1", "::ffff:10.0.0.1", "::127.0.0.1", "64:ff9b::a00:1"] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn event_types_are_known_types_or_everything() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            EventTypes::parse(&s(&["order.placed", "order.placed", "product.created"])).unwrap().0,
            s(&["order.placed", "product.created"])
        );
        assert_eq!(EventTypes::parse(&s(&["order.placed", "*"])).unwrap().0, s(&["*"]));
        let err = EventTypes::parse(&s(&["order.placed", "order.shipped", "cart.updated"])).unwrap_err();
        let fields: Vec<&str> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["event_types[1]", "event_types[2]"]);
        assert_eq!(EventTypes::parse(&[]).unwrap_err().0[0].field, "event_types");
    }

    #[test]
    fn a_new_endpoint_reports_every_bad_field() {
        let err = NewEndpoint::parse("http://example.com", &["nope".into()]).unwrap_err();
        let fields: Vec<&str> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["url", "event_types[0]"]);
    }
}
