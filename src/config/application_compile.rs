//! Compiling `applications:`: each application's credentials indexed for
//! lookup (API keys as SHA-256 digests, Basic users with their Argon2 PHC
//! strings, certificate fingerprints, OAuth2 client ids), its IP ranges,
//! and its subscriptions and API scopes checked against the APIs of the
//! file. A credential names one application: a key, user name, client id
//! or certificate listed twice is an error, wherever it is.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use super::context::{names, Ctx};
use super::password_hashes;
use super::raw::{self, S};
use super::snapshot::{AppAccess, Application, Applications, AuthServer};
use super::Secret;

const FINGERPRINT_ALLOWED: &str =
    "\"sha256:AB:CD:…\": the SHA-256 of the certificate's DER, 32 hex bytes, colons optional";

/// What a subscription or an API scope may name: the APIs of the file.
pub struct ApiNames<'a> {
    /// (name, version, API scope names) of every API.
    pub apis: Vec<(&'a str, String, Vec<&'a str>)>,
}

impl<'a> ApiNames<'a> {
    pub fn of(list: &'a [S<raw::Api>]) -> ApiNames<'a> {
        let apis = list
            .iter()
            .filter_map(|api| {
                let name = api.value.name.as_ref()?.value.as_str();
                let version = api.value.version_or_default();
                let scopes = api
                    .value
                    .scopes
                    .iter()
                    .filter_map(|s| s.value.name.as_ref().map(|n| n.value.as_str()))
                    .collect();
                Some((name, version, scopes))
            })
            .collect();
        ApiNames { apis }
    }

    fn list(&self) -> String {
        names(self.apis.iter().map(|(n, v, _)| format!("{n}:{v}")))
    }
}

pub fn compile(
    ctx: &mut Ctx,
    list: &[S<raw::Application>],
    apis: &ApiNames,
    auth_servers: &BTreeMap<Arc<str>, Arc<AuthServer>>,
) -> Applications {
    let mut out = Applications::default();
    let mut by_name: HashMap<String, ()> = HashMap::new();
    let mut keys: HashMap<[u8; 32], ()> = HashMap::new();
    for entry in list {
        let raw = &entry.value;
        let Some(name) = ctx.required(&raw.name, entry.referenced, "application name") else {
            continue;
        };
        if let Some(problem) = name_problem(&name.value) {
            ctx.report.error(
                name.referenced,
                format!(
                    "application name `{}` {problem}",
                    name.value.escape_debug()
                ),
                "a name without control characters, neither beginning nor ending with whitespace, such as `Partner portal`",
            );
        } else if !name.value.is_ascii() {
            ctx.report.warning(
                name.referenced,
                format!(
                    "application name `{}` is not ASCII: an upstream given `${{request.application.name}}` receives its UTF-8 bytes, which HTTP leaves to the recipient to read (RFC 9110 §5.5; many read them as Latin-1)",
                    name.value
                ),
            );
        }
        if by_name.insert(name.value.clone(), ()).is_some() {
            ctx.report.error(
                name.referenced,
                format!("application `{}` is defined twice", name.value),
                "a distinct name per application",
            );
            continue;
        }
        let index = out.list.len();
        for key in &raw.api_keys {
            let Some(secret) = ctx.secret(key, "api_keys") else {
                continue;
            };
            // An API key is the whole credential, and a wrong one locks
            // nothing out: every API that takes keys is where to guess.
            ctx.short_secret(
                key.referenced,
                &secret,
                &format!("an API key of application `{}`", name.value),
                "at the APIs that take API keys (a wrong key is not locked out)",
            );
            let digest: [u8; 32] = Sha256::digest(secret.expose().as_bytes()).into();
            if keys.insert(digest, ()).is_some() {
                ctx.report.error(
                    key.referenced,
                    "this API key is given to two applications (or twice)",
                    "each API key once",
                );
                continue;
            }
            out.api_keys.push((digest, index));
        }
        let basic_users = basic_users(ctx, raw, index, &mut out);
        let mut certificates = Vec::new();
        for text in &raw.certificates {
            let Some(fingerprint) = fingerprint(&text.value) else {
                ctx.report.error(
                    text.referenced,
                    format!("`{}` is not a certificate fingerprint", text.value),
                    FINGERPRINT_ALLOWED,
                );
                continue;
            };
            if out.certificates.insert(fingerprint, index).is_some() {
                ctx.report.error(
                    text.referenced,
                    "this certificate is given to two applications (or twice)",
                    "each certificate once",
                );
                continue;
            }
            certificates.push(fingerprint);
        }
        let trusted = trusted_servers(ctx, raw, auth_servers);
        for id in &raw.client_ids {
            let given = out.client_ids.entry(id.value.clone()).or_default();
            let shared = given
                .iter()
                .any(|&other| overlap(&out.list[other].auth_servers, &trusted));
            if shared {
                ctx.report.error(
                    id.referenced,
                    format!(
                        "client id `{}` is given to two applications (or twice) at the same auth server",
                        id.value
                    ),
                    "each client id once per auth server (an application's `auth_servers` say which)",
                );
                continue;
            }
            given.push(index);
        }
        let ip_ranges = allowed_cidrs(ctx, &raw.ip_ranges, "ip_ranges");
        for subscription in &raw.apis {
            let readings = subscribed(apis, &subscription.value);
            if readings.is_empty() {
                ctx.report.error(
                    subscription.referenced,
                    format!(
                        "application subscribes to `{}`, which is not an API of this file",
                        subscription.value
                    ),
                    format!("an API name, or name:version: {}", apis.list()),
                );
            } else if readings.len() > 1 {
                // `Shop:Admin` as version `Admin` of `Shop` and as the API
                // `Shop:Admin`: subscribing to both would let the
                // application call what it may not have been meant to.
                ctx.report.error(
                    subscription.referenced,
                    format!(
                        "application subscribes to `{}`, which reads as {}",
                        subscription.value,
                        names(readings.iter().map(|api| format!("API `{api}`")))
                    ),
                    "an API name (or name:version) that reads one way: rename the API",
                );
            }
        }
        let by_token_only =
            raw.api_keys.is_empty() && raw.basic_users.is_empty() && raw.certificates.is_empty();
        if let (Some(first), true) = (raw.api_scopes.first(), by_token_only) {
            // A token keeps the OAuth2 rules: its own scopes, mapped.
            ctx.report.warning(
                first.referenced,
                format!(
                    "application `{}` has api_scopes but no API key, Basic user or certificate: its tokens are judged by their own scopes, and these grant nothing",
                    name.value
                ),
            );
        }
        for api_scope in &raw.api_scopes {
            let readings = granted(apis, &api_scope.value);
            if readings.is_empty() {
                ctx.report.error(
                    api_scope.referenced,
                    format!(
                        "api scope `{}` is not a scope of an API of this file",
                        api_scope.value
                    ),
                    "\"API name:scope name\" of an API's `scopes:`",
                );
            } else if readings.len() > 1 {
                // As a scope mapping's: granting both would give the
                // application what it may not have meant.
                super::context::ambiguous_api_scope(ctx, api_scope, readings.iter().copied());
            }
        }
        out.list.push(Arc::new(Application {
            index,
            metrics: crate::metrics::ApplicationMetrics::of(&name.value),
            name: Arc::from(name.value.as_str()),
            client_ids: raw.client_ids.iter().map(|c| c.value.clone()).collect(),
            auth_servers: trusted,
            basic_users,
            api_keys: raw.api_keys.len(),
            certificates,
            ip_ranges,
            apis: raw.apis.iter().map(|a| a.value.clone()).collect(),
            api_scopes: raw.api_scopes.iter().map(|a| a.value.clone()).collect(),
        }));
    }
    out.dummy_basic_user = dummy_basic_user(&out.basic_users);
    out
}

/// Of the users whose hashes have the parameters most have, the first by
/// name (whatever order the map keeps them in).
fn dummy_basic_user(users: &HashMap<String, (usize, Secret)>) -> Option<String> {
    use argon2::password_hash::phc::PasswordHash;
    let parsed: Vec<(&String, PasswordHash)> = users
        .iter()
        .filter_map(|(name, (_, hash))| Some((name, PasswordHash::new(hash.expose()).ok()?)))
        .collect();
    let commonest = password_hashes::commonest_params(parsed.iter().map(|(_, h)| h));
    parsed
        .iter()
        .filter(|(_, h)| argon2::Params::try_from(h).is_ok_and(|p| p == commonest))
        .map(|(name, _)| (*name).clone())
        .min()
}

/// The auth servers an application's `auth_servers` name (left out: any).
fn trusted_servers(
    ctx: &mut Ctx,
    raw: &raw::Application,
    auth_servers: &BTreeMap<Arc<str>, Arc<AuthServer>>,
) -> Vec<Arc<str>> {
    ctx.refuse_written_empty(
        &raw.auth_servers,
        "auth_servers",
        "match client_ids on tokens of every auth server",
        "the auth servers that issued the client ids, or no `auth_servers` for any".into(),
    );
    let mut trusted = Vec::new();
    for name in &raw.auth_servers.value {
        match auth_servers.get_key_value(name.value.as_str()) {
            Some((id, _)) if !trusted.contains(id) => trusted.push(id.clone()),
            Some(_) => {}
            None => ctx.report.error(
                name.referenced,
                format!("auth server `{}` is not defined", name.value),
                format!(
                    "one of: {}",
                    names(auth_servers.keys().map(|k| k.to_string()))
                ),
            ),
        }
    }
    trusted
}

/// Whether two applications' auth servers (empty: any) have one in common.
fn overlap(a: &[Arc<str>], b: &[Arc<str>]) -> bool {
    a.is_empty() || b.is_empty() || a.iter().any(|server| b.contains(server))
}

/// What keeps an application's name from reaching an upstream as written
/// (`${request.application.name}`): a control character (RFC 9110 §5.5:
/// none but tab is in a field value; a tab in a name is taken for one of
/// the others), or whitespace around it, which parsers strip (§5.5), so
/// the upstream would read another name.
fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty: metrics, logs and `${request.application.name}` would not tell the application apart")
    } else if name.chars().any(char::is_control) {
        Some("contains a control character, which a name passed to an upstream (`${request.application.name}`) may not hold: a line break would refuse every request of the application")
    } else if name.starts_with(char::is_whitespace) || name.ends_with(char::is_whitespace) {
        Some("begins or ends with whitespace: an upstream given `${request.application.name}` would read it stripped, as another name")
    } else {
        None
    }
}

