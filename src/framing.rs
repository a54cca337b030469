//! HTTP message framing the gateway enforces itself, whatever hyper lets through: request
//! transfer codings other than `chunked` are refused, and no answer to `HEAD` carries a body.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response};
use http_body::Body as _;

use crate::body::{self, Body};
use crate::error::GatewayError;

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
