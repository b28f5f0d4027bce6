//! Compiling `throttling:` (the store of the counters) and each API's
//! `policies.throttle`. A policy's identity (what its counters are stored
//! under) is decided here, from what it counts and not from the snapshot,
//! so that a reload keeps the counters of the limits it did not change.

use std::collections::HashSet;
use std::time::Duration;

use super::context::Ctx;
use super::plain_http::{self, ClearStore};
use super::raw::{self, S};
use super::secret::shown_url;
use super::snapshot::{
    CaBundle, OnStoreError, OpenedStore, Rate, Resource, SoleCounter, ThrottlePolicy,
    ThrottleStore, Throttling,
};

/// The fields a throttle adds to answers (draft-ietf-httpapi-ratelimit-headers),
/// named here for the throttle and for the CORS policy that exposes them.
pub static RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

const STORE_ALLOWED: &str =
    "memory, or redis://[:PASSWORD@]HOST[:PORT][/DB] or rediss://… for TLS (or a \"${env:NAME}\" / \"${file:/path}\" holding it)";
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
const DEFAULT_MAX_KEYS: usize = 100_000;
/// A store call longer than this would hold requests for longer than any
/// client waits for an answer about a limit.
const MAX_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest period a limit may have (counters expire after it).
const MAX_PER: Duration = Duration::from_secs(31 * 86_400);

pub(super) fn throttling(ctx: &mut Ctx, raw: Option<&S<raw::Throttling>>) -> Throttling {
    let Some(entry) = raw else {
        return Throttling {
            store: ThrottleStore::Memory,
            on_store_error: OnStoreError::Allow,
            timeout: DEFAULT_TIMEOUT,
            max_keys: DEFAULT_MAX_KEYS,
            opened: OpenedStore::default(),
        };
    };
    let raw = &entry.value;
    let store = store(ctx, raw);
    let on_store_error = match raw.on_store_error.as_ref().map(|v| (v.value.0.as_str(), v)) {
        None | Some(("allow", _)) => OnStoreError::Allow,
        Some(("deny", _)) => OnStoreError::Deny,
        Some((other, at)) => {
            ctx.report.error(
                at.referenced,
                format!("throttling.on_store_error: `{other}` is not known"),
                "allow (forward, counted and logged) or deny (503)",
            );
            OnStoreError::Allow
        }
    };
    let timeout = ctx.duration(&raw.timeout, "throttling.timeout", DEFAULT_TIMEOUT);
    if let Some(at) = &raw.timeout {
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            ctx.report.error(
                at.referenced,
                format!("throttling.timeout: `{}` is out of range", at.value.0),
                "from 1ms to 10s",
            );
        }
    }
    let max_keys = match &raw.max_keys {
        None => DEFAULT_MAX_KEYS,
        Some(at) => match ctx.number::<usize>(at, "throttling.max_keys", "an integer from 1") {
            Some(0) => {
                ctx.report.error(
                    at.referenced,
                    "throttling.max_keys: 0 would keep no counter",
                    "an integer from 1",
                );
                DEFAULT_MAX_KEYS
            }
            Some(keys) => keys,
            None => DEFAULT_MAX_KEYS,
        },
    };
    // Only for a store chosen as memory: one whose URL was refused has
    // its own error already.
    if raw.store.as_ref().is_none_or(|at| at.value.0 == "memory") {
        if let Some(password) = &raw.password {
            ctx.report.error(
                password.referenced,
                "throttling.password: set, but the store is memory",
                "password only with a redis:// store",
            );
        }
        if let Some(ca_bundle) = &raw.ca_bundle {
            ctx.report.error(
                ca_bundle.referenced,
                "throttling.ca_bundle: set, but the store is memory",
                "ca_bundle only with a rediss:// store",
            );
        }
    }
    Throttling {
        store,
        on_store_error,
        timeout,
        max_keys,
        opened: OpenedStore::default(),
    }
}

