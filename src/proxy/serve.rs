//! One request through the gateway, phase by phase. Each phase either hands
//! the request on or returns a [`Rejection`]; nothing is forwarded without a
//! [`Grant`](crate::policy::Grant). A CORS preflight to an API with a CORS
//! policy is answered right after matching; the CORS fields go on every
//! other answer for that API, the gateway's refusals included.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use http::header::{
    CONTENT_LENGTH, HOST, ORIGIN, PROXY_AUTHENTICATE, TRANSFER_ENCODING, WWW_AUTHENTICATE,
};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;

use super::client::Switched;
use super::cors::{self, Answered, Preflight};
use super::forward::{LimitFlag, LimitedBody, Outgoing, Upstreams};
use super::identify::Identifier;
use super::reject::{BadGateway, Rejection};
use super::tunnel::{self, TunnelSlots};
use super::{forwarded, grpc_timeout, outbound, transform, Body};
use crate::auth::identity::{self, Credential, CredentialProblem, Identity};
use crate::auth::servers::Authenticator;
use crate::auth::AuthFailure;
use crate::config::snapshot::{Api, Authentication, Cors, CredentialType, Limits, Outbound};
use crate::config::Snapshot;
use crate::http1::raw_fields::RawFields;
use crate::http1::request_encode::AddedFields;
use crate::policy::{self, CanonicalPath, Route};
use crate::throttle::{self, Caller, Throttler};

/// What the data path needs besides the snapshot.
pub struct Runtime {
    pub auth: Arc<Authenticator>,
    pub upstreams: Upstreams,
    /// Checks API keys, Basic users and client certificates.
    pub identifier: Identifier,
    pub throttle: Arc<Throttler>,
    /// The limits the listeners started with. Like the listeners' own
    /// (the head sizes their parser allows), they change on a restart
    /// only, whatever a reload says.
    pub limits: Limits,
}

/// The connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub peer: SocketAddr,
    pub tls: bool,
    /// SHA-256 of the DER of the client certificate the TLS handshake verified.
    pub client_cert: Option<[u8; 32]>,
    /// The peer is one of the snapshot's `trusted_proxies`.
    pub from_trusted: bool,
}

/// The SHA-256 fingerprint of the client certificate of the TLS
/// connection a request arrived on, put on the request by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCertificate(pub [u8; 32]);

/// Serves one request on `snap`; returns the response. The API it
/// matched is written to `api` as soon as it is known, so that a request
/// dropped before its answer (its client gone, the drain over) is still
/// counted and logged under it.
///
/// An `async move` block rather than an `async fn`: an `async fn` keeps
/// each argument twice in its future (as given, and as the local it is
/// moved to), and a future is copied as it is made and awaited. The
/// layers that take the request by value (`gateway::handle_api`, this,
/// `phases`, `pool::Checkout::send`, `client::Connection::send`) are
/// written so: ~3.5 KB less copied per request.
#[allow(clippy::manual_async_fn)] // see above
pub fn serve<'s: 'a, 'a>(
    snap: &'s Snapshot,
    rt: &'a Runtime,
    conn: Connection,
    req: Request<Body>,
    added: &'a mut AddedFields,
    api: &'a mut Option<&'s Arc<Api>>,
) -> impl Future<Output = Response<Body>> + use<'a, 's> {
    async move {
        let mut kind = None;
        // The CORS policy of the API the path is under, and the request's
        // `Origin`, for the CORS fields, which go on refusals too (a
        // preflight's answer has its own).
        let mut cors = None;
        // The RateLimit fields of a request the throttle admitted: on the
        // upstream's answer, or on the gateway's if the exchange then
        // fails (it counted).
        let mut admitted = None;
        let preflight = cors::is_preflight(&req);
        let seen = (&mut *api, &mut kind, &mut cors, &mut admitted);
        let (mut response, by) = match phases(snap, rt, conn, req, added, seen).await {
            Ok(response) => (response, Answered::Upstream),
            Err(rejection) => {
                if let (Some(result), Some(api)) = (rejection.auth_result(), *api) {
                    let kind = kind.map_or("none", CredentialType::label);
                    api.metrics.count_refused(result, kind);
                }
                tracing::debug!(cause = %rejection, "request refused");
                let response = match *api {
                    Some(api) if api.grpc => {
                        let response = rejection.into_grpc_response();
                        if let Some(status) = response.headers().get("grpc-status") {
                            api.metrics.count_grpc(status.as_bytes());
                        }
                        response
                    }
                    _ => rejection.into_response(),
                };
                (response, Answered::Gateway)
            }
        };
        if let Some(fields) = admitted {
            fields.apply(&mut response);
        }
        if let Some((policy, origin)) = cors.filter(|_| !preflight) {
            cors::decorate(policy, origin.as_ref(), by, response.headers_mut());
        }
        response
    }
}

