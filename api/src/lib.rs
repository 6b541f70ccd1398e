//! The GraphQL API of outboxdemo: a schema library with no storage in it, and one axum router.
//!
//! The core (everything below but `dynamo` and the gateway's adapters) depends on ports
//! only; the AWS adapters and the Lambda binaries (`api`, `subscriptions`, `notifier`) are
//! compiled with the `aws` feature, so the local stack builds without the AWS SDK.
//!
//! - [`store`]: the ports the API reaches storage through: [`BookStore`] (books),
//!   [`ActivityFeed`] (what consumers recorded) and [`DeadLetterFeed`]. The embedded store and
//!   the DynamoDB adapters implement them.
//! - [`schema`]: the schema, its query and mutation roots; build it with [`build_schema`].
//! - [`types`]: the GraphQL output types every root returns (books, events, activity, dead
//!   letters).
//! - [`subscriptions`]: the subscription root.
//! - [`events`]: [`BookEvent`] (made from a bus event by [`BookEvent::from_eventbridge`]) and
//!   [`EventHub`], the fan-out a bus target feeds and subscriptions read.
//! - [`gateway`]: subscriptions on AWS, over API Gateway's WebSocket API: the
//!   `graphql-transport-ws` state machine, the notifier's fan-out, their ports, and (with
//!   `aws`) the DynamoDB connections table and the Management API client: the `subscriptions`
//!   and `notifier` Lambdas' library.
//! - [`options`]: [`ApiOptions`]: limits, production switches, the optional credential; also
//!   the API's command-line flags.
//! - [`limits`]: what a document may ask: how deep it nests (introspection's `ofType` chains
//!   count nothing) and whether it introspects; [`limits::DocumentLimits`] refuses the rest.
//! - [`metrics`]: what the API counts (mutations by outcome), and [`metrics::MutationMetrics`],
//!   the schema extension that counts them.
//! - [`spans`]: the `graphql.request` span, continuing the client's `traceparent`
//!   ([`spans::IncomingTrace`]) or starting a trace, and the `store.write` span whose trace a
//!   write stores with the change.
//! - [`introspection`]: introspection answered for this schema (no borrowed description).
//! - [`error`]: [`ApiError`], the one error type resolvers return, each with a stable
//!   `extensions.code`; [`ErrorCodes`] gives parse and validation errors codes too.
//! - `operation`: which operation of a document a request runs, for every transport.
//! - `dynamo` (with `aws`): the DynamoDB adapters of the storage ports, used by the `api`
//!   Lambda; `sdk` holds what the AWS adapters share.
//! - [`mod@router`]: the axum router, [`router()`]: GraphiQL at `/`, GraphQL at `/graphql`,
//!   subscriptions at `/graphql/ws`, `/health`.
//!
//! A mutation writes to the [`BookStore`] and returns: nothing here publishes events.

#![warn(missing_docs)]

#[cfg(feature = "aws")]
pub mod authorizer;
#[cfg(feature = "aws")]
pub mod dynamo;
pub mod error;
pub mod events;
pub mod gateway;
pub mod introspection;
pub mod limits;
pub mod metrics;
mod operation;
pub mod options;
pub mod router;
pub mod schema;
#[cfg(feature = "aws")]
mod sdk;
pub mod spans;
pub mod store;
pub mod subscriptions;
#[cfg(test)]
mod tests_support;
pub mod types;

pub use error::{ApiError, ErrorCodes};
pub use events::{BookEvent, EventHub, EventLog, LogError, LogPage, MalformedEvent, Position};
pub use options::{ApiOptions, WriteGrant};
pub use router::router;
pub use schema::{ApiSchema, build_schema, build_schema_with, sdl};
pub use store::{
    ActivityFeed, ActivityItem, BookStore, CatalogueVersion, DeadLetter, DeadLetterFeed,
    DeadLetterSource, Page, StoreError,
};
