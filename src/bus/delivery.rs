//! The delivery tasks: one per route, taking its queue in order, retrying with backoff, and
//! dead-lettering what keeps failing (or can never succeed) so the queue goes on.
//!
//! A target that [overlaps](Target::overlaps) gets a batch of deliveries started one after
//! the other and awaited together; every other target gets one delivery at a time.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::eventbridge::EventBridgeEvent;
use serde_json::Value;
use telemetry::{Hop, InHop as _};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Delivery, DeliveryError, LocalBus, Route};
use crate::embedded::bus_queue::{self, Queued};
use crate::embedded::{DbError, WriteInFlight, bus_dead_letters};

/// How often an idle delivery task looks at its queue without being woken.
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// The most events a delivery task takes from its queue at once; the delivered ones leave the
/// queue in one write.
const DELIVERY_BATCH: i64 = 64;

/// How targets' deliveries are retried.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    /// How many times an event is delivered before it is dead-lettered.
    pub max_attempts: u32,
    /// The wait after the first failure; it doubles with each further one.
    pub first_backoff: Duration,
    /// The longest wait between two tries.
    pub max_backoff: Duration,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl LocalBus {
    /// Starts one delivery task per route; they stop when `shutdown` is cancelled.
    pub fn spawn_deliveries(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        shutdown: &CancellationToken,
    ) {
        for route in &self.routes {
            let bus = Arc::clone(self);
            let route = route.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move { bus.deliver_loop(route, shutdown).await });
        }
    }

    async fn deliver_loop(self: Arc<Self>, route: Route, shutdown: CancellationToken) {
        let Some(waker) = self.wakers.get(&route.name).cloned() else {
            return;
        };
        let mut position = QueuePosition::default();
        while !shutdown.is_cancelled() {
            let wait = match self.deliver_next(&route, &mut position).await {
                Ok(Some(wait)) => wait,
                Ok(None) => {
                    // Woken by this process's publishes; the slow re-check also picks up what
                    // another process (a `dead-letters redrive`) queued.
                    tokio::select! {
                        () = waker.notified() => {}
                        () = tokio::time::sleep(IDLE_RECHECK) => {}
                        () = shutdown.cancelled() => {}
                    }
                    continue;
                }
                Err(error) => {
                    tracing::error!(target_name = %route.name, %error, "bus queue failed; retrying");
                    // Start again from the head: whatever was not taken off is delivered again.
                    position = QueuePosition::default();
                    self.options.max_backoff
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => {}
            }
        }
        // The last batch's dequeue commits anyway; waiting for it means that once the task has
        // ended, its queue says what is left.
        if let Err(error) = position.dequeued().await {
            tracing::warn!(target_name = %route.name, %error, "last dequeue failed; those events are delivered again");
        }
    }

    /// Delivers the head of `route`'s queue, up to [`DELIVERY_BATCH`] events in order, and
    /// takes the delivered ones off the queue in one write. `None` when the queue is empty;
    /// otherwise how long to wait before the next try (zero unless an event failed).
    async fn deliver_next(
        &self,
        route: &Route,
        position: &mut QueuePosition,
    ) -> Result<Option<Duration>, DbError> {
        let target = route.name.clone();
        let after = position.after;
        let heads = self
            .db
            .read(move |conn| bus_queue::heads(conn, &target, after, DELIVERY_BATCH))
            .await?;
        if heads.is_empty() {
            position.dequeued().await?;
            return Ok(None);
        }

        let (delivered, failed) = deliver_in_order(route, heads).await;
        // The previous batch's dequeue has had this batch's time to commit.
        position.dequeued().await?;
        counted(&route.name, "delivered", delivered.len());
        let Some((head, error)) = failed else {
            if let Some(&last) = delivered.last() {
                position.after = last;
                position.dequeuing = Some(Box::pin(
                    self.db
                        .write(move |conn| bus_queue::dequeue(conn, &delivered)),
                ));
            }
            return Ok(Some(Duration::ZERO));
        };

        let id = head.id;
        let attempts = head.attempts + 1;
        let event_id = serde_json::from_str::<Value>(&head.event)
            .map(|event| event_id_of(&event["detail"]))
            .unwrap_or_default();
        if !error.retryable || attempts >= self.options.max_attempts {
            tracing::error!(
                target_name = %route.name, %event_id, attempts, %error,
                "delivery failed for good; event dead-lettered"
            );
            let target = route.name.clone();
            self.db
                .write(move |conn| {
                    bus_queue::dequeue(conn, &delivered)?;
                    bus_dead_letters::insert(
                        conn,
                        id,
                        &target,
                        &head.event,
                        &error.message,
                        attempts,
                    )?;
                    bus_queue::dequeue(conn, &[id])
                })
                .await?;
            counted(&route.name, "dead_lettered", 1);
            processor::metrics::dead_lettered("bus");
            position.after = id;
            return Ok(Some(Duration::ZERO));
        }
        tracing::warn!(target_name = %route.name, %event_id, attempts, %error, "delivery failed; retrying");
        self.db
            .write(move |conn| {
                bus_queue::dequeue(conn, &delivered)?;
                bus_queue::failed(conn, id, attempts, &error.message)
            })
            .await?;
        counted(&route.name, "retried", 1);
        metrics::counter!(crate::metrics::RETRIES, "source" => "bus").increment(1);
        position.after = id - 1;
        let backoff = domain::Backoff {
            first: self.options.first_backoff,
            max: self.options.max_backoff,
        };
        Ok(Some(backoff.delay(attempts)))
    }
}