/// What [`phases`] learns on the way, for the answer: the API matched, the
/// kind of credential presented, the CORS policy that answers (with
/// the request's `Origin`), and the RateLimit fields of an admitted request.
type Seen<'a, 's> = (
    &'a mut Option<&'s Arc<Api>>,
    &'a mut Option<CredentialType>,
    &'a mut Option<CorsSeen<'s>>,
    &'a mut Option<throttle::AdmittedFields<'s>>,
);

/// An API's CORS policy and the `Origin` of a request under it.
type CorsSeen<'s> = (&'s Cors, Option<HeaderValue>);

/// `api`'s CORS policy, if it has one, and the request's `Origin`.
fn cors_of<'s, B>(api: &'s Api, req: &Request<B>) -> Option<CorsSeen<'s>> {
    let policy = api.cors.as_ref()?;
    Some((policy, req.headers().get(ORIGIN).cloned()))
}

#[allow(clippy::manual_async_fn)] // an `async fn` holds its arguments twice (see `proxy::serve::serve`)
fn phases<'s: 'a, 'a>(
    snap: &'s Snapshot,
    rt: &'a Runtime,
    conn: Connection,
    mut req: Request<Body>,
    added: &'a mut AddedFields,
    (matched_api, kind, cors, admitted): Seen<'a, 's>,
) -> impl Future<Output = Result<Response<Body>, Rejection>> + use<'a, 's> {
    async move {
        // An HTTP/2 WebSocket (extended CONNECT) is matched and authorized as
        // the `GET` it stands for.
        let h2_websocket = tunnel::is_h2_handshake(&req);
        if h2_websocket {
            *req.method_mut() = http::Method::GET;
        }
        // Refused before it is matched: a gRPC client is still told as
        // gRPC, by the API its path is under.
        if let Err(refusal) = check_target(&rt.limits, &mut req) {
            *matched_api = grpc_api_under(snap, req.uri().path());
            return Err(refusal);
        }
        host_from_authority(&mut req);
        let path = match policy::canonicalize(req.uri().path()) {
            Ok(path) => path,
            Err(problem) => {
                *matched_api = grpc_api_under(snap, req.uri().path());
                return Err(Rejection::BadPath(problem));
            }
        };
        // The canonical path is what goes upstream: bytes past ASCII are
        // written there percent-encoded, three for one, still within the
        // limit.
        if path.path.len() > req.uri().path().len()
            && path.path.len() + req.uri().query().map_or(0, |q| q.len() + 1) > rt.limits.max_uri
        {
            return Err(Rejection::UriTooLong);
        }
        if let Some((answer, api)) = answer_preflight(snap, conn, &req, &path)? {
            *matched_api = Some(api);
            return Ok(answer); // CORS preflight: no credentials, never forwarded
        }
        let route = match policy::route(snap, req.method(), &path) {
            Ok(route) => route,
            Err(problem) => {
                // A 404 or 405 under an API is that API's answer: its CORS
                // fields go on it, and an unknown method of a gRPC service
                // is answered as gRPC (UNIMPLEMENTED), and counted for it.
                if let Some(api) = snap.api_for(&path.path) {
                    *cors = cors_of(api, &req);
                    if api.grpc {
                        *matched_api = Some(api);
                    }
                }
                return Err(Rejection::NoRoute(problem));
            }
        }; // match
        *cors = cors_of(route.api, &req);
        *matched_api = Some(route.api);
        check_transport(&route, conn)?;
        let client_ip = known_client(req.headers(), conn, snap)?;
        if let Some(filter) = &route.api.ip_filter {
            if !filter.admits(client_ip) {
                return Err(Rejection::IpFiltered); // before any credential is looked at
            }
        }
        // Only an HTTP/2 request can carry it (`server::Conn::http2`).
        if super::past_max_streams(&req) {
            return Err(Rejection::TooManyStreams); // nothing spent on it, nothing forwarded
        }
        let deadline = if route.api.grpc_deadlines {
            grpc_deadline(req.headers())?
        } else {
            None
        };
        let handshake = route.api.websocket && (h2_websocket || tunnel::is_handshake(&req));
        if handshake && !tunnel::origin_admitted(&req, route.api.cors.as_ref()) {
            return Err(Rejection::CrossOriginTunnel); // whatever credential the browser adds
        }
        // Boxed: the credential checks are a large future that requests to
        // APIs without authentication need not carry.
        let who = match &route.api.authentication {
            Authentication::None => None,
            Authentication::Identify(_) => {
                let caller = (conn, client_ip, &mut *kind);
                Some(super::pin_in_place(|| authenticate(snap, rt, &route, &req, caller)).await?)
            }
        }; // authenticate
        let grant =
            policy::authorize(&route, who.as_ref(), client_ip).map_err(|denied| match denied {
                policy::Denied::Scope(scope) => Rejection::InsufficientScope {
                    would_grant: scope.would_grant,
                },
                other => Rejection::Denied(other),
            })?; // authorize

        // A WebSocket handshake holds a tunnel slot of its listener from here
        // (503 when none is free), and asks the upstream to switch protocols.
        if h2_websocket && !route.api.websocket {
            return Err(Rejection::BadRequest("the API serves no WebSocket"));
        }
        let tunnel = if handshake && req.body().is_end_stream() {
            let permit = req
                .extensions()
                .get::<TunnelSlots>()
                .and_then(TunnelSlots::acquire);
            Some(permit.ok_or(Rejection::TooManyTunnels)?)
        } else {
            None
        };
        // Every refusal the request itself earns comes before the throttle
        // counts it: a refused request uses no quota.
        check_declared_length(&rt.limits, &req)?;
        let from_h2 = req.version() == Version::HTTP_2;
        // `te: trailers` (gRPC requires it) reaches HTTP/2 upstreams only.
        let te_trailers =
            route.api.upstream.is_http2() && forwarded::asks_for_trailers(req.headers());
        let headers = req.headers_mut();
        forwarded::strip_request(headers, conn.from_trusted);
        if tunnel.is_some() {
            tunnel::ask_upgrade(headers);
        }
        if te_trailers {
            headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        }
        let on_upgrade = if h2_websocket {
            tunnel::h1_handshake_of_h2(&mut req);
            let hold = req.extensions_mut().remove::<tunnel::ConnectionHold>();
            Some((hyper::upgrade::on(&mut req), hold))
        } else {
            None
        };
        let headers = req.headers_mut();
        if from_h2 {
            forwarded::join_cookies(headers); // upstreams speak HTTP/1.1
        }
        strip_application_credentials(route.api, who.as_ref(), headers);
        // Before the policy's fields: what it sets or removes of them
        // (`X-Forwarded-Host`, say) is the policy's.
        forwarded::set_forwarded(
            headers,
            added,
            conn.peer.ip(),
            conn.tls,
            conn.from_trusted,
            &snap.trusted_proxies,
            snap.forwarding,
        );
        transform::apply(&route.api.transform, who.as_ref(), headers, added)
            .map_err(|problem| Rejection::InvalidToken { problem })?; // transform

        // A place among the upstream's requests in flight
        // (`upstream.max_requests`), held until the answer has ended; none
        // left: refused before the throttle counts it, never forwarded.
        let in_flight = match &route.api.upstream_bound {
            Some(bound) => match bound.try_take() {
                Some(taken) => Some(taken),
                None => {
                    route.api.metrics.upstream_error("overflow");
                    return Err(Rejection::UpstreamBusy { max: bound.max() });
                }
            },
            None => None,
        };

        // Throttled once nothing but the upstream can refuse the request.
        // The memory store answers at once; a Redis call is boxed, like
        // authentication, so that other requests carry no store call in
        // their future.
        if !route.api.throttle.is_empty() {
            let caller = Caller {
                identity: who.as_ref(),
                client_ip,
            };
            let resources = throttle::Resources {
                matched: route.resource,
                also: route.also,
            };
            let verdict = match rt
                .throttle
                .check_in_memory(snap, route.api, resources, caller)
            {
                Some(verdict) => verdict,
                None => Box::pin(rt.throttle.check(snap, route.api, resources, caller)).await,
            };
            *admitted = throttled(verdict)?;
        } // throttle

        // Counted once nothing but the upstream can refuse the request.
        route
            .api
            .metrics
            .count_allowed(kind.map_or("none", CredentialType::label));
        if let Some(who) = &who {
            count_application(who);
        }
        outbound::apply(&route.api.outbound, headers); // outbound auth

        // An answer no policy reads goes to an HTTP/1.x client with its fields
        // as the upstream's head has them (`http1::raw_fields`); an HTTP/2
        // client's goes through a map.
        let as_sent = route.api.answer_unread && tunnel.is_none() && !from_h2;
        // What a `101` must say it accepted: the key the upstream is sent.
        let accept = tunnel
            .as_ref()
            .and_then(|_| req.headers().get(http::header::SEC_WEBSOCKET_KEY))
            .map(tunnel::expected_accept);
        let req = limit_body(&rt.limits, req);
        let outgoing = Outgoing {
            rest: &route.rest,
            added,
            as_sent,
            deadline,
        };
        // Boxed: created once on the heap instead of being copied into each
        // enclosing future (every layer up to the connection) as it starts.
        let forward = || rt.upstreams.forward(grant, route.api, req, outgoing);
        let mut response = super::pin_in_place(forward).await?; // forward
        let mut in_flight = in_flight;

        // RFC 8441 §5: a 2xx to an extended CONNECT is the tunnel opened;
        // an upstream that did not switch protocols opened none.
        if h2_websocket && response.status().is_success() {
            return Err(Rejection::BadGateway(BadGateway::NoSwitch));
        }
        if let Some(permit) = tunnel {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                if !tunnel::switched_to_websocket(response.headers(), accept.as_deref()) {
                    return Err(Rejection::BadGateway(BadGateway::NoSwitch));
                }
                let endpoint = response.extensions_mut().remove::<tunnel::HeldTry>();
                let pending = response
                    .extensions()
                    .get::<Switched>()
                    .and_then(|switched| {
                        let bounds = tunnel::Bounds {
                            idle: snap.timeouts.tunnel_idle,
                            send: snap.timeouts.send,
                            lifetime: route.api.tunnel_max_lifetime,
                        };
                        // A tunnel keeps its place among the upstream's
                        // requests until it ends.
                        let held = tunnel::Held {
                            slot: permit,
                            in_flight: in_flight.take(),
                            endpoint,
                        };
                        tunnel::Pending::of(switched, route.api, bounds, held)
                    })
                    .ok_or_else(|| Rejection::BadGateway(BadGateway::NoSwitch))?;
                match on_upgrade {
                    Some((on_upgrade, hold)) => {
                        let switch = pending
                            .take()
                            .ok_or_else(|| Rejection::BadGateway(BadGateway::NoSwitch))?;
                        *response.status_mut() = StatusCode::OK;
                        tunnel::h2_answer_of_h1(response.headers_mut());
                        tunnel::spawn_h2(switch, on_upgrade, hold);
                    }
                    None => {
                        response.extensions_mut().insert(pending);
                    }
                }
            }
        }
        if let Some(in_flight) = in_flight {
            response = response.map(|body| super::holding(body, in_flight));
        }
        refuse_upstream_challenge(route.api, &response)?;
        transform::apply_to_response(&route.api.response_transform, response.headers_mut()); // response transformation
        Ok(response)
    }
}

