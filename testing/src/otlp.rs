//! An OTLP/HTTP trace receiver on 127.0.0.1: what a collector gets from a process whose
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is [`Receiver::endpoint`], decoded with the protocol's own
//! protobuf messages (`ExportTraceServiceRequest`).

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

/// A span as the receiver got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// The exporting process's `service.name`.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// Its trace id, 32 hex digits.
    pub trace_id: String,
    /// Its span id, 16 hex digits.
    pub span_id: String,
    /// Its parent's span id, 16 hex digits, or empty for a root.
    pub parent_span_id: String,
}

/// A running receiver.
#[derive(Debug, Clone)]
pub struct Receiver {
    /// `http://127.0.0.1:<port>`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    received: Arc<Mutex<Vec<ReceivedSpan>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

impl Receiver {
    /// Starts one, on a port of its own, serving `POST /v1/traces`.
    pub async fn start() -> anyhow::Result<Self> {
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::clone(&received);
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let store = Arc::clone(&store);
                async move {
                    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                        return StatusCode::BAD_REQUEST;
                    };
                    let spans = request.resource_spans.into_iter().flat_map(|resource| {
                        let service = resource
                            .resource
                            .iter()
                            .flat_map(|resource| &resource.attributes)
                            .find(|kv| kv.key == "service.name")
                            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                            .map(|value| match value {
                                opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(name) => name.clone(),
                                other => format!("{other:?}"),
                            })
                            .unwrap_or_default();
                        resource.scope_spans.into_iter().flat_map(move |scope| {
                            let service = service.clone();
                            scope.spans.into_iter().map(move |span| ReceivedSpan {
                                service: service.clone(),
                                name: span.name,
                                trace_id: hex(&span.trace_id),
                                span_id: hex(&span.span_id),
                                parent_span_id: hex(&span.parent_span_id),
                            })
                        })
                    });
                    if let Ok(mut received) = store.lock() {
                        received.extend(spans);
                    }
                    // An empty ExportTraceServiceResponse.
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self { endpoint, received })
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received
            .lock()
            .map(|received| received.clone())
            .unwrap_or_default()
    }

    /// The spans of the trace `trace_id` received so far.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|span| span.trace_id == trace_id)
            .collect()
    }
}
