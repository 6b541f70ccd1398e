//! The ports the gateway reaches AWS through: [`ConnectionStore`] (what each connection has
//! subscribed to), [`ConnectionSender`] (posting to and closing connections) and
//! [`DeliveryQueue`] (the notifier's fan-out, split across invocations).

use async_trait::async_trait;
use domain::DetailType;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::GatewayError;
use crate::events::{EventLog, LogError, Position};
use crate::limits::connection::MessageRate;

/// A subscription as stored: which connection, which id, and the request to run.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSubscription {
    /// The API Gateway connection id.
    pub connection_id: String,
    /// The client's id for the subscription.
    pub id: String,
    /// The document.
    pub query: String,
    /// The variables, as JSON.
    pub variables: Value,
    /// The operation to run, when the document has several.
    pub operation_name: Option<String>,
}

impl StoredSubscription {
    pub(crate) fn request(&self) -> async_graphql::Request {
        let mut request = async_graphql::Request::new(&self.query)
            .variables(async_graphql::Variables::from_json(self.variables.clone()));
        if let Some(name) = &self.operation_name {
            request = request.operation_name(name);
        }
        request
    }
}

/// What the table knows of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionState {
    /// Whether it has sent its `connection_init`.
    pub initialized: bool,
    /// How many subscriptions it holds.
    pub subscriptions: usize,
}

/// What [`ConnectionStore::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// The subscription is stored.
    Stored,
    /// Nothing is stored: the connection already has a subscription with this id.
    Duplicate,
    /// Nothing is stored: the connection holds the most subscriptions allowed.
    TooMany,
}

/// What each connection is and has subscribed to: per connection whether it is initialised,
/// how fast it has been sending, and its subscriptions.
#[async_trait]
pub trait ConnectionStore: Send + Sync {
    /// Records a new connection, not yet initialised.
    async fn open(&self, connection_id: &str) -> Result<(), GatewayError>;
    /// Marks the connection initialised; false when it already was (a second
    /// `connection_init`, which the protocol forbids).
    async fn initialize(&self, connection_id: &str) -> Result<bool, GatewayError>;
    /// The connection's state; `None` for a connection that is not open.
    async fn connection(
        &self,
        connection_id: &str,
    ) -> Result<Option<ConnectionState>, GatewayError>;
    /// Takes one message's token from the connection's bucket at `now_ms`
    /// ([`crate::limits::connection::TokenBucket::take`]), atomically however many messages
    /// of the connection are handled at once; false, and nothing written, when the message is
    /// over the rate.
    async fn take_token(
        &self,
        connection_id: &str,
        rate: MessageRate,
        now_ms: i64,
    ) -> Result<bool, GatewayError>;
    /// Stores a subscription under each of the detail types it can match
    /// ([`detail_types`](super::detail_types)), unless the connection has one with its id or
    /// holds `max` already; the count and the subscription change together.
    async fn add(
        &self,
        subscription: &StoredSubscription,
        detail_types: &[DetailType],
        max: usize,
    ) -> Result<Added, GatewayError>;
    /// Removes one subscription (`complete`), freeing its place.
    async fn remove(&self, connection_id: &str, id: &str) -> Result<(), GatewayError>;
    /// Removes the connection and all its subscriptions.
    async fn close(&self, connection_id: &str) -> Result<(), GatewayError>;
    /// How many partitions the index spreads each detail type over; each is read on its own,
    /// page by page ([`subscribed_page`](Self::subscribed_page)).
    fn shards(&self) -> u32;
    /// One page of the subscriptions stored under `detail_type` in the index partition `shard`
    /// (below [`shards`](Self::shards)): its first page for `after: None`, else the page that
    /// follows the one whose [`IndexPage::next`] `after` is. Every subscription of the type is
    /// on exactly one page of one shard.
    async fn subscribed_page(
        &self,
        detail_type: DetailType,
        shard: u32,
        after: Option<&str>,
    ) -> Result<IndexPage, GatewayError>;
    /// Every subscription stored under `detail_type`, page by page, every shard at once: each
    /// once, none under another type, however many pages they take.
    fn subscribed_to(
        &self,
        detail_type: DetailType,
    ) -> BoxStream<'_, Result<Vec<StoredSubscription>, GatewayError>> {
        let shards = (0..self.shards()).map(|shard| {
            // The state: where the shard goes on; `None` once it is read, or failed.
            futures_util::stream::unfold(Some(None::<String>), move |after| async move {
                let after = after?;
                match self
                    .subscribed_page(detail_type, shard, after.as_deref())
                    .await
                {
                    Ok(page) => Some((Ok(page.subscriptions), page.next.map(Some))),
                    Err(error) => Some((Err(error), None)),
                }
            })
            .boxed()
        });
        futures_util::stream::select_all(shards).boxed()
    }
}

/// One page of an index partition: its subscriptions, and where the next page starts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexPage {
    /// The subscriptions on this page.
    pub subscriptions: Vec<StoredSubscription>,
    /// Where the partition goes on (opaque, for [`ConnectionStore::subscribed_page`]); `None`
    /// after its last page.
    pub next: Option<String>,
}

/// Posts protocol messages to connections and closes them.
#[async_trait]
pub trait ConnectionSender: Send + Sync {
    /// Sends one protocol message; [`GatewayError::Gone`] when the connection is gone.
    async fn send(&self, connection_id: &str, message: &Value) -> Result<(), GatewayError>;
    /// Closes a connection with a protocol close `code` and `reason`; a connection that is
    /// already gone is closed.
    async fn close(&self, connection_id: &str, code: u16, reason: &str)
    -> Result<(), GatewayError>;
}

