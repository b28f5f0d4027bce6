//! What a downstream trusts a downloaded document with. A central exports
//! its secrets resolved, and whatever a document names is read on the
//! downstream and sent where the document says: so a document names
//! nothing of the downstream's host — no file (`${file:}`, a CA bundle
//! path), no environment variable (`${env:}`), no section beyond the
//! sections of an export (TLS, the admin port, the authorization server's
//! key and store are the downstream's own) — and its APIs send upstream no
//! credential of the downstream's own file, unless that alias says it
//! lends itself to them (`allow_downloaded_apis`).
//!
//! The first is judged on the document's text alone ([`local_references`]),
//! before anything of it is compiled or read: a relative path names another
//! file on the downstream's side than where the document is checked, and a
//! FIFO or `/proc/self/fd/0` would block the reload that reads it. The
//! second needs the merge, the one place that knows which entry came from
//! where: `merge::merge` finds the aliases borrowed, [`refuse_borrowed`]
//! refuses the merged configuration for them.

use std::path::Path;

use serde_json::Value;

use super::merge::Borrowed;
use crate::config::diagnostic::Report;
use crate::config::raw::Location;
use crate::config::{load, resolve, Invalid, Loaded};

/// The sections of an export: all a downloaded document may hold.
pub const SECTIONS: [&str; 4] = [
    "security_settings",
    "scope_mappings",
    "apis",
    "applications",
];

/// The keys of the exported sections whose value is a path on the host
/// that reads the configuration, by their place (`[]`: any entry of a list).
const PATHS: [&str; 2] = [
    "security_settings.auth_servers[].localIntrospectionConfig.trustStoreAlias",
    "apis[].upstream.ca_bundle",
];

