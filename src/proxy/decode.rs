//! Undoing an upstream answer's `Content-Encoding` (gzip, deflate, br, stacked in any order),
//! bounded in both compressed and decompressed size, so an error body can be checked for
//! secrets instead of being withheld.

use std::io::Read;

use bytes::Bytes;
use http::header::{self, HeaderMap};

/// One content coding the gateway can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `gzip` (and its old alias `x-gzip`); concatenated members are read as one body.
    Gzip,
    /// `deflate`: zlib-wrapped as RFC 9110 says, or raw deflate as some servers send.
    Deflate,
    /// `br` (Brotli).
    Brotli,
}

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// A coding the gateway cannot undo (`compress`, `zstd`, anything unknown).
    #[error("content coding {0:?} is not supported")]
    Unsupported(String),
    /// The decoded body would be larger than the limit (a compression bomb, or just big).
    #[error("decoded body larger than {0} bytes")]
    TooLarge(usize),
    /// The bytes are not valid for the coding they are labelled with.
    #[error("body is not valid {0:?} data")]
    Corrupt(Coding),
}

/// The codings of every `Content-Encoding` header, in the order they were applied (every
/// header value, every comma-separated coding in each; `identity` and empty items skipped).
pub fn codings(headers: &HeaderMap) -> Result<Vec<Coding>, DecodeError> {
    let mut out = Vec::new();
    for value in headers.get_all(header::CONTENT_ENCODING) {
        for item in value.as_bytes().split(|b| *b == b',') {
            let item = item.trim_ascii();
            let coding = if item.is_empty() || item.eq_ignore_ascii_case(b"identity") {
                continue;
            } else if item.eq_ignore_ascii_case(b"gzip") || item.eq_ignore_ascii_case(b"x-gzip") {
                Coding::Gzip
            } else if item.eq_ignore_ascii_case(b"deflate") {
                Coding::Deflate
            } else if item.eq_ignore_ascii_case(b"br") {
                Coding::Brotli
            } else {
                return Err(DecodeError::Unsupported(String::from_utf8_lossy(item).into_owned()));
            };
            out.push(coding);
        }
    }
    Ok(out)
}

/// Undoes `codings` (as listed, so the last one applied is undone first); no stage may
/// produce more than `limit` bytes. CPU-bound but bounded: at most `limit` bytes out of each
/// stage, so it runs inline.
pub fn decode(mut bytes: Bytes, codings: &[Coding], limit: usize) -> Result<Bytes, DecodeError> {
    for &coding in codings.iter().rev() {
        bytes = match coding {
            Coding::Gzip => read_bounded(flate2::read::MultiGzDecoder::new(&bytes[..]), coding, limit)?,
            Coding::Deflate => match read_bounded(flate2::read::ZlibDecoder::new(&bytes[..]), coding, limit) {
                Err(DecodeError::Corrupt(_)) => {
                    read_bounded(flate2::read::DeflateDecoder::new(&bytes[..]), coding, limit)?
                }
                other => other?,
            },
            Coding::Brotli => read_bounded(brotli_decompressor::Decompressor::new(&bytes[..], 4096), coding, limit)?,
        };
    }
    Ok(bytes)
}

/// Reads `reader` to its end, failing past `limit` bytes without reading much further.
fn read_bounded(reader: impl Read, coding: Coding, limit: usize) -> Result<Bytes, DecodeError> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader.take(cap).read_to_end(&mut out).map_err(|_| DecodeError::Corrupt(coding))?;
    if out.len() > limit {
        return Err(DecodeError::TooLarge(limit));
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::io::Write;

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn br(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        brotli::BrotliCompress(&mut &data[..], &mut out, &brotli::enc::BrotliEncoderParams::default()).unwrap();
        out
    }

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::CONTENT_ENCODING, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn every_header_and_every_item_is_read() {
        assert_eq!(codings(&headers(&["identity", "gzip"])), Ok(vec![Coding::Gzip]));
        assert_eq!(
            codings(&headers(&["Deflate , X-GZIP", ",br,"])),
            Ok(vec![Coding::Deflate, Coding::Gzip, Coding::Brotli])
        );
        assert_eq!(codings(&headers(&[])), Ok(vec![]));
        assert_eq!(codings(&headers(&["gzip", "zstd"])), Err(DecodeError::Unsupported("zstd".into())));
    }

    #[test]
    fn each_coding_is_undone() {
        let body = b"{\"code\":\"ProjectNotFound\"}";
        for (coding, data) in [
            (Coding::Gzip, gzip(body)),
            (Coding::Deflate, zlib(body)),
            (Coding::Deflate, raw_deflate(body)),
            (Coding::Brotli, br(body)),
        ] {
            assert_eq!(&decode(Bytes::from(data), &[coding], 1024).unwrap()[..], body, "{coding:?}");
        }
    }

    #[test]
    fn stacked_codings_are_undone_last_first() {
        // `Content-Encoding: deflate, gzip`: deflate was applied first, gzip last.
        let data = gzip(&zlib(b"secret"));
        assert_eq!(&decode(Bytes::from(data), &[Coding::Deflate, Coding::Gzip], 1024).unwrap()[..], b"secret");
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let data = gzip(&vec![b'a'; 10 * 1024 * 1024]);
        assert!(data.len() < 64 * 1024);
        assert_eq!(decode(Bytes::from(data), &[Coding::Gzip], 1024 * 1024), Err(DecodeError::TooLarge(1024 * 1024)));
    }

    #[test]
    fn corrupt_data_is_an_error() {
        assert_eq!(
            decode(Bytes::from_static(b"\x1f\x8bnot gzip"), &[Coding::Gzip], 1024),
            Err(DecodeError::Corrupt(Coding::Gzip))
        );
        assert!(decode(Bytes::from_static(b"plain text"), &[Coding::Brotli], 1024).is_err());
    }
}
