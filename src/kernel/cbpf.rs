//! Classic BPF, as the kernel takes it in `SO_ATTACH_FILTER`: the instruction, the opcodes,
//! an assembler with labels, and an interpreter for tests. One toolkit for the two filters
//! compiled from the targets: the socket-destroy subscription's ([`crate::destroy`]) and the
//! FIX wire source's packet capture (the sidecar's `fix::filter`).
//!
//! # Why an assembler
//! A classic BPF jump goes forward only, by an offset counted in instructions: 8 bits for a
//! conditional jump (`jt`, `jf`), 32 for `ja`. Written by hand, every offset is a count that
//! the next edit breaks. [`Asm`] takes jumps to [`Label`]s, places them, and computes the
//! offsets when the program is finished, refusing what the kernel would refuse
//! (`bpf_check_classic` in net/core/filter.c): a program longer than [`MAX_INSNS`], a
//! conditional jump further than 255 instructions ([`Error`]).
//!
//! # Why an interpreter
//! [`run`] executes the subset the two filters use (loads absolute, indirect and `MSH`, the
//! ancillary loads of `SKF_AD_PROTOCOL`, `SKF_AD_PKTTYPE` and `SKF_AD_IFINDEX`, `and`, the
//! jumps `ja`, `jeq`, `jgt`, `jge`, `jset` against a constant, `ret`) as the kernel does, so
//! that a filter is tested without root against what user space decides; the system tests run
//! the same programs in the kernel.

// Instruction classes, sizes, modes and operations: include/uapi/linux/bpf_common.h.
/// Class: load into the accumulator A.
pub const BPF_LD: u16 = 0x00;
/// Class: load into the index register X.
pub const BPF_LDX: u16 = 0x01;
/// Class: arithmetic on A.
pub const BPF_ALU: u16 = 0x04;
/// Class: jumps.
pub const BPF_JMP: u16 = 0x05;
/// Class: return (the number of bytes to keep; 0 drops).
pub const BPF_RET: u16 = 0x06;
/// Size: a 32-bit word (big-endian in the packet).
pub const BPF_W: u16 = 0x00;
/// Size: a 16-bit half-word (big-endian in the packet).
pub const BPF_H: u16 = 0x08;
/// Size: a byte.
pub const BPF_B: u16 = 0x10;
/// Mode: at the absolute offset `k`.
pub const BPF_ABS: u16 = 0x20;
/// Mode: at the offset `X + k`.
pub const BPF_IND: u16 = 0x40;
/// Mode (`ldx` of a byte only): `X = 4 * (packet[k] & 0xf)`, an IPv4 header's length.
pub const BPF_MSH: u16 = 0xa0;
/// Operand: the constant `k`.
pub const BPF_K: u16 = 0x00;
/// ALU operation: `A &= k`.
pub const BPF_AND: u16 = 0x50;
/// Jump: always, by `k`.
pub const BPF_JA: u16 = 0x00;
/// Jump: `A == k`.
pub const BPF_JEQ: u16 = 0x10;
/// Jump: `A > k`.
pub const BPF_JGT: u16 = 0x20;
/// Jump: `A >= k`.
pub const BPF_JGE: u16 = 0x30;
/// Jump: `A & k != 0`.
pub const BPF_JSET: u16 = 0x40;

// Ancillary data: include/uapi/linux/filter.h.
/// Where absolute loads stop reading the packet and read the kernel's data about it instead
/// (`SKF_AD_OFF`, -0x1000 as an unsigned offset); add one of the `SKF_AD_*` below.
pub const SKF_AD_OFF: u32 = (-0x1000i32) as u32;
/// The packet's protocol (`skb->protocol`, in host order: 0x0800 for IPv4).
pub const SKF_AD_PROTOCOL: u32 = 0;
/// The packet's type (`skb->pkt_type`: `PACKET_HOST`, `PACKET_OUTGOING`, ...).
pub const SKF_AD_PKTTYPE: u32 = 4;
/// The index of the interface the packet came in or goes out on.
pub const SKF_AD_IFINDEX: u32 = 8;

/// Longest program the kernel takes (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

/// One classic BPF instruction, laid out as `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    /// Class, size, mode or operation, or-ed together.
    pub code: u16,
    /// A conditional jump's offset when it is taken (instructions skipped).
    pub jt: u8,
    /// A conditional jump's offset when it is not.
    pub jf: u8,
    /// The constant operand: an offset, a mask, a value compared, a return value.
    pub k: u32,
}

