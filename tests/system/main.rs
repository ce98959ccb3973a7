//! Second-tier tests: the real binary and the real kernel where it takes root, network
//! namespaces or external tools (promtool, Prometheus, VictoriaMetrics, tmux, nftables).
//! Built only with `--features system-tests`, which `scripts/test.sh` (CI) always enables; a
//! missing tool fails the test, it is never skipped.
//!
//! The shared pieces (running the binary, ground-truth connections, the Prometheus text parser,
//! the OTLP receiver) are the test-support crate's (`tests/support`), as in the first tier.

mod end_causes;
mod fix_capture;
mod fix_capture_table;
mod fix_logon_refused;
mod tls_tunnel;
// Issue 21: clock skew per counterparty, from the wire.
mod fix_skew;
use fix_monitor_test_support::harness;

mod backends;
mod netns;
mod nft;

mod closed_by;
mod ebpf;
mod endpoint_load;
mod fleet;
mod otlp_http_vm;
mod poll_failure;
// A full or read-only state dir, a kill -9 mid-write.
mod faults;
mod prometheus_scrape;
mod promtool;
mod tcp_health;
mod terminal;

// The container image, built with podman and run unprivileged on the host network.
mod container;
// The sidecar as a throwaway user with no capabilities.
mod least_privilege;
// The kernel-filter compiler against the live kernel, property-tested.
mod kernel_filter;
mod web_config_interop;
