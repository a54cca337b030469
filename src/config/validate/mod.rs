//! The one place that decides what config is valid: raw file types in, runtime [`Config`] out,
//! with every problem collected and named by its field. One file per section of the file; this
//! entry walks them in order and answers only once every problem is found.

mod cache;
mod clients;
mod cluster;
mod credentials;
mod kubernetes;
mod limits;
mod log;
mod routes;
mod server;
#[cfg(test)]
mod tests;
mod upstream;
mod warnings;

use std::collections::HashMap;
use std::path::Path;

use super::file::RawConfig;
use super::problems::Problems;
use super::{Config, ConfigError, Environment};

pub(super) fn validate(raw: RawConfig, base: &Path, env: &dyn Environment) -> Result<Config, ConfigError> {
    let mut p = Problems::new();
    limits::duration_bounds(&raw, &mut p);
    let server = server::server(&raw, base, env, &mut p);
    let upstream = upstream::upstream(&raw.upstream, base, env, &mut p);
    let credentials = credentials::credentials(&raw.credentials, base, env, &mut p);
    let cred_names: HashMap<&str, usize> = credentials.iter().enumerate().map(|(i, c)| (c.name.as_str(), i)).collect();
    let mtls = server.as_ref().is_some_and(|s| s.tls.as_ref().is_some_and(|t| t.mtls));

    let log = log::log_config(&raw, &mut p);
    let default_rate = raw.rate_limit.default.and_then(|r| limits::rate(r, "rate_limit.default", &mut p));
    let global_rate_limit = raw.rate_limit.global.and_then(|r| limits::rate(r, "rate_limit.global", &mut p));
    let clients = clients::clients(&raw, &cred_names, mtls, default_rate, &mut p);
    let anonymous_client = clients::anonymous_client(&raw, &clients.names, &mut p);
    let routes = routes::routes(&raw.routes, &clients.names, &mut p);
    let kubernetes = kubernetes::kubernetes(&raw, base, env, &mut p);
    let service_account_index = kubernetes::service_account_index(&raw, &mut p);
    let cache = cache::cache(&raw.cache, &mut p);
    let route_caches = routes.iter().filter_map(|(r, c)| c.map(|c| (r.name.clone(), c))).collect();
    let routes: Vec<_> = routes.into_iter().map(|(r, _)| r).collect();
    let cluster = raw.cluster.as_ref().and_then(|c| cluster::cluster(c, &raw, base, env, &mut p));

    match (p.found.is_empty(), server, upstream) {
        (true, Some(server), Some(upstream))
            if clients.list.len() == raw.clients.len() && routes.len() == raw.routes.len() =>
        {
            let mut config = Config {
                server,
                upstream,
                credentials,
                clients: clients.list,
                routes,
                anonymous_client,
                global_rate_limit,
                log,
                cache,
                route_caches,
                cluster,
                files: p.files_read,
                key_index: clients.key_index,
                cert_index: clients.cert_index,
                kubernetes,
                service_account_index,
                warnings: Vec::new(),
            };
            config.warnings = warnings::find(&config);
            Ok(config)
        }
        _ => Err(ConfigError::Invalid(p.found)),
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn valid_project_uid(uid: &str) -> bool {
    (1..=128).contains(&uid.len()) && uid.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// Palette's uids are 24 lowercase hex digits (MongoDB object ids): a `projects` entry of that
/// form is a uid, any other one a project name.
pub(crate) fn is_project_uid_form(s: &str) -> bool {
    s.len() == 24 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A project name as Palette shows it: 1-128 characters, no control characters, no space at
/// either end (it is compared exactly).
fn project_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.chars().count() > 128 {
        Some("a project name must be 1-128 characters")
    } else if name.chars().any(char::is_control) {
        Some("a project name must not contain control characters")
    } else if name.trim() != name {
        Some("a project name must not start or end with white space (names are compared exactly)")
    } else {
        None
    }
}
