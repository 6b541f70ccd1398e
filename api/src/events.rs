//! The events subscriptions deliver, and the live fan-out that hands them out.
//!
//! [`BookEvent`] is a committed change as a subscriber sees it; [`BookEvent::from_eventbridge`]
//! is the one way a bus event becomes one. Every event has a `cursor`: its position in the
//! change stream (the stream record's sequence number), which orders the events.
//!
//! [`EventHub`] fans the events a bus target hands it out to every subscriber. Each subscriber
//! reads from a bounded buffer; the hub never waits for anyone, so a slow or stuck subscriber
//! cannot slow the bus, the consumers or the other subscribers. With an [`EventLog`] (the
//! durable change stream the events come from) the hub also:
//! - resumes a subscription after a cursor: the events after it are read from the log, then
//!   the subscription goes live, with nothing missed and nothing twice at the switch;
//! - catches up, from the log, a subscriber that fell further behind than its buffer holds,
//!   instead of ending its subscription.
//!
//! Without a log (a hub built with [`EventHub::new`] alone) a subscriber that falls behind gets
//! `SUBSCRIPTION_LAGGED` and its subscription ends, and a cursor is refused as `UNAVAILABLE`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};

use aws_lambda_events::eventbridge::EventBridgeEvent;
use chrono::{DateTime, Utc};
use domain::event::{BookSnapshot, DetailType, Envelope};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::broadcast;

use crate::error::ApiError;

/// How many events a subscriber's live buffer holds.
pub const DEFAULT_SUBSCRIBER_BUFFER: usize = 256;

/// How many stream records one read of the log takes.
const LOG_PAGE: usize = 256;

/// A committed change, as subscribers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookEvent {
    /// The event's `metadata.eventId`.
    pub event_id: String,
    /// Its position among all events: `metadata.cursor` where the events are journaled (AWS),
    /// else `metadata.sequenceNumber` (the local stream's, one total order already).
    pub cursor: String,
    /// What happened.
    pub detail_type: DetailType,
    /// When the change was committed.
    pub occurred_at: DateTime<Utc>,
    /// The book.
    pub book: BookSnapshot,
    /// The event's `metadata.traceparent`: the trace a delivery continues.
    pub traceparent: Option<String>,
    /// The event's `metadata.committedAt`: what delivery latency is measured from.
    pub committed_at: Option<DateTime<Utc>>,
}

impl BookEvent {
    /// The event an envelope of this detail type describes.
    pub fn new(detail_type: DetailType, envelope: Envelope) -> Self {
        let metadata = envelope.metadata;
        Self {
            cursor: metadata.cursor.unwrap_or(metadata.sequence_number),
            event_id: metadata.event_id,
            detail_type,
            occurred_at: metadata.occurred_at,
            book: envelope.data,
            traceparent: metadata.traceparent,
            committed_at: metadata.committed_at,
        }
    }
}

/// Why a bus event is not a [`BookEvent`]: its detail type is not one of ours, or its detail
/// is not an envelope. Such an event can never be delivered, however often it is retried.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MalformedEvent(String);

impl BookEvent {
    /// The event an EventBridge event (as the bus delivers it to a target) describes.
    pub fn from_eventbridge(
        event: EventBridgeEvent<serde_json::Value>,
    ) -> Result<Self, MalformedEvent> {
        let detail_type = DetailType::parse(&event.detail_type).ok_or_else(|| {
            MalformedEvent(format!("unknown detail type {:?}", event.detail_type))
        })?;
        let envelope =
            Envelope::from_detail(event.detail).map_err(|e| MalformedEvent(e.to_string()))?;
        Ok(Self::new(detail_type, envelope))
    }

    /// The event's position in the stream, when its cursor is one of a local stream's.
    pub fn position(&self) -> Option<Position> {
        parse_cursor(&self.cursor)
    }
}

/// A position in the change stream, as the local stream numbers its records (from 1).
pub type Position = i64;

/// The position a cursor names: a cursor is a stream record's sequence number, all digits.
pub fn parse_cursor(cursor: &str) -> Option<Position> {
    if cursor.is_empty() || !cursor.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    cursor.parse().ok()
}

