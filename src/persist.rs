//! The state file: what the sidecar knows of every active session, kept on disk so that a
//! restart (every deploy) does not forget when the sessions that are already up began.
//!
//! `[state] dir` names a directory; the sidecar writes `sessions.json` there, periodically and
//! at shutdown, atomically (a temporary file in the same directory, `fsync`, `rename`, `fsync` of
//! the directory: a reader, or the next start after a crash, sees the old file or the new one,
//! never half of one). Each session is keyed by its socket identity (the kernel cookie, or the
//! inode with procfs) and 4-tuple, with its target and start.
//!
//! A start is stored on `CLOCK_MONOTONIC` (what [`std::time::Instant`] reads on Linux), which
//! is the same clock for every process of one boot and does not jump with the wall clock; the
//! file is therefore tagged with the kernel's boot id (`/proc/sys/kernel/random/boot_id`) and
//! the host name, and a file from another boot or host is ignored: socket cookies and inodes
//! are only unique within one boot, and its times mean nothing in another. So is a file that
//! does not parse. Either is a warning, never a failure: the sessions are then counted as
//! already open at start, as without a state dir.
//!
//! Encoding and decoding are pure ([`encode`], [`decode`]); [`StateDir`] does the I/O.

use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::tracker::Timestamp;

/// Name of the state file in the state directory.
pub const FILE_NAME: &str = "sessions.json";
/// Bumped when the layout changes; a file of another version is ignored.
const VERSION: u32 = 1;
/// Where the kernel says which boot this is.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// One session as the file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Socket cookie (netlink) or inode (procfs).
    pub id: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The target's name when it was written (a session whose target is gone from the config is
    /// not restored).
    pub target: String,
    /// When it started, on `CLOCK_MONOTONIC`, in nanoseconds.
    pub started_mono_ns: u64,
    /// When it started, on the wall clock, in milliseconds since the Unix epoch (what people
    /// read; the monotonic value is what durations use).
    pub started_unix_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct File {
    version: u32,
    boot_id: String,
    host: String,
    written_unix_ms: u64,
    sessions: Vec<Record>,
}

/// Why a state file was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    #[error(
        "it was written during another boot ({0}); socket identities and times do not carry over"
    )]
    OtherBoot(String),
    #[error("it was written on another host ({0})")]
    OtherHost(String),
    #[error("it has layout version {0}, this fix-monitor reads version {VERSION}")]
    OtherVersion(u32),
    #[error("it does not parse: {0}")]
    Corrupt(String),
}

/// What identifies this boot and host: the tag every file carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub boot_id: String,
    pub host: String,
}

impl Tag {
    /// This boot's id, from [`BOOT_ID_PATH`], and `host`.
    pub fn current(host: &str) -> io::Result<Tag> {
        let boot_id = fs::read_to_string(BOOT_ID_PATH)?.trim().to_owned();
        if boot_id.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{BOOT_ID_PATH} is empty"),
            ));
        }
        Ok(Tag {
            boot_id,
            host: host.to_owned(),
        })
    }
}

/// Reads `CLOCK_MONOTONIC` together with an [`Instant`], so that one can be turned into the
/// other.
#[derive(Debug, Clone, Copy)]
pub struct MonoClock {
    pub instant: Instant,
    pub mono_ns: u64,
}

impl MonoClock {
    pub fn now() -> MonoClock {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        MonoClock {
            instant: Instant::now(),
            mono_ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
        }
    }

    /// `at` on `CLOCK_MONOTONIC`, in nanoseconds.
    pub fn mono_ns_of(&self, at: Instant) -> u64 {
        match self.instant.checked_duration_since(at) {
            Some(ago) => self.mono_ns.saturating_sub(ago.as_nanos() as u64),
            None => self.mono_ns + at.duration_since(self.instant).as_nanos() as u64,
        }
    }

    /// The `Instant` of a `CLOCK_MONOTONIC` reading of this boot.
    pub fn instant_of(&self, mono_ns: u64) -> Instant {
        if mono_ns <= self.mono_ns {
            let ago = Duration::from_nanos(self.mono_ns - mono_ns);
            self.instant.checked_sub(ago).unwrap_or(self.instant)
        } else {
            self.instant + Duration::from_nanos(mono_ns - self.mono_ns)
        }
    }
}

