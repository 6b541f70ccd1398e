//! The whole deployment, wired as AWS wires it: [`Rehearsal::start`] creates the template's
//! resources on the emulator, runs every function of the template under the Runtime API, and
//! puts the emulations between them — the stream mapping in front of the processor, an
//! asynchronous invoker for each rule target, the HTTP API in front of the api, the WebSocket
//! API in front of the subscriptions function — plus the Lambda Invoke API that `aws lambda
//! invoke` (the README's redrive) calls.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::net::TcpListener;
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use crate::async_invoke::{self, AsyncInvoker, AsyncSettings, AsyncTarget};
use crate::faults::{self, Faults, Injected};
use crate::http_api::{self, HttpApiSettings};
use crate::lambda::{Function, FunctionSpec, Invoke};
use crate::resources::{self, Created};
use crate::sqs_mapping::{self, SqsMapping, SqsMappingSettings};
use crate::stream_mapping::{self, StreamMapping, StreamMappingSettings};
use crate::template::{self, Template};
use crate::websocket_api::{self, WebSocketApi, WebSocketSettings};
use crate::{authorizers, invoke_api, status};

/// How to run the rehearsal.
#[derive(Debug, Clone)]
pub struct Options {
    /// `template.yaml`.
    pub template: PathBuf,
    /// The directory holding the seven bootstraps (`api`, `processor`, …; the `[[bin]]` names).
    pub bootstraps: PathBuf,
    /// An emulator already running; when `None`, moto server is started (`moto_server`).
    pub emulator: Option<String>,
    /// The `moto_server` executable to start.
    pub moto_server: PathBuf,
    /// The HTTP API's port (0: any free port).
    pub http_port: u16,
    /// The WebSocket API's port.
    pub websocket_port: u16,
    /// The Management API's port.
    pub management_port: u16,
    /// The Lambda Invoke API's port.
    pub lambda_port: u16,
    /// The emulator's port, when it is started here.
    pub emulator_port: u16,
    /// The stack name (functions are `<stack>-api` and so on).
    pub stack: String,
    /// Where each function's log lines go, one file per function.
    pub log_dir: PathBuf,
    /// How many environments a function without reserved concurrency may run at once (its
    /// share of the account's unreserved concurrency).
    pub unreserved_concurrency: usize,
    /// The asynchronous invocations' timing (AWS's by default; tests shrink it).
    pub async_settings: AsyncSettings,
    /// Faults to inject between the functions and the emulator.
    pub faults: Faults,
    /// The template's parameters that differ from their defaults (`sam deploy
    /// --parameter-overrides`), e.g. `PublicAccess`.
    pub parameters: HashMap<String, String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            template: PathBuf::from("template.yaml"),
            bootstraps: PathBuf::from("target/debug"),
            emulator: None,
            moto_server: PathBuf::from("moto_server"),
            http_port: 9000,
            websocket_port: 9001,
            management_port: 9002,
            lambda_port: 9003,
            emulator_port: 9004,
            stack: "outboxdemo".to_owned(),
            log_dir: PathBuf::from("target/rehearsal"),
            unreserved_concurrency: 4,
            async_settings: AsyncSettings::default(),
            faults: Faults::default(),
            parameters: HashMap::new(),
        }
    }
}

/// The running rehearsal.
#[derive(Debug)]
pub struct Rehearsal {
    /// The HTTP API (GraphiQL at `/`, GraphQL at `/graphql`).
    pub http_url: String,
    /// The WebSocket API (`graphql-transport-ws`).
    pub websocket_url: String,
    /// The WebSocket API's Management API (`@connections`).
    pub management_endpoint: String,
    /// The Lambda Invoke API (`AWS_ENDPOINT_URL_LAMBDA` for the AWS CLI and SDKs), and the
    /// rehearsal's status at `/rehearsal/status`.
    pub lambda_endpoint: String,
    /// The emulator (moto server): DynamoDB, Streams, EventBridge, SQS.
    pub emulator: String,
    /// What was created, by logical id.
    pub created: Created,
    /// The functions, by logical id.
    pub functions: BTreeMap<String, Function>,
    /// The processor's stream mapping.
    pub stream_mapping: StreamMapping,
    /// One asynchronous invoker per rule target, with the rule's logical id.
    pub invokers: Vec<(String, AsyncInvoker)>,
    /// One mapping per `Type: SQS` event of a function (the notifier's fan-out queue).
    pub sqs_mappings: Vec<SqsMapping>,
    /// The WebSocket API.
    pub websocket: WebSocketApi,
    /// What the fault proxy injected, when faults are on.
    pub injected: Option<Arc<Injected>>,
    moto: Option<Child>,
    shutdown: CancellationToken,
}

