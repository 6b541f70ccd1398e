//! The `tracing` subscriber every binary installs.
//!
//! Two layers, each with its own filter:
//! - log lines on stderr, as text or JSON ([`LogFormat`], [`crate::lines`]), for the events
//!   `RUST_LOG` enables (`info` when it is not set). Every span at `info` or above is open to
//!   them whatever `RUST_LOG` says, so a line logged inside a hop carries the hop's
//!   `trace_id`, `event_id` and `consumer` even when the hop's own level is filtered out.
//! - OpenTelemetry, for every span at `info` or above (and no events): trace context must not
//!   depend on how much is logged. The provider decides what leaves the process.
//!
//! When nothing is exported, [`crate::context::ContextLayer`] takes the OpenTelemetry layer's
//! place: a span costs its ids and its place in the trace, and nothing is recorded. When
//! spans are exported, the OpenTelemetry layer does not activate the OpenTelemetry context on
//! entering a span: nothing in the workspace reads it, and a span's parent is the `tracing`
//! span it is made in.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{FilterExt as _, filter_fn};
use tracing_subscriber::layer::{Layer as _, SubscriberExt as _};
use tracing_subscriber::util::{SubscriberInitExt as _, TryInitError};

use crate::context::ContextLayer;
use crate::lines::Lines;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event, with the fields of the spans it is in.
    #[default]
    Text,
    /// One JSON object per line, with the current span's fields (`trace_id`, `event_id`).
    Json,
}

/// The instrumentation scope of the spans this workspace makes.
const SCOPE: &str = "outboxdemo";

/// Whether the OpenTelemetry layer (and the log lines' span context) takes a span or event.
fn traced_span(metadata: &Metadata<'_>) -> bool {
    metadata.is_span() && *metadata.level() <= Level::INFO
}

/// A provider that exports nothing (export off: no span is traced through it, see
/// [`subscriber`]).
pub fn local_provider() -> SdkTracerProvider {
    SdkTracerProvider::builder().build()
}

/// Installs the process's subscriber (see [`subscriber`]). Fails when the process has one
/// already.
pub fn install(
    format: LogFormat,
    provider: &SdkTracerProvider,
    exporting: bool,
) -> Result<(), TryInitError> {
    subscriber(format, provider, exporting).try_init()
}

/// The process's subscriber (see the module docs): tracing through `provider` when
/// `exporting` (it sends spans somewhere), else keeping each span's trace context alone.
pub fn subscriber(
    format: LogFormat,
    provider: &SdkTracerProvider,
    exporting: bool,
) -> impl tracing::Subscriber + Send + Sync + 'static {
    let env = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = cfg!(feature = "ansi") && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let lines = Lines::new(format, colour);
    let otel = exporting.then(|| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(SCOPE))
            .with_context_activation(false)
            .with_filter(filter_fn(traced_span))
    });
    let context = (!exporting).then(|| ContextLayer::default().with_filter(filter_fn(traced_span)));
    tracing_subscriber::registry()
        .with(lines.with_filter(env().or(filter_fn(traced_span))))
        .with(otel)
        .with(context)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{continue_trace, trace_id, traceparent};

    const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Export off records nothing, and still carries the trace: a hop continues the incoming
    /// trace, a span made inside it is in the same trace, and each hands on its own span id;
    /// a span made outside any starts a trace of its own.
    #[test]
    fn without_export_spans_carry_the_trace_and_record_nothing() {
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = subscriber(LogFormat::Text, &provider, false);
        let (hop, inner, elsewhere) = tracing::subscriber::with_default(subscriber, || {
            let hop = tracing::info_span!("hop", trace_id = tracing::field::Empty);
            continue_trace(&hop, Some(INCOMING));
            crate::link(
                &hop,
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            );
            let inner = hop.in_scope(|| {
                let inner = tracing::info_span!("inner", trace_id = tracing::field::Empty);
                continue_trace(&inner, None);
                (trace_id(&inner).unwrap(), traceparent(&inner).unwrap())
            });
            let elsewhere = tracing::info_span!("elsewhere", trace_id = tracing::field::Empty);
            continue_trace(&elsewhere, Some("not a traceparent"));
            (
                (trace_id(&hop).unwrap(), traceparent(&hop).unwrap()),
                inner,
                trace_id(&elsewhere).unwrap(),
            )
        });
        assert_eq!(hop.0, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(inner.0, hop.0, "the inner span is in the hop's trace");
        let hop_parts: Vec<&str> = hop.1.split('-').collect();
        let inner_parts: Vec<&str> = inner.1.split('-').collect();
        assert_eq!(hop_parts.len(), 4);
        assert_eq!(hop_parts[1], hop.0);
        assert_eq!(inner_parts[1], hop.0);
        assert_eq!(hop_parts[2].len(), 16);
        assert_ne!(hop_parts[2], "00f067aa0ba902b7", "the hop's own span id");
        assert_ne!(inner_parts[2], hop_parts[2], "the inner span's own span id");
        assert_eq!(hop_parts[3], "00", "not sampled: nothing was recorded");
        assert_eq!(elsewhere.len(), 32);
        assert_ne!(elsewhere, hop.0, "a trace of its own");
        assert!(exporter.get_finished_spans().unwrap().is_empty());
    }

    /// Export on: the same hop, through the OpenTelemetry layer, is recorded in the incoming
    /// trace and hands on a sampled context.
    #[test]
    fn with_export_spans_are_recorded_in_the_incoming_trace() {
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = subscriber(LogFormat::Text, &provider, true);
        let handed_on = tracing::subscriber::with_default(subscriber, || {
            let hop = tracing::info_span!("hop", trace_id = tracing::field::Empty);
            continue_trace(&hop, Some(INCOMING));
            traceparent(&hop).unwrap()
        });
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 1);
        assert_eq!(
            spans[0].span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            handed_on,
            format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
                spans[0].span_context.span_id()
            )
        );
    }
}
