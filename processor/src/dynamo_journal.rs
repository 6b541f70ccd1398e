//! [`DynamoJournal`]: the [`Journal`] on a DynamoDB table (layout: [`domain::journal`]).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, Put, TransactWriteItem, Update};
use domain::Backoff;
use domain::journal::{
    AT, DETAIL_TYPE, ENVELOPE, EXPIRES_AT, HEAD, LAST, PART, POSITION, RETENTION_SECS, cursor,
    entries, marker,
};

use crate::journal::{Journal, JournalError, Position};
use crate::mapping::OutboxEvent;

/// The most actions one TransactWriteItems call takes
/// (<https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html>):
/// the head, and an entry and a marker per event.
const MAX_TRANSACTION_ITEMS: usize = 100;
const EVENTS_PER_TRANSACTION: usize = (MAX_TRANSACTION_ITEMS - 1) / 2;
/// The most keys one BatchGetItem call takes
/// (<https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_BatchGetItem.html>).
const MAX_BATCH_GET_KEYS: usize = 100;
/// Tries of one transaction before the batch goes back to the stream. Another shard's
/// processor taking the same head makes a try fail (its condition, or a
/// TransactionConflict), and so does throttling; both pass.
const TRIES: u32 = 16;
const BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(20),
    max: Duration::from_millis(1000),
};

/// The journal table. Each batch of events takes the next positions in one transaction that
/// moves the head from the last position it read (on that condition), puts an entry per event
/// and a marker per event (on the condition that there is none), so positions are dense, and an
/// event is journaled once: markers are looked up first, and a concurrent journaling of the
/// same event fails the transaction, which then starts over. Processors of several stream
/// shards share the head: each transaction is serialised by its condition, and the losers try
/// again with backoff and jitter
/// (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/transaction-apis.html>,
/// "Transaction conflict handling").
#[derive(Debug, Clone)]
pub struct DynamoJournal {
    client: Client,
    table: String,
}

impl DynamoJournal {
    /// The journal in table `table`.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// The positions of those of `event_ids` already journaled.
    async fn journaled(
        &self,
        event_ids: &[&str],
    ) -> Result<HashMap<String, Position>, JournalError> {
        let mut found = HashMap::new();
        for chunk in event_ids.chunks(MAX_BATCH_GET_KEYS) {
            let keys = chunk.iter().map(|id| key(marker(id), 0)).collect();
            let mut request = KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .consistent_read(true)
                .build()
                .map_err(failure)?;
            for attempt in 1..=TRIES {
                let output = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request.clone())
                    .send()
                    .await
                    .map_err(failure)?;
                for item in output
                    .responses()
                    .and_then(|r| r.get(&self.table))
                    .into_iter()
                    .flatten()
                {
                    let part = item.get(PART).and_then(|v| v.as_s().ok());
                    let id = part.and_then(|p| p.strip_prefix("event#"));
                    if let (Some(id), Some(at)) = (id, number(item, AT)) {
                        found.insert(id.to_owned(), at);
                    }
                }
                // Keys the call could not read (throttling) come back to be asked again.
                match output.unprocessed_keys().and_then(|u| u.get(&self.table)) {
                    Some(rest) if !rest.keys().is_empty() => {
                        request = rest.clone();
                        tokio::time::sleep(BACKOFF.jittered(attempt, fastrand::f64())).await;
                    }
                    _ => break,
                }
            }
        }
        Ok(found)
    }

    /// The last position given out.
    async fn head(&self) -> Result<Position, JournalError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(HEAD.to_owned(), 0)))
            .consistent_read(true)
            .send()
            .await
            .map_err(failure)?;
        Ok(output
            .item()
            .and_then(|item| number(item, LAST))
            .unwrap_or(0))
    }

    /// Journals `events` (at most [`EVENTS_PER_TRANSACTION`]) at the positions after `last`,
    /// the head as read, in one transaction; `Ok(false)` when a condition failed (the head
    /// moved, or an event is journaled already) or another transaction got in the way, and
    /// nothing was written. [`Journal::append`] reads the head and calls it; public for tests of
    /// the conditions.
    #[doc(hidden)]
    pub async fn write_after(
        &self,
        events: &[OutboxEvent],
        last: Position,
    ) -> Result<bool, JournalError> {
        self.write(&events.iter().collect::<Vec<_>>(), last).await
    }

    async fn write(&self, events: &[&OutboxEvent], last: Position) -> Result<bool, JournalError> {
        let expires_at = n(chrono_now() + RETENTION_SECS);
        let next = last + events.len() as Position;
        let head = if last == 0 {
            "attribute_not_exists(#last)"
        } else {
            "#last = :last"
        };
        let mut update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(HEAD.to_owned(), 0)))
            .update_expression("SET #last = :next")
            .condition_expression(head)
            .expression_attribute_names("#last", LAST)
            .expression_attribute_values(":next", n(next));
        if last != 0 {
            update = update.expression_attribute_values(":last", n(last));
        }
        let mut items = vec![
            TransactWriteItem::builder()
                .update(update.build().map_err(failure)?)
                .build(),
        ];
        for (position, event) in (last + 1..).zip(events) {
            let mut envelope = event.envelope.clone();
            envelope.metadata.cursor = Some(cursor(position));
            let envelope = serde_json::to_string(&envelope).map_err(failure)?;
            let entry = Put::builder()
                .table_name(&self.table)
                .set_item(Some(key(entries(position), position)))
                .item(
                    DETAIL_TYPE,
                    AttributeValue::S(event.detail_type.as_str().to_owned()),
                )
                .item(ENVELOPE, AttributeValue::S(envelope))
                .item(EXPIRES_AT, expires_at.clone())
                .condition_expression("attribute_not_exists(#part)")
                .expression_attribute_names("#part", PART)
                .build()
                .map_err(failure)?;
            let mark = Put::builder()
                .table_name(&self.table)
                .set_item(Some(key(marker(&event.envelope.metadata.event_id), 0)))
                .item(AT, n(position))
                .item(EXPIRES_AT, expires_at.clone())
                .condition_expression("attribute_not_exists(#part)")
                .expression_attribute_names("#part", PART)
                .build()
                .map_err(failure)?;
            items.push(TransactWriteItem::builder().put(entry).build());
            items.push(TransactWriteItem::builder().put(mark).build());
        }
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        // A conflict with another transaction on the head comes back as a cancellation whose
        // reason is TransactionConflict, like a failed condition: both are a lost race.
        match result {
            Ok(_) => Ok(true),
            Err(error) => match error.as_service_error() {
                Some(
                    TransactWriteItemsError::TransactionCanceledException(_)
                    | TransactWriteItemsError::TransactionInProgressException(_)
                    | TransactWriteItemsError::RequestLimitExceeded(_)
                    | TransactWriteItemsError::ProvisionedThroughputExceededException(_)
                    | TransactWriteItemsError::ThrottlingException(_),
                ) => {
                    tracing::debug!(error = %DisplayErrorContext(&error), "journal write lost a race; trying again");
                    Ok(false)
                }
                _ => Err(failure(error)),
            },
        }
    }
}

