//! The `book-removed` Lambda.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    consumers::lambda::run(consumers::book_removed::CONSUMER).await
}
