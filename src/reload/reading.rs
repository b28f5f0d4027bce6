//! What the files the watcher follows hold now, and whether that calls
//! for a reload. A reading takes each file in the form the loader notes
//! what it read ([`Contents`]), so it is compared with what the serving
//! snapshot was compiled from, whoever asked for that compilation; a
//! refused reload is remembered by the reading it was made from, apart
//! from what serves, so that it is not tried again until the files change.

use std::path::{Path, PathBuf};

use crate::config::contents::{Content, Contents};
use crate::config::Snapshot;

/// One reading of the watched files.
pub(super) struct Reading {
    /// What each file held, in the form the loader notes what it read.
    pub(super) contents: Contents,
    /// The content of the first file, the configuration, if readable.
    pub(super) config: Option<Vec<u8>>,
}

/// Reads each of `files` once (the configuration file first).
pub(super) fn read_files(files: &[PathBuf]) -> Reading {
    let mut contents = Contents::default();
    let mut config = None;
    for (index, file) in files.iter().enumerate() {
        let content = read_bounded(file).ok();
        contents.note(Content::of(file, content.as_deref()));
        if index == 0 {
            config = content;
        }
    }
    Reading { contents, config }
}

/// Reads at most one byte more than the loader accepts (enough for it to
/// say the file is too large).
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut content = Vec::new();
    crate::config::load::open_regular(path)?
        .take(crate::config::load::MAX_FILE_BYTES + 1)
        .read_to_end(&mut content)?;
    Ok(content)
}

/// A reload of the file that was refused.
pub(super) struct Refused {
    /// The settled reading it compiled: not tried again while the files
    /// hold it. `None` when the configuration names files that reading did
    /// not cover (it names files the serving one does not): the next
    /// change tries it again, reading them all.
    pub(super) reading: Option<Contents>,
    /// The files the refused configuration names, watched too.
    pub(super) files: Vec<PathBuf>,
}

impl Refused {
    pub(super) fn new(reading: Contents, files: Vec<PathBuf>) -> Refused {
        let covered = files.iter().all(|file| reading.covers(file));
        Refused {
            reading: covered.then_some(reading),
            files,
        }
    }
}

