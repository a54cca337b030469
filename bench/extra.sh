#!/usr/bin/env bash
# The extra measurements of issue 6, all on 127.0.0.1, palette-gateway pinned to CPU 1 with one
# worker thread, the load generator and bench-upstream on CPU 0 (bench/run.sh runs this last):
#
#   1. peak RSS after 1,000,000 requests (h2load --h1 -c64 -n 1000000);
#   2. RSS with 10,000 idle keep-alive client connections (each made one request, then idles),
#      palette-gateway and, for comparison, nginx (IDLE_PEERS="" to skip it);
#   3. time to first byte and total time of a 1 GiB streamed download, through the gateway and
#      direct (curl -w '%{time_starttransfer} %{time_total}', median of 3);
#   4. req/s and latency through a token credential while it is refreshed every ~2 s (token
#      lifetime 4 s, refresh_before 2 s, each refresh taking 50 ms at the upstream), next to the
#      same gateway's ApiKey client; p99 of the requests in flight during a refresh vs the rest.
#
#   bench/extra.sh             full sizes
#   PARTS="2 4" bench/extra.sh  only some of them
#   SMOKE=1 bench/extra.sh     small sizes (1,000 connections, 16 MiB, 20,000 requests, a 3 s
#                              token run): checks that each works, exits non-zero otherwise
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
trap cleanup EXIT
trap 'exit 130' INT TERM

SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
    IDLE_N=${IDLE_N:-1000} BIG=${BIG:-$((16 << 20))} MANY=${MANY:-20000} TOKEN_DUR=${TOKEN_DUR:-3}
    TOKEN_LIFETIME=${TOKEN_LIFETIME:-2s} TOKEN_REFRESH_BEFORE=${TOKEN_REFRESH_BEFORE:-1s} LIFE_MS=2000
else
    IDLE_N=${IDLE_N:-10000} BIG=${BIG:-$((1 << 30))} MANY=${MANY:-1000000} TOKEN_DUR=${TOKEN_DUR:-12}
    TOKEN_LIFETIME=${TOKEN_LIFETIME:-4s} TOKEN_REFRESH_BEFORE=${TOKEN_REFRESH_BEFORE:-2s} LIFE_MS=4000
fi
AUTH_DELAY_MS=${AUTH_DELAY_MS:-50}
PARTS=" ${PARTS:-1 2 3 4} "
# part N: whether to run part N (and, for a full run, wait for an idle machine first).
part() {
    [[ $PARTS == *" $1 "* ]] || return 1
    [ "$SMOKE" = 1 ] || wait_quiet
}
export TOKEN_LIFETIME TOKEN_REFRESH_BEFORE

ensure_tools
build_all
raise_nofile
FAIL=()
fail() { FAIL+=("$*"); printf 'FAILED: %s\n' "$*" >&2; }

gateway_config "$CONF/gateway.toml" $P_GW $P_GW_ADMIN $P_UP
start_upstream $P_UP
URL=http://127.0.0.1:$P_GW/v1/spectroclusters/abc

# --- 1. peak RSS after MANY requests ---------------------------------------------------------------

if part 1; then
start_gateway "$CONF/gateway.toml" $P_GW $P_GW_ADMIN
out=$(taskset -c "$LOAD_CPU" h2load --h1 -t1 -c64 -n "$MANY" -H "ApiKey: $KEY" "$URL" 2>&1)
printf '%s\n' "$out" >"$W/many.txt"
ok=$(awk '/^status codes:/ {print $3}' <<<"$out")
rps=$(awk '/^finished in/ {print $4}' <<<"$out")
echo "1. after $MANY requests (HTTP/1.1, 64 connections, $rps req/s): peak RSS $(mb "$(hwm_kb "$GW_PID")") MB, RSS now $(mb "$(rss_kb "$GW_PID")") MB; $ok answered 2xx"
[ "${ok:-0}" = "$MANY" ] || fail "1M requests: only ${ok:-0} of $MANY answered 2xx"
stop "$GW_PID"
fi

# --- 2. IDLE_N idle keep-alive connections ----------------------------------------------------------
# palette-gateway, then (for comparison) nginx. HAProxy is left out: it wants 2 file descriptors
# per connection of maxconn, beyond this machine's hard limit of open files.

