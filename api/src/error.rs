//! The API's errors and their stable `extensions.code`s.

use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextValidation,
};
use async_graphql::parser::types::ExecutableDocument;
use async_graphql::{
    ErrorExtensions, Response, ServerError, ServerResult, ValidationResult, Value, Variables,
};
use domain::InvalidBook;

use crate::store::StoreError;

/// What a resolver tells a client went wrong. Every variant has a stable `code`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The input is not acceptable; `field` names the argument or input field.
    #[error("{message}")]
    BadUserInput {
        /// The path of the offending argument, e.g. `input.authors`.
        field: String,
        /// What is wrong, in words the client can act on.
        message: String,
    },
    /// The change contradicts what is stored (e.g. the book exists already).
    #[error("{0}")]
    Conflict(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The operation needs a credential, and none (or a wrong one) came with the request.
    #[error(
        "this operation needs a credential: send Authorization: Bearer <token> (HTTP) or {{\"authorization\": \"Bearer <token>\"}} in connection_init (WebSocket)"
    )]
    Unauthenticated,
    /// The credential is good but does not allow this: on AWS, a mutation without the
    /// authorizer's write grant (a JWT without the write scope, or anonymous where only reads
    /// are public).
    #[error(
        "this credential may not change data; writes need the secret or a token with the write scope"
    )]
    Forbidden,
    /// Too many subscriptions on one connection.
    #[error(
        "this connection already holds {0} subscriptions, the most allowed; complete one first"
    )]
    TooManySubscriptions(usize),
    /// A connection sent messages faster than its rate; this one was not acted on.
    #[error(
        "this connection sends messages faster than allowed ({0} a second, {1} at once); this one was not acted on"
    )]
    RateLimited(u32, u32),
    /// A GraphQL document longer than the API accepts.
    #[error("the document is longer than the {0} bytes allowed")]
    QueryTooLarge(usize),
    /// What was asked is not kept here (dead letters on AWS are in SQS).
    #[error("{0}")]
    Unavailable(String),
    /// A subscriber fell this many events behind a hub without a log; its subscription is
    /// ended.
    #[error("this subscription fell {0} events behind and was ended; subscribe again")]
    SubscriptionLagged(u64),
    /// The cursor to resume after is older than the event log keeps.
    #[error(
        "this cursor is older than the events kept: the log keeps every event after {resume_after}; resume with after: \"{resume_after}\" (or without after, live)"
    )]
    CursorExpired {
        /// The cursor after which every event is kept (`extensions.resumeAfter`).
        resume_after: String,
        /// The cursor of the oldest event kept, if any is (`extensions.oldestCursor`).
        oldest: Option<String>,
    },
    /// Something failed on our side; the cause was logged and is not shown.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    /// The stable `extensions.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadUserInput { .. } => "BAD_USER_INPUT",
            Self::Conflict(_) => "CONFLICT",
            Self::NotFound(_) => "NOT_FOUND",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden => "FORBIDDEN",
            Self::TooManySubscriptions(_) => "TOO_MANY_SUBSCRIPTIONS",
            Self::RateLimited(..) => "RATE_LIMITED",
            Self::QueryTooLarge(_) => "QUERY_TOO_LARGE",
            Self::Unavailable(_) => "UNAVAILABLE",
            Self::SubscriptionLagged(_) => "SUBSCRIPTION_LAGGED",
            Self::CursorExpired { .. } => "CURSOR_EXPIRED",
            Self::Internal => "INTERNAL",
        }
    }

    /// Bad input in the argument or input field at `field`.
    pub fn bad_input(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadUserInput {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The error as a request-level GraphQL error (no location, no path), for refusals that
    /// happen outside a resolver: a limit of the document or of the connection.
    pub fn server_error(&self) -> ServerError {
        let mut error = ServerError::new(self.to_string(), None);
        error.extensions = self.extend().extensions;
        error
    }

    /// An invalid book part, reported under `prefix` (e.g. `input`).
    pub fn invalid_book(prefix: &str, error: InvalidBook) -> Self {
        let field = if prefix.is_empty() {
            error.field.as_str().to_owned()
        } else {
            format!("{prefix}.{}", error.field)
        };
        Self::bad_input(field, error.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(_) => Self::Conflict(error.to_string()),
            StoreError::NotFound(_) => Self::NotFound(error.to_string()),
            StoreError::InvalidPosition => Self::bad_input("after", "invalid cursor"),
            StoreError::Unavailable(cause) => {
                tracing::error!(error = %cause, "storage failed");
                Self::Internal
            }
        }
    }
}

impl ErrorExtensions for ApiError {
    fn extend(&self) -> async_graphql::Error {
        async_graphql::Error::new(self.to_string()).extend_with(|_, extensions| {
            extensions.set("code", self.code());
            match self {
                Self::BadUserInput { field, .. } => extensions.set("field", field.as_str()),
                Self::CursorExpired {
                    resume_after,
                    oldest,
                } => {
                    extensions.set("resumeAfter", resume_after.as_str());
                    extensions.set("oldestCursor", oldest.clone());
                }
                _ => {}
            }
        })
    }
}

/// A schema extension that gives every error a `code`, not only the resolvers' own:
/// `GRAPHQL_PARSE_FAILED` for a document that does not parse, `GRAPHQL_VALIDATION_FAILED` for
/// one that does not fit the schema, and `BAD_USER_INPUT` for an argument that async-graphql
/// could not coerce at execution.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorCodes;

impl ExtensionFactory for ErrorCodes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ErrorCodes)
    }
}

fn with_default_code(mut error: ServerError, code: &'static str) -> ServerError {
    let extensions = error.extensions.get_or_insert_with(Default::default);
    if extensions.get("code").is_none() {
        extensions.set("code", Value::from(code));
    }
    error
}

#[async_trait::async_trait]
impl Extension for ErrorCodes {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        next.run(ctx, query, variables)
            .await
            .map_err(|e| with_default_code(e, "GRAPHQL_PARSE_FAILED"))
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await.map_err(|errors| {
            errors
                .into_iter()
                .map(|e| with_default_code(e, "GRAPHQL_VALIDATION_FAILED"))
                .collect()
        })
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let mut response = next.run(ctx, operation_name).await;
        // Resolvers always set a code, so an error without one comes from coercing input.
        response.errors = std::mem::take(&mut response.errors)
            .into_iter()
            .map(|e| with_default_code(e, "BAD_USER_INPUT"))
            .collect();
        response
    }
}
