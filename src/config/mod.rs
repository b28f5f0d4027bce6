//! Configuration: raw YAML (`raw`, read by `load`, described by `schema`) → interpreted values
//! (`resolve`) → checked and compiled (`compile` drives `listener_compile`,
//! `security_compile`, `application_compile`, `api_compile` (with
//! `authentication_compile`, `cors_compile`, `response_compile` and
//! `throttle_compile`), `authz_compile`, `fleet_compile`, all
//! sharing `context`, which imports none of them and notes what each file
//! read held in `contents`) into
//! an immutable [`Snapshot`] with a generation number.
//! `signing_key` parses the authorization server's key for both
//! `authz_compile` and the server itself.
//! Every finding is a [`Diagnostic`] with file, line and column. Never
//! touches the network; reads only the files the configuration names.

pub mod api_compile;
pub mod application_compile;
mod audience;
pub mod authentication_compile;
pub mod authz;
pub mod authz_compile;
pub mod ca_bundle;
pub mod compile;
pub mod contents;
pub mod context;
pub mod cors_compile;
pub mod diagnostic;
pub mod fleet_compile;
pub mod listener_compile;
pub mod load;
pub mod nesting;
mod own_tokens;
pub mod password_hashes;
pub mod plain_http;
pub mod raw;
pub mod resolve;
pub mod response_compile;
pub mod schema;
pub mod secret;
pub mod security_compile;
pub mod signing_key;
pub mod snapshot;
pub mod template;
pub mod throttle_compile;
pub mod upstream_compile;

use std::path::Path;
use std::sync::Arc;

pub use diagnostic::{Diagnostic, Invalid, Severity};
pub use resolve::Env;
pub use secret::Secret;
pub use snapshot::Snapshot;

/// A compiled snapshot and the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    pub snapshot: Snapshot,
    pub warnings: Vec<Diagnostic>,
    /// Each `MCGW_` variable applied, with the setting it set
    /// (`tls.client_auth`): shown by `check` and logged at start, since
    /// the file alone no longer says what serves.
    pub overrides: Vec<(String, String)>,
}

/// Reads, checks and compiles the configuration at `path` with the
/// environment `env` (for `MCGW_` overrides and `${env:}` secrets).
pub fn load(path: &Path, env: &Env, generation: u64) -> Result<Loaded, Invalid> {
    load_with(path, env, generation, |_| {})
}

/// Like [`load()`], with `edit` applied to the raw file after the `MCGW_`
/// overrides and before anything is checked (a downstream merges the
/// document it downloaded there).
pub fn load_with(
    path: &Path,
    env: &Env,
    generation: u64,
    edit: impl FnOnce(&mut raw::File),
) -> Result<Loaded, Invalid> {
    let text = load::read_text(path)?;
    load_text_with(path, &text, env, generation, edit)
}

/// Like [`load()`], for text that did not come from `path` itself (a download,
/// or what the file watcher saw settle).
pub fn load_text(path: &Path, text: &str, env: &Env, generation: u64) -> Result<Loaded, Invalid> {
    load_text_with(path, text, env, generation, |_| {})
}

/// `yaml` compiled as a first snapshot, for the tests of what a snapshot
/// drives.
#[cfg(test)]
pub fn first_snapshot(yaml: &str) -> Snapshot {
    load_text(Path::new("microgateway.yaml"), yaml, &Env::new(), 1)
        .expect("valid configuration")
        .snapshot
}

/// Like [`load_with`], for text already read.
pub fn load_text_with(
    path: &Path,
    text: &str,
    env: &Env,
    generation: u64,
    edit: impl FnOnce(&mut raw::File),
) -> Result<Loaded, Invalid> {
    let input = Input {
        path,
        text,
        env,
        generation,
    };
    build(input, edit)
}

/// The `api_gateway:` section of the file at `path` (after the `MCGW_`
/// overrides), read before the rest is compiled: a downstream needs it to
/// download the settings the rest may refer to.
pub fn api_gateway(path: &Path, env: &Env) -> Result<Option<snapshot::ApiGateway>, Invalid> {
    let (mut file, mut report) = load::read(path)?;
    resolve::apply_overrides(&mut file, env);
    let settings = fleet_compile::api_gateway_only(&file, &mut report, env, path);
    if report.has_errors() {
        let mut findings = report.findings;
        findings.retain(|d| d.severity == Severity::Error);
        return Err(Invalid::new(findings));
    }
    Ok(settings)
}

/// What one compilation reads.
struct Input<'a> {
    /// Names the text in diagnostics; relative paths start at its directory.
    path: &'a Path,
    text: &'a str,
    env: &'a Env,
    generation: u64,
}

fn build(input: Input, edit: impl FnOnce(&mut raw::File)) -> Result<Loaded, Invalid> {
    let Input {
        path,
        text,
        env,
        generation,
    } = input;
    let (mut file, mut report) = load::parse(path, text)?;
    let overrides = resolve::apply_overrides(&mut file, env);
    edit(&mut file);
    for unknown in overrides.unknown {
        report.push(Diagnostic {
            severity: Severity::Warning,
            origin: diagnostic::Origin::Env(unknown),
            message: "this MCGW_ variable matches no setting; ignored".into(),
            allowed: None,
        });
    }
    for (variable, section) in overrides.without_section {
        report.push(Diagnostic {
            severity: Severity::Warning,
            origin: diagnostic::Origin::Env(variable),
            message: format!(
                "sets a setting of `{section}:`, which this configuration does not have (the section turns its role on; a variable never does); ignored"
            ),
            allowed: None,
        });
    }
    let snapshot = compile::compile(&file, &mut report, env, path, generation);
    let mut findings = std::mem::take(&mut report.findings);
    // A value set by an `MCGW_` variable has no place in the file: what is
    // found about it is reported as the variable's. Such a value carries
    // no location (the YAML parser's type cannot name a variable), so it
    // is known by the setting path its findings start with.
    for finding in &mut findings {
        if !matches!(finding.origin, diagnostic::Origin::Other(_)) {
            continue;
        }
        // Named by its path (`timeouts.idle: …`) or, as the compile of a
        // section names its keys, by its last segment (`download_apis: …`
        // for `api_gateway.download_apis`).
        let named = |setting: &str| {
            finding
                .message
                .strip_prefix(setting)
                .is_some_and(|rest| rest.starts_with(':'))
        };
        let by = overrides.applied.iter().find(|(_, setting)| {
            named(setting) || setting.rsplit_once('.').is_some_and(|(_, key)| named(key))
        });
        if let Some((variable, _)) = by {
            finding.origin = diagnostic::Origin::Env(variable.clone());
        }
    }
    // Errors first, each group in file order, so the output reads like the file.
    findings.sort_by_key(|d| {
        let place = match &d.origin {
            diagnostic::Origin::Other(_) => (0, 0, 0),
            diagnostic::Origin::File { line, column, .. } => (1, *line, *column),
            diagnostic::Origin::Env(_) => (2, 0, 0),
        };
        (d.severity != Severity::Error, place)
    });
    match snapshot {
        Ok(mut snapshot) => {
            snapshot
                .contents
                .note(contents::Content::of(path, Some(text.as_bytes())));
            snapshot.source_text = Arc::from(text);
            Ok(Loaded {
                snapshot,
                warnings: findings,
                overrides: overrides.applied,
            })
        }
        Err(files) => Err(Invalid { findings, files }),
    }
}
