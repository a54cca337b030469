//! Request hygiene: what of a client's request may cross to Palette. Hop-by-hop headers and
//! those `Connection` names dropped, client credentials and forwarding headers replaced by the
//! ones the gateway decides. The answer's side is in [`crate::proxy::response`].

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue};

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1, plus the
/// non-standard ones proxies still see).
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
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
            | crate::proxy::scope::PROJECT_UID
    )
}

/// Header names to remove, kept on the stack for the usual few (issue 14: an allocation each
/// time otherwise).
type Doomed = smallvec::SmallVec<[HeaderName; 8]>;

/// Removes every header `drop` picks and every header the `Connection` header names. One pass
/// over the (few) headers present, then removals only for what is there: cheaper than trying
/// to remove each name of a fixed list.
pub(crate) fn strip(headers: &mut HeaderMap, drop: impl Fn(&str) -> bool) {
    strip_values(headers, |name, _| drop(name.as_str()));
}

/// [`strip`], with a verdict on each value: a name goes whole when any of its values is picked.
fn strip_values(headers: &mut HeaderMap, mut drop: impl FnMut(&HeaderName, &HeaderValue) -> bool) {
    // On the stack: a client's request always loses a few (its credential at least). A name's
    // values come one after another, so a name is listed once.
    let mut doomed: Doomed = Doomed::new();
    for (name, value) in headers.iter() {
        if doomed.last() != Some(name) && drop(name, value) {
            doomed.push(name.clone());
        }
    }
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
    /// The local key the client authenticated with (the key bytes as presented in `ApiKey` or
    /// `Authorization: Bearer`; `None`: it presented none). Every header whose value holds it
    /// goes: a client's own key under another name (`X-Api-Key: <key>`, a `Cookie`-like custom
    /// header) must not reach Palette.
    pub local_key: Option<&'a [u8]>,
}

