//! HTTP/2 floods against the h2c port, frame by frame: the stream, header
//! and reset limits the server configures refuse a hostile client's excess
//! streams or end its connection early, what they stop never reaches the
//! upstream, and a new connection is still served.
use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use common::{Gateway, Upstream};
use http::{Request, StatusCode};
use http_body_util::{Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use raw::{Conn, Event};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How long the gateway has to answer a flood; the idle timeouts below are
/// longer, so only a limit can end the connection within it.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

fn flood_yaml(upstream_url: &str) -> String {
    format!(
        r#"
ports: {{ http: 0, bind: 127.0.0.1 }}
admin: {{ port: 0 }}
limits: {{ max_header_bytes: 8KiB }}
timeouts: {{ header_read: 20s, idle: 20s, upstream_connect: 5s, drain: 1s }}
apis:
- name: Edge
  version: "1.0"
  base_path: /travels
  upstream: {{ url: "{upstream_url}", timeout: 30s }}
  authentication: {{ type: none }}
  resources: ["GET /bookings", "POST /bookings"]
"#
    )
}

/// A new HTTP/2 connection (prior knowledge) to `gw`, driven in a task.
async fn h2c<B>(gw: &Gateway) -> hyper::client::conn::http2::SendRequest<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(gw.http).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    sender
}

/// A good request on a new HTTP/2 connection gets the upstream's 200.
async fn still_serves(gw: &Gateway) {
    let mut sender = h2c(gw).await;
    let url = format!("http://gw.example:{}/travels/bookings", gw.http.port());
    let resp = sender
        .send_request(Request::get(&url).body(Empty::<Bytes>::new()).unwrap())
        .await
        .expect("a new connection is served");
    assert_eq!(resp.status(), StatusCode::OK);
}

/// The `n`-th stream a client opens (1, 3, 5, ...).
fn stream_id(n: u32) -> u32 {
    2 * n - 1
}

/// CVE-2023-44487: each stream is reset before the server has accepted it,
/// so none counts as concurrent; `max_pending_accept_reset_streams` caps them.
#[tokio::test]
async fn rapid_reset_ends_the_connection_with_goaway() {
    const STREAMS: u32 = 1000;
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&flood_yaml(&upstream.url("/api"))).await;
    let mut conn = Conn::open(gw.http).await;

    let mut flood = Vec::new();
    for n in 1..=STREAMS {
        let id = stream_id(n);
        flood.extend(raw::get(id, "/travels/bookings"));
        flood.extend(raw::rst_stream(id, raw::CANCEL));
    }
    // The gateway may close while this is still being written.
    let _ = conn.write.write_all(&flood).await;

    let events = conn.frames.until(ANSWER_WITHIN, Event::is_goaway).await;
    match raw::goaway(&events) {
        Some((last_processed, code)) => {
            assert_eq!(code, raw::ENHANCE_YOUR_CALM, "{events:?}");
            assert!(
                last_processed < stream_id(STREAMS),
                "GOAWAY only after every stream: {last_processed}"
            );
        }
        None => assert!(raw::closed(&events), "still open: {events:?}"),
    }
    assert!(
        upstream.hits() < STREAMS as usize / 10,
        "{} reset streams reached the upstream",
        upstream.hits()
    );
    still_serves(&gw).await;
    gw.shutdown().await;
}

/// Whether `upstream` has had `hits` requests within 2 s.
async fn reached(upstream: &Upstream, hits: usize) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while upstream.hits() < hits && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    upstream.hits() >= hits
}

/// Sends `GET /travels/bookings` on stream `id`, waits until it has reached
/// the upstream (its `hits`-th request there), then resets it. False when
/// the connection took no more or the request never arrived.
async fn accepted_then_reset(conn: &mut Conn, upstream: &Upstream, id: u32, hits: usize) -> bool {
    let request = raw::get(id, "/travels/bookings");
    if conn.write.write_all(&request).await.is_err() {
        return false;
    }
    reached(upstream, hits).await
        && conn
            .write
            .write_all(&raw::rst_stream(id, raw::CANCEL))
            .await
            .is_ok()
}

/// The same attack once each stream has been handed to the gateway (its
/// request reached the upstream, which is slow to answer): h2 no longer
/// counts those resets, the gateway does. Past a burst of 64 cancelled
/// requests, refilled at 8 a second, the connection is closed.
#[tokio::test]
async fn resets_of_accepted_streams_end_the_connection() {
    const STREAMS: u32 = 300;
    let upstream = Upstream::start().await;
    upstream.set_delay(Duration::from_secs(30));
    let gw = Gateway::start(&flood_yaml(&upstream.url("/api"))).await;
    let mut conn = Conn::open(gw.http).await;
    let mut sent = 0;
    for n in 1..=STREAMS {
        if !accepted_then_reset(&mut conn, &upstream, stream_id(n), n as usize).await {
            break;
        }
        sent = n;
    }
    let what = format!("{sent} resets");
    closed_after_resets(conn, &upstream, gw, 65..80, (&what, false)).await;
}

