//! `[upstream]`: where requests go, how long they may take, and the budget per Palette prefix.

use std::path::Path;
use std::time::Duration;

use super::limits::{positive, rate};
use crate::config::file::{RawRate, RawUpstream};
use crate::config::problems::Problems;
use crate::config::{preset, tls, Environment, PrefixLimit, UpstreamConfig, UpstreamLimits};

pub(super) fn upstream(
    u: &RawUpstream,
    base: &Path,
    env: &dyn Environment,
    p: &mut Problems,
) -> Option<UpstreamConfig> {
    let uri: Option<http::Uri> = match u.url.parse::<http::Uri>() {
        Ok(uri) => Some(uri),
        Err(e) => {
            p.add("upstream.url", format!("{:?} is not a URL: {e}", u.url));
            None
        }
    };
    let parts = uri.and_then(|uri| {
        let scheme = uri.scheme().cloned();
        let ok_scheme = matches!(scheme.as_ref().map(|s| s.as_str()), Some("http" | "https"));
        if !ok_scheme {
            p.add("upstream.url", "scheme must be https:// (or http:// for in-cluster and tests)");
            return None;
        }
        let Some(authority) = uri.authority().cloned() else {
            p.add("upstream.url", "has no host");
            return None;
        };
        if authority.as_str().contains('@') {
            p.add("upstream.url", "must not carry user info (credentials go in [credentials])");
            return None;
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            p.add(
                "upstream.url",
                "must be scheme://host[:port] with no path or query (requests keep their own /v1/... path)",
            );
            return None;
        }
        Some((scheme?, authority))
    });
    let extra_roots = tls::upstream_roots(u.ca_file.as_deref(), base, env, p);
    let connect_timeout = positive(u.connect_timeout.unwrap_or(Duration::from_secs(5)), "upstream.connect_timeout", p);
    let request_timeout = positive(u.request_timeout.unwrap_or(Duration::from_secs(60)), "upstream.request_timeout", p);
    let body_idle_timeout =
        positive(u.body_idle_timeout.unwrap_or(Duration::from_secs(60)), "upstream.body_idle_timeout", p);
    let limits = upstream_limits(u, p);
    let (scheme, authority) = parts?;
    Some(UpstreamConfig {
        scheme,
        authority,
        extra_roots,
        connect_timeout,
        request_timeout,
        body_idle_timeout,
        limits: limits?,
    })
}

fn upstream_limits(u: &RawUpstream, p: &mut Problems) -> Option<UpstreamLimits> {
    let l = &u.limits;
    let before = p.count();
    let mut rules = match l.preset.as_deref() {
        None | Some("palette") => preset::palette_preset(),
        Some("none") => Vec::new(),
        Some(other) => {
            p.add(
                "upstream.limits.preset",
                format!("{other:?} is not a preset: use \"palette\" (the default) or \"none\""),
            );
            Vec::new()
        }
    };
    for (i, raw) in l.prefix.iter().enumerate() {
        let field = format!("upstream.limits.prefix[{i}]");
        if let Err(m) = preset::check_prefix(&raw.prefix) {
            p.add(format!("{field}.prefix"), m);
            continue;
        }
        let Some(rate) = rate(RawRate { per_second: raw.per_second, burst: raw.burst }, &field, p) else {
            continue;
        };
        match rules.iter_mut().find(|r| r.prefix == raw.prefix) {
            Some(existing) => existing.rate = rate,
            None => rules.push(PrefixLimit { prefix: raw.prefix.clone(), rate }),
        }
    }
    let max_wait = l.max_wait.unwrap_or(Duration::from_secs(2));
    let max_queue = l.max_queue.unwrap_or(1024);
    if max_queue == 0 {
        p.add("upstream.limits.max_queue", "must be at least 1");
    }
    // Replicas behind one egress IP share Palette's per-IP budget: each takes its share.
    match l.replicas.unwrap_or(1) {
        0 => p.add("upstream.limits.replicas", "must be at least 1"),
        n if n > MAX_REPLICAS => p.add("upstream.limits.replicas", format!("must be at most {MAX_REPLICAS}")),
        1 => {}
        n => {
            for r in &mut rules {
                r.rate.per_second /= f64::from(n);
                r.rate.burst = r.rate.burst.div_ceil(n).max(1);
            }
        }
    }
    (p.count() == before).then_some(UpstreamLimits { rules, max_wait, max_queue })
}

/// Most gateway replicas sharing one egress IP's budget.
const MAX_REPLICAS: u32 = 1000;

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::tests::{base, env, problems};
    use crate::config::load_str;

    #[test]
    fn upstream_url_rules() {
        for (url, want) in [
            ("ftp://x", "scheme"),
            ("https://u:p@x", "user info"),
            ("https://x/api", "no path"),
            ("nope nope", "not a URL"),
        ] {
            let p = problems(&format!(
                "[upstream]\nurl = \"{url}\"\n[credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n"
            ));
            assert!(p.iter().any(|l| l.starts_with("upstream.url:") && l.contains(want)), "{url}: {p:?}");
        }
    }

    #[test]
    fn replicas_share_the_upstream_budget() {
        let text = base().replace(
            "url = \"http://127.0.0.1:1\"\n",
            "url = \"http://127.0.0.1:1\"\n[upstream.limits]\nreplicas = 4\n",
        );
        let cfg = load_str(&text, Path::new("."), &env()).unwrap();
        let packs = cfg.upstream.limits.rules.iter().find(|r| r.prefix == "/v1/packs").unwrap();
        assert_eq!(packs.rate.per_second, 2.5);
        assert_eq!(packs.rate.burst, 2);
        let p = problems(&base().replace(
            "url = \"http://127.0.0.1:1\"\n",
            "url = \"http://127.0.0.1:1\"\n[upstream.limits]\nreplicas = 0\n",
        ));
        assert_eq!(p, vec!["upstream.limits.replicas: must be at least 1".to_string()]);
    }
}
