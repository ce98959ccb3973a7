#!/usr/bin/env bash
# The configuration reload (SIGHUP) against what an operator does without it (a restart), side
# by side (Linux; run as root for the eBPF source; traffic on loopback only):
#
#   bash scripts/bench-reload.sh       # ~3 minutes; writes target/bench-reload/results.md
#
# For M in BENCH_RELOAD_MS ("0 1000 10000") held sessions (fix-loadgen, benches/loadgen/: M
# connections 127.0.83.1:20000.. -> 127.0.83.2:7001, spread by the loadgen over child processes
# of at most 18,000 descriptors each) and each source in BENCH_RELOAD_SOURCES ("auto netlink";
# auto is eBPF as root), the release sidecar `run --config FILE --interval 1s [--source netlink]`
# is started before the load, so that its M sessions are counted as opened, with their starts;
# before them, BENCH_RELOAD_HISTORY (100) sessions to the same target are opened and closed, so
# that the target's counters hold more than its open sessions (total M + 100, closed 100):
#   1. reload, R (BENCH_RELOAD_R, 10) times each, alternately: a config that adds a second target
#      ("extra", 127.0.83.3:7002, no sessions) and removes nothing, then one that removes it (an
#      unrelated target); SIGHUP; the time from just before the signal to the timestamp of the
#      `configuration reloaded` line (and from the `SIGHUP received` line to it: inside the
#      process). After each, once a poll has run since, fix_connections_total and
#      fix_connections_active and fix_connections_closed_total of the held target must be what
#      they were before (and M + 100, M, 100): otherwise the
#      script fails (exit 1), as it does on a refused reload. The polls (/health "polls") are
#      counted against the time the reloads took (one a second expected), and the sidecar's RSS
#      (VmRSS) is read before the reloads, after the first pair and after all of them.
#   2. restart, BENCH_RELOAD_RESTARTS (3) times: SIGTERM, wait for the exit, start again with the
#      other config; the time to the exit, to the endpoint serving /health, and to the first
#      poll that has published the M sessions (/health active_connections == M, polls >= 1);
#      the held target's counters and the sessions with no known start ("preexisting" in
#      /connections) before and after, as evidence of what a restart loses.
# Knobs: BENCH_RELOAD_OUT (directory, target/bench-reload), BENCH_RELOAD_PORT (the sidecar's
# endpoint, 19581), BENCH_NO_BUILD=1 (use the release binaries as they are), FIX_MONITOR /
# FIX_LOADGEN (use these binaries; with BENCH_NO_BUILD=1), BENCH_RELOAD_NOTE (a line for the
# report: what else ran on the machine).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${BENCH_RELOAD_OUT:-$ROOT/target/bench-reload}"
MS="${BENCH_RELOAD_MS:-0 1000 10000}"
SOURCES="${BENCH_RELOAD_SOURCES:-auto netlink}"
R="${BENCH_RELOAD_R:-10}"
RESTARTS="${BENCH_RELOAD_RESTARTS:-3}"
HISTORY="${BENCH_RELOAD_HISTORY:-100}"
ADDR="127.0.0.1:${BENCH_RELOAD_PORT:-19581}"
LOCAL_IP=127.0.83.1
TARGET_IP=127.0.83.2
TARGET_PORT=7001
EXTRA_IP=127.0.83.3
mkdir -p "$OUT"
RES="$OUT/results.md"
RELOADS="$OUT/reloads.tsv"
SERIES="$OUT/series.tsv"
RESTARTS_TSV="$OUT/restarts.tsv"
: >"$RELOADS"
: >"$SERIES"
: >"$RESTARTS_TSV"

log() { printf '[bench-reload %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[bench-reload] ERROR: %s\n' "$*" >&2; exit 1; }

if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
    log "building (release)"
    cargo build --release --quiet --bin fix-monitor --example fix-loadgen
