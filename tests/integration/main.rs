//! Integration tests: the real `fix-monitor` binary against real TCP connections on loopback.
//!
//! One test binary built from modules (ripgrep's layout). `harness` holds the shared pieces:
//! running the binary, downstream listeners and clients whose numbers are the ground truth,
//! and a parser for the Prometheus text format.

mod backends;
mod harness;
mod netns;
mod otlp_receiver;

mod config_errors;
mod console;
mod demo;
mod endpoints;
mod fix_logs;
mod fleet;
mod otlp_grpc;
mod otlp_http;
mod poll_failure;
mod prometheus_scrape;
