//! Every error the gateway answers itself, and the one function that turns it into Palette's
//! JSON error shape (`{"code","message","ref","details"}`) with the right status.

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{self, Body};
use crate::path::PathError;

/// A request the gateway answers itself instead of forwarding.
/// `Clone`: a coalesced read shares its failure with every request that waited for it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// The path failed the check.
    #[error("invalid request path: {0}")]
    InvalidPath(#[from] PathError),
    /// A malformed request (header, query, target form).
    #[error("{0}")]
    BadRequest(String),
    /// A method outside Palette's API (CONNECT, TRACE, unknown ones, `get`).
    #[error("method {method} is not supported by the gateway: it forwards only {allowed}")]
    MethodNotAllowed {
        /// The method as sent (cut to a bounded length).
        method: String,
        /// The methods that are forwarded, as the `Allow` header lists them (the target step
        /// decides them, so this module depends on no step).
        allowed: &'static str,
    },
    /// No local credential and no anonymous client.
    #[error("a local credential is required: send ApiKey: <local key> or Authorization: Bearer <local key>")]
    MissingCredential,
    /// A local credential that identifies no client.
    #[error("{0}")]
    UnknownCredential(String),
    /// `allow` refused the request.
    #[error("client {client} may not {method} {path}")]
    Forbidden {
        /// The client's name (`[clients.<name>]`).
        client: String,
        /// The request's method.
        method: String,
        /// The request's path, as checked.
        path: String,
    },
    /// `allow` refused a request whose route stripped its prefix: the message says the path
    /// named is the forwarded one, which the client never sent as such.
    #[error(
        "client {client} may not {method} {path} (the path after route {route} strips {prefix}: allow rules \
         see the forwarded path; `palette-gateway explain` shows each step)"
    )]
    ForbiddenAfterStrip {
        /// The client's name.
        client: String,
        /// The request's method.
        method: String,
        /// The forwarded path (after the strip), as the rules saw it.
        path: String,
        /// The route that stripped it.
        route: String,
        /// The prefix it stripped.
        prefix: String,
    },
    /// A credential endpoint (see `credential_endpoints`) not opened for the client.
    #[error(
        "client {client} may not {method} {path}: a credential endpoint, because {why}; an operator can open it for \
         this client with allow_credential_endpoints = [\"{opening}\"] (its allow rules must cover it too)"
    )]
    CredentialEndpointForbidden {
        /// The client's name.
        client: String,
        /// The request's method.
        method: String,
        /// The request's path, as checked.
        path: String,
        /// Why the endpoint is closed by default (what it would hand out).
        why: &'static str,
        /// The `allow_credential_endpoints` entry that opens it.
        opening: String,
    },
    /// A client tried to use the gateway's own Palette session.
    #[error("client {client} may not call {path}: /v1/auth/** is reserved to the gateway's own session")]
    AuthPathForbidden {
        /// The client's name.
        client: String,
        /// The request's path, as checked.
        path: String,
    },
    /// A `ProjectUid` outside the client's `projects`.
    #[error("client {client} may not use project {project}")]
    ProjectForbidden {
        /// The client's name.
        client: String,
        /// The `ProjectUid` the request asked for.
        project: String,
    },
    /// A project name the request needs did not resolve to one uid: its route's `project`, or
    /// the client's `projects` names when the `ProjectUid` it sent is none of its uids.
    #[error("{message}")]
    ProjectNameUnresolved {
        /// Why, naming the project (and the route or client).
        message: String,
        /// Which answer it gets.
        kind: UnresolvedProject,
    },
    /// A rate limit (the client's, the global one, or the upstream budget) refused the request.
    #[error("client {client} is over the {limit} rate limit ({rate}); retry after {retry_after}s")]
    RateLimited {
        /// The client's name.
        client: String,
        /// Which limit refused (its metric label: `client`, `global` or `upstream`).
        limit: &'static str,
        /// The limit's rate, in words (`10/s, burst 20`, or the Palette budget's current rate).
        rate: String,
        /// Whole seconds until a retry may pass (the `Retry-After` header).
        retry_after: u64,
    },
    /// The client did not send its request body within `request_body_timeout`.
    #[error("the request body did not arrive within {0} (server.request_body_timeout)")]
    RequestTimeout(String),
    /// The request body is larger than `max_request_body`.
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(u64),
    /// More requests in flight than `max_inflight_requests`.
    #[error("the gateway is at its in-flight request limit ({0}); retry shortly")]
    Overloaded(usize),
    /// No valid upstream token could be had.
    #[error("credential {credential} has no valid upstream token: {reason}")]
    CredentialUnavailable {
        /// The credential's name (`[credentials.<name>]`).
        credential: String,
        /// Why no token could be had.
        reason: String,
    },
    /// A Kubernetes ServiceAccount token cannot be checked now (the API server or its key set is
    /// unreachable, slow or refuses the gateway): the caller is not at fault, and may retry.
    #[error("Kubernetes ServiceAccount tokens cannot be checked now: {0}")]
    IdentityUnavailable(String),
    /// The upstream could not be reached.
    #[error("upstream unavailable: {0}")]
    UpstreamUnavailable(String),
    /// The upstream did not answer in time.
    #[error("upstream did not answer within {0}")]
    UpstreamTimeout(String),
    /// The upstream answered something unusable.
    #[error("upstream error: {0}")]
    UpstreamError(String),
    /// A request framing the gateway does not implement (a transfer coding other than
    /// `chunked`): RFC 9112 §6.1 says 501.
    #[error("{0}")]
    NotImplemented(String),
}

