//! The notifier's fan-out: one bus event to every subscription that can match it.
//!
//! [`Notifier::notify`] (the bus rule's invocation) reads the subscriptions stored under the
//! event's detail type, one page of each index partition at once, and runs each distinct
//! request (document, variables, operation) once. A fan-out that fits one batch, on those
//! pages, it posts itself; anything more it leaves to other invocations through the fan-out
//! queue ([`DeliveryQueue`]), whose messages invoke the notifier again ([`Notifier::deliver`]):
//! batches of deliveries to post, and, for a partition with more pages, a [`ReadOn`] that reads
//! its next page the same way. So no invocation reads more than a page of each partition or
//! posts more than its batches, and neither the time nor the memory of one grows with the
//! number of subscribers. Every invocation posts at most [`FanoutOptions::concurrency`] at
//! once.
//!
//! Nothing is lost on the way: a post that fails (but for a gone connection, which is removed)
//! is queued again, with backoff; a message that cannot be handled (the index cannot be read,
//! a batch cannot be queued again, or it keeps failing) is reported to the queue's event
//! source mapping as a batch item failure, so SQS delivers it again and, after the queue's
//! `maxReceiveCount`, moves it to the queue's dead-letter queue
//! (<https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-errorhandling.html>). Delivery is
//! at least once: a retried invocation or message, delivered again whole, posts some results
//! twice, which clients drop by the `eventId` they carry.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use aws_lambda_events::eventbridge::EventBridgeEvent;
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use futures_util::{StreamExt, TryStreamExt, stream};
use serde_json::{Value, json};
use telemetry::InHop as _;

use super::{
    CarriedResults, ConnectionSender, ConnectionStore, Delivery, DeliveryBatch, DeliveryQueue,
    FanoutMessage, GatewayError, Pump, ReadOn, StoredSubscription, SubscriptionKey, run_against,
};
use crate::ApiSchema;
use crate::events::BookEvent;

/// The largest batch body queued: SQS takes messages up to 256 KiB
/// (<https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/quotas-messages.html>);
/// the margin covers what the estimate leaves out.
const MAX_BATCH_BYTES: usize = 192 * 1024;
/// How often a delivery is tried, by this code, before its batch is left to SQS's redelivery
/// and dead-letter queue.
const MAX_ATTEMPTS: u32 = 4;
/// Messages queued at once by one invocation.
const QUEUEING_CONCURRENCY: usize = 8;
/// The most result bytes a [`ReadOn`] carries to the next invocation (the rest it runs again):
/// far under SQS's 256 KiB with the event beside them.
const MAX_CARRIED_BYTES: usize = 64 * 1024;

/// How the fan-out is split and how fast it posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanoutOptions {
    /// Posts in flight at once in one invocation (`NOTIFIER_CONCURRENCY`).
    pub concurrency: usize,
    /// Deliveries per queued batch (`FANOUT_BATCH_SIZE`); a fan-out of at most this many is
    /// posted by the invocation that reads it.
    pub batch_size: usize,
}

impl Default for FanoutOptions {
    /// 64 posts at once: at a PostToConnection's usual tens of milliseconds, one invocation
    /// posts a few thousand a second, and the fan-out queue's mapping runs at most a few such
    /// invocations (template.yaml), below API Gateway's account-wide 10,000 requests a second
    /// that callback (Management API) calls share with every API of the account
    /// (<https://docs.aws.amazon.com/apigateway/latest/developerguide/limits.html>). 250
    /// deliveries a batch keep a batch's body far under SQS's 256 KiB.
    fn default() -> Self {
        Self {
            concurrency: 64,
            batch_size: 250,
        }
    }
}

/// What one invocation did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Notified {
    /// `next` messages posted.
    pub sent: usize,
    /// Connections found gone and removed.
    pub gone: usize,
    /// Deliveries whose post failed otherwise (logged, and queued again or left to SQS).
    pub failed: usize,
    /// Distinct requests executed.
    pub executed: usize,
    /// Batches queued for other invocations.
    pub queued: usize,
    /// Reads of the index left to other invocations ([`ReadOn`]s queued).
    pub read_on: usize,
}