/// Prepares a client's headers for the upstream: first every removal (hop-by-hop headers,
/// those `Connection` names, client-only ones, any holding the local key), in one pass, then
/// the headers the gateway decides, so no `Connection: ProjectUid` (or `X-Request-Id`, ...) can
/// take one away. The upstream credential is added after this, per attempt, and `Host` comes
/// from the upstream client.
pub fn request_headers(headers: &mut HeaderMap, decided: &Decided<'_>) {
    let key = decided.local_key.filter(|k| !k.is_empty());
    // Only a value at least as long as the key is searched. `memmem::find` rather than a
    // prebuilt `Finder`: on a short header (nearly all) it runs a Rabin-Karp search that costs
    // less than building one (issue 14, measured with callgrind).
    let holds_key = |v: &HeaderValue| {
        let Some(key) = key else { return false };
        let v = v.as_bytes();
        v.len() >= key.len() && (v == key || memchr::memmem::find(v, key).is_some())
    };
    // A client-only header the gateway sets below is not removed first: `insert` replaces every
    // value the client sent, after every removal (one map operation, not two).
    let set_below = |n: &str| match n {
        "x-forwarded-for" | "x-forwarded-proto" | "x-request-id" => true,
        crate::proxy::scope::PROJECT_UID => decided.project.is_some(),
        _ => false,
    };
    strip_values(headers, |n, v| {
        let n = n.as_str();
        is_hop_by_hop(n) || (is_client_only(n) && !set_below(n)) || holds_key(v)
    });
    headers.insert(X_FORWARDED_FOR.clone(), decided.forwarded_for.clone());
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(if decided.tls { "https" } else { "http" }));
    headers.insert(X_REQUEST_ID.clone(), decided.request_id.clone());
    if let Some(project) = decided.project {
        headers.insert(crate::proxy::scope::PROJECT_UID_HEADER.clone(), project.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_local_key_under_another_name_is_removed() {
        for credential in [("apikey", "k-123"), ("authorization", "Bearer k-123")] {
            let mut h = HeaderMap::new();
            h.insert(credential.0, HeaderValue::from_str(credential.1).unwrap());
            h.insert("x-api-key", HeaderValue::from_static("k-123"));
            h.append("x-custom", HeaderValue::from_static("ok"));
            h.append("x-custom", HeaderValue::from_static("token=k-123; more"));
            h.insert("x-fine", HeaderValue::from_static("k-12"));
            assert_eq!(left_after_presented(&mut h), ["x-fine"], "{credential:?}");
        }
        // No key presented: nothing to look for.
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("k-123"));
        assert_eq!(left_after_presented(&mut h), ["x-api-key"]);
    }

    /// As a request goes: the key authentication read, then hygiene; the names left, less
    /// those the gateway sets.
    fn left_after_presented(h: &mut HeaderMap) -> Vec<String> {
        let presented = crate::proxy::auth::presented_key(h).unwrap().map(|(_, p)| p);
        request_headers(h, &Decided { local_key: presented.as_ref().map(|p| p.as_bytes()), ..decided(None) });
        let ours = ["x-forwarded-for", "x-forwarded-proto", "x-request-id"];
        h.keys().map(|n| n.to_string()).filter(|n| !ours.contains(&n.as_str())).collect()
    }

    proptest::proptest! {
        /// Whatever the headers, exactly the values holding the presented key go: the search
        /// made only for values that could hold it never changes the answer.
        #[test]
        fn every_value_holding_the_key_goes_and_no_other(
            key in "[ab]{1,6}",
            values in proptest::collection::vec("[ab;=]{0,12}", 0..6),
        ) {
            let mut h = HeaderMap::new();
            h.insert("apikey", HeaderValue::from_str(&key).unwrap());
            for (i, v) in values.iter().enumerate() {
                h.append(HeaderName::from_bytes(format!("x-h{}", i % 3).as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            }
            let holds = |v: &HeaderValue| v.to_str().unwrap().contains(key.as_str());
            let expected: Vec<String> =
                h.iter().filter(|(_, v)| !holds(v)).map(|(n, _)| n.to_string()).collect();
            // A name goes whole when any of its values holds the key.
            let doomed: Vec<String> = h.iter().filter(|(_, v)| holds(v)).map(|(n, _)| n.to_string()).collect();
            let expected: std::collections::BTreeSet<String> = expected.into_iter().filter(|n| !doomed.contains(n)).collect();
            let left: std::collections::BTreeSet<String> = left_after_presented(&mut h).into_iter().collect();
            proptest::prop_assert_eq!(left, expected);
        }
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
        Decided { forwarded_for: &FOR, tls: true, request_id: &RID, project, local_key: None }
    }

    #[test]
    fn connection_cannot_remove_what_the_gateway_decides() {
        static P001: HeaderValue = HeaderValue::from_static("5ca1ab1e0000000000000001");
        for connection in [
            "keep-alive, ProjectUid",
            "PROJECTUID",
            "close,projectuid , x-request-id",
            "X-Request-Id, X-Forwarded-For, X-Forwarded-Proto, Host, ApiKey, Authorization",
        ] {
            for project in [Some(&P001), None] {
                let mut h = HeaderMap::new();
                h.insert("connection", HeaderValue::from_static(connection));
                h.append("projectuid", HeaderValue::from_static("5ca1ab1e0000000000000001"));
                h.append("projectuid", HeaderValue::from_static("evil"));
                h.insert("x-request-id", HeaderValue::from_static("client-rid"));
                h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
                h.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
                h.insert("apikey", HeaderValue::from_static("local"));
                request_headers(&mut h, &decided(project));
                let all = |n: &str| h.get_all(n).iter().map(|v| v.to_str().unwrap().to_string()).collect::<Vec<_>>();
                assert_eq!(
                    all("projectuid"),
                    project.map(|_| "5ca1ab1e0000000000000001".to_string()).into_iter().collect::<Vec<_>>()
                );
                assert_eq!(all("x-request-id"), ["rid"], "{connection}");
                assert_eq!(all("x-forwarded-for"), ["10.1.2.3"], "{connection}");
                assert_eq!(all("x-forwarded-proto"), ["https"], "{connection}");
                assert!(h.get("apikey").is_none() && h.get("connection").is_none(), "{connection}");
            }
        }
    }
}
