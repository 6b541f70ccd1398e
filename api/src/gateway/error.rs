//! [`GatewayError`]: why serving a subscription on AWS failed.

/// Why a connections-table or Management-API call failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// DynamoDB failed.
    #[error("connections table: {0}")]
    Table(String),
    /// The connection is gone (API Gateway answered 410).
    #[error("the connection is gone")]
    Gone,
    /// The Management API failed otherwise.
    #[error("management API: {0}")]
    Management(String),
    /// The fan-out queue failed.
    #[error("fan-out queue: {0}")]
    Queue(String),
    /// The event is not one the notifier understands.
    #[error("malformed event: {0}")]
    MalformedEvent(String),
    /// The journal could not be read.
    #[error("journal: {0}")]
    Journal(String),
}