fn store(ctx: &mut Ctx, raw: &raw::Throttling) -> ThrottleStore {
    let Some(at) = &raw.store else {
        return ThrottleStore::Memory;
    };
    if at.value.0 == "memory" {
        return ThrottleStore::Memory;
    }
    // The URL may carry a password: read like any secret, never printed.
    let Some(url) = ctx.secret(at, "throttling.store") else {
        return ThrottleStore::Memory;
    };
    // Read as the Redis client reads it (a WHATWG URL): the host is what
    // the authority names, never an `@…` in the query or the fragment.
    let (tls, parsed) = match redis_url(url.expose()) {
        Ok(read) => read,
        Err(problem) => {
            ctx.report.error(at.referenced, problem, STORE_ALLOWED);
            return ThrottleStore::Memory;
        }
    };
    // The Redis client reads `#insecure` as "do not verify the server".
    if parsed.fragment().is_some() {
        ctx.report.error(
            at.referenced,
            "throttling.store: a `#` fragment (`#insecure` would not verify the server's certificate)",
            STORE_ALLOWED,
        );
        return ThrottleStore::Memory;
    }
    // `start` opens the store with the Redis client's reading of the URL:
    // what it cannot read (a port or database that is no number, a
    // wildcard host) is refused here, by the same reading. Its message
    // could quote the URL, password and all: not shown.
    if redis::IntoConnectionInfo::into_connection_info(url.expose()).is_err() {
        ctx.report.error(at.referenced, CANNOT_READ, STORE_ALLOWED);
        return ThrottleStore::Memory;
    }
    let password = raw
        .password
        .as_ref()
        .and_then(|p| ctx.secret(p, "throttling.password"));
    let ca_bundle = raw.ca_bundle.as_ref().and_then(|at| {
        if !tls {
            ctx.report.error(
                at.referenced,
                "throttling.ca_bundle: set, but the store is redis:// (no TLS)",
                "ca_bundle only with a rediss:// store",
            );
            return None;
        }
        let path = ctx.path(&at.value.0);
        let pem = super::listener_compile::read_ca_bundle(ctx, at, &path)?;
        Some(CaBundle {
            path,
            pem: pem.into(),
        })
    });
    if tls {
        return ThrottleStore::Redis {
            url,
            password,
            ca_bundle,
        };
    }
    let (host, url_password) = host_and_password(&parsed);
    // `redis://` is plain TCP: a password sent to another machine can be
    // read on the way.
    if url_password || raw.password.is_some() {
        let clear = ClearStore {
            key: "throttling.store",
            shown: &shown_url(url.expose()),
            what: "the Redis password (redis:// has no TLS)",
            encrypted: Some("a rediss:// URL (TLS)"),
        };
        plain_http::store(ctx, at.referenced, host, &raw.allow_insecure_store, clear);
    }
    ThrottleStore::Redis {
        url,
        password,
        ca_bundle: None,
    }
}

/// The host a Redis URL names, and whether its user information holds a
/// password.
fn host_and_password(parsed: &url::Url) -> (&str, bool) {
    let password = parsed
        .password()
        .is_some_and(|password| !password.is_empty());
    (parsed.host_str().unwrap_or_default(), password)
}

/// A `rediss://` (TLS: `true`) or `redis://` URL with a host, parsed as
/// the Redis client parses it; or what it is not.
fn redis_url(text: &str) -> Result<(bool, url::Url), &'static str> {
    const NOT_REDIS: &str =
        "throttling.store: neither `memory` nor a redis:// or rediss:// URL with a host";
    let tls = match text.split_once("://") {
        Some(("rediss", _)) => true,
        Some(("redis", _)) => false,
        _ => return Err(NOT_REDIS),
    };
    // Its message could quote the URL, password and all: not shown.
    let parsed = url::Url::parse(text).map_err(|_| CANNOT_READ)?;
    // `Url` drops tabs and line breaks anywhere and spaces at either end:
    // a host written so is refused, as the file does not say it.
    let written = text.split_once("://").map_or(text, |(_, rest)| rest);
    let authority = &written[..written.find(['/', '?', '#']).unwrap_or(written.len())];
    let host_as_written = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let has_host = parsed.host_str().is_some_and(|host| !host.is_empty());
    if !has_host || host_as_written.contains(char::is_whitespace) {
        return Err(NOT_REDIS);
    }
    Ok((tls, parsed))
}

const CANNOT_READ: &str = "throttling.store: a URL the Redis client cannot read (a port or database that is no number, or a wildcard host such as 0.0.0.0)";

/// What a policy list may name: its API and the API's scopes.
pub(super) struct Owner<'a> {
    pub api: &'a str,
    pub version: &'a str,
    pub api_scopes: &'a [String],
    /// Whether a credential identifies the API's callers (not
    /// `authentication: none`).
    pub identifies: bool,
}

