//! [`DynamoConnectionStore`]: the [`ConnectionStore`] on a DynamoDB table.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Delete, DeleteRequest, Put, TransactWriteItem, Update, WriteRequest,
};
use domain::DetailType;
use serde_json::Value;

use super::{
    Added, ConnectionState, ConnectionStore, GatewayError, IndexPage, OrderedPage,
    OrderedSubscription, OrderedSubscriptions, ROW_LIFETIME_SECS, StoredSubscription,
    SubscriptionKey,
};
use crate::events::Position;
use crate::limits::connection::{MessageRate, TokenBucket};
use crate::sdk::error_text;

/// The connections table: per connection one `connection` row (is it initialised, how many
/// subscriptions does it hold, its message bucket) and one `sub#<id>` row per subscription,
/// all expiring by TTL.
///
/// The notifier reads subscriptions by what they subscribed to: each subscription also has
/// one `on#<detail type>#<id>` row per detail type it can match, a copy of its request whose
/// `subscribedTo` (`<detail type>#<shard>`) is the key of the table's global secondary index
/// [`SUBSCRIBED_TO_INDEX`]. The shard (a hash of the connection id, one of [`SHARDS`]) spreads a
/// popular type over several index partitions, which are read at once: a partition key takes
/// at most 1,000 writes a second
/// (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/bp-partition-key-design.html>),
/// and a GSI that cannot keep up throttles the table's writes
/// (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/GSI.ThroughputConsiderations.html>).
/// These rows share the connection's partition, so `$disconnect` (and a 410) removes them with
/// the rest.
///
/// The subscription count and the `sub#` rows change together in one transaction whose
/// conditions hold the count to its limit, so concurrent subscribes of one connection (API
/// Gateway invokes the Lambda once per message, concurrently) cannot pass it
/// (<https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html>).
/// The bucket is read, then written on the condition that it is still what was read
/// (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Expressions.ConditionExpressions.html>).
#[derive(Debug, Clone)]
pub struct DynamoConnectionStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
    page_size: Option<i32>,
}

/// The global secondary index on `subscribedTo` (`template.yaml`, ConnectionsTable).
pub const SUBSCRIBED_TO_INDEX: &str = "bySubscribedTo";
/// How many index partitions one detail type is spread over. Only ever raise it: rows are
/// found under `hash % SHARDS` of the count they were written with, and a reader with a larger
/// count still reads every smaller shard.
pub const SHARDS: u32 = 4;
const CONNECTION_ROW: &str = "connection";
const SUBSCRIPTION_PREFIX: &str = "sub#";
const INDEX_ROW_PREFIX: &str = "on#";
/// The partitions of the subscriptions that resumed: `ordered#<shard>`, one row each.
const ORDERED_PREFIX: &str = "ordered#";
/// The most items one BatchWriteItem call takes.
const BATCH_WRITE_MAX: usize = 25;
/// How often unprocessed deletes are sent again before the close fails: BatchWriteItem hands
/// back what it could not write (throttling) for the caller to retry, with backoff
/// (<https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_BatchWriteItem.html>).
const BATCH_WRITE_TRIES: u32 = 5;
/// How often a token is tried when other messages of the connection keep changing the bucket
/// first; a connection that busy is over its rate.
const TOKEN_TRIES: usize = 3;

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn number(row: &HashMap<String, AttributeValue>, name: &str) -> Option<i64> {
    row.get(name)?.as_n().ok()?.parse().ok()
}

/// Which items of a cancelled transaction had a condition fail; `None` when it failed for
/// another reason.
fn failed_conditions(
    error: &SdkError<TransactWriteItemsError, impl std::fmt::Debug>,
) -> Option<Vec<bool>> {
    match error.as_service_error()? {
        TransactWriteItemsError::TransactionCanceledException(cancelled) => Some(
            cancelled
                .cancellation_reasons()
                .iter()
                .map(|reason| reason.code() == Some("ConditionalCheckFailed"))
                .collect(),
        ),
        _ => None,
    }
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn table_error(error: impl std::error::Error) -> GatewayError {
    GatewayError::Table(error_text(error))
}

/// Whether a conditional write went through: false when its condition did not hold.
fn written<O, E, R>(
    result: Result<O, SdkError<E, R>>,
    condition_failed: impl Fn(&E) -> bool,
) -> Result<bool, GatewayError>
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match result {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().is_some_and(condition_failed) => Ok(false),
        Err(e) => Err(table_error(e)),
    }
}

