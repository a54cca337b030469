#!/usr/bin/env bash
# What [cluster] adds to a request: p50/p99 latency through the gateway without and with the
# budget shared through Redis, and Redis calls per request. Everything on 127.0.0.1: an nginx
# upstream answering every path with a small JSON body, a redis-server of its own, one gateway
# (GW_BIN, default target/release/palette-gateway, else target/debug), wrk as the load.
# The limits are set far above the load, so that every request has a client limit, a global
# limit and a budget slot to take in Redis (one call for all three) and none waits.
#
#   bash bench/cluster.sh                 # 5 s per row
#   DUR=10 CONNS=16 bash bench/cluster.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
DUR=${DUR:-5}
CONNS=${CONNS:-8}
GW_BIN=${GW_BIN:-}
if [ -z "$GW_BIN" ]; then
    for c in target/release/palette-gateway target/debug/palette-gateway; do
        [ -x "$c" ] && GW_BIN=$c && break
    done
fi
[ -x "${GW_BIN:-}" ] || { echo "no gateway binary: cargo build, or set GW_BIN" >&2; exit 1; }
for tool in wrk nginx redis-server redis-cli curl sha256sum; do
    command -v "$tool" >/dev/null || { echo "$tool is missing" >&2; exit 1; }
done

W=$(mktemp -d /tmp/pgw-cluster-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P_UP=$(free_port); P_REDIS=$(free_port); P_GW=$(free_port); P_ADMIN=$(free_port)

cat >"$W/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $W/nginx.pid;
error_log $W/nginx.err warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $W; proxy_temp_path $W; fastcgi_temp_path $W; uwsgi_temp_path $W; scgi_temp_path $W;
    server { listen 127.0.0.1:$P_UP; default_type application/json; location / { return 200 '{"items":[]}'; } }
}
NGINX
nginx -c "$W/nginx.conf" -e "$W/nginx.err" & pids+=($!)
redis-server --port "$P_REDIS" --bind 127.0.0.1 --save '' --appendonly no >"$W/redis.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do
    redis-cli -p "$P_REDIS" ping >/dev/null 2>&1 && curl -fs "http://127.0.0.1:$P_UP/" >/dev/null && break
    sleep 0.1
done

KEY=pgw_bench-cluster-key-0123456789abcdef0123456789
HASH=sha256:$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)
config() {
    cat <<TOML
[server]
listen = "127.0.0.1:$P_GW"
admin_listen = "127.0.0.1:$P_ADMIN"
[upstream]
url = "http://127.0.0.1:$P_UP"
[upstream.limits]
preset = "none"
[[upstream.limits.prefix]]
prefix = "*"
per_second = 1000000
burst = 1000000
[credentials.default]
api_key_env = "BENCH_PALETTE_KEY"
[rate_limit]
default = { per_second = 1000000, burst = 1000000 }
[log]
level = "warn"
[[clients]]
name = "bench"
keys = ["$HASH"]
projects = ["*"]
$1
TOML
}

# row NAME CONNS CLUSTER_SECTION: p50 and p99 and requests of one wrk run, then Redis calls/request.
row() {
    local name=$1 conns=$2 section=$3 gw out p50 p99 reqs calls
    config "$section" >"$W/$name.toml"
    redis-cli -p "$P_REDIS" config resetstat >/dev/null
    BENCH_PALETTE_KEY=bench-upstream-key "$GW_BIN" --config "$W/$name.toml" >"$W/$name.log" 2>&1 & gw=$!
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$P_ADMIN/readyz" >/dev/null && break; sleep 0.1; done
    if [ -n "$section" ]; then
        for _ in $(seq 50); do
            curl -fs "http://127.0.0.1:$P_ADMIN/metrics" | grep -q '^palette_gateway_cluster_redis_up 1' && break
            sleep 0.1
        done
    fi
    out=$(wrk -t1 -c"$conns" -d"${DUR}s" --latency -H "ApiKey: $KEY" "http://127.0.0.1:$P_GW/v1/packs")
    kill "$gw"; wait "$gw" 2>/dev/null || true
    p50=$(awk '$1=="50%"{print $2}' <<<"$out")
    p99=$(awk '$1=="99%"{print $2}' <<<"$out")
    reqs=$(awk '/requests in/{print $1}' <<<"$out")
    non2xx=$(awk '/Non-2xx/{print $NF}' <<<"$out")
    calls=$(redis-cli -p "$P_REDIS" info commandstats | awk -F'[:=,]' '/^cmdstat_(evalsha|eval):/{n+=$3} END{print n+0}')
    local local_calls
    local_calls=$(awk -v c="$calls" -v r="$reqs" 'BEGIN{printf "%.2f", (r>0 ? c/r : 0)}')
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$name" "$conns" "$p50" "$p99" "$reqs" "${non2xx:-0}" "$local_calls"
}

CLUSTER="[cluster]
redis_url = \"redis://127.0.0.1:$P_REDIS\"
timeout = \"50ms\""
echo "gateway: $GW_BIN; wrk -t1 -d${DUR}s; $(nproc) CPUs"
echo
echo "| row | connections | p50 | p99 | requests | non-2xx | Redis calls/request (heartbeats included) |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
# One connection: each request alone, so the difference is what the Redis calls add.
row local 1 ""
row cluster 1 "$CLUSTER"
# Several at once: the budget's slots are reserved one after the other per prefix and replica.
row local "$CONNS" ""
row cluster "$CONNS" "$CLUSTER"