async fn listen(port: u16) -> anyhow::Result<TcpListener> {
    TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))
}

impl Rehearsal {
    /// Starts everything; fails if any part does not come up.
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let template = Template::load(&options.template)?;
        let shutdown = CancellationToken::new();
        std::fs::create_dir_all(&options.log_dir)
            .with_context(|| format!("cannot create {}", options.log_dir.display()))?;

        let (emulator, moto) = match &options.emulator {
            Some(url) => (url.clone(), None),
            None => {
                let (url, child) = start_moto(&options).await?;
                (url, Some(child))
            }
        };
        let sdk = sdk_config(&emulator).await;

        let mut created =
            resources::create_with_parameters(&template, &sdk, &options.stack, &options.parameters)
                .await?;

        // The API Gateway APIs are emulated here, not created on the emulator: their ids are
        // fixed, for the intrinsics that name them.
        let http_listener = listen(options.http_port).await?;
        let ws_listener = listen(options.websocket_port).await?;
        let management_listener = listen(options.management_port).await?;
        let lambda_listener = listen(options.lambda_port).await?;
        let http_url = format!("http://{}", http_listener.local_addr()?);
        let mut websocket_settings = WebSocketSettings::from_template(&template)?;
        let mut http_settings = HttpApiSettings::from_template(&template)?;
        {
            let names = created.names_mut();
            names
                .refs
                .insert("HttpApi".into(), http_settings.api_id.clone());
            names
                .refs
                .insert("WebSocketApi".into(), websocket_settings.api_id.clone());
        }
        // An authorizer's id is what its !Ref gives; here, its logical id.
        for id in template.resources_of_type("AWS::ApiGatewayV2::Authorizer") {
            created.names_mut().refs.insert(id.clone(), id);
        }
        http_settings.account_id = resources::ACCOUNT.to_owned();
        websocket_settings.account_id = resources::ACCOUNT.to_owned();

        let (function_endpoint, injected) = if options.faults.any() {
            let listener = listen(0).await?;
            let endpoint = format!("http://{}", listener.local_addr()?);
            let mut faults = options.faults.clone();
            if faults.failing_table.is_none() && faults.write_failure_rate > 0.0 {
                faults.failing_table = created.tables.get("ActivityTable").map(|t| t.name.clone());
            }
            let injected = faults::serve(listener, emulator.clone(), faults, shutdown.clone());
            (endpoint, Some(injected))
        } else {
            (emulator.clone(), None)
        };

        // The WebSocket API needs the subscriptions function, whose environment needs the
        // Management API's address: both are known once the listeners are bound.
        let management_endpoint = format!(
            "http://{}/{}",
            management_listener.local_addr()?,
            websocket_settings.stage
        );
        let websocket_url = format!(
            "ws://{}/{}",
            ws_listener.local_addr()?,
            websocket_settings.stage
        );
        let overrides = HashMap::from([
            ("WEBSOCKET_ENDPOINT", management_endpoint.clone()),
            ("WEBSOCKET_URL", websocket_url.clone()),
        ]);
        let mut functions = BTreeMap::new();
        for id in template.resources_of_type("AWS::Serverless::Function") {
            let spec = function_spec(
                &template,
                &created,
                &id,
                &options,
                &function_endpoint,
                &overrides,
            )?;
            functions.insert(id, Function::new(spec));
        }
        let function = |id: &str| -> anyhow::Result<Function> {
            functions
                .get(id)
                .cloned()
                .with_context(|| format!("template.yaml has no function {id}"))
        };

        let targets: HashMap<String, Arc<dyn Invoke>> = functions
            .iter()
            .map(|(id, f)| (id.clone(), Arc::new(f.clone()) as Arc<dyn Invoke>))
            .collect();
        http_settings.authorizer = authorizers::http_authorizer(&template, &created, &targets)?;
        http_settings.cors = authorizers::http_cors(&template, created.names())?;
        websocket_settings.connect_authorizer =
            authorizers::connect_authorizer(&template, &created, &targets)?;
        let websocket = websocket_api::start(
            ws_listener,
            management_listener,
            Arc::new(function(&websocket_target(&template)?)?),
            websocket_settings,
            shutdown.clone(),
        )
        .await?;
        let api = function(&http_target(&template)?)?;
        tokio::spawn(http_api::serve(
            http_listener,
            Arc::new(api),
            http_settings,
            shutdown.clone(),
        ));

