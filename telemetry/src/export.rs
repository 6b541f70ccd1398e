//! OTLP export: spans leave the process only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; otherwise the provider has no exporter and
//! spans end in memory, with no thread, connection or buffer for them.
//!
//! The transport is OTLP over HTTP with protobuf bodies (`/v1/traces`), over hyper's plain
//! HTTP/1 client, which the stack has already (no gRPC stack, no second TLS stack): point it
//! at a collector on the same host or network, as the AWS Distro for OpenTelemetry Lambda
//! layer runs one on `localhost:4318`
//! (<https://aws-otel.github.io/docs/getting-started/lambda>). The variables are the SDK's
//! standard ones (<https://opentelemetry.io/docs/specs/otel/protocol/exporter/>), read once
//! at start; `OTEL_SERVICE_NAME` names the service.

use std::time::Duration;

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// The variables that switch export on.
const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// How long one export request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why export cannot be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up OTLP export: {0}")]
pub struct ExportError(#[from] opentelemetry_otlp::ExporterBuildError);

/// Whether the environment asks for export.
pub fn requested() -> bool {
    ENDPOINT_VARIABLES
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()))
}

/// The tracer provider for `service` (unless `OTEL_SERVICE_NAME` names it): exporting over
/// OTLP when the environment asks for it, else exporting nothing
/// ([`crate::subscriber::local_provider`]). Call it inside the Tokio runtime, whose handle the
/// exporter's requests run on.
pub fn provider(service: &'static str) -> Result<SdkTracerProvider, ExportError> {
    if !requested() {
        return Ok(crate::subscriber::local_provider());
    }
    let client = OnTokio {
        inner: opentelemetry_http::hyper::HyperClient::with_default_connector(EXPORT_TIMEOUT, None),
        runtime: tokio::runtime::Handle::try_current().ok(),
    };
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(client)
        .build()?;
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned());
    Ok(SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(name).build())
        .with_batch_exporter(exporter)
        .build())
}

/// An HTTP client whose requests run on the Tokio runtime it was made in. The SDK's batch
/// processor exports from a thread of its own, outside any runtime, where hyper's connector
/// (a Tokio socket) cannot run; the request is spawned onto the runtime and awaited there.
#[derive(Debug)]
struct OnTokio<C> {
    inner: C,
    runtime: Option<tokio::runtime::Handle>,
}

#[async_trait::async_trait]
impl<C: HttpClient + Clone + 'static> HttpClient for OnTokio<C> {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let Some(runtime) = &self.runtime else {
            return self.inner.send_bytes(request).await;
        };
        let inner = self.inner.clone();
        runtime
            .spawn(async move { inner.send_bytes(request).await })
            .await?
    }
}
