//! The central role's export: the `security_settings`, `scope_mappings`,
//! `apis` and `applications` of this instance's own configuration file, as
//! YAML in the configuration schema, so the document is a valid
//! configuration on its own. `applications` is left out when there are
//! none, so that a downstream that knows only the first three sections
//! follows a central without applications.
//!
//! The source is the text the serving snapshot was compiled from (never the
//! file as it is now on disk, which may hold a refused change). Secrets are
//! resolved into clear text (a downstream cannot read this host's
//! environment or files); this endpoint is the only place they leave the
//! process, and only to `central.users`. Paths (`trustStoreAlias`,
//! `ca_bundle`) are exported as written (the central's check warns of
//! each), and a downstream that takes the entry naming one refuses the
//! document (`central::trust`; docs/configuration.md, the central
//! gateway): an API or auth server that reads a CA bundle is kept in the
//! downstream's own file. The ETag is the
//! quoted SHA-256 of the body, so equal content has an equal ETag across
//! restarts and instances.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::header::{
    CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::selection::Selection;
use crate::basic_auth::Logins;
use crate::config::resolve::{self, Env, SecretProblem};
use crate::config::secret::constant_eq;
use crate::config::snapshot::Central;
use crate::config::Snapshot;
use crate::lockout::Locked;

/// Why the export document could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("the configuration text does not parse: {0}")]
    Parse(String),
    #[error("{key}: {problem}")]
    Secret { key: String, problem: SecretProblem },
    #[error("cannot write YAML: {0}")]
    Render(String),
}

/// The exported sections, secrets in clear.
#[derive(Debug, Clone, PartialEq)]
pub struct Tree(Value);

/// A rendered export: the YAML body and its strong ETag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub body: String,
    pub etag: String,
}

/// Builds the export tree from the text `snapshot` was compiled from.
pub fn build(snapshot: &Snapshot, env: &Env) -> Result<Tree, ExportError> {
    tree_of(&snapshot.source, &snapshot.source_text, env)
}

/// The export tree of the configuration text of `source`.
fn tree_of(source: &Path, text: &str, env: &Env) -> Result<Tree, ExportError> {
    let base = source
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    // Read as `load` reads it, so that every value means downstream what
    // it means here (`on` stays text, `007` keeps its zeros).
    let documents = crate::config::load::parse_untyped(source, text)
        .map_err(|e| ExportError::Parse(e.to_string()))?;
    let mut documents = documents.into_iter();
    let mut config = documents.next().unwrap_or(Value::Null);
    let mut auth_servers = take_list(config.get_mut("security_settings"), "auth_servers");
    // Further documents are `--- !<authServerAlias>` entries (as `load` reads them).
    auth_servers.extend(documents);
    let mut aliases = take_list(config.get_mut("security_settings"), "aliases");
    let scope_mappings = take_list(Some(&mut config), "scope_mappings");
    let mut apis = take_list(Some(&mut config), "apis");
    let mut applications = take_list(Some(&mut config), "applications");
    let clear = |value: Option<&mut Value>, key: &str| reveal(value, key, env, &base);
    for server in &mut auth_servers {
        let remote = server.get_mut("remoteIntrospectionConfig");
        clear(
            remote.and_then(|r| r.get_mut("clientSecret")),
            "clientSecret",
        )?;
    }
    for alias in &mut aliases {
        clear(alias.get_mut("password"), "password")?;
        clear(alias.get_mut("token"), "token")?;
    }
    for api in &mut apis {
        let outbound = api
            .get_mut("policies")
            .and_then(|p| p.get_mut("outbound_auth"));
        clear(outbound.and_then(|o| o.get_mut("password")), "password")?;
    }
    for application in &mut applications {
        if let Some(Value::Array(keys)) = application.get_mut("api_keys") {
            for key in keys {
                clear(Some(key), "api_keys")?;
            }
        }
    }
    Ok(Tree(json!({
        "security_settings": { "auth_servers": auth_servers, "aliases": aliases },
        "scope_mappings": scope_mappings,
        "apis": apis,
        "applications": applications,
    })))
}

/// The list under `key` of a mapping, taken out (a missing or null list is empty).
fn take_list(parent: Option<&mut Value>, key: &str) -> Vec<Value> {
    match parent.and_then(|p| p.get_mut(key)).map(Value::take) {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    }
}

