#!/usr/bin/env bash
# A fleet on one machine: FLEET_SIZE sidecars (default 50), each in its own network namespace
# with its own simulated FIX gateway (sessions logged on, logged out, and logons refused by one
# venue) and the FIX layer reading the wire, scraped by one Prometheus (configured from
# examples/prometheus.yml, file-based discovery) and pushing OTLP/HTTP to one VictoriaMetrics.
# Runs the second-tier test that checks every host's numbers (TCP and FIX: logons, refusals,
# why each session ended) and the fleet-wide sums in both back ends, then prints what the fleet
# cost them (series per sidecar, samples per second, bytes per pushed sample). Root (network
# namespaces, packet capture); tools from scripts/fetch-tools.sh.
#
#   scripts/fleet.sh            # 50
#   FLEET_SIZE=150 scripts/fleet.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.tools/bin:$PATH"
export FLEET_SIZE="${FLEET_SIZE:-50}"
cargo test --locked --features system-tests --test system \
    fleet::fleet_of_fifty_sidecars_adds_up_in_prometheus_and_victoria_metrics \
    -- --exact --nocapture 2>&1 | grep -E '^(fleet|test |test result)'
