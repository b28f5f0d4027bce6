//! The chunked transfer coding (RFC 9112 §7.1), both ways: bodies read
//! from a connection's buffer as bytes arrive (an upstream's responses, a
//! client's requests), and bodies written in chunks.
//!
//! Strict where leniency has let messages be framed two ways: every line
//! ends in CRLF, a chunk's data is followed by exactly CRLF, sizes are hex
//! that fits in a `u64`. Size lines and the trailer section are bounded;
//! trailer fields are read and dropped (RFC 9110 §6.5.1 lets a recipient
//! discard them).

use bytes::{Bytes, BytesMut};
use http_body::SizeHint;

/// The longest chunk-size line, extensions included.
const MAX_SIZE_LINE: usize = 4096;
/// The most bytes of trailer fields.
const MAX_TRAILERS: usize = 16 * 1024;

/// Where the decoder is in the body.
#[derive(Debug, Default, PartialEq)]
pub enum Chunked {
    /// Before a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, with this many bytes to go.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// In the trailer section, after this many bytes of it.
    Trailers(usize),
    /// After the final CRLF.
    Done,
}

/// What one step of decoding gave.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    Data(Bytes),
    /// The body has ended; anything still buffered is not part of it.
    End,
    /// The buffer holds no complete next step: read more.
    NeedMore,
}

/// The chunked coding is broken: the response cannot be framed.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size line")]
    Size,
    #[error("chunk size line too long")]
    SizeLineTooLong,
    #[error("chunk data not followed by CRLF")]
    DataEnd,
    #[error("trailer section too large")]
    TrailersTooLarge,
    #[error("invalid trailer line")]
    Trailer,
}

impl Chunked {
    pub fn new() -> Chunked {
        Chunked::Size
    }

    /// Decodes from the front of `buf` (consuming what it decodes) up to
    /// the next data, the end of the body, or the end of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        loop {
            match *self {
                Chunked::Size => {
                    let Some(line) = take_line(buf, MAX_SIZE_LINE)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(&line)?;
                    *self = if size == 0 {
                        Chunked::Trailers(0)
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(remaining) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
                    let left = remaining - take as u64;
                    *self = if left == 0 {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left)
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                Chunked::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ChunkError::DataEnd);
                    }
                    let _ = buf.split_to(2);
                    *self = Chunked::Size;
                }
                Chunked::Trailers(seen) => {
                    let room = MAX_TRAILERS.saturating_sub(seen);
                    let line = take_line(buf, room).map_err(|error| match error {
                        ChunkError::SizeLineTooLong => ChunkError::TrailersTooLarge,
                        _ => ChunkError::Trailer,
                    })?;
                    let Some(line) = line else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line.is_empty() {
                        *self = Chunked::Done;
                        return Ok(Decoded::End);
                    }
                    if !is_field_line(&line) {
                        return Err(ChunkError::Trailer);
                    }
                    *self = Chunked::Trailers(seen + line.len() + 2);
                }
                Chunked::Done => return Ok(Decoded::End),
            }
        }
    }
}

/// A body delimited by its length or by the chunked coding, read from the
/// front of a connection's buffer: a client's request body, or an
/// upstream's response body.
#[derive(Debug, PartialEq)]
pub enum Delimited {
    Length(u64),
    Chunked(Chunked),
    Done,
}

impl Delimited {
    /// The next data at the front of `buf` (consumed), the end of the
    /// body, or the need for more bytes.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        match self {
            Delimited::Done => Ok(Decoded::End),
            Delimited::Length(_) if buf.is_empty() => Ok(Decoded::NeedMore),
            Delimited::Length(remaining) => {
                let take = usize::try_from(*remaining).map_or(buf.len(), |r| r.min(buf.len()));
                *remaining -= take as u64;
                if *remaining == 0 {
                    *self = Delimited::Done;
                }
                Ok(Decoded::Data(buf.split_to(take).freeze()))
            }
            Delimited::Chunked(decoder) => {
                let decoded = decoder.decode(buf)?;
                if decoded == Decoded::End {
                    *self = Delimited::Done;
                }
                Ok(decoded)
            }
        }
    }

    pub fn is_done(&self) -> bool {
        *self == Delimited::Done
    }

    pub fn size_hint(&self) -> SizeHint {
        match self {
            Delimited::Length(n) => SizeHint::with_exact(*n),
            Delimited::Done => SizeHint::with_exact(0),
            Delimited::Chunked(_) => SizeHint::default(),
        }
    }
}

/// Appends one chunk of the chunked coding: size line, data, CRLF.
pub fn encode(data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk and an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// `n` in decimal, written into `digits`.
pub fn itoa(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &digits[i..];
        }
    }
}

