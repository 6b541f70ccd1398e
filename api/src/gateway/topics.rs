//! Which events a subscription can match: the detail types its root field can yield, derived
//! once, when the subscription is stored, and the keys the notifier reads it by.
//!
//! What this cannot tell for sure (a fragment at the root, a variable it cannot read, a root
//! field it does not know) it answers with every detail type: a subscription indexed under a
//! type it never yields costs one execution that yields nothing, one left out of a type it
//! yields would miss events.

use async_graphql::parser::types::{DocumentOperations, Selection};
use async_graphql::{InputType, Name};
use domain::DetailType;

use super::StoredSubscription;
use crate::types::BookEventType;

/// The detail types of the events `subscription` can yield, in [`DetailType::ALL`]'s order,
/// none twice. Meant for a document the schema has validated.
pub fn detail_types(subscription: &StoredSubscription) -> Vec<DetailType> {
    let Some(types) = root_field_types(subscription) else {
        return DetailType::ALL.to_vec();
    };
    DetailType::ALL
        .into_iter()
        .filter(|t| types.contains(t))
        .collect()
}

fn root_field_types(subscription: &StoredSubscription) -> Option<Vec<DetailType>> {
    let document = async_graphql::parser::parse_query(&subscription.query).ok()?;
    let operation = match (&document.operations, subscription.operation_name.as_deref()) {
        (DocumentOperations::Single(operation), _) => operation,
        (DocumentOperations::Multiple(operations), Some(name)) => operations.get(name)?,
        (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => {
            operations.values().next()?
        }
        (DocumentOperations::Multiple(_), None) => return None,
    };
    let variables = async_graphql::Variables::from_json(subscription.variables.clone());
    let mut types = Vec::new();
    for selection in &operation.node.selection_set.node.items {
        let Selection::Field(field) = &selection.node else {
            return None; // a fragment at the root: not worth resolving here
        };
        let field = &field.node;
        match field.name.node.as_str() {
            "bookAdded" => types.push(DetailType::Added),
            "bookRemoved" => types.push(DetailType::Removed),
            "bookEvents" => {
                let argument = field
                    .arguments
                    .iter()
                    .find(|(name, _)| name.node == "types")
                    .map(|(_, value)| value.node.clone());
                let value = match argument {
                    None => async_graphql::Value::Null,
                    Some(value) => value
                        .into_const_with(|name: Name| variables.get(&name).cloned().ok_or(()))
                        .ok()?,
                };
                match <Option<Vec<BookEventType>>>::parse(Some(value)).ok()? {
                    Some(listed) => types.extend(listed.into_iter().map(DetailType::from)),
                    None => types.extend(DetailType::ALL),
                }
            }
            _ => return None,
        }
    }
    Some(types)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::{Value, json};

    use super::*;
    use DetailType::{Added, Removed, Updated};

    fn types_of(query: &str, variables: Value, operation_name: Option<&str>) -> Vec<DetailType> {
        detail_types(&StoredSubscription {
            connection_id: "c".into(),
            id: "1".into(),
            query: query.into(),
            variables,
            operation_name: operation_name.map(str::to_owned),
        })
    }

    #[test]
    fn each_root_field_is_indexed_under_the_types_it_yields() {
        let none = Value::Null;
        assert_eq!(
            types_of("subscription { bookAdded { eventId } }", none.clone(), None),
            [Added]
        );
        assert_eq!(
            types_of(
                "subscription { gone: bookRemoved { eventId } }",
                none.clone(),
                None
            ),
            [Removed]
        );
        assert_eq!(
            types_of(
                "subscription { bookEvents { eventId } }",
                none.clone(),
                None
            ),
            [Added, Removed, Updated]
        );
        assert_eq!(
            types_of(
                "subscription { bookEvents(types: [UPDATED, ADDED, ADDED]) { eventId } }",
                none.clone(),
                None
            ),
            [Added, Updated]
        );
        // List input coercion: one value is a list of one.
        assert_eq!(
            types_of(
                "subscription { bookEvents(types: REMOVED) { eventId } }",
                none.clone(),
                None
            ),
            [Removed]
        );
        assert_eq!(
            types_of(
                "subscription { bookEvents(types: null) { eventId } }",
                none,
                None
            ),
            [Added, Removed, Updated]
        );
    }

    #[test]
    fn variables_and_the_named_operation_are_read() {
        let query = "subscription S($t: [BookEventType!]) { bookEvents(types: $t) { eventId } }";
        assert_eq!(types_of(query, json!({"t": ["REMOVED"]}), None), [Removed]);
        assert_eq!(types_of(query, json!({}), None), [Added, Removed, Updated]);
        let two =
            "subscription A { bookAdded { eventId } } subscription R { bookRemoved { eventId } }";
        assert_eq!(types_of(two, Value::Null, Some("R")), [Removed]);
    }

    #[test]
    fn what_cannot_be_told_is_indexed_under_every_type() {
        let all = [Added, Removed, Updated];
        let fragment = "subscription { ...F } fragment F on Subscription { bookAdded { eventId } }";
        assert_eq!(types_of(fragment, Value::Null, None), all);
        assert_eq!(
            types_of("subscription { somethingNew }", Value::Null, None),
            all
        );
        assert_eq!(types_of("not graphql", Value::Null, None), all);
        let bad_variable =
            "subscription S($t: [BookEventType!]) { bookEvents(types: $t) { eventId } }";
        assert_eq!(types_of(bad_variable, json!({"t": ["NOPE"]}), None), all);
    }
}
