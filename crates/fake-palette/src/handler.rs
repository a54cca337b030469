//! How the fake Palette answers one request: the rate limits, login, refresh, the credential
//! check, the test hooks and the ordinary echo (the behaviour is listed in the parent module's
//! docs).

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, SET_COOKIE};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::{Body as _, Incoming};
use serde::Deserialize;
use tokio::time::Instant;

use super::body::{EchoBody, PatternBody, Recorder};
use super::tokens::random_hex;
use super::State;

/// Any error a response body may end with.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every answer of the fake.
pub(super) type FakeResponse = Response<UnsyncBoxBody<Bytes, BoxError>>;

const LOGIN_PATH: &str = "/v1/auth/authenticate";
const REFRESH_PREFIX: &str = "/v1/auth/refresh/";
const HOOK_PREFIX: &str = "/v1/__fake/";
const ECHO_PATH: &str = "/v1/__fake/echo-body";
/// `GET /v1/users/info`: the calling user.
const USER_INFO_PATH: &str = "/v1/users/info";

/// The body of `POST /v1/auth/authenticate`.
#[derive(Deserialize)]
struct LoginRequest {
    #[serde(rename = "emailId")]
    email_id: String,
    password: String,
    #[serde(default)]
    org: Option<String>,
}

/// Counts the request against `peer`'s rate limits, records it, then answers it.
pub(super) async fn handle(state: Arc<State>, peer: IpAddr, req: Request<Incoming>) -> FakeResponse {
    let (parts, mut body) = req.into_parts();
    // Palette limits by source IP, before authentication and before reading the body.
    let forcible = auth_call(&parts).is_none();
    let throttled = state.limits().check(peer, parts.uri.path(), forcible, Instant::now());
    let mut recorder = Recorder::new(&state, &parts);
    // `echo-body` streams the body back as it arrives, so it is recorded when the body ends
    // (by the answer's body) instead of here. A refused one is drained and answered below.
    if throttled.is_ok()
        && parts.uri.path() == ECHO_PATH
        && !body.is_end_stream()
        && authenticate(&state, &parts.headers).is_ok()
    {
        return with_session_cookie(&state, echo(&parts, body, recorder));
    }
    let drained = recorder.drain(&mut body).await;
    let captured = recorder.record();
    drop(recorder);
    if let Err(throttle) = throttled {
        // No `Retry-After` (Palette documents none) and no session cookie.
        return error(StatusCode::TOO_MANY_REQUESTS, &throttle.message());
    }
    if let Err(err) = drained {
        tracing::debug!(%err, "fake Palette: request body failed");
        return error(StatusCode::BAD_REQUEST, "the request body could not be read");
    }
    route(&state, &parts, &captured).await
}

/// The two calls that need no credential.
enum AuthCall<'a> {
    /// `POST /v1/auth/authenticate`.
    Login,
    /// `GET /v1/auth/refresh/{token}`, with the token.
    Refresh(&'a str),
}

/// Whether the request is a login or a refresh; every other request needs a credential.
fn auth_call(parts: &Parts) -> Option<AuthCall<'_>> {
    let path = parts.uri.path();
    if path == LOGIN_PATH && parts.method == Method::POST {
        return Some(AuthCall::Login);
    }
    let token = path.strip_prefix(REFRESH_PREFIX)?;
    (parts.method == Method::GET && !token.is_empty() && !token.contains('/')).then_some(AuthCall::Refresh(token))
}

/// Picks the answer for a request whose body has been read.
async fn route(state: &State, parts: &Parts, body: &[u8]) -> FakeResponse {
    let path = parts.uri.path();
    let set_cookie = !query_says_no_cookie(parts.uri.query());
    match auth_call(parts) {
        Some(AuthCall::Login) => return login(state, body, set_cookie),
        Some(AuthCall::Refresh(token)) => return refresh(state, token, set_cookie),
        None => {}
    }
    let credential = match authenticate(state, &parts.headers) {
        Ok(credential) => credential,
        Err(message) => return error(StatusCode::UNAUTHORIZED, &message),
    };
    let answer = match path.strip_prefix(HOOK_PREFIX) {
        Some(hook_path) => hook(state, parts, hook_path, &credential).await,
        None if parts.method == Method::GET && path == PROJECTS_METADATA => projects_metadata(state, parts),
        None => ordinary(parts),
    };
    with_session_cookie(state, answer)
}

/// Palette's project name lookup.
const PROJECTS_METADATA: &str = "/v1/dashboard/projects/metadata";

