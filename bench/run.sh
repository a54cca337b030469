#!/usr/bin/env bash
# palette-gateway vs nginx, HAProxy and Caddy doing the same job, side by side in one run on
# this machine (issue 6). Everything on 127.0.0.1.
#
#   bench/run.sh                 full run: DUR=10 s per load, then bench/extra.sh
#   SMOKE=1 bench/run.sh         ~2 s per load, no warm-up, small extras: checks that every
#                                proxy and protocol works (non-zero req/s, only 2xx, no socket
#                                errors) and exits non-zero otherwise; the figures mean nothing
#
# Rows: direct (bench-upstream itself), gateway (palette-gateway, access log off), gateway-log
# (the same with [log] level "info": one JSON access-log line per request, to a file), floor
# (examples/floor_proxy: the gateway's own hyper server and client settings doing only the header
# swap, i.e. the stack's floor; "x floor" is a gateway row's req/s over the floor's), nginx, haproxy,
# caddy.
#
# Knobs: CACHE=0 (skip bench/cache.sh), DUR (seconds per load), PROXIES ("direct gateway gateway-log floor nginx haproxy caddy"),
# PROTOS ("h1 h2"), EXTRA=0 (skip bench/extra.sh), GW_BIN (another palette-gateway binary),
# BENCH_NO_BUILD=1, BENCH_WORK (/tmp/pgw-bench), OUT=FILE (also write the table there).
# A full run waits for an idle machine before each load and measures a row again once when the
# proxy did not use all of CPU 1 (other work on the host).
#
# Layout (2 CPUs): each proxy pinned to CPU 1 with one worker (nginx worker_processes 1, HAProxy
# nbthread 1, Caddy GOMAXPROCS=1, palette-gateway PALETTE_GATEWAY_WORKER_THREADS=1, i.e.
# --worker-threads 1, plus TOKIO_WORKER_THREADS=1 for builds without the flag); bench-upstream (one
# thread) and the load generator (wrk -t1 / h2load -t1) pinned to CPU 0. Each proxy is started
# fresh for each protocol, so its peak RSS (VmHWM) is that run's.
#
# HTTP/1.1: wrk -t1 -c64 -d${DUR}s --latency (keep-alive).
# HTTP/2:   h2load -t1 -c64 -m10 -D ${DUR} (h2c, prior knowledge) for req/s, then a second run
#           of DUR/2 s with its per-request log (--log-file) for p50/p99/max (the log costs the
#           load generator CPU, so it is kept out of the req/s run).
# Proxy -> upstream is HTTP/1.1 keep-alive for every proxy. "proxy CPU" is the proxy process's
# user+system time over the req/s run (100% = CPU 1 saturated; less: the limit was elsewhere);
# "CPU us/req" splits it per request forwarded (user + kernel microseconds).
# "upstream conns" is how many connections bench-upstream accepted during that run: a proxy that
# keeps its upstream connections alive opens about as many as it has requests in flight.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap cleanup EXIT
trap 'exit 130' INT TERM

SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then DUR=${DUR:-2}; WARM=0; else DUR=${DUR:-10}; WARM=${WARM:-1}; fi
PROXIES=${PROXIES:-direct gateway gateway-log floor nginx haproxy caddy}
PROTOS=${PROTOS:-h1 h2}

ensure_tools
build_all
raise_nofile

log "machine: $(lscpu | awk -F: '/^Model name/ {gsub(/^ +/, "", $2); print $2}'), $(nproc) CPUs, kernel $(uname -r)"
log "versions: $(nginx -v 2>&1 | sed 's/.*: //'), haproxy $(haproxy -v | awk 'NR==1 {print $3}'), caddy $(caddy version | awk '{print $1}'), $(wrk --version 2>&1 | awk 'NR==1 {print $1, $2}'), $(h2load --version | head -n1)"
log "layout: proxies on CPU $PROXY_CPU, load generator + upstream on CPU $LOAD_CPU; ${DUR}s per load$([ "$SMOKE" = 1 ] && echo ' (smoke)')"

# Leftovers of an interrupted run would hold the ports.
for port in $P_UP $P_NGINX $P_NGINX_H2 $P_HAPROXY $P_CADDY $P_GW $P_GW_ADMIN $P_FLOOR; do
    if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then
        die "port $port is already in use on 127.0.0.1: stop what holds it (an earlier run?)"
    fi
done

write_peer_configs
gateway_config "$CONF/gateway.toml" $P_GW $P_GW_ADMIN $P_UP
GW_LOG_LEVEL=info gateway_config "$CONF/gateway-log.toml" $P_GW $P_GW_ADMIN $P_UP
BENCH_PALETTE_KEY=$UP_SECRET "$GW_BIN" check --config "$CONF/gateway.toml" >/dev/null ||
    die "the gateway config does not validate: $CONF/gateway.toml"

