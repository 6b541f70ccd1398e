//! The axum router: the same one is served locally and on Lambda.

use async_graphql::http::GraphiQLSource;
use async_graphql_axum::GraphQL;
use axum::response::{Html, IntoResponse};
use axum::routing::{MethodFilter, get, on_service};
use axum::{Extension, Router};

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

/// The path prefix the API is served under, when it is not the root: behind an API Gateway
/// stage, say, which the Lambda adds as a request extension so GraphiQL's links point home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasePath(pub String);

async fn graphiql(base: Option<Extension<BasePath>>) -> impl IntoResponse {
    let base = base
        .map(|Extension(BasePath(path))| path)
        .unwrap_or_default();
    let endpoint = format!("{}/graphql", base.trim_end_matches('/'));
    Html(
        GraphiQLSource::build()
            .endpoint(&endpoint)
            .title("outboxdemo")
            .finish(),
    )
}

async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}