fn basic_users(
    ctx: &mut Ctx,
    raw: &raw::Application,
    index: usize,
    out: &mut Applications,
) -> Vec<String> {
    let mut users = Vec::new();
    for user in &raw.basic_users {
        let (Some(name), Some(hash)) = (
            ctx.required(&user.value.username, user.referenced, "username"),
            ctx.required(&user.value.password_hash, user.referenced, "password_hash"),
        ) else {
            continue;
        };
        let Some(username) = ctx.basic_user(name.referenced, &name.value, "basic_users.username")
        else {
            continue;
        };
        if let Err(problem) = password_hashes::parse(&hash.value) {
            ctx.report.error(
                hash.referenced,
                problem.to_string(),
                password_hashes::ALLOWED,
            );
            continue;
        }
        if out
            .basic_users
            .insert(username.clone(), (index, Secret::new(hash.value.clone())))
            .is_some()
        {
            ctx.report.error(
                name.referenced,
                format!("Basic user `{username}` is defined twice"),
                "each user name once across applications",
            );
            continue;
        }
        users.push(username);
    }
    users
}

/// The CIDRs a caller must come from, when a list says so: left out, any
/// address. Written empty (`allow: []`, a template that rendered no
/// ranges), it reads as "no one" while it would let in everyone: an error.
pub fn allowed_cidrs(ctx: &mut Ctx, list: &S<Vec<S<String>>>, key: &str) -> Vec<IpNet> {
    ctx.refuse_written_empty(
        list,
        key,
        "allow every address",
        format!("the CIDRs allowed, or no `{key}` to allow every address"),
    );
    cidrs(ctx, &list.value, key)
}

