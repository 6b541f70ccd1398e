//! The `api` Lambda: the GraphQL router behind API Gateway, on DynamoDB.

use std::sync::Arc;

use api::WriteGrant;
use api::authorizer::{PublicAccess, granted_write};
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
    /// The WebSocket API's URL, where GraphiQL opens subscriptions (this HTTP API cannot).
    #[arg(long, env = "WEBSOCKET_URL")]
    websocket_url: Option<String>,
    /// What a request without the credential may do: unless everyone may write, mutations need
    /// the write grant of the authorizer in front of this function.
    #[arg(long, env = "PUBLIC_ACCESS", value_enum, default_value = "none")]
    public_access: PublicAccess,
}

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let telemetry = telemetry::Telemetry::lambda("api")?;
    api::metrics::describe();
    let config = Config::try_parse()?;
    let client = aws_sdk_dynamodb::Client::new(&aws_config::load_from_env().await);
    let books = Arc::new(DynamoBookStore::new(client.clone(), config.table_name));
    let activity = Arc::new(DynamoActivityFeed::new(client, config.activity_table_name));
    // A Lambda cannot hold a WebSocket: subscriptions on AWS go through API Gateway's
    // WebSocket API instead, so this hub has no publisher.
    let options = api::ApiOptions {
        graphiql_subscriptions_url: config.websocket_url,
        // API Gateway's Lambda integration buffers the whole response: no event stream.
        event_stream: false,
        writes_need_grant: config.public_access != PublicAccess::All,
        ..api::ApiOptions::default()
    };
    let schema = api::build_schema_with(books, activity, api::EventHub::default(), None, &options);
    // Each request's spans are exported before it is answered, when exporting: the
    // environment may be frozen once it is.
    let router = api::router::router_with(schema, &options).layer(axum::middleware::from_fn(
        move |request, next: axum::middleware::Next| {
            let telemetry = telemetry.clone();
            async move {
                let response = next.run(request).await;
                telemetry.flush().await;
                response
            }
        },
    ));
    lambda_http::run(router.map_request(|request| with_grant(serve_under_stage(request)))).await
}

/// The write grant of the authorizer API Gateway asked before this request (none without one:
/// then only a deployment that lets everyone write runs mutations).
fn with_grant(mut request: Request) -> Request {
    let granted = match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(context)) => context
            .authorizer
            .as_ref()
            .is_some_and(|authorizer| granted_write(&authorizer.fields)),
        _ => false,
    };
    request.extensions_mut().insert(WriteGrant(granted));
    request
}

/// API Gateway serves a named stage under `/<stage>` and lambda_http keeps that prefix in the
/// path. The router's routes are at the root, so the prefix is taken off here and handed on
/// as [`BasePath`], for the links GraphiQL makes.
fn serve_under_stage(mut request: Request) -> Request {
    let Some(base) = stage_path(&request) else {
        return request;
    };
    let uri = request.uri();
    if let Some(rest) = uri.path().strip_prefix(base.as_str())
        && (rest.is_empty() || rest.starts_with('/'))
    {
        let path = if rest.is_empty() { "/" } else { rest };
        let path_and_query = match uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        let mut parts = uri.clone().into_parts();
        if let Ok(path_and_query) = path_and_query.parse() {
            parts.path_and_query = Some(path_and_query);
            if let Ok(stripped) = lambda_http::http::Uri::from_parts(parts) {
                *request.uri_mut() = stripped;
            }
        }
    }
    request.extensions_mut().insert(BasePath(base));
    request
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
