//! The HTTP API in front of the `api` Lambda: every request becomes a payload-format-2.0 event of
//! a Lambda proxy integration, and the function's answer becomes the response, as API Gateway
//! does it (<https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-develop-integrations-lambda.html>).
//!
//! The routes are the template's (`ANY /` and `ANY /{proxy+}`), matched as API Gateway matches
//! them (<https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-develop-routes.html>);
//! SAM's `HttpApi` without a `StageName` serves the `$default` stage, so paths have no prefix.
//! What API Gateway answers itself, without the function's say: `404 {"message":"Not Found"}`
//! when no route matches, `413` for a body over the payload quota, `500 {"message":"Internal
//! Server Error"}` for a function error, `503 {"message":"Service Unavailable"}` when the
//! integration timeout passes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use aws_lambda_events::apigw::{
    ApiGatewayV2httpRequest, ApiGatewayV2httpRequestContextHttpDescription,
};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::authorizers::{Cors, Decision, HttpAuthorizer};
use crate::lambda::{Invocation, Invoke};
use crate::template::Template;

/// The HTTP API as the template declares it, with API Gateway's limits.
#[derive(Debug, Clone)]
pub struct HttpApiSettings {
    /// The API id (the first label of `<id>.execute-api.<region>.amazonaws.com`).
    pub api_id: String,
    /// `requestContext.accountId`.
    pub account_id: String,
    /// The region, for the record.
    pub region: String,
    /// The routes that reach the function.
    pub routes: Vec<Route>,
    /// The maximum integration timeout of HTTP APIs, 30 s
    /// (<https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-quotas.html>);
    /// a field so tests can shrink it.
    pub integration_timeout: Duration,
    /// The payload quota, 10 MB (same page).
    pub max_payload_bytes: usize,
    /// The Lambda authorizer on some routes ([`crate::authorizers`]).
    pub authorizer: Option<HttpAuthorizer>,
    /// The CORS configuration: API Gateway then answers preflights itself.
    pub cors: Option<Cors>,
}

/// One route: a method (`ANY` or `GET`, …) and a resource path (`/`, `/{proxy+}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `ANY` or an HTTP method, upper case.
    pub method: String,
    /// The resource path, with `{name}` and greedy `{name+}` variables.
    pub path: String,
}

impl Route {
    /// The route key: `ANY /{proxy+}`.
    pub fn key(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

impl HttpApiSettings {
    /// The settings for `routes`, with AWS's limits and made-up ids (`api_id` looks like AWS's).
    pub fn new(routes: Vec<Route>) -> Self {
        Self {
            api_id: api_id(),
            account_id: "123456789012".to_owned(),
            region: "us-east-1".to_owned(),
            routes,
            integration_timeout: Duration::from_secs(30),
            max_payload_bytes: 10 * 1024 * 1024,
            authorizer: None,
            cors: None,
        }
    }

    /// The routes SAM wires to a function: every `Events` entry of `Type: HttpApi` of an
    /// `AWS::Serverless::Function`
    /// (<https://docs.aws.amazon.com/serverless-application-model/latest/developerguide/sam-property-function-httpapi.html>).
    pub fn from_template(template: &Template) -> anyhow::Result<Self> {
        let mut routes = Vec::new();
        for function in template.resources_of_type("AWS::Serverless::Function") {
            let Some(events) = template.properties(&function)["Events"].as_mapping() else {
                continue;
            };
            for event in events.values() {
                if event["Type"].as_str() != Some("HttpApi") {
                    continue;
                }
                let properties = &event["Properties"];
                let path = properties["Path"]
                    .as_str()
                    .with_context(|| format!("{function}: an HttpApi event without Path"))?;
                let method = properties["Method"].as_str().unwrap_or("ANY");
                let route = Route {
                    method: method.to_ascii_uppercase(),
                    path: path.to_owned(),
                };
                if !routes.contains(&route) {
                    routes.push(route);
                }
            }
        }
        anyhow::ensure!(!routes.is_empty(), "the template has no HttpApi event");
        Ok(Self::new(routes))
    }

    /// The route API Gateway selects: a full match before a greedy one, a method before `ANY`
    /// (<https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-develop-routes.html#http-api-develop-routes.evaluation>).
    fn select(&self, method: &str, path: &str) -> Option<(&Route, HashMap<String, String>)> {
        let mut candidates: Vec<_> = self
            .routes
            .iter()
            .filter(|route| route.method == "ANY" || route.method == method)
            .filter_map(|route| Some((route, match_path(&route.path, path)?)))
            .collect();
        candidates.sort_by_key(|(route, _)| (route.path.contains("+}"), route.method == "ANY"));
        candidates.into_iter().next()
    }
}

/// The path variables when `path` matches the resource path `pattern`.
fn match_path(pattern: &str, path: &str) -> Option<HashMap<String, String>> {
    let segments = |p: &str| -> Vec<String> {
        let p = p.strip_prefix('/').unwrap_or(p);
        if p.is_empty() {
            Vec::new()
        } else {
            p.split('/').map(str::to_owned).collect()
        }
    };
    let (pattern, path) = (segments(pattern), segments(path));
    let mut variables = HashMap::new();
    for (i, part) in pattern.iter().enumerate() {
        if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix("+}")) {
            // A greedy variable is last and catches one or more segments.
            let rest = path.get(i..).filter(|rest| !rest.is_empty())?;
            variables.insert(name.to_owned(), rest.join("/"));
            return Some(variables);
        }
        let segment = path.get(i)?;
        if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            variables.insert(name.to_owned(), segment.clone());
        } else if part != segment {
            return None;
        }
    }
    (pattern.len() == path.len()).then_some(variables)
}