/// A read of the [`EventLog`].
#[derive(Debug, Default)]
pub struct LogPage {
    /// The events read, in stream order.
    pub events: Vec<BookEvent>,
    /// The position the read went through: the last record it looked at, whether or not that
    /// record is an event (a record set aside as a dead letter is none). The next read goes on
    /// after it.
    pub through: Position,
}

/// Why the [`EventLog`] could not be read from a position.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Records after the position were trimmed: the log keeps only those after `resume_after`.
    #[error("the log keeps only the events after {resume_after}")]
    Expired {
        /// The cursor after which every event is kept.
        resume_after: String,
        /// The cursor of the oldest event kept, if any is.
        oldest: Option<String>,
    },
    /// The position is past every record the log has written: not a cursor of this log.
    #[error("no event of this stream has this cursor")]
    Unknown,
    /// The log could not be read.
    #[error("the event log cannot be read: {0}")]
    Unavailable(String),
}

impl From<LogError> for ApiError {
    fn from(error: LogError) -> Self {
        match error {
            LogError::Expired {
                resume_after,
                oldest,
            } => Self::CursorExpired {
                resume_after,
                oldest,
            },
            LogError::Unknown => Self::bad_input(
                "after",
                "no event of this stream has this cursor; use a cursor from an event, or leave out after",
            ),
            LogError::Unavailable(cause) => {
                tracing::error!(error = %cause, "the event log cannot be read");
                Self::Internal
            }
        }
    }
}

/// The durable, ordered log the published events come from: the change stream. It holds the
/// events of the records it keeps, each with its cursor, exactly as they were published.
#[async_trait::async_trait]
pub trait EventLog: Send + Sync + std::fmt::Debug {
    /// The events of the records at positions in `(after, until]`, from at most `limit`
    /// records, in order. `until` is a position already published, so the log holds every
    /// record up to it. A position older than the log keeps is [`LogError::Expired`], even when
    /// the records went while this read was running; one past every record is
    /// [`LogError::Unknown`].
    async fn read(
        &self,
        after: Position,
        until: Position,
        limit: usize,
    ) -> Result<LogPage, LogError>;
}

/// Where subscriptions get their events: a live fan-out, or a fixed list.
#[derive(Debug, Clone)]
pub struct EventHub {
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    /// Events as they are published, to every current subscriber.
    Live(Arc<Live>),
    /// Exactly these events, then the end: how a stored subscription is run against one
    /// event on AWS, and how a document is checked without any.
    Replay(Arc<Replay>),
}

#[derive(Debug)]
struct Replay {
    events: Arc<[Arc<BookEvent>]>,
    /// For a subscription that resumes after a cursor: these events are those after it, and
    /// the cursor asked for is kept here. `None`: a cursor is refused (no log).
    after: Option<std::sync::Mutex<Option<String>>>,
}

#[derive(Debug)]
struct Live {
    sender: broadcast::Sender<Arc<BookEvent>>,
    /// The position of the last event handed to the subscribers. It moves before the event is
    /// sent, so a subscriber that subscribes and then reads it gets, live, every event after
    /// what it read.
    published: AtomicI64,
    log: Option<Arc<dyn EventLog>>,
    /// How many subscriptions are open.
    subscriptions: AtomicUsize,
    /// Run as a subscriber goes live, before it opens its buffer: a test's way into the
    /// moment the switch must get right.
    #[cfg(test)]
    switching: std::sync::Mutex<Option<Switching>>,
}

#[cfg(test)]
struct Switching(Box<dyn FnOnce() + Send>);

#[cfg(test)]
impl std::fmt::Debug for Switching {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Switching")
    }
}

/// An open subscription, counted while it lives.
struct Open(Arc<Live>);

impl Open {
    fn new(live: &Arc<Live>) -> Self {
        live.subscriptions.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(live))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.subscriptions.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new(DEFAULT_SUBSCRIBER_BUFFER)
    }
}

