//! Compiled settings of the local authorization server (`authorization_server:`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFormat {
    Jwt,
    Opaque,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantType {
    AuthorizationCode,
    Implicit,
    Password,
    ClientCredentials,
    RefreshToken,
}

impl GrantType {
    pub fn parse(text: &str) -> Option<GrantType> {
        Some(match text {
            "authorization_code" => GrantType::AuthorizationCode,
            "implicit" => GrantType::Implicit,
            "password" => GrantType::Password,
            "client_credentials" => GrantType::ClientCredentials,
            "refresh_token" => GrantType::RefreshToken,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::AuthorizationCode => "authorization_code",
            GrantType::Implicit => "implicit",
            GrantType::Password => "password",
            GrantType::ClientCredentials => "client_credentials",
            GrantType::RefreshToken => "refresh_token",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub name: String,
    pub client_id: String,
    /// `None` = public client (PKCE required).
    pub client_secret: Option<Secret>,
    pub redirect_uris: Vec<RedirectUri>,
    pub grant_types: Vec<GrantType>,
    pub scopes: Vec<String>,
    /// `None` = never expires (opaque tokens only).
    pub token_lifetime: Option<Duration>,
    pub refresh_limit: u32,
    /// How long after a rotation its rotated refresh token, presented
    /// again by this client, is a retry of that rotation (whose answer was
    /// lost) rather than reuse; zero = never (whole seconds, at most 5m).
    pub refresh_reuse_interval: Duration,
    /// A resource server: introspection answers it with what a token
    /// says; every other client gets `{"active":false}` (RFC 7662 §4).
    pub introspect: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub username: String,
    /// PHC string (`$argon2id$…`).
    pub password_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeDef {
    pub name: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub issuer: String,
    pub token_format: TokenFormat,
    pub signing_key_path: PathBuf,
    /// From `store: sqlite:PATH`.
    pub store_path: PathBuf,
    /// From `store: postgres://…`: then the store is PostgreSQL and
    /// `store_path` is unused.
    pub postgres: Option<PostgresStore>,
    pub require_https: bool,
    pub authorization_code_lifetime: Duration,
    /// How long a refresh token family lives from its grant: rotation
    /// hands the next token the same expiry.
    pub refresh_token_lifetime: Duration,
    pub require_pkce: bool,
    /// How often expired tokens and codes are removed; `None` (written
    /// `0`): only by `remove-expired`.
    pub cleanup_interval: Option<Duration>,
    pub approval_page: Option<PathBuf>,
    /// The approval template's source, read when the snapshot was compiled.
    pub approval_template: Option<String>,
    pub branding: Branding,
    pub scopes: Vec<ScopeDef>,
    pub users: Vec<User>,
    pub clients: Vec<Client>,
    pub audience: Option<String>,
}

/// `authorization_server.branding`, validated: shown on every page of the
/// approval page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Branding {
    pub name: Option<String>,
    /// An `https://` URL or a path on this server (`/…`).
    pub logo_url: Option<String>,
    /// `scheme://host[:port]` of an external logo: the page's CSP
    /// `img-src` allows exactly this origin (`'self'` for a path).
    pub logo_origin: Option<String>,
    /// `#rrggbb`.
    pub primary_color: Option<String>,
    /// Text on the primary colour: `#000000` or `#ffffff`, whichever
    /// contrasts more.
    pub on_primary_color: Option<String>,
    /// An `https://` URL or a path on this server.
    pub support_url: Option<String>,
}

/// A registered redirect URI, and what of it a request may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectUri {
    pub uri: String,
    /// On a loopback IP literal (`http://127.0.0.1/cb`, `http://[::1]:8000/cb`):
    /// where its host ends and what follows its port begins (RFC 8252
    /// §7.3: a native app listens on a port of its choosing).
    loopback: Option<(usize, usize)>,
}

impl RedirectUri {
    pub fn new(uri: String) -> RedirectUri {
        let loopback = loopback_port_span(&uri);
        RedirectUri { uri, loopback }
    }

    /// Whether a request's `redirect_uri` names this one: exactly (RFC
    /// 9700 §4.1.3), or on a loopback IP literal with any port but the
    /// same scheme, host, path and query (RFC 8252 §7.3). `localhost` is
    /// no IP literal and is compared exactly (RFC 8252 §8.3).
    pub fn matches(&self, given: &str) -> bool {
        if given == self.uri {
            return true;
        }
        let Some((host_end, rest)) = self.loopback else {
            return false;
        };
        let Some(after_host) = given.strip_prefix(&self.uri[..host_end]) else {
            return false;
        };
        let after_port = match after_host.strip_prefix(':') {
            Some(port_and_rest) => {
                let digits = port_and_rest.bytes().take_while(u8::is_ascii_digit).count();
                if port_and_rest[..digits].parse::<u16>().is_err() {
                    return false;
                }
                &port_and_rest[digits..]
            }
            None => after_host,
        };
        after_port == &self.uri[rest..]
    }
}

/// Where the host of `uri` ends and what follows its port begins, when
/// its host is a loopback IP literal and it has no user information.
fn loopback_port_span(uri: &str) -> Option<(usize, usize)> {
    let scheme_end = uri.find("://")? + "://".len();
    let authority_len = uri[scheme_end..]
        .find(['/', '?', '#'])
        .unwrap_or(uri.len() - scheme_end);
    let authority = &uri[scheme_end..scheme_end + authority_len];
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => &authority[..bracketed.find(']')? + 2],
        None => authority.split(':').next()?,
    };
    let port = &authority[host.len()..];
    if !port.is_empty() && port.strip_prefix(':')?.parse::<u16>().is_err() {
        return None;
    }
    let ip: std::net::IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    ip.is_loopback()
        .then_some((scheme_end + host.len(), scheme_end + authority_len))
}

impl Client {
    pub fn is_confidential(&self) -> bool {
        self.client_secret.is_some()
    }

