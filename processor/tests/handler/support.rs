//! What the handler tests share: a publisher that records what it is offered, and a poison
//! queue that keeps what is set aside.
//!
//! Every event the processor publishes carries the `traceparent` of its `processor.publish`
//! hop (a new span id, so not the record's): the publisher checks that it is there and
//! records the events without it, to compare them with what the records map to
//! ([`untraced`]). That the hop continues the record's trace is `telemetry`'s test, and the
//! end-to-end tracing tests'.

use std::sync::Mutex;

use async_trait::async_trait;
use aws_lambda_events::dynamodb::EventRecord;
use processor::{EventPublisher, OutboxEvent, PoisonRecords, PublishError, SetAsideError};

/// Records what it is offered and what it publishes; refuses from `fail_from` on, if set.
#[derive(Debug, Default)]
pub struct RecordingPublisher {
    fail_from: Option<usize>,
    offered: Mutex<Vec<OutboxEvent>>,
    published: Mutex<Vec<OutboxEvent>>,
}

#[async_trait]
impl EventPublisher for RecordingPublisher {
    async fn publish(&self, events: &[OutboxEvent]) -> Result<(), PublishError> {
        for event in events {
            let traceparent = event.envelope.metadata.traceparent.as_deref();
            assert!(
                traceparent.is_some_and(|t| t.len() == 55 && t.starts_with("00-")),
                "published without the hop's traceparent: {traceparent:?}"
            );
        }
        let events = untraced(events.to_vec());
        self.offered.lock().unwrap().extend_from_slice(&events);
        let accepted = self.fail_from.unwrap_or(usize::MAX).min(events.len());
        self.published
            .lock()
            .unwrap()
            .extend_from_slice(&events[..accepted]);
        if accepted < events.len() {
            return Err(PublishError {
                first_failed: accepted,
                reason: "refused by the test".into(),
            });
        }
        Ok(())
    }
}

/// `events` without their `traceparent`.
pub fn untraced(mut events: Vec<OutboxEvent>) -> Vec<OutboxEvent> {
    for event in &mut events {
        event.envelope.metadata.traceparent = None;
    }
    events
}

impl RecordingPublisher {
    /// A publisher that refuses every entry from index `fail_from` of a call on.
    pub fn failing_from(fail_from: Option<usize>) -> Self {
        Self {
            fail_from,
            ..Self::default()
        }
    }

    /// Everything it was asked to publish.
    pub fn offered(&self) -> Vec<OutboxEvent> {
        self.offered.lock().unwrap().clone()
    }

    /// Everything it accepted.
    pub fn published(&self) -> Vec<OutboxEvent> {
        self.published.lock().unwrap().clone()
    }
}

/// Keeps what is set aside; refuses everything when told to.
#[derive(Debug, Default)]
pub struct RecordingPoison {
    refuse: bool,
    kept: Mutex<Vec<(EventRecord, String)>>,
}

#[async_trait]
impl PoisonRecords for RecordingPoison {
    async fn set_aside(&self, record: &EventRecord, reason: &str) -> Result<(), SetAsideError> {
        if self.refuse {
            return Err(SetAsideError("refused by the test".into()));
        }
        self.kept
            .lock()
            .unwrap()
            .push((record.clone(), reason.to_owned()));
        Ok(())
    }
}

impl RecordingPoison {
    /// A poison queue that cannot be written to.
    pub fn refusing() -> Self {
        Self {
            refuse: true,
            ..Self::default()
        }
    }

    /// What was set aside, with the reasons.
    pub fn kept(&self) -> Vec<(EventRecord, String)> {
        self.kept.lock().unwrap().clone()
    }
}
