//! The gateway's HTTP/1.1 request parsing against two references: the same
//! request heads (valid, and subtly invalid: conflicting lengths, a length
//! beside a transfer coding, obs-fold, bare LF, spaces before the colon,
//! odd methods, targets and versions, huge values) and bodies (length- and
//! chunk-delimited, some broken) go to the gateway's parser and body
//! decoder, to `httparse`, and to a real hyper server on loopback.
//!
//! The rule: the gateway never accepts what a reference refuses, and when
//! both accept they frame the body alike (the same body bytes). Where the
//! gateway is deliberately stricter than hyper it refuses what hyper
//! accepts; each such case is one of the documented exceptions below, and
//! any other disagreement fails the test.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use microgateway::config::snapshot::Limits;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// The gateway's parts under test, each named once here.
use microgateway::http1::chunked::{Chunked, Decoded, Delimited};
use microgateway::http1::request_head::{parse as parse_head, Framing, Parsed};

/// What a parser made of a request: refused, or accepted with a body of
/// these bytes.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Refused(String),
    Accepted(Vec<u8>),
}

/// Why the gateway may refuse what hyper accepts (RFC 9112 lets a
/// recipient reject each of these; the gateway does, so that no other
/// parser on the way frames the message differently).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stricter {
    /// `Content-Length` beside `Transfer-Encoding` (§6.1: "ought to be
    /// handled as an error"); hyper drops the length.
    LengthAndCoding,
    /// A `Content-Length` list of equal values (`5, 5`), which hyper
    /// folds to one (RFC 9110 §8.6 allows either).
    LengthList,
    /// `chunked` applied more than once (§7: "MUST NOT apply chunked more
    /// than once"); hyper decodes once.
    ChunkedTwice,
    /// A transfer coding the gateway cannot decode before `chunked`
    /// (`gzip, chunked`): hyper passes the coded body on.
    OtherCoding,
    /// A chunk-size line over 4 KiB (extensions), where hyper's bound is
    /// 16 KiB per body.
    LongSizeLine,
    /// An empty element in a `Transfer-Encoding` list (`chunked,`, or an
    /// empty field): RFC 9110 §5.6.1 lets a recipient skip it, and hyper
    /// reads some such lists and refuses others; in a framing field the
    /// gateway refuses them all.
    EmptyCoding,
}

/// The gateway: its head parser, then its body decoder over what follows.
fn gateway(raw: &[u8]) -> Verdict {
    let limits = Limits {
        max_header_bytes: 64 * 1024,
        max_headers: 100,
        max_uri: 16 * 1024,
        max_body: 1 << 20,
        max_connections: 10,
        max_tunnels: 10,
        max_streams: 10,
    };
    let mut buf = BytesMut::from(raw);
    let head = match parse_head(&mut buf, &limits, true, &mut Vec::new()) {
        Ok(Parsed::Head(head)) => head,
        Ok(Parsed::Partial) => return Verdict::Refused("incomplete head".into()),
        Ok(Parsed::Http2) => return Verdict::Refused("HTTP/2 preface".into()),
        Err(refusal) => return Verdict::Refused(refusal.to_string()),
    };
    let mut body = match head.framing {
        Framing::None => return Verdict::Accepted(Vec::new()),
        Framing::Length(n) => Delimited::Length(n),
        Framing::Chunked => Delimited::Chunked(Chunked::new()),
    };
    let mut data = Vec::new();
    loop {
        match body.decode(&mut buf) {
            Ok(Decoded::Data(bytes)) => data.extend_from_slice(&bytes),
            Ok(Decoded::End) => return Verdict::Accepted(data),
            Ok(Decoded::NeedMore) => return Verdict::Refused("body cut short".into()),
            Err(error) => return Verdict::Refused(error.to_string()),
        }
    }
}

/// `httparse` with its default configuration, on the head alone.
fn httparse_refuses(raw: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    !matches!(request.parse(raw), Ok(httparse::Status::Complete(_)))
}

