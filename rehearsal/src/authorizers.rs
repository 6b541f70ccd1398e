//! What API Gateway asks before a request reaches a function: the Lambda authorizers the
//! template puts on the HTTP API's routes and the WebSocket API's `$connect`, and the HTTP API's
//! CORS configuration, each read from `template.yaml` after its conditions.
//!
//! - HTTP API Lambda authorizers (payload format 2.0, simple responses, identity sources,
//!   caching): <https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-lambda-authorizer.html>
//! - WebSocket `$connect` REQUEST authorizers (IAM policy responses):
//!   <https://docs.aws.amazon.com/apigateway/latest/developerguide/apigateway-websocket-api-lambda-auth.html>
//! - HTTP API CORS, answered by API Gateway itself:
//!   <https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-cors.html>

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;

use crate::lambda::{Invocation, Invoke};
use crate::resources::Created;
use crate::template::{Names, Template};

/// A function API Gateway asks, by logical id, with the handle that invokes it.
#[derive(Clone)]
pub struct AuthorizerFunction {
    /// The function's logical id.
    pub logical_id: String,
    /// Invokes it.
    pub target: Arc<dyn Invoke>,
}

impl std::fmt::Debug for AuthorizerFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizerFunction")
            .field("logical_id", &self.logical_id)
            .finish_non_exhaustive()
    }
}

/// The Lambda authorizer of some of an HTTP API's routes.
#[derive(Debug, Clone)]
pub struct HttpAuthorizer {
    /// The function.
    pub function: AuthorizerFunction,
    /// The route keys it guards (`POST /{proxy+}`).
    pub routes: Vec<String>,
    /// The request headers it needs (`$request.header.Authorization` → `authorization`): a
    /// request lacking one gets 401 without the function being asked.
    pub identity_headers: Vec<String>,
    /// How long an answer is cached, by the identity sources' values (0: not cached).
    pub ttl: Duration,
    cache: Arc<Mutex<HashMap<Vec<String>, Cached>>>,
}

/// A cached answer: when it was given, and the authorizer's context (`None`: it refused).
type Cached = (Instant, Option<Value>);

/// What the HTTP API's authorizer decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Go on, with this context for `requestContext.authorizer.lambda`.
    Allow(Value),
    /// 401: an identity source is missing.
    Unauthorized,
    /// 403: the authorizer said no.
    Forbidden,
    /// 500: the authorizer failed or answered something API Gateway cannot read.
    Failed,
}

impl HttpAuthorizer {
    /// An authorizer of `routes` that needs `identity_headers` (lower case) and caches its
    /// answers for `ttl`.
    pub fn new(
        function: AuthorizerFunction,
        routes: Vec<String>,
        identity_headers: Vec<String>,
        ttl: Duration,
    ) -> Self {
        Self {
            function,
            routes,
            identity_headers,
            ttl,
            cache: Arc::default(),
        }
    }

    /// Whether it guards `route_key`.
    pub fn guards(&self, route_key: &str) -> bool {
        self.routes.iter().any(|r| r == route_key)
    }

    /// Asks the function about `event` (the authorizer payload; `headers` are the request's),
    /// or answers from the cache.
    pub async fn decide(&self, event: Value, headers: &axum::http::HeaderMap) -> Decision {
        let mut identity = Vec::new();
        for name in &self.identity_headers {
            match headers.get(name).and_then(|v| v.to_str().ok()) {
                Some(value) if !value.is_empty() => identity.push(value.to_owned()),
                _ => return Decision::Unauthorized,
            }
        }
        let cacheable = !self.ttl.is_zero() && !identity.is_empty();
        if cacheable {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((at, answer)) = cache.get(&identity)
                && at.elapsed() < self.ttl
            {
                return answer.clone().map_or(Decision::Forbidden, Decision::Allow);
            }
        }
        let answer = match self.function.target.invoke(event).await {
            Invocation::FunctionError(error) => {
                tracing::warn!(%error, "the authorizer failed");
                return Decision::Failed;
            }
            Invocation::Response(response) => match response.get("isAuthorized") {
                Some(Value::Bool(true)) => Some(
                    response
                        .get("context")
                        .cloned()
                        .unwrap_or(Value::Object(Default::default())),
                ),
                Some(Value::Bool(false)) => None,
                _ => {
                    tracing::warn!(%response, "the authorizer's answer is not a simple response");
                    return Decision::Failed;
                }
            },
        };
        if cacheable {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.insert(identity, (Instant::now(), answer.clone()));
        }
        answer.map_or(Decision::Forbidden, Decision::Allow)
    }
}

