#!/usr/bin/env bash
# Coverage-guided fuzzing of fix-monitor's parsers with AFL++ through `cargo afl` (stable
# toolchain; the afl crate builds AFL++ itself). The targets are fuzz/src/bin/*.rs; what each
# checks is fuzz/harness.rs, which `cargo test` also runs on every saved case.
#
#   scripts/fuzz.sh                      # every target, FUZZ_SECONDS (300) each
#   FUZZ_SECONDS=60 scripts/fuzz.sh bytecode netlink_dump
#
# A crash is copied to tests/fixtures/fuzz/TARGET/ (named by its content's hash), where the
# first-tier test `fuzz_regressions` replays it on every run: fix the bug, keep the case. The
# script exits 1 when a target crashed or hung. The campaign's state stays in fuzz/out/TARGET
# (ignored by git); a second run resumes it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

AFL_VERSION=0.18.2
secs="${FUZZ_SECONDS:-300}"
all_targets=(netlink_dump procfs_table bytecode fix_codec config_toml otel_headers destroy_message fix_log_line web_config_yaml)
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=("${all_targets[@]}")

# cargo-afl, from crates.io, into .tools/ (building it builds AFL++ too: a few minutes once).
tools="$ROOT/.tools/cargo-afl"
if ! "$tools/bin/cargo-afl" afl --version 2>/dev/null | grep -q "$AFL_VERSION"; then
    echo "fuzz: installing cargo-afl $AFL_VERSION into .tools/cargo-afl"
    cargo install --locked --root "$tools" --version "$AFL_VERSION" cargo-afl
fi
export PATH="$tools/bin:$PATH"
# AFL++ itself, built by cargo-afl for this rustc; cargo-afl refuses (and says so) when it is
# there already.
if ! out="$(cargo afl config --build 2>&1)"; then
    grep -q "already built" <<<"$out" || { printf '%s\n' "$out" >&2; exit 1; }
fi

# The fuzz workspace resolves the crate's dependencies at the versions the crate's own lock file
# pins (a lock file of its own went stale each time the crate gained a dependency), plus afl.
cp Cargo.lock fuzz/Cargo.lock
(cd fuzz && cargo afl build --release)

# A shared CI-like machine: no CPU pinning, no frequency or core-pattern tuning (they need
# root-wide changes; AFL++ only loses a little speed and crash detection stays).
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_AUTORESUME=1

status=0
summary=""
for t in "${targets[@]}"; do
    [ -d "fuzz/seeds/$t" ] || { echo "fuzz: no target $t (have: ${all_targets[*]})" >&2; exit 64; }
    out="fuzz/out/$t"
    mkdir -p "$out"
    echo "fuzz: $t for $secs s"
    cargo afl fuzz -V "$secs" -i "fuzz/seeds/$t" -o "$out" "fuzz/target/release/$t" \
        > "$out/afl.log" 2>&1 || { tail -20 "$out/afl.log" >&2; exit 1; }
    stats="$out/default/fuzzer_stats"
    stat() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
    crashes=0
    mkdir -p "tests/fixtures/fuzz/$t"
    for c in "$out"/default/crashes/id:* "$out"/default/hangs/id:*; do
        [ -f "$c" ] || continue
        crashes=$((crashes + 1))
        kind=crash; case "$c" in */hangs/*) kind=hang ;; esac
        cp "$c" "tests/fixtures/fuzz/$t/$kind-$(sha1sum "$c" | cut -c1-12)"
    done
    line="$t: $(stat execs_done) execs in $(stat run_time) s ($(stat execs_per_sec)/s), corpus $(stat corpus_count), edges $(stat edges_found)/$(stat total_edges) ($(stat bitmap_cvg)), stability $(stat stability), crashes $(stat saved_crashes), hangs $(stat saved_hangs)"
    echo "fuzz: $line"
    summary="$summary$line"$'\n'
    [ "$crashes" = 0 ] || { echo "fuzz: $t: $crashes crash/hang inputs copied to tests/fixtures/fuzz/$t/" >&2; status=1; }
done
printf '\nfuzz summary (%s s per target):\n%s' "$secs" "$summary"
exit "$status"