/// A hyper HTTP/1.1 server that answers each request with its body, or
/// 400 when the body could not be read.
async fn hyper_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|request: Request<Incoming>| async move {
                    let response = match request.into_body().collect().await {
                        Ok(body) => Response::builder()
                            .header("x-body", "ok")
                            .body(Full::new(body.to_bytes())),
                        Err(_) => Response::builder()
                            .status(400)
                            .body(Full::new(Bytes::new())),
                    };
                    Ok::<_, Infallible>(response.expect("a response"))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Hyper's verdict: the raw bytes sent, the sending side closed, the
/// first response read.
async fn hyper_verdict(addr: SocketAddr, raw: &[u8]) -> Verdict {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // Hyper may answer and close before it has read everything.
    let _ = stream.write_all(raw).await;
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer));
    let _ = read.await.expect("hyper answers or closes within 10 s");
    // `100 Continue` (to `Expect`) comes first: the final response follows.
    let mut answer = &answer[..];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(len)) = response.parse(answer) else {
            return Verdict::Refused("no response".into());
        };
        if response.code.is_some_and(|code| code < 200) {
            answer = &answer[len..];
            continue;
        }
        return final_verdict(&response, &answer[len..]);
    }
}

/// What hyper's final response says: the body it read, or a refusal.
fn final_verdict(response: &httparse::Response<'_, '_>, rest: &[u8]) -> Verdict {
    let ok = response.code == Some(200)
        && response
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("x-body"));
    if !ok {
        return Verdict::Refused(format!("status {:?}", response.code));
    }
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
        .expect("hyper's answer has a length");
    Verdict::Accepted(rest[..length].to_vec())
}

/// A generated request: its bytes, and which exception (if any) lets the
/// gateway refuse it while hyper accepts it.
#[derive(Debug, Clone)]
struct Case {
    raw: Vec<u8>,
    stricter: Option<Stricter>,
}

/// Checks one case against the rule.
async fn check(hyper: SocketAddr, case: &Case) -> Result<(), String> {
    let text = String::from_utf8_lossy(&case.raw);
    let own = gateway(&case.raw);
    if httparse_refuses(head_of(&case.raw)) && matches!(own, Verdict::Accepted(_)) {
        return Err(format!("accepted what httparse refuses: {text:?}"));
    }
    let reference = hyper_verdict(hyper, &case.raw).await;
    match (&own, &reference) {
        (Verdict::Accepted(a), Verdict::Accepted(b)) if a == b => Ok(()),
        (Verdict::Accepted(a), Verdict::Accepted(b)) => Err(format!(
            "framed differently: gateway {} body bytes, hyper {}: {text:?}",
            a.len(),
            b.len()
        )),
        (Verdict::Accepted(_), Verdict::Refused(why)) => {
            Err(format!("accepted what hyper refuses ({why}): {text:?}"))
        }
        (Verdict::Refused(_), Verdict::Refused(_)) => Ok(()),
        (Verdict::Refused(_), Verdict::Accepted(_)) if case.stricter.is_some() => Ok(()),
        (Verdict::Refused(why), Verdict::Accepted(_)) => Err(format!(
            "refused ({why}) what hyper accepts, with no documented reason: {text:?}"
        )),
    }
}

/// The head: up to and including the first empty line (CRLF or bare LF).
fn head_of(raw: &[u8]) -> &[u8] {
    let crlf = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4);
    let lf = raw.windows(2).position(|w| w == b"\n\n").map(|at| at + 2);
    let end = match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(raw.len()),
    };
    &raw[..end]
}

