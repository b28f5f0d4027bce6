//! Compiling `apis:`: base paths, upstreams, resources and their API scopes,
//! the scope-grant table per auth server, request transformation and
//! outbound auth (CORS and response transformation in their own files). An API says how it authenticates (`type: oauth2` or an
//! explicit `type: none`, which declares no scopes): nothing is open by
//! omission.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use ipnet::IpNet;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::context::{
    basic_header, header_name, is_connection_field_in_any_spelling, names, Ctx, GrantTable,
    CONNECTION_FIELDS,
};
use super::nesting::Placed;
use super::raw::{self, Location, S};
use super::snapshot::*;
use super::template;
use super::template::value_template;

pub struct Refs<'a> {
    pub auth_servers: &'a BTreeMap<Arc<str>, Arc<AuthServer>>,
    pub aliases: &'a BTreeMap<String, Alias>,
    /// Aliases the file has but that were refused, with errors of their own.
    pub refused_aliases: &'a BTreeSet<&'a str>,
    pub scope_mappings: &'a [ScopeMapping],
    pub authorization_server: bool,
    pub applications: &'a Applications,
    pub forwarding: Forwarding,
    /// The API ports `ports` configures.
    pub ports: Transport,
    /// `tls.client_ca` is written: the HTTPS port asks for client certificates.
    pub client_ca: bool,
    /// `tls.client_auth: required` with a `client_ca`: no HTTPS connection
    /// without a certificate.
    pub client_cert_required: bool,
    /// `trusted_proxies`, whose clients are judged by the address they
    /// forward.
    pub trusted_proxies: &'a [IpNet],
}

/// Characters of an API name kept as they are in the default base path.
const NAME_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Paths the local authorization server answers on.
const RESERVED: &[&str] = &["/oauth2", "/invoke", "/.well-known"];

pub fn compile_all(ctx: &mut Ctx, list: &[S<raw::Api>], refs: &Refs) -> Vec<Arc<Api>> {
    let mut apis: Vec<Arc<Api>> = Vec::new();
    let mut by_path: HashMap<String, ()> = HashMap::new();
    let mut by_name: HashSet<(String, String)> = HashSet::new();
    let mut placed: Vec<(String, &S<raw::Api>)> = Vec::new();
    for entry in list {
        let Some(api) = compile(ctx, entry, refs) else {
            continue;
        };
        let at = entry
            .value
            .base_path
            .as_ref()
            .map(|b| b.referenced)
            .unwrap_or(entry.referenced);
        if by_path.insert(api.base_path.clone(), ()).is_some() {
            ctx.report.error(
                at,
                format!("base path `{}` is used by two APIs", api.base_path),
                "a distinct base_path per API",
            );
        }
        if !by_name.insert((api.name.clone(), api.version.clone())) {
            ctx.report.error(
                name_at(entry),
                format!(
                    "API `{}` version `{}` is defined twice",
                    api.name, api.version
                ),
                "a distinct name + version per API",
            );
        }
        if refs.authorization_server {
            let shadowed = RESERVED.iter().find(|reserved| {
                api.base_path.is_empty()
                    || reserved.starts_with(&format!("{}/", api.base_path))
                    || *reserved == &api.base_path
                    || api.base_path.starts_with(&format!("{reserved}/"))
            });
            if let Some(reserved) = shadowed {
                ctx.report.error(
                    at,
                    format!(
                        "base path `{}` shadows `{reserved}`, where the authorization server answers",
                        api.base_path
                    ),
                    "a base path outside /oauth2, /invoke and /.well-known",
                );
            }
        }
        placed.push((api.base_path.clone(), entry));
        apis.push(Arc::new(api));
    }
    let placed: Vec<Placed> = placed
        .iter()
        .map(|(base_path, entry)| Placed { base_path, entry })
        .collect();
    super::nesting::check(ctx, &placed);
    apis.sort_by_key(|api| std::cmp::Reverse(api.base_path.len()));
    apis
}

