//! The authorizer's JWT checks against a real issuer on 127.0.0.1: OpenID discovery, its
//! published keys, and tokens signed with its key (tests/fixtures/jwt), as API Gateway's JWT
//! authorizer would take or refuse them
//! (<https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-jwt-authorizer.html>).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use api::authorizer::{Authorizer, JwtVerifier, PublicAccess, Verdict, Verifier};
use axum::Json;
use axum::routing::get;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const AUDIENCE: &str = "outboxdemo-client";
const WRITE: &str = "outboxdemo/write";

/// An issuer on 127.0.0.1: its URL, and how often its keys were fetched.
async fn issuer() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let fetches = Arc::new(AtomicUsize::new(0));
    let jwks: Value =
        serde_json::from_str(include_str!("fixtures/jwt/jwks.json")).expect("the fixture is JSON");
    let discovery = json!({ "issuer": url, "jwks_uri": format!("{url}/keys") });
    let counted = fetches.clone();
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { Json(discovery) }),
        )
        .route(
            "/keys",
            get(move || async move {
                counted.fetch_add(1, Ordering::SeqCst);
                Json(jwks)
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, fetches)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(claims: &Value, kid: &str) -> String {
    let key = EncodingKey::from_rsa_pem(include_bytes!("fixtures/jwt/test-issuer.pem")).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

fn claims(issuer: &str, extra: Value) -> Value {
    let mut claims = json!({
        "iss": issuer, "sub": "reader", "aud": AUDIENCE,
        "iat": now(), "exp": now() + 300,
    });
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            if value.is_null() {
                claims.remove(key);
            } else {
                claims.insert(key.clone(), value.clone());
            }
        }
    }
    claims
}

fn authorizer(issuer: &str, public: PublicAccess) -> Authorizer {
    let verifier = JwtVerifier::new(issuer.to_owned(), AUDIENCE.to_owned(), WRITE.to_owned());
    Authorizer::new(Verifier::Jwt(verifier), public)
}

const READ: Verdict = Verdict {
    read: true,
    write: false,
};
const ALL: Verdict = Verdict {
    read: true,
    write: true,
};
const NOTHING: Verdict = Verdict {
    read: false,
    write: false,
};

#[tokio::test]
async fn a_token_of_the_issuer_reads_and_only_the_write_scope_writes() {
    let (url, _) = issuer().await;
    let authorizer = authorizer(&url, PublicAccess::None);
    let reader = sign(
        &claims(&url, json!({"scope": "openid profile"})),
        "test-key-1",
    );
    assert_eq!(authorizer.decide(Some(&reader)).await, READ);
    let writer = sign(
        &claims(&url, json!({"scope": format!("openid {WRITE}")})),
        "test-key-1",
    );
    assert_eq!(authorizer.decide(Some(&writer)).await, ALL);
    // Okta and Entra ID list scopes in `scp`.
    let listed = sign(&claims(&url, json!({"scp": [WRITE]})), "test-key-1");
    assert_eq!(authorizer.decide(Some(&listed)).await, ALL);
    // A Cognito access token has no aud, and names the app client in client_id.
    let cognito = sign(
        &claims(
            &url,
            json!({"aud": null, "client_id": AUDIENCE, "scope": WRITE}),
        ),
        "test-key-1",
    );
    assert_eq!(authorizer.decide(Some(&cognito)).await, ALL);
    // A write scope in another claim, or a longer scope containing it, is not the write scope.
    let lookalike = sign(
        &claims(
            &url,
            json!({"scope": format!("{WRITE}:all"), "groups": [WRITE]}),
        ),
        "test-key-1",
    );
    assert_eq!(authorizer.decide(Some(&lookalike)).await, READ);
}

#[tokio::test]
async fn tokens_api_gateway_would_refuse_are_refused() {
    let (url, _) = issuer().await;
    let authorizer = authorizer(&url, PublicAccess::Read);
    let cases = [
        ("expired", claims(&url, json!({"exp": now() - 120}))),
        ("not yet valid", claims(&url, json!({"nbf": now() + 600}))),
        (
            "another audience",
            claims(&url, json!({"aud": "someone-else"})),
        ),
        (
            "another client",
            claims(&url, json!({"aud": null, "client_id": "x"})),
        ),
        ("no audience", claims(&url, json!({"aud": null}))),
        ("another issuer", claims(&format!("{url}/other"), json!({}))),
        ("no expiry", claims(&url, json!({"exp": null}))),
    ];
    for (what, claims) in cases {
        let token = sign(&claims, "test-key-1");
        // Refused outright, even where anonymous requests may read.
        assert_eq!(authorizer.decide(Some(&token)).await, NOTHING, "{what}");
    }
    let good = sign(&claims(&url, json!({"scope": WRITE})), "test-key-1");
    let (head, rest) = good.split_once('.').unwrap();
    let (body, signature) = rest.split_once('.').unwrap();
    let forged_body = base64_url(&claims(&url, json!({"sub": "admin", "scope": WRITE})));
    let forged = format!("{head}.{forged_body}.{signature}");
    assert_eq!(
        authorizer.decide(Some(&forged)).await,
        NOTHING,
        "a body not signed"
    );
    let unsigned = format!(
        "{}.{body}.",
        base64_url(&json!({"alg": "none", "kid": "test-key-1"}))
    );
    assert_eq!(
        authorizer.decide(Some(&unsigned)).await,
        NOTHING,
        "alg none"
    );
    let hmac = jsonwebtoken::encode(
        &Header {
            kid: Some("test-key-1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &claims(&url, json!({"scope": WRITE})),
        // An attacker's guess at a shared key: the public key material itself.
        &EncodingKey::from_secret(include_bytes!("fixtures/jwt/jwks.json").as_slice()).unwrap(),
    )
    .unwrap();
    assert_eq!(authorizer.decide(Some(&hmac)).await, NOTHING, "HMAC");
    assert_eq!(authorizer.decide(Some("not-a-jwt")).await, NOTHING);
    assert_eq!(
        authorizer.decide(None).await,
        READ,
        "anonymous reads stay public"
    );
}

#[tokio::test]
async fn keys_are_fetched_once_and_an_unknown_key_does_not_make_every_request_fetch() {
    let (url, fetches) = issuer().await;
    let authorizer = authorizer(&url, PublicAccess::None);
    let token = sign(&claims(&url, json!({})), "test-key-1");
    for _ in 0..3 {
        assert_eq!(authorizer.decide(Some(&token)).await, READ);
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    let unknown = sign(&claims(&url, json!({})), "rotated-key");
    for _ in 0..5 {
        assert_eq!(authorizer.decide(Some(&unknown)).await, NOTHING);
    }
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "keys fetched a minute ago are not fetched again for an unknown kid"
    );
}

#[tokio::test]
async fn an_issuer_that_cannot_be_reached_lets_no_token_through() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let authorizer = authorizer(&url, PublicAccess::None);
    let token = sign(&claims(&url, json!({"scope": WRITE})), "test-key-1");
    assert_eq!(authorizer.decide(Some(&token)).await, NOTHING);
}

#[tokio::test]
async fn through_api_gateways_payloads_a_reader_gets_in_but_may_not_write() {
    let (url, _) = issuer().await;
    let authorizer = authorizer(&url, PublicAccess::None);
    let reader = sign(&claims(&url, json!({})), "test-key-1");
    let http = json!({
        "version": "2.0", "type": "REQUEST",
        "routeArn": "arn:aws:execute-api:us-east-1:123456789012:abc/$default/POST/graphql",
        "routeKey": "POST /{proxy+}", "rawPath": "/graphql", "rawQueryString": "",
        "headers": {"authorization": format!("Bearer {reader}")},
        "requestContext": {"http": {"method": "POST", "path": "/graphql"}}
    });
    let answer = authorizer.handle(http).await.unwrap();
    assert_eq!(answer["isAuthorized"], true, "{answer}");
    assert_eq!(answer["context"]["write"], false, "{answer}");
    let connect = json!({
        "type": "REQUEST",
        "methodArn": "arn:aws:execute-api:us-east-1:123456789012:ws/live/$connect",
        "headers": {}, "queryStringParameters": {"token": reader},
        "requestContext": {"routeKey": "$connect", "eventType": "CONNECT"}
    });
    let answer = authorizer.handle(connect).await.unwrap();
    assert_eq!(
        answer["policyDocument"]["Statement"][0]["Effect"], "Allow",
        "{answer}"
    );
}

fn base64_url(value: &Value) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}
