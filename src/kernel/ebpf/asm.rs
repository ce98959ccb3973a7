//! A minimal eBPF assembler: the instructions `program` emits, with forward labels.
//!
//! Encoding from the kernel's `include/uapi/linux/bpf.h` and
//! `Documentation/bpf/standardization/instruction-set.rst`: one 8-byte instruction is
//! `{ code: u8, dst_reg: 4 bits, src_reg: 4 bits, off: i16, imm: i32 }`; a 64-bit immediate load
//! takes two. Jump offsets count instructions, from the one after the jump.

/// One encoded instruction, as the kernel reads it (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    pub code: u8,
    /// `dst_reg` in the low nibble, `src_reg` in the high one.
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    pub fn dst(&self) -> u8 {
        self.regs & 0xf
    }
    pub fn src(&self) -> u8 {
        self.regs >> 4
    }
}

// Instruction classes.
pub const LD: u8 = 0x00;
pub const LDX: u8 = 0x01;
pub const ST: u8 = 0x02;
pub const STX: u8 = 0x03;
pub const ALU: u8 = 0x04;
pub const JMP: u8 = 0x05;
pub const JMP32: u8 = 0x06;
pub const ALU64: u8 = 0x07;
// Sizes and modes of loads and stores.
pub const W: u8 = 0x00;
pub const H: u8 = 0x08;
pub const B: u8 = 0x10;
pub const DW: u8 = 0x18;
pub const IMM: u8 = 0x00;
pub const MEM: u8 = 0x60;
// Operand source.
pub const K: u8 = 0x00;
pub const X: u8 = 0x08;
// ALU operations.
pub const ADD: u8 = 0x00;
pub const AND: u8 = 0x50;
pub const MOV: u8 = 0xb0;
// Jump operations.
pub const JA: u8 = 0x00;
pub const JEQ: u8 = 0x10;
pub const JGT: u8 = 0x20;
pub const JNE: u8 = 0x50;
pub const JLT: u8 = 0xa0;
pub const CALL: u8 = 0x80;
pub const EXIT: u8 = 0x90;
/// `src_reg` of a 64-bit immediate load whose value is a map's file descriptor.
pub const PSEUDO_MAP_FD: u8 = 1;

/// Registers. R0 holds return values, R1-R5 arguments (clobbered by calls), R6-R9 survive
/// calls, R10 is the read-only frame pointer.
pub type Reg = u8;
pub const R0: Reg = 0;
pub const R1: Reg = 1;
pub const R2: Reg = 2;
pub const R3: Reg = 3;
pub const R4: Reg = 4;
#[allow(dead_code)] // the register set is written out whole; the program uses no fifth argument
pub const R5: Reg = 5;
pub const R6: Reg = 6;
pub const R7: Reg = 7;
pub const R8: Reg = 8;
pub const R9: Reg = 9;
pub const R10: Reg = 10;

/// A place in the program a jump can target, bound once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label(usize);

/// Builds a program; jumps to labels are patched when the program is finished.
#[derive(Debug, Default)]
pub struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
}

impl Asm {
    pub fn new() -> Asm {
        Asm::default()
    }

    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Binds `l` to the next instruction.
    pub fn bind(&mut self, l: Label) {
        assert!(self.labels[l.0].is_none(), "label bound twice");
        self.labels[l.0] = Some(self.insns.len());
    }

    fn raw(&mut self, code: u8, dst: Reg, src: Reg, off: i16, imm: i32) {
        self.insns.push(Insn {
            code,
            regs: (src << 4) | dst,
            off,
            imm,
        });
    }

