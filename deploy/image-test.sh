#!/usr/bin/env bash
# Builds the container image from deploy/Dockerfile OFFLINE (the host-built static binary through
# `--build-arg BINARY=prebuilt`; nothing is pulled) and runs it against a fake Palette:
#   - the binary is statically linked (no ELF interpreter, no shared library needed);
#   - the image is a FROM-scratch image of that one file, running as 65532:65532, with OCI labels;
#   - the container (read-only root, no capabilities) reaches the fake Palette by a host name that
#     only /etc/hosts knows (pure-Rust resolution: glibc's NSS plugins are not in the image);
#   - /healthz, /readyz and /metrics answer, one proxied request goes through with the Palette
#     credential swapped in;
#   - SIGTERM (podman stop) ends it cleanly: exit code 0 and the "stopped" log line.
# The fake Palette is the one `palette-gateway --demo` runs on the host (127.0.0.1:9191; the demo's
# own gateway listens on 8080/9901); the container shares the host's network (--network host) and
# listens on 127.0.0.1:${IMAGE_TEST_PORT:-28080} (admin: the next port).
#
#   bash deploy/image-test.sh target/x86_64-unknown-linux-gnu/release/palette-gateway
#
# Podman here: rootful, `--runtime runc`, and a containers.conf with `default_ulimits = []` (crun
# and the default ulimits are refused in some sandboxes); image storage in a temporary directory
# (vfs driver: no overlay mounts left behind). Installs podman, buildah and runc when absent.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)
bin=$(realpath "${1:?usage: deploy/image-test.sh path/to/static/palette-gateway}")
port=${IMAGE_TEST_PORT:-28080}
admin_port=$((port + 1))
image=localhost/palette-gateway:image-test
name=palette-gateway-image-test-$$

step() { printf '\n==> %s\n' "$*"; }
fail() {
    printf 'FAILED: %s\n' "$*" >&2
    exit 1
}

missing=()
for tool in podman buildah runc; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    step "installing ${missing[*]} (apt)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

work=$(mktemp -d)
demo_pid=""
cleanup() {
    podman_ rm -f -t 0 "$name" >/dev/null 2>&1 || true
    [ -z "$demo_pid" ] || kill "$demo_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    podman_ rmi -f "$image" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/containers.conf" <<'CONF'
[containers]
default_ulimits = []
CONF
podman_() {
    CONTAINERS_CONF="$work/containers.conf" podman --root "$work/storage" --runroot "$work/run" \
        --storage-driver vfs --runtime runc "$@"
}

step "the binary is statically linked ($bin)"
file "$bin" 2>/dev/null || true
if readelf -l "$bin" | grep -q 'INTERP'; then fail "$bin has an ELF interpreter (dynamically linked)"; fi
if readelf -d "$bin" | grep -q '(NEEDED)'; then fail "$bin needs shared libraries: $(readelf -d "$bin" | grep NEEDED)"; fi
echo "no interpreter, no NEEDED entry"

step "podman build --pull=never --build-arg BINARY=prebuilt (offline)"
# A small build context: the binary at the path deploy/Dockerfile's prebuilt stage copies from.
ctx="$work/context"
mkdir -p "$ctx/target/x86_64-unknown-linux-gnu/release"
# Without its debug info (line tables: about 37 of 49 MB); the symbols stay, for backtraces.
strip --strip-debug -o "$ctx/target/x86_64-unknown-linux-gnu/release/palette-gateway" "$bin"
podman_ build --pull=never --network none --build-arg BINARY=prebuilt \
    --build-arg VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)" \
    --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    -f "$repo/deploy/Dockerfile" -t "$image" "$ctx"

step "the image: one layer from scratch, user 65532:65532, OCI labels"
podman_ image inspect "$image" --format '{{json .}}' >"$work/inspect.json"
python3 - "$work/inspect.json" <<'PY'
import json, sys
i = json.load(open(sys.argv[1]))
i = i[0] if isinstance(i, list) else i
cfg = i["Config"]
labels = cfg.get("Labels") or {}
size = i["Size"]
print(f"size: {size} bytes ({size / 1048576:.1f} MiB), layers: {len(i['RootFS']['Layers'])}")
print(f"user: {cfg.get('User')}, entrypoint: {cfg.get('Entrypoint')}")
for k in sorted(labels):
    print(f"label {k}={labels[k]}")
problems = []
if cfg.get("User") != "65532:65532":
    problems.append(f"user {cfg.get('User')!r}")
if len(i["RootFS"]["Layers"]) != 1:
    problems.append(f"{len(i['RootFS']['Layers'])} layers: not FROM scratch plus the binary")
for k in ("title", "description", "licenses", "version", "revision", "created"):
    if not labels.get(f"org.opencontainers.image.{k}"):
        problems.append(f"label org.opencontainers.image.{k} missing")
if problems:
    sys.exit("FAILED: " + "; ".join(problems))
