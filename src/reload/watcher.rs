//! Turns changes of the configuration file, and of every file it names
//! (TLS material, templates, `${file:}` secrets), into reloads.
//!
//! One `notify` watcher per gateway watches the *directories* of those files,
//! not the files: editors replace a file by renaming a temporary one over
//! it, and Kubernetes updates a ConfigMap by renaming a new `..data` symlink
//! over the old one, and a watch on the file itself would be lost either way.
//! Events are filtered by file name (plus `..data`), debounced until the
//! directory has been quiet for [`QUIET`], and then the content of all the
//! files is hashed until two readings [`SETTLE`] apart agree. The settled
//! reading is compared with what the *serving snapshot* was compiled from
//! (`Snapshot::contents`, noted by the loader as it read each file, the
//! configuration text included), never with what the watcher itself read
//! last: a file written after a reload read it, whoever asked for that
//! reload (the watcher, SIGHUP, REST, a central's download), is a change,
//! however soon after the reload it was written. So a save without
//! changes does not create a generation, while a changed certificate or
//! secret does even when the configuration text is the same. The
//! configuration compiled is the text of the settled reading, never a
//! fresh read that could catch the next writer halfway.
//!
//! A watch follows the directory its path named when it was placed, not
//! the path: a directory replaced under it (`rm -r conf && mv conf.new
//! conf`, a `current` symlink swapped to another release, a volume's
//! `conf -> ..data/conf` swapped with `..data`) would leave it watching
//! what is gone. Every second, and after each change, each watched path
//! is compared with the directory (device and inode) its watch was placed
//! on; one that differs is watched again and the files compared at once.
//! A directory that is not there is tried again every second.
//!
//! After a reload from another source the watcher follows the files the
//! new snapshot names and compares them with it at once: a file changed
//! between that reload's read and the watch on its directory sends no
//! event. It does the same when it starts, for a change made while the
//! first snapshot was compiled.
//!
//! A refused configuration is not tried again while the files hold what it
//! was refused for (a refused reading is remembered apart from what
//! serves, and no snapshot is taken as compiled from it). It keeps the
//! files it names watched too (with those of the serving snapshot) until
//! the file is reloaded again: a secret or a certificate it names that is
//! written after it, as a Kubernetes Secret volume may be after its
//! ConfigMap, is the change that makes it valid, and is taken at once.
//!
//! A configuration file that is missing or empty is taken as a save in
//! progress (deleted then recreated, truncated then written) and waited for;
//! it is never loaded as an empty configuration. Reloads on demand (signal,
//! REST) still read the file as it is.
//!
//! The watcher runs on its own thread (reloading reads files and compiles),
//! never touches listeners, and stops when its [`Watcher`] is stopped or
//! dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};

use super::reading::{calls_for_reload, read_files, Reading, Refused};
use super::reloader::Reloader;
use super::swap::Source;
use crate::config::contents::Contents;

/// How long the watched directories must be quiet before the files are read.
pub const QUIET: Duration = Duration::from_millis(100);
/// Two readings this far apart must agree before the content counts.
pub const SETTLE: Duration = Duration::from_millis(50);
/// A burst that never goes quiet is read anyway after this long.
const MAX_DEBOUNCE: Duration = Duration::from_secs(2);
/// Readings that never agree are given up on after this many tries (the
/// next event starts over).
const MAX_SETTLE_TRIES: usize = 40;
/// How often an idle watcher looks for reloads from other sources (signal,
/// REST, central): they may name other files, and the files may have
/// changed since they were read.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// The name Kubernetes gives the symlink it swaps on a ConfigMap update.
const CONFIGMAP_DATA: &str = "..data";

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch the configuration files: {0}")]
    Notify(#[from] notify::Error),
    #[error("cannot start the configuration watcher: {0}")]
    Thread(std::io::Error),
}

enum Message {
    Changed(notify::Result<notify::Event>),
    Stop,
}

/// A running watcher; stopping or dropping it ends its thread.
pub struct Watcher {
    tx: Sender<Message>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Starts watching the files of the serving snapshot of `reloader`.
    pub fn spawn(reloader: Arc<Reloader>) -> Result<Watcher, WatchError> {
        let (tx, rx) = mpsc::channel();
        let events = tx.clone();
        let notify = notify::recommended_watcher(move |event| {
            let _ = events.send(Message::Changed(event));
        })?;
        // Reloading may start runtime tasks (key refreshes): run it inside
        // the runtime that started the gateway.
        let runtime = tokio::runtime::Handle::try_current().ok();
        let mut watch = Watch {
            generation: reloader.live.generation(),
            refused: None,
            reloader,
            notify,
            watched: BTreeMap::new(),
            unwatched: BTreeSet::new(),
            interest: BTreeSet::new(),
            rx,
        };
        watch.follow_files();
        let thread = std::thread::Builder::new()
            .name("config-watcher".into())
            .spawn(move || {
                let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
                // Watched from here on; changed since the snapshot was read?
                if watch.recheck().is_ok() {
                    watch.run();
                }
            })
            .map_err(WatchError::Thread)?;
        Ok(Watcher {
            tx,
            thread: Some(thread),
        })
    }