fn text<'a>(row: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    row.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

/// The subscription a `sub#` row holds; `None` (logged) for a row that is not one.
fn stored(row: &HashMap<String, AttributeValue>) -> Option<StoredSubscription> {
    let (Some(connection_id), Some(id), Some(query)) = (
        text(row, "connectionId"),
        text(row, "subscriptionId"),
        text(row, "query"),
    ) else {
        tracing::warn!(?row, "skipping a malformed subscription row");
        return None;
    };
    Some(StoredSubscription {
        connection_id: connection_id.to_owned(),
        id: id.to_owned(),
        query: query.to_owned(),
        variables: text(row, "variables")
            .and_then(|v| serde_json::from_str(v).ok())
            .unwrap_or(Value::Null),
        operation_name: text(row, "operationName").map(str::to_owned),
    })
}

/// The index key a subscription of `connection_id` is stored under for `detail_type`.
fn subscribed_to_key(detail_type: DetailType, connection_id: &str) -> String {
    format!("{detail_type}#{}", fnv1a(connection_id) % SHARDS)
}

/// 32-bit FNV-1a: a hash that stays the same across builds and Rust versions, as a stored
/// key must (std's `DefaultHasher` promises neither).
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// The key of the row of `connection_id`'s subscription `id` in its ordered partition.
fn ordered_key(connection_id: &str, id: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        (
            "connectionId".to_owned(),
            s(format!("{ORDERED_PREFIX}{}", fnv1a(connection_id) % SHARDS)),
        ),
        ("sk".to_owned(), s(format!("{connection_id}#{id}"))),
    ])
}

fn index_row_sk(detail_type: DetailType, id: &str) -> String {
    format!("{INDEX_ROW_PREFIX}{detail_type}#{id}")
}

impl DynamoConnectionStore {
    /// The table named `table`, through the DynamoDB client of this SDK configuration.
    pub fn from_sdk_config(config: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        Self::new(aws_sdk_dynamodb::Client::new(config), table)
    }

