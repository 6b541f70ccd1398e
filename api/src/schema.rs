//! The GraphQL schema: books, their mutations, and the consumers' activity.

use std::sync::Arc;

use async_graphql::connection::{Connection, Edge};
use async_graphql::{
    Context, InputObject, Object, ResultExt, SDLExportOptions, Schema, SchemaBuilder,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use domain::{Authors, Book, BookName, PublishedYear};

use crate::error::{ApiError, ErrorCodes};
use crate::introspection::SchemaDescription;
use crate::limits::DocumentLimits;
use crate::options::{ApiOptions, Authenticated, RequiredToken, WritesNeedGrant};
use crate::store::{ActivityFeed, BookStore, DeadLetterFeed};
use crate::subscriptions::{EventHub, SubscriptionRoot};
use crate::types::{ActivityNode, BookNode, DeadLetterNode};

/// The executable schema.
pub type ApiSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// The page size when `first` is not given.
pub const DEFAULT_PAGE_SIZE: usize = 20;
/// The largest page a client may ask for.
pub const MAX_PAGE_SIZE: usize = 100;

fn builder() -> SchemaBuilder<QueryRoot, MutationRoot, SubscriptionRoot> {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .extension(ErrorCodes)
        .extension(SchemaDescription)
        .extension(crate::metrics::MutationMetrics)
        .extension(crate::spans::RequestTracing)
}

/// Builds the schema over the given stores, with subscriptions fed by `events` and the
/// default [`ApiOptions`].
pub fn build_schema(
    books: Arc<dyn BookStore>,
    activity: Arc<dyn ActivityFeed>,
    events: EventHub,
) -> ApiSchema {
    build_schema_with(books, activity, events, None, &ApiOptions::default())
}

/// Builds the schema with its limits, credential and (where the stack keeps them) dead letters.
pub fn build_schema_with(
    books: Arc<dyn BookStore>,
    activity: Arc<dyn ActivityFeed>,
    events: EventHub,
    dead_letters: Option<Arc<dyn DeadLetterFeed>>,
    options: &ApiOptions,
) -> ApiSchema {
    let mut builder = limited(builder(), options)
        .data(books)
        .data(activity)
        .data(events)
        .data(RequiredToken(options.auth_token.clone()));
    if let Some(dead_letters) = dead_letters {
        builder = builder.data(dead_letters);
    }
    if options.writes_need_grant {
        builder = builder.data(WritesNeedGrant);
    }
    builder.finish()
}

/// The limits every schema is held to, local or on AWS: the document's size, depth and
/// complexity, and introspection.
fn limited(
    builder: SchemaBuilder<QueryRoot, MutationRoot, SubscriptionRoot>,
    options: &ApiOptions,
) -> SchemaBuilder<QueryRoot, MutationRoot, SubscriptionRoot> {
    let builder = builder
        .extension(DocumentLimits {
            max_query_bytes: options.max_query_bytes,
            max_depth: options.max_depth,
            introspection: options.introspection,
        })
        .limit_complexity(options.max_complexity);
    if options.introspection {
        builder
    } else {
        builder.disable_introspection()
    }
}

/// The schema with no stores: enough to validate and run subscriptions, whose events come with
/// each request (see [`crate::gateway::run_against`]). It has the local schema's limits, from
/// the default [`ApiOptions`], so a subscription is refused on AWS as it is locally.
pub fn subscription_schema() -> ApiSchema {
    limited(builder(), &ApiOptions::default()).finish()
}

/// The schema in SDL, as checked in at `schema.graphql`: what introspection answers, scalars'
/// `@specifiedBy` included.
pub fn sdl() -> String {
    builder()
        .finish()
        .sdl_with_options(SDLExportOptions::new().include_specified_by())
}

/// A book to add.
#[derive(InputObject)]
struct AddBookInput {
    /// The name: 1 to 200 characters, trimmed; it must not be taken.
    name: String,
    /// 1 to 20 authors, each 1 to 100 characters, in order.
    authors: Vec<String>,
    /// The year of first publication, from -3000 to 2100.
    published_year: i32,
}

impl AddBookInput {
    fn parse(self) -> Result<Book, ApiError> {
        let invalid = |e| ApiError::invalid_book("input", e);
        Ok(Book {
            name: BookName::parse(&self.name).map_err(invalid)?,
            authors: Authors::parse(&self.authors).map_err(invalid)?,
            published_year: PublishedYear::parse(self.published_year).map_err(invalid)?,
        })
    }
}

/// Reads `first`: absent is the default page size; otherwise 0 to [`MAX_PAGE_SIZE`].
fn page_size(first: Option<i32>) -> Result<usize, ApiError> {
    match first {
        None => Ok(DEFAULT_PAGE_SIZE),
        Some(n) => usize::try_from(n)
            .ok()
            .filter(|n| *n <= MAX_PAGE_SIZE)
            .ok_or_else(|| {
                ApiError::bad_input(
                    "first",
                    format!("first must be between 0 and {MAX_PAGE_SIZE}"),
                )
            }),
    }
}

/// Cursors are opaque to clients: the store's position, tagged with the listing it belongs to.
fn encode_cursor(listing: &str, position: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{listing}:{position}"))
}

fn decode_cursor(listing: &str, cursor: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| {
            text.strip_prefix(listing)?
                .strip_prefix(':')
                .map(str::to_owned)
        })
        .ok_or_else(|| ApiError::bad_input("after", "invalid cursor"))
}

fn book_store<'a>(ctx: &Context<'a>) -> Result<&'a Arc<dyn BookStore>, ApiError> {
    ctx.data::<Arc<dyn BookStore>>().map_err(|e| {
        tracing::error!(error = ?e.message, "the schema was built without a BookStore");
        ApiError::Internal
    })
}

