//! The request-path check: every path is validated and normalized once, before any rule sees it.
//!
//! The rule is "one spelling per path": a path that could be read two ways (by the gateway and by
//! Palette's router) is refused rather than guessed at, so no spelling slips past a route, an
//! `allow` rule or the `/v1/auth/**` block. What passes is forwarded byte for byte.

use std::fmt;
use std::sync::Arc;

/// Why a request path was refused (always answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not origin-form: the path does not start with `/`.
    #[error("path must start with '/'")]
    NotAbsolute,
    /// `//` somewhere (a trailing `/` is allowed).
    #[error("path contains an empty segment ('//')")]
    EmptySegment,
    /// A `.` or `..` segment, literal or encoded.
    #[error("path contains a dot-segment ('.' or '..')")]
    DotSegment,
    /// `%2f`, `%5c` or `%2e` in any case: a separator the router might decode.
    #[error("path contains an encoded '/', '\\' or '.' ({0})")]
    EncodedSeparator(String),
    /// A literal `\`, which some servers read as `/`.
    #[error("path contains a backslash")]
    Backslash,
    /// `%` not followed by two hex digits.
    #[error("path contains invalid percent-encoding")]
    InvalidPercentEncoding,
    /// A control character, literal or encoded.
    #[error("path contains an encoded control character")]
    EncodedControl,
    /// `;`: path parameters, which servers strip differently.
    #[error("path contains ';' (path parameters are read differently by different servers)")]
    Semicolon,
}

/// A path that passed [`check`]: normalized (percent-encoded unreserved characters decoded,
/// remaining escapes upper-cased) and split into segments.
#[derive(Clone, PartialEq, Eq)]
pub struct CheckedPath {
    // Shared: a route match, the request log and the cache each keep the path (issue 14).
    path: Arc<str>,
}

impl CheckedPath {
    /// The normalized path, as it is forwarded.
    pub fn as_str(&self) -> &str {
        &self.path
    }

    /// The segments after the leading '/', exactly as forwarded: "/" has none, and a trailing
    /// '/' is a last, empty segment (`/x/` is `["x", ""]`), so no rule mistakes `/x/` for `/x`.
    /// Only the last segment can be empty (the check refuses `//`).
    pub fn segments(&self) -> Segments<'_> {
        Segments { rest: if &*self.path == "/" { None } else { Some(&self.path[1..]) } }
    }

    /// The path left after `prefix` (whole segments), or `None` when it does not start with it.
    /// `/team-a/v1/x` minus `/team-a` is `/v1/x`; `/team-a` minus itself is `/`.
    pub fn strip_prefix(&self, prefix: &str) -> Option<&str> {
        if prefix == "/" {
            return Some(&self.path);
        }
        let rest = self.path.strip_prefix(prefix)?;
        if rest.is_empty() {
            Some("/")
        } else if rest.starts_with('/') {
            Some(rest)
        } else {
            None
        }
    }
}

impl CheckedPath {
    /// Another checked path that is a suffix of this one (from [`CheckedPath::strip_prefix`]),
    /// which is therefore already in checked form.
    pub fn with_path(&self, rest: &str) -> CheckedPath {
        debug_assert!(self.path.ends_with(rest) || rest == "/");
        CheckedPath { path: Arc::from(rest) }
    }
}

impl fmt::Debug for CheckedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

impl fmt::Display for CheckedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path)
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~')
}

/// Checks and normalizes a request path (without its query).
///
/// Refused: a path not starting with '/', empty segments (`//`; a trailing `/` is kept), `;`,
/// dot-segments, a literal backslash, `%2f` `%5c` `%2e` in any case, `%` not followed by two hex
/// digits, and encoded control characters. Encoded unreserved characters (`%41` for `A`) are
/// decoded so that `/v1/%61uth` is matched, and forwarded, as `/v1/auth`.
pub fn check(raw: &str) -> Result<CheckedPath, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if raw == "/" {
        return Ok(CheckedPath { path: "/".into() });
    }
    // Fast path, the shape of every real Palette path: no escapes and nothing that needs a
    // decision byte by byte; only the segment rules remain to check.
    // One pass over the bytes (issue 14): the first segment error is kept, and stands only if
    // no byte asks for the general check (which decides, error included, for everything else).
    let mut error = None;
    let mut start = 1;
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        if b == b'/' {
            error = error.or(segment_error(&bytes[start..i], false));
            start = i + 1;
        } else if !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')) {
            return check_general(raw);
        }
    }
    match error.or(segment_error(&bytes[start..], true)) {
        Some(e) => Err(e),
        None => Ok(CheckedPath { path: Arc::from(raw) }),
    }
}

