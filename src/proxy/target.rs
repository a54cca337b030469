//! HTTP message framing the gateway enforces itself, whatever hyper lets through: only the
//! methods of Palette's API are forwarded (and no header overrides them or the path), request
//! transfer codings other than `chunked` are
//! refused, an upstream protocol switch nobody asked for is not relayed, and no answer to
//! `HEAD` carries a body.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, Version};
use http_body::Body as _;

use crate::body::{self, Body, BodyStats};
use crate::config::ServerLimits;
use crate::error::GatewayError;

/// The request's framing, checked before any decision: Palette's methods only, no override
/// headers, `chunked` the only transfer coding, a declared body within `max_request_body`
/// (413), origin-form targets only.
pub(crate) fn check(parts: &http::request::Parts, limits: &ServerLimits) -> Result<(), GatewayError> {
    check_method(&parts.method)?;
    check_overrides(&parts.headers)?;
    check_transfer_encoding(&parts.headers)?;
    let max_body = limits.max_request_body;
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(GatewayError::PayloadTooLarge(max_body));
    }
    // HTTP/2 always carries :authority; in HTTP/1 an authority means absolute-form, which a
    // reverse proxy must not follow to another host.
    if parts.version < Version::HTTP_2 && parts.uri.authority().is_some() {
        return Err(GatewayError::BadRequest(
            "absolute-form request targets are not accepted: send origin-form (/v1/...)".into(),
        ));
    }
    Ok(())
}

/// The request body under its caps, buffered or streamed: past `max_request_body` it fails
/// (413), and a body that stops arriving fails after `request_body_timeout` (408), so a
/// declared-but-unsent body never holds an in-flight slot.
pub(crate) fn cap_body(body: Body, limits: &ServerLimits, stats: &Arc<BodyStats>) -> Body {
    // A body that has already ended (most requests have none) has nothing to cap or time.
    if http_body::Body::is_end_stream(&body) {
        return body;
    }
    let body = body::IdleTimeout::request(body, limits.request_body_timeout, stats.clone()).into_body();
    http_body_util::BodyExt::boxed_unsync(body::Capped::new(body, limits.max_request_body, stats.clone()))
}

/// The methods of Palette's REST API, the only ones the gateway forwards (the `Allow` header
/// of its 405).
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Refuses every method outside Palette's set: `TRACE`/`TRACK` would have a server echo the
/// request back, the upstream credential the gateway added included, in a 2xx body nothing
/// scrubs; `CONNECT` asks for a tunnel; unknown methods and other spellings (`get`, `Post`:
/// methods are case-sensitive) are names no `allow` rule, route or credential-endpoint entry
/// is written for, so they are refused before any rule sees them.
pub fn check_method(method: &Method) -> Result<(), GatewayError> {
    const FORWARDED: [Method; 7] =
        [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::OPTIONS];
    if FORWARDED.contains(method) {
        return Ok(());
    }
    // A method is a token (visible ASCII), but it can be long: the answer shows a bounded part.
    Err(GatewayError::MethodNotAllowed { method: method.as_str().chars().take(32).collect(), allowed: ALLOWED_METHODS })
}

/// Headers by which some servers and frameworks take another method or path than the request
/// line's. A rule checks the request's own method and path, so one of these could turn an
/// allowed `POST /v1/dashboard/...` into a `DELETE`, or an allowed path into another, behind
/// every rule's back if anything in front of or inside Palette honours it.
// Names, not strings: a lookup by `&str` parses the name again on every request.
static OVERRIDES: [HeaderName; 5] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
];

/// Refuses a request carrying a method or URL override header (see [`OVERRIDES`]): 400 naming
/// it, since dropping it silently would run another method than the client meant.
pub fn check_overrides(headers: &HeaderMap) -> Result<(), GatewayError> {
    // One pass over the names present (a request has few): five hashed lookups cost more
    // (issue 14: 780 instructions per request); the server's header limits bound the pass.
    match headers.keys().find(|name| OVERRIDES.contains(name)) {
        None => Ok(()),
        Some(name) => Err(GatewayError::BadRequest(format!(
            "the {name} header is not accepted: the gateway's rules apply to the request's own method and path, so send those"
        ))),
    }
}

/// Refuses an upstream answer that is not final: hyper's client passes on a `101 Switching
/// Protocols` (it skips other 1xx, `103 Early Hints` included), and the gateway never forwards
/// `Upgrade`, so a 101 is an answer to a question nobody asked. Relayed, it would switch the
/// client's connection to whatever Palette (or whoever answers for it) speaks next.
pub fn check_upstream_status(resp: Response<Body>) -> Result<Response<Body>, GatewayError> {
    if resp.status().is_informational() {
        return Err(GatewayError::UpstreamError(format!(
            "the upstream answered {} to a request that asked for no protocol switch",
            resp.status()
        )));
    }
    Ok(resp)
}

