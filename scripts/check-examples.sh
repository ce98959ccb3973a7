#!/usr/bin/env bash
# Validate everything under examples/ with the real tools.
#
#   scripts/check-examples.sh
#
# Checks (each prints "ok" or "FAIL" and a reason):
#   - promtool check config examples/prometheus.yml (this also checks the file_sd files it
#     globs, examples/targets/*.json);
#   - every examples/**/*.yml|yaml parses (all documents), every examples/**/*.json parses;
#   - otel-collector.yaml: an otlp receiver with grpc and http, and every pipeline names only
#     components that are defined (what `otelcol validate` checks first; no collector binary
#     is packaged for Debian, so it is not run here);
#   - k8s/*.yaml: a Pod with a fix-monitor container whose probes hit /health on its metrics
#     port, resources limits, a config volume whose ConfigMap is in the same file; and the
#     config.toml inside that ConfigMap loads;
#   - systemd/*.service: `systemd-analyze verify` (on a copy whose ExecStart points at the
#     fix-monitor just built, since verify wants the binary to exist) and
#     `systemd-analyze security --offline` exposure <= 2.0 (a missing systemd-analyze fails);
#   - web-config.yml (and the ConfigMap's): `promtool check web-config` (the exporter toolkit's own
#     check) with throwaway certificates (openssl) in place of the real ones;
#   - every config/**/*.toml loads: `fix-monitor config --config FILE` exits 0, with
#     /etc/fix-monitor/ standing for a temporary copy holding the example web configuration and
#     those certificates (the web configuration is read and checked when the config loads).
# Prints "N passed, N failed" last; exits 1 if anything failed.
#
# Environment:
#   PROMTOOL     promtool to use (default: promtool on PATH)
#   FIX_MONITOR  fix-monitor binary (default: `cargo build --bin fix-monitor`, then the one in
#                cargo's target directory)
#   PYTHON       a python3 with PyYAML (default: python3 on PATH, else /usr/bin/python3;
#                Debian package python3-yaml)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EX="$ROOT/examples"
PROMTOOL="${PROMTOOL:-promtool}"
# shellcheck source=scripts/checks-lib.sh
source "$ROOT/scripts/checks-lib.sh"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/fix-check-examples.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# ---- tools -------------------------------------------------------------------------------
python=""
for p in "${PYTHON:-}" python3 /usr/bin/python3; do
    [ -n "$p" ] || continue
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import yaml' >/dev/null 2>&1; then
        python="$p"
        break
    fi
done

if [ -n "${FIX_MONITOR:-}" ]; then
    fm="$FIX_MONITOR"
else
    if ! (cd "$ROOT" && cargo build --quiet --bin fix-monitor) >"$tmp/build.log" 2>&1; then
        cat "$tmp/build.log" >&2
        echo "check-examples: cargo build --bin fix-monitor failed" >&2
        exit 1
    fi
    target_dir="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
    fm="$target_dir/debug/fix-monitor"
fi
[ -x "$fm" ] || { echo "check-examples: no fix-monitor binary at $fm" >&2; exit 1; }

# ---- Prometheus --------------------------------------------------------------------------
if command -v "$PROMTOOL" >/dev/null 2>&1; then
    if out="$("$PROMTOOL" check config "$EX/prometheus.yml" 2>&1)"; then
        ok "promtool check config examples/prometheus.yml (+ file_sd targets/*.json)"
    else
        bad "promtool check config examples/prometheus.yml"
        printf '%s\n' "$out" | indent
    fi
else
    bad "promtool not found (scripts/fetch-tools.sh installs it)"
fi

# ---- YAML and JSON, and the structure of the collector and k8s files ----------------------
if [ -z "$python" ]; then
    bad "no python3 with PyYAML (apt-get install python3-yaml): YAML files not checked"
else
    # One line per check: "ok <what>" or "FAIL <what>: <why>"; extracted ConfigMap TOML files
    # are written to $tmp/configmap-*.toml for the fix-monitor check below.
    "$python" - "$EX" "$tmp" >"$tmp/py.out" 2>&1 <<'PY'
import glob, json, os, sys
import yaml

ex, tmp = sys.argv[1], sys.argv[2]
rel = lambda p: os.path.relpath(p, os.path.dirname(ex))
def say(ok, what, why=""):
    print(("ok " if ok else "FAIL ") + what + ("" if ok else ": " + why))

docs = {}
for path in sorted(glob.glob(os.path.join(ex, "**", "*.y*ml"), recursive=True)):
    try:
        with open(path) as f:
            docs[path] = [d for d in yaml.safe_load_all(f) if d is not None]
        say(bool(docs[path]), "YAML parses: " + rel(path), "no document")
    except yaml.YAMLError as e:
        say(False, "YAML parses: " + rel(path), str(e).replace("\n", " "))
