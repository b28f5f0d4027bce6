//! TLS both ways: `ports.https` serves HTTP/1.1 and HTTP/2 by ALPN with the
//! live snapshot's certificate (a reload applies to new connections), and
//! `https` upstreams are verified against an API's `ca_bundle`.
use crate::common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{crypto, Gateway, Upstream};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use microgateway::reload::Source;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A certificate for `localhost` and its key, as PEM.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn self_signed() -> Leaf {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: signing_key.serialize_pem(),
        der: cert.der().clone(),
    }
}

fn write_leaf(dir: &Path, leaf: &Leaf) {
    std::fs::write(dir.join("server.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("server.key"), &leaf.key_pem).unwrap();
}

fn https_yaml(upstream: &Upstream, tls_dir: &Path) -> String {
    format!(
        r#"
ports: {{ http: 0, https: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
tls:
  certificate: {dir}/server.crt
  key: {dir}/server.key
timeouts: {{ header_read: 1s }}
apis:
- name: Secure
  version: "1.0"
  base_path: /secure
  transport: [https]
  upstream: {{ url: "{url}" }}
  authentication: {{ type: none }}
  resources: ["GET /items"]
"#,
        dir = tls_dir.display(),
        url = upstream.url("/api")
    )
}

fn https_addr(gw: &Gateway) -> SocketAddr {
    gw.inner
        .as_ref()
        .unwrap()
        .https
        .expect("ports.https is bound")
}

async fn tls_connect(
    addr: SocketAddr,
    trusted: &CertificateDer<'static>,
    alpn: &[u8],
) -> TlsStream<TcpStream> {
    connect_with(addr, client_config(trusted, alpn)).await
}

/// A client trusting `trusted` and offering `alpn`; its connections share
/// one session store.
fn client_config(trusted: &CertificateDer<'static>, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

async fn connect_with(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

/// An HTTP/1.1 client on `tls`.
async fn http1_sender(tls: TlsStream<TcpStream>) -> SendRequest<Empty<Bytes>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// `GET /secure/items` on `sender`.
async fn get_items(sender: &mut SendRequest<Empty<Bytes>>) -> http::Response<Incoming> {
    sender
        .send_request(
            Request::get("/secure/items")
                .header("host", "localhost")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap()
}

/// A gateway serving HTTPS with a fresh self-signed certificate, written
/// to `dir` (kept alive with it).
struct Https {
    dir: tempfile::TempDir,
    leaf: Leaf,
    upstream: Upstream,
    gw: Gateway,
}

async fn https_gateway() -> Https {
    crypto();
    let dir = tempfile::tempdir().unwrap();
    let leaf = self_signed();
    write_leaf(dir.path(), &leaf);
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&https_yaml(&upstream, dir.path())).await;
    Https {
        dir,
        leaf,
        upstream,
        gw,
    }
}

#[tokio::test]
async fn https_serves_http1_and_h2_by_alpn() {
    let Https {
        dir: _dir,
        leaf,
        upstream,
        gw,
    } = https_gateway().await;
    let addr = https_addr(&gw);

    let tls = tls_connect(addr, &leaf.der, b"http/1.1").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut sender = http1_sender(tls).await;
    let resp = get_items(&mut sender).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(upstream.last().headers["x-forwarded-proto"], "https");

    let tls = tls_connect(addr, &leaf.der, b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            Request::get(format!("https://localhost:{}/secure/items", addr.port()))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(upstream.last().headers["x-forwarded-proto"], "https");

    // `transport: [https]`: the plain port does not serve this API.
    assert_eq!(gw.get("/secure/items").await.status(), 404);
    gw.shutdown().await;
}

/// One `GET /secure/items` (answered 200) on a new connection of the
/// client `config`: how its handshake went.
async fn handshake_of_one_request(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> Option<rustls::HandshakeKind> {
    let tls = connect_with(addr, config.clone()).await;
    let kind = tls.get_ref().1.handshake_kind();
    // The session's tickets follow the handshake: read with the answer.
    let mut sender = http1_sender(tls).await;
    assert_eq!(get_items(&mut sender).await.status(), StatusCode::OK);
    kind
}

/// A client that comes back resumes its session (TLS 1.3, a ticket from
/// its first connection): no certificate is signed or sent again.
#[tokio::test]
async fn a_returning_client_resumes_its_session() {
    let https = https_gateway().await;
    let addr = https_addr(&https.gw);
    let config = client_config(&https.leaf.der, b"http/1.1");
    assert_eq!(
        handshake_of_one_request(addr, &config).await,
        Some(rustls::HandshakeKind::Full)
    );
    assert_eq!(
        handshake_of_one_request(addr, &config).await,
        Some(rustls::HandshakeKind::Resumed)
    );
    https.gw.shutdown().await;
}

/// Sessions stay resumable for more clients than rustls keeps by default
/// (256 sessions; each connection gets two tickets).
#[tokio::test]
async fn hundreds_of_returning_clients_all_resume() {
    let https = https_gateway().await;
    let addr = https_addr(&https.gw);
    let clients: Vec<_> = (0..300)
        .map(|_| client_config(&https.leaf.der, b"http/1.1"))
        .collect();
    for config in &clients {
        handshake_of_one_request(addr, config).await;
    }
    let mut full = 0;
    for config in &clients {
        if handshake_of_one_request(addr, config).await != Some(rustls::HandshakeKind::Resumed) {
            full += 1;
        }
    }
    assert_eq!(full, 0, "clients that could not resume");
    https.gw.shutdown().await;
}

/// A TLS connection idle long enough to be parked (1 s) serves its next
/// requests: what the client sends wakes it through the TLS layer.
#[tokio::test]
async fn a_parked_tls_connection_serves_its_next_requests() {
    let Https {
        dir: _dir,
        leaf,
        upstream,
        gw,
    } = https_gateway().await;
    let tls = tls_connect(https_addr(&gw), &leaf.der, b"http/1.1").await;
    let mut sender = http1_sender(tls).await;
    for round in 0..3 {
        let resp = get_items(&mut sender).await;
        assert_eq!(resp.status(), StatusCode::OK, "round {round}");
        resp.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1600)).await;
    }
    assert_eq!(upstream.hits(), 3);
    gw.shutdown().await;
}

/// The conflicting-framing check also watches heads read through TLS.
#[tokio::test]
async fn https_refuses_content_length_with_transfer_encoding() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let https = https_gateway().await;
    let mut tls = tls_connect(https_addr(&https.gw), &https.leaf.der, b"http/1.1").await;
    tls.write_all(
        b"POST /secure/items HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    let raw = String::from_utf8_lossy(&out);
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert_eq!(https.upstream.hits(), 0);
    https.gw.shutdown().await;
}

/// Over TLS, HTTP/2 is what ALPN chose (RFC 9113 §3.2): a connection
/// that agreed on `http/1.1` and then sends the HTTP/2 preface is refused
/// as an HTTP/1.1 request; prior knowledge is the cleartext port's.
#[tokio::test]
async fn https_speaks_http2_only_when_alpn_chose_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let https = https_gateway().await;
    let addr = https_addr(&https.gw);
    let mut tls = tls_connect(addr, &https.leaf.der, b"http/1.1").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    // The preface, then an empty SETTINGS frame.
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    let raw = String::from_utf8_lossy(&out);
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw:?}");
    let tls = tls_connect(addr, &https.leaf.der, b"http/1.1").await;
    let mut sender = http1_sender(tls).await;
    assert_eq!(get_items(&mut sender).await.status(), StatusCode::OK);
    https.gw.shutdown().await;
}

#[tokio::test]
async fn reloaded_certificate_applies_to_new_connections() {
    let Https {
        dir: tls_dir,
        leaf: first,
        upstream: _upstream,
        gw,
    } = https_gateway().await;
    let addr = https_addr(&gw);
    let held = tls_connect(addr, &first.der, b"http/1.1").await;

    let second = self_signed();
    write_leaf(tls_dir.path(), &second);
    let generation = gw
        .state()
        .reload(Source::Api)
        .expect("the new certificate compiles");
    gw.wait_generation(generation).await;
    let tls = tls_connect(addr, &second.der, b"http/1.1").await;
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(presented, second.der);
    // The connection opened before keeps its session.
    let presented = held.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(presented, first.der);

    // A key that does not match its certificate: a refused reload, and
    // the last good certificate serves on.
    std::fs::write(tls_dir.path().join("server.key"), self_signed().key_pem).unwrap();
    let refused = gw
        .state()
        .reload(Source::Api)
        .expect_err("a key that is not the certificate's is refused");
    assert!(refused.to_string().contains("tls.key"), "{refused}");
    assert_eq!(gw.state().live.generation(), generation);
    let tls = tls_connect(addr, &second.der, b"http/1.1").await;
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], second.der);
    gw.shutdown().await;
}

#[tokio::test]
async fn silent_tls_connection_is_closed_after_header_read() {
    crypto();
    let tls_dir = tempfile::tempdir().unwrap();
    write_leaf(tls_dir.path(), &self_signed());
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&https_yaml(&upstream, tls_dir.path())).await;
    let mut tcp = TcpStream::connect(https_addr(&gw)).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(4), tcp.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "no handshake, still open"
    );
    gw.shutdown().await;
}

