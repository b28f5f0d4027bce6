//! The JSON Schema (draft 2020-12) of the configuration file, generated from
//! the raw model (`raw`): its keys, types and doc comments, the `default` of
//! a key taken from its doc comment ("Default 9485."). Editors complete and
//! check YAML with it (`# yaml-language-server: $schema=…`); the rules that
//! need more than a schema (durations, references between entries, files
//! that must exist) stay in `check`. `microgateway schema` prints it;
//! `config/microgateway.schema.json` is this text, kept equal by a test.

use schemars::generate::SchemaSettings;
use serde_json::Value;

use super::raw;

/// The schema as pretty-printed JSON, ending with a newline.
pub fn json_schema() -> String {
    let mut schema = SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<raw::File>();
    schema.insert("title".to_owned(), "microgateway configuration".into());
    let mut value = schema.to_value();
    add_defaults(&mut value);
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    text
}

/// Sets `default` on every schema whose description states one.
fn add_defaults(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let default = map
                .get("description")
                .and_then(Value::as_str)
                .and_then(stated_default);
            if let Some(default) = default {
                map.entry("default").or_insert(default);
            }
            map.values_mut().for_each(add_defaults);
        }
        Value::Array(items) => items.iter_mut().for_each(add_defaults),
        _ => {}
    }
}

/// The value of "Default X." / "Default `X`" in a description: one word
/// (or one code span) ending the sentence; anything longer is prose.
fn stated_default(description: &str) -> Option<Value> {
    let (_, rest) = description.rsplit_once("Default ")?;
    let (word, after) = match rest.strip_prefix('`') {
        Some(code) => {
            let (word, after) = code.split_once('`')?;
            (word, after)
        }
        None => {
            let end = rest.find([' ', ';']).unwrap_or(rest.len());
            let word = rest[..end].trim_end_matches('.');
            (word, &rest[word.len()..])
        }
    };
    if word.is_empty() || !(after.is_empty() || after.starts_with(['.', ';'])) {
        return None;
    }
    let quoted = rest.starts_with('`');
    Some(match word {
        "true" if !quoted => Value::Bool(true),
        "false" if !quoted => Value::Bool(false),
        _ => match word.parse::<i64>() {
            Ok(number) if !quoted => number.into(),
            _ => word.into(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_are_read_from_the_descriptions() {
        assert_eq!(
            stated_default("Admin port. Default 9485."),
            Some(json!(9485))
        );
        assert_eq!(
            stated_default("Bind. Default `0.0.0.0`."),
            Some(json!("0.0.0.0"))
        );
        assert_eq!(
            stated_default("Head. Default 32KiB; 1KiB to 1MiB."),
            Some(json!("32KiB"))
        );
        assert_eq!(stated_default("Echo. Default false."), Some(json!(false)));
        assert_eq!(stated_default("Default `api` or the scope's name."), None);
        assert_eq!(stated_default("Default: those the API serves."), None);
        assert_eq!(stated_default("No default."), None);
        assert_eq!(
            stated_default("Default lifetime (-1: never). Default 3600."),
            Some(json!(3600))
        );
    }
}