/// The next CRLF-terminated line (without its CRLF), if `buf` holds one
/// within `max` bytes.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, ChunkError> {
    let window = &buf[..buf.len().min(max)];
    match window.iter().position(|&b| b == b'\n') {
        Some(lf) => {
            if lf == 0 || buf[lf - 1] != b'\r' {
                return Err(ChunkError::Size);
            }
            let mut line = buf.split_to(lf + 1);
            line.truncate(lf - 1);
            Ok(Some(line))
        }
        None if buf.len() >= max => Err(ChunkError::SizeLineTooLong),
        None => Ok(None),
    }
}

/// `chunk-size [ chunk-ext ]`: hex digits that fit in a `u64`, then
/// nothing or extensions (ignored, RFC 9112 §7.1.1).
fn chunk_size(line: &[u8]) -> Result<u64, ChunkError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(ChunkError::Size);
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let digit = char::from(b).to_digit(16).ok_or(ChunkError::Size)?;
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(digit)))
            .ok_or(ChunkError::Size)?;
    }
    let rest = &line[digits..];
    let ext = &rest[rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count()..];
    if !rest.is_empty() && !ext.starts_with(b";") {
        return Err(ChunkError::Size);
    }
    if ext.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(ChunkError::Size);
    }
    Ok(size)
}

/// `name: value` with a token name and no control bytes.
fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    colon > 0
        && line[..colon]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && line[colon + 1..]
            .iter()
            .all(|&b| b >= 0x20 && b != 0x7f || b == b'\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes: the data, or the
    /// first error.
    fn decode_in_steps(input: &[u8], step: usize) -> Result<(Vec<u8>, BytesMut), ChunkError> {
        let mut decoder = Chunked::new();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut pieces = input.chunks(step);
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::End => return Ok((body, buf)),
                Decoded::NeedMore => match pieces.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None => return Err(ChunkError::Size),
                },
            }
        }
    }

    #[test]
    fn chunks_and_numbers_are_encoded() {
        let mut out = Vec::new();
        encode(&[b'a'; 26], &mut out);
        assert_eq!(out, [&b"1a\r\n"[..], &[b'a'; 26], b"\r\n"].concat());
        for n in [0, 7, 10, 12345, u64::MAX] {
            assert_eq!(itoa(n, &mut [0; 20]), n.to_string().as_bytes());
        }
    }

    #[test]
    fn chunks_extensions_and_trailers_decode_at_any_split() {
        let input =
            b"5;name=value\r\nhello\r\nA \t;x\r\n, chunked!\r\n0\r\nEtag: \"x\"\r\n\r\nNEXT";
        for step in 1..input.len() {
            let (body, rest) = decode_in_steps(input, step).expect("valid");
            assert_eq!(body, b"hello, chunked!", "step {step}");
            assert!(b"NEXT".starts_with(&rest), "step {step}: {rest:?}");
        }
    }

    #[test]
    fn broken_framing_is_refused() {
        for (input, error) in [
            (&b"zz\r\nhello\r\n0\r\n\r\n"[..], ChunkError::Size),
            (b"5\nhello\r\n0\r\n\r\n", ChunkError::Size),
            (b"5 x\r\nhello\r\n0\r\n\r\n", ChunkError::Size),
            (b"-5\r\nhello\r\n0\r\n\r\n", ChunkError::Size),
            (b"10000000000000000\r\n", ChunkError::Size),
            (b"ffffffffffffffffff\r\n", ChunkError::Size),
            (b"5\r\nhelloX\r\n0\r\n\r\n", ChunkError::DataEnd),
            (b"5\r\nhello\r\n0\r\nno colon\r\n\r\n", ChunkError::Trailer),
            (b"5;a\x01b\r\nhello\r\n0\r\n\r\n", ChunkError::Size),
        ] {
            assert_eq!(decode_in_steps(input, 64), Err(error), "{input:?}");
        }
    }

    #[test]
    fn lines_and_trailers_are_bounded() {
        let mut long = b"5;".to_vec();
        long.resize(MAX_SIZE_LINE + 10, b'a');
        assert_eq!(
            decode_in_steps(&long, 512),
            Err(ChunkError::SizeLineTooLong)
        );
        let mut trailers = b"0\r\n".to_vec();
        while trailers.len() < MAX_TRAILERS + 100 {
            trailers.extend_from_slice(b"x-filler: 0123456789abcdef\r\n");
        }
        assert_eq!(
            decode_in_steps(&trailers, 512),
            Err(ChunkError::TrailersTooLarge)
        );
    }

    #[test]
    fn the_largest_size_is_accepted_and_counted_down() {
        let mut decoder = Chunked::new();
        let mut buf = BytesMut::from(&b"ffffffffffffffff\r\nabc"[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Decoded::Data(Bytes::from_static(b"abc")))
        );
        assert_eq!(decoder, Chunked::Data(u64::MAX - 3));
    }
}
