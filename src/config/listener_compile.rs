//! Compiling what the listeners are built from: ports and bind addresses,
//! TLS material, admin credentials, trusted proxies, limits and timeouts.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::context::Ctx;
use super::raw::{self, Scalar, S};
use super::snapshot::*;
use super::Secret;

pub(super) fn port(ctx: &mut Ctx, value: &Option<S<Scalar>>, key: &str) -> Option<u16> {
    value
        .as_ref()
        .and_then(|v| ctx.number::<u16>(v, key, "a port number 0-65535"))
}

pub(super) fn ip(ctx: &mut Ctx, value: &Option<S<Scalar>>, key: &str, default: IpAddr) -> IpAddr {
    match value {
        None => default,
        Some(v) if v.value.0 == "localhost" => IpAddr::from([127, 0, 0, 1]),
        Some(v) => ctx
            .number::<IpAddr>(v, key, "an IP address such as 0.0.0.0 or 127.0.0.1")
            .unwrap_or(default),
    }
}

pub(super) fn listen(ctx: &mut Ctx, file: &raw::File) -> Listen {
    let bind = ip(
        ctx,
        &file.ports.bind,
        "ports.bind",
        IpAddr::from([0, 0, 0, 0]),
    );
    let admin_bind = ip(
        ctx,
        &file.admin.bind,
        "admin.bind",
        IpAddr::from([127, 0, 0, 1]),
    );
    let http = port(ctx, &file.ports.http, "ports.http");
    let https = port(ctx, &file.ports.https, "ports.https");
    let admin = match &file.admin.port {
        Some(_) => port(ctx, &file.admin.port, "admin.port"),
        None => Some(9485),
    };
    // Two listeners on one port: `check` says so, not the bind at start.
    let overlap = |a: IpAddr, b: IpAddr| a == b || a.is_unspecified() || b.is_unspecified();
    let listeners = [
        ("ports.http", &file.ports.http, http, bind),
        ("ports.https", &file.ports.https, https, bind),
        ("admin.port", &file.admin.port, admin, admin_bind),
    ];
    // (`admin.port` is 9485 when not written: reported where the other is.)
    for (later, (key, at, port, address)) in listeners.iter().enumerate() {
        let Some(port @ 1..) = port else {
            continue;
        };
        let earlier = listeners[..later]
            .iter()
            .find(|(_, _, other, other_address)| {
                *other == Some(*port) && overlap(*address, *other_address)
            });
        let Some((other, other_at, ..)) = earlier else {
            continue;
        };
        let (key, other, at) = match (at, other_at) {
            (Some(at), _) => (*key, *other, at),
            (None, Some(other_at)) => (*other, *key, other_at),
            (None, None) => continue,
        };
        ctx.report.error(
            at.referenced,
            format!("{key}: port {port} is {other}'s too"),
            "a port of its own for each listener",
        );
    }
    // The admin port's reads (status, settings, assets) need credentials
    // only when credentials are set.
    let loopback = admin_bind.to_canonical().is_loopback();
    if let (Some(bind), false, None) = (&file.admin.bind, loopback, &file.admin.user) {
        ctx.report.warning(
            bind.referenced,
            format!(
                "admin.bind: `{}` without admin.user: status, settings and assets are readable by anyone who reaches the port",
                bind.value.0
            ),
        );
    }
    Listen {
        http: http.map(|p| SocketAddr::new(bind, p)),
        https: https.map(|p| SocketAddr::new(bind, p)),
        admin: admin.map(|p| SocketAddr::new(admin_bind, p)),
        pin_threads: ctx.boolean(&file.ports.pin_threads, "ports.pin_threads", true),
    }
}