fn compile(ctx: &mut Ctx, entry: &S<raw::Api>, refs: &Refs) -> Option<Api> {
    let raw = &entry.value;
    let name = ctx_required_str(ctx, &raw.name, entry, "name")?;
    let version = raw.version_or_default();
    let allow_encoded_slashes =
        ctx.boolean(&raw.allow_encoded_slashes, "allow_encoded_slashes", false);
    let name_taken = api_name(ctx, entry, &name);
    let base_path = match &raw.base_path {
        Some(b) => base_path(ctx, b)?,
        None => default_base_path(
            ctx,
            entry,
            (&name, &version),
            name_taken,
            allow_encoded_slashes,
        ),
    };
    let transport = transport(ctx, raw, refs.ports);
    if refs.client_cert_required && transport.http && refs.ports.http {
        // Served on the plain port too, where no certificate is asked.
        ctx.report.warning(
            raw.transport.as_ref().map_or(entry.referenced, |t| t.referenced),
            format!(
                "API `{}` is served on ports.http too, where tls.client_auth: required asks no certificate: set `transport: [https]` to serve it only to clients with one",
                name
            ),
        );
    }
    let websocket = ctx.boolean(&raw.websocket, "websocket", false);
    let tunnel_max_lifetime = raw.tunnel_max_lifetime.as_ref().and_then(|at| {
        let lifetime = ctx.duration(
            &raw.tunnel_max_lifetime,
            "tunnel_max_lifetime",
            Duration::ZERO,
        );
        if lifetime.is_zero() {
            ctx.report.error(
                Ctx::at(at),
                "tunnel_max_lifetime: must be more than 0",
                "a duration such as \"8h\" or \"30m\"",
            );
            return None;
        }
        Some(lifetime)
    });
    // Every part is checked (and reported) before one that failed stops
    // the API from compiling.
    let upstream = upstream(ctx, entry);
    let upstream_bound = upstream_bound(ctx, entry, &name, &version);
    let grpc = ctx.boolean(&raw.grpc, "grpc", false);
    if websocket && upstream.as_ref().is_some_and(Upstream::is_http2) {
        // A tunnel is an HTTP/1.1 connection handed over after its 101.
        ctx.report.error(
            raw.websocket.as_ref().map_or(entry.referenced, Ctx::at),
            "websocket: true needs an HTTP/1.1 upstream (upstream.protocol http1)",
            "websocket on an API whose upstream speaks http1",
        );
    }
    let authentication = super::authentication_compile::authentication(
        ctx,
        entry,
        name_at(entry),
        &super::authentication_compile::Refs {
            auth_servers: refs.auth_servers,
            certificates_unasked: certificates_unasked(refs, transport),
        },
    );
    let api_scopes: Vec<String> = raw
        .scopes
        .iter()
        .filter_map(|s| s.value.name.as_ref().map(|n| n.value.clone()))
        .collect();
    let mut resources = resources(ctx, raw);
    let grants = grants(&name, &api_scopes, refs);
    let transform = transform(ctx, &raw.policies);
    let validates_tokens = authentication.as_ref().map(|a| a.auth_server().is_some());
    let outbound = outbound(ctx, &raw.policies, refs, validates_tokens);
    let cors = super::cors_compile::compile(ctx, &raw.policies, &resources);
    let response_transform = super::response_compile::compile(ctx, &raw.policies);
    let mut throttle = super::throttle_compile::policies(
        ctx,
        &raw.policies.throttle,
        &super::throttle_compile::Owner {
            api: &name,
            version: &version,
            api_scopes: &api_scopes,
            identifies: !matches!(authentication, Some(Authentication::None)),
        },
    );
    super::throttle_compile::bind(&mut resources, &mut throttle);
    super::response_compile::overwritten(
        ctx,
        &raw.policies,
        super::response_compile::OwnFields {
            request_id: refs.forwarding.request_id,
            throttled: !throttle.is_empty(),
        },
    );
    let access =
        super::application_compile::access(refs.applications, &name, &version, &api_scopes);
    let ip_filter = ip_filter(ctx, &raw.ip_filter, refs.trusted_proxies);
    let answer_room = 1
        + if throttle.is_empty() { 0 } else { 2 }
        + if cors.is_some() { 4 } else { 0 }
        + response_transform.set.len();
    let answer_unread = cors.is_none() && response_transform.is_empty();
    Some(Api {
        metrics: ApiMetrics::of(&name, throttle.iter().map(|p| p.name.as_str())),
        answer_room,
        answer_unread,
        base_segments: base_path.split('/').filter(|s| !s.is_empty()).count(),
        name,
        version,
        base_path,
        transport,
        allow_encoded_slashes,
        tail_resources: tail_beside_another(&resources),
        websocket,
        tunnel_max_lifetime,
        grpc_deadlines: grpc && upstream.as_ref().is_some_and(Upstream::is_http2),
        upstream: upstream?,
        authentication: authentication?,
        api_scopes,
        resources,
        grants,
        transform,
        outbound: outbound?,
        cors,
        response_transform,
        throttle,
        access,
        ip_filter,
        grpc,
        upstream_bound,
    })
}

