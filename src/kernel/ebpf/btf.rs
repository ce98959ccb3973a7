//! Reads member offsets of kernel structs from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The program needs three offsets the tracepoint does not publish: where `struct sock` keeps
//! its network namespace and its cookie, and where `struct net` keeps its cookie. They vary
//! with the kernel's configuration, so they are looked up in the running kernel's own type
//! information rather than compiled in. Format: `include/uapi/linux/btf.h` and
//! `Documentation/bpf/btf.rst`: a header, a type section of variable-length records (type ids
//! count from 1), and a string section.

use std::collections::HashMap;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;

// Kinds (`BTF_KIND_*`).
const INT: u32 = 1;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const TYPEDEF: u32 = 8;
const VOLATILE: u32 = 9;
const CONST: u32 = 10;
const RESTRICT: u32 = 11;
const FUNC_PROTO: u32 = 13;
const VAR: u32 = 14;
const DATASEC: u32 = 15;
const DECL_TAG: u32 = 17;
const TYPE_TAG: u32 = 18;
const ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF data: {0}")]
    Malformed(String),
    #[error("the kernel's BTF has no {0}")]
    Missing(String),
}

#[derive(Debug, Clone)]
struct Type {
    name: u32,
    kind: u32,
    kind_flag: bool,
    /// `size` for structs and unions, `type` for typedefs and modifiers.
    size_or_type: u32,
    /// Members of structs and unions: (name, type, bit offset).
    members: Vec<(u32, u32, u32)>,
}

/// The parsed type section (structs, unions and what names them).
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs: HashMap<String, u32>,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .map(|s| u32::from_ne_bytes(s.try_into().unwrap()))
        .ok_or_else(|| BtfError::Malformed(format!("truncated at byte {at}")))
}