pub(super) fn tls(ctx: &mut Ctx, file: &raw::File, listen: &Listen) -> Option<TlsMaterial> {
    let Some(section) = &file.tls else {
        if let (Some(https), Some(_)) = (&file.ports.https, listen.https) {
            ctx.report.error(
                https.referenced,
                "ports.https is set but there is no `tls:` section",
                "a `tls:` section with `certificate` and `key`, or no ports.https",
            );
        }
        return None;
    };
    let at = section.referenced;
    let cert = ctx.required(&section.value.certificate, at, "tls.certificate")?;
    let key = ctx.required(&section.value.key, at, "tls.key")?;
    let certificate_path = ctx.path(&cert.value.0);
    let key_path = ctx.path(&key.value.0);
    // Both named before either is read: while a refused certificate is
    // being fixed, a new key is a change to watch for too.
    ctx.files.push(certificate_path.clone());
    ctx.files.push(key_path.clone());
    let certificate_pem = read_pem(ctx, cert, &certificate_path, "CERTIFICATE")?;
    let key_pem = read_pem(ctx, key, &key_path, "PRIVATE KEY")?;
    let client_ca = client_ca(ctx, &section.value)?;
    Some(TlsMaterial {
        certificate_path,
        key_path,
        certificate_pem,
        key_pem: Secret::new(String::from_utf8_lossy(&key_pem).into_owned()),
        certificate_at: ctx.report.origin(cert.referenced),
        key_at: ctx.report.origin(key.referenced),
        client_ca,
    })
}

/// `tls.client_ca` and `tls.client_auth` (`optional`, the default, or
/// `required`). `Some(None)`: no client certificates are asked for.
fn client_ca(ctx: &mut Ctx, section: &raw::Tls) -> Option<Option<ClientCa>> {
    let required = match section
        .client_auth
        .as_ref()
        .map(|v| (v.value.0.as_str(), v))
    {
        None | Some(("optional", _)) => false,
        Some(("required", _)) => true,
        Some((other, value)) => {
            ctx.report.error(
                value.referenced,
                format!("tls.client_auth `{other}` is not known"),
                "optional or required (with tls.client_ca)",
            );
            return None;
        }
    };
    let Some(ca) = &section.client_ca else {
        if let Some(auth) = &section.client_auth {
            ctx.report.error(
                auth.referenced,
                "tls.client_auth is set but there is no tls.client_ca",
                "tls.client_ca: a PEM bundle of the CAs client certificates chain to",
            );
            return None;
        }
        return Some(None);
    };
    let path = ctx.path(&ca.value.0);
    let pem = read_ca_bundle(ctx, ca, &path)?;
    Some(Some(ClientCa {
        path,
        pem,
        required,
        at: ctx.report.origin(ca.referenced),
    }))
}

/// A CA bundle's PEM, read as [`read_pem`] does, holding at least one
/// certificate that can be trusted as a root: a bundle nothing in which
/// parses would pass `check` and fail every connection at run time.
pub(super) fn read_ca_bundle<T>(ctx: &mut Ctx, at: &S<T>, path: &Path) -> Option<Vec<u8>> {
    let pem = read_pem(ctx, at, path, "CERTIFICATE")?;
    if super::ca_bundle::usable_certificates(&pem).is_empty() {
        ctx.report.error(
            at.referenced,
            format!("{} holds no usable CA certificate", path.display()),
            "PEM certificates that parse",
        );
        return None;
    }
    Some(pem)
}

pub(super) fn read_pem<T>(ctx: &mut Ctx, at: &S<T>, path: &Path, label: &str) -> Option<Vec<u8>> {
    match ctx.read(path) {
        Ok(bytes) if String::from_utf8_lossy(&bytes).contains(&format!("{label}-----")) => {
            Some(bytes)
        }
        Ok(_) => {
            ctx.report.error(
                at.referenced,
                format!("{} is not a PEM {label}", path.display()),
                "a PEM file",
            );
            None
        }
        Err(e) => {
            ctx.report.error(
                at.referenced,
                format!("cannot read {}: {e}", path.display()),
                "a readable PEM file",
            );
            None
        }
    }
}

