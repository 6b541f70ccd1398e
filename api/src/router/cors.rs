//! CORS for the origins `--allow-origin` lists, and for no others: without the flag this layer
//! is not installed and no response carries a CORS header, so a page elsewhere cannot read
//! one (<https://fetch.spec.whatwg.org/#http-cors-protocol>).
//!
//! Nor can such a page make `/graphql` run a mutation: a POST needs `content-type:
//! application/json` (other types are refused with 415 before anything runs), and a
//! cross-origin JSON POST is sent only after a preflight that names an allowed origin.
//! No credentials are allowed: the API's credential is a bearer token, never a cookie.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::origin::AllowedOrigins;

/// How long a browser may keep a preflight's answer, in seconds.
const MAX_AGE_SECS: &str = "600";

/// Answers preflights from listed origins (204, the methods and headers `/graphql` takes), and
/// lets listed origins read the responses to their requests. Requests from any other origin
/// pass through untouched: a preflight of theirs meets the routes' own 405.
pub(super) async fn cors(
    State(allowed): State<Arc<AllowedOrigins>>,
    request: Request,
    next: Next,
) -> Response {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .filter(|origin| origin.to_str().is_ok_and(|origin| allowed.lists(origin)))
        .cloned();
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = match &origin {
        Some(_) if preflight => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST"),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("content-type, authorization, last-event-id, traceparent"),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(MAX_AGE_SECS),
            );
            response
        }
        _ => next.run(request).await,
    };
    let headers = response.headers_mut();
    // Answers differ by origin: a cache must not hand one origin's to another.
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    response
}
