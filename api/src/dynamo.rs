//! The DynamoDB adapters of the API's ports: [`DynamoBookStore`] and [`DynamoActivityFeed`].

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use domain::item::{self, ACTIVITY_FEED};
use domain::{Book, BookName};

use crate::store::{ActivityFeed, ActivityItem, BookStore, Page, StoreError};

type SdkItem = HashMap<String, AttributeValue>;

fn unavailable<E, R>(error: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    StoreError::unavailable(DisplayErrorContext(error).to_string())
}

fn book_from(item: SdkItem) -> Result<Book, StoreError> {
    item::from_item(item.into()).map_err(StoreError::unavailable)
}

fn name_key(name: &BookName) -> SdkItem {
    HashMap::from([(
        item::KEY_ATTRIBUTE.to_owned(),
        AttributeValue::S(name.as_str().to_owned()),
    )])
}

/// What a Scan or Query page gives: its items and where the next one starts.
trait Paged {
    fn into_parts(self) -> (Vec<SdkItem>, Option<SdkItem>);
}

impl Paged for aws_sdk_dynamodb::operation::scan::ScanOutput {
    fn into_parts(self) -> (Vec<SdkItem>, Option<SdkItem>) {
        (self.items.unwrap_or_default(), self.last_evaluated_key)
    }
}

impl Paged for aws_sdk_dynamodb::operation::query::QueryOutput {
    fn into_parts(self) -> (Vec<SdkItem>, Option<SdkItem>) {
        (self.items.unwrap_or_default(), self.last_evaluated_key)
    }
}

/// Up to `first` items from `start` on, calling `fetch(start, limit)` until it has one more
/// than the page (so `has_next_page` is known without an empty page) or the table is done.
/// (DynamoDB may return fewer items than `limit`, and a key to go on from, at 1 MB.)
async fn page_of<F, Fut, O, E, R>(
    first: usize,
    mut start: Option<SdkItem>,
    mut fetch: F,
) -> Result<Page<SdkItem>, StoreError>
where
    F: FnMut(Option<SdkItem>, i32) -> Fut,
    Fut: std::future::Future<Output = Result<O, SdkError<E, R>>>,
    O: Paged,
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let wanted = first + 1;
    let mut items = Vec::with_capacity(wanted);
    loop {
        let limit = i32::try_from(wanted - items.len()).unwrap_or(i32::MAX);
        let (page, next) = fetch(start, limit).await.map_err(unavailable)?.into_parts();
        items.extend(page);
        start = next;
        if items.len() >= wanted || start.is_none() {
            break;
        }
    }
    let has_next_page = items.len() > first;
    items.truncate(first);
    Ok(Page {
        items,
        has_next_page,
    })
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
            .set_key(Some(name_key(name)))
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
            .set_key(Some(name_key(name)))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        output.item.map(book_from).transpose()
    }

    /// Books in the table's scan order (by key hash: stable, not alphabetical), continuing
    /// after `after` as the scan's exclusive start key.
    async fn list(&self, first: usize, after: Option<&BookName>) -> Result<Page<Book>, StoreError> {
        let page = page_of(first, after.map(name_key), |start, limit| {
            self.client
                .scan()
                .table_name(&self.table)
                .set_exclusive_start_key(start)
                .limit(limit)
                .consistent_read(true)
                .send()
        })
        .await?;
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
            Some(position) => {
                let event_id =
                    item::event_id_of_position(position).ok_or(StoreError::InvalidPosition)?;
                Some(HashMap::from([
                    ("eventId".to_owned(), AttributeValue::S(event_id.to_owned())),
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
        let page = page_of(first, start, |start, limit| {
            self.client
                .query()
                .table_name(&self.table)
                .index_name(ACTIVITY_INDEX)
                .key_condition_expression("feed = :feed")
                .expression_attribute_values(":feed", AttributeValue::S(ACTIVITY_FEED.to_owned()))
                .scan_index_forward(false)
                .set_exclusive_start_key(start)
                .limit(limit)
                .send()
        })
        .await?;
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
