# shellcheck shell=bash disable=SC2034  # (variables used by the scripts that source this)
# Shared by bench/run.sh and bench/extra.sh (sourced, not run): paths, ports, configs, starting
# and stopping the upstream, palette-gateway and the peer proxies, and parsing load-generator output.
# Everything listens on 127.0.0.1 only.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
W=${BENCH_WORK:-/tmp/pgw-bench}
# The gateway's configs live in a directory of their own: the gateway watches its config's
# directory for hot reload, and the logs written to $W would otherwise wake that watcher on every
# log line.
CONF=$W/conf
mkdir -p "$W" "$CONF"

# A GW_BIN given by the caller (.ci/run passes its static release binary) is used as it is.
GW_BIN_GIVEN=${GW_BIN:+1}
GW_BIN=${GW_BIN:-$REPO/target/release/palette-gateway}
FLOOR_BIN=${FLOOR_BIN:-$REPO/target/release/examples/floor_proxy}
UP_BIN=$BENCH_DIR/upstream/target/release/bench-upstream
IDLE_BIN=$BENCH_DIR/upstream/target/release/idle-clients

# CPU layout (issue 6): every proxy on CPU 1; the load generator and the upstream on CPU 0.
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}

# The local key clients present, and what the upstream must receive instead.
KEY=bench-local-key-0123456789abcdef
TOKEN_KEY=bench-token-client-key-0123456789ab
UP_SECRET=UPSTREAM-SECRET
PROJECT="p-123"
LOGIN_PASSWORD=bench-password

# Ports (loopback). The peers use the same numbers as ../shared/bench/peers.sh + compare.sh.
P_UP=18090        # bench-upstream (main table and extras)
P_UP_TOK=18091    # bench-upstream issuing short-lived tokens (token refresh test)
P_NGINX=18081     # nginx, HTTP/1.1
P_NGINX_H2=18181  # nginx, h2c (nginx 1.22 serves cleartext HTTP/2 only on an `http2` listener)
P_HAPROXY=18082   # haproxy, HTTP/1.1 and h2c (preface detection)
P_CADDY=18083     # caddy, HTTP/1.1 and h2c
P_GW=18084        # palette-gateway, HTTP/1.1 and h2c
P_GW_ADMIN=18085  # its admin listener (/metrics)
P_GWT=18086       # palette-gateway for the token test
P_GWT_ADMIN=18087
P_FLOOR=18088     # examples/floor_proxy (the stack's floor), HTTP/1.1 and h2c

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# --- processes ------------------------------------------------------------------------------------

PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}

# bg NAME CPU CMD...: start CMD pinned to CPU, output to $W/NAME.log; sets $BG_PID.
bg() {
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" >"$W/$name.log" 2>&1 &
    BG_PID=$!
    PIDS+=("$BG_PID")
}

# stop PID: stop one process this script started.
stop() {
    local p=$1 q keep=()
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
    for q in "${PIDS[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
    PIDS=("${keep[@]}")
}

# wait_ok URL [curl args...]: until URL answers 2xx (10 s at most).
wait_ok() {
    local url=$1
    shift
    for _ in $(seq 100); do
        if curl -fsS -o /dev/null --max-time 1 "$@" "$url" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# hwm_kb PID / rss_kb PID: peak and current resident set (kB).
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# wait_quiet: until the machine is idle (under 15% of both CPUs busy over a second, nothing of
# ours running but the idle upstream), 60 s at most. Other work on the host skews every figure.
wait_quiet() {
    local i busy
    for i in $(seq 60); do
        busy=$(awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $5 + $6}' /proc/stat; sleep 1
            awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $5 + $6}' /proc/stat)
        busy=$(awk 'NR == 1 {b = $1; i = $2} NR == 2 {db = $1 - b; di = $2 - i; printf "%.0f", 100 * db / (db + di)}' <<<"$busy")
        [ "$busy" -lt 15 ] && return 0
        [ "$i" = 1 ] && log "waiting for the machine to be idle (${busy}% busy)"
    done
    log "the machine stayed busy (${busy}%): figures may be skewed"
}