write_peer_configs
hold=$(( SMOKE == 1 ? 2 : 5 ))
part 2 && for target in gateway ${IDLE_PEERS-nginx}; do
    start_proxy "$target"
    port=$(port_of "$target" h1)
    before=$(rss_kb "$PROXY_PID")
    taskset -c "$LOAD_CPU" "$IDLE_BIN" "127.0.0.1:$port" "$IDLE_N" "$hold" /v1/spectroclusters/idle -H "ApiKey: $KEY" \
        >"$W/idle.out" 2>"$W/idle.err" &
    idle_pid=$!
    PIDS+=("$idle_pid")
    t0=$(date +%s.%N)
    for _ in $(seq 1200); do
        grep -q '^ready' "$W/idle.out" 2>/dev/null && break
        kill -0 "$idle_pid" 2>/dev/null || break
        sleep 0.1
    done
    opened=$(awk '/^ready/ {print $2, $3}' "$W/idle.out")
    t1=$(date +%s.%N)
    sleep 1
    held=$(ss -Htn state established "( sport = :$port )" | wc -l)
    rss=$(rss_kb "$PROXY_PID")
    hwm=$(hwm_kb "$PROXY_PID")
    wait "$idle_pid" || true
    alive=$(awk '/^alive/ {print $2}' "$W/idle.out")
    what=$target
    [ "$target" = nginx ] && what="nginx (worker)"
    echo "2. $IDLE_N idle keep-alive connections, $what (opened with one request each in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s, $held established): RSS $(mb "$rss") MB (peak $(mb "$hwm") MB; $(mb "$before") MB before), $(awk -v a="$rss" -v b="$before" -v n="$IDLE_N" 'BEGIN {printf "%.1f", (a - b) / n}') kB per connection; still served after ${hold} s idle: ${alive:-?}"
    case "$opened" in "$IDLE_N non2xx=0") ;; *) fail "idle connections, $target: '$opened' (see $W/idle.err)" ;; esac
    if [ -z "$alive" ] || [ "${alive%%/*}" != "${alive##*/}" ]; then fail "idle connections, $target: only ${alive:-none} still served after idling"; fi
    stop "$PROXY_MAIN"
done

# --- 3. time to first byte of a BIG streamed download -----------------------------------------------

if part 3; then
start_gateway "$CONF/gateway.toml" $P_GW $P_GW_ADMIN
big_hwm0=$(hwm_kb "$GW_PID")
median3() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
for target in direct gateway; do
    : >"$W/ttfb-$target.txt"
    for _ in 1 2 3; do
        if [ "$target" = direct ]; then
            taskset -c "$LOAD_CPU" curl -s -o /dev/null -w '%{http_code} %{size_download} %{time_starttransfer} %{time_total}\n' \
                -H "ApiKey: $UP_SECRET" -H "ProjectUid: $PROJECT" "http://127.0.0.1:$P_UP/v1/big/$BIG" >>"$W/ttfb-$target.txt"
        else
            taskset -c "$LOAD_CPU" curl -s -o /dev/null -w '%{http_code} %{size_download} %{time_starttransfer} %{time_total}\n' \
                -H "ApiKey: $KEY" "http://127.0.0.1:$P_GW/v1/big/$BIG" >>"$W/ttfb-$target.txt"
        fi
    done
    ttfb=$(awk '{print $3 * 1000}' "$W/ttfb-$target.txt" | median3)
    total=$(awk '{print $4}' "$W/ttfb-$target.txt" | median3)
    rate=$(awk -v b="$BIG" -v t="$total" 'BEGIN {printf "%.0f", b / t / 1048576}')
    echo "3. $((BIG >> 20)) MiB download, $target: time to first byte $(printf '%.3f' "$ttfb") ms, total $(printf '%.3f' "$total") s ($rate MiB/s) (median of 3)"
    awk -v b="$BIG" '$1 != 200 || $2 != b {exit 1}' "$W/ttfb-$target.txt" || fail "download $target: $(tr '\n' ' ' <"$W/ttfb-$target.txt")"
done
echo "   gateway peak RSS $(mb "$big_hwm0") MB before the downloads, $(mb "$(hwm_kb "$GW_PID")") MB after (the body streams, it is not buffered)"
stop "$GW_PID"
fi
stop "$UP_PID"

# --- 4. a token credential being refreshed under load -------------------------------------------------

if part 4; then
start_upstream $P_UP_TOK --token-lifetime-ms "$LIFE_MS" --auth-delay-ms "$AUTH_DELAY_MS"
UP_TOK_PID=$UP_PID
gateway_config "$CONF/gateway-token.toml" $P_GWT $P_GWT_ADMIN $P_UP_TOK token
start_gateway "$CONF/gateway-token.toml" $P_GWT $P_GWT_ADMIN gateway-token
wait_ok "http://127.0.0.1:$P_GWT_ADMIN/readyz" || fail "token gateway never ready (see $W/gateway-token.log)"
TURL=http://127.0.0.1:$P_GWT/v1/spectroclusters/abc

