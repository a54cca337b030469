//! README.md keeps its promises to a reader: the contents list points at real sections, the
//! "Your first real config" walkthrough passes `check` as written, and every alert's runbook link
//! lands on a README section that says what to do.

use std::process::Command;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_palette-gateway");

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

/// The headings outside code blocks, with their level.
fn headings(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let level = line.bytes().take_while(|b| *b == b'#').count();
        if !in_code && (2..=4).contains(&level) && line.as_bytes().get(level) == Some(&b' ') {
            out.push((level, line[level + 1..].trim().to_string()));
        }
    }
    out
}

/// GitHub's anchors: lower case, punctuation dropped, spaces to `-`, `-1`, `-2`, ... for repeats.
fn anchors(text: &str) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (_, h) in headings(text) {
        let slug: String = h
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.iter().filter(|s| **s == slug).count();
        out.push(if n == 0 { slug.clone() } else { format!("{slug}-{n}") });
        seen.push(slug);
    }
    out
}

/// The text between a `## name` heading and the next `## ` heading.
fn section<'a>(text: &'a str, name: &str) -> &'a str {
    let start = text.find(&format!("\n## {name}\n")).unwrap_or_else(|| panic!("README has no section {name}"));
    let rest = &text[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

#[test]
fn anchors_follow_github() {
    let a = anchors("## Alerts: what to do\n### Security\n```\n## not a heading\n```\n## Security\n## `[server]` x\n");
    assert_eq!(a, ["alerts-what-to-do", "security", "security-1", "server-x"]);
}

/// A reader of the contents list reaches every top-level section, and every link goes somewhere.
#[test]
fn the_contents_list_every_section_and_link_to_real_anchors() {
    let text = readme();
    let contents = section(&text, "Contents");
    let links: Vec<&str> =
        contents.split("](#").skip(1).map(|rest| rest.split(')').next().unwrap()).collect::<Vec<_>>();
    let all = anchors(&text);
    for link in &links {
        assert!(all.iter().any(|a| a == link), "Contents links to #{link}, which no heading has");
    }
    let heads = headings(&text);
    for ((level, h), anchor) in heads.iter().zip(&all) {
        if *level == 2 && h != "Contents" {
            assert!(links.contains(&anchor.as_str()), "Contents does not list \"## {h}\" (#{anchor})");
        }
    }
    assert!(links.len() > 10, "{links:?}");
}

/// The walkthrough's config, copied as the README shows it, passes `palette-gateway check`.
#[test]
fn the_first_real_config_walkthrough_passes_check() {
    let text = readme();
    let walkthrough = section(&text, "Your first real config");
    let start = walkthrough.find("```toml\n").expect("a ```toml block in the walkthrough") + "```toml\n".len();
    let end = walkthrough[start..].find("```").unwrap() + start;
    // The block is indented under its list item; TOML does not mind, but copy it as a reader would.
    let toml: String =
        walkthrough[start..end].lines().map(|l| l.strip_prefix("   ").unwrap_or(l)).collect::<Vec<_>>().join("\n");
    assert!(toml.contains("[[clients]]") && toml.contains("api.spectrocloud.com"), "{toml}");
    let dir = scratch_dir("readme-walkthrough");
    let file = dir.join("gateway.toml");
    std::fs::write(&file, &toml).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&file)
        .env("PALETTE_API_KEY", "walkthrough-dummy-key")
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "check refused the walkthrough's config:\n{said}\n---\n{toml}");
    // The steps name the commands the reader runs.
    for step in ["palette-gateway new-key", "palette-gateway check --config gateway.toml", "/readyz"] {
        assert!(walkthrough.contains(step), "the walkthrough does not mention {step}");
    }
}

/// Every alert links (`runbook_url`) to a README section that exists, one per alert, named
/// after it; the PrometheusRule copy carries the same links (sync-rules.py keeps them equal).
#[test]
fn every_alert_has_a_runbook_in_the_readme() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = readme();
    let all = anchors(&text);
    for file in ["deploy/prometheus/rules.yaml", "deploy/prometheus/prometheusrule.yaml"] {
        let rules = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
        let urls: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("runbook_url: ")).collect();
        assert!(alerts.len() >= 6, "{file}: {alerts:?}");
        assert_eq!(alerts.len(), urls.len(), "{file}: every alert needs one runbook_url");
        for (alert, url) in alerts.iter().zip(&urls) {
            let (page, anchor) = url.split_once('#').unwrap_or_else(|| panic!("{file}: {url} has no #anchor"));
            assert!(page.ends_with("/README.md"), "{file}: {alert}: {url} is not the README");
            assert_eq!(anchor, alert.to_lowercase(), "{file}: {alert} links to another section");
            assert!(all.iter().any(|a| a == anchor), "{file}: {alert}: README has no section #{anchor}");
        }
    }
}

/// The admin listener's default port is not Prometheus's own 9090, and the README's reference
/// table and the example config say the default the loader really uses.
#[test]
fn the_admin_port_default_is_documented_and_not_prometheus() {
    let text = "[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n";
    let cfg = palette_gateway::config::load_str(text, std::path::Path::new("."), &standard_env()).unwrap();
    let admin = cfg.server.admin_listen;
    assert_ne!(admin.port(), 9090, "9090 is Prometheus's own port");
    let row = format!("| `admin_listen` | `\"IP:port\"` | `\"{admin}\"` |");
    assert!(readme().contains(&row), "README's [server] table lacks {row}");
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml")).unwrap();
    assert!(example.contains(&format!("Default \"{admin}\"")), "config/gateway.toml names another default");
}
