#!/usr/bin/env bash
# The fix-monitor benchmark, in one command (Linux; no root needed; traffic on loopback only):
#
#   bash scripts/bench.sh                 # full run, ~7 minutes plus the build; writes BENCHMARKS.md
#   BENCH_QUICK=1 bash scripts/bench.sh   # smoke test, ~2 minutes; writes target/bench-quick/BENCHMARKS.quick.md
#
# Builds the release binaries, puts M matching + N unrelated TCP connections on loopback with
# the fix-loadgen example (benches/loadgen/), and at each N measures, side by side, the cost of
# one poll of:
#   - fix-monitor inside the running sidecar (`run --interval 1s`, netlink and procfs sources):
#     fix_monitor_poll_duration_seconds_sum/_count over a window, and the poll thread's CPU time
#   - fix-monitor as a one-shot process (`fix-monitor snapshot --source netlink|procfs`)
#   - `ss -tn state established dst IP:PORT '( sport >= :MIN and sport <= :MAX )'` (the same
#     kernel filter) and plain `ss -tn`
#   - node_exporter's tcpstat collector, one scrape (curl) and the exporter's CPU for it
#   - the original Python exporter's collect_metrics(), as shipped and with its parse fixed
# then the sidecar's RSS and CPU share over BENCH_DURATION seconds, /metrics latency under 50
# concurrent scrapers (wrk) with the polling checked meanwhile, and the poll cost as M grows.
# Last, what session health costs: a netlink poll with tcp_info against without, side by side
# (fix-pollcost, benches/pollcost/), and `fix-monitor snapshot` against `ss -tin` with the same
# filter, at M and N = BENCH_TCPINFO_NS ("0 10000 50000"). BENCH_ONLY=tcpinfo runs only that
# part and writes its own report ($WORK/BENCHMARKS.tcpinfo.md).
# Writes a markdown report (tables, commands, machine) and prints it.
#
# Knobs (environment): BENCH_QUICK=1, BENCH_NS ("0 10000 50000 100000"), BENCH_M (1000),
# BENCH_SWEEP_MS ("1 1000 10000"; empty: no M sweep), BENCH_SWEEP_N (10000), BENCH_RUNS (max one-shot runs, 15),
# BENCH_GAP (idle seconds before each timed one-shot poll, 0.25),
# BENCH_PY_RUNS (5), BENCH_WINDOW (sidecar window per N, s: 10), BENCH_DURATION (long run, s:
# 60), BENCH_WRK_DURATION (s: 10), BENCH_CHURN (matching connections reopened per second during
# the long run: 0), BENCH_OUT (report path), FIX_MONITOR (use this binary, skip building it),
# BENCH_EVENTS=0 (skip the kernel-events section, scripts/bench-events.sh), BENCH_ONLY=fix / BENCH_FIX=0
# (only / no FIX section, see "F." below; FIX_FIXBENCH: use this fix-fixbench binary),
# BENCH_ONLY=proccost / BENCH_PROC=0 (only / no process-lookup section, see "G." below), BENCH_NO_FETCH=1 (do not run scripts/fetch-tools.sh when a tool is missing), BENCH_NO_BUILD=1
# (use the release binaries already built), CARGO_TARGET_DIR (default: target/).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$ROOT/.tools/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
QUICK="${BENCH_QUICK:-0}"
# Raw results and logs; a quick run keeps its own, so that it never clobbers a full run's.
WORK="$CARGO_TARGET_DIR/bench"
[ "$QUICK" = 1 ] && WORK="$CARGO_TARGET_DIR/bench-quick"
mkdir -p "$WORK"

if [ "$QUICK" = 1 ]; then
    NS="${BENCH_NS:-0 10000}"
    SWEEP_MS="${BENCH_SWEEP_MS-1 1000}"
    RUNS="${BENCH_RUNS:-8}"
    PY_RUNS="${BENCH_PY_RUNS:-2}"
    WINDOW="${BENCH_WINDOW:-4}"
    DURATION="${BENCH_DURATION:-10}"
    WRK_DURATION="${BENCH_WRK_DURATION:-4}"
    OUT="${BENCH_OUT:-$WORK/BENCHMARKS.quick.md}"
else
    NS="${BENCH_NS:-0 10000 50000 100000}"
    SWEEP_MS="${BENCH_SWEEP_MS-1 1000 10000}"
    RUNS="${BENCH_RUNS:-15}"
    PY_RUNS="${BENCH_PY_RUNS:-5}"
    WINDOW="${BENCH_WINDOW:-10}"
    DURATION="${BENCH_DURATION:-60}"
    WRK_DURATION="${BENCH_WRK_DURATION:-10}"
    OUT="${BENCH_OUT:-$ROOT/BENCHMARKS.md}"
fi
M="${BENCH_M:-1000}"
# Idle time before every timed poll of every tool. A poll that follows a pause (as every real
# poll does) costs about twice what a back-to-back one does: the kernel's socket table is no
# longer in the CPU caches. The sidecar polls once a second, so the others are measured the same
# way (see BENCHMARKS.md).
GAP="${BENCH_GAP:-0.25}"
SWEEP_N="${BENCH_SWEEP_N:-10000}"
CHURN="${BENCH_CHURN:-0}"
WARMUP=2
WRK_CONNS=50
WRK_THREADS=2

