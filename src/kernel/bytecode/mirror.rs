//! A mirror of the kernel's side of the filter language, so that the compiler can be checked
//! where no kernel is at hand (unit tests, property tests, the fuzzer): `inet_diag_bc_audit`,
//! what the kernel checks before it runs a program (EINVAL otherwise), and `inet_diag_bc_run`,
//! what it answers for one socket. Both cover the ops [`super::compile`] emits, as
//! `net/ipv4/inet_diag.c` (Linux 6.x) defines them; the live-kernel tests keep the mirror honest.

use std::net::{IpAddr, SocketAddr};

use super::{AF_INET, AF_INET6, BC_D_COND, BC_JMP, BC_S_GE, BC_S_LE, HOSTCOND, OP};

const BC_NOP: u8 = 0;

/// What the kernel knows of a socket when it runs the filter (`struct inet_diag_entry`).
pub struct Entry {
    /// `AF_INET` or `AF_INET6`, as the remote address is.
    pub family: u8,
    /// Remote address; an IPv4 address takes the first 4 bytes.
    pub daddr: [u8; 16],
    /// Local port.
    pub sport: u16,
    /// Remote port.
    pub dport: u16,
}

impl Entry {
    /// What the kernel would know of a socket from `local` to `remote`.
    pub fn new(local: &SocketAddr, remote: &SocketAddr) -> Entry {
        let mut daddr = [0; 16];
        let family = match remote.ip() {
            IpAddr::V4(a) => {
                daddr[..4].copy_from_slice(&a.octets());
                AF_INET
            }
            IpAddr::V6(a) => {
                daddr.copy_from_slice(&a.octets());
                AF_INET6
            }
        };
        Entry {
            family,
            daddr,
            sport: local.port(),
            dport: remote.port(),
        }
    }
}

fn no(bc: &[u8], at: usize) -> usize {
    usize::from(u16::from_ne_bytes([bc[at + 2], bc[at + 3]]))
}

/// `bitstring_match`: the first `bits` bits of `a` and `b` agree.
fn prefix_match(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (bytes, rest) = (usize::from(bits / 8), bits % 8);
    if a[..bytes] != b[..bytes] {
        return false;
    }
    rest == 0 || (a[bytes] ^ b[bytes]) & (0xffu8 << (8 - rest)) == 0
}

/// `inet_diag_bc_run`, for the ops `compile` emits. Run it on programs [`audit`] accepts: it
/// indexes the program as the kernel does, trusting the audit.
pub fn run(bc: &[u8], e: &Entry) -> bool {
    let (mut at, mut len) = (0usize, bc.len() as isize);
    while len > 0 {
        let yes = match bc[at] {
            BC_NOP => true,
            BC_JMP => false,
            BC_S_GE => e.sport as usize >= no(bc, at + OP),
            BC_S_LE => e.sport as usize <= no(bc, at + OP),
            BC_D_COND => {
                let c = &bc[at + OP..];
                let (family, prefix) = (c[0], c[1]);
                let port = i32::from_ne_bytes(c[4..8].try_into().unwrap());
                let addr = &c[8..];
                let mapped = e.daddr[..10] == [0; 10] && e.daddr[10..12] == [0xff, 0xff];
                if port != -1 && port != i32::from(e.dport) {
                    false
                } else if family != e.family {
                    e.family == AF_INET6
                        && family == AF_INET
                        && mapped
                        && prefix_match(&e.daddr[12..], addr, prefix)
                } else {
                    prefix_match(&e.daddr, addr, prefix)
                }
            }
            code => panic!("op {code} is not one compile emits"),
        };
        let step = if yes {
            usize::from(bc[at + 1])
        } else {
            no(bc, at)
        };
        at += step;
        len -= step as isize;
    }
    len == 0
}