/// An HTTP API's CORS configuration (`x-amazon-apigateway-cors`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cors {
    /// `allowOrigins`.
    pub allow_origins: Vec<String>,
    /// `allowMethods`.
    pub allow_methods: Vec<String>,
    /// `allowHeaders`.
    pub allow_headers: Vec<String>,
    /// `maxAge`, seconds.
    pub max_age: Option<u64>,
}

impl Cors {
    /// Whether pages of `origin` may call the API.
    pub fn allows(&self, origin: &str) -> bool {
        self.allow_origins.iter().any(|o| o == "*" || o == origin)
    }
}

/// The WebSocket API's `$connect` authorizer.
#[derive(Debug, Clone)]
pub struct ConnectAuthorizer {
    /// The function.
    pub function: AuthorizerFunction,
}

/// A list the template gives as a list, or as a comma-separated `!Ref` to a
/// `CommaDelimitedList` parameter (the rehearsal keeps parameters as text).
fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .flat_map(|s| s.split(','))
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        Value::String(s) => s
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

/// The function an `authorizerUri` (`arn:...:lambda:path/2015-03-31/functions/<arn>/invocations`)
/// names.
fn function_of(
    uri: &str,
    created: &Created,
    functions: &HashMap<String, Arc<dyn Invoke>>,
) -> anyhow::Result<AuthorizerFunction> {
    let (logical_id, _) = created
        .functions
        .iter()
        .find(|(_, function)| uri.contains(&format!("/functions/{}/", function.arn)))
        .with_context(|| format!("the authorizer URI {uri} names no function of the template"))?;
    let target = functions
        .get(logical_id)
        .cloned()
        .with_context(|| format!("no running function {logical_id}"))?;
    Ok(AuthorizerFunction {
        logical_id: logical_id.clone(),
        target,
    })
}

/// The HTTP API's OpenAPI body, resolved.
fn definition(template: &Template, names: &Names) -> anyhow::Result<Option<Value>> {
    let Some(api) = template
        .resources_of_type("AWS::Serverless::HttpApi")
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let body = &template.properties(&api)["DefinitionBody"];
    if body.is_null() {
        return Ok(None);
    }
    Ok(Some(template.resolve(body, names)?))
}

