//! W3C trace context (<https://www.w3.org/TR/trace-context/>) for `tracing` spans.
//!
//! A hop's span declares the fields `trace_id` (and, where it has one, `event_id`) as
//! `tracing::field::Empty`; [`continue_trace`] makes the span a child of the context the
//! incoming `traceparent` names (or leaves it in its own trace when none arrives) and records
//! its trace id in `trace_id`, so every log line inside the span carries it. [`traceparent`]
//! is what the hop hands on. Order matters: a span's parent can only be set before the span is
//! entered or anything reads its context (`tracing-opentelemetry` starts the span then), so
//! call [`continue_trace`] first, before entering it or calling [`traceparent`], [`trace_id`]
//! or [`link`].
//!
//! A span's context comes from one of two layers. When spans are exported, the OpenTelemetry
//! layer's; when nothing is exported, [`ContextLayer`]'s, which keeps a span's ids and nothing
//! else: a trace id (its parent's, or the incoming one) and a span id of its own, handed on as
//! not sampled (flags `00`), since nothing was recorded.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};
use tracing::Span;
use tracing::span::{Attributes, Id};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Registry;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

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
    format!("00-{trace_id}-{span_id}-{:02x}", flags.to_u8())
}

/// A span's trace context when nothing is exported, kept by [`ContextLayer`].
#[derive(Debug, Clone, Copy)]
struct Ids {
    trace_id: TraceId,
    span_id: SpanId,
}

/// The layer that gives each span its trace context when nothing is exported, in place of the
/// OpenTelemetry layer, at a fraction of its cost (BENCHMARKS.md, "Telemetry"): a span made
/// inside another is in its trace (else in a new one), and has a span id of its own; nothing
/// about it is recorded.
#[derive(Debug, Default)]
pub struct ContextLayer {
    ids: RandomIdGenerator,
}

impl<S> Layer<S> for ContextLayer
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, _attributes: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let trace_id = span
            .parent()
            .and_then(|parent| parent.extensions().get::<Ids>().map(|ids| ids.trace_id))
            .unwrap_or_else(|| self.ids.new_trace_id());
        span.extensions_mut().insert(Ids {
            trace_id,
            span_id: self.ids.new_span_id(),
        });
    }
}

/// `change` applied to the ids [`ContextLayer`] keeps for `span`; `None` when it keeps none
/// (the OpenTelemetry layer traces the span, or nothing does).
fn with_ids<T>(span: &Span, change: impl FnOnce(&mut Ids) -> T) -> Option<T> {
    span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        let data = registry.span(id)?;
        let mut extensions = data.extensions_mut();
        extensions.get_mut::<Ids>().map(change)
    })
    .flatten()
}

/// Makes `span` continue the trace `traceparent` names, when it names one (one that does
/// not parse is ignored: the span stays in its own trace), and records the span's trace id in
/// its `trace_id` field.
pub fn continue_trace(span: &Span, traceparent: Option<&str>) {
    let incoming = traceparent.and_then(parse);
    let kept = with_ids(span, |ids| {
        if let Some(parent) = &incoming {
            ids.trace_id = parent.trace_id();
        }
        ids.trace_id
    });
    let trace_id = kept.or_else(|| {
        if let Some(parent) = incoming
            && let Err(error) =
                span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent))
        {
            tracing::debug!(%error, "cannot continue the incoming trace");
        }
        let context = span.context();
        let span_context = context.span().span_context().clone();
        span_context.is_valid().then(|| span_context.trace_id())
    });
    if let Some(trace_id) = trace_id {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

/// Links `span` to the span `traceparent` names (one it does not continue: another record of
/// the same batch), when it names one and spans are exported.
pub fn link(span: &Span, traceparent: &str) {
    if with_ids(span, |_| ()).is_some() {
        return;
    }
    if let Some(linked) = parse(traceparent) {
        span.add_link(linked);
    }
}

/// The trace id of `span` (32 lowercase hex digits), when it is traced.
pub fn trace_id(span: &Span) -> Option<String> {
    if let Some(trace_id) = with_ids(span, |ids| ids.trace_id) {
        return Some(trace_id.to_string());
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The `traceparent` that names `span`, to hand on to the next hop, when it is traced.
pub fn traceparent(span: &Span) -> Option<String> {
    if let Some(ids) = with_ids(span, |ids| *ids) {
        return Some(format_traceparent(
            ids.trace_id,
            ids.span_id,
            TraceFlags::NOT_SAMPLED,
        ));
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        format_traceparent(
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags(),
        )
    })
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
    fn a_span_continues_the_incoming_trace_and_hands_on_its_own_span() {
        let (handed_on, spans) = traced(|| {
            let span = tracing::info_span!("hop", trace_id = tracing::field::Empty);
            continue_trace(&span, Some(INCOMING));
            assert_eq!(
                trace_id(&span).as_deref(),
                Some("4bf92f3577b34da6a3ce929d0e0e4736")
            );
            traceparent(&span).unwrap()
        });
        let parts: Vec<&str> = handed_on.split('-').collect();
        assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(parts[2], "00f067aa0ba902b7", "the hop's own span id");
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].name, "hop");
        assert_eq!(
            spans[0].parent_span_id.to_string(),
            "00f067aa0ba902b7",
            "a child of the incoming span"
        );
        assert_eq!(spans[0].span_context.span_id().to_string(), parts[2]);
    }

    #[test]
    fn without_or_with_a_bad_traceparent_a_span_starts_its_own_trace() {
        let (ids, spans) = traced(|| {
            [None, Some("00-zz-00f067aa0ba902b7-01"), Some("garbage")].map(|incoming| {
                let span = tracing::info_span!("hop", trace_id = tracing::field::Empty);
                continue_trace(&span, incoming);
                trace_id(&span).unwrap()
            })
        });
        assert_eq!(spans.len(), 3);
        assert!(
            ids.iter()
                .all(|id| id.len() == 32 && id != "4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_ne!(ids[0], ids[1]);
    }

    #[test]
    fn without_the_layer_nothing_is_handed_on() {
        let span = tracing::info_span!("hop", trace_id = tracing::field::Empty);
        continue_trace(&span, Some(INCOMING));
        assert_eq!(traceparent(&span), None);
        assert_eq!(trace_id(&span), None);
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