    /// The table named `table`.
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            page_size: None,
        }
    }

    /// Reads the index `limit` rows a page (`Limit`) instead of DynamoDB's 1 MB pages: smaller
    /// steps of the notifier's read, and tests of paging.
    pub fn with_page_size(mut self, limit: i32) -> Self {
        self.page_size = Some(limit);
        self
    }

    /// The rows that store `subscription` under each of `detail_types`: its `sub#` row first,
    /// then one index row per type. What [`ConnectionStore::add`] writes (with the count), and
    /// what a bulk loader (the notifier's benchmark) writes to fill a table the same way.
    pub fn subscription_rows(
        subscription: &StoredSubscription,
        detail_types: &[DetailType],
    ) -> Vec<HashMap<String, AttributeValue>> {
        let mut request = HashMap::from([
            ("connectionId".to_owned(), s(&subscription.connection_id)),
            ("subscriptionId".to_owned(), s(&subscription.id)),
            ("query".to_owned(), s(&subscription.query)),
            (
                "variables".to_owned(),
                s(subscription.variables.to_string()),
            ),
            ("expiresAt".to_owned(), Self::expires_at()),
        ]);
        if let Some(name) = &subscription.operation_name {
            request.insert("operationName".to_owned(), s(name));
        }
        let mut main = request.clone();
        main.insert(
            "sk".to_owned(),
            s(format!("{SUBSCRIPTION_PREFIX}{}", subscription.id)),
        );
        let mut rows = vec![main];
        for &detail_type in detail_types {
            let mut row = request.clone();
            row.insert(
                "sk".to_owned(),
                s(index_row_sk(detail_type, &subscription.id)),
            );
            row.insert(
                "subscribedTo".to_owned(),
                s(subscribed_to_key(detail_type, &subscription.connection_id)),
            );
            rows.push(row);
        }
        rows
    }

    /// Deletes these rows, sending again what DynamoDB hands back unprocessed.
    async fn delete_all(&self, mut deletes: Vec<WriteRequest>) -> Result<(), GatewayError> {
        for attempt in 0..BATCH_WRITE_TRIES {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
            }
            let output = self
                .client
                .batch_write_item()
                .request_items(&self.table, deletes)
                .send()
                .await
                .map_err(table_error)?;
            deletes = output
                .unprocessed_items
                .and_then(|mut unprocessed| unprocessed.remove(&self.table))
                .unwrap_or_default();
            if deletes.is_empty() {
                return Ok(());
            }
        }
        Err(GatewayError::Table(format!(
            "{} rows still unprocessed after {BATCH_WRITE_TRIES} tries",
            deletes.len()
        )))
    }

    /// Stores a subscription's rows (its `sub#` row first, on the condition that there is
    /// none) with its count, in one transaction whose conditions hold the count to `max`.
    async fn add_rows(
        &self,
        connection_id: &str,
        rows: Vec<HashMap<String, AttributeValue>>,
        max: usize,
    ) -> Result<Added, GatewayError> {
        let count = Update::builder()
            .table_name(&self.table)
            .key("connectionId", s(connection_id))
            .key("sk", s(CONNECTION_ROW))
            .update_expression("SET subscriptions = if_not_exists(subscriptions, :zero) + :one")
            .condition_expression(
                "attribute_exists(sk) AND (attribute_not_exists(subscriptions) OR subscriptions < :max)",
            )
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":max", n(max))
            .build()
            .map_err(|e| GatewayError::Table(e.to_string()))?;
        let mut transaction = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(count).build());
        for (i, row) in rows.into_iter().enumerate() {
            let mut put = Put::builder().table_name(&self.table).set_item(Some(row));
            if i == 0 {
                put = put.condition_expression("attribute_not_exists(sk)");
            }
            let put = put
                .build()
                .map_err(|e| GatewayError::Table(e.to_string()))?;
            transaction = transaction.transact_items(TransactWriteItem::builder().put(put).build());
        }
        let result = transaction.send().await;
        match result {
            Ok(_) => Ok(Added::Stored),
            Err(error) => match failed_conditions(&error).as_deref() {
                // A duplicate first, as the local socket (async-graphql) answers it.
                Some([_, true, ..]) => Ok(Added::Duplicate),
                Some([true, ..]) => Ok(Added::TooMany),
                _ => Err(table_error(error)),
            },
        }
    }

    fn expires_at() -> AttributeValue {
        AttributeValue::N((chrono::Utc::now().timestamp() + ROW_LIFETIME_SECS).to_string())
    }
}