/// Whether the files, read as `reading`, call for a reload: not when they
/// hold what the last refused reload was made from, nor, while no refusal
/// stands, what the serving snapshot was compiled from. While one stands,
/// anything else is reloaded, even the serving snapshot's content (an edit
/// reverted), so that the refusal ends.
pub(super) fn calls_for_reload(
    reading: &Contents,
    serving: &Snapshot,
    refused: Option<&Refused>,
) -> bool {
    match refused {
        Some(refused) => !refused
            .reading
            .as_ref()
            .is_some_and(|refused| reading.holds(refused)),
        None => !reading.holds(&serving.contents),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reading_tells_missing_from_empty_and_follows_content() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("secret");
        let read = |file: &PathBuf| read_files(std::slice::from_ref(file)).contents;
        let missing = read(&file);
        std::fs::write(&file, "").expect("write");
        let empty = read(&file);
        std::fs::write(&file, "a").expect("write");
        let a = read(&file);
        assert_ne!(missing, empty);
        assert_ne!(empty, a);
        assert_eq!(a, read(&file));
        assert_eq!(
            read_files(&[file.clone(), dir.path().join("other")]).config,
            Some(b"a".to_vec())
        );
    }

    /// A configuration with a `${file:}` secret, in a directory of its own.
    struct Files {
        dir: tempfile::TempDir,
        config: PathBuf,
    }

    impl Files {
        fn new(mode: &str, secret: &str) -> Files {
            let dir = tempfile::tempdir().expect("temp dir");
            let config = dir.path().join("microgateway.yaml");
            let files = Files { dir, config };
            files.write_config(mode);
            files.write_secret(secret);
            files
        }

        fn write_config(&self, mode: &str) {
            let yaml = format!(
                "security_settings:\n  aliases:\n  - {{ name: backend, type: basic, username: svc, password: \"${{file:backend.secret}}\" }}\n\
                 apis:\n- name: echo\n  version: \"1\"\n  base_path: /echo\n  upstream: {{ echo: true }}\n  \
                 authentication: {{ type: none }}\n  resources: [\"GET /ping\"]\n  policies:\n    \
                 outbound_auth: {{ alias: backend }}\n    request_transformation:\n      set_headers: {{ X-Mode: \"{mode}\" }}\n"
            );
            std::fs::write(&self.config, yaml).expect("write config");
        }

        fn write_secret(&self, secret: &str) {
            std::fs::write(self.dir.path().join("backend.secret"), secret).expect("write secret");
        }

        /// Compiled from the files as they are now, as a reload from any
        /// source compiles them.
        fn load(&self) -> Snapshot {
            crate::config::load(&self.config, &crate::config::Env::new(), 2)
                .expect("valid configuration")
                .snapshot
        }

        /// What the watcher reads for `serving`: the configuration file
        /// and every file the snapshot names.
        fn read(&self, serving: &Snapshot) -> Contents {
            let mut files = vec![self.config.clone()];
            files.extend(serving.files.iter().filter(|f| **f != self.config).cloned());
            read_files(&files).contents
        }
    }

    #[test]
    fn files_that_hold_what_the_serving_snapshot_read_call_for_no_reload() {
        let files = Files::new("alpha", "one\n");
        let serving = files.load();
        assert!(!calls_for_reload(&files.read(&serving), &serving, None));
        files.write_config("alpha");
        files.write_secret("one\n");
        assert!(!calls_for_reload(&files.read(&serving), &serving, None));
    }

    /// Another source (SIGHUP, REST) reloaded and read `alpha`; the file
    /// was written `beta` before the watcher looked. What the watcher
    /// reads then is compared with what serves, so `beta` is loaded.
    #[test]
    fn a_file_written_after_another_reload_read_it_calls_for_a_reload() {
        let files = Files::new("alpha", "one\n");
        let serving = files.load();
        files.write_config("beta");
        assert!(calls_for_reload(&files.read(&serving), &serving, None));
        files.write_config("alpha");
        assert!(!calls_for_reload(&files.read(&serving), &serving, None));
        files.write_secret("two\n");
        assert!(calls_for_reload(&files.read(&serving), &serving, None));
    }

    /// The watcher settled on the files, then the secret was written
    /// before the compilation read it: the snapshot holds the new secret,
    /// and the files are what serves.
    #[test]
    fn a_secret_written_between_the_settle_and_the_compile_is_what_serves() {
        let files = Files::new("alpha", "one\n");
        let settled = files.read(&files.load());
        files.write_secret("two\n");
        let serving = files.load();
        assert!(!files.read(&serving).holds(&settled));
        assert!(!calls_for_reload(&files.read(&serving), &serving, None));
    }

    #[test]
    fn a_refused_reading_is_not_tried_again_until_the_files_change() {
        let files = Files::new("alpha", "one\n");
        let serving = files.load();
        std::fs::write(&files.config, "apis: [unclosed\n").expect("write config");
        let refused = Refused::new(files.read(&serving), vec![files.config.clone()]);
        let reading = files.read(&serving);
        assert!(!calls_for_reload(&reading, &serving, Some(&refused)));
        files.write_config("gamma");
        assert!(calls_for_reload(
            &files.read(&serving),
            &serving,
            Some(&refused)
        ));
        // Reverted: reloaded again, so that the refusal ends.
        files.write_config("alpha");
        assert!(calls_for_reload(
            &files.read(&serving),
            &serving,
            Some(&refused)
        ));
    }

    /// Refused for a secret file the serving configuration does not name:
    /// the reading it was refused on did not cover that file, so the
    /// next change (the file written at last) tries it again.
    #[test]
    fn a_refusal_naming_files_its_reading_did_not_cover_is_tried_again() {
        let files = Files::new("alpha", "one\n");
        let serving = files.load();
        let late = files.dir.path().join("late.secret");
        let refused = Refused::new(
            files.read(&serving),
            vec![files.config.clone(), late.clone()],
        );
        std::fs::write(&late, "two\n").expect("write secret");
        let mut now = files.read(&serving);
        now.note(Content::of(&late, Some(b"two\n")));
        assert!(calls_for_reload(&now, &serving, Some(&refused)));
        let again = Refused::new(now.clone(), vec![files.config.clone(), late]);
        assert!(!calls_for_reload(&now, &serving, Some(&again)));
    }
}