    /// Stops the watcher and waits for its thread (at most one reload).
    pub fn stop(mut self) {
        let _ = self.tx.send(Message::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.tx.send(Message::Stop);
    }
}

struct Stopped;

struct Watch {
    reloader: Arc<Reloader>,
    notify: RecommendedWatcher,
    rx: Receiver<Message>,
    /// Directories currently watched, each with the directory its path
    /// named when the watch was placed: the watch follows that directory,
    /// not the path.
    watched: BTreeMap<PathBuf, DirId>,
    /// Directories to watch that could not be (missing, unreadable):
    /// tried again on each tick, told once.
    unwatched: BTreeSet<PathBuf>,
    /// File names whose events matter.
    interest: BTreeSet<OsString>,
    /// Generation the watched set was computed for.
    generation: u64,
    /// The last reload of the file, when it was refused (none once one
    /// applies).
    refused: Option<Refused>,
}

impl Watch {
    fn run(mut self) {
        let mut followed = Instant::now();
        loop {
            let tick = IDLE_TICK.saturating_sub(followed.elapsed());
            let outcome = match self.rx.recv_timeout(tick) {
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(Message::Changed(event)) if self.matters(&event) => self.debounce(),
                Ok(Message::Changed(_)) if followed.elapsed() < IDLE_TICK => continue,
                Ok(Message::Changed(_)) | Err(RecvTimeoutError::Timeout) => Ok(()),
            };
            followed = Instant::now();
            if outcome.and_then(|()| self.follow()).is_err() {
                return;
            }
        }
    }

    fn matters(&self, event: &notify::Result<notify::Event>) -> bool {
        match event {
            Ok(event) => is_change(&event.kind) && touches(&self.interest, &event.paths),
            Err(error) => {
                // Lost events (queue overflow): the content hash decides.
                tracing::warn!(%error, "configuration watcher error; checking the files");
                true
            }
        }
    }

    /// Waits until the directories are quiet, then checks the content.
    fn debounce(&mut self) -> Result<(), Stopped> {
        let started = Instant::now();
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < QUIET && started.elapsed() < MAX_DEBOUNCE {
            match self
                .rx
                .recv_timeout(QUIET.saturating_sub(quiet_since.elapsed()))
            {
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return Err(Stopped),
                Ok(Message::Changed(event)) if self.matters(&event) => quiet_since = Instant::now(),
                Ok(Message::Changed(_)) | Err(RecvTimeoutError::Timeout) => {}
            }
        }
        self.check()
    }

    /// Reloads when the settled content is not what the serving snapshot
    /// was compiled from (nor what was last refused).
    fn check(&mut self) -> Result<(), Stopped> {
        let files = watched_files(&self.reloader, self.refused_files());
        let Some(reading) = self.settle(&files)? else {
            tracing::warn!("configuration files keep changing; waiting for the next change");
            return Ok(());
        };
        if !self.calls_for_reload(&reading.contents) {
            tracing::debug!("configuration files unchanged");
            return Ok(());
        }
        let text = match reading.config {
            Some(text) if !text.is_empty() => text,
            Some(_) | None => {
                tracing::info!(
                    config = %self.reloader.config_path.display(),
                    "configuration file is missing or empty; waiting for it to be written"
                );
                return Ok(());
            }
        };
        // Logged, counted and shown in status by `reload`; on error the last
        // good snapshot keeps serving. An applied snapshot holds what its
        // compilation read, which may be newer than this reading.
        let reloaded = match String::from_utf8(text) {
            Ok(text) => self.reloader.reload_text(Source::File, &text),
            // Read again by `reload`, which says what is wrong with the file.
            Err(_) => self.reloader.reload(Source::File),
        };
        self.refused = match reloaded {
            Ok(_) => None,
            Err(invalid) => Some(Refused::new(reading.contents, invalid.files)),
        };
        // The files it names are followed next (`follow`).
        Ok(())
    }

