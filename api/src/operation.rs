//! Which operation of a document a request runs: the one rule every transport applies.

use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationDefinition, OperationType,
};

/// The type of the operation `operation_name` picks in `document` (without a name, its only
/// operation); `None` when there is no such operation, or several and no name (validation
/// then says why).
pub(crate) fn operation_type(
    document: &ExecutableDocument,
    operation_name: Option<&str>,
) -> Option<OperationType> {
    operation(document, operation_name).map(|operation| operation.ty)
}

/// The operation `operation_name` picks in `document`, by the same rule.
pub(crate) fn operation<'a>(
    document: &'a ExecutableDocument,
    operation_name: Option<&str>,
) -> Option<&'a OperationDefinition> {
    let operation = match (&document.operations, operation_name) {
        (DocumentOperations::Single(operation), _) => Some(operation),
        (DocumentOperations::Multiple(operations), Some(name)) => operations.get(name),
        (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => {
            operations.values().next()
        }
        (DocumentOperations::Multiple(_), None) => None,
    };
    operation.map(|operation| &operation.node)
}