/// The notifier and what it reaches: the schema that runs subscriptions, the connections
/// table, the Management API and the fan-out queue.
#[derive(Clone, Copy)]
pub struct Notifier<'a> {
    /// The subscription schema.
    pub schema: &'a ApiSchema,
    /// The stored subscriptions.
    pub connections: &'a dyn ConnectionStore,
    /// Posts to connections.
    pub api: &'a dyn ConnectionSender,
    /// Where batches for other invocations go.
    pub queue: &'a dyn DeliveryQueue,
    /// How the fan-out is split.
    pub options: FanoutOptions,
    /// Delivery to subscriptions that resumed after a cursor, when there is a journal.
    pub pump: Option<Pump<'a>>,
}

impl std::fmt::Debug for Notifier<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The results of each distinct request, each run once against the event.
#[derive(Default)]
struct Results {
    index: HashMap<(String, String, Option<String>), usize>,
    payloads: Vec<Vec<Value>>,
    /// How many of them were run here (the others came with a [`ReadOn`]).
    executed: usize,
}

impl Results {
    /// The results an earlier invocation carried.
    fn carried(carried: Vec<CarriedResults>) -> Self {
        let mut results = Self::default();
        for c in carried {
            results.payloads.push(c.payloads);
            let index = results.payloads.len() - 1;
            results
                .index
                .insert((c.query, c.variables, c.operation_name), index);
        }
        results
    }

    /// The results to carry to the next invocation, up to [`MAX_CARRIED_BYTES`].
    fn to_carry(&self) -> Vec<CarriedResults> {
        let mut bytes = 0;
        let mut carried = Vec::new();
        for ((query, variables, operation_name), &index) in &self.index {
            let payloads = &self.payloads[index];
            bytes += query.len()
                + variables.len()
                + payloads.iter().map(|p| p.to_string().len()).sum::<usize>();
            if bytes > MAX_CARRIED_BYTES {
                break;
            }
            carried.push(CarriedResults {
                query: query.clone(),
                variables: variables.clone(),
                operation_name: operation_name.clone(),
                payloads: payloads.clone(),
            });
        }
        carried
    }

    /// The index of `subscription`'s results, running its request the first time it is seen.
    /// Requests are told apart by their whole text, so no two ever share results by a hash
    /// collision.
    async fn of(
        &mut self,
        schema: &ApiSchema,
        subscription: &StoredSubscription,
        event: &BookEvent,
    ) -> usize {
        let key = (
            subscription.query.clone(),
            subscription.variables.to_string(),
            subscription.operation_name.clone(),
        );
        if let Some(&index) = self.index.get(&key) {
            return index;
        }
        let payloads = run_against(schema, subscription.request(), vec![event.clone()])
            .await
            .into_iter()
            .map(|response| serde_json::to_value(response).unwrap_or_default())
            .collect();
        self.payloads.push(payloads);
        self.executed += 1;
        let index = self.payloads.len() - 1;
        self.index.insert(key, index);
        index
    }
}

/// What one invocation made of its pages of the index.
#[derive(Default)]
struct Read {
    /// The one batch there was, when it may be posted here: nothing was queued.
    alone: Option<DeliveryBatch>,
    /// Requests run.
    executed: usize,
    /// Batches queued.
    queued: usize,
    /// Reads on queued.
    read_on: usize,
}

impl From<Read> for Notified {
    /// The counts of a read (what it left to post is the caller's).
    fn from(read: Read) -> Self {
        Self {
            executed: read.executed,
            queued: read.queued,
            read_on: read.read_on,
            ..Self::default()
        }
    }
}

/// Deliveries gathered for the next batch, and about how large its body will be.
struct Pending {
    deliveries: Vec<Delivery>,
    results: HashSet<usize>,
    bytes: usize,
}

impl Pending {
    fn new() -> Self {
        Self {
            deliveries: Vec::new(),
            results: HashSet::new(),
            bytes: 0,
        }
    }

