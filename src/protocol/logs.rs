//! The engine-log source: FIX messages read from the message logs that engines write, for
//! sessions the wire cannot show (TLS) or hosts where capture is not allowed.
//!
//! The engines this was written against write one message per line, the time it was logged
//! first (UTC):
//! - QuickFIX (C++): `20260101-12:00:00.123456789 : 8=FIX.4.4^A9=...`
//! - QuickFIX/J (`FileLog`, with timestamps on): `20260101-12:00:00.123: 8=FIX.4.4^A9=...`
//! - QuickFIX/n: `20260101-12:00:00.123 : 8=FIX.4.4^A9=...`
//!
//! so a line is read as: anything up to `8=FIX` (a timestamp, if one parses: `YYYYMMDD-HH:MM:SS`
//! or `YYYY-MM-DD HH:MM:SS` / `...T...`, with an optional fraction), then one message whose
//! separator is the byte after the BeginString (SOH, or `|` in logs made readable). A line
//! without a parsable timestamp is timed when it was read (and counted). Which side sent a
//! message comes from its CompIDs and the configured `our_comp_ids`.
//!
//! [`parse_line`] is pure and unit-tested on lines; [`LogFollower`] does the file I/O: it
//! follows every file a glob matches, from the end of the files that exist at start (from the
//! beginning of files that appear later), across rotation (a new file at the path: the old
//! one is read to its end first) and truncation (the file shrank: read again from 0), keeping a
//! partial last line until its newline arrives.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::codec::{self, tag, Malformed, Message, SOH};
use crate::tracker::Direction;

/// The longest line kept; a longer one is dropped (counted as malformed and `lines_too_long`).
pub const MAX_LINE: usize = 1 << 20;

/// Files followed at once (each holds an open file); matching files beyond it are not followed
/// (`files_not_followed`) until a followed one goes.
pub const MAX_FILES: usize = 256;

/// One message read from a log.
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// The message.
    pub msg: Message,
    /// Which way it went, from the gateway's side (by its CompIDs against ours).
    pub dir: Direction,
    /// The log's timestamp, or the time the line was read when it has none.
    pub at: SystemTime,
    /// Whether `at` is the log's timestamp (rather than the time the line was read).
    pub timed_by_log: bool,
}

/// Why a line gave no message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineError {
    /// No `8=FIX` in the line (an engine's event line, a blank line): not counted as malformed.
    NoMessage,
    /// A message is there but malformed.
    Malformed(Malformed),
    /// Neither CompID is one of ours.
    NotOurs,
}

/// Parse one log line (without its newline). `read_at` times a line without a timestamp.
pub fn parse_line(
    line: &[u8],
    ours: &HashSet<String>,
    read_at: SystemTime,
) -> Result<LogRecord, LineError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let start = find(line, b"8=FIX").ok_or(LineError::NoMessage)?;
    let text = &line[start..];
    // The separator is the first byte after the BeginString value.
    let sep = text[2..]
        .iter()
        .find(|c| !(c.is_ascii_alphanumeric() || **c == b'.'))
        .copied()
        .unwrap_or(SOH);
    // Trailing bytes after the message (spaces) are not part of it.
    let end = text
        .windows(4)
        .rposition(|w| w[0] == sep && &w[1..] == b"10=")
        .map_or(text.len(), |i| (i + 8).min(text.len()));
    let msg = codec::parse(&text[..end], sep).map_err(LineError::Malformed)?;
    let sender = msg.get_str(tag::SENDER_COMP_ID);
    let target = msg.get_str(tag::TARGET_COMP_ID);
    let dir = if sender.is_some_and(|s| ours.contains(s.as_ref())) {
        Direction::Out
    } else if target.is_some_and(|t| ours.contains(t.as_ref())) {
        Direction::In
    } else {
        return Err(LineError::NotOurs);
    };
    let stamp = parse_timestamp(&line[..start]);
    Ok(LogRecord {
        msg,
        dir,
        at: stamp.unwrap_or(read_at),
        timed_by_log: stamp.is_some(),
    })
}

