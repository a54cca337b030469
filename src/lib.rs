//! palette-gateway: an authenticating, credential-swapping reverse proxy for the Spectro Cloud
//! Palette API. Internal tools call the gateway with a local credential; the gateway checks
//! what they may do and calls Palette with the real credential (an `ApiKey`, or a token it
//! logs in for and keeps fresh).
//!
//! Layout (one concern per module):
//! - [`config`]: TOML → validated, immutable [`config::Config`] (secrets from env/files).
//! - [`server`]: listeners, TLS/mTLS, HTTP/1.1 + HTTP/2, drain. [`admin`]: `/healthz`, `/readyz`.
//! - [`proxy`]: the request path, in order: [`path`] check → [`auth`] → [`routes`] → [`policy`]
//!   ([`pattern`]) → [`scope`] → [`forward`] hygiene → credential swap ([`credentials`]) →
//!   [`upstream`] client. [`error`] is the one place that shapes the gateway's own answers.
//!   [`framing`] (transfer codings, bodiless `HEAD` answers), [`drain`] (small unread request
//!   bodies) and [`decode`] (compressed error bodies, for the scrubber) serve that path.
//! - [`app`]: wiring and task ownership. [`cli`]: the command line. [`demo`] and
//!   [`fake_palette`]: the offline demo and the fake upstream the tests share.
#![forbid(unsafe_code)]
// Nothing a request or a config can influence may panic; the bans of clippy.toml (std's
// `Instant` in timed code, `set_var`) hold here. Unit tests may unwrap (clippy.toml).
#![warn(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods, clippy::disallowed_types)]

pub(crate) mod admin;
pub mod app;
pub mod auth;
// `body` and `proxy` read std's clock for log-line durations and the send-stall epoch shared
// with `server` (wall time); the allowance moves to those lines when the request path is split.
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
pub mod body;
pub mod cli;
pub mod config;
pub mod credential_endpoints;
pub mod credentials;
pub mod decode;
pub mod demo;
pub mod drain;
pub mod error;
pub mod fake_palette;
pub mod forward;
pub mod framing;
pub mod limit;
pub mod metrics;
pub mod path;
pub mod pattern;
pub mod policy;
#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
pub mod proxy;
pub mod routes;
pub mod runtime;
pub mod scope;
pub(crate) mod server;
pub(crate) mod signals;
pub(crate) mod upstream;
pub(crate) mod watcher;
