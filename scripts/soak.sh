#!/usr/bin/env bash
# The soak: the real sidecar for a bounded time under churn (50 sessions a second opening and
# closing, a flapping target), VictoriaMetrics as its OTLP receiver going down and up every
# minute, and scrapers on its endpoint; at the end its counts must equal the ground truth, its
# RSS and open files must be flat after the warm-up, and its log must not flood. The driver is
# benches/soak/fix_soak.rs (its doc comment lists every check); results in BENCHMARKS.md.
#
#   scripts/soak.sh                                  # 10 minutes, release build
#   SOAK_SECONDS=120 SOAK_PROFILE=debug scripts/soak.sh   # what CI (scripts/test.sh) runs
#
# Environment: SOAK_SECONDS (600), SOAK_WARMUP (a fifth of it, at least 30), SOAK_RELOAD_EVERY
# (seconds between two configuration reloads: 600 for a soak of 20 minutes or more, else 30, so
# CI's 2-minute soak reloads three times; 0: none), SOAK_PROFILE
# (release | debug), SOAK_OUT (target/soak-PID: the sidecar's log, samples, summary.json),
# VICTORIA_METRICS (default .tools/bin/victoria-metrics, from scripts/fetch-tools.sh),
# SOAK_CARGO_ARGS (extra cargo build arguments: CI passes its test build's --features so that
# nothing is rebuilt).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${SOAK_SECONDS:-600}"
warmup="${SOAK_WARMUP:-$(( secs / 5 > 30 ? secs / 5 : 30 ))}"
profile="${SOAK_PROFILE:-release}"
reload_every="${SOAK_RELOAD_EVERY:-$(( secs >= 1200 ? 600 : 30 ))}"
out="${SOAK_OUT:-target/soak-$$}"
vm="${VICTORIA_METRICS:-.tools/bin/victoria-metrics}"
[ -x "$vm" ] || { echo "soak: $vm not found: run scripts/fetch-tools.sh" >&2; exit 1; }

case "$profile" in
    # shellcheck disable=SC2086 # SOAK_CARGO_ARGS is a list of words
    release) cargo build --release --locked ${SOAK_CARGO_ARGS:-} --bin fix-monitor --example fix-soak; dir=target/release ;;
    # shellcheck disable=SC2086
    debug) cargo build --locked ${SOAK_CARGO_ARGS:-} --bin fix-monitor --example fix-soak; dir=target/debug ;;
    *) echo "soak: SOAK_PROFILE must be release or debug" >&2; exit 64 ;;
esac

mkdir -p "$out"
echo "soak: $secs s ($warmup s warm-up), $profile build; output in $out"
"$dir/examples/fix-soak" --bin "$dir/fix-monitor" --vm "$vm" --duration "$secs" \
    --warmup "$warmup" --reload-every "$reload_every" --out "$out"
