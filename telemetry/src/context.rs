//! W3C trace context (<https://www.w3.org/TR/trace-context/>) across the asynchronous hop.
//!
//! Each hop (the GraphQL request, the store write, the stream batch, the processor's publish,
//! a consumer's handling, a subscription's delivery) is a [`Hop`]: made from the hop's named
//! `tracing` span and the `traceparent` that arrived with its work ([`Hop::start`]), it
//! continues that trace (or the hop it is made in, or starts one) and hands its own
//! [`Hop::traceparent`] on. Run the hop's work inside it ([`Hop::in_scope`], [`Hop::enter`],
//! [`InHop::in_hop`]): the log lines logged there carry its `trace_id`, `event_id` and
//! `consumer` ([`crate::lines`]).
//!
//! When spans are exported, the hop's span is the OpenTelemetry span: the OpenTelemetry layer
//! records it, in the incoming trace. When nothing is exported no layer takes the span, so
//! `tracing` never makes it (its callsite is disabled), and the hop is its ids alone: the
//! trace id (the incoming one, or the enclosing hop's, or a new one) and a span id of its own,
//! handed on as not sampled (flags `00`), since nothing was recorded. What a hop then costs is
//! a parse, two random ids and a thread-local swap on each poll (BENCHMARKS.md, "Telemetry").

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header (and `metadata` field) of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The span a `traceparent` names, when it is a valid one
/// (<https://www.w3.org/TR/trace-context/#traceparent-header>): a two-digit version other than
/// `ff`, a trace id of 32 lowercase hex digits and a parent id of 16, neither all zeros, and
/// two digits of flags, dash-separated; version `00` has nothing after the flags, a later
/// version may (after a dash). Surrounding whitespace is ignored. Only the sampled flag is kept.
fn parse(traceparent: &str) -> Option<SpanContext> {
    /// `len` lowercase hex digits (at most 32).
    fn hex(digits: &str, len: usize) -> Option<u128> {
        if digits.len() != len {
            return None;
        }
        digits.bytes().try_fold(0_u128, |value, digit| {
            let digit = match digit {
                b'0'..=b'9' => digit - b'0',
                b'a'..=b'f' => digit - b'a' + 10,
                _ => return None,
            };
            Some(value << 4 | u128::from(digit))
        })
    }
    let value = traceparent.trim();
    let (version, rest) = value.split_once('-')?;
    let version = hex(version, 2)?;
    let (trace_id, rest) = rest.split_once('-')?;
    let (span_id, rest) = rest.split_once('-')?;
    let (flags, more) = rest.split_at_checked(2)?;
    let valid_end = if version == 0 {
        more.is_empty()
    } else {
        more.is_empty() || more.starts_with('-')
    };
    let flags = u8::try_from(hex(flags, 2)?).ok()?;
    let trace_id = hex(trace_id, 32).filter(|id| *id != 0)?;
    let span_id = u64::try_from(hex(span_id, 16)?)
        .ok()
        .filter(|id| *id != 0)?;
    (version != 0xff && valid_end).then(|| {
        SpanContext::new(
            TraceId::from(trace_id),
            SpanId::from(span_id),
            TraceFlags::new(flags) & TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )
    })
}

/// The `traceparent` of a span context.
fn format_traceparent(trace_id: TraceId, span_id: SpanId, flags: TraceFlags) -> String {
    fn push_hex(out: &mut String, bytes: &[u8]) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for byte in bytes {
            out.push(char::from(DIGITS[usize::from(byte >> 4)]));
            out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
        }
    }
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    push_hex(&mut out, &trace_id.to_bytes());
    out.push('-');
    push_hex(&mut out, &span_id.to_bytes());
    out.push('-');
    push_hex(&mut out, &[flags.to_u8()]);
    out
}

/// What a hop is in the trace, and what the log lines logged in it carry.
#[derive(Debug, Clone)]
pub(crate) struct HopContext {
    pub(crate) trace_id: TraceId,
    span_id: SpanId,
    flags: TraceFlags,
    pub(crate) event_id: Option<Arc<str>>,
    pub(crate) consumer: Option<&'static str>,
}

thread_local! {
    /// The hop whose work this thread is running.
    static CURRENT: RefCell<Option<Arc<HopContext>>> = const { RefCell::new(None) };
}

/// `body` with the hop this thread is running, if any.
pub(crate) fn with_current<T>(body: impl FnOnce(Option<&HopContext>) -> T) -> T {
    CURRENT.with(|current| body(current.borrow().as_deref()))
}

/// Makes `hop` this thread's current hop until the guard is dropped.
fn make_current(hop: &Arc<HopContext>) -> Restore {
    Restore(CURRENT.with(|current| current.replace(Some(Arc::clone(hop)))))
}

/// Puts the hop that was current back.
#[derive(Debug)]
struct Restore(Option<Arc<HopContext>>);

impl Drop for Restore {
    fn drop(&mut self) {
        let previous = self.0.take();
        CURRENT.with(|current| *current.borrow_mut() = previous);
    }
}

/// One hop of a trace: its span and its place in the trace (see the module docs). Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct Hop {
    span: Span,
    context: Arc<HopContext>,
}