start_upstream $P_UP

RESULTS=$W/results.tsv
: >"$RESULTS"
LAT_DUR=$(( DUR / 2 > 2 ? DUR / 2 : (SMOKE == 1 ? 1 : 2) ))

# measure NAME PROTO: one row; sets ROW (tab-separated) and ROW_CPU.
measure() {
    local name=$1 proto=$2 port url headers rps p50 p99 max non2xx errs cpu cpureq newconns rss bad
    local n0 ok0 u0 s0 u1 s1 t0 t1 oks
    port=$(port_of "$name" "$proto")
    if [ "$name" = direct ]; then
        headers=("ApiKey: $UP_SECRET" "ProjectUid: $PROJECT")
        PROXY_PID=
    else
        headers=("ApiKey: $KEY")
        start_proxy "$name"
        if [ "$name" = gateway ] && [ "$proto" = "${PROTOS%% *}" ]; then
            log "palette-gateway threads (pid $PROXY_PID): $(gateway_threads "$PROXY_PID")"
        fi
    fi
    url="http://127.0.0.1:$port/v1/spectroclusters/abc"
    if [ "$WARM" -gt 0 ]; then
        if [ "$proto" = h1 ]; then run_wrk "$WARM" "$url" "${headers[@]}" >/dev/null
        else run_h2load "$WARM" "$url" "${headers[@]}" >/dev/null; fi
    fi
    n0=$(upstream_stat conns)
    ok0=$(upstream_stat ok)
    [ -n "$PROXY_PID" ] && read -r u0 s0 < <(cpu_ticks "$PROXY_PID")
    t0=$(date +%s.%N)
    if [ "$proto" = h1 ]; then
        read -r rps p50 p99 max non2xx errs < <(run_wrk "$DUR" "$url" "${headers[@]}")
    else
        read -r rps non2xx errs < <(run_h2load "$DUR" "$url" "${headers[@]}")
    fi
    t1=$(date +%s.%N)
    cpu=- cpureq=-
    if [ -n "$PROXY_PID" ]; then
        read -r u1 s1 < <(cpu_ticks "$PROXY_PID")
        oks=$(( $(upstream_stat ok) - ok0 ))
        cpu=$(awk -v u="$((u1 - u0))" -v s="$((s1 - s0))" -v t0="$t0" -v t1="$t1" -v hz="$CLK_TCK" \
            'BEGIN {printf "%.0f", 100 * (u + s) / hz / (t1 - t0)}')
        # CPU time per request that reached the upstream, user + system, in microseconds.
        cpureq=$(awk -v u="$((u1 - u0))" -v s="$((s1 - s0))" -v n="$oks" -v hz="$CLK_TCK" \
            'BEGIN {if (n > 0) printf "%.1f+%.1f", u / hz * 1e6 / n, s / hz * 1e6 / n; else print "-"}')
    fi
    newconns=$(( $(upstream_stat conns) - n0 - 2 ))  # less the two /__stats calls
    if [ "$proto" = h2 ]; then
        read -r p50 p99 max bad < <(h2load_latency "$LAT_DUR" "$url" "${headers[@]}")
        non2xx=$((non2xx + bad))
    fi
    rss=-
    if [ -n "$PROXY_PID" ]; then
        rss=$(hwm_kb "$PROXY_PID")
        case $name in gateway*)
            curl -s "http://127.0.0.1:$P_GW_ADMIN/metrics" >"$W/$name-metrics-$proto.txt" || true
        esac
        stop "$PROXY_MAIN"
        if [ "$name" = gateway-log ]; then
            log "gateway-log wrote $(wc -l <"$W/gateway-log.log") log lines ($(du -h "$W/gateway-log.log" | cut -f1))"
            rm -f "$W/gateway-log.log"
        fi
    fi
    log "$(printf '%-11s %s %9s req/s  p50 %6s  p99 %7s  max %8s ms  rss %6s kB  cpu %3s%%  non-2xx %s  errors %s  new upstream conns %s  cpu/req %s us' \
        "$name" "$proto" "$rps" "$p50" "$p99" "$max" "$rss" "$cpu" "$non2xx" "$errs" "$newconns" "$cpureq")"
    ROW=$(printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' "$name" "$proto" "$rps" "$p50" "$p99" "$max" "$rss" \
        "$non2xx" "$errs" "$cpu" "$newconns" "$cpureq")
    ROW_CPU=$cpu
}

for proto in $PROTOS; do
    for name in $PROXIES; do
        [ "$SMOKE" = 1 ] || wait_quiet
        measure "$name" "$proto"
        # A proxy that did not use all of CPU 1 was held back by something else (CPU 0, or
        # other work on the host): try once more.
        if [ "$SMOKE" != 1 ] && [ "$ROW_CPU" != - ] && [ "$ROW_CPU" -lt 90 ]; then
            log "$name $proto: proxy CPU only ${ROW_CPU}%, measuring again"
            wait_quiet
            measure "$name" "$proto"
        fi
        printf '%s\n' "$ROW" >>"$RESULTS"
    done
