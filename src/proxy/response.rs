//! Response hygiene: what of Palette's answer may reach the client. Hop-by-hop headers and
//! `Set-Cookie` dropped, upstream secrets kept out of answers (headers of every status, decoded
//! error bodies). Runs once per answer, outside the exchange's retries. Trailers are dropped
//! where the upstream body is first wrapped ([`crate::body::IdleTimeout`]).

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::body::{self, Body};
use crate::config::Secret;
use crate::proxy::hygiene::{is_hop_by_hop, strip};

/// Largest upstream error body the gateway reads to scrub; larger ones are withheld.
const MAX_ERROR_BODY: usize = 1024 * 1024;

/// Prepares the upstream's headers for the client.
pub fn response_headers(headers: &mut HeaderMap) {
    strip(headers, |n| is_hop_by_hop(n) || n == "set-cookie");
}

/// Whether [`scrub_error`] reads an answer of this status: an error's.
pub fn is_scrubbed(status: StatusCode) -> bool {
    status.is_client_error() || status.is_server_error()
}

/// For an error answer, replaces every occurrence of an upstream secret in the body with
/// `[redacted]`. A compressed body (every `Content-Encoding` header, every coding in each) is
/// decoded first and passed on decoded, so Palette's error code reaches the client; only a
/// body that cannot be checked (an unknown coding, corrupt data, over 1 MiB compressed or
/// decoded) is replaced by a Palette-shaped note rather than passed on unchecked.
pub async fn scrub_error(resp: Response<Body>, secrets: &[&str], request_id: &str) -> Response<Body> {
    let status = resp.status();
    if !is_scrubbed(status) || secrets.iter().all(|s| s.is_empty()) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(codings) = crate::proxy::decode::codings(&parts.headers) else {
        return withheld(status, request_id);
    };
    let Ok(raw) = body::collect_limited(body, MAX_ERROR_BODY).await else {
        return withheld(status, request_id);
    };
    if raw.is_empty() {
        // Nothing to check (a HEAD answer, a bare status): the headers still describe it.
        return Response::from_parts(parts, body::empty());
    }
    let Ok(decoded) = crate::proxy::decode::decode(raw, &codings, MAX_ERROR_BODY) else {
        return withheld(status, request_id);
    };
    // The body goes out decoded: its coding and length headers no longer describe it (hyper
    // sets the new length from the full body).
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, body::full(redact(decoded, secrets)))
}

fn withheld(status: StatusCode, request_id: &str) -> Response<Body> {
    crate::error::palette_error(
        status,
        "UpstreamError",
        &format!(
            "the upstream answered {status}; its error body was withheld because it could not be checked for secrets"
        ),
        request_id,
    )
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && memchr::memmem::find(hay, needle).is_some()
}

/// Replaces each secret's occurrences with `[redacted]`.
fn redact(bytes: Bytes, secrets: &[&str]) -> Bytes {
    let mut text = bytes;
    for secret in secrets.iter().map(|s| s.as_bytes()).filter(|s| !s.is_empty()) {
        if !contains(&text, secret) {
            continue;
        }
        let mut out = Vec::with_capacity(text.len());
        let mut rest = &text[..];
        while let Some(at) = memchr::memmem::find(rest, secret) {
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(REDACTED);
            rest = &rest[at + secret.len()..];
        }
        out.extend_from_slice(rest);
        text = Bytes::from(out);
    }
    text
}

const REDACTED: &[u8] = b"[redacted]";

/// Replaces every upstream secret found in a response header value (of any status: a 302's
/// `Location`, a 304's `ETag`, any header of a 200) with `[redacted]`, and drops a header
/// whose name holds one. For secrets as text (each search builds its searcher); the exchange
/// calls [`redact_secret_headers`], whose secrets carry theirs.
pub fn redact_headers(headers: &mut HeaderMap, secrets: &[&str]) {
    redact_in(headers, secrets, |b, s| contains(b, s.as_bytes()), |s| s);
}

/// [`redact_headers`] for the secrets the exchange sent, searched with the searcher each one
/// holds. On the hot path for every answer: one search per header and secret long enough to
/// hold it, and no allocation unless something matches.
pub fn redact_secret_headers(headers: &mut HeaderMap, secrets: &[Secret]) {
    redact_in(headers, secrets, |b, s| s.is_in(b), Secret::expose);
}

