//! Load errors that name what is missing: a capability, a kernel feature, or kernel BTF.

use std::io;

/// A kernel feature the programs need, with the kernel release that brought it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// What it is, e.g. "socket-local storage iterator (iter/bpf_sk_storage_map)".
    pub what: &'static str,
    /// The first kernel release that has it.
    pub since: &'static str,
    /// The BTF type whose presence shows the kernel has it.
    pub btf_type: &'static str,
}

/// Every feature, each found by a type in the kernel's BTF.
pub const FEATURES: &[Feature] = &[
    Feature {
        what: "BTF tracepoint on sock:inet_sock_set_state (tp_btf)",
        since: "5.5",
        btf_type: "btf_trace_inet_sock_set_state",
    },
    Feature {
        what: "TCP socket iterator (iter/tcp)",
        since: "5.9",
        btf_type: "bpf_iter__tcp",
    },
    Feature {
        what: "socket-local storage iterator (iter/bpf_sk_storage_map)",
        since: "5.9",
        btf_type: "bpf_iter__bpf_sk_storage_map",
    },
    Feature {
        what: "tracepoint tcp:tcp_receive_reset (tp_btf)",
        since: "5.5",
        btf_type: "btf_trace_tcp_receive_reset",
    },
    Feature {
        what: "reset reasons on tcp:tcp_send_reset (enum sk_rst_reason)",
        since: "6.10",
        btf_type: "sk_rst_reason",
    },
    Feature {
        what: "tracepoint tcp:tcp_retransmit_skb (tp_btf)",
        since: "5.5",
        btf_type: "btf_trace_tcp_retransmit_skb",
    },
];

/// Why the programs could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused `action` and the calling thread holds neither CAP_BPF nor
    /// CAP_SYS_ADMIN in its effective set.
    #[error("eBPF needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN, or root): {action} was refused: {source}")]
    Permission {
        /// What was refused, e.g. "loading the programs" or a program's attach label.
        action: String,
        /// The error libbpf returned (EPERM or EACCES).
        source: io::Error,
    },
    /// `/sys/kernel/btf/vmlinux` could not be read; the text is libbpf's error.
    #[error("the kernel has no BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF=y), which CO-RE programs need: {0}")]
    NoKernelBtf(String),
    /// The kernel's BTF lacks the type that shows a feature the programs need (the first of
    /// [`FEATURES`] missing).
    #[error("the kernel lacks {} (Linux {} or later; no BTF type `{}`)", .0.what, .0.since, .0.btf_type)]
    MissingFeature(Feature),
    /// libbpf could not fill the `CONFIG_HZ` kconfig extern (it read neither config file), and
    /// the health times are converted from jiffies with it.
    #[error("the kernel's CONFIG_HZ is unknown (neither /proc/config.gz nor /boot/config-$(uname -r) is readable): health times need it")]
    UnknownHz,
    /// Opening or loading the object failed for a reason other than a permission: the text
    /// is libbpf's error and, for a load, its log (the verifier's complaint, if any).
    #[error("the kernel rejected the programs (verifier or load): {0}")]
    Load(String),
    /// The kernel refused to attach a loaded program (with CAP_BPF or CAP_SYS_ADMIN held).
    #[error("attaching {program} failed: {source}")]
    Attach {
        /// The program and its attach point, e.g. "on_state (tp_btf/inet_sock_set_state)".
        program: &'static str,
        /// The error libbpf returned.
        source: io::Error,
    },
    /// The embedded object lacks a map or program this crate uses by name.
    #[error("the object has no {kind} `{name}`: it does not match this crate")]
    ObjectMismatch {
        /// "map" or "program".
        kind: &'static str,
        /// The name looked for.
        name: &'static str,
    },
    /// The target list cannot be put in the kernel maps.
    #[error(transparent)]
    Targets(#[from] crate::targets::TargetError),
    /// The fallback health pass (`live_pass`) made no progress: a run could not write one
    /// record to its emptied output ring, or it took more than 32 runs. The count is the
    /// live-table slot it stopped at.
    #[error("the health pass made no progress at slot {0} of the live table")]
    HealthRingFull(u32),
    /// A system call or libbpf call on a loaded object failed (a map read or write, a ring
    /// buffer, an iterator, BPF_PROG_TEST_RUN, the netns cookie).
    #[error("{action}: {source}")]
    Io {
        /// What was being done, e.g. "writing a port rule".
        action: &'static str,
        /// The error, with its errno where libbpf gave one.
        source: io::Error,
    },
}

/// The first feature `has_type` does not find, as an error.
pub(crate) fn missing_feature(has_type: impl Fn(&str) -> bool) -> Option<Error> {
    FEATURES
        .iter()
        .find(|f| !has_type(f.btf_type))
        .map(|f| Error::MissingFeature(*f))
}

/// A libbpf error as an io::Error (it carries the errno).
pub(crate) fn io_of(e: libbpf_rs::Error) -> io::Error {
    let kind = match e.kind() {
        libbpf_rs::ErrorKind::PermissionDenied => io::ErrorKind::PermissionDenied,
        libbpf_rs::ErrorKind::NotFound => io::ErrorKind::NotFound,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("{e:#}"))
}

/// Does the process hold CAP_BPF (39) or CAP_SYS_ADMIN (21) in its effective set?
fn bpf_capable() -> bool {
    // Capabilities are per thread: the calling thread's, not the process's first thread's.
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    eff & (1 << 39) != 0 || eff & (1 << 21) != 0
}

/// Classifies a failure of `action`: a refusal to a process without CAP_BPF/CAP_SYS_ADMIN is a
/// permission error; with them, it is the kernel's (a program or feature it refuses).
pub(crate) fn refused_or(
    action: &str,
    e: libbpf_rs::Error,
    other: impl FnOnce(io::Error) -> Error,
) -> Error {
    let err = io_of(e);
    let refused = err.kind() == io::ErrorKind::PermissionDenied
        || format!("{err}").contains("Operation not permitted");
    if refused && !bpf_capable() {
        Error::Permission {
            action: action.to_string(),
            source: err,
        }
    } else {
        other(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_feature_is_named_with_its_release() {
        let err = missing_feature(|t| t != "bpf_iter__bpf_sk_storage_map").unwrap();
        assert_eq!(
            err.to_string(),
            "the kernel lacks socket-local storage iterator (iter/bpf_sk_storage_map) (Linux 5.9 or later; no BTF type `bpf_iter__bpf_sk_storage_map`)"
        );
        assert!(missing_feature(|_| true).is_none());
    }
}
