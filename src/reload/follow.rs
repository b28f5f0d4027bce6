//! Following a central gateway: the poll loop of a downstream. It
//! downloads (`central::poller`) and applies a changed document through
//! the [`Reloader`] on the blocking pool; a 304 or an unchanged body makes
//! no new generation; failures keep the serving snapshot and back off
//! exponentially (up to 5 minutes). The loop reads `api_gateway` from the
//! serving snapshot on every round, so a file reload can turn downloading
//! on or off; with both flags false it sends nothing. Its waits are on the
//! tokio clock, so a test advances them instead of sleeping.
//!
//! A document is judged once. `If-None-Match` names the document in use
//! and the refused one that stands ([`Refusal`]); a 304 for the refused
//! one (the central's `ETag` says which) is the same verdict: nothing is
//! merged, logged above debug or counted as a failed reload again, and
//! `last_error` goes on saying why. A local reload that applied clears the
//! refusal ([`Link::local_reload_applied`]) and the document is downloaded
//! again at once, since the new file may merge with it; another document
//! from the central is downloaded and judged. A download is merged with the
//! serving snapshot was compiled from, never with the file read again: an
//! edit on disk that was refused, or is still being written, is the file
//! watcher's to judge, and never blamed on the central.
//! With `poll_interval: 0` the central is asked until it has answered once
//! (a document, applied or refused, or a 304), and again after a local
//! reload while a download stands refused.
//!
//! [`Link::local_reload_applied`]: crate::central::Link::local_reload_applied
//! [`Refusal`]: crate::central::Refusal

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use super::reloader::Reloader;
use super::swap::Source;
use crate::central::poller::{client, delay, download, Clients, DownloadError, Fetched, IDLE};
use crate::central::{provenance, shown_url, Document, Link, Refusal};
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
                link.answered_for(&settings);
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
    client: &Clients,
    settings: &ApiGateway,
    seen: &mut Option<String>,
) -> Result<(), DownloadError> {
    let refused = reloader.central.refused_etag();
    let known: Vec<&str> = seen.iter().chain(&refused).map(String::as_str).collect();
    match download(client, settings, &known).await? {
        Fetched::NotModified { etag } => {
            let for_in_use = not_modified(
                &reloader.central,
                seen.as_deref(),
                refused.as_deref(),
                etag.as_deref(),
            );
            if for_in_use {
                reloader.live.central_confirmed();
                if let Some(document) = reloader.central.document() {
                    let settings = settings.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || cache_confirmed(&settings, &document))
                            .await;
                }
            }
        }
        Fetched::Document { text, etag } => {
            let document = Document::downloaded(text, settings.cache_file.clone());
            let etag = etag.unwrap_or_else(|| document.etag.clone());
            // Validating, compiling and swapping block: off the runtime worker.
            let reloader = Arc::clone(reloader);
            let settings = settings.clone();
            let sent = etag.clone();
            let in_use =
                tokio::task::spawn_blocking(move || apply(&reloader, &settings, document, sent))
                    .await
                    .unwrap_or(false);
            if in_use {
                *seen = Some(etag);
            }
        }
    }
    Ok(())
}

/// A 304 to a request that named `in_use` and `refused`: the central's
/// `answered` ETag says which it still serves. Asked about the document in
/// use alone, the 304 is for it; asked about both, only its ETag tells
/// them apart, and without one nothing is known to have changed. Returns
/// whether it confirmed the document in use.
fn not_modified(
    link: &Link,
    in_use: Option<&str>,
    refused: Option<&str>,
    answered: Option<&str>,
) -> bool {
    let for_in_use = match refused {
        None => true,
        Some(_) => answered.is_some() && answered == in_use,
    };
    if for_in_use {
        // The central serves the document in use (again): no refusal stands.
        link.update(|status| {
            status.not_modified += 1;
            status.last_download_at = Some(SystemTime::now());
            status.last_error = None;
            status.refusal = None;
        });
        return true;
    }
    // A refusal cleared meanwhile by a local reload is not set again: the
    // download that reload asked for follows.
    let stands = refused.is_some_and(|etag| link.refusal_confirmed(etag));
    link.update(|status| status.not_modified += 1);
    tracing::debug!(
        stands,
        "the central gateway still serves the settings refused before"
    );
    false
}

