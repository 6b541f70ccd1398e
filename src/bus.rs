//! The local event bus: what EventBridge, its rules and their targets do on AWS.
//!
//! [`LocalBus`] is an [`EventPublisher`]. Publishing routes each event by source and detail
//! type (as the template's rules do) and commits one queue entry per matching target, in one
//! durable transaction. A delivery task per target takes its queue in order and hands each
//! event to the target as the `EventBridgeEvent` JSON a Lambda receives; a failure is retried
//! with backoff, and an event that keeps failing (or can never succeed) is moved to the dead
//! letters so the queue goes on. An entry leaves the queue only after its target succeeded,
//! so delivery is at least once; targets dedupe on `metadata.eventId`.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use api::{BookEvent, EventHub};
use async_trait::async_trait;
use aws_lambda_events::eventbridge::EventBridgeEvent;
use consumers::{ActivityStore, Consumer};
use domain::event::{DetailType, Envelope};
use processor::{EventPublisher, OutboxEvent, PublishError};
use rusqlite::params;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::embedded::{Db, DbError, WriteInFlight};

/// How often an idle delivery task looks at its queue without being woken.
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// The most events a delivery task takes from its queue at once; the delivered ones leave the
/// queue in one write.
const DELIVERY_BATCH: i64 = 64;

/// Where a rule sends the events it matches: a consumer Lambda, locally.
#[async_trait]
pub trait Target: Send + Sync {
    /// Handles one event.
    async fn deliver(&self, event: EventBridgeEvent<Value>) -> Result<(), DeliveryError>;

    /// Whether the bus may overlap this target's deliveries: start each one as soon as the
    /// previous one has *started* rather than finished. Only for a target whose effects are
    /// put in order by its first step, such as a write to the embedded store (queued when
    /// called). Off by default: one delivery at a time.
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

#[async_trait]
impl Target for ConsumerTarget {
    async fn deliver(&self, event: EventBridgeEvent<Value>) -> Result<(), DeliveryError> {
        self.consumer
            .handle(event, self.store.as_ref())
            .await
            .map(drop)
            .map_err(|e| DeliveryError {
                retryable: e.is_retryable(),
                message: e.to_string(),
            })
    }

