//! What a client may call: the `/v1/auth/**` block (the gateway's session is not the client's),
//! the credential endpoints (refused unless opened for the client by name), and the client's
//! `allow` rules, all checked on the path that would reach Palette.

use http::Method;

use crate::config::Client;
use crate::error::GatewayError;
use crate::pattern::AllowRule;
use crate::proxy::credential_endpoints::{self, is_api_version};
use crate::proxy::path::CheckedPath;

/// Refuses the request unless `client` may send `method` to `path` (the upstream path). Passed,
/// it names the `allow` rule that let it through (`None`: the client has no `allow` list).
pub fn check<'a>(
    client: &'a Client,
    method: &Method,
    path: &CheckedPath,
) -> Result<Option<&'a AllowRule>, GatewayError> {
    if is_auth_path(path) {
        return Err(GatewayError::AuthPathForbidden { client: client.name.to_string(), path: path.to_string() });
    }
    if let Some(entry) = credential_endpoints::refused(method, path) {
        // Opened only by name; a wildcard `allow` never opens it (and must still cover it).
        if !client.allow_credential_endpoints.iter().any(|r| r.matches(method, path.segments())) {
            return Err(GatewayError::CredentialEndpointForbidden {
                client: client.name.to_string(),
                method: method.to_string(),
                path: path.to_string(),
                why: entry.why,
                opening: credential_endpoints::opening_for(entry, method, path),
            });
        }
    }
    let Some(rules) = &client.allow else {
        return Ok(None);
    };
    match rules.iter().find(|r| r.matches(method, path.segments())) {
        Some(rule) => Ok(Some(rule)),
        None => Err(GatewayError::Forbidden {
            client: client.name.to_string(),
            method: method.to_string(),
            path: path.to_string(),
        }),
    }
}

/// `/v1/auth/...` in any case and any API version (`/v1alpha1/auth`), with or without a
/// trailing '/': a denylist, so it is matched as broadly as Palette's router might read it.
fn is_auth_path(path: &CheckedPath) -> bool {
    let mut segs = path.segments();
    is_api_version(segs.next().unwrap_or("")) && segs.next().is_some_and(|s| s.eq_ignore_ascii_case("auth"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Projects;
    use crate::proxy::pattern::AllowRule;
    use std::sync::Arc;

    fn client(allow: Option<&[&str]>) -> Client {
        Client {
            name: Arc::from("ci"),
            credential: 0,
            projects: Projects::Any,
            project_names: Vec::new(),
            allow: allow.map(|a| a.iter().map(|r| AllowRule::parse(r).unwrap()).collect()),
            allow_credential_endpoints: Vec::new(),
            rate_limit: None,
        }
    }

    fn opened(mut c: Client, openings: &[&str]) -> Client {
        c.allow_credential_endpoints = openings.iter().map(|r| AllowRule::parse(r).unwrap()).collect();
        c
    }

    fn ok(c: &Client, m: Method, p: &str) -> bool {
        check(c, &m, &crate::proxy::path::check(p).unwrap()).is_ok()
    }

    #[test]
    fn auth_paths_are_always_refused() {
        let c = client(None);
        for p in ["/v1/auth/authenticate", "/V1/AUTH/refresh/x", "/v1alpha1/auth/x", "/v1/auth", "/v1/%61uth/x"] {
            assert!(!ok(&c, Method::POST, p), "{p}");
        }
        // Not the gateway's session, but a credential endpoint (refused for its own reason).
        assert!(matches!(
            check(&c, &Method::POST, &crate::proxy::path::check("/v1/users/auth/tokens/revoke").unwrap()),
            Err(GatewayError::CredentialEndpointForbidden { .. })
        ));
        assert!(ok(&c, Method::GET, "/v1/authx"));
    }

    #[test]
    fn allow_rules_apply() {
        let c = client(Some(&["GET /v1/**", "POST /v1/dashboard/**"]));
        assert!(ok(&c, Method::GET, "/v1/spectroclusters"));
        assert!(ok(&c, Method::POST, "/v1/dashboard/spectroclusters/search"));
        assert!(!ok(&c, Method::DELETE, "/v1/spectroclusters/x"));
        let err = check(&c, &Method::DELETE, &crate::proxy::path::check("/v1/x").unwrap()).unwrap_err();
        assert_eq!(err.to_string(), "client ci may not DELETE /v1/x");
    }

    #[test]
    fn credential_endpoints_need_a_named_opening_and_allow() {
        for c in [client(None), client(Some(&["POST /v1/**", "* /**"]))] {
            let err = check(&c, &Method::POST, &crate::proxy::path::check("/v1/apiKeys").unwrap()).unwrap_err();
            assert!(matches!(err, GatewayError::CredentialEndpointForbidden { .. }));
            let text = err.to_string();
            assert!(
                text.contains("credential endpoint")
                    && text.contains("allow_credential_endpoints = [\"POST /v1/apiKeys\"]"),
                "{text}"
            );
            assert!(ok(&c, Method::GET, "/v1/apiKeys"), "the listing stays open");
        }
        let c = opened(client(Some(&["POST /v1/**"])), &["POST /v1/apiKeys"]);
        assert!(ok(&c, Method::POST, "/v1/apiKeys"));
        assert!(!ok(&c, Method::POST, "/v1/apiKeys/"), "an opening opens the spelling it names");
        assert!(!ok(&c, Method::PUT, "/v1/apiKeys/k1/state"), "one opening opens one endpoint");
        // The allow rules must cover an opened endpoint too.
        let c = opened(client(Some(&["GET /v1/**"])), &["POST /v1/apiKeys"]);
        assert!(matches!(
            check(&c, &Method::POST, &crate::proxy::path::check("/v1/apiKeys").unwrap()),
            Err(GatewayError::Forbidden { .. })
        ));
        let c = opened(client(None), &["PUT /v1/apiKeys/*/state"]);
        assert!(ok(&c, Method::PUT, "/v1/apiKeys/k1/state"));
    }

    #[test]
    fn auth_paths_with_a_trailing_slash_are_refused() {
        assert!(!ok(&client(None), Method::GET, "/v1/auth/"));
        assert!(ok(&client(None), Method::GET, "/v1/"));
    }

    #[test]
    fn empty_allow_list_refuses_everything() {
        assert!(!ok(&client(Some(&[])), Method::GET, "/v1/x"));
    }
}
