#!/usr/bin/env bash
# After the test suite: no log line any test produced may contain a secret the tests used
# (the Palette API key, passwords, local keys, and every token the fake Palette issued).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir=target/tmp/test-logs
[ -d "$dir" ] || { echo "no test logs in $dir: run the test suite first" >&2; exit 1; }
secrets=$(mktemp)
trap 'rm -f "$secrets"' EXIT
# The fixed secrets of tests/e2e/support/harness.rs (every `pub const ...: &str = "..."` that is
# a key, password or local key), every local key written in a test, plus the tokens the fake
# issued.
harness=tests/e2e/support/harness.rs
grep -E 'pub const (PALETTE_KEY|OPS_PASSWORD|CI_KEY|ADMIN_KEY|BOT_KEY): &str' "$harness" | sed -E 's/.*= "(.*)";/\1/' >"$secrets"
[ "$(wc -l <"$secrets")" -eq 5 ] || { echo "expected 5 fixed secrets in $harness" >&2; exit 1; }
grep -rhoE --include='*.rs' 'pgw_[A-Za-z0-9_-]{20,}' tests/ | sort -u >>"$secrets" || true
[ -f "$dir/tokens.txt" ] && grep -v '^$' "$dir/tokens.txt" | sort -u >>"$secrets"
n_secrets=$(wc -l <"$secrets")
n_lines=$(cat "$dir"/*.log | wc -l)
[ "$n_lines" -gt 0 ] || { echo "the test logs are empty" >&2; exit 1; }
if grep -F -f "$secrets" "$dir"/*.log >/dev/null; then
    echo "SECRET FOUND in test logs:" >&2
    grep -F -l -f "$secrets" "$dir"/*.log >&2
    exit 1
fi
echo "scanned $n_lines log lines from $(ls "$dir"/*.log | wc -l) test processes for $n_secrets secrets: none found"
