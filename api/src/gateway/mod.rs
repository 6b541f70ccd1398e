//! GraphQL subscriptions on AWS: `graphql-transport-ws` over an API Gateway WebSocket API.
//!
//! A Lambda cannot hold a WebSocket, so API Gateway holds it and calls the `subscriptions`
//! Lambda with each connect, message and disconnect ([`handle_message`]). A `subscribe` is
//! validated against the same schema the local server uses and stored, with its variables, in
//! the connections table ([`ConnectionStore`]). The `notifier` Lambda, a bus target like the
//! consumers, runs each stored subscription against each event with that schema
//! ([`notify`]) and posts the results through the API Gateway Management API
//! ([`ConnectionSender`]). One subscription schema, two transports: the execution is
//! [`run_against`] here, the live stream locally.
//!
//! Each connection is held to the local socket's limits
//! ([`ConnectionLimits`](crate::limits::connection::ConnectionLimits)), kept in its row of the
//! connections table: a token bucket every message takes from, and a subscription count that a
//! transaction holds to the cap; a subscription id is 1 to 128 characters. Where the local socket
//! and this path could answer differently, they answer the same.
//!
//! The protocol (`protocol`) and the fan-out (`notify`) reach AWS only through two ports,
//! [`ConnectionStore`] and [`ConnectionSender`] ([`ports`]); their adapters, the DynamoDB
//! connections table (`DynamoConnectionStore`) and the Management API client
//! (`ManagementApi`), are compiled with the `aws` feature.

use futures_util::StreamExt;

use crate::events::{BookEvent, EventHub};

#[cfg(feature = "aws")]
mod connections;
mod error;
#[cfg(feature = "aws")]
mod management;
mod notify;
pub mod ports;
mod protocol;
#[cfg(test)]
mod tests;

#[cfg(feature = "aws")]
pub use connections::DynamoConnectionStore;
pub use error::GatewayError;
#[cfg(feature = "aws")]
pub use management::ManagementApi;
pub use notify::{Notified, notify};
pub use ports::{Added, ConnectionSender, ConnectionState, ConnectionStore, StoredSubscription};
pub use protocol::handle_message;

/// The only WebSocket subprotocol spoken on AWS.
pub const PROTOCOL: &str = "graphql-transport-ws";
/// How long a connection's rows live: API Gateway ends every connection after two hours, so
/// rows older than that (plus a margin) belong to connections that were lost without a
/// `$disconnect`, and DynamoDB's TTL removes them.
pub const ROW_LIFETIME_SECS: i64 = 2 * 60 * 60 + 10 * 60;
/// The most subscriptions one notifier invocation serves.
pub const MAX_SUBSCRIPTIONS_PER_EVENT: usize = 1000;

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
