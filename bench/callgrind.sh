#!/usr/bin/env bash
# Instructions per request (callgrind, repeatable where wall-clock figures on a busy machine are
# not) for palette-gateway's full job with the access log off and on, and for the framework floor
# (examples/floor_proxy.rs). Each runs under valgrind twice: once with N HTTP/1.1 keep-alive
# requests (h2load --h1, 4 connections) and once with none; the difference over N is what one
# request costs, start-up and shutdown subtracted. Then the gateway's top functions (inclusive)
# of that difference.
#
#   bench/callgrind.sh            N=5000 (valgrind is ~50x slower: a few minutes)
#   SMOKE=1 bench/callgrind.sh    N=200, a check that it runs (CI)
#   N=20000 BENCH_NO_BUILD=1 bench/callgrind.sh
#
# Ports 18380-18389 (CG_PORT_BASE), loopback only. Output files in $BENCH_WORK (/tmp/pgw-callgrind).
set -euo pipefail

export BENCH_WORK=${BENCH_WORK:-/tmp/pgw-callgrind}
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap cleanup EXIT

if [ "${SMOKE:-0}" = 1 ]; then N=${N:-200}; else N=${N:-5000}; fi
TOP=${TOP:-40}
PROTO=${PROTO:-h1}
case $PROTO in
h1) LOAD_ARGS=(--h1 -c 4) PROTO_NAME="HTTP/1.1 keep-alive, h2load --h1 -c4" ;;
h2) LOAD_ARGS=(-c 4 -m 10) PROTO_NAME="h2c, h2load -c4 -m10" ;;
*) die "PROTO is h1 or h2, not $PROTO" ;;
esac
LOG_ROW=${LOG_ROW:-1}
BASE=${CG_PORT_BASE:-18380}
CG_UP=$((BASE + 0)) CG_GW=$((BASE + 4)) CG_GW_ADMIN=$((BASE + 5)) CG_FLOOR=$((BASE + 6))
FLOOR_BIN=${FLOOR_BIN:-$REPO/target/release/examples/floor_proxy}

for t in valgrind callgrind_annotate h2load curl; do
    command -v "$t" >/dev/null 2>&1 || die "$t is needed (apt-get install valgrind nghttp2-client curl)"
done
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
    # A GW_BIN given by the caller is used as it is; the floor is always built here.
    what=(--example floor_proxy)
    [ -n "$GW_BIN_GIVEN" ] || what+=(--bin palette-gateway)
    log "cargo build --release ${what[*]}"
    (cd "$REPO" && cargo build --release --locked --quiet "${what[@]}")
fi
build_all
[ -x "$FLOOR_BIN" ] || die "no $FLOOR_BIN"
start_upstream "$CG_UP"

# total_ir FILE: the instructions (Ir) a callgrind output file counted.
total_ir() { awk '/^(summary|totals):/ {print $2; exit}' "$1"; }

# port_open PORT: something accepts on 127.0.0.1:PORT (a bare connect, no request).
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# measure NAME REQUESTS PORT READY_URL CMD...: CMD under callgrind on CPU $PROXY_CPU; once it is
# ready (READY_URL answers 2xx, or the port accepts when READY_URL is "-"), REQUESTS requests
# to PORT, then SIGTERM. Sets $IR to the instructions counted.
measure() {
    local name=$1 n=$2 port=$3 ready=$4 out
    shift 4
    out=$W/callgrind-$name-$n.out
    rm -f "$out"
    BENCH_PALETTE_KEY=$UP_SECRET bg "cg-$name-$n" "$PROXY_CPU" env -u RUST_LOG -u PALETTE_GATEWAY_CONFIG \
        TOKIO_WORKER_THREADS=1 PALETTE_GATEWAY_WORKER_THREADS=1 \
        valgrind --tool=callgrind --callgrind-out-file="$out" "$@"
    local pid=$BG_PID i
    for i in $(seq 1 600); do
        if [ "$ready" = - ]; then port_open "$port" && break; else curl -fs -o /dev/null "$ready" && break; fi
        kill -0 "$pid" 2>/dev/null || die "$name exited under valgrind (see $W/cg-$name-$n.log)"
        sleep 0.2
    done
    [ "$i" -lt 600 ] || die "$name never became ready under valgrind"
    if [ "$n" -gt 0 ]; then
        taskset -c "$LOAD_CPU" h2load "${LOAD_ARGS[@]}" -n "$n" -t 1 \
            -H "ApiKey: $KEY" -H "ProjectUid: $PROJECT" "http://127.0.0.1:$port/v1/ping" >"$W/h2load-$name-$n.txt"
        grep -q "^requests: $n total, $n started, $n done, $n succeeded" "$W/h2load-$name-$n.txt" ||
            die "$name: not every request succeeded (see $W/h2load-$name-$n.txt)"
        grep -q "status codes: $n 2xx" "$W/h2load-$name-$n.txt" || die "$name: not every answer was 2xx ($W/h2load-$name-$n.txt)"
    fi
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    [ -s "$out" ] || die "$name: no callgrind output ($W/cg-$name-$n.log)"
    IR=$(total_ir "$out")
}

