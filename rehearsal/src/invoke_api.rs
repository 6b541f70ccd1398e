//! Lambda's Invoke API for the rehearsal's functions, so `aws lambda invoke` and the SDKs
//! (with `AWS_ENDPOINT_URL_LAMBDA` pointing here) run them: the README's redrive steps invoke
//! the processor this way.
//!
//! `POST /2015-03-31/functions/{name}/invocations`
//! (<https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html>): the payload is the event;
//! `X-Amz-Invocation-Type` `RequestResponse` (the default) answers 200 with the function's
//! response, and a function error with `X-Amz-Function-Error: Unhandled` and the error object;
//! `Event` queues the invocation and answers 202; `DryRun` answers 204. An unknown function is
//! `404 ResourceNotFoundException`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use crate::lambda::{Function, Invocation};

/// The Invoke API for `functions` (by function name).
pub fn router(functions: HashMap<String, Function>) -> Router {
    Router::new()
        .route("/2015-03-31/functions/{name}/invocations", post(invoke))
        .with_state(Arc::new(functions))
}

async fn invoke(
    State(functions): State<Arc<HashMap<String, Function>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // A function may be named by name or ARN (`arn:aws:lambda:…:function:<name>[:qualifier]`).
    let name = name
        .split(":function:")
        .nth(1)
        .map_or(name.as_str(), |rest| rest.split(':').next().unwrap_or(rest))
        .to_owned();
    let Some(function) = functions.get(&name).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            &format!("Function not found: {name}"),
        );
    };
    let payload: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(payload) => payload,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "InvalidRequestContentException",
                    &format!("Could not parse request body into json: {e}"),
                );
            }
        }
    };
    let invocation_type = headers
        .get("x-amz-invocation-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse");
    match invocation_type {
        "DryRun" => StatusCode::NO_CONTENT.into_response(),
        "Event" => {
            tokio::spawn(async move {
                let _ = function.invoke(payload).await;
            });
            StatusCode::ACCEPTED.into_response()
        }
        _ => {
            let invocation = function.invoke(payload).await;
            let mut response = (
                StatusCode::OK,
                [
                    ("content-type", "application/json"),
                    ("x-amz-executed-version", "$LATEST"),
                ],
                invocation.payload().to_string(),
            )
                .into_response();
            if let Invocation::FunctionError(_) = invocation
                && let Ok(value) = "Unhandled".parse()
            {
                response.headers_mut().insert("x-amz-function-error", value);
            }
            response
        }
    }
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        [
            ("x-amzn-errortype", kind),
            ("content-type", "application/json"),
        ],
        json!({"Type": "User", "message": message}).to_string(),
    )
        .into_response()
}
