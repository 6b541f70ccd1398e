//! The `book-added` Lambda.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    consumers::lambda::run(consumers::book_added::CONSUMER).await
}
