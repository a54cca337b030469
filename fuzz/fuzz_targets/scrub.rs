//! The response scrubber (`forward::scrub_error` for error bodies, then `forward::redact_headers`
//! for every answer's headers, as `proxy::exchange::finish` runs them) on arbitrary upstream answers: it
//! never panics, no answer's header name or value holds an upstream secret, and what the client
//! gets back from a 4xx/5xx never holds one either: not in the body as sent, and not in the body
//! a client would read after undoing its `Content-Encoding` (gzip, deflate, br, in any number of
//! headers and values: a client decodes a truncated stream as far as it goes, so this one does
//! too). 2xx bodies stream unscrubbed by design and are not checked.
//!
//! Secrets are shaped like real ones (API keys, JWTs): 20+ characters of `A-Z a-z 0-9 . _ ~ + / = -`
//! with a letter and a digit, so that no secret is part of the `[redacted]` marker that replaces
//! it or of the gateway's own words (`application/json`, its `UpstreamError` message).
//!
//! Input (bytes): line 1 the status; line 2 response headers, `name=value` separated by `|`;
//! line 3 the secrets, separated by `|`; the rest is the body. In line 2 and the body, `$0`..`$9`
//! stand for the secrets.
#![no_main]

use std::io::Read;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use palette_gateway::{body, forward};

/// Most decoded bytes looked at (a client would stop somewhere too; this bounds the target).
const DECODE_LIMIT: usize = 4 << 20;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => panic!("no runtime: {e}"),
    })
}

fn substitute(text: &[u8], secrets: &[&str]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'$' {
            if let Some(s) = text.get(i + 1).and_then(|d| d.is_ascii_digit().then(|| usize::from(d - b'0'))) {
                if let Some(secret) = secrets.get(s) {
                    out.extend_from_slice(secret.as_bytes());
                    i += 2;
                    continue;
                }
            }
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Reads what a decoder yields before it ends or fails, at most [`DECODE_LIMIT`] bytes.
fn read_partial(mut r: impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while out.len() < DECODE_LIMIT {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// Every way a client could read `bytes` labelled with `codings` (applied in order, so undone in
/// reverse); `None` for a coding no client decodes.
fn decodings(bytes: &[u8], codings: &[String]) -> Option<Vec<Vec<u8>>> {
    let mut layers = vec![bytes.to_vec()];
    for coding in codings.iter().rev() {
        let mut next = Vec::new();
        for layer in &layers {
            match coding.as_str() {
                "gzip" | "x-gzip" => next.push(read_partial(flate2::read::MultiGzDecoder::new(&layer[..]))),
                // "deflate" is zlib-wrapped by the RFC, raw deflate by some servers: clients try both.
                "deflate" => {
                    next.push(read_partial(flate2::read::ZlibDecoder::new(&layer[..])));
                    next.push(read_partial(flate2::read::DeflateDecoder::new(&layer[..])));
                }
                "br" => next.push(read_partial(brotli_decompressor::Decompressor::new(&layer[..], 4096))),
                _ => return None,
            }
        }
        layers = next;
    }
    Some(layers)
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |&b| b == b'\n');
    let (Some(status), Some(header_line), Some(secret_line)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let body_raw = parts.next().unwrap_or_default();
    let Some(status) = std::str::from_utf8(status).ok().and_then(|s| s.trim().parse::<u16>().ok()) else { return };
    let Ok(status) = http::StatusCode::from_u16(status) else { return };
    let Ok(secret_line) = std::str::from_utf8(secret_line) else { return };
    let secrets: Vec<&str> = secret_line
        .split('|')
        .filter(|s| {
            s.len() >= 20
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._~+/=-".contains(&b))
                && s.bytes().any(|b| b.is_ascii_digit())
                && s.bytes().any(|b| b.is_ascii_alphabetic())
        })
        .collect();

    let mut resp = Response::new(body::full(Bytes::from(substitute(body_raw, &secrets))));
    *resp.status_mut() = status;
    for pair in header_line.split(|&b| b == b'|') {
        let Some(eq) = pair.iter().position(|&b| b == b'=') else { continue };
        let value = substitute(&pair[eq + 1..], &secrets);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(&pair[..eq]), HeaderValue::from_bytes(&value)) {
            resp.headers_mut().append(n, v);
        }
    }

    let rt = runtime();
    // As `proxy::exchange::finish` does: the error body is scrubbed, then every answer's headers.
    let mut out = rt.block_on(forward::scrub_error(resp, &secrets, "fuzz-rid"));
    forward::redact_headers(out.headers_mut(), &secrets);
    let (head, out_body) = out.into_parts();
    for (name, value) in &head.headers {
        for s in &secrets {
            assert!(!contains(name.as_str().as_bytes(), s.as_bytes()), "secret {s:?} in a header name");
            assert!(!contains(value.as_bytes(), s.as_bytes()), "secret {s:?} in response header {name}");
        }
    }
    let Ok(collected) = rt.block_on(out_body.collect()) else { return };
    let sent = collected.to_bytes();
    if !(status.is_client_error() || status.is_server_error()) {
        return;
    }

    let codings: Vec<String> = head
        .headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    let mut readings = vec![sent.to_vec()];
    if !codings.is_empty() {
        if let Some(decoded) = decodings(&sent, &codings) {
            readings.extend(decoded);
        }
    }
    for reading in &readings {
        for s in &secrets {
            assert!(
                !contains(reading, s.as_bytes()),
                "secret {s:?} readable in the {status} body (codings {codings:?})"
            );
        }
    }
});
