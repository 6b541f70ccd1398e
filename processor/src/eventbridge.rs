//! The EventBridge adapter of [`EventPublisher`].

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::error::DisplayErrorContext;
use aws_sdk_eventbridge::types::{PutEventsRequestEntry, PutEventsResultEntry};
use domain::BookName;

use crate::mapping::OutboxEvent;
use crate::publisher::{EventPublisher, PublishError};

/// The most entries one `PutEvents` call takes.
pub const MAX_ENTRIES_PER_CALL: usize = 10;
/// The largest `PutEvents` request, by EventBridge's reckoning of entry sizes.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// Publishes to an EventBridge bus: call after call in the events' order, each of at most ten
/// entries and 256 KiB and never two changes of one book, checking every entry's result and
/// retrying the refused ones with backoff and jitter. A call is sent only once every entry of
/// the call before it is on the bus.
///
/// **Order at the bus.** Each book's changes are put on the bus in commit order, also when
/// EventBridge refuses an entry. EventBridge ingests a call's entries independently: when one
/// fails it goes on with the rest
/// (<https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-putevents.html>, "Handling
/// failures with PutEvents"), so a refused entry, once retried, lands after the later entries
/// of its call that were accepted. Since a call holds at most one change per book (see
/// [`chunks`]), only other books' changes can overtake it; its book's next change is in a
/// later call, which waits for it. If it never gets in, nothing after its call is sent, the
/// stream retries from its record, and the book's later changes follow it again. The stream
/// hands over each book's changes in commit order to begin with
/// (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Streams.html>: "for each
/// item that is modified ... the stream records appear in the same sequence as the actual
/// modifications"). Precisely: the first time each change of a book is put on the bus, all its
/// earlier changes are already there. A change can be put again later (its batch retried after
/// a refusal, a crash or a timeout), with the same `metadata.eventId`; a consumer that ignores
/// an `eventId` it has seen sees each book's changes, as published, in commit order.
///
/// **Order at the targets is not promised.** EventBridge does not promise to deliver events in
/// the order they were put: a delivery that fails is retried for up to 24 hours with backoff and
/// jitter while later events go on
/// (<https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-rule-retry-policy.html>), and
/// the targets (asynchronous Lambda invocation, SQS standard queues) do not keep order either.
/// So a consumer can still receive a book's `removed` before its `added`, or one change twice:
/// consumers dedupe on `metadata.eventId` and must not infer a book's state from the order
/// events arrive in (the activity consumers record each event once, whatever the order).
///
/// **Cost.** Keeping a book's changes in separate calls costs calls only when a batch holds
/// several changes of one book. A batch of 100 changes of 100 books takes 10 calls, as with
/// the limits alone; changes of few books take more, at least as many as the most changes one
/// book has in the batch: 100 changes alternating between two books take 50 calls, 100
/// changes of one book 100 calls. Calls are sequential round trips, so such a batch takes
/// that much longer to publish. ([`chunks`] splits greedily, which makes the fewest calls any
/// in-order split under these rules can.)
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

    /// The entry for one event, with its book.
    pub fn entry(&self, event: &OutboxEvent) -> Result<BookEntry, serde_json::Error> {
        Ok(BookEntry {
            book: event.envelope.data.name.clone(),
            request: PutEventsRequestEntry::builder()
                .event_bus_name(&self.bus_name)
                .source(event.source())
                .detail_type(event.detail_type.as_str())
                .detail(event.detail_json()?)
                .build(),
        })
    }

    /// Puts `entries` in order, in the calls [`chunks`] makes. On failure, names the first
    /// entry that is not on the bus; every entry before it is. Calls stop at the first call
    /// that cannot be completed, so nothing after a failed entry's call is sent — which is
    /// what keeps each book's changes in order (see [`EventBridgePublisher`]).
    pub async fn put_entries(&self, entries: Vec<BookEntry>) -> Result<(), PublishError> {
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
    async fn put_chunk(&self, chunk: Vec<BookEntry>) -> Result<(), (usize, String)> {
        // (index in chunk, entry) of the entries still to put.
        let mut pending: Vec<(usize, PutEventsRequestEntry)> = chunk
            .into_iter()
            .map(|entry| entry.request)
            .enumerate()
            .collect();
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

/// One event's `PutEvents` entry and the book it is a change of, which [`chunks`] needs to
/// keep a book's changes in separate calls.
#[derive(Debug, Clone)]
pub struct BookEntry {
    /// The book (`data.name` of the event).
    pub book: BookName,
    /// The entry as sent.
    pub request: PutEventsRequestEntry,
}

/// Splits entries, in order, into calls of at most [`MAX_ENTRIES_PER_CALL`] entries and
/// [`MAX_REQUEST_BYTES`], none holding two entries of the same book: a call ends before an
/// entry that would break one of these. (An entry too big on its own goes alone, and
/// EventBridge refuses it.)
///
/// The calls, one after the other, hold the entries in their order, so an index into the
/// flattened calls is an index into `entries`. A greedy split like this one makes the fewest
/// calls: every rule that holds for a run of entries holds for any shorter run inside it.
pub fn chunks(entries: Vec<BookEntry>) -> Vec<Vec<BookEntry>> {
    let mut chunks: Vec<Vec<BookEntry>> = Vec::new();
    let mut bytes = 0;
    for entry in entries {
        let size = entry_size(&entry.request);
        match chunks.last_mut() {
            Some(chunk)
                if chunk.len() < MAX_ENTRIES_PER_CALL
                    && bytes + size <= MAX_REQUEST_BYTES
                    && chunk.iter().all(|other| other.book != entry.book) =>
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
    use proptest::prelude::*;

    use super::*;

    /// An entry of `book` whose detail is `detail_bytes` long; `source` tells entries apart.
    fn entry_of(id: usize, book: &str, detail_bytes: usize) -> BookEntry {
        BookEntry {
            book: BookName::parse(book).unwrap(),
            request: PutEventsRequestEntry::builder()
                .source(format!("s{id}"))
                .detail_type("d")
                .detail("x".repeat(detail_bytes))
                .build(),
        }
    }

    /// Entries of all-different books.
    fn entry(detail_bytes: usize) -> BookEntry {
        entry_of(detail_bytes, &format!("book {detail_bytes}"), detail_bytes)
    }

    fn ids(entries: &[BookEntry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| e.request.source().unwrap().to_owned())
            .collect()
    }

    fn calls(books: impl IntoIterator<Item = String>) -> usize {
        let entries: Vec<_> = books
            .into_iter()
            .enumerate()
            .map(|(id, book)| entry_of(id, &book, 200))
            .collect();
        chunks(entries).len()
    }

    #[test]
    fn chunks_hold_at_most_ten_entries_in_order() {
        let entries: Vec<_> = (0..25).map(entry).collect();
        let expected = ids(&entries);
        let chunks = chunks(entries);
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 5]);
        assert_eq!(ids(&chunks.concat()), expected);
    }

    #[test]
    fn a_call_never_holds_two_changes_of_one_book() {
        // Dune added, Emma added, Dune removed, Dune added again, Ubik added.
        let entries = vec![
            entry_of(0, "Dune", 10),
            entry_of(1, "Emma", 10),
            entry_of(2, "Dune", 10),
            entry_of(3, "Dune", 10),
            entry_of(4, "Ubik", 10),
        ];
        let calls: Vec<Vec<String>> = chunks(entries).iter().map(|c| ids(c)).collect();
        assert_eq!(calls, [vec!["s0", "s1"], vec!["s2"], vec!["s3", "s4"]]);
    }

    /// The cost, in calls, of keeping a book's changes apart (the figures in the
    /// [`EventBridgePublisher`] doc).
    #[test]
    fn changes_of_few_books_take_more_calls() {
        let book = |i: usize| format!("book {i}");
        assert_eq!(calls((0..100).map(book)), 10, "100 books: as before");
        assert_eq!(
            calls((0..100).map(|i| book(i % 10))),
            10,
            "10 books in turn"
        );
        assert_eq!(calls((0..100).map(|i| book(i % 2))), 50, "2 books in turn");
        assert_eq!(calls((0..100).map(|_| book(0))), 100, "1 book");
        assert_eq!(
            calls((0..100).map(|i| book(i / 20))),
            96,
            "5 books, 20 in a row each"
        );
    }

    #[test]
    fn chunks_stay_under_the_request_size_limit() {
        let big = 100 * 1024;
        let sizes: Vec<_> = chunks(vec![entry(big), entry(big + 1), entry(big + 2), entry(10)])
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, [2, 2]);
        assert!(chunks(Vec::new()).is_empty());
    }

    /// Sequences of (book, detail size): few books, so that they repeat, and sizes up to more
    /// than the request limit, so that every rule ends calls.
    fn any_entries() -> impl Strategy<Value = Vec<BookEntry>> {
        let size =
            prop_oneof![4 => 0..2_000usize, 2 => 20_000..120_000usize, 1 => 250_000..300_000usize];
        prop::collection::vec((0..6usize, size), 0..80).prop_map(|entries| {
            entries
                .into_iter()
                .enumerate()
                .map(|(id, (book, size))| entry_of(id, &format!("book {book}"), size))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn chunks_keep_order_and_limits_and_never_repeat_a_book(entries in any_entries()) {
            let expected = ids(&entries);
            let chunks = chunks(entries);
            prop_assert_eq!(ids(&chunks.concat()), expected, "in order, none lost or added");
            for chunk in &chunks {
                prop_assert!(!chunk.is_empty());
                prop_assert!(chunk.len() <= MAX_ENTRIES_PER_CALL);
                let bytes: usize = chunk.iter().map(|e| entry_size(&e.request)).sum();
                prop_assert!(chunk.len() == 1 || bytes <= MAX_REQUEST_BYTES, "{} bytes", bytes);
                for (i, entry) in chunk.iter().enumerate() {
                    prop_assert!(
                        chunk[..i].iter().all(|other| other.book != entry.book),
                        "{} twice in one call", entry.book
                    );
                }
            }
            // No call ends early: the next call's first entry would break a rule.
            for pair in chunks.windows(2) {
                let (chunk, next) = (&pair[0], &pair[1][0]);
                let bytes: usize = chunk.iter().map(|e| entry_size(&e.request)).sum();
                prop_assert!(
                    chunk.len() == MAX_ENTRIES_PER_CALL
                        || bytes + entry_size(&next.request) > MAX_REQUEST_BYTES
                        || chunk.iter().any(|other| other.book == next.book)
                );
            }
        }
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
}
