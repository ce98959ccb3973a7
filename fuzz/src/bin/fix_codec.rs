//! AFL++ fuzz target: see `fuzz/harness.rs`, `fix_codec`.
#[allow(dead_code)] // each target uses one of the harness functions
#[path = "../../harness.rs"]
mod harness;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        harness::fix_codec(data);
    });
}
