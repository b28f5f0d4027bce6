//! The JSON Schema (draft 2020-12) of the configuration file, generated from
//! the raw model (`raw`): its keys, types and doc comments. Editors complete
//! and check YAML with it (`# yaml-language-server: $schema=…`); the rules
//! that need more than a schema (durations, references between entries,
//! files that must exist) stay in `check`. `microgateway schema` prints it;
//! `config/microgateway.schema.json` is this text, kept equal by a test.

use schemars::generate::SchemaSettings;

use super::raw;

/// The schema as pretty-printed JSON, ending with a newline.
pub fn json_schema() -> String {
    let mut schema = SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<raw::File>();
    schema.insert("title".to_owned(), "microgateway configuration".into());
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