/// What is wrong with a plain segment: empty (but for the last: a trailing '/'), or a dot
/// segment.
fn segment_error(segment: &[u8], last: bool) -> Option<PathError> {
    match segment {
        b"" if last => None,
        b"" => Some(PathError::EmptySegment),
        b"." | b".." => Some(PathError::DotSegment),
        _ => None,
    }
}

/// A checked path's segments ([`CheckedPath::segments`]). A byte loop, not `str::split`: a
/// path's segments are a few bytes each, and every request splits its path several times (the
/// rules, the credential-endpoint list), where `split`'s searcher costs more per segment than
/// the bytes it looks at (issue 14).
#[derive(Debug, Clone)]
pub struct Segments<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match rest.bytes().position(|b| b == b'/') {
            Some(i) => {
                self.rest = Some(&rest[i + 1..]);
                Some(&rest[..i])
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// The byte-by-byte check every path could take (the fast path above is an optimisation of it
/// for plain paths; a property test holds them equal).
fn check_general(raw: &str) -> Result<CheckedPath, PathError> {
    if raw == "/" {
        return Ok(CheckedPath { path: "/".into() });
    }
    let mut out = String::with_capacity(raw.len());
    let mut segments = raw[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() {
            // A trailing slash is a real spelling (Palette serves `GET /v1/notifications/`);
            // an empty segment anywhere else is not.
            if segments.peek().is_none() {
                out.push('/');
                break;
            }
            return Err(PathError::EmptySegment);
        }
        out.push('/');
        let start = out.len();
        let seg = segment.as_bytes();
        let mut i = 0;
        while i < seg.len() {
            let b = seg[i];
            match b {
                b'%' => {
                    let (hi, lo) = match (seg.get(i + 1), seg.get(i + 2)) {
                        (Some(&h), Some(&l)) => (h, l),
                        _ => return Err(PathError::InvalidPercentEncoding),
                    };
                    let v = match (hex_val(hi), hex_val(lo)) {
                        (Some(h), Some(l)) => h << 4 | l,
                        _ => return Err(PathError::InvalidPercentEncoding),
                    };
                    match v {
                        b'/' | b'\\' | b'.' => {
                            return Err(PathError::EncodedSeparator(
                                String::from_utf8_lossy(&seg[i..i + 3]).into_owned(),
                            ))
                        }
                        0..=0x1f | 0x7f => return Err(PathError::EncodedControl),
                        v if is_unreserved(v) => out.push(v as char),
                        v => {
                            out.push('%');
                            out.push(char::from(b"0123456789ABCDEF"[usize::from(v >> 4)]));
                            out.push(char::from(b"0123456789ABCDEF"[usize::from(v & 0xf)]));
                        }
                    }
                    i += 3;
                }
                b'\\' => return Err(PathError::Backslash),
                // `/v1/auth;x=1/...` is `/v1/auth/...` to servers that strip path parameters.
                b';' => return Err(PathError::Semicolon),
                0..=0x1f | 0x7f => return Err(PathError::EncodedControl),
                _ => {
                    // Non-ASCII cannot reach here through hyper's URI parser; keep bytes as-is.
                    let ch_len = utf8_len(b);
                    out.push_str(&segment[i..(i + ch_len).min(seg.len())]);
                    i += ch_len;
                    continue;
                }
            }
        }
        let normalized = &out[start..];
        if normalized == "." || normalized == ".." {
            return Err(PathError::DotSegment);
        }
    }
    Ok(CheckedPath { path: Arc::from(out) })
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_paths_pass_unchanged() {
        for p in ["/", "/v1/spectroclusters", "/v1/users/auth/tokens/revoke", "/v1/a-b_c~d/x1"] {
            assert_eq!(check(p).unwrap().as_str(), p);
        }
    }

    #[test]
    fn dot_segments_are_refused() {
        for p in ["/v1/./x", "/v1/../auth", "/..", "/v1/x/.", "/v1/%2e%2e/auth", "/v1/.%2e/auth"] {
            assert!(check(p).is_err(), "{p}");
        }
        assert_eq!(check("/v1/..").unwrap_err(), PathError::DotSegment);
        // Dots inside a segment are ordinary characters.
        assert_eq!(check("/v1/a..b/.x").unwrap().as_str(), "/v1/a..b/.x");
    }

    #[test]
    fn encoded_separators_are_refused() {
        for p in ["/v1%2fauth", "/v1%2Fauth", "/v1/a%5cb", "/v1/a%5Cb", "/v1/%2e", "/v1/%2E"] {
            assert!(matches!(check(p), Err(PathError::EncodedSeparator(_))), "{p}");
        }
        assert_eq!(check("/v1\\auth").unwrap_err(), PathError::Backslash);
    }

    #[test]
    fn empty_segments_are_refused() {
        for p in ["//v1", "/v1//x", "/v1//", "///"] {
            assert_eq!(check(p).unwrap_err(), PathError::EmptySegment, "{p}");
        }
    }

    #[test]
    fn trailing_slash_is_kept() {
        let p = check("/v1/notifications/").unwrap();
        assert_eq!(p.as_str(), "/v1/notifications/");
        assert_eq!(p.segments().collect::<Vec<_>>(), vec!["v1", "notifications", ""]);
        assert_eq!(check("/v1/").unwrap().segments().collect::<Vec<_>>(), vec!["v1", ""]);
    }

    #[test]
    fn invalid_percent_encoding_is_refused() {
        for p in ["/v1/%", "/v1/%4", "/v1/%zz", "/v1/%g1/x"] {
            assert_eq!(check(p).unwrap_err(), PathError::InvalidPercentEncoding, "{p}");
        }
        assert_eq!(check("/v1/%00").unwrap_err(), PathError::EncodedControl);
        assert_eq!(check("/v1/%7f").unwrap_err(), PathError::EncodedControl);
    }

    #[test]
    fn unreserved_escapes_are_decoded_others_uppercased() {
        assert_eq!(check("/v1/%61uth").unwrap().as_str(), "/v1/auth");
        assert_eq!(check("/v1/a%3ab%20c").unwrap().as_str(), "/v1/a%3Ab%20c");
        assert_eq!(check("/x%2D%5f%7E").unwrap().as_str(), "/x-_~");
    }

    #[test]
    fn path_parameters_are_refused() {
        for p in ["/v1/auth;x=1/authenticate", "/v1/users/..;/auth", "/v1/users/.;/x", "/v1/a;"] {
            assert_eq!(check(p).unwrap_err(), PathError::Semicolon, "{p}");
        }
        // Encoded, it is an ordinary character of the segment and stays encoded.
        assert_eq!(check("/v1/a%3bb").unwrap().as_str(), "/v1/a%3Bb");
    }

    #[test]
    fn not_absolute_is_refused() {
        assert_eq!(check("v1/x").unwrap_err(), PathError::NotAbsolute);
        assert_eq!(check("").unwrap_err(), PathError::NotAbsolute);
        assert_eq!(check("*").unwrap_err(), PathError::NotAbsolute);
    }

    #[test]
    fn strip_prefix_takes_whole_segments() {
        let p = check("/team-a/v1/x").unwrap();
        assert_eq!(p.strip_prefix("/team-a"), Some("/v1/x"));
        assert_eq!(p.strip_prefix("/team"), None);
        assert_eq!(check("/team-a").unwrap().strip_prefix("/team-a"), Some("/"));
        assert_eq!(check("/team-ab/v1").unwrap().strip_prefix("/team-a"), None);
        assert_eq!(p.strip_prefix("/"), Some("/team-a/v1/x"));
    }

    #[test]
    fn segments_split() {
        let p = check("/v1/a/b").unwrap();
        assert_eq!(p.segments().collect::<Vec<_>>(), vec!["v1", "a", "b"]);
        assert_eq!(check("/").unwrap().segments().count(), 0);
    }

    proptest! {
        /// Whatever goes in, a checked path is idempotent under check and has no way to hide a
        /// separator or dot-segment.
        #[test]
        fn checked_paths_are_canonical(raw in "/[a-zA-Z0-9%./\\\\_~-]{0,40}") {
            if let Ok(p) = check(&raw) {
                let again = check(p.as_str()).unwrap();
                prop_assert_eq!(again.as_str(), p.as_str());
                let lower = p.as_str().to_ascii_lowercase();
                prop_assert!(!lower.contains("%2f") && !lower.contains("%2e") && !lower.contains("%5c"));
                prop_assert!(!p.as_str().contains("//"));
                // Only a trailing '/' gives an empty segment, and only as the last one.
                let segs: Vec<&str> = p.segments().collect();
                prop_assert!(segs.iter().rev().skip(1).all(|s| !s.is_empty()));
                prop_assert_eq!(segs.last().is_some_and(|s| s.is_empty()), p.as_str().len() > 1 && p.as_str().ends_with('/'));
                for s in p.segments() {
                    prop_assert!(s != "." && s != "..");
                }
            }
        }

        #[test]
        fn fast_path_agrees_with_the_general_check(raw in "/[a-zA-Z0-9/._~-]{0,40}") {
            prop_assert_eq!(check(&raw), check_general(&raw));
        }

        #[test]
        fn segments_are_the_split_of_the_path(raw in "/[a-zA-Z0-9/._~-]{0,40}") {
            if let Ok(p) = check(&raw) {
                let split: Vec<&str> = if p.as_str() == "/" { Vec::new() } else { p.as_str()[1..].split('/').collect() };
                prop_assert_eq!(p.segments().collect::<Vec<_>>(), split);
            }
        }

        #[test]
        fn never_panics(raw in "\\PC{0,64}") {
            let _ = check(&raw);
        }
    }
}
