//! A storage failure reaches the client as `INTERNAL` only; its cause stays in the log.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::sync::Arc;

use api::{ActivityFeed, ActivityItem, BookStore, Page, StoreError};
use async_trait::async_trait;
use domain::{Book, BookName};

/// A store whose every call fails the way a broken disk or network would.
struct BrokenStore;

fn broken() -> StoreError {
    StoreError::unavailable("secret connection string in the cause")
}

#[async_trait]
impl BookStore for BrokenStore {
    async fn add(&self, _: &Book) -> Result<(), StoreError> {
        Err(broken())
    }
    async fn remove(&self, _: &BookName) -> Result<Book, StoreError> {
        Err(broken())
    }
    async fn get(&self, _: &BookName) -> Result<Option<Book>, StoreError> {
        Err(broken())
    }
    async fn list(&self, _: usize, _: Option<&BookName>) -> Result<Page<Book>, StoreError> {
        Err(broken())
    }
}

#[async_trait]
impl ActivityFeed for BrokenStore {
    async fn list(&self, _: usize, _: Option<&str>) -> Result<Page<ActivityItem>, StoreError> {
        Err(broken())
    }
}

#[tokio::test]
async fn storage_failures_are_internal_and_say_nothing_of_their_cause() {
    let schema = api::build_schema(
        Arc::new(BrokenStore),
        Arc::new(BrokenStore),
        api::EventHub::default(),
    );
    for query in [
        r#"mutation { addBook(input: {name: "Dune", authors: ["Frank Herbert"], publishedYear: 1965}) { name } }"#,
        r#"mutation { removeBook(name: "Dune") { name } }"#,
        r#"{ book(name: "Dune") { name } }"#,
        "{ books { edges { cursor } } }",
        "{ activity { edges { cursor } } }",
    ] {
        let response = serde_json::to_value(schema.execute(query).await).unwrap();
        let error = &response["errors"][0];
        assert_eq!(
            error["extensions"]["code"], "INTERNAL",
            "{query}: {response}"
        );
        assert_eq!(error["message"], "internal error", "{query}: {response}");
        assert!(!response.to_string().contains("secret"), "{response}");
    }
}
