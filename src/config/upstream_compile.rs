//! Compiling an upstream of several endpoints (`upstream.endpoints`):
//! their URLs and weights, the balancing, passive and active health and
//! retries, each value checked against its bounds. The round-robin order
//! is computed here, once per snapshot.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use super::context::Ctx;
use super::raw::{self, Location, Scalar, S};
use super::snapshot::*;

const MAX_WEIGHT: u32 = 100;
const MAX_ATTEMPTS: u32 = 5;
const MAX_CONSECUTIVE: u32 = 1000;
const MAX_THRESHOLD: u32 = 100;
const RETRY_ALLOWED: &str = "connect_failure, refused_stream";

/// An upstream's URL, taken apart once: scheme, authority, `Host` value
/// and the path without its trailing slash.
pub type UpstreamUrl = (http::uri::Scheme, http::uri::Authority, HeaderValue, String);

/// The upstream URL `url` (the value of `key`), or an error: it must be
/// `http(s)`, without query or fragment, and without user information. Credentials in
/// `user:password@` would travel as the `Host` field, in clear, and show
/// wherever the URL does (admin views, metric labels); the upstream gets
/// them through `outbound_auth`. The refusal does not repeat the URL.
pub fn upstream_url(ctx: &mut Ctx, url: &S<Scalar>, key: &str) -> Option<UpstreamUrl> {
    let text = url.value.0.trim();
    if super::secret::has_user_information(text) {
        ctx.report.error(
            url.referenced,
            format!("{key} holds user information (`user:password@`), which would be sent in clear as the Host field"),
            "http://host[:port]/path, with credentials for the upstream in `policies.outbound_auth` (an alias, or type: basic)",
        );
        return None;
    }
    // RFC 9110 §4.2.5: a fragment is not sent in a request; parsed, it
    // would be dropped without a word, and a `#` meant as part of the
    // path is `%23`.
    let shown = super::secret::shown_url(text);
    if text.contains('#') {
        ctx.report.error(
            url.referenced,
            format!("{key} `{shown}` has a fragment (`#…`), which is never sent to the upstream"),
            "http://host[:port]/path or https://…, without `#` (`%23` in a path)",
        );
        return None;
    }
    let parsed = parse_url(text);
    if parsed.is_none() {
        ctx.report.error(
            url.referenced,
            format!("{key} `{shown}` is not an http(s) URL without query"),
            "http://host[:port]/path or https://…",
        );
    }
    parsed
}

fn parse_url(text: &str) -> Option<UpstreamUrl> {
    let u = http::Uri::from_str(text).ok()?;
    let scheme = u.scheme().cloned()?;
    let authority = u.authority().cloned()?;
    let host = HeaderValue::from_str(authority.as_str()).ok()?;
    (matches!(scheme.as_str(), "http" | "https") && u.query().is_none()).then(|| {
        (
            scheme,
            authority,
            host,
            u.path().trim_end_matches('/').to_owned(),
        )
    })
}

/// Whether an upstream written with `url` asks for what only balanced
/// upstreams do (health, retries, DNS TTL): it is then one endpoint.
pub fn wants_balancing(up: &raw::Upstream) -> bool {
    up.balance.is_some() || up.health.is_some() || up.retry.is_some() || up.dns_ttl.is_some()
}