/// How a project name failed to resolve, which decides the answer's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnresolvedProject {
    /// The credential sees no project of that name: 404 `ProjectNotFound`.
    NotFound,
    /// The credential sees several projects of that name: 403 `ProjectAmbiguous`.
    Ambiguous,
    /// The lookup has not finished or is failing: 503 `ProjectLookupUnavailable`.
    Unavailable,
    /// The client's `ProjectUid` is none of its projects, some of whose names did not resolve:
    /// 403 `ProjectForbidden`.
    NotAllowed,
}

impl GatewayError {
    /// Status and Palette error `code` for this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            GatewayError::InvalidPath(_) => (StatusCode::BAD_REQUEST, "InvalidPath"),
            GatewayError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            GatewayError::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
            GatewayError::MissingCredential => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            GatewayError::UnknownCredential(_) => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            GatewayError::Forbidden { .. } => (StatusCode::FORBIDDEN, "Forbidden"),
            GatewayError::ForbiddenAfterStrip { .. } => (StatusCode::FORBIDDEN, "Forbidden"),
            GatewayError::AuthPathForbidden { .. } => (StatusCode::FORBIDDEN, "Forbidden"),
            GatewayError::CredentialEndpointForbidden { .. } => (StatusCode::FORBIDDEN, "Forbidden"),
            GatewayError::ProjectForbidden { .. } => (StatusCode::FORBIDDEN, "ProjectForbidden"),
            GatewayError::ProjectNameUnresolved { kind, .. } => match kind {
                UnresolvedProject::NotFound => (StatusCode::NOT_FOUND, "ProjectNotFound"),
                UnresolvedProject::Ambiguous => (StatusCode::FORBIDDEN, "ProjectAmbiguous"),
                UnresolvedProject::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "ProjectLookupUnavailable"),
                UnresolvedProject::NotAllowed => (StatusCode::FORBIDDEN, "ProjectForbidden"),
            },
            GatewayError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests"),
            GatewayError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "RequestTimeout"),
            GatewayError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge"),
            GatewayError::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "Overloaded"),
            GatewayError::CredentialUnavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "CredentialUnavailable"),
            GatewayError::IdentityUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "CredentialUnavailable"),
            GatewayError::UpstreamUnavailable(_) => (StatusCode::BAD_GATEWAY, "UpstreamUnavailable"),
            GatewayError::UpstreamTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "UpstreamTimeout"),
            GatewayError::UpstreamError(_) => (StatusCode::BAD_GATEWAY, "UpstreamError"),
            GatewayError::NotImplemented(_) => (StatusCode::NOT_IMPLEMENTED, "NotImplemented"),
        }
    }

    /// The `reason` label of `palette_gateway_auth_failures_total`, for the errors it counts.
    pub fn auth_failure_reason(&self) -> Option<&'static str> {
        match self {
            GatewayError::MissingCredential => Some("missing"),
            GatewayError::UnknownCredential(_) => Some("unknown_key"),
            GatewayError::Forbidden { .. }
            | GatewayError::ForbiddenAfterStrip { .. }
            | GatewayError::AuthPathForbidden { .. }
            | GatewayError::CredentialEndpointForbidden { .. } => Some("forbidden"),
            GatewayError::ProjectForbidden { .. } => Some("project"),
            GatewayError::ProjectNameUnresolved { kind: UnresolvedProject::NotAllowed, .. } => Some("project"),
            GatewayError::ProjectNameUnresolved { .. } => None,
            GatewayError::InvalidPath(_)
            | GatewayError::BadRequest(_)
            | GatewayError::MethodNotAllowed { .. }
            | GatewayError::RateLimited { .. }
            | GatewayError::RequestTimeout(_)
            | GatewayError::PayloadTooLarge(_)
            | GatewayError::Overloaded(_)
            | GatewayError::CredentialUnavailable { .. }
            | GatewayError::IdentityUnavailable(_)
            | GatewayError::UpstreamUnavailable(_)
            | GatewayError::UpstreamTimeout(_)
            | GatewayError::UpstreamError(_)
            | GatewayError::NotImplemented(_) => None,
        }
    }

    /// The Palette-shaped answer; `request_id` becomes `ref`.
    pub fn into_response(self, request_id: &str) -> Response<Body> {
        let (status, code) = self.status_and_code();
        let mut resp = palette_error(status, code, &self.to_string(), request_id);
        match self {
            GatewayError::MissingCredential | GatewayError::UnknownCredential(_) => {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            GatewayError::RateLimited { retry_after, .. } => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            GatewayError::Overloaded(_)
            | GatewayError::IdentityUnavailable(_)
            | GatewayError::ProjectNameUnresolved { kind: UnresolvedProject::Unavailable, .. } => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            GatewayError::MethodNotAllowed { allowed, .. } => {
                // RFC 9110 §15.5.6: a 405 says which methods the target takes.
                resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allowed));
            }
            _ => {}
        }
        resp
    }
}

