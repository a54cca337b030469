//! palette-gateway end to end: the real gateway on loopback in front of the fake Palette (or a
//! misbehaving upstream), driven as a client, an operator or a log pipeline would. One test
//! binary, one module per behaviour; what they share is in [`support`], one file per job.
//!
//! A test that measures the whole process (memory, descriptors) runs alone in a child process
//! ([`support::alone_in_process`]), since every other test shares this one.

mod support;

mod attacks;
mod cache;
mod cli;
mod cluster;
mod credential_swap;
mod deploy_metrics;
mod docs;
mod explain;
mod faults;
mod forwarding;
mod hostile;
mod http2_interop;
mod kubernetes;
mod limits;
mod logs;
mod metrics;
mod paths;
mod policy_scope;
mod project_names;
mod readiness;
mod readme;
mod reload;
mod server_limits;
mod shutdown;
mod status;
mod tls;
mod tokens;
mod upstream_errors;