    fn push(&mut self, delivery: Delivery, results: &Results) {
        if self.results.insert(delivery.results) {
            self.bytes += results.payloads[delivery.results]
                .iter()
                .map(|p| p.to_string().len())
                .sum::<usize>();
        }
        self.bytes += delivery.connection_id.len() + delivery.id.len() + 48;
        self.deliveries.push(delivery);
    }

    fn full(&self, options: &FanoutOptions) -> bool {
        self.deliveries.len() >= options.batch_size.max(1) || self.bytes >= MAX_BATCH_BYTES
    }

    /// The batch of what is pending, with only the results its deliveries use.
    fn take(&mut self, event_id: &str, results: &Results) -> DeliveryBatch {
        let mut batch = DeliveryBatch {
            event_id: event_id.to_owned(),
            ..DeliveryBatch::default()
        };
        let mut renumbered = HashMap::new();
        for mut delivery in std::mem::take(&mut self.deliveries) {
            delivery.results = *renumbered.entry(delivery.results).or_insert_with(|| {
                batch
                    .results
                    .push(results.payloads[delivery.results].clone());
                batch.results.len() - 1
            });
            batch.deliveries.push(delivery);
        }
        self.results.clear();
        self.bytes = 0;
        batch
    }
}

/// What posting did to one delivery.
enum Posted {
    Sent(usize),
    Gone,
    Failed,
}

