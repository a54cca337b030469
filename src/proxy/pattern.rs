//! `allow` rules: `METHOD /path` patterns where `*` is one segment and `**` the rest.
//!
//! Patterns are compiled once at config load; matching is a walk over the checked path's
//! segments with no allocation. A path is matched exactly as it is forwarded: a trailing '/'
//! is a last, empty segment, so `GET /x` does not match `/x/` (write `GET /x/` for that) while
//! `GET /x/**` matches `/x`, `/x/` and everything below. A `GET` rule also covers `HEAD`,
//! which is a `GET` without the body (`curl -I`).

use http::Method;

/// Why an `allow` pattern did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Not two words, `METHOD /path`.
    #[error("expected \"METHOD /path\" (e.g. \"GET /v1/**\"), got {0:?}")]
    Shape(String),
    /// A method that is not upper-case letters (or `*`).
    #[error("invalid method {0:?}")]
    Method(String),
    /// The path pattern does not start with `/`.
    #[error("path pattern must start with '/'")]
    NotAbsolute,
    /// `**` before the last segment.
    #[error("'**' may only be the last segment")]
    DoubleStarNotLast,
    /// `*` inside a segment (`a*`).
    #[error("'*' must be a whole segment (got {0:?})")]
    PartialWildcard(String),
    /// `//` in the pattern.
    #[error("empty segment in path pattern (only a trailing '/' is allowed)")]
    EmptySegment,
    /// A literal segment no checked path can have (`..`, `%61`).
    #[error("path pattern segment {0:?} would never match a checked path")]
    Unmatchable(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Literal(String),
    One,
    Rest,
}

/// One compiled `allow` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    /// `None` for `*` (any method).
    method: Option<Method>,
    segments: Vec<Seg>,
    source: String,
}

impl AllowRule {
    /// Parses `"GET /v1/**"`.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let mut parts = text.split_whitespace();
        let (Some(method), Some(path), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(PatternError::Shape(text.to_string()));
        };
        let method = if method == "*" {
            None
        } else {
            if !method.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(PatternError::Method(method.to_string()));
            }
            Some(Method::from_bytes(method.as_bytes()).map_err(|_| PatternError::Method(method.to_string()))?)
        };
        let segments = parse_path(path)?;
        Ok(AllowRule { method, segments, source: text.to_string() })
    }

    /// Whether `method` on a path with these segments is allowed by this rule.
    pub fn matches<'a>(&self, method: &Method, segments: impl Iterator<Item = &'a str>) -> bool {
        if let Some(m) = &self.method {
            if !method_covers(m, method) {
                return false;
            }
        }
        let mut segments = segments;
        for seg in &self.segments {
            match seg {
                Seg::Rest => return true,
                // One real segment: never the empty one a trailing '/' leaves, or `/x/*` would
                // match `/x/`.
                Seg::One => {
                    if !matches!(segments.next(), Some(s) if !s.is_empty()) {
                        return false;
                    }
                }
                Seg::Literal(lit) => match segments.next() {
                    Some(s) if s == lit => {}
                    _ => return false,
                },
            }
        }
        segments.next().is_none()
    }

    /// The rule as written in the config.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The method, `None` for `*`.
    pub fn method(&self) -> Option<&Method> {
        self.method.as_ref()
    }

    /// Whether the path pattern has a `**`.
    pub fn has_rest(&self) -> bool {
        self.segments.last() == Some(&Seg::Rest)
    }

    /// The path pattern's segments: `Some(literal)`, or `None` for `*` (a `**` is not listed;
    /// see [`AllowRule::has_rest`]).
    pub fn path_segments(&self) -> impl Iterator<Item = Option<&str>> {
        self.segments.iter().filter_map(|s| match s {
            Seg::Literal(l) => Some(Some(l.as_str())),
            Seg::One => Some(None),
            Seg::Rest => None,
        })
    }
}

/// Whether a rule (or route) naming `rule` covers a request with `method`: the same method, or
/// `HEAD` under `GET` (RFC 9110 §9.3.2: `HEAD` is `GET` without the body, so a client allowed to
/// read a resource may ask for its headers; `curl -I` sends it).
pub fn method_covers(rule: &Method, method: &Method) -> bool {
    rule == method || (*rule == Method::GET && *method == Method::HEAD)
}