pub(super) fn admin(ctx: &mut Ctx, admin: &raw::Admin, listen: &Listen) -> Admin {
    let credentials = match (&admin.user, &admin.password) {
        (Some(user), Some(password)) => {
            let name = ctx.basic_user(user.referenced, &user.value.0, "admin.user");
            let secret = ctx.secret(password, "admin.password");
            // Checked on the API ports too (`/oauth2/tokens/remove-expired`):
            // a short one is said when another host can try it.
            let beyond_loopback = [listen.admin, listen.http, listen.https]
                .into_iter()
                .flatten()
                .any(|addr| !addr.ip().to_canonical().is_loopback());
            if let (Some(secret), true) = (&secret, beyond_loopback) {
                ctx.short_secret(
                    password.referenced,
                    secret,
                    "admin.password",
                    "from the other hosts that reach the gateway's ports",
                );
            }
            name.zip(secret)
        }
        (Some(user), None) => {
            ctx.report.error(
                user.referenced,
                "admin.user is set without admin.password",
                "both or neither",
            );
            None
        }
        (None, Some(password)) => {
            ctx.report.error(
                password.referenced,
                "admin.password is set without admin.user",
                "both or neither",
            );
            None
        }
        (None, None) => None,
    };
    Admin { credentials }
}

pub(super) fn trusted_proxies(ctx: &mut Ctx, list: &[S<String>]) -> Vec<ipnet::IpNet> {
    let proxies = super::application_compile::cidrs(ctx, list, "trusted_proxies");
    // Every address a proxy: any client names its own address (and
    // scheme) in `X-Forwarded-For`, past `ip_filter`, `ip_ranges`, the
    // per-address throttles and lockouts.
    for text in list {
        // `::ffff:0.0.0.0/96` is every IPv4 address (`0.0.0.0/0`).
        let everything = text.value.trim().parse::<ipnet::IpNet>();
        let all = |net: ipnet::IpNet| match net {
            ipnet::IpNet::V6(v6) if v6.addr().to_ipv4_mapped().is_some() => v6.prefix_len() <= 96,
            net => net.prefix_len() == 0,
        };
        if everything.is_ok_and(all) {
            ctx.report.warning(
                text.referenced,
                format!(
                    "trusted_proxies: `{}` trusts every address as a proxy; any client can then choose the address the gateway judges",
                    text.value
                ),
            );
        }
    }
    proxies
}

const MIN_HEADER_BYTES: u64 = 1 << 10;
const MAX_HEADER_BYTES: u64 = 1 << 20;

pub(super) fn forwarding(ctx: &mut Ctx, raw: &raw::Forwarding) -> Forwarding {
    let on = Forwarding::default();
    Forwarding {
        x_forwarded: ctx.boolean(&raw.x_forwarded, "forwarding.x_forwarded", on.x_forwarded),
        forwarded: ctx.boolean(&raw.forwarded, "forwarding.forwarded", on.forwarded),
        request_id: ctx.boolean(&raw.request_id, "forwarding.request_id", on.request_id),
        traceparent: ctx.boolean(&raw.traceparent, "forwarding.traceparent", on.traceparent),
    }
}

pub(super) fn limits(ctx: &mut Ctx, raw: &raw::Limits) -> Limits {
    let max_headers = raw
        .max_headers
        .as_ref()
        .and_then(|v| {
            let n = ctx.number::<usize>(v, "limits.max_headers", "a positive integer")?;
            if (1..=MAX_HEADERS).contains(&n) {
                return Some(n);
            }
            let problem = format!("limits.max_headers: `{}` is out of range", v.value.0);
            ctx.report
                .error(Ctx::at(v), problem, format!("1 to {MAX_HEADERS}"));
            None
        })
        .unwrap_or(100);
    let max_connections = count(ctx, &raw.max_connections, "limits.max_connections", 10_000);
    let mut max_header_bytes = ctx.size(&raw.max_header_bytes, "limits.max_header_bytes", 32 << 10);
    // The HTTP/1 read buffer and the HTTP/2 header-list limit (and with
    // it, how many CONTINUATION frames a peer may send) grow with it.
    if let Some(value) = &raw.max_header_bytes {
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&max_header_bytes) {
            ctx.report.error(
                Ctx::at(value),
                format!(
                    "limits.max_header_bytes: `{}` is out of range",
                    value.value.0
                ),
                "1KiB to 1MiB",
            );
            max_header_bytes = 32 << 10;
        }
    }
    Limits {
        max_header_bytes: max_header_bytes as usize,
        max_headers,
        max_uri: max_uri(ctx, &raw.max_uri),
        max_body: ctx.size(&raw.max_body, "limits.max_body", 10 << 20),
        max_connections,
        max_tunnels: count(ctx, &raw.max_tunnels, "limits.max_tunnels", 1_000),
        // 0 refuses none: each HTTP/2 connection then forwards one request
        // at a time, as an HTTP/1.1 connection does.
        max_streams: raw.max_streams.as_ref().map_or(10_000, |value| {
            ctx.number::<usize>(value, "limits.max_streams", "a non-negative integer")
                .unwrap_or(10_000)
        }),
    }
}

