//! Second-tier tests: the real binary and the real kernel where it takes root, network
//! namespaces or external tools (promtool, Prometheus, VictoriaMetrics, tmux, nftables).
//! Built only with `--features system-tests`, which `scripts/test.sh` (CI) always enables; a
//! missing tool fails the test, it is never skipped.
//!
//! The shared pieces (running the binary, ground-truth connections, the Prometheus text parser)
//! are the first tier's harness, included by path.

#[path = "../integration/harness.rs"]
mod harness;
#[path = "../integration/netns.rs"]
mod netns;

mod ebpf;
