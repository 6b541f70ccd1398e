//! The AWS API emulator (moto server) that `scripts/test` starts on 127.0.0.1.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;

/// The emulator's endpoint, from `AWS_ENDPOINT_URL`.
///
/// When it is not set, a test cannot reach the emulator: under CI (`CI=true`) that fails the
/// test; elsewhere the test is skipped with a message saying how to run it (`./scripts/test`).
pub fn endpoint() -> Option<String> {
    match std::env::var("AWS_ENDPOINT_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
            panic!(
                "AWS_ENDPOINT_URL is not set: the AWS tests need moto server (run ./scripts/test)"
            )
        }
        _ => {
            eprintln!(
                "SKIPPED: AWS_ENDPOINT_URL is not set; run ./scripts/test to start moto server"
            );
            None
        }
    }
}

/// SDK configuration for the emulator at `endpoint`.
pub async fn sdk_config(endpoint: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
        .load()
        .await
}

/// A name no other test uses: `prefix-<random>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The emulator's endpoint, or a return from the calling test when there is none (skipped
/// with a message, or failed under CI: see [`endpoint`]). The one guard every AWS test opens
/// with: `let endpoint = testing::emulator!();`.
#[macro_export]
macro_rules! emulator {
    () => {
        match $crate::moto::endpoint() {
            Some(endpoint) => endpoint,
            None => return,
        }
    };
}
