//! Delivery to subscriptions that resumed after a cursor: from the journal, in its order, with
//! nothing missed and nothing twice at the switch from replay to live.
//!
//! On AWS the notifier is invoked for each event on its own, in no order, and finds live
//! subscriptions through an eventually consistent index; neither can resume a subscription
//! without a gap. So a subscription that resumed is not in that index at all. It is stored with
//! `deliveredThrough`, the position of the last event it was given, and a *pump* delivers to it:
//! it takes the subscription's lease (a conditional write: one pump at a time), reads the
//! journal from `deliveredThrough` up to the head, runs the subscription against each event and
//! posts the results in order, moving `deliveredThrough` on as it goes. There is no switch:
//! replaying and going on live are the same read of the journal.
//!
//! Every event triggers a pump of every subscription that resumed (the notifier's invocation by
//! the bus rule, [`Pump::pump_all`]), and so does a subscribe (a [`PumpMessage`] on the fan-out
//! queue). A pump that finds the lease taken returns at once: the holder, after it lets the
//! lease go, reads the head again and goes on when it moved, so an event journaled while it
//! held the lease is delivered by it. A pump out of time queues a [`PumpMessage`] to go on.
//! A crash leaves the lease to expire ([`LEASE`]); the next event or message picks it up, and
//! at most the events posted since the last `deliveredThrough` go out again.

use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt, stream};
use serde_json::{Value, json};
use telemetry::InHop as _;

use super::{
    ConnectionSender, ConnectionStore, DeliveryQueue, FanoutMessage, GatewayError, Journal,
    OrderedSubscriptions, PumpMessage, StoredSubscription, SubscriptionKey,
};
use crate::events::{EventHub, LogError};
use crate::{ApiError, ApiSchema};

/// How long a lease holds: beyond the notifier's timeout (template.yaml), so a pump that is
/// still running never loses it, and a crashed one's lease is free again a minute later.
pub const LEASE: Duration = Duration::from_secs(60);
/// Journal entries read at once.
const PAGE: usize = 100;

/// What pumps need: the journal, where the subscriptions are kept, and where to post.
#[derive(Clone, Copy)]
pub struct Pump<'a> {
    /// The subscription schema.
    pub schema: &'a ApiSchema,
    /// The journal of published events.
    pub journal: &'a dyn Journal,
    /// The subscriptions that resumed.
    pub ordered: &'a dyn OrderedSubscriptions,
    /// The connections (a gone one is closed).
    pub connections: &'a dyn ConnectionStore,
    /// Posts to connections.
    pub api: &'a dyn ConnectionSender,
    /// Where a pump out of time leaves the rest.
    pub queue: &'a dyn DeliveryQueue,
    /// How long one pump goes on before it leaves the rest to a queued message.
    pub budget: Duration,
}

impl std::fmt::Debug for Pump<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pump")
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// What one pump did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pumped {
    /// `next` messages posted.
    pub sent: usize,
    /// Whether another pump held the lease (and so delivers what this one would have).
    pub busy: bool,
    /// Whether it ran out of time and queued the rest.
    pub queued: bool,
}

enum Stop {
    /// Delivered through the head.
    CaughtUp,
    /// Out of time.
    OutOfTime,
    /// The subscription or its connection is gone, or another took the lease.
    Over,
}

