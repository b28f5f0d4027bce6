//! gRPC through the gateway: a real tonic client calls a real tonic
//! server (raw byte messages, no generated code) over an `h2c` and an
//! `http2` (TLS, private CA) upstream. Statuses and trailers arrive
//! intact; the gateway's own refusals are gRPC statuses; an upstream's
//! `GOAWAY` loses no request it did not process. An HTTP/1.1 client's
//! upload to an HTTP/2 upstream streams while its answer comes, and ends
//! with the answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::PrivateKeyDer;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Request, Response, Status};

use crate::common::idp::Idp;
use crate::common::{crypto, metric, raw_request, Gateway};

/// Messages as raw bytes.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// What the upstream saw.
#[derive(Default)]
struct Seen {
    /// Calls the service processed.
    calls: AtomicUsize,
    /// `te` of the last call.
    te: Mutex<Option<String>>,
    /// Calls that carried an `Authorization` field.
    authorized: AtomicUsize,
}

/// The gRPC service `echo.Echo`: `Unary` answers `echo: <message>`,
/// `Stream` answers `<message> 0`, `<message> 1`, `<message> 2`, `Fail`
/// fails with NOT_FOUND and a message that needs percent-encoding, `Chat`
/// answers each message as it arrives with `re: <message>`.
async fn echo_service(
    req: http::Request<Incoming>,
    seen: Arc<Seen>,
) -> http::Response<tonic::body::Body> {
    seen.calls.fetch_add(1, Ordering::SeqCst);
    *seen.te.lock().unwrap() = req
        .headers()
        .get("te")
        .map(|v| v.to_str().unwrap().to_owned());
    if req.headers().contains_key("authorization") {
        seen.authorized.fetch_add(1, Ordering::SeqCst);
    }
    let mut grpc = tonic::server::Grpc::new(Raw);
    match req.uri().path() {
        "/echo.Echo/Unary" => {
            let svc = tower::service_fn(|r: Request<Bytes>| async move {
                let mut reply = b"echo: ".to_vec();
                reply.extend_from_slice(r.get_ref());
                Ok::<_, Status>(Response::new(Bytes::from(reply)))
            });
            grpc.unary(svc, req).await
        }
        "/echo.Echo/Stream" => {
            let svc = tower::service_fn(|r: Request<Bytes>| async move {
                let text = String::from_utf8_lossy(r.get_ref()).into_owned();
                let items: Vec<Result<Bytes, Status>> = (0..3)
                    .map(|i| Ok(Bytes::from(format!("{text} {i}"))))
                    .collect();
                Ok::<_, Status>(Response::new(tokio_stream::iter(items)))
            });
            grpc.server_streaming(svc, req).await
        }
        "/echo.Echo/Fail" => {
            let svc = tower::service_fn(|_: Request<Bytes>| async move {
                Err::<Response<Bytes>, _>(Status::not_found("no such item: caf\u{e9} 100%"))
            });
            grpc.unary(svc, req).await
        }
        "/echo.Echo/Chat" => {
            let svc = tower::service_fn(|r: Request<tonic::Streaming<Bytes>>| async move {
                let mut inbound = r.into_inner();
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                tokio::spawn(async move {
                    while let Ok(Some(message)) = inbound.message().await {
                        let mut reply = b"re: ".to_vec();
                        reply.extend_from_slice(&message);
                        if tx.send(Ok(Bytes::from(reply))).await.is_err() {
                            break;
                        }
                    }
                });
                Ok::<_, Status>(Response::new(tokio_stream::wrappers::ReceiverStream::new(
                    rx,
                )))
            });
            grpc.streaming(svc, req).await
        }
        _ => Status::unimplemented("no such method").into_http(),
    }
}

/// An HTTP/2 gRPC upstream on loopback, TLS (ALPN `h2`) with `tls`, else
/// h2c. With `goaway_after`, each connection sends `GOAWAY` (graceful
/// shutdown) once it has served that many calls.
async fn grpc_upstream(
    tls: Option<TlsAcceptor>,
    goaway_after: Option<usize>,
) -> (SocketAddr, Arc<Seen>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let connections = Arc::new(AtomicUsize::new(0));
    let (seen2, connections2) = (seen.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                break;
            };
            connections2.fetch_add(1, Ordering::SeqCst);
            let seen = seen2.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(tcp).await else {
                            return;
                        };
                        serve_h2(TokioIo::new(stream), seen, goaway_after).await;
                    }
                    None => serve_h2(TokioIo::new(tcp), seen, goaway_after).await,
                }
            });
        }
    });
    (addr, seen, connections)
}