pub(super) fn policies(
    ctx: &mut Ctx,
    list: &[S<raw::Throttle>],
    owner: &Owner,
) -> Vec<ThrottlePolicy> {
    let mut compiled: Vec<ThrottlePolicy> = Vec::new();
    let mut names = HashSet::new();
    let mut identities = HashSet::new();
    for entry in list {
        let Some(policy) = policy(ctx, entry, owner) else {
            continue;
        };
        if !identities.insert(policy.identity.clone()) {
            ctx.report.error(
                entry.referenced,
                "this throttle policy counts exactly what another one of the API counts",
                "each limit, period, scope and partition once per API",
            );
            continue;
        }
        if !names.insert(policy.name.clone()) {
            let at = entry
                .value
                .name
                .as_ref()
                .map_or(entry.referenced, |n| n.referenced);
            ctx.report.error(
                at,
                format!(
                    "two throttle policies of this API are named `{}`",
                    policy.name
                ),
                "a distinct `name` per policy (letters, digits, `-`, `_`, `.`)",
            );
            continue;
        }
        compiled.push(policy);
    }
    compiled
}

fn policy(ctx: &mut Ctx, entry: &S<raw::Throttle>, owner: &Owner) -> Option<ThrottlePolicy> {
    let raw = &entry.value;
    let limit = ctx
        .required(&raw.limit, entry.referenced, "throttle.limit")
        .and_then(|at| {
            let limit = ctx.number::<u64>(at, "throttle.limit", "an integer from 1")?;
            if limit == 0 {
                ctx.report.error(
                    at.referenced,
                    "throttle.limit: 0 would refuse every request",
                    "an integer from 1",
                );
                return None;
            }
            Some(limit)
        });
    let per = ctx
        .required(&raw.per, entry.referenced, "throttle.per")
        .and_then(|at| {
            let per = super::resolve::duration(&at.value.0)
                .filter(|per| *per >= Duration::from_millis(1) && *per <= MAX_PER);
            if per.is_none() {
                ctx.report.error(
                    at.referenced,
                    format!(
                        "throttle.per: `{}` is not a duration from 1ms to 31d",
                        at.value.0
                    ),
                    "a duration such as 1s, 1m, 1h or 250ms",
                );
            }
            per
        });
    let api_scope = match &raw.scope {
        None => Some(None),
        Some(at) => match owner.api_scopes.iter().position(|s| *s == at.value) {
            Some(index) => Some(Some(index)),
            None => {
                ctx.report.error(
                    at.referenced,
                    format!("throttle.scope: API scope `{}` is not declared", at.value),
                    format!(
                        "one of the API's scopes: {}",
                        super::context::names(owner.api_scopes.iter().cloned())
                    ),
                );
                None
            }
        },
    };
    let per_application = ctx.boolean(&raw.per_application, "throttle.per_application", false);
    if per_application && !owner.identifies {
        // Every request is then of "neither application nor client": one
        // counter all callers share, which one of them can use up.
        let at = raw
            .per_application
            .as_ref()
            .map_or(entry.referenced, Ctx::at);
        ctx.report.warning(
            at,
            "throttle.per_application on an API with `authentication: none`: no caller is identified, so every request shares one counter",
        );
    }
    let per_client_ip = ctx.boolean(&raw.per_client_ip, "throttle.per_client_ip", false);
    let (limit, per, api_scope) = (limit?, per?, api_scope?);
    if per.as_micros() < u128::from(limit) {
        ctx.report.error(
            entry.referenced,
            "throttle: more than one request per microsecond cannot be counted",
            "a limit no larger than the period in microseconds",
        );
        return None;
    }
    let scope_name = api_scope.map(|i| owner.api_scopes[i].as_str());
    let name = match &raw.name {
        Some(at) if valid_name(&at.value) => at.value.clone(),
        Some(at) => {
            ctx.report.error(
                at.referenced,
                format!("throttle.name `{}` is not a valid policy name", at.value),
                "letters, digits, `-`, `_` and `.`, at most 64",
            );
            return None;
        }
        None => default_name(scope_name, per_application, per_client_ip),
    };
    let identity = serde_json::json!([
        owner.api,
        owner.version,
        scope_name,
        limit,
        per.as_micros() as u64,
        per_application,
        per_client_ip
    ])
    .to_string();
    let policy_field = policy_field(&name, limit, per);
    Some(ThrottlePolicy {
        name,
        identity: identity.into(),
        limit,
        per,
        rate: Rate::of(limit, per),
        api_scope,
        per_application,
        per_client_ip,
        policy_field,
        sole: SoleCounter::default(),
    })
}

