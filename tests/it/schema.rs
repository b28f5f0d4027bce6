//! The JSON Schema of the configuration: `microgateway schema` prints what
//! the raw model generates, `config/microgateway.schema.json` is that text,
//! and every configuration shipped under `config/` and `examples/` names
//! the schema and validates against it with a standard validator.

use std::path::{Path, PathBuf};
use std::process::Command;

use microgateway::config::schema::json_schema;
use serde_json::{json, Value};

const REGENERATE: &str =
    "regenerate it with `cargo run -- schema > config/microgateway.schema.json`";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn schema() -> Value {
    serde_json::from_str(&json_schema()).expect("the generated schema is JSON")
}

/// The validator of the whole file, or of one `$defs` entry of it.
fn validator(def: Option<&str>) -> jsonschema::Validator {
    let mut schema = schema();
    if let Some(def) = def {
        schema = json!({
            "$schema": schema["$schema"],
            "$defs": schema["$defs"],
            "$ref": format!("#/$defs/{def}"),
        });
    }
    jsonschema::validator_for(&schema).expect("a valid draft 2020-12 schema")
}

/// The errors of `instance`, one line each.
fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

fn yaml_to_json(text: &str) -> Value {
    serde_saphyr::from_str::<Value>(text).expect("YAML")
}

/// Every `.yaml` file under `dir`.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("directory") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            found.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            found.push(path);
        }
    }
    found.sort();
    found
}

/// The documents of a stream: the configuration, then the
/// `--- !<authServerAlias>` documents (tag removed) with the name of the
/// definition each one is checked against.
fn documents(text: &str) -> Vec<(Option<&'static str>, String)> {
    let mut documents = vec![(None, String::new())];
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("---") {
            let tag = rest.trim();
            assert!(
                tag.is_empty() || tag == "!<authServerAlias>",
                "unexpected tag {tag}"
            );
            documents.push((Some("AuthServer"), String::new()));
            continue;
        }
        let last = documents.last_mut().expect("one document at least");
        last.1.push_str(line);
        last.1.push('\n');
    }
    documents
}

/// A Kubernetes manifest carries the configuration as a ConfigMap's
/// `*.yaml` data entries.
fn configmap_configurations(text: &str) -> Vec<String> {
    text.split("\n---")
        .map(yaml_to_json)
        .filter(|doc| doc["kind"] == "ConfigMap")
        .flat_map(|doc| {
            doc["data"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(name, _)| name.ends_with(".yaml"))
                .filter_map(|(_, v)| v.as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn committed_schema_is_the_generated_one() {
    let path = root().join("config/microgateway.schema.json");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == json_schema(),
        "{} differs from the schema the configuration model generates; {REGENERATE}",
        path.display()
    );
}

#[test]
fn schema_command_prints_the_schema() {
    let out = Command::new(env!("CARGO_BIN_EXE_microgateway"))
        .arg("schema")
        .env_clear()
        .output()
        .expect("run the binary");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), json_schema());
    let printed: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        printed["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    // Descriptions come from the model's doc comments.
    assert!(
        printed["$defs"]["Tls"]["properties"]["client_auth"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("required"))
    );
}

#[test]
fn every_shipped_configuration_names_and_satisfies_the_schema() {
    let file_validator = validator(None);
    let server_validator = validator(Some("AuthServer"));
    let mut files = yaml_files(&root().join("config"));
    files.extend(yaml_files(&root().join("examples")));
    assert!(files.len() >= 7, "files found: {files:?}");
    let mut checked = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        let relative = file.strip_prefix(root()).expect("under the root");
        if relative.starts_with("examples/kubernetes") {
            // A manifest for kubectl: the configuration is inside it.
            let inner = configmap_configurations(&text);
            assert!(!inner.is_empty(), "{}: no configuration", file.display());
            for configuration in inner {
                let found = errors(&file_validator, &yaml_to_json(&configuration));
                assert!(found.is_empty(), "{}: {found:#?}", file.display());
                checked += 1;
            }
            continue;
        }
        let depth = relative.components().count() - 1;
        let expected = format!(
            "# yaml-language-server: $schema={}microgateway.schema.json",
            if depth == 1 && relative.starts_with("config") {
                String::new()
            } else {
                format!("{}config/", "../".repeat(depth))
            }
        );
        assert_eq!(
            text.lines().next(),
            Some(expected.as_str()),
            "{} must start with the schema line",
            file.display()
        );
        for (def, document) in documents(&text) {
            let validator = if def.is_some() {
                &server_validator
            } else {
                &file_validator
            };
            let found = errors(validator, &yaml_to_json(&document));
            assert!(found.is_empty(), "{}: {found:#?}", file.display());
            checked += 1;
        }
    }
    assert!(checked >= 8, "documents checked: {checked}");
}

#[test]
fn unknown_keys_and_wrong_types_fail_the_schema() {
    let validator = validator(None);
    let valid = yaml_to_json(
        "ports: { http: 4485 }\n\
         apis:\n\
         - name: Time travels\n\
         \x20 version: 1.0\n\
         \x20 base_path: /travels\n\
         \x20 upstream: { url: \"http://127.0.0.1:8080\" }\n\
         \x20 authentication: { type: [oauth2, api_key] }\n\
         \x20 scopes: [{ name: View, resources: [\"GET /x\"] }]\n\
         \x20 policies: { request_transformation: { set_headers: { X-A: b } } }\n",
    );
    assert_eq!(errors(&validator, &valid), Vec::<String>::new());

    let unknown = yaml_to_json("ports: { htp: 4485 }\n");
    let found = errors(&validator, &unknown);
    assert!(
        found
            .iter()
            .any(|e| e.starts_with("/ports") && e.contains("htp")),
        "{found:?}"
    );
    let unknown_top = yaml_to_json("apis: []\nrate_limits: {}\n");
    assert!(!errors(&validator, &unknown_top).is_empty());

    let wrong_type = yaml_to_json("apis:\n- name: A\n  scopes: view\n");
    let found = errors(&validator, &wrong_type);
    assert!(
        found.iter().any(|e| e.starts_with("/apis/0/scopes")),
        "{found:?}"
    );
    let not_a_scalar = yaml_to_json("ports: { http: [4485] }\n");
    let found = errors(&validator, &not_a_scalar);
    assert!(
        found.iter().any(|e| e.starts_with("/ports/http")),
        "{found:?}"
    );
}
