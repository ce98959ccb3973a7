//! A small loader: the `bpf(2)` and `perf_event_open(2)` calls the eBPF source needs, and no
//! more (maps, one program, one tracepoint attachment). Every resource is an owned file
//! descriptor, so dropping the source detaches the program and frees the maps.
//!
//! Structures from `include/uapi/linux/bpf.h` and `include/uapi/linux/perf_event.h`; only
//! the leading fields used here are named, the rest are zero (the kernel checks that unused
//! trailing bytes are zero).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::asm::{bytes, Insn};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_PROG_LOAD: libc::c_long = 5;

/// `BPF_MAP_TYPE_PERCPU_ARRAY`.
pub const MAP_PERCPU_ARRAY: u32 = 6;
/// `BPF_MAP_TYPE_LRU_HASH`.
pub const MAP_LRU_HASH: u32 = 9;
/// `BPF_MAP_TYPE_RINGBUF`.
pub const MAP_RINGBUF: u32 = 27;
const PROG_TYPE_TRACEPOINT: u32 = 5;

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// `_IO('$', 0)`.
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
/// `_IOW('$', 8, __u32)`.
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;

/// The license the program declares. The kernel lets only GPL-compatible programs call
/// `bpf_probe_read_kernel` (needed to read the socket's namespace); the generated program is
/// offered under MIT as well as the GPL, so that it may.
const LICENSE: &std::ffi::CStr = c"Dual MIT/GPL";

/// `bpf(cmd, attr, size)`.
fn bpf(cmd: libc::c_long, attr: &mut [u64]) -> io::Result<i64> {
    // SAFETY: attr is a live, zero-initialised buffer of the size passed; the kernel reads and
    // writes no more than that.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Packs two `u32`s into one `u64` word of an attribute, in memory order.
fn pair(a: u32, b: u32) -> u64 {
    let mut w = [0u8; 8];
    w[..4].copy_from_slice(&a.to_ne_bytes());
    w[4..].copy_from_slice(&b.to_ne_bytes());
    u64::from_ne_bytes(w)
}

/// A BPF map.
#[derive(Debug)]
pub struct Map {
    /// The map's descriptor.
    pub fd: OwnedFd,
    /// Size of one value, in bytes.
    pub value_size: usize,
}

impl Map {
    /// `BPF_MAP_CREATE`: `{ map_type, key_size, value_size, max_entries, map_flags, ...,
    /// map_name[16] at byte 28 }`.
    pub fn create(
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        name: &str,
    ) -> io::Result<Map> {
        let mut attr = [0u64; 16];
        attr[0] = pair(map_type, key_size);
        attr[1] = pair(value_size, max_entries);
        let mut raw = attr_bytes(&attr);
        let n = name.len().min(15);
        raw[28..28 + n].copy_from_slice(&name.as_bytes()[..n]);
        let mut attr = from_bytes(&raw);
        let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
        Ok(Map {
            fd: owned(fd),
            value_size: value_size as usize,
        })
    }

    /// The descriptor, as a program's `ld_imm64` map reference takes it.
    pub fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// `BPF_MAP_LOOKUP_ELEM` with a `u32` key; `out` must hold the whole value (for per-CPU
    /// maps, one value per possible CPU, each rounded up to 8 bytes).
    pub fn lookup_u32(&self, key: u32, out: &mut [u8]) -> io::Result<()> {
        let mut attr = [0u64; 4];
        attr[0] = u64::from(self.raw() as u32);
        attr[1] = &key as *const u32 as u64;
        attr[2] = out.as_mut_ptr() as u64;
        bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).map(|_| ())
    }
}

