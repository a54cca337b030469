//! `[[routes]]`: path prefixes, with the project, methods and clients each route sets or allows.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use http::Method;

use super::{is_project_uid_form, project_name_problem, valid_name, valid_project_uid};
use crate::config::file::RawRoute;
use crate::config::problems::Problems;
use crate::config::{Route, RouteCache};

/// Every `[[routes]]` entry, in order, each with its `cache`; `clients` maps client names to
/// their index.
pub(super) fn routes(
    raw: &[RawRoute],
    clients: &HashMap<String, usize>,
    p: &mut Problems,
) -> Vec<(Route, Option<RouteCache>)> {
    let mut route_names = HashSet::new();
    raw.iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let field = format!("routes[{i}]");
            if !route_names.insert(r.name.clone()) {
                p.add(format!("{field}.name"), format!("duplicate route name {:?}", r.name));
            }
            route(r, &field, clients, p)
        })
        .collect()
}

fn route(
    r: &RawRoute,
    field: &str,
    clients: &HashMap<String, usize>,
    p: &mut Problems,
) -> Option<(Route, Option<RouteCache>)> {
    let before = p.count();
    if !valid_name(&r.name) {
        p.add(format!("{field}.name"), "must be 1-64 characters of letters, digits, '-', '_', '.'");
    }
    match crate::path::check(&r.path_prefix) {
        Ok(_) if r.path_prefix.len() > 1 && r.path_prefix.ends_with('/') => {
            p.add(
                format!("{field}.path_prefix"),
                format!("{:?} must not end with '/' (prefixes match whole segments)", r.path_prefix),
            );
        }
        Ok(c) if c.as_str() == r.path_prefix => {}
        Ok(_) => p.add(
            format!("{field}.path_prefix"),
            format!(
                "write it in normalized form: {:?}",
                crate::path::check(&r.path_prefix).map(|c| c.to_string()).unwrap_or_default()
            ),
        ),
        Err(e) => p.add(format!("{field}.path_prefix"), format!("{:?}: {e}", r.path_prefix)),
    }
    if r.strip_prefix && r.path_prefix == "/" {
        p.add(format!("{field}.strip_prefix"), "cannot strip the prefix \"/\"");
    }
    let project_uid = r.project_uid.as_ref().and_then(|uid| {
        if !valid_project_uid(uid) {
            p.add(format!("{field}.project_uid"), format!("{uid:?} is not a project uid (letters, digits, '-', '_')"));
            return None;
        }
        http::HeaderValue::from_str(uid).ok()
    });
    let project_name = r.project.as_ref().and_then(|name| {
        if r.project_uid.is_some() {
            p.add(
                format!("{field}.project"),
                "set project (a name) or project_uid, not both: project and project_uid name the same setting",
            );
        } else if is_project_uid_form(name) {
            p.add(
                format!("{field}.project"),
                format!(
                    "{name:?} has the form of a project uid (24 lowercase hex digits): write project_uid = {name:?}; \
                     a project whose name has that form cannot be named"
                ),
            );
        } else if let Some(problem) = project_name_problem(name) {
            p.add(format!("{field}.project"), format!("{name:?}: {problem}"));
        } else {
            return Some(Arc::from(name.as_str()));
        }
        None
    });
    let methods = r.methods.as_ref().map(|ms| {
        ms.iter()
            .enumerate()
            .filter_map(|(k, m)| {
                if !m.bytes().all(|b| b.is_ascii_uppercase()) || m.is_empty() {
                    p.add(
                        format!("{field}.methods[{k}]"),
                        format!("{m:?} is not an HTTP method (upper case, e.g. \"GET\")"),
                    );
                    return None;
                }
                Method::from_bytes(m.as_bytes()).ok()
            })
            .collect::<Vec<_>>()
    });
    let route_clients = r.clients.as_ref().map(|names| {
        names
            .iter()
            .enumerate()
            .filter_map(|(k, n)| match clients.get(n) {
                Some(&i) => Some(crate::config::ClientId(i)),
                None => {
                    p.add(format!("{field}.clients[{k}]"), format!("no client named {n:?}"));
                    None
                }
            })
            .collect::<Vec<_>>()
    });
    let cache = r.cache.as_ref().and_then(|c| super::cache::route_cache(c, methods.as_deref(), field, p));
    if p.count() != before {
        return None;
    }
    let route = Route {
        name: Arc::from(r.name.as_str()),
        path_prefix: r.path_prefix.clone(),
        strip_prefix: r.strip_prefix,
        project_uid,
        project_name,
        methods,
        clients: route_clients,
    };
    Some((route, cache))
}

#[cfg(test)]
mod tests {
    use super::super::tests::{base, problems};

    #[test]
    fn route_rules() {
        let text = format!(
            "{}[[routes]]\nname = \"r\"\npath_prefix = \"/a/\"\n[[routes]]\nname = \"r\"\npath_prefix = \"/b\"\nclients = [\"ghost\"]\nmethods = [\"get\"]\nproject_uid = \"bad uid\"\n",
            base()
        );
        let p = problems(&text);
        for want in [
            "routes[0].path_prefix:",
            "routes[1].name: duplicate",
            "routes[1].clients[0]: no client named \"ghost\"",
            "routes[1].methods[0]:",
            "routes[1].project_uid:",
        ] {
            assert!(p.iter().any(|l| l.starts_with(want)), "{want}: {p:?}");
        }
    }

    #[test]
    fn a_route_names_its_project_or_gives_its_uid_not_both() {
        let route = |extra: &str| format!("{}[[routes]]\nname = \"r\"\npath_prefix = \"/a\"\n{extra}", base());
        let p = problems(&route("project = \"Default\"\nproject_uid = \"5ca1ab1e0000000000000001\"\n"));
        assert!(p.iter().any(|l| l.starts_with("routes[0].project: ") && l.contains("project_uid")), "{p:?}");
        let p = problems(&route("project = \"5ca1ab1e0000000000000001\"\n"));
        assert!(p.iter().any(|l| l.starts_with("routes[0].project: ") && l.contains("write project_uid")), "{p:?}");
        let p = problems(&route("project = \" Default\"\n"));
        assert!(p.iter().any(|l| l.starts_with("routes[0].project: ") && l.contains("white space")), "{p:?}");
        let cfg = crate::config::load_str(
            &route("project = \"Team A\"\n"),
            std::path::Path::new("."),
            &super::super::tests::env(),
        )
        .unwrap();
        assert_eq!(cfg.routes[0].project_name.as_deref(), Some("Team A"));
        assert_eq!(cfg.routes[0].project_uid, None);
    }
}