impl Pump<'_> {
    /// Pumps every subscription that resumed, `concurrency` at once, each within the budget.
    /// One whose pump fails (the journal or the table did not answer) is left to a queued
    /// message, retried by SQS and in the end dead-lettered with the rest of the fan-out, so
    /// that it does not wait for the next event; only a failure to queue it fails the call.
    pub async fn pump_all(&self, concurrency: usize) -> Result<usize, GatewayError> {
        let mut keys = Vec::new();
        for shard in 0..self.ordered.ordered_shards() {
            let mut after = None;
            loop {
                let page = self.ordered.ordered_page(shard, after.as_deref()).await?;
                keys.extend(page.subscriptions);
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
        }
        let sent = stream::iter(keys)
            .map(|key| async move {
                match self.pump(&key).await {
                    Ok(pumped) => Ok(pumped.sent),
                    Err(error) => {
                        tracing::warn!(connection_id = %key.connection_id, id = %key.id, %error,
                            "could not pump; queued to try again");
                        let message = FanoutMessage::Pump(PumpMessage { pump: key });
                        self.queue.enqueue(&message, 1).await.map(|()| 0)
                    }
                }
            })
            .buffer_unordered(concurrency.max(1))
            .try_fold(0, |total, sent| async move { Ok(total + sent) })
            .await?;
        Ok(sent)
    }

    /// Delivers the journal to one subscription, from where it is through the head.
    pub async fn pump(&self, key: &SubscriptionKey) -> Result<Pumped, GatewayError> {
        let deadline = Instant::now() + self.budget;
        let mut pumped = Pumped::default();
        loop {
            let token = uuid::Uuid::new_v4().to_string();
            let now = crate::limits::connection::now_ms();
            let until = now + i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX);
            let Some(held) = self.ordered.lease(key, &token, now, until).await? else {
                pumped.busy = true;
                return Ok(pumped);
            };
            let mut through = held.delivered_through;
            let delivered = self
                .deliver(
                    key,
                    &held.subscription,
                    &token,
                    &mut through,
                    deadline,
                    &mut pumped,
                )
                .await;
            // Let go whatever happened, so that the next pump need not wait for the lease.
            let released = self.ordered.release(key, &token).await;
            match delivered? {
                Stop::Over => return Ok(pumped),
                Stop::OutOfTime => {
                    released?;
                    let message = FanoutMessage::Pump(PumpMessage { pump: key.clone() });
                    self.queue.enqueue(&message, 0).await?;
                    pumped.queued = true;
                    return Ok(pumped);
                }
                Stop::CaughtUp => released?,
            }
            // A pump that found the lease taken meanwhile left its event to this one.
            if self.head().await? <= through {
                return Ok(pumped);
            }
        }
    }

    async fn head(&self) -> Result<i64, GatewayError> {
        self.journal
            .head()
            .await
            .map_err(|e| GatewayError::Journal(e.to_string()))
    }

    /// Delivers pages of the journal after `through` while the lease holds and time is left.
    async fn deliver(
        &self,
        key: &SubscriptionKey,
        subscription: &StoredSubscription,
        token: &str,
        through: &mut i64,
        deadline: Instant,
        pumped: &mut Pumped,
    ) -> Result<Stop, GatewayError> {
        loop {
            let head = self.head().await?;
            if *through >= head {
                return Ok(Stop::CaughtUp);
            }
            if Instant::now() >= deadline {
                return Ok(Stop::OutOfTime);
            }
            let page = match self.journal.read(*through, head, PAGE).await {
                Ok(page) => page,
                Err(error @ LogError::Expired { .. }) => {
                    // The events it would resume with are gone: tell it, as a subscribe would
                    // have been told, and end the subscription.
                    let error = ApiError::from(error).server_error();
                    let payload = json!([serde_json::to_value(error).unwrap_or_default()]);
                    self.post(
                        key,
                        &json!({"type": "error", "id": key.id, "payload": payload}),
                    )
                    .await?;
                    self.connections.remove(&key.connection_id, &key.id).await?;
                    return Ok(Stop::Over);
                }
                Err(error) => return Err(GatewayError::Journal(error.to_string())),
            };
            for event in page.events {
                let position = event.position();
                // The hand-over continues the event's trace, as the live fan-out's does.
                let hop = crate::spans::subscription_deliver(&event);
                let hub = EventHub::resumed(vec![event]);
                let responses: Vec<_> = self
                    .schema
                    .execute_stream(subscription.request().data(hub))
                    .collect()
                    .in_hop(hop.clone())
                    .await;
                for response in responses {
                    let payload = serde_json::to_value(response).unwrap_or_default();
                    let next = json!({"type": "next", "id": key.id, "payload": payload});
                    match self.post(key, &next).in_hop(hop.clone()).await {
                        Ok(()) => pumped.sent += 1,
                        Err(GatewayError::Gone) => {
                            self.connections.close(&key.connection_id).await?;
                            return Ok(Stop::Over);
                        }
                        Err(error) => return Err(error),
                    }
                    // Recorded after each post, so a crash posts at most this one again.
                    if let Some(position) = position
                        && !self.ordered.advance(key, token, position).await?
                    {
                        return Ok(Stop::Over);
                    }
                }
            }
            *through = (*through).max(page.through);
            if !self.ordered.advance(key, token, *through).await? {
                return Ok(Stop::Over);
            }
        }
    }

    async fn post(&self, key: &SubscriptionKey, message: &Value) -> Result<(), GatewayError> {
        self.api.send(&key.connection_id, message).await
    }
}
