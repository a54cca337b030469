//! Warnings: a valid config whose rules can never do what they say. Not errors (the gateway
//! runs as written, and refuses what it would refuse), but each is almost certainly a mistake:
//! - an `allow` rule under a route's stripped prefix: rules see the upstream path, after the
//!   strip, so `GET /team-ops/**` beside a `strip_prefix` route for `/team-ops` never matches
//!   what that route forwards;
//! - an `allow` rule under `/v1/auth`: the gateway's own session, always refused;
//! - a route shadowed by an earlier one (first match wins, and the earlier one matches every
//!   request the later one would);
//! - a client no request can be (no key, no certificate name, not the anonymous client), or
//!   one whose `allow` rules can all never match, so every request it sends is refused.
//!
//! Computed once per load, on the validated config, by the one validation `check`, start-up and
//! reload share: `check` prints them, start-up and reload log them.

use http::Method;

use crate::config::{Client, ClientId, Config, Problem, Route};
use crate::pattern::{method_covers, AllowRule};
use crate::proxy::credential_endpoints::is_api_version;

/// Every warning for `cfg`, each named by its field path.
pub(super) fn find(cfg: &Config) -> Vec<Problem> {
    let mut found = Vec::new();
    for (i, client) in cfg.clients.iter().enumerate() {
        clients(cfg, ClientId(i), client, &mut found);
    }
    for (k, later) in cfg.routes.iter().enumerate() {
        if let Some((i, earlier)) = cfg.routes[..k].iter().enumerate().find(|(_, e)| shadows(e, later)) {
            found.push(Problem {
                field: format!("routes[{k}]"),
                message: format!(
                    "route {:?} can never match: route {:?} (routes[{i}]) comes first and matches every request \
                     it would (prefix {} covers {}, with its methods and clients); move {:?} before {:?} if it \
                     is meant to win",
                    later.name, earlier.name, earlier.path_prefix, later.path_prefix, later.name, earlier.name
                ),
            });
        }
    }
    found
}

fn clients(cfg: &Config, id: ClientId, client: &Client, found: &mut Vec<Problem>) {
    let field = format!("clients[{}]", id.0);
    let identified = cfg.key_index.values().any(|&c| c == id.0)
        || cfg.cert_index.values().any(|&c| c == id.0)
        || cfg.service_account_index.values().any(|&c| c == id.0)
        || cfg.anonymous_client == Some(id);
    if !identified {
        found.push(Problem {
            field: field.clone(),
            message: format!(
                "no request can be client {:?}: it has no keys, no cert_names, no service_accounts, and is not auth.anonymous_client",
                client.name
            ),
        });
    }
    let Some(rules) = &client.allow else { return };
    if rules.is_empty() {
        found.push(Problem {
            field: format!("{field}.allow"),
            message: format!("client {:?} has an empty allow list: every request it sends is refused", client.name),
        });
        return;
    }
    let mut dead = 0;
    for (j, rule) in rules.iter().enumerate() {
        let rule_field = format!("{field}.allow[{j}]");
        if under_auth(rule) {
            dead += 1;
            found.push(Problem {
                field: rule_field,
                message: format!(
                    "{:?} can never match: /v1/auth is the gateway's own session and always refused",
                    rule.as_str()
                ),
            });
            continue;
        }
        let stripping = cfg.routes.iter().enumerate().find(|(_, r)| strips_under(r, id, rule));
        if let Some((k, route)) = stripping {
            if route_takes_all(route, rule) {
                dead += 1;
            }
            found.push(Problem {
                field: rule_field,
                message: format!(
                    "{:?} names the prefix {} of route {:?} (routes[{k}]), which strips it before the allow \
                     rules are checked: they see the upstream path, so this rule never matches what that route \
                     forwards; write it for the upstream path, e.g. {:?}",
                    rule.as_str(),
                    route.path_prefix,
                    route.name,
                    without_prefix(rule, &route.path_prefix)
                ),
            });
        }
    }
    if dead == rules.len() {
        found.push(Problem {
            field: format!("{field}.allow"),
            message: format!(
                "none of client {:?}'s allow rules can match (see above): every request it sends is refused",
                client.name
            ),
        });
    }
}

/// The rule's path pattern begins with literal `v<digit>…` then `auth` (any case): the
/// policy refuses every such path before the rules are looked at.
fn under_auth(rule: &AllowRule) -> bool {
    let mut segs = rule.path_segments();
    matches!(segs.next(), Some(Some(v)) if is_api_version(v))
        && matches!(segs.next(), Some(Some(a)) if a.eq_ignore_ascii_case("auth"))
}

/// `route` strips a prefix that `rule`'s literal segments begin with, for some request of
/// `client` the rule is written for (their methods overlap).
fn strips_under(route: &Route, client: ClientId, rule: &AllowRule) -> bool {
    if !route.strip_prefix || route.path_prefix == "/" {
        return false;
    }
    if route.clients.as_ref().is_some_and(|cs| !cs.contains(&client)) {
        return false;
    }
    let methods_overlap = match (rule.method(), &route.methods) {
        (None, _) | (_, None) => true,
        (Some(m), Some(ms)) => ms.iter().any(|r| method_covers(r, m) || method_covers(m, r)),
    };
    if !methods_overlap {
        return false;
    }
    let mut rule_segs = rule.path_segments();
    route.path_prefix[1..].split('/').all(|p| matches!(rule_segs.next(), Some(Some(s)) if s == p))
}

/// Whether the route takes every request the rule is written for (all its methods): then the
/// rule can only match paths that repeat the prefix (`/team-ops/team-ops/...`), i.e. never.
fn route_takes_all(route: &Route, rule: &AllowRule) -> bool {
    match (&route.methods, rule.method()) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(ms), Some(m)) => ms.iter().any(|r| method_covers(r, m)),
    }
}

/// The rule as it would be written for the upstream path: `GET /team-ops/**` → `GET /**`.
fn without_prefix(rule: &AllowRule, prefix: &str) -> String {
    let text = rule.as_str();
    let mut words = text.split_whitespace();
    let (Some(method), Some(path)) = (words.next(), words.next()) else {
        return text.to_string();
    };
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    let rest = if rest.is_empty() { "/" } else { rest };
    format!("{method} {rest}")
}

/// `earlier` matches every request `later` would: its prefix covers `later`'s (whole
/// segments), its methods cover `later`'s and its clients include `later`'s.
fn shadows(earlier: &Route, later: &Route) -> bool {
    let (e, l) = (earlier.path_prefix.as_str(), later.path_prefix.as_str());
    let prefix = e == "/" || l == e || l.strip_prefix(e).is_some_and(|rest| rest.starts_with('/'));
    let methods = match (&earlier.methods, &later.methods) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(em), Some(lm)) => lm.iter().all(|m| em.iter().any(|e: &Method| method_covers(e, m))),
    };
    let clients = match (&earlier.clients, &later.clients) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(ec), Some(lc)) => lc.iter().all(|c| ec.contains(c)),
    };
    prefix && methods && clients
}

impl Config {
    /// Rules that can never match (see this module): `check` prints them, start-up and reload
    /// log them; none makes the config invalid.
    pub fn warnings(&self) -> &[Problem] {
        &self.warnings
    }