fn attr_bytes(attr: &[u64]) -> Vec<u8> {
    attr.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

fn from_bytes(b: &[u8]) -> Vec<u64> {
    b.chunks(8)
        .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
        .collect()
}

/// Why a program did not load: the error and what the verifier said.
#[derive(Debug, thiserror::Error)]
#[error("BPF_PROG_LOAD: {error}{}", if log.is_empty() { String::new() } else { format!("; the verifier said:\n{log}") })]
pub struct LoadError {
    /// What `bpf(BPF_PROG_LOAD)` returned.
    #[source]
    pub error: io::Error,
    /// The verifier's log (empty when it said nothing).
    pub log: String,
}

/// `BPF_PROG_LOAD` of a tracepoint program: `{ prog_type, insn_cnt, insns, license, log_level,
/// log_size, log_buf, kern_version, prog_flags, prog_name[16] at byte 48 }`. The verifier's log
/// is asked for only after a failure (a second load with the log on), as libbpf does.
pub fn load_tracepoint(insns: &[Insn], name: &str) -> Result<OwnedFd, LoadError> {
    let code = bytes(insns);
    let attempt = |log: &mut [u8], level: u32| {
        let mut attr = [0u64; 16];
        attr[0] = pair(PROG_TYPE_TRACEPOINT, insns.len() as u32);
        attr[1] = code.as_ptr() as u64;
        attr[2] = LICENSE.as_ptr() as u64;
        attr[3] = pair(level, log.len() as u32);
        attr[4] = if log.is_empty() {
            0
        } else {
            log.as_mut_ptr() as u64
        };
        let mut raw = attr_bytes(&attr);
        let n = name.len().min(15);
        raw[48..48 + n].copy_from_slice(&name.as_bytes()[..n]);
        let mut attr = from_bytes(&raw);
        bpf(BPF_PROG_LOAD, &mut attr)
    };
    match attempt(&mut [], 0) {
        Ok(fd) => Ok(owned(fd)),
        Err(error) => {
            let mut log = vec![0u8; 1 << 20];
            let _ = attempt(&mut log, 1);
            let end = log.iter().position(|&c| c == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            // The end of the log says what failed; keep the last 60 lines.
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            Err(LoadError { error, log: tail })
        }
    }
}

/// Attaches `prog` to tracepoint `id`: a perf event on the tracepoint (any process, CPU 0; a
/// tracepoint's BPF programs run on every CPU), given the program and enabled. Dropping the
/// returned descriptor detaches it.
pub fn attach_tracepoint(id: u64, prog: &OwnedFd) -> io::Result<OwnedFd> {
    // struct perf_event_attr, PERF_ATTR_SIZE_VER8: { type u32, size u32, config u64,
    // sample_period u64, ... }.
    let mut attr = [0u64; 17];
    attr[0] = pair(PERF_TYPE_TRACEPOINT, std::mem::size_of_val(&attr) as u32);
    attr[1] = id;
    attr[2] = 1; // sample_period
                 // SAFETY: attr is a zeroed perf_event_attr of the size it declares.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            -1 as libc::pid_t,
            0 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = owned(fd);
    // SAFETY: plain ioctls on a perf event descriptor we own, with an int argument.
    unsafe {
        if libc::ioctl(fd.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, prog.as_raw_fd()) < 0
            || libc::ioctl(fd.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(fd)
}

/// The number of possible CPUs (the kernel sizes per-CPU values by it):
/// `/sys/devices/system/cpu/possible`, such as `0-7` or `0,2-3`.
pub fn possible_cpus() -> io::Result<usize> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    parse_cpu_list(s.trim())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("possible CPUs {s:?}")))
}

fn parse_cpu_list(s: &str) -> Option<usize> {
    let mut max = None;
    for part in s.split(',') {
        let last = part.rsplit('-').next()?.parse::<usize>().ok()?;
        max = max.max(Some(last));
    }
    max.map(|m| m + 1)
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`, Linux 5.14+).
pub fn netns_cookie() -> io::Result<u64> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")
        .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))?;
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are live and sized for SO_NETNS_COOKIE's u64.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Capabilities the eBPF source needs that this process lacks (from `CapEff` in
/// `/proc/self/status`): CAP_BPF and CAP_PERFMON, either of which CAP_SYS_ADMIN stands in for.
pub fn missing_capabilities() -> Vec<&'static str> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    let has = |c: u32| eff & (1 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-7"), Some(8));
        assert_eq!(parse_cpu_list("0,2-3"), Some(4));
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn attributes_are_packed_in_memory_order() {
        let w = pair(27, 0x0102_0304).to_ne_bytes();
        assert_eq!(&w[..4], &27u32.to_ne_bytes());
        assert_eq!(&w[4..], &0x0102_0304u32.to_ne_bytes());
    }
}