/// `GET /v1/dashboard/projects/metadata[?name=]`: the known projects, those named exactly
/// `name` when given (the value percent-decoded, `+` a space).
fn projects_metadata(state: &State, parts: &Parts) -> FakeResponse {
    let wanted = parts.uri.query().unwrap_or_default().split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "name").then(|| percent_decode(&v.replace('+', " ")))
    });
    let items: Vec<serde_json::Value> = state
        .projects()
        .iter()
        .filter(|p| wanted.as_ref().map_or(true, |w| *w == p.name))
        .map(|p| serde_json::json!({"metadata": {"name": p.name, "uid": p.uid}}))
        .collect();
    json(StatusCode::OK, &serde_json::json!({ "items": items }))
}

/// `%XX` escapes decoded (invalid ones kept as written).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `setCookie=false` in the query (value compared ignoring ASCII case).
fn query_says_no_cookie(query: Option<&str>) -> bool {
    query
        .unwrap_or_default()
        .split('&')
        .any(|pair| pair.split_once('=').is_some_and(|(k, v)| k == "setCookie" && v.eq_ignore_ascii_case("false")))
}

/// `POST /v1/auth/authenticate`.
fn login(state: &State, body: &[u8], set_cookie: bool) -> FakeResponse {
    state.login_attempts.fetch_add(1, Ordering::SeqCst);
    if state.auth_down.load(Ordering::SeqCst) {
        return auth_unavailable();
    }
    let Ok(req) = serde_json::from_slice::<LoginRequest>(body) else {
        return error(StatusCode::BAD_REQUEST, "invalid login payload: expected {\"emailId\", \"password\", \"org\"?}");
    };
    let user = state.users.iter().find(|u| {
        let org_ok = match &u.org {
            None => true,
            Some(org) => req.org.as_deref() == Some(org.as_str()),
        };
        u.email.eq_ignore_ascii_case(&req.email_id) && u.password == req.password && org_ok
    });
    let Some(user) = user else {
        return error(StatusCode::UNAUTHORIZED, "invalid email, password or org");
    };
    let token = state.tokens().login(Instant::now(), &user.email, state.token_lifetime, state.token_exp_claim);
    state.logins.fetch_add(1, Ordering::SeqCst);
    token_answer(token, set_cookie)
}

/// `GET /v1/auth/refresh/{token}`.
fn refresh(state: &State, token: &str, set_cookie: bool) -> FakeResponse {
    if state.auth_down.load(Ordering::SeqCst) {
        return auth_unavailable();
    }
    let refreshed = state.tokens().refresh(Instant::now(), token, state.token_lifetime, state.token_exp_claim);
    match refreshed {
        Some(token) => {
            state.refreshes.fetch_add(1, Ordering::SeqCst);
            token_answer(token, set_cookie)
        }
        None => error(StatusCode::UNAUTHORIZED, "the token is invalid or expired"),
    }
}

fn auth_unavailable() -> FakeResponse {
    error(StatusCode::SERVICE_UNAVAILABLE, "the authentication service is unavailable")
}

/// `200 {"Authorization": token, "isMfa": false}`, with the token cookie unless refused.
fn token_answer(token: String, set_cookie: bool) -> FakeResponse {
    let cookie = format!("Authorization={token}; Path=/; HttpOnly");
    let mut answer = json(StatusCode::OK, &serde_json::json!({"Authorization": token, "isMfa": false}));
    if set_cookie {
        // A token is base64url and dots, always a valid header value.
        if let Ok(cookie) = HeaderValue::from_str(&cookie) {
            answer.headers_mut().append(SET_COOKIE, cookie);
        }
    }
    answer
}

/// Checks the request's credential: `Ok` holds the header value that was accepted, `Err` the
/// 401 message. `ApiKey` decides when present, as on Palette.
fn authenticate(state: &State, headers: &HeaderMap) -> Result<String, String> {
    if let Some(key) = headers.get("apikey") {
        let key = String::from_utf8_lossy(key.as_bytes()).into_owned();
        if state.api_keys.contains(&key) {
            return Ok(key);
        }
        // Echoing the key is deliberate: real Palette error bodies may, and a gateway must
        // scrub it.
        return Err(format!("invalid api key {key}"));
    }
    if let Some(token) = headers.get(http::header::AUTHORIZATION) {
        let token = String::from_utf8_lossy(token.as_bytes()).into_owned();
        if state.tokens().is_valid(Instant::now(), &token) {
            return Ok(token);
        }
        return Err("the authorization token is invalid or expired".into());
    }
    Err("missing ApiKey or Authorization header".into())
}

