#!/usr/bin/env bash
# Run every PromQL expression of the Grafana dashboard against a throwaway
# Prometheus and require each to be accepted (status "success") and to return
# data. Needs bash, jq, curl, ss, prometheus and promtool; no python.
#
#   scripts/check-dashboard-exprs.sh [DASHBOARD.json]
#
# Steps: generate ~90 minutes of synthetic fix-monitor series (2 hosts x 2
# targets, all metric names the dashboard uses, plus up and target_info) in
# OpenMetrics text, backfill them with `promtool tsdb create-blocks-from
# openmetrics` into a temp data dir, start Prometheus on 127.0.0.1:<free port>
# with an empty scrape config, then query /api/v1/query for each line printed
# by scripts/dashboard-exprs.sh at the time of the last sample. Prometheus is
# stopped (by its pid) and the temp dir removed on exit.
#
# Environment:
#   PROMETHEUS, PROMTOOL  binaries to use (default: prometheus, promtool on PATH;
#                         e.g. PROMETHEUS=.tools/bin/prometheus-trixie)
#   ALLOW_EMPTY=1         accept expressions that return no series
#   KEEP_TMP=1            keep the temp dir (data, config, log) for debugging
# Prints one line per expression: "ok <n>", "EMPTY" or "FAIL <error>", then a
# "N passed, N failed" line; exits 1 if any failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROMETHEUS="${PROMETHEUS:-prometheus}"
PROMTOOL="${PROMTOOL:-promtool}"
dash="${1:-$ROOT/dashboards/fix-monitor.json}"

die() { echo "check-dashboard-exprs: $*" >&2; exit 1; }
for t in "$PROMETHEUS" "$PROMTOOL" jq curl ss awk; do
    command -v "$t" >/dev/null || die "missing tool: $t (run scripts/fetch-tools.sh)"
done

