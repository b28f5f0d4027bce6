//! The validators of each auth server of the serving snapshot. Rebuilt on
//! every snapshot, but an auth server whose settings did not change keeps
//! its validators (and with them its JWKS and verified-token cache); the
//! introspection cache drops the entries of an auth server that changed.
//! Prepared before a snapshot is swapped in, so a request never meets an
//! auth server without validators; and those of an auth server the new
//! snapshot removed stay for one more snapshot, so that a request that
//! began on the old one (which still names it) is validated as it says.
//! An auth server that changed validates with its new settings at once,
//! requests begun before the change included.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use super::cache::IntrospectionCache;
use super::introspection::{IntrospectionSettings, Introspector};
use super::jwks::{JwksSource, KeySet, RemoteOptions};
use super::jwt::{JwtRules, JwtValidator};
use super::{AuthFailure, Principal, TokenProblem};
use crate::config::snapshot::{AuthServer, LocalIntrospection};
use crate::config::Snapshot;

/// Verified JWTs remembered per auth server.
const VERIFIED_CACHE_CAPACITY: usize = 10_000;
/// Introspection results remembered across all auth servers.
const INTROSPECTION_CACHE_CAPACITY: usize = 100_000;

/// How one auth server validates tokens.
pub struct Validators {
    settings: Arc<AuthServer>,
    /// Whether its JWTs are checked against this instance's own keys.
    in_process: bool,
    jwt: Option<JwtValidator>,
    remote: Option<Introspector>,
}

impl Validators {
    pub fn jwt(&self) -> Option<&JwtValidator> {
        self.jwt.as_ref()
    }

    /// Its key source, when validators of `settings` would fetch keys
    /// from the same place the same way: a change of the audience, the
    /// clock skew or the introspection client keeps the keys it has (a
    /// JWKS endpoint down at that moment would otherwise refuse every
    /// token until it is back).
    fn same_keys(&self, settings: &AuthServer, in_process: bool) -> Option<Arc<JwksSource>> {
        let (before, after) = (self.settings.local.as_ref()?, settings.local.as_ref()?);
        let same = self.in_process == in_process
            && before.issuer == after.issuer
            && before.jwks_uri == after.jwks_uri
            && before.trust_store == after.trust_store
            && before.allow_insecure_http == after.allow_insecure_http;
        let jwt = self.jwt.as_ref().filter(|_| same)?;
        Some(Arc::clone(jwt.jwks()))
    }
}

/// What a JWT of `local` must be. This instance's authorization server
/// writes its issuer without a trailing `/`; `in_process` already matched
/// them that way.
fn rules_of(local: &LocalIntrospection, in_process: bool) -> JwtRules {
    let issuer = match in_process {
        true => local.issuer.trim_end_matches('/').to_owned(),
        false => local.issuer.clone(),
    };
    JwtRules {
        issuer,
        audience: local.audience.clone(),
        leeway: local.clock_skew,
        accept_jwt_typ: local.accept_jwt_typ,
    }
}

pub struct Authenticator {
    servers: ArcSwap<Generations>,
    introspection_cache: Arc<IntrospectionCache>,
    /// Keys of this instance's authorization server, published in-process.
    local_keys: Arc<ArcSwap<KeySet>>,
    http: reqwest::Client,
}

/// Validators by auth server id.
type ById = HashMap<Arc<str>, Arc<Validators>>;

/// The validators of the serving snapshot's auth servers, and those of the
/// snapshot it replaced.
#[derive(Default)]
struct Generations {
    current: ById,
    previous: ById,
}

impl Generations {
    /// The serving snapshot's validators of `auth_server`, or else those
    /// it had in the snapshot before (where a request begun there still
    /// finds the auth server the serving one removed).
    fn of(&self, auth_server: &str) -> Option<&Arc<Validators>> {
        self.current
            .get(auth_server)
            .or_else(|| self.previous.get(auth_server))
    }
}

impl Default for Authenticator {
    fn default() -> Self {
        Authenticator::new()
    }
}

/// The client for JWKS, discovery and introspection: no redirects (a
/// redirect could send credentials elsewhere), bounded connect time.
fn http_client(ca_bundle: Option<&[u8]>) -> reqwest::Client {
    let builder = || {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(60))
    };
    let Some(pem) = ca_bundle else {
        return builder().build().unwrap_or_default();
    };
    // The bundle replaces the system roots, with the certificates in it
    // that can be trusted as roots (as `check` reads it: one block that
    // cannot would fail the whole client). A client that cannot be made
    // trusts nothing (fetches fail, 503), never the system's roots.
    builder()
        .tls_certs_only(
            crate::config::ca_bundle::usable_certificates(pem)
                .iter()
                .filter_map(|cert| reqwest::Certificate::from_der(cert).ok()),
        )
        .build()
        .unwrap_or_else(|error| {
            tracing::error!(%error, "cannot make a client for the trust store; its fetches fail");
            trusting_nothing()
        })
}