        let streams = aws_sdk_dynamodbstreams::Client::new(&sdk);
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let stream_function = stream_target(&template)?;
        let mapping_settings =
            StreamMappingSettings::from_template(&template, &stream_function, &created)?;
        let stream_mapping = stream_mapping::start(
            mapping_settings,
            streams,
            sqs.clone(),
            Arc::new(function(&stream_function)?),
            shutdown.clone(),
        );

        let mut invokers = Vec::new();
        for target in &created.rule_targets {
            let queue_url_of = |arn: &str| created.queue_by_arn(arn).map(|q| q.url.clone());
            let settings = AsyncTarget::from_template(
                &template,
                &target.rule_logical_id,
                &target.target_id,
                &target.async_queue.url,
                created.names(),
                queue_url_of,
            )?;
            let invoker = async_invoke::start(
                settings,
                sqs.clone(),
                Arc::new(function(&target.function_logical_id)?),
                options.async_settings.clone(),
                shutdown.clone(),
            );
            invokers.push((target.rule_logical_id.clone(), invoker));
        }

        let mut sqs_mappings = Vec::new();
        for settings in SqsMappingSettings::all_from_template(&template, &created)? {
            let target = Arc::new(function(&settings.function)?);
            sqs_mappings.push(sqs_mapping::start(
                settings,
                sqs.clone(),
                target,
                shutdown.clone(),
            ));
        }

        let lambda_endpoint = format!("http://{}", lambda_listener.local_addr()?);
        let by_name: HashMap<String, Function> = functions
            .values()
            .map(|f| (f.name().to_owned(), f.clone()))
            .collect();
        let connections_table = created
            .tables
            .get("ConnectionsTable")
            .map(|t| t.name.clone())
            .context("template.yaml has no ConnectionsTable")?;
        let app = invoke_api::router(by_name).merge(status::router(
            aws_sdk_dynamodb::Client::new(&sdk),
            connections_table,
        ));
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(lambda_listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });

        Ok(Self {
            http_url,
            websocket_url,
            management_endpoint,
            lambda_endpoint,
            emulator,
            created,
            functions,
            stream_mapping,
            invokers,
            sqs_mappings,
            websocket,
            injected,
            moto,
            shutdown,
        })
    }

    /// The shared secret clients present (`Authorization: Bearer <secret>`), when the
    /// template generated one (no `JwtIssuer`).
    pub fn credential(&self) -> Option<&str> {
        self.created
            .secrets
            .get("AccessSecret")
            .map(|secret| secret.value.as_str())
    }

    /// The function of this logical id.
    pub fn function(&self, logical_id: &str) -> Option<&Function> {
        self.functions.get(logical_id)
    }

    /// Waits until the stream mapping has handed over everything written so far and no
    /// asynchronous invocation is in flight. Fails after `timeout`, saying what each part
    /// still had in hand: the stream mapping's shards, each rule's invoker, and the
    /// invocations each function is running.
    pub async fn settle(&self, timeout: Duration) -> anyhow::Result<()> {
        let settled = tokio::time::timeout(timeout, async {
            self.stream_mapping.wait_until_idle(timeout).await?;
            for (_, invoker) in &self.invokers {
                invoker.wait_idle().await;
            }
            anyhow::Ok(())
        })
        .await;
        match settled {
            Ok(result) => result.context("the rehearsal did not settle"),
            Err(_) => bail!(
                "the rehearsal did not settle in {timeout:?}:\n{}",
                self.in_hand()
            ),
        }
    }

    /// What each part of the rehearsal has in hand now, one part a line.
    pub fn in_hand(&self) -> String {
        let mut lines = vec![format!(
            "stream mapping: {:?}",
            self.stream_mapping.progress()
        )];
        for (rule, invoker) in &self.invokers {
            lines.push(format!("invoker {rule}: {}", invoker.describe()));
        }
        let mut functions: Vec<_> = self.functions.iter().collect();
        functions.sort_by_key(|(id, _)| id.as_str());
        for (id, function) in functions {
            lines.push(format!("function {id}: {}", function.describe()));
        }
        lines.join("\n")
    }

    /// Stops every emulation, every function and the emulator it started.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for function in self.functions.values() {
            function.shutdown();
        }
        for (_, invoker) in self.invokers.drain(..) {
            invoker.join().await;
        }
        for mapping in self.sqs_mappings.drain(..) {
            mapping.join().await;
        }
        if let Some(mut moto) = self.moto.take() {
            let _ = moto.kill().await;
        }
    }
}

/// The function a template resource's `Events` names with `Type: DynamoDB`.
fn stream_target(template: &Template) -> anyhow::Result<String> {
    function_with_event(template, "DynamoDB")
}

/// The function behind the HTTP API: the one with `Type: HttpApi` events.
fn http_target(template: &Template) -> anyhow::Result<String> {
    function_with_event(template, "HttpApi")
}

