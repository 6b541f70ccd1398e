//! What the API allows, and to whom: limits against abuse, switches for production, and the
//! credential mutations and subscriptions may require.

use std::time::Duration;

use async_graphql::{Context, Guard};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::limits::connection::MessageRate;

/// The default of [`ApiOptions::keepalive`], in seconds.
pub const DEFAULT_KEEPALIVE_SECS: u64 = 15;
/// The default of [`ApiOptions::max_depth`].
pub const DEFAULT_MAX_DEPTH: usize = 12;
/// The default of [`ApiOptions::max_complexity`].
pub const DEFAULT_MAX_COMPLEXITY: usize = 2_000;
/// The default of [`ApiOptions::max_body_bytes`].
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// The default of [`ApiOptions::max_subscriptions_per_connection`].
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 20;
/// The default of [`ApiOptions::max_query_bytes`]: the AWS subscription schema's too.
pub const DEFAULT_MAX_QUERY_BYTES: usize = 16 * 1024;
/// The default of [`ApiOptions::max_messages_per_sec`].
pub const DEFAULT_MAX_MESSAGES_PER_SEC: u32 = 50;
/// The default of [`ApiOptions::message_burst`].
pub const DEFAULT_MESSAGE_BURST: u32 = 100;

/// The API's configuration. The defaults suit local play: limits on, no credential required,
/// introspection and GraphiQL on.
///
/// It is also the API's command-line flags (`#[command(flatten)]` it into a binary's
/// `clap::Parser`), each with its `OUTBOXDEMO_*` environment variable; the flags' defaults are
/// [`ApiOptions::default`]'s.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiOptions {
    /// How often idle subscription sockets are pinged.
    #[arg(
        long = "keepalive-secs",
        env = "OUTBOXDEMO_KEEPALIVE_SECS",
        value_name = "KEEPALIVE_SECS",
        // DEFAULT_KEEPALIVE_SECS: clap wants the text of a default it parses into a Duration
        // (a test holds the two together).
        default_value = "15",
        value_parser = clap::builder::TypedValueParser::map(
            clap::value_parser!(u64).range(1..),
            Duration::from_secs,
        ),
        help = "Seconds between keep-alive pings on idle subscription connections"
    )]
    pub keepalive: Duration,
    /// The deepest selection a document may have.
    #[arg(long = "max-depth", env = "OUTBOXDEMO_MAX_DEPTH", default_value_t = DEFAULT_MAX_DEPTH)]
    pub max_depth: usize,
    /// The most a document may cost (every field counts 1, a connection's page size multiplies).
    #[arg(
        long = "max-complexity",
        env = "OUTBOXDEMO_MAX_COMPLEXITY",
        default_value_t = DEFAULT_MAX_COMPLEXITY,
        help = "The most a document may cost (a connection's page size multiplies its fields)"
    )]
    pub max_complexity: usize,
    /// The largest request body, in bytes.
    #[arg(
        long = "max-body-bytes",
        env = "OUTBOXDEMO_MAX_BODY_BYTES",
        default_value_t = DEFAULT_MAX_BODY_BYTES
    )]
    pub max_body_bytes: usize,
    /// The most subscriptions one WebSocket connection may hold at once.
    #[arg(
        long = "max-subscriptions",
        env = "OUTBOXDEMO_MAX_SUBSCRIPTIONS",
        value_name = "MAX_SUBSCRIPTIONS",
        default_value_t = DEFAULT_MAX_SUBSCRIPTIONS,
        help = "The most subscriptions one WebSocket connection may hold"
    )]
    pub max_subscriptions_per_connection: usize,
    /// The longest GraphQL document, in bytes, on every transport.
    #[arg(
        long = "max-query-bytes",
        env = "OUTBOXDEMO_MAX_QUERY_BYTES",
        default_value_t = DEFAULT_MAX_QUERY_BYTES,
        help = "The longest GraphQL document, in bytes (HTTP and WebSocket)"
    )]
    pub max_query_bytes: usize,
    /// How many messages a second one WebSocket connection may send, on average.
    #[arg(
        long = "max-messages-per-sec",
        env = "OUTBOXDEMO_MAX_MESSAGES_PER_SEC",
        default_value_t = DEFAULT_MAX_MESSAGES_PER_SEC,
        value_parser = clap::value_parser!(u32).range(1..),
        help = "Messages a second one WebSocket connection may send, on average"
    )]
    pub max_messages_per_sec: u32,
    /// How many messages one WebSocket connection may send at once.
    #[arg(
        long = "message-burst",
        env = "OUTBOXDEMO_MESSAGE_BURST",
        default_value_t = DEFAULT_MESSAGE_BURST,
        value_parser = clap::value_parser!(u32).range(1..),
        help = "Messages one WebSocket connection may send at once"
    )]
    pub message_burst: u32,
    /// Whether `__schema` / `__type` introspection is answered.
    #[arg(
        long = "no-introspection",
        env = "OUTBOXDEMO_NO_INTROSPECTION",
        action = clap::ArgAction::SetTrue,
        value_parser = not(),
        help = "Do not answer introspection queries (for production)"
    )]
    pub introspection: bool,
    /// Whether GraphiQL is served at `/`.
    #[arg(
        long = "no-graphiql",
        env = "OUTBOXDEMO_NO_GRAPHIQL",
        action = clap::ArgAction::SetTrue,
        value_parser = not(),
        help = "Do not serve GraphiQL (for production)"
    )]
    pub graphiql: bool,
    /// When set, mutations and subscriptions require `Authorization: Bearer <token>` (HTTP) or
    /// `{"authorization": "Bearer <token>"}` in the `connection_init` payload (WebSocket).
    #[arg(
        long = "auth-token",
        env = "OUTBOXDEMO_AUTH_TOKEN",
        hide_env_values = true,
        help = "Require `Authorization: Bearer <token>` for mutations and subscriptions",
        value_parser = secret
    )]
    pub auth_token: Option<SecretString>,
    /// Where GraphiQL opens subscriptions, when not at this server's `/graphql/ws`: on AWS, the
    /// WebSocket API's URL (an HTTP API cannot upgrade to a WebSocket).
    #[arg(skip)]
    pub graphiql_subscriptions_url: Option<String>,
    /// Whether `/graphql/stream` (GraphQL over Server-Sent Events) is served. Not by the api
    /// Lambda: behind API Gateway it answers only once the handler is done, so a stream would
    /// hold the function until its timeout.
    #[arg(skip = true)]
    pub event_stream: bool,
    /// Whether mutations need a [`WriteGrant`] from an authorizer in front of the API (on AWS,
    /// unless everyone may write).
    #[arg(skip)]
    pub writes_need_grant: bool,
    /// Origins (`scheme://host[:port]`) besides this server's own whose pages may open the
    /// WebSocket and read responses (CORS). Empty (the default): only pages served here, and
    /// no CORS headers at all.
    #[arg(
        long = "allow-origin",
        env = "OUTBOXDEMO_ALLOW_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ',',
        value_parser = origin,
        help = "Let pages of this origin (scheme://host[:port]; repeatable) open the WebSocket and read responses (CORS)"
    )]
    pub allowed_origins: Vec<String>,
}