async fn serve_h2<I>(io: I, seen: Arc<Seen>, goaway_after: Option<usize>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let served = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(tokio::sync::Notify::new());
    let (served2, enough2) = (served.clone(), enough.clone());
    let service = service_fn(move |req: http::Request<Incoming>| {
        let seen = seen.clone();
        let n = served2.fetch_add(1, Ordering::SeqCst) + 1;
        if goaway_after == Some(n) {
            enough2.notify_one();
        }
        async move { Ok::<_, Infallible>(echo_service(req, seen).await) }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = enough.notified() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// A CA, and a TLS acceptor (ALPN `h2`) for `localhost` it signed.
fn tls_acceptor() -> (TlsAcceptor, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "microgateway gRPC test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    (TlsAcceptor::from(Arc::new(config)), ca_cert.pem())
}

/// The API `api` (`grpc: true`) at `/echo.Echo`: `Unary`, `Stream` and
/// `Fail` need the API scope `Call` (token scope `echo`).
fn echo_yaml(api: &str, idp: &Idp, upstream: &str) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
security_settings:
  auth_servers:
  - id: idp
    name: idp
    localIntrospectionConfig:
      issuer: "{issuer}"
      jwksuri: "{jwks}"
      audience: travels
scope_mappings:
- {{ auth_server: idp, scope: echo, api_scopes: ["{api}:Call"] }}
apis:
- name: "{api}"
  version: "1.0"
  base_path: /echo.Echo
  grpc: true
  upstream: {upstream}
  authentication: {{ type: oauth2, auth_server: idp }}
  scopes:
  - name: Call
    resources: ["POST /Unary", "POST /Stream", "POST /Fail", "POST /Chat"]
"#,
        issuer = idp.issuer(),
        jwks = idp.jwks_uri(),
    )
}

/// A tonic client on an h2c channel to the gateway.
async fn client(gw: &Gateway) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gw.http))
        .unwrap()
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

fn request(message: &str, token: Option<&str>) -> Request<Bytes> {
    let mut req = Request::new(Bytes::from(message.to_owned()));
    if let Some(token) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    req
}

async fn unary(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    method: &'static str,
    req: Request<Bytes>,
) -> Result<Bytes, Status> {
    grpc.ready().await.unwrap();
    grpc.unary(req, PathAndQuery::from_static(method), Raw)
        .await
        .map(Response::into_inner)
}

async fn stream(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    req: Request<Bytes>,
) -> Result<Vec<String>, Status> {
    grpc.ready().await.unwrap();
    let mut streaming = grpc
        .server_streaming(req, PathAndQuery::from_static("/echo.Echo/Stream"), Raw)
        .await?
        .into_inner();
    let mut got = Vec::new();
    while let Some(message) = streaming.message().await? {
        got.push(String::from_utf8(message.to_vec()).unwrap());
    }
    Ok(got)
}

