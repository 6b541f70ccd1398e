//! The axum router: the same one is served locally and on Lambda. Each route has its module:
//!
//! - `http`: GraphQL over HTTP at `/graphql` (GET and POST), per the GraphQL-over-HTTP spec.
//! - `documents`: the cache of parsed documents that `/graphql` shares across requests.
//! - `responses`: the cache of catalogue answers, where the store tells the catalogue's version.
//! - `graphiql`: the GraphiQL page at `/`, and [`BasePath`], the prefix it links under.
//! - `health`: the `/health` route.
//! - `websocket`: subscriptions at `/graphql/ws`: the pump between a WebSocket and the
//!   schema, with keep-alive pings and the per-connection subscription limit.
//! - `sse`: GraphQL over Server-Sent Events at `/graphql/stream` (GET and POST, `graphql-sse`'s
//!   distinct connections mode): a `next` event each result, its `id` the cursor of its event,
//!   `Last-Event-ID` to resume after one, then `complete`; keep-alive comments; no mutations.
//! - `origin`: the origins `--allow-origin` lets in besides this server's own (the WebSocket
//!   handshake, the event stream and CORS); `cors`: the CORS layer, installed only when origins
//!   are listed.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;

use crate::options::ApiOptions;
use crate::schema::ApiSchema;
use crate::store::CatalogueVersion;

mod cors;
mod documents;
mod graphiql;
mod health;
mod http;
mod origin;
mod responses;
mod sse;
mod websocket;

pub use graphiql::BasePath;
pub(crate) use origin::parse_origin;

/// The API's routes: GraphiQL at `/`, GraphQL at `/graphql` (GET and POST), subscriptions at
/// `/graphql/ws` (`graphql-transport-ws`, and the legacy `graphql-ws`), GraphQL over
/// Server-Sent Events at `/graphql/stream` (GET and POST), and `/health`.
pub fn router(schema: ApiSchema) -> Router {
    router_with(schema, &ApiOptions::default())
}

/// [`router`] with these options (keep-alive, body and subscription limits, GraphiQL on or off,
/// the origins allowed besides this server's own).
pub fn router_with(schema: ApiSchema, options: &ApiOptions) -> Router {
    routes(schema, options, None)
}

/// [`router_with`], answering repeated catalogue queries (`books`, `book`) from a cache while
/// `version` says the catalogue is unchanged (see [`CatalogueVersion`]).
pub fn router_with_catalogue(
    schema: ApiSchema,
    options: &ApiOptions,
    version: Arc<dyn CatalogueVersion>,
) -> Router {
    routes(
        schema,
        options,
        Some(Arc::new(responses::Responses::new(version))),
    )
}

fn routes(
    schema: ApiSchema,
    options: &ApiOptions,
    responses: Option<Arc<responses::Responses>>,
) -> Router {
    let allowed_origins = Arc::new(origin::AllowedOrigins::new(&options.allowed_origins));
    let mut router = Router::new();
    if options.graphiql {
        let subscriptions = graphiql::SubscriptionsUrl(options.graphiql_subscriptions_url.clone());
        router = router.route(
            "/",
            get(graphiql::graphiql).layer(axum::Extension(subscriptions)),
        );
    }
    let router = router
        .route(
            "/graphql",
            get(http::graphql)
                .post(http::graphql)
                .layer(DefaultBodyLimit::max(options.max_body_bytes)),
        )
        .route("/graphql/ws", get(websocket::subscribe));
    let router = if options.event_stream {
        router.route(
            "/graphql/stream",
            get(sse::stream)
                .post(sse::stream)
                .layer(DefaultBodyLimit::max(options.max_body_bytes)),
        )
    } else {
        router
    };
    let router = router
        .route("/health", get(health::health))
        .with_state(AppState {
            schema,
            keepalive: options.keepalive,
            connection_limits: options.into(),
            max_message_bytes: options.max_body_bytes,
            allowed_origins: Arc::clone(&allowed_origins),
            documents: Arc::default(),
            responses,
        });
    if allowed_origins.is_empty() {
        return router;
    }
    router.layer(axum::middleware::from_fn_with_state(
        allowed_origins,
        cors::cors,
    ))
}

/// What every route shares: the schema, the subscriptions' settings and the document cache.
#[derive(Clone)]
struct AppState {
    schema: ApiSchema,
    /// How often idle subscriptions hear from the server (a ping, a keep-alive comment).
    keepalive: Duration,
    /// What one WebSocket connection may do (the same limits as on AWS).
    connection_limits: crate::limits::connection::ConnectionLimits,
    /// The largest WebSocket message or frame (the HTTP body limit).
    max_message_bytes: usize,
    /// The origins besides this server's own whose pages may open a socket or a stream.
    allowed_origins: Arc<origin::AllowedOrigins>,
    documents: Arc<documents::Documents>,
    /// Catalogue answers, when the store tells the catalogue's version.
    responses: Option<Arc<responses::Responses>>,
}
