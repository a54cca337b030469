//! The per-request cost of client limits, the upstream budget and metrics, measured apart from
//! the network: what a request pays for these steps on the hot path.

use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use palette_gateway::config::{load_str, MapEnv};
use palette_gateway::limit::upstream::UpstreamBudget;
use palette_gateway::limit::ClientLimits;
use palette_gateway::metrics::{method_label, Metrics};

fn config() -> palette_gateway::config::Config {
    let text = "[upstream]\nurl = \"http://127.0.0.1:1\"\n[credentials.default]\napi_key_env = \"K\"\n\
        [rate_limit]\ndefault = { per_second = 1000000, burst = 1000000 }\nglobal = { per_second = 1000000, burst = 1000000 }\n\
        [upstream.limits]\n[[upstream.limits.prefix]]\nprefix = \"/v1/spectroclusters\"\nper_second = 1000000\nburst = 4000000000\n\
        [[clients]]\nname = \"ci\"\n";
    load_str(text, Path::new("."), &MapEnv::new().with("K", "x")).expect("bench config")
}

fn overhead(c: &mut Criterion) {
    let cfg = config();
    let limits = ClientLimits::build(&cfg, None);
    let budget = UpstreamBudget::build(&cfg.upstream.limits, None);
    let metrics = Metrics::new();
    let path = palette_gateway::path::check("/v1/spectroclusters/abc").expect("path");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");

    c.bench_function("client_limits_check", |b| b.iter(|| limits.check(0.into())));
    // The bucket allows 4e9 requests at once, so the bench measures the bookkeeping, never a wait.
    c.bench_function("budget_lookup_and_acquire", |b| {
        b.to_async(&rt).iter(|| async {
            let bucket = budget.bucket_for(&path).expect("bucket");
            bucket.acquire(0.into(), Duration::from_secs(1)).await
        })
    });
    c.bench_function("metrics_per_request", |b| {
        b.iter(|| {
            let m = method_label(&http::Method::GET);
            metrics.inflight.inc();
            metrics.requests.with_label_values(&["ci", "none", m, "200"]).inc();
            metrics.request_duration.with_label_values(&["ci", "none", m]).observe(0.0012);
            metrics.upstream_duration.with_label_values(&["/v1/spectroclusters", "200"]).observe(0.001);
            metrics.queue_wait.with_label_values(&["/v1/spectroclusters"]).observe(0.0);
            metrics.inflight.dec();
        })
    });
    c.bench_function("path_check", |b| b.iter(|| palette_gateway::path::check("/v1/spectroclusters/abc/profiles")));
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = overhead
}
criterion_main!(benches);
