//! The DynamoDB adapters of the API's ports: [`DynamoBookStore`] and [`DynamoActivityFeed`].

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_smithy_async::future::pagination_stream::PaginationStream;
use domain::item::{self, ACTIVITY_FEED};
use domain::{Book, BookName};

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
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item::to_item(book).into()))
            .condition_expression("attribute_not_exists(#name)")
            .expression_attribute_names("#name", item::KEY_ATTRIBUTE)
            .send()
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

    async fn remove(&self, name: &BookName) -> Result<Book, StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(name)))
            .condition_expression("attribute_exists(#name)")
            .expression_attribute_names("#name", item::KEY_ATTRIBUTE)
            .return_values(ReturnValue::AllOld)
            .send()
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
#[derive(Debug, Clone)]
pub struct DynamoActivityFeed {
    client: Client,
    table: String,
}

impl DynamoActivityFeed {
    /// A feed of the table named `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

#[async_trait]
impl ActivityFeed for DynamoActivityFeed {
    async fn list(
        &self,
        first: usize,
        after: Option<&str>,
    ) -> Result<Page<ActivityItem>, StoreError> {
        let start = match after {
            // An index query's start key is the item's index key and its table key
            // (eventId, consumer), all of which the position holds.
            // https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_Query.html#DDB-Query-request-ExclusiveStartKey
            Some(position) => {
                let (consumer, event_id) =
                    item::activity_key_of_position(position).ok_or(StoreError::InvalidPosition)?;
                Some(HashMap::from([
                    ("eventId".to_owned(), AttributeValue::S(event_id.to_owned())),
                    (
                        "consumer".to_owned(),
                        AttributeValue::S(consumer.to_owned()),
                    ),
                    (
                        "feed".to_owned(),
                        AttributeValue::S(ACTIVITY_FEED.to_owned()),
                    ),
                    (
                        "position".to_owned(),
                        AttributeValue::S(position.to_owned()),
                    ),
                ]))
            }
            None => None,
        };
        let items = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(ACTIVITY_INDEX)
            .key_condition_expression("feed = :feed")
            .expression_attribute_values(":feed", AttributeValue::S(ACTIVITY_FEED.to_owned()))
            .scan_index_forward(false)
            .set_exclusive_start_key(start)
            .into_paginator()
            .page_size(limit_for(first))
            .items()
            .send();
        let page = page_of(first, items).await?;
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