/// `valid_cc`: is `cc` bytes before the end an op reached by following `yes` from the start?
fn valid_cc(bc: &[u8], cc: isize) -> bool {
    let (mut at, mut len) = (0usize, bc.len() as isize);
    while len >= 0 {
        if cc > len {
            return false;
        }
        if cc == len {
            return true;
        }
        let yes = bc[at + 1];
        if yes < 4 || yes & 3 != 0 {
            return false;
        }
        at += usize::from(yes);
        len -= isize::from(yes);
    }
    false
}

/// What [`audit`] refuses, with the offset of the op at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The program is shorter than one op.
    #[error("shorter than one op")]
    TooShort,
    /// A host condition's header runs past the end.
    #[error("hostcond at {at} runs past the end")]
    HostcondPastEnd {
        /// Offset of the op.
        at: usize,
    },
    /// A host condition names an address family the kernel does not take.
    #[error("family {family} at {at}")]
    Family {
        /// The family given.
        family: u8,
        /// Offset of the op.
        at: usize,
    },
    /// A host condition's address or prefix does not fit.
    #[error("bad hostcond at {at}")]
    BadHostcond {
        /// Offset of the op.
        at: usize,
    },
    /// An op the kernel does not know (or `compile` never emits).
    #[error("unknown op {code} at {at}")]
    UnknownOp {
        /// The op's code.
        code: u8,
        /// Offset of the op.
        at: usize,
    },
    /// A `no` jump that is too short, too long or not a multiple of 4.
    #[error("no = {no} at {at}")]
    No {
        /// The jump.
        no: isize,
        /// Offset of the op.
        at: usize,
    },
    /// A `no` jump that lands between two ops.
    #[error("no = {no} at {at} lands between ops")]
    NoBetweenOps {
        /// The jump.
        no: isize,
        /// Offset of the op.
        at: usize,
    },
    /// A `yes` jump that is too short, too long or not a multiple of 4.
    #[error("yes = {yes} at {at}")]
    Yes {
        /// The jump.
        yes: isize,
        /// Offset of the op.
        at: usize,
    },
    /// The chain of `yes` jumps runs past the end.
    #[error("the yes chain overruns the end")]
    Overrun,
}

/// `inet_diag_bc_audit`, for the ops `compile` emits: what the kernel checks before it
/// runs a program (it answers EINVAL otherwise).
pub fn audit(bc: &[u8]) -> Result<(), AuditError> {
    if bc.len() < OP {
        return Err(AuditError::TooShort);
    }
    let (mut at, mut len) = (0usize, bc.len() as isize);
    while len > 0 {
        let code = bc[at];
        let operand = match code {
            BC_D_COND => {
                if (len as usize) < OP + HOSTCOND {
                    return Err(AuditError::HostcondPastEnd { at });
                }
                let (family, prefix) = (bc[at + OP], bc[at + OP + 1]);
                let addr_len = match family {
                    0 => 0,
                    AF_INET => 4,
                    AF_INET6 => 16,
                    family => return Err(AuditError::Family { family, at }),
                };
                if (len as usize) < OP + HOSTCOND + addr_len || prefix > 8 * addr_len as u8 {
                    return Err(AuditError::BadHostcond { at });
                }
                HOSTCOND + addr_len
            }
            BC_S_GE | BC_S_LE => OP,
            BC_JMP | BC_NOP => 0,
            code => return Err(AuditError::UnknownOp { code, at }),
        };
        let min_len = (OP + operand) as isize;
        let (yes, no) = (isize::from(bc[at + 1]), no(bc, at) as isize);
        if code != BC_NOP {
            if no < min_len || no > len + 4 || no & 3 != 0 {
                return Err(AuditError::No { no, at });
            }
            if no < len && !valid_cc(bc, len - no) {
                return Err(AuditError::NoBetweenOps { no, at });
            }
        }
        if yes < min_len || yes > len + 4 || yes & 3 != 0 {
            return Err(AuditError::Yes { yes, at });
        }
        at += yes as usize;
        len -= yes;
    }
    if len == 0 {
        Ok(())
    } else {
        Err(AuditError::Overrun)
    }
}
