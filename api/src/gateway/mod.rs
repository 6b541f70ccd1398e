//! GraphQL subscriptions on AWS: `graphql-transport-ws` over an API Gateway WebSocket API.
//!
//! A Lambda cannot hold a WebSocket, so API Gateway holds it and calls the `subscriptions`
//! Lambda with each connect, message and disconnect ([`handle_message`]). A `subscribe` is
//! validated against the same schema the local server uses and stored, with its variables, in
//! the connections table ([`ConnectionStore`]), under each detail type it can match
//! ([`detail_types`]). The `notifier` Lambda, a bus target like the consumers, runs the
//! subscriptions stored under an event's type against it with that schema, each distinct
//! request once ([`Notifier::notify`]), and posts the results through the API Gateway
//! Management API ([`ConnectionSender`]), itself or, for a large fan-out, through batches on a
//! queue ([`DeliveryQueue`]) that invoke it again ([`Notifier::deliver`]). One subscription
//! schema, two transports: the execution is [`run_against`] here, the live stream locally.
//!
//! Each connection is held to the local socket's limits
//! ([`ConnectionLimits`](crate::limits::connection::ConnectionLimits)), kept in its row of the
//! connections table: a token bucket every message takes from, and a subscription count that a
//! transaction holds to the cap; a subscription id is 1 to 128 characters. Where the local socket
//! and this path could answer differently, they answer the same.
//!
//! The protocol (`protocol`) and the fan-out (`notify`) reach AWS only through three ports,
//! [`ConnectionStore`], [`ConnectionSender`] and [`DeliveryQueue`] ([`ports`]); their
//! adapters, the DynamoDB connections table (`DynamoConnectionStore`), the Management API
//! client (`ManagementApi`) and the SQS fan-out queue (`SqsDeliveryQueue`), are compiled with
//! the `aws` feature.

use futures_util::StreamExt;

use crate::events::{BookEvent, EventHub};

#[cfg(feature = "aws")]
mod connections;
mod error;
#[cfg(feature = "aws")]
mod journal;
#[cfg(feature = "aws")]
mod management;
mod notify;
pub mod ports;
mod protocol;
mod pump;
#[cfg(feature = "aws")]
mod queue;
#[cfg(test)]
mod tests;
mod topics;

#[cfg(feature = "aws")]
pub use connections::{DynamoConnectionStore, SHARDS, SUBSCRIBED_TO_INDEX};
pub use error::GatewayError;
#[cfg(feature = "aws")]
pub use journal::DynamoJournal;
#[cfg(feature = "aws")]
pub use management::ManagementApi;
pub use notify::{FanoutOptions, Notified, Notifier};
pub use ports::{
    Added, CarriedResults, ConnectionSender, ConnectionState, ConnectionStore, Delivery,
    DeliveryBatch, DeliveryQueue, FanoutMessage, IndexPage, Journal, OrderedPage,
    OrderedSubscription, OrderedSubscriptions, PumpMessage, ReadOn, StoredSubscription,
    SubscriptionKey,
};
pub use protocol::{Resume, handle_message};
pub use pump::{LEASE, Pump, Pumped};
#[cfg(feature = "aws")]
pub use queue::SqsDeliveryQueue;
pub use topics::detail_types;

/// The only WebSocket subprotocol spoken on AWS.
pub const PROTOCOL: &str = "graphql-transport-ws";
/// How long a connection's rows live: API Gateway ends every connection after two hours, so
/// rows older than that (plus a margin) belong to connections that were lost without a
/// `$disconnect`, and DynamoDB's TTL removes them.
pub const ROW_LIFETIME_SECS: i64 = 2 * 60 * 60 + 10 * 60;

/// Runs a subscription request against exactly `events`: the GraphQL responses it yields (none
/// when its filters keep none of them; one with errors when the document is not a valid
/// subscription). Request data comes before schema data, so this hub is the one it sees.
pub async fn run_against(
    schema: &crate::ApiSchema,
    request: async_graphql::Request,
    events: Vec<BookEvent>,
) -> Vec<async_graphql::Response> {
    schema
        .execute_stream(request.data(EventHub::replay(events)))
        .collect()
        .await
}
