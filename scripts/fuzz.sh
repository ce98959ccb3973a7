#!/usr/bin/env bash
# Coverage-guided fuzzing of fix-monitor's parsers and its HTTP endpoint with AFL++ through
# `cargo afl` (stable toolchain; the afl crate builds AFL++ itself). The targets are
# fuzz/src/bin/*.rs; what each checks is fuzz/harness.rs, which `cargo test` also runs on every
# saved case.
#
#   scripts/fuzz.sh                      # every target, FUZZ_SECONDS (300) each
#   FUZZ_SECONDS=60 scripts/fuzz.sh bytecode netlink_dump
#   scripts/fuzz.sh --minimize http_request                    # queue -> fuzz/corpus/TARGET
#   FUZZ_OUT=/elsewhere/fuzz/out scripts/fuzz.sh --minimize    # every target's queue there
#
# A campaign starts from fuzz/seeds/TARGET plus the committed minimized corpus,
# fuzz/corpus/TARGET. A crash is copied to tests/fixtures/fuzz/TARGET/ (named by its content's
# hash), where the first-tier test `fuzz_regressions` replays it on every run: fix the bug, keep
# the case. The script exits 1 when a target crashed or hung. The campaign's state stays in
# $FUZZ_OUT/TARGET (default fuzz/out, ignored by git); a second run resumes it (remove it to
# start again from seeds and corpus).
#
# --minimize runs afl-cmin over the campaign's queue(s) ($FUZZ_OUT/TARGET/*/queue) together with
# the corpus already committed, keeps the smallest set of inputs that covers the same edges, and
# writes it to fuzz/corpus/TARGET/, each file named by its content's hash: commit it. It fuzzes
# nothing. FUZZ_OUT is absolute or relative to the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

AFL_VERSION=0.18.2
secs="${FUZZ_SECONDS:-300}"
out_root="${FUZZ_OUT:-fuzz/out}"
all_targets=(netlink_dump procfs_table bytecode fix_codec config_toml otel_headers destroy_message
    fix_log_line web_config_yaml http_request)
mode=fuzz
if [ "${1:-}" = --minimize ]; then
    mode=minimize
    shift
fi
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
    [ -d "fuzz/seeds/$t" ] || { echo "fuzz: no target $t (have: ${all_targets[*]})" >&2; exit 64; }
done

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

# AFL's per-input time limit, where its own guess (from the seeds' times) does not fit: the
# endpoint target's harness has its own deadline (3 s an exchange, two exchanges an input) and
# says what did not end; AFL only calls it a hang well past that.
afl_timeout() {
    case "$1" in
        http_request) echo 10000 ;;
        *) echo "" ;;
    esac
}

