//! GraphQL over Server-Sent Events at `/graphql/stream`: the `graphql-sse` protocol's distinct
//! connections mode (<https://github.com/enisdenjo/graphql-sse/blob/master/PROTOCOL.md>), one
//! operation per request, for clients that cannot hold a WebSocket or would rather not (a
//! browser's `EventSource`, `curl -N`, the `graphql-sse` client with `singleConnection: false`).
//!
//! A GET (the query string) or POST (a JSON body) that accepts `text/event-stream` is answered
//! with an event stream: each result is a `next` event whose `data` is the execution result,
//! and `complete` follows the last (a query's only result; a subscription's stream ends when
//! the client disconnects, and its place in the hub is released). Idle streams get a
//! `: keep-alive` comment every `--keepalive-secs`, so proxies do not cut them.
//!
//! A subscription's `next` carries the cursor of its event as its SSE `id`, whether or not the
//! document selects `cursor`; a request with `Last-Event-ID` resumes after that cursor, in
//! place of the document's own `after`. So a browser's `EventSource`, which reconnects by
//! itself with the newest id it saw, gets every event it missed, once.
//!
//! As the protocol says, a document that does not parse or validate (or a guard's refusal) is
//! answered in the stream, with a `next` that has the errors, then `complete`: an
//! `EventSource` cannot read a 400's body. So is a mutation, refused with `BAD_REQUEST`: a
//! page must not change data through a request it can make without a preflight, and mutations
//! belong on `/graphql`. A request that is not a GraphQL request at all (a POST that is not
//! JSON, a body that does not read) is answered as `/graphql` answers it, with a JSON error.
//!
//! The rest is as on the WebSocket: `Authorization: Bearer <token>` is the credential the
//! schema's guards ask for, a page of another origin than this server's own (or one
//! `--allow-origin` lists) is refused with 403, and the schema's and the body's limits hold.

use std::convert::Infallible;

use async_graphql::{ErrorExtensionValues, ServerError};
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt, stream};

use super::AppState;
use super::http::{self, Refusal};
use crate::options::Credential;
use crate::subscriptions::{LastCursor, ResumeAfter};

/// The header a reconnecting `EventSource` sends with the newest id it saw.
const LAST_EVENT_ID: &str = "last-event-id";

/// The answer when a result cannot be written (never expected: a result is JSON).
const UNWRITABLE: &str =
    r#"{"data":null,"errors":[{"message":"internal error","extensions":{"code":"INTERNAL"}}]}"#;

/// Runs one GraphQL operation and streams its results as Server-Sent Events.
pub(super) async fn stream(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Some(origin) = state.allowed_origins.refuses(&headers) {
        tracing::warn!(origin = ?origin, "event stream from another origin refused");
        return (
            StatusCode::FORBIDDEN,
            "an event stream from another origin is refused: open GraphiQL on this server",
        )
            .into_response();
    }
    if !accepts_event_stream(&headers) {
        return Refusal::bad_request(
            StatusCode::NOT_ACCEPTABLE,
            "this endpoint answers text/event-stream; send Accept: text/event-stream, or use /graphql",
        )
        .answer("application/json");
    }
    let request = match http::read_body(&method, &headers, body)
        .and_then(|body| http::parse(&method, &uri, &body))
    {
        Ok(request) => request,
        Err(refusal) => return refusal.answer("application/json"),
    };

    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let cursors = LastCursor::default();
    let mut request = request
        .data(Credential::from_authorization(authorization))
        .data(cursors.clone());
    if let Some(after) = last_event_id(&headers) {
        request = request.data(ResumeAfter(after));
    }
    state.documents.prepare(&mut request);
    let results = if http::is_mutation(&mut request) {
        stream::once(std::future::ready(mutation_refused())).boxed()
    } else {
        state.schema.execute_stream(request)
    };
    Sse::new(events(results, cursors))
        .keep_alive(
            KeepAlive::new()
                .interval(state.keepalive)
                .text("keep-alive"),
        )
        .into_response()
}

