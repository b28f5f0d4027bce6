//! Following a central gateway: the poll loop of a downstream. It
//! downloads (`central::poller`) and applies a changed document through
//! the [`Reloader`] on the blocking pool; a 304 or an unchanged body makes
//! no new generation; failures keep the serving snapshot and back off
//! exponentially (up to 5 minutes). The loop reads `api_gateway` from the
//! serving snapshot on every round, so a file reload can turn downloading
//! on or off; with both flags false it sends nothing. Its waits are on the
//! tokio clock, so a test advances them instead of sleeping.
//!
//! Only the document in use is *seen* (its ETag is the `If-None-Match`): a
//! refused one is downloaded and tried again on the next round, and at once
//! after a local reload applied ([`Link::local_reload_applied`]), since the
//! new file may merge with it. A download is merged with the text the
//! serving snapshot was compiled from, never with the file read again: an
//! edit on disk that was refused, or is still being written, is the file
//! watcher's to judge, and never blamed on the central.
//! With `poll_interval: 0` the central is asked until it has answered once
//! (a document, applied or refused, or a 304), and again after a local
//! reload while a download stands refused.
//!
//! [`Link::local_reload_applied`]: crate::central::Link::local_reload_applied

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use super::reloader::Reloader;
use super::swap::Source;
use crate::central::poller::{client, delay, download, DownloadError, Fetched, IDLE};
use crate::central::{provenance, shown_url, Document};
use crate::config::snapshot::ApiGateway;

/// The poll loop of a downstream; returns when `stop` turns true.
pub async fn run(reloader: Arc<Reloader>, mut stop: watch::Receiver<bool>) {
    let client = client();
    let link = Arc::clone(&reloader.central);
    let mut seen = link.document().map(|d| d.etag.clone());
    // Not heard from at start (started from the cache file, or without a
    // download): a download is owed whatever the interval.
    let mut owed = link.status().last_download_at.is_none();
    // Started from the cache file: the central was unreachable, try again soon.
    let mut failures = u32::from(seen.is_some() && owed);
    loop {
        if *stop.borrow() {
            return;
        }
        let settings = reloader.live.snapshot().api_gateway.clone();
        let wait = settings
            .as_ref()
            .filter(|s| wants_download(s, owed))
            .map_or(IDLE, |s| delay(s.poll_interval, failures));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = link.retry_wanted() => owed = true,
            _ = stop.changed() => return,
        }
        let settings = reloader.live.snapshot().api_gateway.clone();
        let Some(settings) = settings.filter(|s| wants_download(s, owed)) else {
            continue;
        };
        let round = poll_once(&reloader, &client, &settings, &mut seen);
        let result = tokio::select! {
            result = round => result,
            _ = stop.changed() => return,
        };
        match result {
            Ok(()) => {
                failures = 0;
                owed = false;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let retry = delay(settings.poll_interval, failures);
                tracing::warn!(
                    url = %shown_url(&settings.url),
                    %error,
                    retry_in_s = retry.as_secs(),
                    "cannot download settings from the central gateway; the current configuration keeps serving"
                );
                link.update(|status| {
                    status.failed += 1;
                    status.last_error = Some(error.to_string());
                });
            }
        }
    }
}

/// Whether a download is due: a flag is on, and polling is on (a zero
/// interval downloads only while one is `owed`).
fn wants_download(settings: &ApiGateway, owed: bool) -> bool {
    (settings.download_settings || settings.download_apis)
        && (!settings.poll_interval.is_zero() || owed)
}

/// One download, decided: `seen` becomes the ETag of the document sent
/// only when that document is in use once decided.
async fn poll_once(
    reloader: &Arc<Reloader>,
    client: &reqwest::Client,
    settings: &ApiGateway,
    seen: &mut Option<String>,
) -> Result<(), DownloadError> {
    match download(client, settings, seen.as_deref()).await? {
        // The ETag sent names the document in use: the central serves it
        // (again), so no refusal stands.
        Fetched::NotModified => reloader.central.update(|status| {
            status.not_modified += 1;
            status.last_download_at = Some(SystemTime::now());
            status.last_error = None;
            status.refusal_stands = false;
        }),
        Fetched::Document { text, etag } => {
            let document = Document::downloaded(text, settings.cache_file.clone());
            let etag = etag.unwrap_or_else(|| document.etag.clone());
            // Validating, compiling and swapping block: off the runtime worker.
            let reloader = Arc::clone(reloader);
            let settings = settings.clone();
            let in_use = tokio::task::spawn_blocking(move || apply(&reloader, &settings, document))
                .await
                .unwrap_or(false);
            if in_use {
                *seen = Some(etag);
            }
        }
    }
    Ok(())
}

/// Validates `document` on its own and merged with the serving
/// configuration, then swaps it in and writes the cache file. Returns
/// whether it is in use: false when it was refused.
pub fn apply(reloader: &Reloader, settings: &ApiGateway, document: Document) -> bool {
    let _one_at_a_time = reloader.live.one_reload_at_a_time();
    let current = reloader.central.document();
    if current.is_some_and(|c| c.etag == document.etag) {
        reloader.central.update(|status| {
            status.unchanged += 1;
            status.last_download_at = document.downloaded_at;
            status.last_error = None;
            status.refusal_stands = false;
        });
        return true;
    }
    let refusal = match document.validate() {
        Err(invalid) => {
            tracing::error!(
                url = %shown_url(&settings.url),
                "settings downloaded from the central gateway refused; the last good configuration keeps serving:\n{invalid}"
            );
            reloader.live.refuse(Source::Central, invalid.to_string());
            Some(invalid)
        }
        Ok(()) => {
            let document = Arc::new(document);
            // Read under the reload lock: the text of the last reload that
            // applied, not the file as it is on disk now.
            let serving = reloader.live.snapshot();
            let text = Some(&*serving.source_text);
            match reloader.reload_locked(Source::Central, text, Some(&document)) {
                Ok(generation) => {
                    if let Err(error) = provenance::write(settings, &document.text) {
                        tracing::warn!(cache = %settings.cache_file.display(), %error, "cannot write the cache file");
                    }
                    tracing::info!(generation, etag = %document.etag, "settings downloaded from the central gateway applied");
                    reloader.central.adopt(Some(document));
                    reloader.central.update(|status| {
                        status.applied += 1;
                        status.last_error = None;
                        status.refusal_stands = false;
                    });
                    None
                }
                Err(invalid) => Some(invalid),
            }
        }
    };
    let Some(invalid) = refusal else {
        return true;
    };
    reloader.central.update(|status| {
        status.refused += 1;
        status.last_error = Some(format!("the downloaded settings were refused: {invalid}"));
        status.refusal_stands = true;
    });
    false
}
