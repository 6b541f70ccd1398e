//! The GraphQL API of outboxdemo: a schema library with no storage in it, and one axum router.
//!
//! - [`store`]: the ports the API reaches storage through: [`BookStore`] (books) and
//!   [`ActivityFeed`] (what consumers recorded). The embedded store and the DynamoDB adapters
//!   implement them.
//! - [`schema`]: queries and mutations; build it with [`build_schema`].
//! - [`subscriptions`]: the subscription root and [`EventHub`], which a bus target feeds.
//! - [`gateway`]: subscriptions on AWS, over API Gateway's WebSocket API: the `subscriptions`
//!   and `notifier` Lambdas' library.
//! - [`options`]: [`ApiOptions`]: limits, production switches, the optional credential.
//! - [`limits`]: what a document may ask: how deep it nests (introspection's `ofType` chains
//!   count nothing) and whether it introspects; [`limits::DocumentLimits`] refuses the rest.
//! - [`introspection`]: introspection answered for this schema (no borrowed description).
//! - [`error`]: [`ApiError`], the one error type resolvers return, each with a stable
//!   `extensions.code`; [`ErrorCodes`] gives parse and validation errors codes too.
//! - [`dynamo`]: the DynamoDB adapters of those ports, used by the `api` Lambda.
//! - [`mod@router`]: the axum router, [`router()`]: GraphiQL at `/`, GraphQL at `/graphql`, `/health`.
//!
//! A mutation writes to the [`BookStore`] and returns: nothing here publishes events.

#[cfg(feature = "aws")]
pub mod dynamo;
pub mod error;
pub mod events;
pub mod gateway;
pub mod introspection;
pub mod limits;
mod operation;
pub mod options;
pub mod router;
pub mod schema;
#[cfg(feature = "aws")]
mod sdk;
pub mod store;
pub mod subscriptions;
#[cfg(test)]
mod tests_support;
pub mod types;

pub use error::{ApiError, ErrorCodes};
pub use events::{BookEvent, EventHub, MalformedEvent};
pub use options::ApiOptions;
pub use router::router;
pub use schema::{ApiSchema, build_schema, build_schema_with, sdl};
pub use store::{
    ActivityFeed, ActivityItem, BookStore, DeadLetter, DeadLetterFeed, DeadLetterSource, Page,
    StoreError,
};
