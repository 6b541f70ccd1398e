//! What `template.yaml` promises about abuse and accidents, read from the template itself:
//! both APIs throttled, the public functions and the processor with reserved concurrency, the
//! data tables retained, access logs on both APIs (into log groups with a retention, never
//! with the query string or headers), every role allowed exactly the calls its code makes, and
//! the activity table keyed per consumer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use rehearsal::template::Template;
use serde_json::Value;
use serde_yaml::Value as Yaml;

fn template() -> Template {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
    Template::load(&path).expect("template.yaml")
}

fn resource<'a>(template: &'a Template, id: &str) -> &'a Yaml {
    let resource = &template.section("Resources")[id];
    assert!(!resource.is_null(), "template.yaml has no resource {id}");
    resource
}

/// The argument of a short-form intrinsic (`!Ref X`, `!GetAtt X.Arn`), if `value` is `tag`.
fn tagged<'a>(value: &'a Yaml, tag: &str) -> Option<&'a Yaml> {
    match value {
        Yaml::Tagged(tagged) if tagged.tag == tag => Some(&tagged.value),
        _ => None,
    }
}

/// A number, written out or as `!Ref` to a parameter (then its default).
fn number(template: &Template, value: &Yaml) -> f64 {
    if let Some(parameter) = tagged(value, "!Ref").and_then(Yaml::as_str) {
        let default = template
            .parameter_default(parameter)
            .unwrap_or_else(|| panic!("parameter {parameter} has no default"));
        return default.parse().expect("a numeric default");
    }
    value
        .as_f64()
        .unwrap_or_else(|| panic!("not a number: {value:?}"))
}

/// The logical id whose ARN `value` (`!GetAtt <Id>.Arn`) is.
fn arn_of(value: &Yaml) -> String {
    let target = tagged(value, "!GetAtt")
        .and_then(Yaml::as_str)
        .unwrap_or_else(|| panic!("not a !GetAtt: {value:?}"));
    target
        .strip_suffix(".Arn")
        .unwrap_or_else(|| panic!("not an ARN: {target}"))
        .to_owned()
}

#[test]
fn both_apis_are_throttled() {
    let template = template();
    let http = &template.properties("HttpApi")["DefaultRouteSettings"];
    let websocket = &template.properties("WebSocketStage")["DefaultRouteSettings"];
    for (api, settings) in [("HttpApi", http), ("WebSocketStage", websocket)] {
        for key in ["ThrottlingRateLimit", "ThrottlingBurstLimit"] {
            let limit = number(&template, &settings[key]);
            assert!(limit >= 1.0, "{api} {key} is {limit}");
        }
    }
}

#[test]
fn the_public_functions_and_the_processor_have_reserved_concurrency() {
    let template = template();
    for function in ["ApiFunction", "SubscriptionsFunction", "ProcessorFunction"] {
        let reserved = &template.properties(function)["ReservedConcurrentExecutions"];
        assert!(
            !reserved.is_null(),
            "{function} has no reserved concurrency"
        );
        assert!(number(&template, reserved) >= 1.0, "{function}");
    }
}

#[test]
fn the_data_tables_are_retained_on_deletion_and_on_replacement() {
    let template = template();
    for table in ["BooksTable", "ActivityTable"] {
        let resource = resource(&template, table);
        for policy in ["DeletionPolicy", "UpdateReplacePolicy"] {
            assert_eq!(
                resource[policy].as_str(),
                Some("Retain"),
                "{table} {policy}"
            );
        }
    }
}

