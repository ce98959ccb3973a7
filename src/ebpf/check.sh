#!/usr/bin/env bash
# Everything CI checks for the eBPF crate, which is its own workspace until it joins the root
# one: the committed object against its source (two reproducible rebuilds), format, lint, and
# the tests (unit and real-kernel; the kernel tests need root and fail, never skip, without it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
# Its build goes under the repository's target/, not into src/.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/../../target/ebpf}"

bash build-bpf.sh --check
cargo fmt -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets
