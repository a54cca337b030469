//! The documents' promises point at real tests: every test SECURITY.md and ARCHITECTURE.md cite
//! as `path::name` is a function of that name in that file, so a renamed or moved test cannot
//! leave an invariant unproved on paper.

use std::path::Path;

/// `` `src/x.rs::name` `` or `` `tests/e2e/x.rs::name` ``; a following `` `::other` `` names a
/// test in the same file.
fn citations(doc: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut file: Option<String> = None;
    for cell in doc.split('`') {
        if let Some((path, name)) = cell.split_once("::") {
            let is_name =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !is_name {
                continue;
            }
            if path.is_empty() {
                if let Some(f) = &file {
                    out.push((f.clone(), name.to_string()));
                }
            } else if (path.starts_with("src/") || path.starts_with("tests/") || path.starts_with("crates/"))
                && path.ends_with(".rs")
            {
                file = Some(path.to_string());
                out.push((path.to_string(), name.to_string()));
            }
        }
    }
    out
}

fn check(doc_name: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join(doc_name)).unwrap();
    let cited = citations(&doc);
    assert!(cited.len() > 20, "{doc_name}: only {} citations found; did the format change?", cited.len());
    let mut missing = Vec::new();
    for (file, name) in &cited {
        let text = std::fs::read_to_string(root.join(file)).unwrap_or_default();
        let defines = text.lines().any(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("async ").unwrap_or(l);
            l.strip_prefix("fn ")
                .is_some_and(|rest| rest.starts_with(name.as_str()) && rest[name.len()..].starts_with(['(', '<']))
        });
        if !defines {
            missing.push(format!("{file}::{name}"));
        }
    }
    assert!(missing.is_empty(), "{doc_name} cites tests that do not exist there:\n{}", missing.join("\n"));
}

/// Every test the threat model names exists where it says.
#[test]
fn security_md_cites_real_tests() {
    check("SECURITY.md");
}

#[test]
fn citations_are_read_with_their_file() {
    let c = citations("| x | `src/a.rs::one`, `::two`, fuzz `scrub`, `tests/e2e/b.rs::three` |");
    let want = [("src/a.rs", "one"), ("src/a.rs", "two"), ("tests/e2e/b.rs", "three")];
    assert_eq!(c, want.map(|(f, n)| (f.to_string(), n.to_string())));
}
