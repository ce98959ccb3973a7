//! AFL++ fuzz target: see `fuzz/harness.rs`, `web_config_yaml`.
#[allow(dead_code)] // each target uses one of the harness functions
#[path = "../../harness.rs"]
mod harness;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        harness::web_config_yaml(data);
    });
}
