//! Targets as map entries: the pure translation from a target list to the LPM trie's entries
//! and the port rules beside them (tested without a kernel), and the writing of a new set into
//! the maps without reloading the programs.
//!
//! The trie answers only the longest matching prefix, so each address block's entry carries
//! the rules of every target whose block contains it, in target order: for any peer the
//! longest match then holds all targets that can match it, and the first rule that fits is the
//! first target in configuration order, as `Targets::classify` decides in the sidecar.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::types::{NetRules, PortRule, TargetKey, MAX_RULES, MAX_RULES_PER_NET};

/// One target as the kernel filter sees it. Its index in the list is the target id that
/// events and health records carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    /// Remote address block: its address (host bits are ignored) and prefix length.
    pub addr: IpAddr,
    /// The block's prefix length in bits: at most 32 for IPv4, 128 for IPv6.
    pub prefix_len: u8,
    /// Remote port; `None`: any.
    pub port: Option<u16>,
    /// Local ports, inclusive; `None`: any.
    pub local_ports: Option<(u16, u16)>,
}

/// Why a target list cannot be put in the maps.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// A prefix longer than its address family allows.
    #[error("target {index}: prefix length {prefix_len} is too long for {addr}")]
    Prefix {
        /// The target's index in the list.
        index: usize,
        /// Its address.
        addr: IpAddr,
        /// Its prefix length, over 32 (IPv4) or 128 (IPv6).
        prefix_len: u8,
    },
    /// A local port range whose low end is above its high end.
    #[error("target {index}: local port range {lo}-{hi} is empty")]
    LocalPorts {
        /// The target's index in the list.
        index: usize,
        /// The range's low end.
        lo: u16,
        /// The range's high end, below `lo`.
        hi: u16,
    },
    /// More targets cover one address block than one trie entry's rules can hold
    /// (`MAX_RULES_PER_NET`, 64).
    #[error("{count} targets cover the address block of target {index}; the kernel filter takes at most {MAX_RULES_PER_NET} per block")]
    TooManyPerBlock {
        /// The first target (in list order) whose block this is.
        index: usize,
        /// The targets whose blocks contain it, each one port rule.
        count: usize,
    },
    /// The port rules of all blocks do not fit in one half of the rules array (`MAX_RULES /
    /// 2`, 4,096); the count is the rules needed. A rule is repeated in every block nested in
    /// its target's block.
    #[error("the targets need {0} port rules; the kernel filter holds at most {half}", half = MAX_RULES / 2)]
    TooManyRules(usize),
}

/// The maps' contents for one target list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Compiled {
    /// Trie entries, each with its rules (to be placed at some offset of the rules array).
    pub blocks: Vec<(TargetKey, Vec<PortRule>)>,
}

impl Compiled {
    pub fn rule_count(&self) -> usize {
        self.blocks.iter().map(|(_, r)| r.len()).sum()
    }

    /// The trie values when the rules are laid out from `base` in block order.
    pub fn layout(&self, base: u32) -> Vec<(TargetKey, NetRules)> {
        let mut first = base;
        self.blocks
            .iter()
            .map(|(key, rules)| {
                let value = NetRules {
                    first,
                    count: rules.len() as u32,
                };
                first += rules.len() as u32;
                (*key, value)
            })
            .collect()
    }
}