impl Notifier<'_> {
    /// Runs every subscription that can match one bus event and posts the results, or queues
    /// them for other invocations when there are more than one batch (and the partitions of
    /// the index with more pages than one, for other invocations to read on). Fails (for the
    /// rule's asynchronous invocation to retry) only when the index cannot be read or a message
    /// cannot be queued.
    ///
    /// It runs in a `subscription.fanout` span that continues the event's trace.
    pub async fn notify(&self, event: EventBridgeEvent<Value>) -> Result<Notified, GatewayError> {
        let raw = serde_json::to_value(&event)
            .map_err(|e| GatewayError::MalformedEvent(e.to_string()))?;
        let book_event = BookEvent::from_eventbridge(event)
            .map_err(|e| GatewayError::MalformedEvent(e.to_string()))?;
        let hop = crate::spans::subscription_fanout(&book_event);
        self.notify_event(raw, book_event).in_hop(hop).await
    }

    /// [`notify`](Self::notify), once the event is read.
    async fn notify_event(
        &self,
        raw: Value,
        book_event: BookEvent,
    ) -> Result<Notified, GatewayError> {
        let event_id = book_event.event_id.clone();
        let starts = (0..self.connections.shards()).map(|shard| (shard, None));
        let mut read = self
            .read(
                &raw,
                &book_event,
                starts.collect(),
                Results::default(),
                true,
            )
            .await?;
        let alone = read.alone.take();
        let mut notified = Notified::from(read);
        if let Some(batch) = alone {
            let (posted, failed) = self.post(std::slice::from_ref(&batch)).await;
            (notified.sent, notified.gone, notified.failed) =
                (posted.sent, posted.gone, posted.failed);
            if let Some(retry) = failed.into_iter().next().and_then(|f| batch.retry(f)) {
                let delay = retry.backoff_secs();
                self.queue
                    .enqueue(&FanoutMessage::Batch(retry), delay)
                    .await?;
                notified.queued += 1;
            }
        }
        if notified.sent > 0 {
            crate::metrics::posted(&book_event);
        }
        if let Some(pump) = &self.pump {
            // The event is in the journal: every subscription that resumed is delivered to
            // through it (and whatever came before that it was not yet given).
            notified.sent += pump.pump_all(self.options.concurrency).await?;
        }
        tracing::info!(%event_id, sent = notified.sent, gone = notified.gone, failed = notified.failed,
            executed = notified.executed, queued = notified.queued, read_on = notified.read_on,
            "subscribers notified");
        Ok(notified)
    }

    /// Reads one page of each partition in `starts` (at once, each handled as it arrives) and
    /// runs what it has no `results` of. Each batch of deliveries is queued as soon as it is
    /// full, while the reading goes on, [`QUEUEING_CONCURRENCY`] at once; each partition with
    /// more pages gets a [`ReadOn`] once all the pages are handled, with the results of them
    /// all. The last batch, when `may_post` and nothing else was queued, is left for the caller
    /// to post.
    async fn read(
        &self,
        raw: &Value,
        event: &BookEvent,
        starts: Vec<(u32, Option<String>)>,
        mut results: Results,
        may_post: bool,
    ) -> Result<Read, GatewayError> {
        let (sender, receiver) = tokio::sync::mpsc::channel::<FanoutMessage>(QUEUEING_CONCURRENCY);
        let queueing = stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|message| (message, receiver))
        })
        .map(|message| async move { self.queue.enqueue(&message, 0).await })
        .buffer_unordered(QUEUEING_CONCURRENCY)
        .try_collect::<()>();
        // Owns the sender: the queueing ends when the reading does.
        let reading = async move {
            let queue = |message: FanoutMessage| {
                let sender = &sender;
                async move {
                    sender
                        .send(message)
                        .await
                        .map_err(|_| GatewayError::Queue("the queueing stopped".into()))
                }
            };
            let detail_type = event.detail_type;
            let reads = starts.len().max(1);
            let mut pages = stream::iter(starts)
                .map(|(shard, after)| async move {
                    let page = self
                        .connections
                        .subscribed_page(detail_type, shard, after.as_deref())
                        .await?;
                    Ok::<_, GatewayError>((shard, page))
                })
                .buffer_unordered(reads);
            let mut read = Read::default();
            let mut pending = Pending::new();
            let mut more = Vec::new();
            while let Some((shard, page)) = pages.try_next().await? {
                for subscription in page.subscriptions {
                    let index = results.of(self.schema, &subscription, event).await;
                    if results.payloads[index].is_empty() {
                        continue; // its filters keep nothing of this event
                    }
                    // A full batch is queued once there is more than it.
                    if pending.full(&self.options) {
                        queue(FanoutMessage::Batch(
                            pending.take(&event.event_id, &results),
                        ))
                        .await?;
                        read.queued += 1;
                    }
                    let delivery = Delivery {
                        connection_id: subscription.connection_id,
                        id: subscription.id,
                        results: index,
                    };
                    pending.push(delivery, &results);
                }
                more.extend(page.next.map(|after| (shard, after)));
            }
            // After every page, so each read on carries the results of all of them.
            let carried = if more.is_empty() {
                Vec::new()
            } else {
                results.to_carry()
            };
            for (shard, after) in more {
                let read_on = ReadOn {
                    event: raw.clone(),
                    shard,
                    after,
                    results: carried.clone(),
                };
                queue(FanoutMessage::ReadOn(read_on)).await?;
                read.read_on += 1;
            }
            let last = pending.take(&event.event_id, &results);
            if !last.deliveries.is_empty() {
                if may_post && read.queued == 0 && read.read_on == 0 {
                    read.alone = Some(last);
                } else {
                    queue(FanoutMessage::Batch(last)).await?;
                    read.queued += 1;
                }
            }
            read.executed = results.executed;
            Ok::<_, GatewayError>(read)
        };
        let (read, ()) = futures_util::try_join!(reading, queueing)?;
        Ok(read)
    }

    /// Pumps the subscriptions the messages name, at most [`FanoutOptions::concurrency`] at
    /// once: what each sent, or the id of its message when it failed.
    async fn pump_each(&self, pumps: Vec<(SubscriptionKey, String)>) -> Vec<Result<usize, String>> {
        stream::iter(pumps)
            .map(|(key, message_id)| async move {
                let Some(pump) = &self.pump else {
                    tracing::error!(%message_id, "a pump message, but the notifier has no journal");
                    return Err(message_id);
                };
                match pump.pump(&key).await {
                    Ok(pumped) => Ok(pumped.sent),
                    Err(error) => {
                        tracing::warn!(%message_id, connection_id = %key.connection_id, id = %key.id, %error, "could not pump");
                        Err(message_id)
                    }
                }
            })
            .buffer_unordered(self.options.concurrency.max(1))
            .collect()
            .await
    }

    /// Goes on with one read of the index an invocation left: its next page, run and queued
    /// as [`notify`](Self::notify) does with the first pages (but never posted here).
    async fn read_on(&self, read_on: ReadOn) -> Result<Notified, GatewayError> {
        let event = serde_json::from_value::<EventBridgeEvent<Value>>(read_on.event.clone())
            .map_err(|e| GatewayError::MalformedEvent(e.to_string()))?;
        let book_event = BookEvent::from_eventbridge(event)
            .map_err(|e| GatewayError::MalformedEvent(e.to_string()))?;
        let starts = vec![(read_on.shard, Some(read_on.after))];
        let results = Results::carried(read_on.results);
        let read = self
            .read(&read_on.event, &book_event, starts, results, false)
            .await?;
        Ok(Notified::from(read))
    }

    /// Handles one invocation by the fan-out queue: reads on where its [`ReadOn`]s say, and
    /// posts its batches. A batch whose posts failed is queued again with only those, after a
    /// backoff; a message that cannot be handled (the index cannot be read, queueing failed,
    /// a batch was tried four times, or it is not a fan-out message) is a batch item failure,
    /// for SQS to deliver again and in the end to dead-letter.
    pub async fn deliver(&self, event: SqsEvent) -> SqsBatchResponse {
        self.deliver_counted(event).await.0
    }

    /// [`deliver`](Self::deliver), and what it did.
    pub async fn deliver_counted(&self, event: SqsEvent) -> (SqsBatchResponse, Notified) {
        let mut batches = Vec::new();
        let mut ids = Vec::new();
        let mut reads_on = Vec::new();
        let mut pumps = Vec::new();
        let mut failures = Vec::new();
        for record in event.records {
            let Some(message_id) = record.message_id else {
                tracing::error!("a fan-out message without a message id");
                continue;
            };
            match serde_json::from_str::<FanoutMessage>(record.body.as_deref().unwrap_or("")) {
                Ok(FanoutMessage::Batch(batch)) => {
                    batches.push(batch);
                    ids.push(message_id);
                }
                Ok(FanoutMessage::ReadOn(read_on)) => reads_on.push((read_on, message_id)),
                Ok(FanoutMessage::Pump(message)) => pumps.push((message.pump, message_id)),
                Err(error) => {
                    // Left in the queue: after maxReceiveCount it is in the DLQ, whole.
                    tracing::error!(code = "MALFORMED_BATCH", %message_id, %error, "not a fan-out message");
                    failures.push(message_id);
                }
            }
        }
        let reads = reads_on.len().max(1);
        let reading = stream::iter(reads_on)
            .map(|(read_on, message_id)| async move {
                let shard = read_on.shard;
                let read = self.read_on(read_on).await;
                if let Err(error) = &read {
                    tracing::warn!(%message_id, shard, %error, "could not read on");
                }
                (read, message_id)
            })
            .buffer_unordered(reads)
            .collect::<Vec<_>>();
        let ((posted, failed), read_results, pumped) =
            futures_util::join!(self.post(&batches), reading, self.pump_each(pumps));
        let mut notified = posted;
        for result in pumped {
            match result {
                Ok(sent) => notified.sent += sent,
                Err(message_id) => failures.push(message_id),
            }
        }
        for (read, message_id) in read_results {
            match read {
                Ok(read) => {
                    notified.executed += read.executed;
                    notified.queued += read.queued;
                    notified.read_on += read.read_on;
                }
                Err(_) => failures.push(message_id),
            }
        }
        let mut requeued = 0;
        for ((batch, message_id), failed) in batches.iter().zip(ids).zip(failed) {
            let Some(retry) = batch.retry(failed) else {
                continue;
            };
            let delay = retry.backoff_secs();
            if retry.attempt < MAX_ATTEMPTS
                && self
                    .queue
                    .enqueue(&FanoutMessage::Batch(retry), delay)
                    .await
                    .inspect_err(
                        |error| tracing::warn!(%message_id, %error, "could not queue a retry"),
                    )
                    .is_ok()
            {
                requeued += 1;
                continue;
            }
            failures.push(message_id);
        }
        notified.queued += requeued;
        tracing::info!(
            sent = notified.sent,
            gone = notified.gone,
            failed = notified.failed,
            executed = notified.executed,
            queued = notified.queued,
            read_on = notified.read_on,
            batch_item_failures = failures.len(),
            "fan-out messages handled"
        );
        let mut response = SqsBatchResponse::default();
        response.batch_item_failures = failures
            .into_iter()
            .map(|item_identifier| {
                let mut failure = BatchItemFailure::default();
                failure.item_identifier = item_identifier;
                failure
            })
            .collect();
        (response, notified)
    }

    /// Posts every delivery of `batches`, [`FanoutOptions::concurrency`] at a time, then
    /// removes the connections found gone. Returns the counts and, per batch, the deliveries
    /// that failed otherwise.
    async fn post(&self, batches: &[DeliveryBatch]) -> (Notified, Vec<Vec<Delivery>>) {
        let gone = Mutex::new(HashSet::<String>::new());
        let gone_ref = &gone;
        let outcomes: Vec<(usize, &Delivery, Posted)> = stream::iter(
            batches
                .iter()
                .enumerate()
                .flat_map(|(b, batch)| batch.deliveries.iter().map(move |d| (b, batch, d))),
        )
        .map(|(b, batch, delivery)| async move {
            (b, delivery, self.post_one(batch, delivery, gone_ref).await)
        })
        .buffer_unordered(self.options.concurrency.max(1))
        .collect()
        .await;

        let mut notified = Notified::default();
        let mut failed = vec![Vec::new(); batches.len()];
        for (b, delivery, posted) in outcomes {
            match posted {
                Posted::Sent(n) => notified.sent += n,
                Posted::Gone => {}
                Posted::Failed => {
                    notified.failed += 1;
                    failed[b].push(delivery.clone());
                }
            }
        }
        let gone = gone.into_inner().unwrap_or_else(|e| e.into_inner());
        for connection_id in &gone {
            if let Err(error) = self.connections.close(connection_id).await {
                // Its rows expire by TTL, and the next event finds it gone again.
                tracing::warn!(%connection_id, %error, "could not remove a gone connection");
            }
        }
        notified.gone = gone.len();
        (notified, failed)
    }

    async fn post_one(
        &self,
        batch: &DeliveryBatch,
        delivery: &Delivery,
        gone: &Mutex<HashSet<String>>,
    ) -> Posted {
        let is_gone = |gone: &Mutex<HashSet<String>>| {
            gone.lock()
                .map(|g| g.contains(&delivery.connection_id))
                .unwrap_or(false)
        };
        if is_gone(gone) {
            return Posted::Gone;
        }
        let Some(payloads) = batch.results.get(delivery.results) else {
            tracing::error!(code = "MALFORMED_BATCH", event_id = %batch.event_id, "a delivery names no results");
            return Posted::Sent(0);
        };
        let mut sent = 0;
        for payload in payloads {
            let message = json!({"type": "next", "id": delivery.id, "payload": payload});
            match self.api.send(&delivery.connection_id, &message).await {
                Ok(()) => sent += 1,
                Err(GatewayError::Gone) => {
                    if let Ok(mut gone) = gone.lock() {
                        gone.insert(delivery.connection_id.clone());
                    }
                    return Posted::Gone;
                }
                Err(error) => {
                    tracing::warn!(event_id = %batch.event_id, connection_id = %delivery.connection_id,
                        %error, "could not notify a subscriber");
                    return Posted::Failed;
                }
            }
        }
        Posted::Sent(sent)
    }
}

impl DeliveryBatch {
    /// The batch that tries `failed` again, one attempt later; `None` when nothing failed.
    fn retry(&self, failed: Vec<Delivery>) -> Option<DeliveryBatch> {
        if failed.is_empty() {
            return None;
        }
        Some(DeliveryBatch {
            event_id: self.event_id.clone(),
            attempt: self.attempt + 1,
            results: self.results.clone(),
            deliveries: failed,
        })
    }

    /// How long a retry waits: 2, 4, 8 … seconds.
    fn backoff_secs(&self) -> u32 {
        1 << self.attempt.min(9)
    }
}
