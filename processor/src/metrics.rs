//! What the processor counts, through the `metrics` facade: whatever recorder the process
//! installed gets them (the local stack's `/metrics`); without one, counting costs next to
//! nothing.

/// Events the bus accepted, by `detail_type`.
pub const EVENTS_PUBLISHED: &str = "outboxdemo_events_published_total";
/// Records or events set aside, by `source`: `stream` for a stream record the processor could
/// never map (or, locally, one that kept failing until it was older than the stream keeps),
/// `bus` for an event a target kept failing.
pub const DEAD_LETTERS: &str = "outboxdemo_dead_letters_total";

/// Describes the processor's metrics to the installed recorder.
pub fn describe() {
    metrics::describe_counter!(EVENTS_PUBLISHED, "Events the bus accepted, by detail type");
    metrics::describe_counter!(DEAD_LETTERS, "Records or events set aside, by source");
}

pub(crate) fn published(detail_type: domain::event::DetailType) {
    metrics::counter!(EVENTS_PUBLISHED, "detail_type" => detail_type.as_str()).increment(1);
}

/// A record or event set aside from `source`.
pub fn dead_lettered(source: &'static str) {
    metrics::counter!(DEAD_LETTERS, "source" => source).increment(1);
}