impl Insn {
    /// An instruction that does not jump (the kernel's `BPF_STMT`).
    pub const fn stmt(code: u16, k: u32) -> Insn {
        Insn {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }

    /// A conditional jump with its offsets (the kernel's `BPF_JUMP`).
    pub const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
        Insn { code, jt, jf, k }
    }
}

/// A program the kernel would refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// More instructions than [`MAX_INSNS`] (a few hundred targets).
    #[error("a classic BPF program of {len} instructions, more than the kernel's {MAX_INSNS}")]
    TooLong {
        /// How many the program would take.
        len: usize,
    },
    /// A conditional jump over more than 255 instructions.
    #[error("a classic BPF jump at instruction {at} over {offset} instructions, more than 255")]
    JumpTooFar {
        /// The jump's position in the program.
        at: usize,
        /// How many instructions it would skip.
        offset: usize,
    },
}

/// A place in a program that jumps go to, made by [`Asm::label`] and placed by [`Asm::place`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(usize);

/// Where a conditional jump goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// The next instruction (an offset of 0).
    Next,
    /// A label, placed before or after the jump is written but after the jump.
    Label(Label),
}

impl From<Label> for To {
    fn from(l: Label) -> To {
        To::Label(l)
    }
}

/// Which field of an instruction a label's position goes into.
#[derive(Debug, Clone, Copy)]
enum Field {
    Jt,
    Jf,
    /// `ja`'s `k`.
    K,
}

/// Writes a program with jumps to labels; [`Asm::finish`] computes their offsets.
#[derive(Debug, Default)]
pub struct Asm {
    code: Vec<Insn>,
    /// Each label's position, once placed.
    labels: Vec<Option<usize>>,
    /// (instruction, field, label) to resolve.
    jumps: Vec<(usize, Field, Label)>,
}

impl Asm {
    /// An empty program.
    pub fn new() -> Asm {
        Asm::default()
    }

    /// How many instructions are written so far.
    pub fn len(&self) -> usize {
        self.code.len()
    }

    /// Whether nothing is written yet.
    pub fn is_empty(&self) -> bool {
        self.code.is_empty()
    }

    /// A new label, to jump to and place once.
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Places `l` at the next instruction written.
    ///
    /// # Panics
    /// If `l` is already placed.
    pub fn place(&mut self, l: Label) {
        let at = &mut self.labels[l.0];
        assert!(at.is_none(), "label {} placed twice", l.0);
        *at = Some(self.code.len());
    }

    /// Appends an instruction as it is (its jumps, if any, already counted).
    pub fn push(&mut self, insn: Insn) {
        self.code.push(insn);
    }

    /// `A = packet[at]`, of `size` ([`BPF_W`], [`BPF_H`], [`BPF_B`]); `at` may be ancillary
    /// ([`SKF_AD_OFF`] + ...).
    pub fn load(&mut self, size: u16, at: u32) {
        self.push(Insn::stmt(BPF_LD | size | BPF_ABS, at));
    }

    /// `A = packet[X + at]`, of `size`.
    pub fn load_indirect(&mut self, size: u16, at: u32) {
        self.push(Insn::stmt(BPF_LD | size | BPF_IND, at));
    }

    /// `X = 4 * (packet[at] & 0xf)`: the length of the IPv4 header at `at`.
    pub fn load_x_header_len(&mut self, at: u32) {
        self.push(Insn::stmt(BPF_LDX | BPF_B | BPF_MSH, at));
    }

    /// `A &= mask`.
    pub fn and(&mut self, mask: u32) {
        self.push(Insn::stmt(BPF_ALU | BPF_AND | BPF_K, mask));
    }

    /// Returns `k`: the number of bytes to keep, 0 to drop.
    pub fn ret(&mut self, k: u32) {
        self.push(Insn::stmt(BPF_RET | BPF_K, k));
    }

    /// Compares A with `k` by `cmp` ([`BPF_JEQ`], [`BPF_JGT`], [`BPF_JGE`], [`BPF_JSET`]) and
    /// goes to `yes` when it holds, else to `no`.
    pub fn jump(&mut self, cmp: u16, k: u32, yes: impl Into<To>, no: impl Into<To>) {
        let at = self.code.len();
        for (field, to) in [(Field::Jt, yes.into()), (Field::Jf, no.into())] {
            if let To::Label(l) = to {
                self.jumps.push((at, field, l));
            }
        }
        self.push(Insn::jump(BPF_JMP | cmp | BPF_K, k, 0, 0));
    }

