//! This instance's link to central configuration: the export tree it
//! serves as a central (built once per generation), and as a downstream the
//! document in use, the [`Refusal`] that stands, and what the status
//! endpoint shows of them. It holds state only: the poll loop that changes
//! it is `reload::follow`.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{json, Value};

use super::provenance::Provenance;
use super::{export, shown_url, Document};
use crate::config::snapshot::ApiGateway;
use crate::config::{Env, Snapshot};

/// What the status endpoint shows of the downstream link.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// When the central last confirmed the document in use: sent it (200,
    /// applied or the same as the one in use) or answered 304 to its ETag.
    pub last_download_at: Option<SystemTime>,
    /// ETag of the document in use.
    pub etag: Option<String>,
    pub last_error: Option<String>,
    /// Downloads applied (a new generation each).
    pub applied: u64,
    /// Conditional requests answered 304.
    pub not_modified: u64,
    /// Downloads whose content equalled a document already judged: the
    /// one in use, or the refused one that stands (from a central that
    /// ignores `If-None-Match`).
    pub unchanged: u64,
    /// Downloads refused as invalid.
    pub refused: u64,
    /// Requests that failed (unreachable, refused credentials, bad status).
    pub failed: u64,
    /// The last document the central sent was refused, and nothing that
    /// could change the verdict has changed since: the central still
    /// serves it, and no local reload applied (which clears it and asks
    /// for the document again: it may merge with the new file).
    pub refusal: Option<Refusal>,
}

/// A document the central sent that was refused: while it stands, a poll
/// asks the central about it by ETag, and its answer that it still serves
/// it is neither merged, logged nor counted as a failed reload again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The ETag the central sent with it, for `If-None-Match`.
    pub etag: String,
    /// Its SHA-256 ([`Document::etag`]): the same body sent again (by a
    /// central that ignores `If-None-Match`) is known by it.
    pub digest: String,
    /// Why it was refused: `last_error` while it stands.
    pub error: String,
}

/// This instance's link to central configuration: the export it serves (as
/// a central) and the document it downloaded (as a downstream).
#[derive(Debug, Default)]
pub struct Link {
    export: Mutex<Option<(u64, Arc<export::Tree>)>>,
    document: Mutex<Option<Arc<Document>>>,
    /// The central and APIs the central last answered for (the document
    /// in use came from them, or was confirmed by them).
    answered_for: Mutex<Option<Provenance>>,
    status: Mutex<Status>,
    /// Wakes the poll loop for a download at once.
    retry: tokio::sync::Notify,
}

impl Link {
    /// The export tree of `snapshot`, built once per generation.
    pub fn export_tree(
        &self,
        snapshot: &Snapshot,
        env: &Env,
    ) -> Result<export::Tree, export::ExportError> {
        let mut cached = self.export.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((generation, tree)) = cached.as_ref() {
            if *generation == snapshot.generation {
                return Ok((**tree).clone());
            }
        }
        let tree = export::build(snapshot, env)?;
        *cached = Some((snapshot.generation, Arc::new(tree.clone())));
        Ok(tree)
    }

    /// The downloaded document in use, if any.
    pub fn document(&self) -> Option<Arc<Document>> {
        self.document
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Keeps `document` as the one in use (merged by every later reload).
    pub fn adopt(&self, document: Option<Arc<Document>>) {
        let etag = document.as_ref().map(|d| d.etag.clone());
        let downloaded_at = document.as_ref().and_then(|d| d.downloaded_at);
        *self.document.lock().unwrap_or_else(|p| p.into_inner()) = document;
        self.update(|status| {
            status.etag = etag;
            status.last_download_at = downloaded_at.or(status.last_download_at);
        });
    }

    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn update(&self, change: impl FnOnce(&mut Status)) {
        change(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Notes that the central of `settings` answered for its APIs.
    pub fn answered_for(&self, settings: &ApiGateway) {
        *self.answered_for.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Provenance::of(settings));
    }

    /// Told after a local reload (file, signal, REST) applied, with the
    /// `api_gateway` it serves: a refusal that stood no longer does (the
    /// new file may merge with the document), and the poll loop downloads
    /// it again at once instead of at its next round (or never, with a zero
    /// interval). So it does when the file now names another central, or
    /// other APIs, than the one that last answered: the document in use
    /// goes on being merged only until that central answers. `last_error`
    /// keeps saying why until that download is judged.
    pub fn local_reload_applied(&self, settings: Option<&ApiGateway>) {
        let moved = settings.is_some_and(|settings| {
            let answered = self.answered_for.lock().unwrap_or_else(|p| p.into_inner());
            answered
                .as_ref()
                .is_some_and(|answered| *answered != Provenance::of(settings))
        });
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if status.refusal.take().is_some() || moved {
            // A permit is kept when the loop is not waiting: not lost.
            self.retry.notify_one();
        }
    }

    /// The ETag of the refused document that stands, if one does.
    pub fn refused_etag(&self) -> Option<String> {
        let status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.refusal.as_ref().map(|refusal| refusal.etag.clone())
    }

    /// Records `refusal` as the verdict on the document the central serves.
    pub fn refuse(&self, refusal: Refusal) {
        self.update(|status| {
            status.refused += 1;
            status.last_error = Some(refusal.error.clone());
            status.refusal = Some(refusal);
        });
    }

    /// Told that the central still serves the refused document whose
    /// ETag is `etag` (a 304 for it): whether that refusal still stands.
    /// If it does, `last_error` says why again (a failed request since
    /// may have replaced it).
    pub fn refusal_confirmed(&self, etag: &str) -> bool {
        self.confirm_refusal(|refusal| refusal.etag == etag)
    }

    /// Like [`Link::refusal_confirmed`], for a body whose SHA-256 is
    /// `digest`, sent again in full.
    pub fn refused_body_again(&self, digest: &str) -> bool {
        self.confirm_refusal(|refusal| refusal.digest == digest)
    }

    fn confirm_refusal(&self, same: impl Fn(&Refusal) -> bool) -> bool {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let Some(error) = status
            .refusal
            .as_ref()
            .filter(|r| same(r))
            .map(|r| r.error.clone())
        else {
            return false;
        };
        status.last_error = Some(error);
        true
    }

    /// Resolves when [`Link::local_reload_applied`] asked for a download.
    pub async fn retry_wanted(&self) {
        self.retry.notified().await;
    }

    /// The `central` member of the status JSON (null without `api_gateway:`).
    pub fn status_json(&self, settings: Option<&ApiGateway>) -> Value {
        let Some(settings) = settings else {
            return Value::Null;
        };
        let status = self.status();
        json!({
            "url": shown_url(&settings.url),
            "last_download_at": status.last_download_at
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            "etag": status.etag,
            "last_error": status.last_error,
        })
    }
}
