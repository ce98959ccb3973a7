//! AFL++ fuzz target: see `fuzz/harness.rs`, `fix_log_line`.
#[allow(dead_code)] // each target uses one of the harness functions
#[path = "../../harness.rs"]
mod harness;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        harness::fix_log_line(data);
    });
}
