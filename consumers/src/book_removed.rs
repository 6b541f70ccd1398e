//! `book-removed`: reacts to `outboxdemo.removed` by recording that the book left the catalogue.

use aws_lambda_events::eventbridge::EventBridgeEvent;
use domain::event::DetailType;
use serde_json::Value;

use crate::{ActivityStore, Consumer, ConsumerError, Recorded};

/// The `book-removed` consumer.
pub const CONSUMER: Consumer = Consumer {
    name: "book-removed",
    detail_type: DetailType::Removed,
};

/// Handles one `outboxdemo.removed` event.
pub async fn handle(
    event: EventBridgeEvent<Value>,
    store: &dyn ActivityStore,
) -> Result<Recorded, ConsumerError> {
    CONSUMER.handle(event, store).await
}