/// Answers a CORS preflight to an API with a CORS policy, served on this
/// connection's transport; anything else goes on to the other phases.
/// The answer to a CORS preflight for an API with a `cors` policy; not one
/// (`None`) for any other request. A client the API's `ip_filter` refuses
/// is refused here too: a preflight must not tell it the API's methods.
#[allow(
    clippy::type_complexity,
    reason = "an answer and its API, or none, or a refusal: one use"
)]
fn answer_preflight<'s, B>(
    snap: &'s Snapshot,
    conn: Connection,
    req: &Request<B>,
    path: &CanonicalPath,
) -> Result<Option<(Response<Body>, &'s Arc<Api>)>, Rejection> {
    let Some(preflight) = Preflight::of(req) else {
        return Ok(None);
    };
    let Some(api) = snap.api_for(&path.path) else {
        return Ok(None);
    };
    let Some(policy) = api.cors.as_ref() else {
        return Ok(None);
    };
    let served = if conn.tls {
        api.transport.https
    } else {
        api.transport.http
    };
    if !served {
        return Ok(None);
    }
    if let Some(filter) = &api.ip_filter {
        // As the request it announces would be: an unknown client is 400.
        if !filter.admits(known_client(req.headers(), conn, snap)?) {
            return Err(Rejection::IpFiltered);
        }
    }
    // The method the actual request will use must be served on this path.
    let routed = preflight
        .method
        .as_ref()
        .is_some_and(|method| policy::route(snap, method, path).is_ok());
    Ok(Some((cors::answer(policy, &preflight, routed), api)))
}

