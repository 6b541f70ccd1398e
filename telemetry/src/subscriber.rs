//! The `tracing` subscriber every binary installs.
//!
//! Two layers, each with its own filter:
//! - log lines on stderr, as text or JSON ([`LogFormat`]), for the events `RUST_LOG` enables
//!   (`info` when it is not set). Every span at `info` or above is open to them whatever
//!   `RUST_LOG` says, so a line logged inside a hop carries the hop's `trace_id` and
//!   `event_id` fields even when the hop's own level is filtered out.
//! - OpenTelemetry, for every span at `info` or above (and no events): trace context must not
//!   depend on how much is logged. The provider decides what leaves the process.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{FilterExt as _, filter_fn};
use tracing_subscriber::layer::{Layer as _, SubscriberExt as _};
use tracing_subscriber::util::{SubscriberInitExt as _, TryInitError};

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

/// A provider that exports nothing: spans have trace ids and hand their context on, and
/// nothing leaves the process.
pub fn local_provider() -> SdkTracerProvider {
    SdkTracerProvider::builder().build()
}

/// Installs the process's subscriber (see the module docs), tracing through `provider`.
/// Fails when the process has one already.
pub fn install(format: LogFormat, provider: &SdkTracerProvider) -> Result<(), TryInitError> {
    let env = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SCOPE))
        .with_filter(filter_fn(traced_span));
    tracing_subscriber::registry()
        .with(lines.with_filter(env().or(filter_fn(traced_span))))
        .with(otel)
        .try_init()
}