# token_run NAME KEY: h2load --h1 -c64 for TOKEN_DUR s; per-request log in $W/token-NAME.log.
token_run() {
    rm -f "$W/token-$1.log"
    taskset -c "$LOAD_CPU" h2load --h1 -t1 -c64 -D "$TOKEN_DUR" --log-file="$W/token-$1.log" -H "ApiKey: $2" "$TURL" \
        >"$W/token-$1.txt" 2>&1
    awk '/^finished in/ {print $4}' "$W/token-$1.txt"
}
rps_key=$(token_run apikey "$KEY")
read -r k50 k99 kmax _ kbad <<<"$(latency_stats "$W/token-apikey.log")"
logins0=$(upstream_stat logins $P_UP_TOK)
rps_tok=$(token_run token "$TOKEN_KEY")
read -r t50 t99 tmax _ tbad <<<"$(latency_stats "$W/token-token.log")"
logins1=$(upstream_stat logins $P_UP_TOK)
# Refresh windows (received .. answered, unix us) that fall inside the token run.
awk '/refresh answered at/ {printf "%.0f %.0f\n", $5 - $7, $5}' "$W/upstream-$P_UP_TOK.log" >"$W/refreshes.txt"
read -r first last < <(awk 'NR == 1 {f = $1} {if ($1 < f) f = $1; e = $1 + $3; if (e > l) l = e} END {printf "%.0f %.0f\n", f, l}' "$W/token-token.log")
awk -v f="$first" -v l="$last" '$2 >= f && $1 <= l' "$W/refreshes.txt" >"$W/refreshes-in-run.txt"
nref=$(wc -l <"$W/refreshes-in-run.txt")
# Requests in flight while a refresh was under way vs all the others.
awk 'NR == FNR {rs[NR] = $1; re[NR] = $2; n = NR; next}
     { s = $1; e = $1 + $3; hit = 0
       for (i = 1; i <= n; i++) if (s <= re[i] && e >= rs[i]) { hit = 1; break }
       print hit, $3 }' "$W/refreshes-in-run.txt" "$W/token-token.log" >"$W/token-split.txt"
pct() { awk -v w="$1" '$1 == w {print $2}' "$W/token-split.txt" | sort -n |
    awk '{v[NR] = $1} END {if (NR == 0) {print "- 0"; exit} i = int(NR * 0.99); if (i < 1) i = 1; printf "%.2f %d\n", v[i] / 1000, NR}'; }
read -r in99 inn <<<"$(pct 1)"
read -r out99 outn <<<"$(pct 0)"
renewals=$(curl -s "http://127.0.0.1:$P_GWT_ADMIN/metrics" | awk '/^palette_gateway_token_renewals_total/ {printf "%s%s=%s", sep, $1, $2; sep=" "}')
echo "4. token credential (lifetime $TOKEN_LIFETIME, refresh_before $TOKEN_REFRESH_BEFORE, each refresh ${AUTH_DELAY_MS} ms at the upstream), HTTP/1.1, 64 connections, ${TOKEN_DUR} s each:"
echo "   ApiKey client:  $rps_key req/s, p50 $k50 ms, p99 $k99 ms, max $kmax ms, non-2xx $kbad"
echo "   token client:   $rps_tok req/s, p50 $t50 ms, p99 $t99 ms, max $tmax ms, non-2xx $tbad; $nref refreshes during the run, logins $logins0 -> $logins1"
echo "   token client, p99 of the $inn requests in flight during a refresh: $in99 ms; of the other $outn: $out99 ms"
echo "   gateway metrics: ${renewals:-none}"
if [ "${tbad:-1}" != 0 ] || [ "${kbad:-1}" != 0 ]; then fail "token test: non-2xx answers (apikey $kbad, token $tbad)"; fi
[ "$nref" -ge 1 ] || fail "token test: no refresh happened during the run (see $W/upstream-$P_UP_TOK.log)"
[ "$logins0" = "$logins1" ] || fail "token test: the gateway logged in again during the run ($logins0 -> $logins1)"
stop "$GW_PID"
stop "$UP_TOK_PID"
fi

if [ "${#FAIL[@]}" -gt 0 ]; then
    echo "extra measurements: ${#FAIL[@]} failed" >&2
    exit 1
fi
echo "extra measurements: all worked"
