//! What the files of a configuration held when they were read: each file's
//! path and a SHA-256 of its bytes (none when it could not be read, so a
//! missing file differs from an empty one). The loader notes every file
//! as it reads it, the configuration text included, and the snapshot
//! keeps them ([`Snapshot::contents`](super::Snapshot)); the file watcher
//! takes its readings in the same form, so whether the files on disk are
//! what the serving snapshot was compiled from is one comparison
//! ([`Contents::holds`]), whoever read them and whenever. Only digests
//! are kept, and `Debug` shows none of them: a digest of a short secret
//! is as good as the secret to whoever tries the candidates.

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// One file as read.
#[derive(Clone, PartialEq, Eq)]
pub struct Content {
    pub path: PathBuf,
    /// SHA-256 of the bytes read; `None` when the file could not be read.
    digest: Option<[u8; 32]>,
}

impl Content {
    /// `path` read as `bytes` (`None`: it could not be read).
    pub fn of(path: &Path, bytes: Option<&[u8]>) -> Content {
        Content {
            path: path.to_path_buf(),
            digest: bytes.map(|bytes| Sha256::digest(bytes).into()),
        }
    }
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let read = if self.digest.is_some() {
            "read"
        } else {
            "unreadable"
        };
        write!(f, "{} ({read})", self.path.display())
    }
}

/// The files of one reading or one compilation, in the order read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contents(Vec<Content>);

impl From<Content> for Contents {
    fn from(content: Content) -> Contents {
        Contents(vec![content])
    }
}

impl Contents {
    /// Notes one file as read. A file read twice with different bytes
    /// (written between two reads of one compilation) is kept twice: no
    /// reading holds both, so what was compiled from it is never taken as
    /// what the file holds.
    pub fn note(&mut self, content: Content) {
        if !self.0.contains(&content) {
            self.0.push(content);
        }
    }

    /// Notes what a file holds after the runtime wrote it for this
    /// compilation (a signing key generated where the file was missing):
    /// what was read of it before is no longer what serves.
    pub fn renote(&mut self, content: Content) {
        self.0.retain(|noted| noted.path != content.path);
        self.0.push(content);
    }

    /// Whether `path` was read (readable or not).
    pub fn covers(&self, path: &Path) -> bool {
        self.0.iter().any(|content| content.path == path)
    }

    /// Whether this reading holds what `earlier` found: every file of
    /// `earlier` read here, with the same bytes (or unreadable in both).
    pub fn holds(&self, earlier: &Contents) -> bool {
        earlier.0.iter().all(|content| self.0.contains(content))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(files: &[(&str, Option<&str>)]) -> Contents {
        let mut contents = Contents::default();
        for (path, bytes) in files {
            contents.note(Content::of(Path::new(path), bytes.map(str::as_bytes)));
        }
        contents
    }

    #[test]
    fn a_reading_holds_what_it_found_again_and_more_files() {
        let compiled = contents(&[("config", Some("a")), ("secret", Some("s"))]);
        let now = contents(&[("config", Some("a")), ("secret", Some("s")), ("x", None)]);
        assert!(now.holds(&compiled));
        assert!(!compiled.holds(&now));
        assert!(now.covers(Path::new("x")));
        assert!(!compiled.covers(Path::new("x")));
    }

    #[test]
    fn changed_missing_and_empty_files_differ() {
        let compiled = contents(&[("config", Some("a")), ("secret", Some(""))]);
        for now in [
            contents(&[("config", Some("b")), ("secret", Some(""))]),
            contents(&[("config", Some("a")), ("secret", None)]),
            contents(&[("config", Some("a"))]),
        ] {
            assert!(!now.holds(&compiled), "{now:?}");
        }
    }

    #[test]
    fn a_file_read_twice_with_different_bytes_is_held_by_no_reading() {
        let compiled = contents(&[
            ("ca", Some("one")),
            ("ca", Some("two")),
            ("ca", Some("one")),
        ]);
        assert_eq!(compiled.0.len(), 2);
        assert!(!contents(&[("ca", Some("one"))]).holds(&compiled));
        assert!(!contents(&[("ca", Some("two"))]).holds(&compiled));
    }

    #[test]
    fn a_renoted_file_is_held_as_written() {
        let mut compiled = contents(&[("config", Some("a")), ("key", None)]);
        compiled.renote(Content::of(Path::new("key"), Some(b"generated")));
        assert!(contents(&[("config", Some("a")), ("key", Some("generated"))]).holds(&compiled));
        assert!(!contents(&[("config", Some("a")), ("key", None)]).holds(&compiled));
    }

    #[test]
    fn debug_shows_no_digest() {
        let shown = format!("{:?}", contents(&[("pw", Some("hunter2"))]));
        let digest = Sha256::digest(b"hunter2");
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!shown.contains(&hex[..8]), "{shown}");
        assert!(shown.contains("pw (read)"), "{shown}");
    }
}
