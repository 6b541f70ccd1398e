//! What the API allows, and to whom: limits against abuse, switches for production, and the
//! credential mutations and subscriptions may require.

use std::time::Duration;

use async_graphql::{Context, Guard};

use crate::error::ApiError;

/// The API's configuration. The defaults suit local play: limits on, no credential required,
/// introspection and GraphiQL on.
#[derive(Clone)]
pub struct ApiOptions {
    /// How often idle subscription sockets are pinged.
    pub keepalive: Duration,
    /// The deepest selection a document may have.
    pub max_depth: usize,
    /// The most a document may cost (every field counts 1, a connection's page size multiplies).
    pub max_complexity: usize,
    /// The largest request body, in bytes.
    pub max_body_bytes: usize,
    /// The most subscriptions one WebSocket connection may hold at once.
    pub max_subscriptions_per_connection: usize,
    /// Whether `__schema` / `__type` introspection is answered.
    pub introspection: bool,
    /// Whether GraphiQL is served at `/`.
    pub graphiql: bool,
    /// When set, mutations and subscriptions require `Authorization: Bearer <token>` (HTTP) or
    /// `{"authorization": "Bearer <token>"}` in the `connection_init` payload (WebSocket).
    pub auth_token: Option<String>,
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            keepalive: Duration::from_secs(15),
            max_depth: 12,
            max_complexity: 2_000,
            max_body_bytes: 64 * 1024,
            max_subscriptions_per_connection: 20,
            introspection: true,
            graphiql: true,
            auth_token: None,
        }
    }
}

impl std::fmt::Debug for ApiOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiOptions")
            .field("keepalive", &self.keepalive)
            .field("max_depth", &self.max_depth)
            .field("max_complexity", &self.max_complexity)
            .field("max_body_bytes", &self.max_body_bytes)
            .field(
                "max_subscriptions_per_connection",
                &self.max_subscriptions_per_connection,
            )
            .field("introspection", &self.introspection)
            .field("graphiql", &self.graphiql)
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The token the schema requires (schema data); `None` when none is configured.
#[derive(Clone)]
pub(crate) struct RequiredToken(pub(crate) Option<String>);

/// The credential a request or a connection presented (request or connection data).
#[derive(Clone, Default)]
pub(crate) struct Credential(pub(crate) Option<String>);

impl Credential {
    /// The token of an `Authorization: Bearer <token>` value.
    pub(crate) fn from_authorization(value: Option<&str>) -> Self {
        let token = value.and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
        Self(token)
    }
}

/// Compares in time independent of where the first difference is.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The guard on mutations and subscriptions: passes when no token is configured, or when the
/// request presented it.
pub(crate) struct Authenticated;

impl Guard for Authenticated {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        use async_graphql::ErrorExtensions as _;
        let Some(RequiredToken(Some(required))) = ctx.data_opt::<RequiredToken>() else {
            return Ok(());
        };
        match ctx.data_opt::<Credential>() {
            Some(Credential(Some(token))) if same(token, required) => Ok(()),
            _ => Err(ApiError::Unauthenticated.extend()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        assert_eq!(
            Credential::from_authorization(Some("Bearer abc"))
                .0
                .as_deref(),
            Some("abc")
        );
        assert_eq!(
            Credential::from_authorization(Some("bearer  abc "))
                .0
                .as_deref(),
            Some("abc")
        );
        assert_eq!(Credential::from_authorization(Some("Basic abc")).0, None);
        assert_eq!(Credential::from_authorization(None).0, None);
        assert!(same("secret", "secret") && !same("secret", "secreT") && !same("s", "secret"));
    }
}
