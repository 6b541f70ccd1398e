//! What `template.yaml` declares, created on the emulator (moto): every DynamoDB table, SQS
//! queue, EventBridge bus and rule, read generically from the resources' `Properties`, and the
//! [`Names`] that `!Ref` and `!GetAtt` stand for once they exist.
//!
//! Functions are not created in moto (they run as processes, see [`crate::lambda`]), but their
//! names and ARNs are known here, so rules and event source mappings can point at them. A rule
//! target that is a function gets a stand-in SQS queue (`<stack>-<Function>-async`) standing for
//! Lambda's internal queue of asynchronous invocations: EventBridge delivers to it in moto, and
//! the asynchronous-invocation emulation polls it ([`RuleTarget`]).
//!
//! Roles, permissions, log groups, queue policies and the API Gateway resources are not
//! created; whoever emulates API Gateway adds its names through [`Created::names_mut`].

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context as _, bail};
use aws_config::SdkConfig;
use serde::Deserialize;
use serde_json::Value;

use crate::template::{Names, Template, integer, seconds};

/// The region every resource of the rehearsal lives in (`AWS::Region`).
pub const REGION: &str = "us-east-1";
/// The account moto answers for (`AWS::AccountId`).
pub const ACCOUNT: &str = "123456789012";

/// What [`create`] made, and the names the template's intrinsics resolve to.
#[derive(Debug, Clone, Default)]
pub struct Created {
    names: Names,
    /// `AWS::DynamoDB::Table`s, by logical id.
    pub tables: BTreeMap<String, Table>,
    /// `AWS::SQS::Queue`s, by logical id.
    pub queues: BTreeMap<String, Queue>,
    /// `AWS::Events::EventBus`es, by logical id.
    pub buses: BTreeMap<String, Bus>,
    /// `AWS::Serverless::Function`s (named, not created), by logical id.
    pub functions: BTreeMap<String, FunctionName>,
    /// Every target of every `AWS::Events::Rule` that is a function, in template order.
    pub rule_targets: Vec<RuleTarget>,
    /// `AWS::SecretsManager::Secret`s whose condition holds, by logical id.
    pub secrets: BTreeMap<String, Secret>,
}

/// A secret as created, with the value generated for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    /// The secret's ARN (`!Ref`).
    pub arn: String,
    /// The value (its `GenerateSecretString`'s, or `SecretString`).
    pub value: String,
}

/// A table as created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The table name (`!Ref`).
    pub name: String,
    /// `!GetAtt Table.Arn`.
    pub arn: String,
    /// `!GetAtt Table.StreamArn`, when the table has a stream.
    pub stream_arn: Option<String>,
}

/// A queue as created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    /// The queue name.
    pub name: String,
    /// The queue URL (`!Ref`).
    pub url: String,
    /// `!GetAtt Queue.Arn`.
    pub arn: String,
}

/// An event bus as created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bus {
    /// The bus name (`!Ref`).
    pub name: String,
    /// `!GetAtt Bus.Arn`.
    pub arn: String,
}

/// A function's resolved name and ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionName {
    /// `FunctionName` (`!Ref`).
    pub name: String,
    /// `!GetAtt Function.Arn`.
    pub arn: String,
}

/// One target of a rule that is a function: what EventBridge delivers to, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleTarget {
    /// The rule's logical id.
    pub rule_logical_id: String,
    /// The rule's name.
    pub rule_name: String,
    /// The rule's ARN.
    pub rule_arn: String,
    /// The bus the rule is on.
    pub bus_name: String,
    /// The target's `Id`.
    pub target_id: String,
    /// The logical id of the function the target invokes.
    pub function_logical_id: String,
    /// The function's name and ARN (the target's `Arn` in the template).
    pub function: FunctionName,
    /// The stand-in for Lambda's asynchronous-invocation queue of the function: the rule's
    /// target in moto, polled by the asynchronous-invocation emulation.
    pub async_queue: Queue,
    /// The target's `RetryPolicy`.
    pub retry_policy: RetryPolicy,
    /// The target's `DeadLetterConfig` queue, when it has one.
    pub dead_letter: Option<Queue>,
}

/// A target's `RetryPolicy` as the template gives it; `None` where it is not set (EventBridge's
/// defaults then apply: 185 attempts, 24 hours,
/// <https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-rule-retry-policy.html>).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryPolicy {
    /// `MaximumRetryAttempts`.
    pub maximum_retry_attempts: Option<u32>,
    /// `MaximumEventAgeInSeconds`.
    pub maximum_event_age: Option<std::time::Duration>,
}

impl Created {
    /// The names `!Ref`/`!GetAtt`/`!Sub` resolve to.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The names, for an emulation that creates resources of its own (the API Gateway APIs:
    /// insert `refs["WebSocketApi"]` and the like before resolving what refers to them).
    pub fn names_mut(&mut self) -> &mut Names {
        &mut self.names
    }