impl Record {
    /// The record of a session that started at `since`.
    pub fn new(
        id: u64,
        local: SocketAddr,
        remote: SocketAddr,
        target: &str,
        since: Timestamp,
        clock: &MonoClock,
    ) -> Record {
        Record {
            id,
            local,
            remote,
            target: target.to_owned(),
            started_mono_ns: clock.mono_ns_of(since.mono),
            started_unix_ms: since
                .wall
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }

    /// When the session started, on both clocks.
    pub fn since(&self, clock: &MonoClock) -> Timestamp {
        Timestamp {
            mono: clock.instant_of(self.started_mono_ns),
            wall: UNIX_EPOCH + Duration::from_millis(self.started_unix_ms),
        }
    }
}

/// The file's bytes for `sessions`, tagged with `tag`.
pub fn encode(tag: &Tag, sessions: &[Record], now: SystemTime) -> Vec<u8> {
    let file = File {
        version: VERSION,
        boot_id: tag.boot_id.clone(),
        host: tag.host.clone(),
        written_unix_ms: now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        sessions: sessions.to_vec(),
    };
    let mut out = serde_json::to_vec_pretty(&file).expect("plain data serializes");
    out.push(b'\n');
    out
}

/// The sessions in `bytes`, if they were written under `tag` (this boot, this host).
pub fn decode(bytes: &[u8], tag: &Tag) -> Result<Vec<Record>, Ignored> {
    // The version first, so that a future layout is named as such rather than as corrupt.
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let v: Version = serde_json::from_slice(bytes).map_err(|e| Ignored::Corrupt(e.to_string()))?;
    if v.version != VERSION {
        return Err(Ignored::OtherVersion(v.version));
    }
    let file: File = serde_json::from_slice(bytes).map_err(|e| Ignored::Corrupt(e.to_string()))?;
    if file.host != tag.host {
        return Err(Ignored::OtherHost(file.host));
    }
    if file.boot_id != tag.boot_id {
        return Err(Ignored::OtherBoot(file.boot_id));
    }
    Ok(file.sessions)
}

/// The state directory, checked writable.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
    tag: Tag,
}

/// What [`StateDir::load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    pub sessions: Vec<Record>,
    /// Set when a file was there but not used (logged as a warning by the caller).
    pub ignored: Option<Ignored>,
}

