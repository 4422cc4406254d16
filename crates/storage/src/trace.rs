//! The W3C trace context (`traceparent`) a piece of work happens under, so one request can be
//! followed through its handler, its write, the outbox row it leaves and the consumers that
//! apply it. It must never decide anything: a missing or garbled context only costs a trace.
//!
//! - [`TraceParent`]: the header's value, parsed once at the edge (HTTP, NATS, an outbox row).
//! - [`scope`] / [`current`]: the context of the work in progress, carried like the read
//!   consistency ([`crate::consistency`]) in a task-local. SQLite writes run on the writer
//!   thread, so the writer takes the caller's context along with the job (`sqlite::writer`).
//! - [`join`]: gives a `tracing` span its place in the trace. When spans are exported
//!   (an OpenTelemetry layer is installed) the exporter's ids are the truth and are read back;
//!   otherwise the ids are made here, so responses, logs and outbox rows carry one either way.
//!
//! Parsing is by hand rather than with the SDK's propagator: the outbox and the relay need the
//! value whether or not anything is exported, and the format is four dash-separated hex fields
//! (docs/decisions/0022-tracing.md). `tracestate` is not carried.

use std::cell::Cell;
use std::fmt;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A W3C `traceparent`: which trace, which span in it is the parent, whether it is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` header value; `None` for anything the W3C rules refuse (wrong
    /// length, upper-case or non-hex digits, all-zero ids, version `ff`).
    pub fn parse(s: &str) -> Option<TraceParent> {
        let s = s.trim();
        let b = s.as_bytes();
        // Version 00 is exactly 55 characters; a later version may append fields after a dash.
        if b.len() < 55 || (b.len() > 55 && b[55] != b'-') {
            return None;
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let version = hex::<1>(&s[0..2])?;
        if version[0] == 0xff || (version[0] == 0 && b.len() != 55) {
            return None;
        }
        let trace_id = hex::<16>(&s[3..35])?;
        let span_id = hex::<8>(&s[36..52])?;
        let flags = hex::<1>(&s[53..55])?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent { trace_id, span_id, flags })
    }

    /// A new trace, sampled, with this as its first span.
    pub fn root() -> TraceParent {
        TraceParent { trace_id: nonzero(), span_id: nonzero(), flags: 1 }
    }

    /// A new span in the same trace.
    pub fn child(&self) -> TraceParent {
        TraceParent { span_id: nonzero(), ..*self }
    }

    /// The trace id, 32 lower-case hex digits (what logs carry).
    pub fn trace_id(&self) -> String {
        to_hex(&self.trace_id)
    }

    /// The span id, 16 lower-case hex digits.
    pub fn span_id(&self) -> String {
        to_hex(&self.span_id)
    }

    /// As an OpenTelemetry remote span context, to parent a span on.
    pub fn span_context(&self) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            true,
            TraceState::default(),
        )
    }

    fn of(cx: &SpanContext) -> Option<TraceParent> {
        cx.is_valid().then(|| TraceParent {
            trace_id: cx.trace_id().to_bytes(),
            span_id: cx.span_id().to_bytes(),
            flags: cx.trace_flags().to_u8(),
        })
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{}-{}-{:02x}", self.trace_id(), self.span_id(), self.flags)
    }
}

fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(b[2 * i])? << 4 | digit(b[2 * i + 1])?;
    }
    Some(out)
}

fn to_hex(b: &[u8]) -> String {
    kirana_domain::hex::encode(b)
}

fn nonzero<const N: usize>() -> [u8; N] {
    loop {
        let b: [u8; N] = rand::random();
        if b != [0; N] {
            return b;
        }
    }
}

tokio::task_local! {
    static CONTEXT: TraceParent;
}

thread_local! {
    /// The context of the job the SQLite writer thread is running (it serves many tasks).
    static ON_THIS_THREAD: Cell<Option<TraceParent>> = const { Cell::new(None) };
}

/// Runs `f` with `tp` as the current trace context.
pub async fn scope<F: std::future::Future>(tp: TraceParent, f: F) -> F::Output {
    CONTEXT.scope(tp, f).await
}

/// The trace context of the work in progress, if it has one.
pub fn current() -> Option<TraceParent> {
    CONTEXT.try_with(|tp| *tp).ok().or_else(|| ON_THIS_THREAD.with(Cell::get))
}

/// Runs synchronous `f` on this thread under `tp` (the writer thread, for one job).
pub(crate) fn on_this_thread<T>(tp: Option<TraceParent>, f: impl FnOnce() -> T) -> T {
    let before = ON_THIS_THREAD.with(|c| c.replace(tp));
    let out = f();
    ON_THIS_THREAD.with(|c| c.set(before));
    out
}

/// Places `span` in a trace: under `parent` when there is one, else at the root of a new trace.
/// Records `trace_id` and `span_id` on it (the span must declare both, empty) and returns the
/// span's own context, to hand on (`traceparent` response header, outbox row, [`scope`]).
pub fn join(span: &tracing::Span, parent: Option<&TraceParent>) -> TraceParent {
    if let Some(p) = parent {
        // Fails only when no OpenTelemetry layer is installed; the ids are then made below.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(p.span_context()));
    }
    let exported = TraceParent::of(span.context().span().span_context());
    let own = exported.unwrap_or_else(|| parent.map_or_else(TraceParent::root, TraceParent::child));
    // Filtered out (say, RUST_LOG=warn), the span records nothing: skip formatting for it.
    if !span.is_disabled() {
        span.record("trace_id", own.trace_id().as_str());
        span.record("span_id", own.span_id().as_str());
    }
    own
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips() {
        let tp = TraceParent::parse(GOOD).unwrap();
        assert_eq!(tp.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.span_id(), "00f067aa0ba902b7");
        assert_eq!(tp.to_string(), GOOD);
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A later version may add fields; the four known ones are read.
        assert!(TraceParent::parse(&format!("01{}-more", &GOOD[2..])).is_some());
    }

    #[test]
    fn a_child_stays_in_the_trace_with_a_new_span() {
        let tp = TraceParent::parse(GOOD).unwrap();
        let child = tp.child();
        assert_eq!(child.trace_id(), tp.trace_id());
        assert_ne!(child.span_id(), tp.span_id());
        assert_ne!(TraceParent::root().trace_id(), TraceParent::root().trace_id());
    }

    #[tokio::test]
    async fn the_context_lives_only_inside_its_scope_and_its_writer_jobs() {
        let tp = TraceParent::root();
        assert_eq!(current(), None);
        scope(tp, async { assert_eq!(current(), Some(tp)) }).await;
        assert_eq!(on_this_thread(Some(tp), current), Some(tp));
        assert_eq!(current(), None);
    }

    #[test]
    fn without_an_exporter_a_span_joins_its_parents_trace() {
        let span = tracing::info_span!("t", trace_id = tracing::field::Empty, span_id = tracing::field::Empty);
        let parent = TraceParent::parse(GOOD).unwrap();
        let own = join(&span, Some(&parent));
        assert_eq!(own.trace_id(), parent.trace_id());
        assert_ne!(own.span_id(), parent.span_id());
    }
}
