//! The introspection queries tools send (graphql-js's `getIntrospectionQuery()` with and
//! without each of its options), as `e2e/introspection-queries.js` writes them; the e2e tests
//! fail when the file is not what graphql-js produces.

/// The abusive counterpart: an introspection query that walks `fields { type { … } }` deeper
/// than any limit worth having.
pub const TOO_DEEP: &str = "{ __schema { types { fields { type { fields { type { fields { type { fields { type { fields { type { name } } } } } } } } } } } } }";

/// `(name, query)` for every introspection query in the fixture, by name.
#[allow(clippy::expect_used)] // the fixture is checked in: a broken one fails the tests
pub fn queries() -> Vec<(String, String)> {
    let text = include_str!("../fixtures/introspection-queries.json");
    let queries: std::collections::BTreeMap<String, String> =
        serde_json::from_str(text).expect("introspection-queries.json is a map of queries");
    assert!(
        queries.len() > 1,
        "introspection-queries.json lists the queries"
    );
    queries.into_iter().collect()
}