/// A client every request of which fails: no root to trust, and sent
/// through a proxy that is no one (the discard port on loopback).
fn trusting_nothing() -> reqwest::Client {
    reqwest::Proxy::all("http://127.0.0.1:9")
        .and_then(|proxy| {
            reqwest::Client::builder()
                .tls_certs_only(Vec::new())
                .proxy(proxy)
                .redirect(reqwest::redirect::Policy::none())
                .build()
        })
        // Unreachable unless no TLS client can be made in this process at
        // all: the default client then panics as it is made.
        .unwrap_or_else(|_| reqwest::Client::new())
}

impl Authenticator {
    pub fn new() -> Authenticator {
        Authenticator {
            servers: ArcSwap::from_pointee(Generations::default()),
            introspection_cache: Arc::new(IntrospectionCache::new(INTROSPECTION_CACHE_CAPACITY)),
            local_keys: Arc::new(ArcSwap::from_pointee(KeySet::default())),
            http: http_client(None),
        }
    }

    /// Where this instance's authorization server publishes its keys.
    pub fn local_keys(&self) -> &Arc<ArcSwap<KeySet>> {
        &self.local_keys
    }

    /// Builds the validators for `snapshot`, keeping unchanged ones.
    pub fn prepare(&self, snapshot: &Snapshot) {
        let own_issuer = snapshot
            .authorization_server
            .as_ref()
            .map(|a| a.issuer.as_str());
        let generations = self.servers.load();
        let current = &generations.current;
        let next: ById = snapshot
            .auth_servers
            .iter()
            .map(|(id, settings)| {
                let in_process = settings
                    .local
                    .as_ref()
                    .is_some_and(|l| Some(l.issuer.trim_end_matches('/')) == own_issuer);
                let before = current.get(id);
                let kept = before
                    .filter(|v| *v.settings == **settings && v.in_process == in_process)
                    .cloned();
                let validators = kept.unwrap_or_else(|| {
                    self.introspection_cache.clear_auth_server(id);
                    let keys = before.and_then(|v| v.same_keys(settings, in_process));
                    Arc::new(self.build(id, settings, in_process, keys))
                });
                (id.clone(), validators)
            })
            .collect();
        for id in current.keys().filter(|id| !next.contains_key(*id)) {
            self.introspection_cache.clear_auth_server(id);
        }
        self.servers.store(Arc::new(Generations {
            current: next,
            previous: current.clone(),
        }));
    }

    /// The validators of `settings`; `keys`, the key source of the ones
    /// they replace when it fetches from the same place (its last good
    /// set and its refresh kept).
    fn build(
        &self,
        id: &Arc<str>,
        settings: &Arc<AuthServer>,
        in_process: bool,
        keys: Option<Arc<JwksSource>>,
    ) -> Validators {
        let jwt = settings.local.as_ref().map(|local| {
            if let Some(source) = keys {
                return JwtValidator::new(id.clone(), rules_of(local, in_process), source, VERIFIED_CACHE_CAPACITY);
            }
            let source = if in_process {
                JwksSource::local(id.clone(), self.local_keys.clone())
            } else {
                let client = match &local.trust_store {
                    Some(bundle) => http_client(Some(&bundle.pem)),
                    None => self.http.clone(),
                };
                let mut options = RemoteOptions::new(local.issuer.clone(), local.jwks_uri.clone(), client);
                options.allow_insecure_http = local.allow_insecure_http;
                JwksSource::remote(id.clone(), options)
            };
            let source = Arc::new(source);
            if !in_process {
                let first = source.clone();
                tokio::spawn(async move {
                    if let Err(error) = first.refresh().await {
                        tracing::warn!(auth_server = %first.auth_server(), %error, "JWKS not loaded yet");
                    }
                    first.spawn_refresh();
                });
            }
            JwtValidator::new(id.clone(), rules_of(local, in_process), source, VERIFIED_CACHE_CAPACITY)
        });
        let remote = settings.remote.as_ref().and_then(|remote| {
            let endpoint = reqwest::Url::parse(&remote.endpoint).ok()?;
            let mut introspection = IntrospectionSettings::new(
                endpoint,
                remote.client_id.clone(),
                remote.client_secret.clone(),
            );
            introspection.client_auth = remote.client_auth;
            introspection.audience = remote.audience.clone();
            // The opaque tokens of an auth server are held to the issuer
            // and the clock skew its JWTs are.
            if let Some(local) = &settings.local {
                let rules = rules_of(local, in_process);
                introspection.issuer = Some(rules.issuer);
                introspection.leeway = rules.leeway;
            }
            introspection.cache_ttl = remote.cache_ttl;
            introspection.negative_cache_ttl = remote.negative_cache_ttl;
            Some(Introspector::new(
                id.clone(),
                introspection,
                self.http.clone(),
                self.introspection_cache.clone(),
            ))
        });
        Validators {
            settings: settings.clone(),
            in_process,
            jwt,
            remote,
        }
    }

