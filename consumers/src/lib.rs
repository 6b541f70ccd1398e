//! The consumers: Lambdas (and local bus targets) that react to the processor's events.
//!
//! - [`book_added`], [`book_removed`]: one module per consumer, each a [`Consumer`] and the
//!   handler its Lambda and the local bus call.
//! - [`dynamo`]: [`dynamo::DynamoActivityStore`], the store the consumer Lambdas use.
//! - [`run`]: the whole of a consumer Lambda's `main`, given its [`Consumer`].
//! - [`store`]: the [`ActivityStore`] port. Recording an activity entry is both a consumer's
//!   visible effect and its idempotency record: the entry is keyed by the event's
//!   `metadata.eventId`, so a redelivered event has no second effect.

pub mod book_added;
pub mod book_removed;
pub mod dynamo;
pub mod store;

use aws_lambda_events::eventbridge::EventBridgeEvent;
use chrono::Utc;
use domain::ActivityEntry;
use domain::event::{DetailType, Envelope, SOURCE};
use serde_json::Value;

pub use store::{ActivityStore, ActivityStoreError, Recorded};

/// A consumer: its name and the one detail type it reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consumer {
    /// The consumer's name, as in its Lambda, its bus rule and its activity entries.
    pub name: &'static str,
    /// The detail type its rule routes to it.
    pub detail_type: DetailType,
}

/// Every consumer, for wiring bus rules.
pub const ALL: [Consumer; 2] = [book_added::CONSUMER, book_removed::CONSUMER];

/// Why a consumer did not react to an event.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The event is not one this consumer handles: a routing mistake, not worth retrying.
    #[error("{consumer} does not handle {event_source}/{detail_type}")]
    UnexpectedEvent {
        /// The consumer that got it.
        consumer: &'static str,
        /// The event's source.
        event_source: String,
        /// The event's detail type.
        detail_type: String,
    },
    /// The detail is not a valid envelope: retrying cannot help.
    #[error("malformed event detail: {0}")]
    MalformedDetail(#[from] domain::event::EnvelopeError),
    /// The activity store failed: worth retrying.
    #[error(transparent)]
    Store(#[from] ActivityStoreError),
}

impl ConsumerError {
    /// Whether delivering the same event again may succeed. Events that can never succeed
    /// go straight to the dead letters instead of using up retries.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Store(_))
    }
}

/// What Lambda reports for a failed invocation: the kind of failure and its message.
impl From<ConsumerError> for lambda_runtime::Diagnostic {
    fn from(error: ConsumerError) -> Self {
        let error_type = match &error {
            ConsumerError::UnexpectedEvent { .. } => "UnexpectedEvent",
            ConsumerError::MalformedDetail(_) => "MalformedDetail",
            ConsumerError::Store(_) => "ActivityStoreFailed",
        };
        Self {
            error_type: error_type.to_owned(),
            error_message: error.to_string(),
        }
    }
}

impl Consumer {
    /// Reacts to one event delivered by the bus: checks that it is this consumer's, reads the
    /// envelope and records the activity entry (once per event id).
    pub async fn handle(
        &self,
        event: EventBridgeEvent<Value>,
        store: &dyn ActivityStore,
    ) -> Result<Recorded, ConsumerError> {
        if event.source != SOURCE || event.detail_type != self.detail_type.as_str() {
            return Err(ConsumerError::UnexpectedEvent {
                consumer: self.name,
                event_source: event.source,
                detail_type: event.detail_type,
            });
        }
        let envelope = Envelope::from_detail(event.detail)?;
        let entry = ActivityEntry {
            event_id: envelope.metadata.event_id,
            detail_type: self.detail_type,
            consumer: self.name.to_owned(),
            book: envelope.data,
            processed_at: Utc::now(),
        };
        let recorded = store.record(&entry).await?;
        match recorded {
            Recorded::New => tracing::info!(
                event_id = %entry.event_id,
                consumer = self.name,
                book = %entry.book.name,
                "activity recorded"
            ),
            Recorded::AlreadyRecorded => tracing::info!(
                event_id = %entry.event_id,
                consumer = self.name,
                "event already processed; no second effect"
            ),
        }
        Ok(recorded)
    }
}

/// Configuration of a consumer Lambda, from the environment.
#[derive(Debug, clap::Parser)]
struct LambdaConfig {
    /// The activity table.
    #[arg(long, env = "ACTIVITY_TABLE_NAME")]
    activity_table_name: String,
}

/// Runs `consumer` as a Lambda on EventBridge events: reads its configuration, builds the
/// DynamoDB client once, and serves invocations. An error fails the invocation, so Lambda
/// retries it and finally sends it to the function's on-failure destination.
pub async fn run(consumer: Consumer) -> Result<(), lambda_runtime::Error> {
    use clap::Parser as _;
    lambda_runtime::tracing::init_default_subscriber();
    let config = LambdaConfig::try_parse()?;
    let client = aws_sdk_dynamodb::Client::new(&aws_config::load_from_env().await);
    let store = dynamo::DynamoActivityStore::new(client, config.activity_table_name);
    let store = &store;
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<EventBridgeEvent<Value>>| async move {
            consumer
                .handle(event.payload, store)
                .await
                .map(|recorded| serde_json::json!({"recorded": recorded == Recorded::New}))
        },
    ))
    .await
}

#[cfg(test)]
mod tests;