/// The first timestamp in `prefix`: `YYYYMMDD-HH:MM:SS[.f{1,9}]` or `YYYY-MM-DD[ T]HH:MM:SS[.f]`,
/// read as UTC.
pub fn parse_timestamp(prefix: &[u8]) -> Option<SystemTime> {
    let start = prefix.iter().position(u8::is_ascii_digit)?;
    let p = &prefix[start..];
    let num = |b: &[u8]| -> Option<u32> {
        if b.iter().all(u8::is_ascii_digit) && !b.is_empty() {
            Some(b.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
        } else {
            None
        }
    };
    let (date, rest) = if p.len() >= 9 && p[8] == b'-' {
        (
            (num(p.get(0..4)?)?, num(p.get(4..6)?)?, num(p.get(6..8)?)?),
            &p[9..],
        )
    } else if p.len() >= 11 && p[4] == b'-' && p[7] == b'-' && (p[10] == b' ' || p[10] == b'T') {
        (
            (num(p.get(0..4)?)?, num(p.get(5..7)?)?, num(p.get(8..10)?)?),
            &p[11..],
        )
    } else {
        return None;
    };
    if rest.len() < 8 || rest[2] != b':' || rest[5] != b':' {
        return None;
    }
    let (h, m, s) = (num(&rest[0..2])?, num(&rest[3..5])?, num(&rest[6..8])?);
    let mut nanos = 0u32;
    if rest.get(8) == Some(&b'.') {
        let digits: Vec<u8> = rest[9..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .take(9)
            .copied()
            .collect();
        let n = num(&digits)?;
        nanos = n * 10u32.pow(9 - digits.len() as u32);
    }
    let d = chrono::NaiveDate::from_ymd_opt(date.0 as i32, date.1, date.2)?;
    let t = d.and_hms_nano_opt(h, m, s, nanos)?.and_utc();
    let secs = u64::try_from(t.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, t.timestamp_subsec_nanos()))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Counts kept by a [`LogFollower`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LogStats {
    /// Lines read.
    pub lines: u64,
    /// Messages parsed.
    pub messages: u64,
    /// Lines holding a malformed message (over-long lines included).
    pub malformed: u64,
    /// Messages whose CompIDs are not ours.
    pub not_ours: u64,
    /// Messages timed when read, their line having no timestamp.
    pub untimed: u64,
    /// Files rotated away (their path now names another file).
    pub rotations: u64,
    /// Files truncated in place (read again from their start).
    pub truncations: u64,
    /// Errors reading or opening a file.
    pub read_errors: u64,
    /// Lines longer than [`MAX_LINE`], dropped.
    pub lines_too_long: u64,
    /// Followed files that left their path (deleted, or moved away with nothing new in their
    /// place): read to their end, then closed, so a deleted log's space is given back.
    pub files_released: u64,
    /// Matching files not followed at the last poll because [`MAX_FILES`] were (a gauge).
    pub files_not_followed: u64,
}

impl LogStats {
    /// A line longer than [`MAX_LINE`] was dropped.
    fn too_long(&mut self) {
        self.lines += 1;
        self.malformed += 1;
        self.lines_too_long += 1;
    }
}

struct Followed {
    file: File,
    ino: (u64, u64),
    offset: u64,
    partial: Vec<u8>,
    /// The last bytes read before `offset`: a file truncated and refilled to the same size or
    /// more no longer has them there.
    tail: Vec<u8>,
    /// A partial line longer than [`MAX_LINE`] is being dropped up to its newline.
    dropping: bool,
}

/// Follows the files that glob patterns match.
pub struct LogFollower {
    patterns: Vec<String>,
    ours: HashSet<String>,
    files: HashMap<PathBuf, Followed>,
    /// Rotated-away files still being read to their end.
    draining: Vec<Followed>,
    started: bool,
    /// What it has read so far.
    pub stats: LogStats,
}

impl LogFollower {
    /// A follower of the files `patterns` (globs) match, the messages of sessions whose CompID on
    /// either side is one of `our_comp_ids`. It reads nothing until polled.
    pub fn new(patterns: Vec<String>, our_comp_ids: impl IntoIterator<Item = String>) -> Self {
        LogFollower {
            patterns,
            ours: our_comp_ids.into_iter().collect(),
            files: HashMap::new(),
            draining: Vec::new(),
            started: false,
            stats: LogStats::default(),
        }
    }

    /// The files followed now.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut p: Vec<_> = self.files.keys().cloned().collect();
        p.sort();
        p
    }

    /// Read whatever was appended since the last poll; `now` times lines without a timestamp.
    /// The first poll only finds the files and their ends.
    pub fn poll(&mut self, now: SystemTime) -> Vec<LogRecord> {
        let mut out = Vec::new();
        let first = !self.started;
        self.started = true;
        let mut seen = HashSet::new();
        for pat in &self.patterns {
            let Ok(paths) = glob::glob(pat) else {
                continue;
            };
            for path in paths.flatten() {
                seen.insert(path.clone());
            }
        }
        // Files already followed: drain rotated ones, notice truncation, let go of the ones
        // that left their path.
        let mut left = Vec::new();
        for (path, f) in self.files.iter_mut() {
            let meta = match std::fs::metadata(path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    left.push(path.clone());
                    continue;
                }
                Err(_) => continue,
            };
            let ino = (meta.dev(), meta.ino());
            if ino != f.ino {
                // Rotated: finish the old file, then read the new one from its start.
                self.stats.rotations += 1;
                if let Ok(file) = File::open(path) {
                    let old = std::mem::replace(
                        f,
                        Followed {
                            file,
                            ino,
                            offset: 0,
                            partial: Vec::new(),
                            tail: Vec::new(),
                            dropping: false,
                        },
                    );
                    self.draining.push(old);
                }
            } else if meta.len() < f.offset || !tail_still_there(f) {
                self.stats.truncations += 1;
                f.offset = 0;
                f.partial.clear();
                f.tail.clear();
                f.dropping = false;
            }
        }
        for path in left {
            if let Some(f) = self.files.remove(&path) {
                self.stats.files_released += 1;
                self.draining.push(f);
            }
        }
        for mut old in std::mem::take(&mut self.draining) {
            read_new(&mut old, &self.ours, now, &mut self.stats, &mut out);
            // A partial last line in a rotated-away file will never be finished.
        }
        // New files: from the end at the first poll, from the start later; at most
        // MAX_FILES, in path order so that which ones wait is stable.
        let mut seen: Vec<PathBuf> = seen.into_iter().collect();
        seen.sort();
        let mut not_followed = 0;
        for path in seen {
            if self.files.contains_key(&path) {
                continue;
            }
            if self.files.len() >= MAX_FILES {
                not_followed += 1;
                continue;
            }
            let Ok(file) = File::open(&path) else {
                continue;
            };
            let Ok(meta) = file.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let offset = if first { meta.len() } else { 0 };
            self.files.insert(
                path,
                Followed {
                    file,
                    ino: (meta.dev(), meta.ino()),
                    offset,
                    partial: Vec::new(),
                    tail: Vec::new(),
                    dropping: false,
                },
            );
        }
        self.stats.files_not_followed = not_followed;
        for f in self.files.values_mut() {
            read_new(f, &self.ours, now, &mut self.stats, &mut out);
        }
        out
    }
}

const TAIL: usize = 64;

fn tail_still_there(f: &mut Followed) -> bool {
    if f.tail.is_empty() {
        return true;
    }
    let mut now = vec![0u8; f.tail.len()];
    let at = f.offset - f.tail.len() as u64;
    f.file.seek(SeekFrom::Start(at)).is_ok() && f.file.read_exact(&mut now).is_ok() && now == f.tail
}

fn read_new(
    f: &mut Followed,
    ours: &HashSet<String>,
    now: SystemTime,
    stats: &mut LogStats,
    out: &mut Vec<LogRecord>,
) {
    if f.file.seek(SeekFrom::Start(f.offset)).is_err() {
        stats.read_errors += 1;
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match f.file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => {
                stats.read_errors += 1;
                break;
            }
        };
        f.offset += n as u64;
        let keep = TAIL.min(n);
        if keep == TAIL {
            f.tail.clear();
        } else if f.tail.len() + keep > TAIL {
            f.tail.drain(..f.tail.len() + keep - TAIL);
        }
        f.tail.extend_from_slice(&buf[n - keep..n]);
        let mut chunk = &buf[..n];
        while let Some(nl) = chunk.iter().position(|&c| c == b'\n') {
            let piece = &chunk[..nl];
            chunk = &chunk[nl + 1..];
            if f.dropping {
                f.dropping = false;
                continue;
            }
            if f.partial.len() + piece.len() > MAX_LINE {
                f.partial.clear();
                stats.too_long();
            } else if f.partial.is_empty() {
                line(piece, ours, now, stats, out);
            } else {
                f.partial.extend_from_slice(piece);
                let whole = std::mem::take(&mut f.partial);
                line(&whole, ours, now, stats, out);
            }
        }
        if !f.dropping {
            f.partial.extend_from_slice(chunk);
            if f.partial.len() > MAX_LINE {
                f.partial.clear();
                f.dropping = true;
                stats.too_long();
            }
        }
    }
}