/// Refuses a document that names a file or an environment variable of
/// this host, or holds a section no export has, each finding named by its
/// key path. Reads nothing but `text`.
pub fn local_references(origin: &Path, text: &str) -> Result<(), Invalid> {
    let mut documents = load::parse_untyped(origin, text)?.into_iter();
    let first = documents.next().unwrap_or(Value::Null);
    let mut report = Report::new(origin);
    if let Value::Object(sections) = &first {
        for (key, value) in sections {
            if SECTIONS.contains(&key.as_str()) {
                visit(&mut report, &Place::section(key), value);
            } else {
                report.error(
                    Location::UNKNOWN,
                    format!("{key}: no export has this section; a downloaded document holds only the sections of one"),
                    "security_settings, scope_mappings, apis and applications (the rest of the configuration is the downstream's own file)",
                );
            }
        }
    }
    // Further documents are `--- !<authServerAlias>` entries, appended to
    // the auth servers (as `load` reads them).
    let listed = first
        .pointer("/security_settings/auth_servers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let servers = Place::section("security_settings").key("auth_servers");
    for (index, server) in documents.enumerate() {
        visit(&mut report, &servers.index(listed + index), &server);
    }
    if report.has_errors() {
        return Err(Invalid::new(report.findings));
    }
    Ok(())
}

/// Where a value sits: as shown (`apis[2].upstream.ca_bundle`) and as
/// matched against [`PATHS`] (`apis[].upstream.ca_bundle`).
struct Place {
    shown: String,
    shape: String,
}

impl Place {
    fn section(name: &str) -> Place {
        Place {
            shown: name.to_owned(),
            shape: name.to_owned(),
        }
    }

    fn key(&self, key: &str) -> Place {
        Place {
            shown: format!("{}.{key}", self.shown),
            shape: format!("{}.{key}", self.shape),
        }
    }

    fn index(&self, index: usize) -> Place {
        Place {
            shown: format!("{}[{index}]", self.shown),
            shape: format!("{}[]", self.shape),
        }
    }
}

fn visit(report: &mut Report, place: &Place, value: &Value) {
    if PATHS.contains(&place.shape.as_str()) && !value.is_null() {
        report.error(
            Location::UNKNOWN,
            format!(
                "{}: a downloaded document names no path of this host",
                place.shown
            ),
            "no value (an entry that needs a CA bundle is kept in the downstream's own file)",
        );
        return;
    }
    match value {
        Value::String(text) => reference(report, place, text),
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                visit(report, &place.index(index), item);
            }
        }
        Value::Object(entries) => {
            for (key, item) in entries {
                visit(report, &place.key(key), item);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Reports `text` when it reads a file or a variable of this host.
fn reference(report: &mut Report, place: &Place, text: &str) {
    // Only whether it names one matters: the base is never joined to a read.
    let what = if resolve::referenced_file(text, Path::new("")).is_some() {
        "a file"
    } else if resolve::referenced_env(text).is_some() {
        "an environment variable"
    } else {
        return;
    };
    report.error(
        Location::UNKNOWN,
        format!(
            "{}: \"{text}\" names {what} of this host, which a downloaded document may not read",
            place.shown
        ),
        "the secret in clear or {encoded} (a central exports its secrets resolved)",
    );
}

/// `merged` (the local file with a download merged over it), refused when
/// a downloaded API names an alias of the local file that does not lend
/// itself to downloaded APIs (`borrowed`, as the merge found them): its
/// upstream, which the central chose, would receive that credential.
pub fn refuse_borrowed(
    origin: &Path,
    borrowed: &[Borrowed],
    merged: Result<Loaded, Invalid>,
) -> Result<Loaded, Invalid> {
    if borrowed.is_empty() {
        return merged;
    }
    let mut report = Report::new(origin);
    for borrowed in borrowed {
        report.error(
            borrowed.at,
            format!(
                "the downloaded API {} names the alias `{}` of this gateway's own file: its upstream would receive that alias's credentials",
                borrowed.api, borrowed.alias
            ),
            format!(
                "an alias the download defines (with download_settings: true), or `allow_downloaded_apis: true` on the local alias `{}`",
                borrowed.alias
            ),
        );
    }
    Err(match merged {
        Ok(mut loaded) => Invalid {
            findings: report.findings,
            files: std::mem::take(&mut loaded.snapshot.files),
        },
        Err(mut invalid) => {
            invalid.findings.splice(0..0, report.findings);
            invalid
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages of the findings on `text`, sorted.
    fn findings(text: &str) -> Vec<String> {
        let mut found: Vec<String> = match local_references(Path::new("settings.yaml"), text) {
            Ok(()) => Vec::new(),
            Err(invalid) => invalid.findings.iter().map(|f| f.message.clone()).collect(),
        };
        found.sort();
        found
    }

    #[test]
    fn a_document_of_clear_secrets_names_nothing_of_this_host() {
        let text = r#"
security_settings:
  auth_servers:
  - id: idp
    localIntrospectionConfig: { issuer: "https://idp", trustStoreAlias: null }
    remoteIntrospectionConfig: { introspectionEndpoint: "https://idp/i", clientId: c, clientSecret: "{encoded}eA==" }
  aliases:
  - { name: backend, username: svc, password: "pa${env:X}" }
scope_mappings: []
apis:
- name: A
  upstream: { url: "https://a" }
  policies: { request_transformation: { set_headers: { X-User: "${request.authorization.userName}" } } }
"#;
        assert_eq!(findings(text), Vec::<String>::new());
    }

    #[test]
    fn every_file_and_variable_reference_is_named_by_its_key_path() {
        let text = r#"
security_settings:
  auth_servers:
  - id: idp
    remoteIntrospectionConfig: { clientSecret: "${file:microgateway.yaml}" }
  aliases:
  - { name: backend, password: "${env:DB_PASSWORD}" }
  - { name: bearer, token: "${file:/proc/self/fd/0}" }
scope_mappings: []
apis:
- name: A
  policies: { outbound_auth: { username: u, password: "${file:../secrets/pw}" } }
---
!<authServerAlias>
id: tagged
remoteIntrospectionConfig: { clientSecret: "${env:SECRET}" }
"#;
        assert_eq!(
            findings(text),
            [
                "apis[0].policies.outbound_auth.password: \"${file:../secrets/pw}\" names a file of this host, which a downloaded document may not read",
                "security_settings.aliases[0].password: \"${env:DB_PASSWORD}\" names an environment variable of this host, which a downloaded document may not read",
                "security_settings.aliases[1].token: \"${file:/proc/self/fd/0}\" names a file of this host, which a downloaded document may not read",
                "security_settings.auth_servers[0].remoteIntrospectionConfig.clientSecret: \"${file:microgateway.yaml}\" names a file of this host, which a downloaded document may not read",
                "security_settings.auth_servers[1].remoteIntrospectionConfig.clientSecret: \"${env:SECRET}\" names an environment variable of this host, which a downloaded document may not read",
            ]
        );
    }

    #[test]
    fn paths_and_sections_of_this_host_are_refused() {
        let text = r#"
authorization_server: { signing_key: /proc/self/fd/0 }
tls: { certificate: a.pem, key: b.pem }
security_settings:
  auth_servers:
  - { id: idp, localIntrospectionConfig: { issuer: "https://idp", trustStoreAlias: ca.pem } }
scope_mappings: []
apis:
- { name: A, upstream: { url: "https://a", ca_bundle: 7 } }
"#;
        let found = findings(text);
        assert_eq!(found.len(), 4, "{found:#?}");
        assert_eq!(
            found[0],
            "apis[0].upstream.ca_bundle: a downloaded document names no path of this host"
        );
        assert!(found[1].starts_with("authorization_server: no export has this section"));
        assert_eq!(
            found[2],
            "security_settings.auth_servers[0].localIntrospectionConfig.trustStoreAlias: a downloaded document names no path of this host"
        );
        assert!(found[3].starts_with("tls: no export has this section"));
    }
}
