//! The records shared with the kernel programs, mirrored from `bpf/fix_monitor.h`.
//!
//! Each struct is `#[repr(C)]` with the header's field order and explicit padding; the tests
//! compare every size and offset with the BTF of the committed object, so the two cannot drift
//! apart silently.

/// Ring-buffer record (`struct event`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RawEvent {
    pub ts_ns: u64,
    pub sock_cookie: u64,
    pub netns_cookie: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub pid: u32,
    pub target: u32,
    pub total_retrans: u32,
    pub retrans_events: u32,
    pub rst_reason: u32,
    pub sk_err: i32,
    pub srtt_us: u32,
    pub sport: u16,
    pub dport: u16,
    pub kind: u8,
    pub oldstate: u8,
    pub newstate: u8,
    pub family: u8,
    pub closer: u8,
    pub rst: u8,
    pub adopted: u8,
    pub _pad: u8,
    pub comm: [u8; 16],
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// Health-iterator record (`struct health`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RawHealth {
    pub sock_cookie: u64,
    pub established_ns: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub bytes_retrans: u64,
    pub busy_us: u64,
    pub rwnd_limited_us: u64,
    pub sndbuf_limited_us: u64,
    pub delivery_rate: u64,
    pub srtt_us: u32,
    pub rttvar_us: u32,
    pub min_rtt_us: u32,
    pub total_retrans: u32,
    pub retrans_events: u32,
    pub lost: u32,
    pub dsack_dups: u32,
    pub unacked: u32,
    pub send_queue_bytes: u32,
    pub notsent_bytes: u32,
    pub rcv_queue: u32,
    pub last_data_recv_ms: u32,
    pub last_data_sent_ms: u32,
    pub last_ack_recv_ms: u32,
    pub snd_cwnd: u32,
    pub snd_wnd: u32,
    pub target: u32,
    pub pid: u32,
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub state: u8,
    pub adopted: u8,
    pub closed: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// LPM-trie key (`struct target_key`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TargetKey {
    pub prefixlen: u32,
    pub family: u8,
    pub addr: [u8; 16],
    pub _pad: [u8; 3],
}

/// LPM-trie value (`struct net_rules`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NetRules {
    pub first: u32,
    pub count: u32,
}

/// Rules-array value (`struct port_rule`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PortRule {
    pub rport: u16,
    pub lport_lo: u16,
    pub lport_hi: u16,
    pub _pad: u16,
    pub target: u32,
}

/// `struct settings`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Settings {
    pub netns_cookie: u64,
}

/// `MAX_RULES_PER_NET` in the header.
pub(crate) const MAX_RULES_PER_NET: usize = 64;
/// `MAX_RULES` in the header; each generation of rules uses one half.
pub(crate) const MAX_RULES: usize = 8192;

/// Plain-old-data records: integers and byte arrays only, so every bit pattern is a value.
///
/// # Safety
/// Implement only for `#[repr(C)]` structs made of integers and integer arrays.
pub(crate) unsafe trait Pod: Copy + Sized {
    /// Reads a record from the front of `bytes`, `None` when too short.
    fn read(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < std::mem::size_of::<Self>() {
            return None;
        }
        // SAFETY: the length is checked above, the read is unaligned, and Self is plain data
        // (the trait's contract), so any bytes form a valid value.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }

    /// The record's bytes, as the kernel expects them in a map key or value.
    fn bytes(&self) -> &[u8] {
        // SAFETY: Self is plain data without implicit padding (the trait's contract and the
        // layout tests), so all size_of::<Self>() bytes are initialized.
        unsafe {
            std::slice::from_raw_parts(
                (self as *const Self).cast::<u8>(),
                std::mem::size_of::<Self>(),
            )
        }
    }
}

// SAFETY: all five are #[repr(C)] structs of integers and integer arrays with explicit padding.
unsafe impl Pod for RawEvent {}
unsafe impl Pod for RawHealth {}
unsafe impl Pod for TargetKey {}
unsafe impl Pod for NetRules {}
unsafe impl Pod for PortRule {}
unsafe impl Pod for Settings {}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use libbpf_rs::btf::types::{MemberAttr, Struct};
    use libbpf_rs::btf::{Btf, HasSize};

    use super::*;

    /// The size of the C struct `name` in the committed object's BTF, and each of `fields` with
    /// its byte offset there.
    fn c_layout(name: &str, fields: &[&str]) -> (usize, Vec<usize>) {
        let btf = Btf::from_raw("fix_monitor.bpf.o", crate::OBJECT)
            .expect("object BTF")
            .expect("BTF");
        let st: Struct<'_> = btf
            .type_by_name(name)
            .unwrap_or_else(|| panic!("struct {name} in BTF"));
        let offsets = fields
            .iter()
            .map(|field| {
                let member = st
                    .iter()
                    .find(|m| m.name.and_then(|n| n.to_str()) == Some(field))
                    .unwrap_or_else(|| panic!("{name}.{field} in BTF"));
                match member.attr {
                    MemberAttr::Normal { offset } => offset as usize / 8,
                    MemberAttr::BitField { .. } => panic!("{name}.{field} is a bitfield"),
                }
            })
            .collect();
        (st.size(), offsets)
    }

    macro_rules! same_layout {
        ($rust:ty, $c:literal, [$($field:ident),* $(,)?]) => {{
            let (size, offsets) = c_layout($c, &[$(stringify!($field)),*]);
            assert_eq!(size, size_of::<$rust>(), "size of struct {}", $c);
            assert_eq!(offsets, vec![$(offset_of!($rust, $field)),*], "offsets of struct {}", $c);
        }};
    }

    /// One place for each fact: the header is the source, and this fails when the Rust
    /// mirror drifts from what the committed object was built with.
    #[test]
    fn rust_records_match_the_objects_btf() {
        same_layout!(
            RawEvent,
            "event",
            [
                ts_ns,
                sock_cookie,
                netns_cookie,
                bytes_acked,
                bytes_received,
                bytes_sent,
                pid,
                target,
                total_retrans,
                retrans_events,
                rst_reason,
                sk_err,
                srtt_us,
                sport,
                dport,
                kind,
                oldstate,
                newstate,
                family,
                closer,
                rst,
                adopted,
                comm,
                saddr,
                daddr,
            ]
        );
        same_layout!(
            RawHealth,
            "health",
            [
                sock_cookie,
                established_ns,
                bytes_acked,
                bytes_received,
                bytes_sent,
                bytes_retrans,
                busy_us,
                rwnd_limited_us,
                sndbuf_limited_us,
                delivery_rate,
                srtt_us,
                rttvar_us,
                min_rtt_us,
                total_retrans,
                retrans_events,
                lost,
                dsack_dups,
                unacked,
                send_queue_bytes,
                notsent_bytes,
                rcv_queue,
                last_data_recv_ms,
                last_data_sent_ms,
                last_ack_recv_ms,
                snd_cwnd,
                snd_wnd,
                target,
                pid,
                sport,
                dport,
                family,
                state,
                adopted,
                closed,
                saddr,
                daddr,
            ]
        );
        same_layout!(TargetKey, "target_key", [prefixlen, family, addr]);
        same_layout!(NetRules, "net_rules", [first, count]);
        same_layout!(PortRule, "port_rule", [rport, lport_lo, lport_hi, target]);
        same_layout!(Settings, "settings", [netns_cookie]);
    }
}
