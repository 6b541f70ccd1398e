//! Introspection answered for this schema.
//!
//! async-graphql answers `__schema { description }` with the text that documents graphql's own
//! `__Schema` type; a client (GraphiQL with `schemaDescription`, graphql-js's
//! `buildClientSchema`) would show it as this schema's description. This schema has none, so
//! the field answers null, as the spec has it for a schema without a description.

use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextResolve, ResolveInfo,
};
use async_graphql::{ServerResult, Value};

/// The schema extension that answers `__Schema.description` with null.
#[derive(Debug, Clone, Copy, Default)]
pub struct SchemaDescription;

impl ExtensionFactory for SchemaDescription {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(SchemaDescription)
    }
}

#[async_trait::async_trait]
impl Extension for SchemaDescription {
    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        if info.is_for_introspection && info.parent_type == "__Schema" && info.name == "description"
        {
            return Ok(None);
        }
        next.run(ctx, info).await
    }
}