# The load: matching connections 127.0.0.1:20000.. -> 127.0.0.2:7001, unrelated ones
# 127.0.1.k:10000.. -> 127.0.0.9:7100+k. The target's local port range is fixed (a real
# configuration does not change with the load).
TARGET_IP=127.0.0.2
TARGET_PORT=7001
MIN_PORT=20000
MAX_PORT=29999
SIDECAR_ADDR="127.0.0.1:${BENCH_SIDECAR_PORT:-19464}"
NODE_ADDR="127.0.0.1:${BENCH_NODE_EXPORTER_PORT:-19100}"
RESULTS="$WORK/results.jsonl"
META="$WORK/meta.json"
PY="$(command -v python3 || true)"
BENCHLIB="$ROOT/benches/benchlib.py"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Cleanup: every background process this script starts is in PIDS, and is stopped on any exit.
# ---------------------------------------------------------------------------------------------
PIDS=()
LAST_PID=
stop_pid() {
    local pid="$1" i keep=() p
    [ -n "$pid" ] || return 0
    for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
    # Only a process that is still this script's child: a PID that has been reaped may already
    # belong to someone else.
    if [ "$(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ')" != "$$" ]; then
        wait "$pid" 2>/dev/null || true
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [ "$rc" != 0 ]; then log "failed (exit $rc); logs in $WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_bg NAME CMD... : runs CMD in the background, output in $WORK/NAME.log; sets LAST_PID.
start_bg() {
    local name="$1"
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# ---------------------------------------------------------------------------------------------
# Tools and binaries
# ---------------------------------------------------------------------------------------------
need=(cargo hyperfine ss curl python3 wrk prometheus-node-exporter)
missing=()
for t in "${need[@]}"; do command -v "$t" >/dev/null || missing+=("$t"); done
if [ "${#missing[@]}" -gt 0 ]; then
    [ "${BENCH_NO_FETCH:-0}" = 1 ] && die "missing tools: ${missing[*]} (run scripts/fetch-tools.sh)"
    log "missing ${missing[*]}: running scripts/fetch-tools.sh"
    bash scripts/fetch-tools.sh
    for t in "${missing[@]}"; do command -v "$t" >/dev/null || die "$t still missing"; done
fi
# The interpreter itself, not a version manager's shim script in front of it.
PY="$(python3 -c 'import sys; print(sys.executable)')"
[ "$(uname -s)" = Linux ] || die "the benchmark needs Linux (sock_diag, /proc/net/tcp, loopback aliases)"

# fix-monitor must not pick up a configuration from the environment or the default file.
for v in $(compgen -e); do
    case "$v" in FIX_MONITOR_* | DOWNSTREAM_IP) unset "$v" ;; esac
done
[ -e /etc/fix-monitor/config.toml ] && log "note: /etc/fix-monitor/config.toml exists; flags override its targets"

if [ "${BENCH_NO_BUILD:-0}" = 1 ]; then
    log "BENCH_NO_BUILD=1: using the binaries already in $CARGO_TARGET_DIR/release"
    FM="${FIX_MONITOR:-$CARGO_TARGET_DIR/release/fix-monitor}"
elif [ -n "${FIX_MONITOR:-}" ]; then
    log "building the load generator (CARGO_TARGET_DIR=$CARGO_TARGET_DIR); fix-monitor: $FIX_MONITOR"
    FM="$FIX_MONITOR"
    cargo build --release --example fix-loadgen --example fix-pollcost --example fix-storm --example fix-fixbench --example fix-proccost >&2
else
    log "building release binaries (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    cargo build --release --bin fix-monitor --example fix-loadgen --example fix-pollcost --example fix-storm --example fix-fixbench --example fix-proccost >&2
    FM="$CARGO_TARGET_DIR/release/fix-monitor"
fi
LOADGEN="$CARGO_TARGET_DIR/release/examples/fix-loadgen"
POLLCOST="$CARGO_TARGET_DIR/release/examples/fix-pollcost"
ONLY="${BENCH_ONLY:-}"
TCPINFO_NS="${BENCH_TCPINFO_NS:-0 10000 50000}"
[ "$QUICK" = 1 ] && TCPINFO_NS="${BENCH_TCPINFO_NS:-0 10000}"
[ -x "$FM" ] || die "no fix-monitor binary at $FM"
"$FM" snapshot --help >/dev/null 2>&1 || die "$FM has no 'snapshot' subcommand (one-shot poll); set FIX_MONITOR to a binary that has"

HARD_NOFILE="$(ulimit -Hn)"
[ "$HARD_NOFILE" = unlimited ] && HARD_NOFILE=1048576
PER_PROCESS=$(( HARD_NOFILE - 1000 ))
[ "$PER_PROCESS" -gt 18000 ] && PER_PROCESS=18000
[ "$PER_PROCESS" -ge 1000 ] || die "open-files hard limit $HARD_NOFILE is too low"

# ---------------------------------------------------------------------------------------------
# The load
# ---------------------------------------------------------------------------------------------
LOAD_PID=
start_load() { # M N [CHURN]
    local m="$1" n="$2" churn="${3:-0}" truth="$WORK/truth.json" i
    rm -f "$truth"
    start_bg "loadgen-$m-$n" "$LOADGEN" --matching "$m" --unrelated "$n" --churn "$churn" \
        --target "$TARGET_IP:$TARGET_PORT" --min-port "$MIN_PORT" --per-process "$PER_PROCESS" \
        --ready-file "$truth" --timeout 120
    LOAD_PID=$LAST_PID
    for i in $(seq 1 1300); do
        [ -s "$truth" ] && break
        kill -0 "$LOAD_PID" 2>/dev/null || die "fix-loadgen exited: $(tail -5 "$WORK/loadgen-$m-$n.log")"
        sleep 0.1
    done
    [ -s "$truth" ] || die "fix-loadgen did not come up in 130 s"
    local seen
    seen=$(ss -Htn state established dst "$TARGET_IP:$TARGET_PORT" "( sport >= :$MIN_PORT and sport <= :$MAX_PORT )" | wc -l)
    [ "$seen" -eq "$m" ] || die "ss sees $seen matching connections, expected $m"
    TABLE=$(( $(wc -l </proc/net/tcp) - 1 + $(wc -l </proc/net/tcp6) - 1 ))
    ESTAB=$(ss -Htn state established | wc -l)
    "$PY" - "$truth" "$TABLE" "$ESTAB" >>"$RESULTS" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1]))
print(json.dumps({"section": "load", "M": t["matching"], "N": t["unrelated"],
                  "setup_s": t["setup_seconds"], "table_sockets": int(sys.argv[2]),
                  "established": int(sys.argv[3]), "processes": 1 + len(t["listener_pids"]) + len(t["client_pids"])}))
