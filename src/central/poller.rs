//! Downloading a central gateway's settings: a conditional GET of its export
//! with Basic credentials and `If-None-Match` (the ETags of the documents
//! already judged: the one in use, and one refused), bounded in time and size, no
//! redirects (a redirect could carry the credentials elsewhere), a body
//! checked against the central's strong ETag (its SHA-256: a body cut short
//! by a closed connection or changed on the way is an error), and the
//! wait before the next attempt (the poll interval, or an exponential
//! backoff up to 5 minutes). The poll loop that applies a download is
//! `reload::follow`; nothing here changes the serving snapshot.

use std::time::Duration;

use http::header::{ACCEPT, AUTHORIZATION, ETAG, IF_NONE_MATCH};
use http::StatusCode;

use super::export;
use crate::config::snapshot::ApiGateway;

/// Largest document accepted (the size bound of a configuration file).
pub const MAX_DOCUMENT: usize = 4 * 1024 * 1024;
/// Longest wait between attempts while the central is unreachable.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often an idle loop (no download configured) looks at the settings again.
pub const IDLE: Duration = Duration::from_secs(30);
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
    #[error("api_gateway.url is not a URL")]
    Url,
    #[error("the document is larger than 4 MiB")]
    TooLarge,
    #[error("the document is not UTF-8 text")]
    NotUtf8,
    #[error(
        "the document does not hash to the ETag {0} sent with it (cut short or changed on the way)"
    )]
    Digest(String),
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
    /// 304: a document named by `If-None-Match` is current; `etag` (the
    /// field the central sends with a 304, RFC 9110 §15.4.5) says which.
    NotModified {
        etag: Option<String>,
    },
    Document {
        text: String,
        etag: Option<String>,
    },
}

/// The clients for downloads: no redirects, bounded connect and total
/// time; a proxy the environment names (`HTTPS_PROXY`, `HTTP_PROXY`,
/// `ALL_PROXY`, less `NO_PROXY`) is used for a central on another host,
/// never for one on loopback: plain HTTP to loopback is allowed because
/// it never leaves the machine, and a proxy would take the credentials
/// and the fleet's secrets off it in clear.
pub struct Clients {
    proxied: reqwest::Client,
    direct: reqwest::Client,
}

pub fn client() -> Clients {
    let builder = || {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
    };
    Clients {
        proxied: builder().build().unwrap_or_default(),
        direct: builder().no_proxy().build().unwrap_or_default(),
    }
}

impl Clients {
    /// The client for a central at `url`.
    fn for_url(&self, url: &reqwest::Url) -> &reqwest::Client {
        match url.host_str() {
            Some(host) if crate::config::plain_http::is_loopback(host) => &self.direct,
            _ => &self.proxied,
        }
    }
}

/// `url` without its user information, which is never sent: the HTTP
/// client would turn it into an `Authorization` field of its own, beside
/// the one made from `api_gateway.user` and `password` (the credentials).
fn without_user_information(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            // Both succeed on a URL that has a host, as one with user
            // information has.
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// `{url}/rest/microgateway/settings/export[?apis=A,B]`; each name is
/// percent-encoded, so a comma inside a name survives.
pub fn export_url(settings: &ApiGateway) -> String {
    let mut url = format!(
        "{}/rest/microgateway/settings/export",
        without_user_information(&settings.url).trim_end_matches('/')
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

/// One GET of the export, conditional on the ETags in `known` when there
/// are any.
pub async fn download(
    clients: &Clients,
    settings: &ApiGateway,
    known: &[&str],
) -> Result<Fetched, DownloadError> {
    let credentials = crate::config::context::basic_header(&settings.user, &settings.password)
        .ok_or(DownloadError::Credentials)?;
    let url = reqwest::Url::parse(&export_url(settings)).map_err(|_| DownloadError::Url)?;
    let mut request = clients
        .for_url(&url)
        .get(url)
        .header(AUTHORIZATION, credentials)
        .header(ACCEPT, "application/yaml");
    if !known.is_empty() {
        // RFC 9110 §13.1.2: a list of entity tags, any of which matches.
        request = request.header(IF_NONE_MATCH, known.join(", "));
    }
    let mut response = request.send().await?;
    let etag = response
        .headers()
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match response.status() {
        StatusCode::OK => {}
        StatusCode::NOT_MODIFIED => return Ok(Fetched::NotModified { etag }),
        status @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
            return Err(DownloadError::Unauthorized(status))
        }
        status => return Err(DownloadError::Status(status)),
    }
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
    // The central's ETag is the SHA-256 of the body; an ETag of another
    // form (a proxy's, say) says nothing about it.
    if let Some(sent) = etag.as_deref().filter(|e| export::is_digest(e)) {
        if export::etag_of(&text) != sent {
            return Err(DownloadError::Digest(sent.to_owned()));
        }
    }
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
        // User information is never sent: the credentials are user and password.
        let settings = ApiGateway {
            url: "https://fleet:url-secret@central:9485/fleet/".into(),
            apis: Vec::new(),
            ..settings
        };
        assert_eq!(
            export_url(&settings),
            "https://central:9485/fleet/rest/microgateway/settings/export"
        );
    }
}
