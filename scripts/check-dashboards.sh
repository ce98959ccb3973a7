#!/usr/bin/env bash
# Validate dashboards/: alert rules, their unit tests, and the Grafana JSON.
#
#   scripts/check-dashboards.sh [--no-prometheus]
#
# Checks (each prints "ok"/"FAIL <name>"; exit 1 if any fails):
#   - promtool check rules dashboards/alerts.yml
#   - promtool test rules  dashboards/alerts_test.yml
#     (both repeated with .tools/bin/promtool-trixie when fetch-tools put it there)
#   - every dashboards/*.json parses (jq)
#   - dashboards/fix-monitor.json: no __inputs, schemaVersion set, datasource
#     template variable of type prometheus, variables job/host/instance/target,
#     unique panel ids, every non-row panel has a gridPos and >= 1 target and
#     every target a non-empty expr using the ${datasource} variable, no
#     "$var" used with = or != (the dashboard must use =~ so "All" = .* works)
#   - scripts/dashboard-exprs.sh extracts the expressions
#   - scripts/check-dashboard-exprs.sh runs each against a throwaway
#     Prometheus (skipped with --no-prometheus or SKIP_PROMETHEUS=1)
# Needs promtool, prometheus, jq, curl, ss: scripts/fetch-tools.sh installs them.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
PROMTOOL="${PROMTOOL:-promtool}"
DASH=dashboards/fix-monitor.json
skip_prom="${SKIP_PROMETHEUS:-0}"
[ "${1:-}" = "--no-prometheus" ] && skip_prom=1

for t in "$PROMTOOL" jq; do
    command -v "$t" >/dev/null || { echo "check-dashboards: missing $t (run scripts/fetch-tools.sh)" >&2; exit 1; }
done

pass=0 fail=0
check() {
    # check NAME CMD... : run CMD, show its output only on failure
    local name="$1"; shift
    local out
    if out="$("$@" 2>&1)"; then
        printf 'ok    %s\n' "$name"; pass=$((pass + 1))
    else
        printf 'FAIL  %s\n' "$name"; printf '%s\n' "$out" | sed 's/^/      /'; fail=$((fail + 1))
    fi
}

check "promtool check rules alerts.yml"      "$PROMTOOL" check rules dashboards/alerts.yml
check "promtool test rules alerts_test.yml"  "$PROMTOOL" test rules dashboards/alerts_test.yml
if [ -x .tools/bin/promtool-trixie ]; then
    check "promtool-trixie check rules alerts.yml"     .tools/bin/promtool-trixie check rules dashboards/alerts.yml
    check "promtool-trixie test rules alerts_test.yml" .tools/bin/promtool-trixie test rules dashboards/alerts_test.yml
fi

for f in dashboards/*.json; do
    check "$f parses" jq -e 'type == "object"' "$f"
done

# Structural checks: jq prints one problem per line; none = ok.
dash_problems() {
    jq -r '
      def panels: .panels[]? | ., (.panels[]?);
      def vars: [.templating.list[]?.name];
      (if has("__inputs") then "dashboard has __inputs (must be importable as is)" else empty end),
      (if (.schemaVersion // 0) < 36 then "schemaVersion missing or < 36" else empty end),
      (if (.title // "") == "" or (.uid // "") == "" then "title/uid missing" else empty end),
      (.templating.list[]? | select(.name == "datasource")
        | if .type != "datasource" or .query != "prometheus" then "variable datasource must be type datasource, query prometheus" else empty end),
      (vars as $v | ("datasource", "job", "host", "instance", "target")
        | select(. as $n | $v | index($n) | not) | "template variable \(.) missing"),
      (.templating.list[]? | select(.name == "host") | .definition // .query.query // .query
        | if tostring | test("label_values\\(fix_connections_active.*,\\s*host\\)") | not then "host variable must be label_values(fix_connections_active, host)" else empty end),
      (.templating.list[]? | select(.name == "target")
        | if .multi != true or .includeAll != true then "target variable must be multi with All" else empty end),
      ([panels | .id] | if length != (unique | length) then "duplicate panel ids" else empty end),
      (panels | select(.type != "row") | . as $p
        | (if .gridPos == null then "panel \"\($p.title)\": no gridPos" else empty end),
          (if ((.title // "") == "") then "panel id \($p.id): no title" else empty end),
          (if ((.targets // []) | length) == 0 then "panel \"\($p.title)\": no targets" else empty end),
          ((.targets // [])[]
            | (if ((.expr // "") | test("\\S") | not) then "panel \"\($p.title)\" target \(.refId): empty expr" else empty end),
              (if ((.datasource.uid // $p.datasource.uid // "") != "${datasource}") then "panel \"\($p.title)\" target \(.refId): datasource is not ${datasource}" else empty end),
              (if ((.expr // "") | test("[=!]\"\\$\\{?[A-Za-z_]")) then "panel \"\($p.title)\" target \(.refId): use =~ with template variables: \(.expr)" else empty end)))
    ' "$DASH"
}
if problems="$(dash_problems 2>&1)" && [ -z "$problems" ]; then
    printf 'ok    %s\n' "$DASH structure"; pass=$((pass + 1))
else
    printf 'FAIL  %s\n' "$DASH structure"; printf '%s\n' "${problems:-jq failed}" | sed 's/^/      /'; fail=$((fail + 1))
fi

# shellcheck disable=SC2016 # expanded by the inner bash
check "scripts/dashboard-exprs.sh extracts expressions" bash -c '[ "$(scripts/dashboard-exprs.sh | grep -c .)" -gt 0 ]'

if [ "$skip_prom" = 1 ]; then
    echo "skip  dashboard expressions against a real Prometheus (--no-prometheus)"
else
    check "dashboard expressions against a throwaway Prometheus" scripts/check-dashboard-exprs.sh "$DASH"
fi

echo "check-dashboards: $pass passed, $fail failed"
[ "$fail" = 0 ]