#[async_trait]
impl ConnectionStore for DynamoConnectionStore {
    async fn open(&self, connection_id: &str) -> Result<(), GatewayError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("connectionId", s(connection_id))
            .item("sk", s(CONNECTION_ROW))
            .item("initialized", AttributeValue::Bool(false))
            .item("expiresAt", Self::expires_at())
            .send()
            .await
            .map_err(table_error)?;
        Ok(())
    }

    async fn initialize(&self, connection_id: &str) -> Result<bool, GatewayError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("connectionId", s(connection_id))
            .key("sk", s(CONNECTION_ROW))
            .update_expression(
                "SET initialized = :yes, expiresAt = if_not_exists(expiresAt, :expires)",
            )
            .condition_expression("attribute_not_exists(initialized) OR initialized = :no")
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
            .expression_attribute_values(":no", AttributeValue::Bool(false))
            .expression_attribute_values(":expires", Self::expires_at())
            .send()
            .await;
        written(result, |e| e.is_conditional_check_failed_exception())
    }

    async fn connection(
        &self,
        connection_id: &str,
    ) -> Result<Option<ConnectionState>, GatewayError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("connectionId", s(connection_id))
            .key("sk", s(CONNECTION_ROW))
            .consistent_read(true)
            .send()
            .await
            .map_err(table_error)?;
        Ok(output.item.map(|row| ConnectionState {
            initialized: row
                .get("initialized")
                .and_then(|v| v.as_bool().ok())
                .copied()
                .unwrap_or(false),
            subscriptions: number(&row, "subscriptions")
                .and_then(|count| usize::try_from(count).ok())
                .unwrap_or(0),
        }))
    }

    async fn take_token(
        &self,
        connection_id: &str,
        rate: MessageRate,
        now_ms: i64,
    ) -> Result<bool, GatewayError> {
        for _ in 0..TOKEN_TRIES {
            let row = self
                .client
                .get_item()
                .table_name(&self.table)
                .key("connectionId", s(connection_id))
                .key("sk", s(CONNECTION_ROW))
                .projection_expression("rateTokens, rateAt")
                .consistent_read(true)
                .send()
                .await
                .map_err(table_error)?
                .item;
            let Some(row) = row else {
                return Ok(true); // not open: the protocol answers what it sends
            };
            let held = number(&row, "rateTokens").zip(number(&row, "rateAt"));
            let bucket = held.map_or_else(
                || TokenBucket::full(rate, now_ms),
                |(milli_tokens, at_ms)| TokenBucket {
                    milli_tokens,
                    at_ms,
                },
            );
            let Some(taken) = bucket.take(rate, now_ms) else {
                return Ok(false);
            };
            let update = self
                .client
                .update_item()
                .table_name(&self.table)
                .key("connectionId", s(connection_id))
                .key("sk", s(CONNECTION_ROW))
                .update_expression("SET rateTokens = :tokens, rateAt = :at")
                .expression_attribute_values(":tokens", n(taken.milli_tokens))
                .expression_attribute_values(":at", n(taken.at_ms));
            let update = match held {
                None => update
                    .condition_expression("attribute_exists(sk) AND attribute_not_exists(rateAt)"),
                Some(_) => update
                    .condition_expression("rateTokens = :held AND rateAt = :heldAt")
                    .expression_attribute_values(":held", n(bucket.milli_tokens))
                    .expression_attribute_values(":heldAt", n(bucket.at_ms)),
            };
            if written(update.send().await, |e| {
                e.is_conditional_check_failed_exception()
            })? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn add(
        &self,
        subscription: &StoredSubscription,
        detail_types: &[DetailType],
        max: usize,
    ) -> Result<Added, GatewayError> {
        let rows = Self::subscription_rows(subscription, detail_types);
        self.add_rows(&subscription.connection_id, rows, max).await
    }

    async fn remove(&self, connection_id: &str, id: &str) -> Result<(), GatewayError> {
        let delete = Delete::builder()
            .table_name(&self.table)
            .key("connectionId", s(connection_id))
            .key("sk", s(format!("{SUBSCRIPTION_PREFIX}{id}")))
            .condition_expression("attribute_exists(sk)")
            .build()
            .map_err(|e| GatewayError::Table(e.to_string()))?;
        let count = Update::builder()
            .table_name(&self.table)
            .key("connectionId", s(connection_id))
            .key("sk", s(CONNECTION_ROW))
            .update_expression("SET subscriptions = subscriptions - :one")
            .condition_expression("subscriptions >= :one")
            .expression_attribute_values(":one", n(1))
            .build()
            .map_err(|e| GatewayError::Table(e.to_string()))?;
        let ordered = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(ordered_key(connection_id, id)))
            .build()
            .map_err(|e| GatewayError::Table(e.to_string()))?;
        let mut transaction = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().delete(delete).build())
            .transact_items(TransactWriteItem::builder().update(count).build())
            .transact_items(TransactWriteItem::builder().delete(ordered).build());
        // Its index rows, under whichever types it was stored (deleting a row that is not
        // there is no error).
        for detail_type in DetailType::ALL {
            let delete = Delete::builder()
                .table_name(&self.table)
                .key("connectionId", s(connection_id))
                .key("sk", s(index_row_sk(detail_type, id)))
                .build()
                .map_err(|e| GatewayError::Table(e.to_string()))?;
            transaction =
                transaction.transact_items(TransactWriteItem::builder().delete(delete).build());
        }
        let result = transaction.send().await;
        match result {
            Ok(_) => Ok(()),
            // No such subscription (or its connection row is gone): nothing to free.
            Err(error) if failed_conditions(&error).is_some_and(|f| f.contains(&true)) => Ok(()),
            Err(error) => Err(table_error(error)),
        }
    }

    async fn close(&self, connection_id: &str) -> Result<(), GatewayError> {
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("connectionId = :id")
            .expression_attribute_values(":id", s(connection_id))
            .projection_expression("connectionId, sk, ordered")
            .into_paginator()
            .send();
        while let Some(page) = pages.try_next().await.map_err(table_error)? {
            // A subscription that resumed has a row in an ordered partition too.
            let keys: Vec<HashMap<String, AttributeValue>> = page
                .items()
                .iter()
                .flat_map(|row| {
                    let mut key = row.clone();
                    key.remove("ordered");
                    let ordered = row.get("ordered").and(text(row, "sk")).and_then(|sk| {
                        let id = sk.strip_prefix(SUBSCRIPTION_PREFIX)?;
                        Some(ordered_key(connection_id, id))
                    });
                    std::iter::once(key).chain(ordered)
                })
                .collect();
            for chunk in keys.chunks(BATCH_WRITE_MAX) {
                let deletes = chunk
                    .iter()
                    .map(|key| {
                        let delete = DeleteRequest::builder()
                            .set_key(Some(key.clone()))
                            .build()
                            .map_err(|e| GatewayError::Table(e.to_string()))?;
                        Ok(WriteRequest::builder().delete_request(delete).build())
                    })
                    .collect::<Result<Vec<_>, GatewayError>>()?;
                self.delete_all(deletes).await?;
            }
        }
        Ok(())
    }

    fn shards(&self) -> u32 {
        SHARDS
    }

    async fn subscribed_page(
        &self,
        detail_type: DetailType,
        shard: u32,
        after: Option<&str>,
    ) -> Result<IndexPage, GatewayError> {
        let key = format!("{detail_type}#{shard}");
        let start = after.map(|after| start_key(after, &key)).transpose()?;
        // Up to 1 MB a page (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Query.Pagination.html).
        let page = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(SUBSCRIBED_TO_INDEX)
            .key_condition_expression("subscribedTo = :key")
            .expression_attribute_values(":key", s(key))
            .set_limit(self.page_size)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(table_error)?;
        Ok(IndexPage {
            subscriptions: page.items().iter().filter_map(stored).collect(),
            next: page.last_evaluated_key().map(cursor),
        })
    }
}

