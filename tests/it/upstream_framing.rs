//! How the gateway reads its upstream's HTTP/1.1 responses (RFC 9112):
//! every framing an upstream may use reaches the client as the same body,
//! a connection is reused only when its framing says the response ended
//! where the gateway thinks it did, and a malformed response is a 502 (or
//! an aborted response, once its head has gone out), never a success with
//! a wrong body. The upstream here is a raw TCP listener writing exact
//! bytes, so that it can also write what no HTTP library would.
use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{raw_request, status_of, Gateway};
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};

/// What the upstream does with a connection once it has written a reply.
#[derive(Clone, Copy)]
enum Then {
    /// Reads the next request on it.
    KeepAlive,
    /// Closes it at once.
    Close,
    /// Closes it after this long, reading nothing more meanwhile.
    CloseAfter(Duration),
}

/// What the upstream writes for one request.
struct Reply {
    /// Written in order, one write each.
    pieces: Vec<Vec<u8>>,
    /// Then this, again and again until the write fails.
    endless: Option<Vec<u8>>,
    then: Then,
    /// A pause before each piece after the first.
    gap: Duration,
}

impl Reply {
    /// `bytes`, the connection kept for the next request.
    fn keep(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply::pieces(vec![bytes.into()], Then::KeepAlive)
    }

    /// `bytes`, then the connection closed.
    fn close(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply::pieces(vec![bytes.into()], Then::Close)
    }

    fn pieces(pieces: Vec<Vec<u8>>, then: Then) -> Reply {
        Reply {
            pieces,
            endless: None,
            then,
            gap: Duration::ZERO,
        }
    }

    /// `start`, then `repeat` for as long as the gateway reads.
    fn endless(start: &[u8], repeat: &[u8]) -> Reply {
        Reply {
            pieces: vec![start.to_vec()],
            endless: Some(repeat.to_vec()),
            then: Then::Close,
            gap: Duration::ZERO,
        }
    }

    /// `pieces` with `gap` before each after the first, the connection kept.
    fn paced(pieces: Vec<Vec<u8>>, gap: Duration) -> Reply {
        Reply {
            gap,
            ..Reply::pieces(pieces, Then::KeepAlive)
        }
    }
}

/// A request as the upstream received it.
#[derive(Debug, Clone)]
struct Seen {
    /// Which accepted connection it came on (0 for the first).
    conn: usize,
    /// The request line and header lines, lowercased.
    head: String,
    /// The body, chunked coding removed.
    body: Vec<u8>,
}

impl Seen {
    /// The values of header `name` (lowercase), in order.
    fn header(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(n, _)| n.trim() == name)
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }
}

type Replier = dyn Fn(usize) -> Reply + Send + Sync;

/// An upstream that reads each request (head, and body by its
/// Content-Length or chunked coding) and writes back what `reply` gives
/// for the request's number (0 for the first, over all connections).
struct RawUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    async fn start(reply: impl Fn(usize) -> Reply + Send + Sync + 'static) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let reply: Arc<Replier> = Arc::new(reply);
        let (c, s) = (connections.clone(), seen.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, conn, reply.clone(), s.clone()));
            }
        });
        RawUpstream {
            addr,
            connections,
            seen,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The connection each request came on, in order.
    fn conns(&self) -> Vec<usize> {
        self.seen().iter().map(|seen| seen.conn).collect()
    }

    fn yaml(&self) -> String {
        self.yaml_with_timeout("30s")
    }

    fn yaml_with_timeout(&self, timeout: &str) -> String {
        RawUpstream::yaml_for(self.addr, timeout)
    }

    /// A gateway with one API, `/f`, forwarding to `addr`.
    fn yaml_for(addr: SocketAddr, timeout: &str) -> String {
        format!(
            r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
apis:
- name: Framing
  version: "1.0"
  base_path: /f
  upstream: {{ url: "http://{}/api", timeout: {timeout} }}
  authentication: {{ type: none }}
  resources: ["GET /items", "POST /items"]
"#,
            addr
        )
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(stream: TcpStream, conn: usize, reply: Arc<Replier>, seen: Arc<Mutex<Vec<Seen>>>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    while let Some((head, body)) = read_request(&mut read).await {
        let index = {
            let mut seen = seen.lock().unwrap();
            seen.push(Seen { conn, head, body });
            seen.len() - 1
        };
        let reply = reply(index);
        for (i, piece) in reply.pieces.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(reply.gap).await;
            }
            if write.write_all(piece).await.is_err() {
                return;
            }
        }
        if let Some(repeat) = &reply.endless {
            while write.write_all(repeat).await.is_ok() {}
            return;
        }
        match reply.then {
            Then::KeepAlive => {}
            Then::Close => break,
            Then::CloseAfter(after) => {
                tokio::time::sleep(after).await;
                break;
            }
        }
    }
    let _ = write.shutdown().await;
}

