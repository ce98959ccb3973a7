#!/usr/bin/env bash
# Everything CI checks for the eBPF crate beyond the workspace's fmt and clippy: the committed
# object against its source (two reproducible rebuilds), and the tests, unit and real-kernel
# (the kernel tests need root and fail, never skip, without it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

bash build-bpf.sh --check
cargo test --locked -p fix-monitor-ebpf --features kernel-tests --all-targets
