//! Palette's documented rate limits as config data: the `preset = "palette"` rule table that
//! `[upstream.limits]` starts from, and the check of a prefix an operator writes. The limiter
//! takes the merged rules ([`UpstreamLimits`](super::UpstreamLimits)) as plain data.

use super::{PrefixLimit, Rate};

/// Palette's top-level resources (from its API spec): each is its own bucket, as Palette counts.
const PALETTE_RESOURCES: [&str; 40] = [
    "activations",
    "apiKeys",
    "appDeployments",
    "appProfiles",
    "audits",
    "auth",
    "cloudaccounts",
    "cloudconfigs",
    "clouds",
    "clusterTemplates",
    "clustergroups",
    "clusterprofiles",
    "dashboard",
    "datasinks",
    "edgehosts",
    "events",
    "features",
    "filters",
    "grpc",
    "health",
    "installers",
    "metrics",
    "notifications",
    "overlords",
    "packs",
    "pcg",
    "permissions",
    "plans",
    "projects",
    "registries",
    "roles",
    "services",
    "spcPolicies",
    "spectroclusters",
    "system",
    "teams",
    "tenants",
    "tunnel",
    "users",
    "workspaces",
];

/// The catch-all rule's prefix: paths no other rule covers share one bucket (so unknown paths
/// cannot create buckets or metric labels).
pub(crate) const CATCH_ALL: &str = "*";

/// Palette's documented per-prefix limits. The burst is 5 requests, well inside Palette's own
/// (5 seconds' worth), so that the gateway's pacing never trips Palette's counters.
pub(crate) fn palette_preset() -> Vec<PrefixLimit> {
    let rule =
        |prefix: &str, per_second: f64| PrefixLimit { prefix: prefix.to_string(), rate: Rate { per_second, burst: 5 } };
    let mut rules: Vec<PrefixLimit> = PALETTE_RESOURCES.iter().map(|r| rule(&format!("/v1/{r}"), 10.0)).collect();
    for fast in [
        "/v1/spectroclusters",
        "/v1/spectroclusters/:uid/profiles",
        "/v1/cloudconfigs",
        "/v1/clusterprofiles",
        "/v1/events/components",
    ] {
        match rules.iter_mut().find(|r| r.prefix == fast) {
            Some(r) => r.rate.per_second = 50.0,
            None => rules.push(rule(fast, 50.0)),
        }
    }
    for exception in [
        "/v1/spectroclusters/acquire",
        "/v1/spectroclusters/cost",
        "/v1/spectroclusters/usage",
        "/v1/spectroclusters/features/logFetcher",
        "/v1/spectroclusters/:uid/assets",
        "/v1/spectroclusters/:uid/download",
    ] {
        rules.push(rule(exception, 10.0));
    }
    rules.push(rule("/v1/auth/user/password/reset", 2.0));
    rules.push(rule(CATCH_ALL, 10.0));
    rules
}

/// Checks a prefix written in `[[upstream.limits.prefix]]`.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix == CATCH_ALL {
        return Ok(());
    }
    let Some(rest) = prefix.strip_prefix('/') else {
        return Err(format!("{prefix:?} must start with '/' (or be \"*\", the catch-all)"));
    };
    for seg in rest.split('/') {
        if seg.is_empty() {
            // Also refuses a trailing '/': prefixes match whole segments.
            return Err(format!("{prefix:?} has an empty segment"));
        }
        if seg.starts_with(':') {
            continue;
        }
        match crate::path::check(&format!("/{seg}")) {
            Ok(p) if p.as_str()[1..] == *seg => {}
            _ => return Err(format!("segment {seg:?} of {prefix:?} would never match a checked path")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_checked() {
        assert!(check_prefix("/v1/packs").is_ok());
        assert!(check_prefix("/v1/spectroclusters/:uid/assets").is_ok());
        assert!(check_prefix("*").is_ok());
        assert!(check_prefix("v1").is_err());
        assert!(check_prefix("/v1//x").is_err());
        assert!(check_prefix("/v1/../x").is_err());
    }
}
