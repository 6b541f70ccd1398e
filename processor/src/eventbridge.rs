//! The EventBridge adapter of [`EventPublisher`].

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::error::DisplayErrorContext;
use aws_sdk_eventbridge::types::{PutEventsRequestEntry, PutEventsResultEntry};

use crate::mapping::OutboxEvent;
use crate::publisher::{EventPublisher, PublishError};

/// The most entries one `PutEvents` call takes.
pub const MAX_ENTRIES_PER_CALL: usize = 10;
/// The largest `PutEvents` request, by EventBridge's reckoning of entry sizes.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// Publishes to an EventBridge bus: call after call in the events' order, each of at most ten
/// entries and 256 KiB, checking every entry's result and retrying the refused ones with
/// backoff and jitter.
///
/// Order within a call is not kept when an entry is refused: EventBridge ingests a call's
/// entries independently, so a retried entry lands after the later entries of its call that
/// were accepted the first time. (EventBridge does not promise delivery order in any case;
/// consumers dedupe on `metadata.eventId` and must not rely on the order of events.)
#[derive(Debug, Clone)]
pub struct EventBridgePublisher {
    client: Client,
    bus_name: String,
    max_attempts: u32,
    first_backoff: Duration,
}

impl EventBridgePublisher {
    /// A publisher to the bus named `bus_name`, trying each entry up to 5 times within about
    /// 3 seconds (full jitter from 100 ms, doubling, at most 2 s apart).
    ///
    /// EventBridge asks callers to retry the entries a PutEvents call failed, with backoff
    /// (<https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-putevents.html>, "Handling
    /// failures with PutEvents"); its PutEvents quota throttles beyond a per-Region rate
    /// (<https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-quota.html>). These tries only
    /// ride out a short burst inside one invocation: what still fails goes back to the stream as
    /// a batch item failure, and the stream mapping retries it for as long as the stream keeps
    /// the record (template.yaml: MaximumRetryAttempts and MaximumRecordAgeInSeconds are -1).
    pub fn new(client: Client, bus_name: impl Into<String>) -> Self {
        Self {
            client,
            bus_name: bus_name.into(),
            max_attempts: 5,
            first_backoff: Duration::from_millis(100),
        }
    }

    /// The entry for one event.
    pub fn entry(&self, event: &OutboxEvent) -> Result<PutEventsRequestEntry, serde_json::Error> {
        Ok(PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus_name)
            .source(event.source())
            .detail_type(event.detail_type.as_str())
            .detail(event.detail_json()?)
            .build())
    }

    /// Puts `entries` in order. On failure, names the first entry that is not on the bus;
    /// every entry before it is. Calls stop at the first call that cannot be completed, so
    /// nothing after a failed entry's call is sent.
    pub async fn put_entries(
        &self,
        entries: Vec<PutEventsRequestEntry>,
    ) -> Result<(), PublishError> {
        let mut offset = 0;
        for chunk in chunks(entries) {
            let len = chunk.len();
            self.put_chunk(chunk)
                .await
                .map_err(|(index, reason)| PublishError {
                    first_failed: offset + index,
                    reason,
                })?;
            offset += len;
        }
        Ok(())
    }

    /// Puts one call's worth of entries, retrying what fails; on failure the index of the
    /// first entry that could not be put.
    async fn put_chunk(&self, chunk: Vec<PutEventsRequestEntry>) -> Result<(), (usize, String)> {
        // (index in chunk, entry) of the entries still to put.
        let mut pending: Vec<(usize, PutEventsRequestEntry)> =
            chunk.into_iter().enumerate().collect();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (indexes, entries): (Vec<usize>, Vec<PutEventsRequestEntry>) =
                pending.iter().cloned().unzip();
            let failed: Vec<(usize, String)> = match self
                .client
                .put_events()
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(output) => refused(output.entries(), &indexes),
                Err(error) => {
                    let reason = DisplayErrorContext(error).to_string();
                    indexes
                        .iter()
                        .map(|index| (*index, reason.clone()))
                        .collect()
                }
            };
            if failed.is_empty() {
                return Ok(());
            }
            if attempt >= self.max_attempts {
                let (index, reason) = failed
                    .into_iter()
                    .min_by_key(|(index, _)| *index)
                    .unwrap_or_default();
                return Err((index, reason));
            }
            tracing::warn!(
                failed = failed.len(),
                attempt,
                "PutEvents entries failed; retrying them"
            );
            pending.retain(|(index, _)| failed.iter().any(|(failed, _)| failed == index));
            tokio::time::sleep(self.backoff(attempt)).await;
        }
    }

    /// Exponential backoff with full jitter.
    fn backoff(&self, attempt: u32) -> Duration {
        let backoff = domain::Backoff {
            first: self.first_backoff,
            max: Duration::from_secs(2),
        };
        backoff.jittered(attempt, fastrand::f64())
    }
}