    /// Logs every warning at warn level, by field (start-up and reload).
    pub fn log_warnings(&self) {
        for w in &self.warnings {
            tracing::warn!(field = %w.field, "config warning: {}", w.message);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{load_str, MapEnv};
    use std::path::Path;

    const BASE: &str = "[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_env = \"K\"\n";
    const KEY: &str = "keys = [\"sha256:0000000000000000000000000000000000000000000000000000000000000001\"]\n";

    fn warnings(extra: &str) -> Vec<String> {
        let cfg = load_str(&format!("{BASE}{extra}"), Path::new("."), &MapEnv::new().with("K", "x")).unwrap();
        cfg.warnings().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn an_allow_rule_under_a_stripped_prefix_is_named_with_its_fix() {
        let w = warnings(&format!(
            "[[clients]]\nname = \"ops\"\n{KEY}allow = [\"GET /team-ops/**\", \"GET /v1/**\"]\n\
             [[routes]]\nname = \"team-ops\"\npath_prefix = \"/team-ops\"\nstrip_prefix = true\n"
        ));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("clients[0].allow[0]: \"GET /team-ops/**\" names the prefix /team-ops"), "{w:?}");
        assert!(w[0].contains("e.g. \"GET /**\""), "{w:?}");
        // Not stripped, or for other methods or clients: the rule is fine.
        for route in [
            "[[routes]]\nname = \"t\"\npath_prefix = \"/team-ops\"\n",
            "[[routes]]\nname = \"t\"\npath_prefix = \"/team-ops\"\nstrip_prefix = true\nmethods = [\"POST\"]\n",
            "[[routes]]\nname = \"t\"\npath_prefix = \"/team-ops\"\nstrip_prefix = true\nclients = [\"other\"]\n",
        ] {
            let w = warnings(&format!(
                "[[clients]]\nname = \"ops\"\n{KEY}allow = [\"GET /team-ops/**\"]\n[[clients]]\nname = \"other\"\n\
                 [auth]\nanonymous_client = \"other\"\n{route}"
            ));
            assert!(w.is_empty(), "{route}: {w:?}");
        }
    }

    #[test]
    fn a_client_whose_rules_all_fail_is_named() {
        let w = warnings(&format!(
            "[[clients]]\nname = \"ops\"\n{KEY}allow = [\"GET /team-ops/**\", \"POST /v1/auth/x\"]\n\
             [[routes]]\nname = \"team-ops\"\npath_prefix = \"/team-ops\"\nstrip_prefix = true\n"
        ));
        assert!(w.iter().any(|l| l.starts_with("clients[0].allow[1]: \"POST /v1/auth/x\" can never match")), "{w:?}");
        assert!(w.iter().any(|l| l.starts_with("clients[0].allow: none of client \"ops\"'s allow rules")), "{w:?}");
        let w = warnings(&format!("[[clients]]\nname = \"ops\"\n{KEY}allow = []\n"));
        assert_eq!(w, ["clients[0].allow: client \"ops\" has an empty allow list: every request it sends is refused"]);
        let w = warnings("[[clients]]\nname = \"ghost\"\n");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("clients[0]: no request can be client \"ghost\""), "{w:?}");
        // A client reached by its ServiceAccount token alone is a client requests can be.
        let dir = std::env::temp_dir().join(format!("pg-warn-kube-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.internal".to_string()]).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.cert.pem()).unwrap();
        let w = warnings(&format!(
            "[auth.kubernetes]\nmode = \"jwks\"\naudiences = [\"palette-gateway\"]\n\
             issuer = \"https://kubernetes.default.svc.cluster.local\"\nca_file = \"{}\"\n\
             [[clients]]\nname = \"bot\"\nservice_accounts = [\"tools/bot\"]\n",
            dir.join("ca.pem").display()
        ));
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn a_shadowed_route_is_named() {
        let w = warnings(
            "[[routes]]\nname = \"all\"\npath_prefix = \"/v1\"\n\
             [[routes]]\nname = \"clusters\"\npath_prefix = \"/v1/spectroclusters\"\nmethods = [\"GET\"]\n",
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("routes[1]: route \"clusters\" can never match: route \"all\" (routes[0])"), "{w:?}");
        // Narrower first, or an earlier route for fewer methods or clients: no warning.
        for routes in [
            "[[routes]]\nname = \"clusters\"\npath_prefix = \"/v1/spectroclusters\"\n[[routes]]\nname = \"all\"\npath_prefix = \"/v1\"\n",
            "[[routes]]\nname = \"all\"\npath_prefix = \"/v1\"\nmethods = [\"GET\"]\n[[routes]]\nname = \"c\"\npath_prefix = \"/v1/x\"\n",
            "[[routes]]\nname = \"all\"\npath_prefix = \"/v1\"\n[[routes]]\nname = \"c\"\npath_prefix = \"/v1x\"\n",
        ] {
            assert!(warnings(routes).is_empty(), "{routes}");
        }
    }
}