/// CIDRs (or single addresses) of a list, each wrong one reported.
pub fn cidrs(ctx: &mut Ctx, list: &[S<String>], key: &str) -> Vec<IpNet> {
    list.iter()
        .filter_map(|text| {
            let value = text.value.trim();
            let parsed = value
                .parse::<IpNet>()
                .ok()
                .or_else(|| value.parse::<std::net::IpAddr>().ok().map(IpNet::from));
            let Some(net) = parsed else {
                ctx.report.error(
                    text.referenced,
                    format!("{key}: `{}` is not a CIDR", text.value),
                    "an address range such as 10.0.0.0/8 or fd00::/8, or one address",
                );
                return None;
            };
            // `10.1.2.3/8` is all of 10.0.0.0/8: most likely one address
            // meant, and a range a thousand times wider taken.
            if net != net.trunc() {
                ctx.report.error(
                    text.referenced,
                    format!(
                        "{key}: `{}` has address bits past its /{} prefix",
                        text.value,
                        net.prefix_len()
                    ),
                    format!(
                        "{} for the range, or {} for the one address",
                        net.trunc(),
                        net.addr()
                    ),
                );
                return None;
            }
            Some(canonical(net))
        })
        .collect()
}

/// An IPv4-mapped range (`::ffff:10.0.0.0/104`) as the IPv4 range it
/// stands for (`10.0.0.0/8`): client addresses are judged canonical (an
/// IPv4 peer of a dual-stack port is its IPv4 address), so the mapped
/// form would match none of them. Other ranges are kept as written.
fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => v6
            .network()
            .to_ipv4_mapped()
            .and_then(|v4| ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).ok())
            .map_or(net, IpNet::V4),
        _ => net,
    }
}