/// Asserts that the gateway told `conn` GOAWAY (now, or `told` before)
/// and closed it after `what`, with `hits` of the reset streams reaching
/// `upstream`, and that it still serves others.
async fn closed_after_resets(
    mut conn: Conn,
    upstream: &Upstream,
    gw: Gateway,
    hits: std::ops::Range<usize>,
    (what, told): (&str, bool),
) {
    let events = conn.frames.until(ANSWER_WITHIN, |_| false).await;
    assert!(raw::closed(&events), "still open after {what}: {events:?}");
    assert!(
        told || raw::goaway(&events).is_some(),
        "closed without GOAWAY after {what}: {events:?}"
    );
    assert!(
        hits.contains(&upstream.hits()),
        "{} accepted-then-reset streams reached the upstream",
        upstream.hits()
    );
    upstream.set_delay(Duration::ZERO);
    still_serves(&gw).await;
    gw.shutdown().await;
}

/// Answered requests buy no resets: a client that sends a cheap request
/// the gateway answers (404) beside each one it resets once upstream is
/// closed as soon as one that only resets. Eight of each at a time.
#[tokio::test]
async fn answered_requests_do_not_excuse_a_flood_of_resets() {
    const ROUNDS: u32 = 25;
    const EACH: u32 = 8;
    let upstream = Upstream::start().await;
    upstream.set_delay(Duration::from_secs(30));
    let gw = Gateway::start(&flood_yaml(&upstream.url("/api"))).await;
    let mut conn = Conn::open(gw.http).await;
    let mut resets = 0;
    let mut told = false;
    'rounds: for round in 0..ROUNDS {
        let first = 2 * EACH * round + 1;
        let ids: Vec<(u32, u32)> = (0..EACH)
            .map(|k| (stream_id(first + 2 * k), stream_id(first + 2 * k + 1)))
            .collect();
        let mut out = Vec::new();
        for &(answered, reset) in &ids {
            out.extend(raw::get(answered, "/nope"));
            out.extend(raw::get(reset, "/travels/bookings"));
        }
        if conn.write.write_all(&out).await.is_err() {
            break;
        }
        let mut missing: BTreeSet<u32> = ids.iter().map(|&(answered, _)| answered).collect();
        conn.frames
            .until(ANSWER_WITHIN, |e| {
                told |= e.is_goaway();
                missing.retain(|&id| e.status_on(id) != Some(404));
                missing.is_empty() || e.ends(0)
            })
            .await;
        let hits = (resets + EACH) as usize;
        if !missing.is_empty() || !reached(&upstream, hits).await {
            break;
        }
        for &(_, reset) in &ids {
            let rst = raw::rst_stream(reset, raw::CANCEL);
            if conn.write.write_all(&rst).await.is_err() {
                break 'rounds;
            }
            resets += 1;
        }
    }
    let what = format!("{resets} resets among as many answered requests");
    closed_after_resets(conn, &upstream, gw, 65..100, (&what, told)).await;
}

/// A client that cancels requests now and then (a browser leaving a page,
/// gRPC deadlines passing) keeps its connection, past 64 cancels in all:
/// the budget refills with time.
#[tokio::test]
async fn a_client_cancelling_now_and_then_keeps_its_connection() {
    const BURST: usize = 48;
    let upstream = Upstream::start().await;
    upstream.set_delay(Duration::from_secs(30));
    let gw = Gateway::start(&flood_yaml(&upstream.url("/api"))).await;
    let mut conn = Conn::open(gw.http).await;
    let mut n = 0;
    for pause in [Duration::ZERO, Duration::from_secs(6)] {
        tokio::time::sleep(pause).await;
        for _ in 0..BURST {
            n += 1;
            let hits = n as usize;
            assert!(
                accepted_then_reset(&mut conn, &upstream, stream_id(n), hits).await,
                "cancel {n} was not taken"
            );
        }
    }
    assert_eq!(upstream.hits(), 2 * BURST);
    // Still served on the same connection.
    let id = stream_id(n + 1);
    conn.write.write_all(&raw::get(id, "/nope")).await.unwrap();
    let events = conn.frames.until(ANSWER_WITHIN, |e| e.ends(id)).await;
    let status = events.iter().find_map(|e| e.status_on(id));
    assert_eq!(status, Some(404), "{events:?}");
    gw.shutdown().await;
}

/// A header block that never ends: HEADERS without END_HEADERS, then
/// CONTINUATION frames for a few MB. h2 allows a header block about
/// `max_header_list_size` worth of CONTINUATION frames (at least five), and
/// decodes at most four times that size, then answers GOAWAY.
struct EndlessBlock {
    shape: &'static str,
    /// The HEADERS frame's fragment.
    first: Vec<u8>,
    /// The fragment of the n-th CONTINUATION frame.
    next: fn(usize) -> Vec<u8>,
}