/// The test hooks under `/v1/__fake/`.
async fn hook(state: &State, parts: &Parts, hook_path: &str, credential: &str) -> FakeResponse {
    let (name, arg) = hook_path.split_once('/').unwrap_or((hook_path, ""));
    match name {
        "status" => {
            let status = arg
                .parse::<u16>()
                .ok()
                .and_then(|code| StatusCode::from_u16(code).ok())
                .filter(|status| !status.is_informational());
            match status {
                Some(status) => status_hook(status, credential),
                None => error(StatusCode::BAD_REQUEST, "status hook: bad status code"),
            }
        }
        "bytes" => match arg.parse::<u64>() {
            Ok(len) => {
                let body = PatternBody::new(len, state.pattern.clone());
                let mut answer = Response::new(body.map_err(|never| match never {}).boxed_unsync());
                let headers = answer.headers_mut();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
                headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
                answer
            }
            Err(_) => error(StatusCode::BAD_REQUEST, "bytes hook: bad length"),
        },
        "slow" => match arg.parse::<u64>() {
            Ok(ms) => {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    () = state.cancel.cancelled() => {}
                }
                ordinary(parts)
            }
            Err(_) => error(StatusCode::BAD_REQUEST, "slow hook: bad milliseconds"),
        },
        "encoded-status" => match parse_status(arg) {
            Some(status) => encoded_status_hook(status, credential, parts.uri.query()),
            None => error(StatusCode::BAD_REQUEST, "encoded-status hook: bad status code"),
        },
        "secret-headers" => match parse_status(arg) {
            Some(status) => secret_headers_hook(status, credential, parts),
            None => error(StatusCode::BAD_REQUEST, "secret-headers hook: bad status code"),
        },
        "headers" if arg.is_empty() => {
            let mut answer = ordinary(parts);
            for pair in parts.uri.query().unwrap_or("").split('&') {
                let Some((name, value)) = pair.split_once('=') else { continue };
                let name = match name {
                    "cache-control" => "cache-control",
                    "set-cookie" => "set-cookie",
                    "vary" => "vary",
                    _ => continue,
                };
                if let Ok(value) = HeaderValue::from_str(value) {
                    answer.headers_mut().append(name, value);
                }
            }
            answer
        }
        // An `echo-body` with a body was answered before its body was read; this one had none.
        "echo-body" if arg.is_empty() => {
            let mut answer = Response::new(empty());
            if let Some(ct) = parts.headers.get(CONTENT_TYPE) {
                answer.headers_mut().insert(CONTENT_TYPE, ct.clone());
            }
            answer
        }
        _ => error(StatusCode::NOT_FOUND, "no such fake hook"),
    }
}

/// `/v1/__fake/status/{code}`: the error echoes the credential, for scrubbing tests.
fn status_hook(status: StatusCode, credential: &str) -> FakeResponse {
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        let mut answer = Response::new(empty());
        *answer.status_mut() = status;
        return answer;
    }
    error(status, &format!("credential {credential} is not allowed"))
}

fn parse_status(arg: &str) -> Option<StatusCode> {
    arg.parse::<u16>().ok().and_then(|code| StatusCode::from_u16(code).ok()).filter(|s| !s.is_informational())
}

/// `/v1/__fake/encoded-status/{code}?ce=identity&ce=gzip[&code=Name]`: the `status` hook's
/// error body (with Palette code `Name` if given),
/// encoded with each `ce` in turn (`gzip`, `deflate`; `identity` and unknown codings leave the
/// bytes as they are), each `ce` sent as its own `Content-Encoding` header. No `ce`: gzip.
fn encoded_status_hook(status: StatusCode, credential: &str, query: Option<&str>) -> FakeResponse {
    let pairs = || query.unwrap_or_default().split('&');
    let mut codings: Vec<&str> = pairs().filter_map(|pair| pair.strip_prefix("ce=")).collect();
    let code = pairs().find_map(|pair| pair.strip_prefix("code=")).map_or_else(|| code_name(status), str::to_string);
    if codings.is_empty() {
        codings.push("gzip");
    }
    let mut answer = Response::new(());
    *answer.status_mut() = status;
    answer.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let (mut parts, ()) = answer.into_parts();
    let mut bytes = serde_json::json!({
        "code": code,
        "message": format!("credential {credential} is not allowed"),
        "ref": random_hex(10),
        "details": {},
    })
    .to_string()
    .into_bytes();
    for coding in &codings {
        bytes = encode(coding, &bytes);
        if let Ok(v) = HeaderValue::from_str(coding) {
            parts.headers.append(http::header::CONTENT_ENCODING, v);
        }
    }
    let body = Full::new(Bytes::from(bytes)).map_err(|never| match never {}).boxed_unsync();
    Response::from_parts(parts, body)
}