/// `sha256:AB:CD:…`, `ab:cd:…` or `abcd…`: 32 bytes in hex, any case.
pub fn fingerprint(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    let hex = match text.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("sha256:") => &text[7..],
        _ => text,
    };
    let digits: Vec<u8> = hex.bytes().filter(|b| *b != b':').collect();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(digits.chunks(2)) {
        let high = (pair[0] as char).to_digit(16)?;
        let low = (pair[1] as char).to_digit(16)?;
        *slot = u8::try_from(high * 16 + low).ok()?;
    }
    Some(out)
}

/// The APIs of the file a subscription (`name` or `name:version`) names,
/// by name (one unless a name holds a `:`; an API's versions are one).
fn subscribed<'a>(apis: &ApiNames<'a>, subscription: &str) -> BTreeSet<&'a str> {
    apis.apis
        .iter()
        .filter(|(name, version, _)| names_api(subscription, name, version))
        .map(|(name, _, _)| *name)
        .collect()
}

/// Whether `subscription` names the API `name` `version`.
pub fn names_api(subscription: &str, name: &str, version: &str) -> bool {
    subscription == name
        || subscription
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .is_some_and(|v| v == version)
}

/// The scope `API:scope` names of the API `name`, if it names one of it:
/// an API or a scope name may hold a `:` too (`Orders:orders:read`).
pub fn scope_of<'g>(api_scope: &'g str, name: &str) -> Option<&'g str> {
    api_scope.strip_prefix(name)?.strip_prefix(':')
}