fn redact_in<S>(headers: &mut HeaderMap, secrets: &[S], holds: impl Fn(&[u8], &S) -> bool, text: impl Fn(&S) -> &str) {
    // A value shorter than a secret cannot hold it: most answer headers are shorter than any
    // credential, and skip the search (issue 14).
    let secrets_in = |b: &[u8]| secrets.iter().any(|s| b.len() >= text(s).len() && holds(b, s));
    let mut doomed: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter_mut() {
        if secrets_in(name.as_str().as_bytes()) {
            doomed.push(name.clone());
        } else if secrets_in(value.as_bytes()) {
            let all: smallvec::SmallVec<[&str; 4]> = secrets.iter().map(&text).collect();
            let redacted = redact(Bytes::copy_from_slice(value.as_bytes()), &all);
            // The secret's bytes became visible ASCII, so the value stays valid; the fallback
            // is only there so that no input can panic.
            let mut new = HeaderValue::from_maybe_shared(redacted).unwrap_or(HeaderValue::from_static("[redacted]"));
            new.set_sensitive(true);
            *value = new;
        }
    }
    for name in doomed {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn set_cookie_never_reaches_clients() {
        let mut h = HeaderMap::new();
        h.insert("set-cookie", HeaderValue::from_static("s=1"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        response_headers(&mut h);
        assert!(h.get("set-cookie").is_none());
        assert!(h.get("content-type").is_some());
    }

    #[test]
    fn redact_replaces_every_occurrence() {
        let out = redact(Bytes::from_static(b"key k-1 and k-1 again"), &["k-1"]);
        assert_eq!(&out[..], b"key [redacted] and [redacted] again");
    }

    #[tokio::test]
    async fn error_bodies_are_scrubbed_and_successes_untouched() {
        let resp = Response::builder().status(401).body(body::full("invalid api key SECRET")).unwrap();
        let out = scrub_error(resp, &["SECRET"], "r").await;
        let b = out.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&b[..], b"invalid api key [redacted]");
        let resp = Response::builder().status(200).body(body::full("SECRET")).unwrap();
        let b = scrub_error(resp, &["SECRET"], "r").await.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&b[..], b"SECRET");
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    async fn text(resp: Response<Body>) -> String {
        String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn unreadable_error_bodies_are_withheld() {
        for (coding, data) in [
            ("gzip", &b"\x1f\x8b... not gzip SECRET"[..]),
            ("zstd", b"\x28\xb5\x2f\xfd SECRET"),
            ("gzip, compress", b"SECRET"),
        ] {
            let resp = Response::builder()
                .status(403)
                .header("content-encoding", coding)
                .body(body::full(Bytes::from_static(data)))
                .unwrap();
            let out = scrub_error(resp, &["SECRET"], "r").await;
            assert_eq!(out.status(), 403);
            let b = text(out).await;
            assert!(b.contains("withheld") && !b.contains("SECRET"), "{coding}: {b}");
        }
    }

    #[tokio::test]
    async fn every_content_encoding_header_is_read() {
        // `identity` first, then `gzip`: the scrubber used to read only the first header.
        let resp = Response::builder()
            .status(401)
            .header("content-encoding", "identity")
            .header("content-encoding", "gzip")
            .header("content-length", "999")
            .body(body::full(gzip(b"{\"code\":\"Unauthorized\",\"message\":\"invalid api key SECRET\"}")))
            .unwrap();
        let out = scrub_error(resp, &["SECRET"], "r").await;
        assert_eq!(out.status(), 401);
        assert!(out.headers().get("content-encoding").is_none());
        assert!(out.headers().get("content-length").is_none());
        let b = text(out).await;
        assert_eq!(b, "{\"code\":\"Unauthorized\",\"message\":\"invalid api key [redacted]\"}");
    }

    #[test]
    fn header_values_of_any_status_lose_secrets() {
        let mut h = HeaderMap::new();
        h.insert("location", HeaderValue::from_static("https://p.example/x?key=SECRET&a=1"));
        h.insert("etag", HeaderValue::from_static("\"SECRET\""));
        h.insert("x-secret", HeaderValue::from_static("TOKEN"));
        h.insert("x-fine", HeaderValue::from_static("ok"));
        redact_headers(&mut h, &["SECRET", "TOKEN", ""]);
        assert_eq!(h["location"], "https://p.example/x?key=[redacted]&a=1");
        assert_eq!(h["etag"], "\"[redacted]\"");
        assert_eq!(h["x-secret"], "[redacted]");
        assert!(h["x-secret"].is_sensitive());
        assert_eq!(h["x-fine"], "ok");
        // A header named after a secret goes.
        let mut h = HeaderMap::new();
        h.insert("secret", HeaderValue::from_static("1"));
        redact_headers(&mut h, &["secret"]);
        assert!(h.is_empty());
    }

    proptest::proptest! {
        /// Whatever the headers and secrets (shorter or longer than a value, empty, one inside
        /// another), no secret survives in a name or a value, and a header that holds none is
        /// left as it was: the same verdict as a plain scan of every window.
        #[test]
        fn no_secret_survives_in_any_header(
            values in proptest::collection::vec("[x-z]{0,12}", 0..6),
            secrets in proptest::collection::vec("[x-z]{0,4}", 0..4),
        ) {
            let held = |b: &[u8], s: &str| !s.is_empty() && b.windows(s.len()).any(|w| w == s.as_bytes());
            let mut h = HeaderMap::new();
            for (i, v) in values.iter().enumerate() {
                h.append(HeaderName::from_bytes(format!("h-{i}").as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            }
            let before = h.clone();
            let held_secrets: Vec<Secret> = secrets.iter().map(|s| Secret::new(s.as_str())).collect();
            let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
            redact_headers(&mut h, &secrets);
            // The exchange's form, with the searchers its secrets hold, says the same.
            let mut with_searchers = before.clone();
            redact_secret_headers(&mut with_searchers, &held_secrets);
            proptest::prop_assert_eq!(&with_searchers, &h);
            proptest::prop_assert_eq!(h.len(), before.len(), "no name here holds a secret");
            for (name, value) in &before {
                let now = &h[name];
                if secrets.iter().any(|s| held(value.as_bytes(), s)) {
                    proptest::prop_assert!(now.as_bytes().windows(10).any(|w| w == REDACTED), "{:?} -> {:?}", value, now);
                    for s in &secrets {
                        // `[redacted]` itself holds none of x-z.
                        proptest::prop_assert!(!held(now.as_bytes(), s), "{:?} still holds {:?}", now, s);
                    }
                } else {
                    proptest::prop_assert_eq!(now, value);
                }
            }
        }
    }
}
