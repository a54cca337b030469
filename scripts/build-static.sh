#!/usr/bin/env bash
# The release build the container image ships: one statically linked binary (glibc's crt-static).
# `.ci/run`, `deploy/Dockerfile` and `bench/idle.sh` all build through this script, so the binary
# CI tests, the image holds and the idle benchmark measures is built the same way.
#
#   bash scripts/build-static.sh [cargo build args...]      # e.g. --bin palette-gateway --quiet
#
# With --target, build scripts and proc-macros stay ordinary host programs; only the targets are
# linked statically. The binary lands in target/$BUILD_TARGET/release/ (BUILD_TARGET defaults to
# the host's triple; CI and the prebuilt image stage expect x86_64-unknown-linux-gnu).
set -euo pipefail
target=${BUILD_TARGET:-$(rustc -vV | sed -n 's/^host: //p')}
export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static"
exec cargo build --release --locked --target "$target" "$@"