async fn endless_header_block_is_cut_off(block: EndlessBlock) {
    const FLOOD_BYTES: usize = 4 << 20;
    let EndlessBlock { shape, first, next } = block;
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&flood_yaml(&upstream.url("/api"))).await;
    let mut conn = Conn::open(gw.http).await;
    let id = stream_id(1);
    let mut write = conn.write;
    // The gateway may close while this is still being written. The write
    // half is handed back, not dropped: that would close the connection.
    let writer = tokio::spawn(async move {
        let mut frames = raw::frame(raw::HEADERS, raw::END_STREAM, id, &first);
        let mut sent = 0;
        for n in 0.. {
            if sent >= FLOOD_BYTES || write.write_all(&frames).await.is_err() {
                break;
            }
            sent += frames.len();
            frames = raw::frame(raw::CONTINUATION, 0, id, &next(n));
        }
        write
    });
    let events = conn.frames.until(ANSWER_WITHIN, |e| e.ends(id)).await;
    writer.abort();
    // A RST_STREAM, a 431 head or a closed connection would do too.
    match (events.iter().find(|e| e.ends(id)), raw::goaway(&events)) {
        (Some(_), Some((last_processed, code))) => {
            assert!(
                matches!(code, raw::ENHANCE_YOUR_CALM | raw::COMPRESSION_ERROR),
                "{shape}: {events:?}"
            );
            assert_eq!(last_processed, 0, "{shape}: the stream was never opened");
        }
        (Some(_), None) => {}
        (None, _) => panic!("{shape}: no answer to an endless header block: {events:?}"),
    }
    assert_eq!(upstream.hits(), 0, "{shape} reached the upstream");
    still_serves(&gw).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn continuation_flood_of_small_frames_is_cut_off() {
    endless_header_block_is_cut_off(EndlessBlock {
        shape: "small frames of whole fields",
        first: raw::request_head(),
        next: |n| raw::literal_field(&format!("x-flood-{n}"), &"a".repeat(200)),
    })
    .await;
}

/// Nothing decodes, so only the count of frames (or the buffered bytes)
/// can end it.
#[tokio::test]
async fn continuation_flood_of_one_endless_string_is_cut_off() {
    endless_header_block_is_cut_off(EndlessBlock {
        shape: "full frames of one string",
        first: [raw::request_head(), raw::endless_literal_start()].concat(),
        next: |_| vec![b'a'; raw::MAX_FRAME_SIZE],
    })
    .await;
}

#[tokio::test]
async fn settings_advertise_the_configured_limits() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&flood_yaml(&upstream.url("/api"))).await;
    let mut conn = Conn::open(gw.http).await;
    assert_eq!(conn.setting(raw::MAX_CONCURRENT_STREAMS), Some(256));
    assert_eq!(conn.setting(raw::MAX_HEADER_LIST_SIZE), Some(8 << 10));
    assert_eq!(conn.setting(raw::INITIAL_WINDOW_SIZE), Some(1 << 20));
    // RFC 9113 §6.9.2: the connection window starts at 65,535 whatever
    // SETTINGS say, and only WINDOW_UPDATE on stream 0 widens it.
    let events = conn
        .frames
        .until(ANSWER_WITHIN, |e| raw::window_update(e, 0).is_some())
        .await;
    let increment = events.iter().find_map(|e| raw::window_update(e, 0));
    assert_eq!(increment, Some((4 << 20) - 65_535), "{events:?}");
    gw.shutdown().await;
}

/// POSTs whose bodies never come: HEADERS without END_STREAM.
fn hold_open(streams: std::ops::RangeInclusive<u32>) -> Vec<u8> {
    let head = raw::request_head_for("POST", "/travels/bookings");
    streams
        .flat_map(|n| raw::frame(raw::HEADERS, raw::END_HEADERS, stream_id(n), &head))
        .collect()
}

/// Streams held open (no END_STREAM) count against MAX_CONCURRENT_STREAMS;
/// h2 refuses each one over it with RST_STREAM(REFUSED_STREAM) and keeps
/// the connection, which serves again once a stream has ended.
#[tokio::test]
async fn streams_over_the_concurrency_cap_are_refused() {
    const CAP: u32 = 256;
    const EXCESS: u32 = 8;
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&flood_yaml(&upstream.url("/api"))).await;
    let mut conn = Conn::open(gw.http).await;
    assert_eq!(conn.setting(raw::MAX_CONCURRENT_STREAMS), Some(CAP));

    let open = hold_open(1..=CAP + EXCESS);
    conn.write.write_all(&open).await.unwrap();
    let excess: BTreeSet<u32> = (CAP + 1..=CAP + EXCESS).map(stream_id).collect();
    let mut refused = BTreeSet::new();
    let events = conn
        .frames
        .until(ANSWER_WITHIN, |e| {
            if let Some((id, code)) = e.rst_stream() {
                assert_eq!(code, raw::REFUSED_STREAM, "stream {id}");
                refused.insert(id);
            }
            refused.len() >= excess.len()
        })
        .await;
    assert_eq!(refused, excess, "{events:?}");
    assert_eq!(
        raw::goaway(&events),
        None,
        "the connection stays: {events:?}"
    );
    assert!(
        upstream.hits() <= CAP as usize,
        "a refused stream was forwarded"
    );

    // Ending one stream frees a slot on the same connection.
    let next = stream_id(CAP + EXCESS + 1);
    let mut again = raw::rst_stream(stream_id(1), raw::CANCEL);
    again.extend(raw::get(next, "/travels/bookings"));
    conn.write.write_all(&again).await.unwrap();
    let events = conn.frames.until(ANSWER_WITHIN, |e| e.ends(next)).await;
    let status = events.iter().find_map(|e| e.status_on(next));
    assert_eq!(status, Some(200), "{events:?}");
    drop(conn);
    gw.shutdown().await;
}