/// Unary, server-streaming and failing calls, with their statuses.
async fn calls_pass_with_their_trailers(gw: &Gateway, token: &str, seen: &Seen) {
    let mut grpc = client(gw).await;
    let reply = unary(&mut grpc, "/echo.Echo/Unary", request("hi", Some(token)))
        .await
        .unwrap();
    assert_eq!(&reply[..], b"echo: hi");
    assert_eq!(seen.te.lock().unwrap().as_deref(), Some("trailers"));
    let items = stream(&mut grpc, request("item", Some(token)))
        .await
        .unwrap();
    assert_eq!(items, ["item 0", "item 1", "item 2"]);
    // A status other than OK, from the upstream's trailers, message intact.
    let status = unary(&mut grpc, "/echo.Echo/Fail", request("x", Some(token)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "no such item: caf\u{e9} 100%");
    assert_eq!(seen.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn unary_and_streaming_calls_through_an_h2c_upstream() {
    let idp = Idp::start().await;
    let (addr, seen, _) = grpc_upstream(None, None).await;
    let upstream = format!("{{ url: \"http://{addr}/echo.Echo\", protocol: h2c }}");
    let gw = Gateway::start(&echo_yaml("Echo h2c", &idp, &upstream)).await;
    calls_pass_with_their_trailers(&gw, &idp.token(&["echo"]), &seen).await;
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"microgateway_responses_total{api="Echo h2c",class="grpc_0"}"#
        ),
        2
    );
    assert_eq!(
        metric(
            &text,
            r#"microgateway_responses_total{api="Echo h2c",class="grpc_5"}"#
        ),
        1
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn unary_and_streaming_calls_through_a_tls_http2_upstream() {
    crypto();
    let idp = Idp::start().await;
    let (acceptor, ca_pem) = tls_acceptor();
    let (addr, seen, connections) = grpc_upstream(Some(acceptor), None).await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("upstream-ca.pem");
    std::fs::write(&bundle, ca_pem).unwrap();
    let upstream = format!(
        "{{ url: \"https://localhost:{port}/echo.Echo\", protocol: http2, ca_bundle: \"{bundle}\" }}",
        port = addr.port(),
        bundle = bundle.display()
    );
    let gw = Gateway::start(&echo_yaml("Echo TLS", &idp, &upstream)).await;
    calls_pass_with_their_trailers(&gw, &idp.token(&["echo"]), &seen).await;
    // The three calls were multiplexed on one upstream connection.
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn refusals_are_grpc_statuses_and_never_reach_the_upstream() {
    let idp = Idp::start().await;
    let (addr, seen, _) = grpc_upstream(None, None).await;
    let upstream = format!("{{ url: \"http://{addr}/echo.Echo\", protocol: h2c }}");
    let gw = Gateway::start(&echo_yaml("Echo refusals", &idp, &upstream)).await;
    let mut grpc = client(&gw).await;
    let status = unary(&mut grpc, "/echo.Echo/Unary", request("hi", None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(status.message(), "a bearer token is required");
    let lacking = idp.token(&["other"]);
    let status = unary(&mut grpc, "/echo.Echo/Unary", request("hi", Some(&lacking)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = unary(
        &mut grpc,
        "/echo.Echo/Unary",
        request("hi", Some("not-a-jwt")),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let token = idp.token(&["echo"]);
    let status = unary(&mut grpc, "/echo.Echo/Nope", request("hi", Some(&token)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert_eq!(seen.calls.load(Ordering::SeqCst), 0);
    // The refusal is trailers-only: HTTP 200, the status in the head.
    let resp = gw
        .client
        .post(gw.url("/echo.Echo/Unary"))
        .header("content-type", "application/grpc")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    assert_eq!(resp.headers()["grpc-status"], "16");
    assert_eq!(resp.headers()["grpc-message"], "a bearer token is required");
    assert!(resp.bytes().await.unwrap().is_empty());
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"microgateway_responses_total{api="Echo refusals",class="grpc_16"}"#
        ),
        3
    );
    assert_eq!(
        metric(
            &text,
            r#"microgateway_responses_total{api="Echo refusals",class="grpc_7"}"#
        ),
        1
    );
    gw.shutdown().await;
}

/// Refusals made before the call is matched to a method (its path too
/// long, too many metadata fields) are gRPC statuses too: the API is known
/// by the path the call is under.
#[tokio::test]
async fn refusals_before_matching_are_grpc_statuses_too() {
    let idp = Idp::start().await;
    let (addr, seen, _) = grpc_upstream(None, None).await;
    let upstream = format!("{{ url: \"http://{addr}/echo.Echo\", protocol: h2c }}");
    let yaml = echo_yaml("Echo early refusals", &idp, &upstream)
        + "limits: { max_headers: 20, max_uri: 200 }\n";
    let gw = Gateway::start(&yaml).await;
    let mut grpc = client(&gw).await;
    let token = idp.token(&["echo"]);
    let mut crowded = request("hi", Some(&token));
    for i in 0..30 {
        let name: tonic::metadata::MetadataKey<_> = format!("x-field-{i}").parse().unwrap();
        crowded.metadata_mut().insert(name, "1".parse().unwrap());
    }
    let status = unary(&mut grpc, "/echo.Echo/Unary", crowded)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let long = format!("/echo.Echo/Unary?{}", "a".repeat(300));
    grpc.ready().await.unwrap();
    let status = grpc
        .unary(
            request("hi", Some(&token)),
            PathAndQuery::try_from(long).unwrap(),
            Raw,
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(seen.calls.load(Ordering::SeqCst), 0);
    // The same call within the limits goes through.
    let reply = unary(&mut grpc, "/echo.Echo/Unary", request("hi", Some(&token)))
        .await
        .unwrap();
    assert_eq!(&reply[..], b"echo: hi");
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"microgateway_responses_total{api="Echo early refusals",class="grpc_3"}"#
        ),
        2
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_upstream_is_unavailable() {
    let idp = Idp::start().await;
    let closed = crate::common::Refusing::new();
    let addr = closed.addr;
    let upstream = format!("{{ url: \"http://{addr}/echo.Echo\", protocol: h2c }}");
    let gw = Gateway::start(&echo_yaml("Echo unreachable", &idp, &upstream)).await;
    let mut grpc = client(&gw).await;
    let token = idp.token(&["echo"]);
    let status = unary(&mut grpc, "/echo.Echo/Unary", request("hi", Some(&token)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    gw.shutdown().await;
}

/// A refusal's `grpc-message` is the description the JSON answer gives,
/// never its internal cause: an auth server whose keys cannot be fetched
/// is not named to the client with its address and error.
#[tokio::test]
async fn a_refusals_grpc_message_tells_no_internal_cause() {
    let idp = Idp::start().await;
    let (addr, seen, _) = grpc_upstream(None, None).await;
    let upstream = format!("{{ url: \"http://{addr}/echo.Echo\", protocol: h2c }}");
    let closed = crate::common::Refusing::new();
    let unreachable = format!("http://{}/keys/jwks.json", closed.addr);
    let yaml = echo_yaml("Echo keys down", &idp, &upstream).replace(&idp.jwks_uri(), &unreachable);
    assert!(yaml.contains(&unreachable));
    let gw = Gateway::start(&yaml).await;
    let mut grpc = client(&gw).await;
    let token = idp.token(&["echo"]);
    let status = unary(&mut grpc, "/echo.Echo/Unary", request("hi", Some(&token)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.message(),
        "the authorization server cannot be reached"
    );
    assert_eq!(seen.calls.load(Ordering::SeqCst), 0);
    gw.shutdown().await;
}

/// An upstream that accepts connections and never completes their TLS
/// handshakes (each is held open).
async fn stalling_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    addr
}

/// The API `api` on the upstream at `addr` (TLS, HTTP/2, `timeout: 2s`),
/// and the directory the gateway reads the upstream's CA from.
fn stalling_yaml(
    api: &str,
    idp: &Idp,
    addr: SocketAddr,
    ca_pem: &str,
) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("upstream-ca.pem");
    std::fs::write(&bundle, ca_pem).unwrap();
    let upstream = format!(
        "{{ url: \"https://localhost:{port}/echo.Echo\", protocol: http2, timeout: 2s, ca_bundle: \"{bundle}\" }}",
        port = addr.port(),
        bundle = bundle.display()
    );
    (echo_yaml(api, idp, &upstream), dir)
}

/// A call that waits for a connection another call is opening gets no
/// second `upstream.timeout` to open its own once that one failed:
/// connecting ends within one timeout of the call's start.
#[tokio::test]
async fn a_call_waiting_for_a_stalled_connection_fails_within_one_timeout() {
    crypto();
    let idp = Idp::start().await;
    let (_, ca_pem) = tls_acceptor();
    let addr = stalling_upstream().await;
    let (yaml, _ca) = stalling_yaml("Echo stalled waiting", &idp, addr, &ca_pem);
    let gw = Gateway::start(&yaml).await;
    let token = idp.token(&["echo"]);
    // Both calls on one connection to the gateway: one thread, one pool.
    let grpc = client(&gw).await;
    let first = {
        let (mut grpc, token) = (grpc.clone(), token.clone());
        tokio::spawn(async move {
            unary(&mut grpc, "/echo.Echo/Unary", request("a", Some(&token))).await
        })
    };
    // The second comes while the first's connection is being opened
    // (before: it got a new 2 s once that failed, 3.5 s in all).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut grpc = grpc.clone();
    let started = std::time::Instant::now();
    let status = unary(&mut grpc, "/echo.Echo/Unary", request("b", Some(&token)))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        took < Duration::from_millis(3000),
        "answered after {took:?}"
    );
    let status = first.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn an_upstream_goaway_loses_no_unprocessed_call() {
    let idp = Idp::start().await;
    // Each upstream connection goes away after 5 calls.
    let (addr, seen, connections) = grpc_upstream(None, Some(5)).await;
    let upstream = format!("{{ url: \"http://{addr}/echo.Echo\", protocol: h2c }}");
    let gw = Gateway::start(&echo_yaml("Echo goaway", &idp, &upstream)).await;
    let token = idp.token(&["echo"]);
    let mut tasks = Vec::new();
    for client_no in 0..4 {
        let mut grpc = client(&gw).await;
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let message = format!("{client_no}-{i}");
                let reply = unary(
                    &mut grpc,
                    "/echo.Echo/Unary",
                    request(&message, Some(&token)),
                )
                .await
                .unwrap_or_else(|status| panic!("call {message} failed: {status:?}"));
                assert_eq!(reply, format!("echo: {message}").as_bytes());
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("calls do not hang")
            .unwrap();
    }
    // Every call was processed exactly once, over several connections.
    assert_eq!(seen.calls.load(Ordering::SeqCst), 40);
    assert!(connections.load(Ordering::SeqCst) >= 2);
    gw.shutdown().await;
}

/// An h2c upstream whose first connection refuses every stream
/// (`REFUSED_STREAM`, no `GOAWAY` yet: a server going away, or full) and
/// whose later ones answer 200. Counts the connections.
async fn refusing_first_connection() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((_, mut respond))) = conn.accept().await {
                    if first {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                    } else {
                        let _ = respond.send_response(http::Response::new(()), true);
                    }
                }
            });
        }
    });
    (addr, connections)
}

/// A request the upstream refused (`REFUSED_STREAM`) is sent again on
/// another connection: the one that refused it may be going away before
/// its `GOAWAY` has been read, and is given no new request.
#[tokio::test]
async fn a_refused_request_is_sent_again_on_another_connection() {
    let (addr, connections) = refusing_first_connection().await;
    let yaml = format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
apis:
- name: Refusing
  base_path: /refusing
  upstream: {{ url: "http://{addr}/", protocol: h2c, timeout: 5s }}
  authentication: {{ type: none }}
  resources: ["GET /items"]
"#
    );
    let gw = Gateway::start(&yaml).await;
    for _ in 0..3 {
        let answer = raw_request(
            gw.http,
            b"GET /refusing/items HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // The first connection refused; each listener thread has its own.
    assert!(connections.load(Ordering::SeqCst) >= 2);
    gw.shutdown().await;
}

/// A message over `limits.max_body` is the client's fault: 413
/// (RESOURCE_EXHAUSTED), never counted as an upstream error.
#[tokio::test]
async fn a_request_over_the_body_limit_is_resource_exhausted() {
    let idp = Idp::start().await;
    let (addr, _, _) = grpc_upstream(None, None).await;
    let upstream = format!("{{ url: \"http://{addr}/echo.Echo\", protocol: h2c }}");
    let yaml = echo_yaml("Echo limits", &idp, &upstream)
        .replace("ports: {", "limits: { max_body: 1KiB }\nports: {");
    let gw = Gateway::start(&yaml).await;
    let mut grpc = client(&gw).await;
    let token = idp.token(&["echo"]);
    let big = "x".repeat(64 * 1024);
    let status = unary(&mut grpc, "/echo.Echo/Unary", request(&big, Some(&token)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"microgateway_upstream_errors_total{api="Echo limits",cause="protocol"}"#
        ),
        0,
        "the client's oversized body is counted as the upstream's fault"
    );
    // The connection serves the next call.
    let reply = unary(
        &mut grpc,
        "/echo.Echo/Unary",
        request("small", Some(&token)),
    )
    .await
    .unwrap();
    assert_eq!(&reply[..], b"echo: small");
    gw.shutdown().await;
}

#[tokio::test]
async fn the_protocol_must_fit_the_url() {
    let refused = |upstream: &str| {
        format!(
            r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
apis:
- name: A
  version: "1.0"
  base_path: /a
  upstream: {upstream}
  authentication: {{ type: none }}
  resources: ["POST /x"]
"#
        )
    };
    let cases = [
        (
            r#"{ url: "http://127.0.0.1:1/", protocol: h3 }"#,
            "upstream.protocol `h3` is not known; allowed: http1, http2, h2c",
        ),
        (
            r#"{ url: "https://localhost:1/", protocol: h2c }"#,
            "upstream.protocol `h2c` does not fit a https:// url; allowed: h2c with http://, http2 with https://",
        ),
        (
            r#"{ url: "http://127.0.0.1:1/", protocol: http2 }"#,
            "upstream.protocol `http2` does not fit a http:// url; allowed: http2 with https://, h2c with http://",
        ),
        (
            r#"{ endpoints: [{ url: "http://127.0.0.1:1/" }], protocol: h2c }"#,
            "upstream.protocol http2 and h2c take one `url`, not `endpoints`",
        ),
    ];
    for (upstream, expected) in cases {
        let error = Gateway::try_start(&refused(upstream), crate::common::env(&[]))
            .await
            .err()
            .unwrap_or_else(|| panic!("{upstream} is refused"));
        assert!(error.contains(expected), "{upstream}: {error}");
        assert!(error.contains(":7:"), "{upstream}: {error}");
    }
    let grpc_flag = refused(r#"{ echo: true }"#).replace("  version:", "  grpc: maybe\n  version:");
    let error = Gateway::try_start(&grpc_flag, crate::common::env(&[]))
        .await
        .err()
        .unwrap();
    assert!(error.contains("grpc: `maybe` is not a boolean"), "{error}");
    let tunnel = refused(r#"{ url: "http://127.0.0.1:1/", protocol: h2c }"#)
        .replace("  version:", "  websocket: true\n  version:");
    let error = Gateway::try_start(&tunnel, crate::common::env(&[]))
        .await
        .err()
        .unwrap();
    assert!(
        error.contains("websocket: true needs an HTTP/1.1 upstream"),
        "{error}"
    );
}

#[tokio::test]
async fn a_bidirectional_call_streams_both_ways_message_by_message() {
    let idp = Idp::start().await;
    let (addr, seen, _) = grpc_upstream(None, None).await;
    let upstream = format!("{{ url: \"http://{addr}/echo.Echo\", protocol: h2c }}");
    let gw = Gateway::start(&echo_yaml("Echo chat", &idp, &upstream)).await;
    let mut grpc = client(&gw).await;
    grpc.ready().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let mut req = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let token = idp.token(&["echo"]);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    tx.send(Bytes::from_static(b"m0")).await.unwrap();
    let call = grpc.streaming(req, PathAndQuery::from_static("/echo.Echo/Chat"), Raw);
    let mut replies = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the head does not wait for the whole request")
        .unwrap()
        .into_inner();
    // Each reply comes before the next message is sent: neither
    // direction is buffered to its end.
    for i in 0..5 {
        let reply = tokio::time::timeout(Duration::from_secs(30), replies.message())
            .await
            .expect("each message passes on its own")
            .unwrap()
            .unwrap();
        assert_eq!(reply, format!("re: m{i}").as_bytes());
        if i < 4 {
            tx.send(Bytes::from(format!("m{}", i + 1))).await.unwrap();
        }
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());
    // OK, from the trailers.
    assert!(replies.trailers().await.unwrap().is_some());
    assert_eq!(seen.calls.load(Ordering::SeqCst), 1);
    gw.shutdown().await;
}

/// An HTTP/2 client connection to the gateway (h2c by prior knowledge).
async fn h2_sender(
    gw: &Gateway,
) -> hyper::client::conn::http2::SendRequest<
    http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>,
> {
    let tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    sender
}

/// A unary call of `echo.Echo/Unary` whose body is what `rx` sends.
fn raw_call(
    gw: &Gateway,
    token: &str,
    rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> http::Request<http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>> {
    use http_body_util::BodyExt;
    http::Request::post(format!("http://{}/echo.Echo/Unary", gw.http))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(crate::common::channel_body(rx).boxed_unsync())
        .unwrap()
}

/// A client that goes silent in the middle of its message is the client's
/// fault (408: DEADLINE_EXCEEDED), over an HTTP/2 upstream as over an
/// HTTP/1.1 one (grpc.md: "the client's body broken → 400/408"), and is
/// never counted as an upstream error.
#[tokio::test]
async fn a_client_silent_in_its_message_is_deadline_exceeded_not_the_upstreams_fault() {
    let idp = Idp::start().await;
    let (addr, _, _) = grpc_upstream(None, None).await;
    let upstream = format!("{{ url: \"http://{addr}/echo.Echo\", protocol: h2c }}");
    let yaml = echo_yaml("Echo silent client", &idp, &upstream)
        .replace("ports: {", "timeouts: { body_read: 1s }\nports: {");
    let gw = Gateway::start(&yaml).await;
    let mut sender = h2_sender(&gw).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let req = raw_call(&gw, &idp.token(&["echo"]), rx);
    // A message of 10 bytes announced, 2 sent, then silence.
    tx.send(Bytes::from_static(&[0, 0, 0, 0, 10, b'h', b'i']))
        .await
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("answered")
        .expect("an answer, not a reset");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("4"),
        "DEADLINE_EXCEEDED (408), not UNAVAILABLE (502): {:?}",
        response.headers()
    );
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"microgateway_upstream_errors_total{api="Echo silent client",cause="protocol"}"#
        ),
        0,
        "the client's silence is counted as the upstream's fault"
    );
    drop(tx);
    gw.shutdown().await;
}

/// The upstream timeout is the upstream's: a client that sends its
/// message slowly but steadily (never silent for `body_read`) is not cut
/// with 504 because the upload took longer than `upstream.timeout`, as
/// over an HTTP/1.1 upstream ("the client's pace of sending its body is
/// bounded by `timeouts.body_read`, not counted against the upstream").
#[tokio::test]
async fn a_message_sent_slowly_is_not_an_upstream_timeout() {
    let idp = Idp::start().await;
    let (addr, seen, _) = grpc_upstream(None, None).await;
    let upstream = format!("{{ url: \"http://{addr}/echo.Echo\", protocol: h2c, timeout: 1s }}");
    let gw = Gateway::start(&echo_yaml("Echo slow sender", &idp, &upstream)).await;
    let mut sender = h2_sender(&gw).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let req = raw_call(&gw, &idp.token(&["echo"]), rx);
    // "abcdefgh" in four pieces, 500 ms apart: 2 s in all.
    tokio::spawn(async move {
        tx.send(Bytes::from_static(&[0, 0, 0, 0, 8])).await.unwrap();
        for piece in [&b"ab"[..], b"cd", b"ef", b"gh"] {
            tokio::time::sleep(Duration::from_millis(500)).await;
            tx.send(Bytes::from_static(piece)).await.unwrap();
        }
    });
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("answered")
        .expect("an answer");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers().get("grpc-status"),
        None,
        "a refusal instead of the upstream's answer: {:?}",
        response.headers()
    );
    let collected = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(seen.calls.load(Ordering::SeqCst), 1);
    gw.shutdown().await;
}

/// An h2c upstream that never answers. With `read`, it takes each call's
/// message to its end first; without, it takes none of it past the
/// 16 KiB window it opens.
async fn silent_upstream(read: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let service = service_fn(move |req: http::Request<Incoming>| async move {
                if read {
                    let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                    std::future::pending::<()>().await;
                } else {
                    let _held = req;
                    std::future::pending::<()>().await;
                }
                Ok::<_, Infallible>(http::Response::new(http_body_util::Empty::<Bytes>::new()))
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .initial_stream_window_size(16 * 1024)
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    addr
}

/// The upstream's timeout for its answer runs from the end of the
/// message, however long the client took to send it: 504
/// (UNAVAILABLE), counted as an upstream timeout.
#[tokio::test]
async fn the_upstream_timeout_runs_from_the_end_of_the_message() {
    let idp = Idp::start().await;
    let addr = silent_upstream(true).await;
    let upstream = format!("{{ url: \"http://{addr}/echo.Echo\", protocol: h2c, timeout: 1s }}");
    let gw = Gateway::start(&echo_yaml("Echo silent upstream", &idp, &upstream)).await;
    let mut sender = h2_sender(&gw).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let req = raw_call(&gw, &idp.token(&["echo"]), rx);
    // "abcdefgh" in four pieces, 500 ms apart: 2 s in all.
    let sending = tokio::spawn(async move {
        tx.send(Bytes::from_static(&[0, 0, 0, 0, 8])).await.unwrap();
        for piece in [&b"ab"[..], b"cd", b"ef", b"gh"] {
            tokio::time::sleep(Duration::from_millis(500)).await;
            tx.send(Bytes::from_static(piece)).await.unwrap();
        }
        std::time::Instant::now()
    });
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("answered")
        .expect("an answer");
    let answered = std::time::Instant::now();
    let sent = sending.await.unwrap();
    assert!(answered >= sent, "cut while the message was still coming");
    assert_eq!(
        response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("14"),
        "{:?}",
        response.headers()
    );
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"microgateway_upstream_errors_total{api="Echo silent upstream",cause="timeout"}"#
        ),
        1
    );
    gw.shutdown().await;
}

/// An upstream that takes no more of a message than its window holds has
/// `upstream.timeout` to take the rest, even while the message has not
/// ended: 504 (UNAVAILABLE), counted as an upstream timeout.
#[tokio::test]
async fn an_upstream_that_takes_no_more_of_the_message_times_out() {
    let idp = Idp::start().await;
    let addr = silent_upstream(false).await;
    let upstream = format!("{{ url: \"http://{addr}/echo.Echo\", protocol: h2c, timeout: 1s }}");
    let gw = Gateway::start(&echo_yaml("Echo stuck upstream", &idp, &upstream)).await;
    let mut sender = h2_sender(&gw).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let req = raw_call(&gw, &idp.token(&["echo"]), rx);
    // A message of 1 MiB announced, 256 KiB of it sent, more to come.
    tokio::spawn(async move {
        let _ = tx.send(Bytes::from_static(&[0, 0x10, 0, 0, 0])).await;
        for _ in 0..4 {
            let _ = tx.send(Bytes::from(vec![b'x'; 64 * 1024])).await;
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("answered within the upstream timeout")
        .expect("an answer");
    assert_eq!(
        response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("14"),
        "{:?}",
        response.headers()
    );
    let text = gw.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"microgateway_upstream_errors_total{api="Echo stuck upstream",cause="timeout"}"#
        ),
        1
    );
    gw.shutdown().await;
}

/// An h2c upstream on loopback whose every request is answered by
/// `answer` (the request is its to read, hold or drop).
async fn h2c_upstream<F>(answer: F) -> SocketAddr
where
    F: Fn(
            http::Request<Incoming>,
        ) -> http::Response<http_body_util::combinators::BoxBody<Bytes, hyper::Error>>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let answer = answer.clone();
            let service = service_fn(move |req: http::Request<Incoming>| {
                let response = answer(req);
                async move { Ok::<_, Infallible>(response) }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    addr
}

/// The API `Stream h2c` at `/stream`, with no authentication, whose
/// upstream speaks h2c; `extra` goes at the top level.
fn stream_yaml(addr: SocketAddr, extra: &str) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0, bind: 127.0.0.1 }}
{extra}
apis:
- name: Stream h2c
  version: "1.0"
  base_path: /stream
  upstream: {{ url: "http://{addr}/stream", protocol: h2c }}
  authentication: {{ type: none }}
  resources: ["POST /echo", "POST /hold", "GET /hold"]
"#
    )
}

/// The data of a chunked body, `None` while its last chunk has not come.
fn dechunk(mut encoded: &[u8]) -> Option<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let line = encoded.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&encoded[..line]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        encoded = &encoded[line + 2..];
        if size == 0 {
            return encoded.starts_with(b"\r\n").then_some(data);
        }
        if encoded.len() < size + 2 {
            return None;
        }
        data.extend_from_slice(&encoded[..size]);
        encoded = &encoded[size + 2..];
    }
}