/// The Lambda authorizer on the HTTP API's routes, if any route has one (its `security` names a
/// `securitySchemes` entry with an `x-amazon-apigateway-authorizer` of type `request`).
pub fn http_authorizer(
    template: &Template,
    created: &Created,
    functions: &HashMap<String, Arc<dyn Invoke>>,
) -> anyhow::Result<Option<HttpAuthorizer>> {
    let Some(body) = definition(template, created.names())? else {
        return Ok(None);
    };
    let mut guarded: Vec<(String, String)> = Vec::new();
    for (path, methods) in body["paths"].as_object().into_iter().flatten() {
        for (method, operation) in methods.as_object().into_iter().flatten() {
            let method = match method.as_str() {
                "x-amazon-apigateway-any-method" => "ANY".to_owned(),
                other => other.to_ascii_uppercase(),
            };
            for requirement in operation["security"].as_array().into_iter().flatten() {
                for scheme in requirement
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                {
                    guarded.push((scheme.clone(), format!("{method} {path}")));
                }
            }
        }
    }
    let Some((scheme, _)) = guarded.first().cloned() else {
        return Ok(None);
    };
    anyhow::ensure!(
        guarded.iter().all(|(s, _)| *s == scheme),
        "the rehearsal emulates one HTTP API authorizer"
    );
    let authorizer =
        &body["components"]["securitySchemes"][&scheme]["x-amazon-apigateway-authorizer"];
    anyhow::ensure!(
        authorizer["type"].as_str() == Some("request"),
        "{scheme}: the rehearsal emulates Lambda (request) authorizers only"
    );
    anyhow::ensure!(
        authorizer["authorizerPayloadFormatVersion"].as_str() == Some("2.0")
            && authorizer["enableSimpleResponses"] == Value::Bool(true),
        "{scheme}: the rehearsal emulates payload format 2.0 with simple responses"
    );
    let uri = authorizer["authorizerUri"]
        .as_str()
        .with_context(|| format!("{scheme} has no authorizerUri"))?;
    let identity_headers = strings(&authorizer["identitySource"])
        .iter()
        .map(|source| {
            source
                .strip_prefix("$request.header.")
                .map(str::to_ascii_lowercase)
                .with_context(|| {
                    format!("the rehearsal reads header identity sources, not {source}")
                })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The default TTL is 300 s when identity sources are given (http-api-lambda-authorizer.html).
    let ttl = authorizer["authorizerResultTtlInSeconds"]
        .as_u64()
        .or_else(|| {
            authorizer["authorizerResultTtlInSeconds"]
                .as_str()?
                .parse()
                .ok()
        })
        .unwrap_or(if identity_headers.is_empty() { 0 } else { 300 });
    Ok(Some(HttpAuthorizer::new(
        function_of(uri, created, functions)?,
        guarded.into_iter().map(|(_, route)| route).collect(),
        identity_headers,
        Duration::from_secs(ttl),
    )))
}

/// The HTTP API's CORS configuration, when its body has one.
pub fn http_cors(template: &Template, names: &Names) -> anyhow::Result<Option<Cors>> {
    let Some(body) = definition(template, names)? else {
        return Ok(None);
    };
    let cors = &body["x-amazon-apigateway-cors"];
    if !cors.is_object() {
        return Ok(None);
    }
    Ok(Some(Cors {
        allow_origins: strings(&cors["allowOrigins"]),
        allow_methods: strings(&cors["allowMethods"]),
        allow_headers: strings(&cors["allowHeaders"]),
        max_age: cors["maxAge"].as_u64(),
    }))
}

/// The authorizer of the WebSocket API's `$connect` route, when its `AuthorizationType` is
/// `CUSTOM`.
pub fn connect_authorizer(
    template: &Template,
    created: &Created,
    functions: &HashMap<String, Arc<dyn Invoke>>,
) -> anyhow::Result<Option<ConnectAuthorizer>> {
    let names = created.names();
    let Some(route) = template
        .resources_of_type("AWS::ApiGatewayV2::Route")
        .into_iter()
        .find(|id| template.properties(id)["RouteKey"].as_str() == Some("$connect"))
    else {
        return Ok(None);
    };
    // Only the keys read here are resolved: the others name resources the rehearsal emulates
    // rather than creates (the integration).
    let property = |id: &str, key: &str| template.resolve(&template.properties(id)[key], names);
    match property(&route, "AuthorizationType")?.as_str() {
        None | Some("NONE") => return Ok(None),
        Some("CUSTOM") => {}
        Some(other) => anyhow::bail!("the rehearsal does not emulate {other} authorization"),
    }
    // AuthorizerId is a !Ref to the authorizer, which the stack names by its logical id.
    let authorizer = property(&route, "AuthorizerId")?;
    let authorizer = authorizer
        .as_str()
        .with_context(|| format!("{route}: CUSTOM authorization without an AuthorizerId"))?;
    anyhow::ensure!(
        property(authorizer, "AuthorizerType")?.as_str() == Some("REQUEST"),
        "{authorizer}: the rehearsal emulates REQUEST authorizers"
    );
    let uri = property(authorizer, "AuthorizerUri")?;
    let uri = uri
        .as_str()
        .with_context(|| format!("{authorizer} has no AuthorizerUri"))?;
    Ok(Some(ConnectAuthorizer {
        function: function_of(uri, created, functions)?,
    }))
}