for path in sorted(glob.glob(os.path.join(ex, "**", "*.json"), recursive=True)):
    try:
        with open(path) as f:
            json.load(f)
        say(True, "JSON parses: " + rel(path))
    except ValueError as e:
        say(False, "JSON parses: " + rel(path), str(e))

def check(what, fn):
    try:
        problems = fn()
    except Exception as e:  # a missing key is a structural problem
        problems = ["%s: %s" % (type(e).__name__, e)]
    say(not problems, what, "; ".join(problems))

# --- OpenTelemetry Collector ---
def collector():
    path = os.path.join(ex, "otel-collector.yaml")
    c = docs[path][0]
    p = []
    protos = (c["receivers"]["otlp"] or {}).get("protocols") or {}
    for proto in ("grpc", "http"):
        if proto not in protos:
            p.append("otlp receiver lacks " + proto)
    for e in ("prometheusremotewrite", "otlp"):
        if e not in (c.get("exporters") or {}):
            p.append("no %s exporter" % e)
    if "batch" not in (c.get("processors") or {}):
        p.append("no batch processor")
    pipelines = c["service"]["pipelines"]
    if not pipelines:
        p.append("no pipelines")
    for name, pl in pipelines.items():
        for kind in ("receivers", "processors", "exporters"):
            defined = c.get(kind) or {}
            for comp in pl.get(kind) or []:
                if comp not in defined:
                    p.append("pipeline %s: %s %r is not defined" % (name, kind[:-1], comp))
        if not pl.get("receivers") or not pl.get("exporters"):
            p.append("pipeline %s needs receivers and exporters" % name)
        procs = pl.get("processors") or []
        if procs and procs[0] != "memory_limiter" and "memory_limiter" in procs:
            p.append("memory_limiter should come first")
    for ext in c["service"].get("extensions") or []:
        if ext not in (c.get("extensions") or {}):
            p.append("extension %r is not defined" % ext)
    return p
check("otel-collector.yaml: receivers/processors/exporters and pipelines are consistent", collector)

# --- Kubernetes ---
for path in sorted(glob.glob(os.path.join(ex, "k8s", "*.y*ml"))):
    def k8s(path=path):
        p = []
        objs = docs[path]
        for o in objs:
            for k in ("apiVersion", "kind", "metadata"):
                if k not in o:
                    p.append("an object lacks %s" % k)
        cms = {o["metadata"]["name"]: o for o in objs if o.get("kind") == "ConfigMap"}
        pods = [o for o in objs if o.get("kind") == "Pod"]
        if not pods:
            p.append("no Pod")
        for pod in pods:
            spec = pod["spec"]
            names = [c["name"] for c in spec["containers"]]
            if len(set(names)) != len(names):
                p.append("duplicate container names")
            fm = [c for c in spec["containers"] if c["name"] == "fix-monitor"]
            if not fm:
                p.append("no fix-monitor container")
                continue
            fm = fm[0]
            if len(spec["containers"]) < 2:
                p.append("fix-monitor is alone: it must share the gateway's pod")
            if spec.get("hostNetwork"):
                p.append("hostNetwork: the sidecar would watch the node, not the gateway")
            ports = {pt.get("name"): pt["containerPort"] for pt in fm.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe"):
                g = (fm.get(probe) or {}).get("httpGet")
                if not g:
                    p.append("fix-monitor has no %s httpGet" % probe)
                    continue
                if g.get("path") != "/health":
                    p.append("%s path is %r, not /health" % (probe, g.get("path")))
                if g.get("port") not in ports and g.get("port") not in ports.values():
                    p.append("%s port %r is not a container port" % (probe, g.get("port")))
            lim = (fm.get("resources") or {}).get("limits") or {}
            if "memory" not in lim or "cpu" not in lim:
                p.append("fix-monitor lacks cpu/memory limits")
            sc = fm.get("securityContext") or {}
            if sc.get("allowPrivilegeEscalation") is not False or "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                p.append("fix-monitor should drop all capabilities and privilege escalation")
            for v in spec.get("volumes", []):
                cm = (v.get("configMap") or {}).get("name")
                if cm and cm not in cms:
                    p.append("volume %s refers to ConfigMap %r not in this file" % (v["name"], cm))
        for name, cm in cms.items():
            for key, text in (cm.get("data") or {}).items():
                if key.endswith(".toml") or key.endswith(".yml"):
                    out = os.path.join(tmp, "configmap-%s-%s" % (name, key))
                    with open(out, "w") as f:
                        f.write(text)
        return p
    check(rel(path) + ": pod, sidecar, probes, limits, ConfigMap", k8s)
PY
    while IFS= read -r line; do
        case "$line" in
            "ok "*) ok "${line#ok }" ;;
            "FAIL "*) bad "${line#FAIL }" ;;
            *) bad "python: $line" ;;
        esac
    done <"$tmp/py.out"