done
stop "$UP_PID"

# --- the table ------------------------------------------------------------------------------------

table() {
    awk -F'\t' '
        { n[NR] = $1; p[NR] = $2; r[NR] = $3; p50[NR] = $4; p99[NR] = $5; mx[NR] = $6; rss[NR] = $7; cpu[NR] = $10; nc[NR] = $11; cr[NR] = $12
          if ($1 == "haproxy") ha[$2] = $3
          if ($1 == "floor") fl[$2] = $3
          if ($1 == "direct") di[$2] = $3 }
        function ratio(a, b) { return (b > 0) ? sprintf("%.2f", a / b) : "-" }
        END {
            print "| proxy | protocol | req/s | p50 ms | p99 ms | max ms | peak RSS MB | proxy CPU | CPU us/req user+sys | upstream conns | x HAProxy | x direct | x floor |"
            print "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
            for (i = 1; i <= NR; i++) {
                proto = (p[i] == "h1") ? "HTTP/1.1" : "HTTP/2 (h2c)"
                m = (rss[i] == "-") ? "-" : sprintf("%.1f", rss[i] / 1024)
                c = (cpu[i] == "-") ? "-" : cpu[i] "%"
                # x floor: for the gateway rows, how close its full job comes to the bare stack.
                f = (n[i] ~ /^gateway/) ? ratio(r[i], fl[p[i]]) : "-"
                printf "| %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", n[i], proto, r[i], p50[i], p99[i], mx[i], m, c, cr[i], nc[i],
                    ratio(r[i], ha[p[i]]), ratio(r[i], di[p[i]]), f
            }
        }' "$RESULTS"
}
echo
table | tee "${OUT:-/dev/null}"
echo

# The issue's targets (benchmark figures, not pass/fail for CI).
get() { awk -F'\t' -v n="$1" -v p="$2" -v c="$3" '$1 == n && $2 == p {print $c}' "$RESULTS"; }
verdict() { if awk -v a="$1" -v b="$2" "BEGIN {exit !(a $3 b)}"; then echo met; else echo "NOT met"; fi; }
if [ -n "$(get gateway h1 3)" ] && [ -n "$(get haproxy h1 3)" ]; then
    g=$(get gateway h1 3) h=$(get haproxy h1 3)
    echo "target: HTTP/1.1 req/s >= 1.15x HAProxy: $(awk -v a="$g" -v b="$h" 'BEGIN {printf "%.2fx", a / b}') -> $(verdict "$g" "$(awk -v b="$h" 'BEGIN {print b * 1.15}')" '>=')"
    g=$(get gateway h1 5) h=$(get haproxy h1 5)
    echo "target: HTTP/1.1 p99 <= HAProxy's: $g ms vs $h ms -> $(verdict "$g" "$h" '<=')"
fi
if [ -n "$(get gateway h2 3)" ] && [ -n "$(get nginx h2 3)" ]; then
    g=$(get gateway h2 3) n=$(get nginx h2 3)
    echo "target: HTTP/2 req/s >= nginx: $g vs $n -> $(verdict "$g" "$n" '>=')"
fi

# --- smoke checks: every row worked ----------------------------------------------------------------

bad=$(awk -F'\t' '$3 + 0 <= 0 || $8 + 0 > 0 || $9 + 0 > 0 {printf "%s %s (req/s %s, non-2xx %s, errors %s); ", $1, $2, $3, $8, $9}' "$RESULTS")
if [ -n "$bad" ]; then
    echo "FAILED: $bad" >&2
    echo "(last load outputs: $W/last-wrk.txt, $W/last-h2load.txt; proxy logs in $W)" >&2
    exit 1
fi
echo "all $(wc -l <"$RESULTS") runs answered only 2xx with no socket errors"

if [ "${EXTRA:-1}" != 0 ]; then
    cleanup
    BENCH_NO_BUILD=1 SMOKE=$SMOKE bash "$BENCH_DIR/extra.sh"
fi

# The response cache's saving (issue 12 §3), in one process of its own; CACHE=0 skips it.
if [ "${CACHE:-1}" != 0 ]; then
    SMOKE=$SMOKE bash "$BENCH_DIR/cache.sh"
fi

# Instructions per request under callgrind (gateway with the access log off and on, the floor):
# off by default (valgrind takes minutes); CALLGRIND=1 runs it.
if [ "${CALLGRIND:-0}" = 1 ]; then
    cleanup
    SMOKE=$SMOKE bash "$BENCH_DIR/callgrind.sh"
fi
