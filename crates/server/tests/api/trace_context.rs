//! Traces: a request joins its caller's W3C trace (or starts one), says which on the way out,
//! leaves it on the events it writes, and the consumers that apply them work inside it.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use axum::http::Method;
use kirana_events::embedded::{Reader, ReaderConfig};
use kirana_storage::trace::TraceParent;
use serde_json::json;
use tracing::field::{Field, Visit};
use tracing::span::{Id, Record};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

use crate::common::{TestApp, id};

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Every (span name, trace id) recorded, as a log shipper would see them.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<(String, String)>>>);

impl Spans {
    fn traces_of(&self, name: &str) -> Vec<String> {
        self.0.lock().unwrap().iter().filter(|(n, _)| n == name).map(|(_, t)| t.clone()).collect()
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut trace = TraceId(None);
        values.record(&mut trace);
        if let (Some(t), Some(span)) = (trace.0, ctx.span(id)) {
            self.0.lock().unwrap().push((span.name().to_string(), t));
        }
    }
}

struct TraceId(Option<String>);

impl Visit for TraceId {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "trace_id" {
            self.0 = Some(value.to_string());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if field.name() == "trace_id" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

#[tokio::test]
async fn a_write_carries_its_callers_trace_into_the_outbox_and_the_consumers() {
    let spans = Spans::default();
    let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));
    let app = TestApp::new().await;
    let (token, store) = app.merchant_with_store("+919800000101", "Traced Tea").await;

    let res = app
        .call(
            Method::POST,
            &format!("/api/v1/stores/{}/products", id(&store)),
            Some(&token),
            &[("traceparent", PARENT), ("x-request-id", "req-42")],
            Some(json!({ "title": "Masala Chai", "price": 25_000, "stock": 3 })),
        )
        .await;
    let (headers, status) = (res.headers.clone(), res.status);
    assert_eq!(status.as_u16(), 201, "{}", res.body);
    let back = TraceParent::parse(headers["traceparent"].to_str().unwrap()).expect("a valid traceparent comes back");
    assert_eq!(back.trace_id(), TRACE, "the caller's trace is joined");
    assert_ne!(back.span_id(), "00f067aa0ba902b7", "with the server's own span");
    assert_eq!(headers["x-request-id"], "req-42");

    let rows = app.storage.logs().next().unwrap().outbox_after(0, 1000).await.unwrap();
    let created = rows.iter().find(|r| r.event.kind == "product.created").expect("the product's event");
    assert_eq!(created.traceparent, Some(back), "the outbox row names the request's span");
    let store_created = rows.iter().find(|r| r.event.kind == "store.created").expect("the store's event");
    let other = store_created.traceparent.expect("an untraced caller still gets a trace");
    assert_ne!(other.trace_id(), TRACE);

    let consumer = kirana_events::all_consumers().remove(0);
    let mut reader =
        Reader::new(consumer, app.storage.clone(), 0, ReaderConfig::default(), Arc::new(app.clock.clone()));
    reader.step().await.unwrap();
    let events = spans.traces_of("event");
    assert!(events.contains(&TRACE.to_string()), "the consumer works in the request's trace: {events:?}");
    assert!(events.contains(&other.trace_id()), "and in the store creation's: {events:?}");
    assert!(spans.traces_of("request").contains(&TRACE.to_string()));
}

#[tokio::test]
async fn garbled_trace_headers_are_replaced_not_echoed() {
    let app = TestApp::new().await;
    let res = app
        .call(
            Method::GET,
            "/healthz",
            None,
            &[("traceparent", "00-XYZ-00f067aa0ba902b7-01"), ("x-request-id", "two words")],
            None,
        )
        .await;
    let back = TraceParent::parse(res.headers["traceparent"].to_str().unwrap()).expect("a fresh trace");
    assert_ne!(back.trace_id(), TRACE);
    let rid = res.headers["x-request-id"].to_str().unwrap();
    assert!(!rid.is_empty() && rid != "two words", "{rid}");
}