/// A page's `LastEvaluatedKey` (the index's and the table's keys, all strings) as a cursor.
fn cursor(key: &HashMap<String, AttributeValue>) -> String {
    let key: serde_json::Map<String, Value> = key
        .iter()
        .filter_map(|(name, value)| Some((name.clone(), Value::from(value.as_s().ok()?.as_str()))))
        .collect();
    Value::Object(key).to_string()
}

/// The `ExclusiveStartKey` a cursor of the index partition `key` stands for; an error for one
/// that is not such a cursor.
fn start_key(cursor: &str, key: &str) -> Result<HashMap<String, AttributeValue>, GatewayError> {
    let malformed = || GatewayError::MalformedEvent(format!("not a cursor of {key}: {cursor}"));
    let names: HashMap<String, String> = serde_json::from_str(cursor).map_err(|_| malformed())?;
    if names.get("subscribedTo").map(String::as_str) != Some(key)
        || !names.contains_key("connectionId")
        || !names.contains_key("sk")
    {
        return Err(malformed());
    }
    Ok(names
        .into_iter()
        .map(|(name, value)| (name, s(value)))
        .collect())
}

/// Subscriptions that resumed: a row each in a partition `ordered#<shard>` of the same table
/// (key `<connection>#<id>`), read consistently, with `deliveredThrough` and the pump's lease
/// (`lease`, `leaseUntil` in epoch milliseconds). The subscription's `sub#` row names it
/// (`ordered`), so that `complete` and `$disconnect` remove it with the rest.
#[async_trait]
impl OrderedSubscriptions for DynamoConnectionStore {
    async fn add_ordered(
        &self,
        subscription: &StoredSubscription,
        after: Position,
        max: usize,
    ) -> Result<Added, GatewayError> {
        let mut rows = Self::subscription_rows(subscription, &[]);
        let key = ordered_key(&subscription.connection_id, &subscription.id);
        let mut ordered = rows[0].clone();
        rows[0].insert("ordered".to_owned(), key["connectionId"].clone());
        ordered.extend(key);
        ordered.insert("subscriber".to_owned(), s(&subscription.connection_id));
        ordered.insert("deliveredThrough".to_owned(), n(after));
        rows.push(ordered);
        self.add_rows(&subscription.connection_id, rows, max).await
    }