/// Posts for one event that one invocation hands to another through the [`DeliveryQueue`]:
/// the results of the event's distinct requests, and who gets which.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryBatch {
    /// The event's `metadata.eventId`, for the logs.
    pub event_id: String,
    /// How many times these deliveries were tried already.
    #[serde(default)]
    pub attempt: u32,
    /// Per distinct request, the `payload`s of the `next` messages it yields, in order.
    pub results: Vec<Vec<Value>>,
    /// Who gets which results.
    pub deliveries: Vec<Delivery>,
}

/// One subscription's share of a [`DeliveryBatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// The API Gateway connection id.
    pub connection_id: String,
    /// The subscription's id.
    pub id: String,
    /// Its results: an index into [`DeliveryBatch::results`].
    pub results: usize,
}

/// The rest of one index partition's read for one event, which an invocation leaves to the
/// next ([`Notifier::deliver`](super::Notifier::deliver)), so that no invocation reads more
/// than a page of each partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadOn {
    /// The bus event, as the rule delivered it.
    pub event: Value,
    /// The index partition.
    pub shard: u32,
    /// Where it goes on: an [`IndexPage::next`].
    pub after: String,
    /// The results of requests already run against the event, for the next invocation not to
    /// run them again.
    #[serde(default)]
    pub results: Vec<CarriedResults>,
}

/// The results of one distinct request (document, variables, operation) against an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CarriedResults {
    /// The document.
    pub query: String,
    /// The variables, as JSON text.
    pub variables: String,
    /// The operation, when named.
    #[serde(default)]
    pub operation_name: Option<String>,
    /// The `payload`s of the `next` messages it yields, in order.
    pub payloads: Vec<Value>,
}

/// One message of the fan-out queue: posts to make, a read of the index to go on with, or a
/// subscription that resumed to deliver the journal to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FanoutMessage {
    /// Go on reading the index.
    ReadOn(ReadOn),
    /// Post these deliveries.
    Batch(DeliveryBatch),
    /// Deliver the journal to a subscription that resumed, from where it is.
    Pump(PumpMessage),
}

/// A subscription that resumed, for the notifier to deliver the journal to
/// ([`Pump`](super::Pump)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PumpMessage {
    /// Which subscription.
    pub pump: SubscriptionKey,
}

/// A subscription's key: its connection and its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionKey {
    /// The API Gateway connection id.
    pub connection_id: String,
    /// The client's id for the subscription.
    pub id: String,
}

/// The journal of every published event, in one total order (on AWS, the journal table the
/// processor writes): what a subscription that resumed is delivered from.
#[async_trait]
pub trait Journal: EventLog {
    /// The last position given out: every entry up to it is in the journal.
    async fn head(&self) -> Result<Position, LogError>;
}

/// A subscription that resumed after a cursor, as stored: delivered from the journal, in its
/// order, by one pump at a time, which holds its lease.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderedSubscription {
    /// The subscription.
    pub subscription: StoredSubscription,
    /// The position of the last event it has been delivered (or skipped, when its filters
    /// keep nothing of it).
    pub delivered_through: Position,
}

/// One page of the subscriptions that resumed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrderedPage {
    /// Their keys.
    pub subscriptions: Vec<SubscriptionKey>,
    /// Where the partition goes on; `None` after its last page.
    pub next: Option<String>,
}

/// Where subscriptions that resumed are kept, with how far each has been delivered and who is
/// delivering to it. Read consistently: a subscription stored is found by the next read.
#[async_trait]
pub trait OrderedSubscriptions: Send + Sync {
    /// Stores a subscription that resumes after `after`, as [`ConnectionStore::add`] stores
    /// one (the count and the limit alike), but found only through
    /// [`ordered_page`](Self::ordered_page), never through the index of live subscriptions.
    async fn add_ordered(
        &self,
        subscription: &StoredSubscription,
        after: Position,
        max: usize,
    ) -> Result<Added, GatewayError>;
    /// How many partitions hold them.
    fn ordered_shards(&self) -> u32;
    /// One page of partition `shard`: its first for `after: None`.
    async fn ordered_page(
        &self,
        shard: u32,
        after: Option<&str>,
    ) -> Result<OrderedPage, GatewayError>;
    /// Takes the subscription's lease for `token` until `until_ms`, when nobody holds it or
    /// its holder's time ran out (`now_ms`): the subscription, or `None` when another holds it
    /// or it is gone.
    async fn lease(
        &self,
        key: &SubscriptionKey,
        token: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Option<OrderedSubscription>, GatewayError>;
    /// Records that the subscription has been delivered everything through `through`, while
    /// `token` holds its lease; false when it does not (any more).
    async fn advance(
        &self,
        key: &SubscriptionKey,
        token: &str,
        through: Position,
    ) -> Result<bool, GatewayError>;
    /// Lets the lease go, if `token` holds it.
    async fn release(&self, key: &SubscriptionKey, token: &str) -> Result<(), GatewayError>;
}

/// Where the notifier puts the part of a fan-out it leaves to other invocations; each message
/// invokes the notifier once more.
#[async_trait]
pub trait DeliveryQueue: Send + Sync {
    /// Queues one message, to be delivered after `delay_secs`.
    async fn enqueue(&self, message: &FanoutMessage, delay_secs: u32) -> Result<(), GatewayError>;
}
