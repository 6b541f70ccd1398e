//! The API's hops: `graphql.request`, `store.write`, `subscription.deliver` and (the
//! notifier's) `subscription.fanout`.
//!
//! Each operation a request runs continues the trace its client sent, or starts one. A
//! transport puts the client's W3C `traceparent` into the request's (or the connection's)
//! data as [`IncomingTrace`]: the HTTP routes from the `traceparent` header, the WebSocket from
//! the `connection_init` payload's `traceparent`. [`RequestTracing`] opens the span around the
//! execution, so the resolvers' work is inside it.
//!
//! A write to the books table opens `store.write` ([`store_write`]) inside it and stores that
//! span's `traceparent` with the change, where the stream record carries it to the processor.

use std::sync::Arc;

use async_graphql::Response;
use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextExecute};
use domain::BookName;
use domain::item::ChangeTrace;
use telemetry::{Hop, InHop as _};

/// Request or connection data: the `traceparent` a client sent. One that does not parse is
/// ignored (the request starts its own trace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingTrace(pub String);

impl IncomingTrace {
    /// The trace a header's or payload's value names, when there is a value.
    pub fn from_value(value: Option<&str>) -> Option<Self> {
        value.map(|value| Self(value.to_owned()))
    }
}

/// A schema extension that runs each operation inside a `graphql.request` span.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestTracing;

impl ExtensionFactory for RequestTracing {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(RequestTracing)
    }
}

#[async_trait::async_trait]
impl Extension for RequestTracing {
    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let span = tracing::info_span!(
            "graphql.request",
            operation = operation_name.unwrap_or_default(),
        );
        let incoming = ctx
            .data_opt::<IncomingTrace>()
            .map(|trace| trace.0.as_str());
        next.run(ctx, operation_name)
            .in_hop(Hop::start(span, incoming))
            .await
    }
}

/// The `store.write` hop of a write (`operation`: `add` or `remove`) of the book `name`, and
/// the trace to store with the change: the hop's `traceparent` and the time now, as the write
/// is issued. Run the write in the hop.
pub fn store_write(operation: &'static str, name: &BookName) -> (Hop, ChangeTrace) {
    let span = tracing::info_span!("store.write", operation, book = %name);
    let hop = Hop::start(span, None);
    let trace = ChangeTrace::now(Some(hop.traceparent()));
    (hop, trace)
}

/// The `subscription.deliver` hop of `event`, continuing the event's trace (from the
/// processor's publish): it marks the hand-over of the event to one subscription (the local
/// hub's, or the notifier's run of a subscription on AWS).
pub fn subscription_deliver(event: &crate::BookEvent) -> Hop {
    let span = tracing::info_span!("subscription.deliver", event_id = %event.event_id);
    Hop::start(span, event.traceparent.as_deref()).with_event_id(&event.event_id)
}

/// The `subscription.fanout` hop of the notifier's work for `event` on AWS (reading the
/// subscriptions, running them, posting), continuing the event's trace; each subscription's
/// hand-over is a `subscription.deliver` inside it.
pub fn subscription_fanout(event: &crate::BookEvent) -> Hop {
    let span = tracing::info_span!("subscription.fanout", event_id = %event.event_id);
    Hop::start(span, event.traceparent.as_deref()).with_event_id(&event.event_id)
}
