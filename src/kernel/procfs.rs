//! The `/proc/net/tcp` and `/proc/net/tcp6` source: the fallback when netlink `sock_diag` is
//! unavailable (some sandboxes forbid `AF_NETLINK`, while `/proc` is nearly always readable).
//!
//! I/O and parsing are apart. [`ProcfsSource`] only reads the tables, from a procfs root that
//! defaults to `/proc` but can be pointed elsewhere (node_exporter's `--path.procfs` idea: a
//! host's `/proc` mounted into a container, or a fixture directory in tests), a chunk at a time
//! into one buffer it keeps across polls, so memory does not grow with the host's socket count. [`rows`] and [`parse_table`] are pure functions of the table text.
//!
//! The text is parsed here rather than by `procfs::net::TcpNetEntries`: that parser allocates a
//! `String` per line, a `Vec` per address and a vector of every TCP socket on the host on each
//! poll, where a [`Source`] promises that a steady state allocates nothing; and it rejects the
//! whole table when one row carries a state number it does not know. The procfs crate serves as
//! the reference instead: the tests check that both parsers read the fixtures and the live
//! tables identically.
//!
//! Row format (`tcp4_seq_show`/`tcp6_seq_show` in the kernel), whitespace separated, after one
//! header line:
//! ```text
//!   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ...
//!    5: 0100007F:9C41 0300007F:2694 01 00000000:00000000 00:00000000 00000000     0        0 13546 ...
//! ```
//! An address is `%08X` per 32-bit word of the address *as stored in memory* (network byte
//! order), printed as a host-order number, so the words' bytes come back with `to_ne_bytes`;
//! IPv6 is four such words. Ports are printed after `ntohs`, so they are plain hex numbers.

use fix_monitor_core::{Capabilities, Confirmation, EventFeed, HealthFeed, ProcessFeed};
use std::fs::File;
use std::io::{self, Read};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::{Path, PathBuf};

use super::{SocketEntry, Source, SourceError, SourceKind, TcpState};
use fix_monitor_core::target::Targets;

/// Where procfs is mounted unless told otherwise.
pub const DEFAULT_ROOT: &str = "/proc";

/// Reads the TCP tables under a procfs root and keeps the ESTABLISHED sockets of the targets.
#[derive(Debug)]
pub struct ProcfsSource {
    targets: Targets,
    tables: Vec<Table>,
    /// The raw text of the table being parsed; it keeps the capacity of the largest table seen,
    /// so that polls after the first do not allocate.
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Table {
    path: PathBuf,
    /// `net/tcp6` does not exist when the kernel runs with IPv6 disabled (`ipv6.disable=1`);
    /// then no IPv6 socket exists either, so its absence means an empty table, not an error.
    may_be_absent: bool,
}

impl ProcfsSource {
    /// No health and no events; process and confirmation by inode (the id it lists).
    pub const CAPABILITIES: Capabilities = Capabilities {
        events: EventFeed::None,
        health: HealthFeed::None,
        process: ProcessFeed::ByInode,
        closed_by: false,
        confirm: Confirmation::ByInode,
        reconciles: false,
    };

    /// Reads the tables under `/proc`.
    pub fn new(targets: &Targets) -> Result<Self, SourceError> {
        Self::with_root(targets, DEFAULT_ROOT)
    }

    /// Reads the tables under `root` instead of `/proc`. Fails when `root/net/tcp` cannot be
    /// opened: it exists wherever procfs is mounted (IPv4 cannot be compiled out), so its
    /// absence means a wrong root, which should stop the program rather than report nothing.
    pub fn with_root(targets: &Targets, root: impl AsRef<Path>) -> Result<Self, SourceError> {
        let root = root.as_ref();
        let tcp = root.join("net/tcp");
        File::open(&tcp).map_err(|e| open_error(&tcp, e))?;

        // Skip a table no target can match a row of: on a busy host that halves the work.
        let mut tables = Vec::with_capacity(2);
        if targets.wants_ipv4() {
            tables.push(Table {
                path: tcp,
                may_be_absent: false,
            });
        }
        if targets.wants_ipv6() {
            tables.push(Table {
                path: root.join("net/tcp6"),
                may_be_absent: true,
            });
        }
        Ok(ProcfsSource {
            targets: targets.clone(),
            tables,
            buf: Vec::new(),
        })
    }
}

impl Source for ProcfsSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Procfs
    }

    fn capabilities(&self) -> Capabilities {
        ProcfsSource::CAPABILITIES
    }

    /// The id is the inode here.
    fn inode(&self, id: u64) -> Option<u64> {
        Some(id).filter(|i| *i != 0)
    }

    fn poll(&mut self, out: &mut Vec<SocketEntry>) -> Result<(), SourceError> {
        out.clear();
        for table in &self.tables {
            let mut file = match File::open(&table.path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound && table.may_be_absent => continue,
                Err(e) => return Err(open_error(&table.path, e)),
            };
            // Parsed a chunk at a time, so memory stays at one chunk however many sockets the
            // host has (a whole table of 200k sockets is 30 MiB of text). Rows a concurrent
            // change makes the kernel repeat are removed by `dedup`.
            stream_lines(&mut file, &mut self.buf, |lines| {
                parse_table(lines, &self.targets, out)
            })
            .map_err(|e| match e {
                StreamError::Read(e) => read_error(&table.path, e),
                StreamError::Parse(e) => e,
            })?;
        }
        dedup(out);
        Ok(())
    }
}