/// An address block as a trie key: the family byte (4 or 6), then the address with its host
/// bits cleared; the prefix counts the family byte.
fn key_of(index: usize, t: &TargetSpec) -> Result<TargetKey, TargetError> {
    let mut addr = [0u8; 16];
    let (family, bits) = match t.addr {
        IpAddr::V4(a) if t.prefix_len <= 32 => {
            addr[..4].copy_from_slice(&a.octets());
            (4, t.prefix_len as u32)
        }
        IpAddr::V6(a) if t.prefix_len <= 128 => {
            addr = a.octets();
            (6, t.prefix_len as u32)
        }
        _ => {
            return Err(TargetError::Prefix {
                index,
                addr: t.addr,
                prefix_len: t.prefix_len,
            })
        }
    };
    for (i, byte) in addr.iter_mut().enumerate() {
        let keep = (bits as i64 - 8 * i as i64).clamp(0, 8) as u32;
        *byte &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
    Ok(TargetKey {
        prefixlen: 8 + bits,
        family,
        addr,
        _pad: [0; 3],
    })
}

/// Does block `outer` contain block `inner`? (Same family, and the outer prefix's bits agree.)
fn contains(outer: &TargetKey, inner: &TargetKey) -> bool {
    if outer.family != inner.family || outer.prefixlen > inner.prefixlen {
        return false;
    }
    (0..(outer.prefixlen - 8) as usize).all(|bit| {
        let mask = 0x80u8 >> (bit % 8);
        outer.addr[bit / 8] & mask == inner.addr[bit / 8] & mask
    })
}

pub(crate) fn compile(targets: &[TargetSpec]) -> Result<Compiled, TargetError> {
    let mut keyed = Vec::with_capacity(targets.len());
    for (index, t) in targets.iter().enumerate() {
        if let Some((lo, hi)) = t.local_ports {
            if lo > hi {
                return Err(TargetError::LocalPorts { index, lo, hi });
            }
        }
        keyed.push((index, key_of(index, t)?, t));
    }
    // One entry per distinct block, remembering the first target that named it.
    let mut blocks: BTreeMap<TargetKey, usize> = BTreeMap::new();
    for (index, key, _) in &keyed {
        blocks.entry(*key).or_insert(*index);
    }
    let mut out = Vec::with_capacity(blocks.len());
    for (block, named_by) in blocks {
        let rules: Vec<PortRule> = keyed
            .iter()
            .filter(|(_, key, _)| contains(key, &block))
            .map(|(index, _, t)| {
                let (lo, hi) = t.local_ports.unwrap_or((0, u16::MAX));
                PortRule {
                    rport: t.port.unwrap_or(0),
                    lport_lo: lo,
                    lport_hi: hi,
                    _pad: 0,
                    target: *index as u32,
                }
            })
            .collect();
        if rules.len() > MAX_RULES_PER_NET {
            return Err(TargetError::TooManyPerBlock {
                index: named_by,
                count: rules.len(),
            });
        }
        out.push((block, rules));
    }
    let compiled = Compiled { blocks: out };
    if compiled.rule_count() > MAX_RULES / 2 {
        return Err(TargetError::TooManyRules(compiled.rule_count()));
    }
    Ok(compiled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(addr: &str, prefix_len: u8, port: Option<u16>) -> TargetSpec {
        TargetSpec {
            addr: addr.parse().unwrap(),
            prefix_len,
            port,
            local_ports: None,
        }
    }

    #[test]
    fn blocks_carry_their_family_and_are_masked() {
        let c = compile(&[spec("10.1.2.3", 24, Some(9878)), spec("::1", 64, None)]).unwrap();
        let (v4, rules) = &c.blocks[0];
        assert_eq!((v4.family, v4.prefixlen), (4, 8 + 24));
        assert_eq!(&v4.addr[..4], &[10, 1, 2, 0]);
        assert_eq!(rules[0].rport, 9878);
        assert_eq!((rules[0].lport_lo, rules[0].lport_hi), (0, u16::MAX));
        let (v6, _) = &c.blocks[1];
        assert_eq!((v6.family, v6.prefixlen), (6, 8 + 64));
        assert_eq!(v6.addr, [0; 16], "host bits cleared");
    }

    /// An IPv6 block never contains an IPv4 one, even ::/0 (IPv4-mapped peers meet only IPv4
    /// targets, as `Targets::classify` decides).
    #[test]
    fn ipv6_blocks_do_not_cover_ipv4_targets() {
        let c = compile(&[spec("::", 0, Some(1)), spec("10.0.0.1", 32, Some(2))]).unwrap();
        let v4 = c.blocks.iter().find(|(k, _)| k.family == 4).unwrap();
        assert_eq!(v4.1.iter().map(|r| r.target).collect::<Vec<_>>(), vec![1]);
    }

    /// A longer block's entry carries the rules of the shorter blocks that contain it, in
    /// target order, so the longest match alone decides like the sidecar's first match.
    #[test]
    fn nested_blocks_carry_the_outer_rules_in_target_order() {
        let c = compile(&[
            spec("10.0.0.0", 8, Some(1)),
            spec("10.1.0.0", 16, Some(2)),
            spec("192.168.0.1", 32, None),
        ])
        .unwrap();
        let by_len: Vec<(u32, Vec<u32>)> = c
            .blocks
            .iter()
            .map(|(k, r)| (k.prefixlen, r.iter().map(|r| r.target).collect()))
            .collect();
        assert!(by_len.contains(&(8 + 8, vec![0])));
        assert!(by_len.contains(&(8 + 16, vec![0, 1])));
        assert!(by_len.contains(&(8 + 32, vec![2])));
        let layout = c.layout(4096);
        assert_eq!(layout.iter().map(|(_, v)| v.count).sum::<u32>(), 4);
        assert_eq!(layout[0].1.first, 4096);
    }

    #[test]
    fn bad_targets_are_named() {
        assert_eq!(
            compile(&[spec("10.0.0.0", 33, None)]),
            Err(TargetError::Prefix {
                index: 0,
                addr: "10.0.0.0".parse().unwrap(),
                prefix_len: 33
            })
        );
        let mut t = spec("::1", 128, None);
        t.local_ports = Some((5, 4));
        assert_eq!(
            compile(&[t]),
            Err(TargetError::LocalPorts {
                index: 0,
                lo: 5,
                hi: 4
            })
        );
        let many: Vec<_> = (0..65).map(|p| spec("10.0.0.1", 32, Some(p))).collect();
        assert_eq!(
            compile(&many),
            Err(TargetError::TooManyPerBlock {
                index: 0,
                count: 65
            })
        );
    }
}
