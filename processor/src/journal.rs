//! The [`Journal`] port: where each event gets its position among all published events before
//! it is published ([`Journaled`]), so that subscriptions can resume after a position.

use async_trait::async_trait;

use crate::mapping::OutboxEvent;
use crate::publisher::{EventPublisher, PublishError};

/// A position in the journal (from 1).
pub type Position = i64;

/// Gives events positions in one total order, each event once.
#[async_trait]
pub trait Journal: Send + Sync {
    /// Journals `events`, in order, each at the next free position, and gives their positions.
    /// An event journaled before (the same `metadata.eventId`, offered again by a retried batch)
    /// keeps the position it has and is not journaled again.
    async fn append(&self, events: &[OutboxEvent]) -> Result<Vec<Position>, JournalError>;
}

/// The journal could not be written; nothing of the events is published.
#[derive(Debug, thiserror::Error)]
#[error("the journal cannot be written: {0}")]
pub struct JournalError(pub String);

/// A publisher that journals each batch before it publishes it, with each event's position as
/// its `metadata.cursor`: an event is on the bus only once it is in the journal, so a subscriber
/// that reads the journal up to an event's position misses none before it.
#[derive(Debug, Clone)]
pub struct Journaled<J, P> {
    journal: J,
    publisher: P,
}

impl<J, P> Journaled<J, P> {
    /// Publishes through `publisher`, journaling in `journal` first.
    pub fn new(journal: J, publisher: P) -> Self {
        Self { journal, publisher }
    }
}

#[async_trait]
impl<J: Journal, P: EventPublisher> EventPublisher for Journaled<J, P> {
    async fn publish(&self, events: &[OutboxEvent]) -> Result<(), PublishError> {
        let positions = self
            .journal
            .append(events)
            .await
            .map_err(|error| PublishError {
                first_failed: 0,
                reason: error.to_string(),
            })?;
        let events: Vec<OutboxEvent> = events
            .iter()
            .zip(positions)
            .map(|(event, position)| {
                let mut event = event.clone();
                event.envelope.metadata.cursor = Some(domain::journal::cursor(position));
                event
            })
            .collect();
        self.publisher.publish(&events).await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    /// Positions by event id, in memory.
    #[derive(Default)]
    struct MemoryJournal(Mutex<HashMap<String, Position>>);

    #[async_trait]
    impl Journal for MemoryJournal {
        async fn append(&self, events: &[OutboxEvent]) -> Result<Vec<Position>, JournalError> {
            let mut journal = self.0.lock().map_err(|e| JournalError(e.to_string()))?;
            Ok(events
                .iter()
                .map(|event| {
                    let next = journal.len() as Position + 1;
                    *journal
                        .entry(event.envelope.metadata.event_id.clone())
                        .or_insert(next)
                })
                .collect())
        }
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<OutboxEvent>>);

    #[async_trait]
    impl EventPublisher for Recorder {
        async fn publish(&self, events: &[OutboxEvent]) -> Result<(), PublishError> {
            self.0.lock().unwrap().extend_from_slice(events);
            Ok(())
        }
    }

    fn event(id: &str) -> OutboxEvent {
        let detail = serde_json::json!({
            "metadata": {"eventId": id, "sequenceNumber": "7", "occurredAt": "2024-01-01T00:00:00Z", "version": 1},
            "data": {"name": "Dune"}
        });
        OutboxEvent {
            detail_type: domain::DetailType::Added,
            envelope: domain::Envelope::from_detail(detail).unwrap(),
        }
    }

    #[tokio::test]
    async fn events_go_out_with_their_journal_position_as_cursor_and_keep_it_when_offered_again() {
        let journaled = Journaled::new(MemoryJournal::default(), Recorder::default());
        journaled.publish(&[event("a"), event("b")]).await.unwrap();
        journaled.publish(&[event("b"), event("c")]).await.unwrap();
        let cursors: Vec<(String, String)> = journaled
            .publisher
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|e| {
                let metadata = &e.envelope.metadata;
                (metadata.event_id.clone(), metadata.position().to_owned())
            })
            .collect();
        let expected = [("a", 1), ("b", 2), ("b", 2), ("c", 3)]
            .map(|(id, p)| (id.to_owned(), domain::journal::cursor(p)));
        assert_eq!(cursors, expected);
    }
}
