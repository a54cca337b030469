//! palette-gateway: an authenticating, credential-swapping reverse proxy for the Spectro Cloud
//! Palette API. Internal tools call the gateway with a local credential; the gateway checks
//! what they may do and calls Palette with the real credential (an `ApiKey`, or a token it
//! logs in for and keeps fresh).
//!
//! Layout, one folder per lifetime:
//! - top level, what lives as long as the process: [`app`] (wiring, task ownership), [`server`]
//!   (listeners, TLS/mTLS, HTTP/1.1 + HTTP/2, drain; `park` frees an idle HTTP/1.1
//!   connection's hyper buffers), [`admin`] (`/healthz`, `/readyz`,
//!   metrics), [`metrics`], [`runtime`] (the snapshot a request takes, built by one function
//!   for start-up and reload), `watcher` (reload triggers), `signals`, [`credentials`] (token
//!   managers), [`kubernetes`] (ServiceAccount tokens: TokenReview cache, key set), [`limit`] (client limits, Palette budget), [`upstream`] (the pooled client; `dns` resolves its names in pure Rust),
//!   [`cli`] (`json_log`: the JSON log line format), [`explain`] (`palette-gateway explain`: one request through the request path's own
//!   decisions, nothing sent), [`build`] (the git commit), [`demo`] (the offline demo, with the
//!   `fake-palette` crate of this workspace behind the default `demo` feature).
//! - [`config`], what lives for one load: TOML → validated, immutable [`config::Config`].
//! - [`proxy`], what lives for one request: one file per step, chained by one function
//!   (`proxy::stack`), outermost first:
//!
//! ```text
//! sensitive-header marking (ApiKey, Authorization, Cookie; Set-Cookie)
//!   → request id + request log + in-flight + request metrics   proxy/request_log.rs, request_id.rs
//!   → error rescue (GatewayError → Palette JSON, error.rs)      proxy/rescue.rs
//!   → config snapshot, overload, framing, body caps             proxy/mod.rs, limits.rs, target.rs
//!   → path check → local auth → client limits                   path.rs (pattern.rs), auth.rs, limits.rs
//!   → route → policy (/v1/auth, credential endpoints, allow)    routes.rs, policy.rs
//!   → scope (ProjectUid) → header hygiene                       scope.rs, hygiene.rs
//!   → exchange layers: 429 retry → credential + 401 replay → budget → send   exchange.rs
//!   → response hygiene (decode.rs, scrubber) → unread body drained    response.rs, drain.rs
//! ```
//!
//! [`error`] is the one place that shapes the gateway's own answers; [`body`] holds the body
//! types the path shares. `auth`, `path`, `pattern`, `credential_endpoints`, `scope` and
//! `forward` (now `proxy::hygiene` and `proxy::response`) stay reachable at their old paths for
//! tests and fuzzing.
#![forbid(unsafe_code)]
// Nothing a request or a config can influence may panic; the bans of clippy.toml (std's
// `Instant` in timed code, `set_var`) hold here. Unit tests may unwrap (clippy.toml).
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, clippy::disallowed_types)]
// Every public item says what it is (`clippy -D warnings` enforces it).
#![warn(missing_docs)]

pub(crate) mod admin;
pub mod app;
pub(crate) mod cache;
// `body` and `proxy` read std's clock for log-line durations and the send-stall epoch shared
// with `server` (wall time). The allowance is module-wide; narrowing it to those lines is left.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
pub mod body;
pub mod build;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod credentials;
pub mod demo;
pub(crate) mod dns;
pub mod error;
pub mod explain;
pub(crate) mod json_log;
pub mod kubernetes;
pub mod limit;
pub mod metrics;
pub(crate) mod park;
#[cfg(target_os = "linux")]
pub(crate) mod process_cpu;
pub mod projects;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
pub mod proxy;
pub mod runtime;
pub mod server;
pub(crate) mod signals;
pub mod status;
pub mod upstream;
pub(crate) mod watcher;

// The request steps live under `proxy/`; these old paths stay for the tests, benches, the fuzz
// targets and the config validator that name them.
/// The header hygiene at its old path (fuzz targets and tests): the request side
/// (`proxy::hygiene`) and the response side (`proxy::response`).
pub mod forward {
    pub use crate::proxy::hygiene::*;
    pub use crate::proxy::response::{redact_headers, response_headers, scrub_error};
}
pub use proxy::{auth, credential_endpoints, path, pattern, scope};
