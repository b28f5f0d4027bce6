//! The configuration loader (`config::load_text`: YAML → raw model →
//! resolved, checked and compiled snapshot), from arbitrary text. Nothing
//! is written; relative paths point into a directory that does not exist.
//! Invariants: no panic, no unbounded work; a refusal carries at least one
//! error, an accepted file none.
use std::path::Path;

// The loader under test: its paths in this target.
use microgateway::config::{load, load_text, Env, Severity};

/// Where the text claims to come from: relative paths resolve under it.
const NOWHERE: &str = "/nonexistent-microgateway-fuzz/microgateway.yaml";

/// Text that could name a special file: the loader reads at most 4 MiB of
/// any file (`/dev/zero` costs that much per run), but opening a FIFO under
/// `/run` or `/proc/self/fd/0` can wait for ever, and the loader trusts the
/// paths its operator names, so the compile step is skipped for such text. (A
/// relative path cannot reach them: it starts in a directory that does not
/// exist. Escapes could spell them: text with a backslash is skipped too.)
fn may_name_special_file(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    ["/dev", "/proc", "/sys", "/run", "\\", "!!binary"]
        .iter()
        .any(|word| lower.contains(word))
}

/// Checks one input; panics where an invariant does not hold.
pub fn input(text: &str) {
    let path = Path::new(NOWHERE);
    let parsed = load::parse(path, text);
    if let Err(invalid) = &parsed {
        assert!(!invalid.findings.is_empty(), "refused without a reason");
    }
    if may_name_special_file(text) {
        return;
    }
    let mut env = Env::new();
    env.insert("SECRET".into(), "fuzz-secret".into());
    match load_text(path, text, &env, 1) {
        Ok(loaded) => assert!(
            loaded
                .warnings
                .iter()
                .all(|w| w.severity != Severity::Error),
            "accepted with an error"
        ),
        Err(invalid) => assert!(
            invalid
                .findings
                .iter()
                .any(|d| d.severity == Severity::Error),
            "refused without an error: {:?}",
            invalid.findings
        ),
    }
}