/// The client's address; an unknown client (a trusted proxy named none)
/// is refused: every check that reads the address would otherwise judge
/// another.
fn known_client(
    headers: &http::HeaderMap,
    conn: Connection,
    snap: &Snapshot,
) -> Result<std::net::IpAddr, Rejection> {
    forwarded::client_ip(headers, conn.peer, &snap.trusted_proxies).ok_or(Rejection::BadRequest(
        "X-Forwarded-For from a trusted proxy names no client address",
    ))
}

/// What the throttle's verdict means for the request: a refused request
/// goes no further; an admitted one takes the RateLimit fields to its
/// response.
fn throttled(
    verdict: throttle::Verdict<'_>,
) -> Result<Option<throttle::AdmittedFields<'_>>, Rejection> {
    match verdict {
        throttle::Verdict::Unthrottled | throttle::Verdict::StoreFailedAllowed => Ok(None),
        throttle::Verdict::Admitted(fields) => Ok(fields),
        throttle::Verdict::Refused { policies, fields } => Err(Rejection::Throttled {
            policies,
            fields: fields.map(Box::new),
        }),
        throttle::Verdict::StoreFailedDenied => Err(Rejection::ThrottleUnavailable),
    }
}

/// An upstream answering 401 or 407 to credentials the gateway sent for
/// it (outbound auth, or the token it validated and delegated) refuses the
/// gateway's configuration, not the client: its challenge would name the
/// upstream's realm and make browsers prompt for it (RFC 9110 §11.6.1).
/// The client gets 502; the challenge goes to the log.
fn refuse_upstream_challenge(api: &Api, response: &Response<Body>) -> Result<(), Rejection> {
    let status = response.status();
    let challenged =
        status == StatusCode::UNAUTHORIZED || status == StatusCode::PROXY_AUTHENTICATION_REQUIRED;
    let credentials_sent = match api.outbound {
        Outbound::Header(_) => true,
        Outbound::Delegate => api.authentication.auth_server().is_some(),
        Outbound::None => false,
    };
    if !(challenged && credentials_sent) {
        return Ok(());
    }
    let headers = response.headers();
    let as_sent = response.extensions().get::<RawFields>();
    let challenges: Vec<String> = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .chain(headers.get_all(PROXY_AUTHENTICATE))
        .map(HeaderValue::as_bytes)
        .chain(as_sent.into_iter().flat_map(|raw| {
            raw.values(WWW_AUTHENTICATE.as_str())
                .chain(raw.values(PROXY_AUTHENTICATE.as_str()))
        }))
        .map(|value| String::from_utf8_lossy(value).into_owned())
        .collect();
    tracing::warn!(
        api = api.name,
        status = status.as_u16(),
        ?challenges,
        "upstream refused the credentials the gateway sent"
    );
    Err(Rejection::BadGateway(BadGateway::CredentialsRefused))
}