fn function_with_event(template: &Template, event_type: &str) -> anyhow::Result<String> {
    let found: Vec<String> = template
        .resources_of_type("AWS::Serverless::Function")
        .into_iter()
        .filter(|id| {
            template.properties(id)["Events"]
                .as_mapping()
                .is_some_and(|events| {
                    events
                        .values()
                        .any(|e| e["Type"].as_str() == Some(event_type))
                })
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("expected one function with a {event_type} event, found {found:?}"),
    }
}

/// The function the WebSocket API's integration invokes (its `IntegrationUri` names it).
fn websocket_target(template: &Template) -> anyhow::Result<String> {
    for id in template.resources_of_type("AWS::ApiGatewayV2::Integration") {
        let uri = serde_yaml::to_string(&template.properties(&id)["IntegrationUri"])?;
        for function in template.resources_of_type("AWS::Serverless::Function") {
            if uri.contains(&format!("${{{function}.Arn}}")) {
                return Ok(function);
            }
        }
    }
    bail!("no AWS::ApiGatewayV2::Integration names a function of the template")
}

/// A function as the template declares it, running `<bootstraps>/<Binary>`, its environment
/// resolved and pointed at the emulator (`AWS_ENDPOINT_URL`), with the API Gateway endpoints,
/// which are on 127.0.0.1 here, given in `overrides`.
fn function_spec(
    template: &Template,
    created: &Created,
    id: &str,
    options: &Options,
    endpoint: &str,
    overrides: &HashMap<&str, String>,
) -> anyhow::Result<FunctionSpec> {
    let names = created.names();
    let property = |key: &str| template.resolve(template.function_property(id, key), names);
    let binary = template.metadata(id)["BuildProperties"]["Binary"]
        .as_str()
        .with_context(|| format!("{id} has no Metadata.BuildProperties.Binary"))?
        .to_owned();
    let name = created
        .functions
        .get(id)
        .map(|f| f.name.clone())
        .with_context(|| format!("{id} was not named"))?;
    let timeout = template::seconds(&property("Timeout")?).unwrap_or(Duration::from_secs(3));
    let memory_mb = template::integer(&property("MemorySize")?)
        .and_then(|m| u32::try_from(m).ok())
        .unwrap_or(128);
    let concurrency = template::integer(&property("ReservedConcurrentExecutions")?)
        .and_then(|c| usize::try_from(c).ok())
        .unwrap_or(options.unreserved_concurrency);
    let mut env: Vec<(String, String)> = Vec::new();
    if let Some(variables) = property("Environment")?["Variables"].as_object() {
        for (key, value) in variables {
            let value = match overrides.get(key.as_str()) {
                Some(value) => value.clone(),
                None => value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned),
            };
            env.push((key.clone(), value));
        }
    }
    // The subscriptions function answers through the Management API of the request's own
    // domain by default (`https://<domainName>/<stage>`); here that API is plain HTTP on
    // another port, so it is told where.
    if !env.iter().any(|(k, _)| k == "WEBSOCKET_ENDPOINT")
        && binary == "subscriptions"
        && let Some(endpoint) = overrides.get("WEBSOCKET_ENDPOINT")
    {
        env.push(("WEBSOCKET_ENDPOINT".into(), endpoint.clone()));
    }
    for (key, value) in [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_REGION", resources::REGION),
        ("AWS_DEFAULT_REGION", resources::REGION),
        ("AWS_ACCESS_KEY_ID", "rehearsal"),
        ("AWS_SECRET_ACCESS_KEY", "rehearsal"),
        ("AWS_SESSION_TOKEN", "rehearsal"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        env.push((key.to_owned(), value.to_owned()));
    }
    Ok(FunctionSpec {
        log_file: options.log_dir.join(format!("{name}.log")),
        binary: options.bootstraps.join(&binary),
        name,
        env,
        timeout,
        memory_mb,
        concurrency,
    })
}

async fn start_moto(options: &Options) -> anyhow::Result<(String, Child)> {
    let port = if options.emulator_port == 0 {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        options.emulator_port
    };
    let log = std::fs::File::create(options.log_dir.join("moto.log"))?;
    let child = tokio::process::Command::new(&options.moto_server)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (./scripts/python-tools installs it in .venv)",
                options.moto_server.display()
            )
        })?;
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client
            .get(format!("{url}/moto-api/"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok((url, child));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("moto server did not start on {url}")
}

/// SDK configuration for the emulator.
pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new(resources::REGION))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "rehearsal",
            "rehearsal",
            None,
            None,
            "rehearsal",
        ))
        .load()
        .await
}
