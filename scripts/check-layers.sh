#!/usr/bin/env bash
# The workspace's layering, as `cargo tree` shows it: fix-monitor-core depends on no crate of
# the project, fix-monitor-kernel on core alone (tests/integration/layers.rs checks the same
# from the manifests, on every `cargo test`).
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
# Crates of the project each layer's normal and build dependencies reach (itself left out).
reach() {
    cargo tree --locked -p "$1" -e normal,build --prefix none --format '{p}' \
        | awk '{print $1}' | grep '^fix-monitor' | grep -vx "$1" | sort -u || true
}
core=$(reach fix-monitor-core)
if [ -n "$core" ]; then
    echo "fix-monitor-core must depend on no crate of the project; it reaches: $core" >&2
    fail=1
fi
kernel=$(reach fix-monitor-kernel)
if [ "$kernel" != "fix-monitor-core" ]; then
    echo "fix-monitor-kernel must depend on fix-monitor-core alone; it reaches: $kernel" >&2
    fail=1
fi
protocol=$(reach fix-monitor-protocol)
if [ "$protocol" != "fix-monitor-core" ]; then
    echo "fix-monitor-protocol must depend on fix-monitor-core alone; it reaches: $protocol" >&2
    fail=1
fi
[ "$fail" = 0 ] && echo "layers: core <- kernel, protocol <- fix-monitor"
exit "$fail"
