//! AFL++ fuzz target: see `fuzz/harness.rs`, `otel_headers`.
#[allow(dead_code)] // each target uses one of the harness functions
#[path = "../../harness.rs"]
mod harness;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        harness::otel_headers(data);
    });
}
