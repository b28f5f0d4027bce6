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
//! References and sections are judged on the document's text alone
//! ([`local_references`]), before anything of it is compiled or read: a
//! relative path names another file on the downstream's side than where
//! the document is checked, and a FIFO or `/proc/self/fd/0` would block
//! the reload that reads it. A central exports its paths (`trustStoreAlias`,
//! `ca_bundle`) as written: those are refused where the downstream takes
//! the entry that names them ([`refuse_paths`], by its download flags and
//! its `apis:`), and removed from what it does not take before the
//! document is compiled on its own ([`strip_paths`]): a central's API with
//! a CA bundle keeps out only the downstreams that take that API. The
//! credentials need the merge, the one place that knows which entry came
//! from where: `merge::merge` finds the aliases borrowed,
//! [`refuse_borrowed`] refuses the merged configuration for them.

use std::path::Path;

use serde_json::Value;

use super::merge::{Borrowed, Flags};
use super::selection::Selection;
use crate::config::diagnostic::Report;
use crate::config::fleet_compile::{self, PathOwner};
use crate::config::raw::{self, Location};
use crate::config::{load, resolve, Invalid, Loaded};

/// The sections of an export: all a downloaded document may hold.
pub const SECTIONS: [&str; 4] = [
    "security_settings",
    "scope_mappings",
    "apis",
    "applications",
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

/// Where a value sits, as shown (`apis[2].policies.outbound_auth.password`).
struct Place {
    shown: String,
}

impl Place {
    fn section(name: &str) -> Place {
        Place {
            shown: name.to_owned(),
        }
    }

    fn key(&self, key: &str) -> Place {
        Place {
            shown: format!("{}.{key}", self.shown),
        }
    }

    fn index(&self, index: usize) -> Place {
        Place {
            shown: format!("{}[{index}]", self.shown),
        }
    }
}

fn visit(report: &mut Report, place: &Place, value: &Value) {
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

/// Refuses `downloaded` when an entry that `flags` and `selection` take
/// names a path of this host (`fleet_compile::host_paths`): an auth
/// server's `trustStoreAlias` (with the settings), an API's `ca_bundle`
/// (with the APIs, of an API taken). Each is told where the document
/// names it.
pub fn refuse_paths(
    origin: &Path,
    downloaded: &raw::File,
    flags: Flags,
    selection: &Selection,
) -> Result<(), Invalid> {
    let mut report = Report::new(origin);
    for path in fleet_compile::host_paths(downloaded) {
        let taken = match &path.owner {
            PathOwner::AuthServer(_) => flags.settings,
            PathOwner::Api(name) => flags.apis && selection.takes(name.as_deref()),
        };
        if taken {
            report.error(
                path.at,
                format!(
                    "the downloaded {}: {} names a path of this host, which a downloaded document may not",
                    path.owner, path.key
                ),
                "no value (an entry that needs a CA bundle is kept in the downstream's own file)",
            );
        }
    }
    if report.has_errors() {
        return Err(Invalid::new(report.findings));
    }
    Ok(())
}

/// Removes every path of this host from `document`, so that compiling it
/// on its own reads none: what a merge takes of it is refused by
/// [`refuse_paths`], the rest is never used.
pub fn strip_paths(document: &mut raw::File) {
    fleet_compile::strip_host_paths(document);
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
    fn sections_of_this_host_are_refused_and_paths_left_to_the_merge() {
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
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found[0].starts_with("authorization_server: no export has this section"));
        assert!(found[1].starts_with("tls: no export has this section"));
    }

    const PATHS: &str = r#"
security_settings:
  auth_servers:
  - { id: idp, localIntrospectionConfig: { issuer: "https://idp", trustStoreAlias: ca.pem } }
  - { id: plain, localIntrospectionConfig: { issuer: "https://plain", trustStoreAlias: null } }
apis:
- { name: A, upstream: { url: "https://a", ca_bundle: a.pem } }
- { name: B, upstream: { url: "https://b" } }
"#;

    /// The messages of what `refuse_paths` finds in [`PATHS`] for a
    /// downstream that takes `flags` and `apis`, with their lines.
    fn paths_found(settings: bool, apis: bool, names: &[&str]) -> Vec<String> {
        let (file, _) = load::parse(Path::new("settings.yaml"), PATHS).expect("parses");
        let flags = Flags { settings, apis };
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        match refuse_paths(
            Path::new("settings.yaml"),
            &file,
            flags,
            &Selection::of(&names),
        ) {
            Ok(()) => Vec::new(),
            Err(invalid) => invalid.to_string().lines().map(str::to_owned).collect(),
        }
    }

    #[test]
    fn a_path_is_refused_only_where_the_downstream_takes_its_entry() {
        let both = paths_found(true, true, &[]);
        assert_eq!(both.len(), 2, "{both:#?}");
        assert!(
            both[0].starts_with("settings.yaml:4:") && both[0].contains("auth server `idp`: localIntrospectionConfig.trustStoreAlias names a path of this host"),
            "{both:#?}"
        );
        assert!(
            both[1].starts_with("settings.yaml:7:")
                && both[1].contains("API `A`: upstream.ca_bundle names a path of this host"),
            "{both:#?}"
        );
        assert_eq!(paths_found(false, true, &[]).len(), 1, "no settings taken");
        assert_eq!(paths_found(true, false, &[]).len(), 1, "no APIs taken");
        assert_eq!(paths_found(false, true, &["B"]), Vec::<String>::new());
        assert_eq!(paths_found(false, false, &[]), Vec::<String>::new());
    }

    #[test]
    fn a_document_stripped_of_its_paths_names_none() {
        let (mut file, _) = load::parse(Path::new("settings.yaml"), PATHS).expect("parses");
        strip_paths(&mut file);
        let everything = Flags {
            settings: true,
            apis: true,
        };
        let path = Path::new("settings.yaml");
        assert!(refuse_paths(path, &file, everything, &Selection::All).is_ok());
    }
}
