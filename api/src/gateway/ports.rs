//! The ports the gateway reaches AWS through: [`ConnectionStore`] (what each connection has
//! subscribed to) and [`ConnectionSender`] (posting to and closing connections).

use async_trait::async_trait;
use serde_json::Value;

use super::GatewayError;
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
    /// Stores a subscription, unless the connection has one with its id or holds `max`
    /// already; the count and the subscription change together.
    async fn add(
        &self,
        subscription: &StoredSubscription,
        max: usize,
    ) -> Result<Added, GatewayError>;
    /// Removes one subscription (`complete`), freeing its place.
    async fn remove(&self, connection_id: &str, id: &str) -> Result<(), GatewayError>;
    /// Removes the connection and all its subscriptions.
    async fn close(&self, connection_id: &str) -> Result<(), GatewayError>;
    /// Up to `limit` stored subscriptions, of every connection.
    async fn subscriptions(&self, limit: usize) -> Result<Vec<StoredSubscription>, GatewayError>;
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