/// A limit on how many of something are served at once: 0 would refuse
/// every one, which no one means (a configuration error, not a gateway
/// that answers nothing).
fn count(ctx: &mut Ctx, value: &Option<S<Scalar>>, key: &str, default: usize) -> usize {
    let Some(value) = value else { return default };
    match ctx.number::<usize>(value, key, "a positive integer") {
        Some(0) => {
            ctx.report.error(
                Ctx::at(value),
                format!("{key}: 0 would refuse every one"),
                "a positive integer",
            );
            default
        }
        Some(n) => n,
        None => default,
    }
}

/// `limits.max_uri`: under the shortest target (`/`) every request
/// would be 414.
fn max_uri(ctx: &mut Ctx, value: &Option<S<Scalar>>) -> usize {
    let max_uri = ctx.size(value, "limits.max_uri", 8 << 10);
    match value {
        Some(written) if max_uri == 0 => {
            ctx.report.error(
                Ctx::at(written),
                "limits.max_uri: 0 would refuse every request (414)",
                "a size from 1 byte, such as \"8KiB\"",
            );
            8 << 10
        }
        _ => usize::try_from(max_uri).unwrap_or(usize::MAX),
    }
}

/// `timeouts.tunnel_idle` by default.
const TUNNEL_IDLE: Duration = Duration::from_secs(3600);

pub(super) fn timeouts(ctx: &mut Ctx, raw: &raw::Timeouts) -> Timeouts {
    let secs = Duration::from_secs;
    Timeouts {
        header_read: positive(ctx, &raw.header_read, "timeouts.header_read", secs(10)),
        idle: positive(ctx, &raw.idle, "timeouts.idle", secs(60)),
        upstream_connect: positive(
            ctx,
            &raw.upstream_connect,
            "timeouts.upstream_connect",
            secs(2),
        ),
        // Zero is a choice here: on shutdown, requests in flight are not
        // waited for.
        drain: ctx.duration(&raw.drain, "timeouts.drain", secs(30)),
        body_read: positive(ctx, &raw.body_read, "timeouts.body_read", secs(30)),
        send: positive(ctx, &raw.send, "timeouts.send", secs(30)),
        tunnel_idle: positive(ctx, &raw.tunnel_idle, "timeouts.tunnel_idle", TUNNEL_IDLE),
    }
}

/// A deadline that zero would turn into a refusal of everything it
/// bounds: every head (`header_read`), every kept-alive or busy
/// connection (`idle`), every upstream connection (`upstream_connect`),
/// every body and every response that does not fit in one write
/// (`body_read`, `send`), every tunnel (`tunnel_idle`).
pub(super) fn positive(
    ctx: &mut Ctx,
    raw: &Option<S<Scalar>>,
    key: &str,
    default: Duration,
) -> Duration {
    let value = ctx.duration(raw, key, default);
    match raw {
        Some(at) if value.is_zero() => {
            ctx.report.error(
                Ctx::at(at),
                format!("{key}: must be more than 0"),
                "a duration such as \"30s\" or \"500ms\"",
            );
            default
        }
        _ => value,
    }
}