/// An HTTP/1.1 client's upload to an HTTP/2 upstream streams both ways at
/// once: the upstream echoes each piece as it comes, the client reads the
/// echo (slowly, so that the gateway's writes wait for it) while it still
/// sends. The upload's reading and the answer's writing share the
/// client's connection; neither waits for the other.
#[tokio::test]
async fn an_http1_upload_to_an_http2_upstream_streams_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = h2c_upstream(|req: http::Request<Incoming>| {
        http::Response::new(http_body_util::BodyExt::boxed(req.into_body()))
    })
    .await;
    // Long timeouts: no watchdog's look at the connection hides a lost
    // wake-up within the test's bound.
    let extra =
        "limits: { max_body: 64MiB }\ntimeouts: { send: 300s, idle: 300s, body_read: 300s }";
    let gw = Gateway::start(&stream_yaml(addr, extra)).await;
    let sent: Vec<u8> = (0..12 * 1024 * 1024)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    // A small receive buffer: the gateway's writes wait for the client.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let tcp = socket.connect(gw.http).await.unwrap();
    let (mut reader, mut writer) = tcp.into_split();
    let upload = sent.clone();
    let sending = tokio::spawn(async move {
        writer
            .write_all(
                b"POST /stream/echo HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n",
            )
            .await?;
        for piece in upload.chunks(16 * 1024) {
            let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
            chunk.extend_from_slice(piece);
            chunk.extend_from_slice(b"\r\n");
            writer.write_all(&chunk).await?;
        }
        writer.write_all(b"0\r\n\r\n").await?;
        Ok::<_, std::io::Error>(writer)
    });
    let receiving = async {
        let mut raw = Vec::new();
        let mut piece = vec![0; 8 * 1024];
        loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                if let Some(echo) = dechunk(&raw[end + 4..]) {
                    return (raw, echo);
                }
            }
            let n = reader.read(&mut piece).await.unwrap();
            assert!(
                n > 0,
                "closed: {}",
                String::from_utf8_lossy(&raw[..raw.len().min(200)])
            );
            raw.extend_from_slice(&piece[..n]);
            // A slow reader.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    // ~6 s on a quiet machine (a debug build moving 12 MiB each way, with
    // a slow reader), several times that on a busy one; a lost wake-up
    // waits for the watchdog's look at the connection, every half `send`
    // (150 s).
    let (raw, echo) = tokio::time::timeout(Duration::from_secs(120), receiving)
        .await
        .expect("the whole echo arrives");
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw[..200])
    );
    assert!(
        echo == sent,
        "the echo differs from the upload ({} bytes of {})",
        echo.len(),
        sent.len()
    );
    tokio::time::timeout(Duration::from_secs(15), sending)
        .await
        .expect("the upload ended")
        .unwrap()
        .unwrap();
    gw.shutdown().await;
}

