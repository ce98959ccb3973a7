#!/usr/bin/env bash
# The whole test suite, as CI runs it: tools, lint, unit and integration tests, rule and
# dashboard checks. Needs root for the network-namespace tests and apt for the tools.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/fetch-tools.sh
export PATH="$PWD/.tools/bin:$PATH"

cargo fmt --all -- --check
cargo clippy --all-targets --all-features --locked -- -D warnings
cargo test --locked --all-targets --features system-tests
bash src/ebpf/check.sh  # the eBPF programs: object vs source, real-kernel tests
# Two minutes of the soak on the test build (scripts/soak.sh runs ten on a release build).
SOAK_SECONDS=120 SOAK_PROFILE=debug SOAK_CARGO_ARGS="--features system-tests" bash scripts/soak.sh
# report.py keeps BENCHMARKS.md's sections other scripts wrote (on the current file).
python3 benches/test_report.py
bash scripts/check-dashboards.sh
bash scripts/check-examples.sh
# The Debian package: install on this machine, check, purge; then the same .deb in a minimal
# Debian root (debootstrap, about 40 s). Packaged from the test build (PACKAGE_PROFILE=debug),
# which is already there: a release build would add minutes to CI and prove nothing more about
# the packaging (scripts/package-deb.sh makes the release package).
export PACKAGE_PROFILE=debug
bash scripts/check-package.sh
bash scripts/check-package-root.sh
# The RPM, beside it: built from the same test build (cargo-generate-rpm), read with Debian's
# rpm tools (rpm -qlp and friends, rpm2archive), not installed on an RPM distribution (about
# 15 s once cargo-generate-rpm is in .tools/: a gzip payload for the test build).
bash scripts/check-rpm.sh
bash scripts/check-layers.sh
