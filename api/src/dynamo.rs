//! The DynamoDB adapters of the API's ports: [`DynamoBookStore`] and [`DynamoActivityFeed`].

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_smithy_async::future::pagination_stream::PaginationStream;
use domain::item;
use domain::{Book, BookName};
use futures_util::future::try_join_all;
use telemetry::InHop as _;

use crate::sdk::error_text;
use crate::store::{ActivityFeed, ActivityItem, BookStore, Page, StoreError};

type SdkItem = HashMap<String, AttributeValue>;

fn unavailable(error: impl std::error::Error) -> StoreError {
    StoreError::unavailable(error_text(error))
}

fn book_from(item: SdkItem) -> Result<Book, StoreError> {
    item::from_item(item.into()).map_err(StoreError::unavailable)
}

fn key(name: &BookName) -> SdkItem {
    item::key(name).into()
}

/// The page size to ask DynamoDB for: one more than the page, so `has_next_page` is known
/// without fetching an empty page.
fn limit_for(first: usize) -> i32 {
    i32::try_from(first + 1).unwrap_or(i32::MAX)
}

/// Up to `first` items of a paginated Scan or Query, and whether more follow: it reads one item
/// more than the page and no further. (DynamoDB may end a page early, at 1 MB; the paginator
/// then goes on from its last evaluated key.)
async fn page_of<E: std::error::Error>(
    first: usize,
    mut items: PaginationStream<Result<SdkItem, E>>,
) -> Result<Page<SdkItem>, StoreError> {
    let mut found = Vec::with_capacity(first + 1);
    while found.len() <= first
        && let Some(item) = items.try_next().await.map_err(unavailable)?
    {
        found.push(item);
    }
    Ok(Page::of_one_more(found, first))
}

/// The books table on DynamoDB. Writes are conditional, so a conflict or an absent book
/// changes nothing; the table's stream does the rest.
#[derive(Debug, Clone)]
pub struct DynamoBookStore {
    client: Client,
    table: String,
}

impl DynamoBookStore {
    /// A store on the table named `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

#[async_trait]
impl BookStore for DynamoBookStore {
    async fn add(&self, book: &Book) -> Result<(), StoreError> {
        let (hop, trace) = crate::spans::store_write("add", &book.name);
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item::to_traced_item(book, &trace).into()))
            .condition_expression("attribute_not_exists(#name)")
            .expression_attribute_names("#name", item::KEY_ATTRIBUTE)
            .send()
            .in_hop(hop)
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Err(StoreError::Conflict(book.name.clone()))
            }
            Err(error) => Err(unavailable(error)),
        }
    }

    /// A deleted item has no new image, so the stream record of a removal carries no trace
    /// (DeleteItem cannot write attributes:
    /// <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_DeleteItem.html>);
    /// the span is still the write's.
    async fn remove(&self, name: &BookName) -> Result<Book, StoreError> {
        let (hop, _) = crate::spans::store_write("remove", name);
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(name)))
            .condition_expression("attribute_exists(#name)")
            .expression_attribute_names("#name", item::KEY_ATTRIBUTE)
            .return_values(ReturnValue::AllOld)
            .send()
            .in_hop(hop)
            .await;
        match result {
            Ok(output) => book_from(output.attributes.unwrap_or_default()),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Err(StoreError::NotFound(name.clone()))
            }
            Err(error) => Err(unavailable(error)),
        }
    }

    async fn get(&self, name: &BookName) -> Result<Option<Book>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(name)))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        output.item.map(book_from).transpose()
    }

    /// Books in the table's scan order (by key hash: stable, not alphabetical), continuing
    /// after `after` as the scan's exclusive start key.
    async fn list(&self, first: usize, after: Option<&BookName>) -> Result<Page<Book>, StoreError> {
        let items = self
            .client
            .scan()
            .table_name(&self.table)
            .set_exclusive_start_key(after.map(key))
            .consistent_read(true)
            .into_paginator()
            .page_size(limit_for(first))
            .items()
            .send();
        let page = page_of(first, items).await?;
        Ok(Page {
            items: page
                .items
                .into_iter()
                .map(book_from)
                .collect::<Result<_, _>>()?,
            has_next_page: page.has_next_page,
        })
    }
}

/// The activity table's `byPosition` index name.
pub const ACTIVITY_INDEX: &str = "byPosition";

/// The activity table on DynamoDB, read newest first through its `byPosition` index.
///
/// The index holds the feed in several partitions (`feed`: the shards of
/// [`item::activity_feeds`], and the one value of the entries from before the sharding), each
/// ordered by `position`. A page queries every partition at once for its entries older than
/// the cursor, newest first, [a share of the page](partition_limit) each, and merges them,
/// reading a partition further only when the merge has taken all it gave.
#[derive(Debug, Clone)]
pub struct DynamoActivityFeed {
    client: Client,
    table: String,
    feeds: Vec<String>,
}

