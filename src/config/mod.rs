//! Configuration: raw YAML (`raw`, read by `load`) → interpreted values
//! (`resolve`) → checked and compiled (`compile`, `api_compile`,
//! `authz_compile`) into an immutable [`Snapshot`] with a generation number.
//! Every finding is a [`Diagnostic`] with file, line and column. Never
//! touches the network; reads only the files the configuration names.

pub mod api_compile;
pub mod authz;
pub mod authz_compile;
pub mod compile;
pub mod diagnostic;
pub mod load;
pub mod raw;
pub mod resolve;
pub mod secret;
pub mod snapshot;
pub mod template;

use std::path::Path;

pub use diagnostic::{Diagnostic, Invalid, Severity};
pub use resolve::Env;
pub use secret::Secret;
pub use snapshot::Snapshot;

/// A compiled snapshot and the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    pub snapshot: Snapshot,
    pub warnings: Vec<Diagnostic>,
}

/// Reads, checks and compiles the configuration at `path` with the
/// environment `env` (for `MCGW_` overrides and `${env:}` secrets).
pub fn load(path: &Path, env: &Env, generation: u64) -> Result<Loaded, Invalid> {
    let (mut file, mut report) = load::read(path)?;
    build(&mut file, &mut report, env, path, generation)
}

/// Like [`load`], for text that did not come from `path` itself (a download).
pub fn load_text(path: &Path, text: &str, env: &Env, generation: u64) -> Result<Loaded, Invalid> {
    let (mut file, mut report) = load::parse(path, text)?;
    build(&mut file, &mut report, env, path, generation)
}

fn build(
    file: &mut raw::File,
    report: &mut diagnostic::Report,
    env: &Env,
    path: &Path,
    generation: u64,
) -> Result<Loaded, Invalid> {
    for unknown in resolve::apply_overrides(file, env) {
        report.push(Diagnostic {
            severity: Severity::Warning,
            origin: diagnostic::Origin::Env(unknown),
            message: "this MCGW_ variable matches no setting; ignored".into(),
            allowed: None,
        });
    }
    let snapshot = compile::compile(file, report, env, path, generation);
    let mut findings = std::mem::take(&mut report.findings);
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
        Some(snapshot) => Ok(Loaded {
            snapshot,
            warnings: findings,
        }),
        None => Err(Invalid { findings }),
    }
}