PY
# The image holds the binary and nothing else.
podman_ image save --format docker-archive -o "$work/image.tar" "$image" >/dev/null
mkdir "$work/unpacked"
tar -xf "$work/image.tar" -C "$work/unpacked"
files=$(find "$work/unpacked" -name '*.tar' ! -name image.tar -exec tar -tf {} \; | grep -v '/$' | sort -u)
echo "files in the image: $files"
[ "$files" = "usr/local/bin/palette-gateway" ] || fail "the image holds more than the binary: $files"

step "the fake Palette (palette-gateway --demo on the host, 127.0.0.1:9191)"
"$bin" --demo >"$work/demo.log" 2>&1 &
demo_pid=$!
for _ in $(seq 1 100); do
    curl -fsS -o /dev/null http://127.0.0.1:9901/healthz 2>/dev/null && break
    sleep 0.1
done
curl -fsS -o /dev/null http://127.0.0.1:9901/healthz || { cat "$work/demo.log"; fail "the demo did not start"; }

step "podman run (read-only, no capabilities, Palette as http://palette.image-test:9191)"
keys=$("$bin" new-key)
key=$(printf '%s\n' "$keys" | sed -n 's/^key: //p')
hash=$(printf '%s\n' "$keys" | sed -n 's/^hash: //p')
mkdir "$work/etc"
cat >"$work/etc/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$admin_port"
shutdown_delay = "1s"

[upstream]
url = "http://palette.image-test:9191"
connect_timeout = "2s"

[credentials.default]
api_key_file = "/etc/palette-gateway/api-key"

[[clients]]
name = "image-test"
keys = ["$hash"]
projects = ["*"]
allow = ["GET /v1/**"]
TOML
printf '%s\n' "$(sed -n 's/^pub const DEMO_PALETTE_API_KEY: &str = "\(.*\)";/\1/p' src/demo.rs)" >"$work/etc/api-key"
chmod 0644 "$work/etc/gateway.toml" "$work/etc/api-key"
# A hosts file of our own: the name exists nowhere else, so only the image's own resolver can
# find it.
printf '127.0.0.1 localhost\n127.0.0.1 palette.image-test\n' >"$work/hosts"
podman_ run -d --name "$name" --network host --read-only --cap-drop all \
    --security-opt no-new-privileges \
    -v "$work/etc:/etc/palette-gateway:ro" -v "$work/hosts:/etc/hosts:ro" \
    "$image" >/dev/null

admin="http://127.0.0.1:$admin_port"
for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$admin/readyz" 2>/dev/null && break
    sleep 0.1
done
show_logs() { podman_ logs "$name" 2>&1 | tail -n 40; }

step "GET /healthz, /readyz, /metrics"
curl -fsS "$admin/healthz" || { show_logs; fail "/healthz"; }
echo
curl -fsS "$admin/readyz" || { show_logs; fail "/readyz"; }
echo
curl -fsS "$admin/metrics" >"$work/metrics.txt" || { show_logs; fail "/metrics"; }
grep -q '^palette_gateway_' "$work/metrics.txt" || fail "/metrics has no palette_gateway_ metric"
echo "/metrics: $(grep -c '^palette_gateway_' "$work/metrics.txt") palette_gateway_ samples"

step "one proxied request (GET /v1/spectroclusters with the local key)"
code=$(curl -sS -o "$work/answer.json" -w '%{http_code}' -H "ApiKey: $key" "http://127.0.0.1:$port/v1/spectroclusters")
head -c 300 "$work/answer.json"
echo
[ "$code" = 200 ] || { show_logs; fail "proxied request: HTTP $code"; }
# The fake Palette accepted the gateway's own Palette key (the client sent only its local key).
grep -q '"authenticatedWith":"ApiKey"' "$work/answer.json" || fail "the fake Palette did not see the Palette API key"
code=$(curl -sS -o /dev/null -w '%{http_code}' -H "ApiKey: pgw_wrong-key" "http://127.0.0.1:$port/v1/spectroclusters")
[ "$code" = 401 ] || fail "a wrong key got HTTP $code, not 401"
echo "200 with the key, 401 without it"

step "SIGTERM: a clean exit"
podman_ stop -t 30 "$name" >/dev/null
status=$(podman_ inspect "$name" --format '{{.State.ExitCode}}')
podman_ logs "$name" >"$work/container.log" 2>&1
tail -n 5 "$work/container.log"
[ "$status" = 0 ] || fail "exit code $status after SIGTERM"
grep -q '"message":"stopped"' "$work/container.log" || fail "no \"stopped\" log line after SIGTERM"
if grep -q 'demo-palette-api-key' "$work/container.log"; then fail "the Palette key is in the log"; fi

size=$(podman_ image inspect "$image" --format '{{.Size}}')
echo
echo "image test passed: exit code 0 after SIGTERM; image size $size bytes ($((size / 1048576)) MiB)"