EOF
    log "load up: M=$m N=$n ($(jq -r .setup_seconds "$truth" 2>/dev/null || echo '?') s; $ESTAB established, $TABLE sockets in /proc/net/tcp*)"
}
tcp_inuse() { awk '/^TCP:/ {print $3}' /proc/net/sockstat; }
stop_load() {
    local i
    stop_pid "$LOAD_PID"
    LOAD_PID=
    # Closing 200k sockets takes the kernel a moment: measure nothing until it is done.
    for i in $(seq 1 300); do
        [ "$(tcp_inuse)" -le $(( BASE_INUSE + 500 )) ] && return 0
        sleep 0.1
    done
    log "note: $(tcp_inuse) TCP sockets still in use 30 s after stopping the load (baseline $BASE_INUSE)"
}

# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------
SNAP_ARGS=(--ip "$TARGET_IP" --target-port "$TARGET_PORT" --min-port "$MIN_PORT" --max-port "$MAX_PORT")
SS_FILTER="( sport >= :$MIN_PORT and sport <= :$MAX_PORT )"
CMD_SNAP_NL="$FM snapshot --source netlink ${SNAP_ARGS[*]}"
CMD_SNAP_PF="$FM snapshot --source procfs ${SNAP_ARGS[*]}"
CMD_SS_F="ss -tn state established dst $TARGET_IP:$TARGET_PORT '$SS_FILTER'"
CMD_SS_ALL="ss -tn"
CMD_NE="curl -sf -o /dev/null http://$NODE_ADDR/metrics"
CMD_SS_INFO="ss -tin state established dst $TARGET_IP:$TARGET_PORT '$SS_FILTER'"

# record JSON : appends one line to the results
record() { printf '%s\n' "$1" >>"$RESULTS"; }

# Peak RSS and output of one run of a one-shot command (found = connections it reported).
oneshot_extra() { # TOOL M N CMD...
    local tool="$1" m="$2" n="$3"
    shift 3
    "$PY" "$BENCHLIB" oneshot-rss "$@" | "$PY" -c '
import json, re, sys
r = json.load(sys.stdin)
tool, m, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = r["stdout_head"]
if tool.startswith("ss-"):
    found = max(r["stdout_lines"] - 1, 0)  # minus the header line
    out = None
else:  # fix-monitor snapshot: its table ends with "total ... COUNT"
    out = r["stdout_tail"]
    t = re.findall(r"^total\s.*?(\d+)\s*$", out, re.M)
    found = int(t[-1]) if t else None
print(json.dumps({"section": "oneshot", "tool": tool, "M": m, "N": n, "rss_kib": r["rss_kib"],
                  "exit": r["exit"], "found": found, "stdout_head": out}))
' "$tool" "$m" "$n" >>"$RESULTS" || log "could not measure $tool once (see $WORK)"
}