    /// The template's queue with this ARN.
    pub fn queue_by_arn(&self, arn: &str) -> Option<&Queue> {
        self.queues.values().find(|q| q.arn == arn)
    }
}

/// Creates on the emulator what `template` declares, for the stack `stack`, with every
/// parameter at its default. See [`create_with_parameters`].
pub async fn create(template: &Template, sdk: &SdkConfig, stack: &str) -> anyhow::Result<Created> {
    create_with_parameters(template, sdk, stack, &HashMap::new()).await
}

/// Creates on the emulator what `template` declares, with `parameters` overriding the
/// parameters' defaults (tests sharing one emulator give each its own `EventBusName`).
///
/// Tables and queues are named `<stack>-<LogicalId>` (where the template sets no name), as
/// CloudFormation names them less its random suffix.
pub async fn create_with_parameters(
    template: &Template,
    sdk: &SdkConfig,
    stack: &str,
    parameters: &HashMap<String, String>,
) -> anyhow::Result<Created> {
    let mut created = Created {
        names: Names {
            stack: stack.to_owned(),
            region: REGION.to_owned(),
            account: ACCOUNT.to_owned(),
            ..Names::default()
        },
        ..Created::default()
    };
    for parameter in template.parameters() {
        let value = parameters
            .get(&parameter)
            .cloned()
            .or_else(|| template.parameter_default(&parameter))
            .with_context(|| format!("parameter {parameter} has no default and no value"))?;
        created.names.refs.insert(parameter, value);
    }
    created.names.conditions =
        evaluate_conditions(template, template.section("Conditions"), &created.names)?;

    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    for id in template.resources_of_type("AWS::DynamoDB::Table") {
        let table = create_table(template, &created, &dynamodb, &id).await?;
        created.names.refs.insert(id.clone(), table.name.clone());
        created
            .names
            .attributes
            .insert(format!("{id}.Arn"), table.arn.clone());
        if let Some(stream) = &table.stream_arn {
            created
                .names
                .attributes
                .insert(format!("{id}.StreamArn"), stream.clone());
        }
        created.tables.insert(id, table);
    }

    let sqs = aws_sdk_sqs::Client::new(sdk);
    for id in template.resources_of_type("AWS::SQS::Queue") {
        let properties = template.resolve(template.properties(&id), &created.names)?;
        let name = properties["QueueName"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| queue_name(stack, &id, &properties));
        let queue = create_queue(&sqs, &name, &queue_attributes(&properties)?).await?;
        created.names.refs.insert(id.clone(), queue.url.clone());
        created
            .names
            .attributes
            .insert(format!("{id}.Arn"), queue.arn.clone());
        created
            .names
            .attributes
            .insert(format!("{id}.QueueName"), queue.name.clone());
        created
            .names
            .attributes
            .insert(format!("{id}.QueueUrl"), queue.url.clone());
        created.queues.insert(id, queue);
    }

    let events = aws_sdk_eventbridge::Client::new(sdk);
    for id in template.resources_of_type("AWS::Events::EventBus") {
        let properties = template.resolve(template.properties(&id), &created.names)?;
        let name = properties["Name"]
            .as_str()
            .with_context(|| format!("{id}: an event bus needs a Name"))?;
        let output = events
            .create_event_bus()
            .name(name)
            .send()
            .await
            .with_context(|| format!("cannot create event bus {name}"))?;
        let bus = Bus {
            name: name.to_owned(),
            arn: output.event_bus_arn().unwrap_or_default().to_owned(),
        };
        created.names.refs.insert(id.clone(), bus.name.clone());
        created
            .names
            .attributes
            .insert(format!("{id}.Arn"), bus.arn.clone());
        created
            .names
            .attributes
            .insert(format!("{id}.Name"), bus.name.clone());
        created.buses.insert(id, bus);
    }

    let secrets = aws_sdk_secretsmanager::Client::new(sdk);
    for id in template.resources_of_type("AWS::SecretsManager::Secret") {
        if !holds(template, &created.names, &id) {
            continue;
        }
        let properties = template.resolve(template.properties(&id), &created.names)?;
        let value = match properties["SecretString"].as_str() {
            Some(value) => value.to_owned(),
            None => generated_secret(&properties["GenerateSecretString"]),
        };
        let output = secrets
            .create_secret()
            .name(format!("{stack}-{id}"))
            .secret_string(&value)
            .send()
            .await
            .with_context(|| format!("cannot create secret {id}"))?;
        let arn = output.arn().unwrap_or_default().to_owned();
        created.names.refs.insert(id.clone(), arn.clone());
        created.secrets.insert(id, Secret { arn, value });
    }

    for id in template.resources_of_type("AWS::Serverless::Function") {
        let name = match template.properties(&id)["FunctionName"] {
            serde_yaml::Value::Null => format!("{stack}-{id}"),
            ref declared => text(&template.resolve(declared, &created.names)?, &id)?,
        };
        let function = FunctionName {
            arn: format!("arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"),
            name,
        };
        created.names.refs.insert(id.clone(), function.name.clone());
        created
            .names
            .attributes
            .insert(format!("{id}.Arn"), function.arn.clone());
        created.functions.insert(id, function);
    }

    for id in template.resources_of_type("AWS::Events::Rule") {
        create_rule(template, &mut created, &events, &sqs, &id).await?;
    }
    Ok(created)
}

