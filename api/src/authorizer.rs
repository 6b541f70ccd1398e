//! The Lambda authorizer in front of both APIs on AWS: the HTTP API's routes and the WebSocket
//! API's `$connect` ask it, with the same rules, whether a request may read and whether it may
//! write.
//!
//! A request presents its credential as `Authorization: Bearer <credential>`; on the WebSocket
//! API, where a browser cannot set headers, also as the `token` query parameter of the URL it
//! connects to. The credential is the deployment's shared secret (generated into Secrets
//! Manager) or, when the deployer names an issuer, a JWT of that issuer and audience. A valid
//! secret may do everything; a valid JWT may read, and write only with the write scope. Without
//! a credential, a request may do what [`PublicAccess`] allows (nothing, by default). A
//! credential that is presented but not valid is refused outright rather than treated as none:
//! the client learns its credential is wrong instead of seeing less than it should.
//!
//! What the authorizer decided travels to the function behind it in the request context
//! (`requestContext.authorizer.lambda.write`), where the api function holds mutations to it
//! ([`granted_write`]).
//!
//! AWS documentation:
//! - HTTP API Lambda authorizers, payload format 2.0 and the simple response:
//!   <https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-lambda-authorizer.html>
//! - WebSocket API `$connect` authorizers answer with an IAM policy:
//!   <https://docs.aws.amazon.com/apigateway/latest/developerguide/apigateway-websocket-api-lambda-auth.html>
//! - How the HTTP API's own JWT authorizer validates a token (the rules [`JwtVerifier`] follows,
//!   so the two accept the same tokens):
//!   <https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-jwt-authorizer.html>

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerPolicy, ApiGatewayCustomAuthorizerRequestTypeRequest,
    ApiGatewayCustomAuthorizerResponse, ApiGatewayV2CustomAuthorizerSimpleResponse,
    ApiGatewayV2CustomAuthorizerV2Request,
};
use aws_lambda_events::iam::{IamPolicyEffect, IamPolicyStatement};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::sync::Mutex;

/// What a request without a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PublicAccess {
    /// Nothing: every request needs the credential (the default).
    None,
    /// Queries and subscriptions; writes need the credential.
    Read,
    /// Everything, writes included: a public demo, chosen explicitly.
    All,
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Queries and subscriptions.
    pub read: bool,
    /// Mutations.
    pub write: bool,
}

impl Verdict {
    const NOTHING: Self = Self {
        read: false,
        write: false,
    };
}

/// Why a credential was not accepted (logged; the client only learns it was refused).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The JWT did not verify: signature, expiry, issuer, audience, algorithm or key.
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// The secret was not the deployment's.
    #[error("wrong secret")]
    WrongSecret,
    /// The issuer's keys could not be fetched.
    #[error("the issuer's keys could not be fetched: {0}")]
    Keys(String),
}

/// Checks a credential.
#[derive(Debug)]
pub enum Verifier {
    /// The deployment's shared secret: whoever has it may read and write.
    Secret(SecretString),
    /// JWTs of one issuer and audience; writing needs the write scope.
    Jwt(JwtVerifier),
}

impl Verifier {
    async fn verify(&self, credential: &str) -> Result<Verdict, Refusal> {
        match self {
            Self::Secret(secret) => {
                let same: bool = secret
                    .expose_secret()
                    .as_bytes()
                    .ct_eq(credential.as_bytes())
                    .into();
                if same {
                    Ok(Verdict {
                        read: true,
                        write: true,
                    })
                } else {
                    Err(Refusal::WrongSecret)
                }
            }
            Self::Jwt(jwt) => jwt.verify(credential).await,
        }
    }
}

/// The authorizer: a [`Verifier`] and what the public may do.
#[derive(Debug)]
pub struct Authorizer {
    verifier: Verifier,
    public: PublicAccess,
}

impl Authorizer {
    /// An authorizer accepting `verifier`'s credentials, and `public` without one.
    pub fn new(verifier: Verifier, public: PublicAccess) -> Self {
        Self { verifier, public }
    }

    /// What a request presenting `credential` (or none) may do.
    pub async fn decide(&self, credential: Option<&str>) -> Verdict {
        let Some(credential) = credential else {
            return Verdict {
                read: self.public != PublicAccess::None,
                write: self.public == PublicAccess::All,
            };
        };
        match self.verifier.verify(credential).await {
            Ok(verdict) => Verdict {
                // The public's rights are a floor: a token without the write scope can still
                // write where everyone may.
                read: verdict.read || self.public != PublicAccess::None,
                write: verdict.write || self.public == PublicAccess::All,
            },
            Err(refusal) => {
                tracing::info!(%refusal, "credential refused");
                Verdict::NOTHING
            }
        }
    }

    /// An HTTP API request (payload format 2.0): authorized when it may read, with what it may
    /// do in the context. API Gateway answers 403 to a request that is not authorized.
    pub async fn http(
        &self,
        request: &ApiGatewayV2CustomAuthorizerV2Request,
    ) -> ApiGatewayV2CustomAuthorizerSimpleResponse {
        let credential = bearer(header(&request.headers, "authorization"));
        let verdict = self.decide(credential).await;
        let mut response = ApiGatewayV2CustomAuthorizerSimpleResponse::default();
        response.is_authorized = verdict.read;
        response.context = json!({ "write": verdict.write });
        response
    }