# per_request NAME PORT READY_URL CMD...: prints and records instructions per request.
declare -A PER_REQ
per_request() {
    local name=$1 port=$2 ready=$3 ir0 irn
    shift 3
    log "$name: 0 requests under callgrind"
    measure "$name" 0 "$port" "$ready" "$@"
    ir0=$IR
    log "$name: $N requests under callgrind"
    measure "$name" "$N" "$port" "$ready" "$@"
    irn=$IR
    PER_REQ[$name]=$(awk -v a="$irn" -v b="$ir0" -v n="$N" 'BEGIN { printf "%.0f", (a - b) / n }')
}

for level in warn info; do
    GW_LOG_LEVEL=$level gateway_config "$CONF/callgrind-$level.toml" "$CG_GW" "$CG_GW_ADMIN" "$CG_UP"
done
per_request gateway "$CG_GW" "http://127.0.0.1:$CG_GW_ADMIN/readyz" "$GW_BIN" --config "$CONF/callgrind-warn.toml"
[ "$LOG_ROW" = 1 ] &&
    per_request gateway-log "$CG_GW" "http://127.0.0.1:$CG_GW_ADMIN/readyz" "$GW_BIN" --config "$CONF/callgrind-info.toml"
per_request floor "$CG_FLOOR" - "$FLOOR_BIN" "127.0.0.1:$CG_FLOOR" "http://127.0.0.1:$CG_UP" "$UP_SECRET"

echo
echo "instructions per request (callgrind Ir, $PROTO_NAME, $N requests minus 0, 1 worker):"
printf '  %-28s %12s\n' "floor (examples/floor_proxy)" "${PER_REQ[floor]}"
printf '  %-28s %12s\n' "gateway, access log off" "${PER_REQ[gateway]}"
[ "$LOG_ROW" = 1 ] && printf '  %-28s %12s\n' "gateway, access log on" "${PER_REQ[gateway-log]}"
printf '  %-28s %12s\n' "gateway - floor (log off)" "$((PER_REQ[gateway] - PER_REQ[floor]))"
echo
echo "gateway (access log off): top $TOP functions, inclusive, instructions per request ($N requests minus 0):"
# Function by function: the N-request run's inclusive count minus the zero-request run's.
annotate() { callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null; }
awk -v n="$N" '
    # A function line: the count (with thousands commas), maybe "(x%)", then file:function.
    $1 ~ /^[0-9][0-9,]*$/ && NF >= 2 {
        ir = $1; gsub(",", "", ir); $1 = ""; if ($2 ~ /^\(.*%\)$/) $2 = ""
        name = $0; sub(/^ +/, "", name)
        if (FILENAME == ARGV[1]) zero[name] = ir; else full[name] = ir
    }
    END { for (f in full) if (f !~ /^=>|PROGRAM TOTALS|events annotated/) printf "%12.0f  %s\n", (full[f] - zero[f]) / n, f }
' <(annotate "$W/callgrind-gateway-0.out") <(annotate "$W/callgrind-gateway-$N.out") |
    sort -rn | awk -v top="$TOP" 'NR <= top' # (awk reads all: no SIGPIPE for sort under pipefail)
