//! Downloading a central gateway's settings: a conditional GET of its export
//! with Basic credentials and `If-None-Match`, bounded in time and size, no
//! redirects (a redirect could carry the credentials elsewhere). The poll
//! loop applies a changed document through `State::reload_locked`; a 304 or an
//! unchanged body makes no new generation; failures keep the serving
//! snapshot and back off exponentially (up to 5 minutes). The loop reads
//! `api_gateway` from the serving snapshot on every round, so a file reload
//! can turn downloading on or off; with both flags false it sends nothing.

use std::sync::Arc;
use std::time::Duration;

use http::header::{ACCEPT, AUTHORIZATION, ETAG, IF_NONE_MATCH};
use http::StatusCode;
use tokio::sync::watch;

use super::Document;
use crate::config::snapshot::ApiGateway;
use crate::gateway::State;
use crate::reload::Source;

/// Largest document accepted (the size bound of a configuration file).
pub const MAX_DOCUMENT: usize = 4 * 1024 * 1024;
/// Longest wait between attempts while the central is unreachable.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often an idle loop (no download configured) looks at the settings again.
const IDLE: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{}", chain(.0))]
    Http(#[from] reqwest::Error),
    #[error("the central gateway refused the credentials ({0})")]
    Unauthorized(StatusCode),
    #[error("the central gateway answered {0}")]
    Status(StatusCode),
    #[error("the user or password cannot be sent in a Basic header")]
    Credentials,
    #[error("the document is larger than 4 MiB")]
    TooLarge,
    #[error("the document is not UTF-8 text")]
    NotUtf8,
}

/// An error with its causes (reqwest's own message omits them).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What a download brought.
#[derive(Debug)]
pub enum Fetched {
    /// 304: the document named by `If-None-Match` is current.
    NotModified,
    Document {
        text: String,
        etag: Option<String>,
    },
}

/// The client for downloads: no redirects, bounded connect and total time.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap_or_default()
}

/// `{url}/rest/microgateway/settings/export[?apis=A,B]`; each name is
/// percent-encoded, so a comma inside a name survives.
pub fn export_url(settings: &ApiGateway) -> String {
    let mut url = format!(
        "{}/rest/microgateway/settings/export",
        settings.url.trim_end_matches('/')
    );
    if !settings.apis.is_empty() {
        let names: Vec<String> = settings
            .apis
            .iter()
            .map(|name| {
                percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
            })
            .collect();
        url.push_str("?apis=");
        url.push_str(&names.join(","));
    }
    url
}

/// One GET of the export, conditional on `etag` when given.
pub async fn download(
    client: &reqwest::Client,
    settings: &ApiGateway,
    etag: Option<&str>,
) -> Result<Fetched, DownloadError> {
    let credentials = crate::config::context::basic_header(&settings.user, &settings.password)
        .ok_or(DownloadError::Credentials)?;
    let mut request = client
        .get(export_url(settings))
        .header(AUTHORIZATION, credentials)
        .header(ACCEPT, "application/yaml");
    if let Some(etag) = etag {
        request = request.header(IF_NONE_MATCH, etag);
    }
    let mut response = request.send().await?;
    match response.status() {
        StatusCode::OK => {}
        StatusCode::NOT_MODIFIED => return Ok(Fetched::NotModified),
        status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
            return Err(DownloadError::Unauthorized(status))
        }
        status => return Err(DownloadError::Status(status)),
    }
    let etag = response
        .headers()
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if response
        .content_length()
        .is_some_and(|length| length > MAX_DOCUMENT as u64)
    {
        return Err(DownloadError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_DOCUMENT {
            return Err(DownloadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(body).map_err(|_| DownloadError::NotUtf8)?;
    Ok(Fetched::Document { text, etag })
}

/// The wait before the next attempt: the poll interval, or after
/// `failures` failed attempts 1 s, 2 s, 4 s … up to [`MAX_BACKOFF`], with
/// up to 10 % jitter so a fleet does not retry in step.
pub fn delay(interval: Duration, failures: u32) -> Duration {
    let base = if failures == 0 {
        if interval.is_zero() {
            Duration::from_secs(1)
        } else {
            interval
        }
    } else {
        Duration::from_secs(1 << (failures - 1).min(16)).min(MAX_BACKOFF)
    };
    let jitter_ms = (base.as_millis() / 10) as u64;
    base + Duration::from_millis(rand::random_range(0..=jitter_ms))
}

/// The poll loop of a downstream; returns when `stop` turns true.
pub async fn run(state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let client = client();
    let mut seen = state.central.document().map(|d| d.etag.clone());
    // Started from the cache file: the central was unreachable, try again soon.
    let mut failures =
        u32::from(seen.is_some() && state.central.status().last_download_at.is_none());
    let mut refused = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let settings = state.live.snapshot().api_gateway.clone();
        let wait = settings
            .as_ref()
            .filter(|s| wants_download(s, &state))
            .map_or(IDLE, |s| delay(s.poll_interval, failures));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        let settings = state.live.snapshot().api_gateway.clone();
        let Some(settings) = settings.filter(|s| wants_download(s, &state)) else {
            continue;
        };
        let round = poll_once(&state, &client, &settings, &mut seen, &mut refused);
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
                    url = %settings.url,
                    %error,
                    retry_in_s = retry.as_secs(),
                    "cannot download settings from the central gateway; the current configuration keeps serving"
                );
                state.central.update(|status| {
                    status.failed += 1;
                    status.last_error = Some(error.to_string());
                });
            }
        }
    }
}

