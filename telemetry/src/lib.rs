//! Telemetry shared by the local stack and the Lambdas.
//!
//! - [`context`]: W3C trace context across the asynchronous hop. Each hop (the GraphQL request,
//!   the store write, the stream batch, the processor's publish, a consumer's handling, a
//!   subscription's delivery) is a [`Hop`]: it continues the trace a `traceparent` string
//!   names and hands its own on ([`Hop::traceparent`]), through the item, the stream record
//!   and the event's `metadata.traceparent`.
//! - [`subscriber`]: the `tracing` subscriber a binary installs: log lines ([`lines`], text or
//!   JSON) filtered by `RUST_LOG`, carrying the hop they are logged in, and OpenTelemetry's
//!   layer when spans are exported.
//! - [`export`]: the tracer provider: OTLP over HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//!   set, nothing exported otherwise.
//! - [`Telemetry`]: all of it for one process, set up once at start; in a Lambda (with the
//!   `emf` feature) also the `metrics` recorder that writes CloudWatch's embedded metric format.
//!
//! Without a subscriber (a library's unit tests) a hop still has its ids and hands them on.

pub mod context;
pub mod export;
pub mod lines;
pub mod subscriber;

pub use context::{Hop, InHop};

use opentelemetry_sdk::trace::SdkTracerProvider;
use subscriber::LogFormat;

/// Why telemetry cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Export was asked for and cannot be set up.
    #[error(transparent)]
    Export(#[from] export::ExportError),
    /// The process has a subscriber already.
    #[error("cannot install the tracing subscriber: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
    /// The process has a `metrics` recorder already.
    #[error("cannot install the metrics recorder: {0}")]
    Metrics(String),
}

/// The namespace of the Lambdas' CloudWatch metrics.
pub const METRICS_NAMESPACE: &str = "outboxdemo";

/// A process's telemetry: the subscriber installed, and the tracer provider it traces through.
/// Make it once, at start, inside the Tokio runtime.
#[derive(Clone)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
    /// The Lambdas' metrics, as CloudWatch's embedded metric format.
    #[cfg(feature = "emf")]
    metrics: Option<&'static metrics_cloudwatch_embedded::Collector>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("exporting", &self.exporting)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Telemetry for `service`, writing log lines in `format`; export as
    /// [`export::provider`] says.
    pub fn install(service: &'static str, format: LogFormat) -> Result<Self, InitError> {
        let provider = export::provider(service)?;
        let exporting = export::requested();
        subscriber::install(format, &provider, exporting)?;
        Ok(Self {
            provider,
            exporting,
            #[cfg(feature = "emf")]
            metrics: None,
        })
    }

    /// Telemetry for the Lambda function `service`: log lines as JSON when the function's log
    /// format is JSON (`AWS_LAMBDA_LOG_FORMAT`,
    /// <https://docs.aws.amazon.com/lambda/latest/dg/monitoring-cloudwatchlogs-advanced.html>),
    /// else text.
    ///
    /// With the `emf` feature, what the function counts and measures through the `metrics`
    /// facade (the same names as the local stack's `/metrics`) is written after each
    /// invocation ([`Telemetry::flush`]) as CloudWatch embedded metric format documents on
    /// stdout, in namespace [`METRICS_NAMESPACE`] with the labels as dimensions, from which
    /// CloudWatch Logs extracts the metrics
    /// (<https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>,
    /// <https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Lambda.html>).
    /// Counters are the invocation's increments (a counter is reset by each flush), so the
    /// metric's `Sum` over a period is the count in it.
    pub fn lambda(service: &'static str) -> Result<Self, InitError> {
        let json = std::env::var("AWS_LAMBDA_LOG_FORMAT")
            .is_ok_and(|format| format.eq_ignore_ascii_case("json"));
        #[allow(unused_mut)] // without `emf`, it stays as it is
        let mut telemetry = Self::install(
            service,
            if json {
                LogFormat::Json
            } else {
                LogFormat::Text
            },
        )?;
        #[cfg(feature = "emf")]
        {
            let collector = metrics_cloudwatch_embedded::Builder::new()
                .cloudwatch_namespace(METRICS_NAMESPACE)
                .init()
                .map_err(|error| InitError::Metrics(error.to_string()))?;
            telemetry.metrics = Some(collector);
        }
        Ok(telemetry)
    }

    /// Exports what has been traced so far and waits for it, when exporting: at the end of a
    /// Lambda invocation, after which the environment may be frozen with a batch unsent
    /// (<https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtime-environment.html>).
    /// Nothing, at no cost, when not exporting. The flush blocks, so it runs on a blocking
    /// thread, leaving the runtime free for the export's request.
    ///
    /// A Lambda's metrics are written then too (see [`Telemetry::lambda`]).
    pub async fn flush(&self) {
        #[cfg(feature = "emf")]
        if let Some(metrics) = self.metrics
            && let Err(error) = metrics.flush(std::io::stdout().lock())
        {
            tracing::warn!(%error, "cannot write the invocation's metrics");
        }
        if self.exporting {
            let provider = self.provider.clone();
            let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
        }
    }

    /// Ends the provider's work, exporting its last spans (when exporting).
    pub async fn shutdown(self) {
        let provider = self.provider;
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
}
