//! The Grafana dashboard and the Prometheus alerts in deploy/ use only metric names (and
//! histogram series) that a running gateway exports, so they cannot drift from the code.
use std::collections::BTreeSet;
use std::process::Command;

use crate::support::*;

fn names(args: &[&str]) -> BTreeSet<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/metric-names.py");
    let out = Command::new("python3").arg(script).args(args).output().expect("python3 runs deploy/metric-names.py");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

/// After traffic that makes every metric appear (a login, a client-limited request, a queue wait,
/// a 429 from Palette), every name the dashboard and the alerts use is in /metrics.
#[tokio::test]
async fn dashboard_and_alerts_use_only_exported_metrics() {
    let rules = format!("[rate_limit]\ndefault = {{ per_second = 0.1, burst = 1 }}\n{}", standard_rules());
    let extra = "[[upstream.limits.prefix]]\nprefix = \"/v1/packs\"\nper_second = 5\nburst = 1\n";
    let h = Harness::start(standard_fake(), extra, &rules).await;
    h.wait_ready().await;
    // One request each for ci (through the budget), bot, and a second ci request over its limit.
    assert_eq!(h.http.get(h.url("/v1/packs")).header("ApiKey", CI_KEY).send().await.unwrap().status(), 200);
    assert_eq!(h.http.get(h.url("/v1/packs")).header("ApiKey", CI_KEY).send().await.unwrap().status(), 429);
    h.fake.force_429(1);
    assert_eq!(h.http.get(h.url("/v1/packs")).header("ApiKey", BOT_KEY).send().await.unwrap().status(), 200);
    assert_eq!(h.http.get(h.url("/v1/packs")).header("ApiKey", "pgw_unknown").send().await.unwrap().status(), 401);

    let (text, _) = h.metrics().await;
    let exported: BTreeSet<&str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    let series: BTreeSet<&str> =
        text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
    let used_base = names(&["--base"]);
    let used = names(&[]);
    assert!(used_base.len() >= 10, "metric-names.py found only {used_base:?}");
    let missing: Vec<_> = used_base.iter().filter(|n| !exported.contains(n.as_str())).collect();
    assert!(missing.is_empty(), "deploy/ uses metrics the gateway does not export: {missing:?}");
    let missing_series: Vec<_> = used.iter().filter(|n| !series.contains(n.as_str())).collect();
    assert!(missing_series.is_empty(), "deploy/ uses series the gateway does not export: {missing_series:?}");
}
