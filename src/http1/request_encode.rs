//! A request head as an upstream receives it, and the framing of its body.
//!
//! The request target and `Host` are the upstream's ([`Destination`]),
//! written as they are: the client's target and `Host` stay in the request
//! for the headers that report them.
//!
//! The framing headers are the encoder's alone: whatever `Content-Length`
//! or `Transfer-Encoding` the request carries is replaced by what the body
//! really is, so the upstream can never read a body's bytes as a request.
//!
//! The fields the gateway adds (correlation, forwarding) travel beside the
//! request as [`AddedFields`] and are written after its own: adding them to
//! the request's map would hash and store each one, request after request,
//! only for the encoder to read them back.

use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING};
use http::request::Parts;
use http::HeaderMap;
use http_body::Body as HttpBody;

use super::chunked::itoa;

/// How the request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// Where a request goes on its upstream connection.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// Origin-form: a path (and query) the connection's upstream serves.
    pub path_and_query: &'a str,
    pub host: &'a HeaderValue,
    /// Written after the request's own fields.
    pub added: &'a AddedFields,
    /// Fields the gateway may add to the answer (`Api::answer_room`).
    pub room: usize,
    /// Nothing will read or change the answer's fields: they may stay as
    /// the upstream sent them (`response_head::Scratch::as_sent`).
    pub as_sent: bool,
}

/// The most fields the gateway adds to a request: `X-Request-Id`,
/// `traceparent`, `X-Forwarded-For/-Proto/-Host` and `Forwarded`.
const MAX_ADDED: usize = 6;

/// Fields the gateway adds to a forwarded request. Whoever adds one has
/// removed the request's own lines of that name, so each goes out once.
#[derive(Debug)]
pub struct AddedFields {
    fields: [Option<(&'static HeaderName, HeaderValue)>; MAX_ADDED],
    len: usize,
}

static NO_FIELDS: AddedFields = AddedFields::new();

impl Default for AddedFields {
    fn default() -> Self {
        AddedFields::new()
    }
}

impl AddedFields {
    pub const fn new() -> AddedFields {
        AddedFields {
            fields: [const { None }; MAX_ADDED],
            len: 0,
        }
    }

    /// No added field (requests the gateway makes itself).
    pub fn none() -> &'static AddedFields {
        &NO_FIELDS
    }

    /// Adds `name: value`. Each of the gateway's names is added at most
    /// once per request (by the one phase that owns it): no search.
    pub fn add(&mut self, name: &'static HeaderName, value: HeaderValue) {
        debug_assert!(
            self.get(name).is_none(),
            "{name} added twice to one request"
        );
        // At most one per name: a slot is always free.
        if let Some(slot) = self.fields.get_mut(self.len) {
            *slot = Some((name, value));
            self.len += 1;
        }
    }

    /// Drops the fields `doomed` picks.
    pub fn remove_matching(&mut self, doomed: impl Fn(&HeaderName) -> bool) {
        for slot in &mut self.fields[..self.len] {
            if slot.as_ref().is_some_and(|(name, _)| doomed(name)) {
                *slot = None;
            }
        }
    }

    pub fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static HeaderName, &HeaderValue)> {
        self.fields[..self.len]
            .iter()
            .flatten()
            .map(|(n, v)| (*n, v))
    }

    /// Puts the fields into `headers`, for a request that leaves as a map
    /// (HTTP/2 upstreams, the echo upstream).
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in self.iter() {
            headers.insert(name.clone(), value.clone());
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        for (name, value) in self.iter() {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Appends the head of `parts`, to `destination`, to `out`, and says how
/// `body` must follow it.
pub fn encode<B: HttpBody>(
    parts: &Parts,
    body: &B,
    destination: Destination<'_>,
    out: &mut Vec<u8>,
) -> BodyFraming {
    let framing = if body.is_end_stream() {
        BodyFraming::None
    } else {
        match body.size_hint().exact() {
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::Chunked,
        }
    };
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(destination.path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(destination.host.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut had_length = false;
    for (name, value) in &parts.headers {
        if *name == CONTENT_LENGTH {
            had_length = true;
            continue;
        }
        // `Expect`: the gateway answered the client's `100-continue` itself
        // and sends the body at once; an upstream that answers without
        // reading the body it expects to be asked for would read it as
        // the next request on a pooled connection.
        if *name == TRANSFER_ENCODING || *name == HOST || *name == EXPECT {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    destination.added.write(out);
    match framing {
        // A bodiless request says so only if it did (`POST` with
        // `Content-Length: 0`); a `GET` gets no framing header.
        BodyFraming::None if had_length => out.extend_from_slice(b"content-length: 0\r\n"),
        BodyFraming::None => {}
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa(n, &mut [0; 20]));
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    framing
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::Request;
    use http_body_util::combinators::BoxBody;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};

    use super::*;

    type Body = BoxBody<Bytes, std::convert::Infallible>;

    fn empty() -> Body {
        Empty::new().boxed()
    }

    fn full(text: &'static str) -> Body {
        Full::new(Bytes::from_static(text.as_bytes())).boxed()
    }

    fn encoded(request: Request<Body>) -> (String, BodyFraming) {
        let (parts, body) = request.into_parts();
        let mut out = Vec::new();
        let host = HeaderValue::from_static("up");
        let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let destination = Destination {
            path_and_query,
            host: &host,
            added: AddedFields::none(),
            room: 0,
            as_sent: false,
        };
        let framing = encode(&parts, &body, destination, &mut out);
        (String::from_utf8(out).expect("ascii"), framing)
    }

    #[test]
    fn framing_headers_say_what_the_body_is() {
        let get = Request::get("/a?b=1")
            .header("host", "client.example")
            .header("transfer-encoding", "chunked")
            .body(empty())
            .expect("request");
        assert_eq!(
            encoded(get),
            (
                "GET /a?b=1 HTTP/1.1\r\nhost: up\r\n\r\n".into(),
                BodyFraming::None
            )
        );
        let post = Request::post("/p")
            .header("content-length", "0")
            .body(empty())
            .expect("request");
        assert_eq!(
            encoded(post).0,
            "POST /p HTTP/1.1\r\nhost: up\r\ncontent-length: 0\r\n\r\n"
        );
        let lying = Request::put("/p")
            .header("content-length", "99")
            .body(full("12345"))
            .expect("request");
        assert_eq!(
            encoded(lying),
            (
                "PUT /p HTTP/1.1\r\nhost: up\r\ncontent-length: 5\r\n\r\n".into(),
                BodyFraming::Length(5)
            )
        );
        let stream = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
            http_body::Frame::data(Bytes::from_static(b"x")),
        )]);
        let streamed = Request::post("/s")
            .header("content-length", "1")
            .body(StreamBody::new(stream).boxed())
            .expect("request");
        assert_eq!(
            encoded(streamed),
            (
                "POST /s HTTP/1.1\r\nhost: up\r\ntransfer-encoding: chunked\r\n\r\n".into(),
                BodyFraming::Chunked
            )
        );
    }
}
