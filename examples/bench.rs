//! Benchmarks of the local stack and the Lambda artifacts. They print figures; nothing here
//! asserts a time. Run on an otherwise idle machine, in release mode:
//!
//! ```sh
//! cargo run --release --example bench -- mapping    # processor: ns/record; a batch of 100 through the local bus
//! cargo run --release --example bench -- writes     # durable addBook/s at 1, 8, 32, 128 clients vs the store's raw add
//! cargo run --release --example bench -- latency    # addBook ack → activity committed and → a WebSocket subscriber, p50/p95/p99/max
//! cargo run --release --example bench -- fanout     # 5,000 WebSocket subscribers: addBook ack → the last one has it
//! cargo run --release --example bench -- replay     # 100,000 events replayed after a cursor (log, hub, WebSocket); a slow subscriber caught up
//! cargo run --release --example bench -- lambda     # bootstrap sizes, exec → first poll, peak RSS (after cargo lambda build --profile lambda)
//! cargo run --release --example bench -- spans      # what a hop's spans cost: no subscriber, export off, export on
//!                                                   # (`spans N`: N hops a run, e.g. fewer under valgrind)
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark stops on the first surprise

use std::sync::Arc;
use std::time::{Duration, Instant};

use outboxdemo::stack::{self, Settings, Storage};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// The local binary's allocator (see src/main.rs), so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let which = std::env::args().nth(1).unwrap_or_default();
    match which.as_str() {
        "mapping" => mapping().await,
        "writes" => writes().await,
        "latency" => latency().await,
        "fanout" => fanout().await,
        "replay" => replay().await,
        "lambda" => lambda().await,
        "spans" => spans(),
        _ => eprintln!("usage: bench mapping|writes|latency|fanout|replay|lambda|spans"),
    }
}

fn record(i: usize) -> Value {
    json!({
        "eventID": format!("{i:032x}"),
        "eventName": "INSERT",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "local",
        "dynamodb": {
            "ApproximateCreationDateTime": 1714564800,
            "Keys": {"name": {"S": format!("Book {i}")}},
            "NewImage": {"name": {"S": format!("Book {i}")}, "authors": {"L": [{"S": "An Author"}, {"S": "Another"}]}, "publishedYear": {"N": "1999"}},
            "SequenceNumber": format!("{i:021}"),
            "SizeBytes": 120,
            "StreamViewType": "NEW_AND_OLD_IMAGES"
        }
    })
}

fn batch(from: usize) -> aws_lambda_events::dynamodb::Event {
    serde_json::from_value(json!({"Records": (from..from + 100).map(record).collect::<Vec<_>>()}))
        .unwrap()
}

async fn mapping() {
    let event = batch(0);
    let rounds = 2_000;
    let started = Instant::now();
    let mut mapped = 0usize;
    for _ in 0..rounds {
        for record in &event.records {
            mapped += usize::from(processor::map_record(std::hint::black_box(record)).is_ok());
        }
    }
    let elapsed = started.elapsed();
    println!(
        "map_record: {mapped} records in {elapsed:?}: {:.0} ns/record, {:.0} records/s",
        elapsed.as_nanos() as f64 / mapped as f64,
        mapped as f64 / elapsed.as_secs_f64()
    );

    // A batch of 100 through the processor into the local bus's durable queues (one commit).
    let dir = tempfile::tempdir().unwrap();
    let db = outboxdemo::embedded::Db::open(dir.path()).unwrap();
    let activity = Arc::new(outboxdemo::embedded::EmbeddedActivityStore::new(
        Arc::clone(&db),
    ));
    let activity: Arc<dyn consumers::ActivityStore> = activity;
    let routes = outboxdemo::bus::Route::consumers(&activity);
    let poison = outboxdemo::stream::StreamDeadLetters(Arc::clone(&db));
    let bus = outboxdemo::bus::LocalBus::new(db, "bench", routes, Default::default());
    let mut samples = Vec::new();
    for round in 0..50 {
        let event = batch(round * 100);
        let started = Instant::now();
        let response = processor::handle_batch(event, &bus, &poison).await;
        samples.push(started.elapsed());
        assert!(response.batch_item_failures.is_empty());
    }
    report(
        "handle_batch(100 records) → local bus queue, durable",
        &mut samples,
    );
}