/// `upstream.max_requests`: a positive count, or no bound.
fn upstream_bound(
    ctx: &mut Ctx,
    entry: &S<raw::Api>,
    name: &str,
    version: &str,
) -> Option<UpstreamBound> {
    let at = entry.value.upstream.as_ref()?.value.max_requests.as_ref()?;
    match ctx.number::<usize>(at, "upstream.max_requests", "a positive integer")? {
        0 => {
            ctx.report.error(
                Ctx::at(at),
                "upstream.max_requests: 0 would refuse every request",
                "a positive integer",
            );
            None
        }
        max => Some(UpstreamBound::of(name, version, max)),
    }
}

fn ctx_required_str(
    ctx: &mut Ctx,
    value: &Option<S<String>>,
    entry: &S<raw::Api>,
    key: &str,
) -> Option<String> {
    if value.is_none() {
        ctx.report
            .error(entry.referenced, format!("API `{key}` is missing"), "");
    }
    value.as_ref().map(|v| v.value.clone())
}

/// Whether the API's `name` is one a 401 can name as its realm; refused
/// (told where it is written) when it is empty or has a control character.
fn api_name(ctx: &mut Ctx, entry: &S<raw::Api>, name: &str) -> bool {
    if name.trim().is_empty() {
        ctx.report.error(
            name_at(entry),
            "API name is empty",
            "a name such as `Time travels`",
        );
        return false;
    }
    if name.chars().any(char::is_control) {
        // RFC 7235 §3.1: a 401 carries `WWW-Authenticate`, whose realm is
        // the API's name; no field value holds a control character.
        ctx.report.error(
            name_at(entry),
            format!(
                "API name `{}` contains a control character: its 401 could not name it as the realm",
                name.escape_debug()
            ),
            "a name without control characters, such as `Time travels`",
        );
        return false;
    }
    true
}

/// `/gateway/{name}/{version}`, refused when no request can reach it (a
/// name refused as such, `name_taken` false, is not told again).
fn default_base_path(
    ctx: &mut Ctx,
    entry: &S<raw::Api>,
    (name, version): (&str, &str),
    name_taken: bool,
    allow_encoded_slashes: bool,
) -> String {
    let base_path = format!(
        "/gateway/{}/{}",
        default_segment(name),
        default_segment(version)
    );
    let version_at = entry
        .value
        .version
        .as_ref()
        .map_or(entry.referenced, Ctx::at);
    let segments = [
        ("name", name, name_at(entry), name_taken),
        ("version", version, version_at, true),
    ];
    for (key, text, at, checked) in segments {
        if checked && !reachable_segment(text, allow_encoded_slashes) {
            ctx.report.error(
                at,
                format!(
                    "API {key} `{}` makes a default base path no request can reach (`{base_path}`)",
                    text.escape_debug()
                ),
                format!("a `base_path`, or a {key} without `/` or `\\` that is not `.` or `..`"),
            );
        }
    }
    base_path
}

/// Whether `text` (an API's name or version), as a segment of its default
/// base path, is one a request path can hold: `/` and `\` are encoded
/// (`%2F`, `%5C`), which request paths may not hold unless the API has
/// `allow_encoded_slashes`; `.` and `..` are dot segments, which a path
/// never keeps; an empty one, or one with a control character, none has.
fn reachable_segment(text: &str, allow_encoded_slashes: bool) -> bool {
    let encoded = utf8_percent_encode(text, NAME_KEEP).to_string();
    if crate::path::canonical_segment(&encoded).is_some() {
        return true;
    }
    // With encoded slashes allowed, the rest of the segment decides.
    allow_encoded_slashes
        && text.contains(['/', '\\'])
        && reachable_segment(&text.replace(['/', '\\'], "-"), false)
}

