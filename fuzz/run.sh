#!/usr/bin/env bash
# Builds every fuzz target and runs each for FUZZ_SECONDS (default 60) seconds, one after the
# other, starting from the committed seeds in corpus/<target>/. Fails if any target crashes
# (a panic, a broken invariant, a hang past 10 s on one input, or running out of memory), and
# prints the executions each target reached.
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). Uses the nightly toolchain when there
# is one (FUZZ_TOOLCHAIN overrides): the targets are built without a sanitizer (the gateway
# forbids unsafe code), which also builds on stable.
#
# New inputs the fuzzer finds go to target/fuzz-run/<target>/corpus (not committed: the
# committed corpus stays a handful of seeds); a crashing input is kept in
# target/fuzz-run/<target>/artifacts and printed. Reproduce one with
#   fuzz/target/<host>/release/<target> <file>
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
seconds=${FUZZ_SECONDS:-60}
if [ -z "${FUZZ_TOOLCHAIN:-}" ]; then
    if cargo +nightly --version >/dev/null 2>&1; then FUZZ_TOOLCHAIN=nightly; else FUZZ_TOOLCHAIN=stable; fi
fi
cargo=(cargo "+$FUZZ_TOOLCHAIN")
host=$(rustc "+$FUZZ_TOOLCHAIN" -vV | sed -n 's/^host: //p')

# Debug assertions and overflow checks on: an arithmetic overflow is a crash too.
build_flags=(--sanitizer none --debug-assertions)
echo "building fuzz targets ($FUZZ_TOOLCHAIN, $host)"
"${cargo[@]}" fuzz build "${build_flags[@]}"

targets=$("${cargo[@]}" fuzz list)
failed=()
summary=()
for t in $targets; do
    work="target/fuzz-run/$t"
    mkdir -p "$work/corpus" "$work/artifacts"
    rm -f "$work/artifacts/"*
    echo
    echo "== $t: ${seconds}s"
    status=0
    "target/$host/release/$t" "$work/corpus" "corpus/$t" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$work/artifacts/" -print_final_stats=1 >"$work/log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -n 1)
    grep -E '^Done [0-9]+ runs' "$work/log" || true
    if [ "$status" -ne 0 ]; then
        # The panic message (a broken invariant names itself), else libFuzzer's own verdict
        # (timeout, out of memory, signal).
        grep -m 1 -A 4 'panicked at' "$work/log" ||
            grep -m 1 -A 2 -E '==[0-9]+== ERROR|ALARM' "$work/log" || tail -n 20 "$work/log"
        for a in "$work/artifacts/"*; do
            [ -f "$a" ] || continue
            echo "crashing input $a (as Rust bytes):"
            python3 -c 'import sys; print(repr(open(sys.argv[1], "rb").read()))' "$a" 2>/dev/null || od -c "$a" | head -n 20
        done
        failed+=("$t")
        summary+=("$t: CRASHED (exit $status) after ${execs:-?} executions")
    else
        summary+=("$t: ok, ${execs:-?} executions in ${seconds}s")
    fi
done

echo
echo "fuzzing summary:"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "error: fuzz targets crashed: ${failed[*]} (see target/fuzz-run/<target>/log)" >&2
    exit 1
fi