/// The policy's item of `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-
/// headers §4): quota `q` per window `w`, in whole seconds. A `per` that
/// is not whole seconds is told as the whole seconds that hold it, with
/// the quota its rate gives them, rounded down (10 per 100 ms: 100 per
/// second), never as more than it admits.
fn policy_field(name: &str, limit: u64, per: Duration) -> String {
    let window = per.as_secs() + u64::from(per.subsec_nanos() > 0);
    let quota = if per.subsec_nanos() == 0 {
        limit
    } else {
        let per_micros = per.as_micros().max(1);
        let quota = u128::from(limit) * u128::from(window) * 1_000_000 / per_micros;
        u64::try_from(quota).unwrap_or(u64::MAX)
    };
    format!("\"{name}\";q={quota};w={window}")
}

/// Gives each resource the policies of `policies` that count requests to
/// it, and their `RateLimit-Policy` field: what the request path would
/// otherwise work out for every request.
pub fn bind(resources: &mut [Resource], policies: &mut [ThrottlePolicy]) {
    // A policy without a partition that always counts alone can keep its
    // count in one number ([`ThrottlePolicy::sole`]); counted together
    // with another, it counts in the store's keys, all or none. A path
    // with a trailing slash counts under the policies of the two
    // resources its readings match (`throttle::Resources`): a policy
    // counts alone only when no throttled resource counts under another.
    let mut counted: Option<Box<[usize]>> = None;
    let mut alone = true;
    for resource in resources.iter_mut() {
        let counting: Box<[usize]> = (0..policies.len())
            .filter(|&i| policies[i].applies_to(resource))
            .collect();
        if !counting.is_empty() {
            match &counted {
                None => counted = Some(counting.clone()),
                Some(first) => alone &= *first == counting,
            }
        }
        resource.ratelimit_policy =
            ThrottlePolicy::field_of(counting.iter().map(|&i| &policies[i]));
        resource.throttle = counting;
    }
    for policy in policies.iter_mut() {
        policy.sole.eligible = false;
    }
    if let (true, Some([only])) = (alone, counted.as_deref()) {
        let policy = &mut policies[*only];
        policy.sole.eligible = !(policy.per_application || policy.per_client_ip);
    }
}