/// The (API, scope) readings of `API:scope`: each split at a `:` that
/// leaves an API of the file and one of its scopes (one unless a name
/// holds a `:`).
fn granted<'a, 'g>(apis: &ApiNames<'a>, api_scope: &'g str) -> BTreeSet<(&'a str, &'g str)> {
    apis.apis
        .iter()
        .filter_map(|(name, _, scopes)| {
            scope_of(api_scope, name)
                .filter(|s| scopes.contains(s))
                .map(|s| (*name, s))
        })
        .collect()
}

/// What each application may do on the API `name` `version`, whose API
/// scopes are `api_scopes`.
pub fn access(
    applications: &Applications,
    name: &str,
    version: &str,
    api_scopes: &[String],
) -> Vec<AppAccess> {
    applications
        .list
        .iter()
        .map(|app| AppAccess {
            subscribed: app.apis.iter().any(|s| names_api(s, name, version)),
            api_scopes: app
                .api_scopes
                .iter()
                .filter_map(|granted| {
                    let scope = scope_of(granted, name)?;
                    api_scopes.iter().position(|s| s == scope)
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unknown Basic user is checked against a user whose hash costs
    /// what most users' hashes cost, whichever order the map keeps.
    #[test]
    fn the_dummy_basic_user_has_the_parameters_most_users_have() {
        use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
        let hash = |m_cost| {
            let params = Params::new(m_cost, 1, 1, None).expect("params");
            let hashed = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(b"pw")
                .expect("hash");
            Secret::new(hashed.to_string())
        };
        let mut users = HashMap::new();
        users.insert("alone".to_owned(), (0, hash(64)));
        users.insert("most-b".to_owned(), (0, hash(16)));
        users.insert("most-a".to_owned(), (1, hash(16)));
        assert_eq!(dummy_basic_user(&users).as_deref(), Some("most-a"));
        assert_eq!(dummy_basic_user(&HashMap::new()), None);
    }

    #[test]
    fn fingerprints_in_any_case_with_or_without_colons() {
        let colons = "sha256:".to_owned() + &["AB"; 32].join(":");
        let bare = "ab".repeat(32);
        assert_eq!(fingerprint(&colons), Some([0xab; 32]));
        assert_eq!(fingerprint(&bare), Some([0xab; 32]));
        assert_eq!(fingerprint(&format!("SHA256:{bare}")), Some([0xab; 32]));
        assert_eq!(fingerprint("sha256:AB"), None);
        assert_eq!(fingerprint(&"zz".repeat(32)), None);
    }

    #[test]
    fn an_ipv4_mapped_range_is_the_ipv4_range_it_stands_for() {
        let net = |text: &str| canonical(text.parse().expect("a CIDR"));
        assert_eq!(net("::ffff:10.0.0.0/104"), "10.0.0.0/8".parse().unwrap());
        assert_eq!(net("::ffff:192.0.2.1/128"), "192.0.2.1/32".parse().unwrap());
        assert_eq!(net("::ffff:0:0/96"), "0.0.0.0/0".parse().unwrap());
        // Other IPv6 ranges, and ranges wider than the mapped block, stay.
        assert_eq!(net("fd00::/8"), "fd00::/8".parse().unwrap());
        assert_eq!(net("::/0"), "::/0".parse().unwrap());
        assert_eq!(net("10.0.0.0/8"), "10.0.0.0/8".parse().unwrap());
    }

    #[test]
    fn a_subscription_names_an_api_or_one_version_of_it() {
        assert!(names_api("Time travels", "Time travels", "1.0"));
        assert!(names_api("Time travels:1.0", "Time travels", "1.0"));
        assert!(!names_api("Time travels:2.0", "Time travels", "1.0"));
        assert!(!names_api("Time", "Time travels", "1.0"));
    }
}
