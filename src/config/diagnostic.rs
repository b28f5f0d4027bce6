//! Findings about a configuration: where (file, line, column), what is
//! wrong, and what is allowed. Every rule reports; nothing stops at the first.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_saphyr::Location;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// Where a value came from: a place in a file, or an environment override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File {
        path: Arc<Path>,
        line: u64,
        column: u64,
    },
    Env(String),
    /// A place outside any file (a downloaded document, a default).
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub origin: Origin,
    pub message: String,
    pub allowed: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::File { path, line, column } => {
                write!(f, "{}:{line}:{column}: ", path.display())?
            }
            Origin::Env(name) => write!(f, "{name}: ")?,
            Origin::Other(what) => write!(f, "{what}: ")?,
        }
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{severity}: {}", self.message)?;
        if let Some(allowed) = &self.allowed {
            write!(f, "; allowed: {allowed}")?;
        }
        Ok(())
    }
}

/// Collects the diagnostics of one file.
#[derive(Debug)]
pub struct Report {
    pub path: Arc<Path>,
    pub findings: Vec<Diagnostic>,
}

impl Report {
    pub fn new(path: &Path) -> Report {
        Report {
            path: Arc::from(path),
            findings: Vec::new(),
        }
    }

    pub fn origin(&self, at: Location) -> Origin {
        if at == Location::UNKNOWN {
            return Origin::Other(self.path.display().to_string());
        }
        Origin::File {
            path: self.path.clone(),
            line: at.line(),
            column: at.column(),
        }
    }

    pub fn error(&mut self, at: Location, message: impl Into<String>, allowed: impl Into<String>) {
        let allowed = allowed.into();
        self.findings.push(Diagnostic {
            severity: Severity::Error,
            origin: self.origin(at),
            message: message.into(),
            allowed: (!allowed.is_empty()).then_some(allowed),
        });
    }

    pub fn warning(&mut self, at: Location, message: impl Into<String>) {
        self.findings.push(Diagnostic {
            severity: Severity::Warning,
            origin: self.origin(at),
            message: message.into(),
            allowed: None,
        });
    }

    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.findings.push(diagnostic);
    }

    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|d| d.severity == Severity::Error)
    }
}

/// Why a configuration could not be loaded: the findings, errors first.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render(.findings))]
pub struct Invalid {
    pub findings: Vec<Diagnostic>,
    /// The files the refused configuration names, as far as it was
    /// compiled (the configuration file first; empty when it was not):
    /// one of them written may be what makes it valid.
    pub files: Vec<PathBuf>,
}

fn render(findings: &[Diagnostic]) -> String {
    findings
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl Invalid {
    pub fn single(path: &Path, message: impl Into<String>, allowed: impl Into<String>) -> Invalid {
        let mut report = Report::new(path);
        report.error(Location::UNKNOWN, message, allowed);
        report.findings[0].origin = Origin::Other(PathBuf::from(path).display().to_string());
        Invalid::new(report.findings)
    }

    /// The findings of a configuration that names no file (or was not read).
    pub fn new(findings: Vec<Diagnostic>) -> Invalid {
        Invalid {
            findings,
            files: Vec::new(),
        }
    }
}
