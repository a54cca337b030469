//! Palette's login and refresh calls (`/v1/auth/authenticate`, `/v1/auth/refresh/{token}`), and
//! reading a token's expiry from its JWT payload.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};

use crate::body;
use crate::config::{Secret, TokenSettings};
use crate::upstream::UpstreamClient;

/// Login answers are small; anything larger is not Palette.
const MAX_AUTH_BODY: usize = 64 * 1024;

/// Why a login or refresh failed. Messages never carry the password or a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthCallError {
    #[error("{1}: {0}")]
    Upstream(String, &'static str),
    #[error("{0}: Palette answered {1}{code}", code = .2.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Refused(&'static str, StatusCode, Option<String>),
    #[error("{0}: the answer carries no usable token")]
    BadAnswer(&'static str),
    #[error("{0}: no complete answer within {within}", within = humantime::format_duration(*.1))]
    Timeout(&'static str, Duration),
    #[error("{0}: Palette's /v1/auth budget has no room within {within}", within = humantime::format_duration(*.1))]
    Busy(&'static str, Duration),
    #[error(
        "{0}: Palette issued a token whose JWT exp is {1} s in the past; the gateway's clock and \
         Palette's probably disagree (clock skew): check NTP on the gateway's host"
    )]
    Expired(&'static str, u64),
}

impl AuthCallError {
    /// A bounded label for metrics: why the call failed.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthCallError::Upstream(..) => "upstream",
            AuthCallError::Refused(..) => "refused",
            AuthCallError::BadAnswer(_) => "bad_answer",
            AuthCallError::Timeout(..) => "timeout",
            AuthCallError::Busy(..) => "budget",
            AuthCallError::Expired(..) => "expired",
        }
    }
}

/// A token as Palette issued it.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The raw token.
    pub value: Secret,
    /// The JWT's `exp`, when it has one.
    pub exp: Option<SystemTime>,
}

/// `POST /v1/auth/authenticate?setCookie=false`.
pub async fn login(client: &UpstreamClient, s: &TokenSettings) -> Result<IssuedToken, AuthCallError> {
    const CALL: &str = "login";
    let mut payload = serde_json::json!({ "emailId": s.email.expose(), "password": s.password.expose() });
    if let Some(org) = &s.org {
        payload["org"] = serde_json::Value::String(org.clone());
    }
    let uri = client
        .uri("/v1/auth/authenticate?setCookie=false")
        .map_err(|e| AuthCallError::Upstream(e.to_string(), CALL))?;
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(body::full(payload.to_string()))
        .map_err(|e| AuthCallError::Upstream(e.to_string(), CALL))?;
    call(client, req, CALL).await
}

/// `GET /v1/auth/refresh/{token}?setCookie=false` (the token also goes as `Authorization`).
pub async fn refresh(client: &UpstreamClient, current: &Secret) -> Result<IssuedToken, AuthCallError> {
    const CALL: &str = "refresh";
    if !token_is_safe(current.expose()) {
        return Err(AuthCallError::BadAnswer(CALL));
    }
    let uri = client
        .uri(format!("/v1/auth/refresh/{}?setCookie=false", current.expose()))
        .map_err(|_| AuthCallError::BadAnswer(CALL))?;
    let mut auth = HeaderValue::from_str(current.expose()).map_err(|_| AuthCallError::BadAnswer(CALL))?;
    auth.set_sensitive(true);
    let req = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(header::AUTHORIZATION, auth)
        .header(header::ACCEPT, "application/json")
        .body(body::empty())
        .map_err(|_| AuthCallError::BadAnswer(CALL))?;
    call(client, req, CALL).await
}

/// One login or refresh, headers and body within the upstream's `request_timeout` in all: a
/// Palette that sends the head and then stalls the body must not hold the token manager.
async fn call(
    client: &UpstreamClient,
    req: Request<body::Body>,
    name: &'static str,
) -> Result<IssuedToken, AuthCallError> {
    let total = client.request_timeout();
    let exchange = async {
        let resp = client.send(req).await.map_err(|e| AuthCallError::Upstream(e.to_string(), name))?;
        let status = resp.status();
        let bytes: Bytes = body::collect_limited(resp.into_body(), MAX_AUTH_BODY)
            .await
            .map_err(|e| AuthCallError::Upstream(format!("reading the answer: {e}"), name))?;
        Ok((status, bytes))
    };
    let (status, bytes) =
        tokio::time::timeout(total, exchange).await.map_err(|_| AuthCallError::Timeout(name, total))??;
    if status != StatusCode::OK {
        // Only Palette's error `code` is kept: its message could echo what we sent.
        let code = serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| {
            v.get("code")
                .and_then(|c| c.as_str())
                .map(|c| c.chars().filter(|c| c.is_ascii_alphanumeric()).take(64).collect())
        });
        return Err(AuthCallError::Refused(name, status, code));
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| AuthCallError::BadAnswer(name))?;
    let token = v.get("Authorization").and_then(|t| t.as_str()).ok_or(AuthCallError::BadAnswer(name))?;
    if !token_is_safe(token) {
        return Err(AuthCallError::BadAnswer(name));
    }
    Ok(IssuedToken { exp: jwt_exp(token), value: Secret::new(token) })
}

/// A token we will put in a header and a path must be a plain JWT-like string.
fn token_is_safe(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 8192
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
        && !t.contains("..")
}

/// The `exp` claim of a JWT, read without checking the signature (the token is ours to use,
/// not to trust).
pub fn jwt_exp(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = v.get("exp")?.as_f64()?;
    if !(exp.is_finite() && exp > 0.0 && exp < 1e11) {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::from_secs_f64(exp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.{}", e.encode(r#"{"alg":"HS256"}"#), e.encode(payload), e.encode("sig"))
    }

    #[test]
    fn exp_is_read_from_the_payload() {
        let t = jwt(r#"{"sub":"a","exp":2000000000}"#);
        assert_eq!(jwt_exp(&t), Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000)));
    }

    #[test]
    fn no_exp_or_garbage_gives_none() {
        assert_eq!(jwt_exp(&jwt(r#"{"sub":"a"}"#)), None);
        assert_eq!(jwt_exp("not-a-jwt"), None);
        assert_eq!(jwt_exp("a.!!!.c"), None);
        assert_eq!(jwt_exp(&jwt(r#"{"exp":"soon"}"#)), None);
        assert_eq!(jwt_exp(&jwt(r#"{"exp":-5}"#)), None);
    }

    #[test]
    fn unsafe_tokens_are_refused() {
        assert!(token_is_safe(&jwt("{}")));
        assert!(!token_is_safe("a/../b"));
        assert!(!token_is_safe("a b"));
        assert!(!token_is_safe(""));
    }

    #[test]
    fn errors_never_print_secrets() {
        let e = AuthCallError::Refused("login", StatusCode::UNAUTHORIZED, Some("InvalidCredentials".into()));
        assert_eq!(e.to_string(), "login: Palette answered 401 Unauthorized (InvalidCredentials)");
    }
}
