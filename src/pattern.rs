//! `allow` rules: `METHOD /path` patterns where `*` is one segment and `**` the rest.
//!
//! Patterns are compiled once at config load; matching is a walk over the checked path's
//! segments with no allocation.

use http::Method;

/// Why an `allow` pattern did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("expected \"METHOD /path\" (e.g. \"GET /v1/**\"), got {0:?}")]
    Shape(String),
    #[error("invalid method {0:?}")]
    Method(String),
    #[error("path pattern must start with '/'")]
    NotAbsolute,
    #[error("'**' may only be the last segment")]
    DoubleStarNotLast,
    #[error("'*' must be a whole segment (got {0:?})")]
    PartialWildcard(String),
    #[error("empty segment in path pattern")]
    EmptySegment,
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
            if m != method {
                return false;
            }
        }
        let mut segments = segments;
        for seg in &self.segments {
            match seg {
                Seg::Rest => return true,
                Seg::One => {
                    if segments.next().is_none() {
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
            "" => return Err(PatternError::EmptySegment),
            "**" if i + 1 == raw.len() => Seg::Rest,
            "**" => return Err(PatternError::DoubleStarNotLast),
            "*" => Seg::One,
            s if s.contains('*') => return Err(PatternError::PartialWildcard(s.to_string())),
            s => {
                // A literal is compared with checked (normalized) segments, so it must itself be
                // in checked form or it could never match.
                match crate::path::check(&format!("/{s}")) {
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
        let p = crate::path::check(path).unwrap();
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
        assert!(matches!(AllowRule::parse("GET /v1/../x"), Err(PatternError::Unmatchable(_))));
        assert!(matches!(AllowRule::parse("GET /v1/%61"), Err(PatternError::Unmatchable(_))));
    }

    proptest! {
        /// A rule never lets through a path outside its literal prefix.
        #[test]
        fn literal_prefix_is_respected(tail in "[a-z0-9/]{0,20}") {
            let r = AllowRule::parse("GET /v1/dashboard/**").unwrap();
            let path = format!("/v1/{tail}");
            if let Ok(p) = crate::path::check(&path) {
                let ok = r.matches(&Method::GET, p.segments());
                let segs: Vec<&str> = p.segments().collect();
                prop_assert_eq!(ok, segs.len() >= 2 && segs[1] == "dashboard");
            }
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = AllowRule::parse(&s);
        }
    }
}