# --- set-up ---------------------------------------------------------------------------------------

ensure_tools() {
    local missing=() t
    for t in nginx haproxy caddy wrk h2load curl taskset ss pgrep; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "installing the load generators and peer proxies (missing: ${missing[*]})"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        nginx haproxy caddy wrk nghttp2-client curl util-linux iproute2 procps >/dev/null
    # The packages' own services are not wanted (and may hold port 80).
    for t in nginx haproxy caddy; do
        if command -v systemctl >/dev/null 2>&1; then $sudo systemctl stop "$t" >/dev/null 2>&1 || true; fi
    done
}

build_all() {
    if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
        if [ -z "$GW_BIN_GIVEN" ]; then
            log "cargo build --release (palette-gateway)"
            (cd "$REPO" && cargo build --release --locked --quiet)
        fi
        # The floor row (bench/run.sh) is built from this checkout even when GW_BIN is given.
        case " ${PROXIES:-} " in *" floor "*)
            log "cargo build --release --example floor_proxy"
            (cd "$REPO" && cargo build --release --locked --quiet --example floor_proxy)
        esac
        log "cargo build --release --manifest-path bench/upstream/Cargo.toml"
        cargo build --release --locked --quiet --manifest-path "$BENCH_DIR/upstream/Cargo.toml"
    fi
    [ -x "$GW_BIN" ] || die "no $GW_BIN"
    [ -x "$UP_BIN" ] || die "no $UP_BIN"
    case " ${PROXIES:-} " in *" floor "*) [ -x "$FLOOR_BIN" ] || die "no $FLOOR_BIN" ;; esac
}

# The file descriptors 10,000 idle connections need (the hard limit permitting).
raise_nofile() {
    local hard
    hard=$(ulimit -Hn)
    if [ "$hard" = unlimited ] || [ "$hard" -ge 65536 ]; then ulimit -n 65536; else ulimit -n "$hard"; fi
}

# --- the upstream ---------------------------------------------------------------------------------

# start_upstream [PORT [extra args...]]: bench-upstream on CPU 0 checking the credential swap.
start_upstream() {
    local port=${1:-$P_UP}
    shift || true
    bg "upstream-$port" "$LOAD_CPU" "$UP_BIN" --listen "127.0.0.1:$port" \
        --expect-apikey "$UP_SECRET" --expect-project "$PROJECT" "$@"
    UP_PID=$BG_PID
    wait_ok "http://127.0.0.1:$port/v1/ping" -H "ApiKey: $UP_SECRET" -H "ProjectUid: $PROJECT" ||
        die "bench-upstream did not start on $port (see $W/upstream-$port.log)"
}

# --- palette-gateway ------------------------------------------------------------------------------

sha256_hash() { printf 'sha256:%s' "$(printf %s "$1" | sha256sum | cut -d' ' -f1)"; }

# gateway_config FILE LISTEN ADMIN UPSTREAM_PORT [token]: the full job. A local key checked by
# hash, an allow policy, a ProjectUid route, the swap to an upstream ApiKey (or, with `token`, a
# second client whose credential is a login with a token lifetime of TOKEN_LIFETIME), client and
# global rate limits and an upstream budget far above what the run reaches, metrics (always on,
# on the admin listener), and [log] level "warn", which turns the per-request access log off
# (GW_LOG_LEVEL=info turns it on: one JSON line per request on stderr, which bg sends to a file).
gateway_config() {
    local file=$1 listen=$2 admin=$3 up=$4 token=${5:-}
    cat >"$file" <<TOML
[server]
listen = "127.0.0.1:$listen"
admin_listen = "127.0.0.1:$admin"
max_connections = 20000
max_inflight_requests = 100000
idle_timeout = "10m"

[log]
format = "json"
level = "${GW_LOG_LEVEL:-warn}"

[upstream]
url = "http://127.0.0.1:$up"
connect_timeout = "2s"
request_timeout = "30s"

[upstream.limits]
preset = "none"
max_queue = 100000

[[upstream.limits.prefix]]
prefix = "/v1"
per_second = 1000000
burst = 1000000

[rate_limit]
default = { per_second = 1000000, burst = 1000000 }
global = { per_second = 1000000, burst = 1000000 }

[credentials.default]
api_key_env = "BENCH_PALETTE_KEY"

[[clients]]
name = "bench"
keys = ["$(sha256_hash "$KEY")"]
allow = ["GET /v1/**"]

[[routes]]
name = "bench"
path_prefix = "/v1"
project_uid = "$PROJECT"
TOML
    if [ "$token" = token ]; then
        cat >>"$file" <<TOML

[credentials.login]
email = "bench@example.com"
password_env = "BENCH_PALETTE_PASSWORD"
token_lifetime = "${TOKEN_LIFETIME:-4s}"
refresh_before = "${TOKEN_REFRESH_BEFORE:-2s}"

[[clients]]
name = "bench-token"
keys = ["$(sha256_hash "$TOKEN_KEY")"]
credential = "login"
allow = ["GET /v1/**"]
TOML
    fi
}