    /// A consumer's first step is its activity write, which the embedded store queues in call
    /// order; overlapping lets a batch's writes share commits while landing in event order.
    fn overlaps(&self) -> bool {
        true
    }
}

/// The GraphQL subscriptions as a bus target: every event of the processor goes to the
/// [`EventHub`], which hands it to the subscribers without waiting for any of them.
#[derive(Debug, Clone)]
pub struct SubscriptionTarget {
    hub: EventHub,
}

impl SubscriptionTarget {
    /// The route for subscriptions: every detail type of the processor's events, to `hub`.
    pub fn route(hub: EventHub) -> Route {
        Route {
            name: "subscriptions".to_owned(),
            source: domain::event::SOURCE.to_owned(),
            detail_types: DetailType::ALL
                .iter()
                .map(|t| t.as_str().to_owned())
                .collect(),
            target: Arc::new(Self { hub }),
        }
    }
}

#[async_trait]
impl Target for SubscriptionTarget {
    async fn deliver(&self, event: EventBridgeEvent<Value>) -> Result<(), DeliveryError> {
        let malformed = |message: String| DeliveryError {
            retryable: false,
            message,
        };
        let detail_type = DetailType::parse(&event.detail_type)
            .ok_or_else(|| malformed(format!("unknown detail type {:?}", event.detail_type)))?;
        let envelope = Envelope::from_detail(event.detail).map_err(|e| malformed(e.to_string()))?;
        self.hub.publish(BookEvent::new(detail_type, envelope));
        Ok(())
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

    fn matches(&self, source: &str, detail_type: &str) -> bool {
        self.source == source && self.detail_types.iter().any(|t| t == detail_type)
    }
}

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

/// The local event bus.
pub struct LocalBus {
    db: Arc<Db>,
    name: String,
    routes: Vec<Route>,
    wakers: HashMap<String, Arc<Notify>>,
    options: DeliveryOptions,
}

impl std::fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBus")
            .field("name", &self.name)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

/// One queued delivery.
struct Queued {
    id: i64,
    event: String,
    attempts: u32,
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
            .read(move |conn| {
                let mut statement = conn.prepare_cached(
                    "SELECT id, event, attempts FROM bus_queue WHERE target = ?1 AND id > ?2
                     ORDER BY id LIMIT ?3",
                )?;
                let rows = statement.query_map(params![target, after, DELIVERY_BATCH], |row| {
                    Ok(Queued {
                        id: row.get(0)?,
                        event: row.get(1)?,
                        attempts: row.get(2)?,
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await?;
        if heads.is_empty() {
            position.dequeued().await?;
            return Ok(None);
        }

        let (delivered, failed) = self.deliver_in_order(route, heads).await;
        // The previous batch's dequeue has had this batch's time to commit.
        position.dequeued().await?;
        let Some((head, error)) = failed else {
            if let Some(&last) = delivered.last() {
                position.after = last;
                position.dequeuing = Some(Box::pin(
                    self.db.write(move |conn| dequeue(conn, &delivered)),
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
            let reason = error.message;
            let event = head.event;
            self.db
                .write(move |conn| {
                    dequeue(conn, &delivered)?;
                    conn.execute(
                        "INSERT INTO bus_dead_letters (id, target, event, reason, attempts, failed_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![id, target, event, reason, attempts, chrono::Utc::now().to_rfc3339()],
                    )?;
                    dequeue(conn, &[id])
                })
                .await?;
            position.after = id;
            return Ok(Some(Duration::ZERO));
        }
        tracing::warn!(target_name = %route.name, %event_id, attempts, %error, "delivery failed; retrying");
        let message = error.message;
        self.db
            .write(move |conn| {
                dequeue(conn, &delivered)?;
                conn.execute(
                    "UPDATE bus_queue SET attempts = ?2, last_error = ?3 WHERE id = ?1",
                    params![id, attempts, message],
                )?;
                Ok(())
            })
            .await?;
        position.after = id - 1;
        let backoff = domain::Backoff {
            first: self.options.first_backoff,
            max: self.options.max_backoff,
        };
        Ok(Some(backoff.delay(attempts)))
    }

    /// Hands queued events to `route`'s target in order, overlapping them if the target
    /// allows. Returns the ids delivered before the first failure, and that failure.
    async fn deliver_in_order(
        &self,
        route: &Route,
        heads: Vec<Queued>,
    ) -> (Vec<i64>, Option<(Queued, DeliveryError)>) {
        let mut delivered = Vec::with_capacity(heads.len());
        if !route.target.overlaps() {
            for head in heads {
                match deliver_one(route, &head.event).await {
                    Ok(()) => delivered.push(head.id),
                    Err(error) => return (delivered, Some((head, error))),
                }
            }
            return (delivered, None);
        }
        // Start each delivery in turn (its first poll takes its first step), then let them
        // finish together. One that fails at once stops the batch there.
        let mut started = Vec::with_capacity(heads.len());
        for head in &heads {
            let mut delivery = Box::pin(deliver_one(route, &head.event));
            let first = std::future::poll_fn(|cx| Poll::Ready(delivery.as_mut().poll(cx))).await;
            let failed_at_once = matches!(first, Poll::Ready(Err(_)));
            started.push(async move {
                match first {
                    Poll::Ready(result) => result,
                    Poll::Pending => delivery.await,
                }
            });
            if failed_at_once {
                break;
            }
        }
        let results = futures_util::future::join_all(started).await;
        // A delivery that failed later (its write did not commit) may have been overtaken by
        // the ones after it; they stay queued too and are delivered again, which targets
        // dedupe.
        for (head, result) in heads.into_iter().zip(results) {
            match result {
                Ok(()) => delivered.push(head.id),
                Err(error) => return (delivered, Some((head, error))),
            }
        }
        (delivered, None)
    }
}

/// Hands one queued event (EventBridge's JSON) to `route`'s target.
async fn deliver_one(route: &Route, event: &str) -> Result<(), DeliveryError> {
    match serde_json::from_str::<EventBridgeEvent<Value>>(event) {
        Ok(event) => {
            let event_id = event_id_of(&event.detail);
            let span = tracing::info_span!("deliver", target_name = %route.name, %event_id);
            route.target.deliver(event).instrument(span).await
        }
        Err(error) => Err(DeliveryError {
            retryable: false,
            message: format!("queued event is not an EventBridge event: {error}"),
        }),
    }
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

/// Takes delivered entries off the queue.
fn dequeue(conn: &rusqlite::Connection, ids: &[i64]) -> Result<(), DbError> {
    let mut delete = conn.prepare_cached("DELETE FROM bus_queue WHERE id = ?1")?;
    for id in ids {
        delete.execute([id])?;
    }
    Ok(())
}

fn event_id_of(detail: &Value) -> String {
    detail["metadata"]["eventId"]
        .as_str()
        .unwrap_or("-")
        .to_owned()
}

#[async_trait]
impl EventPublisher for LocalBus {
    async fn publish(&self, events: &[OutboxEvent]) -> Result<(), PublishError> {
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
                let mut insert =
                    conn.prepare_cached("INSERT INTO bus_queue (target, event) VALUES (?1, ?2)")?;
                for (target, event) in &rows {
                    insert.execute(params![target, event])?;
                }
                Ok(())
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

/// An event that a target kept failing (or could never handle), set aside.
#[derive(Debug, Clone, PartialEq)]
pub struct BusDeadLetter {
    /// The route it was queued for.
    pub target: String,
    /// The event as it was to be delivered (EventBridge's JSON).
    pub event: Value,
    /// The target's last error.
    pub reason: String,
    /// How many times it was delivered.
    pub attempts: u32,
}

/// The bus's dead letters, oldest first.
pub async fn dead_letters(db: &Arc<Db>) -> Result<Vec<BusDeadLetter>, DbError> {
    db.read(|conn| {
        let mut statement = conn.prepare_cached(
            "SELECT target, event, reason, attempts FROM bus_dead_letters ORDER BY id",
        )?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get(0)?,
                row.get::<_, String>(1)?,
                row.get(2)?,
                row.get(3)?,
            ))
        })?;
        let mut letters = Vec::new();
        for row in rows {
            let (target, event, reason, attempts) = row?;
            letters.push(BusDeadLetter {
                target,
                event: serde_json::from_str(&event)?,
                reason,
                attempts,
            });
        }
        Ok(letters)
    })
    .await
}

/// How many deliveries are queued, over all targets.
pub async fn queued(db: &Arc<Db>) -> Result<u64, DbError> {
    db.read(|conn| Ok(conn.query_row("SELECT count(*) FROM bus_queue", [], |row| row.get(0))?))
        .await
}