impl StateDir {
    /// Opens `dir` (creating it if missing) and proves it writable by writing and removing a
    /// file in it: a state dir that cannot be written must fail the start, not the first save.
    /// Temporary files an earlier process left (killed while writing) are removed.
    pub fn open(dir: &Path, tag: Tag) -> io::Result<StateDir> {
        Self::check_writable(dir)?;
        let prefix = format!(".{FILE_NAME}.tmp.");
        for entry in fs::read_dir(dir)?.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(&prefix) {
                tracing::info!(path = %entry.path().display(), "removing a state file an earlier run left half-written");
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(StateDir {
            dir: dir.to_owned(),
            tag,
        })
    }

    /// Whether `dir` could hold the state file, without changing anything (for the
    /// configuration's check, which also runs for `fix-monitor config`): an existing directory
    /// must be writable and searchable, a missing one must have its nearest existing ancestor
    /// so (it is created at start, by [`StateDir::open`]).
    pub fn check_could_write(dir: &Path) -> io::Result<()> {
        let mut at = dir;
        loop {
            match fs::metadata(at) {
                Ok(meta) if meta.is_dir() => return access_write(at),
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("{} is not a directory", at.display()),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    at = match at.parent() {
                        Some(p) if !p.as_os_str().is_empty() => p,
                        _ => Path::new("."),
                    };
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether `dir` can hold the state file: created if missing, and a file written and
    /// removed in it.
    fn check_writable(dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)?;
        let probe = dir.join(format!(".write-test.{}", std::process::id()));
        fs::write(&probe, b"")?;
        fs::remove_file(&probe)
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// The sessions of the last file this boot and host wrote; none (and why) otherwise.
    pub fn load(&self) -> io::Result<Loaded> {
        let bytes = match fs::read(self.path()) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::default()),
            Err(e) => return Err(e),
        };
        Ok(match decode(&bytes, &self.tag) {
            Ok(sessions) => Loaded {
                sessions,
                ignored: None,
            },
            Err(why) => Loaded {
                sessions: Vec::new(),
                ignored: Some(why),
            },
        })
    }

    /// Replaces the file with `sessions`, atomically.
    pub fn save(&self, sessions: &[Record]) -> io::Result<()> {
        let bytes = encode(&self.tag, sessions, SystemTime::now());
        let tmp = self
            .dir
            .join(format!(".{FILE_NAME}.tmp.{}", std::process::id()));
        let result = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, self.path())?;
            // The rename itself is durable once the directory is.
            fs::File::open(&self.dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// `access(2)` for writing and searching: the process's own permissions, a read-only mount
/// included, without creating anything.
#[cfg(unix)]
fn access_write(dir: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Elsewhere only the read-only attribute can be read without writing.
#[cfg(not(unix))]
fn access_write(dir: &Path) -> io::Result<()> {
    if fs::metadata(dir)?.permissions().readonly() {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag() -> Tag {
        Tag {
            boot_id: "3c5e1b7e-0000-4000-8000-000000000001".into(),
            host: "gw-1".into(),
        }
    }

    fn record(id: u64, since: Timestamp, clock: &MonoClock) -> Record {
        Record::new(
            id,
            "10.0.0.1:5000".parse().unwrap(),
            "10.0.0.5:9876".parse().unwrap(),
            "venue-a",
            since,
            clock,
        )
    }

    #[test]
    fn a_start_survives_the_round_trip_on_both_clocks() {
        let clock = MonoClock::now();
        let since = Timestamp::now().after(Duration::ZERO);
        let since = Timestamp {
            mono: since.mono - Duration::from_secs(60),
            wall: since.wall - Duration::from_secs(60),
        };
        let bytes = encode(&tag(), &[record(7, since, &clock)], SystemTime::now());
        let back = decode(&bytes, &tag()).unwrap();
        assert_eq!(back.len(), 1);
        // Read back by a later "process": a new pairing of the clocks.
        let later = MonoClock::now();
        let restored = back[0].since(&later);
        let err = restored
            .mono
            .max(since.mono)
            .duration_since(restored.mono.min(since.mono));
        assert!(err < Duration::from_millis(5), "{err:?}");
        let wall_err = since
            .wall
            .duration_since(restored.wall)
            .unwrap_or_else(|e| e.duration());
        assert!(wall_err < Duration::from_millis(1), "{wall_err:?}");
    }

    #[test]
    fn the_monotonic_clock_pairing_agrees_with_instant() {
        let a = MonoClock::now();
        std::thread::sleep(Duration::from_millis(20));
        let b = MonoClock::now();
        let by_instant = b.instant.duration_since(a.instant).as_nanos() as i128;
        let by_clock = i128::from(b.mono_ns) - i128::from(a.mono_ns);
        assert!(
            (by_instant - by_clock).abs() < 1_000_000,
            "{by_instant} vs {by_clock}"
        );
        assert_eq!(a.instant_of(a.mono_ns_of(b.instant)), b.instant);
    }

    #[test]
    fn another_boot_another_host_another_version_or_garbage_is_ignored() {
        let clock = MonoClock::now();
        let bytes = encode(
            &tag(),
            &[record(1, Timestamp::now(), &clock)],
            SystemTime::now(),
        );
        let other_boot = Tag {
            boot_id: "other".into(),
            ..tag()
        };
        assert!(
            matches!(decode(&bytes, &other_boot), Err(Ignored::OtherBoot(b)) if b == tag().boot_id)
        );
        let other_host = Tag {
            host: "gw-2".into(),
            ..tag()
        };
        assert!(matches!(decode(&bytes, &other_host), Err(Ignored::OtherHost(h)) if h == "gw-1"));
        let future = String::from_utf8(bytes.clone())
            .unwrap()
            .replace("\"version\": 1", "\"version\": 2");
        assert_eq!(
            decode(future.as_bytes(), &tag()),
            Err(Ignored::OtherVersion(2))
        );
        for bad in [
            &b""[..],
            b"{",
            b"null",
            b"{\"version\":1}",
            &bytes[..bytes.len() / 2],
            &[0xff; 64],
        ] {
            assert!(
                matches!(decode(bad, &tag()), Err(Ignored::Corrupt(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_config_check_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("a/b/state");
        StateDir::check_could_write(&missing).unwrap();
        assert!(
            !dir.path().join("a").exists(),
            "the check created a directory"
        );
        StateDir::check_could_write(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        let file = dir.path().join("file");
        fs::write(&file, b"x").unwrap();
        assert!(StateDir::check_could_write(&file).is_err());
        assert!(StateDir::check_could_write(&file.join("state")).is_err());
    }

    #[test]
    fn save_is_atomic_and_load_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("nested"), tag()).unwrap();
        let loaded = state.load().unwrap();
        assert!(
            loaded.sessions.is_empty() && loaded.ignored.is_none(),
            "no file yet"
        );
        let clock = MonoClock::now();
        let records = vec![
            record(1, Timestamp::now(), &clock),
            record(2, Timestamp::now(), &clock),
        ];
        state.save(&records).unwrap();
        state.save(&records[..1]).unwrap();
        assert_eq!(state.load().unwrap().sessions, records[..1]);
        let names: Vec<_> = fs::read_dir(dir.path().join("nested"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [FILE_NAME], "no temporary file left behind");
        // A write that died half way left a temporary file: the state is the last whole one.
        fs::write(
            dir.path()
                .join("nested")
                .join(format!(".{FILE_NAME}.tmp.1")),
            b"{\"vers",
        )
        .unwrap();
        assert_eq!(state.load().unwrap().sessions, records[..1]);
        // The next start removes it.
        let state = StateDir::open(&dir.path().join("nested"), tag()).unwrap();
        let names: Vec<_> = fs::read_dir(dir.path().join("nested"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [FILE_NAME], "the half-written file removed at open");
        // A corrupt file is reported, not fatal.
        fs::write(state.path(), b"garbage").unwrap();
        let loaded = state.load().unwrap();
        assert!(loaded.sessions.is_empty());
        assert!(matches!(loaded.ignored, Some(Ignored::Corrupt(_))));
    }

    #[test]
    fn a_dir_that_cannot_be_written_fails_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        fs::write(&file, b"").unwrap();
        // Under a regular file: not a directory, whoever runs the test (root included).
        assert!(StateDir::open(&file.join("state"), tag()).is_err());
        assert!(StateDir::open(&file, tag()).is_err());
    }

    #[test]
    fn this_boot_has_an_id() {
        let t = Tag::current("h").unwrap();
        assert_eq!(t.boot_id.len(), 36, "{t:?}");
    }
}