/// The event stream of an operation's results: a `next` each, with the cursor of the event it
/// was made from as its id, then `complete`.
fn events(
    results: impl Stream<Item = async_graphql::Response> + Send + 'static,
    cursors: LastCursor,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    results
        .map(move |result| {
            // Taken as the result arrives: the cursor of the event it was made from, if any.
            let cursor = cursors.take();
            let next = Event::default().event("next");
            let next = match cursor.filter(|cursor| is_event_id(cursor)) {
                Some(cursor) => next.id(cursor),
                None => next,
            };
            Ok(next.json_data(&result).unwrap_or_else(|error| {
                tracing::error!(%error, "a result could not be written");
                Event::default().event("next").data(UNWRITABLE)
            }))
        })
        // `data: null` rather than no data: an `EventSource` does not dispatch an event without
        // data, and a page listening for `complete` must see it to close (or it reconnects).
        .chain(stream::once(std::future::ready(Ok(Event::default()
            .event("complete")
            .data("null")))))
}

/// Whether the request accepts an event stream: it says nothing, or names
/// `text/event-stream`, `text/*` or `*/*`.
fn accepts_event_stream(headers: &HeaderMap) -> bool {
    let mut accepts = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|range| {
            range
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .peekable();
    accepts.peek().is_none()
        || accepts.any(|range| matches!(range.as_str(), "text/event-stream" | "text/*" | "*/*"))
}

/// The cursor a reconnecting client resumes after, if it sent one.
fn last_event_id(headers: &HeaderMap) -> Option<String> {
    let id = headers.get(LAST_EVENT_ID)?.to_str().ok()?.trim();
    (!id.is_empty()).then(|| id.to_owned())
}

/// Whether `text` can be an SSE `id` (a field holds no line break; an id no NUL, or the
/// browser ignores it). Cursors always can; this keeps a malformed one from breaking a stream.
fn is_event_id(text: &str) -> bool {
    !text.contains(['\r', '\n', '\0'])
}

/// The result a mutation gets: refused, with nothing run.
fn mutation_refused() -> async_graphql::Response {
    let mut error = ServerError::new(
        "mutations are not run over an event stream; POST them to /graphql",
        None,
    );
    let mut extensions = ErrorExtensionValues::default();
    extensions.set("code", "BAD_REQUEST");
    error.extensions = Some(extensions);
    async_graphql::Response::from_errors(vec![error])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;
    use std::time::Duration;

    use domain::DetailType;
    use serde_json::{Value, json};

    use crate::events::memory::MemoryLog;
    use crate::options::ApiOptions;
    use crate::subscriptions::EventHub;
    use crate::tests_support::{NoStore, event};

    /// The router served on a free port, over a hub with a log in memory.
    struct Server {
        url: String,
        hub: EventHub,
        log: Arc<MemoryLog>,
    }

    impl Server {
        async fn start(options: ApiOptions) -> Self {
            let log = Arc::new(MemoryLog::default());
            let hub = EventHub::with_log(16, log.clone(), 0);
            let schema = crate::schema::build_schema_with(
                Arc::new(NoStore),
                Arc::new(NoStore),
                hub.clone(),
                None,
                &options,
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/graphql/stream", listener.local_addr().unwrap());
            let router = super::super::router_with(schema, &options);
            tokio::spawn(async move { axum::serve(listener, router).await });
            Self { url, hub, log }
        }

        /// Commits an event of this type to the log and publishes it; returns its cursor.
        fn commit(&self, detail_type: DetailType) -> String {
            let change = crate::BookEvent {
                detail_type,
                ..event("e")
            };
            self.log.commit(&self.hub, change).cursor
        }

        /// POSTs `body` as an event-stream request with these extra headers.
        async fn post(&self, body: Value, headers: &[(&str, &str)]) -> reqwest::Response {
            let mut request = reqwest::Client::new()
                .post(&self.url)
                .header("accept", "text/event-stream")
                .json(&body);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request.send().await.unwrap()
        }

        /// Waits until the hub holds `count` subscriptions.
        async fn subscribers(&self, count: usize) {
            for _ in 0..500 {
                if self.hub.subscribers() == count {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{} subscriptions, not {count}", self.hub.subscribers());
        }
    }

    /// One event of an event stream (comments apart).
    #[derive(Debug, Default)]
    struct Received {
        event: String,
        id: Option<String>,
        data: String,
        comments: Vec<String>,
    }

    impl Received {
        fn data(&self) -> Value {
            serde_json::from_str(&self.data).unwrap()
        }

        fn code(&self) -> Value {
            self.data()["errors"][0]["extensions"]["code"].clone()
        }
    }

    /// Reads an event stream, one event (or comment block) at a time.
    struct Events {
        response: reqwest::Response,
        text: String,
    }

    impl Events {
        fn of(response: reqwest::Response) -> Self {
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            Self {
                response,
                text: String::new(),
            }
        }

        /// The next block, or `None` when the stream ends; a test fails rather than wait for
        /// one that never comes.
        async fn next(&mut self) -> Option<Received> {
            loop {
                if let Some(end) = self.text.find("\n\n") {
                    let block: String = self.text.drain(..end + 2).collect();
                    let mut received = Received::default();
                    for line in block.lines().filter(|line| !line.is_empty()) {
                        let (field, value) = line.split_once(':').unwrap_or((line, ""));
                        let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
                        match field {
                            "" => received.comments.push(value),
                            "event" => received.event = value,
                            "id" => received.id = Some(value),
                            "data" => received.data = value,
                            other => panic!("unexpected field {other}"),
                        }
                    }
                    return Some(received);
                }
                let chunk = tokio::time::timeout(Duration::from_secs(5), self.response.chunk())
                    .await
                    .expect("an event within 5 s")
                    .unwrap()?;
                self.text.push_str(std::str::from_utf8(&chunk).unwrap());
            }
        }

        /// The next event that is not a comment.
        async fn event(&mut self) -> Received {
            loop {
                let received = self.next().await.expect("an event");
                if !received.event.is_empty() {
                    return received;
                }
            }
        }

        /// Asserts that `complete` comes next, and then the end of the stream.
        async fn completes(&mut self) {
            let complete = self.event().await;
            assert_eq!(complete.event, "complete", "{complete:?}");
            assert!(
                self.next().await.is_none(),
                "the stream ends after complete"
            );
        }
    }

    const ADDED: &str = "subscription { bookEvents(types: [ADDED]) { type } }";

    #[tokio::test]
    async fn each_next_has_the_cursor_of_its_event_as_its_id() {
        let server = Server::start(ApiOptions::default()).await;
        let response = server.post(json!({"query": ADDED}), &[]).await;
        let mut events = Events::of(response);
        server.subscribers(1).await;
        let first = server.commit(DetailType::Added);
        server.commit(DetailType::Removed); // not asked for: no result, no id
        let third = server.commit(DetailType::Added);
        for cursor in [first, third] {
            let next = events.event().await;
            assert_eq!(next.event, "next");
            assert_eq!(next.id.as_deref(), Some(cursor.as_str()));
            assert_eq!(
                next.data(),
                json!({"data": {"bookEvents": {"type": "ADDED"}}})
            );
        }
    }

    #[tokio::test]
    async fn last_event_id_resumes_after_it_in_place_of_the_documents_after() {
        let server = Server::start(ApiOptions::default()).await;
        let cursors: Vec<String> = (0..5).map(|_| server.commit(DetailType::Added)).collect();
        let query = format!(
            r#"subscription {{ bookEvents(after: "{}") {{ cursor }} }}"#,
            cursors[0]
        );
        let response = server
            .post(json!({"query": query}), &[("last-event-id", &cursors[2])])
            .await;
        let mut events = Events::of(response);
        let mut received = Vec::new();
        for _ in 0..2 {
            received.push(events.event().await);
        }
        let live = server.commit(DetailType::Added);
        received.push(events.event().await);
        let expected = [cursors[3].clone(), cursors[4].clone(), live];
        for (next, cursor) in received.iter().zip(&expected) {
            assert_eq!(next.id.as_ref(), Some(cursor));
            assert_eq!(next.data()["data"]["bookEvents"]["cursor"], cursor.as_str());
        }
    }

    #[tokio::test]
    async fn a_mutation_is_refused_with_a_code_and_nothing_runs() {
        let server = Server::start(ApiOptions::default()).await;
        // NoStore fails every call: had the mutation run, the error would be INTERNAL.
        let mutation = r#"mutation { removeBook(name: "Dune") { name } }"#;
        let mut events = Events::of(server.post(json!({"query": mutation}), &[]).await);
        let next = events.event().await;
        assert_eq!(next.code(), "BAD_REQUEST", "{next:?}");
        assert_eq!(next.data()["data"], Value::Null);
        assert!(
            next.data()["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("/graphql")
        );
        events.completes().await;

        let get = reqwest::Client::new()
            .get(&server.url)
            .query(&[("query", mutation)])
            .send()
            .await
            .unwrap();
        let mut events = Events::of(get);
        assert_eq!(events.event().await.code(), "BAD_REQUEST");
        events.completes().await;
    }

    #[tokio::test]
    async fn a_query_is_one_next_then_complete() {
        let server = Server::start(ApiOptions::default()).await;
        let response = reqwest::Client::new()
            .get(&server.url)
            .query(&[("query", "{ __typename }")])
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        let mut events = Events::of(response);
        let next = events.event().await;
        assert_eq!(next.event, "next");
        assert_eq!(next.id, None, "a query's result comes from no event");
        assert_eq!(next.data(), json!({"data": {"__typename": "Query"}}));
        events.completes().await;
    }

    #[tokio::test]
    async fn documents_that_do_not_parse_or_validate_are_answered_in_the_stream() {
        let server = Server::start(ApiOptions::default()).await;
        for (query, code) in [
            ("subscription { bookEvents(", "GRAPHQL_PARSE_FAILED"),
            ("subscription { nothing }", "GRAPHQL_VALIDATION_FAILED"),
            (
                r#"subscription { bookEvents(after: "x") { type } }"#,
                "BAD_USER_INPUT",
            ),
        ] {
            let mut events = Events::of(server.post(json!({"query": query}), &[]).await);
            let next = events.event().await;
            assert_eq!(next.code(), code, "{query}: {next:?}");
            events.completes().await;
        }
        server.subscribers(0).await;
    }

    #[tokio::test]
    async fn requests_that_are_not_graphql_are_refused_as_on_graphql() {
        let server = Server::start(ApiOptions::default()).await;
        let client = reqwest::Client::new();
        let refusal = |response: reqwest::Response| async move {
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, body["errors"][0]["extensions"]["code"].clone())
        };
        let not_json = client
            .post(&server.url)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(refusal(not_json).await, (400, json!("BAD_REQUEST")));
        let not_a_json_post = client.post(&server.url).body("query").send().await.unwrap();
        assert_eq!(refusal(not_a_json_post).await, (415, json!("BAD_REQUEST")));
        let too_large = json!({"query": "x".repeat(ApiOptions::default().max_body_bytes)});
        assert_eq!(
            refusal(server.post(too_large, &[]).await).await,
            (413, json!("PAYLOAD_TOO_LARGE"))
        );
        let json_only = client
            .get(&server.url)
            .query(&[("query", "{ __typename }")])
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(refusal(json_only).await, (406, json!("BAD_REQUEST")));
    }

    #[tokio::test]
    async fn pages_of_other_origins_are_refused_and_this_servers_own_let_in() {
        let server = Server::start(ApiOptions::default()).await;
        let from = |origin: &str| {
            reqwest::Client::new()
                .get(&server.url)
                .query(&[("query", "{ __typename }")])
                .header("origin", origin)
                .send()
        };
        assert_eq!(from("http://evil.example").await.unwrap().status(), 403);
        let own = server.url.trim_end_matches("/graphql/stream").to_owned();
        assert_eq!(from(&own).await.unwrap().status(), 200);
    }

    #[tokio::test]
    async fn subscriptions_need_the_bearer_token_when_one_is_configured() {
        let server = Server::start(ApiOptions {
            auth_token: Some("s3cret".into()),
            ..ApiOptions::default()
        })
        .await;
        for authorization in [None, Some("Bearer nope")] {
            let headers: Vec<_> = authorization
                .map(|value| ("authorization", value))
                .into_iter()
                .collect();
            let mut events = Events::of(server.post(json!({"query": ADDED}), &headers).await);
            assert_eq!(events.event().await.code(), "UNAUTHENTICATED");
            events.completes().await;
        }
        let headers = [("authorization", "Bearer s3cret")];
        let mut events = Events::of(server.post(json!({"query": ADDED}), &headers).await);
        server.subscribers(1).await;
        let cursor = server.commit(DetailType::Added);
        assert_eq!(events.event().await.id, Some(cursor));
    }

    #[tokio::test]
    async fn idle_streams_get_keep_alive_comments_and_a_client_that_goes_releases_its_place() {
        let server = Server::start(ApiOptions {
            keepalive: Duration::from_millis(50),
            ..ApiOptions::default()
        })
        .await;
        let mut events = Events::of(server.post(json!({"query": ADDED}), &[]).await);
        server.subscribers(1).await;
        let idle = events.next().await.unwrap();
        assert_eq!(idle.comments, ["keep-alive"], "{idle:?}");
        drop(events);
        server.subscribers(0).await;
    }
}
