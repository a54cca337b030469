//! `path::check` on arbitrary text: it never panics, and what it lets through is in one canonical
//! spelling that no rule can read two ways.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palette_gateway::path;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Ok(checked) = path::check(raw) else {
        return;
    };
    let p = checked.as_str();

    // Idempotent: a checked path checks to itself.
    let again = path::check(p).unwrap_or_else(|e| panic!("checked path {p:?} refused on a second check: {e}"));
    assert_eq!(again.as_str(), p, "check is not idempotent");

    assert!(p.starts_with('/'), "{p:?} is not absolute");
    assert!(!p.contains("//"), "{p:?} has an empty segment");
    assert!(!p.contains('\\') && !p.contains(';'), "{p:?} has a backslash or ';'");
    for segment in p[1..].split('/') {
        assert!(segment != "." && segment != "..", "{p:?} has a dot-segment");
    }
    // Every '%' left is an upper-case escape of something that is neither a separator, a dot,
    // a control character nor an unreserved character (those are refused or decoded).
    let bytes = p.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let esc = bytes.get(i + 1..i + 3).unwrap_or_else(|| panic!("{p:?} ends in a cut escape"));
            assert!(esc.iter().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')), "{p:?}: escape not upper-case hex");
            let v = u8::from_str_radix(std::str::from_utf8(esc).unwrap_or("zz"), 16).unwrap_or(0);
            assert!(!matches!(v, b'/' | b'\\' | b'.'), "{p:?} keeps an encoded '/', '\\' or '.'");
            assert!(v > 0x1f && v != 0x7f, "{p:?} keeps an encoded control character");
            assert!(!(v.is_ascii_alphanumeric() || matches!(v, b'-' | b'_' | b'~')), "{p:?}: unreserved left encoded");
            i += 3;
        } else {
            assert!(bytes[i] > 0x1f && bytes[i] != 0x7f, "{p:?} has a control character");
            i += 1;
        }
    }

    // What the input could not hide: an empty segment or dot-segment in the raw text is refused.
    let interior = raw[1..].strip_suffix('/').unwrap_or(&raw[1..]);
    assert!(!interior.split('/').any(str::is_empty) || raw == "/", "{raw:?} has an empty segment but passed");
    assert!(!raw[1..].split('/').any(|s| s == "." || s == ".."), "{raw:?} has a dot-segment but passed");
});