    /// The auth servers that validate JWTs and have no keys yet, by id:
    /// their tokens get 503 until the keys are fetched.
    pub fn jwks_pending(&self) -> Vec<Arc<str>> {
        let mut pending: Vec<Arc<str>> = self
            .servers
            .load()
            .current
            .iter()
            .filter(|(_, v)| v.jwt.as_ref().is_some_and(|jwt| !jwt.jwks().is_ready()))
            .map(|(id, _)| id.clone())
            .collect();
        pending.sort();
        pending
    }

    pub fn validators(&self, auth_server: &str) -> Option<Arc<Validators>> {
        self.servers.load().of(auth_server).cloned()
    }

    /// Validates `token` for `auth_server`: a JWT locally when the auth
    /// server has `localIntrospectionConfig`, anything else by introspection.
    pub async fn authenticate(
        &self,
        auth_server: &Arc<str>,
        token: &str,
        now: SystemTime,
    ) -> Result<Arc<Principal>, AuthFailure> {
        let Some(validators) = self.validators(auth_server) else {
            return Err(AuthFailure::Unavailable {
                auth_server: auth_server.clone(),
                cause: "auth server not prepared".into(),
            });
        };
        let looks_like_jwt = count_dots(token.as_bytes()) == 2;
        match (&validators.jwt, &validators.remote, looks_like_jwt) {
            (Some(jwt), _, true) => jwt.validate(token, now).await,
            (_, Some(remote), _) => remote.validate(token, now).await,
            (Some(_), None, false) | (None, None, _) => {
                Err(AuthFailure::Invalid(TokenProblem::Malformed))
            }
        }
    }
}

/// The `.`s in a token. Counted in byte-wide lanes, in chunks that cannot
/// overflow them, so the count vectorizes: tokens run to KiBs.
fn count_dots(bytes: &[u8]) -> usize {
    bytes
        .chunks(255)
        .map(|chunk| usize::from(chunk.iter().fold(0u8, |n, &b| n + u8::from(b == b'.'))))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::first_snapshot;

    /// `partners` (opaque tokens, introspected at `endpoint`) and an API on
    /// it, or, without `endpoint`, neither.
    fn snapshot(endpoint: Option<&str>) -> Snapshot {
        let yaml = match endpoint {
            Some(endpoint) => format!(
                "security_settings:\n  auth_servers:\n  - id: partners\n    name: partners\n    remoteIntrospectionConfig: {{ introspectionEndpoint: \"{endpoint}\", clientId: gw, clientSecret: s }}\napis:\n- name: Partners\n  base_path: /partners\n  upstream: {{ url: \"http://127.0.0.1:9/\" }}\n  authentication: {{ type: oauth2, auth_server: partners }}\n  resources: [\"GET /status\"]\n"
            ),
            None => "apis: []\n".to_owned(),
        };
        first_snapshot(&yaml)
    }

    #[test]
    fn an_auth_server_removed_still_validates_for_the_snapshot_before() {
        let auth = Authenticator::new();
        auth.prepare(&snapshot(Some("http://127.0.0.1:9/introspect")));
        let prepared = auth.validators("partners").expect("prepared");
        // A request that began on the first snapshot finds its validators
        // after the second is prepared (and swapped in).
        auth.prepare(&snapshot(None));
        let found = auth.validators("partners").expect("kept for one snapshot");
        assert!(Arc::ptr_eq(&prepared, &found));
        assert!(auth.jwks_pending().is_empty());
        auth.prepare(&snapshot(None));
        assert!(auth.validators("partners").is_none());
    }

    #[test]
    fn an_auth_server_changed_validates_with_its_new_settings_at_once() {
        let auth = Authenticator::new();
        auth.prepare(&snapshot(Some("http://127.0.0.1:9/introspect")));
        let before = auth.validators("partners").expect("prepared");
        auth.prepare(&snapshot(Some("http://127.0.0.1:9/introspect")));
        let unchanged = auth.validators("partners").expect("prepared");
        assert!(Arc::ptr_eq(&before, &unchanged), "kept: the same settings");
        auth.prepare(&snapshot(Some("http://127.0.0.1:10/introspect")));
        let changed = auth.validators("partners").expect("prepared");
        assert!(!Arc::ptr_eq(&before, &changed));
        assert_ne!(changed.settings, before.settings);
    }

    #[test]
    fn dots_are_counted_across_chunks() {
        assert_eq!(count_dots(b""), 0);
        assert_eq!(count_dots(b"a.b.c"), 2);
        let many = ".".repeat(600);
        assert_eq!(count_dots(many.as_bytes()), 600);
        let jwt_like = format!(
            "{}.{}.{}",
            "h".repeat(300),
            "p".repeat(700),
            "s".repeat(342)
        );
        assert_eq!(count_dots(jwt_like.as_bytes()), 2);
    }
}
