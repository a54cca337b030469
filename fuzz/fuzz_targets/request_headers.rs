//! Request-header hygiene: arbitrary client headers (names and values from bytes: `Connection`
//! tokens naming other headers, `ProjectUid` spellings, `ApiKey`/`Authorization`, hop-by-hop and
//! forwarding headers) through the steps of `proxy::process` and `build`: `scope::decide` on the
//! headers as sent, then `forward::request_headers` (every removal, then every header the gateway
//! decides: issue 9 point 1), then the upstream credential, as `build` sets it per attempt.
//!
//! Invariants on what would go upstream: no local key value survives; exactly one upstream
//! credential header, with the credential's value; `ProjectUid` is exactly what scope decided
//! (the route's project on a route that pins one; else a project the client may use, or none);
//! `X-Forwarded-*`/`X-Request-Id` are the gateway's; no hop-by-hop or spoofable header passes.
//!
//! Input (bytes): line 1 is the setting: its first byte picks the client, route and credential
//! (bit 0: a route pinning `p-route`; bit 1: TLS; bit 2: a token credential; bits 3-4: the
//! client's `projects`: none, `["p1", "p2"]`, `["*"]`), the rest of the line is the query string.
//! Each further line is one header, `name:value`.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use palette_gateway::config::{self, Config, MapEnv};
use palette_gateway::{auth, forward, scope};

const UPSTREAM_KEY: &str = "palette-upstream-key-0123456789";
const UPSTREAM_TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.e30.upstream-token";
const ROUTE_PROJECT: &str = "p-route";
const XFF: &str = "10.9.8.7";
const REQUEST_ID: &str = "fuzz-request-id";

/// Three clients (projects none / listed / any) and one route pinning a project, loaded the way
/// the gateway loads them (so the target keeps building when those types gain fields).
fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let text = format!(
            r#"
[upstream]
url = "http://127.0.0.1:1"
[credentials.default]
api_key_env = "K"
[[clients]]
name = "none"
keys = ["{}"]
[[clients]]
name = "listed"
keys = ["{}"]
projects = ["5ca1ab1e0000000000000001", "5ca1ab1e0000000000000002"]
[[clients]]
name = "any"
keys = ["{}"]
projects = ["*"]
[[routes]]
name = "pinned"
path_prefix = "/team"
project_uid = "{ROUTE_PROJECT}"
"#,
            auth::key_hash_string("local-key-none"),
            auth::key_hash_string("local-key-listed"),
            auth::key_hash_string("local-key-any"),
        );
        match config::load_str(&text, Path::new("."), &MapEnv::new().with("K", UPSTREAM_KEY)) {
            Ok(c) => c,
            Err(e) => panic!("the target's own config does not load: {e}"),
        }
    })
}

const HOP_BY_HOP_AND_SPOOFABLE: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "cookie",
    "host",
    "forwarded",
    "x-forwarded-host",
    "x-real-ip",
];

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let setting = lines.next().unwrap_or_default();
    let flags = setting.first().copied().unwrap_or(0);
    let Ok(query) = std::str::from_utf8(setting.get(1..).unwrap_or_default()) else { return };
    let query = (!query.is_empty()).then_some(query);
    let cfg = config();
    let client = &cfg.clients[usize::from((flags >> 3) & 3) % 3];
    let route = (flags & 1 == 1).then(|| &cfg.routes[0]);
    let tls = flags & 2 == 2;
    let token = flags & 4 == 4;

    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(&line[colon + 1..]))
        else {
            continue;
        };
        headers.append(name, value);
    }
    let sent = headers.clone();

    // The local credential the client sent: whole header values and what follows "Bearer ".
    let mut local: Vec<Vec<u8>> = Vec::new();
    for name in ["apikey", "authorization"] {
        for v in sent.get_all(name) {
            let b = v.as_bytes();
            local.push(b.to_vec());
            if let Some(pos) = b.iter().position(|&c| c == b' ') {
                local.push(b[pos + 1..].to_vec());
            }
        }
    }
    let (cred_name, cred_value) = if token {
        (http::header::AUTHORIZATION, HeaderValue::from_static(UPSTREAM_TOKEN))
    } else {
        (auth::API_KEY.clone(), HeaderValue::from_static(UPSTREAM_KEY))
    };
    // Values the gateway itself puts in headers can't tell a leak from a coincidence.
    let ours = [UPSTREAM_KEY, UPSTREAM_TOKEN, ROUTE_PROJECT, XFF, REQUEST_ID, "https", "http"];
    local.retain(|k| {
        let k = k.trim_ascii();
        k.len() >= 8 && !ours.iter().any(|o| contains(o.as_bytes(), k))
    });

    // 1. Scope decides, reading what the client sent (headers untouched).
    let Ok(decided) = scope::decide(client, route, &headers, query) else { return };
    assert_eq!(headers, sent, "scope changed the headers");
    match (route, &decided.project) {
        (Some(_), p) => assert_eq!(p.as_ref().map(HeaderValue::as_bytes), Some(ROUTE_PROJECT.as_bytes())),
        (None, Some(p)) => {
            // A decoded `?ProjectUid=` may hold non-ASCII UTF-8, which `to_str` refuses.
            let p = String::from_utf8_lossy(p.as_bytes());
            assert!(client.projects.allows(&p), "client {} got project {p:?} it may not use", client.name);
        }
        (None, None) => {}
    }

    // 2. The library's hygiene: every removal, then every header the gateway decides.
    let xff = HeaderValue::from_static(XFF);
    let rid = HeaderValue::from_static(REQUEST_ID);
    // No key handed on: the invariants below hold on the name-based removals alone (a header
    // sent as-is under another name is exempt from them).
    let facts = forward::Decided {
        forwarded_for: &xff,
        tls,
        request_id: &rid,
        project: decided.project.as_ref(),
        local_key: None,
    };
    forward::request_headers(&mut headers, &facts);

    // 3. The credential, set per attempt after hygiene (as `proxy::build` does).
    headers.insert(cred_name.clone(), cred_value.clone());

    // What would reach Palette.
    let creds: Vec<(&str, &HeaderValue)> =
        ["apikey", "authorization"].into_iter().flat_map(|n| headers.get_all(n).iter().map(move |v| (n, v))).collect();
    assert_eq!(creds, vec![(cred_name.as_str(), &cred_value)], "not exactly one upstream credential");
    let project: Vec<&HeaderValue> = headers.get_all(scope::PROJECT_UID).iter().collect();
    assert_eq!(project, decided.project.iter().collect::<Vec<_>>(), "ProjectUid is not what scope decided");
    for (name, want) in [("x-forwarded-for", XFF), ("x-forwarded-proto", if tls { "https" } else { "http" })] {
        let got: Vec<&HeaderValue> = headers.get_all(name).iter().collect();
        assert_eq!(got, vec![want], "{name}");
    }
    assert_eq!(headers.get_all(&forward::X_REQUEST_ID).iter().collect::<Vec<_>>(), vec![REQUEST_ID]);
    for name in HOP_BY_HOP_AND_SPOOFABLE {
        assert!(!headers.contains_key(*name), "{name} reaches Palette");
    }
    for (name, value) in &headers {
        if name == cred_name || name.as_str() == scope::PROJECT_UID {
            continue;
        }
        // A header the client sent as-is under another name is its own business, not a leak.
        if sent.get_all(name).iter().any(|v| v == value) {
            continue;
        }
        for k in &local {
            assert!(!contains(value.as_bytes(), k.trim_ascii()), "the local key reaches Palette in {name}");
        }
    }
});
