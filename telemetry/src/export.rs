//! OTLP export: spans leave the process only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; otherwise the provider has no exporter and
//! spans end in memory, with no thread, connection or buffer for them.
//!
//! The transport is OTLP over HTTP with protobuf bodies (`/v1/traces`), each request on an
//! HTTP/1.1 connection of its own made with hyper's connection API, which the stack has already
//! (no connection pool, no HTTP/2, no gRPC stack, no second TLS stack: a plain `http://`
//! endpoint): point it at a collector on the same host or network, as the AWS Distro for
//! OpenTelemetry Lambda layer runs one on `localhost:4318`
//! (<https://aws-otel.github.io/docs/getting-started/lambda>). The batch processor sends a
//! request every few seconds, or at a flush, so a connection each costs little; a pooled
//! client would cost each bootstrap its HTTP/2 code (BENCHMARKS.md, "Telemetry"). The
//! variables are the SDK's standard ones
//! (<https://opentelemetry.io/docs/specs/otel/protocol/exporter/>), read once at start;
//! `OTEL_SERVICE_NAME` names the service.

use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
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
    let client = Http1 {
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

/// The exporter's HTTP client: each request on a new HTTP/1.1 connection, run on the Tokio
/// runtime it was made in. The SDK's batch processor exports from a thread of its own, outside
/// any runtime, where a Tokio socket cannot run; the request is spawned onto the runtime and
/// awaited there.
#[derive(Debug)]
struct Http1 {
    runtime: Option<tokio::runtime::Handle>,
}

#[async_trait::async_trait]
impl HttpClient for Http1 {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let Some(runtime) = &self.runtime else {
            return send(request).await;
        };
        runtime.spawn(send(request)).await?
    }
}

/// Sends `request` (to a plain `http://` endpoint) on a connection of its own, within
/// [`EXPORT_TIMEOUT`].
async fn send(request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
    tokio::time::timeout(EXPORT_TIMEOUT, async move {
        let (mut parts, body) = request.into_parts();
        if parts.uri.scheme_str() != Some("http") {
            return Err(format!(
                "the OTLP endpoint {} is not http://: export to a collector beside the process",
                parts.uri
            )
            .into());
        }
        let authority = parts
            .uri
            .authority()
            .cloned()
            .ok_or("the OTLP endpoint names no host")?;
        let stream = tokio::net::TcpStream::connect((
            authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']'),
            authority.port_u16().unwrap_or(80),
        ))
        .await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let connection = tokio::spawn(connection);
        // HTTP/1.1 asks for the origin form and a Host header (RFC 9112, sections 3.2 and 3.2.1).
        parts.uri = parts
            .uri
            .path_and_query()
            .map_or("/", |path| path.as_str())
            .parse()?;
        parts.headers.insert(
            hyper::header::HOST,
            hyper::header::HeaderValue::from_str(authority.as_str())?,
        );
        let response = sender
            .send_request(Request::from_parts(parts, Full::new(body)))
            .await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        connection.abort();
        Ok(Response::from_parts(parts, body))
    })
    .await?
}