/// An `https` upstream whose certificate a private CA signed; returns its
/// address, the CA's PEM and the count of TLS connections it accepted.
async fn https_upstream() -> (SocketAddr, String, Arc<AtomicUsize>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "microgateway test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                break;
            };
            let acceptor = acceptor.clone();
            let counted = counted.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let service = service_fn(|req: Request<Incoming>| async move {
                    let body = format!("{{\"path\":\"{}\"}}", req.uri().path());
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, ca_cert.pem(), accepted)
}

#[tokio::test]
async fn https_upstream_is_verified_against_the_ca_bundle() {
    crypto();
    let (addr, ca_pem, accepted) = https_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("upstream-ca.pem");
    std::fs::write(&bundle, ca_pem).unwrap();
    let yaml = format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
apis:
- name: Pinned
  version: "1.0"
  base_path: /pinned
  upstream: {{ url: "https://localhost:{port}/api", ca_bundle: "{bundle}" }}
  authentication: {{ type: none }}
  resources: ["GET /items"]
- name: SystemRoots
  version: "1.0"
  base_path: /system
  upstream: {{ url: "https://localhost:{port}/api" }}
  authentication: {{ type: none }}
  resources: ["GET /items"]
"#,
        port = addr.port(),
        bundle = bundle.display()
    );
    let gw = Gateway::start(&yaml).await;
    // One client connection: its requests share one upstream TLS
    // connection (session tickets the upstream sends after the handshake
    // do not make it look closed).
    let client = common::client();
    for _ in 0..3 {
        let resp = client.get(gw.url("/pinned/items")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), r#"{"path":"/api/items"}"#);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // The private CA is in no system store: verification fails closed.
    assert_eq!(gw.get("/system/items").await.status(), 502);
    gw.shutdown().await;
}