/// `text` (an API's name or version) as a segment of its default base
/// path: percent-encoded, in the canonical form request paths are matched
/// in (`Tom's API` is `Tom's%20API`, as `Tom%27s%20API` is canonicalised
/// to). A name no request segment can hold (`a/b`, `..`) stays encoded.
fn default_segment(text: &str) -> String {
    let encoded = utf8_percent_encode(text, NAME_KEEP).to_string();
    crate::path::canonical_segment(&encoded).unwrap_or(encoded)
}

fn base_path(ctx: &mut Ctx, value: &S<String>) -> Option<String> {
    let text = value.value.trim_end_matches('/');
    match template::path_template(if text.is_empty() { "/" } else { text }) {
        // In canonical form, as request paths are matched against it.
        Ok(t) if t.segments.iter().all(|s| matches!(s, Segment::Literal(_))) => Some(
            t.segments
                .iter()
                .filter_map(|s| match s {
                    Segment::Literal(text) => Some(format!("/{text}")),
                    _ => None,
                })
                .collect(),
        ),
        Ok(_) => {
            ctx.report.error(
                value.referenced,
                format!("base_path `{}` has a parameter", value.value),
                "a literal path such as /travels",
            );
            None
        }
        Err(problem) => {
            ctx.report.error(
                value.referenced,
                format!("base_path: {problem}"),
                "a literal path such as /travels",
            );
            None
        }
    }
}

/// Why a client certificate is never asked for where the API is served,
/// if it is not: only the HTTPS port asks, and only with `tls.client_ca`.
fn certificates_unasked(refs: &Refs, transport: Transport) -> Option<&'static str> {
    if !refs.client_ca {
        Some("tls.client_ca is not set")
    } else if !refs.ports.https {
        Some("ports.https is not set")
    } else if !transport.https {
        Some("the API's transport leaves out https")
    } else {
        None
    }
}

/// `ports` says which API ports there are: a `transport` that names none
/// of them is warned about, not refused (APIs downloaded from a central
/// may name a port this instance does not open).
fn transport(ctx: &mut Ctx, raw: &raw::Api, ports: Transport) -> Transport {
    let Some(list) = &raw.transport else {
        return Transport {
            http: true,
            https: true,
        };
    };
    if list.value.is_empty() {
        ctx.report.error(
            list.referenced,
            "transport is an empty list; the API would be served on no port",
            "http, https, or no `transport` for both",
        );
    }
    let mut transport = Transport {
        http: false,
        https: false,
    };
    for item in &list.value {
        match item.value.as_str() {
            "http" => transport.http = true,
            "https" => transport.https = true,
            other => ctx.report.error(
                item.referenced,
                format!("transport `{other}` is not known"),
                "http, https",
            ),
        }
    }
    let unopened: Vec<&str> = [
        (transport.http, ports.http, "ports.http"),
        (transport.https, ports.https, "ports.https"),
    ]
    .into_iter()
    .filter(|(named, _, _)| *named)
    .map(|(_, open, key)| (!open).then_some(key))
    .collect::<Option<Vec<_>>>()
    .unwrap_or_default();
    if !unopened.is_empty() {
        ctx.report.warning(
            list.referenced,
            format!(
                "the API is served on no port: its transport would serve it on {}, which `ports` does not set",
                unopened.join(" and ")
            ),
        );
    }
    transport
}

