//! The cache of catalogue responses that `/graphql` keeps where the store can tell when the
//! catalogue changed (the embedded store; not DynamoDB, which other instances write).
//!
//! A query whose every root field reads the catalogue (`books`, `book`, `__typename`) is
//! answered from the cache when the same request (method, query string, body, credential and
//! media type, byte for byte) was answered at the catalogue's current version. The version is
//! read *before* a miss is executed and the answer is kept under it: a write that commits
//! while the query runs moves the version, so that answer is never served. The store moves the
//! version after each write commits and before the write is answered, so no request sent after
//! a mutation was answered is served a page from before it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_graphql::parser::types::{ExecutableDocument, OperationType, Selection};
use axum::body::Bytes;

use crate::store::CatalogueVersion;

/// How many answers the cache keeps; when full, it starts over.
const ANSWERS: usize = 256;
/// The largest answer kept (a page of 100 books is well under it).
const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// The root fields whose results depend on the catalogue alone.
const CATALOGUE_FIELDS: [&str; 3] = ["books", "book", "__typename"];

/// Catalogue answers by request, each with the catalogue version it was read at.
pub(super) struct Responses {
    version: Arc<dyn CatalogueVersion>,
    answers: Mutex<HashMap<Vec<u8>, (u64, Bytes)>>,
}

impl std::fmt::Debug for Responses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responses").finish_non_exhaustive()
    }
}

/// A request as the cache knows it: every part the answer may depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Key(Vec<u8>);

impl Key {
    /// The key of a request: its method, query string, body, `Authorization` and whether it
    /// asked for the spec's media type. Each part is length-prefixed, so no two requests share
    /// a key.
    pub(super) fn new(
        post: bool,
        query_string: &str,
        body: &[u8],
        authorization: Option<&[u8]>,
        spec_media_type: bool,
    ) -> Self {
        let mut key = Vec::with_capacity(body.len() + query_string.len() + 32);
        key.push(u8::from(post) | (u8::from(spec_media_type) << 1));
        for part in [
            query_string.as_bytes(),
            body,
            authorization.unwrap_or_default(),
        ] {
            key.extend_from_slice(&(part.len() as u64).to_le_bytes());
            key.extend_from_slice(part);
        }
        if authorization.is_none() {
            key.push(0xff);
        }
        Self(key)
    }
}

impl Responses {
    pub(super) fn new(version: Arc<dyn CatalogueVersion>) -> Self {
        Self {
            version,
            answers: Mutex::default(),
        }
    }

    /// The catalogue's version now: read it before executing an answer to keep.
    pub(super) fn version(&self) -> u64 {
        self.version.catalogue_version()
    }

    /// The answer to `key` kept at the current version, if any.
    pub(super) fn get(&self, key: &Key) -> Option<Bytes> {
        let now = self.version();
        let answers = self.answers.lock().ok()?;
        let (version, body) = answers.get(&key.0)?;
        (*version == now).then(|| body.clone())
    }

    /// Keeps `body`, the answer to `key` read at `version`, unless the catalogue has moved on.
    pub(super) fn put(&self, key: Key, version: u64, body: Bytes) {
        if body.len() > MAX_ANSWER_BYTES || self.version() != version {
            return;
        }
        if let Ok(mut answers) = self.answers.lock() {
            if answers.len() >= ANSWERS {
                answers.clear();
            }
            answers.insert(key.0, (version, body));
        }
    }
}

/// Whether the operation `document` runs (by `operation_name`) is a query that reads only the
/// catalogue: every root selection a field of [`CATALOGUE_FIELDS`] (a fragment at the root is
/// not looked into, and is not cached).
pub(super) fn reads_only_the_catalogue(
    document: &ExecutableDocument,
    operation_name: Option<&str>,
) -> bool {
    let operation = match operation_name {
        Some(name) => document
            .operations
            .iter()
            .find(|(n, _)| n.is_some_and(|n| n.as_str() == name))
            .map(|(_, operation)| operation),
        None => {
            let mut operations = document.operations.iter();
            match (operations.next(), operations.next()) {
                (Some((_, operation)), None) => Some(operation),
                _ => None,
            }
        }
    };
    let Some(operation) = operation else {
        return false;
    };
    let operation = &operation.node;
    operation.ty == OperationType::Query
        && operation
            .selection_set
            .node
            .items
            .iter()
            .all(|selection| match &selection.node {
                Selection::Field(field) => {
                    CATALOGUE_FIELDS.contains(&field.node.name.node.as_str())
                }
                _ => false,
            })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[derive(Default)]
    struct Counter(AtomicU64);

    impl CatalogueVersion for Counter {
        fn catalogue_version(&self) -> u64 {
            self.0.load(Ordering::Acquire)
        }
    }

    fn catalogue_only(query: &str, operation: Option<&str>) -> bool {
        let document = async_graphql::parser::parse_query(query).unwrap();
        reads_only_the_catalogue(&document, operation)
    }

    #[test]
    fn only_queries_of_the_catalogue_alone_are_kept() {
        assert!(catalogue_only("{ books { edges { cursor } } }", None));
        assert!(catalogue_only(
            r#"query A { book(name: "x") { name } __typename }"#,
            None
        ));
        assert!(catalogue_only(
            "query A { books { pageInfo { hasNextPage } } } mutation B { removeBook(name: \"x\") { name } }",
            Some("A")
        ));
        assert!(!catalogue_only(
            "query A { books { pageInfo { hasNextPage } } } mutation B { removeBook(name: \"x\") { name } }",
            Some("B")
        ));
        assert!(
            !catalogue_only(
                "query A { books { pageInfo { hasNextPage } } } query B { __typename }",
                None
            ),
            "which operation runs is not known"
        );
        assert!(!catalogue_only(
            "{ books { edges { cursor } } activity { edges { cursor } } }",
            None
        ));
        assert!(!catalogue_only("{ deadLetters { source } }", None));
        assert!(!catalogue_only(
            "{ ...F } fragment F on Query { books { edges { cursor } } }",
            None
        ));
        assert!(!catalogue_only("subscription { bookAdded { name } }", None));
    }

    #[test]
    fn an_answer_is_served_only_at_the_version_it_was_read_at() {
        let version = Arc::new(Counter::default());
        let responses = Responses::new(version.clone());
        let key = || {
            Key::new(
                true,
                "",
                b"{\"query\":\"{ books { edges { cursor } } }\"}",
                None,
                false,
            )
        };
        let read_at = responses.version();
        responses.put(key(), read_at, Bytes::from_static(b"page 1"));
        assert_eq!(responses.get(&key()).as_deref(), Some(&b"page 1"[..]));
        assert_eq!(
            responses.get(&Key::new(
                true,
                "",
                b"{\"query\":\"{ books { edges { cursor } } }\"}",
                Some(b"Bearer x"),
                false
            )),
            None,
            "another credential is another request"
        );

        version.0.fetch_add(1, Ordering::AcqRel);
        assert_eq!(responses.get(&key()), None, "a write moved the version");

        // Read before a write, kept after it: never served.
        let before = responses.version();
        version.0.fetch_add(1, Ordering::AcqRel);
        responses.put(key(), before, Bytes::from_static(b"stale"));
        assert_eq!(responses.get(&key()), None);
    }

    #[test]
    fn keys_of_different_requests_differ() {
        let keys = [
            Key::new(true, "", b"ab", None, false),
            Key::new(true, "a", b"b", None, false),
            Key::new(false, "", b"ab", None, false),
            Key::new(true, "", b"ab", Some(b""), false),
            Key::new(true, "", b"ab", None, true),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
