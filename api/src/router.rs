//! The axum router: the same one is served locally and on Lambda.

use async_graphql::http::GraphiQLSource;
use async_graphql_axum::GraphQL;
use axum::Router;
use axum::response::{Html, IntoResponse};
use axum::routing::{MethodFilter, get, on_service};

use crate::schema::ApiSchema;

/// The API's routes: GraphiQL at `/`, GraphQL at `/graphql` (GET and POST), and `/health`.
pub fn router(schema: ApiSchema) -> Router {
    Router::new()
        .route("/", get(graphiql))
        .route(
            "/graphql",
            on_service(
                MethodFilter::GET.or(MethodFilter::POST),
                GraphQL::new(schema),
            ),
        )
        .route("/health", get(health))
}

async fn graphiql() -> impl IntoResponse {
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .title("outboxdemo")
            .finish(),
    )
}

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}
