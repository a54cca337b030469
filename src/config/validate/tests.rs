//! Tests of the whole file (every section at once, arbitrary input); each section's own tests
//! are beside it, using the helpers here.

use crate::config::{load_str, ConfigError, MapEnv};

use std::path::Path;

pub(super) const KEY_HASH: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

pub(super) fn env() -> MapEnv {
    MapEnv::new().with("PALETTE_API_KEY", "k-123").with("PALETTE_PASSWORD", "pw")
}

pub(super) fn problems(text: &str) -> Vec<String> {
    match load_str(text, Path::new("."), &env()) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems(),
    }
}

pub(super) fn base() -> String {
    "[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n".to_string()
}

#[test]
fn minimal_config_loads() {
    let cfg = load_str(&base(), Path::new("."), &env()).unwrap();
    assert_eq!(cfg.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(cfg.credentials.len(), 1);
}

#[test]
fn full_example_loads() {
    let text = format!(
        "{}[credentials.ops]\nemail = \"ops@example.com\"\npassword_env = \"PALETTE_PASSWORD\"\norg = \"acme\"\ntoken_lifetime = \"15m\"\nrefresh_before = \"3m\"\n\
         [auth]\nanonymous_client = \"ci\"\n[[clients]]\nname = \"ci\"\nkeys = [\"{KEY_HASH}\"]\ncredential = \"ops\"\nprojects = [\"5ca1ab1e0000000000000001\"]\nallow = [\"GET /v1/**\"]\n\
         [[routes]]\nname = \"team-a\"\npath_prefix = \"/team-a\"\nstrip_prefix = true\nproject_uid = \"5ca1ab1e0000000000000001\"\nmethods = [\"GET\"]\nclients = [\"ci\"]\n",
        base()
    );
    let cfg = load_str(&text, Path::new("."), &env()).unwrap();
    assert_eq!(cfg.anonymous_client, Some(crate::config::ClientId(0)));
    assert_eq!(cfg.routes.len(), 1);
    let mut h = [0u8; 32];
    h[31] = 1;
    assert_eq!(cfg.client_by_key_hash(&h), Some(crate::config::ClientId(0)));
}

#[test]
fn unknown_keys_are_errors() {
    let e = load_str(&format!("{}[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n", base()), Path::new("."), &env())
        .unwrap_err();
    assert!(matches!(e, ConfigError::Syntax(ref m) if m.contains("lisen")), "{e}");
}

#[test]
fn every_problem_is_named_by_field() {
    let text = format!(
        "{}[[clients]]\nname = \"a\"\n[[clients]]\nname = \"b\"\n[[clients]]\nname = \"c\"\ncredential = \"opz\"\nallow = [\"GET\"]\nkeys = [\"plain\"]\n",
        base()
    );
    let p = problems(&text);
    assert!(p.contains(&"clients[2].credential: no credential named \"opz\"".to_string()), "{p:?}");
    assert!(p.iter().any(|l| l.starts_with("clients[2].allow[0]:")), "{p:?}");
    assert!(p.iter().any(|l| l.starts_with("clients[2].keys[0]:")), "{p:?}");
}

#[test]
fn durations_are_humantime() {
    let e = load_str(
        &format!(
            "{}[credentials.ops]\nemail = \"a@b\"\npassword_env = \"PALETTE_PASSWORD\"\ntoken_lifetime = \"soon\"\n",
            base()
        ),
        Path::new("."),
        &env(),
    )
    .unwrap_err();
    assert!(matches!(e, ConfigError::Syntax(_)), "{e}");
}

pub(super) fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pg-cfg-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_config_file_may_start_with_a_bom_and_a_bad_ca_is_named() {
    assert!(problems(&format!("\u{feff}{}", base())).is_empty());
    let dir = scratch("ca");
    // A PEM block labelled CERTIFICATE that is no certificate: rustls cannot trust it.
    std::fs::write(dir.join("ca.pem"), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
    let text = "[upstream]\nurl = \"http://127.0.0.1:1\"\nca_file = \"ca.pem\"\n[credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n";
    let p = match load_str(text, &dir, &env()) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems(),
    };
    assert!(p.len() == 1 && p[0].starts_with("upstream.ca_file: unusable CA certificate"), "{p:?}");
}

/// A number for every duration and rate key, from zero to absurd.
fn number() -> impl proptest::strategy::Strategy<Value = f64> {
    use proptest::prelude::*;
    prop_oneof![
        1 => prop_oneof![Just(0.0), Just(1e-12), Just(1e300), Just(f64::MAX), 0.0..1e12f64],
        1 => Just(0.001),
        1 => Just(1_000_000.0),
        4 => 0.001..1000.0f64,
    ]
}

/// A burst: mostly valid, sometimes far past the bound.
fn burst() -> impl proptest::strategy::Strategy<Value = u32> {
    use proptest::prelude::*;
    prop_oneof![1 => 0u32..=u32::MAX, 1 => Just(1_000_000u32), 4 => 1u32..1000]
}

/// A duration string for every magnitude humantime accepts.
fn duration() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let unit = prop::sample::select(vec!["ns", "ms", "s", "m", "h", "days", "years"]);
    prop_oneof![
        1 => (0u64..u64::MAX, unit.clone()),
        1 => Just((24, "h")),
        8 => (0u64..100, prop::sample::select(vec!["ms", "s", "m"])),
    ]
    .prop_map(|(n, unit)| format!("\"{n}{unit}\""))
}