/// A burst of calls on a cold pool opens one upstream connection and
/// multiplexes them over it, not a connection each.
#[tokio::test]
async fn a_burst_of_calls_on_a_cold_pool_opens_one_connection() {
    use http_body_util::BodyExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let service = service_fn(|_req: http::Request<Incoming>| async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let body = http_body_util::Full::new(Bytes::from_static(b"ok"));
                Ok::<_, Infallible>(http::Response::new(body))
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    let yaml = stream_yaml(addr, "").replace(r#""GET /hold"]"#, r#""GET /hold", "GET /small"]"#);
    let gw = Gateway::start(&yaml).await;
    let tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .expect("h2c handshake");
    tokio::spawn(conn);
    let calls = (0..50).map(|_| {
        let mut sender = sender.clone();
        let request = http::Request::get(format!("http://{}/stream/small", gw.http))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        async move {
            let answer = sender.send_request(request).await.expect("answer");
            let status = answer.status();
            let _ = answer.into_body().collect().await;
            status
        }
    });
    for status in futures_util::future::join_all(calls).await {
        assert_eq!(status, 200);
    }
    let opened = accepted.load(Ordering::SeqCst);
    assert!(opened <= 2, "{opened} upstream connections for one burst");
    gw.shutdown().await;
}

/// Clients that do not read big answers hold no more of a shared upstream
/// connection's window than their streams' own: the other calls on that
/// connection still get their data.
#[tokio::test]
async fn slow_readers_of_big_answers_leave_the_shared_connection_to_other_calls() {
    use http_body_util::BodyExt;
    let addr = h2c_upstream(|req: http::Request<Incoming>| {
        let body = match req.uri().path() {
            "/stream/big" => Bytes::from(vec![b'b'; 3 << 20]),
            _ => Bytes::from_static(b"small"),
        };
        let full = http_body_util::Full::new(body);
        http::Response::new(full.map_err(|never| match never {}).boxed())
    })
    .await;
    let yaml = stream_yaml(addr, "")
        .replace(
            r#""GET /hold"]"#,
            r#""GET /hold", "GET /big", "GET /small"]"#,
        )
        .replace("protocol: h2c }", "protocol: h2c, timeout: 2s }");
    let gw = Gateway::start(&yaml).await;
    let tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(16 << 20)
        .handshake(TokioIo::new(tcp))
        .await
        .expect("h2c handshake");
    tokio::spawn(conn);
    let get = |path: &str| {
        http::Request::get(format!("http://{}{path}", gw.http))
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap()
    };
    let mut unread = Vec::new();
    for _ in 0..3 {
        let big = sender.send_request(get("/stream/big")).await.unwrap();
        assert_eq!(big.status(), 200);
        unread.push(big);
    }
    // Give the upstream time to fill what the gateway lets it send.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let small = tokio::time::timeout(Duration::from_millis(1500), async {
        let answer = sender.send_request(get("/stream/small")).await.unwrap();
        answer.into_body().collect().await.map(|b| b.to_bytes())
    })
    .await
    .expect("the small answer within 1.5 s");
    assert_eq!(small.expect("its body"), Bytes::from_static(b"small"));
    drop(unread);
    gw.shutdown().await;
}