/// Refuses a request whose transfer codings are anything but exactly one `chunked` (RFC 9112
/// §6.1: a server that does not understand a transfer coding answers 501). hyper's HTTP/1
/// server decodes `gzip, chunked` as chunked and leaves the gzip bytes in the body, which the
/// gateway would then forward labelled as nothing; HTTP/2 forbids the header outright.
pub fn check_transfer_encoding(headers: &HeaderMap) -> Result<(), GatewayError> {
    let mut values = headers.get_all(header::TRANSFER_ENCODING).iter();
    let Some(first) = values.next() else {
        return Ok(());
    };
    let single = values.next().is_none();
    if single && first.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
        return Ok(());
    }
    let sent: Vec<String> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).chars().take(64).collect())
        .collect();
    Err(GatewayError::NotImplemented(format!(
        "Transfer-Encoding: {} is not supported: the gateway accepts only `Transfer-Encoding: chunked` (send compressed bodies with Content-Encoding)",
        sent.join(", ")
    )))
}

/// Takes the body off an answer to `HEAD` (RFC 9110 §9.3.2), whoever made it: hyper's HTTP/2
/// server would send it in DATA frames, which clients reject as a protocol error. A body the
/// gateway made itself keeps its length as `Content-Length`, as the GET would have it.
pub fn strip_head_body(method: &Method, resp: Response<Body>) -> Response<Body> {
    if method != Method::HEAD || resp.body().is_end_stream() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    if let Some(len) = body.size_hint().exact() {
        parts.headers.entry(header::CONTENT_LENGTH).or_insert_with(|| HeaderValue::from(len));
    }
    Response::from_parts(parts, body::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn te(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::TRANSFER_ENCODING, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_palettes_methods_pass() {
        for ok in ALLOWED_METHODS.split(", ") {
            assert!(check_method(&Method::from_bytes(ok.as_bytes()).unwrap()).is_ok(), "{ok}");
        }
        for bad in ["TRACE", "TRACK", "CONNECT", "BREW", "get", "Post", "PROPFIND", "M-SEARCH"] {
            let err = check_method(&Method::from_bytes(bad.as_bytes()).unwrap()).unwrap_err();
            assert_eq!(err.status_and_code().0, 405, "{bad}");
            assert!(err.to_string().contains(bad), "{err}");
        }
        let long = "X".repeat(200);
        let err = check_method(&Method::from_bytes(long.as_bytes()).unwrap()).unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
    }

    #[test]
    fn method_and_url_overrides_are_refused() {
        for name in ["x-http-method-override", "x-http-method", "x-method-override", "x-original-url", "x-rewrite-url"]
        {
            let mut h = HeaderMap::new();
            // Any spelling: header names are case-insensitive.
            h.insert(
                HeaderName::from_bytes(name.to_uppercase().as_bytes()).unwrap(),
                HeaderValue::from_static("DELETE"),
            );
            let err = check_overrides(&h).unwrap_err();
            assert_eq!(err.status_and_code().0, 400);
            assert!(err.to_string().contains(name), "{err}");
        }
        assert!(check_overrides(&HeaderMap::new()).is_ok());
    }

    #[test]
    fn an_override_among_many_headers_is_found() {
        let mut h = HeaderMap::new();
        for i in 0..60 {
            h.insert(HeaderName::from_bytes(format!("x-other-{i}").as_bytes()).unwrap(), HeaderValue::from_static("1"));
        }
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        // Names that only share a prefix with an override are not one.
        h.insert("x-http-method-overrides", HeaderValue::from_static("DELETE"));
        h.insert("x-original", HeaderValue::from_static("/v1/x"));
        assert!(check_overrides(&h).is_ok());
        h.append("x-rewrite-url", HeaderValue::from_static("/v1/auth/authenticate"));
        let err = check_overrides(&h).unwrap_err();
        assert!(err.to_string().contains("x-rewrite-url"), "{err}");
    }

    #[test]
    fn a_protocol_switch_from_upstream_is_refused() {
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        let err = check_upstream_status(resp).unwrap_err();
        assert_eq!(err.status_and_code(), (http::StatusCode::BAD_GATEWAY, "UpstreamError"));
        assert!(check_upstream_status(Response::new(body::empty())).is_ok());
    }

    #[test]
    fn only_a_single_chunked_is_accepted() {
        for ok in [&[][..], &["chunked"], &["Chunked"], &[" CHUNKED "]] {
            assert!(check_transfer_encoding(&te(ok)).is_ok(), "{ok:?}");
        }
        for bad in [
            &["gzip, chunked"][..],
            &["gzip,chunked"],
            &["gzip", "chunked"],
            &["chunked", "chunked"],
            &["chunked, chunked"],
            &["identity"],
            &["gzip"],
            &[""],
        ] {
            let err = check_transfer_encoding(&te(bad)).unwrap_err();
            assert_eq!(err.status_and_code().0, 501, "{bad:?}");
            assert!(err.to_string().contains("Transfer-Encoding"), "{err}");
        }
    }

    #[test]
    fn head_answers_lose_their_body_and_keep_its_length() {
        let resp = Response::new(body::full("{\"code\":\"Forbidden\"}"));
        let out = strip_head_body(&Method::HEAD, resp);
        assert!(out.body().is_end_stream());
        assert_eq!(out.headers()[header::CONTENT_LENGTH], "20");
        // A GET keeps its body.
        let out = strip_head_body(&Method::GET, Response::new(body::full("x")));
        assert!(!out.body().is_end_stream());
    }
}
