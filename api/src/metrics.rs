//! What the API counts, through the `metrics` facade: whatever recorder the process installed
//! gets them (the local stack's `/metrics`); without one, counting costs next to nothing.

use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery,
};
use async_graphql::parser::types::{ExecutableDocument, OperationType, Selection};
use async_graphql::{PathSegment, Response, ServerResult, Variables};

/// Mutations run, by root `field` (`addBook`, `removeBook`) and `outcome`: `ok`, or the code of
/// the error it ended with (`CONFLICT`, `UNAUTHENTICATED`, …).
pub const MUTATIONS: &str = "outboxdemo_mutations_total";

/// Seconds from a change's commit (`metadata.committedAt`) to the hand-over of its event to a
/// subscription: locally, one observation per subscription and event committed after the
/// subscription began (an event replayed for `after` is as old as the client asked for, not
/// late); on AWS, one per event the notifier's rule invocation posted to a subscriber. Events
/// without a commit time (removals) are not observed.
pub const MUTATION_TO_SUBSCRIBER: &str = "outboxdemo_mutation_to_subscriber_seconds";

/// Describes the API's metrics to the installed recorder.
pub fn describe() {
    metrics::describe_counter!(MUTATIONS, "Mutations run, by root field and outcome");
    metrics::describe_histogram!(
        MUTATION_TO_SUBSCRIBER,
        metrics::Unit::Seconds,
        "From a change's commit to its event's hand-over to a subscription"
    );
}

/// The notifier posted `event` to subscribers.
pub(crate) fn posted(event: &crate::BookEvent) {
    if let Some(committed_at) = event.committed_at {
        metrics::histogram!(MUTATION_TO_SUBSCRIBER)
            .record(domain::event::seconds_since(committed_at));
    }
}

/// `event` is handed to a subscription that began at `since`.
pub(crate) fn handed_over(event: &crate::BookEvent, since: chrono::DateTime<chrono::Utc>) {
    if let Some(committed_at) = event.committed_at.filter(|at| *at >= since) {
        metrics::histogram!(MUTATION_TO_SUBSCRIBER)
            .record(domain::event::seconds_since(committed_at));
    }
}

/// A schema extension that counts each mutation field a request runs, with its outcome.
#[derive(Debug, Clone, Copy, Default)]
pub struct MutationMetrics;

impl ExtensionFactory for MutationMetrics {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Counting::default())
    }
}

/// One request's count: the document, kept from its parse for the execution.
#[derive(Default)]
struct Counting {
    document: Mutex<Option<ExecutableDocument>>,
}

#[async_trait::async_trait]
impl Extension for Counting {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        let mutates = document
            .operations
            .iter()
            .any(|(_, operation)| operation.node.ty == OperationType::Mutation);
        if mutates && let Ok(mut kept) = self.document.lock() {
            *kept = Some(document.clone());
        }
        Ok(document)
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let response = next.run(ctx, operation_name).await;
        let document = self.document.lock().ok().and_then(|mut kept| kept.take());
        if let Some(document) = document {
            count(&document, operation_name, &response);
        }
        response
    }
}

/// Counts the root fields of the mutation `operation_name` picks, each with the code of the
/// first error under it, or `ok`.
fn count(document: &ExecutableDocument, operation_name: Option<&str>, response: &Response) {
    let Some(operation) = crate::operation::operation(document, operation_name) else {
        return;
    };
    if operation.ty != OperationType::Mutation {
        return;
    }
    for selection in &operation.selection_set.node.items {
        let Selection::Field(field) = &selection.node else {
            continue;
        };
        let key = field.node.response_key().node.as_str();
        let outcome = response
            .errors
            .iter()
            .find(
                |error| matches!(error.path.first(), Some(PathSegment::Field(name)) if name == key),
            )
            .and_then(|error| error.extensions.as_ref()?.get("code"))
            .map_or_else(
                || "ok".to_owned(),
                |code| match code {
                    async_graphql::Value::String(code) => code.clone(),
                    other => other.to_string(),
                },
            );
        metrics::counter!(
            MUTATIONS,
            "field" => field.node.name.node.to_string(),
            "outcome" => outcome
        )
        .increment(1);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;

    use async_trait::async_trait;
    use domain::{Book, BookName};
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;
    use crate::store::{BookStore, Page, StoreError};
    use crate::tests_support::NoStore;

    /// Books in memory, enough for mutations to succeed and fail as a store's do.
    #[derive(Default)]
    struct Books(Mutex<HashMap<String, Book>>);

    #[async_trait]
    impl BookStore for Books {
        async fn add(&self, book: &Book) -> Result<(), StoreError> {
            let mut books = self.0.lock().unwrap();
            if books.contains_key(book.name.as_str()) {
                return Err(StoreError::Conflict(book.name.clone()));
            }
            books.insert(book.name.as_str().to_owned(), book.clone());
            Ok(())
        }
        async fn remove(&self, name: &BookName) -> Result<Book, StoreError> {
            let mut books = self.0.lock().unwrap();
            books
                .remove(name.as_str())
                .ok_or_else(|| StoreError::NotFound(name.clone()))
        }
        async fn get(&self, _: &BookName) -> Result<Option<Book>, StoreError> {
            Ok(None)
        }
        async fn list(&self, _: usize, _: Option<&BookName>) -> Result<Page<Book>, StoreError> {
            Ok(Page {
                items: Vec::new(),
                has_next_page: false,
            })
        }
    }

    fn schema() -> crate::ApiSchema {
        crate::build_schema(
            Arc::new(Books::default()),
            Arc::new(NoStore),
            crate::EventHub::default(),
        )
    }

    /// The mutations counted while `run` runs, as (field, outcome, count).
    fn counted(requests: &[&str]) -> Vec<(String, String, u64)> {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        metrics::with_local_recorder(&recorder, || {
            runtime.block_on(async {
                let schema = schema();
                for request in requests {
                    schema.execute(*request).await;
                }
            });
        });
        let mut counts: Vec<(String, String, u64)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == MUTATIONS)
            .map(|(key, _, _, value)| {
                let label = |name: &str| {
                    key.key()
                        .labels()
                        .find(|label| label.key() == name)
                        .map(|label| label.value().to_owned())
                        .unwrap()
                };
                let DebugValue::Counter(count) = value else {
                    panic!("{value:?}")
                };
                (label("field"), label("outcome"), count)
            })
            .collect();
        counts.sort();
        counts
    }

    #[test]
    fn each_mutation_field_is_counted_with_its_outcome_and_queries_are_not() {
        let add = r#"mutation { addBook(input: {name: "Dune", authors: ["Frank Herbert"], publishedYear: 1965}) { name } }"#;
        let counts = counted(&[
            add,
            add,
            r#"mutation { removeBook(name: "Nope") { name } }"#,
            r#"mutation { addBook(input: {name: "X", authors: [], publishedYear: 1}) { name } }"#,
            r#"mutation { a: removeBook(name: "Dune") { name } b: removeBook(name: "Dune") { name } }"#,
            "{ books { edges { node { name } } } }",
            "mutation { nope }",
        ]);
        assert_eq!(
            counts,
            [
                ("addBook".into(), "BAD_USER_INPUT".into(), 1),
                ("addBook".into(), "CONFLICT".into(), 1),
                ("addBook".into(), "ok".into(), 1),
                ("removeBook".into(), "NOT_FOUND".into(), 2),
                ("removeBook".into(), "ok".into(), 1),
            ]
        );
    }
}
