//! TOML text to the raw file types, with errors an operator can act on: the line, the field path
//! (`upstream.limits.max_wait`, `clients[2].rate_limit.burst`) and the expected form written as
//! an example (`a duration like "10s"`), rather than serde's type names.

use super::file::RawConfig;

/// Parses config text into the raw types; the error is one rendered line.
pub(super) fn parse(text: &str) -> Result<RawConfig, String> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        render(text, e.inner(), &path)
    })
}

/// `line N: field.path: message (expected form)`; the path is left out when the error is not
/// about one field (broken TOML), the line when toml knows no span.
fn render(text: &str, e: &toml::de::Error, path: &str) -> String {
    let msg = explain_expected(e.message().trim_end());
    let line = e.span().map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    // serde_path_to_error says `.` (nothing read yet) or `?` (unknown) when no field applies.
    let field = (!path.is_empty() && path != "." && !path.starts_with('?')).then_some(path);
    match (line, field) {
        (Some(line), Some(field)) => format!("line {line}: {field}: {msg}"),
        (Some(line), None) => format!("line {line}: {msg}"),
        (None, Some(field)) => format!("{field}: {msg}"),
        (None, None) => msg,
    }
}

/// serde's "expected ..." phrases name Rust types; these say what to write instead.
const FORMS: &[(&str, &str)] = &[
    ("expected a duration", "expected a duration like \"10s\", \"500ms\" or \"1m30s\" (a number with a unit)"),
    ("expected u64", "expected a whole number like 1024"),
    ("expected usize", "expected a whole number like 1024"),
    ("expected u32", "expected a whole number like 20"),
    ("expected f64", "expected a number like 10 or 0.5"),
    ("expected a boolean", "expected true or false"),
    ("expected a sequence", "expected a list like [\"...\"]"),
    ("expected a string", "expected a string in quotes like \"...\""),
];

fn explain_expected(msg: &str) -> String {
    for (from, to) in FORMS {
        // Whole phrase only (`expected a string` is not `expected a string or ...`).
        if let Some(at) = msg.find(from) {
            let rest = &msg[at + from.len()..];
            if rest.is_empty() || rest.starts_with([',', '\n', ' ']) && !rest.starts_with(" or") {
                return format!("{}{to}{rest}", &msg[..at]);
            }
        }
    }
    msg.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_env = \"K\"\n";

    fn err(extra: &str) -> String {
        parse(&format!("{BASE}{extra}")).unwrap_err()
    }

    #[test]
    fn a_bad_duration_names_the_field_the_line_and_the_form() {
        let e = err("[upstream.limits]\nmax_wait = \"10\"\n");
        assert!(e.starts_with("line 6: upstream.limits.max_wait: "), "{e}");
        assert!(e.contains("a duration like \"10s\""), "{e}");
    }

    #[test]
    fn list_items_are_named_by_index() {
        let e = err("[[clients]]\nname = \"a\"\n[[clients]]\nname = \"b\"\nrate_limit = { per_second = \"x\" }\n");
        assert!(e.contains("clients[1].rate_limit.per_second: "), "{e}");
        assert!(e.contains("a number like 10"), "{e}");
        let e = err("[server]\nmax_connections = -1\n");
        assert!(e.contains("line 6: server.max_connections: "), "{e}");
    }

    #[test]
    fn unknown_keys_and_broken_toml_keep_their_line() {
        let e = err("[server]\nlisen = 1\n");
        assert!(e.starts_with("line 6: server.lisen: unknown field"), "{e}");
        let e = parse("[server\n").unwrap_err();
        assert!(e.starts_with("line 1: "), "{e}");
    }
}
