//! The `tracing` subscriber every binary installs.
//!
//! - Log lines on stderr, as text or JSON ([`LogFormat`], [`crate::lines`]), for the events
//!   `RUST_LOG` enables (`info` when it is not set). A line logged in a [`crate::Hop`] carries
//!   the hop's `trace_id`, `event_id` and `consumer`, whatever `RUST_LOG` says of the hop's span.
//! - When spans are exported, the OpenTelemetry layer, for every span at `info` or above (and no
//!   events): the provider decides what leaves the process. It does not activate the
//!   OpenTelemetry context on entering a span: nothing in the workspace reads it, and a span's
//!   parent is the `tracing` span it is made in.
//!
//! When nothing is exported, no layer takes a span, so `tracing` makes none: a hop is its ids
//! alone (see [`crate::context`]).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{FilterExt as _, filter_fn};
use tracing_subscriber::layer::{Layer as _, SubscriberExt as _};
use tracing_subscriber::util::{SubscriberInitExt as _, TryInitError};

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

/// Whether the OpenTelemetry layer takes a span or event.
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
/// `exporting` (it sends spans somewhere), else making no span.
pub fn subscriber(
    format: LogFormat,
    provider: &SdkTracerProvider,
    exporting: bool,
) -> impl tracing::Subscriber + Send + Sync + 'static {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = cfg!(feature = "ansi") && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let lines = Lines::new(format, colour);
    // Always there, taking nothing when not exporting: in place of no layer, which would
    // take every span (an absent layer lets everything through), so spans would be made.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SCOPE))
        .with_context_activation(false)
        .with_filter(filter_fn(move |metadata| {
            exporting && traced_span(metadata)
        }));
    tracing_subscriber::registry()
        .with(lines.with_filter(filter_fn(|metadata| metadata.is_event()).and(env)))
        .with(otel)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::Hop;

    const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Export off: no layer takes a hop's span, so `tracing` makes none and nothing is
    /// recorded, and the hop still continues the incoming trace.
    #[test]
    fn without_export_no_span_is_made_and_hops_carry_the_trace() {
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = subscriber(LogFormat::Text, &provider, false);
        let handed_on = tracing::subscriber::with_default(subscriber, || {
            let hop = Hop::start(tracing::info_span!("hop"), Some(INCOMING));
            assert!(hop.span().is_disabled(), "no span is made");
            hop.traceparent()
        });
        assert!(handed_on.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(handed_on.ends_with("-00"), "{handed_on}");
        assert!(exporter.get_finished_spans().unwrap().is_empty());
    }

    /// Export on: the same hop, through the OpenTelemetry layer, is recorded in the incoming
    /// trace and hands on a sampled context.
    #[test]
    fn with_export_hops_are_recorded_in_the_incoming_trace() {
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = subscriber(LogFormat::Text, &provider, true);
        let handed_on = tracing::subscriber::with_default(subscriber, || {
            Hop::start(tracing::info_span!("hop"), Some(INCOMING)).traceparent()
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