/// The next request's head (lowercased) and body; `None` at the end of
/// the connection.
async fn read_request(read: &mut BufReader<OwnedReadHalf>) -> Option<(String, Vec<u8>)> {
    let mut head = Vec::new();
    loop {
        let start = head.len();
        if read.read_until(b'\n', &mut head).await.ok()? == 0 {
            return None;
        }
        if &head[start..] == b"\r\n" {
            break;
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let seen = Seen {
        conn: 0,
        head,
        body: Vec::new(),
    };
    let chunked = seen
        .header("transfer-encoding")
        .iter()
        .any(|v| v.contains("chunked"));
    let length = seen
        .header("content-length")
        .first()
        .map(|v| v.parse::<usize>().expect("a numeric Content-Length"));
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut line = String::new();
            read.read_line(&mut line).await.ok()?;
            let size = line.split(';').next()?.trim();
            let size = usize::from_str_radix(size, 16).expect("a hex chunk size");
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    line.clear();
                    if read.read_line(&mut line).await.ok()? == 0 || line == "\r\n" {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; size + 2];
            read.read_exact(&mut chunk).await.ok()?;
            assert_eq!(&chunk[size..], b"\r\n", "chunk data ends with CRLF");
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = length {
        body.resize(length, 0);
        read.read_exact(&mut body).await.ok()?;
    }
    Some((seen.head, body))
}

/// A 200 framed by Content-Length.
fn ok(body: &[u8]) -> Vec<u8> {
    let mut bytes =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// What the client got: the status and headers, and the body or why it
/// could not be read to its end.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Result<Bytes, String>,
}

impl Answer {
    /// The body, which must have been read to its end.
    fn body(&self) -> &[u8] {
        match &self.body {
            Ok(body) => body,
            Err(error) => panic!("the body could not be read: {error} ({self:?})"),
        }
    }
}

/// One client connection to the gateway, kept alive: every request on it
/// is served by the same listener thread, and so from the same pool of
/// upstream connections.
struct Client {
    sender: SendRequest<Full<Bytes>>,
}

impl Client {
    async fn connect(gw: &Gateway) -> Client {
        let stream = TcpStream::connect(gw.http).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        Client { sender }
    }

    /// Sends a request to `/f/items`; `Err` when no response head came.
    async fn send(&mut self, method: Method, body: &'static [u8]) -> Result<Answer, String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let request = Request::builder()
            .method(method)
            .uri("/f/items")
            .header("host", "gateway.test")
            .body(Full::new(Bytes::from_static(body)))
            .unwrap();
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .map_err(|e| e.to_string());
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    async fn get(&mut self) -> Answer {
        self.send(Method::GET, b"").await.expect("a response")
    }
}

/// Every test is bounded: a gateway waiting for bytes that never come
/// fails the test instead of hanging it.
async fn bounded<F: std::future::Future>(test: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(15), test)
        .await
        .expect("the test did not finish in time: the gateway waited for bytes that never came")
}

/// Two GETs on one client connection, both answered `expected`, went out
/// on one upstream connection.
async fn reused_for_two_requests(
    reply: impl Fn(usize) -> Reply + Send + Sync + 'static,
    expected: &[u8],
) {
    bounded(reused_for_two_requests_unbounded(reply, expected)).await;
}

async fn reused_for_two_requests_unbounded(
    reply: impl Fn(usize) -> Reply + Send + Sync + 'static,
    expected: &[u8],
) {
    let upstream = RawUpstream::start(reply).await;
    let gw = Gateway::start(&upstream.yaml()).await;
    let mut client = Client::connect(&gw).await;
    for round in 0..2 {
        let answer = client.get().await;
        assert_eq!(answer.status, 200, "round {round}: {answer:?}");
        assert_eq!(answer.body(), expected, "round {round}");
    }
    assert_eq!(upstream.conns(), [0, 0]);
    assert_eq!(upstream.connections(), 1);
    gw.shutdown().await;
}

/// Two GETs on one client connection, both answered `expected`: the
/// second went out on a new upstream connection (the upstream kept the
/// first open only if `reply` says so; the gateway must not use it again).
async fn not_reused_after(reply: impl Fn(usize) -> Reply + Send + Sync + 'static, expected: &[u8]) {
    bounded(not_reused_after_unbounded(reply, expected)).await;
}

async fn not_reused_after_unbounded(
    reply: impl Fn(usize) -> Reply + Send + Sync + 'static,
    expected: &[u8],
) {
    let upstream = RawUpstream::start(reply).await;
    let gw = Gateway::start(&upstream.yaml()).await;
    let mut client = Client::connect(&gw).await;
    for round in 0..2 {
        let answer = client.get().await;
        assert_eq!(answer.status, 200, "round {round}: {answer:?}");
        assert_eq!(answer.body(), expected, "round {round}");
    }
    assert_eq!(upstream.conns(), [0, 1]);
    gw.shutdown().await;
}

// ------------------------------------------------------------ framing

#[tokio::test]
async fn content_length_body_passes_through_exactly_and_the_connection_is_reused() {
    bounded(async {
        let body = b"line one\r\n\0\xff\r\n\r\nHTTP/1.1 200 OK\r\n";
        reused_for_two_requests(move |_| Reply::keep(ok(body)), body).await;
    })
    .await;
}

#[tokio::test]
async fn chunked_response_is_decoded_and_reframed() {
    bounded(async {
        // Extensions, upper- and lowercase hex, one write per chunk.
        let pieces = || {
            [
                &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                b"5;foo=bar\r\nhello\r\n",
                b"1A\r\n abcdefghijklmnopqrstuvwxy\r\n",
                b"1a;a=1;b=\"x;y\"\r\nABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n",
                b"3\r\n\r\n!\r\n",
                b"0\r\n\r\n",
            ]
            .map(<[u8]>::to_vec)
            .to_vec()
        };
        reused_for_two_requests(
            move |_| Reply::pieces(pieces(), Then::KeepAlive),
            b"hello abcdefghijklmnopqrstuvwxyABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n!",
        )
        .await;
    })
    .await;
}

/// Trailers after the last chunk end the body (they are dropped), and
/// the connection carries the next request.
#[tokio::test]
async fn chunked_response_with_trailers_keeps_its_body_and_connection() {
    reused_for_two_requests(
        |_| {
            Reply::keep(
                &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n\
                   4\r\nwith\r\n9\r\n trailers\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"[..],
            )
        },
        b"with trailers",
    )
    .await;
}

/// RFC 9112 §6.3 item 3: the chunked coding frames the body, and the
/// connection that carried such a response is not trusted again.
#[tokio::test]
async fn chunked_with_content_length_is_decoded_as_chunked_and_the_connection_is_not_reused() {
    not_reused_after(
        |_| {
            Reply::keep(
                &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
                   b\r\nhello world\r\n0\r\n\r\n"[..],
            )
        },
        b"hello world",
    )
    .await;
}

#[tokio::test]
async fn body_delimited_by_close_is_delivered_and_the_connection_is_not_reused() {
    not_reused_after(
        |_| Reply::close(&b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"[..]),
        b"until the end",
    )
    .await;
}

/// The upstream leaves the connection open after saying it will close it:
/// the gateway must not send another request on it.
#[tokio::test]
async fn connection_close_response_is_delivered_and_the_connection_is_not_reused() {
    not_reused_after(
        |_| {
            Reply::keep(
                &b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\nlast"[..],
            )
        },
        b"last",
    )
    .await;
}

/// An HTTP/1.0 response without `Connection: keep-alive` ends its
/// connection (RFC 9112 §9.3), even if the upstream leaves it open; the
/// client is answered in the gateway's own version (RFC 9110 §6.2).
#[tokio::test]
async fn http_1_0_response_is_delivered_and_the_connection_is_not_reused() {
    not_reused_after(
        |_| Reply::keep(&b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nolder"[..]),
        b"older",
    )
    .await;
}

/// RFC 9112 §6.3: 204 and 304 responses, and responses to HEAD, end with
/// their head whatever Content-Length says; the next response on the
/// connection is read from the byte after it.
#[tokio::test]
async fn bodiless_responses_end_at_their_head_and_the_connection_is_reused() {
    bounded(async {
        let upstream = RawUpstream::start(|n| match n {
            0 => Reply::keep(&b"HTTP/1.1 204 No Content\r\nX-Case: 204\r\n\r\n"[..]),
            1 => Reply::keep(
                &b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 10\r\n\r\n"[..],
            ),
            2 => Reply::keep(&b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"[..]),
            _ => Reply::keep(ok(b"in sync")),
        })
        .await;
        let gw = Gateway::start(&upstream.yaml()).await;
        let mut client = Client::connect(&gw).await;

        let no_content = client.get().await;
        assert_eq!(no_content.status, 204, "{no_content:?}");
        assert_eq!(no_content.body(), b"");
        assert_eq!(no_content.headers["x-case"], "204");

        let not_modified = client.get().await;
        assert_eq!(not_modified.status, 304, "{not_modified:?}");
        assert_eq!(not_modified.body(), b"");
        assert_eq!(not_modified.headers["etag"], "\"v1\"");

        let head = client.send(Method::HEAD, b"").await.expect("a response");
        assert_eq!(head.status, 200, "{head:?}");
        assert_eq!(head.body(), b"");
        assert_eq!(head.headers["content-length"], "1234");
        assert!(upstream.seen()[2].head.starts_with("head "));

        let after = client.get().await;
        assert_eq!(after.status, 200, "{after:?}");
        assert_eq!(after.body(), b"in sync");

        assert_eq!(upstream.conns(), [0, 0, 0, 0]);
        gw.shutdown().await;
    })
    .await;
}

/// A bodiless answer framed two ways (a length and a coding) ends at its
/// head, but its connection is not trusted again: the upstream may frame
/// what follows by the other.
#[tokio::test]
async fn a_bodiless_answer_framed_two_ways_does_not_keep_its_connection() {
    bounded(async {
        let upstream = RawUpstream::start(|n| match n {
            0 => Reply::keep(
                &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            ),
            _ => Reply::keep(ok(b"in sync")),
        })
        .await;
        let gw = Gateway::start(&upstream.yaml()).await;
        let mut client = Client::connect(&gw).await;
        let head = client.send(Method::HEAD, b"").await.expect("a response");
        assert_eq!(head.status, 200, "{head:?}");
        assert_eq!(head.body(), b"");
        let after = client.get().await;
        assert_eq!(after.status, 200, "{after:?}");
        assert_eq!(after.body(), b"in sync");
        assert_eq!(upstream.conns(), [0, 1]);
        gw.shutdown().await;
    })
    .await;
}

/// Interim responses (RFC 9110 §15.2) are not the answer: the final one is.
#[tokio::test]
async fn interim_responses_are_skipped_for_the_final_one() {
    reused_for_two_requests(
        |_| {
            Reply::keep(
                &b"HTTP/1.1 100 Continue\r\n\r\n\
                   HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n\
                   HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"[..],
            )
        },
        b"final",
    )
    .await;
}

// ------------------------------------------------------------ fields

/// The head of the answer `gw` gives to a GET of `/f/items`: its lines
/// after the status line sorted, the gateway's request id and date (which
/// differ from one request to the next) written as `*`.
async fn answer_head(gw: &Gateway) -> String {
    let raw = common::raw_request(
        gw.http,
        b"GET /f/items HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let head = raw.split("\r\n\r\n").next().unwrap_or_default();
    let mut lines: Vec<String> = head
        .lines()
        .map(|line| match line.split_once(": ") {
            Some(("x-request-id", _)) => "x-request-id: *".to_owned(),
            _ => line.to_owned(),
        })
        .collect();
    // Fields of one name keep their order; the others may come in any.
    lines[1..].sort_by_key(|line| line.split(':').next().map(str::to_owned));
    lines.join("\n")
}

#[tokio::test]
async fn an_answer_no_policy_reads_gets_to_the_client_as_one_read_into_a_map() {
    bounded(async {
        let head = "HTTP/1.1 200 OK\r\nServer: Raw\r\nX-Request-Id: chosen-upstream\r\n\
                    Connection: X-Hop, keep-alive\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
                    Set-Cookie: a=1\r\nVary:Accept\r\nset-cookie: b=2\r\n\
                    Date: Tue, 01 Jan 2030 00:00:00 GMT\r\nX-Spaced:  two  \r\n\
                    Content-Length: 2\r\n\r\nok";
        let upstream = RawUpstream::start(move |_| Reply::keep(head)).await;
        // No policy reads the answer: its fields go out as the head has them.
        let as_sent = Gateway::start(&upstream.yaml()).await;
        // A response transformation reads them into a map first.
        let mapped = upstream.yaml().replace(
            "  resources:",
            "  policies: { response_transformation: { remove_headers: [X-Unrelated] } }\n  resources:",
        );
        let mapped = Gateway::start(&mapped).await;
        let (sent, read) = (answer_head(&as_sent).await, answer_head(&mapped).await);
        assert_eq!(sent, read);
        assert_eq!(
            sent,
            "HTTP/1.1 200 OK\nconnection: close\ncontent-length: 2\n\
             date: Tue, 01 Jan 2030 00:00:00 GMT\nserver: Raw\nset-cookie: a=1\n\
             set-cookie: b=2\nvary: Accept\nx-request-id: *\nx-spaced: two"
        );
        as_sent.shutdown().await;
        mapped.shutdown().await;
    })
    .await;
}

// ------------------------------------------------------------ malformed

/// The first request is answered `bad`; the next one, from a new client
/// connection, gets a good answer on another upstream connection than the
/// one that carried the malformed response. Returns what the first got.
async fn malformed_then_good(
    bad: impl Fn() -> Reply + Send + Sync + 'static,
) -> Result<Answer, String> {
    bounded(malformed_then_good_unbounded(bad)).await
}

async fn malformed_then_good_unbounded(
    bad: impl Fn() -> Reply + Send + Sync + 'static,
) -> Result<Answer, String> {
    let upstream = RawUpstream::start(move |n| {
        if n == 0 {
            bad()
        } else {
            Reply::keep(ok(b"fine"))
        }
    })
    .await;
    let gw = Gateway::start(&upstream.yaml()).await;
    let first = Client::connect(&gw).await.send(Method::GET, b"").await;
    let next = Client::connect(&gw).await.get().await;
    assert_eq!(
        next.status, 200,
        "the request after a malformed response: {next:?}"
    );
    assert_eq!(next.body(), b"fine");
    let conns = upstream.conns();
    assert_eq!(conns.len(), 2, "{conns:?}");
    assert_ne!(
        conns[1], conns[0],
        "a connection that sent a malformed response was reused"
    );
    gw.shutdown().await;
    first
}

fn assert_502(outcome: Result<Answer, String>) {
    let answer = outcome.expect("a response");
    assert_eq!(answer.status, 502, "{answer:?}");
}

/// Once the head has gone out, a body that turns out malformed can only be
/// cut off: the client must see a 502, or a response it cannot read to
/// its end — never a complete success, and never no answer at all (the
/// head encoded before the body failed goes out).
fn assert_502_or_aborted(outcome: Result<Answer, String>) {
    let answer = outcome.expect("a head, not an empty reply");
    if answer.status != 502 {
        assert!(
            answer.body.is_err(),
            "a malformed response looked complete: {answer:?}"
        );
    }
}

#[tokio::test]
async fn conflicting_content_lengths_are_a_502() {
    assert_502(
        malformed_then_good(|| {
            Reply::keep(
                &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"[..],
            )
        })
        .await,
    );
}

/// A bare LF ends a line for a lenient reader, and is part of a field's
/// value for the upstream that reflected `bob\nContent-Length: 3` into it:
/// read both ways, the answer's end is where the upstream did not put it,
/// and its next bytes would be another request's answer.
#[tokio::test]
async fn a_bare_lf_in_the_head_is_a_502_told_as_an_invalid_answer() {
    for head in [
        &b"HTTP/1.1 200 OK\r\nX-User: bob\nContent-Length: 3\r\n\r\nabc"[..],
        &b"HTTP/1.1 200 OK\nContent-Length: 3\n\nabc"[..],
    ] {
        let answer = malformed_then_good(move || Reply::keep(head))
            .await
            .expect("a response");
        assert_eq!(answer.status, 502, "{answer:?}");
        let body = String::from_utf8_lossy(answer.body()).into_owned();
        assert!(
            body.contains("the upstream's answer is not valid HTTP"),
            "{body}"
        );
    }
}

/// RFC 9110 §15: a status code is 100-599; anything else is no answer a
/// client (or the passive health check) can read.
#[tokio::test]
async fn a_status_past_599_is_a_502() {
    for head in [
        &b"HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok"[..],
        &b"HTTP/1.1 999 Odd\r\nContent-Length: 2\r\n\r\nok"[..],
    ] {
        assert_502(malformed_then_good(move || Reply::keep(head)).await);
    }
}

/// An upstream that closes without a word was reached: the client is not
/// told it could not be.
#[tokio::test]
async fn an_upstream_that_closes_unanswered_is_not_told_as_unreachable() {
    bounded(async {
        let upstream = RawUpstream::start(|_| Reply::close(&b""[..])).await;
        let gw = Gateway::start(&upstream.yaml()).await;
        let answer = Client::connect(&gw).await.get().await;
        assert_eq!(answer.status, 502, "{answer:?}");
        let body = String::from_utf8_lossy(answer.body()).into_owned();
        assert!(
            body.contains("the upstream ended the exchange without an answer"),
            "{body}"
        );
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn non_numeric_content_length_is_a_502() {
    assert_502(
        malformed_then_good(|| {
            Reply::keep(&b"HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\nhello"[..])
        })
        .await,
    );
}

/// The head comes before the body, and the gateway streams: the bad chunk
/// size can be found only once the head may have been sent on.
#[tokio::test]
async fn chunk_size_that_is_not_hex_is_a_502_or_an_aborted_response() {
    assert_502_or_aborted(malformed_then_good(|| {
        Reply::keep(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"[..])
    })
    .await);
}

#[tokio::test]
async fn chunk_size_overflowing_u64_is_a_502_or_an_aborted_response() {
    assert_502_or_aborted(malformed_then_good(|| {
        Reply::keep(
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n"[..],
        )
    })
    .await);
}

#[tokio::test]
async fn garbage_instead_of_a_status_line_is_a_502() {
    assert_502(malformed_then_good(|| Reply::keep(&b"HELLO\r\n\r\n"[..])).await);
}

/// Headers that never end are refused once the head is too large, not
/// buffered for as long as the upstream sends them.
#[tokio::test]
async fn response_head_larger_than_1_mib_is_a_502_in_bounded_time() {
    bounded(async {
        let filler = format!("X-Filler: {}\r\n", "a".repeat(1000)).into_bytes();
        let started = Instant::now();
        let first =
            malformed_then_good(move || Reply::endless(b"HTTP/1.1 200 OK\r\n", &filler)).await;
        assert_502(first);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test]
async fn body_shorter_than_its_content_length_is_not_a_complete_success() {
    assert_502_or_aborted(
        malformed_then_good(|| {
            Reply::close(&b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten.."[..])
        })
        .await,
    );
}

/// The upstream timeout bounds each silence of the upstream while more of
/// the body is due, not the whole body: a steady trickle longer than the
/// timeout goes through, a body that stops is cut off.
#[tokio::test]
async fn a_body_the_upstream_stops_sending_is_cut_off_after_the_timeout() {
    bounded(async {
        let upstream = RawUpstream::start(|n| {
            let head = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n".to_vec();
            let gap = Duration::from_millis(400);
            if n == 0 {
                Reply::paced(vec![head, b"abc".to_vec()], gap)
            } else {
                let pieces = [&head[..], b"abc", b"def", b"ghi", b"jkl"].map(<[u8]>::to_vec);
                Reply::paced(pieces.to_vec(), gap)
            }
        })
        .await;
        let gw = Gateway::start(&upstream.yaml_with_timeout("1s")).await;
        let started = Instant::now();
        let stopped = Client::connect(&gw).await.get().await;
        assert_eq!(stopped.status, 200);
        assert!(stopped.body.is_err(), "{stopped:?}");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(1000), "{waited:?}");
        let trickle = Client::connect(&gw).await.get().await;
        assert_eq!(trickle.body(), b"abcdefghijkl");
        gw.shutdown().await;
    })
    .await;
}

/// An upstream that answers as soon as it has the head of a request and
/// never reads its body: the client, still sending its body, gets that
/// answer (not a 502, not a wait for the rest of the upload), and the
/// connection is not used again.
#[tokio::test]
async fn an_answer_before_the_request_body_is_sent_is_passed_on() {
    bounded(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let upstream = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let mut stream = BufReader::new(stream);
                let mut line = String::new();
                while stream.read_line(&mut line).await.unwrap_or(0) > 0
                    && !line.ends_with("\r\n\r\n")
                {}
                let answer = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!";
                stream.get_mut().write_all(answer).await.unwrap();
                open.push(stream);
            }
        });
        let gw = Gateway::start(&RawUpstream::yaml_for(addr, "30s")).await;
        let stream = TcpStream::connect(gw.http).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        // The body's first bytes, then nothing: the upload is unfinished.
        let (body_tx, body_rx) = tokio::sync::mpsc::channel(1);
        body_tx
            .send(Bytes::from(vec![b'u'; 64 * 1024]))
            .await
            .unwrap();
        let request = Request::post("/f/items")
            .header("host", "gateway.test")
            .body(common::channel_body(body_rx))
            .unwrap();
        let response = sender.send_request(request).await.expect("a response");
        assert_eq!(response.status(), 413);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"big!");
        drop(body_tx);
        let next = Client::connect(&gw)
            .await
            .send(Method::POST, b"small")
            .await;
        assert_eq!(next.expect("a response").status, 413);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        upstream.abort();
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn upstream_closing_without_an_answer_is_a_502() {
    assert_502(malformed_then_good(|| Reply::close(Vec::new())).await);
}

// ------------------------------------------------------------ connections

/// The upstream's keep-alive timeout is shorter than the gateway's: the
/// connection it closed while idle is not used for a later GET.
#[tokio::test]
async fn pooled_connection_closed_by_the_upstream_while_idle_is_replaced() {
    bounded(async {
        let upstream = RawUpstream::start(|_| {
            Reply::pieces(
                vec![ok(b"alive")],
                Then::CloseAfter(Duration::from_millis(100)),
            )
        })
        .await;
        let gw = Gateway::start(&upstream.yaml()).await;
        let mut client = Client::connect(&gw).await;
        let first = client.get().await;
        assert_eq!((first.status, first.body()), (200, &b"alive"[..]));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let second = client.get().await;
        assert_eq!(second.status, 200, "{second:?}");
        assert_eq!(second.body(), b"alive");
        assert_eq!(upstream.conns(), [0, 1]);
        assert_eq!(upstream.connections(), 2);
        gw.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn large_chunked_response_streams_through_intact() {
    bounded(async {
        const PIECE: usize = 64 << 10;
        const TOTAL: usize = 8 << 20;
        let body: Arc<Vec<u8>> = Arc::new(
            (0..TOTAL)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
        );
        let sent = body.clone();
        let upstream = RawUpstream::start(move |_| {
            let mut pieces =
                vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()];
            for chunk in sent.chunks(PIECE) {
                let mut piece = format!("{:x}\r\n", chunk.len()).into_bytes();
                piece.extend_from_slice(chunk);
                piece.extend_from_slice(b"\r\n");
                pieces.push(piece);
            }
            pieces.push(b"0\r\n\r\n".to_vec());
            Reply::pieces(pieces, Then::KeepAlive)
        })
        .await;
        let gw = Gateway::start(&upstream.yaml()).await;
        let answer = Client::connect(&gw).await.get().await;
        assert_eq!(answer.status, 200);
        let got = answer.body();
        assert_eq!(got.len(), TOTAL);
        assert_eq!(Sha256::digest(got), Sha256::digest(&body[..]));
        gw.shutdown().await;
    })
    .await;
}

// ------------------------------------------------------------ requests

/// What the upstream receives: a body with a length keeps it, a chunked
/// body arrives whole (chunked or with a length, never both), and a
/// request without a body declares none.
#[tokio::test]
async fn request_framing_reaches_the_upstream_intact() {
    bounded(async {
        let upstream = RawUpstream::start(|_| Reply::keep(ok(b"ok"))).await;
        let gw = Gateway::start(&upstream.yaml()).await;

        let post = Client::connect(&gw)
            .await
            .send(Method::POST, b"hello")
            .await
            .expect("a response");
        assert_eq!(post.status, 200, "{post:?}");
        let seen = &upstream.seen()[0];
        assert!(
            seen.head.starts_with("post /api/items http/1.1\r\n"),
            "{}",
            seen.head
        );
        assert_eq!(seen.header("content-length"), ["5"], "{}", seen.head);
        assert!(seen.header("transfer-encoding").is_empty(), "{}", seen.head);
        assert_eq!(seen.body, b"hello");

        let raw = raw_request(
            gw.http,
            b"POST /f/items HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: chunked\r\n\
              Connection: close\r\n\r\n3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(status_of(&raw), 200, "{raw}");
        let seen = &upstream.seen()[1];
        let chunked = seen.header("transfer-encoding");
        let length = seen.header("content-length");
        assert!(
            (chunked == ["chunked"] && length.is_empty())
                || (chunked.is_empty() && length == ["7"]),
            "{}",
            seen.head
        );
        assert_eq!(seen.body, b"abcdefg");

        let get = Client::connect(&gw).await.get().await;
        assert_eq!(get.status, 200, "{get:?}");
        let seen = &upstream.seen()[2];
        assert!(
            seen.head.starts_with("get /api/items http/1.1\r\n"),
            "{}",
            seen.head
        );
        assert!(seen.header("content-length").is_empty(), "{}", seen.head);
        assert!(seen.header("transfer-encoding").is_empty(), "{}", seen.head);
        assert!(seen.body.is_empty());
        gw.shutdown().await;
    })
    .await;
}

/// Informational heads count toward the head's bound: 2 MiB of `100
/// Continue` before the final answer is a 502, not a success.
#[tokio::test]
async fn interim_heads_are_bounded_in_bytes() {
    let first = malformed_then_good(|| {
        let mut bytes = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(2 * 1024 * 1024 / 25);
        bytes.extend_from_slice(&ok(b"after-the-flood"));
        Reply::keep(bytes)
    })
    .await;
    let answer = first.expect("a response");
    assert_eq!(
        answer.status, 502,
        "2 MiB of interim heads were accepted: {:?}",
        answer.status
    );
}

/// Interim heads that never end give way to the upstream timeout.
#[tokio::test]
async fn endless_interim_heads_end_within_the_timeout() {
    bounded(async {
        let upstream = RawUpstream::start(|_| {
            Reply::endless(
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 102 Processing\r\n\r\n",
            )
        })
        .await;
        let gw = Gateway::start(&upstream.yaml_with_timeout("2s")).await;
        let started = Instant::now();
        let answer = Client::connect(&gw).await.send(Method::GET, b"").await;
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(6), "{waited:?}");
        assert!(matches!(answer, Ok(ref a) if a.status == 504 || a.status == 502));
        gw.shutdown().await;
    })
    .await;
}

/// An upstream that answers as soon as it has the request head and
/// closes without reading the body resets the connection: the gateway's
/// next write fails, and the answer it has in hand is passed on all the
/// same (not a 502).
#[tokio::test]
async fn an_early_answer_followed_by_a_reset_is_passed_on() {
    bounded(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    let mut head = Vec::new();
                    while stream.read_until(b'\n', &mut head).await.unwrap_or(0) > 0
                        && !head.ends_with(b"\r\n\r\n")
                    {}
                    let answer = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\
                                   Connection: close\r\n\r\nbig!";
                    let _ = stream.get_mut().write_all(answer).await;
                    // Closed with the body unread: a reset.
                    drop(stream);
                });
            }
        });
        let gw = Gateway::start(&RawUpstream::yaml_for(addr, "30s")).await;
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let stream = TcpStream::connect(gw.http).await.unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let request = Request::post("/f/items")
                .header("host", "gateway.test")
                .body(Full::new(Bytes::from(vec![b'u'; 8 * 1024 * 1024])))
                .unwrap();
            // The upstream's answer, body and all, not one of the gateway's.
            let answer = match sender.send_request(request).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body = response.into_body().collect().await.map(|b| b.to_bytes());
                    (status, body.ok())
                }
                Err(_) => (0, None),
            };
            statuses.push(answer);
        }
        upstream.abort();
        gw.shutdown().await;
        assert!(
            statuses
                .iter()
                .all(|(status, body)| *status == 413 && body.as_deref() == Some(&b"big!"[..])),
            "the upstream's early 413 was lost: {statuses:?}"
        );
    })
    .await;
}

/// A transfer coding other than chunked (`gzip, chunked`) is refused
/// (502): the gateway removes the chunked framing and could not pass the
/// other coding on, so the client would take gzip bytes for the content.
#[tokio::test]
async fn a_transfer_coding_besides_chunked_is_refused() {
    bounded(async {
        let upstream = RawUpstream::start(|_| {
            Reply::keep(
                &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
                   4\r\n\x1f\x8b\x08\x00\r\n0\r\n\r\n"[..],
            )
        })
        .await;
        let gw = Gateway::start(&upstream.yaml()).await;
        let answer = Client::connect(&gw).await.get().await;
        assert_eq!(answer.status, 502, "{answer:?}");
        gw.shutdown().await;
    })
    .await;
}

/// A head over the bound that arrives complete in a few reads is refused
/// as one arriving slowly is.
#[tokio::test]
async fn a_complete_head_over_the_bound_is_refused() {
    let first = malformed_then_good(|| {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..60 {
            head.extend_from_slice(format!("X-Big-{i}: {}\r\n", "a".repeat(2000)).as_bytes());
        }
        head.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
        Reply::keep(head)
    })
    .await;
    let answer = first.expect("a response");
    assert_eq!(answer.status, 502, "a 120 KiB head was accepted");
}

// ------------------------------------------------------------ lengths to every client

/// An HTTP/2 client's GET of `/f/items` (h2c by prior knowledge): the
/// status, the fields and the body, or the error that ended the exchange.
async fn h2_get(gw: &Gateway) -> Result<(u16, HeaderMap, Bytes), String> {
    let tcp = TcpStream::connect(gw.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let request = Request::get(format!("http://gateway.test:{}/f/items", gw.http.port()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (status, headers) = (response.status().as_u16(), response.headers().clone());
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{e:?}"))?
        .to_bytes();
    Ok((status, headers, body))
}

/// RFC 9110 §8.6: a `Content-Length` list of one value (`2, 2`), which the
/// gateway accepts as that length, reaches the client as one valid length.
/// An HTTP/2 client is handed the list as is, which is a malformed
/// `content-length` in HTTP/2 (RFC 9113 §8.1.1): the answer is reset.
#[tokio::test]
async fn a_content_length_list_of_one_value_reaches_an_http2_client_as_one_length() {
    bounded(async {
        let upstream = RawUpstream::start(|_| {
            Reply::keep(&b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok"[..])
        })
        .await;
        let gw = Gateway::start(&upstream.yaml()).await;
        let (status, headers, body) = h2_get(&gw).await.expect("an answer, not a reset stream");
        assert_eq!(status, 200);
        assert_eq!(&body[..], b"ok");
        let lengths: Vec<_> = headers.get_all("content-length").iter().collect();
        assert!(lengths.iter().all(|v| *v == "2"), "{lengths:?}");
        gw.shutdown().await;
    })
    .await;
}

/// The same for an HTTP/1.1 client's HEAD, whose answer keeps the length
/// a GET would have got: one `content-length: 7`, not the upstream's two
/// fields (or its list) passed on.
#[tokio::test]
async fn a_repeated_content_length_reaches_a_head_client_as_one_field() {
    bounded(async {
        let upstream = RawUpstream::start(|n| match n {
            0 => Reply::keep(
                &b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n"[..],
            ),
            _ => Reply::keep(&b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n"[..]),
        })
        .await;
        let gw = Gateway::start(&upstream.yaml()).await;
        for _ in 0..2 {
            let raw = raw_request(
                gw.http,
                b"HEAD /f/items HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n",
            )
            .await;
            assert_eq!(status_of(&raw), 200, "{raw}");
            let lengths: Vec<&str> = raw
                .lines()
                .filter_map(|line| line.strip_prefix("content-length: "))
                .collect();
            assert_eq!(lengths, ["7"], "{raw}");
        }
        gw.shutdown().await;
    })
    .await;
}

/// RFC 9110 §8.6: no `Content-Length` in a 204. The HTTP/1.1 encoder drops
/// the upstream's; an HTTP/2 client gets it.
#[tokio::test]
async fn a_204_reaches_an_http2_client_without_content_length() {
    bounded(async {
        let upstream = RawUpstream::start(|_| {
            Reply::keep(&b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-Case: 204\r\n\r\n"[..])
        })
        .await;
        let gw = Gateway::start(&upstream.yaml()).await;
        let (status, headers, body) = h2_get(&gw).await.expect("an answer");
        assert_eq!(status, 204);
        assert_eq!(headers["x-case"], "204");
        assert!(body.is_empty());
        assert!(
            headers.get("content-length").is_none(),
            "a 204 with Content-Length: {headers:?}"
        );
        // An HTTP/1.1 client's 204 has none (for comparison: this holds).
        let raw = raw_request(
            gw.http,
            b"GET /f/items HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(!raw.contains("content-length"), "{raw}");
        gw.shutdown().await;
    })
    .await;
}