pub fn balanced(
    ctx: &mut Ctx,
    up: &S<raw::Upstream>,
    timeout: Duration,
    ca_bundle: Option<CaBundle>,
) -> Option<Upstream> {
    let raw = &up.value;
    let written: Vec<(&S<Scalar>, Option<&S<Scalar>>)> = match (&raw.url, &raw.endpoints) {
        (Some(url), Some(_)) => {
            ctx.report.error(
                url.referenced,
                "upstream has both `url` and `endpoints`",
                "one of them: `url` for one endpoint, `endpoints` for several",
            );
            return None;
        }
        (Some(url), None) => vec![(url, None)],
        (None, Some(list)) => {
            if list.value.is_empty() || list.value.len() > MAX_ENDPOINTS {
                ctx.report.error(
                    list.referenced,
                    format!("upstream.endpoints lists {} endpoints", list.value.len()),
                    format!("1 to {MAX_ENDPOINTS} endpoints"),
                );
                return None;
            }
            let mut written = Vec::with_capacity(list.value.len());
            for entry in &list.value {
                let url = ctx.required(&entry.value.url, entry.referenced, "endpoints[].url")?;
                written.push((url, entry.value.weight.as_ref()));
            }
            written
        }
        (None, None) => {
            ctx.report.error(
                up.referenced,
                "upstream has neither `url`, `endpoints` nor `echo: true`",
                "one of them",
            );
            return None;
        }
    };
    let mut endpoints = Vec::with_capacity(written.len());
    let mut seen = HashSet::new();
    let mut ok = true;
    for (url, weight) in written {
        let weight = match weight {
            None => 1,
            Some(w) => bounded(ctx, w, "endpoints[].weight", 1, MAX_WEIGHT).unwrap_or(1),
        };
        let Some((scheme, authority, host, path)) =
            upstream_url(ctx, url, "upstream.endpoints[].url")
        else {
            ok = false;
            continue;
        };
        let name: Arc<str> = format!("{scheme}://{authority}{path}").into();
        if !seen.insert(name.clone()) {
            ctx.report.error(
                url.referenced,
                format!("upstream endpoint `{name}` is listed twice"),
                "each endpoint once (give it a weight instead)",
            );
            ok = false;
            continue;
        }
        endpoints.push(Endpoint {
            url: name,
            scheme,
            authority,
            host,
            path,
            weight,
        });
    }
    let balance = match raw
        .balance
        .as_ref()
        .map(|b| (b.value.as_str(), b.referenced))
    {
        None | Some(("round_robin", _)) => Balance::RoundRobin,
        Some(("least_requests", _)) => Balance::LeastRequests,
        Some((other, at)) => {
            ctx.report.error(
                at,
                format!("upstream.balance `{other}` is not known"),
                "round_robin, least_requests",
            );
            Balance::RoundRobin
        }
    };
    let health = raw.health.as_ref().map(|h| &h.value);
    let passive = passive(ctx, health.and_then(|h| h.passive.as_ref()));
    let active = health
        .and_then(|h| h.active.as_ref())
        .and_then(|a| active(ctx, a));
    let retry = retry(ctx, raw.retry.as_ref());
    let dns_ttl = within(
        ctx,
        &raw.dns_ttl,
        "upstream.dns_ttl",
        Duration::from_secs(30),
        (Duration::ZERO, Duration::from_secs(3600)),
    );
    if !ok || endpoints.is_empty() {
        return None;
    }
    let schedule = smooth_weighted(&endpoints.iter().map(|e| e.weight).collect::<Vec<_>>());
    Some(Upstream::Balanced(Arc::new(Balanced {
        endpoints,
        balance,
        timeout,
        ca_bundle,
        passive,
        active,
        retry,
        schedule,
        dns_ttl,
    })))
}

