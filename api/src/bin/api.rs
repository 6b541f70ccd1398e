//! The `api` Lambda: the GraphQL router behind API Gateway, on DynamoDB.

use std::sync::Arc;

use api::dynamo::{DynamoActivityFeed, DynamoBookStore};
use api::router::BasePath;
use clap::Parser;
use lambda_http::request::RequestContext;
use lambda_http::{Request, RequestExt, tower::ServiceExt as _};

/// Configuration, from the environment.
#[derive(Debug, Parser)]
struct Config {
    /// The books table.
    #[arg(long, env = "TABLE_NAME")]
    table_name: String,
    /// The consumers' activity table.
    #[arg(long, env = "ACTIVITY_TABLE_NAME")]
    activity_table_name: String,
}

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    lambda_http::tracing::init_default_subscriber();
    let config = Config::try_parse()?;
    let client = aws_sdk_dynamodb::Client::new(&aws_config::load_from_env().await);
    let books = Arc::new(DynamoBookStore::new(client.clone(), config.table_name));
    let activity = Arc::new(DynamoActivityFeed::new(client, config.activity_table_name));
    let router = api::router(api::build_schema(books, activity));
    let app = router.map_request(|mut request: Request| {
        if let Some(base) = stage_path(&request) {
            request.extensions_mut().insert(BasePath(base));
        }
        request
    });
    lambda_http::run(app).await
}

/// `/<stage>` when API Gateway serves the API under a named stage (not `$default`).
fn stage_path(request: &Request) -> Option<String> {
    let stage = match request.request_context_ref()? {
        RequestContext::ApiGatewayV1(context) => context.stage.clone(),
        RequestContext::ApiGatewayV2(context) => context.stage.clone(),
        _ => None,
    }?;
    (stage != "$default").then(|| format!("/{stage}"))
}