/// How much of a table is read at once.
const CHUNK: usize = 256 * 1024;

enum StreamError {
    Read(io::Error),
    Parse(SourceError),
}

/// Reads `r` into `buf` a chunk at a time and hands `each` every run of complete lines (the
/// last line may lack its newline). `buf` is reused; it grows only for a line longer than a
/// chunk.
fn stream_lines(
    r: &mut impl Read,
    buf: &mut Vec<u8>,
    mut each: impl FnMut(&[u8]) -> Result<(), SourceError>,
) -> Result<(), StreamError> {
    if buf.len() < CHUNK {
        buf.resize(CHUNK, 0);
    }
    let mut filled = 0;
    loop {
        let n = match r.read(&mut buf[filled..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StreamError::Read(e)),
        };
        if n == 0 {
            return if filled > 0 {
                each(&buf[..filled]).map_err(StreamError::Parse)
            } else {
                Ok(())
            };
        }
        filled += n;
        match buf[..filled].iter().rposition(|&b| b == b'\n') {
            Some(last) => {
                each(&buf[..=last]).map_err(StreamError::Parse)?;
                buf.copy_within(last + 1..filled, 0);
                filled -= last + 1;
            }
            None if filled == buf.len() => {
                let grown = buf.len() * 2;
                buf.resize(grown, 0);
            }
            None => {}
        }
    }
}

/// The kernel writes these tables a chunk per `read`, resuming each chunk by position in a
/// hash bucket; a socket inserted or removed meanwhile can shift a row into the next chunk,
/// which then repeats it. Every socket is reported once.
fn dedup(out: &mut Vec<SocketEntry>) {
    out.sort_unstable_by_key(|e| (e.id, e.local, e.remote));
    out.dedup();
}

/// Appends to `out` the ESTABLISHED rows of a `/proc/net/tcp` or `/proc/net/tcp6` text that
/// some target claims. Any row that does not parse fails the whole table: a format this code
/// does not know must be reported, not read as "no connections".
pub fn parse_table(
    text: &[u8],
    targets: &Targets,
    out: &mut Vec<SocketEntry>,
) -> Result<(), SourceError> {
    for row in rows(text) {
        let row = row?;
        if row.state == TcpState::Established && targets.classify(&row.local, &row.remote).is_some()
        {
            out.push(row);
        }
    }
    Ok(())
}

/// Every row of a `/proc/net/tcp` or `/proc/net/tcp6` text, in any state, with its inode as
/// `id` (0 for sockets no file refers to: TIME_WAIT, and connections not yet `accept`ed).
/// Header and blank lines are skipped.
pub fn rows(text: &[u8]) -> impl Iterator<Item = Result<SocketEntry, SourceError>> + '_ {
    text.split(|&b| b == b'\n')
        .filter(|line| {
            let first = fields(line).next();
            // Blank lines, and the header, whose first column is titled "sl".
            first.is_some() && first != Some(b"sl".as_slice())
        })
        .map(parse_row)
}

fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(u8::is_ascii_whitespace)
        .filter(|f| !f.is_empty())
}