# hyperfine over TOOL=CMD pairs; one result line per command.
hf() { # M N TOOL CMD [TOOL CMD]...
    local m="$1" n="$2" labels="" cmds=() json="$WORK/hf-$1-$2-$3.json"
    shift 2
    while [ $# -gt 0 ]; do
        labels="${labels:+$labels,}$1"
        cmds+=("$2")
        shift 2
    done
    hyperfine -N --style none --warmup "$WARMUP" --min-runs 5 --max-runs "$RUNS" --prepare "sleep $GAP" \
        --export-json "$json" "${cmds[@]}" >"$WORK/hf-$m-$n.log" 2>&1 || {
        log "hyperfine failed: $(tail -3 "$WORK/hf-$m-$n.log")"
        return 1
    }
    "$PY" "$BENCHLIB" hyperfine "$json" "$RESULTS" "$labels" "$m" "$n" >/dev/null
}

measure_oneshots() { # M N
    local m="$1" n="$2"
    log "  one-shot: fix-monitor snapshot (netlink, procfs), ss (filtered, all)"
    hf "$m" "$n" snapshot-netlink "$CMD_SNAP_NL" snapshot-procfs "$CMD_SNAP_PF" \
        ss-filtered "$CMD_SS_F" ss-all "$CMD_SS_ALL"
    oneshot_extra snapshot-netlink "$m" "$n" "$FM" snapshot --source netlink "${SNAP_ARGS[@]}"
    oneshot_extra snapshot-procfs "$m" "$n" "$FM" snapshot --source procfs "${SNAP_ARGS[@]}"
    oneshot_extra ss-filtered "$m" "$n" ss -tn state established dst "$TARGET_IP:$TARGET_PORT" "$SS_FILTER"
    oneshot_extra ss-all "$m" "$n" ss -tn
}

measure_node_exporter() { # M N
    local m="$1" n="$2" pid c0 c1 json="$WORK/hf-ne-$1-$2.json" i
    log "  node_exporter tcpstat scrape"
    start_bg "node-exporter-$n" prometheus-node-exporter --collector.disable-defaults --collector.tcpstat \
        --web.listen-address="$NODE_ADDR"
    pid=$LAST_PID
    for i in $(seq 1 50); do curl -sf -o /dev/null "http://$NODE_ADDR/metrics" && break; sleep 0.1; done
    c0=$("$PY" "$BENCHLIB" cpu "$pid")
    hyperfine -N --style none --warmup "$WARMUP" --min-runs 5 --max-runs "$RUNS" --prepare "sleep $GAP" \
        --export-json "$json" "$CMD_NE" >"$WORK/hf-ne-$m-$n.log" 2>&1 || die "hyperfine (node_exporter) failed"
    c1=$("$PY" "$BENCHLIB" cpu "$pid")
    local est
    est=$(curl -sf "http://$NODE_ADDR/metrics" | awk '/^node_tcp_connection_states\{state="established"\}/ {print $2}')
    "$PY" - "$json" "$c0" "$c1" "$m" "$n" "$(grep VmHWM /proc/"$pid"/status | awk '{print $2}')" "${est:-0}" "$WARMUP" >>"$RESULTS" <<'EOF'
import json, sys
h = json.load(open(sys.argv[1]))["results"][0]
c0, c1 = json.loads(sys.argv[2]), json.loads(sys.argv[3])
scrapes = len(h["times"]) + int(sys.argv[8])  # measured + warmup runs: all between c0 and c1
print(json.dumps({"section": "poll", "tool": "node-exporter", "M": int(sys.argv[4]), "N": int(sys.argv[5]),
                  "wall_s": h["median"], "wall_min_s": h["min"], "runs": len(h["times"]),
                  "cpu_s": (c1["cpu_ns"] - c0["cpu_ns"]) / 1e9 / scrapes,
                  "cpu_ticks_s": (c1["ticks_s"] - c0["ticks_s"]) / scrapes,
                  "client_cpu_s": h["user"] + h["system"],
                  "rss_kib": int(sys.argv[6]), "found": float(sys.argv[7]), "command": h["command"]}))
EOF
    stop_pid "$pid"
}

measure_python() { # M N
    local m="$1" n="$2" v
    for v in shipped fixed; do
        log "  original exporter collect_metrics(), $v"
        "$PY" "$ROOT/benches/py_collect.py" --variant "$v" --target-ip "$TARGET_IP" --target-port "$TARGET_PORT" \
            --min-port "$MIN_PORT" --max-port "$MAX_PORT" --runs "$PY_RUNS" --warmup 1 --gap "$GAP" 2>>"$WORK/py.log" |
            "$PY" -c '
import json, sys
r = json.load(sys.stdin)
print(json.dumps({"section": "poll", "tool": "py-" + r["variant"], "M": int(sys.argv[1]), "N": int(sys.argv[2]),
                  "wall_s": r["wall_median_s"], "wall_min_s": r["wall_min_s"], "cpu_s": r["cpu_median_s"],
                  "rss_kib": r["rss_peak_kib"], "found": r["found"], "runs": r["runs"]}))' "$m" "$n" >>"$RESULTS"
    done
}

# What tcp_info adds to a poll, in process and as one-shot processes against `ss -tin`.
measure_tcpinfo() { # M N
    local m="$1" n="$2" r
    log "  tcp_info: netlink poll with and without, $RUNS rounds"
    r=$("$POLLCOST" --target "$TARGET_IP:$TARGET_PORT" --min-port "$MIN_PORT" --max-port "$MAX_PORT" \
        --rounds "$RUNS" --gap-ms "$(awk -v g="$GAP" 'BEGIN {print int(g * 1000)}')") || die "fix-pollcost failed"
    record "{\"section\": \"tcpinfo\", \"M\": $m, \"N\": $n, \"poll\": $r}"
    log "  tcp_info: one-shot fix-monitor snapshot (netlink, tcp_info) and ss -tin, same filter"
    hf "$m" "$n" snapshot-netlink-info "$CMD_SNAP_NL" ss-info-filtered "$CMD_SS_INFO"
}

SIDECAR_PID=
start_sidecar() { # SOURCE EXPECT NAME
    local src="$1" expect="$2" name="$3"
    start_bg "$name" "$FM" run --source "$src" "${SNAP_ARGS[@]}" --interval 1s --listen "$SIDECAR_ADDR"
    SIDECAR_PID=$LAST_PID
    "$PY" "$BENCHLIB" wait-ready "http://$SIDECAR_ADDR/metrics" "$expect" 30 >"$WORK/$name.ready.json" ||
        die "sidecar ($src) not ready with $expect connections: $(cat "$WORK/$name.ready.json"; tail -3 "$WORK/$name.log")"
}

measure_sidecar() { # SOURCE M N
    local src="$1" m="$2" n="$3" w
    log "  sidecar poll, $src, ${WINDOW}s window"
    start_sidecar "$src" "$m" "sidecar-$src-$m-$n"
    w=$("$PY" "$BENCHLIB" window "$SIDECAR_PID" "http://$SIDECAR_ADDR/metrics" "$WINDOW")
    stop_pid "$SIDECAR_PID"
    "$PY" -c '
import json, sys
w = json.loads(sys.argv[1])
print(json.dumps({"section": "poll", "tool": "sidecar-" + sys.argv[2], "M": int(sys.argv[3]), "N": int(sys.argv[4]),
                  "wall_s": w["poll_wall_s"], "cpu_s": w["poll_cpu_s"], "rss_kib": w["hwm_kib"],
                  "found": w["active"], "runs": w["polls"], "window": w}))' "$w" "$src" "$m" "$n" >>"$RESULTS"
}

# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------
: >"$RESULTS"
START=$(date +%s)
BASE_INUSE=$(tcp_inuse)
export B_META_FM="$FM" B_META_QUICK="$QUICK" B_META_NS="$NS" B_META_M="$M" B_META_SWEEP_MS="$SWEEP_MS" \
    B_META_SWEEP_N="$SWEEP_N" B_META_RUNS="$RUNS" B_META_WARMUP="$WARMUP" B_META_PY_RUNS="$PY_RUNS" \
    B_META_WINDOW="$WINDOW" B_META_DURATION="$DURATION" B_META_WRK_DURATION="$WRK_DURATION" \
    B_META_WRK_CONNS="$WRK_CONNS" B_META_WRK_THREADS="$WRK_THREADS" B_META_CHURN="$CHURN" \
    B_META_TARGET="$TARGET_IP:$TARGET_PORT" B_META_PORTS="$MIN_PORT-$MAX_PORT" \
    B_META_PER_PROCESS="$PER_PROCESS" B_META_NOFILE="$HARD_NOFILE" B_META_ROOT="$ROOT" \
    B_META_TARGET_DIR="$CARGO_TARGET_DIR" \
    B_CMD_snapshot_netlink="$CMD_SNAP_NL" B_CMD_snapshot_procfs="$CMD_SNAP_PF" \
    B_CMD_ss_filtered="$CMD_SS_F" B_CMD_ss_all="$CMD_SS_ALL" B_CMD_node_exporter="$CMD_NE" \
    B_CMD_ss_info_filtered="$CMD_SS_INFO" B_META_TCPINFO_NS="$TCPINFO_NS" B_META_ONLY="$ONLY" \
    B_CMD_pollcost="$POLLCOST --target $TARGET_IP:$TARGET_PORT --min-port $MIN_PORT --max-port $MAX_PORT --rounds $RUNS --gap-ms MS" \
    B_CMD_sidecar="$FM run --source netlink|procfs ${SNAP_ARGS[*]} --interval 1s --listen $SIDECAR_ADDR" \
    B_CMD_node_exporter_server="prometheus-node-exporter --collector.disable-defaults --collector.tcpstat --web.listen-address=$NODE_ADDR" \
    B_CMD_loadgen="$LOADGEN --matching M --unrelated N --target $TARGET_IP:$TARGET_PORT --min-port $MIN_PORT --per-process $PER_PROCESS [--churn R]" \
    B_CMD_python="python3 benches/py_collect.py --variant shipped|fixed --target-ip $TARGET_IP --target-port $TARGET_PORT --min-port $MIN_PORT --max-port $MAX_PORT --runs $PY_RUNS --warmup 1 --gap $GAP" \
    B_CMD_hyperfine="hyperfine -N --warmup $WARMUP --min-runs 5 --max-runs $RUNS --prepare 'sleep $GAP' --export-json FILE CMD..." \
    B_CMD_scrapers="python3 benches/benchlib.py scrapers $SIDECAR_ADDR /metrics $WRK_CONNS 1 $WRK_DURATION" B_META_GAP="$GAP" \
    B_CMD_wrk="wrk -c $WRK_CONNS -t $WRK_THREADS -d ${WRK_DURATION}s --latency http://$SIDECAR_ADDR/metrics"
"$PY" - "$META" <<'EOF'
import json, os, subprocess, sys
def sh(c):
    try:
        return subprocess.run(c, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return ""
e = os.environ
root = e["B_META_ROOT"]
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
dirty = sh(f"git -C '{root}' status --porcelain --untracked-files=no")
json.dump({
    "date": sh("date -u +'%Y-%m-%d %H:%M UTC'"), "nproc": sh("nproc"), "cpu": model,
    "kernel": sh("uname -r"), "mem": sh("free -h | awk '/^Mem:/ {print $2}'"),
    "loadavg_start": open("/proc/loadavg").read().split()[:3],
    "git": sh(f"git -C '{root}' rev-parse --short HEAD") + (" + uncommitted changes" if dirty else ""),
    "fix_monitor": e["B_META_FM"], "quick": e["B_META_QUICK"] == "1",
    "ns": [int(x) for x in e["B_META_NS"].split()], "m": int(e["B_META_M"]),
    "tcpinfo_ns": [int(x) for x in e["B_META_TCPINFO_NS"].split()], "only": e["B_META_ONLY"],
    "sweep_ms": [int(x) for x in e["B_META_SWEEP_MS"].split()], "sweep_n": int(e["B_META_SWEEP_N"]),
    "runs": int(e["B_META_RUNS"]), "warmup": int(e["B_META_WARMUP"]), "py_runs": int(e["B_META_PY_RUNS"]),
    "window": float(e["B_META_WINDOW"]), "duration": float(e["B_META_DURATION"]),
    "wrk_duration": float(e["B_META_WRK_DURATION"]), "wrk_conns": int(e["B_META_WRK_CONNS"]),
    "wrk_threads": int(e["B_META_WRK_THREADS"]), "churn": float(e["B_META_CHURN"]),
    "target": e["B_META_TARGET"], "ports": e["B_META_PORTS"], "per_process": int(e["B_META_PER_PROCESS"]),
    "nofile_hard": e["B_META_NOFILE"], "target_dir": e["B_META_TARGET_DIR"], "root": root, "gap": float(e["B_META_GAP"]),
    "commands": {k[len("B_CMD_"):]: v for k, v in e.items() if k.startswith("B_CMD_")},
    "versions": {"ss": sh("ss -V"), "node_exporter": sh("prometheus-node-exporter --version 2>&1 | head -1"),
                 "python": sh("python3 --version"), "hyperfine": sh("hyperfine --version"),
                 "wrk": sh("wrk -v 2>&1 | head -1"), "rustc": sh("rustc --version")},
}, open(sys.argv[1], "w"), indent=1)
EOF
ss_busy=$(ss -Htln "( sport = :${SIDECAR_ADDR##*:} or sport = :${NODE_ADDR##*:} or sport = :$TARGET_PORT )" | wc -l)
[ "$ss_busy" -eq 0 ] || die "a port the benchmark needs is taken: $(ss -Htln "( sport = :${SIDECAR_ADDR##*:} or sport = :${NODE_ADDR##*:} or sport = :$TARGET_PORT )")"

# E. eBPF mode against netlink polling and `ss -tin` (needs root): CPU per second and RSS at
#    M watched sessions among N unrelated connections, the eBPF programs' own time in the
#    kernel, and the same under unrelated churn. On by default as root (BENCH_EBPF=0 leaves it
#    out); BENCH_ONLY=ebpf runs only this part and splices its section into the existing report.
#    Side by side on the same load: a netlink sidecar and an eBPF sidecar, both with the
#    defaults, and `ss -tin` with the same filter once a second.
#    Knobs: BENCH_EBPF_MS (M values: "1000 10000"; quick: $M), BENCH_EBPF_NS (N values:
#    "0 10000 100000"; quick: $NS), BENCH_EBPF_WINDOW (s: 60, one poll.reconcile_interval, so
#    that each window holds one periodic reconcile; quick 5), BENCH_EBPF_CHURN (unrelated
#    opens/closes per second at N = $SWEEP_N, M = the first M: 5000; 0 leaves it out),
#    BENCH_EBPF_SOURCE (the eBPF sidecar's poll.source: ebpf).
EBPF="${BENCH_EBPF:-$([ "$(id -u)" = 0 ] && echo 1 || echo 0)}"
EBPF_WINDOW="${BENCH_EBPF_WINDOW:-$([ "$QUICK" = 1 ] && echo 5 || echo 60)}"
EBPF_MS="${BENCH_EBPF_MS:-$([ "$QUICK" = 1 ] && echo "$M" || echo "1000 10000")}"
EBPF_NS="${BENCH_EBPF_NS:-$([ "$QUICK" = 1 ] && echo "$NS" || echo "0 10000 100000")}"
EBPF_CHURN="${BENCH_EBPF_CHURN:-5000}"
EBPF_SOURCE="${BENCH_EBPF_SOURCE:-ebpf}"
EBPF_SVG="$([ "$QUICK" = 1 ] && echo "$WORK" || echo "$ROOT/benches")/ebpf-cpu.svg"
run_ebpf_section() {
    log "eBPF against netlink polling and ss: M in $EBPF_MS, N in $EBPF_NS, ${EBPF_WINDOW}s windows; then ${EBPF_CHURN}/s unrelated churn at N=$SWEEP_N"
    "$PY" "$ROOT/benches/ebpf_bench.py" --fm "$FM" --loadgen "$LOADGEN" --ns "$EBPF_NS" --ms "$EBPF_MS" \
        --window "$EBPF_WINDOW" --churn "$EBPF_CHURN" --churn-n "$SWEEP_N" --ebpf-source "$EBPF_SOURCE" \
        --workdir "$WORK" --json "$RESULTS" --svg "$EBPF_SVG" \
        --svg-ref "$(realpath --relative-to="$(dirname "$OUT")" "$EBPF_SVG")" --md "$WORK/ebpf.md" ||
        die "the eBPF benchmark failed (see $WORK)"
}
splice() { # REPORT NAME HEADING: puts $WORK/NAME.md between the NAME-bench markers of REPORT
    # (a section under HEADING appended if they are absent)
    "$PY" - "$1" "$WORK/$2.md" "$2" "$3" <<'EOF'
import os, sys
report, section, name, heading = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3], sys.argv[4]
start, end = f"<!-- {name}-bench:start -->", f"<!-- {name}-bench:end -->"
text = open(report).read() if os.path.exists(report) else ""
body = f"{start}\n{section}{end}"
if start in text and end in text:
    text = text[:text.index(start)] + body + text[text.index(end) + len(end):]
else:
    text = text.rstrip("\n") + f"\n\n## {heading}\n\n" + body + "\n"
open(report, "w").write(text)
EOF
}
splice_ebpf() { splice "$1" ebpf "eBPF mode against netlink polling"; }
if [ "${BENCH_ONLY:-}" = ebpf ]; then
    [ "$EBPF" = 1 ] || die "BENCH_ONLY=ebpf needs root"
    run_ebpf_section
    splice_ebpf "$OUT"
    log "eBPF section written into $OUT"
    exit 0
fi

# F. The FIX layer (issue 12), with fix-fixbench (benches/fix/): messages per second one core
#    takes from bytes to the session tracker on the wire path and on the log path
#    (BENCH_FIX_MESSAGES: 1000000; quick 100000), and, as root, the sidecar with
#    `[fix] capture = true` while BENCH_FIX_RATE (5000) FIX messages per second flow through one
#    loopback session for BENCH_FIX_SECONDS (30; quick 5): its CPU and the capture's drops
#    (PACKET_STATISTICS). BENCH_ONLY=fix runs only this part and splices its section into the
#    report; a full run adds it at the end (BENCH_FIX=0 leaves it out).
FIXBENCH="${FIX_FIXBENCH:-$CARGO_TARGET_DIR/release/examples/fix-fixbench}"
FIX_MESSAGES="${BENCH_FIX_MESSAGES:-$([ "$QUICK" = 1 ] && echo 100000 || echo 1000000)}"
FIX_RATE="${BENCH_FIX_RATE:-5000}"
FIX_SECONDS="${BENCH_FIX_SECONDS:-$([ "$QUICK" = 1 ] && echo 5 || echo 30)}"
run_fix_section() {
    [ -x "$FIXBENCH" ] || die "no fix-fixbench at $FIXBENCH (cargo build --release --example fix-fixbench)"
    log "FIX: decode rate, wire and log paths, $FIX_MESSAGES messages"
    "$FIXBENCH" decode --messages "$FIX_MESSAGES" >"$WORK/fix-decode.json" || die "fix-fixbench decode failed"
    rm -f "$WORK/fix-drive.json"
    if [ "$(id -u)" = 0 ]; then
        log "FIX: the sidecar capturing ${FIX_RATE} messages/s for ${FIX_SECONDS}s"
        "$FIXBENCH" drive --fm "$FM" --rate "$FIX_RATE" --seconds "$FIX_SECONDS" >"$WORK/fix-drive.json" ||
            die "fix-fixbench drive failed"
    else
        log "FIX: not root, so no capture run (it needs CAP_NET_RAW)"
    fi
    "$PY" - "$WORK/fix-decode.json" "$WORK/fix-drive.json" "$FIXBENCH" "$FM" >"$WORK/fix.md" <<'EOF'
import json, os, sys
dec = json.load(open(sys.argv[1]))
print("Messages per second one core takes from bytes to the FIX session tracker: an order flow")
print("(NewOrderSingle out, ExecutionReport in, every order matched), one message per TCP")
print("segment on the wire path (packets built in memory first; timed: parsing, reassembly,")
print("decoding, tracking), one QuickFIX-style line per message on the log path (a file the")
print("follower reads; timed: reading, splitting, timestamp, decoding, tracking).\n")
print("| path | messages | bytes | seconds | messages/s |")
print("|---|---:|---:|---:|---:|")
print(f"| wire | {dec['messages']} | {dec['bytes']} | {dec['wire_seconds']:.3f} | {dec['wire_msgs_per_s']:.0f} |")
print(f"| log | {dec['messages']} | {dec['bytes']} | {dec['log_seconds']:.3f} | {dec['log_msgs_per_s']:.0f} |")
print()
if os.path.exists(sys.argv[2]) and os.path.getsize(sys.argv[2]) > 0:
    d = json.load(open(sys.argv[2]))
    print("The sidecar (`run`, `[fix] capture = true`, poll every 1 s) while one loopback FIX session")
    print("carries orders and their acknowledgements at the asked rate; CPU is the sidecar's")
    print("utime+stime over the window (all threads: the TCP poll, the FIX thread, the endpoint);")
    print("drops are the packet socket's `PACKET_STATISTICS` over the sidecar's life.\n")
    print("| asked msgs/s | achieved msgs/s | seconds | messages sent | decoded | packets captured | capture drops | sidecar CPU s | CPU % of one core |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {d['rate']} | {d['achieved_msgs_per_s']:.0f} | {d['seconds']:.1f} | {d['messages_sent']} | {d['messages_decoded']} | {d['capture_packets']} | {d['capture_drops']} | {d['cpu_seconds']:.2f} | {d['cpu_percent']:.1f} |")
else:
    print("The capture run needs root (CAP_NET_RAW); it was not run.")
print()
print(f"Commands: `fix-fixbench decode --messages {dec['messages']}`; "
      "`fix-fixbench drive --fm fix-monitor --rate R --seconds S` (root).")
EOF
}
splice_fix() { splice "$1" fix "FIX sessions: decode rate and capture"; }
if [ "${BENCH_ONLY:-}" = fix ]; then
    run_fix_section
    splice_fix "$OUT"
    log "FIX section written into $OUT"
    exit 0
fi

# G. poll.process_lookup (issue 13), with fix-proccost (benches/proccost/): what one full walk
#    of /proc/*/fd costs as the host's open sockets grow (BENCH_PROC_SOCKETS: 0,1000,10000,
#    18000; quick 0,1000), side by side with `ss -tnp`, which walks the same links to name
#    processes. BENCH_ONLY=proccost runs only this part and splices its section into the report;
#    a full run adds it (BENCH_PROC=0 leaves it out).
PROCCOST="${FIX_PROCCOST:-$CARGO_TARGET_DIR/release/examples/fix-proccost}"
PROC_SOCKETS="${BENCH_PROC_SOCKETS:-$([ "$QUICK" = 1 ] && echo 0,1000 || echo 0,1000,10000,18000)}"
run_proccost_section() {
    [ -x "$PROCCOST" ] || die "no fix-proccost at $PROCCOST (cargo build --release --example fix-proccost)"
    log "process lookup: one walk of /proc/*/fd at $PROC_SOCKETS held sockets, against ss -tnp"
    "$PROCCOST" --sockets "$PROC_SOCKETS" --rounds 5 >"$WORK/proccost.json" || die "fix-proccost failed"
    "$PY" - "$WORK/proccost.json" "$(id -u)" >"$WORK/proccost.md" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("One walk of `/proc/*/fd` that finds nothing (every link read: the most one lookup can cost;")
print("a lookup ends as soon as it has found its sessions' owners), in the sidecar's own code")
print("(`ProcOwners::find`), while `fix-proccost` holds N more loopback sockets; CPU of the calling")
print("thread, kernel included, median and best of 5. Beside it, `ss -tnp` with a filter that")
print("matches nothing, minus the same `ss -tn`: `ss`'s own walk of the same links (median of 5).")
print(f"Run as {'root (every process readable)' if sys.argv[2] == '0' else 'a normal user (other users processes unreadable)'}.\n")
print("| sockets held | fd links read | processes | walk CPU ms (median) | walk CPU ms (best) | walk wall ms (median) | µs per link | `ss -tnp` minus `ss -tn`, CPU ms |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    ss = "n/a" if r.get("ss_p_cpu_median_s") is None else f'{(r["ss_p_cpu_median_s"] - r["ss_cpu_median_s"]) * 1e3:.1f}'
    per = r["cpu_median_s"] * 1e6 / r["links"] if r["links"] else 0
    print(f'| {r["sockets"]:,} | {r["links"]:,} | {r["processes"]:,} | {r["cpu_median_s"]*1e3:.1f} | {r["cpu_min_s"]*1e3:.1f} | {r["wall_median_s"]*1e3:.1f} | {per:.2f} | {ss} |')
print()
print("Command: `fix-proccost --sockets 0,1000,10000,18000 --rounds 5` (release build).")
EOF
}
splice_proccost() { splice "$1" proccost "Process lookup: one walk of /proc/*/fd"; }
if [ "${BENCH_ONLY:-}" = proccost ]; then
    run_proccost_section
    splice_proccost "$OUT"
    log "process-lookup section written into $OUT"
    exit 0
fi

# 0. What starting a process costs, without polling: the floor under every one-shot number.
log "process start alone: fix-monitor --version, ss -V, python3 -c pass"
hf 0 0 start-fix-monitor "$FM --version" start-ss "ss -V" start-python "$PY -c pass"

[ -n "$ONLY" ] && [ "$ONLY" != tcpinfo ] && die "BENCH_ONLY=$ONLY: only 'tcpinfo' is known"
# 1. Per-poll cost at M, for each N.
[ "$ONLY" = tcpinfo ] && NS="" && SWEEP_MS=""
for n in $NS; do
    log "M=$M N=$n"
    start_load "$M" "$n"
    measure_sidecar netlink "$M" "$n"
    measure_sidecar procfs "$M" "$n"
    measure_oneshots "$M" "$n"
    measure_node_exporter "$M" "$n"
    measure_python "$M" "$n"
    stop_load
done

# 2. The sidecar over BENCH_DURATION at M, SWEEP_N; then /metrics under wrk while it polls.
if [ "$ONLY" != tcpinfo ]; then
log "sidecar for ${DURATION}s at M=$M N=$SWEEP_N (churn ${CHURN}/s), then wrk -c $WRK_CONNS for ${WRK_DURATION}s"
start_load "$M" "$SWEEP_N" "$CHURN"
start_sidecar netlink "$M" "sidecar-longrun"
w=$("$PY" "$BENCHLIB" window "$SIDECAR_PID" "http://$SIDECAR_ADDR/metrics" "$DURATION" 1)
record "{\"section\": \"longrun\", \"M\": $M, \"N\": $SWEEP_N, \"churn\": $CHURN, \"window\": $w}"
"$PY" "$BENCHLIB" window "$SIDECAR_PID" "http://$SIDECAR_ADDR/metrics" "$WRK_DURATION" 1 >"$WORK/wrk-window.json" &
WPID=$!
PIDS+=("$WPID")
wrk -c "$WRK_CONNS" -t "$WRK_THREADS" -d "${WRK_DURATION}s" --latency "http://$SIDECAR_ADDR/metrics" >"$WORK/wrk.txt" 2>&1 ||
    die "wrk failed: $(tail -3 "$WORK/wrk.txt")"
wait "$WPID" || die "sampling during wrk failed"
record "{\"section\": \"wrk\", \"M\": $M, \"N\": $SWEEP_N, \"wrk\": $("$PY" "$BENCHLIB" wrk "$WORK/wrk.txt"), \"window\": $(cat "$WORK/wrk-window.json")}"
# The same number of scrapers as Prometheus servers would scrape: each once a second.
log "$WRK_CONNS scrapers at one scrape per second each, ${WRK_DURATION}s"
sleep 2
"$PY" "$BENCHLIB" window "$SIDECAR_PID" "http://$SIDECAR_ADDR/metrics" "$WRK_DURATION" 1 >"$WORK/scrapers-window.json" &
WPID=$!
PIDS+=("$WPID")
sc=$("$PY" "$BENCHLIB" scrapers "$SIDECAR_ADDR" /metrics "$WRK_CONNS" 1 "$WRK_DURATION")
wait "$WPID" || die "sampling during the scrapers failed"
record "{\"section\": \"scrapers\", \"M\": $M, \"N\": $SWEEP_N, \"scrapers\": $sc, \"window\": $(cat "$WORK/scrapers-window.json")}"
stop_pid "$SIDECAR_PID"
stop_load
fi

# 3. Poll cost as M grows, at N = SWEEP_N (the M = BENCH_M point is reused from step 1 when
#    SWEEP_N was among the Ns).
for m in $SWEEP_MS; do
    if [ "$m" = "$M" ] && [[ " $NS " == *" $SWEEP_N "* ]]; then continue; fi
    [ "$m" -le $(( MAX_PORT - MIN_PORT + 1 )) ] || die "M=$m is more than the target's local port range $MIN_PORT-$MAX_PORT"
    log "M sweep: M=$m N=$SWEEP_N"
    start_load "$m" "$SWEEP_N"
    measure_sidecar netlink "$m" "$SWEEP_N"
    measure_sidecar procfs "$m" "$SWEEP_N"
    log "  one-shot: fix-monitor snapshot (netlink, procfs), ss (filtered)"
    hf "$m" "$SWEEP_N" snapshot-netlink "$CMD_SNAP_NL" snapshot-procfs "$CMD_SNAP_PF" ss-filtered "$CMD_SS_F"
    oneshot_extra snapshot-netlink "$m" "$SWEEP_N" "$FM" snapshot --source netlink "${SNAP_ARGS[@]}"
    measure_python "$m" "$SWEEP_N"
    stop_load
done

# 4. What session health costs: tcp_info in the poll, and against `ss -tin`.
for n in $TCPINFO_NS; do
    log "tcp_info: M=$M N=$n"
    start_load "$M" "$n"
    measure_tcpinfo "$M" "$n"
    stop_load
done
if [ "$EBPF" = 1 ] && [ "$ONLY" != tcpinfo ]; then run_ebpf_section; fi
if [ "${BENCH_FIX:-1}" = 1 ] && [ "$ONLY" != tcpinfo ]; then run_fix_section; fi
if [ "${BENCH_PROC:-1}" = 1 ] && [ "$ONLY" != tcpinfo ]; then run_proccost_section; fi

END=$(date +%s)
"$PY" - "$META" "$(( END - START ))" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
m["elapsed_s"] = int(sys.argv[2])
m["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
json.dump(m, open(sys.argv[1], "w"), indent=1)
EOF
[ "$ONLY" = tcpinfo ] && OUT="${BENCH_OUT:-$WORK/BENCHMARKS.tcpinfo.md}"
# Sections of the existing report that report.py does not write (the soak's, by hand) are kept;
# the events section is rewritten below when it runs.
report_keep=(--keep "$OUT")
[ "${BENCH_EVENTS:-1}" = 1 ] && report_keep+=(--owned "Kernel close events")
"$PY" "$ROOT/benches/report.py" "$META" "$RESULTS" "${report_keep[@]}" >"$OUT.tmp"
# Kernel close events (issue 9): the storm, CPU under unrelated closes, cost per event; its own
# script, appended as a section (BENCH_EVENTS=0 leaves it out).
if [ "${BENCH_EVENTS:-1}" = 1 ]; then
    log "kernel close events (scripts/bench-events.sh)"
    BENCH_NO_BUILD=1 FIX_MONITOR="$FM" FIX_STORM="$CARGO_TARGET_DIR/release/examples/fix-storm" BENCH_EVENTS_OUT="$WORK/events" \
        bash "$ROOT/scripts/bench-events.sh" >/dev/null
    { echo; cat "$WORK/events/results.md"; } >>"$OUT.tmp"
fi
mv "$OUT.tmp" "$OUT"
if [ "$EBPF" = 1 ] && [ "$ONLY" != tcpinfo ]; then splice_ebpf "$OUT"; fi
if [ "${BENCH_FIX:-1}" = 1 ] && [ "$ONLY" != tcpinfo ]; then splice_fix "$OUT"; fi
if [ "${BENCH_PROC:-1}" = 1 ] && [ "$ONLY" != tcpinfo ]; then splice_proccost "$OUT"; fi
cat "$OUT"
log "done in $(( END - START )) s; report: $OUT; raw results: $RESULTS"