/// Each refusal counts against `max_local_error_reset_streams` for the
/// life of the connection: a client that keeps opening streams over the
/// cap is sent GOAWAY instead of being refused forever.
#[tokio::test]
async fn refusing_past_the_local_reset_limit_ends_the_connection() {
    const CAP: u32 = 256;
    const LOCAL_RESETS: usize = 256;
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&flood_yaml(&upstream.url("/api"))).await;
    let mut conn = Conn::open(gw.http).await;
    let last = CAP + LOCAL_RESETS as u32 + 100;
    // The gateway may close while this is still being written.
    let _ = conn.write.write_all(&hold_open(1..=last)).await;
    let events = conn.frames.until(ANSWER_WITHIN, Event::is_goaway).await;
    let refused: Vec<u32> = events
        .iter()
        .filter_map(Event::rst_stream)
        .map(|(id, code)| {
            assert_eq!(code, raw::REFUSED_STREAM, "stream {id}");
            id
        })
        .collect();
    assert_eq!(refused.len(), LOCAL_RESETS, "{refused:?}");
    assert!(refused.iter().all(|id| *id > stream_id(CAP)));
    let goaway = raw::goaway(&events).expect("GOAWAY after the last refusal");
    // The held streams were all taken; none of the refused ones was.
    assert_eq!(goaway, (stream_id(CAP), raw::ENHANCE_YOUR_CALM));
    drop(conn);
    still_serves(&gw).await;
    gw.shutdown().await;
}

/// An HTTP/1.1 upstream answering every request with `answer` (shared,
/// not copied).
async fn answering(answer: &'static [u8]) -> std::net::SocketAddr {
    use hyper::service::service_fn;
    use std::convert::Infallible;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_req: http::Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(
                        Bytes::from_static(answer),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    upstream
}

/// Resident memory of process `pid`, in bytes.
fn resident(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
    let kib: usize = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a VmRSS line");
    kib << 10
}

/// A slow reader over HTTP/2: a client that opens its flow-control windows
/// as wide as they go, asks for large answers on many streams and then
/// reads nothing. Over HTTP/1.1 such a client pins a write batch (64 KiB)
/// and its socket buffers; over HTTP/2 the gateway must not hold much
/// more for one connection, however many streams it opened (their answers
/// share a room of 4 MiB ahead of the socket, overdrawn by at most a read
/// per stream, where each could hold the send buffer, 128 KiB). The gateway is a
/// process of its own, so that what the other tests hold meanwhile is not
/// counted.
#[tokio::test]
async fn a_client_that_opens_its_windows_and_reads_nothing_pins_little_memory() {
    const STREAMS: u32 = 200;
    static ANSWER: [u8; 4 << 20] = [0; 4 << 20];
    let upstream = answering(&ANSWER).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.yaml");
    std::fs::write(&config, flood_yaml(&format!("http://{upstream}/api"))).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_microgateway"));
    command
        .env_clear()
        .args(["start", "-c", config.to_str().unwrap()]);
    let gw = common::process::start(&mut command);
    let pid = gw.child.id();
    // One answer read whole first: what serving takes at all is there.
    let whole = common::client()
        .get(format!("http://{}/travels/bookings", gw.http))
        .send()
        .await
        .unwrap();
    assert_eq!(whole.bytes().await.unwrap().len(), ANSWER.len());
    let before = resident(pid);

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(gw.http).await.unwrap();
    let (_read, mut write) = tcp.into_split(); // never read
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let mut settings = Vec::new();
    settings.extend_from_slice(&raw::INITIAL_WINDOW_SIZE.to_be_bytes());
    settings.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
    out.extend(raw::frame(raw::SETTINGS, 0, 0, &settings));
    out.extend(raw::frame(
        raw::WINDOW_UPDATE,
        0,
        0,
        &(0x7fff_ffffu32 - 65_535).to_be_bytes(),
    ));
    for n in 1..=STREAMS {
        out.extend(raw::get(stream_id(n), "/travels/bookings"));
    }
    write.write_all(&out).await.unwrap();
    // The most it holds, looked at for 4 s.
    let mut most = before;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        most = most.max(resident(pid));
    }
    let grown = most.saturating_sub(before);
    // Before the connection's answers shared one room: 200 streams of
    // 128 KiB, ~36 MiB. Now the room (4 MiB) and a read per stream.
    assert!(
        grown < 16 << 20,
        "one connection that reads nothing pins {} MiB",
        grown >> 20
    );
    drop(write);
}