fn parse_path(path: &str) -> Result<Vec<Seg>, PatternError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PatternError::NotAbsolute);
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let raw: Vec<&str> = rest.split('/').collect();
    let mut out = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        let seg = match *s {
            // A trailing '/' names the path with the slash (`GET /v1/notifications/`), which
            // Palette serves apart from the one without.
            "" if i + 1 == raw.len() && i > 0 => Seg::Literal(String::new()),
            "" => return Err(PatternError::EmptySegment),
            "**" if i + 1 == raw.len() => Seg::Rest,
            "**" => return Err(PatternError::DoubleStarNotLast),
            "*" => Seg::One,
            s if s.contains('*') => return Err(PatternError::PartialWildcard(s.to_string())),
            s => {
                // A literal is compared with checked (normalized) segments, so it must itself be
                // in checked form or it could never match.
                match crate::proxy::path::check(&format!("/{s}")) {
                    Ok(p) if p.as_str()[1..] == *s => Seg::Literal(s.to_string()),
                    _ => return Err(PatternError::Unmatchable(s.to_string())),
                }
            }
        };
        out.push(seg);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(rule: &str, method: &str, path: &str) -> bool {
        let r = AllowRule::parse(rule).unwrap();
        let p = crate::proxy::path::check(path).unwrap();
        r.matches(&Method::from_bytes(method.as_bytes()).unwrap(), p.segments())
    }

    #[test]
    fn double_star_matches_the_rest() {
        assert!(m("GET /v1/**", "GET", "/v1/spectroclusters/abc"));
        assert!(m("GET /v1/**", "GET", "/v1"));
        assert!(!m("GET /v1/**", "GET", "/v2/x"));
        assert!(!m("GET /v1/**", "POST", "/v1/x"));
    }

    #[test]
    fn single_star_is_one_segment() {
        assert!(m("GET /v1/*/x", "GET", "/v1/a/x"));
        assert!(!m("GET /v1/*/x", "GET", "/v1/a/b/x"));
        assert!(!m("GET /v1/*", "GET", "/v1"));
    }

    #[test]
    fn literal_must_match_exactly_and_fully() {
        assert!(m("POST /v1/dashboard/projects", "POST", "/v1/dashboard/projects"));
        assert!(!m("POST /v1/dashboard/projects", "POST", "/v1/dashboard/projects/x"));
        assert!(!m("POST /v1/dashboard", "POST", "/v1/dashboardx"));
    }

    #[test]
    fn trailing_slash_is_its_own_path() {
        // The rule for one upstream path never lets the other through (issue 9, point 3).
        assert!(!m("POST /v1/dashboard/projects", "POST", "/v1/dashboard/projects/"));
        assert!(!m("GET /v1/notifications/", "GET", "/v1/notifications"));
        assert!(m("GET /v1/notifications/", "GET", "/v1/notifications/"));
        assert!(!m("GET /v1/*", "GET", "/v1/"), "'*' is one real segment, not the empty one");
        assert!(m("GET /v1/*/", "GET", "/v1/x/"));
        assert!(!m("GET /v1/*/", "GET", "/v1/x"));
        // '**' covers the path itself, with and without the slash, and everything below.
        for p in ["/v1/dashboard", "/v1/dashboard/", "/v1/dashboard/x", "/v1/dashboard/x/"] {
            assert!(m("POST /v1/dashboard/**", "POST", p), "{p}");
        }
        assert!(!m("GET /", "GET", "/v1/"));
        assert!(m("GET /", "GET", "/"));
    }

    #[test]
    fn get_covers_head_and_nothing_else() {
        assert!(m("GET /v1/**", "HEAD", "/v1/x"));
        assert!(m("GET /v1/x", "HEAD", "/v1/x"));
        assert!(!m("HEAD /v1/x", "GET", "/v1/x"));
        assert!(!m("GET /v1/x", "OPTIONS", "/v1/x"));
        assert!(!m("POST /v1/x", "HEAD", "/v1/x"));
        assert!(method_covers(&Method::GET, &Method::HEAD));
        assert!(!method_covers(&Method::HEAD, &Method::GET));
    }

    #[test]
    fn star_method_is_any() {
        assert!(m("* /v1/**", "DELETE", "/v1/x"));
        assert!(m("* /**", "PATCH", "/"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(matches!(AllowRule::parse("GET"), Err(PatternError::Shape(_))));
        assert!(matches!(AllowRule::parse("GET /a /b"), Err(PatternError::Shape(_))));
        assert!(matches!(AllowRule::parse("get /v1"), Err(PatternError::Method(_))));
        assert!(matches!(AllowRule::parse("GET v1"), Err(PatternError::NotAbsolute)));
        assert!(matches!(AllowRule::parse("GET /**/x"), Err(PatternError::DoubleStarNotLast)));
        assert!(matches!(AllowRule::parse("GET /v1/a*"), Err(PatternError::PartialWildcard(_))));
        assert!(matches!(AllowRule::parse("GET /v1//x"), Err(PatternError::EmptySegment)));
        assert!(matches!(AllowRule::parse("GET //"), Err(PatternError::EmptySegment)));
        assert!(matches!(AllowRule::parse("GET /v1//"), Err(PatternError::EmptySegment)));
        assert!(matches!(AllowRule::parse("GET /v1/**/"), Err(PatternError::DoubleStarNotLast)));
        assert!(matches!(AllowRule::parse("GET /v1/../x"), Err(PatternError::Unmatchable(_))));
        assert!(matches!(AllowRule::parse("GET /v1/%61"), Err(PatternError::Unmatchable(_))));
    }

    proptest! {
        /// A rule never lets through a path outside its literal prefix.
        #[test]
        fn literal_prefix_is_respected(tail in "[a-z0-9/]{0,20}") {
            let r = AllowRule::parse("GET /v1/dashboard/**").unwrap();
            let path = format!("/v1/{tail}");
            if let Ok(p) = crate::proxy::path::check(&path) {
                let ok = r.matches(&Method::GET, p.segments());
                let segs: Vec<&str> = p.segments().collect();
                prop_assert_eq!(ok, segs.len() >= 2 && segs[1] == "dashboard");
            }
        }

        /// A rule without `**` never matches a path with another segment count, nor the same
        /// path with or without a trailing '/'.
        #[test]
        fn rule_without_rest_matches_only_its_segment_count(
            rule in "/([a-z]{1,3}|\\*)(/([a-z]{1,3}|\\*)){0,3}/?",
            path in "/[a-z]{1,3}(/[a-z]{1,3}){0,4}/?",
        ) {
            let r = AllowRule::parse(&format!("GET {rule}")).unwrap();
            let p = crate::proxy::path::check(&path).unwrap();
            if r.matches(&Method::GET, p.segments()) {
                prop_assert_eq!(rule.split('/').count(), path.split('/').count(), "{} {}", rule, path);
                prop_assert_eq!(rule.ends_with('/'), path.ends_with('/'), "{} {}", rule, path);
            }
            // The slash-less or slashed twin of a matched path is never matched too.
            let twin = match path.strip_suffix('/') { Some(t) => t.to_string(), None => format!("{path}/") };
            let t = crate::proxy::path::check(&twin).unwrap();
            prop_assert!(!(r.matches(&Method::GET, p.segments()) && r.matches(&Method::GET, t.segments())));
        }

        /// `/x/**` matches `/x`, `/x/` and everything below, and nothing else.
        #[test]
        fn rest_covers_the_prefix_with_and_without_slash(tail in "(/[a-z]{1,3}){0,3}/?") {
            let r = AllowRule::parse("GET /v1/x/**").unwrap();
            let path = format!("/v1/x{tail}");
            prop_assert!(r.matches(&Method::GET, crate::proxy::path::check(&path).unwrap().segments()), "{}", path);
            let other = format!("/v1/y{tail}");
            prop_assert!(!r.matches(&Method::GET, crate::proxy::path::check(&other).unwrap().segments()));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = AllowRule::parse(&s);
        }
    }
}