# start_gateway CONFIG LISTEN ADMIN [NAME]: palette-gateway on CPU 1 with one worker thread.
# tokio's multi-thread runtime reads TOKIO_WORKER_THREADS when the builder is not given a count
# (tokio >= 1.25); PALETTE_GATEWAY_WORKER_THREADS is the gateway's own --worker-threads where the
# binary has it. RUST_LOG is unset so the config's [log] level applies.
start_gateway() {
    local cfg=$1 listen=$2 admin=$3 name=${4:-gateway}
    BENCH_PALETTE_KEY=$UP_SECRET BENCH_PALETTE_PASSWORD=$LOGIN_PASSWORD \
        TOKIO_WORKER_THREADS=1 PALETTE_GATEWAY_WORKER_THREADS=1 \
        bg "$name" "$PROXY_CPU" env -u RUST_LOG -u PALETTE_GATEWAY_CONFIG "$GW_BIN" --config "$cfg"
    GW_PID=$BG_PID
    wait_ok "http://127.0.0.1:$admin/healthz" || die "palette-gateway did not start (see $W/$name.log)"
    wait_ok "http://127.0.0.1:$listen/v1/ping" -H "ApiKey: $KEY" ||
        die "palette-gateway does not forward (see $W/$name.log)"
}

# gateway_threads PID: its threads by name, e.g. "1 tokio-runtime-w".
gateway_threads() {
    cat /proc/"$1"/task/*/comm 2>/dev/null | sort | uniq -c | awk '{printf "%s%s %s", sep, $1, $2; sep=", "}'
}

# --- the peers (configs from ../shared/bench/peers.sh, upstream moved to bench-upstream) ----------

write_peer_configs() {
    mkdir -p "$W/nginx" "$W/caddy-data" "$W/caddy-config"
    cat >"$W/nginx.conf" <<NG
worker_processes 1;
daemon off;
pid $W/nginx.pid;
error_log $W/nginx.err warn;
events { worker_connections 20000; }
http {
  access_log off;
  # nginx closes a client connection after 1000 requests by default (HTTP/2 included), and
  # h2load does not reconnect: the other proxies have no such limit.
  keepalive_requests 1000000;
  client_body_temp_path $W/nginx/body;
  proxy_temp_path $W/nginx/proxy;
  fastcgi_temp_path $W/nginx/fastcgi;
  uwsgi_temp_path $W/nginx/uwsgi;
  scgi_temp_path $W/nginx/scgi;
  upstream palette { server 127.0.0.1:$P_UP; keepalive 64; keepalive_requests 1000000; }
  server { listen 127.0.0.1:$P_NGINX backlog=4096; listen 127.0.0.1:$P_NGINX_H2 http2 backlog=4096;
    location / { proxy_pass http://palette; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Authorization ""; proxy_set_header ApiKey "$UP_SECRET"; proxy_set_header ProjectUid "$PROJECT"; } }
}
NG
    cat >"$W/haproxy.cfg" <<HA
global
  maxconn 8192
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:$P_HAPROXY
  http-request del-header Authorization
  http-request set-header ApiKey $UP_SECRET
  http-request set-header ProjectUid $PROJECT
  default_backend be
backend be
  server up 127.0.0.1:$P_UP
HA
    cat >"$W/Caddyfile" <<CA
{
  admin off
  auto_https off
  servers {
    protocols h1 h2c
  }
}
http://127.0.0.1:$P_CADDY {
  reverse_proxy 127.0.0.1:$P_UP {
    header_up -Authorization
    header_up ApiKey $UP_SECRET
    header_up ProjectUid $PROJECT
  }
}
CA
}

# start_proxy NAME: start one proxy (gateway|gateway-log|floor|nginx|haproxy|caddy) on CPU 1, one worker; sets
# PROXY_PID (the process whose memory is reported: nginx's worker, not its master).
start_proxy() {
    case $1 in
    gateway)
        start_gateway "$CONF/gateway.toml" $P_GW $P_GW_ADMIN
        PROXY_PID=$GW_PID
        ;;
    gateway-log)
        start_gateway "$CONF/gateway-log.toml" $P_GW $P_GW_ADMIN gateway-log
        PROXY_PID=$GW_PID
        ;;
    floor)
        # The stack's floor: the gateway's hyper server and client settings, header swap only;
        # tokio current-thread (one worker, like the gateway's --worker-threads 1).
        bg floor "$PROXY_CPU" "$FLOOR_BIN" "127.0.0.1:$P_FLOOR" "http://127.0.0.1:$P_UP" "$UP_SECRET" "$PROJECT"
        PROXY_PID=$BG_PID
        wait_ok "http://127.0.0.1:$P_FLOOR/v1/ping" -H "ApiKey: $KEY" || die "floor_proxy did not start (see $W/floor.log)"
        ;;
    nginx)
        bg nginx "$PROXY_CPU" nginx -c "$W/nginx.conf" -p "$W/nginx"
        PROXY_MAIN=$BG_PID
        wait_ok "http://127.0.0.1:$P_NGINX/v1/ping" -H "ApiKey: $KEY" || die "nginx did not start (see $W/nginx.err)"
        PROXY_PID=$(pgrep -P "$PROXY_MAIN" nginx | head -n1)
        ;;
    haproxy)
        bg haproxy "$PROXY_CPU" haproxy -db -f "$W/haproxy.cfg"
        PROXY_MAIN=$BG_PID
        PROXY_PID=$BG_PID
        wait_ok "http://127.0.0.1:$P_HAPROXY/v1/ping" -H "ApiKey: $KEY" || die "haproxy did not start (see $W/haproxy.log)"
        ;;
    caddy)
        bg caddy "$PROXY_CPU" env GOMAXPROCS=1 XDG_DATA_HOME="$W/caddy-data" XDG_CONFIG_HOME="$W/caddy-config" \
            caddy run --config "$W/Caddyfile" --adapter caddyfile
        PROXY_PID=$BG_PID
        wait_ok "http://127.0.0.1:$P_CADDY/v1/ping" -H "ApiKey: $KEY" || die "caddy did not start (see $W/caddy.log)"
        ;;
    esac
    [ "$1" = nginx ] || PROXY_MAIN=$PROXY_PID
}

# port_of NAME PROTO (h1|h2)
port_of() {
    case $1:$2 in
    direct:*) echo $P_UP ;;
    gateway:* | gateway-log:*) echo $P_GW ;;
    floor:*) echo $P_FLOOR ;;
    nginx:h1) echo $P_NGINX ;;
    nginx:h2) echo $P_NGINX_H2 ;;
    haproxy:*) echo $P_HAPROXY ;;
    caddy:*) echo $P_CADDY ;;
    esac
}

# --- load generators ------------------------------------------------------------------------------

# Latency in wrk's units (us, ms, s) to milliseconds.
wrk_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.2f", n }'
}

# run_wrk DUR URL [header...]: prints "rps p50 p99 max non2xx errors" (latencies in ms).
run_wrk() {
    local dur=$1 url=$2 out
    shift 2
    local hs=()
    local h
    for h in "$@"; do hs+=(-H "$h"); done
    out=$(taskset -c "$LOAD_CPU" wrk -t1 -c64 -d"${dur}s" --latency "${hs[@]}" "$url" 2>&1)
    printf '%s\n' "$out" >"$W/last-wrk.txt"
    local rps p50 p99 max non2xx errs
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    max=$(awk '$1 == "Latency" {print $4}' <<<"$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $5}' <<<"$out")
    errs=$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10}' <<<"$out")
    printf '%s %s %s %s %s %s\n' "${rps:-0}" "$(wrk_ms "${p50:-0}")" "$(wrk_ms "${p99:-0}")" \
        "$(wrk_ms "${max:-0}")" "${non2xx:-0}" "${errs:-0}"
}

# latency_stats LOGFILE: h2load --log-file rows (start_us status elapsed_us) to
# "p50 p99 max n bad" (ms): percentiles over the completed requests (status -1 marks a failed
# stream); bad counts failed streams and non-2xx answers.
latency_stats() {
    local bad
    bad=$(awk '$2 < 200 || $2 > 299 {b++} END {print b + 0}' "$1")
    awk '$2 != -1 {print $3}' "$1" | sort -n | awk -v bad="$bad" '
        { v[NR] = $1 }
        END {
            if (NR == 0) { print "0 0 0 0 " bad; exit }
            i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
            i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
            printf "%.2f %.2f %.2f %d %d\n", v[i50] / 1000, v[i99] / 1000, v[NR] / 1000, NR, bad
        }'
}

# run_h2load DUR URL [header...]: HTTP/2 (h2c), 64 connections x 10 streams, for req/s.
# Prints "rps non2xx errors".
run_h2load() {
    local dur=$1 url=$2 out
    shift 2
    local hs=() h
    for h in "$@"; do hs+=(-H "$h"); done
    out=$(taskset -c "$LOAD_CPU" h2load -t1 -c64 -m10 -D "$dur" "${hs[@]}" "$url" 2>&1)
    printf '%s\n' "$out" >"$W/last-h2load.txt"
    local rps errored timeout non2xx
    rps=$(awk '/^finished in/ {print $4}' <<<"$out")
    non2xx=$(awk '/^status codes:/ {print $5 + $7 + $9}' <<<"$out")
    # "failed" also counts 4xx/5xx answers; errored and timeout are transport failures.
    read -r errored timeout < <(awk '/^requests:/ {print $12, $14}' <<<"$out")
    printf '%s %s %s\n' "${rps:-0}" "${non2xx:-0}" $((${errored:-0} + ${timeout:-0}))
}

# h2load_latency DUR URL [header...]: the same load with h2load's per-request log (which costs
# the load generator's CPU, so req/s comes from run_h2load). Prints "p50 p99 max bad" (ms).
h2load_latency() {
    local dur=$1 url=$2
    shift 2
    local hs=() h
    for h in "$@"; do hs+=(-H "$h"); done
    rm -f "$W/h2load.log"
    taskset -c "$LOAD_CPU" h2load -t1 -c64 -m10 -D "$dur" --log-file="$W/h2load.log" "${hs[@]}" "$url" \
        >"$W/last-h2load-latency.txt" 2>&1
    local p50 p99 max n bad
    read -r p50 p99 max n bad <<<"$(latency_stats "$W/h2load.log")"
    printf '%s %s %s %s\n' "$p50" "$p99" "$max" "$bad"
}

# cpu_ticks PID: "user system" CPU time so far, in clock ticks.
cpu_ticks() { awk '{print $14, $15}' "/proc/$1/stat" 2>/dev/null || echo 0 0; }
CLK_TCK=$(getconf CLK_TCK)

# upstream_stat NAME [PORT]: one counter of bench-upstream's /__stats (conns, ok, logins...).
upstream_stat() {
    curl -s "http://127.0.0.1:${2:-$P_UP}/__stats" | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"
}
