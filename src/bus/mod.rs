//! The local event bus: what EventBridge, its rules and their targets do on AWS.
//!
//! [`LocalBus`] is an [`EventPublisher`]. Publishing routes each event by source and detail
//! type (as the template's rules do) and commits one queue entry per matching target, in one
//! durable transaction. A delivery task per target takes its queue in order and hands each
//! event to the target as the `EventBridgeEvent` JSON a Lambda receives; a failure is retried
//! with backoff, and an event that keeps failing (or can never succeed) is moved to the dead
//! letters so the queue goes on. An entry leaves the queue only after its target succeeded,
//! so delivery is at least once; targets dedupe on `metadata.eventId`.
//!
//! Live targets ([`LocalBus::with_live`], the GraphQL subscriptions) have no queue: each event
//! is handed to them in memory as it is published, before the queues' commit, since a live
//! subscriber cannot outlive the process. That is still after the change stream and the
//! processor, never from the mutation. The stream offers a retried batch again, so the bus
//! hands a live target only events past the last stream position it handed out: each event
//! once, in stream order.
//!
//! - this module: [`LocalBus`] and publishing (routing into the queues).
//! - `routes`: [`Route`]s, the [`Target`] trait and the targets ([`ConsumerTarget`],
//!   [`SubscriptionTarget`]).
//! - `delivery`: the delivery tasks ([`DeliveryOptions`]): in order, overlapped where the target
//!   allows, retried with backoff, dead-lettered when they keep failing.

mod delivery;
mod routes;

pub use delivery::DeliveryOptions;
pub use routes::{
    ConsumerTarget, Delivery, DeliveryError, LiveTarget, Route, SubscriptionTarget, Target,
};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;
use processor::{EventPublisher, OutboxEvent, PublishError};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::embedded::{Db, DbError, bus_queue};

/// The local event bus.
pub struct LocalBus {
    db: Arc<Db>,
    name: String,
    routes: Vec<Route>,
    wakers: HashMap<String, Arc<Notify>>,
    options: DeliveryOptions,
    live: Vec<Arc<dyn LiveTarget>>,
    /// The stream position (local sequence number) of the last event handed to the live
    /// targets; -1 before the first.
    live_position: AtomicI64,
}

impl std::fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBus")
            .field("name", &self.name)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl LocalBus {
    /// A bus named `name` with these routes, queueing in `db`.
    pub fn new(
        db: Arc<Db>,
        name: impl Into<String>,
        routes: Vec<Route>,
        options: DeliveryOptions,
    ) -> Self {
        let wakers = routes
            .iter()
            .map(|route| (route.name.clone(), Arc::new(Notify::new())))
            .collect();
        Self {
            db,
            name: name.into(),
            routes,
            wakers,
            options,
            live: Vec::new(),
            live_position: AtomicI64::new(-1),
        }
    }

    /// The bus with `target` fed in memory as events are published (see the module docs).
    pub fn with_live(mut self, target: Arc<dyn LiveTarget>) -> Self {
        self.live.push(target);
        self
    }

    /// Hands the live targets every event of `events` past the last stream position they
    /// were handed, in order. An event without a local sequence number (none of the local
    /// stream's) is handed out as it is.
    fn publish_live(&self, events: &[OutboxEvent]) {
        if self.live.is_empty() {
            return;
        }
        for event in events {
            if let Ok(seq) = event.envelope.metadata.sequence_number.parse::<i64>() {
                // One stream reader publishes, one batch at a time; `fetch_max` keeps the
                // check and the advance one step all the same.
                if self.live_position.fetch_max(seq, Ordering::AcqRel) >= seq {
                    continue;
                }
            }
            for target in &self.live {
                target.publish(event);
            }
        }
    }

    /// The event as EventBridge delivers it to a target. Its `id` is new on every publish;
    /// the stable id is `detail.metadata.eventId`.
    fn to_bus_event(event: &OutboxEvent) -> Result<Value, serde_json::Error> {
        Ok(json!({
            "version": "0",
            "id": uuid::Uuid::new_v4().to_string(),
            "detail-type": event.detail_type.as_str(),
            "source": event.source(),
            "account": "000000000000",
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "region": "local",
            "resources": [],
            "detail": serde_json::to_value(&event.envelope)?,
        }))
    }
}

#[async_trait]
impl EventPublisher for LocalBus {
    async fn publish(&self, events: &[OutboxEvent]) -> Result<(), PublishError> {
        // The change is durable in the stream already; a live subscriber does not wait for
        // the queues' commit.
        self.publish_live(events);
        let mut rows = Vec::new();
        for (index, event) in events.iter().enumerate() {
            let json = Self::to_bus_event(event)
                .and_then(|value| serde_json::to_string(&value))
                .map_err(|e| PublishError {
                    first_failed: index,
                    reason: e.to_string(),
                })?;
            for route in &self.routes {
                if route.matches(event.source(), event.detail_type.as_str()) {
                    rows.push((route.name.clone(), json.clone()));
                }
            }
        }
        let targets: Vec<String> = rows.iter().map(|(target, _)| target.clone()).collect();
        self.db
            .write(move |conn| {
                rows.iter()
                    .try_for_each(|(target, event)| bus_queue::enqueue(conn, target, event))
            })
            .await
            .map_err(|e| PublishError {
                first_failed: 0,
                reason: e.to_string(),
            })?;
        for target in targets {
            if let Some(waker) = self.wakers.get(&target) {
                waker.notify_one();
            }
        }
        Ok(())
    }
}

/// How many deliveries are queued, over all targets.
pub async fn queued(db: &Arc<Db>) -> Result<u64, DbError> {
    db.read(bus_queue::count).await
}