fn encode(coding: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let level = flate2::Compression::default();
    let done = match coding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
            e.write_all(data).and_then(|()| e.finish())
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), level);
            e.write_all(data).and_then(|()| e.finish())
        }
        _ => Ok(data.to_vec()),
    };
    done.unwrap_or_else(|_| data.to_vec())
}

/// `/v1/__fake/secret-headers/{code}`: that status with the credential echoed in `Location`,
/// `ETag` and `X-Echo`; a 2xx other than 204 has an ordinary body, the rest none.
fn secret_headers_hook(status: StatusCode, credential: &str, parts: &Parts) -> FakeResponse {
    let mut answer =
        if status.is_success() && status != StatusCode::NO_CONTENT { ordinary(parts) } else { Response::new(empty()) };
    *answer.status_mut() = status;
    let headers = answer.headers_mut();
    for (name, value) in [
        ("location", format!("https://palette.example/v1/next?key={credential}")),
        ("etag", format!("\"{credential}\"")),
        ("x-echo", credential.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    answer
}

/// `/v1/__fake/echo-body` with a body: the body streamed back, `Content-Type` kept.
fn echo(parts: &Parts, body: Incoming, recorder: Recorder) -> FakeResponse {
    let body = EchoBody::new(body, recorder);
    let mut answer = Response::new(body.map_err(BoxError::from).boxed_unsync());
    if let Some(ct) = parts.headers.get(CONTENT_TYPE) {
        answer.headers_mut().insert(CONTENT_TYPE, ct.clone());
    }
    answer
}

/// Any other authenticated path: `POST` creates (201 + `AuditUid`), the rest echo.
fn ordinary(parts: &Parts) -> FakeResponse {
    if parts.method == Method::GET && parts.uri.path() == USER_INFO_PATH {
        // The calling user (the gateway's start-up check of an API key asks for it).
        return json(
            StatusCode::OK,
            &serde_json::json!({"uid": "fake-user-0001", "name": "fake-user", "orgName": "fake-org", "tenantUid": "fake-tenant"}),
        );
    }
    if parts.method == Method::POST {
        let mut answer = json(StatusCode::CREATED, &serde_json::json!({"uid": random_hex(12)}));
        if let Ok(audit) = HeaderValue::from_str(&random_hex(12)) {
            answer.headers_mut().insert("audituid", audit);
        }
        return answer;
    }
    let project = parts.headers.get("projectuid").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    // Which kind of credential authenticated the call (never its value): lets `--demo` show the
    // swap from a local key to the gateway's own credential.
    let credential = if parts.headers.contains_key("apikey") { "ApiKey" } else { "Authorization token" };
    json(
        StatusCode::OK,
        &serde_json::json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "projectUid": project,
            "authenticatedWith": credential,
        }),
    )
}

fn with_session_cookie(state: &State, mut answer: FakeResponse) -> FakeResponse {
    if !state.session_cookie {
        return answer;
    }
    answer.headers_mut().append(SET_COOKIE, HeaderValue::from_static("fake-session=abc"));
    answer
}

/// A Palette error: `{"code", "message", "ref", "details": {}}`.
fn error(status: StatusCode, message: &str) -> FakeResponse {
    json(
        status,
        &serde_json::json!({
            "code": code_name(status),
            "message": message,
            "ref": random_hex(10),
            "details": {},
        }),
    )
}

/// `Forbidden`, `TooManyRequests`, ...: the reason phrase without spaces.
fn code_name(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => reason.chars().filter(char::is_ascii_alphanumeric).collect(),
        None => format!("Status{}", status.as_u16()),
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> FakeResponse {
    let body = Full::new(Bytes::from(value.to_string()));
    let mut answer = Response::new(body.map_err(|never| match never {}).boxed_unsync());
    *answer.status_mut() = status;
    answer.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    answer
}

fn empty() -> UnsyncBoxBody<Bytes, BoxError> {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_cookie_query() {
        assert!(query_says_no_cookie(Some("setCookie=false")));
        assert!(query_says_no_cookie(Some("a=1&setCookie=FALSE")));
        assert!(!query_says_no_cookie(Some("setCookie=true")));
        assert!(!query_says_no_cookie(None));
    }

    #[test]
    fn code_names() {
        assert_eq!(code_name(StatusCode::FORBIDDEN), "Forbidden");
        assert_eq!(code_name(StatusCode::TOO_MANY_REQUESTS), "TooManyRequests");
        assert_eq!(code_name(StatusCode::from_u16(599).unwrap()), "Status599");
    }
}