/// An id in the style of API Gateway's request and connection ids: base64 of random bytes,
/// ending in `=`.
pub(crate) fn aws_id() -> String {
    let bytes: Vec<u8> = (0..11).map(|_| fastrand::u8(..)).collect();
    BASE64.encode(bytes)
}

/// An API id like AWS's: ten lower-case letters and digits.
pub(crate) fn api_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..10)
        .filter_map(|_| ALPHABET.get(fastrand::usize(..ALPHABET.len())))
        .map(|&b| char::from(b))
        .collect()
}

/// The query string's parameters, decoded, every value of a repeated one in order.
pub(crate) fn query_parameters(uri: &axum::http::Uri) -> HashMap<String, Vec<String>> {
    let mut parameters: HashMap<String, Vec<String>> = HashMap::new();
    if let Ok(Query(pairs)) = Query::<Vec<(String, String)>>::try_from_uri(uri) {
        for (key, value) in pairs {
            parameters.entry(key).or_default().push(value);
        }
    }
    parameters
}

/// `requestContext.time` and `requestTime`: `12/Mar/2020:19:03:58 +0000`.
pub(crate) fn request_time(now: SystemTime) -> (String, i64) {
    let now: chrono::DateTime<chrono::Utc> = now.into();
    (
        now.format("%d/%b/%Y:%H:%M:%S %z").to_string(),
        now.timestamp_millis(),
    )
}

struct Gateway {
    target: Arc<dyn Invoke>,
    settings: HttpApiSettings,
}

/// Serves the HTTP API on `listener` until `shutdown`, invoking `target` for every request.
pub async fn serve(
    listener: tokio::net::TcpListener,
    target: Arc<dyn Invoke>,
    settings: HttpApiSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let gateway = Arc::new(Gateway { target, settings });
    let app = Router::new().fallback(handle).with_state(gateway);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
    .context("the HTTP API stopped")
}

async fn handle(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let request_id = aws_id();
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut response = match &gateway.settings.cors {
        Some(cors) if is_preflight(&request) => preflight(cors, origin.as_deref()),
        _ => gateway.respond(peer, request, &request_id).await,
    };
    // With CORS configured, API Gateway adds the allowed origin to every response to a listed
    // origin (and ignores CORS headers from the integration).
    if let (Some(cors), Some(origin)) = (&gateway.settings.cors, origin)
        && cors.allows(&origin)
        && let Ok(value) = HeaderValue::from_str(&origin)
    {
        response
            .headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        response
            .headers_mut()
            .insert(header::VARY, HeaderValue::from_static("origin"));
    }
    // HTTP APIs name the request in every response.
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("apigw-requestid", value);
    }
    response
}

