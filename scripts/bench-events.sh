#!/usr/bin/env bash
# The kernel-events benchmark (issue 9), on its own: quick enough to run next to the full
# bench (scripts/bench.sh runs it at the end when BENCH_EVENTS=1, or run it alone).
#
#   bash scripts/bench-events.sh            # writes target/bench-events/results.md
#
# Measures, with the release binary:
#   1. the storm at a 1 s interval: 40 sessions of ~150 ms, one every 250 ms, half closed by the
#      venue with FIN and half with RST; counted / truth, polling only (--source procfs: what
#      fix-monitor did before kernel events) and with kernel events (--source netlink);
#   2. the same with 20 ms sessions;
#   3. the sidecar's CPU while 0 and while 2,000 unrelated connections per second close (the
#      kernel filter drops their notifications), over BENCH_EVENTS_SECONDS (default 20) each;
#   4. the cost per destroy event: the sidecar's CPU while 500 matching sessions per second
#      open and close (each a short-lived session, an event parsed and applied), minus idle,
#      divided by the events.
# CPU is read from /proc/PID/stat (utime + stime, in clock ticks). FIX_MONITOR / FIX_STORM: use
# these binaries (with BENCH_NO_BUILD=1).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT_DIR="${BENCH_EVENTS_OUT:-$ROOT/target/bench-events}"
SECONDS_EACH="${BENCH_EVENTS_SECONDS:-20}"
mkdir -p "$OUT_DIR"
RES="$OUT_DIR/results.md"
log() { printf '[bench-events %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
    log "building (release)"
    cargo build --release --quiet --bin fix-monitor --example fix-storm
fi
FM="${FIX_MONITOR:-$ROOT/target/release/fix-monitor}"
STORM="${FIX_STORM:-$ROOT/target/release/examples/fix-storm}"
TICK=$(getconf CLK_TCK)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# start_sidecar SOURCE ADDR... : one target per address (any port), 1 s interval.
start_sidecar() {
    local src="$1"; shift
    local cfg="$OUT_DIR/config-$src.toml"
    : >"$cfg"
    for a in "$@"; do printf '[[targets]]\nname = "%s"\naddress = "%s"\n\n' "$a" "$a" >>"$cfg"; done
    printf '[poll]\ninterval = "1s"\nsource = "%s"\n' "$src" >>"$cfg"
    "$FM" run --config "$cfg" --listen 127.0.0.1:0 2>"$OUT_DIR/sidecar-$src.log" &
    SIDECAR=$!
    PIDS+=("$SIDECAR")
    for _ in $(seq 100); do
        ADDR=$(grep -o 'listening on http://[0-9.:]*' "$OUT_DIR/sidecar-$src.log" | head -1 | sed 's|listening on http://||') || true
        [ -n "${ADDR:-}" ] && break
        sleep 0.1
    done
    [ -n "${ADDR:-}" ] || { cat "$OUT_DIR/sidecar-$src.log"; exit 1; }
    sleep 1.5
}
stop_sidecar() { kill "$SIDECAR"; wait "$SIDECAR" 2>/dev/null || true; }
metric() { # NAME TARGET
    curl -s "http://$ADDR/metrics" | awk -v n="$1" -v t="target=\"$2\"" '$1 ~ "^"n"\\{" && index($1, t) {v+=$2} END {print v+0}'
}

{
    echo "## Kernel close events"
    echo
    echo "Run $(date -u +'%Y-%m-%d %H:%M UTC') on $(nproc) cores ($(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | sed 's/^ //')), Linux $(uname -r), git $(git rev-parse --short HEAD)$(git diff --quiet || echo ' + uncommitted changes')."
    echo "Command: \`bash scripts/bench-events.sh\` (BENCH_EVENTS_SECONDS=$SECONDS_EACH)."
    echo
    echo "### The storm at a 1 s interval (counted / truth)"
    echo
    echo "| sessions | mode | opened | closed | short-lived | with a lifetime |"
    echo "|---|---|---|---|---|---|"
} >"$RES"

storm_row() { # SOURCE HOLD_MS EVERY_MS ADDR
    local src="$1" hold="$2" every="$3" addr="$4" truth made mode
    start_sidecar "$src" "$addr"
    mode=$(curl -s "http://$ADDR/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["events"]["mode"])')
    truth=$("$STORM" storm --addr "$addr" --sessions 40 --every-ms "$every" --hold-ms "$hold")
    made=$(echo "$truth" | python3 -c 'import json,sys; print(json.load(sys.stdin)["made"])')
    sleep 2.5
    local o c s h
    o=$(metric fix_connections_total "$addr"); c=$(metric fix_connections_closed_total "$addr")
    s=$(metric fix_connections_short_lived_total "$addr"); h=$(metric fix_connection_duration_seconds_count "$addr")
    echo "| $made x ${hold} ms, one every ${every} ms | $src: $mode | $o / $made | $c / $made | $s | $h |" >>"$RES"
    log "storm $src ${hold}ms: opened $o closed $c short $s lifetime $h (truth $made)"
    stop_sidecar
}
storm_row procfs 150 250 127.0.95.1
storm_row netlink 150 250 127.0.95.2
storm_row procfs 20 50 127.0.95.3
storm_row netlink 20 50 127.0.95.4

{
    echo
    echo "### Sidecar CPU under unrelated closes, and the cost per destroy event"
    echo
    echo "| load over ${SECONDS_EACH} s | closes made | sidecar CPU | share of one core | events applied |"
    echo "|---|---|---|---|---|"
} >>"$RES"

cpu_row() { # LABEL CMD...
    local label="$1"; shift
    local t0 t1 made out
    t0=$(cpu_ticks "$SIDECAR")
    if [ $# -gt 0 ]; then
        out=$("$@"); made=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["made"])')
    else
        sleep "$SECONDS_EACH"; made=0
    fi
    t1=$(cpu_ticks "$SIDECAR")
    local ms=$(( (t1 - t0) * 1000 / TICK ))
    CPU_MS=$ms
    echo "$label|$made|$ms" >>"$OUT_DIR/cpu.txt"
    log "$label: $made closes, sidecar CPU ${ms} ms"
}
: >"$OUT_DIR/cpu.txt"
start_sidecar netlink 127.0.95.5
cpu_row "idle (no closes)"
IDLE_MS=$CPU_MS
cpu_row "2,000 unrelated closes/s" "$STORM" churn --addr 127.0.96.1 --rate 2000 --seconds "$SECONDS_EACH"
UNREL_MS=$CPU_MS
UNREL_MADE=$(tail -1 "$OUT_DIR/cpu.txt" | cut -d'|' -f2)
cpu_row "500 matching short sessions/s" "$STORM" churn --addr 127.0.95.5 --rate 500 --seconds "$SECONDS_EACH"
MATCH_MS=$CPU_MS
MATCH_MADE=$(tail -1 "$OUT_DIR/cpu.txt" | cut -d'|' -f2)
sleep 2
APPLIED=$(metric fix_connections_total 127.0.95.5)
SHORT=$(metric fix_connections_short_lived_total 127.0.95.5)
UNATTR=$(curl -s "http://$ADDR/metrics" | awk '/^fix_monitor_events_unattributed_total/ {print $2}')
stop_sidecar
pct() { python3 -c "print(f'{$1 / ($SECONDS_EACH * 1000) * 100:.2f}%')"; }
{
    echo "| idle | 0 | ${IDLE_MS} ms | $(pct "$IDLE_MS") | 0 |"
    echo "| 2,000 unrelated closes/s (another address; the kernel filter drops them) | $UNREL_MADE | ${UNREL_MS} ms | $(pct "$UNREL_MS") | 0 |"
    echo "| 500 matching sessions/s, each a short-lived session (aborted by the client: its remote port is cleared, so it is counted only because the target has no port; see dashboards/README.md) | $MATCH_MADE | ${MATCH_MS} ms | $(pct "$MATCH_MS") | opened $APPLIED, short-lived $SHORT, unattributed ${UNATTR:-0} |"
    echo
    python3 -c "
idle, match, made = $IDLE_MS, $MATCH_MS, $MATCH_MADE
per = (match - idle) / made * 1e3 if made else float('nan')
print(f'Cost per destroy event (matching load minus idle, over the events): **{per:.1f} µs** of sidecar CPU '
      f'({match} ms - {idle} ms over {made} events). CPU time comes in clock ticks of {1000 // $TICK} ms, '
      'so the idle and unrelated rows are exact to about that much.')
"
} >>"$RES"
log "wrote $RES"
cat "$RES"
