//! Reads `template.yaml`, so tests build what the template deploys.

use serde_json::Value;

/// The template, parsed (CloudFormation's `!Ref`-style tags are kept as YAML tags).
pub fn load() -> anyhow::Result<serde_yaml::Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml");
    Ok(serde_yaml::from_str(&std::fs::read_to_string(path)?)?)
}

/// The `EventPattern` of the rule with this logical id, as JSON.
pub fn rule_pattern(logical_id: &str) -> anyhow::Result<Value> {
    let template = load()?;
    let pattern = &template["Resources"][logical_id]["Properties"]["EventPattern"];
    if pattern.is_null() {
        anyhow::bail!("template.yaml has no EventPattern for {logical_id}");
    }
    Ok(serde_json::to_value(pattern)?)
}
