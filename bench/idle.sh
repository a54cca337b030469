#!/usr/bin/env bash
# A sidecar's resting costs (issue 14 §4, §5), all on 127.0.0.1, the gateway pinned to CPU 1 with
# one worker thread, with the bench config of bench/lib.sh:
#
#   rss      VmRSS after start-up and after REQS requests (h2load --h1 -c64) then 2 s idle, for
#            each allocator setting in VARIANTS (mimalloc options are read from the environment);
#   wake     syscalls and context switches over IDLE_S seconds of an idle gateway (strace -f -c,
#            /proc/PID/task/*/sched nr_switches), with 0 and with CONNS idle keep-alive connections;
#   conns    VmRSS (RssAnon, RssFile) with N_CONNS idle keep-alive connections (each made one
#            request; bench/upstream's idle-clients), per connection;
#   startup  exec -> first `/readyz` 200 (ApiKey credential, whose start-up key check is part of
#            readiness), polled every 0.2 ms by bench/startup.py, median of RUNS.
#
#   bench/idle.sh                 all four
#   PARTS="wake" bench/idle.sh    one of them
#   GW_BIN=/tmp/old bench/idle.sh  another binary (BENCH_NO_BUILD=1 skips the builds); glibc's
#                                  malloc: cargo build --release --no-default-features --features demo
#   VARIANTS="name|ENV=value ..."  one run per line, e.g. MIMALLOC_PURGE_DELAY=0
#
# Without GW_BIN it measures the binary a sidecar runs: the container image's, static glibc, built
# as .ci/run and deploy/Dockerfile build it. The dynamic target/release binary also maps libc.so,
# libm.so and ld.so, about 1.2 MB more RSS (BENCHMARKS.md).
#
# Ports 18280-18299 (not the main harness's). Results on stdout.
set -euo pipefail
# shellcheck source=bench/lib.sh
BENCH_WORK=${BENCH_WORK:-/tmp/pgw-idle} . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap cleanup EXIT
trap 'exit 130' INT TERM