fn parse_row(line: &[u8]) -> Result<SocketEntry, SourceError> {
    let bad = |why: &str| SourceError::Parse {
        what: "/proc/net/tcp row",
        detail: format!("{why} in {:?}", String::from_utf8_lossy(line).trim()),
    };
    let mut f = fields(line).skip(1); // the slot number, "5:"
    let local = f.next().ok_or_else(|| bad("no local address"))?;
    let remote = f.next().ok_or_else(|| bad("no remote address"))?;
    let state = f.next().ok_or_else(|| bad("no state"))?;
    // Then tx_queue:rx_queue, tr:tm->when, retrnsmt, uid, timeout, and the inode.
    let inode = f.nth(5).ok_or_else(|| bad("no inode"))?;
    Ok(SocketEntry {
        local: address(local).ok_or_else(|| bad("bad local address"))?,
        remote: address(remote).ok_or_else(|| bad("bad remote address"))?,
        state: hex(state)
            .and_then(|n| u8::try_from(n).ok())
            .map(TcpState::from_linux)
            .ok_or_else(|| bad("bad state"))?,
        id: std::str::from_utf8(inode)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad inode"))?,
        health: None,
    })
}

/// `0100007F:9C41` is 127.0.0.1:40001 on a little-endian host; IPv6 has 32 hex digits.
fn address(field: &[u8]) -> Option<SocketAddr> {
    let colon = field.iter().position(|&b| b == b':')?;
    let (ip, port) = (&field[..colon], &field[colon + 1..]);
    let port = u16::try_from(hex(port)?).ok()?;
    match ip.len() {
        8 => {
            let ip = Ipv4Addr::from(hex(ip)?.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        32 => {
            let mut bytes = [0u8; 16];
            for (word, digits) in bytes.chunks_exact_mut(4).zip(ip.chunks_exact(8)) {
                word.copy_from_slice(&hex(digits)?.to_ne_bytes());
            }
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(bytes),
                port,
                0,
                0,
            )))
        }
        _ => None,
    }
}

/// 1 to 8 hex digits, without the sign `u32::from_str_radix` would accept.
fn hex(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    digits
        .iter()
        .try_fold(0u32, |n, &d| Some(n << 4 | char::from(d).to_digit(16)?))
}

// SourceError::Io carries a static context, and io::Error does not name the file; put the path
// in the message, since with a configurable root "which file" is the first question.
fn open_error(path: &Path, e: io::Error) -> SourceError {
    SourceError::Io {
        context: "opening a procfs TCP table",
        source: io::Error::new(e.kind(), format!("{}: {e}", path.display())),
    }
}