fn upstream(ctx: &mut Ctx, entry: &S<raw::Api>) -> Option<Upstream> {
    let Some(up) = &entry.value.upstream else {
        ctx.report.error(
            entry.referenced,
            "API `upstream` is missing",
            "upstream: { url: http://host/path } or { echo: true }",
        );
        return None;
    };
    // 0 would answer every request 504 before the upstream could.
    let timeout = super::listener_compile::positive(
        ctx,
        &up.value.timeout,
        "upstream.timeout",
        Duration::from_secs(30),
    );
    let echo = ctx.boolean(&up.value.echo, "upstream.echo", false);
    let ca_bundle = up.value.ca_bundle.as_ref().and_then(|at| {
        let path = ctx.path(&at.value.0);
        let pem = super::listener_compile::read_ca_bundle(ctx, at, &path)?;
        Some(CaBundle {
            path,
            pem: pem.into(),
        })
    });
    let protocol = match up.value.protocol.as_ref() {
        None => Some(UpstreamProtocol::Http1),
        Some(at) => match at.value.0.trim() {
            "http1" => Some(UpstreamProtocol::Http1),
            "http2" => Some(UpstreamProtocol::Http2),
            "h2c" => Some(UpstreamProtocol::H2c),
            other => {
                ctx.report.error(
                    at.referenced,
                    format!("upstream.protocol `{other}` is not known"),
                    "http1, http2, h2c",
                );
                None
            }
        },
    };
    if up.value.endpoints.is_some() || super::upstream_compile::wants_balancing(&up.value) {
        if echo {
            ctx.report.error(
                up.referenced,
                "upstream has both `endpoints` (or balancing settings) and `echo: true`",
                "one of them",
            );
            return None;
        }
        if let Some(at) = up.value.protocol.as_ref() {
            if protocol != Some(UpstreamProtocol::Http1) {
                ctx.report.error(
                    at.referenced,
                    "upstream.protocol http2 and h2c take one `url`, not `endpoints`",
                    "protocol: http1 with endpoints, or one url",
                );
                return None;
            }
        }
        return super::upstream_compile::balanced(ctx, up, timeout, ca_bundle);
    }
    match (&up.value.url, echo) {
        (Some(url), false) => {
            let protocol = protocol?;
            match super::upstream_compile::upstream_url(ctx, url, "upstream.url")? {
                (scheme, ..) if !protocol_fits(ctx, up, protocol, &scheme) => None,
                (scheme, authority, host, path) => Some(Upstream::Url {
                    host,
                    scheme,
                    authority,
                    path,
                    timeout,
                    ca_bundle,
                    protocol,
                }),
            }
        }
        (None, true) => Some(Upstream::Echo),
        (Some(url), true) => {
            ctx.report.error(
                url.referenced,
                "upstream has both `url` and `echo: true`",
                "one of them",
            );
            None
        }
        (None, false) => {
            ctx.report.error(
                up.referenced,
                "upstream has neither `url` nor `echo: true`",
                "one of them",
            );
            None
        }
    }
}

/// `http2` is TLS (`https://`), `h2c` plain TCP (`http://`).
fn protocol_fits(
    ctx: &mut Ctx,
    up: &S<raw::Upstream>,
    protocol: UpstreamProtocol,
    scheme: &http::uri::Scheme,
) -> bool {
    let https = scheme.as_str() == "https";
    let (fits, name, allowed) = match protocol {
        UpstreamProtocol::Http1 => (true, "http1", ""),
        UpstreamProtocol::Http2 => (https, "http2", "http2 with https://, h2c with http://"),
        UpstreamProtocol::H2c => (!https, "h2c", "h2c with http://, http2 with https://"),
    };
    if !fits {
        let at = up
            .value
            .protocol
            .as_ref()
            .map_or(up.referenced, |p| p.referenced);
        ctx.report.error(
            at,
            format!("upstream.protocol `{name}` does not fit a {scheme}:// url"),
            allowed,
        );
    }
    fits
}

/// Where findings about an API as a whole point: its `name`, else the entry.
fn name_at(entry: &S<raw::Api>) -> Location {
    entry
        .value
        .name
        .as_ref()
        .map(|n| n.referenced)
        .unwrap_or(entry.referenced)
}

