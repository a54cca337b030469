#!/usr/bin/env bash
# Checks /metrics with Prometheus' own tools: `promtool check metrics` on the exposition, then a
# real Prometheus server on loopback scrapes the gateway (running --demo) and is queried over its
# HTTP API for `up == 1` and a request counter. Needs a built binary (argument 1).
set -euo pipefail

bin=${1:?usage: check-prometheus.sh path/to/palette-gateway}
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus curl >/dev/null
fi

# The demo listens on 127.0.0.1:8080 (proxy) and 127.0.0.1:9901 (admin): not 9090, so a
# Prometheus server that Debian's prometheus package starts on :9090 is no obstacle.
"$bin" --demo >"$work/gateway.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
    curl -fsS http://127.0.0.1:9901/healthz >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS http://127.0.0.1:9901/healthz >/dev/null

key=pgw_demo-ci-key-0123456789abcdefghijklmnopqrstuv
for _ in 1 2 3; do curl -fsS -H "ApiKey: $key" http://127.0.0.1:8080/v1/spectroclusters >/dev/null; done
curl -sS -o /dev/null -X DELETE -H "ApiKey: $key" http://127.0.0.1:8080/v1/spectroclusters/x

echo "promtool check metrics:"
curl -fsS http://127.0.0.1:9901/metrics | promtool check metrics
echo "ok"

cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: palette-gateway
    static_configs:
      - targets: ["127.0.0.1:9901"]
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address=127.0.0.1:9099 >"$work/prometheus.log" 2>&1 &
pids+=($!)

query() { curl -fsS --get http://127.0.0.1:9099/api/v1/query --data-urlencode "query=$1"; }
for _ in $(seq 1 60); do
    up=$(query 'up{job="palette-gateway"}' 2>/dev/null | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")' 2>/dev/null || true)
    [ "$up" = "1" ] && break
    sleep 0.5
done
[ "$up" = "1" ] || { echo "Prometheus never saw the gateway up"; cat "$work/prometheus.log"; exit 1; }
n=$(query 'sum(palette_gateway_requests_total{client="ci",code="200"})' | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(int(float(r[0]["value"][1])) if r else 0)')
[ "$n" = "3" ] || { echo "Prometheus sees $n successful ci requests, expected 3"; exit 1; }
echo "Prometheus scraped the gateway: up == 1, requests_total{client=\"ci\",code=\"200\"} == $n"