impl Hop {
    /// The hop of `span`, continuing the trace `incoming` names when it names one (one that
    /// does not parse is ignored), else the trace of the hop this thread is running, else a
    /// new trace. Make the span here, not entered: its parent is set now.
    pub fn start(span: Span, incoming: Option<&str>) -> Self {
        let incoming = incoming.and_then(parse);
        let outer = with_current(|outer| outer.cloned());
        let ids = RandomIdGenerator::default();
        let (trace_id, span_id, flags) = if span.is_disabled() {
            let trace_id = incoming
                .as_ref()
                .map(SpanContext::trace_id)
                .or(outer.as_ref().map(|outer| outer.trace_id))
                .unwrap_or_else(|| ids.new_trace_id());
            (trace_id, ids.new_span_id(), TraceFlags::NOT_SAMPLED)
        } else {
            if let Some(parent) = incoming
                && let Err(error) =
                    span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent))
            {
                tracing::debug!(%error, "cannot continue the incoming trace");
            }
            let context = span.context();
            let own = context.span().span_context().clone();
            if own.is_valid() {
                (own.trace_id(), own.span_id(), own.trace_flags())
            } else {
                // A span no layer traces (a subscriber without the OpenTelemetry layer).
                (
                    ids.new_trace_id(),
                    ids.new_span_id(),
                    TraceFlags::NOT_SAMPLED,
                )
            }
        };
        let inherited = outer.filter(|outer| outer.trace_id == trace_id);
        let context = HopContext {
            trace_id,
            span_id,
            flags,
            event_id: inherited.as_ref().and_then(|outer| outer.event_id.clone()),
            consumer: inherited.and_then(|outer| outer.consumer),
        };
        Self {
            span,
            context: Arc::new(context),
        }
    }

    /// The hop, naming the event it is about in its log lines.
    pub fn with_event_id(mut self, event_id: impl std::fmt::Display) -> Self {
        Arc::make_mut(&mut self.context).event_id = Some(event_id.to_string().into());
        self
    }

    /// The hop, naming the consumer it runs in its log lines.
    pub fn with_consumer(mut self, consumer: &'static str) -> Self {
        Arc::make_mut(&mut self.context).consumer = Some(consumer);
        self
    }

    /// Links the hop to the span `traceparent` names (one it does not continue: another record
    /// of the same batch), when it names one and the hop's span is exported.
    pub fn link(&self, traceparent: &str) {
        if !self.span.is_disabled()
            && let Some(linked) = parse(traceparent)
        {
            self.span.add_link(linked);
        }
    }

    /// The hop's trace id, as 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        self.context.trace_id.to_string()
    }

    /// The `traceparent` that names this hop, to hand on to the next.
    pub fn traceparent(&self) -> String {
        let context = &self.context;
        format_traceparent(context.trace_id, context.span_id, context.flags)
    }

    /// The hop's span (disabled when nothing is exported).
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// Runs `body` in the hop.
    pub fn in_scope<T>(&self, body: impl FnOnce() -> T) -> T {
        let _entered = self.enter();
        body()
    }

    /// Enters the hop on this thread until the guard is dropped. Not across an `.await`: use
    /// [`InHop::in_hop`] there.
    pub fn enter(&self) -> Entered<'_> {
        Entered {
            _restore: make_current(&self.context),
            _span: self.span.enter(),
        }
    }
}

/// The guard of an entered [`Hop`].
#[derive(Debug)]
#[must_use = "the hop is left when the guard is dropped"]
pub struct Entered<'a> {
    // Dropped in this order: the span is exited, then the previous hop made current again.
    _span: tracing::span::Entered<'a>,
    _restore: Restore,
}

/// Runs a future in a [`Hop`]: the hop is entered on each poll.
pub trait InHop: Future + Sized {
    /// The future, running in `hop`.
    fn in_hop(self, hop: Hop) -> HopFuture<Self> {
        HopFuture { inner: self, hop }
    }
}

impl<F: Future> InHop for F {}

pin_project_lite::pin_project! {
    /// A future running in a [`Hop`] ([`InHop::in_hop`]).
    #[derive(Debug)]
    pub struct HopFuture<F> {
        #[pin]
        inner: F,
        hop: Hop,
    }
}