/// A CORS preflight: `OPTIONS` with an `Origin` and an `Access-Control-Request-Method`.
fn is_preflight(request: &Request) -> bool {
    request.method() == axum::http::Method::OPTIONS
        && request.headers().contains_key(header::ORIGIN)
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// API Gateway's answer to a preflight, from the CORS configuration alone (no route, no
/// authorizer, no function): 204, with the allowed methods and headers for a listed origin and
/// none for another, which the browser then refuses.
fn preflight(cors: &Cors, origin: Option<&str>) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    if origin.is_some_and(|origin| cors.allows(origin)) {
        let headers = response.headers_mut();
        let mut set = |name: HeaderName, values: &[String]| {
            if let Ok(value) = HeaderValue::from_str(&values.join(",")) {
                headers.insert(name, value);
            }
        };
        set(header::ACCESS_CONTROL_ALLOW_METHODS, &cors.allow_methods);
        set(header::ACCESS_CONTROL_ALLOW_HEADERS, &cors.allow_headers);
        if let Some(max_age) = cors.max_age {
            set(header::ACCESS_CONTROL_MAX_AGE, &[max_age.to_string()]);
        }
    }
    response
}

/// An answer of API Gateway's own: `{"message": "..."}`.
fn gateway_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "message": message }).to_string(),
    )
        .into_response()
}

