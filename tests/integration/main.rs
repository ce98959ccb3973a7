//! First-tier integration tests: the real `fix-monitor` binary against real TCP connections on
//! loopback, as a normal user with no extra tools (`cargo test`). Tests that need root, network
//! namespaces or external tools are in the second tier, `tests/system/`.
//!
//! One test binary built from modules (ripgrep's layout). The shared pieces (running the
//! binary, downstream listeners and clients whose numbers are the ground truth, a parser for
//! the Prometheus text format, a real OTLP receiver) are the test-support crate's, which the
//! second tier uses too (`tests/support`).

use fix_monitor_test_support::{harness, otlp_receiver};

mod config_errors;
mod console;
mod demo;
mod endpoint_security;
mod endpoints;
mod events;
mod fix_logs;
mod fix_outcomes;
// Issue 21: clock skew per counterparty, from engine logs.
mod fix_skew;
// The man page and completions generated from the CLI definitions.
mod generate;
// Issue 18: the workspace's crates depend only on the layers below them.
mod layers;
// The metric tables of README.md and dashboards/README.md against the code's names.
mod metric_docs;
mod otlp_grpc;
mod otlp_http;
// Session events as OTLP log records.
mod otlp_logs;
// Generated hostile input for the parsers and the filter compiler (Linux: netlink, procfs),
// and for the config loader.
mod config_properties;
#[cfg(target_os = "linux")]
mod properties;
// The fuzzer's seeds and the crashes it found, replayed (fuzz/harness.rs).
#[cfg(target_os = "linux")]
mod fuzz_regressions;
// Issue 22: the configuration reloaded without a restart.
mod reload;
mod schedules;
mod session_health;
// What one target, port and sidecar add to /metrics (dashboards/README.md, sizing).
mod series_budget;
// Issue 10: the final tcp_info of kernel destroy notifications.
#[cfg(target_os = "linux")]
mod close_counters;
// A closed stdout ends a command quietly (a pipe made with libc).
#[cfg(target_os = "linux")]
mod closed_stdout;
// poll.process_lookup (Linux: /proc).
#[cfg(target_os = "linux")]
mod process_lookup;