/// An `--allow-origin` value, in the form browsers send.
fn origin(value: &str) -> Result<String, String> {
    crate::router::parse_origin(value)
}

/// A secret flag's value, kept out of `Debug` output and logs.
fn secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value))
}

/// A `--no-<switch>` flag sets its switch off: the flag's value (its presence, or its
/// variable's `true`/`false`) negated.
fn not() -> impl clap::builder::TypedValueParser<Value = bool> {
    clap::builder::TypedValueParser::map(clap::builder::BoolValueParser::new(), |no: bool| !no)
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            keepalive: Duration::from_secs(DEFAULT_KEEPALIVE_SECS),
            max_depth: DEFAULT_MAX_DEPTH,
            max_complexity: DEFAULT_MAX_COMPLEXITY,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_subscriptions_per_connection: DEFAULT_MAX_SUBSCRIPTIONS,
            max_query_bytes: DEFAULT_MAX_QUERY_BYTES,
            max_messages_per_sec: DEFAULT_MAX_MESSAGES_PER_SEC,
            message_burst: DEFAULT_MESSAGE_BURST,
            introspection: true,
            graphiql: true,
            auth_token: None,
            graphiql_subscriptions_url: None,
            event_stream: true,
            allowed_origins: Vec::new(),
            writes_need_grant: false,
        }
    }
}

impl ApiOptions {
    /// How fast one WebSocket connection may send.
    pub fn message_rate(&self) -> MessageRate {
        MessageRate {
            per_sec: self.max_messages_per_sec,
            burst: self.message_burst,
        }
    }
}

/// The token the schema requires (schema data); `None` when none is configured.
#[derive(Clone)]
pub(crate) struct RequiredToken(pub(crate) Option<SecretString>);

/// The credential a request or a connection presented (request or connection data).
#[derive(Clone, Default)]
pub(crate) struct Credential(pub(crate) Option<SecretString>);

