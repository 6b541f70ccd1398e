//! Fault injection, for tests and drills: make the publisher fail a fraction of entries and the
//! consumers a fraction of deliveries, and make one book's stream records unmappable and its
//! deliveries fail every time (a poison). Off by default; the guarantees (everything delivered
//! once, the poison set aside whole at once, the stream never stuck behind it) are tested with
//! it on.

use std::sync::Arc;

use async_trait::async_trait;
use aws_lambda_events::dynamodb::{Event, EventRecord};
use aws_lambda_events::eventbridge::EventBridgeEvent;
use aws_lambda_events::streams::DynamoDbEventResponse;
use processor::{EventPublisher, OutboxEvent, PublishError};
use serde_json::Value;

use crate::bus::{Delivery, DeliveryError, Route, Target};
use crate::stream::{BatchHandler, Processor};

/// What to break, and how often (the `--fault-…` flags).
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct Faults {
    /// Testing only: the chance (0-1) that a publish fails from a random entry on.
    #[arg(
        long = "fault-publish-rate",
        value_name = "FAULT_PUBLISH_RATE",
        env = "OUTBOXDEMO_FAULT_PUBLISH_RATE",
        default_value_t = 0.0
    )]
    pub publish_failure_rate: f64,
    /// Testing only: the chance (0-1) that a consumer delivery fails (retryably).
    #[arg(
        long = "fault-delivery-rate",
        value_name = "FAULT_DELIVERY_RATE",
        env = "OUTBOXDEMO_FAULT_DELIVERY_RATE",
        default_value_t = 0.0
    )]
    pub delivery_failure_rate: f64,
    /// Testing only: the stream records of the book of this name reach the processor in a
    /// shape it can never map, and deliveries of its events always fail (a poison).
    #[arg(
        long = "fault-poison",
        value_name = "FAULT_POISON",
        env = "OUTBOXDEMO_FAULT_POISON"
    )]
    pub poison: Option<String>,
}

impl Faults {
    /// Whether anything is broken on purpose.
    pub fn any(&self) -> bool {
        self.publish_failure_rate > 0.0 || self.delivery_failure_rate > 0.0 || self.poison.is_some()
    }

    fn is_poison(&self, name: &str) -> bool {
        self.poison.as_deref() == Some(name)
    }
}

/// A publisher that fails as [`Faults`] say, in front of the real one.
pub struct FaultyPublisher {
    inner: Arc<dyn EventPublisher>,
    faults: Faults,
}

impl FaultyPublisher {
    /// `inner`, broken as `faults` say.
    pub fn new(inner: Arc<dyn EventPublisher>, faults: Faults) -> Self {
        Self { inner, faults }
    }
}

impl std::fmt::Debug for FaultyPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyPublisher")
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl EventPublisher for FaultyPublisher {
    async fn publish(&self, events: &[OutboxEvent]) -> Result<(), PublishError> {
        let random = (!events.is_empty() && fastrand::f64() < self.faults.publish_failure_rate)
            .then(|| fastrand::usize(..events.len()));
        let Some(first_failed) = random else {
            return self.inner.publish(events).await;
        };
        // The entries before the failure go out, as with a real partial failure; half the time
        // the later ones do too, as when EventBridge refuses one entry of a PutEvents call and
        // accepts those beside it (each entry succeeds or fails on its own:
        // https://docs.aws.amazon.com/eventbridge/latest/APIReference/API_PutEvents.html).
        // Either way they are offered again.
        let accepted = if fastrand::bool() {
            events
        } else {
            &events[..first_failed]
        };
        self.inner.publish(accepted).await?;
        Err(PublishError {
            first_failed,
            reason: "injected fault".to_owned(),
        })
    }
}

/// A bus target that fails as [`Faults`] say, in front of the real one.
struct FaultyTarget {
    inner: Arc<dyn Target>,
    faults: Faults,
}

impl Target for FaultyTarget {
    fn deliver(&self, event: EventBridgeEvent<Value>) -> Result<Delivery, DeliveryError> {
        let name = event.detail["data"]["name"].as_str().unwrap_or_default();
        if self.faults.is_poison(name) || fastrand::f64() < self.faults.delivery_failure_rate {
            return Err(DeliveryError {
                retryable: true,
                message: "injected fault".to_owned(),
            });
        }
        self.inner.deliver(event)
    }

    /// As the real target, unless deliveries are failed on purpose: then one at a time, so a
    /// retried event is not overtaken by the ones after it.
    fn overlaps(&self) -> bool {
        self.faults.delivery_failure_rate == 0.0
            && self.faults.poison.is_none()
            && self.inner.overlaps()
    }
}

/// `route`, its target broken as `faults` say.
pub fn faulty_route(mut route: Route, faults: &Faults) -> Route {
    route.target = Arc::new(FaultyTarget {
        inner: route.target,
        faults: faults.clone(),
    });
    route
}

/// The processor as if it could not map the poison book's records (a processor bug): it is
/// handed them with their keys and images emptied, so mapping fails, and what it sets aside is
/// the stream's own record, which a fixed processor can map again (the redrive drill).
#[derive(Debug)]
pub struct PoisonedRecords {
    inner: Processor,
    originals: Arc<Originals>,
    faults: Faults,
}

/// The records as the stream has them, by event id, for the inner processor's poison port.
struct Originals {
    poison: Arc<dyn processor::PoisonRecords>,
    records: std::sync::Mutex<std::collections::HashMap<String, EventRecord>>,
}

impl std::fmt::Debug for Originals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Originals").finish_non_exhaustive()
    }
}

#[async_trait]
impl processor::PoisonRecords for Originals {
    async fn set_aside(
        &self,
        record: &EventRecord,
        reason: &str,
    ) -> Result<(), processor::SetAsideError> {
        let original = self
            .records
            .lock()
            .ok()
            .and_then(|mut records| records.remove(&record.event_id));
        self.poison
            .set_aside(original.as_ref().unwrap_or(record), reason)
            .await
    }
}

impl PoisonedRecords {
    /// `inner`, given poisoned records as `faults` say.
    pub fn new(inner: Processor, faults: Faults) -> Self {
        let originals = Arc::new(Originals {
            poison: Arc::clone(&inner.poison),
            records: Default::default(),
        });
        let inner = Processor {
            publisher: inner.publisher,
            poison: originals.clone(),
        };
        Self {
            inner,
            originals,
            faults,
        }
    }
}

#[async_trait]
impl BatchHandler for PoisonedRecords {
    async fn handle(&self, mut event: Event) -> DynamoDbEventResponse {
        for record in &mut event.records {
            let name = record.change.keys.get("name").and_then(|name| match name {
                serde_dynamo::AttributeValue::S(name) => Some(name.as_str()),
                _ => None,
            });
            if name.is_some_and(|name| self.faults.is_poison(name)) {
                if let Ok(mut originals) = self.originals.records.lock() {
                    originals.insert(record.event_id.clone(), record.clone());
                }
                record.change.keys = Default::default();
                record.change.new_image = Default::default();
                record.change.old_image = Default::default();
            }
        }
        self.inner.handle(event).await
    }
}
