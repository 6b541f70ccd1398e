//! What a document may ask, checked before validation: how long it is, how deep it nests, and
//! whether it introspects where introspection is off. What one WebSocket connection may do
//! (subscriptions, message rate, subscription ids) is in [`connection`].
//!
//! Depth: every field counts one level, leaves included (`{ books { nodes { name } } }` is 3 deep),
//! through fragments and inline fragments as if they were written out. One exception, inside
//! introspection (`__schema`, `__type`): a type reference's `ofType` counts nothing. A chain of
//! `ofType`s follows one type's wrappers (`[String!]!` is three), one object per level and
//! never a list, so it adds no breadth, only the nesting that tools write out to be sure to
//! reach the named type: graphql-js's standard introspection query nests it nine times, which
//! a plain count would refuse. A chain is bounded by the parser's recursion limit, and every
//! other introspection field (`types`, `fields`, `type`, …) still counts, so a query that
//! walks `fields { type { fields { type … } } }` is refused like any deep data query.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{ServerError, ServerResult, Value, Variables};

use crate::error::ApiError;

pub mod connection;

/// What a document asks, as far as the limits care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// The deepest selection in any of its operations, counted as the module docs say.
    pub depth: usize,
    /// Whether any operation selects `__schema` or `__type` (`__typename` is not introspection
    /// of the schema and is always answered).
    pub introspects: bool,
}

/// The [`Shape`] of `document`.
pub fn shape_of(document: &ExecutableDocument) -> Shape {
    let mut counter = Counter {
        document,
        introspects: false,
        known: HashMap::new(),
        entered: Vec::new(),
    };
    let depth = document
        .operations
        .iter()
        .map(|(_, operation)| counter.selection_set(&operation.node.selection_set.node, false))
        .max()
        .unwrap_or(0);
    Shape {
        depth,
        introspects: counter.introspects,
    }
}

struct Counter<'a> {
    document: &'a ExecutableDocument,
    introspects: bool,
    /// The depth of each fragment already counted, inside introspection or not: a fragment
    /// spread many times is walked once.
    known: HashMap<(&'a str, bool), usize>,
    /// The fragments being walked: a spread of one of them is a cycle, which validation
    /// refuses later; it counts nothing here.
    entered: Vec<&'a str>,
}

impl<'a> Counter<'a> {
    fn selection_set(&mut self, set: &'a SelectionSet, introspection: bool) -> usize {
        set.items
            .iter()
            .map(|selection| match &selection.node {
                Selection::Field(field) => {
                    let name = field.node.name.node.as_str();
                    let own = usize::from(!(introspection && name == "ofType"));
                    let root = name == "__schema" || name == "__type";
                    self.introspects |= root;
                    let inside = introspection || root;
                    own + self.selection_set(&field.node.selection_set.node, inside)
                }
                Selection::InlineFragment(fragment) => {
                    self.selection_set(&fragment.node.selection_set.node, introspection)
                }
                Selection::FragmentSpread(spread) => {
                    self.fragment(spread.node.fragment_name.node.as_str(), introspection)
                }
            })
            .max()
            .unwrap_or(0)
    }

    fn fragment(&mut self, name: &'a str, introspection: bool) -> usize {
        if let Some(depth) = self.known.get(&(name, introspection)) {
            return *depth;
        }
        if self.entered.contains(&name) {
            return 0;
        }
        let Some(definition) = self.document.fragments.get(name) else {
            return 0; // validation reports the unknown fragment
        };
        self.entered.push(name);
        let depth = self.selection_set(&definition.node.selection_set.node, introspection);
        self.entered.pop();
        self.known.insert((name, introspection), depth);
        depth
    }
}

/// Refuses, before validation: a document longer than `max_query_bytes` (`QUERY_TOO_LARGE`,
/// before it is parsed), and with `GRAPHQL_VALIDATION_FAILED` one deeper than `max_depth`
/// (async-graphql's own message) and, where introspection is off, one that introspects
/// (async-graphql alone would answer it with `null` and no word why).
#[derive(Debug, Clone, Copy)]
pub struct DocumentLimits {
    /// The longest a document may be, in bytes.
    pub max_query_bytes: usize,
    /// The deepest a document may nest.
    pub max_depth: usize,
    /// Whether `__schema` and `__type` are answered.
    pub introspection: bool,
}

fn refusal(message: &str) -> ServerError {
    let mut error = ServerError::new(message, None);
    error
        .extensions
        .get_or_insert_with(Default::default)
        .set("code", Value::from("GRAPHQL_VALIDATION_FAILED"));
    error
}

impl ExtensionFactory for DocumentLimits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(*self)
    }
}

#[async_trait::async_trait]
impl Extension for DocumentLimits {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        if query.len() > self.max_query_bytes {
            return Err(ApiError::QueryTooLarge(self.max_query_bytes).server_error());
        }
        let document = next.run(ctx, query, variables).await?;
        let shape = shape_of(&document);
        if shape.introspects && !self.introspection {
            return Err(refusal("Introspection is turned off on this server."));
        }
        if shape.depth > self.max_depth {
            return Err(refusal("Query is nested too deep."));
        }
        Ok(document)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(query: &str) -> Shape {
        shape_of(&async_graphql::parser::parse_query(query).expect("the test's query parses"))
    }

    fn depth(query: &str) -> usize {
        shape(query).depth
    }

    #[test]
    fn every_field_counts_leaves_included() {
        assert_eq!(depth("{ book(name: \"x\") { name } }"), 2);
        assert_eq!(depth("{ books { edges { node { name } } } }"), 4);
        assert_eq!(depth("query A { a } query B { b { c { d } } }"), 3);
    }

    #[test]
    fn fragments_count_as_if_written_out_and_cycles_end() {
        let spread = "{ books { ...Page } } fragment Page on BookConnection { nodes { name } }";
        assert_eq!(depth(spread), 3);
        let inline = "{ books { ... on BookConnection { nodes { ... { name } } } } }";
        assert_eq!(depth(inline), 3);
        let cycle =
            "{ books { ...A } } fragment A on X { a { ...B } } fragment B on X { b { ...A } }";
        assert_eq!(depth(cycle), 3);
        assert_eq!(depth("{ books { ...Missing } }"), 1);
    }

    #[test]
    fn of_type_chains_count_nothing_inside_introspection_only() {
        let chain = "ofType { ".repeat(9) + "name" + &" }".repeat(9);
        assert_eq!(
            depth(&format!("{{ __type(name: \"Book\") {{ {chain} }} }}")),
            2
        );
        assert_eq!(
            depth(&format!(
                "{{ __schema {{ types {{ fields {{ type {{ {chain} }} }} }} }} }}"
            )),
            5
        );
        // Outside introspection, a field of that name is an ordinary field.
        assert_eq!(depth(&format!("{{ {chain} }}")), 10);
        // The list-valued introspection fields count as usual.
        let walk = "fields { type { ".repeat(6) + "name" + &" } }".repeat(6);
        assert_eq!(
            depth(&format!("{{ __schema {{ types {{ {walk} }} }} }}")),
            15
        );
    }

    #[test]
    fn introspection_is_seen_through_fragments_but_typename_is_not_introspection() {
        assert!(shape("{ __type(name: \"Book\") { name } }").introspects);
        assert!(shape("{ ...F } fragment F on Query { __schema { types { name } } }").introspects);
        assert!(!shape("{ __typename books { __typename } }").introspects);
    }
}