/// Request-target and framing checks that come before any matching; an
/// HTTP/1.1 absolute-form target leaves as its origin-form.
fn check_target<B>(limits: &Limits, req: &mut Request<B>) -> Result<(), Rejection> {
    let uri = req.uri();
    let target_len = uri.path().len() + uri.query().map_or(0, |q| q.len() + 1);
    if target_len > limits.max_uri {
        return Err(Rejection::UriTooLong);
    }
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(host), None) if crate::path::valid_host(host.as_bytes()) => Some(host.as_bytes()),
        (None, _) => None,
        (Some(_), Some(_)) => return Err(Rejection::BadRequest("more than one Host header")),
        (Some(_), None) => return Err(Rejection::BadRequest("malformed Host header")),
    };
    if req.version() == Version::HTTP_2 {
        // RFC 9113 §8.2.1: no field value starts or ends with whitespace
        // (HTTP/1.1's parser trims it; an h2 request with it is malformed,
        // and would read otherwise than its HTTP/1.1 twin).
        if req
            .headers()
            .values()
            .any(|value| matches!(value.as_bytes(), [b' ' | b'\t', ..] | [.., b' ' | b'\t']))
        {
            return Err(Rejection::BadRequest(
                "a field value starts or ends with whitespace",
            ));
        }
        // The expectations HTTP/1.1 answers 417 (RFC 9110 §10.1.1).
        if req
            .headers()
            .get_all(http::header::EXPECT)
            .iter()
            .any(|value| crate::http1::expects_continue(value.as_bytes()).is_none())
        {
            return Err(Rejection::ExpectationFailed);
        }
        // RFC 9113 §8.3.1: `:authority`, else `Host`; when both are sent
        // they must name the same origin.
        match (uri.authority(), host) {
            (Some(authority), Some(host)) if authority.as_str().as_bytes() != host => {
                return Err(Rejection::BadRequest("Host and :authority differ"))
            }
            (Some(authority), _) if !crate::path::valid_host(authority.as_str().as_bytes()) => {
                return Err(Rejection::BadRequest("malformed :authority"))
            }
            (None, None) => return Err(Rejection::BadRequest("missing :authority")),
            _ => {}
        }
    } else {
        // RFC 9112 §3.2: the Host field is required, one and valid, even
        // beside an absolute-form target.
        if host.is_none() && req.version() != Version::HTTP_10 {
            return Err(Rejection::BadRequest("missing Host header"));
        }
        // Not origin-form: an absolute-form target, or authority-form,
        // which is for CONNECT, not served by an API gateway.
        if uri.scheme().is_some() || uri.authority().is_some() {
            to_origin_form(req)?;
        }
    }
    if req.method() == http::Method::CONNECT {
        return Err(Rejection::BadRequest(crate::path::CONNECT_REFUSED));
    }
    if crate::path::overrides_method(req.method(), req.uri().query()) {
        return Err(Rejection::BadRequest(crate::path::METHOD_OVERRIDE_REFUSED));
    }
    if req.version() == Version::HTTP_2 && too_many_fields(limits, req.headers()) {
        return Err(Rejection::HeadersTooLarge);
    }
    // RFC 9112 §6.3: both framings, or conflicting lengths, are how requests
    // are smuggled past a proxy.
    let mut lengths = req.headers().get_all(CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        if req.headers().contains_key(TRANSFER_ENCODING) {
            return Err(Rejection::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if lengths.any(|other| other != first) {
            return Err(Rejection::BadRequest("conflicting Content-Length headers"));
        }
    }
    Ok(())
}

/// RFC 9112 §3.2.2: a server MUST accept the absolute-form, and takes the
/// target's authority for the request's host, ignoring the Host field.
/// An `http` or `https` target whose authority is a host (and port)
/// becomes its origin-form, routed as that would be, and its authority
/// the request's `Host` (what the forwarding fields name). Userinfo
/// (RFC 9110 §4.2.4: not to be sent, and a way to hide the host read),
/// an empty host (§4.2.1: to be refused), another scheme, and CONNECT
/// (refused as with an authority-form target) stay 400.
#[cold]
#[inline(never)]
fn to_origin_form<B>(req: &mut Request<B>) -> Result<(), Rejection> {
    const REFUSED: Rejection = Rejection::BadRequest(crate::path::ABSOLUTE_FORM_REFUSED);
    let uri = req.uri();
    let Some(authority) = crate::path::served_authority(uri) else {
        return Err(REFUSED);
    };
    if req.method() == http::Method::CONNECT {
        return Err(REFUSED);
    }
    let host = HeaderValue::from_str(authority.as_str()).map_err(|_| REFUSED)?;
    let target = match uri.query() {
        Some(query) => format!("{}?{query}", uri.path()),
        None => uri.path().to_owned(),
    };
    *req.uri_mut() = Uri::try_from(target).map_err(|_| REFUSED)?;
    req.headers_mut().insert(HOST, host);
    Ok(())
}

/// `limits.max_headers` for an HTTP/2 request (an HTTP/1.1 head is
/// counted as it is parsed). The `cookie` crumbs a browser sends apart
/// count as the one field they are joined into for the upstream.
fn too_many_fields(limits: &Limits, headers: &http::HeaderMap) -> bool {
    let fields = headers.len();
    if fields <= limits.max_headers {
        return false;
    }
    let crumbs = headers.get_all(http::header::COOKIE).iter().count();
    fields - crumbs.saturating_sub(1) > limits.max_headers
}

/// The `grpc: true` API whose base path `path` (as sent) is under: a
/// request refused before it could be matched (its target, its fields, its
/// path) is answered as gRPC for it, as the refusals after matching are.
#[cold]
fn grpc_api_under<'s>(snap: &'s Snapshot, path: &str) -> Option<&'s Arc<Api>> {
    snap.api_for(path).filter(|api| api.grpc)
}