#[async_trait]
impl Journal for DynamoJournal {
    async fn append(&self, events: &[OutboxEvent]) -> Result<Vec<Position>, JournalError> {
        let ids: Vec<&str> = events
            .iter()
            .map(|e| e.envelope.metadata.event_id.as_str())
            .collect();
        // An event offered twice in one call is journaled once. DynamoDB refuses a
        // BatchGetItem that names a key twice and a transaction that touches an item twice
        // (ValidationException:
        // <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_BatchGetItem.html>,
        // <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_TransactWriteItems.html>),
        // and a batch refused that way would be refused on every retry.
        let mut seen = HashSet::new();
        let unique: Vec<&OutboxEvent> = events
            .iter()
            .filter(|e| seen.insert(e.envelope.metadata.event_id.as_str()))
            .collect();
        let unique_ids: Vec<&str> = unique
            .iter()
            .map(|e| e.envelope.metadata.event_id.as_str())
            .collect();
        let mut positions = self.journaled(&unique_ids).await?;
        let mut attempt = 0;
        loop {
            let new: Vec<&OutboxEvent> = unique
                .iter()
                .copied()
                .filter(|e| !positions.contains_key(&e.envelope.metadata.event_id))
                .take(EVENTS_PER_TRANSACTION)
                .collect();
            if new.is_empty() {
                break;
            }
            let last = self.head().await?;
            if self.write(&new, last).await? {
                for (position, event) in (last + 1..).zip(&new) {
                    positions.insert(event.envelope.metadata.event_id.clone(), position);
                }
                attempt = 0;
                continue;
            }
            attempt += 1;
            if attempt >= TRIES {
                return Err(JournalError(format!(
                    "{TRIES} tries to take the journal's head failed"
                )));
            }
            tokio::time::sleep(BACKOFF.jittered(attempt, fastrand::f64())).await;
            // A marker's condition may be what failed: the event was journaled meanwhile.
            let new_ids: Vec<&str> = new
                .iter()
                .map(|e| e.envelope.metadata.event_id.as_str())
                .collect();
            positions.extend(self.journaled(&new_ids).await?);
        }
        ids.iter()
            .map(|id| {
                positions
                    .get(*id)
                    .copied()
                    .ok_or_else(|| JournalError(format!("event {id} has no position")))
            })
            .collect()
    }
}

fn key(part: String, position: Position) -> HashMap<String, AttributeValue> {
    HashMap::from([
        (PART.to_owned(), AttributeValue::S(part)),
        (POSITION.to_owned(), n(position)),
    ])
}

fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> Option<i64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn failure(error: impl std::error::Error) -> JournalError {
    JournalError(DisplayErrorContext(error).to_string())
}