P_UP=18290
P_GW=18284
P_GW_ADMIN=18285
REQS=${REQS:-100000}
IDLE_S=${IDLE_S:-30}
CONNS=${CONNS:-100}
RUNS=${RUNS:-10}
N_CONNS=${N_CONNS:-10000}
PARTS=" ${PARTS:-rss wake conns startup} "
# name|environment: one gateway run each.
VARIANTS=${VARIANTS:-"default|
purge-delay-0|MIMALLOC_PURGE_DELAY=0"}

if [ -z "$GW_BIN_GIVEN" ]; then
    GW_BIN=$REPO/target/x86_64-unknown-linux-gnu/release/palette-gateway
    GW_BIN_GIVEN=1
    if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
        log "cargo build --release --target x86_64-unknown-linux-gnu, static (the container image's binary)"
        (cd "$REPO" && BUILD_TARGET=x86_64-unknown-linux-gnu bash scripts/build-static.sh --quiet \
            --bin palette-gateway)
    fi
fi
build_all
raise_nofile
gateway_config "$CONF/gateway.toml" $P_GW $P_GW_ADMIN $P_UP
# Binaries from before idle HTTP/1.1 connections were parked ran hyper's (>= 1.6) header_read_timeout
# while a connection waited for its next request, and closed it then: without this their idle
# connections of `wake` would be gone after 10 s. Kept so that old and new binaries compare.
sed -i 's/^idle_timeout = .*/&\nheader_read_timeout = "10m"/' "$CONF/gateway.toml"
start_upstream $P_UP
URL=http://127.0.0.1:$P_GW/v1/spectroclusters/abc

# gw ENV...: start the gateway with extra environment; sets GW_PID.
gw() {
    BENCH_PALETTE_KEY=$UP_SECRET TOKIO_WORKER_THREADS=1 PALETTE_GATEWAY_WORKER_THREADS=1 \
        bg gateway "$PROXY_CPU" env -u RUST_LOG "$@" "$GW_BIN" --config "$CONF/gateway.toml"
    GW_PID=$BG_PID
    wait_ok "http://127.0.0.1:$P_GW_ADMIN/readyz" || die "the gateway did not become ready (see $W/gateway.log)"
    # Another process on the port would answer instead.
    kill -0 "$GW_PID" 2>/dev/null || die "the gateway exited (see $W/gateway.log)"
}

anon_file() { awk '/^RssAnon:/ {a = $2} /^RssFile:/ {f = $2} END {printf "anon %.1f MB, file %.1f MB", a / 1024, f / 1024}' "/proc/$1/status"; }
switches() { cat /proc/"$1"/task/*/sched 2>/dev/null | awk '/^nr_switches/ {s += $3} END {print s + 0}'; }

if [[ $PARTS == *" rss "* ]]; then
    while IFS='|' read -r name envs; do
        [ -n "$name" ] || continue
        # shellcheck disable=SC2086
        gw $envs
        sleep 1
        r0=$(rss_kb "$GW_PID")
        a0=$(anon_file "$GW_PID")
        taskset -c "$LOAD_CPU" h2load --h1 -t1 -c64 -n "$REQS" -H "ApiKey: $KEY" "$URL" >"$W/rss-$name.txt" 2>&1
        ok=$(awk '/^status codes:/ {print $3}' "$W/rss-$name.txt")
        sleep 2
        echo "rss $name: after start-up $(mb "$r0") MB ($a0); after $REQS requests ($ok 2xx) and 2 s idle $(mb "$(rss_kb "$GW_PID")") MB ($(anon_file "$GW_PID"), peak $(mb "$(hwm_kb "$GW_PID")") MB)"
        stop "$GW_PID"
    done <<<"$VARIANTS"
fi

if [[ $PARTS == *" wake "* ]]; then
    gw
    for n in 0 "$CONNS"; do
        idle_pid=
        if [ "$n" -gt 0 ]; then
            "$IDLE_BIN" "127.0.0.1:$P_GW" "$n" $((IDLE_S + 10)) /v1/spectroclusters/idle -H "ApiKey: $KEY" >"$W/idle.out" 2>"$W/idle.err" &
            idle_pid=$!
            PIDS+=("$idle_pid")
            for _ in $(seq 100); do grep -q '^ready' "$W/idle.out" 2>/dev/null && break; sleep 0.1; done
        fi
        sleep 1
        s0=$(switches "$GW_PID")
        timeout -s INT "$IDLE_S" strace -f -c -o "$W/strace-$n.txt" -p "$GW_PID" 2>/dev/null || true
        s1=$(switches "$GW_PID")
        calls=$(awk '$NF == "total" {print $4}' "$W/strace-$n.txt")
        top=$(awk '$1 ~ /^[0-9.]+$/ && $NF != "total" {printf "%s%s %s", sep, $NF, $4; sep=", "}' "$W/strace-$n.txt")
        echo "wake, $n idle connections, ${IDLE_S} s: ${calls:-0} syscalls (${top:-none}), $((s1 - s0)) context switches"
        if [ -n "$idle_pid" ]; then stop "$idle_pid"; fi
    done
    stop "$GW_PID"
fi


if [[ $PARTS == *" conns "* ]]; then
    while IFS='|' read -r name envs; do
        [ -n "$name" ] || continue
        # shellcheck disable=SC2086
        gw $envs
        sleep 1
        r0=$(rss_kb "$GW_PID")
        a0=$(anon_file "$GW_PID")
        taskset -c "$LOAD_CPU" "$IDLE_BIN" "127.0.0.1:$P_GW" "$N_CONNS" 5 /v1/spectroclusters/idle -H "ApiKey: $KEY" >"$W/conns.out" 2>"$W/conns.err" &
        idle_pid=$!
        PIDS+=("$idle_pid")
        for _ in $(seq 1200); do grep -q '^ready' "$W/conns.out" 2>/dev/null && break; kill -0 "$idle_pid" 2>/dev/null || break; sleep 0.1; done
        # An idle HTTP/1.1 connection parks (gives its buffers back) 1 s after its last answer;
        # mimalloc returns the freed pages to the system lazily, within a few seconds more.
        sleep ${PARK_WAIT:-8}
        r1=$(rss_kb "$GW_PID")
        echo "conns $name: $N_CONNS idle connections ($(awk '/^ready/ {print $3}' "$W/conns.out")): RSS $(mb "$r1") MB ($(anon_file "$GW_PID")), before $(mb "$r0") MB ($a0): $(awk -v a="$r1" -v b="$r0" -v n="$N_CONNS" 'BEGIN {printf "%.1f", (a - b) / n}') kB per connection"
        wait "$idle_pid" || true
        stop "$GW_PID"
    done <<<"$VARIANTS"
fi

if [[ $PARTS == *" startup "* ]]; then
    BENCH_PALETTE_KEY=$UP_SECRET TOKIO_WORKER_THREADS=1 PALETTE_GATEWAY_WORKER_THREADS=1 \
        taskset -c "$PROXY_CPU" python3 "$BENCH_DIR/startup.py" "$RUNS" "http://127.0.0.1:$P_GW_ADMIN/readyz" \
        "$GW_BIN" --config "$CONF/gateway.toml" >"$W/startup.txt"
    echo "startup: exec -> /readyz 200, ms over $RUNS runs: $(tr '\n' ' ' <"$W/startup.txt")"
fi
