//! What crosses the gateway in each direction: hop-by-hop headers dropped both ways, client
//! credentials and forwarding headers replaced, `Set-Cookie` withheld, and upstream error
//! bodies scrubbed of any upstream secret they echo.

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::body::{self, Body};

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1, plus the
/// non-standard ones proxies still see).
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Client headers that must never reach Palette: the client's credentials, and headers the
/// gateway sets itself (a client could otherwise spoof them). `ProjectUid` is among them: the
/// scope step has read (and checked) the client's, and the decided one is set again last.
fn is_client_only(name: &str) -> bool {
    matches!(
        name,
        "apikey"
            | "authorization"
            | "cookie"
            | "host"
            | "forwarded"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "x-real-ip"
            | "x-request-id"
            | crate::scope::PROJECT_UID
    )
}

/// Largest upstream error body the gateway reads to scrub; larger ones are withheld.
const MAX_ERROR_BODY: usize = 1024 * 1024;

/// Removes every header `drop` picks and every header the `Connection` header names. One pass
/// over the (few) headers present, then removals only for what is there: cheaper than trying
/// to remove each name of a fixed list.
fn strip(headers: &mut HeaderMap, drop: impl Fn(&str) -> bool) {
    let mut doomed: Vec<HeaderName> = headers.keys().filter(|n| drop(n.as_str())).cloned().collect();
    for v in headers.get_all(header::CONNECTION) {
        let Ok(v) = v.to_str() else { continue };
        doomed.extend(v.split(',').filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok()));
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    strip(headers, is_hop_by_hop);
}

/// The request headers the gateway decides, whatever the client sent.
#[derive(Debug, Clone, Copy)]
pub struct Decided<'a> {
    /// `X-Forwarded-For`: the client's address.
    pub forwarded_for: &'a HeaderValue,
    /// `X-Forwarded-Proto`: `https` when the client connection is TLS.
    pub tls: bool,
    /// `X-Request-Id`.
    pub request_id: &'a HeaderValue,
    /// `ProjectUid`, as the scope step decided (`None`: tenant scope, no header).
    pub project: Option<&'a HeaderValue>,
}

/// Prepares a client's headers for the upstream: first every removal (hop-by-hop headers,
/// those `Connection` names, client-only ones), then the headers the gateway decides, so no
/// `Connection: ProjectUid` (or `X-Request-Id`, ...) can take one away. The upstream credential
/// is added after this, per attempt, and `Host` comes from the upstream URI.
pub fn request_headers(headers: &mut HeaderMap, decided: &Decided<'_>) {
    strip(headers, |n| is_hop_by_hop(n) || is_client_only(n));
    headers.insert(X_FORWARDED_FOR.clone(), decided.forwarded_for.clone());
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(if decided.tls { "https" } else { "http" }));
    headers.insert(X_REQUEST_ID.clone(), decided.request_id.clone());
    if let Some(project) = decided.project {
        headers.insert(HeaderName::from_static(crate::scope::PROJECT_UID), project.clone());
    }
}

/// Prepares the upstream's headers for the client.
pub fn response_headers(headers: &mut HeaderMap) {
    strip(headers, |n| is_hop_by_hop(n) || n == "set-cookie");
}

