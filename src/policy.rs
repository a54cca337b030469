//! What a client may call: the `/v1/auth/**` block (the gateway's session is not the client's)
//! and the client's `allow` rules, both checked on the path that would reach Palette.

use http::Method;

use crate::config::Client;
use crate::error::GatewayError;
use crate::path::CheckedPath;

/// Refuses the request unless `client` may send `method` to `path` (the upstream path).
pub fn check(client: &Client, method: &Method, path: &CheckedPath) -> Result<(), GatewayError> {
    if is_auth_path(path) {
        return Err(GatewayError::AuthPathForbidden { client: client.name.to_string(), path: path.to_string() });
    }
    match &client.allow {
        Some(rules) if !rules.iter().any(|r| r.matches(method, path.segments())) => Err(GatewayError::Forbidden {
            client: client.name.to_string(),
            method: method.to_string(),
            path: path.to_string(),
        }),
        _ => Ok(()),
    }
}

/// `/v1/auth/...` in any case and any API version (`/v1alpha1/auth`): a denylist, so it is
/// matched as broadly as Palette's router might read it.
fn is_auth_path(path: &CheckedPath) -> bool {
    let mut segs = path.segments();
    let version = segs.next().unwrap_or("");
    let is_version = version.len() >= 2
        && version.as_bytes()[0].eq_ignore_ascii_case(&b'v')
        && version.as_bytes()[1].is_ascii_digit();
    is_version && segs.next().is_some_and(|s| s.eq_ignore_ascii_case("auth"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Projects;
    use crate::pattern::AllowRule;
    use std::sync::Arc;

    fn client(allow: Option<&[&str]>) -> Client {
        Client {
            name: Arc::from("ci"),
            credential: 0,
            projects: Projects::Any,
            allow: allow.map(|a| a.iter().map(|r| AllowRule::parse(r).unwrap()).collect()),
            rate_limit: None,
        }
    }

    fn ok(c: &Client, m: Method, p: &str) -> bool {
        check(c, &m, &crate::path::check(p).unwrap()).is_ok()
    }

    #[test]
    fn auth_paths_are_always_refused() {
        let c = client(None);
        for p in ["/v1/auth/authenticate", "/V1/AUTH/refresh/x", "/v1alpha1/auth/x", "/v1/auth", "/v1/%61uth/x"] {
            assert!(!ok(&c, Method::POST, p), "{p}");
        }
        assert!(ok(&c, Method::GET, "/v1/users/auth/tokens/revoke"));
        assert!(ok(&c, Method::GET, "/v1/authx"));
    }

    #[test]
    fn allow_rules_apply() {
        let c = client(Some(&["GET /v1/**", "POST /v1/dashboard/**"]));
        assert!(ok(&c, Method::GET, "/v1/spectroclusters"));
        assert!(ok(&c, Method::POST, "/v1/dashboard/spectroclusters/search"));
        assert!(!ok(&c, Method::DELETE, "/v1/spectroclusters/x"));
        let err = check(&c, &Method::DELETE, &crate::path::check("/v1/x").unwrap()).unwrap_err();
        assert_eq!(err.to_string(), "client ci may not DELETE /v1/x");
    }

    #[test]
    fn empty_allow_list_refuses_everything() {
        assert!(!ok(&client(Some(&[])), Method::GET, "/v1/x"));
    }
}
