//! Telemetry shared by the local stack and the Lambdas.
//!
//! - [`context`]: W3C trace context across the asynchronous hop. Each hop (the GraphQL request,
//!   the store write, the stream batch, the processor's publish, a consumer's handling, a
//!   subscription's delivery) opens a named `tracing` span, continues the trace a
//!   `traceparent` string names ([`continue_trace`]) and hands its own on ([`traceparent`]),
//!   through the item, the stream record and the event's `metadata.traceparent`.
//! - [`subscriber`]: the `tracing` subscriber a binary installs: log lines (text or JSON)
//!   filtered by `RUST_LOG`, and the OpenTelemetry layer that gives every hop span its trace.
//! - [`export`]: the tracer provider: OTLP over HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//!   set, nothing exported otherwise.
//!
//! Without the OpenTelemetry layer (a library's unit tests) the helpers do nothing: no trace
//! id is recorded and no `traceparent` is handed on.

pub mod context;
pub mod export;
pub mod subscriber;

pub use context::{continue_trace, link, trace_id, traceparent};
