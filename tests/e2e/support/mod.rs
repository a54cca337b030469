//! What the end-to-end tests share, one file per job: [`harness`] (the gateways under test, the
//! standard clients and secrets, the test log file), [`http`] (raw requests and clients),
//! [`metrics`] (parsing `/metrics`, process memory), [`files`] (scratch directories, atomic
//! writes), [`faulty`] (an upstream that misbehaves on purpose) and [`kube`] (a fake Kubernetes API
//! server issuing ServiceAccount tokens). Tests `use crate::support::*`.

// Private modules, their items re-exported: a glob import of `support` must not bring in a
// module named `http` or `metrics` beside the crates and test modules of those names.
pub mod faulty;
mod files;
mod harness;
mod http;
pub mod kube;
mod metrics;

pub use files::*;
pub use harness::*;
pub use http::*;
pub use metrics::*;
