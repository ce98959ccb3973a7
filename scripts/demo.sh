#!/usr/bin/env bash
# The README's first command: the demo (simulated venues and a gateway on loopback, watched
# live) on a fresh machine. Installs the C libraries the build needs when they are missing
# (scripts/build-deps.sh), then `cargo run --release -- demo` with any arguments given.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/build-deps.sh
exec cargo run --release -- demo "$@"
