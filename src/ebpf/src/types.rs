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

/// Health-iterator record (`struct health`): times in jiffies.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RawHealth {
    pub sock_cookie: u64,
    pub established_ns: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub bytes_retrans: u64,
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
    pub lrcvtime: u32,
    pub lsndtime: u32,
    pub rcv_tstamp: u32,
    pub chrono_start: u32,
    pub chrono_stat: [u32; 3],
    pub snd_cwnd: u32,
    pub snd_wnd: u32,
    pub state: u8,
    pub chrono_type: u8,
    pub _pad: [u8; 2],
    pub target: u32,
    pub pid: u32,
    pub sport: u16,
    pub dport: u16,
    pub family: u8,
    pub adopted: u8,
    pub closed: u8,
    pub _pad2: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub _pad3: u32,
}

/// The last health pass's clock (`struct pass_clock`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PassClock {
    pub jiffies: u32,
    pub hz: u32,
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

// Each impl below meets the trait's contract the same way: the struct is `#[repr(C)]`, its
// fields are only integers (`u8` to `u64`, `i32`) and `[u8; N]` arrays, so every bit pattern
// is a valid value (`read`), and its padding is explicit `_pad` fields, so none of its bytes
// is uninitialized (`bytes`): `records_have_no_implicit_padding` checks that the fields tile
// the struct, and `rust_records_match_the_objects_btf` that size and offsets equal the C
// struct's in the object's BTF.

// SAFETY: `#[repr(C)]`; u64, u32, i32 and u8 fields and three `[u8; 16]`; 136 bytes, the
// one-byte `_pad` explicit, no implicit padding (both tests above).
unsafe impl Pod for RawEvent {}
// SAFETY: `#[repr(C)]`; u64, u32, u16 and u8 fields, `[u32; 3]`, two `[u8; 16]` and the
// explicit `_pad`, `_pad2`, `_pad3`; 192 bytes, no implicit padding (both tests above).
unsafe impl Pod for RawHealth {}
// SAFETY: `#[repr(C)]`; two u32, 8 bytes, no padding (both tests above).
unsafe impl Pod for PassClock {}
// SAFETY: `#[repr(C)]`; a u32, a u8, `[u8; 16]` and the explicit `_pad: [u8; 3]` that fills
// the struct to its 4-byte alignment (24 bytes); no implicit padding (both tests above).
unsafe impl Pod for TargetKey {}
// SAFETY: `#[repr(C)]`; two u32, 8 bytes, no padding (both tests above).
unsafe impl Pod for NetRules {}
// SAFETY: `#[repr(C)]`; four u16 (one the explicit `_pad`) then a u32 at offset 8, 12
// bytes, no implicit padding (both tests above).
unsafe impl Pod for PortRule {}
// SAFETY: `#[repr(C)]`; a single u64, 8 bytes, no padding (both tests above).
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

    /// The size of a field's type, the field named by a projection (`|r: &T| &r.field`).
    fn field_size<T, F>(_field: fn(&T) -> &F) -> usize {
        size_of::<F>()
    }

    /// Fails when `$t` has implicit padding: listed in declaration order, `_pad` fields
    /// included, each field must start where the previous one ended (the first at 0), and the
    /// last end at the struct's size. `Pod::bytes` relies on this.
    macro_rules! no_implicit_padding {
        ($t:ty, [$($field:ident),* $(,)?]) => {{
            let mut end = 0;
            $(
                assert_eq!(
                    offset_of!($t, $field),
                    end,
                    "padding before {}.{}",
                    stringify!($t),
                    stringify!($field)
                );
                end += field_size(|r: &$t| &r.$field);
            )*
            assert_eq!(size_of::<$t>(), end, "padding at the end of {}", stringify!($t));
        }};
    }

    /// `RawEvent`'s fields in declaration order, for both checks below (`$m!($pre [fields])`).
    macro_rules! event_fields {
        ($m:ident!($($pre:tt)*)) => {
            $m!($($pre)* [
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
                _pad,
                comm,
                saddr,
                daddr,
            ])
        };
    }

    /// `RawHealth`'s fields in declaration order, for both checks below.
    macro_rules! health_fields {
        ($m:ident!($($pre:tt)*)) => {
            $m!($($pre)* [
                sock_cookie,
                established_ns,
                bytes_acked,
                bytes_received,
                bytes_sent,
                bytes_retrans,
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
                lrcvtime,
                lsndtime,
                rcv_tstamp,
                chrono_start,
                chrono_stat,
                snd_cwnd,
                snd_wnd,
                state,
                chrono_type,
                _pad,
                target,
                pid,
                sport,
                dport,
                family,
                adopted,
                closed,
                _pad2,
                saddr,
                daddr,
                _pad3,
            ])
        };
    }

    #[test]
    fn records_have_no_implicit_padding() {
        event_fields!(no_implicit_padding!(RawEvent,));
        health_fields!(no_implicit_padding!(RawHealth,));
        no_implicit_padding!(TargetKey, [prefixlen, family, addr, _pad]);
        no_implicit_padding!(NetRules, [first, count]);
        no_implicit_padding!(PortRule, [rport, lport_lo, lport_hi, _pad, target]);
        no_implicit_padding!(Settings, [netns_cookie]);
        no_implicit_padding!(PassClock, [jiffies, hz]);
        assert_eq!(
            [
                size_of::<RawEvent>(),
                size_of::<RawHealth>(),
                size_of::<TargetKey>(),
                size_of::<NetRules>(),
                size_of::<PortRule>(),
                size_of::<Settings>(),
                size_of::<PassClock>(),
            ],
            [136, 192, 24, 8, 12, 8, 8],
            "the sizes the SAFETY comments state"
        );
    }

    /// One place for each fact: the header is the source, and this fails when the Rust
    /// mirror drifts from what the committed object was built with.
    #[test]
    fn rust_records_match_the_objects_btf() {
        event_fields!(same_layout!(RawEvent, "event",));
        health_fields!(same_layout!(RawHealth, "health",));
        same_layout!(TargetKey, "target_key", [prefixlen, family, addr]);
        same_layout!(NetRules, "net_rules", [first, count]);
        same_layout!(PortRule, "port_rule", [rport, lport_lo, lport_hi, target]);
        same_layout!(Settings, "settings", [netns_cookie]);
        same_layout!(PassClock, "pass_clock", [jiffies, hz]);
    }
}