    /// `jump(BPF_JEQ, ...)`.
    pub fn jeq(&mut self, k: u32, yes: impl Into<To>, no: impl Into<To>) {
        self.jump(BPF_JEQ, k, yes, no);
    }

    /// Goes to `to` however far (`ja`, a 32-bit offset).
    pub fn ja(&mut self, to: Label) {
        self.jumps.push((self.code.len(), Field::K, to));
        self.push(Insn::stmt(BPF_JMP | BPF_JA, 0));
    }

    /// The program, its jumps resolved; an error where the kernel would refuse it.
    ///
    /// # Panics
    /// On a jump to a label never placed, placed at or before the jump (classic BPF jumps go
    /// forward), or placed at the end (a jump off the program): mistakes of the compiler that
    /// wrote it, whatever its input.
    pub fn finish(mut self) -> Result<Vec<Insn>, Error> {
        let len = self.code.len();
        if len > MAX_INSNS {
            return Err(Error::TooLong { len });
        }
        for (at, field, l) in self.jumps {
            let to = self.labels[l.0].unwrap_or_else(|| panic!("label {} never placed", l.0));
            assert!(to > at, "the jump at {at} goes back to {to}");
            assert!(to < len, "the jump at {at} leaves the program");
            let offset = to - at - 1;
            let insn = &mut self.code[at];
            match field {
                Field::K => insn.k = offset as u32, // `len` <= MAX_INSNS
                Field::Jt | Field::Jf => {
                    let off = u8::try_from(offset).map_err(|_| Error::JumpTooFar { at, offset })?;
                    match field {
                        Field::Jt => insn.jt = off,
                        _ => insn.jf = off,
                    }
                }
            }
        }
        Ok(self.code)
    }
}

/// What the kernel knows about a packet besides its bytes, for [`run`]'s ancillary loads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ancillary {
    /// `SKF_AD_PROTOCOL` (0x0800 for IPv4).
    pub protocol: u32,
    /// `SKF_AD_PKTTYPE`.
    pub pkttype: u32,
    /// `SKF_AD_IFINDEX`.
    pub ifindex: u32,
}

/// Runs `program` on `packet` as the kernel's classic BPF interpreter would, and returns what
/// it returns. A load beyond the packet ends the program with 0 (drop), as in the kernel.
///
/// # Panics
/// On an instruction outside the subset the module docs name, or a program that runs off its
/// end (the kernel refuses both at attach time).
pub fn run(program: &[Insn], packet: &[u8], ancillary: Ancillary) -> u32 {
    let (mut a, mut x) = (0u32, 0u32);
    let load = |at: u32, size: u16| -> Option<u32> {
        let n = match size {
            BPF_W => 4,
            BPF_H => 2,
            BPF_B => 1,
            other => panic!("unsupported load size {other:#x}"),
        };
        let at = usize::try_from(at).ok()?;
        let bytes = packet.get(at..at.checked_add(n)?)?;
        Some(bytes.iter().fold(0, |v, b| (v << 8) | u32::from(*b)))
    };
    let mut pc = 0;
    loop {
        let i = *program
            .get(pc)
            .unwrap_or_else(|| panic!("the program ran off its end"));
        pc += 1;
        let size = i.code & 0x18;
        match i.code {
            c if c == BPF_LD | size | BPF_ABS && i.k >= SKF_AD_OFF => {
                a = match i.k - SKF_AD_OFF {
                    SKF_AD_PROTOCOL => ancillary.protocol,
                    SKF_AD_PKTTYPE => ancillary.pkttype,
                    SKF_AD_IFINDEX => ancillary.ifindex,
                    other => panic!("unsupported ancillary load {other}"),
                };
            }
            c if c == BPF_LD | size | BPF_ABS => match load(i.k, size) {
                Some(v) => a = v,
                None => return 0,
            },
            c if c == BPF_LD | size | BPF_IND => match load(x.wrapping_add(i.k), size) {
                Some(v) => a = v,
                None => return 0,
            },
            c if c == BPF_LDX | BPF_B | BPF_MSH => match load(i.k, BPF_B) {
                Some(v) => x = 4 * (v & 0xf),
                None => return 0,
            },
            c if c == BPF_ALU | BPF_AND | BPF_K => a &= i.k,
            c if c == BPF_RET | BPF_K => return i.k,
            c if c == BPF_JMP | BPF_JA => pc += i.k as usize,
            c if c & 0x07 == BPF_JMP && c & 0x08 == BPF_K => {
                let taken = match c & 0xf0 {
                    BPF_JEQ => a == i.k,
                    BPF_JGT => a > i.k,
                    BPF_JGE => a >= i.k,
                    BPF_JSET => a & i.k != 0,
                    other => panic!("unsupported jump {other:#x}"),
                };
                pc += usize::from(if taken { i.jt } else { i.jf });
            }
            other => panic!("unsupported instruction {other:#x}"),
        }
    }
}

