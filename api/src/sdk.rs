//! What the AWS adapters share.

/// An SDK error as text, with its causes: `Display` of an SDK error alone says only "service
/// error", leaving out what the service said.
pub(crate) fn error_text(error: impl std::error::Error) -> String {
    aws_sdk_dynamodb::error::DisplayErrorContext(error).to_string()
}