    /// `dst = imm` (64-bit, sign-extended).
    pub fn mov_imm(&mut self, dst: Reg, imm: i32) {
        self.raw(ALU64 | MOV | K, dst, 0, 0, imm);
    }
    /// `dst = src`.
    pub fn mov(&mut self, dst: Reg, src: Reg) {
        self.raw(ALU64 | MOV | X, dst, src, 0, 0);
    }
    /// `dst += imm`.
    pub fn add_imm(&mut self, dst: Reg, imm: i32) {
        self.raw(ALU64 | ADD | K, dst, 0, 0, imm);
    }
    /// `dst = (u32)dst & imm`: a 32-bit AND, which clears the upper half.
    pub fn and32_imm(&mut self, dst: Reg, imm: u32) {
        self.raw(ALU | AND | K, dst, 0, 0, imm as i32);
    }
    /// `dst = imm64` (two instructions).
    pub fn ld_imm64(&mut self, dst: Reg, imm: u64) {
        self.raw(LD | DW | IMM, dst, 0, 0, imm as u32 as i32);
        self.raw(0, 0, 0, 0, (imm >> 32) as u32 as i32);
    }
    /// `dst = map` (a map file descriptor the kernel replaces with the map).
    pub fn ld_map_fd(&mut self, dst: Reg, fd: i32) {
        self.raw(LD | DW | IMM, dst, PSEUDO_MAP_FD, 0, fd);
        self.raw(0, 0, 0, 0, 0);
    }
    /// `dst = *(size *)(src + off)`, zero-extended.
    pub fn ldx(&mut self, size: u8, dst: Reg, src: Reg, off: i16) {
        self.raw(LDX | MEM | size, dst, src, off, 0);
    }
    /// `*(size *)(dst + off) = src`.
    pub fn stx(&mut self, size: u8, dst: Reg, off: i16, src: Reg) {
        self.raw(STX | MEM | size, dst, src, off, 0);
    }
    /// `*(size *)(dst + off) = imm`.
    pub fn st_imm(&mut self, size: u8, dst: Reg, off: i16, imm: i32) {
        self.raw(ST | MEM | size, dst, 0, off, imm);
    }
    pub fn call(&mut self, helper: i32) {
        self.raw(JMP | CALL, 0, 0, 0, helper);
    }
    pub fn exit(&mut self) {
        self.raw(JMP | EXIT, 0, 0, 0, 0);
    }
    pub fn ja(&mut self, to: Label) {
        self.fixups.push((self.insns.len(), to));
        self.raw(JMP | JA, 0, 0, 0, 0);
    }
    /// `if dst OP imm goto to` (64-bit compare).
    pub fn jmp_imm(&mut self, op: u8, dst: Reg, imm: i32, to: Label) {
        self.fixups.push((self.insns.len(), to));
        self.raw(JMP | op | K, dst, 0, 0, imm);
    }
    /// `if dst OP src goto to` (64-bit compare).
    pub fn jmp_reg(&mut self, op: u8, dst: Reg, src: Reg, to: Label) {
        self.fixups.push((self.insns.len(), to));
        self.raw(JMP | op | X, dst, src, 0, 0);
    }
    /// `if (u32)dst OP imm goto to` (32-bit compare).
    pub fn jmp32_imm(&mut self, op: u8, dst: Reg, imm: u32, to: Label) {
        self.fixups.push((self.insns.len(), to));
        self.raw(JMP32 | op | K, dst, 0, 0, imm as i32);
    }

    /// The finished program. Panics on an unbound label or a jump out of `i16` range: both are
    /// bugs of the code generator, not of its input (`program` bounds the number of targets).
    pub fn finish(mut self) -> Vec<Insn> {
        for &(at, l) in &self.fixups {
            let to = self.labels[l.0].expect("jump to an unbound label");
            let off = to as i64 - (at as i64 + 1);
            self.insns[at].off = i16::try_from(off).expect("jump within i16 range");
        }
        self.insns
    }
}

/// The program as the bytes `BPF_PROG_LOAD` takes.
pub fn bytes(insns: &[Insn]) -> Vec<u8> {
    let mut out = Vec::with_capacity(insns.len() * 8);
    for i in insns {
        out.push(i.code);
        out.push(i.regs);
        out.extend_from_slice(&i.off.to_ne_bytes());
        out.extend_from_slice(&i.imm.to_ne_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_the_kernel_headers() {
        let mut a = Asm::new();
        let end = a.label();
        a.mov(R6, R1); // BPF_MOV64_REG(R6, R1) = bf 16 00 00 00000000
        a.ldx(H, R1, R6, 30); // BPF_LDX_MEM(H, R1, R6, 30) = 69 61 1e 00
        a.jmp_imm(JNE, R1, 6, end); // 55 01 off imm=6
        a.ld_imm64(R2, 0x1122_3344_5566_7788);
        a.bind(end);
        a.mov_imm(R0, 0);
        a.exit();
        let p = a.finish();
        assert_eq!(bytes(&p[..1]), [0xbf, 0x16, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(&p[1..2]), [0x69, 0x61, 30, 0, 0, 0, 0, 0]);
        // The jump skips the two halves of the 64-bit load.
        assert_eq!(p[2].code, 0x55);
        assert_eq!(p[2].off, 2);
        assert_eq!(p[3].code, 0x18);
        assert_eq!(p[3].imm as u32, 0x5566_7788);
        assert_eq!(p[4].imm as u32, 0x1122_3344);
        assert_eq!(bytes(&p[6..7]), [0x95, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    #[should_panic(expected = "unbound")]
    fn an_unbound_label_is_a_bug() {
        let mut a = Asm::new();
        let l = a.label();
        a.ja(l);
        a.finish();
    }
}