/// The room the answers of a connection share holds no reader back: 12
/// streams of one connection, each 4 MiB (12 times the room), all read
/// to their end at once.
#[tokio::test]
async fn answers_larger_than_the_connections_room_all_arrive_whole() {
    static ANSWER: [u8; 4 << 20] = [7; 4 << 20];
    let upstream = answering(&ANSWER).await;
    let gw = Gateway::start(&flood_yaml(&format!("http://{upstream}/api"))).await;
    let sender = h2c(&gw).await;
    let mut streams = Vec::new();
    for _ in 0..12 {
        let mut sender = sender.clone();
        streams.push(tokio::spawn(async move {
            let request = http::Request::get("/travels/bookings")
                .header("host", "gw.test")
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let response = sender.send_request(request).await.expect("an answer");
            assert_eq!(response.status(), 200);
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .expect("the body");
            body.to_bytes()
        }));
    }
    for stream in streams {
        let body = tokio::time::timeout(Duration::from_secs(60), stream)
            .await
            .expect("within a minute")
            .expect("the stream's task");
        assert_eq!(body.len(), ANSWER.len());
        assert!(body.iter().all(|&b| b == 7));
    }
    gw.shutdown().await;
}

/// Bodies the gateway holds whole (here the authorization server's
/// token endpoint's) share one room per HTTP/2 connection,
/// `limits.max_body`: 16 streams sending 64 KiB each (the most the
/// endpoint reads) and never ending cannot make it hold 16 times what one
/// HTTP/1.1 connection could. The streams past the room are answered at
/// once (503), not held until their bodies time out.
#[tokio::test]
async fn bodies_held_whole_share_one_room_per_connection() {
    const STREAMS: u32 = 16;
    const EACH: usize = 64 << 10;
    let yaml = r#"
ports: { http: 0, bind: 127.0.0.1 }
admin: { port: 0 }
limits: { max_body: 256KiB }
authorization_server:
  issuer: "http://localhost:4485"
  scopes: [{ name: view }]
  clients:
  - { name: app, client_id: app, client_secret: app-secret-of-some-length,
      grant_types: [client_credentials], scopes: [view] }
"#;
    let gw = Gateway::start(yaml).await;
    let mut conn = Conn::open(gw.http).await;
    // The connection window is opened past its first 65,535 bytes.
    let events = conn
        .frames
        .until(ANSWER_WITHIN, |e| raw::window_update(e, 0).is_some())
        .await;
    assert!(events.iter().any(|e| raw::window_update(e, 0).is_some()));
    let head = raw::request_head_for("POST", "/oauth2/token");
    let chunk = vec![b'x'; raw::MAX_FRAME_SIZE];
    for n in 1..=STREAMS {
        let id = stream_id(n);
        let mut out = raw::frame(raw::HEADERS, raw::END_HEADERS, id, &head);
        for _ in 0..EACH / raw::MAX_FRAME_SIZE {
            out.extend(raw::frame(raw::DATA, 0, id, &chunk));
        }
        conn.write.write_all(&out).await.unwrap();
    }
    // At most 256 KiB of the 1 MiB is held: at least 12 streams refused.
    // (The answers' `:status` 503 is in HPACK's dynamic table: the
    // refusal is read from the body each ends with.)
    let mut refused = BTreeSet::new();
    let events = conn
        .frames
        .until(ANSWER_WITHIN, |e| {
            if let Event::Frame(f) = e {
                let body = String::from_utf8_lossy(&f.payload);
                if f.kind == raw::DATA && body.contains("temporarily_unavailable") {
                    refused.insert(f.stream);
                }
            }
            refused.len() >= 12
        })
        .await;
    assert!(refused.len() >= 12, "{refused:?} {events:?}");
    assert_eq!(raw::goaway(&events), None, "{events:?}");
    drop(conn);
    gw.shutdown().await;
}