impl EventHub {
    /// A hub without a log, whose subscribers may each fall `buffer` events behind.
    pub fn new(buffer: usize) -> Self {
        Self::live(buffer, None, 0)
    }

    /// A hub over `log`, whose events up to `published` were handed out before this hub
    /// existed (the stream reader's checkpoint). Each subscriber's live buffer holds `buffer`
    /// events; one that falls further behind is caught up from the log.
    pub fn with_log(buffer: usize, log: Arc<dyn EventLog>, published: Position) -> Self {
        Self::live(buffer, Some(log), published)
    }

    fn live(buffer: usize, log: Option<Arc<dyn EventLog>>, published: Position) -> Self {
        Self {
            source: Source::Live(Arc::new(Live {
                sender: broadcast::channel(buffer.max(1)).0,
                published: AtomicI64::new(published),
                log,
                subscriptions: AtomicUsize::new(0),
                #[cfg(test)]
                switching: std::sync::Mutex::default(),
            })),
        }
    }

    /// A hub whose every subscription sees exactly `events` and then ends; one that asks for
    /// the events after a cursor is refused (`UNAVAILABLE`).
    pub fn replay(events: Vec<BookEvent>) -> Self {
        Self::replaying(events, None)
    }

    /// A hub whose every subscription sees exactly `events` and then ends, with or without a
    /// cursor: the events are the ones after it. The cursor asked for is kept
    /// ([`asked_after`](Self::asked_after)). How a subscription that resumed is run against
    /// the journal's events on AWS, and how its document is checked.
    pub fn resumed(events: Vec<BookEvent>) -> Self {
        Self::replaying(events, Some(std::sync::Mutex::new(None)))
    }

    fn replaying(events: Vec<BookEvent>, after: Option<std::sync::Mutex<Option<String>>>) -> Self {
        Self {
            source: Source::Replay(Arc::new(Replay {
                events: events.into_iter().map(Arc::new).collect(),
                after,
            })),
        }
    }

    /// The cursor a subscription on a [`resumed`](Self::resumed) hub asked to resume after.
    pub fn asked_after(&self) -> Option<String> {
        match &self.source {
            Source::Replay(replay) => replay
                .after
                .as_ref()
                .and_then(|after| after.lock().ok()?.clone()),
            Source::Live(_) => None,
        }
    }

    /// Hands `event` to every current subscriber, without waiting for any of them.
    /// (A replaying hub has nothing to hand it to.) Events are published in stream order.
    pub fn publish(&self, event: BookEvent) {
        if let Source::Live(live) = &self.source {
            if let Some(position) = event.position() {
                live.published.fetch_max(position, Ordering::AcqRel);
            }
            // An error only means that nobody is subscribed right now.
            let _ = live.sender.send(Arc::new(event));
        }
    }

    /// How many subscriptions are open (each live, or catching up from the log).
    pub fn subscribers(&self) -> usize {
        match &self.source {
            Source::Live(live) => live.subscriptions.load(Ordering::Acquire),
            Source::Replay(_) => 0,
        }
    }