/// An HTTP/2 request names its origin in `:authority`; the forwarding
/// headers read it from `Host`.
fn host_from_authority<B>(req: &mut Request<B>) {
    if req.headers().contains_key(HOST) {
        return;
    }
    let authority = req.uri().authority().map(|a| a.as_str().to_owned());
    if let Some(value) = authority.and_then(|a| http::HeaderValue::from_str(&a).ok()) {
        req.headers_mut().insert(HOST, value);
    }
}

/// The deadline a gRPC client states (`grpc-timeout`) for a call to a
/// `grpc: true` API over HTTP/2, counted from now: the time the call
/// spends in the gateway is the call's too. Other APIs pass the field on
/// as any other (an HTTP/1.1 upstream cannot carry gRPC), and do not call
/// this. A deadline past what the clock can count is none: the field then
/// goes on as sent.
#[inline(never)]
fn grpc_deadline(headers: &http::HeaderMap) -> Result<Option<tokio::time::Instant>, Rejection> {
    let timeout = grpc_timeout::read(headers).map_err(Rejection::MalformedGrpcTimeout)?;
    Ok(timeout.and_then(|timeout| tokio::time::Instant::now().checked_add(timeout)))
}

fn check_transport(route: &Route<'_>, conn: Connection) -> Result<(), Rejection> {
    let served = if conn.tls {
        route.api.transport.https
    } else {
        route.api.transport.http
    };
    if served {
        Ok(())
    } else {
        Err(Rejection::NoRoute(policy::RouteProblem::NoApi))
    }
}