/// Hand-picked probes: each known way two HTTP/1.1 parsers have disagreed.
fn probes() -> Vec<Case> {
    let plain = |raw: &str| Case {
        raw: raw.as_bytes().to_vec(),
        stricter: None,
    };
    let stricter = |raw: &str, why| Case {
        raw: raw.as_bytes().to_vec(),
        stricter: Some(why),
    };
    let mut long_ext = String::from("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=");
    long_ext.push_str(&"a".repeat(5000));
    long_ext.push_str("\r\nhello\r\n0\r\n\r\n");
    vec![
        plain("GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        plain("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
        plain("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
        plain("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        stricter(
            "POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhello",
            Stricter::LengthList,
        ),
        plain("POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\nhello!"),
        plain("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello"),
        plain("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
        plain("POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\nhello"),
        plain("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n"),
        stricter(
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            Stricter::LengthAndCoding,
        ),
        stricter(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            Stricter::LengthAndCoding,
        ),
        plain("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        plain("POST / HTTP/1.1\r\nTransfer-Encoding: CHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        stricter(
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            Stricter::OtherCoding,
        ),
        plain("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        stricter(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            Stricter::ChunkedTwice,
        ),
        plain("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        plain("GET / HTTP/1.1\r\nX-A: one\r\n two\r\n\r\n"),
        plain("GET / HTTP/1.1\nHost: a\n\n"),
        plain("GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
        plain("GET / HTTP/1.1\r\n Host: a\r\n\r\n"),
        plain("GET /a b HTTP/1.1\r\n\r\n"),
        plain("GET  / HTTP/1.1\r\n\r\n"),
        plain("get / HTTP/1.1\r\n\r\n"),
        plain("G(T / HTTP/1.1\r\n\r\n"),
        plain("GET / HTTP/1.2\r\n\r\n"),
        plain("GET / HTTP/2.0\r\n\r\n"),
        plain("GET / http/1.1\r\n\r\n"),
        plain("GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n"),
        plain("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"),
        plain("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n"),
        plain("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\n\n"),
        plain("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF\r\n"),
        plain("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n"),
        plain("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"),
        plain("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n"),
        plain("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0;c\r\nX-T: 1\r\n\r\n"),
        plain("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"),
        stricter(&long_ext, Stricter::LongSizeLine),
        stricter(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked,\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            Stricter::EmptyCoding,
        ),
        stricter(
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding:\r\n\r\nhello",
            Stricter::EmptyCoding,
        ),
        stricter(
            "POST / HTTP/1.1\r\nTransfer-Encoding: , chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            Stricter::EmptyCoding,
        ),
    ]
}

/// The framing of a generated request, and whether the exceptions apply.
#[derive(Debug, Clone)]
enum Body {
    None,
    /// `Content-Length` values (each its own field) and the body bytes.
    Length(Vec<&'static str>, Vec<u8>),
    /// `Transfer-Encoding` values (each its own field) and the body bytes.
    Coded(Vec<&'static str>, Vec<u8>),
    /// Both, in this order.
    Both(&'static str, &'static str, Vec<u8>),
}

/// One of `valid` six times in seven, else one of `invalid`: a generated
/// request is mostly one mistake away from a valid one.
fn mostly<T: Clone + std::fmt::Debug + 'static>(
    valid: Vec<T>,
    invalid: Vec<T>,
) -> impl Strategy<Value = T> {
    prop_oneof![
        6 => prop::sample::select(valid),
        1 => prop::sample::select(invalid),
    ]
}

fn length_value() -> impl Strategy<Value = &'static str> {
    mostly(
        vec!["0", "3", "5", "05", " 5 "],
        vec![
            "+5",
            "-5",
            "5, 5",
            "5,6",
            "",
            "0x5",
            "5 5",
            "18446744073709551615",
            "18446744073709551616",
        ],
    )
}

fn coding_value() -> impl Strategy<Value = &'static str> {
    mostly(
        vec!["chunked", "Chunked", " chunked "],
        vec![
            "gzip, chunked",
            "chunked, gzip",
            "chunked, chunked",
            "identity",
            "chunked;q=1",
            ",chunked",
            "chunked,",
            "",
        ],
    )
}

/// Chunked bodies, some broken.
fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    let piece = mostly(
        vec![
            &b"5\r\nhello\r\n"[..],
            b"1\r\nx\r\n",
            b"A\r\n0123456789\r\n",
            b"a;ext=1\r\n0123456789\r\n",
            b"3 ;e\r\nabc\r\n",
            b"00000000000000000001\r\nz\r\n",
        ],
        vec![
            b"5\nhello\r\n",
            b"5\r\nhello\n",
            b"3\r\nabcd\r\n",
            b"g\r\n",
            b"\r\n",
        ],
    );
    let end = mostly(
        vec![&b"0\r\n\r\n"[..], b"0\r\nX-Trailer: v\r\n\r\n"],
        vec![b"0\r\nbad trailer\r\n\r\n", b"0\n\n", b""],
    );
    (prop::collection::vec(piece, 0..4), end).prop_map(|(pieces, end)| {
        let mut body = pieces.concat();
        body.extend_from_slice(end);
        body
    })
}

fn body() -> impl Strategy<Value = Body> {
    let bytes = prop::collection::vec(prop::sample::select(b"abc\r\n0".to_vec()), 0..8);
    prop_oneof![
        1 => Just(Body::None),
        3 => (prop::collection::vec(length_value(), 1..3), bytes.clone())
            .prop_map(|(values, bytes)| Body::Length(values, bytes)),
        3 => (prop::collection::vec(coding_value(), 1..3), chunked_body())
            .prop_map(|(values, bytes)| Body::Coded(values, bytes)),
        1 => (length_value(), coding_value(), chunked_body())
            .prop_map(|(length, coding, bytes)| Body::Both(length, coding, bytes)),
    ]
}

/// Other fields, and the ways a field line can be subtly wrong.
fn field_line() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => Just("Host: gw.example".to_owned()),
        12 => "X-[A-Za-z]{1,8}: [ -~]{0,20}".prop_map(|line| line.trim_end().to_owned()),
        2 => Just("Connection: close".to_owned()),
        2 => Just("Expect: 100-continue".to_owned()),
        1 => Just("Host : gw.example".to_owned()),
        1 => Just("X-Folded: one\r\n two".to_owned()),
        1 => Just("X-Nul: a\u{0}b".to_owned()),
        1 => Just("X-Bad Name: v".to_owned()),
        1 => Just(":empty-name".to_owned()),
        1 => Just(format!("X-Huge: {}", "h".repeat(9000))),
    ]
}

fn request_line() -> impl Strategy<Value = String> {
    let method = mostly(
        vec!["GET", "POST", "PUT", "DELETE", "PATCH", "M-SEARCH"],
        vec!["get", "G(T", ""],
    );
    let target = mostly(
        vec![
            "/",
            "/a/b?c=d",
            "*",
            "http://gw.example/a",
            "/a%20b",
            "//x",
            "/%zz",
            "gw.example:443",
        ],
        vec!["/a b", "/a\tb", "/\u{7f}"],
    );
    let version = mostly(
        vec!["HTTP/1.1", "HTTP/1.0"],
        vec!["HTTP/1.2", "HTTP/2.0", "http/1.1", "HTTP/1.10"],
    );
    (method, target, version).prop_map(|(m, t, v)| format!("{m} {t} {v}"))
}

fn case() -> impl Strategy<Value = Case> {
    (
        request_line(),
        prop::collection::vec(field_line(), 0..4),
        body(),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(line, fields, body, bare_lf)| build(line, fields, body, bare_lf))
}

/// Assembles a request and decides which exception may apply to it.
fn build(line: String, mut fields: Vec<String>, body: Body, bare_lf: bool) -> Case {
    let mut stricter = None;
    let bytes = match body {
        Body::None => Vec::new(),
        Body::Length(values, bytes) => {
            // RFC 9110 §8.6: a list of one repeated length may be folded.
            let members: Vec<&str> = values.iter().flat_map(|v| v.split(',')).collect();
            if members.len() > 1 || values.len() > 1 {
                stricter = Some(Stricter::LengthList);
            }
            fields.extend(values.iter().map(|v| format!("Content-Length: {v}")));
            bytes
        }
        Body::Coded(values, bytes) => {
            let codings: Vec<&str> = values
                .iter()
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .collect();
            let empty = codings.iter().any(|c| c.is_empty());
            let codings: Vec<&str> = codings.into_iter().filter(|c| !c.is_empty()).collect();
            if empty {
                stricter = Some(Stricter::EmptyCoding);
            } else if codings
                .iter()
                .filter(|c| c.eq_ignore_ascii_case("chunked"))
                .count()
                > 1
            {
                stricter = Some(Stricter::ChunkedTwice);
            } else if codings.len() > 1 {
                stricter = Some(Stricter::OtherCoding);
            }
            fields.extend(values.iter().map(|v| format!("Transfer-Encoding: {v}")));
            bytes
        }
        Body::Both(length, coding, bytes) => {
            stricter = Some(Stricter::LengthAndCoding);
            fields.push(format!("Content-Length: {length}"));
            fields.push(format!("Transfer-Encoding: {coding}"));
            bytes
        }
    };
    let eol = if bare_lf { "\n" } else { "\r\n" };
    let mut raw = format!("{line}{eol}");
    for field in fields {
        raw.push_str(&field);
        raw.push_str(eol);
    }
    raw.push_str(eol);
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(&bytes);
    Case { raw, stricter }
}

#[test]
fn the_gateway_never_accepts_what_httparse_or_hyper_refuse() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let hyper = runtime.block_on(hyper_server());
    let mut failures = Vec::new();
    for case in probes() {
        if let Err(failure) = runtime.block_on(check(hyper, &case)) {
            failures.push(failure);
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    let config = Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&case(), |case| {
        runtime
            .block_on(check(hyper, &case))
            .map_err(TestCaseError::fail)
    });
    if let Err(error) = result {
        panic!("{error}");
    }
}