impl Gateway {
    async fn respond(&self, peer: SocketAddr, request: Request, request_id: &str) -> Response {
        let limit = self.settings.max_payload_bytes;
        let (parts, body) = request.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        // Payload quota (https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-quotas.html);
        // over it, "413 Request Entity Too Large" (http-api-monitor.html names that error).
        if declared.is_some_and(|length| length > limit) {
            return gateway_error(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large");
        }
        // Chunked bodies have no declared length: the limit applies as they arrive.
        let Ok(body) = axum::body::to_bytes(body, limit).await else {
            return gateway_error(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large");
        };
        let path = parts.uri.path();
        let Some((route, path_parameters)) = self.settings.select(parts.method.as_str(), path)
        else {
            return gateway_error(StatusCode::NOT_FOUND, "Not Found");
        };
        let mut event = self.event(&parts, body, peer, route, path_parameters, request_id);
        if let Some(authorizer) = &self.settings.authorizer
            && authorizer.guards(&route.key())
        {
            let question = self.authorizer_event(&event, &parts, authorizer);
            match authorizer.decide(question, &parts.headers).await {
                Decision::Allow(context) => {
                    event["requestContext"]["authorizer"] = json!({ "lambda": context });
                }
                Decision::Unauthorized => {
                    return gateway_error(StatusCode::UNAUTHORIZED, "Unauthorized");
                }
                Decision::Forbidden => return gateway_error(StatusCode::FORBIDDEN, "Forbidden"),
                Decision::Failed => {
                    return gateway_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Internal Server Error",
                    );
                }
            }
        }
        let invocation =
            tokio::time::timeout(self.settings.integration_timeout, self.target.invoke(event))
                .await;
        match invocation {
            // The integration timeout: HTTP APIs answer 503 (REST APIs 504); no AWS page spells
            // out the body, this is the one clients report.
            Err(_) => gateway_error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
            // https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-troubleshooting-lambda.html
            Ok(Invocation::FunctionError(error)) => {
                tracing::warn!(%error, "the function failed");
                gateway_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
            }
            Ok(Invocation::Response(payload)) => response_of(payload).unwrap_or_else(|e| {
                tracing::warn!("the function's response is not one API Gateway takes: {e:#}");
                gateway_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
            }),
        }
    }

    /// What a Lambda authorizer of payload format 2.0 is sent: the request's event without
    /// its body, with `type`, `routeArn` and the identity sources' values.
    fn authorizer_event(
        &self,
        event: &Value,
        parts: &axum::http::request::Parts,
        authorizer: &HttpAuthorizer,
    ) -> Value {
        let mut question = event.clone();
        if let Some(object) = question.as_object_mut() {
            object.remove("body");
            object.remove("isBase64Encoded");
            object.insert("type".into(), json!("REQUEST"));
            let settings = &self.settings;
            object.insert(
                "routeArn".into(),
                json!(format!(
                    "arn:aws:execute-api:{}:{}:{}/$default/{}{}",
                    settings.region,
                    settings.account_id,
                    settings.api_id,
                    parts.method,
                    parts.uri.path()
                )),
            );
            let identity: Vec<&str> = authorizer
                .identity_headers
                .iter()
                .filter_map(|name| parts.headers.get(name)?.to_str().ok())
                .collect();
            if !identity.is_empty() {
                object.insert("identitySource".into(), json!(identity));
            }
        }
        question
    }

    /// The payload-format-2.0 event of one request.
    fn event(
        &self,
        parts: &axum::http::request::Parts,
        body: Bytes,
        peer: SocketAddr,
        route: &Route,
        path_parameters: HashMap<String, String>,
        request_id: &str,
    ) -> Value {
        let text = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
        let host = parts
            .headers
            .get(header::HOST)
            .map(text)
            .unwrap_or_default();
        let mut event = ApiGatewayV2httpRequest::default();
        event.version = Some("2.0".to_owned());
        event.route_key = Some(route.key());
        event.raw_path = Some(parts.uri.path().to_owned());
        event.raw_query_string = Some(parts.uri.query().unwrap_or_default().to_owned());
        // Cookie headers become `cookies`, one entry per cookie.
        let cookies: Vec<String> = parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .flat_map(|v| {
                text(v)
                    .split(';')
                    .map(|c| c.trim().to_owned())
                    .collect::<Vec<_>>()
            })
            .filter(|c| !c.is_empty())
            .collect();
        event.cookies = (!cookies.is_empty()).then_some(cookies);
        // Header names lower case (as `http` keeps them); repeated headers joined with commas.
        let mut headers = HeaderMap::new();
        for name in parts.headers.keys().filter(|n| *n != header::COOKIE) {
            let joined: Vec<String> = parts.headers.get_all(name).iter().map(text).collect();
            if let Ok(value) = HeaderValue::from_str(&joined.join(",")) {
                headers.insert(name.clone(), value);
            }
        }
        event.headers = headers;
        // Repeated parameters joined with commas (the QueryMap serializer does the joining).
        event.query_string_parameters = query_parameters(&parts.uri).into();
        event.path_parameters = path_parameters;

        let (time, time_epoch) = request_time(SystemTime::now());
        let context = &mut event.request_context;
        context.account_id = Some(self.settings.account_id.clone());
        context.apiid = Some(self.settings.api_id.clone());
        context.domain_prefix = Some(host.split('.').next().unwrap_or_default().to_owned());
        context.domain_name = Some(host);
        let mut http = ApiGatewayV2httpRequestContextHttpDescription::default();
        http.method = parts.method.clone();
        http.path = Some(parts.uri.path().to_owned());
        http.protocol = Some(format!("{:?}", parts.version));
        http.source_ip = Some(peer.ip().to_string());
        http.user_agent = parts.headers.get(header::USER_AGENT).map(text);
        context.http = http;
        context.request_id = Some(request_id.to_owned());
        context.route_key = Some(route.key());
        context.stage = Some("$default".to_owned());
        context.time = Some(time);
        context.time_epoch = time_epoch;

        if !body.is_empty() {
            let textual = is_text(parts.headers.get(header::CONTENT_TYPE));
            match std::str::from_utf8(&body) {
                Ok(body) if textual => event.body = Some(body.to_owned()),
                _ => {
                    event.body = Some(BASE64.encode(&body));
                    event.is_base64_encoded = true;
                }
            }
        }
        without_foreign_fields(serde_json::to_value(event).unwrap_or_default())
    }
}

/// Whether a body of this content type goes to the function as text (anything else, or a body
/// that is not UTF-8, goes base64-encoded with `isBase64Encoded`).
fn is_text(content_type: Option<&HeaderValue>) -> bool {
    let Some(content_type) = content_type.and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/json"
                | "application/graphql"
                | "application/graphql-response+json"
                | "application/javascript"
                | "application/xml"
                | "application/x-www-form-urlencoded"
        )
}

