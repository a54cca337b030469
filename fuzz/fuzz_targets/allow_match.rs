//! `allow` rules: parse an arbitrary rule and match it against arbitrary paths. Never panics; a
//! rule without a wildcard matches only its own method and literal path, exactly as forwarded
//! (`/x/` is not `/x`); a wildcard rule never lets through a path whose literal segments differ.
//!
//! Input (text): line 1 the rule (`GET /v1/**`), line 2 the request method, each further line a
//! request path.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use palette_gateway::path;
use palette_gateway::pattern::AllowRule;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut lines = text.split('\n');
    let rule_text = lines.next().unwrap_or_default();
    let Ok(rule) = AllowRule::parse(rule_text) else { return };
    let Ok(method) = Method::from_bytes(lines.next().unwrap_or("GET").as_bytes()) else { return };

    // parse accepted it, so it is "METHOD /path" split by whitespace.
    let mut words = rule_text.split_whitespace();
    let rule_method = words.next().unwrap_or_default();
    let pattern = words.next().unwrap_or_default();
    let method_ok = rule_method == "*" || rule_method == method.as_str();
    // Issue 9 point 20: a GET rule may also cover HEAD (neither required nor refused here).
    let head_by_get = rule_method == "GET" && method == Method::HEAD;
    let pattern_segs: Vec<&str> = pattern[1..].split('/').filter(|s| !s.is_empty()).collect();
    let wildcard = pattern.contains('*');

    // A literal rule matches its own path.
    if !wildcard {
        if let Ok(own) = path::check(pattern) {
            let matched = rule.matches(&method, own.segments());
            assert!(
                matched == method_ok || head_by_get,
                "rule {rule_text:?} on its own path {pattern:?} with {method}: matched {matched}"
            );
        }
    }

    for raw in lines {
        let Ok(p) = path::check(raw) else { continue };
        if !rule.matches(&method, p.segments()) {
            continue;
        }
        assert!(method_ok || head_by_get, "rule {rule_text:?} matched method {method}");
        if !wildcard {
            assert_eq!(p.as_str(), pattern, "literal rule {rule_text:?} matched another path {:?}", p.as_str());
            continue;
        }
        let segs: Vec<&str> = p.segments().collect();
        let rest = pattern_segs.last() == Some(&"**");
        let fixed = if rest { &pattern_segs[..pattern_segs.len() - 1] } else { &pattern_segs[..] };
        assert!(segs.len() >= fixed.len(), "rule {rule_text:?} matched the shorter path {p:?}");
        if !rest && !p.as_str().ends_with('/') {
            assert_eq!(segs.len(), fixed.len(), "rule {rule_text:?} matched the longer path {p:?}");
        }
        for (want, got) in fixed.iter().zip(&segs) {
            assert!(*want == "*" || want == got, "rule {rule_text:?} matched {p:?}: segment {got:?} is not {want:?}");
        }
    }
});
