#!/usr/bin/env bash
# The response cache's saving (issue 12 §3): 50 clients each poll the same 3 GETs 10 times a
# second for 30 s through the gateway in front of the fake Palette enforcing Palette's limits,
# without the cache and with cache.ttl = "2s" (coalesce on). Prints Markdown tables: upstream calls
# per path per second, requests refused by the budget, p50/p99 of cache hits vs proxied answers.
# Everything runs in one process (examples/cache_bench.rs) on 127.0.0.1.
#
#   bash bench/cache.sh              full run (~1 minute plus the build)
#   SMOKE=1 bash bench/cache.sh      10 clients for 3 s: checks that it works; figures mean nothing
#
# Knobs: CLIENTS, RATE (polls per client per path per second), DUR (seconds), TTL ("2s"),
# CACHE_BENCH_PROFILE (cargo profile, default dev: the test build's dependencies are reused; the
# upstream-call and refusal counts do not depend on it, the latencies do: use release for those).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
profile=${CACHE_BENCH_PROFILE:-dev}
cargo build --locked --quiet --profile "$profile" --example cache_bench
dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
exec "target/$dir/examples/cache_bench"
