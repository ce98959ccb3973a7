//! The tracepoint's id and record layout, from tracefs.
//!
//! `events/sock/inet_sock_set_state/format` publishes each field's offset and size
//! (`include/trace/events/sock.h` defines them; the `common_*` header comes first). The program
//! is generated with the offsets read here, and refuses to load if a field it needs is missing
//! or has another size, so a kernel that changes the record cannot be misread.

use std::path::{Path, PathBuf};

use super::program::Layout;

pub const EVENT: &str = "events/sock/inet_sock_set_state";

/// Where tracefs is usually mounted: its own mount point, then the old debugfs location.
pub const MOUNTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("tracefs is not mounted (looked for {EVENT} under {}); mount it with `mount -t tracefs nodev /sys/kernel/tracing`", MOUNTS.join(" and "))]
    NotMounted,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the tracepoint's format has {0}")]
    Format(String),
}

/// The directory of the tracepoint. Where tracefs is not mounted at all (an empty
/// `/sys/kernel/tracing`, as in fresh containers), mounts it there; that takes
/// CAP_SYS_ADMIN, and failing to is [`TracefsError::NotMounted`].
pub fn event_dir() -> Result<PathBuf, TracefsError> {
    for m in MOUNTS {
        let dir = Path::new(m).join(EVENT);
        if dir.join("format").exists() {
            return Ok(dir);
        }
    }
    let root = Path::new(MOUNTS[0]);
    let empty = std::fs::read_dir(root).is_ok_and(|mut d| d.next().is_none());
    if empty && mount_tracefs(root) {
        let dir = root.join(EVENT);
        if dir.join("format").exists() {
            return Ok(dir);
        }
    }
    Err(TracefsError::NotMounted)
}

fn mount_tracefs(at: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(target) = std::ffi::CString::new(at.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        tracing::info!(path = %at.display(), "mounted tracefs for the eBPF source");
    }
    rc == 0
}

fn read(path: PathBuf) -> Result<String, TracefsError> {
    std::fs::read_to_string(&path).map_err(|source| TracefsError::Io { path, source })
}

/// The tracepoint's id, for `perf_event_open`.
pub fn id(dir: &Path) -> Result<u64, TracefsError> {
    let s = read(dir.join("id"))?;
    s.trim()
        .parse()
        .map_err(|_| TracefsError::Format(format!("an id file that reads {s:?}")))
}

/// Reads the record layout; the kernel-struct offsets of [`Layout`] are left at 0 for the
/// caller (they come from BTF).
pub fn layout(dir: &Path) -> Result<Layout, TracefsError> {
    parse_format(&read(dir.join("format"))?)
}

/// Parses a `format` file: tab-separated lines like
/// `field:__u16 sport; offset:24; size:2; signed:0;`.
pub fn parse_format(text: &str) -> Result<Layout, TracefsError> {
    let mut fields = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("field:") else {
            continue;
        };
        let parts: Vec<&str> = rest.split(';').map(str::trim).collect();
        let decl = parts[0];
        let name = decl
            .rsplit(|c: char| c.is_whitespace() || c == '*')
            .next()
            .unwrap_or("");
        let name = name.split('[').next().unwrap_or(name);
        let num = |key: &str| {
            parts
                .iter()
                .find_map(|p| p.strip_prefix(key))
                .and_then(|v| v.parse::<i64>().ok())
        };
        if let (Some(offset), Some(size)) = (num("offset:"), num("size:")) {
            fields.push((name.to_string(), offset, size));
        }
    }
    let field = |name: &str, size: i64| -> Result<i16, TracefsError> {
        let &(_, offset, got) = fields
            .iter()
            .find(|(n, _, _)| n == name)
            .ok_or_else(|| TracefsError::Format(format!("no field {name}")))?;
        if got != size {
            return Err(TracefsError::Format(format!(
                "field {name} of {got} bytes, expected {size}"
            )));
        }
        // Tracepoint programs may only read the record at aligned offsets past the header
        // (`tp_prog_is_valid_access`); addresses are read as 32-bit words.
        let align = if size == 16 { 4 } else { size };
        if offset < 8 || offset % align != 0 || offset + size > 4096 {
            return Err(TracefsError::Format(format!(
                "field {name} at offset {offset}, which the program cannot read"
            )));
        }
        Ok(offset as i16)
    };
    Ok(Layout {
        skaddr: field("skaddr", 8)?,
        oldstate: field("oldstate", 4)?,
        newstate: field("newstate", 4)?,
        sport: field("sport", 2)?,
        dport: field("dport", 2)?,
        family: field("family", 2)?,
        protocol: field("protocol", 2)?,
        saddr_v6: field("saddr_v6", 16)?,
        daddr_v6: field("daddr_v6", 16)?,
        sk_net: 0,
        sk_cookie: 0,
        net_cookie: 0,
        tp_bytes_sent: 0,
        tp_bytes_received: 0,
        tp_total_retrans: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The format file of Linux 6.18, verbatim (print fmt shortened).
    pub const FORMAT_6_18: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s protocol=%s\", REC->family, REC->protocol
";

    #[test]
    fn reads_the_offsets_of_linux_6_18() {
        let l = parse_format(FORMAT_6_18).unwrap();
        assert_eq!(
            (l.skaddr, l.oldstate, l.newstate, l.sport, l.dport),
            (8, 16, 20, 24, 26)
        );
        assert_eq!(
            (l.family, l.protocol, l.saddr_v6, l.daddr_v6),
            (28, 30, 40, 56)
        );
    }

    #[test]
    fn a_changed_record_is_refused() {
        let missing = FORMAT_6_18.replace("dport", "dst_port");
        assert!(parse_format(&missing)
            .unwrap_err()
            .to_string()
            .contains("no field dport"));
        let resized = FORMAT_6_18.replace(
            "oldstate;\toffset:16;\tsize:4",
            "oldstate;\toffset:16;\tsize:8",
        );
        assert!(parse_format(&resized)
            .unwrap_err()
            .to_string()
            .contains("oldstate of 8 bytes"));
        let unaligned = FORMAT_6_18.replace("skaddr;\toffset:8;", "skaddr;\toffset:12;");
        assert!(parse_format(&unaligned)
            .unwrap_err()
            .to_string()
            .contains("cannot read"));
    }
}
