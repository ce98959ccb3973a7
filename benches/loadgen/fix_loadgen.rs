//! `fix-loadgen`: the benchmark's load generator (Linux, loopback only).
//!
//! Opens M "matching" TCP connections (127.0.0.1:PORT -> 127.0.0.2:7001 by default, one local
//! port each from a fixed range, the shape of a FIX gateway's sessions to one downstream) and N
//! "unrelated" ones (127.0.1.x -> 127.0.0.9:7100+k), optionally closes and reopens the matching
//! ones at a set rate, writes its ground truth as one JSON line (stdout and `--ready-file`), and
//! holds until SIGINT/SIGTERM/SIGHUP.
//!
//! Every connection has both ends on this host, so it puts two ESTABLISHED sockets in the
//! kernel's table (client and accepted side) and costs one file descriptor in each of two
//! processes. A process may hold at most `RLIMIT_NOFILE` descriptors (20,000 on the benchmark
//! host), so the work is spread over child processes (this same binary, re-executed with the
//! hidden `listen` / `connect` subcommands): per chunk of at most `--per-process` connections,
//! one listener process that accepts and one client process that connects. Clients bind explicit
//! local addresses and ports (never the ephemeral range) and connect in batches; the listener
//! writes one byte on each accepted socket and the client reads it, so a batch never outruns the
//! accept queue (no SYN drops, no 1 s retransmits): 100,000 connections come up in seconds.
//!
//! Every socket has `SO_LINGER` 0, so a close (churn, exit, even SIGKILL) sends RST and leaves no
//! TIME_WAIT behind to skew the next measurement. Children exit when their stdin (a pipe from the
//! parent) closes, so they cannot outlive the parent, whatever kills it.
//!
//! ```text
//! fix-loadgen --matching 1000 --unrelated 50000 [--churn 10] [--ready-file /tmp/truth.json]
//! ```

#[cfg(target_os = "linux")]
mod imp;

fn main() {
    #[cfg(target_os = "linux")]
    std::process::exit(imp::main());
    #[cfg(not(target_os = "linux"))]
    {
        eprintln!("fix-loadgen: Linux only");
        std::process::exit(1);
    }
}