/// For an error answer, replaces every occurrence of an upstream secret in the body with
/// `[redacted]`. An error body that cannot be checked (compressed, or over 1 MiB) is
/// replaced by a Palette-shaped note rather than passed on unchecked.
pub async fn scrub_error(resp: Response<Body>, secrets: &[&str], request_id: &str) -> Response<Body> {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) || secrets.iter().all(|s| s.is_empty()) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let encoded =
        parts.headers.get(header::CONTENT_ENCODING).is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let bytes = if encoded { None } else { body::collect_limited(body, MAX_ERROR_BODY).await.ok() };
    let Some(bytes) = bytes else {
        return withheld(status, request_id);
    };
    let scrubbed = redact(bytes, secrets);
    parts.headers.remove(header::CONTENT_LENGTH);
    for value in parts.headers.values_mut() {
        if secrets.iter().any(|s| !s.is_empty() && contains(value.as_bytes(), s.as_bytes())) {
            *value = HeaderValue::from_static("[redacted]");
        }
    }
    Response::from_parts(parts, body::full(scrubbed))
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
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Replaces each secret's occurrences with `[redacted]`.
fn redact(bytes: Bytes, secrets: &[&str]) -> Bytes {
    let mut text = bytes.to_vec();
    for secret in secrets.iter().map(|s| s.as_bytes()).filter(|s| !s.is_empty()) {
        if !contains(&text, secret) {
            continue;
        }
        let mut out = Vec::with_capacity(text.len());
        let mut i = 0;
        while i < text.len() {
            if text[i..].starts_with(secret) {
                out.extend_from_slice(b"[redacted]");
                i += secret.len();
            } else {
                out.push(text[i]);
                i += 1;
            }
        }
        text = out;
    }
    Bytes::from(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn hop_by_hop_and_connection_listed_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret-hop"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn request_headers_replace_client_controlled_values() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("apikey", "local"),
            ("authorization", "Bearer local"),
            ("cookie", "a=b"),
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=x"),
            ("host", "evil"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        request_headers(&mut h, &decided(None));
        assert!(
            h.get("apikey").is_none()
                && h.get("authorization").is_none()
                && h.get("cookie").is_none()
                && h.get("host").is_none()
        );
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-request-id"], "rid");
        assert!(h.get("forwarded").is_none());
    }

    fn decided(project: Option<&'static HeaderValue>) -> Decided<'static> {
        static FOR: HeaderValue = HeaderValue::from_static("10.1.2.3");
        static RID: HeaderValue = HeaderValue::from_static("rid");
        Decided { forwarded_for: &FOR, tls: true, request_id: &RID, project }
    }

    #[test]
    fn connection_cannot_remove_what_the_gateway_decides() {
        static P001: HeaderValue = HeaderValue::from_static("p001");
        for connection in [
            "keep-alive, ProjectUid",
            "PROJECTUID",
            "close,projectuid , x-request-id",
            "X-Request-Id, X-Forwarded-For, X-Forwarded-Proto, Host, ApiKey, Authorization",
        ] {
            for project in [Some(&P001), None] {
                let mut h = HeaderMap::new();
                h.insert("connection", HeaderValue::from_static(connection));
                h.append("projectuid", HeaderValue::from_static("p001"));
                h.append("projectuid", HeaderValue::from_static("evil"));
                h.insert("x-request-id", HeaderValue::from_static("client-rid"));
                h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
                h.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
                h.insert("apikey", HeaderValue::from_static("local"));
                request_headers(&mut h, &decided(project));
                let all = |n: &str| h.get_all(n).iter().map(|v| v.to_str().unwrap().to_string()).collect::<Vec<_>>();
                assert_eq!(all("projectuid"), project.map(|_| "p001".to_string()).into_iter().collect::<Vec<_>>());
                assert_eq!(all("x-request-id"), ["rid"], "{connection}");
                assert_eq!(all("x-forwarded-for"), ["10.1.2.3"], "{connection}");
                assert_eq!(all("x-forwarded-proto"), ["https"], "{connection}");
                assert!(h.get("apikey").is_none() && h.get("connection").is_none(), "{connection}");
            }
        }
    }

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

    #[tokio::test]
    async fn compressed_error_bodies_are_withheld() {
        let resp = Response::builder()
            .status(403)
            .header("content-encoding", "gzip")
            .body(body::full(Bytes::from_static(b"\x1f\x8b...")))
            .unwrap();
        let out = scrub_error(resp, &["SECRET"], "r").await;
        assert_eq!(out.status(), 403);
        let b = out.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&b).contains("withheld"));
    }
}