/// Whether a resource exists: it has no `Condition`, or its condition holds.
fn holds(template: &Template, names: &Names, id: &str) -> bool {
    match template.section("Resources")[id]["Condition"].as_str() {
        Some(condition) => names.conditions.get(condition).copied().unwrap_or(false),
        None => true,
    }
}

/// A value as `GenerateSecretString` makes one: `PasswordLength` characters (32 by default),
/// letters and digits, and punctuation unless `ExcludePunctuation`
/// (<https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-properties-secretsmanager-secret-generatesecretstring.html>).
fn generated_secret(settings: &Value) -> String {
    let length = settings["PasswordLength"]
        .as_u64()
        .or_else(|| settings["PasswordLength"].as_str()?.parse().ok())
        .unwrap_or(32);
    let mut alphabet: Vec<char> = ('a'..='z').chain('A'..='Z').chain('0'..='9').collect();
    if settings["ExcludePunctuation"] != Value::Bool(true) {
        alphabet.extend("!#$%&()*+,-./:;<=>?@[]^_{|}~".chars());
    }
    let mut rng = fastrand::Rng::new();
    (0..length)
        .filter_map(|_| alphabet.get(rng.usize(..alphabet.len())))
        .collect()
}

fn text(value: &Value, what: &str) -> anyhow::Result<String> {
    value
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("{what}: expected a string, got {value}"))
}

// ---------------------------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------------------------

