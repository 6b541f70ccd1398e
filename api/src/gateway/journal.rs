//! [`DynamoJournal`]: the [`Journal`] the processor writes (layout: [`domain::journal`]), read.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use domain::journal::{
    DETAIL_TYPE, ENTRIES_PER_PARTITION, ENVELOPE, EXPIRES_AT, HEAD, LAST, PART, POSITION, cursor,
    entries,
};
use domain::{DetailType, Envelope};

use super::Journal;
use crate::events::{BookEvent, EventLog, LogError, LogPage, Position};
use crate::sdk::error_text;

/// The journal table, read consistently: an entry the head counts is always read back. An entry
/// past its `expiresAt` counts as gone, whether or not TTL has deleted it yet (it deletes
/// within days: <https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/howitworks-ttl.html>).
#[derive(Debug, Clone)]
pub struct DynamoJournal {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

type Item = HashMap<String, AttributeValue>;

fn number(item: &Item, name: &str) -> Option<i64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

fn key(part: String, position: Position) -> Item {
    HashMap::from([
        (PART.to_owned(), AttributeValue::S(part)),
        (POSITION.to_owned(), AttributeValue::N(position.to_string())),
    ])
}

fn unavailable(error: impl std::error::Error) -> LogError {
    LogError::Unavailable(error_text(error))
}

impl DynamoJournal {
    /// The journal in table `table`.
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    /// The entry at `position`, unless it is gone or expired.
    async fn kept(&self, position: Position, now: i64) -> Result<bool, LogError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(entries(position), position)))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(output.item().is_some_and(|item| alive(item, now)))
    }

    /// The error for a position whose next entry is gone: where the kept entries start, found
    /// by halving (entries expire in the order of their positions).
    async fn expired(
        &self,
        after: Position,
        head: Position,
        now: i64,
    ) -> Result<LogError, LogError> {
        if !self.kept(head, now).await? {
            return Ok(LogError::Expired {
                resume_after: cursor(head),
                oldest: None,
            });
        }
        let (mut gone, mut kept) = (after + 1, head);
        while kept - gone > 1 {
            let middle = gone + (kept - gone) / 2;
            if self.kept(middle, now).await? {
                kept = middle;
            } else {
                gone = middle;
            }
        }
        Ok(LogError::Expired {
            resume_after: cursor(kept - 1),
            oldest: Some(cursor(kept)),
        })
    }
}

fn alive(item: &Item, now: i64) -> bool {
    number(item, EXPIRES_AT).is_none_or(|expires| expires > now)
}

fn event(item: &Item) -> Option<BookEvent> {
    let detail_type = DetailType::parse(item.get(DETAIL_TYPE)?.as_s().ok()?)?;
    let envelope: Envelope = serde_json::from_str(item.get(ENVELOPE)?.as_s().ok()?).ok()?;
    Some(BookEvent::new(detail_type, envelope))
}

#[async_trait]
impl EventLog for DynamoJournal {
    async fn read(
        &self,
        after: Position,
        until: Position,
        limit: usize,
    ) -> Result<LogPage, LogError> {
        let head = self.head().await?;
        if after > head || after < 0 {
            return Err(LogError::Unknown);
        }
        let now = chrono::Utc::now().timestamp();
        let until = until.min(head);
        let mut page = LogPage {
            events: Vec::new(),
            through: after,
        };
        let mut expected = after + 1;
        // An expired cursor is refused even when there is nothing to read after it.
        if expected <= head && !self.kept(expected, now).await? {
            return Err(self.expired(after, head, now).await?);
        }
        while expected <= until && page.events.len() < limit {
            let last =
                until.min((expected / ENTRIES_PER_PARTITION + 1) * ENTRIES_PER_PARTITION - 1);
            let wanted = usize::try_from(last - expected + 1).unwrap_or(usize::MAX);
            let limit = i32::try_from(wanted.min(limit - page.events.len())).unwrap_or(i32::MAX);
            let output = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#part = :part AND #position BETWEEN :from AND :to")
                .expression_attribute_names("#part", PART)
                .expression_attribute_names("#position", POSITION)
                .expression_attribute_values(":part", AttributeValue::S(entries(expected)))
                .expression_attribute_values(":from", AttributeValue::N(expected.to_string()))
                .expression_attribute_values(":to", AttributeValue::N(last.to_string()))
                .consistent_read(true)
                .limit(limit)
                .send()
                .await
                .map_err(unavailable)?;
            let items = output.items();
            if items.is_empty() {
                break;
            }
            for item in items {
                let Some(position) = number(item, POSITION) else {
                    break;
                };
                // Positions are dense: a hole is an entry gone, and the read stops before it
                // (the next one answers for it).
                if position != expected || !alive(item, now) {
                    return Ok(page);
                }
                match event(item) {
                    Some(event) => page.events.push(event),
                    None => tracing::error!(position, "skipping a journal entry that is no event"),
                }
                page.through = position;
                expected = position + 1;
            }
        }
        Ok(page)
    }
}

#[async_trait]
impl Journal for DynamoJournal {
    async fn head(&self) -> Result<Position, LogError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(HEAD.to_owned(), 0)))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(output
            .item()
            .and_then(|item| number(item, LAST))
            .unwrap_or(0))
    }
}