fn activity_feed<'a>(ctx: &Context<'a>) -> Result<&'a Arc<dyn ActivityFeed>, ApiError> {
    ctx.data::<Arc<dyn ActivityFeed>>().map_err(|e| {
        tracing::error!(error = ?e.message, "the schema was built without an ActivityFeed");
        ApiError::Internal
    })
}

/// The queries.
#[derive(Debug, Default)]
pub struct QueryRoot;

#[Object(name = "Query")]
impl QueryRoot {
    /// The book with this name, or null.
    async fn book(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> async_graphql::Result<Option<BookNode>> {
        async {
            let name = BookName::parse(&name).map_err(|e| ApiError::invalid_book("", e))?;
            Ok::<_, ApiError>(book_store(ctx)?.get(&name).await?.map(BookNode))
        }
        .await
        .extend()
    }

    /// The catalogue, a page at a time (Relay connection; default 20, at most 100 a page).
    #[graphql(complexity = "page_cost(first, child_complexity)")]
    async fn books(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, BookNode>> {
        async {
            let first = page_size(first)?;
            let after = after
                .map(|cursor| {
                    BookName::parse(&decode_cursor("book", &cursor)?)
                        .map_err(|_| ApiError::bad_input("after", "invalid cursor"))
                })
                .transpose()?;
            let page = book_store(ctx)?.list(first, after.as_ref()).await?;
            let mut connection = Connection::new(after.is_some(), page.has_next_page);
            connection.edges.extend(
                page.items.into_iter().map(|book| {
                    Edge::new(encode_cursor("book", book.name.as_str()), BookNode(book))
                }),
            );
            Ok::<_, ApiError>(connection)
        }
        .await
        .extend()
    }

    /// What the consumers recorded, newest first (Relay connection; default 20, at most 100).
    #[graphql(complexity = "page_cost(first, child_complexity)")]
    async fn activity(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, ActivityNode>> {
        async {
            let first = page_size(first)?;
            let after = after
                .map(|cursor| decode_cursor("activity", &cursor))
                .transpose()?;
            let page = activity_feed(ctx)?.list(first, after.as_deref()).await?;
            let mut connection = Connection::new(after.is_some(), page.has_next_page);
            connection.edges.extend(page.items.into_iter().map(|item| {
                Edge::new(
                    encode_cursor("activity", &item.position),
                    ActivityNode(item.entry),
                )
            }));
            Ok::<_, ApiError>(connection)
        }
        .await
        .extend()
    }
    /// What kept failing and was set aside, oldest first (the local stack; on AWS the dead
    /// letters are in SQS queues). Redrive them with `outboxdemo dead-letters redrive`. Their
    /// payloads are the catalogue's data: when a token is configured, this needs it, as
    /// mutations do.
    #[graphql(guard = "Authenticated")]
    async fn dead_letters(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20)] first: i32,
    ) -> async_graphql::Result<Vec<DeadLetterNode>> {
        async {
            let first = page_size(Some(first))?;
            let feed = ctx.data_opt::<Arc<dyn DeadLetterFeed>>().ok_or_else(|| {
                ApiError::Unavailable(
                    "dead letters are not kept here: on AWS they are in the SQS dead-letter queues"
                        .into(),
                )
            })?;
            Ok::<_, ApiError>(
                feed.list(first)
                    .await?
                    .into_iter()
                    .map(DeadLetterNode)
                    .collect(),
            )
        }
        .await
        .extend()
    }
}

/// The cost of a connection: its page size times the cost of one item.
fn page_cost(first: Option<i32>, child_complexity: usize) -> usize {
    let page = first.map_or(DEFAULT_PAGE_SIZE, |n| {
        usize::try_from(n).unwrap_or(0).min(MAX_PAGE_SIZE)
    });
    page.max(1).saturating_mul(child_complexity)
}

/// The mutations. Each writes one item and returns; events follow from the committed change.
#[derive(Debug, Default)]
pub struct MutationRoot;

#[Object(name = "Mutation")]
impl MutationRoot {
    /// Adds a book. A name that is taken is a `CONFLICT` and changes nothing.
    #[graphql(guard = "Authenticated")]
    async fn add_book(
        &self,
        ctx: &Context<'_>,
        input: AddBookInput,
    ) -> async_graphql::Result<BookNode> {
        async {
            let book = input.parse()?;
            book_store(ctx)?.add(&book).await?;
            Ok::<_, ApiError>(BookNode(book))
        }
        .await
        .extend()
    }

    /// Removes a book and returns it. A name that is not in the catalogue is `NOT_FOUND`.
    #[graphql(guard = "Authenticated")]
    async fn remove_book(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> async_graphql::Result<BookNode> {
        async {
            let name = BookName::parse(&name).map_err(|e| ApiError::invalid_book("", e))?;
            Ok::<_, ApiError>(BookNode(book_store(ctx)?.remove(&name).await?))
        }
        .await
        .extend()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_belong_to_their_listing() {
        let cursor = encode_cursor("book", "Dune");
        assert_eq!(decode_cursor("book", &cursor).unwrap(), "Dune");
        assert!(decode_cursor("activity", &cursor).is_err());
        assert!(decode_cursor("book", "not base64!").is_err());
    }

    #[test]
    fn page_sizes_are_bounded() {
        assert_eq!(page_size(None).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(Some(0)).unwrap(), 0);
        assert_eq!(page_size(Some(100)).unwrap(), 100);
        assert!(page_size(Some(101)).is_err());
        assert!(page_size(Some(-1)).is_err());
    }
}