/// A Palette-shaped JSON error answer.
pub fn palette_error(status: StatusCode, code: &str, message: &str, request_id: &str) -> Response<Body> {
    let json = serde_json::json!({ "code": code, "message": message, "ref": request_id, "details": {} });
    let mut resp = Response::new(body::full(json.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn all() -> Vec<(GatewayError, u16, &'static str)> {
        vec![
            (GatewayError::InvalidPath(PathError::DotSegment), 400, "InvalidPath"),
            (GatewayError::BadRequest("x".into()), 400, "BadRequest"),
            (GatewayError::MethodNotAllowed { method: "CONNECT".into(), allowed: "GET" }, 405, "MethodNotAllowed"),
            (GatewayError::MissingCredential, 401, "Unauthorized"),
            (GatewayError::UnknownCredential("x".into()), 401, "Unauthorized"),
            (
                GatewayError::Forbidden { client: "c".into(), method: "GET".into(), path: "/v1/x".into() },
                403,
                "Forbidden",
            ),
            (GatewayError::AuthPathForbidden { client: "c".into(), path: "/v1/auth/x".into() }, 403, "Forbidden"),
            (
                GatewayError::CredentialEndpointForbidden {
                    client: "c".into(),
                    method: "POST".into(),
                    path: "/v1/apiKeys".into(),
                    why: "it mints a key",
                    opening: "POST /v1/apiKeys".into(),
                },
                403,
                "Forbidden",
            ),
            (GatewayError::ProjectForbidden { client: "c".into(), project: "p".into() }, 403, "ProjectForbidden"),
            (
                GatewayError::ProjectNameUnresolved { message: "m".into(), kind: UnresolvedProject::NotFound },
                404,
                "ProjectNotFound",
            ),
            (
                GatewayError::ProjectNameUnresolved { message: "m".into(), kind: UnresolvedProject::Ambiguous },
                403,
                "ProjectAmbiguous",
            ),
            (
                GatewayError::ProjectNameUnresolved { message: "m".into(), kind: UnresolvedProject::Unavailable },
                503,
                "ProjectLookupUnavailable",
            ),
            (
                GatewayError::ProjectNameUnresolved { message: "m".into(), kind: UnresolvedProject::NotAllowed },
                403,
                "ProjectForbidden",
            ),
            (
                GatewayError::RateLimited { client: "c".into(), limit: "client", rate: "1/s".into(), retry_after: 1 },
                429,
                "TooManyRequests",
            ),
            (
                GatewayError::CredentialUnavailable { credential: "ops".into(), reason: "r".into() },
                503,
                "CredentialUnavailable",
            ),
            (GatewayError::IdentityUnavailable("x".into()), 503, "CredentialUnavailable"),
            (GatewayError::RequestTimeout("30s".into()), 408, "RequestTimeout"),
            (GatewayError::UpstreamUnavailable("x".into()), 502, "UpstreamUnavailable"),
            (GatewayError::UpstreamTimeout("5s".into()), 504, "UpstreamTimeout"),
            (GatewayError::UpstreamError("x".into()), 502, "UpstreamError"),
            (GatewayError::NotImplemented("x".into()), 501, "NotImplemented"),
        ]
    }

    #[test]
    fn each_error_has_its_status_and_code() {
        for (e, status, code) in all() {
            assert_eq!(e.status_and_code(), (StatusCode::from_u16(status).unwrap(), code), "{e:?}");
        }
    }

    #[tokio::test]
    async fn body_is_palette_shaped() {
        let resp = GatewayError::Forbidden { client: "ci".into(), method: "DELETE".into(), path: "/v1/x".into() }
            .into_response("rid-1");
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "Forbidden");
        assert_eq!(v["message"], "client ci may not DELETE /v1/x");
        assert_eq!(v["ref"], "rid-1");
    }

    #[test]
    fn too_many_requests_carries_retry_after() {
        let resp =
            GatewayError::RateLimited { client: "c".into(), limit: "client", rate: "1/s".into(), retry_after: 3 }
                .into_response("r");
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
    }

    #[test]
    fn method_not_allowed_carries_allow() {
        let allowed = "GET, HEAD";
        let resp = GatewayError::MethodNotAllowed { method: "TRACE".into(), allowed }.into_response("r");
        assert_eq!(resp.headers()[header::ALLOW], allowed);
    }

    #[test]
    fn unauthorized_carries_www_authenticate() {
        let resp = GatewayError::MissingCredential.into_response("r");
        assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