/// Attaches `program` to the socket `fd` (`SO_ATTACH_FILTER`); the kernel checks it and keeps a
/// copy.
#[cfg(target_os = "linux")]
pub fn attach(fd: std::os::fd::BorrowedFd<'_>, program: &[Insn]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = u16::try_from(program.len())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let prog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut().cast::<libc::sock_filter>(),
    };
    // SAFETY: `prog` points at `program`, whose `Insn` has the layout of `struct sock_filter`
    // (`repr(C)`: u16, u8, u8, u32), for `len` instructions; the kernel only reads it and copies
    // it before the call returns; `fd` is a live descriptor.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_resolve_to_their_labels() {
        let mut a = Asm::new();
        let (far, end) = (a.label(), a.label());
        a.load(BPF_B, 0);
        a.jump(BPF_JGT, 2, end, To::Next);
        a.jeq(1, To::Next, far);
        a.ja(end);
        a.place(far);
        a.ret(7);
        a.place(end);
        a.ret(9);
        let p = a.finish().unwrap();
        assert_eq!(
            p,
            [
                Insn::stmt(BPF_LD | BPF_B | BPF_ABS, 0),
                Insn::jump(BPF_JMP | BPF_JGT | BPF_K, 2, 3, 0),
                Insn::jump(BPF_JMP | BPF_JEQ | BPF_K, 1, 0, 1),
                Insn::stmt(BPF_JMP | BPF_JA, 1),
                Insn::stmt(BPF_RET | BPF_K, 7),
                Insn::stmt(BPF_RET | BPF_K, 9),
            ]
        );
        assert_eq!(run(&p, &[1], Ancillary::default()), 9);
        assert_eq!(run(&p, &[2], Ancillary::default()), 7);
        assert_eq!(run(&p, &[3], Ancillary::default()), 9);
        assert_eq!(
            run(&p, &[], Ancillary::default()),
            0,
            "a load past the end drops"
        );
    }

    #[test]
    fn the_kernels_limits_are_refused() {
        let mut a = Asm::new();
        let l = a.label();
        a.jeq(0, To::Next, l);
        for _ in 0..256 {
            a.ret(0);
        }
        a.place(l);
        a.ret(1);
        assert_eq!(a.finish(), Err(Error::JumpTooFar { at: 0, offset: 256 }));
        let mut a = Asm::new();
        let l = a.label();
        a.ja(l);
        for _ in 0..300 {
            a.ret(0);
        }
        a.place(l);
        a.ret(1);
        assert_eq!(a.finish().unwrap()[0].k, 300, "ja is not bounded by 255");
        let mut a = Asm::new();
        for _ in 0..=MAX_INSNS {
            a.ret(0);
        }
        assert_eq!(a.finish(), Err(Error::TooLong { len: MAX_INSNS + 1 }));
    }

    #[test]
    fn indirect_header_length_and_ancillary_loads() {
        let mut a = Asm::new();
        let (lo, yes) = (a.label(), a.label());
        a.load(BPF_W, SKF_AD_OFF + SKF_AD_IFINDEX);
        a.jeq(3, To::Next, lo);
        a.ret(0);
        a.place(lo);
        a.load_x_header_len(0);
        a.load_indirect(BPF_H, 2);
        a.and(0xff);
        a.jeq(0x34, yes, To::Next);
        a.ret(0);
        a.place(yes);
        a.ret(1);
        let p = a.finish().unwrap();
        // IHL 2 (8 bytes), then 2 bytes on, the half-word 0x1234.
        let packet = [0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34];
        let on = |ifindex| Ancillary {
            ifindex,
            ..Ancillary::default()
        };
        assert_eq!(run(&p, &packet, on(1)), 1);
        assert_eq!(run(&p, &packet, on(3)), 0);
        assert_eq!(run(&p, &packet[..11], on(1)), 0);
    }
}