#[tokio::test]
async fn unreadable_ca_bundle_is_a_configuration_error() {
    let yaml = r#"
ports: { http: 0, bind: 127.0.0.1 }
admin: { port: 0 }
apis:
- name: Pinned
  version: "1.0"
  base_path: /pinned
  upstream: { url: "https://localhost:1/api", ca_bundle: "/nonexistent/ca.pem" }
  authentication: { type: none }
  resources: ["GET /items"]
"#;
    let error = Gateway::try_start(yaml, common::Env::new())
        .await
        .err()
        .expect("refused");
    assert!(error.contains("/nonexistent/ca.pem"), "{error}");
}

/// Out of connection slots, "the port's connections that only make others
/// wait give their slot at once: those with no request in flight close"
/// (design.md). A connection that has not finished its TLS handshake has
/// no request in flight either: it must not keep a client that has one
/// waiting for `header_read`, any more than a silent plain connection
/// does.
#[tokio::test]
async fn unfinished_tls_handshakes_leave_their_slots_to_a_new_client() {
    use std::time::Instant;
    crypto();
    let dir = tempfile::tempdir().unwrap();
    let leaf = self_signed();
    write_leaf(dir.path(), &leaf);
    let upstream = Upstream::start().await;
    let yaml = https_yaml(&upstream, dir.path())
        .replace(
            "timeouts: { header_read: 1s }",
            "timeouts: { header_read: 10s }\nlimits: { max_connections: 2 }",
        )
        .replace("transport: [https]", "transport: [http, https]");
    let gw = Gateway::start(&yaml).await;
    let bound = Duration::from_secs(3);

    // Plain port: two connections that send nothing give their slots.
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(gw.http).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let raw = common::raw_request(
        gw.http,
        b"GET /secure/items HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(common::status_of(&raw), 200, "{raw}");
    assert!(
        started.elapsed() < bound,
        "plain: waited {:?}",
        started.elapsed()
    );

    // TLS port: two connections that never send their ClientHello.
    let addr = https_addr(&gw);
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let config = client_config(&leaf.der, b"http/1.1");
    let tls = tokio::time::timeout(Duration::from_secs(20), connect_with(addr, config))
        .await
        .expect("a handshake within 20 s");
    let mut sender = http1_sender(tls).await;
    assert_eq!(get_items(&mut sender).await.status(), StatusCode::OK);
    assert!(
        started.elapsed() < bound,
        "TLS: waited {:?} behind handshakes that never began",
        started.elapsed()
    );
    drop(silent);
    gw.shutdown().await;
}

/// Clients queued for the only slot each finish their TLS handshake once
/// the slot is theirs: the next client accepted waits, as they did, and
/// does not take the slot of a handshake under way.
#[tokio::test]
async fn tls_clients_queued_for_a_slot_all_finish_their_handshakes() {
    crypto();
    let dir = tempfile::tempdir().unwrap();
    let leaf = self_signed();
    write_leaf(dir.path(), &leaf);
    let upstream = Upstream::start().await;
    let yaml = https_yaml(&upstream, dir.path()).replace(
        "timeouts: { header_read: 1s }",
        "timeouts: { header_read: 10s }\nlimits: { max_connections: 1 }",
    );
    let gw = Gateway::start(&yaml).await;
    let addr = https_addr(&gw);
    upstream.set_delay(Duration::from_millis(500));
    let config = client_config(&leaf.der, b"http/1.1");
    let client = |config: Arc<rustls::ClientConfig>| async move {
        let tls = tokio::time::timeout(Duration::from_secs(20), connect_with(addr, config))
            .await
            .expect("a handshake within 20 s");
        let mut sender = http1_sender(tls).await;
        get_items(&mut sender).await.status()
    };
    // The first holds the only slot with a request in flight; two more
    // queue behind it, one after the other.
    let first = tokio::spawn(client(config.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = tokio::spawn(client(config.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = tokio::spawn(client(config));
    for (name, task) in [("first", first), ("second", second), ("third", third)] {
        assert_eq!(task.await.expect(name), StatusCode::OK, "{name}");
    }
    gw.shutdown().await;
}

/// On shutdown a connection with no request in flight closes at once: one
/// that has not finished its TLS handshake does not hold the drain up for
/// `header_read`.
#[tokio::test]
async fn an_unfinished_tls_handshake_does_not_hold_up_shutdown() {
    use std::time::Instant;
    crypto();
    let dir = tempfile::tempdir().unwrap();
    write_leaf(dir.path(), &self_signed());
    let upstream = Upstream::start().await;
    let yaml = https_yaml(&upstream, dir.path()).replace(
        "timeouts: { header_read: 1s }",
        "timeouts: { header_read: 10s, drain: 10s }",
    );
    let gw = Gateway::start(&yaml).await;
    let silent = TcpStream::connect(https_addr(&gw)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    gw.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown waited {:?} for a handshake that never began",
        started.elapsed()
    );
    drop(silent);
}