/// The caller's identity from the one credential the request presents;
/// `client_ip` is the caller's address behind trusted proxies, which
/// failed Basic attempts are counted against.
async fn authenticate<B>(
    snap: &Snapshot,
    rt: &Runtime,
    route: &Route<'_>,
    req: &Request<B>,
    (conn, client_ip, kind): (Connection, IpAddr, &mut Option<CredentialType>),
) -> Result<Identity, Rejection> {
    let Authentication::Identify(accepted) = &route.api.authentication else {
        return Err(Rejection::BadRequest("no credential is accepted"));
    };
    let realm = || route.api.name.clone();
    let credential =
        identity::credential(accepted, req.headers(), req.uri().query(), conn.client_cert);
    let credential = match credential {
        Ok(credential) => credential,
        // RFC 6750 §3.1 unchanged where a token is the only credential.
        Err(CredentialProblem::Missing) if accepted.types == [CredentialType::OAuth2] => {
            return Err(Rejection::MissingToken { realm: realm() })
        }
        Err(CredentialProblem::Missing) => {
            return Err(Rejection::MissingCredentials {
                realm: realm(),
                types: accepted.types.clone(),
            })
        }
        Err(CredentialProblem::TwoKinds) => return Err(Rejection::TwoCredentials),
        Err(CredentialProblem::InvalidRequest(why)) => {
            return Err(Rejection::InvalidRequest { why })
        }
        Err(CredentialProblem::Repeated(why)) => return Err(Rejection::BadRequest(why)),
        Err(CredentialProblem::InvalidToken(problem)) => {
            *kind = Some(CredentialType::OAuth2);
            return Err(Rejection::InvalidToken { problem });
        }
        Err(CredentialProblem::Malformed(malformed)) => {
            *kind = Some(malformed);
            return Err(Rejection::BadCredentials {
                kind: malformed,
                realm: realm(),
            });
        }
    };
    *kind = Some(credential.kind());
    match credential {
        Credential::Bearer(token) => {
            let auth_server = accepted
                .auth_server
                .as_ref()
                .ok_or(Rejection::BadRequest("no auth server validates tokens"))?;
            match rt
                .auth
                .authenticate(auth_server, token, SystemTime::now())
                .await
            {
                Ok(principal) => Ok(Identity::of_token(principal, &snap.applications)),
                Err(AuthFailure::Invalid(problem)) => Err(Rejection::InvalidToken { problem }),
                Err(AuthFailure::Unavailable { auth_server, cause }) => {
                    Err(Rejection::AuthUnavailable {
                        auth_server: auth_server.to_string(),
                        cause,
                    })
                }
            }
        }
        Credential::ApiKey(key) => Identifier::api_key(snap, key, &route.api.name),
        Credential::Certificate(fingerprint) => {
            Identifier::certificate(snap, &fingerprint, &route.api.name)
        }
        Credential::Basic { user, password } => {
            rt.identifier
                .basic(snap, user, password, client_ip, &route.api.name)
                .await
        }
    }
}