# One campaign of FUZZ_SECONDS for target $1; prints its line and copies crashes and hangs.
campaign() {
    local t="$1" out="$out_root/$1" input="$out_root/$1.input" timeout
    timeout="$(afl_timeout "$t")"
    mkdir -p "$out"
    # Seeds plus the committed corpus, as one input directory (read only by a fresh campaign).
    rm -rf "$input"
    mkdir -p "$input"
    cp "fuzz/seeds/$t"/* "$input/"
    [ ! -d "fuzz/corpus/$t" ] || cp "fuzz/corpus/$t"/* "$input/" 2>/dev/null || true
    echo "fuzz: $t for $secs s (from $(find "$input" -type f | wc -l) inputs)"
    cargo afl fuzz -V "$secs" ${timeout:+-t "$timeout"} -i "$input" -o "$out" \
        "fuzz/target/release/$t" > "$out/afl.log" 2>&1 || { tail -20 "$out/afl.log" >&2; exit 1; }
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
}

# afl-cmin over target $1's queues in $FUZZ_OUT and its committed corpus, into fuzz/corpus/$1.
minimize() {
    local t="$1" corpus="fuzz/corpus/$1" tmp timeout map_size inputs left_out queues=()
    timeout="$(afl_timeout "$t")"
    for q in "$out_root/$t"/*/queue; do
        [ -d "$q" ] && queues+=(-i "$q")
    done
    if [ "${#queues[@]}" = 0 ]; then
        echo "fuzz: $t: no queue in $out_root/$t (run a campaign first); corpus left as it is" >&2
        return
    fi
    [ -d "$corpus" ] && [ -n "$(ls -A "$corpus")" ] && queues+=(-i "$corpus")
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/fuzz-cmin-$t.XXXXXX")"
    # The coverage map afl-cmin has afl-showmap allocate: at least 64 KiB. afl-cmin asks the
    # target for its map size (AFL_DUMP_MAP_SIZE: 345 bytes for destroy_message) and allocates
    # just that, but AFL++ 4.40c's runtime in these Rust binaries, whose edges register after
    # the map is attached, clears a full 64 KiB at the start of the persistent loop: with a
    # smaller map every input died of SIGSEGV, afl-cmin counted them all as crashes and found
    # "0 tuples" (every target but the three whose maps are over 64 KiB). afl-fuzz was not
    # affected.
    map_size="$(AFL_DUMP_MAP_SIZE=1 "fuzz/target/release/$t" 2>/dev/null || true)"
    [[ "$map_size" =~ ^[0-9]+$ ]] && [ "$map_size" -gt 65536 ] || map_size=65536
    # afl-cmin runs every input once more (an hour's queue: a few minutes); a crash or timeout
    # is left out of the corpus (and counted, from --crash-dir, which also gets the empty files
    # afl-showmap skips, like web_config_yaml's empty seed). Edges only (-e), not their hit
    # counts: a corpus a third the size, without near-copies kept for a loop's count or for a
    # multi-threaded target's unstable counts (http_request's); a campaign finds those counts
    # again in minutes.
    AFL_MAP_SIZE="$map_size" cargo afl cmin -e "${queues[@]}" -o "$tmp/min" \
        --crash-dir "$tmp/crashes" -t "${timeout:-5000}" -- \
        "fuzz/target/release/$t" > "$tmp/cmin.log" 2>&1 || {
        tail -20 "$tmp/cmin.log" >&2
        rm -rf "$tmp"
        status=1
        return
    }
    # Nothing kept means nothing ran right (the 0-tuples failure above): say so, and leave the
    # committed corpus as it is.
    if [ -z "$(find "$tmp/min" -maxdepth 1 -type f ! -name '.*' -print -quit)" ]; then
        echo "fuzz: $t: afl-cmin kept no input; corpus left as it is. Its log:" >&2
        tail -20 "$tmp/cmin.log" >&2
        rm -rf "$tmp"
        status=1
        return
    fi
    inputs="$(sed -n 's/.*Remain \([0-9]*\) files after dedup.*/\1/p' "$tmp/cmin.log")"
    left_out="$(find "$tmp/crashes" -type f 2>/dev/null | wc -l)"
    rm -rf "$corpus"
    mkdir -p "$corpus"
    for f in "$tmp/min"/*; do
        [ -f "$f" ] && cp "$f" "$corpus/$(sha1sum "$f" | cut -c1-16)"
    done
    chmod 644 "$corpus"/*
    rm -rf "$tmp"
    line="$t: $(find "$corpus" -type f | wc -l) inputs, $(du -sh --apparent-size "$corpus" | cut -f1) in $corpus (from ${inputs:-?} distinct inputs; $left_out empty, crashed or timed out, left out)"
    echo "fuzz: minimized $line"
    summary="$summary$line"$'\n'
}

status=0
summary=""
for t in "${targets[@]}"; do
    if [ "$mode" = minimize ]; then minimize "$t"; else campaign "$t"; fi
done
if [ "$mode" = minimize ]; then
    printf '\nminimized corpora (from %s; commit fuzz/corpus/):\n%s' "$out_root" "$summary"
else
    printf '\nfuzz summary (%s s per target):\n%s' "$secs" "$summary"
fi
exit "$status"
