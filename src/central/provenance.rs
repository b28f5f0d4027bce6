//! What a cached download was downloaded for: the central's URL (user
//! information masked, so the record holds no secret) and the APIs
//! selected. The record is kept beside the cache file, in
//! `<cache_file>.source` (JSON), since the cache file holds the document
//! exactly as the central sent it (its SHA-256 is the ETag). A cache whose
//! record is missing or names another central or selection is not used:
//! it would serve settings the file does not ask for.
//!
//! Invariant: a record on disk never names a cache written for something
//! else. When the record changes, the old one is removed before the cache
//! is replaced and the new one written after, so a crash in between leaves
//! a cache without a record (refused), never one under a wrong record.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{shown_url, write_private};
use crate::config::snapshot::ApiGateway;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The central's URL as it may be shown (no trailing `/`).
    pub url: String,
    /// The API names selected, sorted; empty = all.
    pub apis: Vec<String>,
}

impl Provenance {
    /// What `settings` download.
    pub fn of(settings: &ApiGateway) -> Provenance {
        let mut apis = settings.apis.clone();
        apis.sort();
        apis.dedup();
        Provenance {
            url: shown_url(settings.url.trim_end_matches('/')),
            apis,
        }
    }
}

impl fmt::Display for Provenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} with ", self.url)?;
        if self.apis.is_empty() {
            f.write_str("every API")
        } else {
            write!(f, "the APIs {}", self.apis.join(", "))
        }
    }
}

/// Why a cache file is not used.
#[derive(Debug, thiserror::Error)]
pub enum Mismatch {
    #[error(
        "{} does not say which central gateway and APIs it was downloaded for ({} is missing or unreadable)",
        cache.display(),
        record.display()
    )]
    Unrecorded { cache: PathBuf, record: PathBuf },
    #[error("{} was downloaded from {recorded}, and api_gateway downloads from {wanted}", cache.display())]
    Other {
        cache: PathBuf,
        recorded: Provenance,
        wanted: Provenance,
    },
}

/// Where the record of the cache file `cache` is kept.
pub fn record_path(cache: &Path) -> PathBuf {
    let mut path = cache.as_os_str().to_owned();
    path.push(".source");
    PathBuf::from(path)
}

/// The record of `cache`, when there is a readable one.
fn read(cache: &Path) -> Option<Provenance> {
    let text = crate::config::load::read_own_text(&record_path(cache)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether the cache file of `settings` was downloaded for them.
pub fn check(settings: &ApiGateway) -> Result<(), Mismatch> {
    let cache = settings.cache_file.clone();
    let wanted = Provenance::of(settings);
    match read(&cache) {
        None => Err(Mismatch::Unrecorded {
            record: record_path(&cache),
            cache,
        }),
        Some(recorded) if recorded != wanted => Err(Mismatch::Other {
            cache,
            recorded,
            wanted,
        }),
        Some(_) => Ok(()),
    }
}

/// Writes `text` to the cache file of `settings` (mode 0600, atomically)
/// with the record of what it was downloaded for.
pub fn write(settings: &ApiGateway, text: &str) -> std::io::Result<()> {
    let cache = &settings.cache_file;
    let record = record_path(cache);
    let wanted = Provenance::of(settings);
    let unchanged = read(cache).as_ref() == Some(&wanted);
    if !unchanged {
        match std::fs::remove_file(&record) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    write_private(cache, text)?;
    if !unchanged {
        let json = serde_json::to_string(&wanted).map_err(std::io::Error::other)?;
        write_private(&record, &json)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings(url: &str, apis: &[&str], cache: &Path) -> ApiGateway {
        ApiGateway {
            url: url.into(),
            user: "fleet".into(),
            password: crate::config::Secret::new("p"),
            download_settings: true,
            download_apis: true,
            apis: apis.iter().map(|a| (*a).to_owned()).collect(),
            poll_interval: Duration::from_secs(1),
            cache_file: cache.to_path_buf(),
        }
    }

    #[test]
    fn a_cache_is_used_only_for_the_central_and_apis_it_was_downloaded_for() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = dir.path().join("settings.yaml");
        let catalog = settings("https://fleet:pw-1@central:9485/", &["B", "A"], &cache);
        write(&catalog, "document").expect("write");
        assert_eq!(std::fs::read_to_string(&cache).expect("cache"), "document");
        let record = std::fs::read_to_string(record_path(&cache)).expect("record");
        assert!(!record.contains("pw-1"), "{record}");

        // Same central and selection: the password, a slash and the order do not matter.
        assert!(check(&settings(
            "https://fleet:pw-2@central:9485",
            &["A", "B"],
            &cache
        ))
        .is_ok());
        let other_apis = check(&settings("https://central:9485", &["A"], &cache));
        assert!(matches!(other_apis, Err(Mismatch::Other { .. })));
        let other_central = check(&settings("https://elsewhere:9485", &["A", "B"], &cache));
        let message = other_central.expect_err("another central").to_string();
        assert!(
            message.ends_with(
                "was downloaded from https://****@central:9485 with the APIs A, B, \
                 and api_gateway downloads from https://elsewhere:9485 with the APIs A, B"
            ),
            "{message}"
        );

        // Written for another selection: the record follows the cache.
        let all = settings("https://central:9485", &[], &cache);
        write(&all, "all").expect("write");
        assert!(check(&all).is_ok());
        assert!(check(&catalog).is_err());
    }

    #[test]
    fn a_cache_without_a_record_is_not_used() {
        let dir = tempfile::tempdir().expect("dir");
        let cache = dir.path().join("settings.yaml");
        std::fs::write(&cache, "document").expect("write");
        let error = check(&settings("https://central", &[], &cache)).expect_err("no record");
        assert!(matches!(error, Mismatch::Unrecorded { .. }));
    }
}
