#!/usr/bin/env bash
# Print the PromQL of every panel target in a Grafana dashboard, one
# expression per line, with Grafana's variables substituted so that each line
# is a plain PromQL query a real Prometheus accepts. Needs only bash and jq.
#
#   scripts/dashboard-exprs.sh [--tsv] [DASHBOARD.json]
#
#   DASHBOARD.json  default: dashboards/fix-monitor.json
#   --tsv           print "panel title<TAB>refId<TAB>expr" instead of bare exprs
#
# Substitutions ($name, ${name}, ${name:fmt} and [[name]] forms):
#   $__rate_interval -> $RATE_INTERVAL (default 1m)
#   $__interval      -> $INTERVAL      (default 1m)
#   $__range         -> $RANGE         (default 5m)
#   $job $host $instance $target -> $VAR_VALUE (default .*); the dashboard
#                       uses them only in =~ matchers, so ".*" matches all.
# Newlines inside an expression are folded into spaces. Row panels (and panels
# nested in collapsed rows) are included. Exits non-zero if the dashboard does
# not parse, has no expression, or an expression still contains a $variable.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tsv=0
dash="$ROOT/dashboards/fix-monitor.json"
for a in "$@"; do
    case "$a" in
        --tsv) tsv=1 ;;
        -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) dash="$a" ;;
    esac
done
[ -f "$dash" ] || { echo "dashboard-exprs: no such file: $dash" >&2; exit 1; }

out="$(jq -r \
    --arg rate "${RATE_INTERVAL:-1m}" \
    --arg interval "${INTERVAL:-1m}" \
    --arg range "${RANGE:-5m}" \
    --arg any "${VAR_VALUE:-.*}" \
    --argjson tsv "$tsv" '
    def subst(name; value):
        # [[name]], ${name}, ${name:format}, $name (not followed by a word char)
        gsub("\\[\\[" + name + "\\]\\]"; value)
        | gsub("\\$\\{" + name + "(:[a-z]+)?\\}"; value)
        | gsub("\\$" + name + "(?![A-Za-z0-9_])"; value);
    [ .panels[]? | ., (.panels[]?) ]            # top level + inside collapsed rows
    | .[]
    | .title as $title
    | (.targets // [])[]
    | select((.expr // "") != "")
    | (.expr
        | gsub("\\s*\\n\\s*"; " ")
        | subst("__rate_interval"; $rate)
        | subst("__interval"; $interval)
        | subst("__range"; $range)
        | subst("job"; $any) | subst("host"; $any)
        | subst("instance"; $any) | subst("target"; $any)) as $e
    | if $tsv == 1 then "\($title)\t\(.refId // "")\t\($e)" else $e end
' "$dash")" || { echo "dashboard-exprs: $dash is not valid dashboard JSON" >&2; exit 1; }

[ -n "$out" ] || { echo "dashboard-exprs: no expressions found in $dash" >&2; exit 1; }
if left="$(printf '%s\n' "$out" | grep -E '\$\{?[A-Za-z_]|\[\[[A-Za-z_]')"; then
    echo "dashboard-exprs: unsubstituted variable(s) left in:" >&2
    printf '  %s\n' "$left" >&2
    exit 1
fi
printf '%s\n' "$out"
