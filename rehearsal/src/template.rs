//! `template.yaml`, read for what the rehearsal builds: every setting the emulations follow
//! comes from here, not from constants.
//!
//! The template is plain YAML with CloudFormation's short-form intrinsics as tags (`!Ref`,
//! `!GetAtt`, `!Sub`, `!If`, …). [`Template::resolve`] evaluates the ones the rehearsal meets
//! against the [`Names`] of the resources it created, as CloudFormation would
//! (<https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/intrinsic-function-reference.html>).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Map, Value};
use serde_yaml::value::TaggedValue;

/// The parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    root: serde_yaml::Value,
}

/// The physical names of what the rehearsal created: what `!Ref` and `!GetAtt` stand for.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// `AWS::StackName`.
    pub stack: String,
    /// `AWS::Region`.
    pub region: String,
    /// `AWS::AccountId`.
    pub account: String,
    /// Logical id → what `!Ref` returns (table name, queue URL, bus name, parameter value…).
    pub refs: HashMap<String, String>,
    /// `Logical.Attribute` → what `!GetAtt` returns (`BooksTable.StreamArn`, `Queue.Arn`…).
    pub attributes: HashMap<String, String>,
    /// Conditions, by name.
    pub conditions: HashMap<String, bool>,
}

impl Names {
    fn pseudo(&self, name: &str) -> Option<String> {
        Some(match name {
            "AWS::StackName" => self.stack.clone(),
            "AWS::Region" => self.region.clone(),
            "AWS::AccountId" => self.account.clone(),
            "AWS::Partition" => "aws".to_owned(),
            "AWS::URLSuffix" => "amazonaws.com".to_owned(),
            _ => return None,
        })
    }

    fn reference(&self, name: &str) -> anyhow::Result<String> {
        self.pseudo(name)
            .or_else(|| self.refs.get(name).cloned())
            .with_context(|| format!("!Ref {name}: the rehearsal has no such resource"))
    }

    fn attribute(&self, name: &str) -> anyhow::Result<String> {
        self.attributes
            .get(name)
            .cloned()
            .with_context(|| format!("!GetAtt {name}: the rehearsal has no such attribute"))
    }
}