/// Replaces a secret written as `{encoded}`, `${env:}` or `${file:}` with
/// its clear value.
fn reveal(value: Option<&mut Value>, key: &str, env: &Env, base: &Path) -> Result<(), ExportError> {
    let Some(value) = value else { return Ok(()) };
    let Value::String(text) = value else {
        return Ok(());
    };
    let (secret, _) = resolve::secret(text, env, base).map_err(|problem| ExportError::Secret {
        key: key.to_owned(),
        problem,
    })?;
    // Read again as a secret by the downstream: a clear value that looks
    // like the syntax (`${env:HOME}` written `{encoded}…` here) goes encoded.
    *value = Value::String(resolve::written_as_itself(secret.expose()));
    Ok(())
}

impl Tree {
    /// Only the APIs named in `apis` (all when empty), the scope
    /// mappings' API scopes of those APIs (a mapping left with none is
    /// dropped), and the applications' subscriptions and API scopes of
    /// those APIs (an application left with no subscription is dropped),
    /// by the rule of [`Selection`]. Security settings are kept whole.
    pub fn filter(&self, apis: &[String]) -> Tree {
        let selection = Selection::of(apis);
        if selection == Selection::All {
            return self.clone();
        }
        let mut tree = self.0.clone();
        if let Some(Value::Array(list)) = tree.get_mut("apis") {
            list.retain(|api| selection.takes(api.get("name").and_then(Value::as_str)));
        }
        if let Some(Value::Array(mappings)) = tree.get_mut("scope_mappings") {
            mappings.retain_mut(|mapping| match mapping.get_mut("api_scopes") {
                Some(Value::Array(api_scopes)) => {
                    selection.keep_api_scopes(api_scopes, Value::as_str)
                }
                _ => true,
            });
        }
        if let Some(Value::Array(applications)) = tree.get_mut("applications") {
            applications.retain_mut(|application| {
                if let Some(Value::Array(api_scopes)) = application.get_mut("api_scopes") {
                    selection.keep_api_scopes(api_scopes, Value::as_str);
                }
                match application.get_mut("apis") {
                    Some(Value::Array(apis)) => selection.keep_subscriptions(apis, Value::as_str),
                    _ => true,
                }
            });
        }
        Tree(tree)
    }

    /// The YAML body and its ETag.
    pub fn render(&self) -> Result<Rendered, ExportError> {
        // The sections in the order of the configuration schema.
        #[derive(serde::Serialize)]
        struct Sections<'a> {
            security_settings: &'a Value,
            scope_mappings: &'a Value,
            apis: &'a Value,
            #[serde(skip_serializing_if = "none")]
            applications: &'a Value,
        }
        fn none(list: &&Value) -> bool {
            list.as_array().is_none_or(Vec::is_empty)
        }
        let sections = Sections {
            security_settings: &self.0["security_settings"],
            scope_mappings: &self.0["scope_mappings"],
            apis: &self.0["apis"],
            applications: &self.0["applications"],
        };
        let yaml =
            serde_saphyr::to_string(&sections).map_err(|e| ExportError::Render(e.to_string()))?;
        let body = format!(
            "# Settings exported by a microgateway central gateway. Secrets are in clear:\n\
             # keep this file private (mode 0600).\n{yaml}"
        );
        let etag = etag_of(&body);
        Ok(Rendered { body, etag })
    }

    pub fn as_value(&self) -> &Value {
        &self.0
    }
}

