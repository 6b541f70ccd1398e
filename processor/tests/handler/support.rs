//! What the handler tests share: a publisher that records what it is offered.

use std::sync::Mutex;

use async_trait::async_trait;
use processor::{EventPublisher, OutboxEvent, PublishError};

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
        self.offered.lock().unwrap().extend_from_slice(events);
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
