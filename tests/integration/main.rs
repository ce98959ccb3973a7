//! First-tier integration tests: the real `fix-monitor` binary against real TCP connections on
//! loopback, as a normal user with no extra tools (`cargo test`). Tests that need root, network
//! namespaces or external tools are in the second tier, `tests/system/`.
//!
//! One test binary built from modules (ripgrep's layout). `harness` holds the shared pieces:
//! running the binary, downstream listeners and clients whose numbers are the ground truth,
//! and a parser for the Prometheus text format.

mod harness;
mod otlp_receiver;

mod config_errors;
mod console;
mod demo;
mod endpoint_security;
mod endpoints;
mod events;
mod fix_logs;
// Issue 18: the workspace's crates depend only on the layers below them.
mod layers;
mod otlp_grpc;
mod otlp_http;
// Generated hostile input for the parsers and the filter compiler (Linux: netlink, procfs),
// and for the config loader.
mod config_properties;
#[cfg(target_os = "linux")]
mod properties;
// The fuzzer's seeds and the crashes it found, replayed (fuzz/harness.rs).
#[cfg(target_os = "linux")]
mod fuzz_regressions;
mod session_health;
// Issue 10: the final tcp_info of kernel destroy notifications.
#[cfg(target_os = "linux")]
mod close_counters;
// poll.process_lookup (Linux: /proc).
#[cfg(target_os = "linux")]
mod process_lookup;
