//! The bus's rules and targets: a [`Route`] sends the events it matches to one [`Target`]; the
//! targets are the consumers ([`ConsumerTarget`]). The GraphQL subscriptions are a
//! [`LiveTarget`] ([`SubscriptionTarget`]), fed in memory as events are published.

use std::sync::Arc;

use api::{BookEvent, EventHub};
use aws_lambda_events::eventbridge::EventBridgeEvent;
use consumers::{ActivityStore, Consumer, ConsumerError};
use processor::OutboxEvent;
use serde_json::Value;

/// A delivery that has taken its first step (see [`Target::deliver`]); it resolves once the
/// target is done with the event.
pub type Delivery = std::pin::Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send>>;

/// Where a rule sends the events it matches: a consumer Lambda, locally.
pub trait Target: Send + Sync {
    /// Starts handling one event. `deliver` is synchronous on purpose: what it does before it
    /// returns is the delivery's first step, taken in queue order, and the returned
    /// [`Delivery`] only finishes the work. An `Err` is a failure before any step was taken.
    fn deliver(&self, event: EventBridgeEvent<Value>) -> Result<Delivery, DeliveryError>;

    /// Whether the bus may overlap this target's deliveries: start each one (call
    /// [`Target::deliver`]) before the previous one has finished, and await them together.
    /// Only for a target whose effects are put in order by that synchronous first step, such as
    /// a write to the embedded store (queued when called). Off by default: one delivery at a
    /// time.
    fn overlaps(&self) -> bool {
        false
    }
}

/// A target's failure to handle an event.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// Whether delivering the same event again may succeed.
    pub retryable: bool,
    /// What went wrong.
    pub message: String,
}

impl DeliveryError {
    /// A failure that delivering again cannot cure (a malformed or misrouted event).
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            message: message.into(),
        }
    }
}

impl From<ConsumerError> for DeliveryError {
    fn from(error: ConsumerError) -> Self {
        Self {
            retryable: error.is_retryable(),
            message: error.to_string(),
        }
    }
}

/// A consumer as a bus target.
#[derive(Clone)]
pub struct ConsumerTarget {
    consumer: Consumer,
    store: Arc<dyn ActivityStore>,
}

impl ConsumerTarget {
    /// `consumer`, recording into `store`.
    pub fn new(consumer: Consumer, store: Arc<dyn ActivityStore>) -> Self {
        Self { consumer, store }
    }
}

impl std::fmt::Debug for ConsumerTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ConsumerTarget")
            .field(&self.consumer.name)
            .finish()
    }
}

impl Target for ConsumerTarget {
    /// [`Consumer::start`] issues the consumer's activity write before it returns.
    fn deliver(&self, event: EventBridgeEvent<Value>) -> Result<Delivery, DeliveryError> {
        let handling = self.consumer.start(event, self.store.as_ref())?;
        Ok(Box::pin(
            async move { Ok(handling.finish().await.map(drop)?) },
        ))
    }

    /// When the store issues each write as it is called (the embedded store), overlapping lets a
    /// batch's writes share commits while landing in event order.
    fn overlaps(&self) -> bool {
        self.store.issues_writes_on_call()
    }
}

/// A target in this process's memory only, handed each event as the processor publishes it,
/// with no durable queue: what it serves cannot outlive the process, so a queue that survives a
/// restart would serve no one.
pub trait LiveTarget: Send + Sync {
    /// Takes one event of the processor, after the change stream. It must not wait: the
    /// publishing stream reader is the caller.
    fn publish(&self, event: &OutboxEvent);
}

/// The GraphQL subscriptions as a live bus target: every event of the processor goes to the
/// [`EventHub`], which hands it to the subscribers without waiting for any of them.
///
/// It is the rule the template declares for the notifier (every detail type of the processor's
/// source), but fed in memory: a live subscriber needs no queue that outlives the process. The
/// event is the envelope the notifier Lambda reads out of its `EventBridgeEvent`
/// ([`BookEvent::from_eventbridge`] makes the same [`BookEvent`] of it), taken as it is rather
/// than through EventBridge's JSON, so nothing can make it malformed on the way.
#[derive(Debug, Clone)]
pub struct SubscriptionTarget {
    hub: EventHub,
}

impl SubscriptionTarget {
    /// The live target for subscriptions, handing events to `hub`.
    pub fn live(hub: EventHub) -> Arc<dyn LiveTarget> {
        Arc::new(Self { hub })
    }
}

impl LiveTarget for SubscriptionTarget {
    fn publish(&self, event: &OutboxEvent) {
        if event.source() == domain::event::SOURCE {
            self.hub
                .publish(BookEvent::new(event.detail_type, event.envelope.clone()));
        }
    }
}

/// A rule and its one target: events from `source` with one of `detail_types` go to `target`.
#[derive(Clone)]
pub struct Route {
    /// The rule's (and the target queue's) name.
    pub name: String,
    /// The `source` the rule matches.
    pub source: String,
    /// The `detail-type`s the rule matches.
    pub detail_types: Vec<String>,
    /// Where matching events go.
    pub target: Arc<dyn Target>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("source", &self.source)
            .field("detail_types", &self.detail_types)
            .finish_non_exhaustive()
    }
}

impl Route {
    /// The route the template declares for a consumer: the processor's events of the
    /// consumer's detail type.
    pub fn consumer(consumer: Consumer, store: Arc<dyn ActivityStore>) -> Self {
        Self {
            name: consumer.name.to_owned(),
            source: domain::event::SOURCE.to_owned(),
            detail_types: vec![consumer.detail_type.as_str().to_owned()],
            target: Arc::new(ConsumerTarget::new(consumer, store)),
        }
    }

    /// Every consumer's route ([`consumers::ALL`]), recording into `store`: the rules the
    /// template declares for them.
    pub fn consumers(store: &Arc<dyn ActivityStore>) -> Vec<Self> {
        consumers::ALL
            .into_iter()
            .map(|consumer| Self::consumer(consumer, Arc::clone(store)))
            .collect()
    }

    pub(super) fn matches(&self, source: &str, detail_type: &str) -> bool {
        self.source == source && self.detail_types.iter().any(|t| t == detail_type)
    }
}