/// The `echo` upstream counts a body as it comes and holds none of it:
/// over HTTP/2 its streams take nothing of the connection's room, and each
/// is answered with its length.
#[tokio::test]
async fn echo_bodies_take_no_room() {
    let yaml = r#"
ports: { http: 0, bind: 127.0.0.1 }
admin: { port: 0 }
limits: { max_body: 1MiB }
apis:
- name: Counted bodies
  base_path: /echo
  upstream: { echo: true }
  authentication: { type: none }
  resources: ["POST /items"]
"#;
    let gw = Gateway::start(yaml).await;
    let mut sender = h2c(&gw).await;
    let url = format!("http://gw.example:{}/echo/items", gw.http.port());
    // Three bodies of 768 KiB at once: 2.25 times the room.
    let uploads = (0..3).map(|_| {
        let request = Request::post(&url)
            .body(Full::new(Bytes::from(vec![b'x'; 768 << 10])))
            .unwrap();
        sender.send_request(request)
    });
    for answer in futures_util::future::join_all(uploads).await {
        let answer = answer.expect("an answer");
        assert_eq!(answer.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(answer.into_body())
            .await
            .unwrap()
            .to_bytes();
        let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(echoed["body_bytes"], 768 << 10, "{echoed}");
    }
    gw.shutdown().await;
}

/// One HTTP/2 connection forwards up to 256 requests at once, each on an
/// upstream connection of its own: the requests a port's HTTP/2
/// connections have in flight beyond each one's first share
/// `limits.max_streams`. Past it a request gets 503 with `Retry-After: 1`
/// and is never forwarded, while another connection's first request is
/// still taken; what a connection held comes back when it ends.
#[tokio::test]
async fn a_ports_streams_beyond_each_connections_first_share_max_streams() {
    const MAX_STREAMS: u32 = 4;
    const OPENED: u32 = 10;
    let upstream = Upstream::start().await;
    upstream.set_delay(Duration::from_secs(60)); // each request held
    let yaml = flood_yaml(&upstream.url("/api")).replace(
        "limits: { max_header_bytes: 8KiB }",
        &format!("limits: {{ max_header_bytes: 8KiB, max_streams: {MAX_STREAMS} }}"),
    );
    let gw = Gateway::start(&yaml).await;

    // One connection opens ten streams: its first and four more are
    // forwarded, the other five refused at once.
    let mut hog = Conn::open(gw.http).await;
    let out: Vec<u8> = (1..=OPENED)
        .flat_map(|n| raw::get(stream_id(n), "/travels/bookings"))
        .collect();
    hog.write.write_all(&out).await.unwrap();
    // (The answers' `:status` 503 is in HPACK's dynamic table: the
    // refusal is read from the body each ends with.)
    let mut refused = BTreeSet::new();
    let events = hog
        .frames
        .until(ANSWER_WITHIN, |e| {
            if let Event::Frame(f) = e {
                let body = String::from_utf8_lossy(&f.payload);
                if f.kind == raw::DATA && body.contains("temporarily_unavailable") {
                    refused.insert(f.stream);
                }
            }
            refused.len() >= (OPENED - 1 - MAX_STREAMS) as usize
        })
        .await;
    let last: BTreeSet<u32> = (2 + MAX_STREAMS..=OPENED).map(stream_id).collect();
    assert_eq!(refused, last, "{events:?}");
    let forwarded = 1 + MAX_STREAMS as usize;
    common::wait_until(ANSWER_WITHIN, || upstream.hits() >= forwarded).await;

    // Another client's first request is taken; its second is refused,
    // and says when to come back.
    let mut sender = h2c(&gw).await;
    let url = format!("http://gw.example:{}/travels/bookings", gw.http.port());
    let get = || Request::get(&url).body(Empty::<Bytes>::new()).unwrap();
    let first = tokio::spawn(sender.send_request(get()));
    common::wait_until(ANSWER_WITHIN, || upstream.hits() > forwarded).await;
    let second = sender.send_request(get()).await.expect("an answer");
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(second.headers()["retry-after"], "1");
    assert_eq!(
        upstream.hits(),
        forwarded + 1,
        "a refused request was forwarded"
    );

    // The first connection gone, its streams are the port's again (once
    // the gateway has read that it closed: until then a request is still
    // refused, and asked again).
    drop(hog);
    let mut refused_again = 0;
    let started = tokio::time::Instant::now();
    let third = loop {
        let mut third = tokio::spawn(sender.send_request(get()));
        let answered = tokio::select! {
            answered = &mut third => Some(answered.expect("no panic").expect("an answer")),
            () = common::wait_until(ANSWER_WITHIN, || upstream.hits() > forwarded + 1) => None,
        };
        match answered {
            None => break third,
            Some(refused) => {
                assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
                assert!(
                    started.elapsed() < ANSWER_WITHIN,
                    "the streams never came back"
                );
                refused_again += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(upstream.hits(), forwarded + 2);

    let text = gw.metrics().await;
    let line = r#"microgateway_requests_total{api="Edge",method="GET",status="503"}"#;
    let counted: Option<u32> = text
        .lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok());
    assert_eq!(
        counted,
        Some(OPENED - MAX_STREAMS + refused_again),
        "{text}"
    );
    first.abort();
    third.abort();
    gw.shutdown().await;
}

/// The authorization server's endpoints count against `max_streams` as
/// the APIs do: a connection's second stream past it is refused before
/// its body is read.
#[tokio::test]
async fn the_authorization_servers_streams_share_max_streams() {
    let upstream = Upstream::start().await;
    upstream.set_delay(Duration::from_secs(60)); // the first request held
    let yaml = flood_yaml(&upstream.url("/api")).replace(
        "limits: { max_header_bytes: 8KiB }",
        r#"limits: { max_header_bytes: 8KiB, max_streams: 0 }
authorization_server:
  issuer: "http://localhost:4485"
  scopes: [{ name: view }]
  clients:
  - { name: app, client_id: app, client_secret: app-secret-of-some-length,
      grant_types: [client_credentials], scopes: [view] }"#,
    );
    let gw = Gateway::start(&yaml).await;
    let mut sender = h2c(&gw).await;
    let base = format!("http://gw.example:{}", gw.http.port());
    let held = Request::get(format!("{base}/travels/bookings"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let first = tokio::spawn(sender.send_request(held));
    common::wait_until(ANSWER_WITHIN, || upstream.hits() == 1).await;
    let token = || {
        Request::post(format!("{base}/oauth2/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header(
                "authorization",
                "Basic YXBwOmFwcC1zZWNyZXQtb2Ytc29tZS1sZW5ndGg=",
            )
            .body(Full::new(Bytes::from_static(
                b"grant_type=client_credentials",
            )))
            .unwrap()
    };
    let refused = sender.send_request(token()).await.expect("an answer");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    // A connection's first stream is always taken.
    first.abort();
    let mut other = h2c(&gw).await;
    let issued = other.send_request(token()).await.expect("an answer");
    assert_eq!(issued.status(), StatusCode::OK);
    gw.shutdown().await;
}

/// A client talking HTTP/2 frame by frame (RFC 9113 §4, HPACK RFC 7541
/// without Huffman coding or the dynamic table).
mod raw {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::net::TcpStream;
    use tokio::sync::mpsc;

    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;

    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;

    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;

    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const COMPRESSION_ERROR: u32 = 0x9;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;

    /// SETTINGS_MAX_FRAME_SIZE's initial value, which the gateway keeps.
    pub const MAX_FRAME_SIZE: usize = 16_384;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    #[derive(Debug)]
    pub struct Frame {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    #[derive(Debug)]
    pub enum Event {
        Frame(Frame),
        /// The gateway closed (or reset) the TCP connection.
        Closed,
    }

    impl Event {
        pub fn is_goaway(&self) -> bool {
            matches!(self, Event::Frame(f) if f.kind == GOAWAY)
        }

        pub fn rst_stream(&self) -> Option<(u32, u32)> {
            match self {
                Event::Frame(f) if f.kind == RST_STREAM => Some((f.stream, be32(&f.payload))),
                _ => None,
            }
        }

        /// Whether this answers stream `id` or ends the connection.
        pub fn ends(&self, id: u32) -> bool {
            match self {
                Event::Frame(f) => {
                    f.kind == GOAWAY || (f.stream == id && matches!(f.kind, HEADERS | RST_STREAM))
                }
                Event::Closed => true,
            }
        }

        /// The `:status` of a response head on stream `id`, when the encoder
        /// used the static table for it (RFC 7541 Appendix A, entries 8-14).
        pub fn status_on(&self, id: u32) -> Option<u16> {
            let Event::Frame(f) = self else { return None };
            if f.kind != HEADERS || f.stream != id {
                return None;
            }
            let statuses = [200, 204, 206, 304, 400, 404, 500];
            let index = f.payload.first()?.checked_sub(0x88)?;
            statuses.get(usize::from(index)).copied()
        }
    }

    /// The last stream id and the error code of the first GOAWAY.
    pub fn goaway(events: &[Event]) -> Option<(u32, u32)> {
        events.iter().find_map(|e| match e {
            Event::Frame(f) if f.kind == GOAWAY => {
                Some((be32(&f.payload) & 0x7fff_ffff, be32(&f.payload[4..])))
            }
            _ => None,
        })
    }

    pub fn closed(events: &[Event]) -> bool {
        events.iter().any(|e| matches!(e, Event::Closed))
    }

    /// The increment of a WINDOW_UPDATE on `stream`.
    pub fn window_update(event: &Event, stream: u32) -> Option<u32> {
        match event {
            Event::Frame(f) if f.kind == WINDOW_UPDATE && f.stream == stream => {
                Some(be32(&f.payload) & 0x7fff_ffff)
            }
            _ => None,
        }
    }

    fn be32(bytes: &[u8]) -> u32 {
        u32::from_be_bytes(bytes[..4].try_into().expect("four bytes"))
    }

    /// The frames the gateway sends, read by a task of their own so that a
    /// client busy writing never blocks the gateway's writes.
    pub struct Frames(mpsc::UnboundedReceiver<Event>);

    impl Frames {
        /// Everything received until `done` holds for an event, the
        /// connection closed, or `within` passed.
        pub async fn until(
            &mut self,
            within: Duration,
            mut done: impl FnMut(&Event) -> bool,
        ) -> Vec<Event> {
            let deadline = tokio::time::Instant::now() + within;
            let mut seen = Vec::new();
            while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.0.recv()).await {
                let last = done(&event) || matches!(event, Event::Closed);
                seen.push(event);
                if last {
                    break;
                }
            }
            seen
        }
    }

    /// An h2c connection by prior knowledge, past the SETTINGS exchange.
    pub struct Conn {
        pub write: OwnedWriteHalf,
        pub frames: Frames,
        settings: Vec<(u16, u32)>,
    }

    impl Conn {
        pub async fn open(addr: SocketAddr) -> Conn {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let (read, mut write) = tcp.into_split();
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(read_frames(read, tx));
            write.write_all(PREFACE).await.unwrap();
            write.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
            let mut frames = Frames(rx);
            let events = frames
                .until(
                    Duration::from_secs(5),
                    |e| matches!(e, Event::Frame(f) if f.kind == SETTINGS && f.flags & ACK == 0),
                )
                .await;
            let Some(Event::Frame(server)) = events.last() else {
                panic!("no SETTINGS from the gateway: {events:?}");
            };
            let settings = server
                .payload
                .chunks_exact(6)
                .map(|s| (u16::from_be_bytes([s[0], s[1]]), be32(&s[2..])))
                .collect();
            write
                .write_all(&frame(SETTINGS, ACK, 0, &[]))
                .await
                .unwrap();
            Conn {
                write,
                frames,
                settings,
            }
        }

        /// A value of the gateway's first SETTINGS frame.
        pub fn setting(&self, id: u16) -> Option<u32> {
            self.settings
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, v)| *v)
        }
    }

    async fn read_frames(mut read: OwnedReadHalf, tx: mpsc::UnboundedSender<Event>) {
        loop {
            let mut head = [0u8; 9];
            if read.read_exact(&mut head).await.is_err() {
                let _ = tx.send(Event::Closed);
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0; len];
            if read.read_exact(&mut payload).await.is_err() {
                let _ = tx.send(Event::Closed);
                return;
            }
            let frame = Frame {
                kind: head[3],
                flags: head[4],
                stream: be32(&head[5..]) & 0x7fff_ffff,
                payload,
            };
            if tx.send(Event::Frame(frame)).is_err() {
                return;
            }
        }
    }

    /// RFC 9113 §4.1: 24-bit length, type, flags, 31-bit stream id.
    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).expect("a frame's length");
        let mut out = Vec::with_capacity(9 + payload.len());
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
        frame(RST_STREAM, 0, stream, &code.to_be_bytes())
    }

    /// A complete GET: HEADERS with END_HEADERS and END_STREAM.
    pub fn get(stream: u32, path: &str) -> Vec<u8> {
        let head = request_head_for("GET", path);
        frame(HEADERS, END_HEADERS | END_STREAM, stream, &head)
    }

    /// The pseudo-header fields of `GET /travels/bookings`.
    pub fn request_head() -> Vec<u8> {
        request_head_for("GET", "/travels/bookings")
    }

    pub fn request_head_for(method: &str, path: &str) -> Vec<u8> {
        // Static table: 2 `:method GET`, 3 `:method POST`, 6 `:scheme http`.
        let mut out = vec![if method == "GET" { 0x82 } else { 0x83 }, 0x86];
        // Literals without indexing, names 4 `:path` and 1 `:authority`.
        integer(&mut out, 0x00, 4, 4);
        string(&mut out, path.as_bytes());
        integer(&mut out, 0x00, 4, 1);
        string(&mut out, b"gw.example");
        out
    }

    /// A literal field without indexing, with a new name.
    pub fn literal_field(name: &str, value: &str) -> Vec<u8> {
        let mut out = vec![0x00];
        string(&mut out, name.as_bytes());
        string(&mut out, value.as_bytes());
        out
    }

    /// A field whose value announces 64 MiB: what follows is all value.
    /// More than any flood here sends, and short of the 2^28 over which h2
    /// refuses the integer itself (PROTOCOL_ERROR, not a flood limit).
    pub fn endless_literal_start() -> Vec<u8> {
        let mut out = vec![0x00];
        string(&mut out, b"x-endless");
        integer(&mut out, 0x00, 7, 1 << 26);
        out
    }

    fn string(out: &mut Vec<u8>, bytes: &[u8]) {
        integer(out, 0x00, 7, bytes.len());
        out.extend_from_slice(bytes);
    }

    /// RFC 7541 §5.1: an integer in a `prefix`-bit prefix of `first`.
    fn integer(out: &mut Vec<u8>, first: u8, prefix: u8, mut value: usize) {
        let max = (1usize << prefix) - 1;
        if value < max {
            out.push(first | value as u8);
            return;
        }
        out.push(first | max as u8);
        value -= max;
        while value >= 0x80 {
            out.push((value & 0x7f) as u8 | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }
}