/// Hands queued events to `route`'s target in order, overlapping them if the target allows.
/// Returns the ids delivered before the first failure, and that failure.
async fn deliver_in_order(
    route: &Route,
    heads: Vec<Queued>,
) -> (Vec<i64>, Option<(Queued, DeliveryError)>) {
    let results = if route.target.overlaps() {
        // Each delivery takes its first step as it is started, in queue order; then they
        // finish together. One that fails at once stops the batch there.
        let mut started: Vec<Delivery> = Vec::with_capacity(heads.len());
        for head in &heads {
            match deliver_one(route, &head.event) {
                Ok(delivery) => started.push(delivery),
                Err(error) => {
                    started.push(Box::pin(std::future::ready(Err(error))));
                    break;
                }
            }
        }
        futures_util::future::join_all(started).await
    } else {
        let mut results = Vec::with_capacity(heads.len());
        for head in &heads {
            let result = match deliver_one(route, &head.event) {
                Ok(delivery) => delivery.await,
                Err(error) => Err(error),
            };
            let failed = result.is_err();
            results.push(result);
            if failed {
                break;
            }
        }
        results
    };
    // A delivery that failed later (its write did not commit) may have been overtaken by the
    // ones after it; they stay queued too and are delivered again, which targets dedupe.
    let mut delivered = Vec::with_capacity(results.len());
    for (head, result) in heads.into_iter().zip(results) {
        match result {
            Ok(()) => delivered.push(head.id),
            Err(error) => return (delivered, Some((head, error))),
        }
    }
    (delivered, None)
}

/// Starts delivering one queued event (EventBridge's JSON) to `route`'s target.
fn deliver_one(route: &Route, event: &str) -> Result<Delivery, DeliveryError> {
    let event = serde_json::from_str::<EventBridgeEvent<Value>>(event).map_err(|error| {
        DeliveryError::permanent(format!("queued event is not an EventBridge event: {error}"))
    })?;
    let event_id = event_id_of(&event.detail);
    // The local EventBridge's own part of the trace: beside the target's span (a consumer
    // continues the event's `traceparent` itself, as it does on AWS, where EventBridge adds no
    // span of its own).
    let span = tracing::info_span!("bus.deliver", target_name = %route.name, %event_id);
    let hop =
        Hop::start(span, event.detail["metadata"]["traceparent"].as_str()).with_event_id(&event_id);
    let delivery = hop.in_scope(|| route.target.deliver(event))?;
    Ok(Box::pin(delivery.in_hop(hop)))
}

/// Where a delivery task is in its queue. Delivered entries are taken off the queue in a write
/// that commits while the next batch is delivered; until then `after` keeps them from being
/// read again.
#[derive(Default)]
struct QueuePosition {
    /// The last entry handled (delivered or set aside) by this task.
    after: i64,
    /// The write taking the last batch off the queue, if not yet awaited.
    dequeuing: Option<WriteInFlight>,
}

impl QueuePosition {
    /// Waits for the pending dequeue, if any.
    async fn dequeued(&mut self) -> Result<(), DbError> {
        match self.dequeuing.take() {
            Some(write) => write.await,
            None => Ok(()),
        }
    }
}

/// Counts `count` deliveries to `consumer` that ended in `outcome`.
fn counted(consumer: &str, outcome: &'static str, count: usize) {
    if count > 0 {
        metrics::counter!(
            crate::metrics::DELIVERIES,
            "consumer" => consumer.to_owned(),
            "outcome" => outcome
        )
        .increment(count as u64);
    }
}

fn event_id_of(detail: &Value) -> String {
    detail["metadata"]["eventId"]
        .as_str()
        .unwrap_or("-")
        .to_owned()
}