fn resources(ctx: &mut Ctx, raw: &raw::Api) -> Vec<Resource> {
    let mut resources: Vec<Resource> = Vec::new();
    let mut scoped: HashMap<(http::Method, Vec<Segment>), usize> = HashMap::new();
    let mut seen_names = HashSet::new();
    for (index, scope) in raw.scopes.iter().enumerate() {
        if let Some(name) = &scope.value.name {
            if !seen_names.insert(name.value.clone()) {
                ctx.report.error(
                    name.referenced,
                    format!("API scope `{}` is declared twice", name.value),
                    "distinct scope names",
                );
            }
        } else {
            ctx.report
                .error(scope.referenced, "API scope `name` is missing", "");
        }
        if scope.value.resources.is_empty() {
            // A mapping to it, or an application given it, grants nothing:
            // most likely its resources were written elsewhere.
            let name = scope.value.name.as_ref().map_or("", |n| n.value.as_str());
            ctx.report.warning(
                scope.referenced,
                format!("API scope `{name}` has no resources; granting it allows nothing"),
            );
        }
        for text in &scope.value.resources {
            let Some((method, template)) = parse_resource(ctx, text) else {
                continue;
            };
            let key = (method.clone(), pattern(&template));
            match scoped.get(&key) {
                Some(&at) => {
                    if !resources[at].api_scopes.contains(&index) {
                        resources[at].api_scopes.push(index);
                    }
                }
                None => {
                    scoped.insert(key, resources.len());
                    resources.push(Resource {
                        method,
                        template,
                        api_scopes: vec![index],
                        throttle: Box::default(),
                        ratelimit_policy: None,
                    });
                }
            }
        }
    }
    let mut open = HashSet::new();
    for text in &raw.resources {
        let Some((method, template)) = parse_resource(ctx, text) else {
            continue;
        };
        let key = (method.clone(), pattern(&template));
        if scoped.contains_key(&key) || !open.insert(key) {
            ctx.report.error(
                text.referenced,
                format!("resource `{}` is declared twice in this API", text.value),
                "each METHOD + path once in `resources:` and not also in a scope",
            );
            continue;
        }
        resources.push(Resource {
            method,
            template,
            api_scopes: Vec::new(),
            throttle: Box::default(),
            ratelimit_policy: None,
        });
    }
    resources
}

/// The shape a template matches: `/bookings/{id}` and `/bookings/{no}` are
/// one pattern, so parameter names are left out.
fn pattern(template: &Template) -> Vec<Segment> {
    template
        .segments
        .iter()
        .map(|segment| match segment {
            Segment::Literal(text) => Segment::Literal(text.clone()),
            Segment::Param(_) => Segment::Param(String::new()),
            Segment::Tail(_) => Segment::Tail(String::new()),
        })
        .collect()
}

fn parse_resource(ctx: &mut Ctx, text: &S<String>) -> Option<(http::Method, Template)> {
    match template::resource(&text.value) {
        Ok(parsed) => Some(parsed),
        Err(problem) => {
            ctx.report
                .error(text.referenced, problem, template::RESOURCE_ALLOWED);
            None
        }
    }
}

/// For each auth server, the token scopes granting each API scope: those
/// mapped to `API:scope`, or — where no mapping of any auth server names
/// this API — a token scope literally named like the API scope.
fn grants(api: &str, api_scopes: &[String], refs: &Refs) -> GrantTable {
    let prefix = format!("{api}:");
    refs.auth_servers
        .keys()
        .map(|server| {
            let mappings: Vec<&ScopeMapping> = refs
                .scope_mappings
                .iter()
                .filter(|m| &m.auth_server == server)
                .collect();
            // A mapping of any auth server names a scope of this API, of
            // any version, whole (`Orders:v2:Read` names no scope of an
            // API `Orders` that has none called `v2:Read`): mappings are
            // how this API's scopes are granted, literal names are not.
            let names_api = refs
                .scope_mappings
                .iter()
                .any(|m| m.apis.iter().any(|a| a == api));
            let table = api_scopes
                .iter()
                .map(|scope| {
                    if !names_api {
                        return vec![scope.clone()];
                    }
                    let target = format!("{prefix}{scope}");
                    mappings
                        .iter()
                        .filter(|m| m.api_scopes.contains(&target))
                        .map(|m| m.token_scope.clone())
                        .collect()
                })
                .collect();
            (server.clone(), table)
        })
        .collect()
}

fn transform(ctx: &mut Ctx, policies: &raw::Policies) -> Transform {
    let Some(rt) = &policies.request_transformation else {
        return Transform::default();
    };
    let mut transform = Transform::default();
    let mut written: Vec<(FoldedName, &S<String>)> = Vec::new();
    for (name, value) in &rt.value.set_headers.0 {
        let header = header_name(ctx, name).and_then(|h| settable(ctx, name, h));
        let template = value_template(ctx, value);
        let Some(header) = header else { continue };
        // `X-User` and `x_user` would both be set, and an upstream reads
        // one of them: which one is no policy.
        let folded = FoldedName::new(header.as_str());
        if let Some((_, first)) = written.iter().find(|(f, _)| *f == folded) {
            ctx.report.error(
                name.referenced,
                format!(
                    "set_headers names `{}` twice (also as `{}`)",
                    name.value, first.value
                ),
                "each header once, in any spelling (case, `-`, `_` and `.` alike)",
            );
            continue;
        }
        written.push((folded, name));
        let Some(template) = template else { continue };
        strip_every_spelling(&mut transform, &header);
        transform.set.push((header, template));
    }
    for name in &rt.value.remove_headers {
        if let Some(header) = header_name(ctx, name) {
            strip_every_spelling(&mut transform, &header);
        }
    }
    // `Forwarded` restates X-Forwarded-For, -Proto and -Host: one the
    // policy set or removed would still be told there, and upstreams that
    // read `Forwarded` first (Spring's and Quarkus' filters) would take
    // the value the policy replaced. It goes too, unless the policy sets
    // it itself.
    let restated =
        ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"].map(FoldedName::new);
    if transform.strip.iter().any(|name| restated.contains(name)) {
        strip_every_spelling(&mut transform, &http::header::FORWARDED);
    }
    transform
}

