#!/usr/bin/env bash
# The FIX decode path of this checkout against an earlier commit, side by side in one run:
# `fix-fixbench decode` (benches/fix) built at BASE (default: the last commit before the FIX
# layer's sequence forensics, order outcomes and bursts) and at HEAD's working tree, run
# alternately ROUNDS times pinned to one CPU, so both see the same machine. Prints a markdown
# table (median and best messages per second, wire and log paths) for BENCHMARKS.md.
#
#   scripts/bench-fix-compare.sh [BASE_REV] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."

BASE="${1:-55bd511}"
ROUNDS="${2:-9}"
MESSAGES="${FIX_MESSAGES:-1000000}"
CPU="${BENCH_CPU:-1}"
WORK="$(mktemp -d)"
trap 'git worktree remove --force "$WORK/base" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --example fix-fixbench >&2
cp "$target/release/examples/fix-fixbench" "$WORK/after"

git worktree add --detach "$WORK/base" "$BASE" >&2
# Its own target directory, seeded with this one's release dependencies.
mkdir -p "$WORK/target"
cp -a "$target/release" "$WORK/target/" 2>/dev/null || true
(cd "$WORK/base" && CARGO_TARGET_DIR="$WORK/target" cargo build --release --example fix-fixbench >&2)
cp "$WORK/target/release/examples/fix-fixbench" "$WORK/before"
rm -rf "$WORK/target"

for i in $(seq 1 "$ROUNDS"); do
    for b in before after; do
        taskset -c "$CPU" "$WORK/$b" decode --messages "$MESSAGES" >"$WORK/$b-$i.json"
    done
done

python3 - "$WORK" "$ROUNDS" "$BASE" "$(git rev-parse --short HEAD)" <<'EOF'
import json, statistics, sys
work, rounds, base, head = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rows = {}
for b in ("before", "after"):
    runs = [json.load(open(f"{work}/{b}-{i}.json")) for i in range(1, rounds + 1)]
    rows[b] = {p: [r[f"{p}_msgs_per_s"] for r in runs] for p in ("wire", "log")}
print(f"| path | {base} median | {base} best | {head} median | {head} best | change (median) |")
print("|---|---:|---:|---:|---:|---:|")
for p in ("wire", "log"):
    b, a = rows["before"][p], rows["after"][p]
    mb, ma = statistics.median(b), statistics.median(a)
    print(f"| {p} | {mb:,.0f} | {max(b):,.0f} | {ma:,.0f} | {max(a):,.0f} | {100 * (ma - mb) / mb:+.1f}% |")
EOF