/// The central `settings` name confirmed `document`, the one in use: a
/// cache file recorded for another central or selection (`api_gateway`
/// changed to one that serves the same settings) is written again for
/// these, so that a start while this central is down finds it.
fn cache_confirmed(settings: &ApiGateway, document: &Document) {
    if provenance::check(settings).is_err() {
        crate::central::write_cache(settings, document);
    }
}

/// Validates `document` (sent with `etag`) on its own and merged with the
/// serving configuration, then swaps it in and writes the cache file.
/// Returns whether it is in use: false when it was refused, now or before.
pub fn apply(reloader: &Reloader, settings: &ApiGateway, document: Document, etag: String) -> bool {
    let _one_at_a_time = reloader.live.one_reload_at_a_time();
    let current = reloader.central.document();
    if let Some(current) = current.filter(|c| c.etag == document.etag) {
        reloader.central.update(|status| {
            status.unchanged += 1;
            status.last_download_at = document.downloaded_at;
            status.last_error = None;
            status.refusal = None;
        });
        reloader.live.central_confirmed();
        cache_confirmed(settings, &current);
        return true;
    }
    // Under the reload lock: no local reload has applied since the refusal.
    if reloader.central.refused_body_again(&document.etag) {
        reloader.central.update(|status| status.unchanged += 1);
        tracing::debug!("the central gateway sent the settings refused before again");
        return false;
    }
    let digest = document.etag.clone();
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
                    crate::central::write_cache(settings, &document);
                    tracing::info!(generation, etag = %document.etag, "settings downloaded from the central gateway applied");
                    reloader.central.adopt(Some(document));
                    reloader.central.update(|status| {
                        status.applied += 1;
                        status.last_error = None;
                        status.refusal = None;
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
    reloader.central.refuse(Refusal {
        etag,
        digest,
        error: format!("the downloaded settings were refused: {invalid}"),
    });
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const IN_USE: &str = "\"in-use\"";
    const REFUSED: &str = "\"refused\"";

    fn refusing() -> Link {
        let link = Link::default();
        link.refuse(Refusal {
            etag: REFUSED.into(),
            digest: REFUSED.into(),
            error: "the downloaded settings were refused: a clash".into(),
        });
        link
    }

    #[test]
    fn a_304_for_the_refused_document_keeps_the_refusal_and_its_error() {
        let link = refusing();
        link.update(|status| status.last_error = Some("the central is unreachable".into()));
        not_modified(&link, Some(IN_USE), Some(REFUSED), Some(REFUSED));
        let status = link.status();
        assert_eq!(status.refused, 1);
        assert_eq!(status.not_modified, 1);
        assert_eq!(link.refused_etag().as_deref(), Some(REFUSED));
        assert_eq!(
            status.last_error.as_deref(),
            Some("the downloaded settings were refused: a clash")
        );
        assert!(
            status.last_download_at.is_none(),
            "the 304 confirmed nothing in use"
        );
    }

    #[test]
    fn a_304_without_an_etag_to_both_asked_about_changes_no_verdict() {
        let link = refusing();
        not_modified(&link, Some(IN_USE), Some(REFUSED), None);
        assert_eq!(link.refused_etag().as_deref(), Some(REFUSED));
    }

    #[test]
    fn a_304_for_the_document_in_use_ends_the_refusal() {
        let link = refusing();
        not_modified(&link, Some(IN_USE), Some(REFUSED), Some(IN_USE));
        let status = link.status();
        assert!(status.refusal.is_none());
        assert!(status.last_error.is_none());
        assert!(status.last_download_at.is_some());
    }

    #[test]
    fn a_local_reload_clears_the_refusal_but_not_its_error() {
        let link = refusing();
        link.local_reload_applied(None);
        assert!(link.refused_etag().is_none());
        assert!(
            link.status().last_error.is_some(),
            "said until judged again"
        );
        // A 304 asked before the reload does not set it again.
        not_modified(&link, Some(IN_USE), Some(REFUSED), Some(REFUSED));
        assert!(link.refused_etag().is_none());
        assert!(!link.refused_body_again(REFUSED));
    }
}