impl DynamoActivityFeed {
    /// A feed of the table named `table`, over all of its partitions.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self::of_partitions(client, table, item::activity_feeds().collect())
    }

    /// A feed of only the partitions named in `feeds` (the bench compares one partition, the
    /// feed before the sharding, with the shards).
    pub fn of_partitions(client: Client, table: impl Into<String>, feeds: Vec<String>) -> Self {
        Self {
            client,
            table: table.into(),
            feeds,
        }
    }

    /// The partitions this feed reads (the `feed` values).
    pub fn partitions(&self) -> &[String] {
        &self.feeds
    }

    /// The query of one partition, `feed`, for its entries older than the position `after`,
    /// newest first: what a page sends to each partition, with [`partition_limit`] as its
    /// limit.
    ///
    /// The bound is a key condition on the sort key rather than an exclusive start key, as the
    /// position is in one partition only; positions are unique, so `<` skips exactly the
    /// entries up to the cursor. A `String` sort key orders by UTF-8 bytes, which is how Rust
    /// compares `str`, so the merge agrees with each partition's order.
    /// <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_Query.html#DDB-Query-request-ScanIndexForward>
    pub fn partition_query(&self, feed: &str, after: Option<&str>) -> QueryFluentBuilder {
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(ACTIVITY_INDEX)
            .expression_attribute_names("#feed", "feed")
            .expression_attribute_values(":feed", AttributeValue::S(feed.to_owned()))
            .scan_index_forward(false);
        match after {
            Some(position) => query
                .key_condition_expression("#feed = :feed AND #position < :after")
                .expression_attribute_names("#position", POSITION)
                .expression_attribute_values(":after", AttributeValue::S(position.to_owned())),
            None => query.key_condition_expression("#feed = :feed"),
        }
    }
}

/// The limit of each partition's query for a page of `first`: twice the partition's even share
/// of the page (and one), at least 8, at most the page and one. Entries spread evenly over the
/// shards (a hash of the event id), so a shard holds more than twice its share of a page
/// rarely (for a page of 100 over 8 shards: more than 24 of 101, three standard deviations
/// above the mean of 12.6); then the merge reads that shard's next page, one more round trip.
/// A limit of the whole page would read every partition for the whole page, 8 times the
/// items. Where one partition holds the whole page (the entries from before the sharding) it
/// takes a round trip per limit.
pub fn partition_limit(first: usize, partitions: usize) -> i32 {
    let whole = first + 1;
    let share = (whole.div_ceil(partitions.max(1)) * 2).max(8).min(whole);
    i32::try_from(share).unwrap_or(i32::MAX)
}

/// The index's sort key attribute: an entry's position.
const POSITION: &str = "position";

fn position_of(item: &SdkItem) -> &str {
    match item.get(POSITION) {
        Some(AttributeValue::S(position)) => position,
        // Every item of the index has a position (the index's key): never taken.
        _ => "",
    }
}

/// Up to `first` items of several Query streams, each newest first by position, merged newest
/// first, and whether more follow. Each stream's first page is asked for at once; a stream is
/// read further only when the merge has taken all it had (its share of the page, or less where
/// DynamoDB ended its page early, at 1 MB).
async fn merged_page_of<E: std::error::Error>(
    first: usize,
    mut runs: Vec<PaginationStream<Result<SdkItem, E>>>,
) -> Result<Page<SdkItem>, StoreError> {
    let mut heads = try_join_all(runs.iter_mut().map(|run| run.try_next()))
        .await
        .map_err(unavailable)?;
    let mut found = Vec::with_capacity(first + 1);
    while found.len() <= first {
        let newest = heads
            .iter()
            .enumerate()
            .filter_map(|(run, head)| Some((run, position_of(head.as_ref()?))))
            .max_by(|a, b| a.1.cmp(b.1))
            .map(|(run, _)| run);
        let Some(run) = newest else { break };
        found.extend(heads[run].take());
        if found.len() <= first {
            heads[run] = runs[run].try_next().await.map_err(unavailable)?;
        }
    }
    Ok(Page::of_one_more(found, first))
}

#[async_trait]
impl ActivityFeed for DynamoActivityFeed {
    async fn list(
        &self,
        first: usize,
        after: Option<&str>,
    ) -> Result<Page<ActivityItem>, StoreError> {
        // A position this store gave out names its item's table key.
        if after.is_some_and(|position| item::activity_key_of_position(position).is_none()) {
            return Err(StoreError::InvalidPosition);
        }
        let runs = self
            .feeds
            .iter()
            .map(|feed| {
                self.partition_query(feed, after)
                    .into_paginator()
                    .page_size(partition_limit(first, self.feeds.len()))
                    .items()
                    .send()
            })
            .collect();
        let page = merged_page_of(first, runs).await?;
        let has_next_page = page.has_next_page;
        let items = page
            .items
            .into_iter()
            .map(|raw| {
                let entry =
                    item::activity_from_item(raw.into()).map_err(StoreError::unavailable)?;
                Ok(ActivityItem {
                    position: item::activity_position(&entry),
                    entry,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Page {
            items,
            has_next_page,
        })
    }
}
