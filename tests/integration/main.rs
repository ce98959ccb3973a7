//! Integration tests: the real `fix-monitor` binary against real TCP connections on loopback.
//!
//! One test binary built from modules (ripgrep's layout). `harness` holds the shared pieces:
//! running the binary, downstream listeners and clients whose numbers are the ground truth,
//! and a parser for the Prometheus text format.

mod harness;

mod config_errors;
mod endpoints;
mod poll_failure;