fi
FM="${FIX_MONITOR:-$ROOT/target/release/fix-monitor}"
LOADGEN="${FIX_LOADGEN:-$ROOT/target/release/examples/fix-loadgen}"
[ -x "$FM" ] || die "no fix-monitor at $FM"
[ -x "$LOADGEN" ] || die "no fix-loadgen at $LOADGEN"
for t in curl python3 ss; do command -v "$t" >/dev/null || die "$t is needed"; done
[ -z "$(ss -Htln "sport = :${ADDR##*:}")" ] || die "$ADDR is in use (set BENCH_RELOAD_PORT)"
# fix-monitor must not pick up a configuration from the environment.
for v in $(compgen -e); do
    case "$v" in FIX_MONITOR_* | DOWNSTREAM_IP) unset "$v" ;; esac
done

# Only the processes this script started, by their PIDs.
SIDECAR=
LOAD=
cleanup() {
    local rc=$?
    trap - EXIT
    for p in $SIDECAR $LOAD; do
        kill -TERM "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    [ "$rc" = 0 ] || log "failed (exit $rc); logs in $OUT"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now() { date +%s.%N; }
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", (b - a) * 1000}'; }
log_ts() { date -d "$(printf '%s' "$1" | cut -d' ' -f1)" +%s.%N; }

# write_config FILE WITH_EXTRA(0|1)
write_config() {
    {
        printf '[[targets]]\nname = "held"\naddress = "%s"\nport = %s\n' "$TARGET_IP" "$TARGET_PORT"
        [ "$2" = 1 ] && printf '\n[[targets]]\nname = "extra"\naddress = "%s"\nport = 7002\n' "$EXTRA_IP"
        true
    } >"$1"
}

health() { curl -sf --max-time 2 "http://$ADDR/health"; }
field() { # NAME (from /health on stdin): a number
    grep -o "\"$1\":[0-9]*" | head -1 | cut -d: -f2
}
polls() { local p; p=$(health | field polls) || true; echo "${p:-0}"; }
# The held target's "total active closed" (closed summed over who hung up).
held_counts() {
    curl -sf --max-time 5 "http://$ADDR/metrics" | awk '
        !index($1, "target=\"held\"") {next}
        $1 ~ /^fix_connections_total\{/ {t = $2}
        $1 ~ /^fix_connections_active\{/ {a = $2}
        $1 ~ /^fix_connections_closed_total\{/ {c += $2}
        END {print t + 0, a + 0, c + 0}'
}
preexisting() { curl -sf --max-time 10 "http://$ADDR/connections" | { grep -o '"preexisting":true' || true; } | wc -l; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$SIDECAR/status"; }

# start_sidecar CONFIG SOURCE LOG: sets SIDECAR and SPAWNED (when it was started).
start_sidecar() {
    SPAWNED=$(now)
    "$FM" run --config "$1" --interval 1s --listen "$ADDR" --source "$2" >/dev/null 2>>"$3" &
    SIDECAR=$!
}
# wait_ready M: until /health answers (sets SERVED) and a poll has published M sessions (READY).
wait_ready() {
    local m="$1" h deadline
    deadline=$(( $(date +%s) + 60 ))
    SERVED=
    while :; do
        kill -0 "$SIDECAR" 2>/dev/null || die "the sidecar exited; see $LOGF"
        [ "$(date +%s)" -lt "$deadline" ] || die "the sidecar did not publish $m sessions in 60 s"
        if h=$(health); then
            [ -n "$SERVED" ] || SERVED=$(now)
            if [ "$(printf '%s' "$h" | field polls)" -ge 1 ] 2>/dev/null && [ "$(printf '%s' "$h" | field active_connections)" = "$m" ]; then
                READY=$(now)
                return 0
            fi
        fi
        sleep 0.005
    done
}
# wait_polls N: until /health has counted N polls.
wait_polls() {
    local i
    for i in $(seq 1 1000); do
        [ "$(polls)" -ge "$1" ] && return 0
        sleep 0.02
    done
    die "no poll in 20 s (waiting for poll $1)"
}
# start_load COUNT MIN_PORT NAME: COUNT sessions LOCAL_IP:MIN_PORT.. -> the held target; sets LOAD.
start_load() {
    local ready="$OUT/$3.json"
    rm -f "$ready"
    "$LOADGEN" --matching "$1" --local-ip "$LOCAL_IP" --target "$TARGET_IP:$TARGET_PORT" \
        --min-port "$2" --ready-file "$ready" --timeout 120 >"$OUT/loadgen-$3.log" 2>&1 &
    LOAD=$!
    for _ in $(seq 1 1300); do
        [ -s "$ready" ] && return 0
        kill -0 "$LOAD" 2>/dev/null || die "fix-loadgen exited: $(tail -3 "$OUT/loadgen-$3.log")"
        sleep 0.1
    done
    die "fix-loadgen did not come up"
}
stop_load() {
    kill -TERM "$LOAD"
    wait "$LOAD" || true
    LOAD=
}
stop_sidecar() {
    kill -TERM "$SIDECAR"
    wait "$SIDECAR" || true
    SIDECAR=
}

# reload_once M SOURCE CASE CONFIG_WITH_EXTRA(0|1) I
reload_once() {
    local m="$1" src="$2" case="$3" extra="$4" i="$5" before after off sent line got ms inproc p0 hup
    write_config "$CFG" "$extra"
    before=$(held_counts)
    off=$(stat -c %s "$LOGF")
    sent=$(now)
    kill -HUP "$SIDECAR"
    line=
    for _ in $(seq 1 3000); do
        line=$(tail -c +"$((off + 1))" "$LOGF" | grep -m1 -E 'configuration reload(ed| refused)' || true)
        [ -n "$line" ] && break
        sleep 0.01
    done
    [ -n "$line" ] || die "no reload outcome in the log 30 s after SIGHUP ($src, M=$m)"
    case "$line" in *refused*) die "reload refused: $line" ;; esac
    case "$case" in
        add) got='targets added: extra; removed: none; changed: none; sessions no longer watched: 0' ;;
        remove) got='targets added: none; removed: extra; changed: none; sessions no longer watched: 0' ;;
    esac
    case "$line" in *"$got"*) ;; *) die "unexpected outcome: $line (expected: $got)" ;; esac
    hup=$(tail -c +"$((off + 1))" "$LOGF" | grep -m1 'SIGHUP received' || true)
    [ -n "$hup" ] || die "no 'SIGHUP received' line ($src, M=$m)"
    ms=$(ms_between "$sent" "$(log_ts "$line")")
    inproc=$(ms_between "$(log_ts "$hup")" "$(log_ts "$line")")
    # A poll that ended after the reload (and, after the series, two more: see run_one).
    p0=$(polls)
    wait_polls $((p0 + 1))
    after=$(held_counts)
    if [ "$before" != "$after" ] || [ "$after" != "$EXPECT" ]; then
        die "count changed across a reload ($src, M=$m, $case #$i): held 'total active closed' was '$before', is '$after' (expected '$EXPECT')"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$m" "$src" "$case" "$i" "$ms" "$inproc" "$before" "$after" "$(rss_kib)" >>"$RELOADS"
}

run_one() { # M SOURCE
    local m="$1" src="$2" p0 t0 p1 t1 rss0 rss1 rss2 i before pre_before after pre_after stopped k extra
    CFG="$OUT/config-$m-$src.toml"
    LOGF="$OUT/sidecar-$m-$src.log"
    : >"$LOGF"
    write_config "$CFG" 0
    start_sidecar "$CFG" "$src" "$LOGF"
    wait_ready 0
    # A history: HISTORY sessions opened and closed (RST) under this sidecar, so that the held
    # target's counters are more than its open sessions (what a restart loses).
    if [ "$HISTORY" -gt 0 ]; then
        start_load "$HISTORY" 30000 history
        wait_ready "$HISTORY"
        stop_load
        for _ in $(seq 1 500); do
            [ "$(held_counts)" = "$HISTORY 0 $HISTORY" ] && break
            sleep 0.02
        done
    fi
    if [ "$m" -gt 0 ]; then
        start_load "$m" 20000 "held-$m"
        wait_ready "$m"
    fi
    # Settled: the M sessions opened under this sidecar, counted once.
    wait_polls $(( $(polls) + 1 ))
    EXPECT="$((m + HISTORY)) $m $HISTORY"
    [ "$(held_counts)" = "$EXPECT" ] || die "before the reloads ($src, M=$m): held 'total active closed' is '$(held_counts)', expected '$EXPECT'"
    log "M=$m $src: $(health | grep -o '"source":"[a-z]*"'); $R reloads of each case"

    p0=$(polls); t0=$(now); rss0=$(rss_kib)
    for i in $(seq 1 "$R"); do
        reload_once "$m" "$src" add 1 "$i"
        reload_once "$m" "$src" remove 0 "$i"
        if [ "$i" = 1 ]; then rss1=$(rss_kib); fi
    done
    p1=$(polls); t1=$(now)
    # Two more polls, then the counts once more: nothing lost by the reloads.
    wait_polls $((p1 + 2))
    [ "$(held_counts)" = "$EXPECT" ] || die "after the reloads ($src, M=$m): held 'total active closed' is '$(held_counts)', expected '$EXPECT'"
    rss2=$(rss_kib)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$m" "$src" "$((p1 - p0))" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')" "$rss0" "$rss1" "$rss2" >>"$SERIES"
    log "M=$m $src: reloads done ($((p1 - p0)) polls in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s; RSS $rss0 -> $rss1 -> $rss2 KiB)"

    for k in $(seq 1 "$RESTARTS"); do
        extra=$((k % 2))
        write_config "$CFG" "$extra"
        before=$(held_counts)
        pre_before=$(preexisting)
        t0=$(now)
        stop_sidecar
        stopped=$(now)
        start_sidecar "$CFG" "$src" "$LOGF"
        wait_ready "$m"
        after=$(held_counts)
        pre_after=$(preexisting)
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$m" "$src" "$k" "$(ms_between "$t0" "$stopped")" \
            "$(ms_between "$SPAWNED" "$SERVED")" "$(ms_between "$SPAWNED" "$READY")" "$(ms_between "$t0" "$READY")" \
            "$before $pre_before" "$after $pre_after" "$extra" >>"$RESTARTS_TSV"
        log "M=$m $src: restart $k: $(ms_between "$t0" "$READY") ms SIGTERM -> $m published; held 'total active closed preexisting' $before $pre_before -> $after $pre_after"
    done
    stop_sidecar
    if [ -n "$LOAD" ]; then
        stop_load
        sleep 1
    fi
}

for m in $MS; do
    for src in $SOURCES; do run_one "$m" "$src"; done
done

{
    echo "## Reloading the configuration"
    echo
    echo "Run $(date -u +'%Y-%m-%d %H:%M UTC') on $(nproc) cores ($(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //')), Linux $(uname -r), git $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml || echo ' + uncommitted changes'), release build, as $(id -un)."
    echo "Command: \`bash scripts/bench-reload.sh\` (BENCH_RELOAD_MS=\"$MS\", BENCH_RELOAD_R=$R, BENCH_RELOAD_RESTARTS=$RESTARTS, BENCH_RELOAD_HISTORY=$HISTORY; the sidecar \`run --config FILE --interval 1s --source auto|netlink\`)."
    [ -z "${BENCH_RELOAD_NOTE:-}" ] || echo "$BENCH_RELOAD_NOTE"
    echo
} >"$RES"
python3 - "$RELOADS" "$SERIES" "$RESTARTS_TSV" "$R" "$RESTARTS" "$HISTORY" >>"$RES" <<'EOF'
import statistics, sys
reloads, series, restarts = ([l.rstrip("\n").split("\t") for l in open(p) if l.strip()] for p in sys.argv[1:4])
r, nrestarts, history = int(sys.argv[4]), sys.argv[5], sys.argv[6]
name = {"auto": "auto (eBPF)", "netlink": "netlink"}
def med_max(v):
    v = [float(x) for x in v]
    return f"{statistics.median(v):.0f} / {max(v):.0f}"
def slash(v):
    return v.replace(" ", " / ")
keys = list(dict.fromkeys((row[0], row[1]) for row in reloads))
print(f"M sessions held on loopback (fix-loadgen), opened after the sidecar started, after {history} others to the same target "
      f"opened and closed: the held target's counters are total M + {history}, active M, closed {history}. Times in ms, median / max.\n")
print(f"### Reload: SIGHUP, {r} times each case, alternately\n")
print("Add: a config that adds a second target and removes nothing. Remove: one that removes that (unrelated) target. "
      "Signal -> line: from just before `kill -HUP` to the timestamp of the `configuration reloaded` line; inside: from "
      "the `SIGHUP received` line to it. The counts are read before each reload and after a poll that ended after it "
      "(and two polls after the last); the script fails if one changed.\n")
print("| held sessions | source | add: signal -> line | add: inside | remove: signal -> line | remove: inside | held total / active / closed, before -> after every reload | polls / seconds over the reloads | RSS KiB: before -> after the 1st pair -> after all | RSS change over the last half of the reloads |")
print("|---:|---|---:|---:|---:|---:|---|---:|---|---:|")
for m, s in keys:
    rows = [x for x in reloads if (x[0], x[1]) == (m, s)]
    add = [x for x in rows if x[2] == "add"]
    rem = [x for x in rows if x[2] == "remove"]
    counts = sorted({(x[6], x[7]) for x in rows})
    c = "; ".join(f"{slash(b)} -> {slash(a)}" for b, a in counts)
    se = next(x for x in series if (x[0], x[1]) == (m, s))
    d = int(se[6]) - int(se[4])
    half = int(rows[-1][8]) - int(rows[len(rows) // 2 - 1][8])
    print(f"| {int(m):,} | {name.get(s, s)} | {med_max(x[4] for x in add)} | {med_max(x[5] for x in add)} | "
          f"{med_max(x[4] for x in rem)} | {med_max(x[5] for x in rem)} | {c} (all {len(rows)}) | "
          f"{se[2]} / {se[3]} | {int(se[4]):,} -> {int(se[5]):,} -> {int(se[6]):,} ({d:+,}) | {half:+,} KiB over {len(rows) // 2} |")
print(f"\n### Restart: SIGTERM, wait for the exit, start with the other config, {nrestarts} times\n")
print("Start -> served: until `/health` answers; -> published: until a poll has published the M sessions "
      "(`/health` active_connections == M, polls >= 1). SIGTERM -> published is the gap an operator's restart leaves "
      "(no polls, no endpoint for part of it). Preexisting: sessions in `/connections` whose start is unknown.\n")
print("| held sessions | source | SIGTERM -> exited | start -> served | start -> published | SIGTERM -> published | held total / active / closed / preexisting, before -> after the first restart |")
print("|---:|---|---:|---:|---:|---:|---|")
for m, s in keys:
    rows = [x for x in restarts if (x[0], x[1]) == (m, s)]
    ev = f"{slash(rows[0][7])} -> {slash(rows[0][8])}"
    if len(rows) > 1:
        same = all(x[7] == x[8] == rows[0][8] for x in rows[1:])
        ev += f"; {'the same after' if same else 'changed by'} the next {len(rows) - 1}"
    print(f"| {int(m):,} | {name.get(s, s)} | {med_max(x[3] for x in rows)} | {med_max(x[4] for x in rows)} | "
          f"{med_max(x[5] for x in rows)} | {med_max(x[6] for x in rows)} | {ev} |")
EOF
log "wrote $RES"
cat "$RES"
