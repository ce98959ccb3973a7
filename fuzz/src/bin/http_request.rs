//! AFL++ fuzz target: see `fuzz/harness.rs`, `http_request`.
#[allow(dead_code)] // each target uses one of the harness functions
#[path = "../../harness.rs"]
mod harness;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        harness::http_request(data);
    });
}