    /// Whether the files, read as `reading`, call for a reload (see
    /// [`calls_for_reload`]).
    fn calls_for_reload(&self, reading: &Contents) -> bool {
        calls_for_reload(
            reading,
            &self.reloader.live.snapshot(),
            self.refused.as_ref(),
        )
    }

    /// The files the configuration last refused names.
    fn refused_files(&self) -> &[PathBuf] {
        self.refused.as_ref().map_or(&[], |refused| &refused.files)
    }

    /// Reads `files` until two readings `SETTLE` apart agree.
    fn settle(&self, files: &[PathBuf]) -> Result<Option<Reading>, Stopped> {
        let mut previous = read_files(files);
        for _ in 0..MAX_SETTLE_TRIES {
            self.pause(SETTLE)?;
            let current = read_files(files);
            if current.contents == previous.contents {
                return Ok(Some(current));
            }
            previous = current;
        }
        Ok(None)
    }

    /// Sleeps for `duration`, but returns at once when asked to stop. Events
    /// that arrive meanwhile are covered by the readings around the pause.
    fn pause(&self, duration: Duration) -> Result<(), Stopped> {
        let until = Instant::now() + duration;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            match self.rx.recv_timeout(left) {
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return Err(Stopped),
                Ok(Message::Changed(_)) => {}
                Err(RecvTimeoutError::Timeout) => return Ok(()),
            }
        }
    }

    /// Follows the files the serving snapshot names (after a reload they
    /// may be others) and the directories replaced under their watches,
    /// and checks the files when either changed: a file changed before
    /// its directory was watched (again) sent no event.
    fn follow(&mut self) -> Result<(), Stopped> {
        let reloaded = self.reloader.live.generation() != self.generation;
        let placed = self.follow_files();
        if reloaded || placed {
            self.recheck()?;
        }
        Ok(())
    }

    /// Checks the files (settled) when one reading of them calls for a
    /// reload: what no event announced, such as a change made before the
    /// directory was watched, is found too.
    fn recheck(&mut self) -> Result<(), Stopped> {
        let reading = read_files(&watched_files(&self.reloader, self.refused_files()));
        if self.calls_for_reload(&reading.contents) {
            self.check()?;
        }
        Ok(())
    }

    /// Watches exactly the directories of the serving snapshot's files,
    /// and of those the configuration last refused names. A directory
    /// whose path now names another one (replaced, renamed over, a
    /// symlink on the way swapped) is watched again: its old watch sees
    /// nothing more. Says whether a watch was placed.
    fn follow_files(&mut self) -> bool {
        self.generation = self.reloader.live.generation();
        let (dirs, interest) = watch_set(&watched_files(&self.reloader, self.refused_files()));
        self.interest = interest;
        let gone: Vec<PathBuf> = (self.watched.keys())
            .filter(|dir| !dirs.contains(*dir))
            .cloned()
            .collect();
        for dir in gone {
            self.watched.remove(&dir);
            self.unwatch(&dir);
        }
        self.unwatched.retain(|dir| dirs.contains(dir));
        let mut placed = false;
        for dir in dirs {
            // Read before the watch is placed: a directory swapped in
            // between is then told by the next pass.
            let now = dir_id(&dir);
            let before = self.watched.get(&dir).copied();
            if now.is_some() && before == now {
                continue;
            }
            if before.is_some() {
                self.watched.remove(&dir);
                self.unwatch(&dir);
                tracing::debug!(dir = %dir.display(), "configuration directory replaced; watching it again");
            }
            let Some(id) = now else {
                self.not_watched(dir, "no such directory".to_owned());
                continue;
            };
            match self.notify.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    if self.unwatched.remove(&dir) {
                        tracing::info!(dir = %dir.display(), "configuration directory watched");
                    }
                    self.watched.insert(dir, id);
                    placed = true;
                }
                Err(error) => self.not_watched(dir, error.to_string()),
            }
        }
        placed
    }

    fn unwatch(&mut self, dir: &Path) {
        // A watch whose directory was removed is gone already.
        if let Err(error) = self.notify.unwatch(dir) {
            tracing::debug!(dir = %dir.display(), %error, "cannot unwatch");
        }
    }

    /// Notes a directory that cannot be watched now; told once, tried again
    /// on each tick.
    fn not_watched(&mut self, dir: PathBuf, error: String) {
        if !self.unwatched.contains(&dir) {
            tracing::warn!(
                dir = %dir.display(),
                %error,
                "cannot watch a configuration directory; trying again every second"
            );
            self.unwatched.insert(dir);
        }
    }
}

/// Which directory a path names: its device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DirId {
    device: u64,
    inode: u64,
}