impl Btf {
    pub fn parse(b: &[u8]) -> Result<Btf, BtfError> {
        let magic = b
            .get(0..2)
            .map(|s| u16::from_ne_bytes([s[0], s[1]]))
            .ok_or_else(|| BtfError::Malformed("empty".into()))?;
        if magic != MAGIC {
            return Err(BtfError::Malformed(format!("magic {magic:#x}")));
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let (type_off, type_len) = (u32_at(b, 8)? as usize, u32_at(b, 12)? as usize);
        let (str_off, str_len) = (u32_at(b, 16)? as usize, u32_at(b, 20)? as usize);
        let section = |off: usize, len: usize| {
            b.get(hdr_len + off..hdr_len + off + len)
                .ok_or_else(|| BtfError::Malformed("section out of bounds".into()))
        };
        let tb = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?.to_vec();
        // Type id 0 is `void`.
        let mut types = vec![Type {
            name: 0,
            kind: 0,
            kind_flag: false,
            size_or_type: 0,
            members: Vec::new(),
        }];
        let mut at = 0;
        while at < tb.len() {
            let name = u32_at(tb, at)?;
            let info = u32_at(tb, at + 4)?;
            let size_or_type = u32_at(tb, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let mut members = Vec::new();
            let extra = match kind {
                INT | VAR | DECL_TAG => 4,
                ARRAY => 12,
                STRUCT | UNION => {
                    for m in 0..vlen {
                        let p = at + 12 * m;
                        members.push((u32_at(tb, p)?, u32_at(tb, p + 4)?, u32_at(tb, p + 8)?));
                    }
                    12 * vlen
                }
                ENUM | FUNC_PROTO => 8 * vlen,
                DATASEC | ENUM64 => 12 * vlen,
                2 | 7 | TYPEDEF | VOLATILE | CONST | RESTRICT | 12 | 16 | TYPE_TAG => 0,
                k => return Err(BtfError::Malformed(format!("unknown kind {k}"))),
            };
            at += extra;
            types.push(Type {
                name,
                kind,
                kind_flag: info >> 31 == 1,
                size_or_type,
                members,
            });
        }
        let mut btf = Btf {
            types,
            strings,
            structs: HashMap::new(),
        };
        for (id, t) in btf.types.iter().enumerate() {
            if t.kind == STRUCT && t.name != 0 {
                let name = btf.name(t.name).to_string();
                // The first definition wins; later ones with the same name are rare and alike.
                btf.structs.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    /// Skips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize).map(|t| t.kind) {
                Some(TYPEDEF | VOLATILE | CONST | RESTRICT | TYPE_TAG) => {
                    id = self.types[id as usize].size_or_type
                }
                _ => break,
            }
        }
        id
    }

    /// Byte offset and type of member `name` of type `id`, looking inside anonymous structs and
    /// unions.
    fn member(&self, id: u32, name: &str) -> Option<(u32, u32)> {
        let t = self.types.get(self.resolve(id) as usize)?;
        for &(mname, mtype, moff) in &t.members {
            let bits = if t.kind_flag { moff & 0xff_ffff } else { moff };
            if mname == 0 {
                if let Some((off, ty)) = self.member(mtype, name) {
                    return Some((bits / 8 + off, ty));
                }
            } else if self.name(mname) == name {
                return Some((bits / 8, mtype));
            }
        }
        None
    }

    /// Byte offset of a member path in a struct: `offset("sock", &["__sk_common", "skc_net",
    /// "net"])`.
    pub fn offset(&self, strukt: &str, path: &[&str]) -> Result<u32, BtfError> {
        let mut id = *self
            .structs
            .get(strukt)
            .ok_or_else(|| BtfError::Missing(format!("struct {strukt}")))?;
        let mut total = 0;
        for (i, m) in path.iter().enumerate() {
            let (off, ty) = self
                .member(id, m)
                .ok_or_else(|| BtfError::Missing(format!("{strukt}.{}", path[..=i].join("."))))?;
            total += off;
            id = ty;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with `struct inner { int a; int b; }`, `typedef struct inner inner_t` and
    /// `struct outer { long x; union { int y; inner_t z; }; }` (the union anonymous).
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0a\0b\0inner\0inner_t\0outer\0x\0y\0z\0long\0";
        let s = |n: &str| {
            let needle = format!("\0{n}\0");
            (strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap()
                + 1) as u32
        };
        let mut t = Vec::new();
        let mut ty = |name: u32, kind: u32, vlen: u32, size: u32, extra: &[u32]| {
            for v in [name, (kind << 24) | vlen, size].iter().chain(extra) {
                t.extend_from_slice(&v.to_ne_bytes());
            }
        };
        ty(s("int"), INT, 0, 4, &[32]); // 1
        ty(s("inner"), STRUCT, 2, 8, &[s("a"), 1, 0, s("b"), 1, 32]); // 2
        ty(s("inner_t"), TYPEDEF, 0, 2, &[]); // 3
        ty(0, UNION, 2, 8, &[s("y"), 1, 0, s("z"), 3, 0]); // 4
        ty(s("long"), INT, 0, 8, &[64]); // 5
        ty(s("outer"), STRUCT, 2, 16, &[s("x"), 5, 0, 0, 4, 64]); // 6
        let mut b = Vec::new();
        for v in [
            MAGIC as u32 | (1 << 16),
            24,
            0,
            t.len() as u32,
            t.len() as u32,
        ] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(&(strings.len() as u32).to_ne_bytes());
        b.extend_from_slice(&t);
        b.extend_from_slice(strings);
        b
    }

    #[test]
    fn finds_members_through_typedefs_and_anonymous_unions() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.offset("outer", &["x"]), Ok(0));
        assert_eq!(btf.offset("outer", &["y"]), Ok(8));
        assert_eq!(btf.offset("outer", &["z", "b"]), Ok(12));
        assert_eq!(btf.offset("inner", &["b"]), Ok(4));
        assert!(
            matches!(btf.offset("outer", &["z", "c"]), Err(BtfError::Missing(m)) if m == "outer.z.c")
        );
        assert!(btf.offset("nosuch", &["a"]).is_err());
    }

    #[test]
    fn refuses_what_is_not_btf() {
        assert!(Btf::parse(b"").is_err());
        assert!(Btf::parse(&[0u8; 64]).is_err());
        let mut cut = blob();
        cut.truncate(40);
        assert!(Btf::parse(&cut).is_err());
    }
}
