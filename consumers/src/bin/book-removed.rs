//! The `book-removed` Lambda.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    consumers::run(consumers::book_removed::CONSUMER).await
}