fn line(
    l: &[u8],
    ours: &HashSet<String>,
    now: SystemTime,
    stats: &mut LogStats,
    out: &mut Vec<LogRecord>,
) {
    stats.lines += 1;
    match parse_line(l, ours, now) {
        Ok(r) => {
            stats.messages += 1;
            if !r.timed_by_log {
                stats.untimed += 1;
            }
            out.push(r);
        }
        Err(LineError::NoMessage) => {}
        Err(LineError::Malformed(_)) => stats.malformed += 1,
        Err(LineError::NotOurs) => stats.not_ours += 1,
    }
}

/// Does `path` name a file pattern (for config checks): at least a valid glob.
pub fn valid_pattern(p: &str) -> bool {
    glob::Pattern::new(p).is_ok() && !Path::new(p).as_os_str().is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::write;
    use std::io::Write;

    fn ours() -> HashSet<String> {
        ["GW".to_string()].into()
    }

    fn msg(from: &str, to: &str, mt: &str, seq: u32, sep: u8) -> Vec<u8> {
        let seq = seq.to_string();
        write(
            "FIX.4.4",
            &[
                (35, mt.as_bytes()),
                (49, from.as_bytes()),
                (56, to.as_bytes()),
                (34, seq.as_bytes()),
            ],
            sep,
        )
    }

    fn ts(s: &str) -> SystemTime {
        let d = chrono::DateTime::parse_from_rfc3339(s).unwrap();
        SystemTime::UNIX_EPOCH + Duration::new(d.timestamp() as u64, d.timestamp_subsec_nanos())
    }

    #[test]
    fn the_three_engines_line_formats() {
        let m = msg("GW", "V", "0", 1, SOH);
        let now = SystemTime::UNIX_EPOCH;
        for (prefix, want) in [
            (
                "20260101-12:00:00.123456789 : ",
                "2026-01-01T12:00:00.123456789Z",
            ),
            ("20260101-12:00:00.123: ", "2026-01-01T12:00:00.123Z"),
            ("20260101-12:00:00.123 : ", "2026-01-01T12:00:00.123Z"),
            ("2026-01-01 12:00:00,5 INFO ", "2026-01-01T12:00:00Z"),
            ("2026-01-01T12:00:01.5Z ", "2026-01-01T12:00:01.5Z"),
        ] {
            let mut l = prefix.as_bytes().to_vec();
            l.extend(&m);
            let r = parse_line(&l, &ours(), now).unwrap();
            assert_eq!(r.at, ts(want), "{prefix}");
            assert!(r.timed_by_log);
            assert_eq!(r.dir, Direction::Out);
        }
        let r = parse_line(&m, &ours(), now).unwrap();
        assert!(!r.timed_by_log);
        assert_eq!(r.at, now);
    }

    #[test]
    fn pipes_direction_and_errors() {
        let m = msg("V", "GW", "8", 1, b'|');
        let mut l = b"20260101-12:00:00.000 : ".to_vec();
        l.extend(&m);
        l.extend(b"\r");
        let r = parse_line(&l, &ours(), SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(r.dir, Direction::In);
        assert_eq!(r.msg.msg_type(), b"8");
        let other = msg("X", "Y", "0", 1, SOH);
        assert_eq!(
            parse_line(&other, &ours(), SystemTime::UNIX_EPOCH).unwrap_err(),
            LineError::NotOurs
        );
        assert_eq!(
            parse_line(
                b"20260101-12:00:00 : Session created",
                &ours(),
                SystemTime::UNIX_EPOCH
            )
            .unwrap_err(),
            LineError::NoMessage
        );
        let mut bad = m.clone();
        let n = bad.len();
        bad[n - 3] ^= 1;
        assert!(matches!(
            parse_line(&bad, &ours(), SystemTime::UNIX_EPOCH),
            Err(LineError::Malformed(_))
        ));
    }

    fn append(path: &Path, lines: &[Vec<u8>], newline_last: bool) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        for (i, l) in lines.iter().enumerate() {
            f.write_all(l).unwrap();
            if i + 1 < lines.len() || newline_last {
                f.write_all(b"\n").unwrap();
            }
        }
    }

    fn line_of(seq: u32, sep: u8) -> Vec<u8> {
        let mut l = b"20260101-12:00:00.000 : ".to_vec();
        l.extend(msg("GW", "V", "0", seq, sep));
        l
    }

    fn seqs(rs: &[LogRecord]) -> Vec<u64> {
        rs.iter()
            .map(|r| r.msg.get_u64(tag::MSG_SEQ_NUM).unwrap())
            .collect()
    }

    #[test]
    fn follows_from_the_end_across_partial_lines_rotation_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("FIX.4.4-GW-V.messages.log");
        append(&path, &[line_of(1, SOH), line_of(2, b'|')], true);
        let pattern = dir.path().join("*.messages.log");
        let mut f = LogFollower::new(vec![pattern.display().to_string()], ["GW".to_string()]);
        let now = SystemTime::UNIX_EPOCH;
        // From the end at start.
        assert!(f.poll(now).is_empty());
        assert_eq!(f.paths(), std::slice::from_ref(&path));
        // A partial last line waits for its newline.
        let l3 = line_of(3, SOH);
        append(&path, &[l3[..30].to_vec()], false);
        assert!(f.poll(now).is_empty());
        append(&path, &[l3[30..].to_vec(), line_of(4, b'|')], true);
        assert_eq!(seqs(&f.poll(now)), [3, 4]);
        // Rotation: the old file gets one more line after the move, the new one starts.
        let rotated = dir.path().join("old.1");
        std::fs::rename(&path, &rotated).unwrap();
        append(&rotated, &[line_of(5, SOH)], true);
        append(&path, &[line_of(6, SOH)], true);
        assert_eq!(seqs(&f.poll(now)), [5, 6]);
        assert_eq!(f.stats.rotations, 1);
        // Truncation (copytruncate): read again from the start.
        std::fs::write(&path, b"").unwrap();
        append(&path, &[line_of(7, SOH)], true);
        assert_eq!(seqs(&f.poll(now)), [7]);
        assert_eq!(f.stats.truncations, 1);
        // A file that appears later is read from its start.
        let second = dir.path().join("FIX.4.2-GW-W.messages.log");
        append(
            &second,
            &[line_of(8, b'|'), b"garbage 8=FIX.4.4|9=5|".to_vec()],
            true,
        );
        assert_eq!(seqs(&f.poll(now)), [8]);
        assert_eq!(f.stats.messages, 6);
        assert_eq!(f.stats.malformed, 1);
    }

    /// Open files of this process that point at `path`'s file (deleted or not).
    fn open_fds_to(path: &Path) -> usize {
        let name = path.display().to_string();
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_link(e.path())
                    .map(|l| l.display().to_string().starts_with(&name))
                    .unwrap_or(false)
            })
            .count()
    }

    #[test]
    fn a_deleted_log_is_read_to_its_end_then_closed() {
        let dir = tempfile::tempdir().unwrap();
        let pattern = dir.path().join("*.log");
        let mut f = LogFollower::new(vec![pattern.display().to_string()], ["GW".to_string()]);
        let now = SystemTime::UNIX_EPOCH;
        assert!(f.poll(now).is_empty());
        // A log per day: yesterday's gets its last lines and is deleted, today's begins.
        let day1 = dir.path().join("day1.log");
        append(&day1, &[line_of(1, SOH)], true);
        assert_eq!(seqs(&f.poll(now)), [1]);
        append(&day1, &[line_of(2, SOH)], true);
        std::fs::remove_file(&day1).unwrap();
        let day2 = dir.path().join("day2.log");
        append(&day2, &[line_of(3, SOH)], true);
        assert_eq!(seqs(&f.poll(now)), [2, 3]);
        assert_eq!(f.paths(), std::slice::from_ref(&day2));
        assert_eq!(f.stats.files_released, 1);
        // Its descriptor is closed: the disk space goes back.
        assert_eq!(open_fds_to(&day1), 0);
        assert_eq!(open_fds_to(&day2), 1);
    }

    #[test]
    fn matching_files_beyond_the_bound_wait_and_overlong_lines_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let pattern = dir.path().join("*.log");
        let mut f = LogFollower::new(vec![pattern.display().to_string()], ["GW".to_string()]);
        let now = SystemTime::UNIX_EPOCH;
        assert!(f.poll(now).is_empty());
        for i in 0..MAX_FILES + 5 {
            append(
                &dir.path().join(format!("{i:04}.log")),
                &[line_of(1, SOH)],
                true,
            );
        }
        assert_eq!(f.poll(now).len(), MAX_FILES);
        assert_eq!(
            (f.paths().len(), f.stats.files_not_followed),
            (MAX_FILES, 5)
        );
        // One goes: one of the waiting files takes its place, from its start.
        std::fs::remove_file(dir.path().join("0000.log")).unwrap();
        assert_eq!(f.poll(now).len(), 1);
        assert_eq!(
            (f.paths().len(), f.stats.files_not_followed),
            (MAX_FILES, 4)
        );
        // A line over MAX_LINE is dropped and counted; the next line is read.
        let big = dir.path().join("0001.log");
        let long = vec![b'x'; MAX_LINE + 10];
        append(&big, &[long, line_of(9, SOH)], true);
        assert_eq!(seqs(&f.poll(now)), [9]);
        assert_eq!(f.stats.lines_too_long, 1);
    }

    proptest::proptest! {
        #[test]
        fn any_line_never_panics(line in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
                                 prefix in "[0-9:. T-]{0,30}") {
            let mut l = prefix.into_bytes();
            l.extend(&line);
            let _ = parse_line(&l, &ours(), SystemTime::UNIX_EPOCH);
            let _ = parse_timestamp(&l);
        }
    }
}
