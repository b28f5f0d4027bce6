//! One bounded HTTP fetch of an auth server's JWK Set. Without a configured
//! `jwks_uri`, the URI comes from the issuer's metadata: RFC 8414 first,
//! then OpenID Connect Discovery 1.0, and the metadata must name the
//! configured issuer (RFC 8414 §3.3) so one server cannot hand out another's
//! keys. A discovered `jwks_uri` meets the rule a configured one met at
//! load: https, or plain http only to loopback unless `allow_insecure_http`
//! (keys read in the clear can be replaced on the way, and with them every
//! token accepted). Every body is read in chunks and dropped past
//! [`MAX_BODY`]; the caller bounds the time. Only http(s) GETs to the
//! configured or discovered URIs are made: nothing in a token chooses where
//! to fetch from.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use reqwest::header::{HeaderMap, ACCEPT, CACHE_CONTROL, ETAG, IF_NONE_MATCH};
use reqwest::StatusCode;
use serde::Deserialize;

use super::{JwksError, KeySet};
use crate::config::plain_http::is_loopback;
use crate::config::secret::shown_url;

/// Largest JWK Set or metadata document read.
pub(super) const MAX_BODY: usize = 1 << 20;

pub(super) struct Fetcher {
    client: reqwest::Client,
    issuer: String,
    configured_uri: Option<String>,
    discovered_uri: Mutex<Option<String>>,
    allow_insecure_http: bool,
}

pub(super) enum Fetched {
    Keys {
        set: KeySet,
        etag: Option<String>,
        max_age: Option<Duration>,
    },
    NotModified {
        max_age: Option<Duration>,
    },
}

#[derive(Deserialize)]
struct Metadata {
    issuer: Option<String>,
    jwks_uri: Option<String>,
}

impl Fetcher {
    pub(super) fn new(
        client: reqwest::Client,
        issuer: String,
        jwks_uri: Option<String>,
        allow_insecure_http: bool,
    ) -> Self {
        Fetcher {
            client,
            issuer,
            configured_uri: jwks_uri,
            discovered_uri: Mutex::new(None),
            allow_insecure_http,
        }
    }

    /// Fetches the set; `etag` makes it conditional (RFC 9110 §13.1.2).
    pub(super) async fn fetch(
        &self,
        etag: Option<&str>,
        timeout: Duration,
    ) -> Result<Fetched, JwksError> {
        match tokio::time::timeout(timeout, self.fetch_unbounded(etag)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(JwksError::Timeout(timeout)),
        }
    }

    async fn fetch_unbounded(&self, etag: Option<&str>) -> Result<Fetched, JwksError> {
        let uri = self.jwks_uri().await?;
        let fetched = self.fetch_keys(&uri, etag).await;
        if fetched.is_err() && self.configured_uri.is_none() {
            // The metadata may have moved the set: discover again next time.
            *self
                .discovered_uri
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
        }
        fetched
    }

    async fn jwks_uri(&self) -> Result<String, JwksError> {
        if let Some(uri) = &self.configured_uri {
            return Ok(uri.clone());
        }
        let known = self
            .discovered_uri
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(uri) = known {
            return Ok(uri);
        }
        let mut last_error = None;
        for url in metadata_urls(&self.issuer) {
            match self.read_metadata(&url).await {
                Ok(uri) => {
                    *self
                        .discovered_uri
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(uri.clone());
                    return Ok(uri);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or(JwksError::Metadata {
            url: shown_url(&self.issuer),
            reason: "the issuer is not a URL",
        }))
    }

    async fn read_metadata(&self, url: &str) -> Result<String, JwksError> {
        let response = self.get(url, None).await?;
        if !response.status().is_success() {
            return Err(JwksError::Status {
                url: shown_url(url),
                status: response.status().as_u16(),
            });
        }
        let body = read_bounded(response, url).await?;
        let unusable = |reason| JwksError::Metadata {
            url: shown_url(url),
            reason,
        };
        let metadata: Metadata =
            serde_json::from_slice(&body).map_err(|_| unusable("not a JSON object"))?;
        if metadata.issuer.as_deref() != Some(self.issuer.as_str()) {
            return Err(unusable("its issuer is not the configured issuer"));
        }
        let uri = metadata
            .jwks_uri
            .ok_or_else(|| unusable("it has no jwks_uri"))?;
        match transport(&uri) {
            Transport::Protected => Ok(uri),
            Transport::Clear if self.allow_insecure_http => Ok(uri),
            Transport::Clear => Err(unusable(
                "its jwks_uri is plain http to a host that is not loopback",
            )),
            Transport::Unusable => Err(unusable("its jwks_uri is not an http(s) URL")),
        }
    }

    async fn fetch_keys(&self, uri: &str, etag: Option<&str>) -> Result<Fetched, JwksError> {
        let response = self.get(uri, etag).await?;
        let status = response.status();
        let max_age = max_age(response.headers());
        if status == StatusCode::NOT_MODIFIED && etag.is_some() {
            return Ok(Fetched::NotModified { max_age });
        }
        if !status.is_success() {
            return Err(JwksError::Status {
                url: shown_url(uri),
                status: status.as_u16(),
            });
        }
        let etag = response
            .headers()
            .get(ETAG)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let body = read_bounded(response, uri).await?;
        Ok(Fetched::Keys {
            set: KeySet::from_json(&body)?,
            etag,
            max_age,
        })
    }

    async fn get(&self, url: &str, etag: Option<&str>) -> Result<reqwest::Response, JwksError> {
        let mut request = self.client.get(url).header(ACCEPT, "application/json");
        if let Some(etag) = etag {
            request = request.header(IF_NONE_MATCH, etag);
        }
        request.send().await.map_err(|source| JwksError::Http {
            url: shown_url(url),
            source: source.without_url(),
        })
    }
}

async fn read_bounded(mut response: reqwest::Response, url: &str) -> Result<Vec<u8>, JwksError> {
    let too_large = || JwksError::TooLarge {
        url: shown_url(url),
        limit: MAX_BODY,
    };
    if response
        .content_length()
        .is_some_and(|length| length > MAX_BODY as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|source| JwksError::Http {
        url: shown_url(url),
        source: source.without_url(),
    })? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// How a discovered `jwks_uri` would carry the keys.
#[derive(Debug, PartialEq, Eq)]
enum Transport {
    /// https, or http that never leaves the machine.
    Protected,
    /// Plain http to a host that is not loopback.
    Clear,
    Unusable,
}

fn transport(uri: &str) -> Transport {
    let Ok(url) = reqwest::Url::parse(uri) else {
        return Transport::Unusable;
    };
    match (url.scheme(), url.host_str()) {
        ("https", Some(_)) => Transport::Protected,
        ("http", Some(host)) if is_loopback(host) => Transport::Protected,
        ("http", Some(_)) => Transport::Clear,
        _ => Transport::Unusable,
    }
}

/// Where an issuer's metadata may be: RFC 8414 §3.1 inserts the well-known
/// segment between host and path; many servers append it instead, and
/// OpenID Connect Discovery §4 appends `openid-configuration`.
fn metadata_urls(issuer: &str) -> Vec<String> {
    let issuer = issuer.trim_end_matches('/');
    let Some(scheme_end) = issuer.find("://") else {
        return Vec::new();
    };
    let authority_end = issuer[scheme_end + 3..]
        .find('/')
        .map_or(issuer.len(), |at| scheme_end + 3 + at);
    let (origin, path) = issuer.split_at(authority_end);
    let mut urls = vec![format!(
        "{origin}/.well-known/oauth-authorization-server{path}"
    )];
    if !path.is_empty() {
        urls.push(format!("{issuer}/.well-known/oauth-authorization-server"));
    }
    urls.push(format!("{issuer}/.well-known/openid-configuration"));
    urls
}

/// `max-age` of a response's `Cache-Control` (RFC 9111 §5.2.2.1);
/// `no-cache`/`no-store` ask for the shortest interval.
pub(super) fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let mut found = None;
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let (name, argument) = directive.split_once('=').unwrap_or((directive, ""));
            match name.trim().to_ascii_lowercase().as_str() {
                "no-cache" | "no-store" => return Some(Duration::ZERO),
                "max-age" => found = found.or_else(|| seconds(argument)),
                _ => {}
            }
        }
    }
    found
}