exprs="$("$ROOT/scripts/dashboard-exprs.sh" "$dash")"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/fix-dash-check.XXXXXX")"
prom_pid=""
cleanup() {
    if [ -n "$prom_pid" ] && kill -0 "$prom_pid" 2>/dev/null; then
        kill "$prom_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$prom_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$prom_pid" 2>/dev/null || true
    fi
    if [ "${KEEP_TMP:-0}" = 1 ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

# ---- synthetic data --------------------------------------------------------
step=15
end=$(( $(date +%s) - 300 ))
end=$(( end - end % step ))
start=$(( end - 90 * 60 ))
awk -v start="$start" -v end="$end" -v step="$step" '
function emit(name, labels, v, t) { printf "%s{%s} %s %d\n", name, labels, v, t }
BEGIN {
    nh = split("gw1 gw2", hosts, " ")
    nt = split("venue-a venue-b", targets, " ")
    nb = split("1 10 60 300 1800 3600 14400 86400 +Inf", les, " ")
    npb = split("0.001 0.005 0.01 0.05 0.1 0.5 1 +Inf", ples, " ")
    nrb = split("0.00001 0.0001 0.001 0.01 0.1 1 +Inf", rles, " ")
    n = int((end - start) / step)
    for (h = 1; h <= nh; h++) for (g = 1; g <= nt; g++) {
        L = sprintf("job=\"fix-monitor\",instance=\"%s:9464\",host=\"%s\",target=\"%s\"", hosts[h], hosts[h], targets[g])
        # venue-b on gw2 is down (0 active) for the whole window
        down = (h == 2 && g == 2)
        for (i = 0; i <= n; i++) emit("fix_connections_active", L, down ? 0 : 2 + (i % 3 == 0), start + i * step)
        for (i = 0; i <= n; i++) emit("fix_connections_peak", L, 4, start + i * step)
        for (i = 0; i <= n; i++) emit("fix_connections_total", L, 10 + int(i / 4), start + i * step)
        # who hung up: gw1 runs in eBPF mode (local, remote, reset, unknown), gw2 polls (unknown)
        if (h == 1) {
            for (i = 0; i <= n; i++) emit("fix_connections_closed_total", L ",by=\"local\"", 4 + int(i / 8), start + i * step)
            for (i = 0; i <= n; i++) emit("fix_connections_closed_total", L ",by=\"remote\"", 3 + int(i / 16), start + i * step)
            for (i = 0; i <= n; i++) emit("fix_connections_closed_total", L ",by=\"reset\"", 1 + int(i / 16), start + i * step)
            for (i = 0; i <= n; i++) emit("fix_connections_closed_total", L ",by=\"unknown\"", 0, start + i * step)
        } else {
            for (i = 0; i <= n; i++) emit("fix_connections_closed_total", L ",by=\"unknown\"", 8 + int(i / 4), start + i * step)
        }
        for (p = 0; p < 2; p++) {
            LP = L sprintf(",port=\"%d\"", 5001 + p + 10 * g)
            for (i = 0; i <= n; i++) emit("fix_connections_by_port", LP, down ? 0 : 1, start + i * step)
            # session health by port: one silent session on venue-b of gw1
            for (i = 0; i <= n; i++) emit("fix_connections_stale_by_port", LP, (h == 1 && g == 2 && p == 0) ? 1 : 0, start + i * step)
            for (i = 0; i <= n; i++) emit("fix_connection_receive_silence_by_port_seconds", LP, (h == 1 && g == 2 && p == 0) ? 90 : 0.5, start + i * step)
        }
        # why sessions ended: gw1 knows every cause (FIX layer on), a few of them grow; gw2
        # polls without the FIX layer (unknown only). The schedule: venue-a closes for the
        # last 30 minutes of the window; venue-b on gw2 (down) is expected down throughout
        if (h == 1) {
            nc = split("scheduled_logout logout_by_us logout_by_them heartbeat_timeout reset_by_them unknown logon_refused sequence_error process_exited network_timeout reset_by_us closed_without_logout", causes, " ")
            for (c = 1; c <= nc; c++) for (i = 0; i <= n; i++) emit("fix_session_ends_total", L sprintf(",cause=\"%s\"", causes[c]), (c <= 6) ? int(i / (6 * c)) : 0, start + i * step)
        } else {
            for (i = 0; i <= n; i++) emit("fix_session_ends_total", L ",cause=\"unknown\"", 8 + int(i / 4), start + i * step)
        }
        for (i = 0; i <= n; i++) emit("fix_target_expected_up", L, down ? 0 : ((g == 1 && i > n - 120) ? 0 : 1), start + i * step)
        # session health per target (TCP health from tcp_info)
        for (i = 0; i <= n; i++) emit("fix_connections_stale", L, (h == 1 && g == 2) ? 1 : 0, start + i * step)
        for (i = 0; i <= n; i++) emit("fix_connection_receive_silence_seconds", L, (h == 1 && g == 2) ? 90 : 0.5, start + i * step)
        for (i = 0; i <= n; i++) emit("fix_connection_send_queue_bytes", L, 1000 * (i % 5), start + i * step)
        for (i = 0; i <= n; i++) emit("fix_connection_retransmits_total", L, int(i / 2), start + i * step)
        for (b = 1; b <= nrb; b++) {
            LB = L sprintf(",le=\"%s\"", rles[b])
            for (i = 0; i <= n; i++) emit("fix_connection_rtt_seconds_bucket", LB, int(i * b / nrb), start + i * step)
        }
        for (i = 0; i <= n; i++) emit("fix_connection_rtt_seconds_count", L, i, start + i * step)
        for (i = 0; i <= n; i++) emit("fix_connection_rtt_seconds_sum", L, i * 0.0002, start + i * step)
        # FIX sessions (the FIX row of the dashboard): one session per host and target,
        # logged out where the target is down; gaps, rejects, unanswered orders
        # now and then; order acks spread over the latency buckets
        LS = L sprintf(",session=\"GW%d->VEN%d\"", h, g)
        for (i = 0; i <= n; i++) emit("fix_session_logged_on", LS, down ? 0 : 1, start + i * step)
        nm = split("Heartbeat NewOrderSingle ExecutionReport", mts, " ")
        for (m = 1; m <= nm; m++) {
            emit_dir = (mts[m] == "ExecutionReport") ? "in" : "out"
            for (i = 0; i <= n; i++) emit("fix_messages_total", LS sprintf(",direction=\"%s\",msg_type=\"%s\"", emit_dir, mts[m]), i * m, start + i * step)
        }
        for (i = 0; i <= n; i++) emit("fix_session_sequence_gaps_total", LS ",direction=\"in\"", int(i / 40), start + i * step)
        for (i = 0; i <= n; i++) emit("fix_session_rejects_total", LS ",direction=\"in\",kind=\"business\"", int(i / 20), start + i * step)
        for (i = 0; i <= n; i++) emit("fix_orders_unanswered_total", LS, int(i / 60), start + i * step)
        # refused logons now and then, attempts climbing toward a threshold of 5
        for (i = 0; i <= n; i++) emit("fix_session_logons_refused_total", LS, int(i / 50), start + i * step)
        for (i = 0; i <= n; i++) emit("fix_session_logon_attempts_in_window", LS, i % 5, start + i * step)
        for (i = 0; i <= n; i++) emit("fix_target_logon_lockout_attempts", L, 5, start + i * step)
        nab = split("0.0001 0.001 0.01 0.1 1 +Inf", ales, " ")
        for (b = 1; b <= nab; b++) {
            LB = LS sprintf(",request=\"new\",le=\"%s\"", ales[b])
            for (i = 0; i <= n; i++) emit("fix_order_ack_latency_seconds_bucket", LB, int(i * 2 * b / nab), start + i * step)
        }
        for (i = 0; i <= n; i++) emit("fix_order_ack_latency_seconds_count", LS ",request=\"new\"", i * 2, start + i * step)
        for (i = 0; i <= n; i++) emit("fix_order_ack_latency_seconds_sum", LS ",request=\"new\"", i * 0.004, start + i * step)
        # the FIX traffic row: peaks per window each way, the throttle (venue-a has a
        # message_limit; its utilization climbs to 100%), throttle rejects now and then,
        # every sequence kind (a few growing), order outcomes per target (a reason series
        # born late, as they are), fills spread over the latency buckets
        nw = split("1ms 10ms 100ms 1s", wins, " ")
        for (d = 1; d <= 2; d++) for (w = 1; w <= nw; w++) {
            LW = LS sprintf(",direction=\"%s\",window=\"%s\"", (d == 1) ? "in" : "out", wins[w])
            for (i = 0; i <= n; i++) emit("fix_session_peak_messages", LW, (1 + i % 4) * 10 ^ (w - 1) * d, start + i * step)
        }
        if (g == 1) for (i = 0; i <= n; i++) emit("fix_session_throttle_utilization_ratio", LS, 0.3 + 0.1 * (i % 8), start + i * step)
        for (i = 0; i <= n; i++) emit("fix_session_throttle_rejects_total", LS, int(i / 45), start + i * step)
        nk = split("reset_at_logon reset gap_fill too_low poss_dup poss_resend resend_storm", kinds, " ")
        for (d = 1; d <= 2; d++) for (k = 1; k <= nk; k++) {
            LK = LS sprintf(",direction=\"%s\",kind=\"%s\"", (d == 1) ? "in" : "out", kinds[k])
            for (i = 0; i <= n; i++) emit("fix_session_sequence_events_total", LK, (k == 3 || k == 5) ? int(i / (k * d)) : int(i / 200), start + i * step)
        }
        ne = split("new partial_fill fill canceled replaced rejected", ets, " ")
        for (e = 1; e <= ne; e++) for (i = 0; i <= n; i++) emit("fix_execution_reports_total", L sprintf(",exec_type=\"%s\"", ets[e]), int(i * 6 / e), start + i * step)
        for (i = 0; i <= n; i++) emit("fix_order_rejects_total", L ",reason=\"unknown_symbol\"", int(i / 6), start + i * step)
        for (i = n - 60; i <= n; i++) emit("fix_order_rejects_total", L ",reason=\"exchange_closed\"", 3 + int((i - n + 60) / 10), start + i * step)
        for (i = 0; i <= n; i++) emit("fix_cancel_rejects_total", L ",reason=\"too_late_to_cancel\"", int(i / 12), start + i * step)
        nfb = split("0.0001 0.001 0.01 0.1 1 10 60 600 3600 +Inf", fles, " ")
        for (b = 1; b <= nfb; b++) {
            LB = L sprintf(",le=\"%s\"", fles[b])
            for (i = 0; i <= n; i++) emit("fix_order_fill_latency_seconds_bucket", LB, int(i * 3 * b / nfb), start + i * step)
        }
        for (i = 0; i <= n; i++) emit("fix_order_fill_latency_seconds_count", L, i * 3, start + i * step)
        for (i = 0; i <= n; i++) emit("fix_order_fill_latency_seconds_sum", L, i * 1.5, start + i * step)
        # clock skew, signed buckets, both directions: 10 samples a step around +250 ms (in)
        # and just below 0 (out)
        nkb = split("-1 -0.1 -0.001 0 0.001 0.1 0.3 1 +Inf", kles, " ")
        for (b = 1; b <= nkb; b++) {
            LB = L sprintf(",direction=\"in\",le=\"%s\"", kles[b])
            for (i = 0; i <= n; i++) emit("fix_clock_skew_seconds_bucket", LB, (b >= 7) ? i * 10 : 0, start + i * step)
            LB = L sprintf(",direction=\"out\",le=\"%s\"", kles[b])
            for (i = 0; i <= n; i++) emit("fix_clock_skew_seconds_bucket", LB, (b >= 3) ? i * 10 : 0, start + i * step)
        }
        for (i = 0; i <= n; i++) emit("fix_clock_skew_seconds_count", L ",direction=\"in\"", i * 10, start + i * step)
        for (i = 0; i <= n; i++) emit("fix_clock_skew_seconds_count", L ",direction=\"out\"", i * 10, start + i * step)
        # one close per minute; lifetimes spread over the buckets
        for (b = 1; b <= nb; b++) {
            LB = L sprintf(",le=\"%s\"", les[b])
            for (i = 0; i <= n; i++) emit("fix_connection_duration_seconds_bucket", LB, int(int(i / 4) * b / nb), start + i * step)
        }
        for (i = 0; i <= n; i++) emit("fix_connection_duration_seconds_count", L, int(i / 4), start + i * step)
        for (i = 0; i <= n; i++) emit("fix_connection_duration_seconds_sum", L, 600 * int(i / 4), start + i * step)
    }
    for (h = 1; h <= nh; h++) {
        L = sprintf("job=\"fix-monitor\",instance=\"%s:9464\"", hosts[h])
        for (i = 0; i <= n; i++) emit("up", L, 1, start + i * step)
        for (i = 0; i <= n; i++) emit("fix_monitor_poll_errors_total", L, (h == 2) ? int(i / 8) : 0, start + i * step)
        for (b = 1; b <= npb; b++) {
            LB = L sprintf(",le=\"%s\"", ples[b])
            for (i = 0; i <= n; i++) emit("fix_monitor_poll_duration_seconds_bucket", LB, int(i * 15 * b / npb), start + i * step)
        }
        for (i = 0; i <= n; i++) emit("fix_monitor_poll_duration_seconds_count", L, i * 15, start + i * step)
        for (i = 0; i <= n; i++) emit("fix_monitor_poll_duration_seconds_sum", L, i * 0.03, start + i * step)
        LI = L sprintf(",host_name=\"%s\",service_name=\"fix-monitor\",service_version=\"0.0.0-test\",service_instance_id=\"id-%s\"", hosts[h], hosts[h])
        for (i = 0; i <= n; i++) emit("target_info", LI, 1, start + i * step)
        # the FIX layer own tables: the capture connections, by how they ended; the gw2
        # table fills up for a while; a few messages folded into msg_type other
        LH = L sprintf(",host=\"%s\"", hosts[h])
        for (i = 0; i <= n; i++) emit("fix_monitor_capture_connections", LH, 4 + (i % 3), start + i * step)
        for (i = 0; i <= n; i++) emit("fix_monitor_capture_connections_not_followed_total", LH, (h == 2) ? int(i / 30) : 0, start + i * step)
        nr = split("fin reset tcp_closed idle", reasons, " ")
        for (r = 1; r <= nr; r++) for (i = 0; i <= n; i++) emit("fix_monitor_capture_connections_ended_total", LH sprintf(",reason=\"%s\"", reasons[r]), int(i / (4 * r)), start + i * step)
        nl = split("sessions msg_types pending_orders log_line", limits, " ")
        for (l = 1; l <= nl; l++) for (i = 0; i <= n; i++) emit("fix_monitor_fix_limit_hits_total", LH sprintf(",limit=\"%s\"", limits[l]), (l == 2) ? int(i / 10) : 0, start + i * step)
        for (i = 0; i <= n; i++) emit("fix_monitor_fix_log_files", LH ",state=\"followed\"", 2, start + i * step)
        for (i = 0; i <= n; i++) emit("fix_monitor_fix_log_files", LH ",state=\"not_followed\"", 0, start + i * step)
    }
    print "# EOF"
}' > "$tmp/data.om"

mkdir -p "$tmp/data"
"$PROMTOOL" tsdb create-blocks-from openmetrics "$tmp/data.om" "$tmp/data" > "$tmp/backfill.log" 2>&1 \
    || { cat "$tmp/backfill.log" >&2; die "promtool backfill failed"; }

# ---- throwaway Prometheus --------------------------------------------------
printf 'global:\n  scrape_interval: 15s\nscrape_configs: []\n' > "$tmp/prometheus.yml"
port=""
for _ in $(seq 50); do
    p=$(( 20000 + RANDOM % 20000 ))
    if ! ss -Htln "sport = :$p" | grep -q .; then port=$p; break; fi
done
[ -n "$port" ] || die "no free port found"

"$PROMETHEUS" --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/data" \
    --web.listen-address="127.0.0.1:$port" --storage.tsdb.retention.time=30d \
    > "$tmp/prometheus.log" 2>&1 &
prom_pid=$!
base="http://127.0.0.1:$port"
ready=0
for _ in $(seq 150); do
    if curl -fsS "$base/-/ready" >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$prom_pid" 2>/dev/null || break
    sleep 0.2
done
[ "$ready" = 1 ] || { tail -20 "$tmp/prometheus.log" >&2; die "prometheus did not become ready on $base"; }

# ---- query every expression -------------------------------------------------
pass=0 fail=0
while IFS= read -r e; do
    [ -n "$e" ] || continue
    resp="$(curl -sS --get "$base/api/v1/query" --data-urlencode "query=$e" --data-urlencode "time=$end" 2>&1)" || true
    status="$(jq -r '.status // "no-status"' <<<"$resp" 2>/dev/null || echo "bad-json")"
    if [ "$status" != success ]; then
        err="$(jq -r '.error // empty' <<<"$resp" 2>/dev/null || true)"
        printf 'FAIL  %s\n      %s\n' "$e" "${err:-$resp}"
        fail=$((fail + 1))
        continue
    fi
    n="$(jq -r 'if .data.resultType == "vector" or .data.resultType == "matrix" then (.data.result | length) else 1 end' <<<"$resp")"
    if [ "$n" = 0 ] && [ "${ALLOW_EMPTY:-0}" != 1 ]; then
        printf 'EMPTY %s\n' "$e"
        fail=$((fail + 1))
    else
        printf 'ok %-3s %s\n' "$n" "$e"
        pass=$((pass + 1))
    fi
done <<<"$exprs"

echo "dashboard exprs against $("$PROMETHEUS" --version 2>&1 | head -n1 | awk '{print $1, $3}'):"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
