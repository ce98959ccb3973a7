#!/usr/bin/env bash
# The workspace's layering, as `cargo tree` shows it: fix-monitor-ebpf and fix-monitor-core
# depend on no crate of the project, fix-monitor-kernel on those two, fix-monitor-protocol on
# core alone (tests/integration/layers.rs checks the same from the manifests, on every
# `cargo test`).
set -euo pipefail
cd "$(dirname "$0")/.."

fail=0
# Crates of the project each layer's normal and build dependencies reach (itself left out).
reach() {
    cargo tree --locked -p "$1" -e normal,build --prefix none --format '{p}' \
        | awk '{print $1}' | grep '^fix-monitor' | grep -vx "$1" | sort -u || true
}
for bottom in fix-monitor-core fix-monitor-ebpf; do
    below=$(reach "$bottom")
    if [ -n "$below" ]; then
        echo "$bottom must depend on no crate of the project; it reaches: $below" >&2
        fail=1
    fi
done
kernel=$(reach fix-monitor-kernel | tr '\n' ' ')
if [ "$kernel" != "fix-monitor-core fix-monitor-ebpf " ]; then
    echo "fix-monitor-kernel must depend on fix-monitor-core and fix-monitor-ebpf alone; it reaches: $kernel" >&2
    fail=1
fi
protocol=$(reach fix-monitor-protocol)
if [ "$protocol" != "fix-monitor-core" ]; then
    echo "fix-monitor-protocol must depend on fix-monitor-core alone; it reaches: $protocol" >&2
    fail=1
fi
[ "$fail" = 0 ] && echo "layers: ebpf, core <- kernel; core <- protocol; kernel, protocol <- fix-monitor"
exit "$fail"
