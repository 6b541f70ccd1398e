//! GraphQL over HTTP at `/graphql`: GET and POST, per the GraphQL-over-HTTP spec.

use async_graphql::parser::types::OperationType;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::{AppState, responses};
use crate::operation::operation_type;
use crate::options::{Credential, WriteGrant};
use crate::spans::IncomingTrace;

/// The media type of the GraphQL-over-HTTP spec; clients that accept it get status codes that
/// say what kind of failure an error is.
const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";

/// GraphQL over HTTP (GET and POST), per the GraphQL-over-HTTP spec: `application/json`
/// responses are always 200; `application/graphql-response+json` ones are 400, without
/// `data`, when the request fails before execution (it does not parse, validate or coerce).
/// GET does not run mutations: a GET must be safe to repeat.
pub(super) async fn graphql(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    grant: Option<Extension<WriteGrant>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let spec_media_type = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|accept| accept.contains(GRAPHQL_RESPONSE_JSON));
    let media_type = if spec_media_type {
        GRAPHQL_RESPONSE_JSON
    } else {
        "application/json"
    };
    let body = match read_body(&method, &headers, body) {
        Ok(body) => body,
        Err(refusal) => return refusal.answer(media_type),
    };
    let authorization = headers.get(header::AUTHORIZATION);
    let cache_key = state.responses.as_ref().map(|responses| {
        let key = responses::Key::new(
            method == Method::POST,
            uri.query().unwrap_or_default(),
            &body,
            authorization.map(HeaderValue::as_bytes),
            spec_media_type,
        );
        (responses, key)
    });
    if let Some((responses, key)) = &cache_key
        && let Some(answer) = responses.get(key)
    {
        return answer_with(answer, media_type);
    }
    let request = match parse(&method, &uri, &body) {
        Ok(request) => request,
        Err(refusal) => return refusal.answer(media_type),
    };
    let authorization = authorization.and_then(|v| v.to_str().ok());
    let mut request = request.data(Credential::from_authorization(authorization));
    if let Some(Extension(grant)) = grant {
        request = request.data(grant);
    }
    if let Some(trace) = IncomingTrace::from_value(
        headers
            .get(telemetry::context::TRACEPARENT)
            .and_then(|value| value.to_str().ok()),
    ) {
        request = request.data(trace);
    }
    state.documents.prepare(&mut request);
    if method == Method::GET && is_mutation(&mut request) {
        let mut response = Refusal::bad_request(
            StatusCode::METHOD_NOT_ALLOWED,
            "mutations are not run over GET; use POST",
        )
        .answer(media_type);
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }

    // The version before execution: an answer is kept under it (see `responses`).
    let keep = cache_key
        .filter(|_| catalogue_only(&mut request))
        .map(|(responses, key)| (responses, key, responses.version()));
    let response = state.schema.execute(request).await;
    // A request error happens before execution: no data, and no error belongs to a field.
    let request_error = response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|error| error.path.is_empty());
    if spec_media_type && request_error {
        let mut body = serde_json::to_value(&response).unwrap_or_default();
        if let Some(body) = body.as_object_mut() {
            body.remove("data");
        }
        return json_answer(StatusCode::BAD_REQUEST, body, media_type);
    }
    match serde_json::to_vec(&response) {
        Ok(body) => {
            let body = Bytes::from(body);
            if let Some((responses, key, version)) = keep
                && response.errors.is_empty()
            {
                responses.put(key, version, body.clone());
            }
            answer_with(body, media_type)
        }
        Err(error) => Refusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "INTERNAL",
            message: format!("the response could not be written: {error}"),
        }
        .answer(media_type),
    }
}

/// A request answered before anything runs, with one error: its status, code and message.
pub(super) struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    /// A `BAD_REQUEST` refusal: not a GraphQL request, or not one this endpoint runs.
    pub(super) fn bad_request(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code: "BAD_REQUEST",
            message: message.into(),
        }
    }

    /// The answer: `{"errors": [{"message", "extensions": {"code"}}]}` as `media_type`.
    pub(super) fn answer(&self, media_type: &'static str) -> Response {
        let body = serde_json::json!({
            "errors": [{"message": self.message, "extensions": {"code": self.code}}]
        });
        json_answer(self.status, body, media_type)
    }
}

/// An answer with this status and JSON body, as `media_type`.
fn json_answer(status: StatusCode, body: serde_json::Value, media_type: &'static str) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    response
}

/// The body of a GraphQL request: a POST's must be JSON and within the body limit.
pub(super) fn read_body(
    method: &Method,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, Refusal> {
    let json_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim_start().starts_with("application/json"));
    if method == Method::POST && !json_body {
        return Err(Refusal::bad_request(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a POST needs content-type: application/json",
        ));
    }
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Refusal {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "PAYLOAD_TOO_LARGE",
            message: "the request body is larger than the API accepts".to_owned(),
        },
        status => Refusal::bad_request(status, rejection.body_text()),
    })
}

/// The GraphQL request a POST's JSON body or a GET's query string holds.
pub(super) fn parse(
    method: &Method,
    uri: &Uri,
    body: &[u8],
) -> Result<async_graphql::Request, Refusal> {
    let parsed = if method == Method::POST {
        serde_json::from_slice::<async_graphql::Request>(body).map_err(|e| e.to_string())
    } else {
        async_graphql::http::parse_query_string(uri.query().unwrap_or_default())
            .map_err(|e| e.to_string())
    };
    parsed.map_err(|error| {
        Refusal::bad_request(
            StatusCode::BAD_REQUEST,
            format!("not a GraphQL request: {error}"),
        )
    })
}

/// A 200 answer with this body.
fn answer_with(body: Bytes, media_type: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(media_type))],
        body,
    )
        .into_response()
}

/// Whether the request's operation reads the catalogue alone (and so may be cached).
fn catalogue_only(request: &mut async_graphql::Request) -> bool {
    let operation_name = request.operation_name.clone();
    request.parsed_query().is_ok_and(|document| {
        responses::reads_only_the_catalogue(document, operation_name.as_deref())
    })
}

/// Whether the operation the request would run is a mutation.
pub(super) fn is_mutation(request: &mut async_graphql::Request) -> bool {
    let operation_name = request.operation_name.clone();
    let Ok(document) = request.parsed_query() else {
        return false; // execution reports the parse error
    };
    operation_type(document, operation_name.as_deref()) == Some(OperationType::Mutation)
}
