//! The `authorizer` Lambda: the credential check in front of the HTTP API's routes and the
//! WebSocket API's `$connect` (see `api::authorizer`).

use api::authorizer::{Authorizer, JwtVerifier, PublicAccess, Verifier};
use clap::Parser;
use lambda_runtime::{LambdaEvent, service_fn};
use secrecy::SecretString;
use serde_json::Value;

/// Configuration, from the environment.
#[derive(Debug, Parser)]
struct Config {
    /// What a request without a credential may do.
    #[arg(long, env = "PUBLIC_ACCESS", value_enum, default_value = "none")]
    public_access: PublicAccess,
    /// The issuer of the JWTs accepted; without it, the shared secret is the credential.
    #[arg(long, env = "JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// The audience (`aud`, or `client_id`) the JWTs must carry.
    #[arg(long, env = "JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// The scope that lets a JWT write.
    #[arg(long, env = "JWT_WRITE_SCOPE", default_value = "outboxdemo/write")]
    jwt_write_scope: String,
    /// The Secrets Manager secret holding the shared secret (without a JWT issuer).
    #[arg(long, env = "SECRET_ARN")]
    secret_arn: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    let telemetry = &telemetry::Telemetry::lambda("authorizer")?;
    let config = Config::try_parse()?;
    let verifier = match (
        config.jwt_issuer.filter(|i| !i.is_empty()),
        config.secret_arn,
    ) {
        (Some(issuer), _) => {
            let audience = config
                .jwt_audience
                .filter(|a| !a.is_empty())
                .ok_or("JWT_AUDIENCE is required with JWT_ISSUER")?;
            Verifier::Jwt(JwtVerifier::new(issuer, audience, config.jwt_write_scope))
        }
        (None, Some(arn)) => {
            let aws = aws_config::load_from_env().await;
            let secret = aws_sdk_secretsmanager::Client::new(&aws)
                .get_secret_value()
                .secret_id(arn)
                .send()
                .await?
                .secret_string
                .ok_or("the secret has no string value")?;
            Verifier::Secret(SecretString::from(secret))
        }
        (None, None) => return Err("set JWT_ISSUER or SECRET_ARN".into()),
    };
    let authorizer = &Authorizer::new(verifier, config.public_access);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let answer = authorizer.handle(event.payload).await;
        telemetry.flush().await;
        Ok::<_, lambda_runtime::Error>(answer?)
    }))
    .await
}