async fn spawn(
    dir: &std::path::Path,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/graphql", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut settings = Settings::new(Storage::Dir(dir.to_owned()));
    settings.api.max_complexity = usize::MAX;
    let task = tokio::spawn(stack::run(listener, settings, async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(100)).await;
    (url, stop, task)
}

async fn add(client: &reqwest::Client, url: &str, name: &str) {
    let body: Value = client
        .post(url)
        .json(&json!({"query": "mutation($n: String!) { addBook(input: {name: $n, authors: [\"A\"], publishedYear: 2000}) { name } }", "variables": {"n": name}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body.get("errors").is_none(), "{body}");
}

/// `addBook`/s over HTTP at each concurrency, next to the same store's durable `add` called
/// directly by as many tasks (no HTTP, no GraphQL): the local physical limit.
async fn writes() {
    for clients in [1usize, 8, 32, 128] {
        let total = if clients == 1 { 3_000 } else { 10_000 };
        let per_client = total / clients;
        let dir = tempfile::tempdir().unwrap();
        let (url, stop, task) = spawn(dir.path()).await;
        let started = Instant::now();
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                let url = url.clone();
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    for i in 0..per_client {
                        add(&client, &url, &format!("c{c}-{i}")).await;
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.unwrap();
        }
        let api = (clients * per_client) as f64 / started.elapsed().as_secs_f64();
        let _ = stop.send(());
        task.await.unwrap().unwrap();

        let raw = raw_adds(clients, per_client).await;
        println!(
            "addBook, {clients:>3} clients: {api:>6.0}/s   raw add, {clients:>3} tasks: {raw:>6.0}/s   ratio {:.2}",
            api / raw
        );
    }
}

/// Durable `EmbeddedBookStore::add` calls per second from `tasks` concurrent tasks.
async fn raw_adds(tasks: usize, per_task: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    raw_adds_into(
        outboxdemo::embedded::Db::open(dir.path()).unwrap(),
        tasks,
        per_task,
    )
    .await
}

/// [`raw_adds`] into `db`: `tasks × per_task` books, each a committed change.
async fn raw_adds_into(db: Arc<outboxdemo::embedded::Db>, tasks: usize, per_task: usize) -> f64 {
    let store = Arc::new(outboxdemo::embedded::EmbeddedBookStore::new(db));
    let started = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|t| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..per_task {
                    let book = domain::Book {
                        name: domain::BookName::parse(&format!("raw {t}-{i}")).unwrap(),
                        authors: domain::Authors::parse(&["A"]).unwrap(),
                        published_year: domain::PublishedYear::parse(2000).unwrap(),
                    };
                    api::BookStore::add(store.as_ref(), &book).await.unwrap();
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    (tasks * per_task) as f64 / started.elapsed().as_secs_f64()
}

/// When one book's change was acknowledged and seen downstream.
#[derive(Default)]
struct Arrivals {
    acknowledged: Option<Instant>,
    activity: Option<Instant>,
    subscriber: Option<Instant>,
}

#[derive(Default)]
struct Watch {
    books: std::sync::Mutex<std::collections::HashMap<String, Arrivals>>,
    changed: tokio::sync::Notify,
}

impl Watch {
    fn mark(&self, name: &str, at: Instant, which: fn(&mut Arrivals) -> &mut Option<Instant>) {
        let mut books = self.books.lock().unwrap();
        which(books.entry(name.to_owned()).or_default()).get_or_insert(at);
        drop(books);
        self.changed.notify_waiters();
    }

    async fn seen_downstream(&self, name: &str) {
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(book) = self.books.lock().unwrap().get(name)
                && book.activity.is_some()
                && book.subscriber.is_some()
            {
                return;
            }
            tokio::select! {
                () = changed => {}
                () = &mut deadline => panic!("{name} was not seen downstream within 10 s"),
            }
        }
    }
}

/// A WebSocket on which a `graphql-transport-ws` subscription runs.
type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens a `graphql-transport-ws` connection to the API at `url`, waits for its ack and
/// subscribes (as id 1) with `query`. With `receive_buffer`, the socket's kernel receive
/// buffer is that many bytes instead of growing as Linux sees fit.
async fn open_subscription(url: &str, query: &str, receive_buffer: Option<u32>) -> Socket {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

    let mut request = format!("{}/ws", url.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(bytes) = receive_buffer {
        tcp.set_recv_buffer_size(bytes).unwrap();
    }
    let address = request.uri().authority().unwrap().as_str().parse().unwrap();
    let (mut socket, _) =
        tokio_tungstenite::client_async(request, tcp.connect(address).await.unwrap())
            .await
            .unwrap();
    socket
        .send(Message::text(
            json!({"type": "connection_init"}).to_string(),
        ))
        .await
        .unwrap();
    loop {
        let message = socket.next().await.unwrap().unwrap();
        if let Message::Text(text) = message
            && serde_json::from_str::<Value>(&text).unwrap()["type"] == "connection_ack"
        {
            break;
        }
    }
    socket
        .send(Message::text(
            json!({"id": "1", "type": "subscribe", "payload": {"query": query}}).to_string(),
        ))
        .await
        .unwrap();
    socket
}

/// A `graphql-transport-ws` subscriber to `bookAdded` that marks when each book arrives.
async fn subscribe(url: &str, watch: Arc<Watch>) -> tokio::task::JoinHandle<()> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let mut socket = open_subscription(url, "subscription { bookAdded { name } }", None).await;
    tokio::spawn(async move {
        while let Some(Ok(message)) = socket.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            let at = Instant::now();
            let message: Value = serde_json::from_str(&text).unwrap();
            match message["type"].as_str() {
                Some("next") => {
                    let name = message["payload"]["data"]["bookAdded"]["name"]
                        .as_str()
                        .unwrap();
                    watch.mark(name, at, |a| &mut a.subscriber);
                }
                Some("ping") => {
                    let _ = socket
                        .send(Message::text(json!({"type": "pong"}).to_string()))
                        .await;
                }
                _ => {}
            }
        }
    })
}

/// Tails the activity table on a connection of its own, every 100 µs, and marks when each
/// book's entry is first visible (committed).
fn tail_activity(
    dir: &std::path::Path,
    watch: Arc<Watch>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let path = dir.join(outboxdemo::embedded::DB_FILE);
    std::thread::spawn(move || {
        let conn =
            rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        let mut after = 0i64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let rows = outboxdemo::embedded::activity::book_names_after(&conn, after).unwrap();
            let at = Instant::now();
            for (position, name) in rows {
                after = position;
                watch.mark(&name, at, |a| &mut a.activity);
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    })
}

/// Each client adds a book and waits until both its consumer's activity entry is committed and
/// a WebSocket subscriber received it, then adds the next.
async fn latency() {
    for clients in [1usize, 32] {
        let dir = tempfile::tempdir().unwrap();
        let (url, stop, task) = spawn(dir.path()).await;
        let watch = Arc::new(Watch::default());
        let subscriber = subscribe(&url, Arc::clone(&watch)).await;
        let tailing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tail = tail_activity(dir.path(), Arc::clone(&watch), Arc::clone(&tailing));
        let per_client = if clients == 1 { 500 } else { 100 };
        let started = Instant::now();
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                let (url, watch) = (url.clone(), Arc::clone(&watch));
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    for i in 0..per_client {
                        let name = format!("c{c}-{i}");
                        add(&client, &url, &name).await;
                        watch.mark(&name, Instant::now(), |a| &mut a.acknowledged);
                        watch.seen_downstream(&name).await;
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.unwrap();
        }
        let rate = (clients * per_client) as f64 / started.elapsed().as_secs_f64();
        println!(
            "{clients:>2} clients: {rate:.0} mutations/s, each seen downstream before the next"
        );
        tailing.store(true, std::sync::atomic::Ordering::Relaxed);
        tail.join().unwrap();
        subscriber.abort();
        let (mut activity, mut subscribers): (Vec<_>, Vec<_>) = watch
            .books
            .lock()
            .unwrap()
            .values()
            .map(|book| {
                let acknowledged = book.acknowledged.unwrap();
                (
                    book.activity
                        .unwrap()
                        .saturating_duration_since(acknowledged),
                    book.subscriber
                        .unwrap()
                        .saturating_duration_since(acknowledged),
                )
            })
            .unzip();
        report(
            &format!("ack → activity committed, {clients:>2} clients"),
            &mut activity,
        );
        report(
            &format!("ack → subscriber got it,  {clients:>2} clients"),
            &mut subscribers,
        );
        let _ = stop.send(());
        task.await.unwrap().unwrap();
    }
}

/// Waits until `/health` of the API at `url` counts exactly `open` subscriptions.
async fn wait_for_subscriptions(client: &reqwest::Client, url: &str, open: usize) {
    let health = url.replace("/graphql", "/health");
    loop {
        let status: Value = client
            .get(&health)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["subscriptions"].as_u64() == Some(open as u64) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How many subscribers the fan-out benchmark opens.
const FANOUT_SUBSCRIBERS: usize = 5_000;

/// Per book: how many subscribers have it, and when the last one got it.
#[derive(Default)]
struct FanoutArrivals {
    books: std::sync::Mutex<std::collections::HashMap<String, (usize, Instant)>>,
    changed: tokio::sync::Notify,
}

/// One `graphql-transport-ws` subscriber to `bookAdded` that counts each book's arrival. It
/// reads the name out of the message text without building a JSON value, to keep the 5,000
/// clients' share of the two cores small.
async fn fanout_subscriber(ws: String, arrivals: Arc<FanoutArrivals>) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

    let mut request = ws.into_client_request().unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    // tungstenite zeroes its read buffer, 128 KiB by default, on every read: with 5,000
    // clients that would be the benchmark's main cost. Its advice for many connections: 4 KiB.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4 * 1024);
    let (mut socket, _) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), false)
            .await
            .unwrap();
    socket
        .send(Message::text(r#"{"type":"connection_init"}"#))
        .await
        .unwrap();
    socket
        .send(Message::text(
            r#"{"id":"1","type":"subscribe","payload":{"query":"subscription { bookAdded { name } }"}}"#,
        ))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Some(Ok(message)) = socket.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            let at = Instant::now();
            if text.contains(r#""type":"ping""#) {
                let _ = socket.send(Message::text(r#"{"type":"pong"}"#)).await;
                continue;
            }
            let Some((_, rest)) = text.split_once(r#""name":""#) else {
                continue;
            };
            let name = rest.split('"').next().unwrap_or_default();
            let mut books = arrivals.books.lock().unwrap();
            let entry = books.entry(name.to_owned()).or_insert((0, at));
            entry.0 += 1;
            entry.1 = entry.1.max(at);
            let all = entry.0 == FANOUT_SUBSCRIBERS;
            drop(books);
            if all {
                arrivals.changed.notify_waiters();
            }
        }
    });
}

/// 5,000 WebSocket subscribers to `bookAdded`; one client adds a book, and once every
/// subscriber has it, the next: from each mutation's answer to the last subscriber's arrival.
async fn fanout() {
    let dir = tempfile::tempdir().unwrap();
    let (url, stop, task) = spawn(dir.path()).await;
    let ws = format!("{}/ws", url.replace("http://", "ws://"));
    let arrivals = Arc::new(FanoutArrivals::default());
    let opening = Instant::now();
    for _ in 0..FANOUT_SUBSCRIBERS / 250 {
        let opened: Vec<_> = (0..250)
            .map(|_| tokio::spawn(fanout_subscriber(ws.clone(), Arc::clone(&arrivals))))
            .collect();
        for subscriber in opened {
            subscriber.await.unwrap();
        }
    }
    let client = reqwest::Client::new();
    wait_for_subscriptions(&client, &url, FANOUT_SUBSCRIBERS).await;
    println!(
        "{FANOUT_SUBSCRIBERS} subscribers open in {:.1?}",
        opening.elapsed()
    );
    let mutations = 200;
    let warmup = 20;
    let mut last = Vec::new();
    for i in 0..warmup + mutations {
        let name = format!("fan-{i}");
        let changed = arrivals.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        add(&client, &url, &name).await;
        let answered = Instant::now();
        loop {
            let done = arrivals
                .books
                .lock()
                .unwrap()
                .get(&name)
                .filter(|(count, _)| *count == FANOUT_SUBSCRIBERS)
                .map(|(_, at)| *at);
            if let Some(at) = done {
                if i >= warmup {
                    last.push(at.saturating_duration_since(answered));
                }
                break;
            }
            tokio::time::timeout(Duration::from_secs(10), changed.as_mut())
                .await
                .expect("not every subscriber got the event within 10 s");
            changed.set(arrivals.changed.notified());
            changed.as_mut().enable();
        }
    }
    report(
        &format!("ack → the last of {FANOUT_SUBSCRIBERS} subscribers got it"),
        &mut last,
    );
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// How many committed changes the replay benchmark fills its store with.
const REPLAY_EVENTS: usize = 100_000;

/// The cursor before every event: resuming after it replays the whole stream.
const START: &str = "000000000000000000000";

/// What the replay's WebSocket subscribers select: the whole event (about 300 bytes a frame).
const WHOLE_EVENT: &str =
    "eventId cursor type occurredAt bookName book { name authors publishedYear }";

/// How many books the slow subscriber's writers add.
const SLOW_BOOKS: usize = 20_000;

/// The slow subscriber's kernel receive buffer (Linux doubles it). Left to grow, the two
/// sockets' buffers hold megabytes of frames before the hub's buffer sees any backlog.
const SLOW_RECEIVE_BUFFER: u32 = 16 * 1024;

/// Replay after a cursor: in process (the log, the hub), then over the stack's WebSocket, then
/// a subscriber too slow for its live buffer, caught up from the log.
async fn replay() {
    let catch_ups = count_catch_ups();
    let dir = tempfile::tempdir().unwrap();
    replay_in_process(dir.path()).await;
    let (url, stop, task) = spawn(dir.path()).await;
    replay_over_websocket(&url, &catch_ups).await;
    slow_subscriber(&url, &catch_ups).await;
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// How many times the hub caught a subscriber up from the log so far.
struct CatchUps(Arc<std::sync::atomic::AtomicUsize>);

impl CatchUps {
    fn so_far(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The hub's only debug event is the one it logs when a subscriber fell behind its buffer and
/// is caught up from the log (api/src/events.rs).
impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CatchUps {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() == tracing::Level::DEBUG {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Installs a [`CatchUps`] as the process's only tracing subscriber.
fn count_catch_ups() -> CatchUps {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    let count = Arc::default();
    let hub = tracing_subscriber::filter::Targets::new()
        .with_target("api::events", tracing::Level::DEBUG);
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(CatchUps(Arc::clone(&count)).with_filter(hub)),
    )
    .unwrap();
    CatchUps(count)
}

/// Fills `dir` with [`REPLAY_EVENTS`] changes, then reads them all through the log, a page at
/// a time, and through a hub's subscription after [`START`]: no network.
async fn replay_in_process(dir: &std::path::Path) {
    let db = outboxdemo::embedded::Db::open(dir).unwrap();
    let rate = raw_adds_into(Arc::clone(&db), 100, REPLAY_EVENTS / 100).await;
    println!("filled: {REPLAY_EVENTS} raw adds from 100 tasks, {rate:.0}/s");

    let log = outboxdemo::stream::EmbeddedEventLog(db);
    let until = REPLAY_EVENTS as api::Position;
    let (mut after, mut events, mut pages) = (0, 0, Vec::new());
    let started = Instant::now();
    while after < until {
        let page_started = Instant::now();
        let page = api::EventLog::read(&log, after, until, 256).await.unwrap();
        pages.push(page_started.elapsed());
        events += page.events.len();
        after = page.through;
    }
    let elapsed = started.elapsed();
    assert_eq!(events, REPLAY_EVENTS);
    println!(
        "EmbeddedEventLog::read: {events} events in {elapsed:.2?}, {:.0} events/s",
        events as f64 / elapsed.as_secs_f64()
    );
    report("  a page of 256 records", &mut pages);

    let hub = api::EventHub::with_log(256, Arc::new(log), until);
    let started = Instant::now();
    let mut events = hub.subscribe(Some(START)).await.unwrap();
    let mut last = 0;
    for _ in 0..REPLAY_EVENTS {
        let event = futures_util::StreamExt::next(&mut events).await.unwrap();
        let position = event.unwrap().position().unwrap();
        assert!(position > last);
        last = position;
    }
    let elapsed = started.elapsed();
    println!(
        "EventHub::subscribe(after {START}): {REPLAY_EVENTS} events in {elapsed:.2?}, {:.0} events/s",
        REPLAY_EVENTS as f64 / elapsed.as_secs_f64()
    );
}

/// The next event's data on a `bookEvents` subscription, answering pings on the way.
async fn next_event(socket: &mut Socket) -> Value {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .expect("no message within 30 s")
            .unwrap()
            .unwrap();
        let Message::Text(text) = message else {
            continue;
        };
        let mut message: Value = serde_json::from_str(&text).unwrap();
        match message["type"].as_str() {
            Some("next") if message["payload"].get("errors").is_none() => {
                return message["payload"]["data"]["bookEvents"].take();
            }
            Some("ping") => socket
                .send(Message::text(json!({"type": "pong"}).to_string()))
                .await
                .unwrap(),
            _ => panic!("{message}"),
        }
    }
}

/// An event's cursor as its position in the stream.
fn position(event: &Value) -> api::Position {
    api::events::parse_cursor(event["cursor"].as_str().unwrap()).unwrap()
}

/// The stack's reader starts from its checkpoint, 0: first the processor publishes the
/// [`REPLAY_EVENTS`] (a live subscriber sees the last one) and the consumers record them. Then,
/// on a quiet stack, a subscriber after [`START`] is replayed all of them.
async fn replay_over_websocket(url: &str, catch_ups: &CatchUps) {
    let started = Instant::now();
    let mut live =
        open_subscription(url, "subscription { bookEvents { cursor bookName } }", None).await;
    let last_book = loop {
        let mut event = next_event(&mut live).await;
        if position(&event) == REPLAY_EVENTS as api::Position {
            break event["bookName"].take();
        }
    };
    let published = started.elapsed();
    live.close(None).await.unwrap();
    println!(
        "the stack published the {REPLAY_EVENTS} from its checkpoint in {published:.1?}, {:.0} events/s (a live subscriber saw the last; caught up from the log {} times)",
        REPLAY_EVENTS as f64 / published.as_secs_f64(),
        catch_ups.so_far()
    );
    let client = reqwest::Client::new();
    let newest = json!({"query": "{ activity(first: 1) { nodes { bookName } } }"});
    loop {
        let body: Value = client
            .post(url)
            .json(&newest)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if body["data"]["activity"]["nodes"][0]["bookName"] == last_book {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "… and its consumers had recorded them {:.1?} after the start",
        started.elapsed()
    );

    let opened = Instant::now();
    let query = format!(r#"subscription {{ bookEvents(after: "{START}") {{ {WHOLE_EVENT} }} }}"#);
    let mut replaying = open_subscription(url, &query, None).await;
    let (mut first, mut last) = (None, 0);
    for _ in 0..REPLAY_EVENTS {
        let position = position(&next_event(&mut replaying).await);
        first.get_or_insert_with(|| opened.elapsed());
        assert!(position > last);
        last = position;
    }
    let elapsed = opened.elapsed();
    replaying.close(None).await.unwrap();
    println!(
        "bookEvents(after: {START}) over the WebSocket: {REPLAY_EVENTS} events in {elapsed:.2?}, {:.0} events/s; connect → first event {:.2?}",
        REPLAY_EVENTS as f64 / elapsed.as_secs_f64(),
        first.unwrap()
    );
}

/// 8 clients add [`SLOW_BOOKS`] over HTTP while one subscriber sleeps 1 ms before reading each
/// event, slower than they write: it must get each event once, in order, caught up from the
/// log once it has fallen behind its buffer.
async fn slow_subscriber(url: &str, catch_ups: &CatchUps) {
    let query = format!("subscription {{ bookEvents {{ {WHOLE_EVENT} }} }}");
    let mut socket = open_subscription(url, &query, Some(SLOW_RECEIVE_BUFFER)).await;
    wait_for_subscriptions(&reqwest::Client::new(), url, 1).await;
    let caught_up_before = catch_ups.so_far();
    let started = Instant::now();
    let reader = tokio::spawn(async move {
        let mut last = REPLAY_EVENTS as api::Position;
        for _ in 0..SLOW_BOOKS {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let position = position(&next_event(&mut socket).await);
            assert!(position > last, "{position} after {last}");
            last = position;
        }
        (Instant::now(), last)
    });

    let clients = 8;
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let url = url.to_owned();
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for i in 0..SLOW_BOOKS / clients {
                    add(&client, &url, &format!("slow {c}-{i}")).await;
                }
                Instant::now()
            })
        })
        .collect();
    let mut answered = started;
    for worker in workers {
        answered = answered.max(worker.await.unwrap());
    }
    let (got_last, last) = reader.await.unwrap();
    // Strictly increasing, SLOW_BOOKS of them, from after REPLAY_EVENTS to this: each once.
    assert_eq!(last, (REPLAY_EVENTS + SLOW_BOOKS) as api::Position);
    let (writing, reading) = (answered - started, got_last - started);
    println!(
        "{clients} clients added {SLOW_BOOKS} in {writing:.1?}, {:.0}/s; a subscriber sleeping 1 ms before each event read all {SLOW_BOOKS} in order, each once (cursors {} to {last}), in {reading:.1?}, {:.0}/s; caught up from the log {} times; last answer → its last event {:.1?}",
        SLOW_BOOKS as f64 / writing.as_secs_f64(),
        REPLAY_EVENTS + 1,
        SLOW_BOOKS as f64 / reading.as_secs_f64(),
        catch_ups.so_far() - caught_up_before,
        got_last.saturating_duration_since(answered),
    );
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{what}: n={} p50={:.2?} p95={:.2?} p99={:.2?} max={:.2?}",
        samples.len(),
        at(0.50),
        at(0.95),
        at(0.99),
        samples[samples.len() - 1]
    );
}

async fn lambda() {
    for bin in [
        "api",
        "processor",
        "book-added",
        "book-removed",
        "subscriptions",
        "notifier",
    ] {
        let path = format!("target/lambda/{bin}/bootstrap");
        let Ok(meta) = std::fs::metadata(&path) else {
            println!("{bin}: no {path} (run cargo lambda build --profile lambda first)");
            continue;
        };
        let mut cold = Vec::new();
        let mut peak_kib = 0u64;
        for _ in 0..10 {
            let env = [
                ("TABLE_NAME", "t"),
                ("ACTIVITY_TABLE_NAME", "a"),
                ("CONNECTIONS_TABLE_NAME", "c"),
                ("WEBSOCKET_ENDPOINT", "http://127.0.0.1:9"),
                ("POISON_QUEUE_URL", "http://127.0.0.1:9/q"),
                ("FANOUT_QUEUE_URL", "http://127.0.0.1:9/f"),
                ("JOURNAL_TABLE_NAME", "j"),
                ("AWS_REGION", "us-east-1"),
                ("AWS_ACCESS_KEY_ID", "x"),
                ("AWS_SECRET_ACCESS_KEY", "x"),
            ];
            let harness = testing::runtime::LambdaHarness::start(&path, bin, &env)
                .await
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let first = loop {
                if let Some(first) = harness.time_to_first_poll() {
                    break first;
                }
                assert!(Instant::now() < deadline, "{bin} never polled");
                tokio::time::sleep(Duration::from_micros(200)).await;
            };
            cold.push(first);
            if let Some(pid) = harness.pid() {
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let hwm = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
                    .unwrap_or(0);
                peak_kib = peak_kib.max(hwm);
            }
        }
        cold.sort();
        println!(
            "{bin:<14} {:>6.1} MB  exec → first poll: median {:.1?}, max {:.1?}  peak RSS {:.1} MB",
            meta.len() as f64 / 1e6,
            cold[cold.len() / 2],
            cold[cold.len() - 1],
            peak_kib as f64 / 1024.0
        );
    }
}

/// One mutation's hop through the api, as its hops see it: the request continues the client's
/// trace, the store write is made inside it and hands its `traceparent` on (into the item),
/// and each is entered a few times, as an async hop is on each poll.
fn hop() -> String {
    const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let request = telemetry::Hop::start(
        tracing::info_span!("graphql.request", operation = "addBook"),
        Some(INCOMING),
    );
    for _ in 0..3 {
        let _polled = request.enter();
    }
    let _in_request = request.enter();
    let write = telemetry::Hop::start(
        tracing::info_span!("store.write", operation = "add", book = "Dune"),
        None,
    );
    for _ in 0..3 {
        let _polled = write.enter();
    }
    write.traceparent()
}

/// ns per hop (two spans) over `rounds` hops on this thread, under `dispatch` (`None`: no
/// subscriber at all).
fn time_hops(dispatch: Option<tracing::Dispatch>, rounds: u32) -> f64 {
    let run = || {
        for _ in 0..rounds / 10 {
            std::hint::black_box(hop());
        }
        let started = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(hop());
        }
        started.elapsed().as_nanos() as f64 / f64::from(rounds)
    };
    match dispatch {
        Some(dispatch) => tracing::dispatcher::with_default(&dispatch, run),
        None => run(),
    }
}

/// What a hop's spans cost, in three set-ups, five runs each, interleaved; prints each run's
/// ns per hop and the median. The log layer formats no line (no event is logged).
///
/// Each run makes its subscriber anew and drops it after: `tracing` caches, per callsite,
/// whether any live subscriber wants it, so a subscriber that exports, merely alive beside
/// one that does not, would make every hop span a "maybe" to be asked about at each hop.
fn spans() {
    use opentelemetry_sdk::testing::trace::NoopSpanExporter;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use telemetry::subscriber::{self, LogFormat};

    let off = subscriber::local_provider();
    let on = SdkTracerProvider::builder()
        .with_batch_exporter(NoopSpanExporter::new())
        .build();
    let setups: [(&str, Option<(&SdkTracerProvider, bool)>); 3] = [
        ("no subscriber", None),
        ("export off", Some((&off, false))),
        (
            "export on (batch processor, exporter that discards)",
            Some((&on, true)),
        ),
    ];
    let rounds = std::env::args().nth(2).map_or(200_000, |rounds| {
        rounds.parse().expect("spans N: a number of hops")
    });
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    for _ in 0..5 {
        for (i, (_, setup)) in setups.iter().enumerate() {
            let dispatch = setup.map(|(provider, exporting)| {
                tracing::Dispatch::new(subscriber::subscriber(LogFormat::Text, provider, exporting))
            });
            runs[i].push(time_hops(dispatch, rounds));
        }
    }
    println!(
        "spans: one hop (graphql.request + store.write, each entered 4 times, traceparent handed on), ns"
    );
    for ((name, _), mut times) in setups.iter().zip(runs) {
        let shown: Vec<String> = times.iter().map(|t| format!("{t:.0}")).collect();
        times.sort_by(f64::total_cmp);
        println!("  {name}: {} (median {:.0})", shown.join(" / "), times[2]);
    }
    let _ = on.shutdown();
}