#[test]
fn the_activity_table_is_keyed_by_event_and_consumer() {
    let template = template();
    let table = template.properties("ActivityTable");
    let key: Vec<(&str, &str)> = table["KeySchema"]
        .as_sequence()
        .expect("KeySchema")
        .iter()
        .map(|k| {
            (
                k["AttributeName"].as_str().unwrap_or_default(),
                k["KeyType"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(key, [("eventId", "HASH"), ("consumer", "RANGE")]);
    let defined: Vec<&str> = table["AttributeDefinitions"]
        .as_sequence()
        .expect("AttributeDefinitions")
        .iter()
        .filter_map(|a| a["AttributeName"].as_str())
        .collect();
    assert!(defined.contains(&"consumer"), "{defined:?}");
}

/// The `$context` variables an access log may hold: who, when, what and how it ended. No query
/// string, header or body (a credential may travel in any of them).
const LOGGABLE: &[&str] = &[
    "requestId",
    "identity.sourceIp",
    "requestTime",
    "httpMethod",
    "path",
    "routeKey",
    "protocol",
    "status",
    "responseLength",
    "integrationErrorMessage",
    "integration.error",
    "authorizer.error",
    "error.message",
    "connectionId",
    "eventType",
];

/// Checks an `AccessLogSettings`: a JSON format of loggable variables only, holding `required`,
/// into a log group of the template with a retention.
fn check_access_logs(template: &Template, api: &str, settings: &Yaml, required: &[&str]) {
    assert!(!settings.is_null(), "{api} keeps no access logs");
    let group = arn_of(&settings["DestinationArn"]);
    let group_resource = resource(template, &group);
    assert_eq!(group_resource["Type"].as_str(), Some("AWS::Logs::LogGroup"));
    let retention = &group_resource["Properties"]["RetentionInDays"];
    assert!(
        retention.as_u64().is_some_and(|d| d > 0),
        "{group} keeps logs forever"
    );

    let format = settings["Format"].as_str().expect("a Format");
    let fields: BTreeMap<String, Value> =
        serde_json::from_str(format).unwrap_or_else(|e| panic!("{api}: not JSON ({e}): {format}"));
    let variables: BTreeSet<&str> = fields
        .values()
        .map(|v| {
            let v = v.as_str().expect("a string field");
            v.strip_prefix("$context.")
                .unwrap_or_else(|| panic!("{api}: {v} is not a $context variable"))
        })
        .collect();
    for variable in &variables {
        assert!(
            LOGGABLE.contains(variable),
            "{api} logs $context.{variable}"
        );
    }
    for variable in required {
        assert!(
            variables.contains(variable),
            "{api} does not log $context.{variable}"
        );
    }
    let lower = format.to_lowercase();
    for secret in [
        "querystring",
        "header",
        "$input",
        "$request",
        "authorization",
    ] {
        assert!(!lower.contains(secret), "{api} logs {secret}");
    }
}

#[test]
fn both_apis_keep_access_logs_without_query_strings_or_headers() {
    let template = template();
    let common = [
        "requestId",
        "identity.sourceIp",
        "requestTime",
        "routeKey",
        "status",
        "authorizer.error",
    ];
    let http: Vec<&str> = common
        .iter()
        .copied()
        .chain(["responseLength", "integrationErrorMessage"])
        .collect();
    check_access_logs(
        &template,
        "HttpApi",
        &template.properties("HttpApi")["AccessLogSettings"],
        &http,
    );
    let websocket: Vec<&str> = common
        .iter()
        .copied()
        .chain(["connectionId", "eventType", "integration.error"])
        .collect();
    check_access_logs(
        &template,
        "WebSocketStage",
        &template.properties("WebSocketStage")["AccessLogSettings"],
        &websocket,
    );
}

/// A WebSocket stage with logs needs the account's API Gateway logging role set first.
#[test]
fn the_websocket_stage_waits_for_the_accounts_logging_role() {
    let template = template();
    let depends_on: Vec<&str> = resource(&template, "WebSocketStage")["DependsOn"]
        .as_sequence()
        .expect("DependsOn")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(
        depends_on.contains(&"ApiGatewayLogsRoleReady"),
        "{depends_on:?}"
    );
    let ready = serde_yaml::to_string(&resource(&template, "ApiGatewayLogsRoleReady")["Metadata"])
        .expect("YAML");
    assert!(ready.contains("ApiGatewayAccount"), "{ready}");
    let account = template.properties("ApiGatewayAccount");
    assert_eq!(
        tagged(&account["CloudWatchRoleArn"], "!GetAtt").and_then(Yaml::as_str),
        Some("ApiGatewayLogsRole.Arn")
    );
}

/// A policy's statements, with both branches of a conditional (`!If`) one.
fn statements(statement: &Yaml) -> Vec<&Yaml> {
    if let Some(branches) = tagged(statement, "!If").and_then(Yaml::as_sequence) {
        return branches
            .iter()
            .skip(1)
            .filter(|b| tagged(b, "!Ref").and_then(Yaml::as_str) != Some("AWS::NoValue"))
            .flat_map(statements)
            .collect();
    }
    vec![statement]
}

/// Every statement of a role's inline policies.
fn role_statements(template: &Template, role: &str) -> Vec<Yaml> {
    let properties = template.properties(role);
    assert!(
        properties["ManagedPolicyArns"].is_null(),
        "{role} has managed policies"
    );
    properties["Policies"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|policy| {
            policy["PolicyDocument"]["Statement"]
                .as_sequence()
                .into_iter()
                .flatten()
                .flat_map(statements)
        })
        .cloned()
        .collect()
}

fn actions(statement: &Yaml) -> Vec<String> {
    match &statement["Action"] {
        Yaml::String(action) => vec![action.clone()],
        Yaml::Sequence(actions) => actions
            .iter()
            .map(|a| a.as_str().expect("an action").to_owned())
            .collect(),
        other => panic!("an Action of {other:?}"),
    }
}

const LOGS: [&str; 2] = ["logs:CreateLogStream", "logs:PutLogEvents"];

/// Each role's actions, from what its code calls (see each role's comments in the template):
/// a role that gains an action must gain it here too, with a reason.
fn expected_actions() -> BTreeMap<&'static str, Vec<&'static str>> {
    let with_logs = |actions: &[&'static str]| -> Vec<&'static str> {
        LOGS.iter().chain(actions).copied().collect()
    };
    BTreeMap::from([
        (
            "ApiRole",
            // DynamoBookStore: add, remove, get, list; DynamoActivityFeed: the byPosition query.
            with_logs(&[
                "dynamodb:PutItem",
                "dynamodb:DeleteItem",
                "dynamodb:GetItem",
                "dynamodb:Scan",
                "dynamodb:Query",
            ]),
        ),
        (
            "ProcessorRole",
            // The stream mapping's polling, PutEvents, the DLQ and the poison queue; the
            // journal (DynamoJournal: markers read, the head read, one transaction of an
            // Update and conditional Puts).
            with_logs(&[
                "dynamodb:DescribeStream",
                "dynamodb:GetRecords",
                "dynamodb:GetShardIterator",
                "dynamodb:ListStreams",
                "events:PutEvents",
                "sqs:SendMessage",
                "dynamodb:BatchGetItem",
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
            ]),
        ),
        // The conditional put, and the on-failure destination.
        (
            "BookAddedRole",
            with_logs(&["dynamodb:PutItem", "sqs:SendMessage"]),
        ),
        (
            "BookRemovedRole",
            with_logs(&["dynamodb:PutItem", "sqs:SendMessage"]),
        ),
        (
            "SubscriptionsRole",
            // DynamoConnectionStore's every call; POST and DELETE @connections; a cursor
            // checked against the journal (GetItem, Query) and the pump's message (SendMessage).
            with_logs(&[
                "dynamodb:PutItem",
                "dynamodb:GetItem",
                "dynamodb:UpdateItem",
                "dynamodb:DeleteItem",
                "dynamodb:Query",
                "dynamodb:BatchWriteItem",
                "execute-api:ManageConnections",
                "sqs:SendMessage",
            ]),
        ),
        (
            "NotifierRole",
            // subscribed_to (Query on the index), close of a gone connection (Query +
            // BatchWriteItem), POST @connections, the on-failure destination and the fan-out
            // queue (SendMessage; its event source mapping's polling); the pump: the journal
            // (GetItem, Query), the lease and progress (UpdateItem), an expired subscription
            // removed (DeleteItem in a transaction). No Scan, no DELETE @connections.
            with_logs(&[
                "dynamodb:Query",
                "dynamodb:BatchWriteItem",
                "dynamodb:GetItem",
                "dynamodb:UpdateItem",
                "dynamodb:DeleteItem",
                "execute-api:ManageConnections",
                "sqs:SendMessage",
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:GetQueueAttributes",
            ]),
        ),
        (
            "AuthorizerRole",
            // The shared secret, read once per environment.
            with_logs(&["secretsmanager:GetSecretValue"]),
        ),
        (
            "ApiGatewayLogsRole",
            // The account's API Gateway logging role: AmazonAPIGatewayPushToCloudWatchLogs.
            vec![
                "logs:CreateLogGroup",
                "logs:CreateLogStream",
                "logs:DescribeLogGroups",
                "logs:DescribeLogStreams",
                "logs:PutLogEvents",
                "logs:GetLogEvents",
                "logs:FilterLogEvents",
            ],
        ),
    ])
}

#[test]
fn each_role_allows_exactly_the_calls_its_code_makes() {
    let template = template();
    let expected = expected_actions();
    let roles = template.resources_of_type("AWS::IAM::Role");
    for role in &roles {
        let want: BTreeSet<&str> = expected
            .get(role.as_str())
            .unwrap_or_else(|| panic!("{role} is not in this test's list: add what it may do"))
            .iter()
            .copied()
            .collect();
        let statements = role_statements(&template, role);
        let have: Vec<String> = statements.iter().flat_map(actions).collect();
        let have_set: BTreeSet<&str> = have.iter().map(String::as_str).collect();
        assert_eq!(have_set, want, "{role}");
        assert_eq!(have.len(), have_set.len(), "{role} names an action twice");
    }
    // Every function runs with one of these roles.
    for function in template.resources_of_type("AWS::Serverless::Function") {
        let role = arn_of(&template.properties(&function)["Role"]);
        assert!(roles.contains(&role), "{function} runs with {role}");
    }
}

/// The notifier only posts to connections; only the subscriptions function closes them.
#[test]
fn only_the_subscriptions_function_may_close_a_connection() {
    let template = template();
    for role in template.resources_of_type("AWS::IAM::Role") {
        for statement in role_statements(&template, &role) {
            if !actions(&statement).contains(&"execute-api:ManageConnections".to_owned()) {
                continue;
            }
            let resources = serde_yaml::to_string(&statement["Resource"]).expect("YAML");
            let closes = resources.contains("/DELETE/");
            assert_eq!(closes, role == "SubscriptionsRole", "{role}: {resources}");
            assert!(
                resources.contains("/POST/@connections/"),
                "{role}: {resources}"
            );
        }
    }
}

/// With every parameter at its default, the conditions as CloudFormation evaluates them.
fn default_conditions(template: &Template) -> std::collections::HashMap<String, bool> {
    let mut names = rehearsal::template::Names::default();
    for parameter in template.parameters() {
        if let Some(default) = template.parameter_default(&parameter) {
            names.refs.insert(parameter, default);
        }
    }
    rehearsal::resources::evaluate_conditions(template, template.section("Conditions"), &names)
        .unwrap()
}

#[test]
fn a_default_deploy_puts_the_authorizer_before_every_route_but_the_graphiql_page() {
    let template = template();
    assert_eq!(
        template.parameter_default("PublicAccess").as_deref(),
        Some("none")
    );
    let conditions = default_conditions(&template);
    assert_eq!(conditions.get("Guarded"), Some(&true));
    assert_eq!(conditions.get("Private"), Some(&true));
    assert_eq!(
        conditions.get("HasSecret"),
        Some(&true),
        "a secret is generated"
    );
    assert_eq!(
        conditions.get("HasCors"),
        Some(&false),
        "no CORS unless asked"
    );

    let body = &resource(&template, "HttpApi")["Properties"]["DefinitionBody"];
    let paths = body["paths"].as_mapping().expect("the API's paths");
    let mut guarded = Vec::new();
    for (path, methods) in paths {
        let path = path.as_str().unwrap();
        for (method, operation) in methods.as_mapping().expect("methods") {
            let method = method.as_str().unwrap();
            // ANY would take CORS preflights (OPTIONS) to the authorizer, which they never pass.
            assert_ne!(
                method, "x-amazon-apigateway-any-method",
                "{path}: name the methods"
            );
            let security = &operation["security"];
            if (path, method) == ("/", "get") {
                assert!(security.is_null(), "the GraphiQL page holds no data");
                continue;
            }
            let choice = tagged(security, "!If").and_then(Yaml::as_sequence);
            let [condition, then, _] = choice.map(Vec::as_slice).unwrap_or_default() else {
                panic!("{method} {path}: security is not !If [Guarded, …]: {security:?}");
            };
            assert_eq!(condition.as_str(), Some("Guarded"), "{method} {path}");
            assert!(
                then[0]
                    .as_mapping()
                    .is_some_and(|m| m.contains_key("AccessAuthorizer")),
                "{method} {path}: {then:?}"
            );
            guarded.push(format!("{method} {path}"));
        }
    }
    assert_eq!(guarded, ["get /{proxy+}", "post /{proxy+}"]);

    let scheme = tagged(&body["components"], "!If")
        .and_then(Yaml::as_sequence)
        .map(|choice| {
            choice[1]["securitySchemes"]["AccessAuthorizer"]["x-amazon-apigateway-authorizer"]
                .clone()
        })
        .expect("the authorizer scheme, under Guarded");
    assert_eq!(scheme["type"].as_str(), Some("request"));
    assert_eq!(
        scheme["authorizerPayloadFormatVersion"].as_str(),
        Some("2.0")
    );
    assert_eq!(scheme["enableSimpleResponses"].as_bool(), Some(true));

    let connect = &resource(&template, "WebSocketConnectRoute")["Properties"];
    let choice = tagged(&connect["AuthorizationType"], "!If").and_then(Yaml::as_sequence);
    let values: Vec<_> = choice
        .into_iter()
        .flatten()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(
        values,
        ["Guarded", "CUSTOM", "NONE"],
        "$connect asks the authorizer"
    );
    let authorizer = &resource(&template, "WebSocketAuthorizer")["Properties"];
    assert_eq!(authorizer["AuthorizerType"].as_str(), Some("REQUEST"));
    // The api holds mutations to the authorizer's grant unless everyone may write.
    let api = &resource(&template, "ApiFunction")["Properties"]["Environment"]["Variables"];
    assert_eq!(
        tagged(&api["PUBLIC_ACCESS"], "!Ref").and_then(Yaml::as_str),
        Some("PublicAccess")
    );
}