/// A name that is a valid structured-field string and metric label as it is.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `api`, or the scope's name, then what it is counted per.
fn default_name(scope: Option<&str>, per_application: bool, per_client_ip: bool) -> String {
    let mut name: String = match scope {
        Some(scope) => scope
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect(),
        None => "api".to_owned(),
    };
    if per_application {
        name.push_str("-per-application");
    }
    if per_client_ip {
        name.push_str("-per-client-ip");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_of_a_redis_url_and_whether_it_holds_a_password() {
        fn host(url: &str) -> (String, bool) {
            let (_, parsed) = redis_url(url).expect("a Redis URL");
            let (host, password) = host_and_password(&parsed);
            (host.to_owned(), password)
        }
        let read = |host: &str, password| (host.to_owned(), password);
        assert_eq!(
            host("redis://cache.example:6379/0"),
            read("cache.example", false)
        );
        assert_eq!(
            host("redis://:pw@cache.example/0"),
            read("cache.example", true)
        );
        assert_eq!(host("redis://user:p@ss@[::1]:6379"), read("[::1]", true));
        assert_eq!(
            host("redis://user@10.0.0.1?protocol=resp3"),
            read("10.0.0.1", false)
        );
        assert_eq!(host("redis://user:@localhost"), read("localhost", false));
        assert_eq!(
            host("rediss://:pw@cache.example/0"),
            read("cache.example", true)
        );
        // An `@` past the authority (query, fragment, path) names no host:
        // the client connects to the one before it.
        for url in [
            "redis://:pw@192.0.2.2:6379/0?x=@127.0.0.1",
            "redis://:pw@192.0.2.2/?@localhost",
            "redis://:pw@192.0.2.2:6379/0#@127.0.0.1",
            "redis://:pw@192.0.2.2/0/@127.0.0.1",
        ] {
            assert_eq!(host(url), read("192.0.2.2", true), "{url}");
        }
        assert_eq!(redis_url("rediss://h").map(|(tls, _)| tls), Ok(true));
        assert_eq!(redis_url("redis://h").map(|(tls, _)| tls), Ok(false));
        for refused in [
            "http://h",
            "redis://",
            "redis:///0",
            "redis://:pw@/0",
            "redis://ho st",
            " redis://h",
            "redis://h:port/0",
        ] {
            assert!(redis_url(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn default_names_say_what_is_counted() {
        assert_eq!(default_name(None, false, false), "api");
        assert_eq!(
            default_name(Some("Book Tickets"), true, true),
            "Book_Tickets-per-application-per-client-ip"
        );
        assert!(valid_name("api-per-client-ip"));
        assert!(!valid_name("a\"b"));
    }

    /// A window of whole seconds is told as it is; one shorter or not
    /// whole is told as the whole seconds that hold it, at its rate.
    #[test]
    fn the_policy_field_tells_the_rate_in_whole_seconds() {
        let field = |limit, millis| policy_field("p", limit, Duration::from_millis(millis));
        assert_eq!(field(10, 60_000), "\"p\";q=10;w=60");
        assert_eq!(field(10, 100), "\"p\";q=100;w=1");
        assert_eq!(field(3, 1_500), "\"p\";q=4;w=2");
        assert_eq!(field(1, 3_000), "\"p\";q=1;w=3");
    }

    fn policy(name: &str, api_scope: Option<usize>) -> ThrottlePolicy {
        let per = Duration::from_secs(60);
        ThrottlePolicy {
            name: name.to_owned(),
            identity: name.into(),
            limit: 10,
            per,
            rate: Rate::of(10, per),
            api_scope,
            per_application: false,
            per_client_ip: false,
            policy_field: format!("\"{name}\";q=10;w=60"),
            sole: SoleCounter::default(),
        }
    }

    fn resource(api_scopes: Vec<usize>) -> Resource {
        Resource {
            method: http::Method::GET,
            template: super::super::snapshot::Template {
                text: "/".to_owned(),
                segments: Vec::new(),
            },
            api_scopes,
            throttle: Box::default(),
            ratelimit_policy: None,
        }
    }

    #[test]
    fn each_resource_gets_the_policies_that_count_it_and_their_field() {
        let mut policies = [policy("api", None), policy("booking", Some(1))];
        let mut resources = [resource(vec![1]), resource(vec![0]), resource(Vec::new())];
        bind(&mut resources, &mut policies);
        assert_eq!(*resources[0].throttle, [0, 1]);
        assert_eq!(
            resources[0].ratelimit_policy.as_ref().unwrap(),
            r#""api";q=10;w=60, "booking";q=10;w=60"#
        );
        for other in &resources[1..] {
            assert_eq!(*other.throttle, [0]);
            assert_eq!(
                other.ratelimit_policy.as_ref().unwrap(),
                r#""api";q=10;w=60"#
            );
        }
        let mut unthrottled = [resource(vec![1])];
        bind(&mut unthrottled, &mut []);
        assert!(unthrottled[0].throttle.is_empty() && unthrottled[0].ratelimit_policy.is_none());
    }

    #[test]
    fn only_a_policy_that_always_counts_alone_without_a_partition_keeps_a_sole_counter() {
        // Counted alone on every resource that counts it: one number.
        let mut policies = [policy("api", None)];
        bind(
            &mut [resource(vec![0]), resource(Vec::new())],
            &mut policies,
        );
        assert!(policies[0].sole.eligible);
        // Counted with another on one resource: in the store's keys, so
        // that a request counts on both or on neither.
        let mut policies = [policy("api", None), policy("booking", Some(1))];
        bind(&mut [resource(vec![1]), resource(vec![0])], &mut policies);
        assert!(!policies[0].sole.eligible && !policies[1].sole.eligible);
        // A scope's policy alone on the scope's resources, the others
        // unthrottled: one number.
        let mut policies = [policy("booking", Some(1))];
        bind(
            &mut [resource(vec![1]), resource(vec![0]), resource(Vec::new())],
            &mut policies,
        );
        assert!(policies[0].sole.eligible);
        // Two scopes' policies, each alone on its resources: the two
        // readings of a path with a trailing slash may match one resource
        // of each and count under both, so neither keeps one number.
        let mut policies = [policy("viewing", Some(0)), policy("booking", Some(1))];
        bind(&mut [resource(vec![1]), resource(vec![0])], &mut policies);
        assert!(!policies[0].sole.eligible && !policies[1].sole.eligible);
        // Alone, but one counter per client: keyed.
        let mut per_client = policy("api-per-client-ip", None);
        per_client.per_client_ip = true;
        let mut policies = [per_client];
        bind(&mut [resource(Vec::new())], &mut policies);
        assert!(!policies[0].sole.eligible);
    }
}