/// The part of `AWS::DynamoDB::Table`'s properties the rehearsal creates
/// (<https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-resource-dynamodb-table.html>).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TableProperties {
    table_name: Option<String>,
    attribute_definitions: Vec<AttributeDefinition>,
    key_schema: Vec<KeyElement>,
    #[serde(default)]
    global_secondary_indexes: Vec<Index>,
    #[serde(default)]
    local_secondary_indexes: Vec<Index>,
    billing_mode: Option<String>,
    provisioned_throughput: Option<Throughput>,
    stream_specification: Option<StreamSpecification>,
    time_to_live_specification: Option<TimeToLive>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AttributeDefinition {
    attribute_name: String,
    attribute_type: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KeyElement {
    attribute_name: String,
    key_type: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Index {
    index_name: String,
    key_schema: Vec<KeyElement>,
    projection: Projection,
    provisioned_throughput: Option<Throughput>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Projection {
    projection_type: Option<String>,
    #[serde(default)]
    non_key_attributes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Throughput {
    read_capacity_units: Value,
    write_capacity_units: Value,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StreamSpecification {
    stream_view_type: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TimeToLive {
    attribute_name: String,
    enabled: bool,
}

mod ddb {
    pub use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
        LocalSecondaryIndex, Projection, ProjectionType, ProvisionedThroughput,
        ScalarAttributeType, StreamSpecification, StreamViewType, TimeToLiveSpecification,
    };
}

fn key_schema(elements: &[KeyElement]) -> anyhow::Result<Vec<ddb::KeySchemaElement>> {
    elements
        .iter()
        .map(|k| {
            Ok(ddb::KeySchemaElement::builder()
                .attribute_name(&k.attribute_name)
                .key_type(ddb::KeyType::from(k.key_type.as_str()))
                .build()?)
        })
        .collect()
}

fn projection(projection: &Projection) -> ddb::Projection {
    ddb::Projection::builder()
        .set_projection_type(
            projection
                .projection_type
                .as_deref()
                .map(ddb::ProjectionType::from),
        )
        .set_non_key_attributes(
            (!projection.non_key_attributes.is_empty())
                .then(|| projection.non_key_attributes.clone()),
        )
        .build()
}

fn throughput(throughput: &Throughput) -> anyhow::Result<ddb::ProvisionedThroughput> {
    let units = |v: &Value| integer(v).with_context(|| format!("capacity units: {v}"));
    Ok(ddb::ProvisionedThroughput::builder()
        .read_capacity_units(units(&throughput.read_capacity_units)?)
        .write_capacity_units(units(&throughput.write_capacity_units)?)
        .build()?)
}

async fn create_table(
    template: &Template,
    created: &Created,
    client: &aws_sdk_dynamodb::Client,
    id: &str,
) -> anyhow::Result<Table> {
    let resolved = template.resolve(template.properties(id), &created.names)?;
    let properties: TableProperties = serde_json::from_value(resolved)
        .with_context(|| format!("{id}: unexpected table properties"))?;
    let name = properties
        .table_name
        .clone()
        .unwrap_or_else(|| format!("{}-{id}", created.names.stack));
    let mut request = client
        .create_table()
        .table_name(&name)
        .set_key_schema(Some(key_schema(&properties.key_schema)?))
        .set_billing_mode(
            properties
                .billing_mode
                .as_deref()
                .map(ddb::BillingMode::from),
        );
    for attribute in &properties.attribute_definitions {
        request = request.attribute_definitions(
            ddb::AttributeDefinition::builder()
                .attribute_name(&attribute.attribute_name)
                .attribute_type(ddb::ScalarAttributeType::from(
                    attribute.attribute_type.as_str(),
                ))
                .build()?,
        );
    }
    if let Some(t) = &properties.provisioned_throughput {
        request = request.provisioned_throughput(throughput(t)?);
    }
    for index in &properties.global_secondary_indexes {
        request = request.global_secondary_indexes(
            ddb::GlobalSecondaryIndex::builder()
                .index_name(&index.index_name)
                .set_key_schema(Some(key_schema(&index.key_schema)?))
                .projection(projection(&index.projection))
                .set_provisioned_throughput(
                    index
                        .provisioned_throughput
                        .as_ref()
                        .map(throughput)
                        .transpose()?,
                )
                .build()?,
        );
    }
    for index in &properties.local_secondary_indexes {
        request = request.local_secondary_indexes(
            ddb::LocalSecondaryIndex::builder()
                .index_name(&index.index_name)
                .set_key_schema(Some(key_schema(&index.key_schema)?))
                .projection(projection(&index.projection))
                .build()?,
        );
    }
    if let Some(stream) = &properties.stream_specification {
        request = request.stream_specification(
            ddb::StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(ddb::StreamViewType::from(stream.stream_view_type.as_str()))
                .build()?,
        );
    }
    let output = request
        .send()
        .await
        .with_context(|| format!("cannot create table {name}"))?;
    if let Some(ttl) = &properties.time_to_live_specification {
        client
            .update_time_to_live()
            .table_name(&name)
            .time_to_live_specification(
                ddb::TimeToLiveSpecification::builder()
                    .attribute_name(&ttl.attribute_name)
                    .enabled(ttl.enabled)
                    .build()?,
            )
            .send()
            .await
            .with_context(|| format!("cannot set the time to live of {name}"))?;
    }
    let description = output
        .table_description()
        .with_context(|| format!("CreateTable {name} described no table"))?;
    Ok(Table {
        arn: description.table_arn().unwrap_or_default().to_owned(),
        stream_arn: description.latest_stream_arn().map(str::to_owned),
        name,
    })
}

// ---------------------------------------------------------------------------------------------
// Queues
// ---------------------------------------------------------------------------------------------

/// `AWS::SQS::Queue` properties that are queue attributes of the same name
/// (<https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-resource-sqs-queue.html>,
/// <https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_SetQueueAttributes.html>).
const QUEUE_ATTRIBUTES: &[&str] = &[
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "DelaySeconds",
    "FifoQueue",
    "FifoThroughputLimit",
    "KmsDataKeyReusePeriodSeconds",
    "KmsMasterKeyId",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "RedriveAllowPolicy",
    "RedrivePolicy",
    "SqsManagedSseEnabled",
    "VisibilityTimeout",
];

fn queue_name(stack: &str, id: &str, properties: &Value) -> String {
    // A FIFO queue's name must end in .fifo.
    if properties["FifoQueue"] == Value::Bool(true) || properties["FifoQueue"] == "true" {
        format!("{stack}-{id}.fifo")
    } else {
        format!("{stack}-{id}")
    }
}

/// The queue attributes a queue's resolved properties set: scalars as their text, the
/// policies (objects in a template) as JSON text.
fn queue_attributes(properties: &Value) -> anyhow::Result<Vec<(String, String)>> {
    let mut attributes = Vec::new();
    for key in QUEUE_ATTRIBUTES {
        let value = match &properties[*key] {
            Value::Null => continue,
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            object @ Value::Object(_) => serde_json::to_string(object)?,
            other => bail!("queue attribute {key}: unexpected {other}"),
        };
        attributes.push(((*key).to_owned(), value));
    }
    Ok(attributes)
}

async fn create_queue(
    client: &aws_sdk_sqs::Client,
    name: &str,
    attributes: &[(String, String)],
) -> anyhow::Result<Queue> {
    use aws_sdk_sqs::types::QueueAttributeName;
    let output = client
        .create_queue()
        .queue_name(name)
        .set_attributes(Some(
            attributes
                .iter()
                .map(|(k, v)| (QueueAttributeName::from(k.as_str()), v.clone()))
                .collect(),
        ))
        .send()
        .await
        .with_context(|| format!("cannot create queue {name}"))?;
    let url = output
        .queue_url()
        .with_context(|| format!("CreateQueue {name} gave no URL"))?
        .to_owned();
    let arn = client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .with_context(|| format!("cannot read the ARN of queue {name}"))?
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .with_context(|| format!("queue {name} has no ARN"))?;
    Ok(Queue {
        name: name.to_owned(),
        url,
        arn,
    })
}

// ---------------------------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------------------------

/// Creates the rule `id` on its bus, and for each target that is a function, the stand-in
/// queue the rule delivers to instead.
async fn create_rule(
    template: &Template,
    created: &mut Created,
    events: &aws_sdk_eventbridge::Client,
    sqs: &aws_sdk_sqs::Client,
    id: &str,
) -> anyhow::Result<()> {
    use aws_sdk_eventbridge::types::{
        DeadLetterConfig, RetryPolicy as SdkRetryPolicy, RuleState, Target,
    };
    let properties = template.resolve(template.properties(id), &created.names)?;
    let stack = created.names.stack.clone();
    let rule_name = properties["Name"]
        .as_str()
        .map_or_else(|| format!("{stack}-{id}"), str::to_owned);
    let bus_name = properties["EventBusName"]
        .as_str()
        .unwrap_or("default")
        .to_owned();
    let pattern = match &properties["EventPattern"] {
        Value::Null => None,
        pattern => Some(serde_json::to_string(pattern)?),
    };
    let rule_arn = events
        .put_rule()
        .name(&rule_name)
        .event_bus_name(&bus_name)
        .set_event_pattern(pattern)
        .set_schedule_expression(properties["ScheduleExpression"].as_str().map(str::to_owned))
        .set_description(properties["Description"].as_str().map(str::to_owned))
        .set_state(properties["State"].as_str().map(RuleState::from))
        .send()
        .await
        .with_context(|| format!("cannot create rule {rule_name}"))?
        .rule_arn()
        .unwrap_or_default()
        .to_owned();
    // Ref of a rule on a custom bus is `bus|rule`
    // (<https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-resource-events-rule.html>).
    let reference = if bus_name == "default" {
        rule_name.clone()
    } else {
        format!("{bus_name}|{rule_name}")
    };
    created.names.refs.insert(id.to_owned(), reference);
    created
        .names
        .attributes
        .insert(format!("{id}.Arn"), rule_arn.clone());

    let mut targets = Vec::new();
    for target in properties["Targets"].as_array().into_iter().flatten() {
        let target_id = text(&target["Id"], &format!("{id}: target Id"))?;
        let arn = text(&target["Arn"], &format!("{id}: target Arn"))?;
        let Some((function_id, function)) = created
            .functions
            .iter()
            .find(|(_, f)| f.arn == arn)
            .map(|(i, f)| (i.clone(), f.clone()))
        else {
            bail!("{id}: target {target_id} is not a function of the template ({arn})");
        };
        let retry = &target["RetryPolicy"];
        let retry_policy = RetryPolicy {
            maximum_retry_attempts: integer(&retry["MaximumRetryAttempts"])
                .and_then(|n| u32::try_from(n).ok()),
            maximum_event_age: seconds(&retry["MaximumEventAgeInSeconds"]),
        };
        let dead_letter = match target["DeadLetterConfig"]["Arn"].as_str() {
            None => None,
            Some(arn) => Some(
                created
                    .queue_by_arn(arn)
                    .with_context(|| {
                        format!("{id}: dead-letter queue {arn} is not in the template")
                    })?
                    .clone(),
            ),
        };
        let async_queue = create_queue(sqs, &format!("{stack}-{function_id}-async"), &[]).await?;
        let mut sdk_target = Target::builder().id(&target_id).arn(&async_queue.arn);
        if !retry.is_null() {
            sdk_target = sdk_target.retry_policy(
                SdkRetryPolicy::builder()
                    .set_maximum_retry_attempts(
                        integer(&retry["MaximumRetryAttempts"]).and_then(|n| i32::try_from(n).ok()),
                    )
                    .set_maximum_event_age_in_seconds(
                        integer(&retry["MaximumEventAgeInSeconds"])
                            .and_then(|n| i32::try_from(n).ok()),
                    )
                    .build(),
            );
        }
        if let Some(queue) = &dead_letter {
            sdk_target =
                sdk_target.dead_letter_config(DeadLetterConfig::builder().arn(&queue.arn).build());
        }
        targets.push(sdk_target.build()?);
        created.rule_targets.push(RuleTarget {
            rule_logical_id: id.to_owned(),
            rule_name: rule_name.clone(),
            rule_arn: rule_arn.clone(),
            bus_name: bus_name.clone(),
            target_id,
            function_logical_id: function_id,
            function,
            async_queue,
            retry_policy,
            dead_letter,
        });
    }
    if !targets.is_empty() {
        let output = events
            .put_targets()
            .rule(&rule_name)
            .event_bus_name(&bus_name)
            .set_targets(Some(targets))
            .send()
            .await
            .with_context(|| format!("cannot put the targets of rule {rule_name}"))?;
        if output.failed_entry_count() > 0 {
            bail!(
                "rule {rule_name}: {} targets refused: {:?}",
                output.failed_entry_count(),
                output.failed_entries()
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Conditions
// ---------------------------------------------------------------------------------------------

/// Evaluates every condition of a template's `Conditions` section, as CloudFormation does
/// (<https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/intrinsic-function-reference-conditions.html>):
/// `Fn::Equals`, `Fn::Not`, `Fn::And`, `Fn::Or` and `Condition` references, short or long
/// form, with operands resolved against `names` (parameters are `!Ref`s there).
pub fn evaluate_conditions(
    template: &Template,
    conditions: &serde_yaml::Value,
    names: &Names,
) -> anyhow::Result<HashMap<String, bool>> {
    let Some(section) = conditions.as_mapping() else {
        return Ok(HashMap::new());
    };
    let mut results = HashMap::new();
    for name in section.keys().filter_map(|k| k.as_str()) {
        let value = condition(template, section, name, names, 0)?;
        results.insert(name.to_owned(), value);
    }
    Ok(results)
}

fn condition(
    template: &Template,
    section: &serde_yaml::Mapping,
    name: &str,
    names: &Names,
    depth: usize,
) -> anyhow::Result<bool> {
    if depth > section.len() {
        bail!("condition {name} refers to itself");
    }
    let expression = section
        .get(name)
        .with_context(|| format!("no condition {name}"))?;
    boolean(template, section, expression, names, depth + 1)
        .with_context(|| format!("condition {name}"))
}

fn boolean(
    template: &Template,
    section: &serde_yaml::Mapping,
    expression: &serde_yaml::Value,
    names: &Names,
    depth: usize,
) -> anyhow::Result<bool> {
    use serde_yaml::Value as Y;
    let (function, operand) = match expression {
        Y::Bool(b) => return Ok(*b),
        Y::Tagged(tagged) => (
            tagged.tag.to_string().trim_start_matches('!').to_owned(),
            &tagged.value,
        ),
        Y::Mapping(m) if m.len() == 1 => match m.iter().next() {
            Some((Y::String(key), operand)) => (key.trim_start_matches("Fn::").to_owned(), operand),
            _ => bail!("not a condition function: {expression:?}"),
        },
        other => bail!("not a condition function: {other:?}"),
    };
    let operands = || -> anyhow::Result<&Vec<Y>> {
        operand
            .as_sequence()
            .with_context(|| format!("{function} takes a list"))
    };
    let each = |items: &Vec<Y>| -> anyhow::Result<Vec<bool>> {
        items
            .iter()
            .map(|item| boolean(template, section, item, names, depth))
            .collect()
    };
    Ok(match function.as_str() {
        "Condition" => {
            let name = operand.as_str().context("Condition takes a name")?;
            condition(template, section, name, names, depth)?
        }
        "Not" => match each(operands()?)?.as_slice() {
            [one] => !one,
            _ => bail!("Not takes one condition"),
        },
        "And" => each(operands()?)?.iter().all(|b| *b),
        "Or" => each(operands()?)?.iter().any(|b| *b),
        "Equals" => match operands()?.as_slice() {
            [a, b] => template.resolve(a, names)? == template.resolve(b, names)?,
            _ => bail!("Equals takes two values"),
        },
        other => bail!("{other} is not a condition function"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn template_path() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml")
    }

    fn names_with(refs: &[(&str, &str)]) -> Names {
        Names {
            refs: refs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Names::default()
        }
    }

    /// Every parameter at its default, but `overrides`.
    fn parameters(template: &Template, overrides: &[(&str, &str)]) -> Names {
        let mut names = names_with(overrides);
        for parameter in template.parameters() {
            if let Some(default) = template.parameter_default(&parameter) {
                names.refs.entry(parameter).or_insert(default);
            }
        }
        names
    }

    #[test]
    fn the_access_conditions_follow_their_parameters() -> anyhow::Result<()> {
        let template = Template::load(&template_path())?;
        let conditions = template.section("Conditions");
        let default = evaluate_conditions(&template, conditions, &parameters(&template, &[]))?;
        assert_eq!(default.get("HasSecret"), Some(&true));
        assert_eq!(default.get("Guarded"), Some(&true));
        assert_eq!(default.get("Private"), Some(&true));
        assert_eq!(default.get("HasCors"), Some(&false));
        let jwt = evaluate_conditions(
            &template,
            conditions,
            &parameters(
                &template,
                &[
                    ("JwtIssuer", "https://issuer.example"),
                    ("PublicAccess", "read"),
                    ("AllowedOrigins", "https://app.example"),
                ],
            ),
        )?;
        assert_eq!(jwt.get("HasSecret"), Some(&false));
        assert_eq!(jwt.get("Guarded"), Some(&true));
        assert_eq!(jwt.get("Private"), Some(&false));
        assert_eq!(jwt.get("HasCors"), Some(&true));
        let public = evaluate_conditions(
            &template,
            conditions,
            &parameters(&template, &[("PublicAccess", "all")]),
        )?;
        assert_eq!(public.get("Guarded"), Some(&false));
        Ok(())
    }

    #[test]
    fn and_or_and_condition_references_combine() -> anyhow::Result<()> {
        let template = Template::load(&template_path())?;
        let section: serde_yaml::Value = serde_yaml::from_str(
            "A: !Equals [!Ref P, x]\nB: !Not [!Condition A]\nC: !Or [!Condition A, !Condition B]\n\
             D: {\"Fn::And\": [!Condition A, !Condition B]}\nE: !Not [!Condition E]",
        )?;
        let names = names_with(&[("P", "x")]);
        assert!(
            evaluate_conditions(&template, &section, &names).is_err(),
            "E is circular"
        );
        let mut section = section;
        if let Some(m) = section.as_mapping_mut() {
            m.remove("E");
        }
        let results = evaluate_conditions(&template, &section, &names)?;
        assert_eq!(
            results,
            HashMap::from([
                ("A".to_owned(), true),
                ("B".to_owned(), false),
                ("C".to_owned(), true),
                ("D".to_owned(), false),
            ])
        );
        Ok(())
    }

    #[test]
    fn queue_properties_become_queue_attributes() -> anyhow::Result<()> {
        let properties = serde_json::json!({
            "MessageRetentionPeriod": 1209600,
            "SqsManagedSseEnabled": true,
            "RedrivePolicy": {"deadLetterTargetArn": "arn:q", "maxReceiveCount": 3},
            "Tags": [],
        });
        assert_eq!(
            queue_attributes(&properties)?,
            [
                ("MessageRetentionPeriod".to_owned(), "1209600".to_owned()),
                (
                    "RedrivePolicy".to_owned(),
                    r#"{"deadLetterTargetArn":"arn:q","maxReceiveCount":3}"#.to_owned()
                ),
                ("SqsManagedSseEnabled".to_owned(), "true".to_owned()),
            ]
        );
        Ok(())
    }

    /// Every table, queue, bus and rule of template.yaml exists on moto with the template's
    /// settings.
    #[tokio::test]
    async fn every_resource_of_the_template_exists_with_its_settings() {
        let endpoint = testing::emulator!();
        if let Err(e) = resources_exist(&endpoint).await {
            panic!("{e:#}");
        }
    }

    async fn resources_exist(endpoint: &str) -> anyhow::Result<()> {
        use aws_sdk_sqs::types::QueueAttributeName;
        let sdk = testing::moto::sdk_config(endpoint).await;
        let template = Template::load(&template_path())?;
        let stack = testing::moto::unique("res");
        let bus = format!("{stack}-bus");
        let created = create_with_parameters(
            &template,
            &sdk,
            &stack,
            &HashMap::from([("EventBusName".to_owned(), bus.clone())]),
        )
        .await?;

        assert_eq!(created.names().conditions.get("HasSecret"), Some(&true));
        // The generated secret is on the emulator, where the authorizer reads it.
        let secret = &created.secrets["AccessSecret"];
        let stored = aws_sdk_secretsmanager::Client::new(&sdk)
            .get_secret_value()
            .secret_id(&secret.arn)
            .send()
            .await?;
        assert_eq!(stored.secret_string(), Some(secret.value.as_str()));
        assert_eq!(secret.value.len(), 48);
        assert!(secret.value.chars().all(|c| c.is_ascii_alphanumeric()));

        let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
        let declared = |resource_type: &str| {
            let mut ids = template.resources_of_type(resource_type);
            ids.sort();
            ids
        };
        let ids: Vec<String> = created.tables.keys().cloned().collect();
        assert_eq!(ids, declared("AWS::DynamoDB::Table"));
        let books = dynamodb
            .describe_table()
            .table_name(format!("{stack}-BooksTable"))
            .send()
            .await?;
        let books = books.table().context("no books table")?;
        assert_eq!(books.key_schema()[0].attribute_name(), "name", "{books:?}");
        assert_eq!(
            books
                .stream_specification()
                .and_then(|s| s.stream_view_type())
                .map(|v| v.as_str()),
            Some("NEW_AND_OLD_IMAGES")
        );
        assert_eq!(
            books
                .billing_mode_summary()
                .and_then(|b| b.billing_mode())
                .map(|b| b.as_str()),
            Some("PAY_PER_REQUEST")
        );
        assert_eq!(
            created.names().attributes.get("BooksTable.StreamArn"),
            books.latest_stream_arn().map(str::to_owned).as_ref()
        );
        let activity = dynamodb
            .describe_table()
            .table_name(format!("{stack}-ActivityTable"))
            .send()
            .await?;
        let index = activity
            .table()
            .and_then(|t| t.global_secondary_indexes().first())
            .context("no index on the activity table")?;
        assert_eq!(index.index_name(), Some("byPosition"));
        let index_keys: Vec<(&str, &str)> = index
            .key_schema()
            .iter()
            .map(|k| (k.attribute_name(), k.key_type().as_str()))
            .collect();
        assert_eq!(index_keys, [("feed", "HASH"), ("position", "RANGE")]);
        let ttl = dynamodb
            .describe_time_to_live()
            .table_name(format!("{stack}-ConnectionsTable"))
            .send()
            .await?;
        assert_eq!(
            ttl.time_to_live_description()
                .and_then(|t| t.attribute_name()),
            Some("expiresAt")
        );

        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let ids: Vec<String> = created.queues.keys().cloned().collect();
        assert_eq!(ids, declared("AWS::SQS::Queue"));
        for queue in created.queues.values() {
            let attributes = sqs
                .get_queue_attributes()
                .queue_url(&queue.url)
                .attribute_names(QueueAttributeName::All)
                .send()
                .await?;
            let attributes = attributes.attributes().context("no attributes")?;
            // Dead letters wait 14 days; the fan-out queue keeps its batches 4, less than its
            // DLQ, as a message's age counts from its first enqueue.
            let retention = if queue.name.ends_with("-FanoutQueue") {
                "345600"
            } else {
                "1209600"
            };
            assert_eq!(
                attributes
                    .get(&QueueAttributeName::MessageRetentionPeriod)
                    .map(String::as_str),
                Some(retention),
                "{}",
                queue.name
            );
            assert_eq!(
                attributes.get(&QueueAttributeName::QueueArn),
                Some(&queue.arn)
            );
        }

        let events = aws_sdk_eventbridge::Client::new(&sdk);
        let described = events.describe_event_bus().name(&bus).send().await?;
        assert_eq!(
            described.arn(),
            Some(created.buses["EventBus"].arn.as_str())
        );
        assert_eq!(created.names().refs.get("EventBus"), Some(&bus));

        let rules: Vec<(&str, &str)> = created
            .rule_targets
            .iter()
            .map(|t| (t.rule_logical_id.as_str(), t.function_logical_id.as_str()))
            .collect();
        assert_eq!(
            rules,
            [
                ("BookAddedRule", "BookAddedFunction"),
                ("BookRemovedRule", "BookRemovedFunction"),
                ("NotifierRule", "NotifierFunction"),
            ]
        );
        for target in &created.rule_targets {
            let rule = events
                .describe_rule()
                .name(&target.rule_name)
                .event_bus_name(&bus)
                .send()
                .await?;
            let pattern: Value = serde_json::from_str(rule.event_pattern().context("no pattern")?)?;
            let declared = template.resolve(
                &template.properties(&target.rule_logical_id)["EventPattern"],
                created.names(),
            )?;
            assert_eq!(pattern, declared);
            assert_eq!(rule.state().map(|s| s.as_str()), Some("ENABLED"));
            let listed = events
                .list_targets_by_rule()
                .rule(&target.rule_name)
                .event_bus_name(&bus)
                .send()
                .await?;
            let [sdk_target] = listed.targets() else {
                bail!("{}: expected one target", target.rule_name);
            };
            assert_eq!(sdk_target.id(), target.target_id);
            assert_eq!(sdk_target.arn(), target.async_queue.arn);
            assert_eq!(
                sdk_target.dead_letter_config().and_then(|d| d.arn()),
                target.dead_letter.as_ref().map(|q| q.arn.as_str())
            );
            assert_eq!(
                target.retry_policy,
                RetryPolicy {
                    maximum_retry_attempts: Some(8),
                    maximum_event_age: Some(std::time::Duration::from_secs(3600)),
                }
            );
            assert_eq!(
                target.async_queue.name,
                format!("{stack}-{}-async", target.function_logical_id)
            );
            assert_eq!(
                target.function.name,
                created.functions[&target.function_logical_id].name
            );
        }
        assert_eq!(
            created.functions["ProcessorFunction"],
            FunctionName {
                name: format!("{stack}-processor"),
                arn: format!("arn:aws:lambda:us-east-1:123456789012:function:{stack}-processor"),
            }
        );
        Ok(())
    }
}
