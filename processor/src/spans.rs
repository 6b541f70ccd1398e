//! The processor's hop spans: `stream.batch` for a batch of stream records, and
//! `processor.publish` for each event it publishes.

use tracing::Span;

use crate::OutboxEvent;

/// The `stream.batch` span of a batch of `records` records whose mapped events are `events`:
/// it continues the trace of the first event that has one and links the others' (a span has
/// one parent; the records of a batch come from many writes).
pub fn batch(records: usize, events: &[OutboxEvent]) -> Span {
    let span = tracing::info_span!("stream.batch", records, trace_id = tracing::field::Empty);
    let mut traces = events
        .iter()
        .filter_map(|event| event.envelope.metadata.traceparent.as_deref());
    telemetry::continue_trace(&span, traces.next());
    for other in traces {
        telemetry::link(&span, other);
    }
    span
}

/// The `processor.publish` span of one event: it continues the trace of the event's record
/// (the write's), and the event's `metadata.traceparent` becomes the span's own, for the
/// consumers and subscribers to continue. Where nothing traces the processor, the event keeps
/// the record's `traceparent`.
pub fn publish(event: &mut OutboxEvent) -> Span {
    let metadata = &mut event.envelope.metadata;
    let span = tracing::info_span!(
        "processor.publish",
        event_id = %metadata.event_id,
        detail_type = %event.detail_type,
        trace_id = tracing::field::Empty,
    );
    telemetry::continue_trace(&span, metadata.traceparent.as_deref());
    if let Some(own) = telemetry::traceparent(&span) {
        metadata.traceparent = Some(own);
    }
    span
}