/// The directory `dir` names now (through symlinks); none if it names no
/// directory.
#[cfg(unix)]
fn dir_id(dir: &Path) -> Option<DirId> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(dir).ok().filter(|m| m.is_dir())?;
    Some(DirId {
        device: metadata.dev(),
        inode: metadata.ino(),
    })
}

#[cfg(not(unix))]
fn dir_id(dir: &Path) -> Option<DirId> {
    // No inode to tell a replaced directory by: only whether one is there.
    let _ = std::fs::metadata(dir).ok().filter(|m| m.is_dir())?;
    Some(DirId {
        device: 0,
        inode: 0,
    })
}

/// The configuration file, every file the serving snapshot names, and
/// `refused` (those a refused configuration names).
fn watched_files(reloader: &Reloader, refused: &[PathBuf]) -> Vec<PathBuf> {
    let snapshot = reloader.live.snapshot();
    let mut files = vec![reloader.config_path.clone()];
    for file in snapshot.files.iter().chain(refused) {
        if !files.contains(file) {
            files.push(file.clone());
        }
    }
    files
}

/// The directories to watch and the file names that matter in them. A
/// symlinked file is also watched where it points, so editing the target
/// of a plain symlink is seen too. (A directory replaced under its watch
/// is told by `Watch::follow_files`, which compares what each path names.)
fn watch_set(files: &[PathBuf]) -> (BTreeSet<PathBuf>, BTreeSet<OsString>) {
    let mut dirs = BTreeSet::new();
    let mut interest = BTreeSet::from([OsString::from(CONFIGMAP_DATA)]);
    let mut add = |path: &Path| {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        if let (Some(dir), Some(name)) = (absolute.parent(), absolute.file_name()) {
            dirs.insert(dir.to_path_buf());
            interest.insert(name.to_os_string());
        }
    };
    for file in files {
        add(file);
        let is_link = std::fs::symlink_metadata(file).is_ok_and(|m| m.file_type().is_symlink());
        if is_link {
            if let Ok(target) = std::fs::canonicalize(file) {
                add(&target);
            }
        }
    }
    (dirs, interest)
}

/// Whether an event kind can change what a file holds. Opening and reading
/// (the watcher's own reads among them) cannot.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Any
        | EventKind::Create(_)
        | EventKind::Modify(_)
        | EventKind::Remove(_)
        | EventKind::Other => true,
    }
}

/// Whether any of `paths` has one of the names that matter.
fn touches(interest: &BTreeSet<OsString>, paths: &[PathBuf]) -> bool {
    paths.is_empty()
        || paths
            .iter()
            .filter_map(|p| p.file_name())
            .any(|name| interest.contains(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RenameMode};

    #[test]
    fn reads_do_not_count_as_changes_but_a_finished_write_does() {
        assert!(!is_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(is_change(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(is_change(&EventKind::Create(CreateKind::File)));
    }

    #[test]
    fn events_are_matched_by_file_name_and_configmap_data() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("microgateway.yaml");
        let (dirs, interest) = watch_set(std::slice::from_ref(&config));
        assert_eq!(dirs.len(), 1);
        assert!(touches(&interest, &[dir.path().join("microgateway.yaml")]));
        assert!(touches(&interest, &[dir.path().join("..data")]));
        assert!(touches(
            &interest,
            &[
                dir.path().join(".tmp123"),
                dir.path().join("microgateway.yaml")
            ]
        ));
        assert!(!touches(&interest, &[dir.path().join(".tmp123")]));
        assert!(!touches(&interest, &[dir.path().join("other.yaml")]));
    }

    #[test]
    fn directories_are_watched_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = [
            dir.path().join("microgateway.yaml"),
            dir.path().join("server.crt"),
            dir.path().join("server.key"),
        ];
        let (dirs, interest) = watch_set(&files);
        assert_eq!(dirs.len(), 1);
        assert_eq!(interest.len(), 4);
    }

    #[cfg(unix)]
    #[test]
    fn a_symlinked_file_is_also_watched_where_it_points() {
        let dir = tempfile::tempdir().expect("temp dir");
        let real = dir.path().join("real");
        std::fs::create_dir(&real).expect("mkdir");
        std::fs::write(real.join("target.yaml"), "apis: []\n").expect("write");
        let link = dir.path().join("microgateway.yaml");
        std::os::unix::fs::symlink(real.join("target.yaml"), &link).expect("symlink");
        let (dirs, interest) = watch_set(&[link]);
        assert_eq!(dirs.len(), 2);
        assert!(interest.contains(&OsString::from("target.yaml")));
    }
}