    /// The events from now on, or, with `after`, every event after that cursor and then on.
    ///
    /// Refused at once: a cursor that is not one of this stream's (`BAD_USER_INPUT`), one older
    /// than the log keeps (`CURSOR_EXPIRED`), and any cursor where there is no log
    /// (`UNAVAILABLE`). Without a log, a subscriber that falls too far behind gets one
    /// `SUBSCRIPTION_LAGGED` error and then the stream ends (and its buffer is released).
    pub async fn subscribe(
        &self,
        after: Option<&str>,
    ) -> Result<BoxStream<'static, Result<Arc<BookEvent>, ApiError>>, ApiError> {
        let live = match &self.source {
            Source::Live(live) => live,
            Source::Replay(replay) => {
                if let Some(after) = after {
                    let Some(asked) = &replay.after else {
                        return Err(no_log());
                    };
                    if let Ok(mut asked) = asked.lock() {
                        *asked = Some(after.to_owned());
                    }
                }
                let events = Arc::clone(&replay.events);
                return Ok(futures_util::stream::iter(
                    (0..events.len()).map(move |i| Ok(Arc::clone(&events[i]))),
                )
                .boxed());
            }
        };
        let Some(log) = &live.log else {
            if after.is_some() {
                return Err(no_log());
            }
            return Ok(lagging(Open::new(live)));
        };
        let mut follow = Follow {
            open: Open::new(live),
            log: Arc::clone(log),
            cursor: 0,
            replay_until: 0,
            pending: VecDeque::new(),
            receiver: None,
        };
        match after {
            None => {
                follow.go_live();
                follow.cursor = follow.replay_until;
            }
            Some(cursor) => {
                follow.cursor = parse_cursor(cursor).ok_or_else(|| {
                    ApiError::bad_input("after", "not a cursor: use the cursor of an event")
                })?;
                // The first read answers for the cursor before the subscription starts.
                follow.catch_up().await?;
            }
        }
        Ok(
            futures_util::stream::unfold(Some(follow), |follow| async move {
                let mut follow = follow?;
                match follow.next().await? {
                    Ok(event) => Some((Ok(event), Some(follow))),
                    Err(error) => Some((Err(error), None)),
                }
            })
            .boxed(),
        )
    }
}

fn no_log() -> ApiError {
    ApiError::Unavailable(
        "this server keeps no event log to resume from: subscribe without after".into(),
    )
}