impl Template {
    /// Reads the template at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Self {
            root: serde_yaml::from_str(&text)
                .with_context(|| format!("{} is not YAML", path.display()))?,
        })
    }

    /// The logical ids of the resources of one type (`AWS::SQS::Queue`), in template order.
    pub fn resources_of_type(&self, resource_type: &str) -> Vec<String> {
        self.root["Resources"]
            .as_mapping()
            .map(|resources| {
                resources
                    .iter()
                    .filter(|(_, r)| r["Type"].as_str() == Some(resource_type))
                    .filter_map(|(id, _)| id.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A resource's `Properties`, unresolved (`Null` when there are none).
    pub fn properties(&self, logical_id: &str) -> &serde_yaml::Value {
        &self.root["Resources"][logical_id]["Properties"]
    }

    /// A resource's `Metadata`.
    pub fn metadata(&self, logical_id: &str) -> &serde_yaml::Value {
        &self.root["Resources"][logical_id]["Metadata"]
    }

    /// A function's property, falling back to `Globals.Function` as SAM does
    /// (<https://docs.aws.amazon.com/serverless-application-model/latest/developerguide/sam-specification-template-anatomy-globals.html>).
    pub fn function_property(&self, logical_id: &str, key: &str) -> &serde_yaml::Value {
        let own = &self.properties(logical_id)[key];
        if own.is_null() {
            &self.root["Globals"]["Function"][key]
        } else {
            own
        }
    }

    /// A top-level section (`Conditions`, `Parameters`, `Outputs`…), unresolved.
    pub fn section(&self, name: &str) -> &serde_yaml::Value {
        &self.root[name]
    }

    /// A parameter's default.
    pub fn parameter_default(&self, name: &str) -> Option<String> {
        match &self.root["Parameters"][name]["Default"] {
            serde_yaml::Value::String(s) => Some(s.clone()),
            serde_yaml::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// The names of the template's parameters.
    pub fn parameters(&self) -> Vec<String> {
        self.root["Parameters"]
            .as_mapping()
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Evaluates the intrinsics in `value` against `names` and gives the result as JSON.
    /// `!If` on a false condition with `AWS::NoValue` drops the key, as CloudFormation does.
    pub fn resolve(&self, value: &serde_yaml::Value, names: &Names) -> anyhow::Result<Value> {
        Ok(resolve(value, names)?.unwrap_or(Value::Null))
    }
}

/// `None` stands for `AWS::NoValue`.
fn resolve(value: &serde_yaml::Value, names: &Names) -> anyhow::Result<Option<Value>> {
    use serde_yaml::Value as Y;
    Ok(Some(match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(*b),
        Y::Number(n) => serde_json::to_value(n)?,
        Y::String(s) => Value::String(s.clone()),
        Y::Sequence(items) => Value::Array(
            items
                .iter()
                .map(|item| resolve(item, names))
                .collect::<anyhow::Result<Vec<_>>>()?
                .into_iter()
                .flatten()
                .collect(),
        ),
        Y::Mapping(mapping) => {
            // The long form (`Fn::GetAtt: [...]`, `Ref: X`) of a single-key mapping.
            if mapping.len() == 1
                && let Some((Y::String(key), inner)) = mapping.iter().next()
                && (key == "Ref" || key.starts_with("Fn::"))
            {
                let tag = if key == "Ref" {
                    "Ref".to_owned()
                } else {
                    key.trim_start_matches("Fn::").to_owned()
                };
                return intrinsic(&tag, inner, names);
            }
            let mut object = Map::new();
            for (key, item) in mapping {
                let key = key
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| serde_yaml::to_string(key).unwrap_or_default());
                if let Some(item) = resolve(item, names)? {
                    object.insert(key, item);
                }
            }
            Value::Object(object)
        }
        Y::Tagged(tagged) => {
            let TaggedValue { tag, value } = tagged.as_ref();
            let tag = tag.to_string();
            return intrinsic(tag.trim_start_matches('!'), value, names);
        }
    }))
}

fn intrinsic(tag: &str, value: &serde_yaml::Value, names: &Names) -> anyhow::Result<Option<Value>> {
    let text = |v: &serde_yaml::Value| -> anyhow::Result<String> {
        match resolve(v, names)? {
            Some(Value::String(s)) => Ok(s),
            other => bail!("!{tag}: expected a string, got {other:?}"),
        }
    };
    Ok(Some(Value::String(match tag {
        "Ref" => {
            let name = text(value)?;
            if name == "AWS::NoValue" {
                return Ok(None);
            }
            names.reference(&name)?
        }
        "GetAtt" => match value {
            serde_yaml::Value::String(s) => names.attribute(s)?,
            serde_yaml::Value::Sequence(parts) => {
                let parts = parts.iter().map(text).collect::<anyhow::Result<Vec<_>>>()?;
                names.attribute(&parts.join("."))?
            }
            other => bail!("!GetAtt {other:?}"),
        },
        "Sub" => substitute(&text(value)?, names)?,
        "If" => {
            let serde_yaml::Value::Sequence(parts) = value else {
                bail!("!If takes [condition, then, else]");
            };
            let [condition, then, otherwise] = parts.as_slice() else {
                bail!("!If takes [condition, then, else]");
            };
            let condition = text(condition)?;
            let holds = names
                .conditions
                .get(&condition)
                .copied()
                .with_context(|| format!("no condition {condition}"))?;
            return resolve(if holds { then } else { otherwise }, names);
        }
        // A CommaDelimitedList parameter's !Ref is its text here ("a,b"), so a string item
        // stands for the list it would be.
        "Join" => {
            let serde_yaml::Value::Sequence(parts) = value else {
                bail!("!Join takes [delimiter, list]");
            };
            let [delimiter, list] = parts.as_slice() else {
                bail!("!Join takes [delimiter, list]");
            };
            let delimiter = text(delimiter)?;
            let items: Vec<String> = match resolve(list, names)? {
                Some(Value::Array(items)) => items
                    .into_iter()
                    .map(|item| match item {
                        Value::String(s) => Ok(s),
                        other => bail!("!Join: expected strings, got {other}"),
                    })
                    .collect::<anyhow::Result<_>>()?,
                Some(Value::String(s)) => s.split(',').map(str::to_owned).collect(),
                None => Vec::new(),
                other => bail!("!Join: expected a list, got {other:?}"),
            };
            items.join(&delimiter)
        }
        other => bail!("the rehearsal does not evaluate !{other}"),
    })))
}

/// `!Sub`: `${Name}` is a `!Ref`, `${Name.Attribute}` a `!GetAtt`, `${!Literal}` is literal.
fn substitute(template: &str, names: &Names) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .with_context(|| format!("!Sub {template}: unclosed ${{"))?;
        let name = &after[..end];
        if let Some(literal) = name.strip_prefix('!') {
            out.push_str("${");
            out.push_str(literal);
            out.push('}');
        } else if name.contains('.') && !name.starts_with("AWS::") {
            out.push_str(&names.attribute(name)?);
        } else {
            out.push_str(&names.reference(name)?);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A JSON number or numeric string as seconds (`Timeout: 10`).
pub fn seconds(value: &Value) -> Option<Duration> {
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
        .map(Duration::from_secs)
}

/// A JSON number (or numeric string) as an integer; `-1` stands for "no limit" in several
/// Lambda settings.
pub fn integer(value: &Value) -> Option<i64> {
    value
        .as_i64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names {
            stack: "s".into(),
            region: "us-east-1".into(),
            account: "123456789012".into(),
            refs: HashMap::from([("Bus".into(), "bus-1".into())]),
            attributes: HashMap::from([("Q.Arn".into(), "arn:q".into())]),
            conditions: HashMap::from([("On".into(), false)]),
        }
    }

    fn yaml(text: &str) -> serde_yaml::Value {
        serde_yaml::from_str(text).unwrap_or_default()
    }

    #[test]
    fn intrinsics_resolve_as_cloudformation_does() -> anyhow::Result<()> {
        let template = Template {
            root: serde_yaml::Value::Null,
        };
        let value = yaml(
            "a: !Ref Bus\nb: !GetAtt Q.Arn\nc: !Sub \"${AWS::StackName}-x-${Bus}-${Q.Arn}\"\n\
             d: !If [On, 1, !Ref AWS::NoValue]\ne: {\"Fn::GetAtt\": [Q, Arn]}\nf: !Sub \"${!Literal}\"",
        );
        let resolved = template.resolve(&value, &names())?;
        assert_eq!(
            resolved,
            serde_json::json!({"a": "bus-1", "b": "arn:q", "c": "s-x-bus-1-arn:q", "e": "arn:q", "f": "${Literal}"})
        );
        Ok(())
    }

    #[test]
    fn an_unknown_reference_is_an_error() {
        let template = Template {
            root: serde_yaml::Value::Null,
        };
        assert!(template.resolve(&yaml("a: !Ref Nope"), &names()).is_err());
    }
}
