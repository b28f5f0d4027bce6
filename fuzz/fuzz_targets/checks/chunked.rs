//! The chunked decoder (`http1::chunked`), fed the same bytes in one
//! piece and in arbitrary pieces (the first input byte chooses them).
//! Invariants: no panic; the pieces give the same data, the same end (or
//! the same error) as the one piece; what follows the body is left in the
//! buffer untouched; and any data, encoded by the encoder in any chunking,
//! decodes back to itself.
use bytes::BytesMut;
// The codec under test: its one path in this target.
use microgateway::http1::chunked::{encode, Chunked, Decoded, Delimited, LAST_CHUNK};

/// Sizes of the pieces bytes arrive in, between 1 and `most`, drawn from
/// a small generator seeded by `most` (the input's first byte).
fn piece_sizes(most: u8) -> impl Iterator<Item = usize> {
    let most = u32::from(most.max(1));
    let mut state = most.wrapping_mul(2_654_435_761) | 1;
    std::iter::repeat_with(move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state % most + 1) as usize
    })
}

#[derive(Debug, PartialEq)]
enum Outcome {
    /// The body, and what was left after it.
    Ended(Vec<u8>, Vec<u8>),
    /// The bytes ran out first: the body so far.
    Incomplete(Vec<u8>),
    Failed(Vec<u8>, String),
}

/// Decodes `bytes` arriving in pieces of `sizes` (all at once for `None`).
fn decode(bytes: &[u8], mut sizes: Option<&mut dyn Iterator<Item = usize>>) -> Outcome {
    let mut decoder = Delimited::Chunked(Chunked::new());
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut rest = bytes;
    loop {
        let before = buf.len();
        match decoder.decode(&mut buf) {
            Ok(Decoded::Data(data)) => {
                assert!(!data.is_empty(), "empty data");
                assert!(buf.len() + data.len() <= before, "decoded more than held");
                body.extend_from_slice(&data);
            }
            Ok(Decoded::End) => {
                assert!(decoder.is_done());
                let mut left = buf.to_vec();
                left.extend_from_slice(rest);
                assert!(bytes.ends_with(&left), "the bytes after the body changed");
                return Outcome::Ended(body, left);
            }
            Ok(Decoded::NeedMore) if rest.is_empty() => return Outcome::Incomplete(body),
            Ok(Decoded::NeedMore) => {
                let take = match sizes.as_mut() {
                    Some(sizes) => sizes.next().unwrap_or(1).min(rest.len()),
                    None => rest.len(),
                };
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
            }
            Err(error) => return Outcome::Failed(body, error.to_string()),
        }
    }
}

/// Checks one input; panics where an invariant does not hold.
pub fn input(data: &[u8]) {
    let Some((&most, bytes)) = data.split_first() else {
        return;
    };
    let whole = decode(bytes, None);
    let pieces = decode(bytes, Some(&mut piece_sizes(most)));
    assert_eq!(whole, pieces);

    // Encoded in chunks of any sizes, the bytes decode to themselves,
    // whatever pieces the encoding arrives in.
    let mut encoded = Vec::new();
    let mut rest = bytes;
    let mut chunk_sizes = piece_sizes(most.rotate_left(4));
    while !rest.is_empty() {
        let take = chunk_sizes.next().unwrap_or(rest.len()).min(rest.len());
        encode(&rest[..take], &mut encoded);
        rest = &rest[take..];
    }
    encoded.extend_from_slice(LAST_CHUNK);
    encoded.extend_from_slice(b"NEXT");
    let expected = Outcome::Ended(bytes.to_vec(), b"NEXT".to_vec());
    assert_eq!(decode(&encoded, Some(&mut piece_sizes(most))), expected);
    assert_eq!(decode(&encoded, None), expected);
}