impl Credential {
    /// The token of an `Authorization: Bearer <token>` value.
    pub(crate) fn from_authorization(value: Option<&str>) -> Self {
        let token = value.and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| SecretString::from(token.trim()))
        });
        Self(token)
    }
}

/// Compares in time independent of where the first difference is.
fn same(a: &SecretString, b: &SecretString) -> bool {
    a.expose_secret()
        .as_bytes()
        .ct_eq(b.expose_secret().as_bytes())
        .into()
}

/// Schema data where an authorizer in front of the API decides who may write (on AWS, unless
/// the deployment lets everyone write): mutations then need its [`WriteGrant`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct WritesNeedGrant;

/// Whether the authorizer in front of the API let this request write (request data; on AWS
/// from `requestContext.authorizer.lambda.write`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteGrant(pub bool);

/// The guard on mutations and subscriptions: passes when no token is configured, or when the
/// request presented it; and, where writes need an authorizer's grant, when it has the grant.
pub(crate) struct Authenticated;

impl Guard for Authenticated {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        use async_graphql::ErrorExtensions as _;
        if ctx.data_opt::<WritesNeedGrant>().is_some()
            && ctx.data_opt::<WriteGrant>() != Some(&WriteGrant(true))
        {
            return Err(ApiError::Forbidden.extend());
        }
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
    use clap::{Args, FromArgMatches};

    use super::*;

    fn token(value: Option<&str>) -> Option<String> {
        Credential::from_authorization(value)
            .0
            .map(|token| token.expose_secret().to_owned())
    }

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        assert_eq!(token(Some("Bearer abc")).as_deref(), Some("abc"));
        assert_eq!(token(Some("bearer  abc ")).as_deref(), Some("abc"));
        assert_eq!(token(Some("Basic abc")), None);
        assert_eq!(token(None), None);
        let secret = |text: &str| SecretString::from(text);
        assert!(same(&secret("secret"), &secret("secret")));
        assert!(!same(&secret("secret"), &secret("secreT")));
        assert!(!same(&secret("s"), &secret("secret")));
    }

    /// The options the flags give, the environment not read.
    fn parse(args: &[&str]) -> ApiOptions {
        let command = ApiOptions::augment_args(clap::Command::new("api"))
            .mut_args(|arg| arg.env(None::<&str>));
        let matches = command
            .try_get_matches_from(std::iter::once("api").chain(args.iter().copied()))
            .unwrap();
        ApiOptions::from_arg_matches(&matches).unwrap()
    }

    #[test]
    fn the_flags_defaults_are_the_default_options_and_the_switches_turn_things_off() {
        assert_eq!(
            format!("{:?}", parse(&[])),
            format!("{:?}", ApiOptions::default())
        );
        let options = parse(&[
            "--keepalive-secs=3",
            "--no-introspection",
            "--no-graphiql",
            "--max-subscriptions=2",
            "--max-query-bytes=100",
            "--max-messages-per-sec=5",
            "--message-burst=7",
            "--auth-token=s3cret",
        ]);
        assert_eq!(options.keepalive, Duration::from_secs(3));
        assert!(!options.introspection && !options.graphiql);
        assert_eq!(options.max_subscriptions_per_connection, 2);
        assert_eq!(options.max_query_bytes, 100);
        assert_eq!(
            options.message_rate(),
            MessageRate {
                per_sec: 5,
                burst: 7
            }
        );
        assert_eq!(
            options.auth_token.as_ref().map(ExposeSecret::expose_secret),
            Some("s3cret")
        );
        assert!(!format!("{options:?}").contains("s3cret"), "{options:?}");
        let refused = ApiOptions::augment_args(clap::Command::new("api"))
            .try_get_matches_from(["api", "--keepalive-secs=0"]);
        assert!(refused.is_err(), "a keep-alive needs at least a second");
    }

    #[test]
    fn allowed_origins_are_repeatable_or_comma_separated_and_checked() {
        let options = parse(&[
            "--allow-origin=http://localhost:5173",
            "--allow-origin=HTTPS://App.Example:443,http://127.0.0.1:3000",
        ]);
        assert_eq!(
            options.allowed_origins,
            [
                "http://localhost:5173",
                "https://app.example",
                "http://127.0.0.1:3000"
            ]
        );
        for bad in ["*", "localhost:5173", "http://example.com/path"] {
            let refused = ApiOptions::augment_args(clap::Command::new("api"))
                .try_get_matches_from(["api", &format!("--allow-origin={bad}")])
                .unwrap_err()
                .to_string();
            assert!(refused.contains("is not an origin"), "{bad}: {refused}");
        }
    }
}