impl<F: Future> Future for HopFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this.hop.enter();
        this.inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// What `body` returns, and the spans it ended (read before the provider is dropped: its
    /// shutdown empties the in-memory exporter).
    fn traced<T>(body: impl FnOnce() -> T) -> (T, Vec<SpanData>) {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let value = tracing::subscriber::with_default(subscriber, body);
        (value, exporter.get_finished_spans().unwrap())
    }

    #[test]
    fn an_exported_hop_continues_the_incoming_trace_and_hands_on_its_own_span() {
        let ((handed_on, inner_parent), spans) = traced(|| {
            let hop = Hop::start(tracing::info_span!("hop"), Some(INCOMING));
            assert!(!hop.span().is_disabled());
            assert_eq!(hop.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
            let inner = hop.in_scope(|| Hop::start(tracing::info_span!("inner"), None));
            (hop.traceparent(), inner.traceparent())
        });
        let parts: Vec<&str> = handed_on.split('-').collect();
        assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(parts[2], "00f067aa0ba902b7", "the hop's own span id");
        assert_eq!(parts[3], "01", "sampled: the hop was recorded");
        assert_eq!(spans.len(), 2);
        let hop = spans.iter().find(|span| span.name == "hop").unwrap();
        assert_eq!(
            hop.parent_span_id.to_string(),
            "00f067aa0ba902b7",
            "a child of the incoming span"
        );
        assert_eq!(hop.span_context.span_id().to_string(), parts[2]);
        let inner = spans.iter().find(|span| span.name == "inner").unwrap();
        assert_eq!(
            inner.parent_span_id.to_string(),
            parts[2],
            "a child of the hop"
        );
        assert!(inner_parent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    }

    #[test]
    fn without_or_with_a_bad_traceparent_a_hop_starts_its_own_trace() {
        let (ids, spans) = traced(|| {
            [None, Some("00-zz-00f067aa0ba902b7-01"), Some("garbage")]
                .map(|incoming| Hop::start(tracing::info_span!("hop"), incoming).trace_id())
        });
        assert_eq!(spans.len(), 3);
        assert!(
            ids.iter()
                .all(|id| id.len() == 32 && id != "4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_ne!(ids[0], ids[1]);
    }

    /// Without a layer that takes the span (export off, or no subscriber), the hop is its ids:
    /// it continues the incoming trace or the hop it is made in, has a span id of its own,
    /// and hands on "not sampled"; a hop made outside any starts a trace of its own.
    #[test]
    fn an_unrecorded_hop_still_carries_the_trace() {
        let hop = Hop::start(tracing::info_span!("hop"), Some(INCOMING));
        assert!(hop.span().is_disabled());
        assert_eq!(hop.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let inner = hop.in_scope(|| Hop::start(tracing::info_span!("inner"), None));
        let hop_parts: Vec<String> = hop.traceparent().split('-').map(str::to_owned).collect();
        let inner_parts: Vec<String> = inner.traceparent().split('-').map(str::to_owned).collect();
        assert_eq!(hop_parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            inner_parts[1], hop_parts[1],
            "the inner hop is in the hop's trace"
        );
        assert_eq!(hop_parts[2].len(), 16);
        assert_ne!(hop_parts[2], "00f067aa0ba902b7", "the hop's own span id");
        assert_ne!(inner_parts[2], hop_parts[2], "the inner hop's own span id");
        assert_eq!(hop_parts[3], "00", "not sampled: nothing was recorded");
        let elsewhere = Hop::start(tracing::info_span!("elsewhere"), Some("not a traceparent"));
        assert_ne!(elsewhere.trace_id(), hop.trace_id(), "a trace of its own");
        assert_eq!(elsewhere.trace_id().len(), 32);
    }

    /// A future in a hop runs in it on every poll, and only while it is polled; a hop entered
    /// inside another gives the outer one back when it is left.
    #[test]
    fn a_future_runs_in_its_hop_on_every_poll() {
        let current = || with_current(|hop| hop.map(|hop| hop.span_id));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let outer = Hop::start(tracing::Span::none(), Some(INCOMING));
        let inner = Hop::start(tracing::Span::none(), None);
        let (first, second) = runtime.block_on(
            async {
                let first = current();
                tokio::task::yield_now().await;
                (first, current())
            }
            .in_hop(inner.clone()),
        );
        assert_eq!(first, Some(inner.context.span_id));
        assert_eq!(second, Some(inner.context.span_id));
        assert_eq!(current(), None, "left after the poll");
        outer.in_scope(|| {
            inner.in_scope(|| assert_eq!(current(), Some(inner.context.span_id)));
            assert_eq!(current(), Some(outer.context.span_id));
        });
        assert_eq!(current(), None);
    }

    #[test]
    fn a_traceparent_is_formatted_as_it_is_parsed() {
        let parsed = parse(INCOMING).unwrap();
        assert_eq!(
            format_traceparent(parsed.trace_id(), parsed.span_id(), parsed.trace_flags()),
            INCOMING
        );
        let zero_led = "00-000000000000000000000000000000a1-000000000000000b-00";
        let parsed = parse(zero_led).unwrap();
        assert_eq!(
            format_traceparent(parsed.trace_id(), parsed.span_id(), parsed.trace_flags()),
            zero_led
        );
    }

    #[test]
    fn traceparents_parse_as_the_w3c_says() {
        let parsed = parse(&format!(" {INCOMING}\t")).unwrap();
        assert_eq!(
            parsed.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parsed.span_id().to_string(), "00f067aa0ba902b7");
        assert!(parsed.is_sampled() && parsed.is_remote());
        let not_sampled = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!not_sampled.unwrap().is_sampled());
        let later_version = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-what-comes";
        assert!(
            parse(later_version).unwrap().is_sampled(),
            "unknown flags dropped"
        );
        for bad in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert!(parse(bad).is_none(), "{bad:?} parsed");
        }
    }
}