    fn ordered_shards(&self) -> u32 {
        SHARDS
    }

    async fn ordered_page(
        &self,
        shard: u32,
        after: Option<&str>,
    ) -> Result<OrderedPage, GatewayError> {
        let partition = format!("{ORDERED_PREFIX}{shard}");
        let start = after
            .map(|after| {
                let key: HashMap<String, String> = serde_json::from_str(after).map_err(|_| {
                    GatewayError::MalformedEvent(format!("not a cursor of {partition}: {after}"))
                })?;
                Ok::<_, GatewayError>(key.into_iter().map(|(k, v)| (k, s(v))).collect())
            })
            .transpose()?;
        let page = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("connectionId = :partition")
            .expression_attribute_values(":partition", s(partition))
            .projection_expression("connectionId, sk, subscriber, subscriptionId")
            .consistent_read(true)
            .set_limit(self.page_size)
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(table_error)?;
        Ok(OrderedPage {
            subscriptions: page
                .items()
                .iter()
                .filter_map(|row| {
                    Some(SubscriptionKey {
                        connection_id: text(row, "subscriber")?.to_owned(),
                        id: text(row, "subscriptionId")?.to_owned(),
                    })
                })
                .collect(),
            next: page.last_evaluated_key().map(cursor),
        })
    }

    async fn lease(
        &self,
        key: &SubscriptionKey,
        token: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Option<OrderedSubscription>, GatewayError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(ordered_key(&key.connection_id, &key.id)))
            .update_expression("SET lease = :token, leaseUntil = :until")
            .condition_expression(
                "attribute_exists(sk) AND (attribute_not_exists(lease) OR leaseUntil < :now)",
            )
            .expression_attribute_values(":token", s(token))
            .expression_attribute_values(":until", n(until_ms))
            .expression_attribute_values(":now", n(now_ms))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(output) => Ok(output.attributes().and_then(|row| {
                let mut row = row.clone();
                // The request as its `sub#` row holds it, under the real connection id.
                row.insert("connectionId".to_owned(), s(&key.connection_id));
                Some(OrderedSubscription {
                    delivered_through: number(&row, "deliveredThrough")?,
                    subscription: stored(&row)?,
                })
            })),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(None)
            }
            Err(error) => Err(table_error(error)),
        }
    }

    async fn advance(
        &self,
        key: &SubscriptionKey,
        token: &str,
        through: Position,
    ) -> Result<bool, GatewayError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(ordered_key(&key.connection_id, &key.id)))
            .update_expression("SET deliveredThrough = :through")
            .condition_expression("lease = :token")
            .expression_attribute_values(":through", n(through))
            .expression_attribute_values(":token", s(token))
            .send()
            .await;
        written(result, |e| e.is_conditional_check_failed_exception())
    }

    async fn release(&self, key: &SubscriptionKey, token: &str) -> Result<(), GatewayError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(ordered_key(&key.connection_id, &key.id)))
            .update_expression("REMOVE lease, leaseUntil")
            .condition_expression("lease = :token")
            .expression_attribute_values(":token", s(token))
            .send()
            .await;
        written(result, |e| e.is_conditional_check_failed_exception()).map(|_| ())
    }
}