/// The strong ETag of a body: its quoted SHA-256, hex.
pub fn etag_of(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// Whether `etag` has the form [`etag_of`] gives: strong, quoted, 64
/// lowercase hex digits.
pub fn is_digest(etag: &str) -> bool {
    etag.strip_prefix('"')
        .and_then(|e| e.strip_suffix('"'))
        .is_some_and(|hex| {
            hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
}

/// Whether `If-None-Match` names `etag` (RFC 9110 §13.1.2: weak comparison).
pub fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// Whether Basic credentials name one of `central.users`. Every user is
/// compared, in constant time, whatever matched before.
/// Whether `headers` carry the Basic credentials of a `central.users`
/// entry, for a login from `peer` counted in `logins` (refused unchecked
/// while its user or address is locked).
pub fn authorized(
    central: &Central,
    headers: &HeaderMap,
    (logins, peer): (&Logins, IpAddr),
) -> Result<bool, Locked> {
    let Some((user, password)) = crate::basic_auth::basic_credentials(headers) else {
        return Ok(false); // no guess made: nothing to count
    };
    logins.judge(peer, &user, || {
        central.users.iter().fold(false, |found, (name, secret)| {
            let name_ok = constant_eq(name.as_bytes(), user.as_bytes());
            found | (name_ok & secret.matches(password.as_bytes()))
        })
    })
}

/// The API names of `?apis=A,B` (split at commas, then percent-decoded).
pub fn requested_apis(query: Option<&str>) -> Vec<String> {
    let Some(query) = query else {
        return Vec::new();
    };
    query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("apis="))
        .flat_map(|value| value.split(','))
        .map(|name| {
            let name = name.replace('+', " ");
            percent_encoding::percent_decode_str(&name)
                .decode_utf8_lossy()
                .into_owned()
        })
        .filter(|name| !name.is_empty())
        .collect()
}

/// The answer to `GET /rest/microgateway/settings/export`. `tree` builds
/// (or returns the cached) export of `snapshot`.
pub fn respond(
    snapshot: &Snapshot,
    headers: &HeaderMap,
    query: Option<&str>,
    login: (&Logins, IpAddr),
    tree: impl FnOnce() -> Result<Tree, ExportError>,
) -> Response<Bytes> {
    let Some(central) = &snapshot.central else {
        return answer(
            StatusCode::NOT_FOUND,
            json!({"error": "not_found", "error_description": "this gateway is not a central gateway"}),
        );
    };
    let granted = match authorized(central, headers, login) {
        Ok(granted) => granted,
        Err(locked) => {
            let mut response = answer(
                StatusCode::TOO_MANY_REQUESTS,
                json!({"error": "too_many_attempts", "error_description": "too many failed logins; try again later"}),
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(locked.retry_after.max(1)));
            return response;
        }
    };
    if !granted {
        let mut response = answer(StatusCode::UNAUTHORIZED, json!({"error": "unauthorized"}));
        response.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"microgateway central\""),
        );
        return response;
    }
    let rendered = tree().and_then(|tree| tree.filter(&requested_apis(query)).render());
    let rendered = match rendered {
        Ok(rendered) => rendered,
        Err(error) => {
            tracing::error!(%error, "cannot export the settings");
            return answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": "server_error"}),
            );
        }
    };
    let Ok(etag) = HeaderValue::from_str(&rendered.etag) else {
        return answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "server_error"}),
        );
    };
    let mut response = if not_modified(headers, &rendered.etag) {
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        let mut response = Response::new(Bytes::from(rendered.body));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/yaml"));
        response
    };
    response.headers_mut().insert(ETAG, etag);
    // Secrets in clear: no shared cache may keep this.
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn answer(status: StatusCode, body: Value) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(yaml: &str) -> Tree {
        Tree(serde_saphyr::from_str::<Value>(yaml).expect("test YAML"))
    }

    #[test]
    fn filter_keeps_named_apis_and_their_mappings() {
        let all = tree(
            r#"
security_settings: { auth_servers: [{ id: a }], aliases: [] }
scope_mappings:
- { auth_server: a, scope: view, api_scopes: ["One:View", "Two:View"] }
- { auth_server: a, scope: book, api_scopes: ["Two:Book"] }
apis: [{ name: One }, { name: Two }]
"#,
        );
        let one = all.filter(&["One".to_owned()]);
        assert_eq!(
            one.as_value()["apis"],
            json!([{ "name": "One" }]),
            "only the named API"
        );
        assert_eq!(
            one.as_value()["scope_mappings"],
            json!([{ "auth_server": "a", "scope": "view", "api_scopes": ["One:View"] }])
        );
        assert_eq!(
            one.as_value()["security_settings"]["auth_servers"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        assert_eq!(all.filter(&[]), all);
    }

    #[test]
    fn filter_keeps_the_applications_of_named_apis_and_only_their_part() {
        let all = tree(
            r#"
security_settings: { auth_servers: [], aliases: [] }
scope_mappings: []
apis: [{ name: One }, { name: Two }]
applications:
- { name: both, apis: ["One:1.0", "Two"], api_scopes: ["One:View", "Two:View"] }
- { name: two, apis: ["Two"] }
- { name: everywhere, client_ids: [c] }
"#,
        );
        let one = all.filter(&["One".to_owned()]);
        assert_eq!(
            one.as_value()["applications"],
            json!([
                { "name": "both", "apis": ["One:1.0"], "api_scopes": ["One:View"] },
                { "name": "everywhere", "client_ids": ["c"] },
            ])
        );
    }

    /// A scope name may hold a `:`: `Orders:orders:read` is a scope of
    /// `Orders`, kept with it.
    #[test]
    fn filter_keeps_the_api_scopes_whose_scope_name_holds_a_colon() {
        let all = tree(
            r#"
security_settings: { auth_servers: [{ id: a }], aliases: [] }
scope_mappings:
- { auth_server: a, scope: ordering, api_scopes: ["Orders:orders:read"] }
- { auth_server: a, scope: other, api_scopes: ["Other:orders:read"] }
apis: [{ name: Orders }, { name: Other }]
applications:
- { name: shop, apis: ["Orders"], api_scopes: ["Orders:orders:read", "Other:orders:read"] }
"#,
        );
        let orders = all.filter(&["Orders".to_owned()]);
        assert_eq!(
            orders.as_value()["scope_mappings"],
            json!([{ "auth_server": "a", "scope": "ordering", "api_scopes": ["Orders:orders:read"] }])
        );
        assert_eq!(
            orders.as_value()["applications"],
            json!([{ "name": "shop", "apis": ["Orders"], "api_scopes": ["Orders:orders:read"] }])
        );
    }

    /// A central without applications sends the three sections a
    /// downstream that knows no more of them reads.
    #[test]
    fn applications_are_exported_with_their_keys_in_clear_and_only_when_there_are_some() {
        let path = Path::new("/etc/microgateway/microgateway.yaml");
        let env = Env::from([("PARTNER_KEY".to_owned(), "k-123".to_owned())]);
        let source = r#"
applications:
- { name: Partner, api_keys: ["${env:PARTNER_KEY}", "{encoded}a2V5LTI="], apis: [] }
"#;
        let body = tree_of(path, source, &env)
            .expect("tree")
            .render()
            .expect("render")
            .body;
        let read: Value = serde_saphyr::from_str(&body).expect("YAML");
        assert_eq!(
            read["applications"][0]["api_keys"],
            json!(["k-123", "key-2"])
        );
        let body = tree_of(path, "apis: []\n", &env)
            .expect("tree")
            .render()
            .expect("render")
            .body;
        assert!(!body.contains("applications"), "{body}");
    }

    /// Each value reaches a downstream as the text the central reads: as
    /// YAML 1.1 would have it, `on` was `true` and `007` was `7`.
    #[test]
    fn values_keep_the_text_the_central_reads() {
        let source = r#"
apis:
- name: 007
  version: 0100
  upstream: { url: "http://127.0.0.1:9/x" }
  authentication: { type: none }
  policies:
    response_transformation:
      set_headers: { X-Mode: on, X-Count: 1_000, X-Flag: no }
"#;
        let path = Path::new("/etc/microgateway/microgateway.yaml");
        let body = tree_of(path, source, &Env::default())
            .expect("tree")
            .render()
            .expect("render")
            .body;
        let (file, _) = crate::config::load::parse(path, &body).expect("a downstream reads it");
        let api = &file.apis[0].value;
        let name = api.name.as_ref().map(|n| n.value.clone());
        let version = api.version.as_ref().map(|v| v.value.0.clone());
        assert_eq!(name.as_deref(), Some("007"), "{body}");
        assert_eq!(version.as_deref(), Some("0100"), "{body}");
        let read = crate::config::load::parse_untyped(path, &body).expect("untyped");
        let set = &read[0]["apis"][0]["policies"]["response_transformation"]["set_headers"];
        assert_eq!(
            set,
            &json!({ "X-Mode": "on", "X-Count": "1_000", "X-Flag": "no" }),
            "{body}"
        );
    }

    #[test]
    fn etag_is_stable_and_if_none_match_compares_weakly() {
        let etag = etag_of("body");
        assert_eq!(etag, etag_of("body"));
        assert_ne!(etag, etag_of("other"));
        assert!(etag.starts_with('"') && etag.len() == 66);
        assert!(is_digest(&etag));
        for other in [
            "W/".to_owned() + &etag,
            etag.to_uppercase(),
            "\"abc\"".into(),
        ] {
            assert!(!is_digest(&other), "{other}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"x\", W/{etag}")).expect("value"),
        );
        assert!(not_modified(&headers, &etag));
        assert!(!not_modified(&HeaderMap::new(), &etag));
    }

    #[test]
    fn apis_query_is_split_then_decoded() {
        assert_eq!(
            requested_apis(Some("x=1&apis=Time%20travels,A%2CB,C+D")),
            ["Time travels", "A,B", "C D"]
        );
        assert!(requested_apis(Some("apis=")).is_empty());
        assert!(requested_apis(None).is_empty());
    }
}