/// A name `set_headers` may set: the gateway writes `Host` (from the
/// upstream URL, RFC 9110 §7.2) and the connection's own fields itself;
/// one set here would be dropped, or reach the upstream past the
/// stripping of the client's hop-by-hop fields. Compared in every
/// spelling that folds to theirs (`Content_Length`), as a CGI-style
/// upstream reads them. `Authorization` is `outbound_auth`'s, which runs
/// later and removes or replaces it: set here, it would never arrive.
/// `Proxy` is no client's nor policy's to send.
fn settable(ctx: &mut Ctx, written: &S<String>, name: HeaderName) -> Option<HeaderName> {
    if folds_to(&name, b"authorization") {
        ctx.report.error(
            written.referenced,
            format!(
                "request_transformation cannot set `{}`: outbound_auth writes the upstream's Authorization, and removes it without one",
                written.value
            ),
            "outbound_auth: { alias: NAME } (a basic or bearer alias), { type: basic, username, password } or { delegate: incoming_token }",
        );
        return None;
    }
    if folds_to(&name, b"proxy") {
        // httpoxy (CVE-2016-5385): the client's is dropped (`forwarded`),
        // and a CGI-style upstream would send its own calls through this.
        ctx.report.error(
            written.referenced,
            format!(
                "request_transformation cannot set `{}`: a CGI-style upstream reads it as HTTP_PROXY, the proxy of its own outgoing calls (httpoxy)",
                written.value
            ),
            "a header other than Proxy; an upstream's outgoing proxy is its own configuration",
        );
        return None;
    }
    if folds_to(&name, b"host") || is_connection_field_in_any_spelling(&name) {
        ctx.report.error(
            written.referenced,
            format!("request_transformation cannot set `{}`", written.value),
            format!("an end-to-end header name; Host, {CONNECTION_FIELDS} (in any spelling) are the gateway's"),
        );
        return None;
    }
    Some(name)
}

/// Folded once here, so a request only compares: some servers read
/// `X_Client.Id` as `X-Client-Id`, so a client must not send any spelling.
fn strip_every_spelling(transform: &mut Transform, header: &HeaderName) {
    let folded = FoldedName::new(header.as_str());
    if !transform.strip.contains(&folded) {
        transform.strip.push(folded);
    }
}