    /// A WebSocket API `$connect` (REQUEST authorizer): an IAM policy allowing or denying the
    /// connection. API Gateway refuses a denied `$connect` with 403.
    pub async fn websocket(
        &self,
        request: &ApiGatewayCustomAuthorizerRequestTypeRequest,
    ) -> ApiGatewayCustomAuthorizerResponse {
        let credential = bearer(header(&request.headers, "authorization")).or_else(|| {
            request
                .query_string_parameters
                .first("token")
                .filter(|token| !token.is_empty())
        });
        let verdict = self.decide(credential).await;
        let mut statement = IamPolicyStatement::default();
        statement.action = vec!["execute-api:Invoke".to_owned()];
        statement.effect = if verdict.read {
            IamPolicyEffect::Allow
        } else {
            IamPolicyEffect::Deny
        };
        statement.resource = request.method_arn.iter().cloned().collect();
        let mut policy = ApiGatewayCustomAuthorizerPolicy::default();
        policy.version = Some("2012-10-17".to_owned());
        policy.statement = vec![statement];
        let mut response = ApiGatewayCustomAuthorizerResponse::default();
        response.principal_id = Some(if credential.is_some() && verdict.read {
            "credential".to_owned()
        } else {
            "anonymous".to_owned()
        });
        response.policy_document = policy;
        response.context = json!({ "write": verdict.write });
        response
    }

    /// Answers either kind of request: an HTTP API's (it has `"version": "2.0"`) or a
    /// WebSocket `$connect`'s (it has a `methodArn`).
    pub async fn handle(&self, event: Value) -> Result<Value, serde_json::Error> {
        if event.get("version").and_then(Value::as_str) == Some("2.0") {
            let request = serde_json::from_value(event)?;
            serde_json::to_value(self.http(&request).await)
        } else {
            let request = serde_json::from_value(event)?;
            serde_json::to_value(self.websocket(&request).await)
        }
    }
}

fn header<'a>(headers: &'a aws_lambda_events::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// The credential of an `Authorization: Bearer <credential>` value.
fn bearer(value: Option<&str>) -> Option<&str> {
    let (scheme, credential) = value?.trim().split_once(' ')?;
    let credential = credential.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty()).then_some(credential)
}

/// Whether the authorizer in front of this request granted it writes: its
/// `requestContext.authorizer.lambda.write`.
pub fn granted_write(authorizer: &HashMap<String, Value>) -> bool {
    authorizer.get("write").and_then(Value::as_bool) == Some(true)
}

/// The signing algorithms accepted: those of the OIDC providers API Gateway's JWT authorizer
/// works with (it supports RSA-based algorithms only), never `none` and never HMAC (a shared
/// key would let whoever verifies also sign).
const ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];

/// How long fetched keys are kept, and the least time between fetches when a token names a key
/// id that is not among them (the issuer rotated its keys, or the token is forged).
const KEYS_LIFETIME: Duration = Duration::from_secs(60 * 60);
const REFETCH_AFTER: Duration = Duration::from_secs(60);

/// Verifies JWTs as API Gateway's JWT authorizer does: the signature against the issuer's
/// published keys (`jwks_uri` of `<issuer>/.well-known/openid-configuration`), `iss`, `exp`,
/// `nbf`, and the audience in `aud` or, for access tokens without one (Cognito's), `client_id`.
/// Writing needs the write scope in `scope` (space-separated) or `scp` (a list).
#[derive(Debug)]
pub struct JwtVerifier {
    issuer: String,
    audience: String,
    write_scope: String,
    http: reqwest::Client,
    keys: Mutex<Option<(JwkSet, Instant)>>,
}