/// The API key header (in every spelling) and a Basic `Authorization`
/// never reach the upstream, whatever the outbound policy says.
fn strip_application_credentials(api: &Api, who: Option<&Identity>, headers: &mut http::HeaderMap) {
    let Authentication::Identify(accepted) = &api.authentication else {
        return;
    };
    if accepted.accepts(CredentialType::ApiKey) {
        forwarded::remove_matching(headers, |name| accepted.api_key_folded.matches(name));
    }
    if who.is_some_and(|who| who.kind != CredentialType::OAuth2) {
        headers.remove(http::header::AUTHORIZATION);
    }
}

/// `application_requests_total`: by application, `unknown` for a token of
/// a client that is no configured application.
fn count_application(who: &Identity) {
    static UNKNOWN: std::sync::LazyLock<prometheus::IntCounter> = std::sync::LazyLock::new(|| {
        crate::metrics::get()
            .application_requests
            .with_label_values(&[crate::metrics::UNKNOWN_APPLICATION])
    });
    match &who.application {
        Some(app) => app.metrics.requests.inc(),
        None => UNKNOWN.inc(),
    }
}

/// Refuses a declared length over the limit at once.
fn check_declared_length<B>(limits: &Limits, req: &Request<B>) -> Result<(), Rejection> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limits.max_body) {
        return Err(Rejection::PayloadTooLarge);
    }
    Ok(())
}

/// A body that grows past the limit (chunked, or longer than declared) is
/// cut off, and the request answered 413.
fn limit_body(limits: &Limits, req: Request<Body>) -> Request<Body> {
    let (mut parts, body) = req.into_parts();
    if body.is_end_stream() {
        // Nothing to count (most GETs): no limit to watch, no allocation.
        return Request::from_parts(parts, super::empty());
    }
    let flag = LimitFlag::default();
    parts.extensions.insert(flag.clone());
    let body = LimitedBody::new(body, limits.max_body, flag).boxed();
    Request::from_parts(parts, body)
}