#[async_trait]
impl EventPublisher for EventBridgePublisher {
    async fn publish(&self, events: &[OutboxEvent]) -> Result<(), PublishError> {
        let mut entries = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            match self.entry(event) {
                Ok(entry) => entries.push(entry),
                Err(error) => {
                    // Publish what comes before it, then report it.
                    self.put_entries(entries).await?;
                    return Err(PublishError {
                        first_failed: index,
                        reason: error.to_string(),
                    });
                }
            }
        }
        self.put_entries(entries).await
    }
}

/// An entry's size as EventBridge counts it against the request limit.
pub fn entry_size(entry: &PutEventsRequestEntry) -> usize {
    let text = |s: Option<&str>| s.map_or(0, str::len);
    let time = if entry.time().is_some() { 14 } else { 0 };
    time + text(entry.source())
        + text(entry.detail_type())
        + text(entry.detail())
        + entry.resources().iter().map(String::len).sum::<usize>()
}

/// The entries of a call that are not on the bus, as `(index in chunk, reason)`, from the
/// call's results: `indexes[i]` is the chunk index of the call's entry `i`.
///
/// Amazon EventBridge API Reference, PutEvents: the response's `Entries` holds one result per
/// request entry, "the index of the response element is the same as the index in the request
/// array", and an entry that was not ingested carries an `ErrorCode`. An entry with no result
/// at all (a response shorter than the request) is not known to be on the bus, so it counts as
/// refused rather than as published.
fn refused(results: &[PutEventsResultEntry], indexes: &[usize]) -> Vec<(usize, String)> {
    indexes
        .iter()
        .enumerate()
        .filter_map(|(position, index)| match results.get(position) {
            Some(result) => result.error_code().map(|code| {
                let message = result.error_message().unwrap_or_default();
                (*index, format!("{code}: {message}"))
            }),
            None => Some((
                *index,
                format!(
                    "PutEvents answered {} results for {} entries; this one has none",
                    results.len(),
                    indexes.len()
                ),
            )),
        })
        .collect()
}

/// Splits entries, in order, into calls of at most [`MAX_ENTRIES_PER_CALL`] entries and
/// [`MAX_REQUEST_BYTES`]. (An entry too big on its own goes alone, and EventBridge refuses it.)
pub fn chunks(entries: Vec<PutEventsRequestEntry>) -> Vec<Vec<PutEventsRequestEntry>> {
    let mut chunks: Vec<Vec<PutEventsRequestEntry>> = Vec::new();
    let mut bytes = 0;
    for entry in entries {
        let size = entry_size(&entry);
        match chunks.last_mut() {
            Some(chunk)
                if chunk.len() < MAX_ENTRIES_PER_CALL && bytes + size <= MAX_REQUEST_BYTES =>
            {
                bytes += size;
                chunk.push(entry);
            }
            _ => {
                bytes = size;
                chunks.push(vec![entry]);
            }
        }
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(detail_bytes: usize) -> PutEventsRequestEntry {
        PutEventsRequestEntry::builder()
            .source("s")
            .detail_type("d")
            .detail("x".repeat(detail_bytes))
            .build()
    }

    #[test]
    fn chunks_hold_at_most_ten_entries_in_order() {
        let entries: Vec<_> = (0..25).map(entry).collect();
        let sizes: Vec<_> = chunks(entries).iter().map(Vec::len).collect();
        assert_eq!(sizes, [10, 10, 5]);
        let flattened: Vec<_> = chunks((0..25).map(entry).collect())
            .into_iter()
            .flatten()
            .map(|e| e.detail().unwrap().len())
            .collect();
        assert_eq!(flattened, (0..25).collect::<Vec<_>>());
    }

    #[test]
    fn an_entry_without_a_result_is_refused_not_published() {
        let ok = PutEventsResultEntry::builder().event_id("e").build();
        let throttled = PutEventsResultEntry::builder()
            .error_code("ThrottlingException")
            .error_message("slow down")
            .build();
        // Results for the entries at chunk indexes 4, 7 and 9 (a retry of three of them).
        let all = refused(&[ok.clone(), throttled.clone(), ok.clone()], &[4, 7, 9]);
        assert_eq!(all, [(7, "ThrottlingException: slow down".to_owned())]);
        let short = refused(&[ok], &[4, 7, 9]);
        assert_eq!(short.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [7, 9]);
        assert!(short[0].1.contains("1 results for 3 entries"), "{short:?}");
    }

    #[test]
    fn chunks_stay_under_the_request_size_limit() {
        let big = 100 * 1024;
        let sizes: Vec<_> = chunks(vec![entry(big), entry(big), entry(big), entry(10)])
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, [2, 2]);
        assert!(chunks(Vec::new()).is_empty());
    }
}