fi

# ---- systemd -------------------------------------------------------------------------------
for unit in "$EX"/systemd/*.service; do
    [ -e "$unit" ] || continue
    name="$(basename "$unit")"
    if ! command -v systemd-analyze >/dev/null 2>&1; then
        bad "systemd-analyze not installed (package systemd; scripts/fetch-tools.sh installs it)"
        continue
    fi
    mkdir -p "$tmp/units"
    sed "s#/usr/bin/fix-monitor#$fm#g" "$unit" >"$tmp/units/$name"
    if out="$(systemd-analyze verify "$tmp/units/$name" 2>&1)" && [ -z "$out" ]; then
        ok "systemd-analyze verify systemd/$name"
    else
        bad "systemd-analyze verify systemd/$name"
        printf '%s\n' "$out" | indent
    fi
    if out="$(systemd-analyze security --offline=yes --threshold=20 "$tmp/units/$name" 2>&1)"; then
        ok "systemd-analyze security systemd/$name: $(printf '%s\n' "$out" | grep -o 'exposure level.*' | head -n1)"
    else
        bad "systemd-analyze security systemd/$name: exposure above 2.0 (or not analysable)"
        printf '%s\n' "$out" | grep -E '✗|exposure|rror' | indent
    fi
done

# ---- web configuration files (TLS, basic auth) ------------------------------------------------
# A stand-in for /etc/fix-monitor: the example web configuration, and throwaway certificates
# under the names it uses (one self-signed certificate serves as server certificate and client CA).
etc="$tmp/etc/fix-monitor"
mkdir -p "$etc/tls"
cp "$EX/web-config.yml" "$etc/web-config.yml"
if command -v openssl >/dev/null 2>&1 &&
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost \
        -keyout "$etc/tls/server.key" -out "$etc/tls/server.crt" >"$tmp/openssl.log" 2>&1; then
    cp "$etc/tls/server.crt" "$etc/tls/scrapers-ca.crt"
    # The Kubernetes example's names (a kubernetes.io/tls Secret).
    cp "$etc/tls/server.crt" "$etc/tls/tls.crt"
    cp "$etc/tls/server.key" "$etc/tls/tls.key"
else
    bad "openssl could not make a test certificate (package openssl; scripts/fetch-tools.sh installs it)"
    cat "$tmp/openssl.log" 2>/dev/null | indent
fi
shopt -s globstar nullglob
for web in "$EX/web-config.yml" "$tmp"/configmap-*.yml; do
    case "$web" in
        "$tmp"/*) label="ConfigMap ${web#"$tmp"/configmap-}" ;;
        *) label="${web#"$ROOT"/}" ;;
    esac
    cp "$web" "$etc/check.yml"
    if ! command -v "$PROMTOOL" >/dev/null 2>&1; then
        bad "promtool not found: $label not checked"
    elif out="$("$PROMTOOL" check web-config "$etc/check.yml" 2>&1)"; then
        ok "promtool check web-config $label"
    else
        bad "promtool check web-config $label"
        printf '%s\n' "$out" | indent
    fi
done
rm -f "$etc/check.yml"

# ---- fix-monitor configurations -------------------------------------------------------------
for cfg in "$ROOT"/config/**/*.toml "$tmp"/configmap-*.toml; do
    case "$cfg" in
        "$tmp"/*) label="ConfigMap ${cfg#"$tmp"/configmap-}" ;;
        *) label="${cfg#"$ROOT"/}" ;;
    esac
    sed "s#/etc/fix-monitor/#$etc/#g" "$cfg" >"$tmp/config.toml"
    # A ConfigMap's config goes with the web configuration beside it in that ConfigMap.
    cp "$EX/web-config.yml" "$etc/web-config.yml"
    case "$cfg" in
        "$tmp"/configmap-*)
            if [ -e "${cfg%-*.toml}-web-config.yml" ]; then
                cp "${cfg%-*.toml}-web-config.yml" "$etc/web-config.yml"
            fi
            ;;
    esac
    # A clean environment: only the file counts.
    if out="$(env -i PATH="$PATH" "$fm" config --config "$tmp/config.toml" 2>&1)"; then
        ok "fix-monitor config --config $label"
    else
        bad "fix-monitor config --config $label (exit $?)"
        printf '%s\n' "$out" | indent
    fi
done
[ -n "$(ls "$ROOT"/config/**/*.toml 2>/dev/null)" ] || bad "no config/**/*.toml found"

echo "check-examples: $pass passed, $fail failed"
[ "$fail" = 0 ]
