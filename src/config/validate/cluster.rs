//! `[cluster]`: the Redis that replicas share their budget through, and the share each takes
//! while it is unavailable.

use std::path::Path;
use std::time::Duration;

use super::limits::positive;
use crate::config::file::{RawCluster, RawConfig};
use crate::config::problems::Problems;
use crate::config::secret::resolve_secret;
use crate::config::{ClusterConfig, Environment};

/// Most replicas `expected_replicas` may name (as `upstream.limits.replicas`).
const MAX_REPLICAS: u32 = 1000;

pub(super) fn cluster(
    c: &RawCluster,
    raw: &RawConfig,
    base: &Path,
    env: &dyn Environment,
    p: &mut Problems,
) -> Option<ClusterConfig> {
    let before = p.count();
    redis_url(&c.redis_url, p);
    if c.redis_password.is_some() {
        p.add(
            "cluster.redis_password",
            "secrets never go in the config file: use redis_password_env or redis_password_file",
        );
    }
    let redis_password = resolve_secret(
        "cluster.redis_password",
        None,
        c.redis_password_env.as_deref(),
        c.redis_password_file.as_deref(),
        base,
        env,
        p,
    );
    let key_prefix = c.key_prefix.clone().unwrap_or_else(|| "pgw".into());
    if !(1..=64).contains(&key_prefix.len())
        || !key_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        p.add("cluster.key_prefix", "must be 1 to 64 letters, digits, '-', '_', '.' or ':'");
    }
    let timeout = positive(c.timeout.unwrap_or(Duration::from_millis(20)), "cluster.timeout", p);
    let expected_replicas = c.expected_replicas.unwrap_or(1);
    if expected_replicas == 0 {
        p.add("cluster.expected_replicas", "must be at least 1");
    } else if expected_replicas > MAX_REPLICAS {
        p.add("cluster.expected_replicas", format!("must be at most {MAX_REPLICAS}"));
    }
    if raw.upstream.limits.replicas.is_some_and(|n| n > 1) {
        p.add(
            "upstream.limits.replicas",
            "leave it unset with [cluster]: replicas share the whole budget through Redis, and \
             cluster.expected_replicas is the share each takes while Redis is unavailable",
        );
    }
    (p.count() == before).then(|| ClusterConfig {
        redis_url: c.redis_url.clone(),
        redis_password,
        key_prefix,
        timeout,
        expected_replicas,
    })
}

/// `redis://host[:port][/db]` or `rediss://...`, with no password in it (the URL is logged and
/// shown by `check`; the password comes from `redis_password_env` / `redis_password_file`).
fn redis_url(url: &str, p: &mut Problems) {
    let field = "cluster.redis_url";
    let Some((scheme, rest)) = url.split_once("://") else {
        p.add(field, "must be redis://host[:port] or rediss://host[:port]");
        return;
    };
    if !matches!(scheme, "redis" | "rediss") {
        p.add(field, "scheme must be redis:// or rediss:// (TLS)");
        return;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let query = rest.split_once('?').map_or("", |(_, q)| q);
    if query.to_ascii_lowercase().contains("pass") {
        p.add(field, "must not carry a password: use cluster.redis_password_env or cluster.redis_password_file");
        return;
    }
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        if userinfo.contains(':') {
            // Never echo the URL: it holds the password.
            p.add(field, "must not carry a password: use cluster.redis_password_env or cluster.redis_password_file");
            return;
        }
    }
    match redis::parse_redis_url(url).map(redis::IntoConnectionInfo::into_connection_info) {
        Some(Ok(info)) if info.redis.password.is_some() => {
            p.add(field, "must not carry a password: use cluster.redis_password_env or cluster.redis_password_file");
        }
        Some(Ok(_)) => {}
        // Not echoed: a mistyped URL may still hold a password.
        _ => p.add(field, "is not a Redis URL (redis://host[:port][/db])"),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::tests::{base, env, problems};
    use crate::config::load_str;

    fn with(cluster: &str) -> String {
        format!("{}[cluster]\n{cluster}\n", base())
    }

    #[test]
    fn a_valid_section_loads_with_its_defaults() {
        let cfg = load_str(&with("redis_url = \"redis://127.0.0.1:6379\""), Path::new("."), &env()).unwrap();
        let c = cfg.cluster.unwrap();
        assert_eq!((c.key_prefix.as_str(), c.timeout.as_millis(), c.expected_replicas), ("pgw", 20, 1));
        assert!(c.redis_password.is_none());
        let cfg = load_str(
            &with("redis_url = \"rediss://redis.example:6380/2\"\nredis_password_env = \"PALETTE_PASSWORD\"\nkey_prefix = \"t1\"\ntimeout = \"50ms\"\nexpected_replicas = 3"),
            Path::new("."),
            &env(),
        )
        .unwrap();
        let c = cfg.cluster.unwrap();
        assert_eq!(c.redis_password.map(|s| s.expose().to_string()), Some("pw".into()));
        assert_eq!((c.key_prefix.as_str(), c.expected_replicas), ("t1", 3));
    }

    #[test]
    fn bad_values_are_named_by_field() {
        let p = problems(&with(
            "redis_url = \"http://127.0.0.1:6379\"\ntimeout = \"0s\"\nexpected_replicas = 0\nkey_prefix = \"a b\"",
        ));
        let mut p = p;
        p.sort();
        assert_eq!(
            p,
            [
                "cluster.expected_replicas: must be at least 1",
                "cluster.key_prefix: must be 1 to 64 letters, digits, '-', '_', '.' or ':'",
                "cluster.redis_url: scheme must be redis:// or rediss:// (TLS)",
                "cluster.timeout: must be greater than zero",
            ]
        );
        assert!(problems(&with("redis_url = \"127.0.0.1:6379\"")).iter().any(|l| l.starts_with("cluster.redis_url")));
    }

    #[test]
    fn a_password_is_never_inline_and_never_echoed() {
        for url in [
            "redis://:hunter2@127.0.0.1:6379",
            "redis://user:hunter2@127.0.0.1:6379",
            "redis://127.0.0.1:6379/?pass=hunter2",
        ] {
            let p = problems(&with(&format!("redis_url = \"{url}\"")));
            assert_eq!(p.len(), 1, "{url}: {p:?}");
            assert!(p[0].starts_with("cluster.redis_url: must not carry a password"), "{p:?}");
            assert!(!p[0].contains("hunter2"), "{p:?}");
        }
        let p = problems(&with("redis_url = \"redis://127.0.0.1:6379\"\nredis_password = \"hunter2\""));
        assert!(p.iter().any(|l| l.starts_with("cluster.redis_password: secrets never go")), "{p:?}");
        assert!(p.iter().all(|l| !l.contains("hunter2")));
        let p = problems(&with("redis_url = \"redis://127.0.0.1:6379\"\nredis_password_env = \"UNSET_VAR\""));
        assert_eq!(p, vec!["cluster.redis_password_env: environment variable UNSET_VAR is not set".to_string()]);
    }

    #[test]
    fn static_replicas_and_a_cluster_do_not_mix() {
        let text = with("redis_url = \"redis://127.0.0.1:6379\"").replace(
            "url = \"http://127.0.0.1:1\"\n",
            "url = \"http://127.0.0.1:1\"\n[upstream.limits]\nreplicas = 3\n",
        );
        let p = problems(&text);
        assert!(p.len() == 1 && p[0].starts_with("upstream.limits.replicas: leave it unset with [cluster]"), "{p:?}");
    }
}
