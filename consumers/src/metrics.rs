//! What the consumers measure, through the `metrics` facade: whatever recorder the process
//! installed gets it (the local stack's `/metrics`); without one, it costs next to nothing.

use chrono::{DateTime, Utc};

/// Seconds from a change's commit (`metadata.committedAt`) to a consumer's effect, by
/// `consumer`: one observation per event a consumer recorded for the first time. Events
/// without a commit time (removals, and envelopes written before it was added) are not
/// observed.
pub const MUTATION_TO_CONSUMER: &str = "outboxdemo_mutation_to_consumer_seconds";

/// Describes the consumers' metrics to the installed recorder.
pub fn describe() {
    metrics::describe_histogram!(
        MUTATION_TO_CONSUMER,
        metrics::Unit::Seconds,
        "From a change's commit to a consumer's effect, by consumer"
    );
}

/// `consumer` has had its effect for a change committed at `committed_at`.
pub(crate) fn reacted(consumer: &'static str, committed_at: DateTime<Utc>) {
    metrics::histogram!(MUTATION_TO_CONSUMER, "consumer" => consumer)
        .record(domain::event::seconds_since(committed_at));
}
