//! The processor's hops: `stream.batch` for a batch of stream records, and
//! `processor.publish` for each event it publishes.

use telemetry::Hop;

use crate::OutboxEvent;

/// The `stream.batch` hop of a batch of `records` records whose mapped events are `events`:
/// it continues the trace of the first event that has one and links the others' (a span has
/// one parent; the records of a batch come from many writes).
pub fn batch(records: usize, events: &[OutboxEvent]) -> Hop {
    let span = tracing::info_span!("stream.batch", records);
    let mut traces = events
        .iter()
        .filter_map(|event| event.envelope.metadata.traceparent.as_deref());
    let hop = Hop::start(span, traces.next());
    for other in traces {
        hop.link(other);
    }
    hop
}

/// The `processor.publish` hop of one event: it continues the trace of the event's record
/// (the write's), and the event's `metadata.traceparent` becomes the hop's own, for the
/// consumers and subscribers to continue.
pub fn publish(event: &mut OutboxEvent) -> Hop {
    let metadata = &mut event.envelope.metadata;
    let span = tracing::info_span!(
        "processor.publish",
        event_id = %metadata.event_id,
        detail_type = %event.detail_type,
    );
    let hop = Hop::start(span, metadata.traceparent.as_deref()).with_event_id(&metadata.event_id);
    metadata.traceparent = Some(hop.traceparent());
    hop
}