#[derive(Deserialize)]
struct Discovery {
    jwks_uri: String,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl JwtVerifier {
    /// Tokens of `issuer` for `audience`; `write_scope` grants writes.
    pub fn new(issuer: String, audience: String, write_scope: String) -> Self {
        Self {
            issuer: issuer.trim_end_matches('/').to_owned(),
            audience,
            write_scope,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()
                .unwrap_or_default(),
            keys: Mutex::new(None),
        }
    }

    async fn verify(&self, token: &str) -> Result<Verdict, Refusal> {
        let invalid = |e: jsonwebtoken::errors::Error| Refusal::InvalidToken(e.to_string());
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(Refusal::InvalidToken(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| Refusal::InvalidToken("the token names no key (kid)".into()))?;
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(header.alg);
        validation.algorithms = ALGORITHMS.to_vec();
        validation.set_issuer(&[self.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss"]);
        validation.validate_nbf = true;
        validation.validate_aud = false; // aud or client_id: checked below
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(invalid)?
            .claims;
        let audience_matches = match (&claims.aud, &claims.client_id) {
            (Some(Audience::One(aud)), _) => *aud == self.audience,
            (Some(Audience::Many(auds)), _) => auds.contains(&self.audience),
            (None, Some(client_id)) => *client_id == self.audience,
            (None, None) => false,
        };
        if !audience_matches {
            return Err(Refusal::InvalidToken(
                "neither aud nor client_id is the audience".into(),
            ));
        }
        let write = claims
            .scope
            .iter()
            .flat_map(|scope| scope.split_whitespace())
            .chain(claims.scp.iter().flatten().map(String::as_str))
            .any(|scope| scope == self.write_scope);
        Ok(Verdict { read: true, write })
    }

    /// The key `kid`, from the cached keys or, when they are old or lack it, fetched anew.
    async fn key(&self, kid: &str) -> Result<DecodingKey, Refusal> {
        let mut keys = self.keys.lock().await;
        let fresh = |fetched: &Instant, lifetime| fetched.elapsed() < lifetime;
        let cached = keys.as_ref().and_then(|(set, fetched)| {
            fresh(fetched, KEYS_LIFETIME)
                .then(|| set.find(kid))
                .flatten()
                .cloned()
        });
        let jwk = match cached {
            Some(jwk) => jwk,
            None if keys
                .as_ref()
                .is_some_and(|(_, fetched)| fresh(fetched, REFETCH_AFTER)) =>
            {
                return Err(Refusal::InvalidToken(format!("no key {kid}")));
            }
            None => {
                let set = self.fetch_keys().await?;
                let jwk = set.find(kid).cloned();
                *keys = Some((set, Instant::now()));
                jwk.ok_or_else(|| Refusal::InvalidToken(format!("no key {kid}")))?
            }
        };
        DecodingKey::from_jwk(&jwk).map_err(|e| Refusal::Keys(e.to_string()))
    }

    async fn fetch_keys(&self) -> Result<JwkSet, Refusal> {
        let keys = |e: reqwest::Error| Refusal::Keys(e.to_string());
        let discovery: Discovery = self
            .http
            .get(format!("{}/.well-known/openid-configuration", self.issuer))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(keys)?
            .json()
            .await
            .map_err(keys)?;
        self.http
            .get(discovery.jwks_uri)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(keys)?
            .json()
            .await
            .map_err(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authorizer(public: PublicAccess) -> Authorizer {
        Authorizer::new(Verifier::Secret(SecretString::from("s3cret")), public)
    }

    #[tokio::test]
    async fn the_secret_grants_everything_and_nothing_else_does_by_default() {
        let private = authorizer(PublicAccess::None);
        let all = Verdict {
            read: true,
            write: true,
        };
        assert_eq!(private.decide(Some("s3cret")).await, all);
        assert_eq!(private.decide(Some("s3cre")).await, Verdict::NOTHING);
        assert_eq!(private.decide(Some("s3cret ")).await, Verdict::NOTHING);
        assert_eq!(private.decide(None).await, Verdict::NOTHING);
    }

    #[tokio::test]
    async fn public_access_is_what_anonymous_requests_get_but_a_wrong_credential_gets_nothing() {
        let read = authorizer(PublicAccess::Read);
        assert_eq!(
            read.decide(None).await,
            Verdict {
                read: true,
                write: false
            }
        );
        assert_eq!(read.decide(Some("guess")).await, Verdict::NOTHING);
        let all = authorizer(PublicAccess::All);
        assert_eq!(
            all.decide(None).await,
            Verdict {
                read: true,
                write: true
            }
        );
    }

    #[test]
    fn bearer_credentials_are_read_from_the_header() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some(" bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }

    #[tokio::test]
    async fn the_http_answer_is_a_simple_response_and_the_websocket_one_a_policy() {
        let private = authorizer(PublicAccess::None);
        let http = json!({
            "version": "2.0", "type": "REQUEST",
            "routeArn": "arn:aws:execute-api:us-east-1:123456789012:abc/$default/POST/graphql",
            "routeKey": "ANY /{proxy+}", "rawPath": "/graphql", "rawQueryString": "",
            "headers": {"authorization": "Bearer s3cret"},
            "requestContext": {"http": {"method": "POST", "path": "/graphql"}}
        });
        let answer = private.handle(http).await.unwrap();
        assert_eq!(answer["isAuthorized"], true, "{answer}");
        assert_eq!(answer["context"]["write"], true, "{answer}");

        let arn = "arn:aws:execute-api:us-east-1:123456789012:ws/live/$connect";
        let connect = |query: Value| {
            json!({
                "type": "REQUEST", "methodArn": arn, "headers": {},
                "queryStringParameters": query,
                "requestContext": {"routeKey": "$connect", "eventType": "CONNECT"}
            })
        };
        let allowed = private
            .handle(connect(json!({"token": "s3cret"})))
            .await
            .unwrap();
        assert_eq!(allowed["policyDocument"]["Statement"][0]["Effect"], "Allow");
        assert_eq!(
            allowed["policyDocument"]["Statement"][0]["Resource"][0],
            arn
        );
        let denied = private.handle(connect(json!({}))).await.unwrap();
        assert_eq!(
            denied["policyDocument"]["Statement"][0]["Effect"], "Deny",
            "{denied}"
        );
        assert_eq!(denied["principalId"], "anonymous");
    }
}
