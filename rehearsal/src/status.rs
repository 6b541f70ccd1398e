//! `GET /rehearsal/status`: what the deployment holds, read from the emulator — the WebSocket
//! connections and subscriptions stored in the connections table — in the shape of the local
//! stack's `/health` (`{"subscriptions": n, "connections": n}`), so a test can wait until a
//! subscribe has been stored on either target.

use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

/// The rows of a subscription start with this sort key (api::gateway's connections table).
const SUBSCRIPTION_PREFIX: &str = "sub#";

#[derive(Debug)]
struct Status {
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
}

/// The status route, reading `table` (the connections table).
pub fn router(dynamodb: aws_sdk_dynamodb::Client, table: String) -> Router {
    Router::new()
        .route("/rehearsal/status", get(status))
        .with_state(Arc::new(Status { dynamodb, table }))
}

async fn status(State(status): State<Arc<Status>>) -> Response {
    let pages = status
        .dynamodb
        .scan()
        .table_name(&status.table)
        .projection_expression("sk")
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await;
    match pages {
        Ok(rows) => {
            let subscriptions = rows
                .iter()
                .filter(|row| {
                    matches!(row.get("sk"), Some(AttributeValue::S(sk)) if sk.starts_with(SUBSCRIPTION_PREFIX))
                })
                .count();
            axum::Json(json!({
                "subscriptions": subscriptions,
                "connections": rows.len() - subscriptions,
            }))
            .into_response()
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            format!(
                "cannot read {}: {}",
                status.table,
                aws_sdk_dynamodb::error::DisplayErrorContext(e)
            ),
        )
            .into_response(),
    }
}
