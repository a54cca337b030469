//! The request id: the client's `X-Request-Id` when it is a sane token, else a fresh one. It
//! names the request in every log line, in the gateway's own error bodies and upstream.

use http::HeaderValue;

use crate::proxy::hygiene::X_REQUEST_ID;

/// The request's id, set as a request extension by the outermost layer.
#[derive(Debug, Clone)]
pub(crate) struct RequestId(pub(crate) HeaderValue);

impl RequestId {
    /// The id as text (always visible ASCII).
    pub(crate) fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

/// Keeps a client's `X-Request-Id` when it is a sane token, else makes one. Either way the value
/// is marked "never indexed" for HPACK (`set_sensitive`; it is not a secret): it is new on every
/// request, so in an HTTP/2 connection's header table (the answer's, and the upstream request's
/// when that hop is h2) each id would only evict an entry that could be reused, and cost the
/// encoder a walk of every earlier id's chain. HTTP/1 writes the flag nowhere.
pub(crate) fn assign(headers: &http::HeaderMap) -> RequestId {
    let mut id = pick(headers);
    id.0.set_sensitive(true);
    id
}

fn pick(headers: &http::HeaderMap) -> RequestId {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.:+=/".contains(c)) {
            return RequestId(v.clone());
        }
    }
    let id: u128 = rand::random();
    let mut hex = [0u8; 32];
    for (i, byte) in id.to_be_bytes().iter().enumerate() {
        hex[2 * i] = b"0123456789abcdef"[usize::from(byte >> 4)];
        hex[2 * i + 1] = b"0123456789abcdef"[usize::from(byte & 0xf)];
    }
    // 32 hex digits are always a valid header value. Owned by a shared `Bytes` from the start:
    // the id is cloned into the upstream request, the answer and the log, and a plain copy
    // would take a second allocation on its first clone (issue 14).
    RequestId(
        HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(hex)).unwrap_or_else(|_| HeaderValue::from_static("0")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_client_id_is_kept_and_others_replaced() {
        let mut h = http::HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(assign(&h).as_str(), "abc-123");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("a b"));
        let fresh = assign(&h);
        assert_eq!(fresh.as_str().len(), 32);
        assert!(fresh.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
    }

    /// Kept or fresh, the id goes out as an HPACK "never indexed" literal over HTTP/2.
    #[test]
    fn ids_are_never_indexed_by_hpack() {
        let mut h = http::HeaderMap::new();
        assert!(assign(&h).0.is_sensitive(), "a fresh id");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        let kept = assign(&h);
        assert_eq!(kept.as_str(), "abc-123");
        assert!(kept.0.is_sensitive(), "the client's id");
    }
}