    pub fn allows(&self, grant: GrantType) -> bool {
        self.grant_types.contains(&grant)
    }
}

impl Settings {
    pub fn client(&self, client_id: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.client_id == client_id)
    }

    /// The audience tokens are issued for. RFC 9068 §3: without a `resource`
    /// parameter the server uses a default resource indicator; ours is the
    /// configured `audience`, else the issuer itself.
    pub fn token_audience(&self) -> &str {
        self.audience.as_deref().unwrap_or(&self.issuer)
    }
}

/// How the PostgreSQL store's connections are secured (`sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgTls {
    /// Plain TCP (or a Unix socket).
    Disable,
    /// TLS; the certificate chain is verified against the trusted roots,
    /// the host name is not.
    Require,
    /// TLS; chain and host name verified.
    VerifyFull,
}

/// The PostgreSQL store, from `store: postgres://USER:PASSWORD@HOST:PORT/DB?…`
/// and `store_pool:`. `Debug` never shows the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresStore {
    /// A host name, an IP address, or (from `?host=/dir`) a Unix socket
    /// directory.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    pub dbname: String,
    pub tls: PgTls,
    /// PEM CA certificates from `sslrootcert=PATH`, read when compiled;
    /// the system roots otherwise.
    pub ca_bundle: Option<Arc<[u8]>>,
    pub max_connections: usize,
    pub connect_timeout: Duration,
}

impl PostgresStore {
    /// The URL as logs and diagnostics show it: no password.
    pub fn display(&self) -> String {
        let password = if self.password.is_some() { ":****" } else { "" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "postgres://{}{password}@{host}:{}/{}",
            self.user, self.port, self.dbname
        )
    }
}

#[cfg(test)]
mod tests {
    use super::RedirectUri;

    #[test]
    fn a_loopback_ip_literal_takes_any_port_and_nothing_else() {
        for (registered, taken, refused) in [
            (
                "http://127.0.0.1/cb",
                &[
                    "http://127.0.0.1/cb",
                    "http://127.0.0.1:51234/cb",
                    "http://127.0.0.1:80/cb",
                ][..],
                &[
                    "http://127.0.0.1:51234/cb/",
                    "http://127.0.0.1:51234/cb?x=1",
                    "https://127.0.0.1:51234/cb",
                    "http://127.0.0.1:65536/cb",
                    "http://127.0.0.1:/cb",
                    "http://127.0.0.1:1@evil.example/cb",
                    "http://127.0.0.1.evil.example/cb",
                    "http://127.0.0.2:51234/cb",
                    "http://[::1]:51234/cb",
                ][..],
            ),
            (
                "http://[::1]:8000/cb?x=1",
                &[
                    "http://[::1]:8000/cb?x=1",
                    "http://[::1]:9/cb?x=1",
                    "http://[::1]/cb?x=1",
                ],
                &[
                    "http://[::1]:9/cb",
                    "http://[::1]:9/cb?x=2",
                    "http://127.0.0.1:9/cb?x=1",
                ],
            ),
            // RFC 8252 §8.3: a name, even `localhost`, is compared exactly.
            (
                "http://localhost:8000/cb",
                &["http://localhost:8000/cb"],
                &["http://localhost:8001/cb", "http://localhost/cb"],
            ),
            (
                "https://app.example/cb",
                &["https://app.example/cb"],
                &["https://app.example:8443/cb"],
            ),
        ] {
            let uri = RedirectUri::new(registered.to_owned());
            for given in taken {
                assert!(uri.matches(given), "{registered} should take {given}");
            }
            for given in refused {
                assert!(!uri.matches(given), "{registered} should refuse {given}");
            }
        }
    }
}