/// A config with every duration and rate key set.
fn numeric_config(d: &[String], r: &[f64], b: &[u32], replicas: u32) -> String {
    format!(
        "[server]\nheader_read_timeout = {}\nidle_timeout = {}\nrequest_body_timeout = {}\nshutdown_delay = {}\ndrain_timeout = {}\n\
         [upstream]\nurl = \"http://127.0.0.1:1\"\nconnect_timeout = {}\nrequest_timeout = {}\nbody_idle_timeout = {}\n\
         [upstream.limits]\nmax_wait = {}\nreplicas = {replicas}\n[[upstream.limits.prefix]]\nprefix = \"/v1/x\"\nper_second = {:e}\nburst = {}\n\
         [credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n\
         [credentials.ops]\nemail = \"a@b\"\npassword_env = \"PALETTE_PASSWORD\"\ntoken_lifetime = {}\nrefresh_before = {}\n\
         [rate_limit]\ndefault = {{ per_second = {:e}, burst = {} }}\nglobal = {{ per_second = {:e} }}\n\
         [[clients]]\nname = \"c\"\nrate_limit = {{ per_second = {:e}, burst = {} }}\n",
        d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8], r[0], b[0], d[9], d[10], r[1], b[1], r[2], r[3], b[2],
    )
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    /// Whatever numbers the duration and rate keys hold, loading never panics, and a config
    /// that loads builds its runtime without a panic.
    #[test]
    fn numeric_keys_never_panic_in_load(
        d in proptest::collection::vec(duration(), 11),
        r in proptest::collection::vec(number(), 4),
        b in proptest::collection::vec(burst(), 3),
        replicas in 0u32..5000,
    ) {
        if let Ok(cfg) = load_str(&numeric_config(&d, &r, &b, replicas), Path::new("."), &env()) {
            runtime_survives(&cfg);
        }
    }

    /// Every value inside the bounds loads, and builds a runtime (client limits, budget,
    /// credentials, upstream client) whose clock arithmetic never panics.
    #[test]
    fn numeric_keys_within_bounds_build_the_runtime(
        ms in proptest::collection::vec(1u64..=86_400_000, 9),
        r in proptest::collection::vec(0.001..=1_000_000.0f64, 4),
        b in proptest::collection::vec(1u32..=1_000_000, 3),
        replicas in 1u32..=1000,
    ) {
        let mut d: Vec<String> = ms.iter().map(|m| format!("\"{m}ms\"")).collect();
        d.extend(["\"24h\"".to_string(), "\"23h\"".to_string()]);
        let cfg = load_str(&numeric_config(&d, &r, &b, replicas), Path::new("."), &env());
        let cfg = cfg.unwrap_or_else(|e| panic!("{e}"));
        runtime_survives(&cfg);
    }
}

/// Builds everything a config feeds at run time and drives it a little: limits checked,
/// a budget bucket taken and throttled, every duration added to a clock reading.
fn runtime_survives(cfg: &crate::config::Config) {
    let limits = crate::limit::ClientLimits::build(cfg, None);
    for _ in 0..3 {
        let _ = limits.check(crate::config::ClientId(0));
    }
    let budget = crate::limit::upstream::UpstreamBudget::build(&cfg.upstream.limits, None);
    if let Some(bucket) = budget.bucket_for(&crate::path::check("/v1/x").unwrap()) {
        for _ in 0..8 {
            let _ = bucket.throttled();
        }
        let _ = std::time::Duration::from_secs_f64(1.0 / bucket.current_rate());
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        for client in 0..3 {
            let _ = rt.block_on(bucket.acquire(crate::config::ClientId(client), cfg.upstream.limits.max_wait));
        }
    }
    {
        let upstream = crate::upstream::UpstreamClient::new(&cfg.upstream);
        let metrics = crate::metrics::Metrics::new();
        assert!(crate::credentials::Credentials::build(cfg, &upstream, None, &metrics, budget.auth_bucket()).is_ok());
        // Every duration must be addable to a real clock reading, whichever clock the gateway uses.
        #[allow(clippy::disallowed_methods, clippy::disallowed_types)]
        let now = std::time::Instant::now();
        let l = &cfg.server.limits;
        for d in [
            l.header_read_timeout,
            l.idle_timeout,
            l.request_body_timeout,
            l.send_timeout,
            l.shutdown_delay,
            l.drain_timeout,
            cfg.upstream.connect_timeout,
            cfg.upstream.request_timeout,
            cfg.upstream.body_idle_timeout,
            cfg.upstream.limits.max_wait,
        ] {
            let _ = now + d;
            let _ = tokio::time::Instant::now() + d;
        }
    }
}

/// The corners of every bound at once still build and run.
#[test]
fn the_extremes_of_every_bound_build_a_working_runtime() {
    let text = "[server]\nheader_read_timeout = \"24h\"\nidle_timeout = \"24h\"\nrequest_body_timeout = \"24h\"\n\
         [upstream]\nurl = \"http://127.0.0.1:1\"\nrequest_timeout = \"24h\"\nbody_idle_timeout = \"1ns\"\n\
         [upstream.limits]\nmax_wait = \"24h\"\nreplicas = 1000\n[[upstream.limits.prefix]]\nprefix = \"/v1/x\"\nper_second = 0.001\nburst = 1000000\n\
         [credentials.default]\napi_key_env = \"PALETTE_API_KEY\"\n\
         [rate_limit]\ndefault = { per_second = 0.001, burst = 1000000 }\nglobal = { per_second = 1000000, burst = 1 }\n\
         [[clients]]\nname = \"c\"\n";
    let cfg = load_str(text, Path::new("."), &env()).unwrap();
    runtime_survives(&cfg);
}

proptest::proptest! {
    /// Arbitrary text never panics the loader.
    #[test]
    fn arbitrary_input_gives_clean_error(text in "\\PC{0,200}") {
        let _ = load_str(&text, Path::new("."), &env());
    }
}