/// A live subscription without a log: it ends when the subscriber falls behind its buffer.
fn lagging(open: Open) -> BoxStream<'static, Result<Arc<BookEvent>, ApiError>> {
    let receiver = open.0.sender.subscribe();
    futures_util::stream::unfold(Some((open, receiver)), |state| async move {
        let (open, mut receiver) = state?;
        match receiver.recv().await {
            Ok(event) => Some((Ok(event), Some((open, receiver)))),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "subscriber fell behind; ending its subscription");
                Some((Err(ApiError::SubscriptionLagged(missed)), None))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
    .boxed()
}

/// One subscription over a hub with a log: the events after `cursor`, from the log while it is
/// behind what was published and live once it has caught up.
///
/// The switch loses nothing and repeats nothing: the live buffer is opened first and
/// `published` read after, so every event after `replay_until` comes through the buffer; those
/// up to it are read from the log; and the buffer's events at or before `cursor` are dropped.
/// A subscriber that falls behind its buffer lets it go and catches up from the log again.
struct Follow {
    open: Open,
    log: Arc<dyn EventLog>,
    /// The position of the last event handed on (or of the start).
    cursor: Position,
    /// While the buffer is open: the position up to which events come from the log.
    replay_until: Position,
    pending: VecDeque<Arc<BookEvent>>,
    receiver: Option<broadcast::Receiver<Arc<BookEvent>>>,
}

impl Follow {
    /// Opens the live buffer at what has been published: from here on events arrive live.
    fn go_live(&mut self) {
        #[cfg(test)]
        if let Some(switching) = self.open.0.switching.lock().unwrap().take() {
            (switching.0)();
        }
        self.receiver = Some(self.open.0.sender.subscribe());
        self.replay_until = self.published();
    }

    fn published(&self) -> Position {
        self.open.0.published.load(Ordering::Acquire)
    }

    /// Reads the next page of the log after `cursor`, up to `until`.
    async fn read(&mut self, until: Position) -> Result<(), ApiError> {
        let page = self.log.read(self.cursor, until, LOG_PAGE).await?;
        self.cursor = self.cursor.max(page.through);
        self.pending.extend(page.events.into_iter().map(Arc::new));
        Ok(())
    }

    /// Reads one page while behind what has been published.
    async fn catch_up(&mut self) -> Result<(), ApiError> {
        let published = self.published();
        if self.cursor < published {
            self.read(published).await
        } else {
            // Validates the cursor even when there is nothing to read.
            self.read(self.cursor).await
        }
    }

    /// The next event; `None` when the hub is gone.
    async fn next(&mut self) -> Option<Result<Arc<BookEvent>, ApiError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            let Some(receiver) = &mut self.receiver else {
                if self.cursor < self.published() {
                    if let Err(error) = self.catch_up().await {
                        return Some(Err(error));
                    }
                } else {
                    self.go_live();
                }
                continue;
            };
            if self.cursor < self.replay_until {
                let until = self.replay_until;
                if let Err(error) = self.read(until).await {
                    return Some(Err(error));
                }
                continue;
            }
            match receiver.recv().await {
                Ok(event) => match event.position() {
                    Some(position) if position <= self.cursor => {}
                    Some(position) => {
                        self.cursor = position;
                        return Some(Ok(event));
                    }
                    None => return Some(Ok(event)),
                },
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(
                        missed,
                        cursor = self.cursor,
                        "subscriber fell behind its buffer; catching up from the log"
                    );
                    self.receiver = None;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// An [`EventLog`] in memory, for the tests of the hub and of the transports that resume.
#[cfg(test)]
pub(crate) mod memory {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::{BookEvent, EventHub, EventLog, LogError, LogPage, Position};

    /// A log in memory: the events published so far, of which those up to `trimmed` are gone.
    #[derive(Debug, Default)]
    pub(crate) struct MemoryLog {
        pub(crate) events: Mutex<Vec<BookEvent>>,
        pub(crate) trimmed: AtomicI64,
    }

    impl MemoryLog {
        /// Commits `event` to the log at the next position (its cursor, whatever it had) and
        /// then publishes it, as the pipeline does.
        pub(crate) fn commit(&self, hub: &EventHub, mut event: BookEvent) -> BookEvent {
            let mut events = self.events.lock().unwrap();
            event.cursor = format!("{:021}", events.len() + 1);
            events.push(event.clone());
            drop(events);
            hub.publish(event.clone());
            event
        }
    }

    #[async_trait::async_trait]
    impl EventLog for MemoryLog {
        async fn read(
            &self,
            after: Position,
            until: Position,
            limit: usize,
        ) -> Result<LogPage, LogError> {
            let events = self.events.lock().unwrap();
            let trimmed = self.trimmed.load(Ordering::Acquire);
            if after < trimmed {
                return Err(LogError::Expired {
                    resume_after: trimmed.to_string(),
                    oldest: events.get(trimmed as usize).map(|e| e.cursor.clone()),
                });
            }
            if after > events.len() as i64 {
                return Err(LogError::Unknown);
            }
            let page: Vec<BookEvent> = events
                .iter()
                .filter(|e| (after + 1..=until).contains(&e.position().unwrap()))
                .take(limit)
                .cloned()
                .collect();
            let through = if page.len() < limit {
                until
            } else {
                page.last().unwrap().position().unwrap()
            };
            Ok(LogPage {
                events: page,
                through,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use async_graphql::ErrorExtensions;

    use super::memory::MemoryLog;
    use super::*;
    use crate::tests_support::event;

    /// Commits an event to the log and then publishes it, as the pipeline does.
    fn commit(log: &MemoryLog, hub: &EventHub) -> BookEvent {
        let position = log.events.lock().unwrap().len() + 1;
        log.commit(hub, event(&format!("e{position}")))
    }

    fn logged(buffer: usize) -> (Arc<MemoryLog>, EventHub) {
        let log = Arc::new(MemoryLog::default());
        let hub = EventHub::with_log(buffer, log.clone(), 0);
        (log, hub)
    }

    /// The subscription's next event; a test fails rather than waits for one that never comes.
    async fn next(
        subscription: &mut BoxStream<'static, Result<Arc<BookEvent>, ApiError>>,
    ) -> Option<Result<Arc<BookEvent>, ApiError>> {
        tokio::time::timeout(std::time::Duration::from_secs(5), subscription.next())
            .await
            .expect("an event within 5 s")
    }

    fn positions(events: &[Arc<BookEvent>]) -> Vec<Position> {
        events.iter().map(|e| e.position().unwrap()).collect()
    }

    #[tokio::test]
    async fn without_a_log_a_subscriber_that_falls_behind_is_told_and_released_and_others_are_not_slowed()
     {
        let hub = EventHub::new(2);
        let mut slow = hub.subscribe(None).await.unwrap();
        let mut fast = hub.subscribe(None).await.unwrap();
        assert_eq!(hub.subscribers(), 2);
        for i in 0..5 {
            hub.publish(event(&i.to_string()));
            assert_eq!(fast.next().await.unwrap().unwrap().event_id, i.to_string());
        }
        assert!(matches!(
            slow.next().await,
            Some(Err(ApiError::SubscriptionLagged(3)))
        ));
        assert!(slow.next().await.is_none());
        drop(slow);
        assert_eq!(
            hub.subscribers(),
            1,
            "the lagging subscriber's buffer is released"
        );
        drop(fast);
        assert_eq!(hub.subscribers(), 0);
    }

    #[tokio::test]
    async fn without_a_log_a_cursor_is_unavailable() {
        for hub in [EventHub::new(2), EventHub::replay(vec![event("1")])] {
            let error = hub.subscribe(Some("1")).await.err().unwrap();
            assert_eq!(error.code(), "UNAVAILABLE");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_subscriber_with_a_buffer_of_8_gets_all_1000_events_in_order() {
        let (log, hub) = logged(8);
        let mut subscription = hub.subscribe(None).await.unwrap();
        let writer = {
            let (log, hub) = (log.clone(), hub.clone());
            tokio::spawn(async move {
                for i in 0..1000 {
                    commit(&log, &hub);
                    if i % 50 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        };
        let mut received = Vec::new();
        while received.len() < 1000 {
            let event = next(&mut subscription).await.unwrap().unwrap();
            received.push(event);
            if received.len() % 100 == 0 {
                // Slower than the writer: the buffer of 8 overflows.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        writer.await.unwrap();
        assert_eq!(positions(&received), (1..=1000).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_subscription_after_a_cursor_replays_what_followed_it_and_goes_on_live() {
        let (log, hub) = logged(4);
        for _ in 0..10 {
            commit(&log, &hub);
        }
        let cursor = format!("{:021}", 6);
        let mut subscription = hub.subscribe(Some(&cursor)).await.unwrap();
        let mut received = Vec::new();
        for _ in 0..4 {
            received.push(next(&mut subscription).await.unwrap().unwrap());
        }
        for _ in 0..3 {
            commit(&log, &hub);
        }
        for _ in 0..3 {
            received.push(next(&mut subscription).await.unwrap().unwrap());
        }
        assert_eq!(positions(&received), (7..=13).collect::<Vec<_>>());
    }

    /// Seeded interleavings of a writer with subscribers that start after random cursors at
    /// random moments, with small buffers (so they fall behind and switch back often): each
    /// gets every event after its cursor, once, in order. The switch's window is a few
    /// nanoseconds wide, so each seed switches many times.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_switch_from_the_log_to_live_loses_and_repeats_nothing() {
        const TOTAL: usize = 400;
        for seed in 0..200 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let (log, hub) = logged(rng.usize(1..4));
            let start = rng.usize(0..TOTAL / 4);
            for _ in 0..start {
                commit(&log, &hub);
            }
            let writer = {
                let (log, hub) = (log.clone(), hub.clone());
                let mut rng = rng.fork();
                tokio::spawn(async move {
                    for _ in start..TOTAL {
                        commit(&log, &hub);
                        if rng.u8(..) < 8 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            };
            let subscribed = Arc::new(AtomicUsize::new(0));
            let readers: Vec<_> = (0..6)
                .map(|_| {
                    let (hub, subscribed) = (hub.clone(), subscribed.clone());
                    let mut rng = rng.fork();
                    tokio::spawn(async move {
                        for _ in 0..rng.usize(0..40) {
                            tokio::task::yield_now().await;
                        }
                        let after = rng.bool().then(|| rng.usize(0..=start));
                        let cursor = after.map(|after| format!("{after:021}"));
                        let mut subscription = hub.subscribe(cursor.as_deref()).await.unwrap();
                        subscribed.fetch_add(1, Ordering::AcqRel);
                        let mut received = Vec::new();
                        loop {
                            let event = next(&mut subscription).await.unwrap().unwrap();
                            let position = event.position().unwrap();
                            received.push(event);
                            if position > TOTAL as i64 {
                                return (after, received);
                            }
                            if rng.u8(..) < 60 {
                                tokio::task::yield_now().await;
                            }
                        }
                    })
                })
                .collect();
            writer.await.unwrap();
            while subscribed.load(Ordering::Acquire) < readers.len() {
                tokio::task::yield_now().await;
            }
            // One more, which a subscriber that started live after the writer also gets.
            commit(&log, &hub);
            for reader in readers {
                let (after, received) = reader.await.unwrap();
                let first = match after {
                    Some(after) => after as i64 + 1,
                    None => received[0].position().unwrap(),
                };
                assert_eq!(
                    positions(&received),
                    (first..=TOTAL as i64 + 1).collect::<Vec<_>>(),
                    "seed {seed}"
                );
            }
        }
    }

    /// The moment that matters, made to happen: an event published as the subscriber goes
    /// live, after it found itself caught up and before its buffer opened, is read from the log.
    #[tokio::test]
    async fn an_event_published_just_as_a_subscriber_goes_live_is_not_missed() {
        let (log, hub) = logged(4);
        for _ in 0..3 {
            commit(&log, &hub);
        }
        let Source::Live(live) = &hub.source else {
            unreachable!()
        };
        let (log_then, hub_then) = (log.clone(), hub.clone());
        *live.switching.lock().unwrap() = Some(Switching(Box::new(move || {
            commit(&log_then, &hub_then);
        })));
        let mut subscription = hub.subscribe(Some("0")).await.unwrap();
        let mut received = Vec::new();
        for _ in 0..4 {
            received.push(next(&mut subscription).await.unwrap().unwrap());
        }
        commit(&log, &hub);
        received.push(next(&mut subscription).await.unwrap().unwrap());
        assert_eq!(positions(&received), [1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn a_trimmed_cursor_is_expired_and_says_where_the_log_starts() {
        let (log, hub) = logged(4);
        for _ in 0..10 {
            commit(&log, &hub);
        }
        log.trimmed.store(5, Ordering::Release);
        let error = hub.subscribe(Some("3")).await.err().unwrap();
        assert_eq!(error.code(), "CURSOR_EXPIRED");
        let graphql = error.extend();
        let extensions = graphql.extensions.unwrap();
        assert_eq!(extensions.get("resumeAfter"), Some(&"5".into()));
        assert_eq!(
            extensions.get("oldestCursor"),
            Some(&format!("{:021}", 6).into())
        );
        // The cursor it names is honoured.
        let mut resumed = hub.subscribe(Some("5")).await.unwrap();
        assert_eq!(
            next(&mut resumed).await.unwrap().unwrap().position(),
            Some(6)
        );
    }

    #[tokio::test]
    async fn a_subscriber_whose_place_is_trimmed_while_it_catches_up_is_told() {
        let (log, hub) = logged(2);
        for _ in 0..(2 * LOG_PAGE) {
            commit(&log, &hub);
        }
        let mut subscription = hub.subscribe(Some("0")).await.unwrap();
        for _ in 0..LOG_PAGE {
            next(&mut subscription).await.unwrap().unwrap();
        }
        log.trimmed.store(LOG_PAGE as i64 + 10, Ordering::Release);
        let error = next(&mut subscription).await.unwrap().err().unwrap();
        assert_eq!(error.code(), "CURSOR_EXPIRED");
        assert!(next(&mut subscription).await.is_none());
    }

    #[tokio::test]
    async fn a_cursor_that_is_not_one_of_the_stream_is_bad_input() {
        let (log, hub) = logged(2);
        commit(&log, &hub);
        for cursor in [
            "",
            "x1",
            "-1",
            "00000000000000000000000000000000000000009",
            "2",
        ] {
            let error = hub.subscribe(Some(cursor)).await.err().unwrap();
            assert_eq!(error.code(), "BAD_USER_INPUT", "{cursor:?}");
        }
    }
}