/// An HTTP/2 upstream that answers at once, while the client's upload to
/// it over HTTP/1.1 still comes: once the answer has been written, the
/// client's connection ends (the rest of the upload is not read on) and
/// its slot serves the next connection.
#[tokio::test]
async fn an_http1_upload_answered_before_its_end_ends_its_connection() {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = h2c_upstream(|req: http::Request<Incoming>| {
        // The stream stays open: the request is held, unread.
        tokio::spawn(async move {
            let _held = req;
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let done = http_body_util::Full::new(Bytes::from_static(b"done"));
        http::Response::new(done.map_err(|never| match never {}).boxed())
    })
    .await;
    let gw = Gateway::start(&stream_yaml(addr, "limits: { max_connections: 1 }")).await;
    let tcp = tokio::net::TcpStream::connect(gw.http).await.unwrap();
    let (mut reader, mut writer) = tcp.into_split();
    // The upload, in small pieces, until the connection refuses them.
    let sending = tokio::spawn(async move {
        writer
            .write_all(
                b"POST /stream/hold HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n",
            )
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if writer
                .write_all(b"10\r\n0123456789abcdef\r\n")
                .await
                .is_err()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    });
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut raw)).await;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.ends_with("done"), "{raw}");
    assert!(read.is_ok(), "the answered connection did not end: {raw}");
    let refused = tokio::time::timeout(Duration::from_secs(10), sending)
        .await
        .expect("the connection ends while the upload still comes")
        .unwrap();
    assert!(refused, "the rest of the upload was still taken");
    // The one slot serves the next connection.
    let get = b"GET /stream/hold HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n";
    let next = tokio::time::timeout(Duration::from_secs(10), raw_request(gw.http, get))
        .await
        .expect("the next connection is served");
    assert!(next.starts_with("HTTP/1.1 200"), "{next}");
    gw.shutdown().await;
}