/// One turn of smooth weighted round robin (as nginx does it): each index
/// as often as its weight (divided by their common divisor), interleaved.
pub fn smooth_weighted(weights: &[u32]) -> Vec<u8> {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|w| i64::from(w / divisor)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(u8::try_from(best).unwrap_or(u8::MAX));
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn bounded(ctx: &mut Ctx, value: &S<Scalar>, key: &str, min: u32, max: u32) -> Option<u32> {
    let allowed = format!("an integer from {min} to {max}");
    let n: u32 = ctx.number(value, key, &allowed)?;
    if n < min || n > max {
        ctx.report.error(
            value.referenced,
            format!("{key}: {n} is out of bounds"),
            allowed,
        );
        return None;
    }
    Some(n)
}

fn within(
    ctx: &mut Ctx,
    value: &Option<S<Scalar>>,
    key: &str,
    default: Duration,
    (min, max): (Duration, Duration),
) -> Duration {
    let d = ctx.duration(value, key, default);
    if d < min || d > max {
        if let Some(value) = value {
            ctx.report.error(
                value.referenced,
                format!("{key}: `{}` is out of bounds", value.value.0),
                format!("from {min:?} to {max:?}"),
            );
        }
        return default;
    }
    d
}

fn passive(ctx: &mut Ctx, raw: Option<&S<raw::PassiveHealth>>) -> PassiveHealth {
    let mut passive = PassiveHealth {
        consecutive_failures: 5,
        eject_for: Duration::from_secs(30),
        max_ejected_percent: 50,
    };
    let Some(raw) = raw else { return passive };
    let raw = &raw.value;
    if let Some(n) = &raw.consecutive_failures {
        let key = "health.passive.consecutive_failures";
        passive.consecutive_failures = bounded(ctx, n, key, 1, MAX_CONSECUTIVE).unwrap_or(5);
    }
    passive.eject_for = within(
        ctx,
        &raw.eject_for,
        "health.passive.eject_for",
        passive.eject_for,
        (Duration::from_millis(100), Duration::from_secs(3600)),
    );
    if let Some(max) = &raw.max_ejected {
        let text = max.value.0.trim();
        let number = text.strip_suffix('%').unwrap_or(text).trim();
        match number.parse::<u32>() {
            Ok(n) if n <= 100 => passive.max_ejected_percent = n,
            _ => ctx.report.error(
                max.referenced,
                format!("health.passive.max_ejected: `{text}` is not a percentage"),
                "0% to 100%",
            ),
        }
    }
    passive
}

fn active(ctx: &mut Ctx, raw: &S<raw::ActiveHealth>) -> Option<ActiveHealth> {
    let at: Location = raw.referenced;
    let raw = &raw.value;
    let path = ctx.required(&raw.path, at, "health.active.path")?;
    let target_ok = path.value.starts_with('/')
        && path.value.len() <= 1024
        && path
            .value
            .bytes()
            .all(|b| b > b' ' && b != 0x7f && b != b'#');
    if !target_ok {
        ctx.report.error(
            path.referenced,
            format!("health.active.path `{}` is not a request path", path.value),
            "a path starting with `/`, no spaces, at most 1024 bytes",
        );
        return None;
    }
    let interval = within(
        ctx,
        &raw.interval,
        "health.active.interval",
        Duration::from_secs(5),
        (Duration::from_millis(100), Duration::from_secs(3600)),
    );
    let timeout = within(
        ctx,
        &raw.timeout,
        "health.active.timeout",
        Duration::from_secs(1),
        (Duration::from_millis(10), Duration::from_secs(60)),
    );
    let threshold = |ctx: &mut Ctx, value: &Option<S<Scalar>>, key, default| match value {
        Some(v) => bounded(ctx, v, key, 1, MAX_THRESHOLD).unwrap_or(default),
        None => default,
    };
    let healthy = threshold(ctx, &raw.healthy, "health.active.healthy", 2);
    let unhealthy = threshold(ctx, &raw.unhealthy, "health.active.unhealthy", 3);
    Some(ActiveHealth {
        path: path.value.clone(),
        interval,
        timeout,
        healthy,
        unhealthy,
    })
}

fn retry(ctx: &mut Ctx, raw: Option<&S<raw::Retry>>) -> Retry {
    let mut retry = Retry {
        attempts: 2,
        connect_failure: true,
        refused_stream: true,
    };
    let Some(raw) = raw else { return retry };
    let raw = &raw.value;
    if let Some(n) = &raw.attempts {
        retry.attempts = bounded(ctx, n, "retry.attempts", 1, MAX_ATTEMPTS).unwrap_or(2);
    }
    if let Some(on) = &raw.on {
        retry.connect_failure = false;
        retry.refused_stream = false;
        for cause in &on.value {
            match cause.value.as_str() {
                "connect_failure" => retry.connect_failure = true,
                "refused_stream" => retry.refused_stream = true,
                other => ctx.report.error(
                    cause.referenced,
                    format!("retry.on `{other}` is not known"),
                    RETRY_ALLOWED,
                ),
            }
        }
    }
    retry
}

#[cfg(test)]
mod tests {
    use super::smooth_weighted;

    #[test]
    fn smooth_weighted_interleaves_by_weight() {
        assert_eq!(smooth_weighted(&[1, 1, 1]), vec![0, 1, 2]);
        assert_eq!(smooth_weighted(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_weighted(&[2, 2]), vec![0, 1]);
    }
}