/// `ApiGatewayV2httpRequest` also models Lambda authorizer payloads; their fields are no part
/// of a 2.0 proxy event, and a top-level `httpMethod` would make readers such as lambda_http
/// take the event for a REST API (1.0) one.
fn without_foreign_fields(mut event: Value) -> Value {
    if let Some(object) = event.as_object_mut() {
        for key in [
            "type",
            "methodArn",
            "httpMethod",
            "identitySource",
            "authorizationToken",
            "resource",
        ] {
            object.remove(key);
        }
        if object
            .get("stageVariables")
            .is_some_and(|v| v.as_object().is_some_and(|o| o.is_empty()))
        {
            object.remove("stageVariables");
        }
    }
    event
}

/// The function's payload as the client's response, per format 2.0: an object with a
/// `statusCode` is a structured response; anything else is the body of a `200` with
/// `content-type: application/json` (API Gateway's inference).
fn response_of(payload: Value) -> anyhow::Result<Response> {
    let Some(status) = payload.get("statusCode") else {
        let body = match payload {
            Value::String(text) => text,
            other => other.to_string(),
        };
        return Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response());
    };
    let status = status
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .context("statusCode is not an HTTP status")?;
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Some(given) = payload.get("headers").and_then(Value::as_object) {
        for (name, value) in given {
            let name = HeaderName::from_bytes(name.as_bytes()).context("a header name")?;
            // The length and framing are the gateway's, not the function's.
            if [
                header::CONTENT_LENGTH,
                header::TRANSFER_ENCODING,
                header::CONNECTION,
            ]
            .contains(&name)
            {
                continue;
            }
            let value = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            headers.append(
                name,
                HeaderValue::from_str(&value).context("a header value")?,
            );
        }
    }
    for cookie in payload
        .get("cookies")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let cookie = cookie.as_str().context("a cookie that is not a string")?;
        headers.append(
            header::SET_COOKIE,
            HeaderValue::from_str(cookie).context("a cookie")?,
        );
    }
    let body = match payload.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(body)) if payload["isBase64Encoded"] == json!(true) => {
            BASE64.decode(body).context("body is not base64")?
        }
        Some(Value::String(body)) => body.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
    };
    *response.body_mut() = Body::from(body);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(key: &str) -> Route {
        let (method, path) = key.split_once(' ').unwrap_or_default();
        Route {
            method: method.to_owned(),
            path: path.to_owned(),
        }
    }

    /// The example of "Routing API requests" (http-api-develop-routes.html), without its
    /// `$default` route, which the template does not have.
    #[test]
    fn routes_are_selected_as_the_documented_example() {
        let settings = HttpApiSettings::new(
            [
                "GET /pets/dog/1",
                "GET /pets/dog/{id}",
                "GET /pets/{proxy+}",
                "ANY /{proxy+}",
            ]
            .map(route)
            .to_vec(),
        );
        let selected = |method: &str, path: &str| {
            settings
                .select(method, path)
                .map(|(route, variables)| (route.key(), variables))
        };
        let variables = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            selected("GET", "/pets/dog/1"),
            Some(("GET /pets/dog/1".into(), variables(&[])))
        );
        assert_eq!(
            selected("GET", "/pets/dog/2"),
            Some(("GET /pets/dog/{id}".into(), variables(&[("id", "2")])))
        );
        assert_eq!(
            selected("GET", "/pets/cat/1"),
            Some((
                "GET /pets/{proxy+}".into(),
                variables(&[("proxy", "cat/1")])
            ))
        );
        assert_eq!(
            selected("POST", "/pets/dog/1"),
            Some((
                "ANY /{proxy+}".into(),
                variables(&[("proxy", "pets/dog/1")])
            ))
        );
        // A greedy variable needs at least one segment: `/` is no match for `/{proxy+}`.
        assert_eq!(selected("GET", "/"), None);
    }

    #[test]
    fn ids_look_like_aws_ids() {
        assert!(aws_id().ends_with('='));
        assert_eq!(aws_id().len(), 16);
        let api = api_id();
        assert_eq!(api.len(), 10);
        assert!(
            api.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
    }
}
