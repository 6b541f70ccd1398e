//! The cache of parsed GraphQL documents that `/graphql` shares across requests.

use std::collections::HashMap;
use std::sync::Mutex;

use async_graphql::parser::types::ExecutableDocument;

/// How many parsed documents [`Documents`] keeps.
const DOCUMENTS: usize = 256;

/// Parsed GraphQL documents by their text. Clients send the same few documents over and over
/// (with different variables), and parsing is the costliest step of a small request. Only
/// documents that parse are kept; when full, the cache starts over, so a stream of one-off
/// documents cannot pin it.
#[derive(Debug, Default)]
pub(super) struct Documents(Mutex<HashMap<String, ExecutableDocument>>);

impl Documents {
    /// Gives `request` its parsed document, from the cache or parsed now (a document that does
    /// not parse is left for execution to report).
    pub(super) fn prepare(&self, request: &mut async_graphql::Request) {
        let cached = self
            .0
            .lock()
            .ok()
            .and_then(|documents| documents.get(&request.query).cloned());
        if let Some(document) = cached {
            request.set_parsed_query(document);
            return;
        }
        let Ok(document) = request.parsed_query() else {
            return;
        };
        let document = document.clone();
        if let Ok(mut documents) = self.0.lock() {
            if documents.len() >= DOCUMENTS {
                documents.clear();
            }
            documents.insert(request.query.clone(), document);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_that_parse_are_kept_and_the_cache_stays_bounded() {
        let documents = Documents::default();
        let kept = |documents: &Documents| documents.0.lock().unwrap().len();
        for _ in 0..3 {
            let mut request = async_graphql::Request::new("{ books { edges { cursor } } }");
            documents.prepare(&mut request);
            assert!(request.parsed_query().is_ok());
        }
        assert_eq!(kept(&documents), 1);

        let mut broken = async_graphql::Request::new("{ books(");
        documents.prepare(&mut broken);
        assert_eq!(
            kept(&documents),
            1,
            "a document that does not parse is not kept"
        );

        for i in 0..2 * DOCUMENTS {
            documents.prepare(&mut async_graphql::Request::new(format!(
                "{{ book(name: \"{i}\") {{ name }} }}"
            )));
            assert!(kept(&documents) <= DOCUMENTS);
        }
    }
}