/// `validates_tokens`: whether the API's authentication validates bearer
/// tokens (`None` when it did not compile).
fn outbound(
    ctx: &mut Ctx,
    policies: &raw::Policies,
    refs: &Refs<'_>,
    validates_tokens: Option<bool>,
) -> Option<Outbound> {
    let aliases = refs.aliases;
    let Some(entry) = &policies.outbound_auth else {
        return Some(Outbound::None);
    };
    let raw = &entry.value;
    // One way to authenticate: with two, which one the upstream gets
    // would be a guess (the client's token instead of the alias's
    // credentials, say).
    let ways = usize::from(raw.delegate.is_some())
        + usize::from(raw.alias.is_some())
        + usize::from(raw.kind.is_some() || raw.username.is_some() || raw.password.is_some());
    if ways > 1 {
        ctx.report.error(
            entry.referenced,
            "outbound_auth names more than one way to authenticate",
            "one of: `alias`, { type: basic, username, password } or { delegate: incoming_token }",
        );
        return None;
    }
    if let Some(delegate) = &raw.delegate {
        if delegate.value == "incoming_token" {
            // Without oauth2 the "incoming token" is whatever the client
            // wrote in `Authorization`, validated by nobody, and the
            // upstream would take it as the gateway's word.
            if validates_tokens == Some(false) {
                ctx.report.error(
                    delegate.referenced,
                    "delegate: incoming_token on an API that validates no token",
                    "authentication type oauth2 (with auth_server), or another outbound_auth",
                );
                return None;
            }
            return Some(Outbound::Delegate);
        }
        ctx.report.error(
            delegate.referenced,
            format!("delegate `{}` is not supported", delegate.value),
            "incoming_token",
        );
        return None;
    }
    if let Some(alias) = &raw.alias {
        let header = match aliases.get(&alias.value) {
            Some(Alias::Basic { username, password }) => basic_header(username, password),
            Some(Alias::Bearer { token }) => {
                HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .ok()
                    .map(|mut v| {
                        v.set_sensitive(true);
                        v
                    })
            }
            None if refs.refused_aliases.contains(alias.value.as_str()) => return None,
            None => {
                ctx.report.error(
                    alias.referenced,
                    format!("alias `{}` is not defined", alias.value),
                    format!("one of: {}", names(aliases.keys().cloned())),
                );
                return None;
            }
        };
        if header.is_none() {
            ctx.report.error(
                alias.referenced,
                format!("alias `{}` does not make a valid header value", alias.value),
                "printable credentials",
            );
        }
        return header.map(Outbound::Header);
    }
    let kind = raw.kind.as_ref().map(|k| k.value.as_str());
    match (kind, &raw.username, &raw.password) {
        (Some("basic") | None, Some(user), Some(password)) => {
            let user = ctx.basic_user(user.referenced, &user.value.0, "outbound_auth.username");
            let secret = ctx.secret(password, "outbound_auth.password")?;
            basic_header(&user?, &secret).map(Outbound::Header)
        }
        _ => {
            ctx.report.error(entry.referenced, "outbound_auth needs `alias`, { type: basic, username, password } or { delegate: incoming_token }", "alias | type: basic with username and password | delegate: incoming_token");
            None
        }
    }
}

/// `ip_filter`: a filter that names no range (bare, `{}`, or only
/// `deny: []`, as a template that rendered nothing writes it) admits
/// every address while it reads as a filter: refused.
fn ip_filter(
    ctx: &mut Ctx,
    filter: &S<Option<raw::IpFilter>>,
    trusted_proxies: &[IpNet],
) -> Option<IpFilter> {
    let names_a_range = filter
        .value
        .as_ref()
        .is_some_and(|raw| raw.allow.is_written() || !raw.deny.is_empty());
    if filter.is_written() && !names_a_range {
        ctx.report.error(
            filter.referenced,
            "ip_filter names no address range, which would admit every address",
            "`allow` and/or `deny` with the CIDRs, or no `ip_filter`",
        );
    }
    let raw = filter.value.as_ref()?;
    let deny = super::application_compile::cidrs(ctx, &raw.deny, "ip_filter.deny");
    // A client from a trusted proxy is judged by the address it forwards:
    // one of a denied range there names another and is let in.
    for denied in &deny {
        if let Some(proxy) = trusted_proxies.iter().find(|p| overlap(p, denied)) {
            ctx.report.warning(
                filter.referenced,
                format!(
                    "ip_filter.deny `{denied}` overlaps trusted_proxies `{proxy}`: a client there is judged by the X-Forwarded-For it sends, so the deny does not hold for it"
                ),
            );
        }
    }
    Some(IpFilter {
        allow: super::application_compile::allowed_cidrs(ctx, &raw.allow, "ip_filter.allow"),
        deny,
    })
}

/// Whether two ranges share an address.
fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Whether a resource with a `{tail*}` has another of its method beside
/// it (`HEAD` is served where `GET` is): only then can a path read with a
/// trailing slash match another resource than as written
/// (`policy::route`), and only then is it read so.
fn tail_beside_another(resources: &[Resource]) -> bool {
    let served = |r: &Resource| {
        if r.method == http::Method::HEAD {
            http::Method::GET
        } else {
            r.method.clone()
        }
    };
    resources.iter().enumerate().any(|(i, tail)| {
        tail.template
            .segments
            .iter()
            .any(|s| matches!(s, crate::config::snapshot::Segment::Tail(_)))
            && resources
                .iter()
                .enumerate()
                .any(|(j, other)| j != i && served(other) == served(tail))
    })
}