fn seconds(argument: &str) -> Option<Duration> {
    let digits = argument.trim().trim_matches('"');
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    // RFC 9111 §1.2.2: an overflowing delta-seconds means "very long".
    Some(Duration::from_secs(digits.parse().unwrap_or(u64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn cache_control(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(CACHE_CONTROL, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn max_age_is_read_from_cache_control() {
        let secs = |values| max_age(&cache_control(values)).map(|age| age.as_secs());
        assert_eq!(secs(&["public, max-age=600"]), Some(600));
        assert_eq!(secs(&["Max-Age=\"90\""]), Some(90));
        assert_eq!(secs(&["max-age=99999999999999999999999"]), Some(u64::MAX));
        assert_eq!(secs(&["max-age=ten"]), None);
        assert_eq!(secs(&["private", "max-age=7"]), Some(7));
        assert_eq!(secs(&["max-age=600, no-cache"]), Some(0));
        assert_eq!(secs(&[]), None);
    }

    #[tokio::test]
    async fn a_failed_fetch_does_not_tell_the_password_of_its_url() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = closed.local_addr().expect("address").port();
        drop(closed);
        let url = format!("http://svc:jwks-pw-123@127.0.0.1:{port}/jwks");
        let fetcher = Fetcher::new(reqwest::Client::new(), url.clone(), Some(url), false);
        let error = fetcher
            .fetch(None, Duration::from_secs(5))
            .await
            .err()
            .expect("nothing listens");
        let text = format!("{error} / {error:?}");
        assert!(matches!(error, JwksError::Http { .. }), "{text}");
        assert!(!text.contains("jwks-pw-123"), "{text}");
        assert!(text.contains("http://****@127.0.0.1"), "{text}");
    }

    #[test]
    fn a_discovered_jwks_uri_in_the_clear_is_only_loopback() {
        for uri in [
            "https://idp.example/jwks",
            "http://127.0.0.1:8080/jwks",
            "http://localhost/jwks",
            "http://[::1]/jwks",
        ] {
            assert_eq!(transport(uri), Transport::Protected, "{uri}");
        }
        for uri in ["http://idp.example/jwks", "http://10.0.0.1/jwks"] {
            assert_eq!(transport(uri), Transport::Clear, "{uri}");
        }
        for uri in ["file:///etc/jwks", "/jwks", "ftp://idp/jwks"] {
            assert_eq!(transport(uri), Transport::Unusable, "{uri}");
        }
    }

    #[test]
    fn metadata_urls_follow_rfc8414_then_oidc() {
        assert_eq!(
            metadata_urls("http://idp:8080/"),
            [
                "http://idp:8080/.well-known/oauth-authorization-server",
                "http://idp:8080/.well-known/openid-configuration",
            ]
        );
        assert_eq!(
            metadata_urls("https://idp/realms/x"),
            [
                "https://idp/.well-known/oauth-authorization-server/realms/x",
                "https://idp/realms/x/.well-known/oauth-authorization-server",
                "https://idp/realms/x/.well-known/openid-configuration",
            ]
        );
        assert!(metadata_urls("idp").is_empty());
    }
}
