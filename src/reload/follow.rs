//! Following a central gateway: the poll loop of a downstream. It
//! downloads (`central::poller`) and applies a changed document through
//! the [`Reloader`] on the blocking pool; a 304 or an unchanged body makes
//! no new generation; failures keep the serving snapshot and back off
//! exponentially (up to 5 minutes). The loop reads `api_gateway` from the
//! serving snapshot on every round, so a file reload can turn downloading
//! on or off; with both flags false it sends nothing. Its waits are on the
//! tokio clock, so a test advances them instead of sleeping.

use std::sync::Arc;

use tokio::sync::watch;

use super::reloader::Reloader;
use super::swap::Source;
use crate::central::poller::{client, delay, download, DownloadError, Fetched, IDLE};
use crate::central::{provenance, shown_url, Document};
use crate::config::snapshot::ApiGateway;

/// The poll loop of a downstream; returns when `stop` turns true.
pub async fn run(reloader: Arc<Reloader>, mut stop: watch::Receiver<bool>) {
    let client = client();
    let mut seen = reloader.central.document().map(|d| d.etag.clone());
    // Started from the cache file: the central was unreachable, try again soon.
    let mut failures =
        u32::from(seen.is_some() && reloader.central.status().last_download_at.is_none());
    let mut refused = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let settings = reloader.live.snapshot().api_gateway.clone();
        let wait = settings
            .as_ref()
            .filter(|s| wants_download(s, &reloader))
            .map_or(IDLE, |s| delay(s.poll_interval, failures));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        let settings = reloader.live.snapshot().api_gateway.clone();
        let Some(settings) = settings.filter(|s| wants_download(s, &reloader)) else {
            continue;
        };
        let round = poll_once(&reloader, &client, &settings, &mut seen, &mut refused);
        let result = tokio::select! {
            result = round => result,
            _ = stop.changed() => return,
        };
        match result {
            Ok(()) => failures = 0,
            Err(error) => {
                failures = failures.saturating_add(1);
                let retry = delay(settings.poll_interval, failures);
                tracing::warn!(
                    url = %shown_url(&settings.url),
                    %error,
                    retry_in_s = retry.as_secs(),
                    "cannot download settings from the central gateway; the current configuration keeps serving"
                );
                reloader.central.update(|status| {
                    status.failed += 1;
                    status.last_error = Some(error.to_string());
                });
            }
        }
    }
}

/// Whether a download is due: a flag is on, and polling is on (a zero
/// interval downloads once, so only until one download succeeded).
fn wants_download(settings: &ApiGateway, reloader: &Reloader) -> bool {
    (settings.download_settings || settings.download_apis)
        && (!settings.poll_interval.is_zero()
            || reloader.central.status().last_download_at.is_none())
}

async fn poll_once(
    reloader: &Arc<Reloader>,
    client: &reqwest::Client,
    settings: &ApiGateway,
    seen: &mut Option<String>,
    refused: &mut bool,
) -> Result<(), DownloadError> {
    match download(client, settings, seen.as_deref()).await? {
        Fetched::NotModified => reloader.central.update(|status| {
            status.not_modified += 1;
            // The refusal of the document it names still stands.
            if !*refused {
                status.last_error = None;
            }
        }),
        Fetched::Document { text, etag } => {
            let document = Document::downloaded(text, settings.cache_file.clone());
            *seen = Some(etag.unwrap_or_else(|| document.etag.clone()));
            // Validating, compiling and swapping block: off the runtime worker.
            let reloader = Arc::clone(reloader);
            let settings = settings.clone();
            *refused = !tokio::task::spawn_blocking(move || apply(&reloader, &settings, document))
                .await
                .unwrap_or(false);
        }
    }
    Ok(())
}

/// Validates `document` on its own and merged, then swaps it in and
/// writes the cache file. Returns false when it was refused.
pub fn apply(reloader: &Reloader, settings: &ApiGateway, document: Document) -> bool {
    let _one_at_a_time = reloader.live.one_reload_at_a_time();
    let current = reloader.central.document();
    if current.is_some_and(|c| c.etag == document.etag) {
        reloader.central.update(|status| {
            status.unchanged += 1;
            status.last_download_at = document.downloaded_at;
            status.last_error = None;
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
            match reloader.reload_locked(Source::Central, None, Some(&document)) {
                Ok(generation) => {
                    if let Err(error) = provenance::write(settings, &document.text) {
                        tracing::warn!(cache = %settings.cache_file.display(), %error, "cannot write the cache file");
                    }
                    tracing::info!(generation, etag = %document.etag, "settings downloaded from the central gateway applied");
                    reloader.central.adopt(Some(document));
                    reloader.central.update(|status| {
                        status.applied += 1;
                        status.last_error = None;
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
    });
    false
}
