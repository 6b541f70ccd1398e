//! `book-added`: reacts to `outboxdemo.added` by recording that the book joined the catalogue.

use aws_lambda_events::eventbridge::EventBridgeEvent;
use domain::event::DetailType;
use serde_json::Value;

use crate::{ActivityStore, Consumer, ConsumerError, Recorded};

/// The `book-added` consumer.
pub const CONSUMER: Consumer = Consumer {
    name: "book-added",
    detail_type: DetailType::Added,
};

/// Handles one `outboxdemo.added` event.
pub async fn handle(
    event: EventBridgeEvent<Value>,
    store: &dyn ActivityStore,
) -> Result<Recorded, ConsumerError> {
    CONSUMER.handle(event, store).await
}
