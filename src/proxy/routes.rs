//! Route rules: the first route whose prefix, methods and clients match a request decides its
//! `ProjectUid` and whether the prefix is stripped before forwarding.
//!
//! A prefix matches whole segments, like an `allow` rule's `/prefix/**`: `/team-a` matches
//! `/team-a`, `/team-a/` and `/team-a/v1/x/`, never `/team-ab`; what is left after a stripped
//! prefix keeps its trailing '/' (`/team-a/v1/x/` goes up as `/v1/x/`). `methods = ["GET"]`
//! also covers `HEAD`, as an `allow` rule does, so a `HEAD` gets the same route (and project).

use http::Method;

use crate::config::{ClientId, Config, Route};
use crate::proxy::path::CheckedPath;

/// The outcome of route matching for one request.
#[derive(Debug)]
pub struct RouteMatch<'a> {
    /// The matched route, if any.
    pub route: Option<&'a Route>,
    /// The path to forward (the checked path, minus a stripped prefix).
    pub upstream_path: CheckedPath,
}

impl RouteMatch<'_> {
    /// The route's name, or `none` (bounded: used in logs and metrics).
    #[cfg(test)]
    pub fn name(&self) -> &str {
        self.route.map_or("none", |r| &r.name)
    }
}

/// Finds the first matching route for `client` and computes the upstream path.
pub fn select<'a>(cfg: &'a Config, client: ClientId, method: &Method, path: &CheckedPath) -> RouteMatch<'a> {
    for route in &cfg.routes {
        let Some(rest) = path.strip_prefix(&route.path_prefix) else {
            continue;
        };
        if route.methods.as_ref().is_some_and(|ms| !ms.iter().any(|m| crate::proxy::pattern::method_covers(m, method)))
        {
            continue;
        }
        if route.clients.as_ref().is_some_and(|cs| !cs.contains(&client)) {
            continue;
        }
        let upstream_path = if route.strip_prefix { path.with_path(rest) } else { path.clone() };
        return RouteMatch { route: Some(route), upstream_path };
    }
    RouteMatch { route: None, upstream_path: path.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_str, MapEnv};
    use std::path::Path;

    fn cfg() -> Config {
        let text = "[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_env = \"K\"\n\
            [[clients]]\nname = \"ci\"\n[[clients]]\nname = \"other\"\n\
            [[routes]]\nname = \"team-a\"\npath_prefix = \"/team-a\"\nstrip_prefix = true\nproject_uid = \"5ca1ab1e0000000000000001\"\n\
            [[routes]]\nname = \"ci-clusters\"\npath_prefix = \"/v1/spectroclusters\"\nmethods = [\"GET\"]\nclients = [\"ci\"]\nproject_uid = \"5ca1ab1e0000000000000002\"\n";
        load_str(text, Path::new("."), &MapEnv::new().with("K", "x")).unwrap()
    }

    fn sel(client: usize, method: Method, path: &str) -> (String, String) {
        let c = cfg();
        let p = crate::proxy::path::check(path).unwrap();
        let m = select(&c, ClientId(client), &method, &p);
        (m.name().to_string(), m.upstream_path.as_str().to_string())
    }

    #[test]
    fn prefix_strips_whole_segments() {
        assert_eq!(sel(0, Method::GET, "/team-a/v1/x"), ("team-a".into(), "/v1/x".into()));
        assert_eq!(sel(0, Method::GET, "/team-ab/v1/x"), ("none".into(), "/team-ab/v1/x".into()));
    }

    #[test]
    fn trailing_slash_is_kept_and_under_the_prefix() {
        assert_eq!(sel(0, Method::GET, "/team-a/v1/x/"), ("team-a".into(), "/v1/x/".into()));
        assert_eq!(sel(0, Method::GET, "/team-a/"), ("team-a".into(), "/".into()));
        assert_eq!(sel(0, Method::GET, "/team-a"), ("team-a".into(), "/".into()));
        assert_eq!(sel(0, Method::GET, "/v1/spectroclusters/"), ("ci-clusters".into(), "/v1/spectroclusters/".into()));
        assert_eq!(sel(0, Method::GET, "/team-ab/"), ("none".into(), "/team-ab/".into()));
    }

    #[test]
    fn get_route_covers_head() {
        assert_eq!(sel(0, Method::HEAD, "/v1/spectroclusters/u1").0, "ci-clusters");
        assert_eq!(sel(0, Method::OPTIONS, "/v1/spectroclusters/u1").0, "none");
    }

    #[test]
    fn methods_and_clients_filter() {
        assert_eq!(sel(0, Method::GET, "/v1/spectroclusters/u1").0, "ci-clusters");
        assert_eq!(sel(0, Method::POST, "/v1/spectroclusters/u1").0, "none");
        assert_eq!(sel(1, Method::GET, "/v1/spectroclusters/u1").0, "none");
        assert_eq!(sel(0, Method::GET, "/v1/spectroclustersx").0, "none");
    }
}