fn read_error(path: &Path, e: io::Error) -> SourceError {
    SourceError::Io {
        context: "reading a procfs TCP table",
        source: io::Error::new(e.kind(), format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fix_monitor_core::target::{PortRange, Target};
    use ipnet::IpNet;
    use std::collections::BTreeSet;
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    const FIXTURE_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/proc");

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURE_ROOT}/net/{name}")).unwrap()
    }

    /// A reader that hands out at most `step` bytes per read, as the kernel does a page.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn chunked_reading_splits_only_between_lines_and_loses_nothing() {
        let mut text = Vec::new();
        // Enough copies of the fixture to span several chunks, and a final line without '\n'.
        while text.len() < 3 * CHUNK {
            text.extend_from_slice(&fixture("tcp"));
        }
        text.extend_from_slice(b"   99: 0100007F:1388 0200007F:2328 01 00000000:00000000 00:00000000 00000000     0        0 4242 1");
        let all: Vec<SocketEntry> = rows(&text).map(Result::unwrap).collect();
        for step in [7, 4096, CHUNK + 1] {
            let mut buf = Vec::new();
            let mut got = Vec::new();
            stream_lines(&mut Trickle { data: &text, step }, &mut buf, |lines| {
                got.extend(rows(lines).map(Result::unwrap));
                Ok(())
            })
            .unwrap_or_else(|_| panic!("step {step}"));
            assert_eq!(got, all, "step {step}");
            assert_eq!(buf.len(), CHUNK, "the buffer stays one chunk");
        }
        assert_eq!(all.last().unwrap().id, 4242);
    }

    #[test]
    fn a_line_longer_than_a_chunk_grows_the_buffer_once() {
        let mut text = vec![b' '; CHUNK + 10];
        text.extend_from_slice(b"\nsecond\n");
        let mut seen = Vec::new();
        let mut buf = Vec::new();
        stream_lines(
            &mut Trickle {
                data: &text,
                step: 1000,
            },
            &mut buf,
            |lines| {
                seen.push(lines.len());
                Ok(())
            },
        )
        .unwrap_or_else(|_| panic!("read failed"));
        assert_eq!(seen.iter().sum::<usize>(), text.len());
        assert_eq!(buf.len(), 2 * CHUNK);
    }

    fn target(net: &str, port: Option<u16>, local: Option<u16>) -> Target {
        let net: IpNet = net.parse().unwrap();
        Target {
            name: Target::default_name(&net, port),
            net,
            port,
            local_ports: local.map(|p| PortRange { start: p, end: p }),
            heartbeat: None,
            stale_after: None,
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn est(local: &str, remote: &str, id: u64) -> SocketEntry {
        SocketEntry {
            local: sa(local),
            remote: sa(remote),
            state: TcpState::Established,
            id,
            health: None,
        }
    }

    fn sorted(mut v: Vec<SocketEntry>) -> Vec<SocketEntry> {
        dedup(&mut v);
        v
    }

    // The fixtures were captured on Linux x86_64 (little-endian) while holding these sockets:
    //   listeners 127.0.0.3:9876, [::1]:9877 (v6only), [::]:9878 (dual-stack), 127.0.0.4:9879
    //   40001, 40002 -> 127.0.0.3:9876            ESTABLISHED (AF_INET)
    //   [::1]:40003 -> [::1]:9877                 ESTABLISHED
    //   [::ffff:127.0.0.1]:40004 -> [::ffff:127.0.0.3]:9876  ESTABLISHED (AF_INET6 client)
    //   127.0.0.1:40005 -> 127.0.0.1:9878         ESTABLISHED, accepted by the [::] listener
    //   127.0.0.1:40006 -> 127.0.0.4:9879         ESTABLISHED, unrelated
    //   127.0.0.1:40007 -> 127.0.0.3:9876, [::1]:40009 -> [::1]:9877   TIME_WAIT (closed)
    //   127.0.0.1:40008 -> 127.0.0.3:9876         CLOSE_WAIT (the server closed its end)
    // plus the server end of each. 9876 = 0x2694, 40001 = 0x9C41.

    #[test]
    fn fixture_rows_decode_as_read_by_hand() {
        let tcp: Vec<_> = rows(&fixture("tcp")).collect::<Result<_, _>>().unwrap();
        assert_eq!(tcp.len(), 13);
        // "1: 0300007F:2694 00000000:0000 0A ... 13542"
        assert_eq!(
            tcp[1],
            SocketEntry {
                local: sa("127.0.0.3:9876"),
                remote: sa("0.0.0.0:0"),
                state: TcpState::Listen,
                id: 13542,
                health: None,
            }
        );
        // "5: 0100007F:9C41 0300007F:2694 01 ... 13546"
        assert_eq!(tcp[4], est("127.0.0.1:40001", "127.0.0.3:9876", 13546));
        // "7: 0100007F:9C47 0300007F:2694 06 ... 0": TIME_WAIT rows have no inode.
        assert_eq!(tcp[6].state, TcpState::TimeWait);
        assert_eq!((tcp[6].local.port(), tcp[6].id), (40007, 0));
        // "8: 0100007F:9C48 0300007F:2694 08 ... 13562"
        assert_eq!(tcp[7].state, TcpState::CloseWait);
        // "15: 0300007F:2694 0100007F:9C48 05 ... 0"
        assert_eq!(tcp[10].state, TcpState::FinWait2);

        let tcp6: Vec<_> = rows(&fixture("tcp6")).collect::<Result<_, _>>().unwrap();
        assert_eq!(tcp6.len(), 7);
        // "1: 00000000000000000000000001000000:2695 ...:0000 0A ... 13543"
        assert_eq!(
            (tcp6[1].local, tcp6[1].state),
            (sa("[::1]:9877"), TcpState::Listen)
        );
        // "2: 0000000000000000FFFF00000100007F:9C44 0000000000000000FFFF00000300007F:2694 01"
        assert_eq!(
            tcp6[2],
            est("[::ffff:127.0.0.1]:40004", "[::ffff:127.0.0.3]:9876", 13552)
        );
        // "5: 00000000000000000000000001000000:9C43 00000000000000000000000001000000:2695 01"
        assert_eq!(tcp6[5], est("[::1]:40003", "[::1]:9877", 13550));
        assert_eq!(tcp6[6].state, TcpState::TimeWait);
    }

    #[test]
    fn fixture_rows_agree_with_the_procfs_crate() {
        for name in ["tcp", "tcp6"] {
            let text = fixture(name);
            assert_eq!(crate_rows(&text), our_rows(&text), "{name}");
        }
    }

    type Row = (SocketAddr, SocketAddr, u8, u64);

    fn crate_rows(text: &[u8]) -> Vec<Row> {
        use procfs::FromReadSI;
        let entries =
            procfs::net::TcpNetEntries::from_read(text, procfs::current_system_info()).unwrap();
        entries
            .0
            .into_iter()
            .map(|e| (e.local_address, e.remote_address, e.state.to_u8(), e.inode))
            .collect()
    }

    fn our_rows(text: &[u8]) -> Vec<Row> {
        rows(text)
            .map(|r| {
                let r = r.unwrap();
                let state = (1..=12)
                    .find(|&n| TcpState::from_linux(n) == r.state)
                    .unwrap();
                (r.local, r.remote, state, r.id)
            })
            .collect()
    }

    /// The targets the fixtures were captured for.
    fn fixture_targets() -> Targets {
        Targets::new(vec![
            target("127.0.0.3/32", Some(9876), None),
            target("::1/128", Some(9877), None),
            // Inbound sessions on the dual-stack listener from IPv4 peers.
            target("127.0.0.0/8", None, Some(9878)),
        ])
    }

    #[test]
    fn parse_keeps_only_established_rows_some_target_claims() {
        let targets = fixture_targets();
        let mut out = Vec::new();
        parse_table(&fixture("tcp"), &targets, &mut out).unwrap();
        // Not 40006 (unrelated), 40007 (TIME_WAIT), 40008 (CLOSE_WAIT), the LISTEN rows, the
        // server ends (remote port is the client's), nor 40005's client end (local port).
        assert_eq!(
            out,
            [
                est("127.0.0.1:40001", "127.0.0.3:9876", 13546),
                est("127.0.0.1:40002", "127.0.0.3:9876", 13548),
            ]
        );

        out.clear();
        parse_table(&fixture("tcp6"), &targets, &mut out).unwrap();
        assert_eq!(
            out,
            [
                // The AF_INET6 client of an IPv4 target, through its mapped address.
                est("[::ffff:127.0.0.1]:40004", "[::ffff:127.0.0.3]:9876", 13552),
                // The dual-stack listener's end of 40005, shown with mapped addresses.
                est("[::ffff:127.0.0.1]:9878", "[::ffff:127.0.0.1]:40005", 13555),
                est("[::1]:40003", "[::1]:9877", 13550),
            ]
        );
    }

    #[test]
    fn parse_appends_and_keeps_nothing_without_targets() {
        let mut out = vec![est("10.0.0.1:1", "10.0.0.2:2", 7)];
        parse_table(&fixture("tcp"), &Targets::default(), &mut out).unwrap();
        assert_eq!(out, [est("10.0.0.1:1", "10.0.0.2:2", 7)]);
    }

    #[test]
    fn headers_and_blank_lines_are_not_rows() {
        let header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when \
                      retrnsmt   uid  timeout inode\n";
        assert_eq!(rows(b"").count(), 0);
        assert_eq!(rows(header.as_bytes()).count(), 0);
        let text = format!(
            "{header}\n   0: 0100007F:9C41 0300007F:2694 01 00000000:00000000 00:00000000 \
             00000000     0        0 42 2 0000000000000000 20 0 0 10 -1\n\n"
        );
        let got: Vec<_> = rows(text.as_bytes()).map(Result::unwrap).collect();
        assert_eq!(got, [est("127.0.0.1:40001", "127.0.0.3:9876", 42)]);
    }

    #[test]
    fn malformed_rows_fail_the_table() {
        let good = "0: 0100007F:9C41 0300007F:2694 01 0:0 0:0 0 0 0 13546";
        assert!(parse_row(good.as_bytes()).is_ok());
        for (bad, why) in [
            (
                "0: 0100007F:9C41 0300007F:2694 01 0:0 0:0 0 0 0",
                "no inode",
            ),
            ("0: 0100007F:9C41", "no remote address"),
            (
                "0: 0100007F9C41 0300007F:2694 01 0:0 0:0 0 0 0 1",
                "bad local",
            ),
            (
                "0: 100007F:9C41 0300007F:2694 01 0:0 0:0 0 0 0 1",
                "bad local",
            ),
            (
                "0: 0100007F:19C41 0300007F:2694 01 0:0 0:0 0 0 0 1",
                "bad local",
            ),
            (
                "0: 0100007F:9C41 0300007G:2694 01 0:0 0:0 0 0 0 1",
                "bad remote",
            ),
            (
                "0: 0100007F:9C41 0300007F:+694 01 0:0 0:0 0 0 0 1",
                "bad remote",
            ),
            (
                "0: 0100007F:9C41 0300007F:2694 101 0:0 0:0 0 0 0 1",
                "bad state",
            ),
            (
                "0: 0100007F:9C41 0300007F:2694 01 0:0 0:0 0 0 0 x1",
                "bad inode",
            ),
        ] {
            match parse_row(bad.as_bytes()) {
                Err(SourceError::Parse { detail, .. }) => {
                    assert!(detail.starts_with(why), "{bad:?}: {detail}")
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
        let text = format!("{good}\n{}\n", "0: 0100007F:9C41 zz 01 0:0 0:0 0 0 0 1");
        let mut out = Vec::new();
        let err = parse_table(text.as_bytes(), &fixture_targets(), &mut out).unwrap_err();
        assert!(err.to_string().contains("bad remote address"), "{err}");
    }

    #[test]
    fn source_reads_both_tables_under_a_fixture_root() {
        let mut source = ProcfsSource::with_root(&fixture_targets(), FIXTURE_ROOT).unwrap();
        assert_eq!(source.kind(), SourceKind::Procfs);
        let mut out = vec![est("10.0.0.1:1", "10.0.0.2:2", 7)]; // stale: must be replaced
        source.poll(&mut out).unwrap();
        let ids: BTreeSet<u64> = out.iter().map(|e| e.id).collect();
        assert_eq!(ids, BTreeSet::from([13546, 13548, 13550, 13552, 13555]));
    }

    #[test]
    fn polls_reuse_their_buffers() {
        let mut source = ProcfsSource::with_root(&fixture_targets(), FIXTURE_ROOT).unwrap();
        let mut out = Vec::new();
        source.poll(&mut out).unwrap();
        let first = out.clone();
        let (buf, entries) = (source.buf.as_ptr(), out.as_ptr());
        for _ in 0..3 {
            source.poll(&mut out).unwrap();
            assert_eq!(out, first);
            assert_eq!((source.buf.as_ptr(), out.as_ptr()), (buf, entries));
        }
    }

    #[test]
    fn a_table_no_target_needs_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("net")).unwrap();
        std::fs::write(dir.path().join("net/tcp"), "not a table\n").unwrap();
        std::fs::write(dir.path().join("net/tcp6"), fixture("tcp6")).unwrap();

        let v6_only = Targets::new(vec![target("::1/128", Some(9877), None)]);
        let mut source = ProcfsSource::with_root(&v6_only, dir.path()).unwrap();
        let mut out = Vec::new();
        source.poll(&mut out).unwrap();
        assert_eq!(out, [est("[::1]:40003", "[::1]:9877", 13550)]);

        // An IPv4 target needs net/tcp, which is garbage here.
        let mut source = ProcfsSource::with_root(&fixture_targets(), dir.path()).unwrap();
        let err = source.poll(&mut out).unwrap_err();
        assert!(matches!(err, SourceError::Parse { .. }), "{err}");
    }

    #[test]
    fn a_missing_tcp6_table_means_ipv6_is_off_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("net")).unwrap();
        std::fs::write(dir.path().join("net/tcp"), fixture("tcp")).unwrap();
        let mut source = ProcfsSource::with_root(&fixture_targets(), dir.path()).unwrap();
        let mut out = Vec::new();
        source.poll(&mut out).unwrap();
        let ids: Vec<u64> = out.iter().map(|e| e.id).collect();
        assert_eq!(ids, [13546, 13548]);
    }

    #[test]
    fn a_wrong_root_fails_at_once_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = ProcfsSource::with_root(&fixture_targets(), dir.path()).unwrap_err();
        assert!(
            matches!(&err, SourceError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
        );
        let shown = err.to_string();
        assert!(
            shown.contains(&format!("{}/net/tcp", dir.path().display())),
            "{shown}"
        );
    }

    #[test]
    fn the_same_socket_twice_in_one_dump_is_reported_once() {
        let row = "0: 0100007F:9C41 0300007F:2694 01 0:0 0:0 0 0 0 13546\n";
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("net")).unwrap();
        let other = "1: 0100007F:9C42 0300007F:2694 01 0:0 0:0 0 0 0 13548\n";
        std::fs::write(dir.path().join("net/tcp"), format!("{row}{other}{row}")).unwrap();
        let mut source = ProcfsSource::with_root(&fixture_targets(), dir.path()).unwrap();
        let mut out = Vec::new();
        source.poll(&mut out).unwrap();
        let ids: Vec<u64> = out.iter().map(|e| e.id).collect();
        assert_eq!(ids, [13546, 13548]);
    }

    // ---- Live: real sockets on loopback, read back from this machine's /proc. ----

    /// The inode of a socket, as /proc/self/fd shows it: `socket:[12345]`.
    fn inode(s: &impl std::os::fd::AsRawFd) -> u64 {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", s.as_raw_fd())).unwrap();
        let link = link.to_str().unwrap();
        link.strip_prefix("socket:[")
            .and_then(|l| l.strip_suffix(']'))
            .unwrap()
            .parse()
            .unwrap()
    }

    fn entry(s: &TcpStream) -> SocketEntry {
        SocketEntry {
            local: s.local_addr().unwrap(),
            remote: s.peer_addr().unwrap(),
            state: TcpState::Established,
            id: inode(s),
            health: None,
        }
    }

    /// Connects to `listener` through `to` and accepts: (client end, server end).
    fn connect(listener: &TcpListener, to: SocketAddr) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(to).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    /// Polls until the source reports exactly `want` (closing is asynchronous on the peer's
    /// side), failing with the last answer after two seconds.
    fn assert_reports(source: &mut ProcfsSource, want: &[&TcpStream]) {
        let want = sorted(want.iter().map(|s| entry(s)).collect());
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut out = Vec::new();
        loop {
            source.poll(&mut out).unwrap();
            if out == want || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(out, want);
    }

    #[test]
    fn live_ipv4_ipv6_and_mapped_clients_are_reported_exactly() {
        let l4 = TcpListener::bind("127.0.0.3:0").unwrap();
        let l6 = TcpListener::bind("[::1]:0").unwrap();
        let unrelated = TcpListener::bind("127.0.0.3:0").unwrap();
        let (a4, b4) = (l4.local_addr().unwrap(), l6.local_addr().unwrap());

        let (c1, _s1) = connect(&l4, a4);
        let (c2, _s2) = connect(&l4, a4);
        let (c3, _s3) = connect(&l6, b4);
        // An AF_INET6 socket to an IPv4 peer: it lives in tcp6 with ::ffff:127.0.0.3.
        let mapped = SocketAddr::new("::ffff:127.0.0.3".parse().unwrap(), a4.port());
        let (c4, _s4) = connect(&l4, mapped);
        assert!(c4.local_addr().unwrap().is_ipv6());
        let (_u, _us) = connect(&unrelated, unrelated.local_addr().unwrap());

        let targets = Targets::new(vec![
            target("127.0.0.3/32", Some(a4.port()), None),
            target("::1/128", Some(b4.port()), None),
        ]);
        let mut source = ProcfsSource::new(&targets).unwrap();
        assert_reports(&mut source, &[&c1, &c2, &c3, &c4]);

        // A client that closes leaves ESTABLISHED at once (FIN_WAIT1).
        let gone = [entry(&c1), entry(&c3)];
        drop(c1);
        drop(c3);
        assert_reports(&mut source, &[&c2, &c4]);
        let mut out = Vec::new();
        source.poll(&mut out).unwrap();
        assert!(gone.iter().all(|g| !out.contains(g)));
    }

    /// Clients bound to `ip:base`, `ip:base+1`, ... before connecting to `listener`, as a
    /// gateway binds its FIX sessions to configured local ports: (client end, server end) and
    /// `base`. `base` is picked below the default ephemeral range and moved on when some port
    /// is taken; `ip` is unique to the calling test.
    fn bound_clients(
        ip: &str,
        n: u16,
        listener: &TcpListener,
    ) -> (Vec<(TcpStream, TcpStream)>, u16) {
        use socket2::{Domain, Socket, Type};
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let to = listener.local_addr().unwrap();
        let mut base = 20_000 + (std::process::id() % 5_000) as u16;
        'retry: loop {
            base += n;
            assert!(base < 30_000, "no free run of {n} local ports");
            let mut sockets = Vec::new();
            for port in base..base + n {
                let s = Socket::new(Domain::for_address(to), Type::STREAM, None).unwrap();
                // Lets a rerun bind a port whose previous connection is still in TIME_WAIT.
                s.set_reuse_address(true).unwrap();
                if s.bind(&SocketAddr::new(ip, port).into()).is_err() {
                    continue 'retry;
                }
                sockets.push(s);
            }
            let pairs = sockets
                .into_iter()
                .map(|s| {
                    s.connect(&to.into()).unwrap();
                    (TcpStream::from(s), listener.accept().unwrap().0)
                })
                .collect();
            return (pairs, base);
        }
    }

    #[test]
    fn live_local_port_ranges_and_peer_close() {
        let l = TcpListener::bind("127.0.0.5:0").unwrap();
        let a = l.local_addr().unwrap();
        let (mut pairs, base) = bound_clients("127.0.0.5", 3, &l);
        let (c3, _s3) = pairs.pop().unwrap();
        let (c2, _s2) = pairs.pop().unwrap();
        let (c1, s1) = pairs.pop().unwrap();
        assert_eq!(c1.local_addr().unwrap(), SocketAddr::new(a.ip(), base));

        // Local ports base..=base+1: c1 and c2, not c3 (base+2), nor the server ends.
        let mut t = target("127.0.0.5/32", Some(a.port()), None);
        t.local_ports = Some(PortRange {
            start: base,
            end: base + 1,
        });
        let mut source = ProcfsSource::new(&Targets::new(vec![t])).unwrap();
        assert_reports(&mut source, &[&c1, &c2]);

        // The server closes its end: c1 goes CLOSE_WAIT, which is not an active connection.
        drop(s1);
        assert_reports(&mut source, &[&c2]);
        drop(c2);
        drop(c3);
        assert_reports(&mut source, &[]);
    }

    #[test]
    fn live_dual_stack_listener_sees_ipv4_peers_as_mapped() {
        // std does not set IPV6_V6ONLY, so with the default net.ipv6.bindv6only=0 this accepts
        // IPv4 too, and its accepted IPv4 connections live in tcp6 as ::ffff:a.b.c.d.
        let l = TcpListener::bind("[::]:0").unwrap();
        let p = l.local_addr().unwrap().port();
        let (c1, s1) = connect(&l, SocketAddr::new("127.0.0.6".parse().unwrap(), p));
        let (_c2, s2) = connect(&l, SocketAddr::new("127.0.0.6".parse().unwrap(), p));
        let (_c3, s3) = connect(&l, SocketAddr::new("::1".parse().unwrap(), p));
        assert_eq!(
            s1.local_addr().unwrap(),
            sa(&format!("[::ffff:127.0.0.6]:{p}"))
        );

        // Inbound sessions on local port p, from IPv4 peers, then from IPv6 peers. The client
        // ends (local port is theirs) and the IPv6 peer do not match the first target.
        let targets = Targets::new(vec![
            target("127.0.0.0/8", None, Some(p)),
            target("::1/128", None, Some(p)),
        ]);
        let mut source = ProcfsSource::new(&targets).unwrap();
        assert_reports(&mut source, &[&s1, &s2, &s3]);
        let mut out = Vec::new();
        source.poll(&mut out).unwrap();
        let firsts = out
            .iter()
            .filter(|e| targets.classify(&e.local, &e.remote) == Some(0))
            .count();
        assert_eq!(firsts, 2);

        drop(c1); // the peer closes: s1 goes CLOSE_WAIT
        assert_reports(&mut source, &[&s2, &s3]);
    }

    #[test]
    fn live_tables_agree_with_the_procfs_crate() {
        // Hold a few sockets of each kind so the tables are not trivially empty.
        let l4 = TcpListener::bind("127.0.0.7:0").unwrap();
        let l6 = TcpListener::bind("[::1]:0").unwrap();
        let _held = (
            connect(&l4, l4.local_addr().unwrap()),
            connect(&l6, l6.local_addr().unwrap()),
        );
        for name in ["tcp", "tcp6"] {
            let text = std::fs::read(format!("/proc/net/{name}")).unwrap();
            let ours = our_rows(&text);
            assert!(ours.len() >= 3, "{name}: {ours:?}");
            assert_eq!(crate_rows(&text), ours, "{name}");
        }
    }

    #[test]
    fn ipv6_only_targets_read_only_tcp6_live() {
        let l = TcpListener::bind("[::1]:0").unwrap();
        let a = l.local_addr().unwrap();
        let (c, _s) = connect(&l, a);
        let targets = Targets::new(vec![target("::1/128", Some(a.port()), None)]);
        let source = ProcfsSource::new(&targets).unwrap();
        let paths: Vec<&Path> = source.tables.iter().map(|t| t.path.as_path()).collect();
        assert_eq!(paths, [Path::new("/proc/net/tcp6")]);
        let mut source = source;
        assert_reports(&mut source, &[&c]);
    }
}