/// Whether a download is due: a flag is on, and polling is on (a zero
/// interval downloads once, so only until one download succeeded).
fn wants_download(settings: &ApiGateway, state: &State) -> bool {
    (settings.download_settings || settings.download_apis)
        && (!settings.poll_interval.is_zero() || state.central.status().last_download_at.is_none())
}

async fn poll_once(
    state: &State,
    client: &reqwest::Client,
    settings: &ApiGateway,
    seen: &mut Option<String>,
    refused: &mut bool,
) -> Result<(), DownloadError> {
    match download(client, settings, seen.as_deref()).await? {
        Fetched::NotModified => state.central.update(|status| {
            status.not_modified += 1;
            // The refusal of the document it names still stands.
            if !*refused {
                status.last_error = None;
            }
        }),
        Fetched::Document { text, etag } => {
            let document = Document::downloaded(text, settings.cache_file.clone());
            *seen = Some(etag.unwrap_or_else(|| document.etag.clone()));
            *refused = !apply(state, settings, document);
        }
    }
    Ok(())
}

/// Validates `document` on its own and merged, then swaps it in and
/// writes the cache file. Returns false when it was refused.
pub fn apply(state: &State, settings: &ApiGateway, document: Document) -> bool {
    let _one_at_a_time = state.live.one_reload_at_a_time();
    let current = state.central.document();
    if current.is_some_and(|c| c.etag == document.etag) {
        state.central.update(|status| {
            status.unchanged += 1;
            status.last_download_at = document.downloaded_at;
            status.last_error = None;
        });
        return true;
    }
    let refusal = match document.validate() {
        Err(invalid) => {
            tracing::error!(
                url = %settings.url,
                "settings downloaded from the central gateway refused; the last good configuration keeps serving:\n{invalid}"
            );
            state.live.refuse(Source::Central, invalid.to_string());
            Some(invalid)
        }
        Ok(()) => {
            let document = Arc::new(document);
            match state.reload_locked(Source::Central, None, Some(&document)) {
                Ok(generation) => {
                    if let Err(error) = super::write_private(&settings.cache_file, &document.text) {
                        tracing::warn!(cache = %settings.cache_file.display(), %error, "cannot write the cache file");
                    }
                    tracing::info!(generation, etag = %document.etag, "settings downloaded from the central gateway applied");
                    state.central.adopt(Some(document));
                    state.central.update(|status| {
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
    state.central.update(|status| {
        status.refused += 1;
        status.last_error = Some(format!("the downloaded settings were refused: {invalid}"));
    });
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let interval = Duration::from_secs(30);
        let at_least = |failures| delay(interval, failures);
        assert!(at_least(0) >= interval && at_least(0) <= interval + interval / 10);
        assert!(at_least(1) >= Duration::from_secs(1) && at_least(1) < Duration::from_secs(2));
        assert!(at_least(4) >= Duration::from_secs(8));
        assert!(at_least(40) >= MAX_BACKOFF && at_least(40) <= MAX_BACKOFF + MAX_BACKOFF / 10);
    }

    #[test]
    fn export_url_encodes_each_api_name() {
        let settings = ApiGateway {
            url: "http://central:9485/".into(),
            user: "u".into(),
            password: crate::config::Secret::new("p"),
            download_settings: true,
            download_apis: true,
            apis: vec!["Time travels".into(), "A,B".into()],
            poll_interval: Duration::from_secs(1),
            cache_file: "x".into(),
        };
        assert_eq!(
            export_url(&settings),
            "http://central:9485/rest/microgateway/settings/export?apis=Time%20travels,A%2CB"
        );
    }
}
